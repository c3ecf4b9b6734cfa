//! GRPCRoute filters through the agent's explicit listener (static mode,
//! `--no-ebpf`), with tonic clients and backends: a route's and a backend's
//! header modifiers as the backend and the client see them; request
//! mirrors that copy all, none or a share of the calls to another service,
//! and that neither fail nor slow the real calls when the mirror is
//! stopped or stalls. The kernel redirect's side is in `agent_redirect.rs`.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use greeter::{
    client::{self, Echoed},
    pb::{echo::EchoRequest, helloworld::HelloRequest},
    server::TestServer,
};
use grpc_support::{free_port, Agent};

/// Longer than a mirror's copies may stay open (10 s), so that a stalled
/// mirror's copies end by the agent's timer, not by their deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn md(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Service `greeter` on `listen` with endpoints v1 and v2, `routes`
/// (indented for `routes:`), and service `shadow` (endpoint `shadow`) on
/// a VIP (no client dials it here).
fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    v1: SocketAddr,
    v2: SocketAddr,
    routes: &str,
    shadow: SocketAddr,
) -> String {
    format!(
        "admin: {admin}\nservices:\n  - name: greeter\n    listen: {listen}\n    endpoints:\n      - {{ address: \"{v1}\", labels: {{ version: v1 }} }}\n      - {{ address: \"{v2}\", labels: {{ version: v2 }} }}\n    routes:\n{routes}  - name: shadow\n    vip: 10.96.0.99:8000\n    endpoints:\n      - {{ address: \"{shadow}\" }}\n"
    )
}

const HEADER_ROUTES: &str = r#"      - name: tenants
        matches: [ { headers: [ { name: x-route, value: filtered } ] } ]
        filters:
          - request_header_modifier:
              set: [ { name: X-Tenant, value: acme } ]
              add: [ { name: x-added, value: by-route } ]
              remove: [ x-secret ]
          - response_header_modifier:
              set: [ { name: x-served-by, value: balancer } ]
              add: [ { name: x-extra, value: "1" } ]
              remove: [ x-drop-me ]
        backends:
          - labels: { version: v1 }
            filters: [ { request_header_modifier: { set: [ { name: x-version, value: one } ] } } ]
          - labels: { version: v2 }
            filters: [ { request_header_modifier: { set: [ { name: x-version, value: two } ] } } ]
"#;

/// Backends `a` and `b` and the mirror `shadow`.
fn servers() -> (TestServer, TestServer, TestServer) {
    let s = |name| TestServer::spawn(name).unwrap();
    (s("a"), s("b"), s("shadow"))
}

fn get<'a>(m: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
    m.get(k).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_of_a_route_and_its_backends_reach_the_backend_and_the_client() {
    let (a, b, shadow) = servers();
    let (admin, listen) = (free_port(), free_port());
    let cfg = config(admin, listen, a.addr(), b.addr(), HEADER_ROUTES, shadow.addr());
    let agent = Agent::start(admin, listen, &cfg);
    let ch = client::connect(&agent.target()).await.unwrap();

    let sent = md(&[
        ("x-route", "filtered"),
        ("x-tenant", "from-client"),
        ("x-added", "by-client"),
        ("x-secret", "s3cr3t"),
        ("x-keep", "k"),
        ("x-drop-me", "d"),
    ]);
    let mut backends = BTreeMap::new();
    for _ in 0..10 {
        let e: Echoed = client::echo_metadata(ch.clone(), &sent, CALL_TIMEOUT).await.unwrap();
        let (req, resp) = (&e.request, &e.response);
        // The route's request modifier: set replaces, add appends, remove removes.
        assert_eq!(get(req, "x-tenant"), Some("acme"), "{e:?}");
        assert_eq!(get(req, "x-added"), Some("by-client,by-route"), "{e:?}");
        assert_eq!(get(req, "x-secret"), None, "{e:?}");
        assert_eq!(get(req, "x-keep"), Some("k"), "{e:?}");
        // Then the backend's own, for the calls sent to it.
        let version = if e.backend == "a" { "one" } else { "two" };
        assert_eq!(get(req, "x-version"), Some(version), "{e:?}");
        // The response modifier, on the headers the backend echoed.
        assert_eq!(get(resp, "x-served-by"), Some("balancer"), "{e:?}");
        assert_eq!(get(resp, "x-extra"), Some("1"), "{e:?}");
        assert_eq!(get(resp, "x-drop-me"), None, "{e:?}");
        assert_eq!(get(resp, "x-keep"), Some("k"), "{e:?}");
        *backends.entry(e.backend).or_insert(0) += 1;
    }
    assert_eq!(backends.len(), 2, "both backends and their filters: {backends:?}");

    // A call no route matches is not touched.
    let plain = md(&[("x-tenant", "from-client"), ("x-secret", "s3cr3t"), ("x-drop-me", "d")]);
    let e = client::echo_metadata(ch.clone(), &plain, CALL_TIMEOUT).await.unwrap();
    assert_eq!(get(&e.request, "x-tenant"), Some("from-client"), "{e:?}");
    assert_eq!(get(&e.request, "x-secret"), Some("s3cr3t"), "{e:?}");
    assert_eq!(get(&e.request, "x-version"), None, "{e:?}");
    assert_eq!(get(&e.response, "x-drop-me"), Some("d"), "{e:?}");
    assert_eq!(get(&e.response, "x-served-by"), None, "{e:?}");
    assert_eq!(shadow.calls(), 0);

    // `balancerctl service show` reads the filters from the admin API.
    let body = balancer_testing::http::get(admin, "/api/v1/services/greeter")
        .unwrap()
        .body;
    let svc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let filters = svc["routes"][0]["filters"].to_string();
    assert!(
        filters.contains("request: set x-tenant=acme, add x-added=by-route, remove x-secret"),
        "{filters}"
    );
    assert!(filters.contains("backend 1 request: set x-version=two"), "{filters}");
}

