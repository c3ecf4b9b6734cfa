//! Consistent hashing and fault injection through the agent's explicit
//! listener (static mode, `--no-ebpf`), with tonic clients and backends:
//! a header keeps its calls on one endpoint while endpoints come and go;
//! injected aborts are answered by the agent (no endpoint sees them) and
//! injected delays hold only the delayed calls of a connection.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use greeter::{
    client::{self, Spread},
    pb::{echo::EchoRequest, helloworld::HelloRequest},
    server::TestServer,
};
use grpc_support::{config, ep, free_port, Agent, Ep};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn ring_hash(admin: std::net::SocketAddr, listen: std::net::SocketAddr, eps: &[Ep]) -> String {
    config(admin, "greeter", listen, eps, &[])
        .replace("policy: round-robin", "policy: ring-hash\n    hash_header: x-user-id")
}

fn with_fault(base: String, fault: &str) -> String {
    format!("{base}    fault:\n{fault}")
}

async fn calls_as(ch: &tonic::transport::Channel, user: &str, calls: u64) -> Spread {
    let md = [("x-user-id".to_owned(), user.to_owned())];
    client::say_hello_spread_with(ch.clone(), calls, 4, CALL_TIMEOUT, &md).await
}

/// The one backend each user's calls went to (fails if a user's calls
/// went to two).
async fn owners(ch: &tonic::transport::Channel, users: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for u in users {
        let s = calls_as(ch, u, 10).await;
        assert_eq!(s.errors, 0, "{u}: {s:?}");
        assert_eq!(
            s.backends.len(),
            1,
            "the calls of {u} went to several endpoints:\n{}",
            s.table()
        );
        out.insert(u.clone(), s.backends.keys().next().unwrap().clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_header_keeps_each_key_on_one_endpoint_and_moves_only_the_removed_ones_keys() {
    let servers: Vec<_> = ["a", "b", "c"].iter().map(|n| TestServer::spawn(n).unwrap()).collect();
    let (admin, listen) = (free_port(), free_port());
    let eps: Vec<_> = servers.iter().map(|s| ep(s.addr(), "v1")).collect();
    let agent = Agent::start(admin, listen, &ring_hash(admin, listen, &eps));
    let ch = client::connect(&agent.target()).await.unwrap();

    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let before = owners(&ch, &users).await;
    let used: BTreeSet<&String> = before.values().collect();
    assert!(used.len() >= 2, "30 keys all on one endpoint: {before:?}");
    // Asked again, every key lands where it did.
    assert_eq!(owners(&ch, &users).await, before);

    // Calls without the header: round-robin.
    let s = client::say_hello_spread(ch.clone(), 300, 4, CALL_TIMEOUT).await;
    assert_eq!(s.errors, 0, "{s:?}");
    for name in ["a", "b", "c"] {
        assert_eq!(s.backends.get(name).copied(), Some(100), "{}", s.table());
    }

    // The endpoint that owns user-0 leaves: only its keys move.
    let gone = before["user-0"].clone();
    let rest: Vec<_> = servers
        .iter()
        .filter(|s| s.name() != gone)
        .map(|s| ep(s.addr(), "v1"))
        .collect();
    agent.rewrite(&ring_hash(admin, listen, &rest));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = owners(&ch, &users).await;
    for u in &users {
        if before[u] == gone {
            assert_ne!(after[u], gone, "{u} still on the removed endpoint");
        } else {
            assert_eq!(after[u], before[u], "{u} moved though its endpoint stayed");
        }
    }
    // It comes back: its keys come back to it.
    agent.rewrite(&ring_hash(admin, listen, &eps));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(owners(&ch, &users).await, before);
}

/// `balancer_faults_injected_total` for `fault`, from the admin server.
fn injected(agent: &Agent, fault: &str) -> Option<f64> {
    let body = balancer_testing::http::get(agent.admin, "/metrics").ok()?.body;
    let want = format!("balancer_faults_injected_total{{service=\"greeter\",fault=\"{fault}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_of_every_call_is_answered_by_the_agent_with_the_chosen_status() {
    let servers: Vec<_> = ["a", "b"].iter().map(|n| TestServer::spawn(n).unwrap()).collect();
    let (admin, listen) = (free_port(), free_port());
    let eps: Vec<_> = servers.iter().map(|s| ep(s.addr(), "v1")).collect();
    let fault = "      abort: { status: RESOURCE_EXHAUSTED, percent: 100, message: \"chaos test\" }\n";
    let cfg = with_fault(config(admin, "greeter", listen, &eps, &[]), fault);
    let agent = Agent::start_with(admin, listen, &cfg, &["--access-log"]);
    let ch = client::connect(&agent.target()).await.unwrap();

    let mut greeter = client::greeter(ch.clone());
    let mut req = tonic::Request::new(HelloRequest { name: "x".into() });
    req.set_timeout(CALL_TIMEOUT);
    let err = greeter.say_hello(req).await.expect_err("an injected abort");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(err.message(), "chaos test");

    let s = client::say_hello_spread(ch.clone(), 199, 8, CALL_TIMEOUT).await;
    assert_eq!(s.errors, 199, "{}", s.table());
    assert_eq!(s.error_codes.get("ResourceExhausted").copied(), Some(199), "{s:?}");
    let seen: u64 = servers.iter().map(TestServer::calls).sum();
    assert_eq!(seen, 0, "an endpoint saw an aborted call");
    assert_eq!(injected(&agent, "abort"), Some(200.0));
    assert_eq!(injected(&agent, "delay"), Some(0.0));
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("balancer::access"))
        .unwrap_or_else(|| panic!("no access log line:\n{log}"));
    assert!(line.contains("injected=\"abort\""), "{line}");
    assert!(line.contains("grpc_status=8"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_of_half_the_calls_fails_about_half() {
    let server = TestServer::spawn("a").unwrap();
    let (admin, listen) = (free_port(), free_port());
    let fault = "      abort: { status: UNAVAILABLE, percent: 50 }\n";
    let cfg = with_fault(config(admin, "greeter", listen, &[ep(server.addr(), "v1")], &[]), fault);
    let agent = Agent::start(admin, listen, &cfg);
    let ch = client::connect(&agent.target()).await.unwrap();

    const N: u64 = 400;
    let s = client::say_hello_spread(ch.clone(), N, 8, CALL_TIMEOUT).await;
    // Binomial(400, 0.5): 200 ± 20 is one standard deviation; ±60 is six.
    assert!(
        (140..=260).contains(&s.errors),
        "{} of {N} aborted\n{}",
        s.errors,
        s.table()
    );
    assert_eq!(s.error_codes.get("Unavailable").copied(), Some(s.errors), "{s:?}");
    assert_eq!(server.calls(), s.ok, "the endpoint saw exactly the calls not aborted");
    assert_eq!(injected(&agent, "abort"), Some(s.errors as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_holds_only_the_delayed_calls_of_a_connection() {
    let server = TestServer::spawn("a").unwrap();
    let (admin, listen) = (free_port(), free_port());
    const DELAY: Duration = Duration::from_millis(600);
    let fault = "      delay: { duration: 600ms, percent: 50 }\n";
    let cfg = with_fault(config(admin, "greeter", listen, &[ep(server.addr(), "v1")], &[]), fault);
    let agent = Agent::start(admin, listen, &cfg);
    // One channel: every call below shares one HTTP/2 connection.
    let ch = client::connect(&agent.target()).await.unwrap();

    // All calls at once: the delayed ones are held while the others pass.
    const N: usize = 60;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let mut g = client::greeter(ch.clone());
        tasks.spawn(async move {
            let t = Instant::now();
            let mut req = tonic::Request::new(HelloRequest { name: format!("{i}") });
            req.set_timeout(CALL_TIMEOUT);
            let r = g.say_hello(req).await;
            (r.map(|_| ()), t.elapsed(), start.elapsed())
        });
    }
    let mut slow = Vec::new();
    let mut fast = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (r, took, ended_at) = done.unwrap();
        r.unwrap();
        if took >= DELAY {
            slow.push(took);
        } else {
            fast.push((took, ended_at));
        }
    }
    // About half delayed (Binomial(60, 0.5): within six deviations).
    assert!((7..=53).contains(&slow.len()), "{} of {N} delayed", slow.len());
    // The others were not held behind them: each ended well before the
    // delay, while delayed calls of the same connection were waiting.
    for (took, ended_at) in &fast {
        assert!(*took < DELAY / 2, "a call not delayed took {took:?}");
        assert!(
            *ended_at < DELAY,
            "a call not delayed ended {ended_at:?} after the start"
        );
    }
    assert!(slow.iter().all(|d| *d < DELAY * 3), "{slow:?}");
    assert_eq!(server.calls(), N as u64, "delayed calls reach the endpoint");
    assert_eq!(injected(&agent, "delay"), Some(slow.len() as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_call_keeps_its_whole_request_and_its_deadline() {
    let server = TestServer::spawn("a").unwrap();
    let (admin, listen) = (free_port(), free_port());
    let fault = "      delay: { duration: 300ms }\n";
    let cfg = with_fault(config(admin, "greeter", listen, &[ep(server.addr(), "v1")], &[]), fault);
    let agent = Agent::start(admin, listen, &cfg);
    let ch = client::connect(&agent.target()).await.unwrap();
    let mut echo = client::echo(ch.clone());

    // A request larger than the replay buffer (64 KiB), sent while the
    // call is held: it reaches the endpoint whole.
    let payload: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let mut req = tonic::Request::new(EchoRequest {
        payload: payload.clone(),
        message: "big".into(),
        reply_size: 0,
    });
    req.set_timeout(CALL_TIMEOUT);
    let t = Instant::now();
    let reply = echo.unary(req).await.unwrap().into_inner();
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    assert_eq!(reply.payload, payload, "the held request arrived changed");

    // A deadline shorter than the delay: the call ends at its deadline
    // (tonic's own timer and the agent's race: CANCELLED or
    // DEADLINE_EXCEEDED) and the endpoint never sees it.
    let before = server.calls();
    let mut req = tonic::Request::new(HelloRequest { name: "x".into() });
    req.set_timeout(Duration::from_millis(100));
    let err = client::greeter(ch.clone())
        .say_hello(req)
        .await
        .expect_err("past its deadline");
    assert!(
        matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.calls(), before, "a call past its deadline reached the endpoint");
}
