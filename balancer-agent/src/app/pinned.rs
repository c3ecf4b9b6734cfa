//! The periodic sweep for pinned connections (see [`crate::pinned`]),
//! Kubernetes mode: every interval, the enrolled pods of the current model
//! are swept for connections to its VIPs that bypass the agent, on a
//! blocking thread (it waits for the node-wide close rate and does blocking
//! netlink I/O; the main loop and the data plane never wait for it).
//!
//! A pod's pinned connections are closed only when it opted in
//! (`reconnect_pinned`) **and** its cgroup is in the kernel's enrolled map
//! at the time of the sweep, so that the re-dial is redirected to the
//! agent; otherwise they are only counted.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use crate::{
    ebpf::Kernel,
    model::Model,
    pinned::{
        tally::{error_reason, SweptPod, Tally},
        PodReport, PodTarget, SweepConfig, Sweeper,
    },
};

/// How often enrolled pods are swept, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// At most this many pinned connections are closed per second on the node,
/// by default.
pub const DEFAULT_CLOSE_RATE: u32 = 10;

/// The sweeps' settings (from the command line).
#[derive(Debug, Clone)]
pub struct PinnedOptions {
    /// Time between sweeps; `None`: no sweeps.
    pub interval: Option<Duration>,
    /// Where processes are read (`/proc`, or the host's mounted elsewhere).
    pub procfs: PathBuf,
    /// Closes per second on the node.
    pub close_rate: NonZeroU32,
}

