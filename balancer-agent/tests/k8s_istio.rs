//! Istio's VirtualService and DestinationRule in Kubernetes mode, read from
//! the fake API server, with real gRPC calls through the agent's relay to
//! two greeter backends (pods labelled `version: v1` and `version: v2`
//! behind one Service): a canary shift by subset weights, 90:10 then 0:100;
//! what cannot be honoured reported in an Event and by `balancerctl`;
//! a GRPCRoute winning over a VirtualService for the same Service; and an
//! agent on a cluster without Istio's CRDs ready at once.

mod k8s_fake;
mod support_ctl;
mod support_proxy;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{atomic::AtomicUsize, Arc},
    time::{Duration, Instant},
};

use balancer_agent::{
    admin::{self, AdminOptions, AdminServer, AdminState},
    api,
    k8s::istio::{NOT_APPLIED_REASON, PARTLY_APPLIED_REASON},
    model::{Ejection, Model},
};
use greeter::{pb::echo::SleepRequest, server::TestServer};
use k8s_fake::{run::K8sRun, FakeApi};
use serde_json::{json, Value};
use support_proxy::{fast_opts, redirected_proxy, FakeRedirects, TestProxy};

const VIP: &str = "10.96.0.10:8000";

fn service(name: &str, ip: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service",
            "metadata": { "namespace": "demo", "name": name },
            "spec": { "clusterIP": ip, "clusterIPs": [ip],
                      "ports": [{ "name": "grpc", "port": 8000, "protocol": "TCP" }] } })
}

/// A slice of `service` holding the pod `pod` at `backend`.
fn slice(name: &str, service: &str, pod: &str, backend: SocketAddr) -> Value {
    json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "namespace": "demo", "name": name,
                          "labels": { "kubernetes.io/service-name": service } },
            "addressType": "IPv4",
            "ports": [{ "name": "grpc", "port": backend.port(), "protocol": "TCP" }],
            "endpoints": [{ "addresses": [backend.ip().to_string()], "conditions": { "ready": true },
                            "targetRef": { "kind": "Pod", "namespace": "demo", "name": pod } }] })
}

fn pod(name: &str, version: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod",
            "metadata": { "namespace": "demo", "name": name,
                          "labels": { "app": "greeter", "version": version } },
            "spec": { "nodeName": "node-b", "containers": [{ "name": "greeter", "image": "greeter" }] },
            "status": { "phase": "Running" } })
}

fn destination_rule() -> Value {
    json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": { "namespace": "demo", "name": "greeter", "uid": "dr-1" },
            "spec": { "host": "greeter.demo.svc.cluster.local",
                      "trafficPolicy": { "loadBalancer": { "simple": "LEAST_REQUEST" },
                                         "outlierDetection": { "consecutiveGatewayErrors": 2,
                                                               "baseEjectionTime": "45s" } },
                      "subsets": [{ "name": "v1", "labels": { "version": "v1" } },
                                  { "name": "v2", "labels": { "version": "v2" } }] } })
}

/// The canary VirtualService: `Echo/Sleep` to v1 with a 300 ms timeout,
/// `helloworld.Greeter` split v1:v2 by weight (with `extra` fields in that
/// route), everything else to v1.
fn virtual_service(v1: u32, v2: u32, extra: Value) -> Value {
    let mut route = json!({
        "name": "canary",
        "match": [{ "uri": { "prefix": "/helloworld.Greeter/" } }],
        "route": [{ "destination": { "host": "greeter", "subset": "v1" }, "weight": v1 },
                  { "destination": { "host": "greeter", "subset": "v2" }, "weight": v2 }]
    });
    if let (Some(r), Some(e)) = (route.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "namespace": "demo", "name": "greeter", "uid": "vs-1" },
            "spec": { "hosts": ["greeter"],
                      "http": [
                          { "match": [{ "uri": { "exact": "/balancer.test.Echo/Sleep" } }], "timeout": "300ms",
                            "route": [{ "destination": { "host": "greeter", "subset": "v1" } }] },
                          route,
                          { "route": [{ "destination": { "host": "greeter", "subset": "v1" } }] }] } })
}

