//! Failures: calls an endpoint never handled are retried elsewhere without
//! the client seeing it; outliers are ejected; no endpoint → UNAVAILABLE
//! naming the service; endpoints that die mid-call end only their calls.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_proxy;

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use balancer_agent::model::{EndpointState, Policy};
use support_proxy::*;

#[tokio::test]
async fn connect_refused_is_retried_on_another_endpoint_and_ejected() {
    let dead = closed_port().await;
    let good = endpoint("good", Behavior::Echo).await;
    let m = model_addrs(&[(dead, "v1"), (good.addr, "v1")], Policy::RoundRobin);
    let p = proxy(&m, fast_opts()).await;
    let c = client(p.addr).await;
    let s = spread(&c, 40).await;
    assert_eq!(s.get("good"), Some(&40), "every call succeeds: {s:?}");
    let snap = p.table.snapshot();
    let svc = &snap.services[0];
    let d = svc.endpoints.iter().find(|e| e.address == dead).unwrap();
    assert_eq!(
        d.stats.connect_failures, 5,
        "ejected after 5 consecutive failures: {d:?}"
    );
    assert!(d.stats.ejected);
    assert_eq!(svc.counters.retries, 5);
}

#[tokio::test]
async fn refused_streams_are_retried_with_their_body() {
    let refuse = endpoint("refuse", Behavior::Refuse).await;
    let good = endpoint("good", Behavior::Echo).await;
    let m = model(&[(&refuse, "v1"), (&good, "v1")], Policy::RoundRobin);
    let p = proxy(&m, fast_opts()).await;
    let c = client(p.addr).await;
    let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    for _ in 0..10 {
        let a = within("call", call(&c, request(SAY_HELLO), &body)).await.expect("call");
        assert_eq!(a.grpc_status(), Some(0));
        assert_eq!(a.endpoint(), "good");
        assert_eq!(a.body, body, "the replayed body arrives whole");
    }
    assert!(refuse.calls.load(SeqCst) >= 5);

    // A retried call carries what is left of its deadline.
    let mut rewritten = 0;
    for _ in 0..4 {
        let mut req = request(SAY_HELLO);
        req.headers_mut().insert("grpc-timeout", "5S".parse().unwrap());
        let a = within("call", call(&c, req, b"x")).await.expect("call");
        let t = a.head.headers["x-grpc-timeout-echo"].to_str().unwrap().to_string();
        if t != "5S" {
            let ms: u64 = t.strip_suffix('m').expect("milliseconds").parse().unwrap();
            assert!((1..=5000).contains(&ms), "{t}");
            rewritten += 1;
        }
    }
    assert!(rewritten >= 2, "retries rewrite grpc-timeout");
    let snap = p.table.snapshot();
    let r = snap.services[0]
        .endpoints
        .iter()
        .find(|e| e.address == refuse.addr)
        .unwrap();
    assert_eq!(r.stats.refused as usize, refuse.calls.load(SeqCst));
}

