//! Bad peers, frame by frame: garbage, malformed HEADERS, endpoints that
//! answer nonsense. The proxy ends that stream or connection, never hangs,
//! never panics, and keeps serving everyone else.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_proxy;

use std::time::Duration;

use balancer_agent::model::Policy;
use support_proxy::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until EOF or a frame of `kind`; returns that frame's payload.
async fn expect_frame_or_eof(s: &mut tokio::net::TcpStream, kind: u8) -> Option<Vec<u8>> {
    within("frame or EOF", read_until(s, kind)).await.map(|f| f.3)
}

async fn still_serving(p: &TestProxy) {
    let c = client(p.addr).await;
    let a = within("good call after a bad peer", call(&c, request(SAY_HELLO), b"ok"))
        .await
        .expect("call");
    assert_eq!(a.grpc_status(), Some(0));
    assert_eq!(a.body, b"ok");
}

#[tokio::test]
async fn garbage_after_the_preface_closes_the_connection() {
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    // DATA on stream 1 instead of SETTINGS, then noise.
    s.write_all(&frame(DATA, 0, 1, b"abcd")).await.unwrap();
    s.write_all(b"\xde\xad\xbe\xef this is not HTTP/2 at all")
        .await
        .unwrap();
    let goaway = expect_frame_or_eof(&mut s, GOAWAY).await;
    if let Some(p) = goaway {
        let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(code, 1, "PROTOCOL_ERROR");
    }
    let mut rest = Vec::new();
    within("connection closed", s.read_to_end(&mut rest)).await.ok();
    still_serving(&p).await;
}

#[tokio::test]
async fn undecodable_headers_end_the_connection_with_goaway() {
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let mut s = raw_client(p.addr).await;
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, BAD_HPACK))
        .await
        .unwrap();
    let payload = expect_frame_or_eof(&mut s, GOAWAY).await.expect("GOAWAY");
    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    assert!(
        code == 9 || code == 1,
        "COMPRESSION_ERROR or PROTOCOL_ERROR, got {code}"
    );
    assert_eq!(ep.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    still_serving(&p).await;
}

#[tokio::test]
async fn malformed_request_resets_only_its_stream() {
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let mut s = raw_client(p.addr).await;
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, NO_PATH_HPACK))
        .await
        .unwrap();
    let (_, _, id, payload) = within("RST_STREAM", read_until(&mut s, RST_STREAM))
        .await
        .expect("RST_STREAM");
    assert_eq!(id, 1);
    assert_eq!(
        u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
        1,
        "PROTOCOL_ERROR"
    );
    // The connection lives on: a good request on stream 3 is answered.
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, GOOD_REQUEST_HPACK))
        .await
        .unwrap();
    let (_, _, id, _) = within("response HEADERS", read_until(&mut s, HEADERS))
        .await
        .expect("HEADERS");
    assert_eq!(id, 3);
}

#[tokio::test]
async fn rapid_resets_do_not_wedge_the_proxy() {
    let ep = endpoint("hang", Behavior::Hang).await;
    let good = endpoint("good", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let mut s = raw_client(p.addr).await;
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS, id, GOOD_REQUEST_HPACK));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = within("burst", s.write_all(&burst)).await;
    // Whatever h2 decides about this peer (GOAWAY ENHANCE_YOUR_CALM or not),
    // the proxy keeps serving others.
    p.table.update(&model(&[(&good, "v1")], Policy::RoundRobin));
    still_serving(&p).await;
    drop(s);
    within("in-flight back to zero", async {
        loop {
            let snap = p.table.snapshot();
            if snap.services[0].in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn endpoint_sending_garbage_gets_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let good = endpoint("good", Behavior::Echo).await;
    let p = proxy(&model_addrs(&[(addr, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let a = within("call", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect("answer");
    assert_eq!(a.grpc_status(), Some(14), "{a:?}");
    assert!(a.grpc_message().contains("greeter"));
    // With a good endpoint beside it, calls succeed (the garbage one counts
    // as a connect failure and the call is retried).
    p.table
        .update(&model_addrs(&[(addr, "v1"), (good.addr, "v1")], Policy::RoundRobin));
    let s = spread(&c, 10).await;
    assert_eq!(s.get("good"), Some(&10));
}

#[tokio::test]
async fn endpoint_sending_undecodable_headers_fails_the_call_not_the_proxy() {
    let (addr, seen, _task) = scripted_endpoint(|id| frame(HEADERS, END_HEADERS, id, BAD_HPACK)).await;
    let p = proxy(&model_addrs(&[(addr, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    for _ in 0..3 {
        let a = within("call", call(&c, request(SAY_HELLO), b"x"))
            .await
            .expect("answer");
        assert_eq!(a.grpc_status(), Some(14), "{a:?}");
    }
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn endpoint_answering_with_a_bare_rst_is_forwarded() {
    let (addr, _seen, _task) = scripted_endpoint(|id| frame(RST_STREAM, 0, id, &2u32.to_be_bytes())).await;
    let p = proxy(&model_addrs(&[(addr, "v1")], Policy::RoundRobin), fast_opts()).await;
    let c = client(p.addr).await;
    let e = within("call", call(&c, request(SAY_HELLO), b"x"))
        .await
        .expect_err("reset");
    assert_eq!(e.reason(), Some(h2::Reason::INTERNAL_ERROR));
}