fn mirror_routes(percent: &str) -> String {
    format!(
        "      - filters: [ {{ request_mirror: {{ service: shadow, percent: {percent} }} }} ]\n        backends: [ {{ labels: {{ version: v1 }} }} ]\n"
    )
}

/// `balancer_mirrored_calls_total{service="greeter",result}`.
fn mirrored(agent: &Agent, result: &str) -> u64 {
    let body = balancer_testing::http::get(agent.admin, "/metrics").unwrap().body;
    let labels = [("service", "greeter"), ("result", result)];
    balancer_testing::metrics::one(&body, "balancer_mirrored_calls_total", &labels) as u64
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_a_copy_of_all_none_or_a_share_of_the_calls() {
    let (a, b, shadow) = servers();
    let (admin, listen) = (free_port(), free_port());
    let cfg = |p: &str| config(admin, listen, a.addr(), b.addr(), &mirror_routes(p), shadow.addr());
    let agent = Agent::start(admin, listen, &cfg("100"));
    let ch = client::connect(&agent.target()).await.unwrap();

    // Every call mirrored; the caller sees only the real backend's answer.
    let s = client::say_hello_spread(ch.clone(), 200, 8, CALL_TIMEOUT).await;
    assert_eq!(s.errors, 0, "{}", s.table());
    assert_eq!(s.backends.get("a").copied(), Some(200), "{}", s.table());
    until("the mirror saw 200 copies", || shadow.calls() == 200).await;
    assert_eq!(mirrored(&agent, "sent"), 200);
    assert_eq!(mirrored(&agent, "dropped"), 0);
    assert_eq!(mirrored(&agent, "failed"), 0);
    assert_eq!(b.calls(), 0);

    // A request beyond the copy's bound (the 64 KiB replay buffer): the
    // real call goes through whole, its copy is cut off and dropped.
    let payload: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let mut req = tonic::Request::new(EchoRequest {
        payload: payload.clone(),
        message: "big".into(),
        reply_size: 0,
    });
    req.set_timeout(CALL_TIMEOUT);
    let reply = client::echo(ch.clone()).unary(req).await.unwrap().into_inner();
    assert_eq!(reply.payload, payload);
    until("the cut copy is counted", || mirrored(&agent, "dropped") == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shadow.calls(), 200, "the mirror got a request cut short");
    assert_eq!(mirrored(&agent, "sent"), 200);

    // None.
    agent.rewrite(&cfg("0"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = client::say_hello_spread(ch.clone(), 200, 8, CALL_TIMEOUT).await;
    assert_eq!(s.errors, 0, "{}", s.table());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shadow.calls(), 200, "a mirror at 0% got copies");

    // A quarter: Binomial(400, 0.25) = 100 ± 8.7; ±48 is five and a half
    // deviations.
    agent.rewrite(&cfg("25"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = client::say_hello_spread(ch.clone(), 400, 8, CALL_TIMEOUT).await;
    assert_eq!(s.errors, 0, "{}", s.table());
    let sent = mirrored(&agent, "sent") - 200;
    assert!((52..=148).contains(&sent), "{sent} of 400 calls mirrored at 25%");
    until("the mirror saw every copy sent", || shadow.calls() == 200 + sent).await;
}

/// `n` calls one after another: the failures and the slowest call.
async fn one_by_one(ch: &tonic::transport::Channel, n: usize) -> (usize, Duration) {
    let mut g = client::greeter(ch.clone());
    let (mut errors, mut slowest) = (0, Duration::ZERO);
    for i in 0..n {
        let mut req = tonic::Request::new(HelloRequest { name: format!("{i}") });
        req.set_timeout(CALL_TIMEOUT);
        let t = Instant::now();
        if g.say_hello(req).await.is_err() {
            errors += 1;
        }
        slowest = slowest.max(t.elapsed());
    }
    (errors, slowest)
}

/// No call may take this long on loopback (the real backend answers in
/// well under a millisecond; a mirror's connect timeout is seconds).
const BOUND: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_stalled_mirror_neither_fails_nor_slows_the_real_calls() {
    let (a, b) = (TestServer::spawn("a").unwrap(), TestServer::spawn("b").unwrap());
    let stalled = TestServer::spawn_stalling("stalled").unwrap();
    // Nothing listens there: the mirror is stopped.
    let stopped = free_port();
    let (admin, listen) = (free_port(), free_port());
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, listen, a.addr(), b.addr(), &mirror_routes("100"), stopped),
    );
    let ch = client::connect(&agent.target()).await.unwrap();

    let (errors, slowest) = one_by_one(&ch, 100).await;
    assert_eq!(errors, 0);
    assert!(slowest < BOUND, "a call took {slowest:?} with the mirror stopped");
    let s = client::say_hello_spread(ch.clone(), 300, 8, CALL_TIMEOUT).await;
    assert_eq!(s.errors, 0, "{}", s.table());
    // Every copy is accounted for: the few sent before the dead mirror was
    // ejected failed, the rest were dropped.
    until("every copy sent to the stopped mirror failed", || {
        mirrored(&agent, "sent") == mirrored(&agent, "failed")
    })
    .await;
    assert_eq!(mirrored(&agent, "sent") + mirrored(&agent, "dropped"), 400);
    assert!(mirrored(&agent, "dropped") > 0);

    // A mirror that takes the copies and never answers them.
    agent.rewrite(&config(
        admin,
        listen,
        a.addr(),
        b.addr(),
        &mirror_routes("100"),
        stalled.addr(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (mirrored(&agent, "sent"), mirrored(&agent, "dropped"));
    let (errors, slowest) = one_by_one(&ch, 100).await;
    assert_eq!(errors, 0);
    assert!(slowest < BOUND, "a call took {slowest:?} with the mirror stalled");
    let t = Instant::now();
    let s = client::say_hello_spread(ch.clone(), 300, 8, CALL_TIMEOUT).await;
    assert_eq!(s.errors, 0, "{}", s.table());
    assert!(t.elapsed() < Duration::from_secs(5), "300 calls took {:?}", t.elapsed());
    assert!(stalled.calls() > 0, "the stalled mirror got no copy");
    assert!(stalled.in_flight() > 0, "the stalled mirror answered");
    // Copies in flight are bounded: the rest were dropped, none was lost
    // from the count.
    let (sent, dropped) = (
        mirrored(&agent, "sent") - before.0,
        mirrored(&agent, "dropped") - before.1,
    );
    assert_eq!(sent + dropped, 400, "sent {sent} dropped {dropped}");
    assert!(dropped > 0, "400 copies held by a stalled mirror, none dropped");
    assert_eq!(a.calls() + b.calls(), 800);

    // The client leaves: the copies it sent whole stay with the mirror
    // until their time is up (10 s), then count as failed.
    drop(ch);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        stalled.in_flight() > 0,
        "the copies were cancelled with the client's connection"
    );
    let end = Instant::now() + Duration::from_secs(15);
    while stalled.in_flight() > 0 {
        assert!(Instant::now() < end, "copies still open after their time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = mirrored(&agent, "failed");
    assert_eq!(
        failed,
        mirrored(&agent, "sent"),
        "every copy sent but unanswered failed"
    );
}
