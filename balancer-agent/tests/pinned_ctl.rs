//! Pinned connections (enrolled pods' connections that bypass the agent)
//! seen through the admin API, `balancerctl` and `/metrics`, wired as the
//! agent wires them: Kubernetes mode's model (each enrolled pod with its
//! `balancer.io/reconnect-pinned` choice) and the sweeps' tally. The sweeps
//! themselves need the kernel (tests/tests/pinned_agent.rs runs them); here
//! their reports are given.

mod k8s_fake;
mod support_ctl;

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use balancer_agent::{
    admin::{self, api, AdminOptions, AdminServer, AdminState},
    k8s::{self, K8sOptions},
    model::Model,
    pinned::{
        diag::Family,
        netns::NetnsError,
        tally::{SweptPod, Tally},
        Action, PinnedConn, PinnedError, PodReport,
    },
};
use balancer_testing::metrics::first as metric;
use k8s_fake::FakeApi;
use serde_json::{json, Value};
use support_ctl::{cell, ctl, table};
use tokio::{sync::watch, time::timeout};

const NODE: &str = "node-a";
const CLIENT_UID: &str = "7a1d2c3b-0000-4000-8000-00000000000a";
const BATCH_UID: &str = "7a1d2c3b-0000-4000-8000-00000000000b";
const JOB_UID: &str = "7a1d2c3b-0000-4000-8000-00000000000c";

fn pod(namespace: &str, name: &str, uid: &str, ip: &str, annotations: Value) -> Value {
    let mut a = json!({ "balancer.io/inject": "enabled" });
    a.as_object_mut()
        .expect("object")
        .extend(annotations.as_object().expect("object").clone());
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "uid": uid, "annotations": a },
        "spec": { "nodeName": NODE, "containers": [{ "name": "c", "image": "x" }] },
        "status": { "phase": "Running", "qosClass": "BestEffort", "podIP": ip, "podIPs": [{ "ip": ip }] }
    })
}

fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        uid.replace('-', "_")
    ))
}

fn conn(action: Action) -> PinnedConn {
    PinnedConn {
        local: "10.244.1.5:40000".parse().expect("addr"),
        vip: "10.96.0.10:8000".parse().expect("addr"),
        family: Family::V4,
        cookie: 1,
        action,
    }
}

fn report(model: &Model, uid: &str, actions: &[Action], error: Option<PinnedError>) -> PodReport<SweptPod> {
    let e = model
        .enrolled
        .iter()
        .find(|e| e.cgroup.to_string_lossy().contains(&uid.replace('-', "_")))
        .expect("enrolled");
    PodReport {
        key: SweptPod {
            cgroup: e.cgroup.clone(),
            namespace: e.pod.as_ref().map(|p| p.namespace.clone()),
        },
        conns: actions.iter().map(|a| conn(*a)).collect(),
        error,
    }
}

struct Shown {
    table: String,
    json: Vec<api::Pod>,
    status: String,
    metrics: String,
}