/// Two greeter backends behind `demo/greeter` (and each behind its own
/// Service, for GRPCRoutes), the agent's Kubernetes mode on the fake API
/// server, and its relay serving connections "redirected" from the VIP.
struct Cluster {
    fake: FakeApi,
    _v1: TestServer,
    _v2: TestServer,
    run: K8sRun,
    proxy: TestProxy,
}

impl Cluster {
    async fn start(objects: Vec<Value>, tune: impl FnOnce(&FakeApi)) -> Cluster {
        let v1 = TestServer::spawn("v1").expect("greeter v1");
        let v2 = TestServer::spawn("v2").expect("greeter v2");
        let fake = FakeApi::default();
        tune(&fake);
        for o in [
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "demo" } }),
            service("greeter", "10.96.0.10"),
            service("greeter-v1", "10.96.0.11"),
            service("greeter-v2", "10.96.0.12"),
            slice("greeter-a", "greeter", "greeter-v1-0", v1.addr()),
            slice("greeter-b", "greeter", "greeter-v2-0", v2.addr()),
            slice("greeter-v1-a", "greeter-v1", "greeter-v1-0", v1.addr()),
            slice("greeter-v2-a", "greeter-v2", "greeter-v2-0", v2.addr()),
            pod("greeter-v1-0", "v1"),
            pod("greeter-v2-0", "v2"),
        ]
        .into_iter()
        .chain(objects)
        {
            fake.apply(o);
        }
        let mut run = K8sRun::start(&fake, "node-a", |_| {}, |o| o.resync = Duration::from_millis(200));
        let model = run.until_ready().await;
        let redirects = Arc::new(FakeRedirects {
            vip: Some(VIP.parse().expect("vip")),
            left_fast_path: AtomicUsize::new(0),
        });
        let proxy = redirected_proxy(&model, fast_opts(), redirects).await;
        Cluster {
            fake,
            _v1: v1,
            _v2: v2,
            run,
            proxy,
        }
    }

    /// Waits for a model where `demo/greeter` satisfies `pred` and has the
    /// relay use it.
    async fn until(&mut self, what: &str, pred: impl Fn(&balancer_agent::model::Service) -> bool) -> Arc<Model> {
        let m = self
            .run
            .until(what, Duration::from_secs(10), |m| {
                m.service("demo/greeter").is_some_and(&pred)
            })
            .await;
        self.proxy.table.update_shared(&m);
        m
    }

    /// `n` SayHello calls over one connection through the relay, per
    /// backend; every call must succeed.
    async fn calls(&self, n: u64) -> BTreeMap<String, u64> {
        let channel = greeter::client::connect(&self.proxy.addr.to_string())
            .await
            .expect("connect to the agent");
        let spread = greeter::client::say_hello_spread(channel, n, 4, Duration::from_secs(5)).await;
        assert_eq!(spread.errors, 0, "{}", spread.table());
        spread.backends
    }
}

fn weights(s: &balancer_agent::model::Service) -> Vec<Vec<u32>> {
    s.routes
        .iter()
        .map(|r| r.backends.iter().map(|b| b.weight).collect())
        .collect()
}

fn counts(v1: u64, v2: u64) -> BTreeMap<String, u64> {
    [("v1", v1), ("v2", v2)]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_owned(), n))
        .collect()
}

