//! Gateway listeners in static mode, end to end: the real agent without
//! eBPF, gRPC clients from outside (not enrolled, on loopback) over TLS and
//! cleartext HTTP/2, calls routed by host and spread per call over the
//! chosen service's greeter backends.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_tls;

use std::{net::SocketAddr, path::Path, time::Duration};

use balancer_testing::{
    agent::{self, AgentProcess, Log},
    port::free_port,
};
use greeter::{client::Spread, server::TestServer};
use support_tls::{h2c_channel, tls_channel, Ca};
use tonic::transport::Endpoint;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start_agent(dir: &Path, config: &str, admin: SocketAddr) -> AgentProcess {
    let path = dir.join("balancer.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = agent::command(Path::new(env!("CARGO_BIN_EXE_balancer-agent")), Some(&path));
    cmd.arg("--no-ebpf")
        .env("RUST_LOG", "info")
        .env_remove("BALANCER_ADMIN");
    let mut agent = AgentProcess::spawn(cmd, Log::File(dir.join("agent.log"))).unwrap();
    agent.wait_readyz(admin, Duration::from_secs(30)).unwrap();
    agent
}

async fn spread(channel: tonic::transport::Channel, calls: u64) -> Spread {
    tokio::time::timeout(
        Duration::from_secs(60),
        greeter::client::say_hello_spread(channel, calls, 4, Duration::from_secs(10)),
    )
    .await
    .expect("calls finished within 60 s")
}

fn write(dir: &Path, name: &str, text: &str) {
    // Replaced whole (rename), as a certificate manager does.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn tls_and_h2c_listeners_route_by_host_and_spread_every_call() {
    let (g1, g2) = (
        TestServer::spawn("greeter-1").unwrap(),
        TestServer::spawn("greeter-2").unwrap(),
    );
    let other = TestServer::spawn("other-1").unwrap();
    let ca = Ca::new("gateway test CA");
    let (a, b) = (ca.leaf(&["a.example.com"]), ca.leaf(&["*.b.example.com"]));
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("a.crt", &a.cert),
        ("a.key", &a.key),
        ("b.crt", &b.cert),
        ("b.key", &b.key),
    ] {
        write(dir.path(), name, text);
    }
    let (admin, https, h2c) = (free_port().unwrap(), free_port().unwrap(), free_port().unwrap());
    let config = format!(
        r#"admin: {admin}
services:
  - name: greeter
    vip: 10.96.0.10:8000
    endpoints: [ {{ address: "{g1}" }}, {{ address: "{g2}" }} ]
  - name: other
    vip: 10.96.0.11:8000
    endpoints: [ {{ address: "{o}" }} ]
gateways:
  - name: public
    listeners:
      - name: https
        address: "{https}"
        tls:
          certificates:
            - {{ cert: a.crt, key: a.key }}
            - {{ cert: b.crt, key: b.key }}
      - name: h2c
        address: "{h2c}"
    routes:
      - hostnames: [a.example.com]
        matches: [ {{ service: helloworld.Greeter }} ]
        backends: [ {{ service: greeter }} ]
      - hostnames: ["*.b.example.com"]
        backends: [ {{ service: other }} ]
"#,
        g1 = g1.addr(),
        g2 = g2.addr(),
        o = other.addr(),
    );
    let _agent = start_agent(dir.path(), &config, admin);
    let rt = rt();
    rt.block_on(async {
        // TLS, SNI a.example.com: the client accepts only a certificate for
        // that name from the test's CA; every call of its one connection
        // is balanced on its own.
        let channel = tls_channel(https, "a.example.com", &ca.pem()).await.unwrap();
        let s = spread(channel, 40).await;
        assert_eq!(s.ok, 40, "{}", s.table());
        assert!(g1.calls() > 0 && g2.calls() > 0, "spread over both: {}", s.table());
        assert_eq!(g1.calls() + g2.calls(), 40);
        assert_eq!(other.calls(), 0);

        // SNI api.b.example.com: the second certificate (a client that
        // verifies that name would refuse the first).
        let channel = tls_channel(https, "api.b.example.com", &ca.pem()).await.unwrap();
        let s = spread(channel, 10).await;
        assert_eq!((s.ok, other.calls()), (10, 10), "{}", s.table());

        // A name no certificate covers gets the first one, which the
        // client refuses.
        let refused = tls_channel(https, "c.example.org", &ca.pem()).await;
        assert!(refused.is_err(), "a certificate for c.example.org was shown");

        // Cleartext HTTP/2 (prior knowledge): the same routes.
        let s = spread(h2c_channel(h2c, "a.example.com").await, 20).await;
        assert_eq!(s.ok, 20, "{}", s.table());
        assert_eq!(g1.calls() + g2.calls(), 60);

        // A host no route serves: UNIMPLEMENTED at once, naming the host.
        let s = spread(h2c_channel(h2c, "nowhere.example.org").await, 3).await;
        assert_eq!(s.error_codes.get("Unimplemented"), Some(&3), "{}", s.table());
        let msg = s.first_error.unwrap_or_default();
        assert!(msg.contains("nowhere.example.org"), "{msg}");
    });
}

