//! Kubernetes mode end to end against a faked API server: the first sync
//! and readiness, adds, updates and deletes, relists, an API outage, missing
//! RBAC, a missing GRPCRoute CRD, and invalid GRPCRoutes left out (their
//! status and Events come from the elected agent: see k8s_status.rs).

mod k8s_fake;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use balancer_agent::{
    k8s::{self, K8sError, K8sOptions},
    model::{EndpointState, Model},
};
use balancer_testing::k8s as k8s_objects;
use k8s_fake::{run::K8sRun, FakeApi};
use serde_json::{json, Value};
use tokio::time::timeout;

const NODE: &str = "node-a";
const POD_UID: &str = "6f1d2c3b-0000-4000-8000-00000000000a";

fn service(name: &str, ip: &str) -> Value {
    k8s_objects::service("demo", name, ip, 8000, 50051)
}

/// `eps`: (ip, ready, serving, terminating).
fn slice(svc: &str, eps: &[(&str, bool, bool, bool)]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, r, s, t)| {
            json!({ "addresses": [ip],
            "conditions": { "ready": r, "serving": s, "terminating": t } })
        })
        .collect();
    k8s_objects::slice("demo", &format!("{svc}-abcde"), svc, 50051, endpoints)
}

fn pod(name: &str, uid: &str, node: &str, inject: bool) -> Value {
    let annotations = if inject {
        json!({ "balancer.io/inject": "enabled" })
    } else {
        json!({})
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "demo", "uid": uid, "annotations": annotations },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "client" }] },
        "status": { "phase": "Running", "qosClass": "BestEffort" }
    })
}

fn namespace() -> Value {
    k8s_objects::namespace("demo")
}

fn grpcroute(name: &str, backends: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": { "name": name, "namespace": "demo" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "greeter", "port": 8000 }],
            "rules": [{ "backendRefs": backends }]
        }
    })
}

/// The greeter with two versions and an opted-in client pod on this node,
/// plus an opted-in pod on another node.
fn seed(fake: &FakeApi) {
    fake.apply(namespace());
    fake.apply(service("greeter", "10.96.0.10"));
    fake.apply(service("greeter-v1", "10.96.0.11"));
    fake.apply(service("greeter-v2", "10.96.0.12"));
    fake.apply(slice(
        "greeter",
        &[("10.1.0.1", true, true, false), ("10.1.0.2", true, true, false)],
    ));
    fake.apply(slice("greeter-v1", &[("10.1.0.1", true, true, false)]));
    fake.apply(slice("greeter-v2", &[("10.1.0.2", true, true, false)]));
    fake.apply(pod("client", POD_UID, NODE, true));
    fake.apply(pod("elsewhere", "6f1d2c3b-0000-4000-8000-00000000000b", "node-b", true));
}

/// The agent's Kubernetes mode on this test's node.
struct Agent;

impl Agent {
    fn start(fake: &FakeApi) -> K8sRun {
        Agent::start_with(fake, true, |_| {})
    }

    /// `with_cgroup`: whether the client pod's cgroup exists from the start.
    fn start_with(fake: &FakeApi, with_cgroup: bool, tune: impl FnOnce(&mut K8sOptions)) -> K8sRun {
        let prepare = |root: &Path| {
            if with_cgroup {
                std::fs::create_dir_all(pod_cgroup(root, POD_UID)).expect("mkdir");
            }
        };
        K8sRun::start(fake, NODE, prepare, tune)
    }
}

fn pod_cgroup(root: &Path, uid: &str) -> PathBuf {
    root.join("kubepods/besteffort").join(format!("pod{uid}"))
}

fn endpoints(m: &Model, svc: &str) -> Vec<(String, EndpointState)> {
    m.service(svc)
        .map(|s| s.endpoints.iter().map(|e| (e.address.to_string(), e.state)).collect())
        .unwrap_or_default()
}

