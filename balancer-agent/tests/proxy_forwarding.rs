//! The demultiplexer forwards every stream on its own: headers, data,
//! trailers and metadata, calls spread per call, weights changed live,
//! flow control end to end, cancellation both ways, deadlines.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_proxy;

use std::{
    sync::{atomic::Ordering::SeqCst, Arc},
    time::Duration,
};

use balancer_agent::model::Policy;
use bytes::Bytes;
use h2::Reason;
use support_proxy::*;

#[tokio::test]
async fn forwards_headers_body_trailers_and_metadata() {
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let mut req = request(SAY_HELLO);
    req.headers_mut().insert("x-meta", "value-1".parse().unwrap());
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let a = within("echo call", call(&c, req, &body)).await.expect("call");
    assert_eq!(a.head.status, 200);
    assert_eq!(a.head.headers["x-meta-echo"], "value-1");
    assert_eq!(a.head.headers["content-type"], "application/grpc");
    assert_eq!(a.body, body, "body forwarded byte for byte");
    let t = a.trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-trailer"], "done");

    // Trailers-only and error statuses from the endpoint pass unchanged.
    let ep5 = endpoint("e", Behavior::Status(5)).await;
    p.table.update(&model(&[(&ep5, "v1")], Policy::RoundRobin));
    let a = within("status call", call(&c, request(SAY_HELLO), b""))
        .await
        .expect("call");
    assert_eq!(a.grpc_status(), Some(5));
    assert_eq!(a.grpc_message(), "from endpoint");
    let snap = p.table.snapshot();
    assert_eq!(snap.services[0].endpoints[0].stats.statuses.get("5"), Some(&1));
}

#[tokio::test]
async fn calls_on_one_connection_spread_over_endpoints() {
    let eps = [
        endpoint("a", Behavior::Echo).await,
        endpoint("b", Behavior::Echo).await,
        endpoint("c", Behavior::Echo).await,
    ];
    let m = model(&[(&eps[0], "v1"), (&eps[1], "v1"), (&eps[2], "v2")], Policy::RoundRobin);
    let p = proxy(&m, fast_opts()).await;
    let c = client(p.addr).await;
    let s = spread(&c, 300).await;
    assert_eq!(s.get("a"), Some(&100), "{s:?}");
    assert_eq!(s.get("b"), Some(&100), "{s:?}");
    assert_eq!(s.get("c"), Some(&100), "{s:?}");

    // Sequential calls leave every endpoint idle: least-request breaks the
    // ties at random, so all get calls. Peak-EWMA follows latency, which a
    // busy test machine makes uneven: every call still succeeds.
    p.table.update(&model(
        &[(&eps[0], "v1"), (&eps[1], "v1"), (&eps[2], "v2")],
        Policy::LeastRequest,
    ));
    let s = spread(&c, 150).await;
    assert_eq!(s.len(), 3, "least-request: every endpoint gets calls: {s:?}");
    p.table.update(&model(
        &[(&eps[0], "v1"), (&eps[1], "v1"), (&eps[2], "v2")],
        Policy::PeakEwma,
    ));
    let s = spread(&c, 150).await;
    assert_eq!(s.values().sum::<usize>(), 150, "{s:?}");
    // A few pooled connections per endpoint, not one per call.
    let snap = p.table.snapshot();
    for e in &snap.services[0].endpoints {
        assert!((1..=2).contains(&e.stats.upstream_connections), "{e:?}");
        assert_eq!(e.stats.in_flight, 0);
    }
}

#[tokio::test]
async fn weights_change_live_on_an_open_connection() {
    let v1 = endpoint("v1", Behavior::Echo).await;
    let v2 = endpoint("v2", Behavior::Echo).await;
    let mut m = model(&[(&v1, "v1"), (&v2, "v2")], Policy::RoundRobin);
    std::sync::Arc::make_mut(&mut m.services[0]).routes = vec![split_route(90, 10)];
    let p = proxy(&m, fast_opts()).await;
    let c = client(p.addr).await;
    let s = spread(&c, 200).await;
    assert_eq!((s.get("v1"), s.get("v2")), (Some(&180), Some(&20)), "{s:?}");

    std::sync::Arc::make_mut(&mut m.services[0]).routes = vec![split_route(0, 100)];
    p.table.update(&m);
    let s = spread(&c, 50).await;
    assert_eq!(s.get("v2"), Some(&50), "{s:?}");

    std::sync::Arc::make_mut(&mut m.services[0]).routes = vec![split_route(50, 50)];
    p.table.update(&m);
    let s = spread(&c, 100).await;
    assert_eq!((s.get("v1"), s.get("v2")), (Some(&50), Some(&50)), "{s:?}");
}