/// The Events posted about the object `kind/name`.
fn events_on(fake: &FakeApi, kind: &str, name: &str) -> Vec<Value> {
    fake.events()
        .into_iter()
        .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_virtual_service_shifts_calls_90_10_then_0_100_by_subset_weights() {
    let mut c = Cluster::start(vec![destination_rule(), virtual_service(90, 10, json!({}))], |_| {}).await;
    let svc = c
        .until("the 90:10 canary applies", |s| {
            weights(s) == [vec![100], vec![90, 10], vec![100]]
        })
        .await;
    let greeter = svc.service("demo/greeter").expect("greeter");
    assert_eq!(
        greeter.policy.as_str(),
        "least-request",
        "the DestinationRule's LEAST_REQUEST"
    );
    assert_eq!(
        greeter.ejection,
        Some(Ejection {
            consecutive_failures: 2,
            base: Duration::from_secs(45),
            max_percent: 10,
        }),
        "the DestinationRule's outlierDetection"
    );
    // The smooth weighted schedule gives the exact shares.
    assert_eq!(c.calls(200).await, counts(180, 20));

    // The Sleep route's timeout ends a call that set no deadline.
    let channel = greeter::client::connect(&c.proxy.addr.to_string())
        .await
        .expect("connect");
    let started = Instant::now();
    let slept = greeter::client::echo(channel)
        .sleep(SleepRequest { millis: 3000 })
        .await
        .expect_err("the route's timeout ends it");
    assert_eq!(format!("{:?}", slept.code()), "DeadlineExceeded", "{slept:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2000),
        "{took:?}"
    );

    c.fake.apply(virtual_service(0, 100, json!({})));
    c.until("the 0:100 shift applies", |s| {
        weights(s) == [vec![100], vec![0, 100], vec![100]]
    })
    .await;
    assert_eq!(c.calls(100).await, counts(0, 100));

    // A pod relabelled out of the subset takes no more of its calls: with
    // no endpoint in the subset, calls fail rather than leak to v1.
    let mut moved = pod("greeter-v2-0", "v3");
    moved["metadata"]["resourceVersion"] = json!(null);
    c.fake.apply(moved);
    c.until("v2's pod leaves the subset", |s| {
        !s.endpoints
            .iter()
            .any(|e| e.labels.contains_key("subset.balancer.io/greeter.v2"))
    })
    .await;
    let channel = greeter::client::connect(&c.proxy.addr.to_string())
        .await
        .expect("connect");
    let spread = greeter::client::say_hello_spread(channel, 10, 2, Duration::from_secs(5)).await;
    assert_eq!((spread.ok, spread.errors), (0, 10), "{}", spread.table());
    assert!(
        c.run.status.borrow().reports.is_empty(),
        "{:?}",
        c.run.status.borrow().reports
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_balancer_cannot_honour_is_reported_once_by_an_event_and_by_balancerctl() {
    let extra = json!({
        "fault": { "abort": { "httpStatus": 503, "percentage": { "value": 5 } } },
        "mirror": { "host": "greeter-shadow" },
                "retries": { "attempts": 3, "retryOn": "connect-failure,unavailable" }
    });
    let malformed = json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "namespace": "demo", "name": "broken", "uid": "vs-2" },
        "spec": { "hosts": ["greeter-v1"],
                  "http": [{ "route": [{ "destination": { "host": "greeter-v1" }, "weight": "ten" }] }] } });
    let mut c = Cluster::start(
        vec![destination_rule(), virtual_service(50, 50, extra), malformed],
        |_| {},
    )
    .await;
    // The routes apply without what cannot be honoured.
    let model = c
        .until("the route applies", |s| {
            weights(s) == [vec![100], vec![50, 50], vec![100]]
        })
        .await;
    assert_eq!(c.calls(100).await, counts(50, 50), "no injected abort");

    let (admin, _served) = admin_server(&c.run, &model).await;
    let (status, service) = tokio::task::spawn_blocking(move || {
        (
            support_ctl::ctl(admin, &["status"]),
            support_ctl::ctl(admin, &["service", "show", "demo/greeter"]),
        )
    })
    .await
    .expect("balancerctl");
    // What maps is shown with the service.
    for line in [
        "Policy:     least-request",
        "Ejection:   after 2 consecutive failures, for 45s (growing), at most 10% of endpoints at once",
    ] {
        assert!(service.lines().any(|l| l == line), "missing {line:?} in:\n{service}");
    }
    let expected = [
        "  VirtualService demo/greeter: applied without: http[1].fault (not supported); http[1].mirror (not \
         supported); http[1].retries.retryOn `unavailable` (the agent retries only calls no endpoint handled: \
         connect-failure, refused-stream)",
        "  VirtualService demo/broken: not applied: spec.http[0].route[0].weight: invalid type: string \"ten\", \
         expected i32",
    ];
    for line in expected {
        assert!(status.lines().any(|l| l == line), "missing {line:?} in:\n{status}");
    }
    assert!(status.contains("Not applied as written:"), "{status}");

    // One Event on each object, even after many recomputations.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let on_greeter = events_on(&c.fake, "VirtualService", "greeter");
    assert_eq!(on_greeter.len(), 1, "{on_greeter:#?}");
    let e = &on_greeter[0];
    assert_eq!(e["reason"], PARTLY_APPLIED_REASON);
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["apiVersion"], "networking.istio.io/v1");
    assert_eq!(e["regarding"]["uid"], "vs-1");
    assert!(
        e["note"]
            .as_str()
            .is_some_and(|n| n.contains("http[1].fault (not supported)")),
        "{e}"
    );
    let on_broken = events_on(&c.fake, "VirtualService", "broken");
    assert_eq!(on_broken.len(), 1, "{on_broken:#?}");
    assert_eq!(on_broken[0]["reason"], NOT_APPLIED_REASON);
}

