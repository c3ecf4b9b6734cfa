//! What the periodic sweeps found, kept for the admin API, `balancerctl pod
//! show` and the metrics: per enrolled cgroup, the pinned connections left
//! open by the last sweep and those closed so far; node-wide, the closes,
//! deferrals and errors.
//!
//! Per-pod numbers stay out of metric labels (pods come and go: one series
//! each would grow without bound); the metrics carry node-wide counters and
//! the open pinned connections per namespace, and `balancerctl pod show`
//! names the pods.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use super::{diag::DiagError, netns::NetnsError, PinnedError, PodReport};
use crate::api;

/// Who a swept cgroup belongs to: the sweeper's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SweptPod {
    /// The enrolled cgroup directory.
    pub cgroup: PathBuf,
    /// The pod's namespace (Kubernetes mode).
    pub namespace: Option<String>,
}

/// Why a pod's sweep stopped short, as the `reason` label of
/// `balancer_pinned_sweep_errors` says it.
pub fn error_reason(e: &PinnedError) -> &'static str {
    match e {
        PinnedError::Netns(n) | PinnedError::Diag(DiagError::Netns(n)) => netns_reason(n),
        PinnedError::Destroy { .. } => "close_refused",
        PinnedError::Diag(_) => "other",
    }
}

fn netns_reason(e: &NetnsError) -> &'static str {
    let denied = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM);
    match e {
        NetnsError::CgroupGone(_) => "cgroup_gone",
        NetnsError::NotVisible { .. } => "not_visible",
        NetnsError::Open { source, .. } | NetnsError::Enter(source) if denied(source) => "permission",
        _ => "other",
    }
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[derive(Debug, Default, Clone)]
struct PodTally {
    namespace: Option<String>,
    /// Left open by the last sweep; `None` when it could not look.
    open: Option<u64>,
    closed: u64,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    sweeps: u64,
    last_duration: Duration,
    pods: HashMap<PathBuf, PodTally>,
    closed: u64,
    deferred: u64,
    errors: BTreeMap<&'static str, u64>,
}

/// The sweeps' results. Written after each sweep, read at request and
/// scrape time.
#[derive(Debug)]
pub struct Tally {
    interval: Duration,
    state: Mutex<State>,
}

