//! Finding a pod's cgroup v2 directory by scanning the node's hierarchy.
//!
//! Where the kubelet and the container runtime put a pod depends on the
//! cgroup driver, the kubelet's `--cgroup-root`, `--cgroups-per-qos` and the
//! runtime, so no fixed list of paths covers real nodes. Instead the
//! hierarchy below the root is walked (a bounded number of levels, without
//! following links; directories that vanish mid-walk are skipped) and every
//! directory is recognised by its own name:
//!
//! | name | what | seen on |
//! |---|---|---|
//! | `pod<uid>` | a pod | cgroupfs driver: `kubepods/burstable/pod<uid>`, k3s/RKE2 |
//! | `<prefix>-pod<uid_>.slice` | a pod | systemd driver: `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice`; kind: `kubelet.slice/kubelet-kubepods.slice/…/kubelet-kubepods-besteffort-pod<uid_>.slice` |
//! | `cri-containerd-<id>.scope` | a container | containerd, systemd driver |
//! | `crio-<id>.scope`, `crio-<id>` | a container | CRI-O (not `crio-conmon-<id>`: its monitor process) |
//! | `docker-<id>.scope` | a container | cri-dockerd, systemd driver |
//! | `<64 hex digits>` | a container | containerd or cri-dockerd, cgroupfs driver |
//!
//! `<uid_>` is the pod UID with `-` replaced by `_` (systemd reserves `-`
//! for slice nesting). A pod's cgroups are its pod-level directory when it
//! has one; otherwise (kubelet `--cgroups-per-qos=false`) the directories of
//! its running containers, found by the IDs in its status. Enrolling a
//! directory enrolls everything below it, so either is enough.
//!
//! The walk's result is kept ([`CgroupFinder`]): a pod that is not in it
//! causes a new walk, at most once per [`CgroupFinder::new`]'s `min_rescan`.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;
use tokio::time::Instant;

/// How many levels below the root are walked by default. kind seen from
/// the host is the deepest common layout: a container's cgroup is seven
/// levels down (`system.slice/docker-<node>.scope/kubelet.slice/
/// kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/<pod>.slice/
/// cri-containerd-<id>.scope`).
pub const DEFAULT_MAX_DEPTH: usize = 10;

/// A walk stops after this many directories (a bound on a pathological
/// hierarchy; a node with a thousand pods has a few thousand).
const MAX_DIRS: usize = 200_000;

/// The pod annotation with a static pod's own UID (the mirror pod the API
/// shows has another); the kubelet names the pod's cgroup after the former.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether `uid` can be a Kubernetes UID: hex digits and dashes only, so
/// nothing that could name another directory (`..`, `/`) is ever looked up.
pub fn plausible_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Whether `id` can be a container ID: hex digits only.
pub fn plausible_container_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a cgroup directory's name says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    /// A pod's cgroup: its UID, lower-case, with dashes.
    Pod(String),
    /// A container's cgroup: its ID, lower-case.
    Container(String),
}

/// Recognises a directory name (see the module's table).
fn classify(name: &str) -> Option<Named> {
    if let Some(uid) = name.strip_prefix("pod") {
        return plausible_uid(uid).then(|| Named::Pod(uid.to_ascii_lowercase()));
    }
    if let Some(stem) = name.strip_suffix(".slice") {
        let (prefix, escaped) = stem.rsplit_once("-pod")?;
        let uid = escaped.replace('_', "-");
        return (!prefix.is_empty() && plausible_uid(&uid)).then(|| Named::Pod(uid.to_ascii_lowercase()));
    }
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|p| stem.strip_prefix(p))
        .or_else(|| (stem.len() == 64 && stem.len() == name.len()).then_some(stem))?;
    // `crio-conmon-<id>` fails here: `conmon-…` is not hex.
    plausible_container_id(id).then(|| Named::Container(id.to_ascii_lowercase()))
}

/// The pods and containers found below the root, each at its shallowest
/// place.
#[derive(Debug, Default)]
struct Index {
    pods: HashMap<String, PathBuf>,
    containers: HashMap<String, PathBuf>,
}

