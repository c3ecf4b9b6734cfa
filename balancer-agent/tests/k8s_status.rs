//! GRPCRoute status from one agent, end to end against a faked API server:
//! the Lease holder writes `status.parents[]` (True for a good route, False
//! with the Gateway API reason for a refused one), leaves other controllers'
//! entries alone and never rewrites an unchanged status; the other agents
//! write nothing; a stopping leader hands over at once; and a missing Lease
//! or status permission costs the status, never the balancing.

mod k8s_fake;

use std::{
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use balancer_agent::{
    k8s::{
        self,
        lease::{LeaseOptions, DEFAULT_LEASE_NAME},
        route_status::CONTROLLER_NAME,
        K8sError, K8sOptions,
    },
    model::Model,
};
use balancer_testing::k8s as k8s_objects;
use k8s_fake::FakeApi;
use serde_json::{json, Value};
use tokio::{sync::watch, task::JoinHandle, time::sleep};

const NODE: &str = "node-a";
const NAMESPACE: &str = "balancer-system";

fn service(name: &str, ip: &str) -> Value {
    k8s_objects::service("demo", name, ip, 8000, 50051)
}

fn slice(svc: &str, ip: &str) -> Value {
    k8s_objects::slice(
        "demo",
        &format!("{svc}-abcde"),
        svc,
        50051,
        vec![k8s_objects::ready(ip)],
    )
}

fn parent() -> Value {
    json!({ "group": "", "kind": "Service", "name": "greeter", "port": 8000 })
}

fn gateway_parent() -> Value {
    json!({ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "my-gateway" })
}

fn route(name: &str, rules: Value, status: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": { "name": name, "namespace": "demo" },
        "spec": { "parentRefs": [parent(), gateway_parent()], "rules": rules },
        "status": status
    })
}

fn split(v1: u32, v2: u32) -> Value {
    json!([{ "backendRefs": [
        { "name": "greeter-v1", "port": 8000, "weight": v1 },
        { "name": "greeter-v2", "port": 8000, "weight": v2 }
    ] }])
}

/// Another controller's entry on the same route (the Gateway parent).
fn foreign_entry() -> Value {
    json!({
        "controllerName": "example.com/gateway-controller",
        "parentRef": gateway_parent(),
        "conditions": [{ "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                         "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z" }]
    })
}

fn seed(fake: &FakeApi) {
    fake.apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "demo" } }));
    fake.apply(service("greeter", "10.96.0.10"));
    fake.apply(service("greeter-v1", "10.96.0.11"));
    fake.apply(service("greeter-v2", "10.96.0.12"));
    fake.apply(slice("greeter-v1", "10.1.0.1"));
    fake.apply(slice("greeter-v2", "10.1.0.2"));
}

struct Agent {
    name: String,
    models: watch::Receiver<Arc<Model>>,
    ready: watch::Receiver<k8s::Status>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), K8sError>>,
    _cgroups: tempfile::TempDir,
}

/// An agent taking part in the election: a 2 s Lease, read every 200 ms;
/// recomputed every 100 ms even without changes.
fn start(fake: &FakeApi, name: &str) -> Agent {
    let cgroups = tempfile::tempdir().expect("tempdir");
    let mut opts = K8sOptions::new(NODE, cgroups.path());
    opts.resync = Duration::from_millis(100);
    opts.instance = Some(name.to_owned());
    let mut lease = LeaseOptions::new(NAMESPACE, name);
    lease.duration = Duration::from_secs(2);
    lease.renew_every = Duration::from_millis(200);
    opts.lease = Some(lease);
    let (tx, models) = watch::channel(Arc::new(Model::default()));
    let (ready_tx, ready) = watch::channel(k8s::Status::default());
    let (stop, mut stopping) = watch::channel(false);
    let task = tokio::spawn(k8s::run_until(
        fake.client_named(name),
        opts,
        tx,
        ready_tx,
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        },
    ));
    Agent {
        name: name.to_owned(),
        models,
        ready,
        stop,
        task,
        _cgroups: cgroups,
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Agent {
    async fn until_ready(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.ready.wait_for(|r| r.synced))
            .await
            .expect("ready within 10 s")
            .expect("run_until() is alive");
    }

    fn routes_on_greeter(&self) -> usize {
        self.models
            .borrow()
            .service("demo/greeter")
            .map_or(0, |s| s.routes.len())
    }
}

