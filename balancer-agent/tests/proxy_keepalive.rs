//! HTTP/2 keepalive: a client that stops answering PINGs (a pod that
//! vanished without closing its connections) is closed after the timeout, a
//! live client never is; an endpoint connection whose PINGs go unanswered
//! leaves the pool.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_proxy;

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use balancer_agent::{model::Policy, proxy::ProxyOptions};
use support_proxy::*;
use tokio::time::Instant;

fn keepalive_opts() -> ProxyOptions {
    ProxyOptions {
        client_keepalive_interval: Duration::from_millis(200),
        client_keepalive_timeout: Duration::from_millis(300),
        ..fast_opts()
    }
}

async fn open_connections_become(p: &TestProxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.proxy.open_connections() != n {
        assert!(
            Instant::now() < deadline,
            "open connections stayed {} (want {n})",
            p.proxy.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_pings_unanswered_is_closed() {
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), keepalive_opts()).await;
    let mut s = raw_client(p.addr).await;
    open_connections_become(&p, 1).await;
    // The agent pings the silent client...
    let ping = within("a PING from the agent", read_until(&mut s, PING)).await;
    let (_, flags, stream, payload) = ping.expect("PING before the connection closed");
    assert_eq!((flags & ACK, stream, payload.len()), (0, 0, 8));
    // ...and, with no answer, closes the connection.
    let started = Instant::now();
    let rest = within("the connection closing", async {
        while let Some(f) = read_frame(&mut s).await {
            assert_ne!(f.0, DATA, "nothing but control frames expected");
        }
    });
    rest.await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed {:?} after the PING",
        started.elapsed()
    );
    open_connections_become(&p, 0).await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), keepalive_opts()).await;
    // The h2 client answers PINGs on its own.
    let c = client(p.addr).await;
    let a = within("first call", call(&c, request(SAY_HELLO), b"one"))
        .await
        .unwrap();
    assert_eq!(a.grpc_status(), Some(0));
    // Many keepalive intervals and timeouts later, the same connection
    // still carries calls.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(p.proxy.open_connections(), 1);
    let a = within("call after idling", call(&c, request(SAY_HELLO), b"two"))
        .await
        .unwrap();
    assert_eq!(a.grpc_status(), Some(0));
    assert_eq!(a.body, b"two");
    assert_eq!(p.proxy.open_connections(), 1);
}

/// RST_STREAM(REFUSED_STREAM) for a stream.
fn refuse(stream: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &7u32.to_be_bytes())
}

#[tokio::test]
async fn an_endpoint_that_stops_answering_pings_loses_its_connection() {
    // The endpoint answers the PING that proves a new connection, then no more.
    let ep = scripted_endpoint_with(refuse, 1).await;
    let mut opts = fast_opts();
    opts.pool.keepalive_interval = Duration::from_millis(200);
    opts.pool.keepalive_timeout = Duration::from_millis(300);
    let p = proxy(&model_addrs(&[(ep.addr, "v1")], Policy::RoundRobin), opts).await;
    let c = client(p.addr).await;
    // A call opens the pooled connection (the endpoint refuses the stream).
    let a = within("a refused call", call(&c, request(SAY_HELLO), b"x"))
        .await
        .unwrap();
    assert_eq!(a.grpc_status(), Some(14), "UNAVAILABLE");
    assert!(ep.seen.load(SeqCst) >= 1);
    assert_eq!(ep.closed.load(SeqCst), 0);
    // Its keepalive PINGs go unanswered: the agent closes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ep.closed.load(SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the silent endpoint's connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
