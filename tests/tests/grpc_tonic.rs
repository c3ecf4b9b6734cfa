//! gRPC conformance through the agent's explicit listener (static mode,
//! `--no-ebpf`): a tonic client ↔ balancer-agent ↔ tonic servers.
//!
//! Every call shape, message sizes beyond gRPC's 4 MiB default, metadata
//! both ways, every status code with its message and trailers, deadlines,
//! cancellation, a service with no endpoints, and the plain-TCP fallback.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use greeter::{
    client,
    pb::echo::{EchoRequest, SleepRequest, StatusRequest, StreamRequest},
    server::TestServer,
};
use grpc_support::{config, ep, free_port, Agent, TcpEcho};
use tokio_stream::StreamExt;
use tonic::Code;

/// An agent with one service over `servers`.
fn agent_for(servers: &[&TestServer]) -> Agent {
    let (admin, listen) = (free_port(), free_port());
    let eps: Vec<_> = servers.iter().map(|s| ep(s.addr(), s.name())).collect();
    Agent::start(admin, listen, &config(admin, "echo", listen, &eps, &[]))
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_with_metadata() {
    let (a, b) = (TestServer::spawn("a").unwrap(), TestServer::spawn("b").unwrap());
    let agent = agent_for(&[&a, &b]);
    let mut echo = client::echo(client::connect(&agent.target()).await.unwrap());

    // Unary, with request metadata echoed back as response headers.
    let mut req = tonic::Request::new(EchoRequest {
        payload: b"ping".to_vec(),
        message: "m".into(),
        reply_size: 0,
    });
    req.metadata_mut().insert("x-request-id", "r-17".parse().unwrap());
    req.metadata_mut().insert_bin(
        "x-blob-bin",
        tonic::metadata::MetadataValue::from_bytes(&[0, 1, 2, 255]),
    );
    let resp = echo.unary(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "r-17");
    let r = resp.into_inner();
    assert_eq!((r.payload.as_slice(), r.message.as_str()), (&b"ping"[..], "m"));
    assert_eq!(r.metadata.get("x-request-id").map(String::as_str), Some("r-17"));
    assert!(["a", "b"].contains(&r.backend.as_str()));

    // Server streaming: every message, in order.
    let req = StreamRequest {
        count: 50,
        size: 1000,
        interval_ms: 0,
    };
    let replies = client::server_stream_all(&mut echo, req).await.unwrap();
    assert_eq!(replies.len(), 50);
    assert!(replies
        .iter()
        .enumerate()
        .all(|(i, r)| r.count == i as u64 && r.payload.len() == 1000));

    // Client streaming: 200 messages, counted by the server.
    let up = tokio_stream::iter((0..200).map(|_| EchoRequest {
        payload: vec![3; 1024],
        ..Default::default()
    }));
    let mut req = tonic::Request::new(up);
    req.metadata_mut().insert("x-stream", "up".parse().unwrap());
    let resp = echo.client_stream(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-stream").unwrap(), "up");
    let r = resp.into_inner();
    assert_eq!((r.count, r.bytes), (200, 200 * 1024));

    // Bidi ping-pong: each reply arrives before the next request is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let mut replies = echo
        .bidi_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..20 {
        tx.send(EchoRequest {
            message: format!("ping {i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("a bidi reply within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!((r.message, r.count), (format!("ping {i}"), i));
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "the stream ends after the client half-closes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_4_mib_and_more_pass_both_ways() {
    let a = TestServer::spawn("a").unwrap();
    let agent = agent_for(&[&a]);
    let mut echo = client::echo(client::connect(&agent.target()).await.unwrap());
    for size in [4 << 20, (8 << 20) + 17] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let r = echo
            .unary(EchoRequest {
                payload: payload.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.payload == payload, "a {size}-byte message came back changed");
        let r = echo
            .unary(EchoRequest {
                reply_size: size as u32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.payload.len(), size);
    }
    // A stream of large messages.
    let req = StreamRequest {
        count: 4,
        size: 4 << 20,
        interval_ms: 0,
    };
    let replies = client::server_stream_all(&mut echo, req).await.unwrap();
    assert_eq!(replies.iter().map(|r| r.payload.len()).sum::<usize>(), 16 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_with_message_and_trailers() {
    let a = TestServer::spawn("a").unwrap();
    let agent = agent_for(&[&a]);
    let mut echo = client::echo(client::connect(&agent.target()).await.unwrap());
    for code in 1..=16 {
        let mut req = tonic::Request::new(StatusRequest {
            code,
            message: format!("status {code}: ünïcödé and 100% spaces"),
            trailers: [("x-detail".to_string(), format!("d{code}"))].into(),
        });
        req.metadata_mut().insert("x-echo", "e".parse().unwrap());
        let st = echo.fail(req).await.unwrap_err();
        assert_eq!(st.code(), Code::from_i32(code), "code {code}: {st:?}");
        assert_eq!(st.message(), format!("status {code}: ünïcödé and 100% spaces"));
        assert_eq!(
            st.metadata().get("x-detail").unwrap(),
            format!("d{code}").as_str(),
            "code {code}"
        );
        assert_eq!(st.metadata().get("x-echo").unwrap(), "e", "code {code}");
    }
    // OK with trailing metadata.
    let resp = echo
        .fail(StatusRequest {
            code: 0,
            message: "fine".into(),
            trailers: [("x-t".to_string(), "ok".to_string())].into(),
        })
        .await
        .unwrap();
    assert_eq!(resp.get_ref().message, "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_the_call_here_and_upstream() {
    let a = TestServer::spawn("a").unwrap();
    let agent = agent_for(&[&a]);
    let mut echo = client::echo(client::connect(&agent.target()).await.unwrap());
    let mut req = tonic::Request::new(SleepRequest { millis: 10_000 });
    req.set_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let st = echo.sleep(req).await.unwrap_err();
    // The agent answers DEADLINE_EXCEEDED; tonic's server would say
    // CANCELLED for the same deadline if it won the race.
    assert!(matches!(st.code(), Code::DeadlineExceeded | Code::Cancelled), "{st:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the deadline took {:?}",
        t.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(2), || a.in_flight() == 0).await,
        "the call still runs on the endpoint after its deadline"
    );
    // A call within its deadline is unaffected.
    let mut req = tonic::Request::new(SleepRequest { millis: 50 });
    req.set_timeout(Duration::from_secs(5));
    echo.sleep(req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_cancelled_upstream() {
    let a = TestServer::spawn("a").unwrap();
    let agent = agent_for(&[&a]);
    let channel = client::connect(&agent.target()).await.unwrap();
    let mut echo = client::echo(channel.clone());

    let call = tokio::spawn(async move { echo.sleep(SleepRequest { millis: 30_000 }).await });
    assert!(
        wait_until(Duration::from_secs(5), || a.in_flight() == 1).await,
        "the call reached the endpoint"
    );
    call.abort(); // drops the call: RST_STREAM(CANCEL) to the agent
    assert!(
        wait_until(Duration::from_secs(2), || a.in_flight() == 0).await,
        "the endpoint still runs a call its client cancelled"
    );

    // A bidi stream dropped mid-way, too.
    let mut echo = client::echo(channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let mut replies = echo
        .bidi_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(EchoRequest::default()).await.unwrap();
    replies.next().await.unwrap().unwrap();
    assert_eq!(a.in_flight(), 1);
    drop(replies);
    drop(tx);
    assert!(
        wait_until(Duration::from_secs(2), || a.in_flight() == 0).await,
        "the bidi stream was not cancelled upstream"
    );

    // The connection is still good for new calls.
    let mut echo = client::echo(channel);
    echo.unary(EchoRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_is_unavailable_naming_the_service() {
    let (admin, listen) = (free_port(), free_port());
    let agent = Agent::start(admin, listen, &config(admin, "lonely-greeter", listen, &[], &[]));
    let mut greeter = client::greeter(client::connect(&agent.target()).await.unwrap());
    let st = greeter
        .say_hello(greeter::pb::helloworld::HelloRequest { name: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert!(
        st.message().contains("lonely-greeter"),
        "the message names the service: {st:?}"
    );
}

#[test]
fn a_connection_that_is_not_http2_is_proxied_as_tcp() {
    let echo = TcpEcho::start();
    let (admin, listen) = (free_port(), free_port());
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, "tcp", listen, &[ep(echo.addr, "v1")], &[]),
    );
    for msg in [
        &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05hello",
        b"PRI * HTTP/1.0 not h2",
    ] {
        let mut s = TcpStream::connect(agent.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg, "bytes came back changed");
        // Byte for byte, in both directions, for the life of the connection.
        s.write_all(b"more").unwrap();
        let mut more = [0u8; 4];
        s.read_exact(&mut more).unwrap();
        assert_eq!(&more, b"more");
    }
}