#[test]
fn a_replaced_certificate_file_serves_new_connections() {
    let g1 = TestServer::spawn("greeter-1").unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let old = old_ca.leaf(&["api.example.com"]);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tls.crt", &old.cert);
    write(dir.path(), "tls.key", &old.key);
    let (admin, https) = (free_port().unwrap(), free_port().unwrap());
    let config = format!(
        r#"admin: {admin}
services:
  - name: greeter
    vip: 10.96.0.10:8000
    endpoints: [ {{ address: "{g1}" }} ]
gateways:
  - name: public
    listeners:
      - address: "{https}"
        hostnames: [api.example.com]
        tls: {{ cert: tls.crt, key: tls.key }}
    routes:
      - backends: [ {{ service: greeter }} ]
"#,
        g1 = g1.addr(),
    );
    let _agent = start_agent(dir.path(), &config, admin);
    let rt = rt();
    rt.block_on(async {
        let before = tls_channel(https, "api.example.com", &old_ca.pem()).await.unwrap();
        assert_eq!(spread(before.clone(), 2).await.ok, 2);
        assert!(tls_channel(https, "api.example.com", &new_ca.pem()).await.is_err());

        let new = new_ca.leaf(&["api.example.com"]);
        write(dir.path(), "tls.key", &new.key);
        write(dir.path(), "tls.crt", &new.cert);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            if let Ok(c) = tls_channel(https, "api.example.com", &new_ca.pem()).await {
                break c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new certificate was never served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(spread(after, 2).await.ok, 2);
        // New connections no longer get the old one; the connection made
        // before the change carries on.
        assert!(tls_channel(https, "api.example.com", &old_ca.pem()).await.is_err());
        assert_eq!(spread(before, 2).await.ok, 2);
    });
}

#[test]
fn a_reloaded_file_moves_routes_and_listeners_without_a_restart() {
    let (g1, other) = (
        TestServer::spawn("greeter-1").unwrap(),
        TestServer::spawn("other-1").unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (admin, first, second) = (free_port().unwrap(), free_port().unwrap(), free_port().unwrap());
    let config = |listen: SocketAddr, backend: &str| {
        format!(
            r#"admin: {admin}
services:
  - name: greeter
    vip: 10.96.0.10:8000
    endpoints: [ {{ address: "{g1}" }} ]
  - name: other
    vip: 10.96.0.11:8000
    endpoints: [ {{ address: "{o}" }} ]
gateways:
  - name: public
    listeners: [ {{ address: "{listen}" }} ]
    routes: [ {{ backends: [ {{ service: {backend} }} ] }} ]
"#,
            g1 = g1.addr(),
            o = other.addr(),
        )
    };
    let _agent = start_agent(dir.path(), &config(first, "greeter"), admin);
    let rt = rt();
    rt.block_on(async {
        let before = h2c_channel(first, "api.example.com").await;
        assert_eq!(spread(before.clone(), 3).await.ok, 3);
        assert_eq!(g1.calls(), 3);

        // The route now sends calls to `other`, and the listener moves.
        write(dir.path(), "balancer.yaml", &config(second, "other"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let moved = loop {
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(1),
                Endpoint::from_shared(format!("http://{second}")).unwrap().connect(),
            )
            .await
            {
                break c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the moved listener never came up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let s = spread(moved, 3).await;
        assert_eq!((s.ok, other.calls()), (3, 3), "{}", s.table());
        // The connection opened before carries on, with the new route.
        let s = spread(before, 2).await;
        assert_eq!((s.ok, other.calls(), g1.calls()), (2, 5, 3), "{}", s.table());
        assert!(
            std::net::TcpStream::connect(first).is_err(),
            "the old listener stopped accepting"
        );
    });
}