const SHORT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn first_sync_publishes_the_model_then_turns_ready() {
    let fake = FakeApi::default();
    seed(&fake);
    fake.set_down(true);
    let mut agent = Agent::start(&fake);
    // Nothing listed yet: not ready, nothing published.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!agent.status.borrow().synced, "ready before the first sync");
    assert!(agent.models.borrow().services.is_empty());

    fake.set_down(false);
    agent.until_ready().await;
    let m = Arc::clone(&agent.models.borrow());
    m.validate().expect("valid model");
    assert_eq!(m.services.len(), 3);
    let greeter = m.service("demo/greeter").expect("greeter");
    assert_eq!(greeter.vips, vec!["10.96.0.10:8000".parse().expect("vip")]);
    assert_eq!(
        endpoints(&m, "demo/greeter"),
        vec![
            ("10.1.0.1:50051".into(), EndpointState::Ready),
            ("10.1.0.2:50051".into(), EndpointState::Ready)
        ]
    );
    // Only this node's opted-in pod is enrolled, by its cgroup.
    assert_eq!(m.enrolled_cgroups(), vec![pod_cgroup(agent.cgroups.path(), POD_UID)]);
    // Pods are watched on this node only.
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /api/v1/pods?") && r.contains("spec.nodeName%3Dnode-a")),
        "{reqs:#?}"
    );
}

#[tokio::test]
async fn adds_updates_and_deletes_are_published() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start(&fake);
    agent.until_ready().await;

    // Add: a new service with endpoints.
    fake.apply(service("echo", "10.96.0.30"));
    fake.apply(slice("echo", &[("10.1.0.9", true, true, false)]));
    agent
        .until("echo is added", SHORT, |m| endpoints(m, "demo/echo").len() == 1)
        .await;

    // Update: the endpoint starts terminating but still serves → drains.
    fake.apply(slice("echo", &[("10.1.0.9", false, true, true)]));
    agent
        .until("echo's endpoint drains", SHORT, |m| {
            endpoints(m, "demo/echo") == vec![("10.1.0.9:50051".to_owned(), EndpointState::Draining)]
        })
        .await;

    // ... and then stops serving → gone.
    fake.apply(slice("echo", &[("10.1.0.9", false, false, true)]));
    agent
        .until("echo has no endpoints", SHORT, |m| {
            m.service("demo/echo").is_some_and(|s| s.endpoints.is_empty())
        })
        .await;

    // Delete: the service leaves the model.
    fake.delete(service("echo", "10.96.0.30"));
    agent
        .until("echo is deleted", SHORT, |m| m.service("demo/echo").is_none())
        .await;

    // A pod that leaves is no longer enrolled.
    fake.delete(pod("client", POD_UID, NODE, true));
    agent
        .until("the client pod is unenrolled", SHORT, |m| m.enrolled.is_empty())
        .await;
    assert!(!agent.task.is_finished());
}

#[tokio::test]
async fn bursts_of_changes_are_published_together() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start(&fake);
    agent.until_ready().await;
    let mut rx = agent.models.clone();
    rx.mark_unchanged();
    let counter = tokio::spawn(async move {
        let mut n = 0u32;
        while timeout(Duration::from_secs(2), rx.changed())
            .await
            .is_ok_and(|r| r.is_ok())
        {
            n += 1;
        }
        n
    });
    for i in 1..=20u8 {
        let ips: Vec<String> = (1..=i).map(|j| format!("10.2.0.{j}")).collect();
        let eps: Vec<(&str, bool, bool, bool)> = ips.iter().map(|ip| (ip.as_str(), true, true, false)).collect();
        fake.apply(slice("greeter-v1", &eps));
    }
    agent
        .until("all 20 endpoints", SHORT, |m| {
            endpoints(m, "demo/greeter-v1").len() == 20
        })
        .await;
    let published = counter.await.expect("counter");
    assert!(
        (1..=3).contains(&published),
        "20 changes in a burst gave {published} models"
    );
}

#[tokio::test]
async fn a_relist_after_expiry_catches_what_the_watch_missed() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start(&fake);
    agent.until_ready().await;

    // Changes no watch event tells about...
    fake.delete_unseen(service("greeter-v2", "10.96.0.12"));
    fake.apply_unseen(slice("greeter-v1", &[("10.1.0.7", true, true, false)]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        agent.models.borrow().service("demo/greeter-v2").is_some(),
        "nothing told yet"
    );

    // ... are picked up by the relist that a 410 Gone forces.
    fake.expire();
    agent
        .until("the relisted state", Duration::from_secs(15), |m| {
            m.service("demo/greeter-v2").is_none()
                && endpoints(m, "demo/greeter-v1") == vec![("10.1.0.7:50051".to_owned(), EndpointState::Ready)]
        })
        .await;
}