/// Polls `pred` every 20 ms for at most `wait`.
async fn until(what: &str, wait: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !pred() {
        assert!(tokio::time::Instant::now() < deadline, "not within {wait:?}: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

const SHORT: Duration = Duration::from_secs(5);

fn parents(fake: &FakeApi, route: &str) -> Vec<Value> {
    let obj = fake
        .object("grpcroutes", &format!("demo/{route}"))
        .expect("route exists");
    obj["status"]["parents"].as_array().cloned().unwrap_or_default()
}

fn ours(fake: &FakeApi, route: &str) -> Option<Value> {
    parents(fake, route)
        .into_iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME)
}

/// `(status, reason)` of condition `ty` in our entry.
fn condition(entry: &Value, ty: &str) -> (String, String) {
    let c = entry["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .unwrap_or_else(|| panic!("no {ty} condition in {entry}"));
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn holder(fake: &FakeApi) -> Option<String> {
    let lease = fake.object("leases", &format!("{NAMESPACE}/{DEFAULT_LEASE_NAME}"))?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

#[tokio::test]
async fn the_leader_writes_route_status_once_and_leaves_other_entries_alone() {
    let fake = FakeApi::default();
    seed(&fake);
    fake.apply(route("split", split(90, 10), json!({ "parents": [foreign_entry()] })));
    let mut agent = start(&fake, "agent-a");
    agent.until_ready().await;
    until("our status entry", SHORT, || ours(&fake, "split").is_some()).await;

    let all = parents(&fake, "split");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], foreign_entry(), "the other controller's entry is untouched");
    let entry = ours(&fake, "split").expect("ours");
    assert_eq!(entry["parentRef"], parent());
    assert_eq!(condition(&entry, "Accepted"), pair("True", "Accepted"));
    assert_eq!(condition(&entry, "ResolvedRefs"), pair("True", "ResolvedRefs"));
    assert_eq!(entry["conditions"][0]["observedGeneration"], 1);
    let since = entry["conditions"][0]["lastTransitionTime"].clone();

    // One merge patch of the status subresource, conditional on the
    // resourceVersion it was computed from.
    let writes = fake.status_writes();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    let w = &writes[0];
    assert_eq!(
        (w.client.as_str(), w.method.as_str(), w.path.as_str()),
        (
            "agent-a",
            "PATCH",
            "/apis/gateway.networking.k8s.io/v1/namespaces/demo/grpcroutes/split/status"
        )
    );
    assert!(w.body["metadata"]["resourceVersion"].is_string(), "{}", w.body);

    // Recomputations (every 100 ms) and unrelated changes write nothing.
    fake.apply(slice("greeter-v1", "10.1.0.9"));
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.status_writes().len(), 1, "an unchanged status was written again");

    // A new generation of the route: one write, the transition time kept.
    fake.apply(route("split", split(50, 50), Value::Null));
    until("observedGeneration 2", SHORT, || {
        ours(&fake, "split").is_some_and(|e| e["conditions"][0]["observedGeneration"] == 2)
    })
    .await;
    sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.status_writes().len(), 2);
    let entry = ours(&fake, "split").expect("ours");
    assert_eq!(entry["conditions"][0]["lastTransitionTime"], since);
    assert_eq!(parents(&fake, "split")[0], foreign_entry());
    assert!(!agent.task.is_finished());
}

#[tokio::test]
async fn refused_routes_get_false_conditions_and_one_event_from_the_leader() {
    let fake = FakeApi::default();
    seed(&fake);
    fake.apply(route(
        "missing-backend",
        json!([{ "backendRefs": [
            { "name": "greeter-v1", "port": 8000, "weight": 90 },
            { "name": "greeter-v3", "port": 8000, "weight": 10 }
        ] }]),
        Value::Null,
    ));
    fake.apply(route(
        "filtered",
        json!([{
            "filters": [{ "type": "RequestHeaderModifier",
                          "requestHeaderModifier": { "set": [{ "name": "a", "value": "b" }] } }],
            "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
        }]),
        Value::Null,
    ));
    let mut a = start(&fake, "agent-a");
    let mut b = start(&fake, "agent-b");
    a.until_ready().await;
    b.until_ready().await;
    until("both routes have status", SHORT, || {
        ours(&fake, "missing-backend").is_some() && ours(&fake, "filtered").is_some()
    })
    .await;

    let e = ours(&fake, "missing-backend").expect("ours");
    assert_eq!(condition(&e, "Accepted"), pair("False", "UnsupportedValue"));
    assert_eq!(condition(&e, "ResolvedRefs"), pair("False", "BackendNotFound"));
    let message = e["conditions"][1]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("backend Service `demo/greeter-v3` not found"),
        "{message}"
    );
    let e = ours(&fake, "filtered").expect("ours");
    assert_eq!(condition(&e, "Accepted"), pair("False", "IncompatibleFilters"));
    assert_eq!(condition(&e, "ResolvedRefs"), pair("True", "ResolvedRefs"));
    // Neither is applied.
    assert_eq!(a.routes_on_greeter(), 0);

    // One Warning Event per refused route, from the leader only.
    let leader = holder(&fake).expect("a leader");
    until("two Events", SHORT, || fake.events().len() >= 2).await;
    sleep(Duration::from_millis(500)).await;
    let events = fake.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    for e in &events {
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["reason"], k8s::INVALID_ROUTE_REASON);
        assert_eq!(e["reportingInstance"], leader.as_str());
        assert_eq!(e["regarding"]["kind"], "GRPCRoute");
    }
    assert!(fake.status_writes().iter().all(|w| w.client == leader));

    // Repaired by creating the missing Service: True again, applied, and
    // no Event.
    fake.apply(service("greeter-v3", "10.96.0.13"));
    until("missing-backend accepted", SHORT, || {
        ours(&fake, "missing-backend").is_some_and(|e| condition(&e, "Accepted") == pair("True", "Accepted"))
    })
    .await;
    let e = ours(&fake, "missing-backend").expect("ours");
    assert_eq!(condition(&e, "ResolvedRefs"), pair("True", "ResolvedRefs"));
    until("the repaired route applied", SHORT, || a.routes_on_greeter() == 1).await;
    assert_eq!(fake.events().len(), 2);
}

