//! The scale bench: what a cluster of S Services costs the agent on one
//! node. The release agent runs in Kubernetes mode, as its DaemonSet starts
//! it, against the fake API server process serving S Services of 10
//! endpoints each (one EndpointSlice per Service, gRPC port `grpc`); one of
//! them is a real greeter Service whose endpoints are greeter servers on the
//! node, called from an enrolled pod through the kernel redirect.
//!
//! [`run`] measures one cluster size, phase by phase (every loop bounded in
//! count and time):
//!
//! 1. **ready**: the cluster is seeded before the agent starts; the time
//!    from its start to the first 200 of `/readyz`, how many VIPs the
//!    kernel's SERVICES map holds at that moment, and when it holds all.
//! 2. **RSS after sync**: `VmRSS` a few seconds after ready.
//! 3. **idle**: the agent's CPU over a window with no change (its periodic
//!    work), and its RSS range.
//! 4. **churn**: EndpointSlice changes of random Services at a fixed rate,
//!    through the API server; the agent's CPU over a window as long as the
//!    idle one, less the idle CPU, per change and in cores; its RSS range.
//! 5. **change → call**: the greeter Service's endpoints move from one
//!    backend to the other; the time from the change to the first call of
//!    the pod's running client that the new backend answers. Idle, then
//!    during the same churn.
//! 6. **VIPs**: the model's VIPs against the SERVICES map's entries; the
//!    ENROLLED map; whether the agent served the pod's calls; the agent's
//!    warnings.
//!
//! [`report`] prints the results as a table and writes the
//! docs section. `balancer-scale-bench` (and `cargo xtask bench --scale`)
//! runs it for several sizes.

pub mod cluster;
pub mod follow;
mod measure;
pub mod node;
pub mod procfs;
pub mod report;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

pub use cluster::Shape;
pub use node::Bins;

use crate::apiserver::ApiServerError;
use cluster::Cluster;
use follow::{FollowError, Follower};
use measure::{CpuWindow, RssSampler};
use node::{BenchNode, BACKENDS};

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("{0} is missing: build the release binaries first (cargo xtask bench --scale does)")]
    MissingBinary(PathBuf),
    #[error("setting up the node: {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the DaemonSet reads {0} from the downward API; the bench gives it no value")]
    Manifest(String),
    #[error("the fake API server")]
    Api(#[from] ApiServerError),
    #[error("writing the cluster's objects")]
    Objects(#[source] std::io::Error),
    #[error("the client in the pod")]
    Follow(#[from] FollowError),
    #[error("reading the agent's /proc")]
    Proc(#[from] procfs::ProcError),
    #[error("the agent exited during the bench; its log ends with:\n{0}")]
    AgentExited(String),
}

impl ScaleError {
    fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> ScaleError {
        move |source| ScaleError::Setup { what, source }
    }
}

/// How to measure.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub bins: Bins,
    /// EndpointSlice changes per second of the churn.
    pub churn_rate: f64,
    /// Length of the idle and churn windows.
    pub window: Duration,
    /// Endpoint moves of the greeter Service measured (idle, and again
    /// under churn).
    pub moves: usize,
    /// Time between ready and the "after sync" RSS.
    pub settle: Duration,
    /// How long the agent may take to be ready.
    pub ready_limit: Duration,
    /// Pause between two calls of the pod's client.
    pub call_interval: Duration,
    /// Longest wait for one move to show.
    pub move_limit: Duration,
    /// Skip the churn phases (the overflow probe).
    pub no_churn: bool,
    /// Seed of the churn's choices.
    pub seed: u64,
    /// Record a CPU profile of the agent during the churn window with
    /// `perf record` into this file.
    pub perf: Option<PathBuf>,
    /// Before the start and each window, wait for a machine with less than
    /// a third of a core busy, at most this long in all.
    pub calm: Duration,
    /// Environment the agent gets on top of the DaemonSet's (for instance
    /// `BALANCER_SERVICES_MAP_SIZE`).
    pub agent_env: Vec<(String, String)>,
}

impl ScaleOptions {
    /// The full measurement: 10 changes/s over 30 s windows, 20 moves.
    pub fn full(bins: Bins) -> ScaleOptions {
        ScaleOptions {
            bins,
            churn_rate: 10.0,
            window: Duration::from_secs(30),
            moves: 20,
            settle: Duration::from_secs(5),
            ready_limit: Duration::from_secs(120),
            call_interval: Duration::from_millis(1),
            move_limit: Duration::from_secs(10),
            no_churn: false,
            seed: 15,
            perf: None,
            calm: Duration::from_secs(300),
            agent_env: Vec::new(),
        }
    }

    /// A smoke run: 5 s windows, 5 moves.
    pub fn quick(bins: Bins) -> ScaleOptions {
        ScaleOptions {
            window: Duration::from_secs(5),
            moves: 5,
            settle: Duration::from_secs(1),
            ready_limit: Duration::from_secs(60),
            calm: Duration::ZERO,
            ..ScaleOptions::full(bins)
        }
    }
}

/// The agent's CPU and memory over one window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    pub secs: f64,
    /// The agent's user + system CPU seconds.
    pub cpu_secs: f64,
    pub rss_min_kb: u64,
    pub rss_max_kb: u64,
    /// Cores the machine spent on processes outside the bench, on average.
    pub busy_elsewhere: f64,
}

impl Window {
    pub fn cores(&self) -> f64 {
        self.cpu_secs / self.secs.max(1e-3)
    }
}

/// The churn's changes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Churn {
    pub window: Window,
    /// EndpointSlice changes applied.
    pub changes: u64,
    /// The churn's own length (the window adds a tail for the agent to
    /// finish).
    pub secs: f64,
    /// The slowest apply to the API server, ms.
    pub slowest_apply_ms: f64,
}

