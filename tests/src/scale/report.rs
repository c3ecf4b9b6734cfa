//! The scale bench's results as a table (one column per cluster
//! size), and the "Scale" section of docs/benchmarks.md.

use std::fmt::Write as _;

use super::{Moves, ScaleResult};

/// What the results were measured with.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// The commit measured (e.g. `` `66c3c1c` ``).
    pub commit: String,
    /// When, as text.
    pub date: String,
    pub churn_rate: f64,
    pub window_secs: f64,
    pub moves: usize,
    pub quick: bool,
}

fn mb(kb: u64) -> String {
    format!("{:.0} MB", kb as f64 / 1024.0)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn secs(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1} s")
    } else {
        format!("{v:.2} s")
    }
}

fn moves(m: &Moves) -> String {
    let mut s = match (m.percentile(50.0), m.percentile(90.0)) {
        (Some(p50), Some(p90)) => format!("{} / {}", ms(p50), ms(p90)),
        _ => "not seen".to_owned(),
    };
    if m.missed > 0 {
        let _ = write!(s, " ({} of {} not seen)", m.missed, m.missed + m.ms.len());
    }
    s
}

/// The agent's CPU for the churn with the idle rate taken out: (seconds,
/// cores).
pub fn churn_net(r: &ScaleResult) -> Option<(f64, f64)> {
    let c = r.churn.as_ref()?;
    let net = c.window.cpu_secs - r.idle.cores() * c.window.secs;
    Some((net, net / c.window.secs.max(1e-3)))
}

/// One row per measure, one column per result.
fn rows(results: &[&ScaleResult], meta: &Meta) -> Vec<(String, Vec<String>)> {
    let col = |f: &dyn Fn(&ScaleResult) -> String| results.iter().map(|r| f(r)).collect::<Vec<_>>();
    let rate = meta.churn_rate;
    vec![
        (
            "ready after start (first 200 of `/readyz`)".into(),
            col(&|r| match (r.ready_secs, &r.not_ready) {
                (Some(s), _) => secs(s),
                (None, Some(why)) => format!("not ready: {why}"),
                (None, None) => "not ready".into(),
            }),
        ),
        (
            "SERVICES map entries at that first 200".into(),
            col(&|r| match r.services_at_ready {
                Some(n) => format!("{} of {}", thousands(n), thousands(r.vips_cluster as u64)),
                None => "–".into(),
            }),
        ),
        (
            "SERVICES map complete after start".into(),
            col(&|r| r.maps_full_secs.map_or("never".into(), secs)),
        ),
        (
            "RSS after sync".into(),
            col(&|r| {
                format!(
                    "{} (≈{:.1} KB per endpoint)",
                    mb(r.rss_after_sync_kb),
                    r.rss_after_sync_kb as f64 / r.endpoints.max(1) as f64
                )
            }),
        ),
        ("peak RSS (`VmHWM`) by then".into(), col(&|r| mb(r.peak_after_sync_kb))),
        (
            "RSS idle".into(),
            col(&|r| format!("{}–{}", mb(r.idle.rss_min_kb), mb(r.idle.rss_max_kb))),
        ),
        (
            format!("RSS during a churn of {rate:.0} EndpointSlice changes/s"),
            col(&|r| match &r.churn {
                Some(c) => format!("{}–{}", mb(c.window.rss_min_kb), mb(c.window.rss_max_kb)),
                None => "–".into(),
            }),
        ),
        (
            "CPU idle (periodic work)".into(),
            col(&|r| format!("{:.3} cores", r.idle.cores())),
        ),
        (
            "CPU per change (idle subtracted)".into(),
            col(&|r| match (churn_net(r), &r.churn) {
                (Some((net, _)), Some(c)) if c.changes > 0 => ms(net * 1e3 / c.changes as f64),
                _ => "–".into(),
            }),
        ),
        (
            "CPU under that churn (idle subtracted)".into(),
            col(&|r| churn_net(r).map_or("–".into(), |(_, cores)| format!("{cores:.2} cores"))),
        ),
        (
            "change → first call that sees it, median / p90 (idle)".into(),
            col(&|r| moves(&r.moves_idle)),
        ),
        (
            "change → first call that sees it, median / p90 (under churn)".into(),
            col(&|r| r.moves_churn.as_ref().map_or("–".into(), moves)),
        ),
        (
            "VIPs: SERVICES map / model / cluster".into(),
            col(&|r| {
                let opt = |v: Option<u64>| v.map_or("?".into(), thousands);
                format!(
                    "{} / {} / {}",
                    opt(r.vips_map),
                    opt(r.vips_model.map(|v| v as u64)),
                    thousands(r.vips_cluster as u64)
                )
            }),
        ),
        (
            "churn applied (changes in s; slowest apply)".into(),
            col(&|r| match &r.churn {
                Some(c) => format!("{} in {:.1} s; {}", c.changes, c.secs, ms(c.slowest_apply_ms)),
                None => "–".into(),
            }),
        ),
        (
            "machine busy elsewhere, idle / churn".into(),
            col(&|r| {
                format!(
                    "{:.2} / {} cores",
                    r.idle.busy_elsewhere,
                    r.churn
                        .as_ref()
                        .map_or("–".into(), |c| format!("{:.2}", c.window.busy_elsewhere))
                )
            }),
        ),
    ]
}

