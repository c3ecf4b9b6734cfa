//! `cargo xtask bench`: balancer against the tools users would pick instead,
//! on the same machine in the same run.
//!
//! Three greeter backends (one runtime thread each) on loopback; h2load makes
//! unary `SayHello` calls through each path — direct to one backend, the
//! agent's explicit listener, the agent through the kernel redirect from an
//! enrolled pod (fast path on and off), HAProxy and nginx — interleaved over
//! several rounds; medians are reported. Writes docs/benchmarks.md and
//! docs/bench-*.svg.

mod chart;
mod idle;
mod load;
mod paths;
mod procs;
mod report;
mod scale;
mod stream;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use self::{
    load::{GrpcSample, Load, Measured},
    paths::{CallPath, Env, BACKENDS},
    procs::Proc,
};
use balancer_testing::process::place;

use crate::{pod::Pod, setup, sh};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A smoke run: one round, 20k calls, 1k idle connections, written to
    /// target/bench/ instead of docs/.
    #[arg(long)]
    quick: bool,
    /// Rounds; every path runs once per round, interleaved (default 5).
    #[arg(long)]
    rounds: Option<u32>,
    /// Unary calls per run (default 200000).
    #[arg(long)]
    calls: Option<u64>,
    /// Client connections of h2load.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 32)]
    streams: u32,
    /// Worker threads of every proxy (agent `--threads`, HAProxy `nbthread`,
    /// nginx `worker_processes`).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Idle client connections for the memory measurement (default 10000).
    #[arg(long)]
    idle: Option<usize>,
    /// Only these paths, comma-separated: direct, listener, redirect,
    /// redirect-nofast, haproxy, nginx.
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    /// Where to write benchmarks.md and the charts (default docs/, or
    /// target/bench/ with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use the `balancer-agent` and `greeter-server` in this directory
    /// instead of building them (release) first.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Also measure the `balancer-agent` in this directory, an earlier
    /// build (e.g. the last with the h2 engine), on the explicit listener:
    /// the `baseline` path, and the targets against it (bidi MB/s, the
    /// backends' CPU per call).
    #[arg(long, value_name = "DIR")]
    baseline: Option<PathBuf>,
    /// Run the scale bench instead: the agent in Kubernetes mode against a
    /// cluster of S Services (ready, memory, CPU per EndpointSlice change,
    /// change → call, VIPs in the kernel map); replaces the "Scale" section
    /// of benchmarks.md. Needs root. With --quick: S = 200, short windows.
    #[arg(long)]
    scale: bool,
    /// With --scale: the cluster sizes, comma-separated (default
    /// 1000,10000, then the map-overflow probe at 20000).
    #[arg(long, value_delimiter = ',', requires = "scale")]
    services: Vec<usize>,
}

/// Debian packages the bench runs.
const PACKAGES: &[(&str, &str)] = &[
    ("haproxy", "the bench's reference proxy (per-request HTTP/2 balancing)"),
    ("nginx", "the bench's reference proxy (grpc_pass)"),
    (
        "nghttp2-client",
        "h2load and nghttp: the bench's load generator and gRPC check",
    ),
];

/// Calls of the gRPC check after each run.
const SAMPLE_CALLS: u64 = 300;
/// A run whose machine had more than this many cores busy with processes
/// that are not part of the run is done again (once).
const DISTURBED_CORES: f64 = 0.25;

pub struct Settings {
    /// The commit measured (and whether it had local changes), read before
    /// the build.
    pub source: String,
    pub rounds: u32,
    pub calls: u64,
    pub connections: u32,
    pub streams: u32,
    pub threads: u32,
    pub idle: usize,
    /// Waiting for a calm machine before each run.
    pub calm: procs::Calm,
    pub paths: Vec<CallPath>,
    pub skipped: Vec<(CallPath, String)>,
}

/// One measured run of one path.
pub struct Run {
    pub path: CallPath,
    pub round: u32,
    pub m: Measured,
    /// Proxy CPU (user + system) per call, µs.
    pub cpu_us_per_call: Option<f64>,
    /// The three backends' CPU per call together, µs: the cost of serving
    /// one call on HTTP/2 (tonic on h2) with no proxy work in it.
    pub backend_cpu_us_per_call: f64,
    pub peak_rss_kb: Option<u64>,
    /// All the machine's CPU per call, µs: every process's and the
    /// kernel's (interrupt time included), and the kernel's part of it.
    pub machine_us_per_call: f64,
    pub kernel_us_per_call: f64,
    /// Cores busy with processes outside the run, on average.
    pub other_cores: f64,
    pub disturbed: bool,
    pub sample: GrpcSample,
}