/// Change → first call that sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Moves {
    /// One sample per move that showed, ms.
    pub ms: Vec<f64>,
    /// Moves not seen within the limit.
    pub missed: usize,
    /// Why the first missed one was missed.
    pub first_miss: Option<String>,
}

impl Moves {
    pub fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.ms, p)
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// What one cluster size cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleResult {
    /// What a probe (not a plain cluster size) showed, as the report's
    /// heading for it.
    pub probe: Option<String>,
    pub shape: Option<Shape>,
    /// VIPs the cluster has (a complete SERVICES map holds that many).
    pub vips_cluster: usize,
    pub endpoints: usize,
    /// Seeding the API server, s.
    pub seed_secs: f64,
    /// Agent start → first 200 of `/readyz`, s; `None`: never ready.
    pub ready_secs: Option<f64>,
    /// `/readyz`'s answer when the agent was not ready in time.
    pub not_ready: Option<String>,
    /// SERVICES entries at the first 200.
    pub services_at_ready: Option<u64>,
    /// Agent start → SERVICES holds every VIP of the cluster, s.
    pub maps_full_secs: Option<f64>,
    pub rss_after_sync_kb: u64,
    /// `VmHWM` at that point.
    pub peak_after_sync_kb: u64,
    pub idle: Window,
    pub churn: Option<Churn>,
    pub moves_idle: Moves,
    pub moves_churn: Option<Moves>,
    /// VIPs of the agent's model (`/api/v1/services`).
    pub vips_model: Option<usize>,
    /// SERVICES entries and size at the end.
    pub vips_map: Option<u64>,
    pub services_max_entries: Option<u32>,
    pub enrolled_entries: Option<u64>,
    /// Whether the greeter VIP is in SERVICES.
    pub greeter_in_map: Option<bool>,
    /// Calls the agent served for the greeter Service (0: the pod's calls
    /// bypassed it, through the kube-proxy stand-in).
    pub greeter_calls: Option<u64>,
    /// `/readyz` at the end.
    pub readyz_end: String,
    /// The agent's distinct warnings and errors, with counts.
    pub warnings: Vec<(String, u64)>,
    pub peak_rss_kb: u64,
}