#[tokio::test]
async fn an_api_outage_keeps_the_last_state_and_resumes() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start(&fake);
    agent.until_ready().await;
    let before = Arc::clone(&agent.models.borrow());

    fake.set_down(true);
    // Changes made while the agent cannot see them.
    fake.apply(slice(
        "greeter-v2",
        &[("10.1.0.2", true, true, false), ("10.1.0.3", true, true, false)],
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(**agent.models.borrow(), *before, "the last known state stays published");
    assert!(agent.status.borrow().synced, "still ready while serving the last state");
    assert!(!agent.task.is_finished(), "an outage is not fatal");

    fake.set_down(false);
    agent
        .until("the change made during the outage", Duration::from_secs(40), |m| {
            endpoints(m, "demo/greeter-v2").len() == 2
        })
        .await;
}

#[tokio::test]
async fn missing_rbac_is_one_clear_error_naming_verb_and_resource() {
    let fake = FakeApi::default();
    seed(&fake);
    fake.forbid("endpointslices");
    let mut agent = Agent::start(&fake);
    let res = timeout(Duration::from_secs(10), &mut agent.task)
        .await
        .expect("run() ends")
        .expect("no panic");
    let err = res.expect_err("forbidden is fatal at startup");
    assert!(
        matches!(
            err,
            K8sError::Forbidden {
                verb: "list",
                resource: "endpointslices.discovery.k8s.io",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("forbidden: the agent's service account may not list endpointslices.discovery.k8s.io"),
        "{msg}"
    );
    assert!(!agent.status.borrow().synced);
}

#[tokio::test]
async fn without_the_grpcroute_crd_the_agent_still_gets_ready() {
    let fake = FakeApi::default();
    seed(&fake);
    fake.not_installed("grpcroutes");
    let mut agent = Agent::start(&fake);
    agent.until_ready().await;
    assert_eq!(agent.models.borrow().services.len(), 3);
}

#[tokio::test]
async fn grpcroutes_are_applied_and_invalid_ones_left_out() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start(&fake);
    agent.until_ready().await;

    fake.apply(grpcroute(
        "split",
        json!([
            { "name": "greeter-v1", "port": 8000, "weight": 90 },
            { "name": "greeter-v2", "port": 8000, "weight": 10 }
        ]),
    ));
    let m = agent
        .until("the 90/10 route", SHORT, |m| {
            m.service("demo/greeter").is_some_and(|s| s.routes.len() == 1)
        })
        .await;
    let weights: Vec<u32> = m.service("demo/greeter").expect("greeter").routes[0]
        .backends
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(weights, vec![90, 10]);

    // Broken: a backend that does not exist. The route is dropped and the
    // agent keeps running.
    fake.apply(grpcroute(
        "split",
        json!([
            { "name": "greeter-v1", "port": 8000, "weight": 90 },
            { "name": "greeter-v3", "port": 8000, "weight": 10 }
        ]),
    ));
    agent
        .until("the broken route dropped", SHORT, |m| {
            m.service("demo/greeter").is_some_and(|s| s.routes.is_empty())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // An agent outside the route-status election (no Lease configured)
    // neither posts Events nor writes status: every agent would.
    assert!(fake.events().is_empty(), "{:#?}", fake.events());
    assert!(fake.writes().is_empty(), "{:#?}", fake.writes());

    // Fixed by creating the missing Service: applied again.
    fake.apply(service("greeter-v3", "10.96.0.13"));
    agent
        .until("the repaired route", SHORT, |m| {
            m.service("demo/greeter").is_some_and(|s| s.routes.len() == 1)
        })
        .await;
    assert!(!agent.task.is_finished());
}

#[tokio::test]
async fn a_pod_cgroup_that_appears_later_is_enrolled_at_resync() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start_with(&fake, false, |o| o.resync = Duration::from_millis(200));
    agent.until_ready().await;
    assert!(
        agent.models.borrow().enrolled.is_empty(),
        "no cgroup yet, nothing enrolled"
    );
    let dir = pod_cgroup(agent.cgroups.path(), POD_UID);
    std::fs::create_dir_all(&dir).expect("mkdir");
    agent
        .until("the pod enrolled", SHORT, |m| m.enrolled_cgroups() == vec![dir.clone()])
        .await;
}

#[tokio::test]
async fn rbac_lost_after_startup_keeps_the_last_state() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start(&fake);
    agent.until_ready().await;
    let before = Arc::clone(&agent.models.borrow());
    fake.forbid("services");
    fake.expire();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/services?"))
            .count()
            >= 2,
        "the services watcher relisted"
    );
    assert!(!agent.task.is_finished(), "not fatal once serving");
    assert_eq!(**agent.models.borrow(), *before);
    assert!(agent.status.borrow().synced);
}

/// The first Event with `reason` the agent posts, within 5 s.
async fn event(fake: &FakeApi, reason: &str) -> Value {
    timeout(SHORT, async {
        loop {
            if let Some(e) = fake.events().into_iter().find(|e| e["reason"] == reason) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {reason} Event within {SHORT:?}; events: {:#?}", fake.events()))
}

fn events_with(fake: &FakeApi, reason: &str) -> usize {
    fake.events().iter().filter(|e| e["reason"] == reason).count()
}

#[tokio::test]
async fn a_new_pod_is_enrolled_as_soon_as_its_cgroup_appears() {
    let fake = FakeApi::default();
    seed(&fake);
    // No resync in this test's time: only the agent's own quick look-again
    // can find the cgroup.
    let mut agent = Agent::start_with(&fake, false, |o| {
        o.resync = Duration::from_secs(600);
        o.cgroup_rescan = Duration::from_millis(100);
    });
    agent.until_ready().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(agent.models.borrow().enrolled.is_empty());
    let dir = pod_cgroup(agent.cgroups.path(), POD_UID);
    std::fs::create_dir_all(&dir).expect("mkdir");
    agent
        .until("the pod enrolled", Duration::from_secs(3), |m| {
            m.enrolled_cgroups() == vec![dir.clone()]
        })
        .await;
}

#[tokio::test]
async fn a_pod_whose_cgroup_stays_missing_gets_one_event_and_is_counted() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start_with(&fake, false, |o| {
        o.resync = Duration::from_millis(200);
        o.cgroup_rescan = Duration::from_millis(50);
        o.cgroup_missing_after = Duration::from_millis(500);
    });
    agent.until_ready().await;
    assert_eq!(agent.status.borrow().pods_cgroup_missing, 0, "within the threshold");

    let e = event(&fake, k8s::CGROUP_NOT_FOUND_REASON).await;
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["kind"], "Pod");
    assert_eq!(e["regarding"]["name"], "client");
    assert_eq!(e["regarding"]["uid"], POD_UID);
    let note = e["note"].as_str().unwrap_or_default();
    let root = agent.cgroups.path().display().to_string();
    assert!(note.contains(&root), "names the root searched: {note}");
    assert!(
        note.contains(&format!("pod{POD_UID}")),
        "names what was looked for: {note}"
    );
    timeout(SHORT, agent.status.wait_for(|s| s.pods_cgroup_missing == 1))
        .await
        .expect("counted")
        .expect("run() is alive");

    // Many recomputations later: still one Event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(events_with(&fake, k8s::CGROUP_NOT_FOUND_REASON), 1);

    // The cgroup appears: enrolled, no longer counted.
    let dir = pod_cgroup(agent.cgroups.path(), POD_UID);
    std::fs::create_dir_all(&dir).expect("mkdir");
    agent
        .until("the pod enrolled", SHORT, |m| m.enrolled_cgroups() == vec![dir.clone()])
        .await;
    timeout(SHORT, agent.status.wait_for(|s| s.pods_cgroup_missing == 0))
        .await
        .expect("no longer counted")
        .expect("run() is alive");
}

#[tokio::test]
async fn a_pod_in_a_service_mesh_is_not_enrolled_and_told_why_once() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut meshed = pod("client", POD_UID, NODE, true);
    meshed["metadata"]["annotations"]["sidecar.istio.io/status"] = json!("{\"containers\":[\"istio-proxy\"]}");
    fake.apply(meshed);
    let mut agent = Agent::start_with(&fake, true, |o| o.resync = Duration::from_millis(200));
    agent.until_ready().await;
    assert!(
        agent.models.borrow().enrolled.is_empty(),
        "its cgroup exists, but the pod is meshed"
    );
    let e = event(&fake, k8s::NOT_ENROLLED_REASON).await;
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["name"], "client");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(note.contains("Istio (sidecar)"), "{note}");
    assert!(note.contains("sidecar.istio.io/status"), "{note}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(events_with(&fake, k8s::NOT_ENROLLED_REASON), 1, "told once");
    assert_eq!(events_with(&fake, k8s::CGROUP_NOT_FOUND_REASON), 0);

    // Without the mesh's annotation the same pod is enrolled: the mesh
    // alone kept it out.
    fake.apply(pod("client", POD_UID, NODE, true));
    let dir = pod_cgroup(agent.cgroups.path(), POD_UID);
    agent
        .until("the pod enrolled", SHORT, |m| m.enrolled_cgroups() == vec![dir.clone()])
        .await;
}
