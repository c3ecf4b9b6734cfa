//! docs/benchmarks.md and docs/bench-*.svg from the runs of one bench.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, process::Command};

use super::{
    chart::{self, Bars},
    paths::{CallPath, BACKENDS},
    stream, Extras, Run, Settings,
};
use crate::sh;

/// What a path's runs come to: medians over its undisturbed runs.
pub struct Summary {
    pub path: CallPath,
    /// Runs left out of the medians because the machine was busy elsewhere.
    pub dropped: usize,
    /// Every run of the path was disturbed: its medians are of disturbed runs.
    pub all_disturbed: bool,
    pub calls_per_sec: f64,
    /// The lowest and highest calls/s of the runs the medians are taken of.
    pub calls_range: (f64, f64),
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub cpu_us_per_call: Option<f64>,
    pub backend_cpu_us_per_call: f64,
    /// All the machine's CPU per call, and the kernel's part of it, µs.
    pub machine_us_per_call: f64,
    pub kernel_us_per_call: f64,
    pub peak_rss_kb: Option<u64>,
    /// Share of the checked calls each backend answered, in BACKENDS order.
    pub shares: Vec<f64>,
    /// Calls h2load counted as failed, over all runs.
    pub failed: u64,
    /// gRPC-checked calls, and how many of them ended with grpc-status 0.
    pub checked: u64,
    pub grpc_ok: u64,
    pub grpc_errors: BTreeMap<String, u64>,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn summarize(path: CallPath, runs: &[Run]) -> Option<Summary> {
    let all: Vec<&Run> = runs.iter().filter(|r| r.path == path).collect();
    if all.is_empty() {
        return None;
    }
    let calm: Vec<&Run> = all.iter().copied().filter(|r| !r.disturbed).collect();
    let used = if calm.is_empty() { all.clone() } else { calm };
    let med = |f: &dyn Fn(&Run) -> f64| median(used.iter().map(|r| f(r)).collect());
    let mut per_backend = vec![0u64; BACKENDS.len()];
    let (mut checked, mut grpc_ok) = (0, 0);
    let mut grpc_errors = BTreeMap::new();
    for r in &all {
        checked += r.sample.calls;
        grpc_ok += r.sample.ok;
        for (k, v) in &r.sample.errors {
            *grpc_errors.entry(k.clone()).or_default() += v;
        }
        for (backend, n) in &r.sample.backends {
            if let Some(i) = BACKENDS.iter().position(|(name, _)| name == backend) {
                per_backend[i] += n;
            }
        }
    }
    let answered: u64 = per_backend.iter().sum();
    Some(Summary {
        path,
        dropped: all.len() - used.len(),
        all_disturbed: used.iter().all(|r| r.disturbed),
        calls_per_sec: med(&|r| r.m.calls_per_sec),
        calls_range: used.iter().fold((f64::INFINITY, 0.0), |(lo, hi), r| {
            (lo.min(r.m.calls_per_sec), hi.max(r.m.calls_per_sec))
        }),
        p50: med(&|r| r.m.pct.p50),
        p90: med(&|r| r.m.pct.p90),
        p99: med(&|r| r.m.pct.p99),
        cpu_us_per_call: used[0]
            .cpu_us_per_call
            .map(|_| med(&|r| r.cpu_us_per_call.unwrap_or(f64::NAN))),
        backend_cpu_us_per_call: med(&|r| r.backend_cpu_us_per_call),
        machine_us_per_call: med(&|r| r.machine_us_per_call),
        kernel_us_per_call: med(&|r| r.kernel_us_per_call),
        peak_rss_kb: all.iter().filter_map(|r| r.peak_rss_kb).max(),
        shares: per_backend.iter().map(|&n| n as f64 / answered.max(1) as f64).collect(),
        failed: all.iter().map(|r| r.m.failed).sum(),
        checked,
        grpc_ok,
        grpc_errors,
    })
}

const HOW_TO_RUN: &str = "\
# Benchmarks

balancer next to the proxies users would pick instead — HAProxy and nginx —
on the same machine, in the same run. Absolute numbers move from machine to
machine and run to run; the ratios measured in one run are what to read.
The targets' calls/s ratios are taken round by round and the median of
those is shown with their range. The paths they compare (HAProxy, the
explicit listener, the kernel redirect) run back to back at the start of
each round, in the opposite order every other round, so a machine that
changes speed moves both sides of each ratio alike.

## Run it

```sh
cargo xtask bench           # as root: about 10 minutes; writes docs/benchmarks.md and docs/bench-*.svg
cargo xtask bench --quick   # a smoke run: one round, 20k calls, written to target/bench/
cargo xtask bench --scale   # the agent against large clusters: the Scale section at the end
```

`cargo xtask bench` first runs `cargo xtask setup`, installs what it needs
from Debian (`haproxy`, `nginx`, `nghttp2-client` for `h2load` and
`nghttp`), builds the agent and the greeter in release mode, and runs
everything on loopback and in a network namespace of its own; it stops every
process it started and removes the namespace and cgroups it made, also on
error. Without root the kernel-redirect paths are skipped (and the table says
so). Run it on an otherwise idle machine.

Options: `--rounds N` (default 5), `--calls N` (default 200000),
`--threads N` (every proxy's worker threads, default 1), `--connections N
--streams N` (h2load's `-c`/`-m`, default 4 × 32), `--idle N` (idle
connections, default 10000), `--paths
direct,listener,redirect,redirect-nofast,haproxy,nginx`, `--out DIR`,
`--bin-dir DIR` (measure prebuilt binaries instead of building),
`--baseline DIR` (also measure the `balancer-agent` in DIR, an earlier
build, on the explicit listener: the `baseline` path). The last build with
the h2 engine, the data plane the relay replaced, is commit `3036110`:

```sh
git worktree add /tmp/h2-engine 3036110
CARGO_TARGET_DIR=/tmp/h2-engine/target cargo build --release -p balancer-agent --manifest-path /tmp/h2-engine/Cargo.toml
cargo xtask bench --baseline /tmp/h2-engine/target/release
```

## Method

- Backends: three greeter servers (tonic, one runtime thread each) on
  127.0.0.1.
- Load: `h2load -t1` making unary `helloworld.Greeter/SayHello` calls with a
  real gRPC body (`HelloRequest{name: \"world\"}`), `content-type:
  application/grpc`, `te: trailers`; a fixed number of calls per run after a
  warm-up of 5%. Latency percentiles come from h2load's per-request log,
  written to memory (`/dev/shm`) so that the disk's writeback is not part
  of the run.
- gRPC status: h2load only checks the HTTP status, so after every run 300
  calls go through the same path over one connection with `nghttp`, and every
  `grpc-status` trailer is checked; the replies name the backend that
  answered, which gives the per-backend share.
- Paths, interleaved (every path once per round: HAProxy, explicit
  listener and kernel redirect first, forwards and backwards in turn, then
  the others, rotated each round), medians over the rounds:
  - **direct**: h2load straight to one backend — the ceiling, no balancing;
  - **balancer, explicit listener**: the agent with `--no-ebpf`, h2load dials
    the service's listener on 127.0.0.1;
  - **balancer, kernel redirect**: h2load runs in a client \"pod\" (its own
    network namespace and an enrolled cgroup) and dials the Service VIP; the
    agent's `cgroup/connect4` program redirects the connection into the agent,
    with the `sk_msg` fast path on (`fast_path: true`) and off; the backends
    run in a cgroup below the attach cgroup, as pods of the node would, so
    with the fast path on the agent's connections to them take it too;
  - **HAProxy**: `mode http`, `bind … proto h2`, `balance roundrobin`,
    `server … proto h2`, `http-reuse always`;
  - **baseline** (with `--baseline`): an earlier agent build on the explicit
    listener, as above;
  - **nginx**: `listen … http2`, `grpc_pass`, an upstream `keepalive` pool
    larger than the calls in flight, `keepalive_requests` raised on both
    sides.
  Every proxy gets the same number of worker threads (agent `--threads`,
  HAProxy `nbthread`, nginx `worker_processes`).
- Proxy CPU per call: the proxy's user + system time from `/proc/PID/stat`
  (all its processes) over the measured run, divided by the calls. Peak RSS:
  `VmHWM` (summed over nginx's processes). With the `sk_msg` fast path the
  kernel moves bytes between the pod's socket and the agent's in the
  sender's context, so part of that work is charged to h2load rather than
  to the agent; with it off, loopback TCP on a veth is charged the same way
  as for the other proxies.
- Before each run the bench waits for an idle machine (up to 30 s, three
  minutes in all); a run during which processes outside the bench used more
  than a quarter of a core (the machine's user and system time, less that of
  the bench's processes and of kernel threads; interrupt and steal time are
  not counted) is run again once, and left out of the medians if it was
  disturbed again (unless every run of that path was).
- Backends CPU per call: the three greeters' user + system time over the
  run, divided by the calls; on the direct path it is what serving one call
  over HTTP/2 costs tonic on `h2` — the agent does that work twice per call,
  once as a server and once as a client.
- Bidi streaming: `balancer.test.Echo/BidiStream` calls, each a stream of 64
  messages of 16 KiB that the backend echoes one by one while the request
  stream still flows (h2load sends the stream from a file).
- Idle connections: a helper opens that many HTTP/2 connections (preface and
  SETTINGS, then nothing) to the proxy on loopback; its resident memory is
  read two seconds later.
";

pub fn write(out: &Path, s: &Settings, runs: &[Run], extras: &Extras) -> anyhow::Result<String> {
    let sums: Vec<Summary> = s.paths.iter().filter_map(|p| summarize(*p, runs)).collect();
    let find = |p: CallPath| sums.iter().find(|x| x.path == p);
    let haproxy = find(CallPath::Haproxy);
    let direct = find(CallPath::Direct);

    let mut md = String::from(HOW_TO_RUN);
    let _ = writeln!(md, "\n## Results\n");
    let _ = writeln!(md, "{}\n", machine(s));
    let _ = writeln!(
        md,
        "| path | calls/s | × HAProxy | × direct | p50 ms | p90 ms | p99 ms | proxy CPU µs/call | CPU × HAProxy | backends CPU µs/call | proxy peak RSS MB | backend share (sample) | failed calls | gRPC OK (checked) |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    for x in &sums {
        let ratio = |a: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 && b.is_finite() && a.is_finite() => format!("{:.2}", a / b),
            _ => "–".into(),
        };
        let shares = x
            .shares
            .iter()
            .map(|f| format!("{:.0}", f * 100.0))
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(
            md,
            "| {}{} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {} | {} % | {} | {}/{}{} |",
            x.path.label(),
            if x.all_disturbed {
                " (every run disturbed by other work)".to_owned()
            } else if x.dropped > 0 {
                format!(
                    " ({} disturbed run{} left out)",
                    x.dropped,
                    if x.dropped > 1 { "s" } else { "" }
                )
            } else {
                String::new()
            },
            x.calls_per_sec,
            ratio(x.calls_per_sec, haproxy.map(|h| h.calls_per_sec)),
            ratio(x.calls_per_sec, direct.map(|d| d.calls_per_sec)),
            x.p50,
            x.p90,
            x.p99,
            x.cpu_us_per_call
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "–".into()),
            match x.cpu_us_per_call {
                Some(c) => ratio(c, haproxy.and_then(|h| h.cpu_us_per_call)),
                None => "–".into(),
            },
            x.backend_cpu_us_per_call,
            x.peak_rss_kb
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "–".into()),
            shares,
            x.failed,
            x.grpc_ok,
            x.checked,
            if x.grpc_errors.is_empty() {
                String::new()
            } else {
                format!(
                    " (errors: {})",
                    x.grpc_errors
                        .iter()
                        .map(|(k, v)| format!("status {k} × {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        );
    }
    for (p, why) in &s.skipped {
        let _ = writeln!(md, "| {} | {why} | | | | | | | | | | | | |", p.label());
    }
    let _ = writeln!(
        md,
        "\nMedians of {} round{} of {} calls each; \"backend share\" is the share of the {} gRPC-checked calls per round answered by {}; \"failed calls\" counts h2load's failures over all rounds.\n",
        s.rounds,
        if s.rounds > 1 { "s" } else { "" },
        s.calls,
        super::SAMPLE_CALLS,
        BACKENDS.map(|b| b.0).join(" / "),
    );
    let _ = writeln!(md, "![calls per second](bench-calls.svg)\n");
    let _ = writeln!(md, "![latency](bench-latency.svg)\n");
    let _ = writeln!(md, "![proxy CPU per call](bench-cpu.svg)\n");

    if !extras.streaming.is_empty() {
        let _ = writeln!(
            md,
            "### Bidi streaming\n\n`balancer.test.Echo/BidiStream` calls of {} messages of {} KiB each way (the backend echoes every message as it arrives), h2load `-c4 -m1`.\n\n| path | MB/s (request payload; as much comes back) | streams | failed |\n|---|---:|---:|---:|",
            stream::MESSAGES_PER_CALL,
            stream::MESSAGE_BYTES / 1024
        );
        for (p, t) in &extras.streaming {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} |",
                p.label(),
                t.mb_per_sec,
                t.calls,
                t.failed
            );
        }
        md.push('\n');
    }
    if !extras.idle.is_empty() {
        let _ = writeln!(
            md,
            "### Memory with idle client connections\n\n| proxy | RSS after start MB | idle connections opened (still open) | RSS with them MB | per connection KiB |\n|---|---:|---:|---:|---:|"
        );
        for (p, r) in &extras.idle {
            let per = (r.rss_after_kb.saturating_sub(r.rss_before_kb)) as f64 / r.alive.max(1) as f64;
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} ({}) | {:.1} | {:.1} |",
                p.label(),
                r.rss_before_kb as f64 / 1024.0,
                r.opened,
                r.alive,
                r.rss_after_kb as f64 / 1024.0,
                per
            );
        }
        md.push('\n');
    }

    md.push_str(&targets(&sums, &round_values(runs), extras));
    md.push_str(&limits(&sums, extras));

    let _ = writeln!(md, "### Every run\n\n| round | path | calls/s | p50 ms | p99 ms | proxy CPU µs/call | machine CPU µs/call (kernel) | busy elsewhere (cores) | used |\n|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} ({:.1}) | {:.2} | {} |",
            r.round,
            r.path.key(),
            r.m.calls_per_sec,
            r.m.pct.p50,
            r.m.pct.p99,
            r.cpu_us_per_call
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "–".into()),
            r.machine_us_per_call,
            r.kernel_us_per_call,
            r.other_cores,
            if r.disturbed { "no (disturbed)" } else { "yes" }
        );
    }

    // The scale bench's section (`cargo xtask bench --scale`) stays.
    let old = fs::read_to_string(out.join("benchmarks.md")).unwrap_or_default();
    if let Some(scale) = super::scale::block(&old) {
        let _ = write!(md, "\n{scale}\n");
    }
    fs::write(out.join("benchmarks.md"), &md)?;
    charts(out, &sums)?;
    Ok(md)
}

/// What bounds the agent's CPU and memory, with this run's figures.
fn limits(sums: &[Summary], extras: &Extras) -> String {
    let find = |p: CallPath| sums.iter().find(|x| x.path == p);
    let (Some(direct), Some(listener)) = (find(CallPath::Direct), find(CallPath::AgentListener)) else {
        return String::new();
    };
    let Some(agent) = listener.cpu_us_per_call else {
        return String::new();
    };
    let haproxy = find(CallPath::Haproxy)
        .and_then(|h| h.cpu_us_per_call)
        .map(|h| format!(", HAProxy {h:.1} µs"))
        .unwrap_or_default();
    let mut md = String::from(
        "### What limits the agent

",
    );
    let _ = writeln!(
        md,
        "CPU. Per call the agent's relay parses the client's frames, decodes \
the request's header block and re-encodes it towards the endpoint (HPACK \
with a table per connection and direction, so the fields every call repeats \
cost a byte or two; a block received again byte for byte gives the head \
decoded before, and a head sent again goes out as the same block), forwards DATA under a new frame header (payloads of \
8 KiB or more as slices of the buffer they were read into, never copied), \
and does the same for the response and its trailers; one task drives each connection, \
calls have no task of their own, and each connection writes once per \
scheduler turn whatever number of calls it carries. In this run one greeter \
backend — tonic on `h2`, answering a call with no other work — spent \
{:.1} µs of CPU per call (direct path); the agent, relaying both sides and \
balancing, spent {agent:.1} µs{haproxy}. `cargo bench -p balancer-relay` \
measures the relay's core alone (frames and HPACK of one unary call, no \
sockets).\n",
        direct.backend_cpu_us_per_call,
    );
    if let Some(redirect) = find(CallPath::AgentRedirect { fast_path: true }) {
        let range = |x: &Summary| format!("{:.0}–{:.0}", x.calls_range.0, x.calls_range.1);
        let _ = writeln!(
            md,
            "Kernel redirect and explicit listener. Both paths do the same \
HTTP/2 work per call in the agent. With the `sk_msg` fast path, the bytes \
between the client's socket and the agent's, and between the agent's \
upstream sockets and the backends' (pods of this node, below the attach \
cgroup), skip TCP: each message is handed to the peer socket in the \
sender's send. Per call the agent spent {:.1} µs through the kernel \
redirect and {:.1} µs on the explicit listener, the backends {:.1} and \
{:.1} µs. The whole machine — client, agent, backends and the kernel's \
network work — spent {:.1} µs per call through the kernel redirect and \
{:.1} µs on the explicit listener; the kernel's part was {:.1} and {:.1} \
µs. What the fast path saves is that kernel work, the same for a send \
whatever number of calls it carries, so its share of a call's cost is \
small when the connections batch many calls per send, as here. \
Calls/s over the rounds ranged {} on the explicit listener and {} through \
the kernel redirect in this run.\n",
            redirect.cpu_us_per_call.unwrap_or(f64::NAN),
            listener.cpu_us_per_call.unwrap_or(f64::NAN),
            redirect.backend_cpu_us_per_call,
            listener.backend_cpu_us_per_call,
            redirect.machine_us_per_call,
            listener.machine_us_per_call,
            redirect.kernel_us_per_call,
            listener.kernel_us_per_call,
            range(listener),
            range(redirect),
        );
    }
    if let Some((_, r)) = extras.idle.iter().find(|(p, _)| *p == CallPath::AgentListener) {
        let per = r.rss_after_kb.saturating_sub(r.rss_before_kb) as f64 / r.alive.max(1) as f64;
        let _ = writeln!(
            md,
            "Memory. Each idle HTTP/2 client connection held {per:.1} KiB of \
the agent's memory in this run: its task (the connection's state: HPACK \
tables that allocate at their first entry, windows, the call map), the \
socket's registration with the runtime, its keepalive timer and its entry \
in the connection registry. Read and write buffers exist only while bytes \
are in flight and are released when the connection goes idle.\n",
        );
    }
    md
}

/// Each path's calls/s by round, from the runs the medians are taken of.
type Rounds = BTreeMap<CallPath, Vec<(u32, f64)>>;

fn round_values(runs: &[Run]) -> Rounds {
    let mut out: Rounds = BTreeMap::new();
    for path in runs.iter().map(|r| r.path) {
        if out.contains_key(&path) {
            continue;
        }
        let all: Vec<&Run> = runs.iter().filter(|r| r.path == path).collect();
        let calm: Vec<&Run> = all.iter().copied().filter(|r| !r.disturbed).collect();
        let used = if calm.is_empty() { all } else { calm };
        out.insert(path, used.iter().map(|r| (r.round, r.m.calls_per_sec)).collect());
    }
    out
}

/// A ratio of two paths taken round by round: the paths the targets
/// compare ran back to back in each round, so a machine that gets slower or faster between
/// rounds (other guests of the host, thermal limits) moves both sides of
/// each ratio alike. The median over the rounds both paths ran in, and the
/// lowest and highest.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Paired {
    median: f64,
    lo: f64,
    hi: f64,
    rounds: usize,
}

fn paired(a: &[(u32, f64)], b: &[(u32, f64)]) -> Option<Paired> {
    let ratios: Vec<f64> = a
        .iter()
        .filter_map(|(round, x)| b.iter().find(|(r, _)| r == round).map(|(_, y)| x / y))
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        return None;
    }
    Some(Paired {
        lo: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        hi: ratios.iter().copied().fold(0.0, f64::max),
        rounds: ratios.len(),
        median: median(ratios),
    })
}

/// A calls/s ratio of `a` to `b`: paired by round when two rounds or more
/// have both, else the ratio of the medians.
fn calls_ratio(rounds: &Rounds, a: &Summary, b: &Summary) -> (f64, String) {
    let empty = Vec::new();
    let get = |p: CallPath| rounds.get(&p).unwrap_or(&empty);
    match paired(get(a.path), get(b.path)) {
        Some(p) if p.rounds >= 2 => (p.median, format!("{:.2}× (rounds {:.2}–{:.2})", p.median, p.lo, p.hi)),
        _ => {
            let r = a.calls_per_sec / b.calls_per_sec;
            (r, format!("{r:.2}×"))
        }
    }
}

/// The project's targets for the agent, checked against this run; calls/s
/// ratios are medians of the per-round ratios (see [`paired`]).
fn targets(sums: &[Summary], rounds: &Rounds, extras: &Extras) -> String {
    let find = |p: CallPath| sums.iter().find(|x| x.path == p);
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    };
    let listener = find(CallPath::AgentListener);
    let redirect = find(CallPath::AgentRedirect { fast_path: true });
    let haproxy = find(CallPath::Haproxy);
    let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
    if let (Some(l), Some(h)) = (listener, haproxy) {
        let (r, shown) = calls_ratio(rounds, l, h);
        rows.push((
            "explicit listener ≥ 1.25× HAProxy calls/s".into(),
            shown,
            Some(r >= 1.25),
        ));
        if let (Some(lc), Some(hc)) = (l.cpu_us_per_call, h.cpu_us_per_call) {
            let r = lc / hc;
            rows.push((
                "explicit listener ≤ 0.75× HAProxy CPU per call".into(),
                format!("{r:.2}×"),
                Some(r <= 0.75),
            ));
        }
    }
    if let (Some(l), Some(r)) = (listener, redirect) {
        let (x, shown) = calls_ratio(rounds, r, l);
        rows.push((
            "kernel redirect + fast path ≥ 1.1× the explicit listener's calls/s".into(),
            shown,
            Some(x >= 1.1),
        ));
        rows.push((
            "kernel redirect + fast path: lower p99 than the explicit listener".into(),
            format!("{:.2} vs {:.2} ms", r.p99, l.p99),
            Some(r.p99 < l.p99),
        ));
    }
    if let (Some(l), Some(b)) = (listener, find(CallPath::Baseline)) {
        rows.push((
            "backends' CPU per call behind the explicit listener below the baseline's".into(),
            format!(
                "{:.1} vs {:.1} µs",
                l.backend_cpu_us_per_call, b.backend_cpu_us_per_call
            ),
            Some(l.backend_cpu_us_per_call < b.backend_cpu_us_per_call),
        ));
    }
    let streaming = |p: CallPath| {
        extras
            .streaming
            .iter()
            .find(|(x, _)| *x == p)
            .map(|(_, t)| t.mb_per_sec)
    };
    if let (Some(l), Some(b)) = (streaming(CallPath::AgentListener), streaming(CallPath::Baseline)) {
        rows.push((
            "bidi streaming MB/s through the explicit listener not below the baseline's".into(),
            format!("{l:.0} vs {b:.0} MB/s"),
            Some(l >= b),
        ));
    }
    if let Some(kb) = extras.agent_idle_rss_kb {
        let mb = kb as f64 / 1024.0;
        rows.push(("agent RSS ≤ 20 MB idle".into(), format!("{mb:.1} MB"), Some(mb <= 20.0)));
    }
    let per_conn = |p: CallPath| {
        extras
            .idle
            .iter()
            .find(|(x, _)| *x == p)
            .map(|(_, r)| r.rss_after_kb.saturating_sub(r.rss_before_kb) as f64 / r.alive.max(1) as f64)
    };
    if let Some(kib) = per_conn(CallPath::AgentListener) {
        let below = per_conn(CallPath::Haproxy).is_none_or(|h| kib < h);
        rows.push((
            "≤ 3 KiB per idle client connection, below HAProxy".into(),
            format!("{kib:.1} KiB"),
            Some(kib <= 3.0 && below),
        ));
    }
    if let Some((_, r)) = extras.idle.iter().find(|(p, _)| *p == CallPath::AgentListener) {
        let mb = r.rss_after_kb as f64 / 1024.0;
        rows.push((
            format!("agent RSS ≤ 40 MB with {} client connections", r.alive),
            format!("{mb:.1} MB"),
            Some(mb <= 40.0),
        ));
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from("### The agent's targets in this run\n\n| target | this run | |\n|---|---:|---|\n");
    for (what, value, ok) in rows {
        let _ = writeln!(md, "| {what} | {value} | {} |", verdict(ok));
    }
    md.push('\n');
    md
}

fn charts(out: &Path, sums: &[Summary]) -> anyhow::Result<()> {
    let groups: Vec<String> = sums.iter().map(|x| x.path.short().to_owned()).collect();
    chart::draw(
        &Bars {
            title: "unary gRPC calls per second (higher is better)",
            unit: "calls/s",
            groups: groups.clone(),
            series: vec![("calls/s", sums.iter().map(|x| x.calls_per_sec).collect())],
        },
        &out.join("bench-calls.svg"),
    )?;
    chart::draw(
        &Bars {
            title: "latency under load, ms (lower is better)",
            unit: "ms",
            groups: groups.clone(),
            series: vec![
                ("p50", sums.iter().map(|x| x.p50).collect()),
                ("p90", sums.iter().map(|x| x.p90).collect()),
                ("p99", sums.iter().map(|x| x.p99).collect()),
            ],
        },
        &out.join("bench-latency.svg"),
    )?;
    let proxies: Vec<&Summary> = sums.iter().filter(|x| x.cpu_us_per_call.is_some()).collect();
    chart::draw(
        &Bars {
            title: "proxy CPU per call, µs (lower is better)",
            unit: "µs/call",
            groups: proxies.iter().map(|x| x.path.short().to_owned()).collect(),
            series: vec![(
                "CPU",
                proxies.iter().map(|x| x.cpu_us_per_call.unwrap_or(0.0)).collect(),
            )],
        },
        &out.join("bench-cpu.svg"),
    )?;
    Ok(())
}

/// The machine and the versions of everything measured.
/// The first line a command prints, or `?`.
fn first_line(cmd: &mut Command) -> String {
    sh::output(cmd)
        .and_then(|o| o.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The commit the measured binaries are built from, and whether the tree
/// had local changes to them; read before the build.
pub fn source_tree() -> String {
    let commit = first_line(
        Command::new("git")
            .args(["-C"])
            .arg(sh::root())
            .args(["rev-parse", "--short", "HEAD"]),
    );
    // Local changes to what was measured.
    let dirty = !Command::new("git")
        .arg("-C")
        .arg(sh::root())
        .args(["diff", "--quiet", "HEAD", "--"])
        .args(["balancer-agent", "balancer-ebpf", "balancer-common", "greeter"])
        .status()
        .is_ok_and(|st| st.success());
    if dirty {
        format!("`{commit}` plus uncommitted changes")
    } else {
        format!("`{commit}`")
    }
}

fn machine(s: &Settings) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let haproxy = first_line(Command::new("haproxy").arg("-v"));
    // nginx prints its version on stderr.
    let nginx = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let h2load = first_line(Command::new("h2load").arg("--version"));
    let commit = &s.source;
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    format!(
        "Run of {date} at commit {commit} on {nproc} × {model}, {mem}, Linux {kernel}; \
         {haproxy}; {nginx}; {h2load}.\n\n\
         Load: `h2load -t1 -c{c} -m{m}` ({inflight} calls in flight), {calls} calls per run, \
         {rounds} round{plural}; every proxy on {threads} worker thread{tplural}; three greeter \
         backends with one runtime thread each.",
        c = s.connections,
        m = s.streams,
        inflight = s.connections * s.streams,
        calls = s.calls,
        rounds = s.rounds,
        plural = if s.rounds > 1 { "s" } else { "" },
        threads = s.threads,
        tplural = if s.threads > 1 { "s" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    fn summary(path: CallPath, calls_per_sec: f64, cpu: f64) -> Summary {
        Summary {
            path,
            dropped: 0,
            all_disturbed: false,
            calls_per_sec,
            calls_range: (calls_per_sec, calls_per_sec),
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            cpu_us_per_call: Some(cpu),
            backend_cpu_us_per_call: 20.0,
            machine_us_per_call: 30.0,
            kernel_us_per_call: 5.0,
            peak_rss_kb: Some(10_000),
            shares: vec![1.0 / 3.0; 3],
            failed: 0,
            checked: 300,
            grpc_ok: 300,
            grpc_errors: BTreeMap::new(),
        }
    }

    #[test]
    fn paired_ratios_follow_a_machine_that_changes_speed_between_rounds() {
        // The machine halves its speed in round 2: the medians' ratio is
        // 1.0, the per-round ratios are all 1.2.
        let a = [(1, 60.0), (2, 30.0), (3, 36.0)];
        let b = [(1, 50.0), (2, 25.0), (3, 30.0), (4, 99.0)];
        let p = paired(&a, &b).expect("rounds in common");
        assert_eq!(p.rounds, 3, "round 4 has only one side");
        assert!((p.median - 1.2).abs() < 1e-9 && (p.lo - 1.2).abs() < 1e-9, "{p:?}");
        assert_eq!(paired(&a, &[(9, 1.0)]), None);
    }

    #[test]
    fn targets_are_checked_against_haproxy_in_the_same_run() {
        let sums = vec![
            summary(CallPath::AgentListener, 40_000.0, 10.0),
            summary(CallPath::AgentRedirect { fast_path: true }, 30_000.0, 9.0),
            summary(CallPath::Haproxy, 30_000.0, 16.0),
        ];
        let extras = Extras {
            agent_idle_rss_kb: Some(30 * 1024),
            ..Default::default()
        };
        let md = targets(&sums, &Rounds::new(), &extras);
        assert!(
            md.contains("| explicit listener ≥ 1.25× HAProxy calls/s | 1.33× | met |"),
            "{md}"
        );
        assert!(
            md.contains("| explicit listener ≤ 0.75× HAProxy CPU per call | 0.62× | met |"),
            "{md}"
        );
        assert!(
            md.contains("| kernel redirect + fast path ≥ 1.1× the explicit listener's calls/s | 0.75× | **missed** |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| kernel redirect + fast path: lower p99 than the explicit listener | 3.00 vs 3.00 ms | **missed** |"
            ),
            "{md}"
        );
        assert!(md.contains("| agent RSS ≤ 20 MB idle | 30.0 MB | **missed** |"), "{md}");
        assert_eq!(targets(&[], &Rounds::new(), &Extras::default()), "");
        // With rounds: the per-round ratios decide, not the medians'.
        let redirect = CallPath::AgentRedirect { fast_path: true };
        let rounds: Rounds = [
            (
                CallPath::AgentListener,
                vec![(1, 50_000.0), (2, 30_000.0), (3, 40_000.0)],
            ),
            (redirect, vec![(1, 56_000.0), (2, 34_000.0), (3, 44_800.0)]),
        ]
        .into_iter()
        .collect();
        let md = targets(&sums, &rounds, &extras);
        assert!(
            md.contains("| kernel redirect + fast path ≥ 1.1× the explicit listener's calls/s | 1.12× (rounds 1.12–1.13) | met |"),
            "{md}"
        );
    }
}
