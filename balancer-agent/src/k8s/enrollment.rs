//! Opted-in pods the agent does not enroll, and what it tells about them:
//! a pod whose cgroup stays missing past a threshold, and a pod in a service
//! mesh. Each gets one Warning Event (decided here, posted by
//! [`super::report`]); pods without a cgroup are also counted for the
//! `balancer_pods_cgroup_missing` metric.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::time::Instant;

use super::{cgroup::PodKeys, event_note, mesh::Mesh, translate::Translation};

/// The Event reason on an opted-in pod whose cgroup is not found.
pub const CGROUP_NOT_FOUND_REASON: &str = "CgroupNotFound";
/// The Event reason on an opted-in pod left out because of its mesh.
pub const NOT_ENROLLED_REASON: &str = "NotEnrolled";

/// An Event due on a pod.
#[derive(Debug, Clone)]
pub struct PodNotice {
    pub pod: Arc<Pod>,
    pub reason: &'static str,
    pub note: String,
}

/// What one [`Tracker::update`] found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events to post (each pod gets each at most once).
    pub notices: Vec<PodNotice>,
    /// Pods whose cgroup is still missing past the threshold.
    pub cgroup_missing: u64,
    /// When the earliest pod still within the threshold reaches it: look
    /// again then (and before, to enroll it as soon as its cgroup appears).
    pub pending_until: Option<Instant>,
}

/// Where cgroups were searched, for the note of a missing one.
#[derive(Debug, Clone, Copy)]
pub struct Searched<'a> {
    pub root: &'a Path,
    pub max_depth: usize,
}

/// Remembers, across recomputations, since when each pod lacks a cgroup
/// and which pods were already told about.
#[derive(Debug)]
pub struct Tracker {
    threshold: Duration,
    /// Pod key → when it was first seen wanting enrollment without a cgroup
    /// (found again, it starts over).
    missing_since: HashMap<String, Instant>,
    warned_missing: HashSet<String>,
    warned_meshed: HashSet<(String, Mesh)>,
}

/// A pod's identity across updates: its UID (`namespace/name` without one).
fn key(pod: &Pod) -> String {
    pod.metadata
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()))
}

impl Tracker {
    /// A pod whose cgroup is missing for `threshold` is reported.
    pub fn new(threshold: Duration) -> Self {
        Tracker {
            threshold,
            missing_since: HashMap::new(),
            warned_missing: HashSet::new(),
            warned_meshed: HashSet::new(),
        }
    }

    /// Takes in a translation of `pods` (this node's pods) made at `now`.
    pub fn update(&mut self, pods: &[Arc<Pod>], t: &Translation, now: Instant, searched: Searched<'_>) -> Outcome {
        let live: HashSet<String> = pods.iter().map(|p| key(p)).collect();
        self.warned_missing.retain(|k| live.contains(k));
        self.warned_meshed.retain(|(k, _)| live.contains(k));

        let mut out = Outcome::default();
        let missing: HashSet<String> = t.cgroup_missing.iter().map(|p| key(p)).collect();
        self.missing_since.retain(|k, _| missing.contains(k));
        for pod in &t.cgroup_missing {
            let k = key(pod);
            let since = *self.missing_since.entry(k.clone()).or_insert(now);
            let due = since + self.threshold;
            if now < due {
                out.pending_until = Some(out.pending_until.map_or(due, |d| d.min(due)));
                continue;
            }
            out.cgroup_missing += 1;
            if self.warned_missing.insert(k) {
                let note = missing_note(pod, self.threshold, searched);
                tracing::warn!(
                    pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                    root = %searched.root.display(),
                    "opted-in pod has no cgroup; not enrolled"
                );
                out.notices.push(PodNotice {
                    pod: Arc::clone(pod),
                    reason: CGROUP_NOT_FOUND_REASON,
                    note,
                });
            }
        }

        for (pod, mesh) in &t.meshed {
            if self.warned_meshed.insert((key(pod), *mesh)) {
                tracing::info!(
                    pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                    %mesh,
                    "opted-in pod is in a service mesh; not enrolled"
                );
                out.notices.push(PodNotice {
                    pod: Arc::clone(pod),
                    reason: NOT_ENROLLED_REASON,
                    note: mesh.explain(),
                });
            }
        }
        out
    }
}

