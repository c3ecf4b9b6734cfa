//! `greeter-client --target ADDR --calls N [--concurrency C |
//! --interval-ms MS] [--header NAME=VALUE]... [--json]`: N `SayHello` calls
//! over ONE channel (one HTTP/2 connection), counted per serving backend;
//! with `--interval-ms` one at a time, that far apart. With `--echo`, one
//! `Echo.Unary` call instead, printing the `x-*` metadata the backend
//! received and the `x-*` response headers that came back.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "greeter-client",
    about = "Counts which backend serves each call of one gRPC connection"
)]
struct Args {
    /// host:port (cleartext HTTP/2) or a URI.
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 100)]
    calls: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Per-call deadline in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// One call at a time, this many milliseconds apart (ignores
    /// --concurrency).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Metadata sent with every call, `name=value` (repeatable; not with
    /// --interval-ms).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// One Echo call: print what the backend saw of the metadata and the
    /// response headers (JSON).
    #[arg(long)]
    echo: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    Ok((k.trim().to_ascii_lowercase(), v.to_owned()))
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    if args.echo {
        let echoed = rt.block_on(async {
            let channel = greeter::client::connect(&args.target)
                .await
                .with_context(|| format!("cannot connect to {}", args.target))?;
            greeter::client::echo_metadata(channel, &args.headers, Duration::from_millis(args.timeout_ms))
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        })?;
        println!("{}", serde_json::to_string(&echoed)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let spread = rt.block_on(async {
        let channel = greeter::client::connect(&args.target)
            .await
            .with_context(|| format!("cannot connect to {}", args.target))?;
        let timeout = Duration::from_millis(args.timeout_ms);
        anyhow::Ok(match args.interval_ms {
            Some(ms) => greeter::client::say_hello_paced(channel, args.calls, Duration::from_millis(ms), timeout).await,
            None => {
                greeter::client::say_hello_spread_with(channel, args.calls, args.concurrency, timeout, &args.headers)
                    .await
            }
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&spread)?);
    } else {
        print!("{}", spread.table());
    }
    Ok(if spread.errors == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