/// Measures the cluster `shape` (see the module documentation).
pub fn run(shape: Shape, opts: &ScaleOptions) -> Result<ScaleResult, ScaleError> {
    let mut r = ScaleResult {
        shape: Some(shape),
        vips_cluster: shape.vips(),
        endpoints: shape.total_endpoints(),
        ..ScaleResult::default()
    };
    let mut cluster = Cluster::new(shape, opts.seed);
    let node = BenchNode::new(&opts.bins)?;
    let scratch = tempfile::tempdir().map_err(ScaleError::Objects)?;
    let objects = scratch.path().join("cluster.jsonl");
    let t = Instant::now();
    cluster.write_objects(&objects).map_err(ScaleError::Objects)?;
    node.api.apply_all(node.objects(0))?;
    node.api.apply_file(&objects)?;
    r.seed_secs = t.elapsed().as_secs_f64();
    drop(scratch);
    eprintln!(
        "scale: S = {}: {} VIPs, {} endpoints seeded in {:.1} s",
        shape.services, r.vips_cluster, r.endpoints, r.seed_secs
    );

    let mut calm = measure::Calm {
        max_cores: 0.35,
        budget: opts.calm,
    };
    if !opts.calm.is_zero() {
        calm.wait();
    }
    let mut agent = node.start_agent(&opts.bins.agent, &opts.agent_env)?;
    let started = Instant::now();
    let pid = agent.pid();
    let others = [node.api.pid(), std::process::id()];

    // 1. Ready.
    match measure::wait_ready(&mut agent, opts.ready_limit)? {
        Ok(at) => {
            r.ready_secs = Some(at.duration_since(started).as_secs_f64());
            r.services_at_ready = measure::map_entries(&agent, "SERVICES").map(|(n, _)| n);
            r.maps_full_secs =
                measure::wait_map_entries(&agent, "SERVICES", r.vips_cluster as u64, Duration::from_secs(60))
                    .map(|at| at.duration_since(started).as_secs_f64());
        }
        Err(why) => r.not_ready = Some(why),
    }
    eprintln!(
        "scale: S = {}: ready {:?} s, SERVICES at ready {:?}, full after {:?} s",
        shape.services, r.ready_secs, r.services_at_ready, r.maps_full_secs
    );

    // 2. RSS after sync.
    std::thread::sleep(opts.settle);
    r.rss_after_sync_kb = procfs::rss_kb(pid)?;
    r.peak_after_sync_kb = procfs::peak_rss_kb(pid)?;

    // 3. Idle.
    let tail = Duration::from_secs(3);
    let idle_window = if opts.no_churn {
        opts.window.min(Duration::from_secs(10))
    } else {
        opts.window + tail
    };
    if !opts.calm.is_zero() {
        calm.wait();
    }
    let w = CpuWindow::start(pid, &others);
    let rss = RssSampler::start(pid);
    std::thread::sleep(idle_window);
    r.idle = w.finish(rss.finish())?;
    eprintln!(
        "scale: S = {}: idle {:.3} cores, RSS {}–{} MB",
        shape.services,
        r.idle.cores(),
        r.idle.rss_min_kb / 1024,
        r.idle.rss_max_kb / 1024
    );

    // 4. Churn.
    if !opts.no_churn && r.ready_secs.is_some() {
        if !opts.calm.is_zero() {
            calm.wait();
        }
        let perf = opts.perf.as_ref().map(|p| measure::Perf::record(pid, p));
        let w = CpuWindow::start(pid, &others);
        let rss = RssSampler::start(pid);
        let stop = AtomicBool::new(false);
        let stats = churn(&node, &mut cluster, opts.churn_rate, opts.window, &stop)?;
        std::thread::sleep(tail);
        let window = w.finish(rss.finish())?;
        if let Some(Ok(p)) = perf {
            p.stop();
        }
        eprintln!(
            "scale: S = {}: churn of {} changes in {:.1} s: {:.3} cores, RSS {}–{} MB",
            shape.services,
            stats.changes,
            stats.secs,
            window.cores(),
            window.rss_min_kb / 1024,
            window.rss_max_kb / 1024
        );
        r.churn = Some(Churn { window, ..stats });
    }
    check_alive(&mut agent)?;

    // 5. Change → call.
    let mut follower = Follower::start(
        &opts.bins.scale_bench,
        &node.topo.pods[0].netns,
        &node.client.container,
        cluster::GREETER_VIP,
        opts.call_interval,
        Duration::from_secs(900),
    )?;
    let moves = if r.ready_secs.is_some() {
        opts.moves
    } else {
        opts.moves.min(3)
    };
    let mut at = 0;
    // The client's first answers come from backend A.
    let first = follower.wait_for(BACKENDS[0].0, Duration::from_secs(15));
    if first.is_ok() {
        r.moves_idle = move_endpoints(&node, &mut follower, &mut at, moves, opts.move_limit);
        eprintln!(
            "scale: S = {}: change → call, idle: median {:?} ms, p90 {:?} ms, missed {}",
            shape.services,
            r.moves_idle.percentile(50.0),
            r.moves_idle.percentile(90.0),
            r.moves_idle.missed
        );
        if !opts.no_churn && r.ready_secs.is_some() {
            let stop = AtomicBool::new(false);
            let bound = opts.move_limit * (opts.moves as u32 + 1);
            let m = std::thread::scope(|s| {
                let churner = s.spawn(|| churn(&node, &mut cluster, opts.churn_rate, bound, &stop));
                let m = move_endpoints(&node, &mut follower, &mut at, opts.moves, opts.move_limit);
                stop.store(true, Ordering::Relaxed);
                let _ = churner.join();
                m
            });
            eprintln!(
                "scale: S = {}: change → call, under churn: median {:?} ms, p90 {:?} ms, missed {}",
                shape.services,
                m.percentile(50.0),
                m.percentile(90.0),
                m.missed
            );
            r.moves_churn = Some(m);
        }
    } else if let Err(e) = first {
        r.moves_idle.missed = moves;
        r.moves_idle.first_miss = Some(e.to_string());
    }
    follower.stop();
    check_alive(&mut agent)?;

    // 6. VIPs.
    r.vips_model = measure::model_vips(&agent);
    if let Some((n, max)) = measure::map_entries(&agent, "SERVICES") {
        r.vips_map = Some(n);
        r.services_max_entries = Some(max);
    }
    r.enrolled_entries = measure::map_entries(&agent, "ENROLLED").map(|(n, _)| n);
    r.greeter_in_map = measure::map_has(&agent, "SERVICES", &cluster::GREETER_VIP.to_string());
    r.greeter_calls = measure::service_calls(&agent, &format!("{}/{}", cluster::DEMO_NAMESPACE, cluster::GREETER));
    r.readyz_end = measure::readyz(&agent);
    r.peak_rss_kb = procfs::peak_rss_kb(pid)?;
    r.warnings = measure::warnings(&agent.log());
    Ok(r)
}

