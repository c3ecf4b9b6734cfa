//! `balancer-scale-bench`: what a cluster of S Services costs the agent on
//! one node (see `balancer_tests::scale`). Needs root. Prints its
//! table and writes the docs section (`--markdown`) and the raw results
//! (`--json`); `cargo xtask bench --scale` runs it.

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use balancer_tests::scale::{self, report, Bins, ScaleOptions, ScaleResult, Shape};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "balancer-scale-bench",
    about = "The agent in Kubernetes mode against a cluster of S Services: ready, memory, CPU per change, change → call, VIPs in the kernel map"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Cluster sizes (Services, 10 endpoints each), comma-separated
    /// (default 1000,10000; with --quick 200).
    #[arg(long, value_delimiter = ',')]
    services: Vec<usize>,
    /// Then the VIP probes: 50,000 VIPs on a map sized at start, and a
    /// cluster this big, every 10th Service with three gRPC ports, on a map
    /// held at 16,384 entries, to see what the agent does with more VIPs
    /// than its map holds (default 20000; with --quick or 0: not run).
    #[arg(long)]
    overflow: Option<usize>,
    /// A smoke run: S = 200, 5 s windows, 5 moves, no VIP probes.
    #[arg(long)]
    quick: bool,
    /// Length of the idle and churn windows, seconds (default 30; 5 with
    /// --quick).
    #[arg(long)]
    window_secs: Option<u64>,
    /// EndpointSlice changes per second of the churn.
    #[arg(long, default_value_t = 10.0)]
    churn_rate: f64,
    /// Moves of the greeter's endpoints timed, idle and under churn
    /// (default 20; 5 with --quick).
    #[arg(long)]
    moves: Option<usize>,
    /// Where the agent, greeter-server and this crate's programs are
    /// (default: next to this program).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Write the docs section (markdown) here.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write the raw results (JSON) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The commit measured, as the report names it (default: from git).
    #[arg(long)]
    commit: Option<String>,
    /// Record a CPU profile of the agent during each churn window with
    /// `perf record` (FILE-S for size S).
    #[arg(long, value_name = "FILE")]
    perf: Option<PathBuf>,
    /// Wait at most this long in all (per cluster size) for a calm machine
    /// before the measurements (default 300; 0 with --quick).
    #[arg(long)]
    calm_secs: Option<u64>,
}

#[derive(Subcommand)]
enum Sub {
    /// (Run inside the client pod by the bench.) Calls the greeter at
    /// TARGET over one channel, one call at a time, and prints a JSON line
    /// whenever the answer changes; stops when stdin closes.
    #[command(hide = true)]
    Follow {
        #[arg(long)]
        target: SocketAddrV4,
        #[arg(long, default_value_t = 1000)]
        interval_us: u64,
        #[arg(long, default_value_t = 900)]
        max_secs: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Sub::Follow {
        target,
        interval_us,
        max_secs,
    }) = args.cmd
    {
        return match scale::follow::run(
            target,
            Duration::from_micros(interval_us),
            Duration::from_secs(max_secs),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("follow: {}", chain(&e));
                ExitCode::FAILURE
            }
        };
    }
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balancer-scale-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    balancer_agent::error::Chain(e).to_string()
}

fn first_line(cmd: &mut std::process::Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_owned)
}

fn bench(args: &Args) -> Result<(), String> {
    if let Some(why) = balancer_tests::privileged::missing_privilege() {
        return Err(format!("needs root (eBPF, network namespaces, cgroups): {why}"));
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .ok_or("cannot find this program's directory")?,
    };
    let bins = Bins::in_dir(&bin_dir).map_err(|e| chain(&e))?;
    let mut opts = if args.quick {
        ScaleOptions::quick(bins)
    } else {
        ScaleOptions::full(bins)
    };
    if let Some(w) = args.window_secs {
        opts.window = Duration::from_secs(w.max(1));
    }
    if let Some(m) = args.moves {
        opts.moves = m;
    }
    opts.churn_rate = args.churn_rate.clamp(0.1, 1000.0);
    if let Some(c) = args.calm_secs {
        opts.calm = Duration::from_secs(c);
    }
    let sizes: Vec<usize> = if !args.services.is_empty() {
        args.services.clone()
    } else if args.quick {
        vec![200]
    } else {
        vec![1_000, 10_000]
    };
    /// The map size the overflow probe forces (the default's floor).
    const SMALL_MAP: u32 = 16_384;
    let overflow = match (args.overflow, args.quick) {
        (Some(0), _) | (None, true) => None,
        (Some(n), _) => Some(n),
        (None, false) => Some(20_000),
    };
    let meta = report::Meta {
        commit: args.commit.clone().unwrap_or_else(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
            first_line(
                std::process::Command::new("git")
                    .arg("-C")
                    .arg(dir)
                    .args(["rev-parse", "--short", "HEAD"]),
            )
            .map_or_else(|| "unknown".to_owned(), |c| format!("`{c}`"))
        }),
        date: first_line(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default(),
        churn_rate: opts.churn_rate,
        window_secs: opts.window.as_secs_f64(),
        moves: opts.moves,
        quick: args.quick,
    };

    let mut results: Vec<ScaleResult> = Vec::new();
    for s in sizes {
        let mut o = opts.clone();
        o.perf = args
            .perf
            .as_ref()
            .map(|p| PathBuf::from(format!("{}-{s}", p.display())));
        let r = scale::run(Shape::plain(s), &o).map_err(|e| format!("S = {s}: {}", chain(&e)))?;
        results.push(r);
        println!("{}", report::table(&results, &meta));
    }
    let mut failed_probe = None;
    if let Some(n) = overflow {
        let probes = [
            (
                "50,000 VIPs on a node that sized its map at start".to_owned(),
                Shape {
                    services: 16_667,
                    endpoints: 10,
                    multi_port_every: Some(1),
                },
                Vec::new(),
            ),
            (
                format!("More VIPs than the SERVICES map holds (`BALANCER_SERVICES_MAP_SIZE={SMALL_MAP}`)"),
                Shape {
                    services: n,
                    endpoints: 10,
                    multi_port_every: Some(10),
                },
                vec![("BALANCER_SERVICES_MAP_SIZE".to_owned(), SMALL_MAP.to_string())],
            ),
        ];
        for (title, shape, env) in probes {
            let o = ScaleOptions {
                no_churn: true,
                moves: 3,
                ready_limit: Duration::from_secs(60),
                agent_env: env,
                ..opts.clone()
            };
            match scale::run(shape, &o) {
                Ok(mut r) => {
                    r.probe = Some(title);
                    results.push(r);
                }
                Err(e) => failed_probe = Some(format!("S = {}: {}", shape.services, chain(&e))),
            }
        }
    }
    let mut md = report::section(&results, &meta);
    if let Some(e) = &failed_probe {
        md.push_str(&format!("The overflow probe failed: {e}\n"));
        eprintln!("balancer-scale-bench: the overflow probe failed: {e}");
    }
    println!("{md}");
    if let Some(p) = &args.markdown {
        std::fs::write(p, &md).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
        std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    Ok(())
}
