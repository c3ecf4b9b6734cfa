//! `greeter-server --listen ADDR --name NAME [--threads N]`: serves
//! `helloworld.Greeter` and `balancer.test.Echo`; replies carry NAME.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use greeter::server::Backend;

#[derive(Parser, Debug)]
#[command(
    name = "greeter-server",
    about = "The greeter gRPC backend of balancer's demo and tests"
)]
struct Args {
    /// Address to listen on (port 0: a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// This backend's name, returned in every reply.
    #[arg(long, default_value = "greeter")]
    name: String,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!("greeter-server {} listening on {addr}", args.name);
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        Backend::new(&args.name)
            .serve(listener, shutdown)
            .await
            .context("server failed")
    })
}
