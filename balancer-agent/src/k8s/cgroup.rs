//! Where the kubelet puts a pod's cgroup (cgroup v2), for both cgroup drivers.
//!
//! The kubelet nests every pod under `kubepods` by QoS class:
//!
//! | driver   | Guaranteed                                  | Burstable / BestEffort |
//! |----------|---------------------------------------------|------------------------|
//! | cgroupfs | `kubepods/pod<uid>`                         | `kubepods/burstable/pod<uid>` |
//! | systemd  | `kubepods.slice/kubepods-pod<uid_>.slice`   | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` |
//!
//! where `<uid_>` is the UID with `-` replaced by `_` (systemd reserves `-`
//! for slice nesting). Which driver a node uses is not visible from the API,
//! so the candidates of both are probed on disk; the pod's QoS class (when
//! the status has it) only decides which are tried first.

use std::path::{Path, PathBuf};

/// A pod's QoS class, as in `status.qosClass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// `status.qosClass` of a pod; `None` for an absent or unknown value.
    pub fn from_status(value: Option<&str>) -> Option<Self> {
        match value? {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }

    /// The QoS tier's directory name, `None` for Guaranteed (directly under
    /// `kubepods`).
    fn tier(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// Whether `uid` looks like a Kubernetes UID: it becomes a path component,
/// so anything but hex digits and dashes is refused.
fn plausible_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Every place the pod's cgroup may be under `root` (the cgroup v2 mount),
/// the QoS class's own candidates first.
pub fn candidates(root: &Path, uid: &str, qos: Option<QosClass>) -> Vec<PathBuf> {
    if !plausible_uid(uid) {
        return Vec::new();
    }
    let all = [QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort];
    let order = qos.into_iter().chain(all.into_iter().filter(|q| Some(*q) != qos));
    let systemd_uid = uid.replace('-', "_");
    let mut out = Vec::with_capacity(6);
    for q in order {
        let mut cgroupfs = root.join("kubepods");
        let mut systemd = root.join("kubepods.slice");
        match q.tier() {
            None => {
                cgroupfs.push(format!("pod{uid}"));
                systemd.push(format!("kubepods-pod{systemd_uid}.slice"));
            }
            Some(tier) => {
                cgroupfs.push(tier);
                cgroupfs.push(format!("pod{uid}"));
                systemd.push(format!("kubepods-{tier}.slice"));
                systemd.push(format!("kubepods-{tier}-pod{systemd_uid}.slice"));
            }
        }
        out.push(cgroupfs);
        out.push(systemd);
    }
    out
}

/// The pod's cgroup v2 directory under `root`, if it exists (it appears
/// once the kubelet has created the pod sandbox).
pub fn pod_cgroup(root: &Path, uid: &str, qos: Option<QosClass>) -> Option<PathBuf> {
    candidates(root, uid, qos).into_iter().find(|p| p.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";

    fn tree(dirs: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).expect("mkdir");
        }
        t
    }

    #[test]
    fn cgroupfs_driver_by_qos_class() {
        let t = tree(&[
            "kubepods/burstable",
            "kubepods/besteffort",
            &format!("kubepods/burstable/pod{UID}"),
        ]);
        let found = pod_cgroup(t.path(), UID, Some(QosClass::Burstable));
        assert_eq!(found, Some(t.path().join(format!("kubepods/burstable/pod{UID}"))));
        // A wrong or missing QoS class still finds it (other tiers are probed).
        assert_eq!(pod_cgroup(t.path(), UID, Some(QosClass::BestEffort)), found);
        assert_eq!(pod_cgroup(t.path(), UID, None), found);
    }

    #[test]
    fn cgroupfs_guaranteed_is_directly_under_kubepods() {
        let t = tree(&[&format!("kubepods/pod{UID}"), "kubepods/burstable"]);
        assert_eq!(
            pod_cgroup(t.path(), UID, Some(QosClass::Guaranteed)),
            Some(t.path().join(format!("kubepods/pod{UID}")))
        );
    }

    #[test]
    fn systemd_driver_escapes_dashes() {
        let escaped = UID.replace('-', "_");
        let best = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{escaped}.slice");
        let t = tree(&[&best]);
        assert_eq!(
            pod_cgroup(t.path(), UID, Some(QosClass::BestEffort)),
            Some(t.path().join(&best))
        );
        let guaranteed = format!("kubepods.slice/kubepods-pod{escaped}.slice");
        let t = tree(&[&guaranteed]);
        assert_eq!(
            pod_cgroup(t.path(), UID, Some(QosClass::Guaranteed)),
            Some(t.path().join(&guaranteed))
        );
    }

    #[test]
    fn a_pod_without_a_cgroup_yet_is_not_found() {
        let t = tree(&["kubepods/burstable/podffffffff-0000-0000-0000-000000000000"]);
        assert_eq!(pod_cgroup(t.path(), UID, Some(QosClass::Burstable)), None);
    }

    #[test]
    fn uids_that_could_escape_the_root_are_refused() {
        let t = tree(&["kubepods/burstable/pod..", "etc"]);
        assert!(candidates(t.path(), "../../etc", None).is_empty());
        assert_eq!(pod_cgroup(t.path(), "..", None), None);
        assert_eq!(pod_cgroup(t.path(), "", None), None);
    }

    #[test]
    fn qos_class_parses_the_status_values() {
        assert_eq!(QosClass::from_status(Some("Burstable")), Some(QosClass::Burstable));
        assert_eq!(QosClass::from_status(Some("bogus")), None);
        assert_eq!(QosClass::from_status(None), None);
    }
}
