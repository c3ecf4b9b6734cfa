//! The admin server: loopback-only binding, health and readiness, and the
//! JSON API that balancerctl reads.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_admin;

use std::sync::Arc;

use balancer_agent::{
    admin::{api, AdminError, AdminOptions, AdminServer, AdminState, KernelError},
    ctl::{AdminClient, CtlError},
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn non_loopback_addresses_are_refused_unless_allowed() {
    let rt = rt();
    for addr in ["0.0.0.0:0", "[::]:0", "10.250.0.1:0"] {
        let err = rt
            .block_on(AdminServer::bind(addr.parse().unwrap(), &AdminOptions::default()))
            .expect_err("a non-loopback bind must be refused");
        assert!(matches!(err, AdminError::NonLoopback(_)), "{addr}: {err}");
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(
            msg.contains("non-loopback") && msg.contains("--admin-allow-non-loopback"),
            "{msg}"
        );
    }
    let allowed = AdminOptions {
        allow_non_loopback: true,
    };
    balancer_agent::admin::check_addr("0.0.0.0:15000".parse().unwrap(), &allowed).expect("allowed explicitly");
    // Loopback is fine by default, v4 and v6.
    let server = rt
        .block_on(AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            &AdminOptions::default(),
        ))
        .unwrap();
    assert!(server.local_addr().unwrap().ip().is_loopback());
}

#[test]
fn health_and_readiness() {
    let fx = support_admin::start(true);
    let c = AdminClient::new(&fx.addr.to_string());
    assert_eq!(c.get_raw("/healthz").unwrap().0, 200);
    let (code, body) = c.get_raw("/readyz").unwrap();
    assert_eq!((code, String::from_utf8_lossy(&body).trim()), (200, "ready"));
    let status: api::Status = c.get("/api/v1/status").unwrap();
    assert!(status.ready && status.ebpf && status.programs_attached, "{status:?}");
    assert_eq!((status.source.reloads_ok, status.source.reloads_failed), (3, 1));
}

#[test]
fn not_ready_until_synced_and_attached() {
    // A kernel whose programs are not attached, and a source not yet synced.
    struct Detached;
    impl balancer_agent::admin::KernelView for Detached {
        fn attached(&self) -> bool {
            false
        }
        fn programs(&self) -> Result<Vec<api::Program>, KernelError> {
            Ok(vec![])
        }
        fn maps(&self) -> Result<Vec<api::Map>, KernelError> {
            Ok(vec![])
        }
        fn map_dump(&self, _: &str) -> Result<Option<api::MapDump>, KernelError> {
            Ok(None)
        }
    }
    let mut state = AdminState::new(Arc::new(Vec::new));
    state.kernel = Some(Arc::new(Detached));
    state.source = Arc::new(|| api::SourceStatus {
        kind: "kubernetes".into(),
        synced: false,
        ..Default::default()
    });
    let status = state.status();
    assert!(!status.ready);
    assert_eq!(
        status.not_ready,
        vec!["kernel programs are not attached", "kubernetes state is not synced yet"]
    );

    let rt = rt();
    let server = rt
        .block_on(AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            &AdminOptions::default(),
        ))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        rt.block_on(server.run_until(state, async {
            let _ = rx.await;
        }))
    });
    let (code, body) = AdminClient::new(&addr.to_string()).get_raw("/readyz").unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    let _ = tx.send(());
    t.join().unwrap().unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("not attached") && body.contains("not synced"), "{body}");

    // eBPF off: ready without programs.
    let state = AdminState::new(Arc::new(Vec::new));
    assert!(state.status().ready);
    assert!(!state.status().ebpf);
}

#[test]
fn a_kernel_error_is_answered_with_its_cause() {
    // A kernel that refuses to hand out a map's keys.
    struct Refusing;
    impl balancer_agent::admin::KernelView for Refusing {
        fn attached(&self) -> bool {
            true
        }
        fn programs(&self) -> Result<Vec<api::Program>, KernelError> {
            Ok(vec![])
        }
        fn maps(&self) -> Result<Vec<api::Map>, KernelError> {
            Ok(vec![])
        }
        fn map_dump(&self, name: &str) -> Result<Option<api::MapDump>, KernelError> {
            Err(KernelError::ReadMap {
                map: name.to_owned(),
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            })
        }
    }
    let mut state = AdminState::new(Arc::new(Vec::new));
    state.kernel = Some(Arc::new(Refusing));
    let rt = rt();
    let server = rt
        .block_on(AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            &AdminOptions::default(),
        ))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        rt.block_on(server.run_until(state, async {
            let _ = rx.await;
        }))
    });
    let answer = AdminClient::new(&addr.to_string()).get::<api::MapDump>("/api/v1/maps/SERVICES");
    let _ = tx.send(());
    t.join().unwrap().unwrap();
    match answer {
        Err(CtlError::Api { status: 500, message }) => assert_eq!(
            message,
            "reading the keys of map SERVICES: Operation not permitted (os error 1)"
        ),
        other => panic!("expected a 500, got {other:?}"),
    }
}