async fn show(addr: SocketAddr) -> Shown {
    tokio::task::spawn_blocking(move || {
        let metrics = balancer_testing::http::get(addr, "/metrics").expect("metrics");
        Shown {
            table: ctl(addr, &["pod", "show"]),
            json: serde_json::from_str(&ctl(addr, &["-j", "pod", "show"])).expect("pods JSON"),
            status: ctl(addr, &["status"]),
            metrics: metrics.body,
        }
    })
    .await
    .expect("balancerctl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_show_counts_pinned_and_closed_connections_per_pod() {
    let fake = FakeApi::default();
    fake.apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "demo" } }));
    fake.apply(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "jobs",
        "labels": { "balancer.io/reconnect-pinned": "enabled" } } }),
    );
    fake.apply(pod(
        "demo",
        "client",
        CLIENT_UID,
        "10.244.1.5",
        json!({ "balancer.io/reconnect-pinned": "enabled" }),
    ));
    fake.apply(pod("demo", "batch", BATCH_UID, "10.244.1.6", json!({})));
    fake.apply(pod("jobs", "job", JOB_UID, "10.244.1.7", json!({})));
    let root = tempfile::tempdir().expect("tempdir");
    for uid in [CLIENT_UID, BATCH_UID, JOB_UID] {
        std::fs::create_dir_all(pod_dir(root.path(), uid)).expect("mkdir");
    }

    let mut opts = K8sOptions::new(NODE, root.path());
    opts.resync = Duration::from_millis(200);
    let (tx, mut models) = watch::channel(Arc::new(Model::default()));
    let (status_tx, status) = watch::channel(k8s::Status::default());
    let task = tokio::spawn(k8s::run(fake.client(), opts, tx, status_tx));
    timeout(Duration::from_secs(10), models.wait_for(|m| m.enrolled.len() == 3))
        .await
        .expect("three pods enrolled within 10 s")
        .expect("run() is alive");
    let model = Arc::clone(&models.borrow());

    let tally = Arc::new(Tally::new(Duration::from_secs(30)));
    let mut state = AdminState::new(admin::views::fixed_services(Vec::new()));
    state.pods = admin::views::model_pods(models.clone());
    state.source = admin::views::kubernetes_source(status.clone());
    state.pinned = Some(Arc::clone(&tally));
    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"), &AdminOptions::default())
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let served = tokio::spawn(server.run(state));

    // Before the first sweep nothing is known.
    let before = show(addr).await;
    let rows = table(&before.table);
    assert_eq!(rows.len(), 3, "{}", before.table);
    assert!(
        rows.iter()
            .all(|r| cell(r, "PINNED") == "-" && cell(r, "CLOSED") == "-"),
        "{}",
        before.table
    );
    assert_eq!(metric(&before.metrics, "balancer_pinned_sweeps_total", &[]), Some(0.0));

    // The first sweep: the client (opted in) had three, two closed and one
    // left to the rate limit; the batch pod (not opted in) keeps two; the
    // job's namespace opted in but its process could not be looked at.
    let denied = PinnedError::Netns(NetnsError::Open {
        path: PathBuf::from("/hostproc/4242/ns/net"),
        source: io::Error::from_raw_os_error(libc::EACCES),
    });
    tally.record(
        &[
            report(
                &model,
                CLIENT_UID,
                &[Action::Closed, Action::Closed, Action::Deferred],
                None,
            ),
            report(&model, BATCH_UID, &[Action::Kept, Action::Kept], None),
            report(&model, JOB_UID, &[], Some(denied)),
        ],
        Duration::from_millis(120),
    );
    let first = show(addr).await;
    let rows = table(&first.table);
    let shown: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (cell(r, "POD"), cell(r, "PINNED"), cell(r, "CLOSED")))
        .collect();
    let mut shown = shown;
    shown.sort();
    assert_eq!(
        shown,
        [
            ("demo/batch", "2", "off"),
            ("demo/client", "1", "2"),
            ("jobs/job", "?", "0"),
        ],
        "{}",
        first.table
    );
    assert!(
        first.table.contains("jobs/job: sweep failed:") && first.table.contains("CAP_SYS_PTRACE"),
        "{}",
        first.table
    );
    let client = first
        .json
        .iter()
        .find(|p| p.pod.as_deref() == Some("demo/client"))
        .expect("client");
    assert_eq!(
        (client.reconnect_pinned, client.pinned, client.pinned_closed),
        (true, Some(1), 2)
    );
    let batch = first
        .json
        .iter()
        .find(|p| p.pod.as_deref() == Some("demo/batch"))
        .expect("batch");
    assert_eq!(
        (batch.reconnect_pinned, batch.pinned, batch.pinned_closed),
        (false, Some(2), 0)
    );
    let job = first
        .json
        .iter()
        .find(|p| p.pod.as_deref() == Some("jobs/job"))
        .expect("job");
    assert!(job.reconnect_pinned, "opted in by its namespace's label");
    assert!(job.pinned.is_none() && job.pinned_error.is_some(), "{job:?}");

    let m = &first.metrics;
    assert_eq!(
        metric(m, "balancer_pinned_connections", &[("namespace", "demo")]),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(m, "balancer_pinned_connections", &[("namespace", "jobs")]),
        Some(0.0)
    );
    assert_eq!(metric(m, "balancer_pinned_connections_closed_total", &[]), Some(2.0));
    assert_eq!(metric(m, "balancer_pinned_connections_deferred_total", &[]), Some(1.0));
    assert_eq!(
        metric(m, "balancer_pinned_sweep_errors_total", &[("reason", "permission")]),
        Some(1.0)
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("balancer_pinned") && l.contains("pod=")),
        "no per-pod series: {m}"
    );
    assert!(
        first
            .status
            .contains("Pinned:     3 connections bypass the agent, 2 closed"),
        "{}",
        first.status
    );

    // The next sweep closes the deferred one; the closes add up.
    tally.record(
        &[
            report(&model, CLIENT_UID, &[Action::Closed], None),
            report(&model, BATCH_UID, &[Action::Kept, Action::Kept], None),
            report(&model, JOB_UID, &[], None),
        ],
        Duration::from_millis(100),
    );
    let second = show(addr).await;
    let client_row = table(&second.table)
        .into_iter()
        .find(|r| cell(r, "POD") == "demo/client")
        .expect("client row");
    assert_eq!((cell(&client_row, "PINNED"), cell(&client_row, "CLOSED")), ("0", "3"));
    assert_eq!(
        metric(&second.metrics, "balancer_pinned_connections", &[("namespace", "demo")]),
        Some(2.0)
    );
    assert_eq!(
        metric(&second.metrics, "balancer_pinned_connections_closed_total", &[]),
        Some(3.0)
    );
    assert_eq!(metric(&second.metrics, "balancer_pinned_sweeps_total", &[]), Some(2.0));

    served.abort();
    task.abort();
}
