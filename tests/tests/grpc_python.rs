//! gRPC conformance through the agent's explicit listener (static mode,
//! `--no-ebpf`) with Python grpcio (gRPC's C core) on either side, and mixed
//! with tonic: grpcio ↔ agent ↔ grpcio, grpcio ↔ agent ↔ tonic,
//! tonic ↔ agent ↔ grpcio.
//!
//! Needs grpcio and grpcio-tools (tests/python/requirements.txt) in
//! `BALANCER_PYTHON` or `.venv/bin/python`: `cargo xtask setup` installs them.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::time::Duration;

use greeter::{client, pb::echo::StatusRequest, server::TestServer};
use grpc_support::{config, ep, free_port, py_client, Agent, PyServer};
use serde_json::Value;

const CASES: &[&str] = &[
    "unary",
    "server_stream",
    "client_stream",
    "bidi",
    "large",
    "status",
    "deadline",
    "cancel",
];

/// Checks the report of `peer.py client` for every conformance case.
fn assert_conformance(r: &Value, backends: &[&str]) {
    let unary = &r["unary"];
    assert_eq!(unary["payload"], "ping", "unary: {unary}");
    assert_eq!(
        unary["echoed"]["x-request-id"], "r-17",
        "request metadata reaches the server: {unary}"
    );
    assert_eq!(unary["header"], "r-17", "response headers reach the client: {unary}");
    assert!(
        backends.contains(&unary["backend"].as_str().unwrap_or_default()),
        "{unary}"
    );

    let ss = &r["server_stream"];
    assert_eq!(
        (ss["count"].as_u64(), ss["in_order"].as_bool(), ss["sizes_ok"].as_bool()),
        (Some(50), Some(true), Some(true)),
        "{ss}"
    );
    let cs = &r["client_stream"];
    assert_eq!(
        (cs["count"].as_u64(), cs["bytes"].as_u64()),
        (Some(200), Some(200 * 1024)),
        "{cs}"
    );
    let bidi = &r["bidi"];
    assert_eq!(
        (bidi["pairs_ok"].as_bool(), bidi["after_close"].as_u64()),
        (Some(true), Some(0)),
        "{bidi}"
    );

    for size in ["4194304", "8388625"] {
        let l = &r["large"][size];
        assert_eq!(l["echo_equal"], true, "large {size}: {}", r["large"]);
        assert_eq!(
            l["reply_len"].as_u64(),
            size.parse().ok(),
            "large {size}: {}",
            r["large"]
        );
    }

    let status = &r["status"]["results"];
    for code in 0..=16 {
        let s = &status[code.to_string()];
        assert_eq!(s["code"].as_i64(), Some(code), "status {code}: {s}");
        assert_eq!(
            s["message"],
            format!("status {code}: ünïcödé and 100% spaces"),
            "status {code}: {s}"
        );
        assert_eq!(s["detail"], format!("d{code}"), "trailers of status {code}: {s}");
        assert_eq!(s["echo"], "e", "echoed metadata of status {code}: {s}");
    }

    let d = &r["deadline"];
    assert_eq!(d["code"], "DEADLINE_EXCEEDED", "{d}");
    assert!(d["elapsed_ms"].as_u64().unwrap_or(u64::MAX) < 3000, "{d}");
    let c = &r["cancel"];
    assert_eq!(
        (c["cancelled"].as_bool(), c["after"].as_str()),
        (Some(true), Some("after")),
        "{c}"
    );
}

#[test]
fn grpcio_client_and_grpcio_servers() {
    let (p1, p2) = (PyServer::start("py1"), PyServer::start("py2"));
    let (admin, listen) = (free_port(), free_port());
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, "echo", listen, &[ep(p1.addr, "v1"), ep(p2.addr, "v2")], &[]),
    );
    let mut cases = CASES.to_vec();
    cases.push("spread=300,8");
    let r = py_client(&agent.target(), &cases);
    assert_conformance(&r, &["py1", "py2"]);
    let s = &r["spread=300,8"];
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    for b in ["py1", "py2"] {
        let n = s["backends"][b].as_u64().unwrap_or_default();
        assert!((140..=160).contains(&n), "one grpcio channel: {b} got {n} of 300: {s}");
    }
}

#[test]
fn grpcio_client_and_tonic_servers() {
    let (t1, t2) = (TestServer::spawn("t1").unwrap(), TestServer::spawn("t2").unwrap());
    let (admin, listen) = (free_port(), free_port());
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, "echo", listen, &[ep(t1.addr(), "v1"), ep(t2.addr(), "v2")], &[]),
    );
    let mut cases = CASES.to_vec();
    cases.push("spread=300,8");
    let r = py_client(&agent.target(), &cases);
    assert_conformance(&r, &["t1", "t2"]);
    let s = &r["spread=300,8"];
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    assert_eq!(
        s["backends"]["t1"].as_u64().unwrap_or_default() + s["backends"]["t2"].as_u64().unwrap_or_default(),
        300
    );
    assert!(
        (140..=160).contains(&s["backends"]["t1"].as_u64().unwrap_or_default()),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_and_mixed_grpcio_and_tonic_servers() {
    let py = PyServer::start("py");
    let t = TestServer::spawn("tonic").unwrap();
    let (admin, listen) = (free_port(), free_port());
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, "greeter", listen, &[ep(py.addr, "v1"), ep(t.addr(), "v2")], &[]),
    );
    let ch = client::connect(&agent.target()).await.unwrap();
    let s = client::say_hello_spread(ch.clone(), 300, 8, Duration::from_secs(10)).await;
    assert_eq!(s.errors, 0, "{s:?}");
    assert_eq!(
        s.backends.get("py").copied().unwrap_or_default() + s.backends.get("tonic").copied().unwrap_or_default(),
        300
    );
    assert!(
        (140..=160).contains(&s.backends.get("py").copied().unwrap_or_default()),
        "{}",
        s.table()
    );

    // Status codes and trailers from grpcio servers reach a tonic client.
    let mut echo = client::echo(ch);
    // Round-robin alternates: both kinds of server answer these.
    for code in 1..=16 {
        let st = echo
            .fail(StatusRequest {
                code,
                message: format!("m{code}"),
                trailers: [("x-detail".to_string(), format!("d{code}"))].into(),
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::from_i32(code), "{st:?}");
        assert_eq!(st.message(), format!("m{code}"));
        assert_eq!(st.metadata().get("x-detail").unwrap(), format!("d{code}").as_str());
    }
}
