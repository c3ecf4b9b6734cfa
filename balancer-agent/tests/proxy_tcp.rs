//! Connections that are not HTTP/2 are proxied as plain TCP, byte for byte;
//! kernel-redirected connections are served by their original destination
//! and refused without one; shutdown drains, then forces.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_proxy;

use std::{
    sync::{atomic::Ordering::SeqCst, Arc},
    time::{Duration, Instant},
};

use balancer_agent::model::Policy;
use support_proxy::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn redirects(vip: Option<&str>) -> Arc<FakeRedirects> {
    Arc::new(FakeRedirects {
        vip: vip.map(|v| v.parse().unwrap()),
        left_fast_path: Default::default(),
    })
}

async fn echo_roundtrip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await.unwrap();
    };
    let read = async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = within("echo", async { tokio::join!(write, read) }).await;
    got
}

#[tokio::test]
async fn http1_and_tls_bytes_are_proxied_byte_for_byte_off_the_fast_path() {
    let (echo, _t) = tcp_echo(b"").await;
    let r = redirects(Some("10.96.0.10:8000"));
    let p = redirected_proxy(
        &model_addrs(&[(echo, "v1")], Policy::RoundRobin),
        fast_opts(),
        r.clone(),
    )
    .await;

    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut data = b"GET / HTTP/1.1\r\nHost: greeter\r\n\r\n".to_vec();
    data.extend((0..1_000_000u32).map(|i| (i * 7 % 256) as u8));
    assert_eq!(echo_roundtrip(&mut s, &data).await, data);
    assert_eq!(
        r.left_fast_path.load(SeqCst),
        1,
        "plain TCP leaves the sk_msg fast path"
    );

    // A TLS ClientHello starts with 0x16 0x03: also not HTTP/2.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
    assert_eq!(echo_roundtrip(&mut s, &hello).await, hello);
    // Almost the preface, then not: still byte for byte.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let almost = b"PRI * HTTP/2.0\r\n\r\nXX and more";
    assert_eq!(echo_roundtrip(&mut s, almost).await, almost);
    assert_eq!(p.table.snapshot().services[0].counters.l4_connections, 3);
}

#[tokio::test]
async fn server_first_protocols_get_their_greeting_after_the_sniff_timeout() {
    let (echo, _t) = tcp_echo(b"220 ready\r\n").await;
    let p = proxy(&model_addrs(&[(echo, "v1")], Policy::RoundRobin), fast_opts()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut greeting = [0u8; 11];
    within("greeting", s.read_exact(&mut greeting)).await.unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    assert_eq!(echo_roundtrip(&mut s, b"HELO x\r\n").await, b"HELO x\r\n");
}

#[tokio::test]
async fn plain_tcp_skips_unreachable_endpoints() {
    let (echo, _t) = tcp_echo(b"").await;
    let dead = closed_port().await;
    let p = proxy(
        &model_addrs(&[(dead, "v1"), (echo, "v1")], Policy::RoundRobin),
        fast_opts(),
    )
    .await;
    for _ in 0..4 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        assert_eq!(echo_roundtrip(&mut s, b"hello").await, b"hello");
    }
}

#[tokio::test]
async fn redirected_http2_is_balanced_by_its_original_destination() {
    let a = endpoint("a", Behavior::Echo).await;
    let b = endpoint("b", Behavior::Echo).await;
    let r = redirects(Some("10.96.0.10:8000"));
    let p = redirected_proxy(
        &model(&[(&a, "v1"), (&b, "v1")], Policy::RoundRobin),
        fast_opts(),
        r.clone(),
    )
    .await;
    let c = client(p.addr).await;
    let s = spread(&c, 10).await;
    assert_eq!((s.get("a"), s.get("b")), (Some(&5), Some(&5)), "{s:?}");
    assert_eq!(r.left_fast_path.load(SeqCst), 0, "HTTP/2 stays on the fast path");
}

#[tokio::test]
async fn connections_without_a_known_original_destination_are_closed() {
    let a = endpoint("a", Behavior::Echo).await;
    for vip in [None, Some("10.96.0.99:8000")] {
        let p = redirected_proxy(&model(&[(&a, "v1")], Policy::RoundRobin), fast_opts(), redirects(vip)).await;
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let _ = s.write_all(PREFACE).await;
        let mut buf = Vec::new();
        let n = within("closed at once", s.read_to_end(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "{vip:?}: nothing is served");
    }
    assert_eq!(a.calls.load(SeqCst), 0);
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_calls_in_flight_finish() {
    let ep = endpoint("slow", Behavior::Delay(300)).await;
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
    let started = Instant::now();
    within("graceful shutdown", p.proxy.shutdown(Duration::from_secs(5))).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let a = within("in-flight call", in_flight)
        .await
        .unwrap()
        .expect("call finished");
    assert_eq!(a.grpc_status(), Some(0));
    assert_eq!(a.body, b"late");
    // New calls on the old connection are refused after GOAWAY.
    assert!(call(&c, request(SAY_HELLO), b"x").await.is_err());
    assert_eq!(p.proxy.open_connections(), 0);
}

#[tokio::test]
async fn shutdown_forces_what_outlives_the_grace_period() {
    let ep = endpoint("hang", Behavior::Hang).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let c2 = c.clone();
    let stuck = tokio::spawn(async move { call(&c2, request(SAY_HELLO), b"x").await });
    within("call reaches the endpoint", async {
        while ep.calls.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let started = Instant::now();
    within("forced shutdown", p.proxy.shutdown(Duration::from_millis(200))).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(within("stuck call ends", stuck).await.unwrap().is_err());
    within("endpoint's stream cancelled", async {
        while ep.resets.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn explicit_listener_stops_when_its_service_is_removed() {
    let ep = endpoint("a", Behavior::Echo).await;
    let m = model(&[(&ep, "v1")], Policy::RoundRobin);
    let table = balancer_agent::balance::Table::new(&m);
    let proxy = balancer_agent::proxy::Proxy::new(table.clone(), fast_opts());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p2 = proxy.clone();
    let serving = tokio::spawn(async move { p2.serve_explicit(listener, "greeter".into()).await });
    let c = client(addr).await;
    assert_eq!(spread(&c, 2).await.get("a"), Some(&2));
    table.update(&balancer_agent::model::Model::default());
    within("listener stops", serving).await.unwrap();
    // Calls on connections still open get UNAVAILABLE naming the service.
    let a = within("call", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect("answer");
    assert_eq!(a.grpc_status(), Some(14));
    assert!(a.grpc_message().contains("greeter"));
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