fn header(r: &ScaleResult) -> String {
    format!(
        "S = {} ({} endpoints)",
        thousands(r.shape.map_or(0, |s| s.services) as u64),
        thousands(r.endpoints as u64)
    )
}

/// The table of the plain cluster sizes (markdown).
pub fn table(results: &[ScaleResult], meta: &Meta) -> String {
    let plain: Vec<&ScaleResult> = results
        .iter()
        .filter(|r| r.shape.is_some_and(|s| s.multi_port_every.is_none()))
        .collect();
    let mut md = String::new();
    if plain.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "| | {} |",
        plain.iter().map(|r| header(r)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "---:|".repeat(plain.len()));
    for (name, cells) in rows(&plain, meta) {
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
    md
}

/// What happened to a cluster with more VIPs than the SERVICES map holds.
fn overflow(r: &ScaleResult) -> String {
    let shape = r.shape.unwrap_or_else(|| super::Shape::plain(0));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### {}\n\nS = {} Services, {} with three gRPC ports: {} VIPs, {} endpoints.\n",
        r.probe.as_deref().unwrap_or("More VIPs than the SERVICES map holds"),
        thousands(shape.services as u64),
        match shape.multi_port_every.unwrap_or(0) {
            1 => "each".to_owned(),
            n => format!("every {n}th"),
        },
        thousands(r.vips_cluster as u64),
        thousands(r.endpoints as u64),
    );
    let opt = |v: Option<u64>| v.map_or("?".into(), thousands);
    let rows = [
        (
            "`/readyz`",
            match r.ready_secs {
                Some(s) => format!("200 after {} (at the end: {})", secs(s), r.readyz_end),
                None => format!("never 200 (at the end: {})", r.readyz_end),
            },
        ),
        (
            "SERVICES entries / size / VIPs in the model",
            format!(
                "{} / {} / {}",
                opt(r.vips_map),
                opt(r.services_max_entries.map(u64::from)),
                opt(r.vips_model.map(|v| v as u64))
            ),
        ),
        (
            "the greeter VIP in SERVICES",
            r.greeter_in_map
                .map_or("?".into(), |b| if b { "yes" } else { "no" }.into()),
        ),
        ("ENROLLED entries (the client pod)", opt(r.enrolled_entries)),
        (
            "the pod's calls served by the agent",
            match r.greeter_calls {
                Some(0) => "none: they went around it (kube-proxy stand-in), unbalanced".into(),
                Some(n) => thousands(n),
                None => "?".into(),
            },
        ),
        ("change → first call that sees it (median / p90)", moves(&r.moves_idle)),
        ("RSS after sync", mb(r.rss_after_sync_kb)),
        ("CPU with no change", format!("{:.3} cores", r.idle.cores())),
    ];
    let _ = writeln!(md, "| | |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    md.push('\n');
    md
}

fn warnings(results: &[ScaleResult]) -> String {
    let mut md = String::new();
    for r in results {
        if r.warnings.is_empty() {
            continue;
        }
        let _ = writeln!(md, "- {}:", header(r));
        for (m, n) in r.warnings.iter().take(6) {
            let m: String = m.chars().take(300).collect();
            let _ = writeln!(md, "  - {n} × `{}`", m.replace('`', "'"));
        }
    }
    if md.is_empty() {
        md
    } else {
        format!("### What the agent logged (WARN and ERROR)\n\n{md}\n")
    }
}

const METHOD: &str = "\
What a cluster of S Services costs the agent on one node: the
release agent in Kubernetes mode, started as `deploy/daemonset.yaml` starts
it (its environment, its own container cgroup and cgroup namespace, the
host's cgroup hierarchy mounted by its init step), in a node network
namespace, against the fake API server process (`balancer-fake-apiserver`)
in the same namespace.

### Run it

```sh
cargo xtask bench --scale                     # as root: S = 1,000 and 10,000, then the two VIP probes; about 15 minutes
cargo xtask bench --scale --quick             # a smoke run: S = 200, 5 s windows, written to target/bench/
cargo xtask bench --scale --services 1000,5000
```

It builds the release agent, greeter and the tests crate's programs, runs
`balancer-scale-bench`, and replaces this section of docs/benchmarks.md
(`cargo xtask bench` keeps it). `balancer-scale-bench --help` lists the
knobs (`--perf FILE` records a CPU profile of the agent during the churn).

### Method

- The cluster: S Services (S − 1 synthetic ones and the greeter), 100 per
  namespace, each a ClusterIP from 10.96.0.0/12 with one port named `grpc`
  and one EndpointSlice of 10 ready endpoints (addresses from 10.128.0.0/10,
  node, zone, target pod), with the labels, owner reference and
  `managedFields` entry a real API server returns. Nothing routes these
  addresses. The greeter Service's endpoints are real greeter servers on the
  node; a client pod (annotated `balancer.io/inject: enabled`, in the
  kubelet's cgroup layout) calls its VIP through the kernel redirect. A
  kube-proxy stand-in answers the greeter VIP for connections the agent
  does not take, as a node's kube-proxy would. The cluster is seeded before
  the agent starts.
- Ready: agent start → first 200 of `/readyz`, polled every 10 ms; at that
  moment the SERVICES map's entries are counted (`/api/v1/maps`), then
  polled until the map holds every VIP.
- Memory: `VmRSS` from `/proc/PID/status` a few seconds after ready, and its
  range (sampled every 100 ms) over the idle and churn windows.
- CPU: the agent's utime + stime from `/proc/PID/stat` over an idle window
  (no change; the agent's periodic work) and over a window of the same
  length with the churn: EndpointSlice changes of random synthetic Services
  (one endpoint replaced by a new address) applied through the API server at
  a fixed rate, plus a 3 s tail for the agent to finish. CPU per change is
  the churn window's CPU less the idle rate over the same time, divided by
  the changes.
- Change → call: the pod's client makes `SayHello` calls one after the
  other (1 ms apart) over one channel; the greeter Service's EndpointSlice
  moves from backend A to B (and back), and the time from the change's apply
  to the arrival of the first answer from the new backend is taken — with
  no other change, then again during the same churn. No call load runs
  during the CPU windows.
- VIPs: the VIPs of the agent's model (`/api/v1/services`) against the
  SERVICES map's entries.
- The VIP probes (no churn, a shorter idle window, 3 moves): 16,667
  Services with three gRPC ports each (each port is a VIP, an entry of the
  SERVICES map): 50,000 VIPs, on an agent that sizes its map at start; then
  20,000 Services, every 10th with three gRPC ports, on an agent whose map
  is held at 16,384 entries (`BALANCER_SERVICES_MAP_SIZE`): more VIPs than
  it holds.
- Before the agent starts and before each window the bench waits (at most
  5 minutes per cluster size) for a machine with less than a third of a
  core busy. \"Machine busy elsewhere\" is the machine's CPU time outside
  the agent, the API server and the bench over the window: other work that
  competed with the agent for the CPUs (it does not change the agent's CPU
  time much, but it stretches the times: ready, change → call).
";

/// The docs section: method, the table, the overflow probe, the warnings.
pub fn section(results: &[ScaleResult], meta: &Meta) -> String {
    let mut md = String::from("## Scale\n\n");
    md.push_str(METHOD);
    let _ = writeln!(md, "\n### Results\n\n{}\n", machine(meta));
    let _ = writeln!(
        md,
        "Windows of {:.0} s, a churn of {:.0} changes/s, {} moves of the greeter's endpoints (idle and under churn).{}\n",
        meta.window_secs,
        meta.churn_rate,
        meta.moves,
        if meta.quick { " A quick run." } else { "" }
    );
    md.push_str(&table(results, meta));
    md.push('\n');
    for r in results
        .iter()
        .filter(|r| r.shape.is_some_and(|s| s.multi_port_every.is_some()))
    {
        md.push_str(&overflow(r));
    }
    md.push_str(&warnings(results));
    md
}

fn machine(meta: &Meta) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Run of {} at commit {} on {nproc} × {model}, Linux {}.",
        meta.date,
        meta.commit,
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::{Churn, Shape, Window};

    fn result(services: usize) -> ScaleResult {
        ScaleResult {
            shape: Some(Shape::plain(services)),
            vips_cluster: services,
            endpoints: services * 10,
            ready_secs: Some(0.5),
            services_at_ready: Some(services as u64),
            rss_after_sync_kb: 80 * 1024,
            idle: Window {
                secs: 10.0,
                cpu_secs: 0.1,
                ..Window::default()
            },
            churn: Some(Churn {
                window: Window {
                    secs: 10.0,
                    cpu_secs: 1.1,
                    ..Window::default()
                },
                changes: 100,
                secs: 10.0,
                slowest_apply_ms: 3.0,
            }),
            moves_idle: Moves {
                ms: vec![100.0, 120.0, 140.0],
                missed: 0,
                first_miss: None,
            },
            ..ScaleResult::default()
        }
    }

    #[test]
    fn the_idle_rate_is_taken_out_of_the_churn() {
        let (net, cores) = churn_net(&result(1000)).expect("churn");
        assert!((net - 1.0).abs() < 1e-9, "{net}");
        assert!((cores - 0.1).abs() < 1e-9, "{cores}");
    }

    #[test]
    fn one_column_per_size() {
        let meta = Meta {
            churn_rate: 10.0,
            ..Meta::default()
        };
        let t = table(&[result(1000), result(10_000)], &meta);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| | S = 1,000 (10,000 endpoints) | S = 10,000 (100,000 endpoints) |"
        );
        assert!(
            t.contains("| CPU per change (idle subtracted) | 10.0 ms | 10.0 ms |"),
            "{t}"
        );
        assert!(t.contains("| 120 ms / 140 ms | 120 ms / 140 ms |"), "{t}");
        assert!(t.contains("1,000 of 1,000"), "{t}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(16_384), "16,384");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
