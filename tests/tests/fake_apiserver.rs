//! The fake API server (`balancer-fake-apiserver`, driven by
//! `balancer_tests::apiserver::FakeApiServer`) against a real kube-rs
//! client, the one the agent uses: reflectors list and follow changes,
//! bookmarks arrive, compaction makes watchers relist, RBAC refusals and
//! missing CRDs look as they do on a real cluster, Leases detect
//! conflicts, and status writes and Events are recorded. Loopback only.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_testing::k8s as k8s_objects;
use balancer_tests::apiserver::{FakeApiOptions, FakeApiServer};
use futures::{StreamExt as _, TryStreamExt as _};
use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher, WatchStreamExt as _,
    },
    Api, Resource as _, ResourceExt as _,
};
use serde_json::{json, Value};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_balancer-fake-apiserver"))
}

fn start(bookmarks: Option<Duration>) -> FakeApiServer {
    FakeApiServer::start(&FakeApiOptions {
        bin: Some(bin()),
        bookmark_interval: bookmarks,
        ..FakeApiOptions::default()
    })
    .expect("start the fake API server")
}

/// A client configured from the server's kubeconfig file, as the agent's
/// `kube::Client::try_default()` is with `KUBECONFIG` set.
async fn client(api: &FakeApiServer) -> kube::Client {
    let kc = Kubeconfig::read_from(api.kubeconfig()).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    assert_eq!(config.default_namespace, "default");
    kube::Client::try_from(config).expect("client")
}

fn service(ns: &str, name: &str, ip: &str) -> Value {
    k8s_objects::merged(
        k8s_objects::service(ns, name, ip, 50051, 50051),
        json!({"metadata": {"labels": {"app": name}}}),
    )
}

fn slice(ns: &str, name: &str, svc: &str, ip: &str) -> Value {
    k8s_objects::slice(ns, name, svc, 50051, vec![k8s_objects::ready(ip)])
}

fn pod(ns: &str, name: &str, node: Option<&str>) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

fn route(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "greeter"}],
                 "rules": [{"backendRefs": [{"name": "greeter-v1", "port": 50051}]}]},
    })
}

/// A reflector over `api` with the agent's watcher settings; the task
/// ends with the test's runtime.
fn reflect<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    reader
}

async fn eventually<F: Fn() -> bool>(what: &str, timeout: Duration, check: F) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names<K>(store: &Store<K>) -> Vec<String>
where
    K: kube::Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut v: Vec<String> = store.state().iter().map(|o| o.name_any()).collect();
    v.sort();
    v
}

fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn timed<F: Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(20), f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_lists_then_follows_applied_changes() {
    let api = start(Some(Duration::from_secs(1)));
    api.apply(service("a", "one", "10.96.0.1")).unwrap();
    api.apply(service("b", "two", "10.96.0.2")).unwrap();
    let client = client(&api).await;
    let store = reflect(Api::<Service>::all(client.clone()), watcher::Config::default());
    timed(store.wait_until_ready()).await.expect("initial list").unwrap();
    assert_eq!(names(&store), ["one", "two"]);

    let added = api.apply(service("a", "three", "10.96.0.3")).unwrap();
    assert!(added.added);
    let mut changed = service("a", "one", "10.96.0.9");
    changed["metadata"]["annotations"] = json!({"balancer.io/policy": "peak-ewma"});
    let modified = api.apply(changed).unwrap();
    assert!(!modified.added);
    assert!(api.delete("services", Some("b"), "two").unwrap());
    assert!(!api.delete("services", Some("b"), "two").unwrap(), "already gone");
    eventually("the watch to deliver the changes", Duration::from_secs(10), || {
        names(&store) == ["one", "three"]
    })
    .await;
    let one = store.state().into_iter().find(|s| s.name_any() == "one").expect("one");
    assert_eq!(one.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.9"));
    assert_eq!(
        one.resource_version().unwrap(),
        modified.resource_version.to_string(),
        "the watch carried the object as applied"
    );
    let reqs = api.requests().unwrap();
    let lists = reqs
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=true"))
        .count();
    assert_eq!(lists, 1, "one list, then watches: {reqs:?}");
    assert!(reqs
        .iter()
        .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_watched_by_node_appear_when_scheduled_there() {
    let api = start(Some(Duration::from_secs(1)));
    api.apply(pod("a", "here", Some("node-1"))).unwrap();
    api.apply(pod("a", "elsewhere", Some("node-2"))).unwrap();
    api.apply(pod("a", "pending", None)).unwrap();
    let client = client(&api).await;
    let store = reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName=node-1"),
    );
    timed(store.wait_until_ready()).await.expect("initial list").unwrap();
    assert_eq!(names(&store), ["here"]);
    api.apply(pod("a", "pending", Some("node-1"))).unwrap();
    api.apply(pod("a", "here", Some("node-2"))).unwrap();
    eventually("the pod scheduled here to appear", Duration::from_secs(10), || {
        names(&store) == ["pending"]
    })
    .await;

    // Label and field selectors on lists.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let l = pods
        .list(&ListParams::default().fields("metadata.name=elsewhere"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    let svcs: Api<Service> = Api::all(client.clone());
    api.apply(service("a", "x", "10.96.0.1")).unwrap();
    api.apply(service("b", "y", "10.96.0.2")).unwrap();
    let l = svcs.list(&ListParams::default().labels("app in (y,z)")).await.unwrap();
    assert_eq!(l.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(), ["y"]);
    let e = api_error(pods.list(&ListParams::default().fields("spec.containers=x")).await);
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_arrive_with_the_current_resource_version() {
    let api = start(Some(Duration::from_millis(200)));
    api.apply(service("a", "one", "10.96.0.1")).unwrap();
    let client = client(&api).await;
    let svcs: Api<Service> = Api::all(client);
    let list = svcs.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let stream = svcs.watch(&WatchParams::default().timeout(30), &rv).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    // Something happens to another resource: bookmarks carry the global
    // resourceVersion.
    let later = api
        .apply(slice("a", "one-x", "one", "10.0.0.1"))
        .unwrap()
        .resource_version;
    let mut marks = 0;
    while marks < 2 {
        match timed(stream.try_next()).await.expect("a bookmark in time").unwrap() {
            Some(WatchEvent::Bookmark(b)) => {
                assert_eq!(b.types.kind, "Service");
                assert_eq!(b.metadata.resource_version, later.to_string());
                marks += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Without allowWatchBookmarks there are none; timeoutSeconds ends it.
    let started = Instant::now();
    let quiet = svcs
        .watch(
            &WatchParams::default().disable_bookmarks().timeout(1),
            &later.to_string(),
        )
        .await
        .unwrap();
    let events: Vec<_> = timed(quiet.collect::<Vec<_>>()).await.expect("the watch ends");
    assert!(events.is_empty(), "{events:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A watcher using streaming lists (sendInitialEvents) syncs from the
    // initial events and their closing bookmark.
    let store = reflect(svcs.clone(), watcher::Config::default().streaming_lists());
    timed(store.wait_until_ready()).await.expect("streaming list").unwrap();
    assert_eq!(names(&store), ["one"]);
    api.apply(service("b", "two", "10.96.0.2")).unwrap();
    eventually("a change after the streaming list", Duration::from_secs(10), || {
        names(&store) == ["one", "two"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_closed_watches_make_the_watcher_relist() {
    // No periodic bookmarks: the watcher must keep the resourceVersion of
    // its list.
    let api = start(None);
    for (n, ip) in [("one", "10.96.0.1"), ("two", "10.96.0.2")] {
        api.apply(service("a", n, ip)).unwrap();
    }
    let client = client(&api).await;
    let store = reflect(Api::<Service>::all(client), watcher::Config::default());
    timed(store.wait_until_ready()).await.expect("initial list").unwrap();
    eventually("the watch", Duration::from_secs(10), || {
        api.watches().unwrap().get("services") == Some(&1)
    })
    .await;
    api.clear_requests().unwrap();

    // Changes no watch can carry: watches refused while they happen, and
    // the log that would replay them compacted away.
    api.forbid("watch", "services").unwrap();
    assert_eq!(api.close_watches().unwrap(), 1);
    eventually("a refused re-watch", Duration::from_secs(10), || {
        api.requests().unwrap().iter().any(|r| r.contains("watch=true"))
    })
    .await;
    api.delete("services", Some("a"), "two").unwrap();
    api.apply(service("a", "three", "10.96.0.3")).unwrap();
    api.compact().unwrap();
    api.allow("watch", "services").unwrap();

    eventually("the relist to replace the store", Duration::from_secs(20), || {
        names(&store) == ["one", "three"]
    })
    .await;
    let reqs = api.requests().unwrap();
    let lists = reqs
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=true"))
        .count();
    assert_eq!(lists, 1, "a second list after the compaction: {reqs:?}");
    // And the watch after it follows changes again.
    api.apply(service("a", "four", "10.96.0.4")).unwrap();
    eventually("a change after the relist", Duration::from_secs(10), || {
        names(&store) == ["four", "one", "three"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_watches_and_an_outage_are_survived() {
    let api = start(None);
    api.apply(service("a", "one", "10.96.0.1")).unwrap();
    let client = client(&api).await;
    let store = reflect(Api::<Service>::all(client.clone()), watcher::Config::default());
    timed(store.wait_until_ready()).await.expect("initial list").unwrap();
    let watching = || api.watches().unwrap().get("services") == Some(&1);
    eventually("the watch", Duration::from_secs(10), watching).await;

    // A broken connection: the watcher watches again and misses nothing.
    assert_eq!(api.abort_watches().unwrap(), 1);
    api.apply(service("a", "two", "10.96.0.2")).unwrap();
    eventually("the change made while reconnecting", Duration::from_secs(10), || {
        names(&store) == ["one", "two"]
    })
    .await;

    // An outage: no answers at all; the store keeps its state.
    api.set_unavailable(true).unwrap();
    let r = timed(Api::<Service>::all(client.clone()).list(&ListParams::default()))
        .await
        .expect("a quick failure");
    assert!(
        matches!(r, Err(ref e) if !matches!(e, kube::Error::Api(_))),
        "a connection failure, not a Status: {r:?}"
    );
    api.apply(service("a", "three", "10.96.0.3")).unwrap();
    assert_eq!(names(&store), ["one", "two"]);
    api.set_unavailable(false).unwrap();
    eventually("the change made during the outage", Duration::from_secs(30), || {
        names(&store) == ["one", "three", "two"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_resource_version_gets_410_on_watch_and_continue() {
    let api = start(None);
    for i in 0..5 {
        api.apply(service("a", &format!("s{i}"), "10.96.0.1")).unwrap();
    }
    let client = client(&api).await;
    let svcs: Api<Service> = Api::all(client);
    let page = svcs.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let rv = page.metadata.resource_version.clone().unwrap();
    let next = svcs
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(next.items.len(), 2);
    assert_eq!(next.metadata.resource_version.as_deref(), Some(rv.as_str()));
    api.compact().unwrap();
    let e = api_error(svcs.list(&ListParams::default().limit(2).continue_token(&token)).await);
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    let stream = svcs.watch(&WatchParams::default(), &rv).await.unwrap();
    let events: Vec<_> = timed(stream.collect::<Vec<_>>()).await.expect("the watch ends");
    match events.as_slice() {
        [Ok(WatchEvent::Error(s))] => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_not_served_look_like_a_real_cluster() {
    let api = start(None);
    let client = client(&api).await;
    api.forbid("list", "services").unwrap();
    let e = api_error(Api::<Service>::all(client.clone()).list(&ListParams::default()).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "services is forbidden: User \"system:serviceaccount:balancer-system:balancer-agent\" cannot list \
         resource \"services\" in API group \"\" at the cluster scope"
    );
    api.allow("list", "services").unwrap();
    Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("allowed again");
    api.forbid("*", "endpointslices.discovery.k8s.io").unwrap();
    let e = api_error(Api::<EndpointSlice>::namespaced(client.clone(), "a").get("x").await);
    assert_eq!(e.code, 403);
    assert!(
        e.message.contains(
            "cannot get resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"a\""
        ),
        "{}",
        e.message
    );

    // A missing CRD.
    api.set_served("grpcroutes", false).unwrap();
    let routes: Api<GrpcRoute> = Api::all(client.clone());
    let e = api_error(routes.list(&ListParams::default()).await);
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    // kube hands a failed watch's Status over as the stream's first item.
    let watch = routes.watch(&WatchParams::default(), "0").await.unwrap();
    let mut watch = std::pin::pin!(watch);
    let e = api_error(timed(watch.try_next()).await.expect("the watch answers"));
    assert_eq!(e.code, 404);
    api.set_served("grpcroutes", true).unwrap();
    assert!(routes.list(&ListParams::default()).await.unwrap().items.is_empty());

    // Unknown paths and bad bodies: Status objects, no crash.
    let req = http::Request::get("/apis/example.com/v1/widgets")
        .body(Vec::new())
        .unwrap();
    let e = api_error(client.request_text(req).await);
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    let req = http::Request::post("/api/v1/namespaces/a/services")
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap();
    let e = api_error(client.request_text(req).await);
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    let req = http::Request::get("/api/v1/services?watch=true&resourceVersion=abc")
        .body(Vec::new())
        .unwrap();
    assert_eq!(api_error(client.request_text(req).await).code, 400);
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
}

fn lease(holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": "balancer-leader"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_detect_conflicts() {
    let api = start(None);
    let client = client(&api).await;
    let leases: Api<Lease> = Api::namespaced(client, "balancer-system");
    let created = leases.create(&PostParams::default(), &lease("agent-a")).await.unwrap();
    assert_eq!(created.namespace().as_deref(), Some("balancer-system"));
    let e = api_error(leases.create(&PostParams::default(), &lease("agent-b")).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    let mut renewed = created.clone();
    renewed.spec.as_mut().unwrap().lease_duration_seconds = Some(30);
    let renewed = leases
        .replace("balancer-leader", &PostParams::default(), &renewed)
        .await
        .unwrap();
    assert_ne!(renewed.resource_version(), created.resource_version());
    // Agent B still holds the first version: it loses.
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("agent-b".into());
    let e = api_error(leases.replace("balancer-leader", &PostParams::default(), &stale).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));

    let patched = leases
        .patch(
            "balancer-leader",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "agent-c"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().lease_duration_seconds, Some(30));
    let stored = api
        .get("leases", Some("balancer-system"), "balancer-leader")
        .unwrap()
        .unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "agent-c");
    let e = api_error(leases.get("nope").await);
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcroute_status_writes_are_readable_back() {
    let api = start(None);
    api.apply(route("demo", "split")).unwrap();
    let client = client(&api).await;
    let routes: Api<GrpcRoute> = Api::namespaced(client, "demo");
    let status = json!({"status": {"parents": [{
        "parentRef": {"group": "", "kind": "Service", "name": "greeter"},
        "controllerName": "balancer.io/agent",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 1}],
    }]}});
    let r = routes
        .patch_status("split", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(
        r.status.as_ref().unwrap().parents[0].controller_name,
        "balancer.io/agent"
    );
    let stored = api.get("grpcroutes", Some("demo"), "split").unwrap().unwrap();
    assert_eq!(stored["status"], status["status"]);
    assert_eq!(api.status_writes("grpcroutes", Some("demo"), "split").unwrap(), 1);

    // Server-side apply of the status, as a controller with a field manager.
    let mut applied = status.clone();
    applied["apiVersion"] = json!("gateway.networking.k8s.io/v1");
    applied["kind"] = json!("GRPCRoute");
    applied["status"]["parents"][0]["conditions"][0]["reason"] = json!("Reapplied");
    routes
        .patch_status(
            "split",
            &PatchParams::apply("balancer").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    // replace_status with the object read back.
    let mut current = routes.get_status("split").await.unwrap();
    current.status.as_mut().unwrap().parents[0].controller_name = "balancer.io/other".into();
    let replaced = routes
        .replace_status("split", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(replaced.status.unwrap().parents[0].controller_name, "balancer.io/other");
    assert_eq!(api.status_writes("grpcroutes", Some("demo"), "split").unwrap(), 3);
    let stored = api.get("grpcroutes", Some("demo"), "split").unwrap().unwrap();
    assert_eq!(stored["status"]["parents"][0]["conditions"][0]["reason"], "Reapplied");
    assert_eq!(
        stored["spec"],
        route("demo", "split")["spec"],
        "status writes leave the spec"
    );
    // A stale replace_status conflicts.
    let e = api_error(routes.replace_status("split", &PostParams::default(), &current).await);
    assert_eq!(e.code, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_posted_by_a_recorder_are_recorded() {
    let api = start(None);
    api.apply(route("demo", "bad")).unwrap();
    let client = client(&api).await;
    let routes: Api<GrpcRoute> = Api::namespaced(client.clone(), "demo");
    let r = routes.get("bad").await.unwrap();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "balancer.io/agent".into(),
            instance: Some("node-1".into()),
        },
    );
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "InvalidGRPCRoute".into(),
        note: Some("ignored by balancer: no such Service".into()),
        action: "Translate".into(),
        secondary: None,
    };
    // The second publication of the same event is a PATCH of its series.
    recorder.publish(&event, &r.object_ref(&())).await.unwrap();
    recorder.publish(&event, &r.object_ref(&())).await.unwrap();
    let events = api.events().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["metadata"]["namespace"], "demo");
    assert_eq!(e["reason"], "InvalidGRPCRoute");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["name"], "bad");
    assert_eq!(e["series"]["count"], 2);
    let reqs = api.requests().unwrap();
    assert!(reqs
        .iter()
        .any(|r| r.starts_with("POST /apis/events.k8s.io/v1/namespaces/demo/events")));
    assert!(reqs
        .iter()
        .any(|r| r.starts_with("PATCH /apis/events.k8s.io/v1/namespaces/demo/events/")));
}

/// 10,000 Services and 10,000 EndpointSlices seeded from a file, listed
/// in pages and then watched by two reflectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_services_and_slices_list_and_watch() {
    const N: usize = 10_000;
    let api = start(Some(Duration::from_secs(1)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.jsonl");
    let mut text = String::new();
    for i in 0..N {
        let ip = format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
        text.push_str(&service("scale", &format!("svc-{i}"), &ip).to_string());
        text.push('\n');
        text.push_str(&slice("scale", &format!("svc-{i}-x"), &format!("svc-{i}"), &ip).to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let t = Instant::now();
    assert_eq!(api.apply_file(&path).unwrap(), 2 * N);
    let seeded = t.elapsed();

    let client = client(&api).await;
    let t = Instant::now();
    let services = reflect(Api::<Service>::all(client.clone()), watcher::Config::default());
    let slices = reflect(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default());
    timed(services.wait_until_ready())
        .await
        .expect("services listed")
        .unwrap();
    timed(slices.wait_until_ready()).await.expect("slices listed").unwrap();
    let listed = t.elapsed();
    assert_eq!(services.state().len(), N);
    assert_eq!(slices.state().len(), N);

    // A burst of changes reaches both watches.
    let t = Instant::now();
    let burst: Vec<Value> = (0..1000)
        .map(|i| {
            let mut s = slice("scale", &format!("svc-{i}-x"), &format!("svc-{i}"), "10.200.0.1");
            s["endpoints"][0]["conditions"]["ready"] = json!(false);
            s
        })
        .collect();
    api.apply_all(burst).unwrap();
    api.delete("services", Some("scale"), "svc-0").unwrap();
    eventually("the burst", Duration::from_secs(30), || {
        services.state().len() == N - 1
            && slices
                .state()
                .iter()
                .filter(|s| s.endpoints[0].conditions.as_ref().and_then(|c| c.ready) == Some(false))
                .count()
                == 1000
    })
    .await;
    let followed = t.elapsed();
    let reqs = api.requests().unwrap();
    let pages = reqs.iter().filter(|r| r.contains("limit=500")).count();
    assert_eq!(pages, 2 * N / 500, "paged lists of 500: {pages}");
    eprintln!(
        "seeded {} objects in {seeded:?}, listed in {listed:?}, 1001 changes followed in {followed:?}",
        2 * N
    );
}

/// The server in a test network namespace: the test drives it over stdin
/// and stdout with no route to it, and a kube client inside that namespace
/// (a thread that joined it) reads what the test applied.
#[test]
fn runs_inside_a_network_namespace() {
    use std::os::fd::AsRawFd as _;

    let Some(_serial) = balancer_tests::privileged::serial_or_skip("runs_inside_a_network_namespace") else {
        return;
    };
    let netns = balancer_tests::netns::NetNs::new("fkapi").expect("netns");
    let api = FakeApiServer::spawn(
        &FakeApiOptions {
            bin: Some(bin()),
            ..FakeApiOptions::default()
        },
        Some(&netns),
    )
    .expect("start in the netns");
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    assert_ne!(
        ns_of(&api.pid().to_string()),
        ns_of("self"),
        "the server runs in the test netns"
    );
    api.apply(service("a", "one", "10.96.0.1")).unwrap();

    let ns_file = netns.open().expect("open netns");
    let kubeconfig = api.kubeconfig().to_owned();
    let names = std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap();
            let client = kube::Client::try_from(config).unwrap();
            let list = timed(Api::<Service>::all(client).list(&ListParams::default()))
                .await
                .expect("answered in time")
                .expect("list");
            list.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
        })
    })
    .join()
    .expect("client thread");
    assert_eq!(names, ["one"]);
    assert!(api
        .requests()
        .unwrap()
        .iter()
        .any(|r| r.starts_with("GET /api/v1/services")));
}