impl Default for PinnedOptions {
    fn default() -> Self {
        PinnedOptions {
            interval: Some(DEFAULT_INTERVAL),
            procfs: PathBuf::from("/proc"),
            close_rate: NonZeroU32::new(DEFAULT_CLOSE_RATE).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl PinnedOptions {
    /// The sweeper's settings for sweeps every `interval`.
    pub fn sweep_config(&self, interval: Duration) -> SweepConfig {
        SweepConfig {
            procfs: self.procfs.clone(),
            destroy_rate: self.close_rate,
            // A sweep never runs into the next one.
            max_wait: (interval / 2).min(SweepConfig::default().max_wait),
            ..SweepConfig::default()
        }
    }
}

/// The sweep of one model: its enrolled cgroups and VIPs.
fn targets(model: &Model) -> (Vec<PodTarget<SweptPod>>, HashSet<SocketAddr>) {
    let pods = model
        .enrolled
        .iter()
        .map(|e| PodTarget {
            key: SweptPod {
                cgroup: e.cgroup.clone(),
                namespace: e.pod.as_ref().map(|p| p.namespace.clone()),
            },
            cgroup: e.cgroup.clone(),
            remedy: e.reconnect_pinned,
        })
        .collect();
    let vips = model.services.iter().flat_map(|s| s.vips.iter().copied()).collect();
    (pods, vips)
}

/// Keeps the remedy of the pods whose cgroup the enrolled map holds; the
/// others are only counted.
fn remedy_only_if_enrolled(pods: &mut [PodTarget<SweptPod>], kernel: &Mutex<Kernel>) {
    if !pods.iter().any(|p| p.remedy) {
        return;
    }
    let enrolled = match super::lock(kernel).enrolled_ids() {
        Ok(ids) => ids,
        Err(e) => {
            warn!(error = %e, "cannot read the enrolled map; pinned connections are only counted this sweep");
            HashSet::new()
        }
    };
    keep_remedy_of(pods, &enrolled, |dir| crate::cgroup::cgroup_id(dir).ok());
}

/// Keeps the remedy of the pods whose cgroup's id (`id_of`) is in
/// `enrolled`.
fn keep_remedy_of(pods: &mut [PodTarget<SweptPod>], enrolled: &HashSet<u64>, id_of: impl Fn(&Path) -> Option<u64>) {
    for p in pods.iter_mut().filter(|p| p.remedy) {
        p.remedy = id_of(&p.cgroup).is_some_and(|id| enrolled.contains(&id));
    }
}

/// Sweeps every `interval` until `stopping` turns true, recording into
/// `tally`.
pub async fn run(
    config: SweepConfig,
    interval: Duration,
    kernel: Arc<Mutex<Kernel>>,
    models: watch::Receiver<Arc<Model>>,
    tally: Arc<Tally>,
    mut stopping: watch::Receiver<bool>,
) {
    info!(
        interval = ?interval,
        procfs = %config.procfs.display(),
        close_rate = config.destroy_rate.get(),
        "sweeping enrolled pods for connections that bypass the agent"
    );
    let mut sweeper = Some(Sweeper::new(config.clone()));
    let mut told = Told::default();
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let model = Arc::clone(&models.borrow());
        let (mut pods, vips) = targets(&model);
        let mut s = sweeper.take().unwrap_or_else(|| Sweeper::new(config.clone()));
        let kernel = Arc::clone(&kernel);
        let started = Instant::now();
        let swept = tokio::task::spawn_blocking(move || {
            remedy_only_if_enrolled(&mut pods, &kernel);
            let reports = s.sweep(&pods, &vips);
            (s, pods, reports)
        })
        .await;
        match swept {
            Ok((s, pods, reports)) => {
                sweeper = Some(s);
                tally.record(&reports, started.elapsed());
                told.log(&pods, &reports);
            }
            // A panic in the sweep: start over with a fresh sweeper.
            Err(e) => warn!(error = %e, "pinned-connection sweep failed"),
        }
    }
}

/// What was logged per cgroup, so that a sweep every 30 s does not repeat
/// it.
#[derive(Default)]
struct Told {
    /// Open pinned connections last logged.
    open: HashMap<PathBuf, usize>,
    /// The error kind last logged.
    errors: HashMap<PathBuf, &'static str>,
}

impl Told {
    fn log(&mut self, pods: &[PodTarget<SweptPod>], reports: &[PodReport<SweptPod>]) {
        let remedy: HashMap<&PathBuf, bool> = pods.iter().map(|p| (&p.cgroup, p.remedy)).collect();
        let mut open = HashMap::new();
        let mut errors = HashMap::new();
        for r in reports {
            let cgroup = &r.key.cgroup;
            let left = r.open();
            if left > 0 && self.open.get(cgroup) != Some(&left) {
                if remedy.get(cgroup).copied().unwrap_or(false) {
                    info!(cgroup = %cgroup.display(), pinned = left, "pinned connections left for the next sweep");
                } else {
                    info!(
                        cgroup = %cgroup.display(),
                        pinned = left,
                        "connections that bypass the agent (opened before the pod was enrolled); \
                         balancer.io/reconnect-pinned: enabled has them closed"
                    );
                }
            }
            if left > 0 {
                open.insert(cgroup.clone(), left);
            }
            if let Some(e) = &r.error {
                let reason = error_reason(e);
                if self.errors.get(cgroup) != Some(&reason) {
                    warn!(cgroup = %cgroup.display(), reason, error = %e, "pinned-connection sweep of a pod stopped short");
                }
                errors.insert(cgroup.clone(), reason);
            }
        }
        self.open = open;
        self.errors = errors;
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::model::{Enrolled, PodRef};

    #[test]
    fn every_enrolled_cgroup_is_swept_for_the_models_vips_with_its_pods_choice() {
        let model = Model {
            services: vec![std::sync::Arc::new(crate::model::Service {
                name: "demo/greeter".into(),
                vips: vec!["10.96.0.10:8000".parse().unwrap()],
                listen: None,
                policy: crate::model::Policy::default(),
                hash_header: None,
                endpoints: vec![],
                routes: vec![],
                fault: None,
                traffic_distribution: crate::model::TrafficDistribution::Any,
                internal_traffic_policy: crate::model::InternalTrafficPolicy::Cluster,
                ejection: None,
            })],
            enrolled: vec![
                Enrolled {
                    cgroup: PathBuf::from("/cg/a"),
                    pod: Some(PodRef {
                        namespace: "demo".into(),
                        name: "a".into(),
                        ips: vec![],
                    }),
                    reconnect_pinned: true,
                },
                Enrolled::from(PathBuf::from("/cg/static")),
            ],
            locality: crate::model::Locality::default(),
            gateways: vec![],
        };
        let (pods, vips) = targets(&model);
        assert_eq!(vips, HashSet::from(["10.96.0.10:8000".parse().unwrap()]));
        let rows: Vec<(PathBuf, Option<String>, bool)> = pods
            .iter()
            .map(|p| (p.cgroup.clone(), p.key.namespace.clone(), p.remedy))
            .collect();
        assert_eq!(
            rows,
            vec![
                (PathBuf::from("/cg/a"), Some("demo".to_owned()), true),
                (PathBuf::from("/cg/static"), None, false),
            ]
        );
    }

    #[test]
    fn only_pods_in_the_enrolled_map_keep_their_remedy() {
        let target = |cgroup: &str, remedy: bool| PodTarget {
            key: SweptPod {
                cgroup: PathBuf::from(cgroup),
                namespace: None,
            },
            cgroup: PathBuf::from(cgroup),
            remedy,
        };
        let ids = HashMap::from([(PathBuf::from("/cg/a"), 10u64), (PathBuf::from("/cg/b"), 11)]);
        let id_of = |dir: &Path| ids.get(dir).copied();
        // a and c (gone) opted in, b did not; the map holds a and b.
        let mut pods = vec![target("/cg/a", true), target("/cg/b", false), target("/cg/c", true)];
        keep_remedy_of(&mut pods, &HashSet::from([10, 11]), id_of);
        assert_eq!(pods.iter().map(|p| p.remedy).collect::<Vec<_>>(), [true, false, false]);
        // a leaves the map: only counted.
        keep_remedy_of(&mut pods, &HashSet::from([11]), id_of);
        assert!(pods.iter().all(|p| !p.remedy));
    }

    #[test]
    fn a_sweep_never_waits_into_the_next() {
        let opts = PinnedOptions::default();
        assert_eq!(
            opts.sweep_config(Duration::from_secs(30)).max_wait,
            Duration::from_secs(5)
        );
        assert_eq!(
            opts.sweep_config(Duration::from_secs(2)).max_wait,
            Duration::from_secs(1)
        );
    }
}