/// Walks `root` breadth first, `max_depth` levels down. Only the root
/// itself failing is an error: a directory that vanished or cannot be read
/// further down is skipped.
fn scan(root: &Path, max_depth: usize) -> io::Result<Index> {
    let mut index = Index::default();
    let mut queue = VecDeque::from([(root.to_path_buf(), 0usize)]);
    let mut seen = 0usize;
    while let Some((dir, depth)) = queue.pop_front() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if depth == 0 => return Err(e),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            // The entry's own type: a link is not followed.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            seen += 1;
            if seen > MAX_DIRS {
                tracing::warn!(root = %root.display(), dirs = MAX_DIRS, "cgroup scan stopped early: too many directories");
                return Ok(index);
            }
            let path = entry.path();
            if let Some(named) = entry.file_name().to_str().and_then(classify) {
                let map = match named {
                    Named::Pod(uid) => index.pods.entry(uid),
                    Named::Container(id) => index.containers.entry(id),
                };
                map.or_insert_with(|| path.clone());
            }
            if depth + 1 < max_depth {
                queue.push_back((path, depth + 1));
            }
        }
    }
    Ok(index)
}

/// What a pod's cgroups are looked up by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodKeys {
    /// The pod's UID, and for a static pod the kubelet's UID of it.
    pub uids: Vec<String>,
    /// IDs of its running containers (init and ephemeral ones too), without
    /// the `containerd://` / `cri-o://` / `docker://` scheme.
    pub container_ids: Vec<String>,
}

impl PodKeys {
    /// The keys of `pod`. Values that are not plausible (see
    /// [`plausible_uid`], [`plausible_container_id`]) are left out.
    pub fn of(pod: &Pod) -> PodKeys {
        let uids = pod
            .metadata
            .uid
            .iter()
            .chain(pod.annotations().get(MIRROR_ANNOTATION))
            .filter(|u| plausible_uid(u))
            .map(|u| u.to_ascii_lowercase())
            .collect();
        let statuses = pod.status.iter().flat_map(|s| {
            let all = [
                &s.container_statuses,
                &s.init_container_statuses,
                &s.ephemeral_container_statuses,
            ];
            all.into_iter().flatten().flatten()
        });
        let container_ids = statuses.filter_map(running_container_id).collect();
        PodKeys { uids, container_ids }
    }

