//! Locality through the agent's explicit listener (static mode, `--no-ebpf`)
//! with real tonic peers, every call over one channel: a `PreferClose`
//! service keeps its calls in the agent's zone and spills them to the other
//! zone when the local endpoints stop, failing none; an
//! `internal_traffic_policy: Local` service stays on the agent's node and,
//! with no endpoint there, answers UNAVAILABLE saying why; with ring-hash,
//! each key stays on one endpoint of its tier. The kernel
//! redirect's side is in `agent_redirect.rs`.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use greeter::{client, server::TestServer};
use grpc_support::{count, free_port, spread, stop_under_load, Agent, CALL_TIMEOUT};

/// The agent in zone `a` on node `n1`; `eps`: (address, zone, node).
fn config(admin: SocketAddr, listen: SocketAddr, service_keys: &str, eps: &[(SocketAddr, &str, &str)]) -> String {
    let mut s = format!(
        "admin: {admin}\nzone: a\nnode: n1\nservices:\n  - name: greeter\n    listen: {listen}\n{service_keys}    endpoints:\n"
    );
    for (addr, zone, node) in eps {
        writeln!(s, "      - {{ address: \"{addr}\", zone: {zone}, node: {node} }}").unwrap();
    }
    s
}

/// The endpoints' locality tiers as `balancerctl service show` gets them.
fn tiers(agent: &Agent) -> Vec<(String, String)> {
    let r = balancer_testing::http::get(agent.admin, "/api/v1/services/greeter").expect("admin answers");
    let body = r.body;
    assert_eq!(r.status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["locality"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_in_the_zone_and_spill_over_without_a_failed_call_when_it_stops() {
    let a1 = TestServer::spawn("a1").unwrap();
    let a2 = TestServer::spawn("a2").unwrap();
    let b1 = TestServer::spawn("b1").unwrap();
    let b2 = TestServer::spawn("b2").unwrap();
    let (admin, listen) = (free_port(), free_port());
    let eps = [
        (a1.addr(), "a", "n2"),
        (a2.addr(), "a", "n3"),
        (b1.addr(), "b", "n4"),
        (b2.addr(), "b", "n5"),
    ];
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, listen, "    traffic_distribution: PreferClose\n", &eps),
    );
    let ch = client::connect(&agent.target()).await.unwrap();

    // Every call in zone a, spread by round robin there.
    let s = spread(&ch, 400, 8).await;
    assert_eq!(s.errors, 0, "{}", s.table());
    assert_eq!((count(&s, "a1"), count(&s, "a2")), (200, 200), "{}", s.table());
    assert_eq!(b1.calls() + b2.calls(), 0, "a call left the zone:\n{}", s.table());
    let shown = tiers(&agent);
    assert_eq!(
        shown.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["zone", "zone", "other", "other"],
        "{shown:?}"
    );

    // Zone a's endpoints stop (GOAWAY, open calls finish) under load: the
    // calls not yet sent go to zone b, none fails.
    let (a1_stats, a2_stats) = (a1.stats(), a2.stats());
    let s = stop_under_load(
        &ch,
        3000,
        "zone a",
        move || a1_stats.calls() + a2_stats.calls() >= 800,
        move || {
            a1.stop();
            a2.stop();
        },
    )
    .await;
    assert_eq!(s.errors, 0, "calls failed while zone a stopped:\n{}", s.table());
    assert!(count(&s, "b1") + count(&s, "b2") > 0, "{}", s.table());

    // Afterwards, with zone a gone, every call goes to zone b and succeeds.
    let s = spread(&ch, 200, 8).await;
    assert_eq!(s.errors, 0, "{}", s.table());
    assert_eq!((count(&s, "b1"), count(&s, "b2")), (100, 100), "{}", s.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_endpoint_killed_outright_fails_no_new_call() {
    let a1 = TestServer::spawn("a1").unwrap();
    let b1 = TestServer::spawn("b1").unwrap();
    let b2 = TestServer::spawn("b2").unwrap();
    let (admin, listen) = (free_port(), free_port());
    // a1 is on the agent's own node.
    let eps = [(a1.addr(), "a", "n1"), (b1.addr(), "b", "n4"), (b2.addr(), "b", "n5")];
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, listen, "    traffic_distribution: PreferClose\n", &eps),
    );
    let ch = client::connect(&agent.target()).await.unwrap();
    let s = spread(&ch, 100, 4).await;
    assert_eq!((s.errors, count(&s, "a1")), (0, 100), "{}", s.table());
    assert_eq!(tiers(&agent)[0].1, "node");

    // Killed: its connections close at once, its port refuses. Calls
    // between calls: each new one is retried on the other zone.
    a1.kill();
    let s = spread(&ch, 300, 8).await;
    assert_eq!(s.errors, 0, "{}", s.table());
    assert_eq!(count(&s, "b1") + count(&s, "b2"), 300, "{}", s.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_traffic_policy_local_stays_on_the_node_or_says_why_not() {
    let here = TestServer::spawn("here").unwrap();
    let there = TestServer::spawn("there").unwrap();
    let (admin, listen) = (free_port(), free_port());
    let keys = "    internal_traffic_policy: Local\n";
    let eps = [(here.addr(), "a", "n1"), (there.addr(), "a", "n2")];
    let agent = Agent::start(admin, listen, &config(admin, listen, keys, &eps));
    let ch = client::connect(&agent.target()).await.unwrap();
    let s = spread(&ch, 200, 8).await;
    assert_eq!((s.errors, count(&s, "here")), (0, 200), "{}", s.table());
    assert_eq!(there.calls(), 0);
    let shown: Vec<String> = tiers(&agent).into_iter().map(|(_, t)| t).collect();
    assert_eq!(shown, ["node", "off-node"]);

    // Only the other node's endpoint left: every call is UNAVAILABLE, with
    // a message that says why; the other endpoint is never called.
    agent.rewrite(&config(admin, listen, keys, &eps[1..]));
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = spread(&ch, 20, 4).await;
        if s.errors == 20 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s.errors, 20, "{}", s.table());
    assert_eq!(
        s.error_codes.keys().collect::<Vec<_>>(),
        ["Unavailable"],
        "{}",
        s.table()
    );
    let msg = s.first_error.unwrap_or_default();
    assert!(
        msg.contains("internalTrafficPolicy Local and no endpoint on this node `n1`"),
        "{msg}"
    );
    assert_eq!(there.calls(), 0);
}

/// The one backend each user's calls went to (fails if a user's calls
/// went to two).
async fn owners(ch: &tonic::transport::Channel, users: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for u in users {
        let md = [("x-user-id".to_owned(), u.clone())];
        let s = client::say_hello_spread_with(ch.clone(), 6, 2, CALL_TIMEOUT, &md).await;
        assert_eq!(s.errors, 0, "{u}: {}", s.table());
        assert_eq!(
            s.backends.len(),
            1,
            "the calls of {u} went to several endpoints:\n{}",
            s.table()
        );
        out.push(s.backends.keys().next().unwrap().clone());
    }
    out
}

/// Ring-hash in a PreferClose service: each key stays on one endpoint of
/// the agent's zone; when that zone's endpoints drain, every key goes to
/// one endpoint of the other zone, and comes back when they return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_each_key_on_one_close_endpoint_and_spills_whole_keys() {
    let servers: Vec<_> = ["a1", "a2", "b1", "b2"]
        .iter()
        .map(|n| TestServer::spawn(n).unwrap())
        .collect();
    let (admin, listen) = (free_port(), free_port());
    let eps: Vec<_> = servers
        .iter()
        .zip([("a", "n2"), ("a", "n3"), ("b", "n4"), ("b", "n5")])
        .map(|(s, (zone, node))| (s.addr(), zone, node))
        .collect();
    let keys = "    policy: ring-hash\n    hash_header: x-user-id\n    traffic_distribution: PreferClose\n";
    let text = config(admin, listen, keys, &eps);
    let agent = Agent::start(admin, listen, &text);
    let ch = client::connect(&agent.target()).await.unwrap();

    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let before = owners(&ch, &users).await;
    assert!(
        before.iter().all(|b| b.starts_with('a')),
        "a key left the zone: {before:?}"
    );
    assert!(
        before.contains(&"a1".to_owned()) && before.contains(&"a2".to_owned()),
        "{before:?}"
    );
    assert_eq!(owners(&ch, &users).await, before, "a key moved");

    // Zone a's endpoints drain: every key to one endpoint of zone b.
    let mut drained = text.clone();
    for s in &servers[..2] {
        let at = format!("address: \"{}\",", s.addr());
        drained = drained.replace(&at, &format!("{at} state: draining,"));
    }
    agent.rewrite(&drained);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let away = owners(&ch, &users).await;
    assert!(away.iter().all(|b| b.starts_with('b')), "{away:?}");
    assert!(
        away.contains(&"b1".to_owned()) && away.contains(&"b2".to_owned()),
        "{away:?}"
    );
    assert_eq!(owners(&ch, &users).await, away, "a key moved inside zone b");

    // Back: every key returns to its endpoint in zone a.
    agent.rewrite(&text);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(owners(&ch, &users).await, before);
}