fn missing_note(pod: &Pod, threshold: Duration, searched: Searched<'_>) -> String {
    let mut note = format!(
        "not enrolled: no cgroup found for this pod within {}s: searched {} ({} levels deep) for {}. \
         Its calls to gRPC Services are not balanced by the node agent; check that the agent's cgroup \
         root is the node's cgroup v2 hierarchy.",
        threshold.as_secs_f64(),
        searched.root.display(),
        searched.max_depth,
        PodKeys::of(pod).describe()
    );
    event_note::fit(&mut note);
    note
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": "demo", "uid": uid }
            }))
            .unwrap(),
        )
    }

    fn searched() -> Searched<'static> {
        Searched {
            root: Path::new("/run/balancer/cgroupv2"),
            max_depth: 10,
        }
    }

    #[test]
    fn a_missing_cgroup_is_reported_once_after_the_threshold() {
        let mut tr = Tracker::new(Duration::from_secs(10));
        let p = pod("client", "0a1b2c3d-4e5f-6789-abcd-ef0123456789");
        let t = Translation {
            cgroup_missing: vec![Arc::clone(&p)],
            ..Translation::default()
        };
        let pods = vec![Arc::clone(&p)];
        let t0 = Instant::now();
        let o = tr.update(&pods, &t, t0, searched());
        assert!(o.notices.is_empty());
        assert_eq!(o.cgroup_missing, 0, "not counted within the threshold");
        assert_eq!(o.pending_until, Some(t0 + Duration::from_secs(10)));

        let o = tr.update(&pods, &t, t0 + Duration::from_secs(10), searched());
        assert_eq!(o.cgroup_missing, 1);
        assert_eq!(o.notices.len(), 1);
        assert_eq!(o.notices[0].reason, CGROUP_NOT_FOUND_REASON);
        let note = &o.notices[0].note;
        assert!(note.contains("/run/balancer/cgroupv2"), "{note}");
        assert!(note.contains("pod0a1b2c3d-4e5f-6789-abcd-ef0123456789"), "{note}");
        assert!(
            note.contains("*-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice"),
            "{note}"
        );

        // Still missing: counted, not told again.
        let o = tr.update(&pods, &t, t0 + Duration::from_secs(30), searched());
        assert_eq!((o.cgroup_missing, o.notices.len()), (1, 0));

        // Found: no longer counted.
        let o = tr.update(&pods, &Translation::default(), t0 + Duration::from_secs(31), searched());
        assert_eq!(o.cgroup_missing, 0);
        // Missing again: the clock starts over, and the pod was told already.
        let o = tr.update(&pods, &t, t0 + Duration::from_secs(32), searched());
        assert_eq!((o.cgroup_missing, o.notices.len()), (0, 0));
        let o = tr.update(&pods, &t, t0 + Duration::from_secs(42), searched());
        assert_eq!((o.cgroup_missing, o.notices.len()), (1, 0));
    }

    #[test]
    fn meshed_pods_are_told_once_per_pod() {
        let mut tr = Tracker::new(Duration::from_secs(10));
        let p = pod("meshed", "1a1b2c3d-4e5f-6789-abcd-ef0123456789");
        let t = Translation {
            meshed: vec![(Arc::clone(&p), Mesh::IstioSidecar)],
            ..Translation::default()
        };
        let pods = vec![Arc::clone(&p)];
        let now = Instant::now();
        let o = tr.update(&pods, &t, now, searched());
        assert_eq!(o.notices.len(), 1);
        assert_eq!(o.notices[0].reason, NOT_ENROLLED_REASON);
        assert!(o.notices[0].note.contains("Istio (sidecar)"));
        assert!(tr.update(&pods, &t, now, searched()).notices.is_empty());
        // A pod that left is forgotten (what was told about it is not kept).
        tr.update(&[], &Translation::default(), now, searched());
        assert_eq!(tr.update(&pods, &t, now, searched()).notices.len(), 1);
    }
}
