//! Finding pods' cgroups on the layouts real nodes have, as directory trees
//! built in a tempdir: containerd with the systemd and the cgroupfs driver,
//! CRI-O (with its conmon sibling), cri-dockerd, kind (seen from the kind
//! node and from the host), k3s/RKE2, and kubelet `--cgroups-per-qos=false`
//! where a pod has no pod-level cgroup and is found by its containers.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use balancer_agent::k8s::cgroup::{CgroupFinder, PodKeys, DEFAULT_MAX_DEPTH};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

const UID: &str = "3f6c2a9e-8d41-4b7a-9c0e-5a1b2c3d4e5f";
const OTHER_UID: &str = "b07e4d12-6a3f-4e89-8c21-0f9e8d7c6b5a";
/// Container IDs: the pod's sandbox (pause), its app, and a sidecar.
const SANDBOX: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const APP: &str = "2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a";
const HELPER: &str = "3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b";
const FINISHED: &str = "4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c";

fn escaped(uid: &str) -> String {
    uid.replace('-', "_")
}

/// A cgroup v2 tree: every directory with the control files a real one
/// has (which the walk must skip), plus what every node has besides pods.
fn tree(dirs: &[String]) -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    let noise = [
        "init.scope",
        "system.slice/systemd-journald.service",
        "user.slice/user-0.slice",
    ];
    for d in dirs.iter().map(String::as_str).chain(noise) {
        let dir = t.path().join(d);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in ["cgroup.procs", "cgroup.controllers", "memory.max"] {
            std::fs::write(dir.join(f), "").expect("control file");
        }
    }
    t
}

/// A pod as the API shows it: running `containers` (`runtime://id`), plus
/// an init container that finished.
fn pod(uid: &str, containers: &[&str]) -> Pod {
    let statuses: Vec<Value> = containers
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({ "name": format!("c{i}"), "containerID": id, "image": "x", "imageID": "x",
                    "ready": true, "restartCount": 0,
                    "state": { "running": { "startedAt": "2025-01-01T00:00:00Z" } } })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "client", "namespace": "demo", "uid": uid },
        "status": {
            "phase": "Running",
            "containerStatuses": statuses,
            "initContainerStatuses": [{
                "name": "init", "containerID": format!("containerd://{FINISHED}"), "image": "x", "imageID": "x",
                "ready": true, "restartCount": 0,
                "state": { "terminated": { "exitCode": 0, "startedAt": "2025-01-01T00:00:00Z",
                                           "finishedAt": "2025-01-01T00:00:01Z" } }
            }]
        }
    }))
    .expect("pod parses")
}

fn finder(root: &Path) -> CgroupFinder {
    CgroupFinder::new(root, DEFAULT_MAX_DEPTH, Duration::ZERO)
}

fn find(root: &Path, pod: &Pod) -> Vec<PathBuf> {
    finder(root).find(&PodKeys::of(pod))
}

#[test]
fn containerd_with_the_systemd_driver() {
    let u = escaped(UID);
    let o = escaped(OTHER_UID);
    let slice = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice");
    let guaranteed = format!("kubepods.slice/kubepods-pod{o}.slice");
    let t = tree(&[
        format!("{slice}/cri-containerd-{SANDBOX}.scope"),
        format!("{slice}/cri-containerd-{APP}.scope"),
        format!("{guaranteed}/cri-containerd-{HELPER}.scope"),
        "kubepods.slice/kubepods-besteffort.slice".into(),
        "system.slice/containerd.service".into(),
        "system.slice/kubelet.service".into(),
    ]);
    let p = pod(UID, &[&format!("containerd://{APP}")]);
    assert_eq!(find(t.path(), &p), vec![t.path().join(&slice)]);
    // Guaranteed pods sit directly under kubepods.slice.
    assert_eq!(find(t.path(), &pod(OTHER_UID, &[])), vec![t.path().join(&guaranteed)]);
}