#[test]
fn services_and_endpoints() {
    let fx = support_admin::start(true);
    let c = AdminClient::new(&fx.addr.to_string());
    let services: Vec<api::Service> = c.get("/api/v1/services").unwrap();
    assert_eq!(
        services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["greeter", "default/echo"]
    );
    let g: api::Service = c.get("/api/v1/services/greeter").unwrap();
    assert_eq!(g, support_admin::greeter());
    assert_eq!(g.counters.calls, support_admin::RECEIVED);
    assert_eq!(g.counters.no_endpoint, support_admin::NO_ENDPOINT);
    // Errors: what endpoints answered (resets included) and the calls the
    // agent answered UNAVAILABLE itself.
    assert_eq!(
        g.errors(),
        support_admin::UNAVAILABLE_B + support_admin::RESETS_B + support_admin::NO_ENDPOINT
    );
    // Names with a slash, raw or percent-encoded.
    let e1: api::Service = c.get("/api/v1/services/default/echo").unwrap();
    let e2: api::Service = c.get("/api/v1/services/default%2Fecho").unwrap();
    assert_eq!(e1, e2);
    assert_eq!(e1.policy, "ring-hash");
    assert_eq!(e1.hash_header.as_deref(), Some("x-user-id"));
    assert_eq!(e1.counters.faults_aborted, support_admin::FAULTS_ABORTED);
    let eps: Vec<api::Endpoint> = c.get("/api/v1/services/greeter/endpoints").unwrap();
    assert_eq!(eps.len(), 2);
    assert!(eps[1].stats.ejected);
    match c.get::<api::Service>("/api/v1/services/nope") {
        Err(CtlError::Api { status: 404, message }) => assert_eq!(message, "no service named `nope`"),
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[test]
fn pods_conns_programs_and_maps() {
    let fx = support_admin::start(true);
    let c = AdminClient::new(&fx.addr.to_string());
    let pods: Vec<api::Pod> = c.get("/api/v1/pods").unwrap();
    assert_eq!(pods[0].cgroup_id, Some(4242));

    let conns: Vec<api::Conn> = c.get("/api/v1/conns").unwrap();
    assert_eq!(conns.len(), 2);
    // The pod of the first is found by its IP among the enrolled pods.
    assert_eq!(conns[0].pod.as_deref(), Some("default/client-0"));
    assert_eq!(
        (
            conns[0].protocol.as_str(),
            conns[0].open_streams,
            conns[0].total_streams
        ),
        ("h2", 3, 3)
    );
    assert_eq!(conns[1].pod.as_deref(), Some("default/client-1"));
    assert_eq!(conns[1].protocol, "tcp");

    let progs: Vec<api::Program> = c.get("/api/v1/programs").unwrap();
    assert_eq!(
        progs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["connect4", "sock_ops", "sk_msg", "getsockopt", "connect6"]
    );
    let maps: Vec<api::Map> = c.get("/api/v1/maps").unwrap();
    assert_eq!(maps.len(), 2);
    let dump: api::MapDump = c.get("/api/v1/maps/SERVICES").unwrap();
    assert_eq!(dump.entries[0].key, "10.96.0.10:8000");
    assert!(matches!(
        c.get::<api::MapDump>("/api/v1/maps/NOPE"),
        Err(CtlError::Api { status: 404, .. })
    ));
    assert!(matches!(
        c.get::<serde_json::Value>("/api/v1/nope"),
        Err(CtlError::Api { status: 404, .. })
    ));
}

#[test]
fn without_ebpf_kernel_objects_say_so() {
    let fx = support_admin::start(false);
    let c = AdminClient::new(&fx.addr.to_string());
    match c.get::<Vec<api::Program>>("/api/v1/programs") {
        Err(CtlError::Api { status: 409, message }) => assert!(message.contains("without eBPF"), "{message}"),
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[test]
fn the_api_is_read_only() {
    let fx = support_admin::start(true);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(fx.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /api/v1/services HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
}

#[test]
fn stats_carry_calls_and_latency() {
    let fx = support_admin::start(true);
    let stats: api::Stats = AdminClient::new(&fx.addr.to_string()).get("/api/v1/stats").unwrap();
    let g = stats.services.iter().find(|s| s.service == "greeter").unwrap();
    assert_eq!(g.latency.count(), support_admin::FAST + support_admin::SLOW);
    // 75% of the samples took 1.5 ms: p50 is in (1 ms, 2.5 ms], p99 in (25 ms, 50 ms].
    let p50 = g.latency.quantile(0.5).unwrap();
    let p99 = g.latency.quantile(0.99).unwrap();
    assert!((0.001..=0.0025).contains(&p50), "{p50}");
    assert!((0.025..=0.05).contains(&p99), "{p99}");
    let e = stats.services.iter().find(|s| s.service == "default/echo").unwrap();
    assert_eq!(e.latency.count(), 0);
}