impl Tally {
    /// A tally of sweeps made every `interval`.
    pub fn new(interval: Duration) -> Self {
        Tally {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Takes in one sweep (that took `took`). Cgroups not in `reports` are
    /// forgotten, with what was closed of them.
    pub fn record(&self, reports: &[PodReport<SweptPod>], took: Duration) {
        self.with(|s| {
            s.sweeps += 1;
            s.last_duration = took;
            let mut pods = HashMap::with_capacity(reports.len());
            for r in reports {
                let mut pod = s.pods.remove(&r.key.cgroup).unwrap_or_default();
                pod.namespace.clone_from(&r.key.namespace);
                let closed = r.closed() as u64;
                let deferred = r.deferred() as u64;
                let open = r.open() as u64;
                pod.closed += closed;
                s.closed += closed;
                s.deferred += deferred;
                pod.error = r.error.as_ref().map(|e| chain(e));
                pod.open = match &r.error {
                    // Listed, then a close failed: the count holds.
                    None | Some(PinnedError::Destroy { .. }) => Some(open),
                    Some(_) => None,
                };
                if let Some(e) = &r.error {
                    *s.errors.entry(error_reason(e)).or_default() += 1;
                }
                pods.insert(r.key.cgroup.clone(), pod);
            }
            s.pods = pods;
        });
    }

    /// Fills the pinned fields of the enrolled cgroups in `pods`.
    pub fn fill(&self, pods: &mut [api::Pod]) {
        self.with(|s| {
            for p in pods {
                if let Some(t) = s.pods.get(Path::new(&p.cgroup)) {
                    p.pinned = t.open;
                    p.pinned_closed = t.closed;
                    p.pinned_error.clone_from(&t.error);
                }
            }
        });
    }

    /// The node-wide summary (`/api/v1/status`, metrics).
    pub fn summary(&self) -> api::PinnedSweeps {
        self.with(|s| {
            let mut by_namespace: BTreeMap<String, u64> = BTreeMap::new();
            for p in s.pods.values() {
                *by_namespace.entry(p.namespace.clone().unwrap_or_default()).or_default() += p.open.unwrap_or(0);
            }
            api::PinnedSweeps {
                interval_seconds: self.interval.as_secs_f64(),
                sweeps: s.sweeps,
                last_sweep_seconds: s.last_duration.as_secs_f64(),
                pinned: by_namespace.values().sum(),
                pinned_by_namespace: by_namespace,
                closed: s.closed,
                deferred: s.deferred,
                errors: s.errors.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            }
        })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::pinned::{diag::Family, Action, PinnedConn};

    fn key(cgroup: &str, ns: &str) -> SweptPod {
        SweptPod {
            cgroup: PathBuf::from(cgroup),
            namespace: Some(ns.to_owned()),
        }
    }

    fn conn(action: Action) -> PinnedConn {
        PinnedConn {
            local: "10.244.1.5:40000".parse().unwrap(),
            vip: "10.96.0.10:8000".parse().unwrap(),
            family: Family::V4,
            cookie: 1,
            action,
        }
    }

    fn report(k: SweptPod, actions: &[Action], error: Option<PinnedError>) -> PodReport<SweptPod> {
        PodReport {
            key: k,
            conns: actions.iter().map(|a| conn(*a)).collect(),
            error,
        }
    }

    fn api_pod(cgroup: &str) -> api::Pod {
        api::Pod {
            cgroup: cgroup.to_owned(),
            ..api::Pod::default()
        }
    }

    #[test]
    fn open_connections_are_the_last_sweeps_and_closes_add_up() {
        let t = Tally::new(Duration::from_secs(30));
        let a = key("/cg/a", "demo");
        let b = key("/cg/b", "demo");
        let c = key("/cg/c", "other");
        t.record(
            &[
                report(a.clone(), &[Action::Kept, Action::Kept], None),
                report(b.clone(), &[Action::Closed, Action::Deferred, Action::Gone], None),
                report(c.clone(), &[], None),
            ],
            Duration::from_millis(20),
        );
        let s = t.summary();
        assert_eq!((s.sweeps, s.pinned, s.closed, s.deferred), (1, 3, 1, 1));
        assert_eq!(
            s.pinned_by_namespace,
            BTreeMap::from([("demo".to_owned(), 3), ("other".to_owned(), 0)])
        );
        t.record(
            &[
                report(a.clone(), &[Action::Kept], None),
                report(b.clone(), &[Action::Closed], None),
            ],
            Duration::from_millis(20),
        );
        let mut pods = vec![api_pod("/cg/a"), api_pod("/cg/b"), api_pod("/cg/c"), api_pod("/cg/x")];
        t.fill(&mut pods);
        let rows: Vec<(Option<u64>, u64)> = pods.iter().map(|p| (p.pinned, p.pinned_closed)).collect();
        // c left the sweep: forgotten.
        assert_eq!(rows, vec![(Some(1), 0), (Some(0), 2), (None, 0), (None, 0)]);
        let s = t.summary();
        assert_eq!((s.sweeps, s.pinned, s.closed, s.deferred), (2, 1, 2, 1));
        assert_eq!(s.interval_seconds, 30.0);
    }

    #[test]
    fn errors_are_counted_by_reason_and_a_failed_look_counts_nothing() {
        let t = Tally::new(Duration::from_secs(30));
        let gone = PinnedError::Netns(NetnsError::CgroupGone(PathBuf::from("/cg/a")));
        let denied = PinnedError::Netns(NetnsError::Open {
            path: PathBuf::from("/proc/1/ns/net"),
            source: io::Error::from_raw_os_error(libc::EACCES),
        });
        let refused = PinnedError::Destroy {
            local: "10.244.1.5:40000".parse().unwrap(),
            vip: "10.96.0.10:8000".parse().unwrap(),
            source: DiagError::Kernel(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        };
        t.record(
            &[
                report(key("/cg/a", "demo"), &[], Some(gone)),
                report(key("/cg/b", "demo"), &[], Some(denied)),
                report(key("/cg/c", "demo"), &[Action::Failed, Action::Kept], Some(refused)),
            ],
            Duration::ZERO,
        );
        let s = t.summary();
        assert_eq!(
            s.errors,
            BTreeMap::from([
                ("cgroup_gone".to_owned(), 1),
                ("close_refused".to_owned(), 1),
                ("permission".to_owned(), 1),
            ])
        );
        assert_eq!(s.pinned, 2, "a refused close leaves the connection counted");
        let mut pods = vec![api_pod("/cg/b"), api_pod("/cg/c")];
        t.fill(&mut pods);
        assert_eq!(pods[0].pinned, None);
        let err = pods[0].pinned_error.as_deref().unwrap();
        assert!(err.contains("CAP_SYS_PTRACE") && err.contains("denied"), "{err}");
        assert_eq!(pods[1].pinned, Some(2));
    }
}
