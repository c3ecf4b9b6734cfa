//! Per-call balancing through the agent's explicit listener (static mode,
//! `--no-ebpf`), proven with a tonic client that makes every call over ONE
//! channel (one HTTP/2 connection) to tonic backends: even spread, weighted
//! splits, live reload of the YAML file, and an endpoint killed under load.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::time::{Duration, Instant};

use greeter::{client, pb::echo::StreamRequest, server::TestServer};
use grpc_support::{config, count, ep, free_port, spread, stop_under_load, Agent};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_one_connection_spread_over_every_endpoint() {
    let servers: Vec<_> = ["a", "b", "c"].iter().map(|n| TestServer::spawn(n).unwrap()).collect();
    let (admin, listen) = (free_port(), free_port());
    let eps: Vec<_> = servers.iter().map(|s| ep(s.addr(), "v1")).collect();
    let agent = Agent::start(admin, listen, &config(admin, "greeter", listen, &eps, &[]));
    let ch = client::connect(&agent.target()).await.unwrap();

    // One call at a time, then 16 in flight: round-robin either way.
    for concurrency in [1, 16] {
        let s = spread(&ch, 300, concurrency).await;
        assert_eq!(s.errors, 0, "{s:?}");
        for name in ["a", "b", "c"] {
            let n = count(&s, name);
            assert!(
                (90..=110).contains(&n),
                "concurrency {concurrency}: {name} got {n} of 300\n{}",
                s.table()
            );
        }
    }
    // Direct, the same channel would have sent all 600 to one backend;
    // through the agent each backend saw about a third.
    let calls: Vec<u64> = servers.iter().map(TestServer::calls).collect();
    assert_eq!(calls.iter().sum::<u64>(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_90_10_within_2_percent() {
    let (v1, v2) = (TestServer::spawn("v1").unwrap(), TestServer::spawn("v2").unwrap());
    let (admin, listen) = (free_port(), free_port());
    let eps = [ep(v1.addr(), "v1"), ep(v2.addr(), "v2")];
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, "greeter", listen, &eps, &[("v1", 90), ("v2", 10)]),
    );
    let ch = client::connect(&agent.target()).await.unwrap();
    let s = spread(&ch, 5000, 32).await;
    assert_eq!(s.errors, 0, "{s:?}");
    let share = count(&s, "v1") as f64 / 5000.0;
    assert!(
        (0.88..=0.92).contains(&share),
        "v1 got {:.1}% (want 90 ± 2)\n{}",
        share * 100.0,
        s.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_config_applies_to_new_calls_within_a_second() {
    let (v1, v2) = (TestServer::spawn("v1").unwrap(), TestServer::spawn("v2").unwrap());
    let (admin, listen) = (free_port(), free_port());
    let eps = [ep(v1.addr(), "v1"), ep(v2.addr(), "v2")];
    let agent = Agent::start(admin, listen, &config(admin, "greeter", listen, &eps, &[]));
    let ch = client::connect(&agent.target()).await.unwrap();

    let s = spread(&ch, 100, 4).await;
    assert_eq!((count(&s, "v1"), count(&s, "v2")), (50, 50), "{}", s.table());

    // A long stream open across the reloads: the connection must survive.
    let mut stream = client::echo(ch.clone())
        .server_stream(StreamRequest {
            count: 30,
            size: 10,
            interval_ms: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();

    for (w1, w2) in [(0, 100), (100, 0), (90, 10)] {
        agent.rewrite(&config(admin, "greeter", listen, &eps, &[("v1", w1), ("v2", w2)]));
        // Within a second, new calls follow the new weights.
        let changed = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = spread(&ch, 200, 4).await;
        assert_eq!(s.errors, 0, "{s:?}");
        let expect_v1 = 200 * w1 / 100;
        let got = count(&s, "v1") as i64;
        assert!(
            (got - i64::from(expect_v1)).abs() <= 12,
            "{}s after writing {w1}:{w2}, v1 got {got} of 200\n{}",
            changed.elapsed().as_secs_f32(),
            s.table()
        );
    }
    // The stream opened before the reloads ran to its end on its backend.
    let mut n = 1;
    while let Some(r) = stream.next().await {
        let r = r.unwrap();
        assert_eq!(r.backend, first.backend);
        n += 1;
    }
    assert_eq!(n, 30, "the stream lost messages across reloads");

    // A bad file is refused; the last good config (90:10) stays in force.
    agent.rewrite("services:\n  - name: greeter\n    listen: nope\n");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = spread(&ch, 200, 4).await;
    assert_eq!(s.errors, 0, "{s:?}");
    assert!(
        (170..=190).contains(&count(&s, "v1")),
        "after a bad file: {}",
        s.table()
    );
    assert!(
        agent.log().contains("nope"),
        "the refused file is logged with the bad value:\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_killed_under_load_fails_only_its_calls_in_flight() {
    let a = TestServer::spawn("a").unwrap();
    let b = TestServer::spawn("b").unwrap();
    let c = TestServer::spawn("c").unwrap();
    let (admin, listen) = (free_port(), free_port());
    let eps = [ep(a.addr(), "v1"), ep(b.addr(), "v1"), ep(c.addr(), "v1")];
    let agent = Agent::start(admin, listen, &config(admin, "greeter", listen, &eps, &[]));
    let ch = client::connect(&agent.target()).await.unwrap();

    const CONCURRENCY: usize = 16;
    let load = tokio::spawn({
        let ch = ch.clone();
        async move { spread(&ch, 3000, CONCURRENCY).await }
    });
    // Kill b once the load is flowing through it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.calls() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(b.calls() >= 300, "the load never reached b");
    let in_flight_on_b = b.in_flight();
    let b_calls = b.calls();
    b.kill();
    let s = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the load ends")
        .unwrap();

    // Only calls that were on b when it died may fail: at most one per
    // concurrent call slot.
    assert!(
        s.errors <= CONCURRENCY as u64,
        "{} calls failed (b had {in_flight_on_b} in flight when killed)\n{}",
        s.errors,
        s.table()
    );
    assert_eq!(count(&s, "b"), b_calls.min(count(&s, "b")));
    assert!(count(&s, "a") + count(&s, "c") + count(&s, "b") + s.errors == 3000);
    // The survivors took the rest, both of them.
    assert!(count(&s, "a") > 500 && count(&s, "c") > 500, "{}", s.table());

    // And new calls after the kill all succeed.
    let after = spread(&ch, 300, 8).await;
    assert_eq!(after.errors, 0, "after the kill: {after:?}");
    assert_eq!(count(&after, "b"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_shuts_down_gracefully_fails_no_call() {
    let a = TestServer::spawn("a").unwrap();
    let b = TestServer::spawn("b").unwrap();
    let (admin, listen) = (free_port(), free_port());
    let eps = [ep(a.addr(), "v1"), ep(b.addr(), "v1")];
    let agent = Agent::start(admin, listen, &config(admin, "greeter", listen, &eps, &[]));
    let ch = client::connect(&agent.target()).await.unwrap();

    // GOAWAY from b, its open calls finish, then its port closes: calls not
    // yet sent to b go to a, none fails.
    let b_stats = b.stats();
    let s = stop_under_load(&ch, 4000, "b", move || b_stats.calls() >= 300, move || b.stop()).await;
    assert_eq!(s.errors, 0, "a graceful shutdown failed calls:\n{}", s.table());
    assert_eq!(count(&s, "a") + count(&s, "b"), 4000);
}