/// Results outside the main table.
#[derive(Default)]
pub struct Extras {
    pub streaming: Vec<(CallPath, stream::Throughput)>,
    pub idle: Vec<(CallPath, idle::IdleResult)>,
    /// The agent's resident memory right after start, KiB.
    pub agent_idle_rss_kb: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.scale {
        return scale::run(&args);
    }
    let root = sh::root();
    let settings = settings(&args)?;
    if args.bin_dir.is_none() {
        // The agent's kernel programs need the toolchain that setup installs.
        setup::run()?;
    }
    setup::apt(PACKAGES)?;
    let privileged = sh::is_root();

    let bin = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            let mut build = sh::cargo();
            build
                .current_dir(&root)
                .args(["build", "--release", "-p", "greeter", "--bins"]);
            if settings.paths.iter().any(|p| p.is_agent()) {
                build.args(["-p", "balancer-agent"]);
            }
            if privileged {
                build.env_remove("BALANCER_EBPF_STUB");
            }
            sh::exec(&mut build)?;
            crate::sh::target_dir(&root).join("release")
        }
    };

    let nofile = procs::raise_nofile(65_536);
    let mut settings = settings;
    if nofile < settings.idle as u64 + 1_000 {
        settings.idle = nofile.saturating_sub(1_000) as usize;
        eprintln!(
            "bench: the open-file limit is {nofile}: opening {} idle connections",
            settings.idle
        );
    }
    let scratch = Scratch::new()?;
    let body = scratch.0.join("hello.bin");
    fs::write(&body, load::HELLO_BODY)?;

    let pod = if settings.paths.iter().any(|p| p.needs_root()) {
        Some(Pod::create(&paths::POD)?)
    } else {
        None
    };
    let env = Env {
        bin: bin.clone(),
        dir: scratch.0.clone(),
        threads: settings.threads,
        in_flight: settings.connections * settings.streams,
        nofile,
        pod,
        baseline: args.baseline.clone(),
    };
    // Declared after `env`, so dropped (stopped) before the pod's cgroups
    // are removed.
    let mut backends = Vec::new();
    for (name, addr) in BACKENDS {
        let program = bin.join("greeter-server");
        // On the kernel-redirect paths the backends are pods of this node
        // (under the attach cgroup), so the agent's connections to them can
        // take the fast path too.
        let mut cmd = Command::new(&program);
        if let Some(pod) = &env.pod {
            place(&mut cmd, None, Some(&pod.backends))?;
        }
        let mut p = Proc::spawn(
            name,
            cmd.args(["--listen", addr, "--name", name, "--threads", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        balancer_testing::port::wait_for_port(addr.parse()?, Duration::from_secs(10))?;
        p.check_alive()?;
        backends.push(p);
    }

    let mut runs = Vec::new();
    for round in 1..=settings.rounds {
        for path in round_order(&settings.paths, round) {
            let mut run = measure(&env, &backends, &body, &settings, path, round)?;
            // Again once, if waiting for a calm machine can still help.
            if run.disturbed && settings.calm.has_budget() {
                eprintln!(
                    "bench: {} round {round} disturbed ({:.2} cores busy elsewhere): running it again",
                    path.key(),
                    run.other_cores
                );
                run = measure(&env, &backends, &body, &settings, path, round)?;
            }
            print_run(&run);
            runs.push(run);
        }
    }

    let mut extras = Extras::default();
    for path in settings.paths.iter().copied() {
        if path == (CallPath::AgentRedirect { fast_path: false }) {
            continue;
        }
        match stream::measure(&env, path, &bin, &settings) {
            Ok(t) => extras.streaming.push((path, t)),
            Err(e) => eprintln!("bench: streaming through {}: {e:#}", path.key()),
        }
    }
    for path in settings.paths.iter().copied() {
        if !matches!(
            path,
            CallPath::AgentListener | CallPath::Haproxy | CallPath::Nginx | CallPath::Baseline
        ) {
            continue;
        }
        settings.calm.wait();
        // The rounds are done: a failure here loses only this measurement.
        let running = match env.start(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("bench: idle connections to {}: {e:#}", path.key());
                continue;
            }
        };
        let (Some(proxy), Ok(target)) = (&running.proxy, running.target.parse()) else {
            continue;
        };
        let r = idle::measure(proxy.pid(), target, settings.idle, Duration::from_secs(120));
        if path == CallPath::AgentListener {
            extras.agent_idle_rss_kb = Some(r.rss_before_kb);
        }
        eprintln!(
            "bench: {} with {} idle connections ({} still open): {} KiB → {} KiB",
            path.key(),
            r.opened,
            r.alive,
            r.rss_before_kb,
            r.rss_after_kb
        );
        extras.idle.push((path, r));
    }
    drop(backends);

    let out = match (&args.out, args.quick) {
        (Some(o), _) => o.clone(),
        (None, true) => crate::sh::target_dir(&root).join("bench"),
        (None, false) => root.join("docs"),
    };
    fs::create_dir_all(&out)?;
    let text = report::write(&out, &settings, &runs, &extras)?;
    println!("{text}");
    eprintln!("bench: wrote {}", out.join("benchmarks.md").display());
    Ok(())
}

/// The paths the targets' calls/s ratios compare, in the order they run.
const COMPARED: [CallPath; 3] = [
    CallPath::Haproxy,
    CallPath::AgentListener,
    CallPath::AgentRedirect { fast_path: true },
];

/// The order of `paths` in `round` (from 1). The paths the targets compare
/// run first and back to back, forwards in odd rounds and backwards in even
/// ones, so that a machine whose speed drifts during a round moves both
/// sides of a ratio alike and favours neither; the other paths follow,
/// rotated so that none always runs first.
fn round_order(paths: &[CallPath], round: u32) -> Vec<CallPath> {
    let mut order: Vec<CallPath> = COMPARED.into_iter().filter(|p| paths.contains(p)).collect();
    if round.is_multiple_of(2) {
        order.reverse();
    }
    let rest: Vec<CallPath> = paths.iter().copied().filter(|p| !COMPARED.contains(p)).collect();
    if !rest.is_empty() {
        let shift = (round as usize).saturating_sub(1) % rest.len();
        order.extend(rest[shift..].iter().chain(&rest[..shift]));
    }
    order
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let mut paths = Vec::new();
    if args.paths.is_empty() {
        paths.extend(CallPath::ALL);
    } else {
        for key in &args.paths {
            let Some(p) = CallPath::from_key(key.trim()) else {
                bail!(
                    "bench: --paths: unknown path {key:?} (known: {})",
                    CallPath::known().map(|p| p.key()).collect::<Vec<_>>().join(", ")
                );
            };
            paths.push(p);
        }
    }
    match &args.baseline {
        Some(dir) => {
            if !dir.join("balancer-agent").is_file() {
                bail!("bench: --baseline: no balancer-agent in {}", dir.display());
            }
            if !paths.contains(&CallPath::Baseline) {
                let at = paths
                    .iter()
                    .position(|p| *p == CallPath::AgentListener)
                    .map_or(0, |i| i + 1);
                paths.insert(at, CallPath::Baseline);
            }
        }
        None if paths.contains(&CallPath::Baseline) => bail!("bench: --paths baseline needs --baseline DIR"),
        None => {}
    }
    let mut skipped = Vec::new();
    if !sh::is_root() {
        paths.retain(|p| {
            if p.needs_root() {
                eprintln!(
                    "bench: NOT ROOT — skipping `{}`: the kernel redirect needs eBPF, a network namespace and cgroups",
                    p.key()
                );
                skipped.push((*p, "not run: needs root".to_owned()));
                false
            } else {
                true
            }
        });
    }
    if paths.is_empty() {
        bail!("bench: no path to measure");
    }
    if args.connections == 0 || args.streams == 0 || args.threads == 0 {
        bail!("bench: --connections, --streams and --threads must be at least 1");
    }
    Ok(Settings {
        source: report::source_tree(),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1),
        calls: args.calls.unwrap_or(if args.quick { 20_000 } else { 200_000 }).max(100),
        connections: args.connections,
        streams: args.streams,
        threads: args.threads,
        idle: args.idle.unwrap_or(if args.quick { 1_000 } else { 10_000 }),
        calm: if args.quick {
            procs::Calm::new(Duration::from_secs(3), Duration::from_secs(20))
        } else {
            procs::Calm::new(Duration::from_secs(30), Duration::from_secs(180))
        },
        paths,
        skipped,
    })
}

