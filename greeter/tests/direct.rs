//! The test peers themselves, direct (no balancer): what the conformance
//! tests through the agent compare against.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use std::time::Duration;

use greeter::{
    client,
    pb::echo::{EchoRequest, SleepRequest, StatusRequest, StreamRequest},
    server::TestServer,
};
use tokio_stream::StreamExt;

#[tokio::test]
async fn one_channel_direct_hits_one_backend() {
    let a = TestServer::spawn("a").unwrap();
    let ch = client::connect(&a.addr().to_string()).await.unwrap();
    let spread = client::say_hello_spread(ch, 50, 4, Duration::from_secs(5)).await;
    assert_eq!(spread.errors, 0, "{spread:?}");
    assert_eq!(spread.backends.get("a"), Some(&50));
    assert_eq!(a.calls(), 50);
    let table = spread.table();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["a", "50", "100.0%"], "{table}");
}

#[tokio::test]
async fn echo_covers_every_call_shape() {
    let s = TestServer::spawn("e").unwrap();
    let ch = client::connect(&s.addr().to_string()).await.unwrap();
    let mut echo = client::echo(ch);

    let mut req = tonic::Request::new(EchoRequest {
        payload: vec![7; 5 << 20],
        ..Default::default()
    });
    req.metadata_mut().insert("x-trace", "abc".parse().unwrap());
    let resp = echo.unary(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-trace").unwrap(), "abc");
    let r = resp.into_inner();
    assert_eq!((r.payload.len(), r.backend.as_str()), (5 << 20, "e"));
    assert_eq!(r.metadata.get("x-trace").map(String::as_str), Some("abc"));

    let req = StreamRequest {
        count: 5,
        size: 10,
        interval_ms: 0,
    };
    let replies = client::server_stream_all(&mut echo, req).await.unwrap();
    assert_eq!(replies.iter().map(|r| r.count).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);

    let up = tokio_stream::iter((0..4).map(|_| EchoRequest {
        payload: vec![1; 100],
        ..Default::default()
    }));
    let r = echo.client_stream(up).await.unwrap().into_inner();
    assert_eq!((r.count, r.bytes), (4, 400));

    let up = tokio_stream::iter((0..3).map(|i| EchoRequest {
        message: format!("m{i}"),
        ..Default::default()
    }));
    let back: Vec<_> = echo
        .bidi_stream(up)
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );

    let st = echo
        .fail(StatusRequest {
            code: 9,
            message: "not now".into(),
            trailers: [("x-why".to_string(), "because".to_string())].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition);
    assert_eq!(st.message(), "not now");
    assert_eq!(st.metadata().get("x-why").unwrap(), "because");

    let mut req = tonic::Request::new(SleepRequest { millis: 2000 });
    req.set_timeout(Duration::from_millis(100));
    // tonic's server reports its expired `grpc-timeout` as CANCELLED.
    let code = echo.sleep(req).await.unwrap_err().code();
    assert!(
        matches!(code, tonic::Code::Cancelled | tonic::Code::DeadlineExceeded),
        "{code:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.in_flight(), 0, "the expired call ended on the server");
}

#[tokio::test]
async fn a_killed_server_fails_its_calls_in_flight() {
    let s = TestServer::spawn("k").unwrap();
    let ch = client::connect(&s.addr().to_string()).await.unwrap();
    let mut echo = client::echo(ch);
    let call = tokio::spawn(async move { echo.sleep(SleepRequest { millis: 10_000 }).await });
    while s.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = std::time::Instant::now();
    s.kill();
    let err = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    // tonic reports a connection that broke under a call as UNKNOWN.
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}