#[tokio::test]
async fn refused_after_more_than_the_replay_buffer_is_not_retried() {
    let refuse = endpoint("refuse", Behavior::Refuse).await;
    let p = proxy(&model(&[(&refuse, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let big = vec![0u8; 1 << 20];
    // The endpoint refuses at once, usually before the body is read; either
    // way the client gets UNAVAILABLE or REFUSED_STREAM, never a hang.
    match within("call", call(&c, request(SAY_HELLO), &big)).await {
        Ok(a) => assert_eq!(a.grpc_status(), Some(14), "{a:?}"),
        Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e:?}"),
    }
}

#[tokio::test]
async fn goaway_above_the_stream_id_is_retried_elsewhere() {
    let (gone, seen, _task) = goaway_endpoint().await;
    let good = endpoint("good", Behavior::Echo).await;
    let m = model_addrs(&[(gone, "v1"), (good.addr, "v1")], Policy::RoundRobin);
    let p = proxy(&m, fast_opts()).await;
    let c = client(p.addr).await;
    let s = spread(&c, 20).await;
    assert_eq!(s.get("good"), Some(&20), "{s:?}");
    assert!(seen.load(SeqCst) >= 1, "the GOAWAY endpoint was tried");
}

#[tokio::test]
async fn endpoint_goaway_drains_its_connection_and_new_calls_use_a_new_one() {
    let ep = endpoint("a", Behavior::Delay(300)).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let c2 = c.clone();
    let in_flight = tokio::spawn(async move { call(&c2, request(SAY_HELLO), b"x").await });
    within("call reaches the endpoint", async {
        while ep.calls.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(ep.conns.load(SeqCst), 1);
    ep.goaway.notify_waiters();
    let a = within("in-flight call", in_flight)
        .await
        .unwrap()
        .expect("in-flight call finishes");
    assert_eq!(a.grpc_status(), Some(0));
    assert_eq!(a.body, b"late");
    for _ in 0..3 {
        let a = within("new call", call(&c, request(SAY_HELLO), b"x"))
            .await
            .expect("answer");
        assert_eq!(a.grpc_status(), Some(0), "{a:?}");
    }
    assert_eq!(ep.conns.load(SeqCst), 2, "new calls went to a new connection");
}

#[tokio::test]
async fn draining_endpoints_take_no_new_calls() {
    let ep = endpoint("a", Behavior::Echo).await;
    let mut m = model(&[(&ep, "v1")], Policy::RoundRobin);
    let p = proxy(&m, fast_opts()).await;
    let c = client(p.addr).await;
    assert_eq!(spread(&c, 5).await.get("a"), Some(&5));
    std::sync::Arc::make_mut(&mut m.services[0]).endpoints[0].state = EndpointState::Draining;
    p.table.update(&m);
    let a = within("call", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect("answer");
    assert_eq!(a.grpc_status(), Some(14), "{a:?}");
    assert_eq!(ep.calls.load(SeqCst), 5);
}

#[tokio::test]
async fn no_endpoint_answers_unavailable_naming_the_service() {
    let p = proxy(&model_addrs(&[], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let a = within("call", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect("answer");
    assert_eq!(a.head.status, 200);
    assert!(a.trailers.is_none(), "trailers-only");
    assert_eq!(a.grpc_status(), Some(14));
    assert!(a.grpc_message().contains("greeter"), "{}", a.grpc_message());

    // Every endpoint unreachable: the same, after the retries.
    let m = model_addrs(
        &[(closed_port().await, "v1"), (closed_port().await, "v1")],
        Policy::RoundRobin,
    );
    p.table.update(&m);
    let a = within("call", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect("answer");
    assert_eq!(a.grpc_status(), Some(14));
    assert!(a.grpc_message().contains("greeter"), "{}", a.grpc_message());
    // What failed, and the kernel's answer once.
    assert!(
        a.grpc_message().contains("connect to 127.0.0.1:"),
        "{}",
        a.grpc_message()
    );
    assert_eq!(
        a.grpc_message().matches("Connection refused").count(),
        1,
        "{}",
        a.grpc_message()
    );
    assert_eq!(p.table.snapshot().services[0].counters.no_endpoint, 2);
}

#[tokio::test]
async fn endpoint_dying_mid_call_fails_only_that_call() {
    let dying = endpoint("dying", Behavior::CloseMidStream).await;
    let good = endpoint("good", Behavior::Echo).await;
    let p = proxy(&model(&[(&dying, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    match within("call on a dying endpoint", call(&c, request(SAY_HELLO), b"x")).await {
        Ok(a) => {
            assert_eq!(a.body, b"partial");
            assert_eq!(a.grpc_status(), Some(14), "{a:?}");
        }
        Err(e) => panic!("expected trailers with UNAVAILABLE, got {e:?}"),
    }
    // The client connection is fine and the next calls work.
    p.table.update(&model(&[(&good, "v1")], Policy::RoundRobin));
    assert_eq!(spread(&c, 3).await.get("good"), Some(&3));
}

#[tokio::test]
async fn unavailable_answers_count_towards_ejection() {
    let sick = endpoint("sick", Behavior::Status(14)).await;
    let good = endpoint("good", Behavior::Echo).await;
    let p = proxy(&model(&[(&sick, "v1"), (&good, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let mut unavailable = 0;
    for _ in 0..40 {
        let a = within("call", call(&c, request(SAY_HELLO), b"x"))
            .await
            .expect("answer");
        if a.grpc_status() == Some(14) {
            unavailable += 1;
        }
    }
    // UNAVAILABLE from an endpoint is its answer (not retried: it may have
    // run the call); after 5 in a row it is ejected.
    assert_eq!(unavailable, 5);
    let snap = p.table.snapshot();
    let s = snap.services[0]
        .endpoints
        .iter()
        .find(|e| e.address == sick.addr)
        .unwrap();
    assert!(s.stats.ejected, "{s:?}");
}

#[tokio::test]
async fn endpoint_that_never_speaks_times_out_into_unavailable() {
    // Accepts TCP but never sends SETTINGS: the handshake times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let mut o = fast_opts();
    o.pool.connect_timeout = Duration::from_millis(200);
    let p = proxy(&model_addrs(&[(addr, "v1")], Policy::RoundRobin), o).await;
    let c = client(p.addr).await;
    let a = within("call", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect("answer");
    assert_eq!(a.grpc_status(), Some(14));
}
