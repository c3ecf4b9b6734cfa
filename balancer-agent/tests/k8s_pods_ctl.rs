//! Kubernetes mode seen through the admin API and `balancerctl`, wired the
//! way the agent wires it (the model's enrolled cgroups and the discovery
//! status): `pod show` names each enrolled pod and its IP, `conn show`
//! attributes a connection to the pod it came from, and pods whose cgroup
//! is missing are counted in `status` and `/metrics`.

mod k8s_fake;
mod support_ctl;

use std::{path::Path, sync::Arc, time::Duration};

use balancer_agent::{
    admin::{self, api, AdminOptions, AdminServer, AdminState, ConnMeta},
    k8s::{self, K8sOptions},
    model::Model,
};
use k8s_fake::FakeApi;
use serde_json::{json, Value};
use support_ctl::{cell, ctl, table};
use tokio::{sync::watch, time::timeout};

const NODE: &str = "node-a";
const CLIENT_UID: &str = "6f1d2c3b-0000-4000-8000-00000000000a";
const BATCH_UID: &str = "6f1d2c3b-0000-4000-8000-00000000000b";
const LOST_UID: &str = "6f1d2c3b-0000-4000-8000-00000000000c";
const C1: &str = "aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11";
const C2: &str = "bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22";

fn pod(name: &str, uid: &str, ip: &str, containers: &[&str]) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({ "name": format!("c{i}"), "containerID": format!("containerd://{id}"),
                    "image": "x", "imageID": "x", "ready": true, "restartCount": 0,
                    "state": { "running": {} } })
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "demo", "uid": uid,
                      "annotations": { "balancer.io/inject": "enabled" } },
        "spec": { "nodeName": NODE, "containers": [{ "name": "c", "image": "x" }] },
        "status": { "phase": "Running", "qosClass": "BestEffort", "podIP": ip,
                    "podIPs": [{ "ip": ip }], "containerStatuses": statuses }
    })
}

/// kind's layout for the client (a pod-level cgroup); the batch pod's
/// node runs without `--cgroups-per-qos`, so it only has container cgroups.
fn cgroups(root: &Path) {
    let slice = format!(
        "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
         kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{C1}.scope",
        CLIENT_UID.replace('-', "_")
    );
    for d in [slice, format!("system.slice/cri-containerd-{C2}.scope")] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    balancer_testing::metrics::first(text, name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_shown_by_name_and_ip_and_connections_attributed_to_them() {
    let fake = FakeApi::default();
    fake.apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "demo" } }));
    fake.apply(pod("client", CLIENT_UID, "10.244.1.5", &[C1]));
    fake.apply(pod("batch", BATCH_UID, "10.244.1.6", &[C2]));
    fake.apply(pod("lost", LOST_UID, "10.244.1.7", &[]));
    let root = tempfile::tempdir().expect("tempdir");
    cgroups(root.path());

    let mut opts = K8sOptions::new(NODE, root.path());
    opts.cgroup_missing_after = Duration::from_millis(200);
    opts.cgroup_rescan = Duration::from_millis(50);
    opts.resync = Duration::from_millis(200);
    let (tx, mut models) = watch::channel(Arc::new(Model::default()));
    let (status_tx, mut status) = watch::channel(k8s::Status::default());
    let task = tokio::spawn(k8s::run(fake.client(), opts, tx, status_tx));

    let mut state = AdminState::new(admin::views::fixed_services(Vec::new()));
    state.pods = admin::views::model_pods(models.clone());
    state.source = admin::views::kubernetes_source(status.clone());
    let _conn = state.conns.register(ConnMeta {
        peer: "10.244.1.5:40000".parse().expect("peer"),
        original_dst: Some("10.96.0.10:8000".parse().expect("dst")),
        service: Some("demo/greeter".into()),
        pod: None,
    });
    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"), &AdminOptions::default())
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let served = tokio::spawn(server.run(state));

    timeout(Duration::from_secs(10), models.wait_for(|m| m.enrolled.len() == 2))
        .await
        .expect("both pods enrolled within 10 s")
        .expect("run() is alive");
    timeout(Duration::from_secs(10), status.wait_for(|s| s.pods_cgroup_missing == 1))
        .await
        .expect("the lost pod counted within 10 s")
        .expect("run() is alive");

    let (pods_table, pods_json, conns, status_text, metrics) = tokio::task::spawn_blocking(move || {
        let metrics = balancer_testing::http::get(addr, "/metrics").expect("metrics");
        (
            ctl(addr, &["pod", "show"]),
            ctl(addr, &["-j", "pod", "show"]),
            ctl(addr, &["conn", "show"]),
            ctl(addr, &["status"]),
            metrics.body,
        )
    })
    .await
    .expect("balancerctl runs");

    let rows = table(&pods_table);
    let shown: Vec<(&str, &str)> = rows.iter().map(|r| (cell(r, "POD"), cell(r, "IP"))).collect();
    assert_eq!(
        shown,
        [("demo/client", "10.244.1.5"), ("demo/batch", "10.244.1.6")],
        "{pods_table}"
    );
    let pods: Vec<api::Pod> = serde_json::from_str(&pods_json).expect("pods JSON");
    let client = pods
        .iter()
        .find(|p| p.pod.as_deref() == Some("demo/client"))
        .expect("client");
    assert!(
        client
            .cgroup
            .ends_with(&format!("-pod{}.slice", CLIENT_UID.replace('-', "_"))),
        "the client's pod-level cgroup: {}",
        client.cgroup
    );
    let batch = pods
        .iter()
        .find(|p| p.pod.as_deref() == Some("demo/batch"))
        .expect("batch");
    assert!(
        batch
            .cgroup
            .ends_with(&format!("system.slice/cri-containerd-{C2}.scope")),
        "the batch pod's container cgroup: {}",
        batch.cgroup
    );

    let conn_rows = table(&conns);
    assert_eq!(conn_rows.len(), 1, "{conns}");
    assert_eq!(cell(&conn_rows[0], "PEER"), "10.244.1.5:40000");
    assert_eq!(cell(&conn_rows[0], "POD"), "demo/client", "{conns}");

    assert!(status_text.contains("No cgroup:  1 opted-in pods"), "{status_text}");
    assert_eq!(metric(&metrics, "balancer_pods_cgroup_missing"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "balancer_enrolled_pods"), Some(2.0));

    served.abort();
    task.abort();
}