#[test]
fn containerd_with_the_cgroupfs_driver() {
    let t = tree(&[
        format!("kubepods/besteffort/pod{UID}/{SANDBOX}"),
        format!("kubepods/besteffort/pod{UID}/{APP}"),
        format!("kubepods/pod{OTHER_UID}/{HELPER}"),
        "kubepods/burstable".into(),
    ]);
    let p = pod(UID, &[&format!("containerd://{APP}")]);
    assert_eq!(
        find(t.path(), &p),
        vec![t.path().join(format!("kubepods/besteffort/pod{UID}"))]
    );
    assert_eq!(
        find(t.path(), &pod(OTHER_UID, &[])),
        vec![t.path().join(format!("kubepods/pod{OTHER_UID}"))]
    );
}

#[test]
fn cri_o_with_its_conmon_sibling() {
    let u = escaped(UID);
    let slice = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice");
    let t = tree(&[
        format!("{slice}/crio-{SANDBOX}.scope"),
        format!("{slice}/crio-conmon-{APP}.scope"),
        format!("{slice}/crio-{APP}.scope"),
        "system.slice/crio.service".into(),
    ]);
    let p = pod(UID, &[&format!("cri-o://{APP}")]);
    assert_eq!(find(t.path(), &p), vec![t.path().join(&slice)]);

    // Without a pod-level cgroup the container's own is used, never conmon's.
    let t = tree(&[
        format!("system.slice/crio-conmon-{APP}.scope"),
        format!("system.slice/crio-{APP}.scope"),
        format!("system.slice/crio-conmon-{SANDBOX}.scope"),
    ]);
    assert_eq!(
        find(t.path(), &p),
        vec![t.path().join(format!("system.slice/crio-{APP}.scope"))]
    );
    // conmon's cgroup alone is not the container.
    let t = tree(&[format!("system.slice/crio-conmon-{APP}.scope")]);
    assert!(find(t.path(), &p).is_empty());
}

#[test]
fn cri_dockerd() {
    let u = escaped(UID);
    let slice = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice");
    let t = tree(&[
        format!("{slice}/docker-{SANDBOX}.scope"),
        format!("{slice}/docker-{APP}.scope"),
        "system.slice/docker.service".into(),
        "system.slice/cri-docker.service".into(),
    ]);
    let p = pod(UID, &[&format!("docker://{APP}")]);
    assert_eq!(find(t.path(), &p), vec![t.path().join(&slice)]);
}

#[test]
fn kind_from_the_node_and_from_the_host() {
    let u = escaped(UID);
    let kubelet = format!(
        "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice"
    );
    let p = pod(UID, &[&format!("containerd://{APP}")]);
    // The kind node's cgroup namespace root (what a DaemonSet in kind sees).
    let t = tree(&[
        format!("{kubelet}/cri-containerd-{SANDBOX}.scope"),
        format!("{kubelet}/cri-containerd-{APP}.scope"),
        "system.slice/containerd.service".into(),
    ]);
    assert_eq!(find(t.path(), &p), vec![t.path().join(&kubelet)]);

    // The host's root: the kind node is a docker container in system.slice.
    let node = "system.slice/docker-9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f.scope";
    let t = tree(&[
        format!("{node}/{kubelet}/cri-containerd-{SANDBOX}.scope"),
        format!("{node}/{kubelet}/cri-containerd-{APP}.scope"),
        format!("{node}/system.slice/containerd.service"),
    ]);
    assert_eq!(find(t.path(), &p), vec![t.path().join(node).join(&kubelet)]);
}

#[test]
fn k3s_and_rke2() {
    let t = tree(&[
        format!("kubepods/burstable/pod{UID}/{SANDBOX}"),
        format!("kubepods/burstable/pod{UID}/{APP}"),
        "system.slice/k3s.service".into(),
        "system.slice/rke2-server.service".into(),
    ]);
    let p = pod(UID, &[&format!("containerd://{APP}")]);
    assert_eq!(
        find(t.path(), &p),
        vec![t.path().join(format!("kubepods/burstable/pod{UID}"))]
    );
}