fn check_alive(agent: &mut crate::node_agent::NodeAgent) -> Result<(), ScaleError> {
    if agent.try_wait().is_ok_and(|s| s.is_some()) {
        return Err(ScaleError::AgentExited(measure::tail(&agent.log())));
    }
    Ok(())
}

/// Applies EndpointSlice changes at `rate` per second for `limit` (or until
/// `stop`).
fn churn(
    node: &BenchNode,
    cluster: &mut Cluster,
    rate: f64,
    limit: Duration,
    stop: &AtomicBool,
) -> Result<Churn, ScaleError> {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let max = (limit.as_secs_f64() * rate).ceil() as u64;
    let start = Instant::now();
    let mut out = Churn::default();
    for k in 0..max {
        let due = start + period * k as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if stop.load(Ordering::Relaxed) || start.elapsed() > limit + Duration::from_secs(10) {
            break;
        }
        let Some(slice) = cluster.churn() else { break };
        let t = Instant::now();
        node.api.apply(slice)?;
        out.slowest_apply_ms = out.slowest_apply_ms.max(t.elapsed().as_secs_f64() * 1e3);
        out.changes += 1;
    }
    out.secs = start.elapsed().as_secs_f64();
    Ok(out)
}

/// Moves the greeter's endpoints between the two backends `n` times and
/// times each move to the first call the new backend answers. `at` is the
/// backend the endpoints are on now.
fn move_endpoints(node: &BenchNode, follower: &mut Follower, at: &mut usize, n: usize, limit: Duration) -> Moves {
    let mut out = Moves::default();
    for i in 0..n {
        let to = 1 - *at;
        follower.drain();
        let t = Instant::now();
        if let Err(e) = node.api.apply(cluster::greeter_slice(&[BACKENDS[to].1])) {
            out.missed += 1;
            out.first_miss.get_or_insert_with(|| e.to_string());
            continue;
        }
        *at = to;
        match follower.wait_for(BACKENDS[to].0, limit) {
            Ok(seen) => out.ms.push(seen.duration_since(t).as_secs_f64() * 1e3),
            Err(e) => {
                out.missed += 1;
                out.first_miss.get_or_insert_with(|| e.to_string());
            }
        }
        // A pause that does not fall in step with the agent's periodic
        // work (300–700 ms).
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 137) % 400));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 90.0), Some(5.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 90.0), Some(9.0));
    }
}