    /// What was looked for, for a human: the directory names a pod-level
    /// cgroup would have and the container IDs (at most a few).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        match self.uids.first() {
            Some(uid) => {
                let _ = write!(out, "a pod cgroup `pod{uid}` or `*-pod{}.slice`", uid.replace('-', "_"));
            }
            None => out.push_str("no pod cgroup (the pod has no usable UID)"),
        }
        if self.container_ids.is_empty() {
            out.push_str(", and no running container to look for");
        } else {
            const SHOWN: usize = 4;
            let ids: Vec<&str> = self.container_ids.iter().take(SHOWN).map(|s| short(s)).collect();
            let more = self.container_ids.len().saturating_sub(SHOWN);
            let _ = write!(
                out,
                ", or the cgroups of containers {}{} (`cri-containerd-<id>.scope`, `crio-<id>.scope`, \
                 `docker-<id>.scope` or `<id>`)",
                ids.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
        out
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The ID of a running container, from `containerID` (`<runtime>://<id>`).
/// A container that is not running has no cgroup.
fn running_container_id(s: &ContainerStatus) -> Option<String> {
    s.state.as_ref()?.running.as_ref()?;
    let (_, id) = s.container_id.as_deref()?.split_once("://")?;
    plausible_container_id(id).then(|| id.to_ascii_lowercase())
}

/// Finds pods' cgroups below one root, from a kept index of the hierarchy
/// that is walked again on a miss, at most once per `min_rescan`.
#[derive(Debug)]
pub struct CgroupFinder {
    root: PathBuf,
    max_depth: usize,
    min_rescan: Duration,
    index: Index,
    scanned_at: Option<Instant>,
    scans: u64,
    root_failed: bool,
}

impl CgroupFinder {
    /// A finder below `root` (the host's cgroup v2 hierarchy). Nothing is
    /// read until the first lookup.
    pub fn new(root: impl Into<PathBuf>, max_depth: usize, min_rescan: Duration) -> Self {
        CgroupFinder {
            root: root.into(),
            max_depth,
            min_rescan,
            index: Index::default(),
            scanned_at: None,
            scans: 0,
            root_failed: false,
        }
    }

    /// The root searched.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many levels below the root are searched.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// How many times the hierarchy was walked.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// The pod's cgroup directories: its pod-level cgroup if it has one,
    /// else those of its running containers that exist; empty when none is
    /// found. A lookup that finds less than everything walks the hierarchy
    /// again first, unless the last walk is more recent than `min_rescan`.
    pub fn find(&mut self, keys: &PodKeys) -> Vec<PathBuf> {
        let (found, complete) = self.lookup(keys);
        if complete || !self.may_rescan() {
            return found;
        }
        self.rescan();
        self.lookup(keys).0
    }

    /// Whether a walk now would respect `min_rescan`.
    fn may_rescan(&self) -> bool {
        self.scanned_at.is_none_or(|at| at.elapsed() >= self.min_rescan)
    }

    fn rescan(&mut self) {
        let started = Instant::now();
        self.scanned_at = Some(started);
        self.scans += 1;
        match scan(&self.root, self.max_depth) {
            Ok(index) => {
                self.root_failed = false;
                tracing::debug!(
                    root = %self.root.display(),
                    pods = index.pods.len(),
                    containers = index.containers.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    "cgroup hierarchy scanned"
                );
                self.index = index;
            }
            Err(error) => {
                if !self.root_failed {
                    tracing::warn!(root = %self.root.display(), %error, "cannot read the cgroup root; no pod can be enrolled");
                }
                self.root_failed = true;
                self.index = Index::default();
            }
        }
    }

    /// From the index only: what is found, and whether that is everything
    /// the keys name (a pod cgroup, or every running container's).
    fn lookup(&self, keys: &PodKeys) -> (Vec<PathBuf>, bool) {
        let live = |p: &&PathBuf| p.is_dir();
        if let Some(dir) = keys.uids.iter().find_map(|u| self.index.pods.get(u).filter(live)) {
            return (vec![dir.clone()], true);
        }
        let found: Vec<PathBuf> = keys
            .container_ids
            .iter()
            .filter_map(|id| self.index.containers.get(id).filter(live).cloned())
            .collect();
        let complete = !found.is_empty() && found.len() == keys.container_ids.len();
        (found, complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised() {
        let uid = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        let pod = || Some(Named::Pod(uid.to_owned()));
        assert_eq!(classify(&format!("pod{uid}")), pod());
        let escaped = uid.replace('-', "_");
        assert_eq!(classify(&format!("kubepods-burstable-pod{escaped}.slice")), pod());
        assert_eq!(classify(&format!("kubepods-pod{escaped}.slice")), pod());
        assert_eq!(
            classify(&format!("kubelet-kubepods-besteffort-pod{escaped}.slice")),
            pod()
        );
        let id = "75c7fe7ad0df679971e755bd97b84dd68a32e1eba8e8f99b01ab3c07196a3e4a";
        let ctr = || Some(Named::Container(id.to_owned()));
        assert_eq!(classify(&format!("cri-containerd-{id}.scope")), ctr());
        assert_eq!(classify(&format!("crio-{id}.scope")), ctr());
        assert_eq!(classify(&format!("crio-{id}")), ctr());
        assert_eq!(classify(&format!("docker-{id}.scope")), ctr());
        assert_eq!(classify(id), ctr());
        // Not pods or containers.
        for other in [
            format!("crio-conmon-{id}.scope"),
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            "pod".to_owned(),
            "pod..".to_owned(),
            "podman".to_owned(),
            "-pod1234.slice".to_owned(),
            "system.slice".to_owned(),
            "init.scope".to_owned(),
            "burstable".to_owned(),
            format!("{id}.scope"),
            id[..63].to_owned(),
        ] {
            assert_eq!(classify(&other), None, "{other}");
        }
    }

    #[test]
    fn implausible_keys_are_refused() {
        assert!(plausible_uid("0a1b2c3d-4e5f-6789-abcd-ef0123456789"));
        assert!(plausible_uid("d41d8cd98f00b204e9800998ecf8427e"));
        for bad in ["", "..", "../../etc", "a/b", "uid-1", &"a".repeat(65)] {
            assert!(!plausible_uid(bad), "{bad}");
        }
        assert!(!plausible_container_id("abc-def"));
        assert!(!plausible_container_id("../x"));
    }
}