#[test]
fn without_cgroups_per_qos_a_pod_is_found_by_its_containers() {
    let running = [format!("containerd://{APP}"), format!("containerd://{HELPER}")];
    let running: Vec<&str> = running.iter().map(String::as_str).collect();
    let p = pod(UID, &running);
    // cgroupfs driver: each container right below the root.
    let t = tree(&[SANDBOX.into(), APP.into(), HELPER.into(), FINISHED.into()]);
    let mut found = find(t.path(), &p);
    found.sort();
    assert_eq!(found, vec![t.path().join(APP), t.path().join(HELPER)]);
    // systemd driver.
    let t = tree(&[
        format!("system.slice/cri-containerd-{SANDBOX}.scope"),
        format!("system.slice/cri-containerd-{APP}.scope"),
        format!("system.slice/cri-containerd-{HELPER}.scope"),
    ]);
    let mut found = find(t.path(), &p);
    found.sort();
    assert_eq!(
        found,
        vec![
            t.path().join(format!("system.slice/cri-containerd-{APP}.scope")),
            t.path().join(format!("system.slice/cri-containerd-{HELPER}.scope")),
        ]
    );
    // Init and ephemeral containers count while they run.
    let mut p = pod(UID, &[]);
    let st = p.status.as_mut().expect("status");
    let mut running = st.init_container_statuses.clone().expect("init");
    running[0].container_id = Some(format!("containerd://{APP}"));
    running[0].state = serde_json::from_value(json!({ "running": {} })).expect("state");
    st.init_container_statuses = Some(running.clone());
    running[0].container_id = Some(format!("containerd://{HELPER}"));
    st.ephemeral_container_statuses = Some(running);
    let mut found = find(t.path(), &p);
    found.sort();
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn a_static_pod_is_found_by_the_kubelet_s_uid() {
    // The mirror pod in the API has a UID of its own; the cgroup is named
    // after the static pod's (the config.mirror annotation).
    let kubelet_uid = "6b7e1f0c2d3a4b5c6d7e8f9a0b1c2d3e";
    let t = tree(&[format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{kubelet_uid}.slice"
    )]);
    let mut p = pod(UID, &[]);
    p.metadata.annotations = Some([("kubernetes.io/config.mirror".to_owned(), kubelet_uid.to_owned())].into());
    assert_eq!(find(t.path(), &p).len(), 1);
}

#[test]
fn uids_and_ids_that_could_escape_the_root_are_refused() {
    let t = tree(&[
        "pod..".into(),
        "kubepods/pod../etc".into(),
        format!("kubepods/pod{UID}"),
    ]);
    for bad in ["..", "../../etc", "../kubepods", ""] {
        let p = pod(bad, &["containerd://../../etc", "containerd://.."]);
        let keys = PodKeys::of(&p);
        assert!(keys.uids.is_empty() && keys.container_ids.is_empty(), "{bad}: {keys:?}");
        assert!(find(t.path(), &p).is_empty(), "{bad}");
        // Looked up directly, they match nothing either.
        let keys = PodKeys {
            uids: vec![bad.to_owned()],
            container_ids: vec![bad.to_owned()],
        };
        assert!(finder(t.path()).find(&keys).is_empty(), "{bad}");
    }
}

#[test]
fn the_walk_is_bounded_in_depth_and_does_not_follow_links() {
    let deep = "a/b/c/d/e/f/g/h/i";
    let t = tree(&[format!("{deep}/pod{UID}"), format!("a/pod{OTHER_UID}")]);
    let p = pod(UID, &[]);
    // The pod is 10 levels down.
    assert_eq!(
        CgroupFinder::new(t.path(), 10, Duration::ZERO)
            .find(&PodKeys::of(&p))
            .len(),
        1
    );
    assert!(CgroupFinder::new(t.path(), 9, Duration::ZERO)
        .find(&PodKeys::of(&p))
        .is_empty());

    // A link to a tree with the pod in it is not followed.
    let elsewhere = tree(&[format!("kubepods/pod{UID}")]);
    let root = tree(&[]);
    std::os::unix::fs::symlink(elsewhere.path().join("kubepods"), root.path().join("kubepods")).expect("symlink");
    assert!(find(root.path(), &p).is_empty());
}