/// Starts `path`, warms it up, measures one run, checks a sample at the
/// gRPC level, stops it.
fn measure(env: &Env, backends: &[Proc], body: &Path, s: &Settings, path: CallPath, round: u32) -> anyhow::Result<Run> {
    s.calm.wait();
    let running = env
        .start(path)
        .with_context(|| format!("bench: starting {}", path.key()))?;
    let client = |args: &[String], program: &str| -> anyhow::Result<Command> {
        let program = Path::new(program);
        match (&env.pod, running.in_pod) {
            (Some(pod), true) => pod.command(program, args),
            _ => {
                let mut c = Command::new(program);
                c.args(args);
                Ok(c)
            }
        }
    };
    let load = |calls: u64| Load {
        calls,
        connections: s.connections,
        streams: s.streams,
        target: &running.target,
        body,
        dir: &env.dir,
    };
    // Warm-up: connections, pools, caches; not measured.
    let warm = load((s.calls / 20).max(1_000));
    warm.run(&mut client(&warm.args(true), "h2load")?, Duration::from_secs(60))
        .with_context(|| format!("bench: warm-up of {}", path.key()))?;

    let proxy_pid = running.proxy.as_ref().map(Proc::pid);
    let cpu = || proxy_pid.map(procs::tree_cpu_secs).unwrap_or(0.0);
    let backend_cpu = || backends.iter().map(|b| procs::tree_cpu_secs(b.pid())).sum::<f64>();
    let (cpu0, bcpu0, mach0, t0) = (cpu(), backend_cpu(), procs::MachineCpu::now(), Instant::now());
    let main = load(s.calls);
    // Bounded: even 2,000 calls/s finishes within this.
    let limit = Duration::from_secs(60 + s.calls / 2_000);
    let m = main
        .run(&mut client(&main.args(true), "h2load")?, limit)
        .with_context(|| format!("bench: {} round {round}", path.key()))?;
    let (cpu1, bcpu1, mach1) = (cpu(), backend_cpu(), procs::MachineCpu::now());
    let window = t0.elapsed().as_secs_f64();

    let tps = procs::clock_ticks_per_sec();
    let busy = mach1.busy.saturating_sub(mach0.busy) as f64 / tps;
    let kthreads = mach1.kernel_threads.saturating_sub(mach0.kernel_threads) as f64 / tps;
    let ours = (cpu1 - cpu0) + (bcpu1 - bcpu0) + m.client_cpu + kthreads;
    let other_cores = ((busy - ours) / window.max(1e-3)).max(0.0);

    let sample = load::grpc_sample(
        &|args: &[String]| client(args, "nghttp"),
        &running.target,
        body,
        SAMPLE_CALLS,
    )?;
    let peak_rss_kb = proxy_pid.map(procs::tree_peak_rss_kb);
    let cpu_us_per_call = proxy_pid.map(|_| (cpu1 - cpu0) * 1e6 / m.succeeded.max(1) as f64);
    let backend_cpu_us_per_call = (bcpu1 - bcpu0) * 1e6 / m.succeeded.max(1) as f64;
    let per_call = |ticks: u64| ticks as f64 / tps * 1e6 / m.succeeded.max(1) as f64;
    let machine_us_per_call = per_call(mach1.work.saturating_sub(mach0.work));
    let kernel_us_per_call = per_call(mach1.kernel.saturating_sub(mach0.kernel));
    drop(running);
    Ok(Run {
        path,
        round,
        m,
        cpu_us_per_call,
        backend_cpu_us_per_call,
        peak_rss_kb,
        machine_us_per_call,
        kernel_us_per_call,
        other_cores,
        disturbed: other_cores > DISTURBED_CORES,
        sample,
    })
}