#[tokio::test]
async fn only_the_leader_writes_and_a_stopping_leader_hands_over() {
    let fake = FakeApi::default();
    seed(&fake);
    fake.apply(route("split", split(90, 10), Value::Null));
    let mut a = start(&fake, "agent-a");
    let mut b = start(&fake, "agent-b");
    a.until_ready().await;
    b.until_ready().await;
    until("status written", SHORT, || ours(&fake, "split").is_some()).await;
    let leader_name = holder(&fake).expect("a leader");
    let (leader, other) = if leader_name == a.name { (a, b) } else { (b, a) };
    sleep(Duration::from_millis(500)).await;
    let writes = fake.status_writes();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].client, leader.name);
    assert!(
        fake.writes()
            .iter()
            .all(|w| w.client == leader.name || w.path.contains("/leases")),
        "the other agent wrote route status"
    );

    // The leader stops: it releases the Lease and the other takes over at
    // its next read (200 ms), not after the Lease expires.
    leader.stop.send_replace(true);
    let stopped = tokio::time::timeout(Duration::from_secs(3), async {
        let Agent { task, .. } = &mut { leader };
        task.await
    })
    .await
    .expect("run_until() returns once stopped")
    .expect("no panic");
    assert!(stopped.is_ok());
    until("the other agent leads", Duration::from_secs(1), || {
        holder(&fake).as_deref() == Some(other.name.as_str())
    })
    .await;

    // Taking over rewrites nothing that is already right...
    sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.status_writes().len(), 1);
    // ... and the new leader writes what changes.
    fake.apply(route("split", split(50, 50), Value::Null));
    until("observedGeneration 2", SHORT, || {
        ours(&fake, "split").is_some_and(|e| e["conditions"][0]["observedGeneration"] == 2)
    })
    .await;
    let writes = fake.status_writes();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[1].client, other.name);
}

/// Log lines of this test's thread (the tests run on a current-thread
/// runtime, so every spawned task logs here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().expect("logs"))
            .matches(needle)
            .count()
    }
}

#[tokio::test]
async fn without_lease_permission_the_agent_balances_and_writes_no_status() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let fake = FakeApi::default();
    seed(&fake);
    fake.apply(route("split", split(90, 10), Value::Null));
    fake.forbid("leases");
    let mut agent = start(&fake, "agent-a");
    agent.until_ready().await;
    until("the route applied", SHORT, || agent.routes_on_greeter() == 1).await;
    sleep(Duration::from_millis(1500)).await;
    assert!(fake.status_writes().is_empty());
    assert!(holder(&fake).is_none());
    assert!(!agent.task.is_finished(), "a missing Lease permission is not fatal");
    assert_eq!(
        logs.count("cannot take part in the route-status election"),
        1,
        "logged once"
    );
    assert_eq!(logs.count("may not get Lease balancer-system/balancer-agent-status"), 1);

    // Still balancing what changes.
    fake.apply(route("split", split(50, 50), Value::Null));
    until("the new weights", SHORT, || {
        agent.models.borrow().service("demo/greeter").is_some_and(|s| {
            s.routes
                .first()
                .map(|r| r.backends.iter().map(|b| b.weight).collect::<Vec<_>>())
                == Some(vec![50, 50])
        })
    })
    .await;
}

#[tokio::test]
async fn without_status_permission_the_leader_balances_and_does_not_retry_in_a_loop() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let fake = FakeApi::default();
    seed(&fake);
    fake.apply(route("split", split(90, 10), Value::Null));
    fake.forbid("grpcroutes/status");
    let mut agent = start(&fake, "agent-a");
    agent.until_ready().await;
    until("the Lease held", SHORT, || holder(&fake).as_deref() == Some("agent-a")).await;
    until("the route applied", SHORT, || agent.routes_on_greeter() == 1).await;
    // 100 ms recomputations for 1.5 s: one refused write, then a pause.
    sleep(Duration::from_millis(1500)).await;
    let refused: Vec<_> = fake.writes().into_iter().filter(|w| w.code == 403).collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(fake.status_writes().is_empty());
    assert!(ours(&fake, "split").is_none());
    assert!(!agent.task.is_finished(), "a missing status permission is not fatal");
    assert_eq!(logs.count("cannot write GRPCRoute status"), 1, "logged once");
}
