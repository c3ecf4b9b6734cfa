//! `balancer-fake-apiserver`: a fake kube-apiserver over HTTP/1.1 for the
//! agent's end-to-end tests, controlled over stdin/stdout. Prints
//! `LISTENING <addr>` when it accepts connections and exits when stdin
//! closes. See `balancer_tests::apiserver` for the protocols.

use std::{io, net::SocketAddr, time::Duration};

use balancer_tests::fake_apiserver::{run, Options};
use clap::Parser;

#[derive(Parser)]
#[command(about = "A fake Kubernetes API server for balancer's tests")]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Milliseconds between BOOKMARK events on watches that allow them
    /// (0: only on the `bookmark` command).
    #[arg(long, default_value_t = 1000)]
    bookmark_interval_ms: u64,
    /// Changes kept per resource for resumed watches (0: all, until
    /// `compact`).
    #[arg(long, default_value_t = 0)]
    history: usize,
    /// The user named in 403 Forbidden messages.
    #[arg(long, default_value = "system:serviceaccount:balancer-system:balancer-agent")]
    user: String,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let opts = Options {
        listen: args.listen,
        bookmark_interval: (args.bookmark_interval_ms > 0).then(|| Duration::from_millis(args.bookmark_interval_ms)),
        history: (args.history > 0).then_some(args.history),
        user: args.user,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("FAILED tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = runtime.block_on(run(opts)) {
        println!("FAILED {e}");
        std::process::exit(2);
    }
}