/// An admin server showing the run's status and the services of `model`.
async fn admin_server(run: &K8sRun, model: &Model) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let services = model.services.iter().map(|s| api::Service::new(s, None)).collect();
    let mut state = AdminState::new(admin::views::fixed_services(services));
    state.source = admin::views::kubernetes_source(run.status.clone());
    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"), &AdminOptions::default())
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let served = tokio::spawn(async move {
        let _ = server.run(state).await;
    });
    (addr, served)
}

fn grpc_route() -> Value {
    json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": { "namespace": "demo", "name": "greeter-split" },
            "spec": { "parentRefs": [{ "group": "", "kind": "Service", "name": "greeter", "port": 8000 }],
                      "rules": [{ "backendRefs": [{ "name": "greeter-v1", "port": 8000 }] }] } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcroute_wins_over_a_virtual_service_which_applies_once_the_route_is_gone() {
    let mut c = Cluster::start(
        vec![destination_rule(), virtual_service(0, 100, json!({})), grpc_route()],
        |_| {},
    )
    .await;
    c.until("the GRPCRoute's route applies", |s| {
        s.routes.len() == 1 && s.routes[0].name.as_deref() == Some("demo/greeter-split#0")
    })
    .await;
    assert_eq!(
        c.calls(50).await,
        counts(50, 0),
        "the GRPCRoute sends every call to greeter-v1"
    );
    let line = "VirtualService demo/greeter: not applied: a GRPCRoute routes `demo/greeter` and wins over a \
                VirtualService";
    let status = c.run.status.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        c.run.status.wait_for(|s| s.reports.iter().any(|r| r == line)),
    )
    .await
    .unwrap_or_else(|_| panic!("{line:?} not reported: {:?}", status.borrow().reports))
    .expect("run() is alive");
    let fake = c.fake.clone();
    wait_for("the Event on the VirtualService", || {
        events_on(&fake, "VirtualService", "greeter")
            .iter()
            .any(|e| e["reason"] == NOT_APPLIED_REASON && e["note"] == line)
    })
    .await;

    c.fake.delete(grpc_route());
    c.until("the VirtualService's route applies", |s| {
        weights(s) == [vec![100], vec![0, 100], vec![100]]
    })
    .await;
    assert_eq!(
        c.calls(50).await,
        counts(0, 50),
        "the VirtualService sends every call to v2"
    );
}

async fn wait_for(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what} within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_istio_crds_the_agent_is_ready_at_once_and_routes_by_grpcroute() {
    let started = Instant::now();
    let mut c = Cluster::start(vec![grpc_route()], |fake| {
        fake.not_installed("virtualservices");
        fake.not_installed("destinationrules");
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ready in {:?}",
        started.elapsed()
    );
    c.until("the GRPCRoute applies", |s| s.routes.len() == 1).await;
    assert_eq!(c.calls(20).await, counts(20, 0));
    assert!(c.run.status.borrow().reports.is_empty());
    assert!(!c.run.task.is_finished(), "the agent keeps running");
}