#[test]
fn the_index_is_kept_and_walked_again_on_a_miss_at_most_once_per_interval() {
    let t = tree(&[format!("kubepods/besteffort/pod{UID}")]);
    let found = pod(UID, &[]);
    let later = pod(OTHER_UID, &[]);
    let mut slow = CgroupFinder::new(t.path(), DEFAULT_MAX_DEPTH, Duration::from_secs(3600));
    assert_eq!(slow.find(&PodKeys::of(&found)).len(), 1);
    assert_eq!(slow.scans(), 1, "the first look-up walks");
    for _ in 0..100 {
        assert_eq!(slow.find(&PodKeys::of(&found)).len(), 1);
    }
    assert_eq!(slow.scans(), 1, "hits do not walk");
    // A miss within the interval does not walk again...
    let dir = t.path().join(format!("kubepods/besteffort/pod{OTHER_UID}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    assert!(slow.find(&PodKeys::of(&later)).is_empty());
    assert_eq!(slow.scans(), 1);

    // ... and once the interval has passed, it does.
    std::fs::remove_dir(&dir).expect("rmdir");
    let mut quick = CgroupFinder::new(t.path(), DEFAULT_MAX_DEPTH, Duration::from_millis(200));
    assert_eq!(quick.find(&PodKeys::of(&found)).len(), 1);
    for _ in 0..50 {
        assert!(quick.find(&PodKeys::of(&later)).is_empty());
    }
    assert_eq!(quick.scans(), 1, "misses within 200 ms share one walk");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(quick.find(&PodKeys::of(&later)), vec![dir.clone()]);
    assert_eq!(quick.scans(), 2);

    // A directory that went away is not returned from the index.
    std::fs::remove_dir(&dir).expect("rmdir");
    assert!(quick.find(&PodKeys::of(&later)).is_empty());
}

#[test]
fn a_missing_root_finds_nothing_until_it_exists() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("cgroupv2");
    let p = pod(UID, &[]);
    let mut f = finder(&root);
    assert!(f.find(&PodKeys::of(&p)).is_empty());
    std::fs::create_dir_all(root.join(format!("kubepods/pod{UID}"))).expect("mkdir");
    assert_eq!(f.find(&PodKeys::of(&p)).len(), 1);
}

#[test]
fn directories_vanishing_during_the_walk_are_tolerated() {
    let t = tree(&[format!("kubepods/besteffort/pod{UID}")]);
    let churn_root = t.path().join("kubepods/burstable");
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                let d = churn_root.join(format!("pod{:08x}-0000-0000-0000-000000000000/{APP}", n % 16));
                let _ = std::fs::create_dir_all(&d);
                let _ = std::fs::remove_dir(&d);
                let _ = std::fs::remove_dir(d.parent().expect("parent"));
                n += 1;
            }
        })
    };
    let p = pod(UID, &[]);
    let want = vec![t.path().join(format!("kubepods/besteffort/pod{UID}"))];
    for _ in 0..300 {
        assert_eq!(find(t.path(), &p), want);
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().expect("churn thread");
}

#[test]
fn what_was_looked_for_is_described() {
    let p = pod(UID, &[&format!("containerd://{APP}")]);
    let d = PodKeys::of(&p).describe();
    assert!(d.contains(&format!("`pod{UID}`")), "{d}");
    assert!(d.contains(&format!("`*-pod{}.slice`", escaped(UID))), "{d}");
    assert!(d.contains(&APP[..12]), "{d}");
    assert!(
        !d.contains(&FINISHED[..12]),
        "a finished container is not looked for: {d}"
    );
}