#[tokio::test]
async fn large_request_stream_passes_in_bounded_memory() {
    let ep = endpoint("count", Behavior::SlowCount).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    const TOTAL: usize = 100 << 20;
    let chunk = Bytes::from(vec![1u8; 256 << 10]);
    let received = Arc::clone(&ep.received);
    let run = async {
        let mut send = c.clone().ready().await.expect("ready");
        let (resp, mut stream) = send.send_request(request(SAY_HELLO), false).expect("send");
        let mut sent = 0usize;
        let mut max_ahead = 0u64;
        while sent < TOTAL {
            send_all(&mut stream, chunk.clone()).await.expect("send data");
            sent += chunk.len();
            let ahead = sent as u64 - received.load(SeqCst);
            max_ahead = max_ahead.max(ahead);
        }
        stream.send_data(Bytes::new(), true).expect("end");
        let resp = resp.await.expect("response");
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(d) = body.data().await {
            out.extend_from_slice(&d.expect("data"));
        }
        (String::from_utf8(out).expect("utf8"), max_ahead)
    };
    let (count, max_ahead) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("100 MB in time");
    assert_eq!(count, TOTAL.to_string());
    // The client can only be ahead of the endpoint by the windows on the
    // way (1 MiB per stream per hop plus one chunk), never by the stream.
    assert!(
        max_ahead < 8 << 20,
        "client got {max_ahead} bytes ahead of the endpoint"
    );
}

#[tokio::test]
async fn large_response_messages_pass() {
    let ep = endpoint("big", Behavior::Big(8 << 20)).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let a = within("8 MB response", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect("call");
    assert_eq!(a.body.len(), 8 << 20);
    assert!(a.body.iter().all(|b| *b == 7));
    assert_eq!(a.grpc_status(), Some(0));
}

#[tokio::test]
async fn client_cancel_resets_the_upstream_stream() {
    let ep = endpoint("hang", Behavior::Hang).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let mut send = c.clone().ready().await.expect("ready");
    let (_resp, mut stream) = send.send_request(request(SAY_HELLO), false).expect("send");
    stream
        .send_data(Bytes::from_static(b"partial request"), false)
        .expect("data");
    within("endpoint sees the call", async {
        while ep.calls.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stream.send_reset(Reason::CANCEL);
    within("endpoint sees the reset", async {
        while ep.resets.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    within("in-flight back to zero", async {
        while p.table.snapshot().services[0].in_flight() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // A client that cancels after half-closing its side is noticed too.
    let (_resp, mut stream) = send.send_request(request(SAY_HELLO), true).expect("send");
    within("second call reaches the endpoint", async {
        while ep.calls.load(SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stream.send_reset(Reason::CANCEL);
    within("endpoint sees the second reset", async {
        while ep.resets.load(SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn endpoint_resets_reach_the_client() {
    let ep = endpoint("rst", Behavior::ResetAfterHeaders).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let err = within("reset after headers", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect_err("reset");
    assert_eq!(err.reason(), Some(Reason::INTERNAL_ERROR), "{err:?}");

    let ep = endpoint("rst0", Behavior::ResetBeforeHeaders(Reason::CANCEL)).await;
    p.table.update(&model(&[(&ep, "v1")], Policy::RoundRobin));
    let err = within("reset before headers", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect_err("reset");
    assert_eq!(err.reason(), Some(Reason::CANCEL), "{err:?}");
}

#[tokio::test]
async fn grpc_timeout_ends_the_call_with_deadline_exceeded() {
    let ep = endpoint("hang", Behavior::Hang).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let mut req = request(SAY_HELLO);
    req.headers_mut().insert("grpc-timeout", "200m".parse().unwrap());
    let started = std::time::Instant::now();
    let a = within("deadline", call(&c, req, b"x")).await.expect("answer");
    assert_eq!(a.grpc_status(), Some(4), "{a:?}");
    assert!(started.elapsed() >= Duration::from_millis(190));
    assert!(started.elapsed() < Duration::from_secs(3));
    within("endpoint's stream cancelled", async {
        while ep.resets.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // After response headers: the trailers carry DEADLINE_EXCEEDED.
    let ep = endpoint("half", Behavior::HeadersThenHang).await;
    p.table.update(&model(&[(&ep, "v1")], Policy::RoundRobin));
    let mut req = request(SAY_HELLO);
    req.headers_mut().insert("grpc-timeout", "300m".parse().unwrap());
    let a = within("deadline after headers", call(&c, req, b"x"))
        .await
        .expect("answer");
    assert_eq!(a.head.headers["x-endpoint"], "half");
    assert_eq!(a.body, b"partial");
    assert_eq!(a.grpc_status(), Some(4), "{a:?}");
    within("endpoint's stream cancelled", async {
        while ep.resets.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn calls_within_their_deadline_are_untouched() {
    let ep = endpoint("late", Behavior::Delay(100)).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let mut req = request(SAY_HELLO);
    req.headers_mut().insert("grpc-timeout", "5S".parse().unwrap());
    let a = within("call", call(&c, req, b"x")).await.expect("answer");
    assert_eq!(a.grpc_status(), Some(0));
    assert_eq!(a.body, b"late");
}
