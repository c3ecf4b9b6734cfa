//! The bench's instruments: the agent's admin API (readiness, kernel maps,
//! model), CPU and memory windows from `/proc`, a `perf record` of the
//! agent, and its warnings.

use std::{
    collections::BTreeMap,
    io,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use balancer_agent::api;
use balancer_testing::ready::WaitError;

use super::{procfs, ScaleError, Window};
use crate::{node_agent::NodeAgent, process::ChildGuard};

fn json<T: serde::de::DeserializeOwned>(agent: &NodeAgent, path: &str) -> Option<T> {
    match agent.get(path) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Polls `/readyz` every 10 ms: when the first 200 came (`Err` with the
/// last answer if none came within `limit`). Fails if the agent exits.
pub fn wait_ready(agent: &mut NodeAgent, limit: Duration) -> Result<Result<Instant, String>, ScaleError> {
    let admin = agent.admin();
    let mut last = String::from("no answer");
    let mut at = None;
    let waited = agent.wait_until("balancer-agent ready", limit, Duration::from_millis(10), || match admin
        .get("/readyz")
    {
        Ok(r) if r.status == 200 => {
            at = Some(Instant::now());
            true
        }
        Ok(r) => {
            last = format!("{} {}", r.status, r.body.trim());
            false
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    });
    match (waited, at) {
        (Ok(()), Some(at)) => Ok(Ok(at)),
        (Err(WaitError::Exited { .. }), _) => Err(ScaleError::AgentExited(tail(&agent.log()))),
        _ => Ok(Err(last)),
    }
}

/// The last 20 lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `/readyz`: status and body.
pub fn readyz(agent: &NodeAgent) -> String {
    match agent.get("/readyz") {
        Ok((status, body)) => format!("{status} {}", body.trim()),
        Err(e) => e.to_string(),
    }
}

/// Entries and size of the kernel map `name`.
pub fn map_entries(agent: &NodeAgent, name: &str) -> Option<(u64, u32)> {
    let maps: Vec<api::Map> = json(agent, "/api/v1/maps")?;
    let m = maps.into_iter().find(|m| m.name == name)?;
    Some((m.entries.unwrap_or(0), m.max_entries))
}

/// Polls the map `name` every 50 ms until it holds `want` entries: when.
pub fn wait_map_entries(agent: &NodeAgent, name: &str, want: u64, limit: Duration) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if map_entries(agent, name).is_some_and(|(n, _)| n >= want) {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Whether the map `name` has an entry whose decoded key is `key`.
pub fn map_has(agent: &NodeAgent, name: &str, key: &str) -> Option<bool> {
    let dump: api::MapDump = json(agent, &format!("/api/v1/maps/{name}"))?;
    Some(dump.entries.iter().any(|e| e.key == key))
}

/// VIPs in the agent's model.
pub fn model_vips(agent: &NodeAgent) -> Option<usize> {
    let services: Vec<api::Service> = json(agent, "/api/v1/services")?;
    Some(services.iter().map(|s| s.vips.len()).sum())
}

/// Calls the agent took for the service `name` since it started: the calls
/// it received, or its latency histogram's count if that is more.
pub fn service_calls(agent: &NodeAgent, name: &str) -> Option<u64> {
    let stats: api::Stats = json(agent, "/api/v1/stats")?;
    let s = stats.services.into_iter().find(|s| s.service == name)?;
    Some(s.calls.max(s.latency.counts.iter().sum()))
}

/// Samples a process's RSS every 100 ms until finished.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut lo, mut hi) = (u64::MAX, 0);
            // At most an hour of samples.
            for _ in 0..36_000 {
                if let Ok(kb) = procfs::rss_kb(pid) {
                    lo = lo.min(kb);
                    hi = hi.max(kb);
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (if lo == u64::MAX { 0 } else { lo }, hi)
        });
        RssSampler { stop, thread }
    }

    /// The lowest and highest RSS seen, KiB.
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

/// CPU time of the agent, of the bench's other processes and of the
/// machine since a start.
pub struct CpuWindow {
    pid: u32,
    others: Vec<u32>,
    start: Instant,
    agent: f64,
    others_cpu: f64,
    machine: f64,
}

fn sum_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| procfs::cpu_secs(*p).ok()).sum()
}

impl CpuWindow {
    pub fn start(pid: u32, others: &[u32]) -> CpuWindow {
        CpuWindow {
            pid,
            others: others.to_vec(),
            start: Instant::now(),
            agent: procfs::cpu_secs(pid).unwrap_or(0.0),
            others_cpu: sum_cpu(others),
            machine: procfs::machine_busy_secs(),
        }
    }

    pub fn finish(self, (rss_min_kb, rss_max_kb): (u64, u64)) -> Result<Window, ScaleError> {
        let secs = self.start.elapsed().as_secs_f64();
        let agent = procfs::cpu_secs(self.pid)? - self.agent;
        let others = sum_cpu(&self.others) - self.others_cpu;
        let machine = procfs::machine_busy_secs() - self.machine;
        Ok(Window {
            secs,
            cpu_secs: agent,
            rss_min_kb,
            rss_max_kb,
            busy_elsewhere: ((machine - agent - others) / secs.max(1e-3)).max(0.0),
        })
    }
}

/// Waits for a machine with less than `max_cores` busy (measured over 2 s
/// at a time), spending at most `budget` over all calls.
pub struct Calm {
    pub max_cores: f64,
    pub budget: Duration,
}

impl Calm {
    /// Waits; returns the cores busy in the last 2 s measured.
    pub fn wait(&mut self) -> f64 {
        loop {
            let start = Instant::now();
            let before = procfs::machine_busy_secs();
            std::thread::sleep(Duration::from_secs(2));
            let busy = (procfs::machine_busy_secs() - before) / start.elapsed().as_secs_f64();
            self.budget = self.budget.saturating_sub(start.elapsed());
            if busy < self.max_cores || self.budget.is_zero() {
                return busy;
            }
        }
    }
}

/// `perf record` of a process, stopped with SIGINT.
pub struct Perf(ChildGuard);

impl Perf {
    /// Samples `pid` at 199 Hz with call graphs (DWARF unwinding: release
    /// builds have no frame pointers) into `out`.
    pub fn record(pid: u32, out: &Path) -> io::Result<Perf> {
        let child = Command::new("perf")
            .args(["record", "-F", "199", "--call-graph", "dwarf", "-o"])
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Perf(ChildGuard::new(child)))
    }

    /// Ends the recording (perf writes its file on SIGINT).
    pub fn stop(mut self) {
        // SAFETY: kill on the pid of our own child, not yet reaped.
        unsafe { libc::kill(self.0.pid() as libc::pid_t, libc::SIGINT) };
        let _ = self.0.wait_timeout(Duration::from_secs(20));
    }
}

/// The distinct WARN and ERROR messages of an agent log (JSON lines or
/// text), with how often each came, most frequent first.
pub fn warnings(log: &str) -> Vec<(String, u64)> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in log.lines() {
        let message = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let level = v["level"].as_str().unwrap_or_default();
                if level != "WARN" && level != "ERROR" {
                    continue;
                }
                let fields = &v["fields"];
                let mut m = format!("{level} {}", fields["message"].as_str().unwrap_or_default());
                if let Some(e) = fields["error"].as_str() {
                    m.push_str(&format!(" (error: {e})"));
                }
                m
            }
            Err(_) => {
                let Some(pos) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
                    continue;
                };
                line[pos + 1..].to_owned()
            }
        };
        *counts.entry(message).or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_of_json_and_text_logs() {
        let log = r#"{"level":"INFO","fields":{"message":"model published"}}
{"level":"WARN","fields":{"message":"services map not updated","error":"map full"}}
{"level":"WARN","fields":{"message":"services map not updated","error":"map full"}}
2025-01-01T00:00:00Z  WARN balancer: watch failed
not a log line"#;
        assert_eq!(
            warnings(log),
            vec![
                ("WARN services map not updated (error: map full)".to_owned(), 2),
                ("WARN balancer: watch failed".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn the_tail_of_a_log() {
        let log: String = (0..30).map(|i| format!("{i}\n")).collect();
        assert!(tail(&log).starts_with("10\n"));
        assert_eq!(tail("one"), "one");
    }
}