fn print_run(r: &Run) {
    eprintln!(
        "bench: round {} {:<16} {:>8.0} calls/s  p50 {:.2} ms  p99 {:.2} ms  proxy CPU {}  backends {:.1} µs/call  failed {}  gRPC OK {}/{}  other {:.2} cores",
        r.round,
        r.path.key(),
        r.m.calls_per_sec,
        r.m.pct.p50,
        r.m.pct.p99,
        r.cpu_us_per_call
            .map(|c| format!("{c:.1} µs/call"))
            .unwrap_or_else(|| "–".into()),
        r.backend_cpu_us_per_call,
        r.m.failed,
        r.sample.ok,
        r.sample.calls,
        r.other_cores,
    );
}

/// The bench's scratch directory (configs, logs), removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    /// In memory (`/dev/shm`) where the machine has it: h2load logs every
    /// call, and writing that log back to a disk costs the kernel's flush
    /// workers a share of a core during the run, which the paths under
    /// test would pay for.
    fn new() -> anyhow::Result<Self> {
        let shm = Path::new("/dev/shm");
        let base = if procs::is_tmpfs(shm) {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("balancer-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compared_paths_run_back_to_back_alternating_and_every_path_runs_once() {
        let listener = CallPath::AgentListener;
        let redirect = CallPath::AgentRedirect { fast_path: true };
        let nofast = CallPath::AgentRedirect { fast_path: false };
        let paths = CallPath::ALL;
        let first = round_order(&paths, 1);
        let second = round_order(&paths, 2);
        assert_eq!(first[..3], [CallPath::Haproxy, listener, redirect]);
        assert_eq!(second[..3], [redirect, listener, CallPath::Haproxy]);
        for round in 1..=4 {
            let order = round_order(&paths, round);
            assert_eq!(order.len(), paths.len());
            assert!(paths.iter().all(|p| order.contains(p)), "round {round}: {order:?}");
        }
        // The others rotate.
        assert_ne!(first[3], second[3]);
        // Only some of the compared paths: they still lead.
        assert_eq!(
            round_order(&[nofast, listener, CallPath::Direct], 1),
            [listener, nofast, CallPath::Direct]
        );
    }
}
