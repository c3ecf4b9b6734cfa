//! An admin server on 127.0.0.1:0 with views that hold known values, served
//! from its own runtime thread, for the admin API and balancerctl tests.

#![allow(dead_code, reason = "shared by several test crates, each using a part of it")]

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, thread, time::Duration};

use balancer_agent::admin::{
    api, AdminOptions, AdminServer, AdminState, ConnHandle, ConnMeta, KernelError, KernelView, Protocol, StreamGuard,
};
use tokio::sync::oneshot;

/// Calls in the fixture: greeter's endpoints and the latency samples.
pub const OK_A: u64 = 40;
pub const OK_B: u64 = 38;
pub const UNAVAILABLE_B: u64 = 2;
pub const RESETS_B: u64 = 1;
/// Calls the agent answered UNAVAILABLE itself (no endpoint could take them).
pub const NO_ENDPOINT: u64 = 3;
/// Calls the service received: those that reached an endpoint and those the
/// agent answered.
pub const RECEIVED: u64 = OK_A + OK_B + UNAVAILABLE_B + RESETS_B + NO_ENDPOINT;
/// Latency samples recorded for `greeter`: 60 at 1.5 ms, 20 at 30 ms.
pub const FAST: u64 = 60;
pub const SLOW: u64 = 20;
/// Connects connect6 redirected (v4-mapped VIPs), apart from connect4's 42.
pub const CONNECT6_REDIRECTED: u64 = 5;
/// Bytes sk_msg handed from socket to socket.
pub const SK_MSG_BYTES: u64 = 123_456;

pub fn greeter() -> api::Service {
    let mut statuses_a = BTreeMap::new();
    statuses_a.insert("0".to_owned(), OK_A);
    let mut statuses_b = BTreeMap::new();
    statuses_b.insert("0".to_owned(), OK_B);
    statuses_b.insert("14".to_owned(), UNAVAILABLE_B);
    statuses_b.insert("reset".to_owned(), RESETS_B);
    let ep = |addr: &str, version: &str, statuses: BTreeMap<String, u64>| api::Endpoint {
        address: addr.parse().expect("address"),
        state: "ready".into(),
        labels: [("version".to_owned(), version.to_owned())].into_iter().collect(),
        zone: None,
        node: None,
        locality: None,
        stats: api::EndpointStats {
            ewma_ms: Some(1.25),
            calls: statuses.values().sum(),
            statuses,
            upstream_connections: 1,
            ..api::EndpointStats::default()
        },
    };
    let mut a = ep("127.0.0.1:50051", "v1", statuses_a);
    (a.zone, a.locality) = (Some("zone-1".into()), Some("zone".into()));
    let mut b = ep("127.0.0.1:50052", "v2", statuses_b);
    (b.zone, b.locality) = (Some("zone-2".into()), Some("other".into()));
    b.stats.ejected = true;
    b.stats.ejections = 1;
    b.stats.ejections_total = 4;
    b.stats.in_flight = 3;
    b.stats.refused = 6;
    api::Service {
        name: "greeter".into(),
        vips: vec!["10.96.0.10:8000".parse().expect("vip")],
        listen: Some("127.0.0.1:18000".parse().expect("listen")),
        policy: "round-robin".into(),
        hash_header: None,
        fault: None,
        routes: vec![api::Route {
            name: Some("canary".into()),
            matches: vec!["service=helloworld.Greeter method=~Say.*".into()],
            backends: vec![
                api::Backend {
                    selector: "version=v1".into(),
                    weight: 90,
                },
                api::Backend {
                    selector: "version=v2".into(),
                    weight: 10,
                },
            ],
            filters: vec![
                "request: set x-tenant=acme, remove x-debug".into(),
                "mirror: greeter-shadow 10%".into(),
            ],
            timeout: Some("300ms".into()),
        }],
        endpoints: vec![a, b],
        counters: api::ServiceCounters {
            calls: RECEIVED,
            no_endpoint: NO_ENDPOINT,
            retries: 5,
            l4_connections: 2,
            mirrored: 7,
            mirrors_dropped: 2,
            mirrors_failed: 1,
            ..Default::default()
        },
        traffic_distribution: Some("PreferClose".into()),
        internal_traffic_policy: None,
        ejection: None,
    }
}

pub fn echo() -> api::Service {
    api::Service {
        name: "default/echo".into(),
        vips: vec!["10.96.0.11:9000".parse().expect("vip")],
        listen: None,
        policy: "ring-hash".into(),
        hash_header: Some("x-user-id".into()),
        fault: Some("abort UNAVAILABLE (\"fault injected\") to 5% of calls".into()),
        routes: vec![],
        endpoints: vec![],
        counters: api::ServiceCounters {
            faults_aborted: FAULTS_ABORTED,
            ..Default::default()
        },
        traffic_distribution: None,
        internal_traffic_policy: None,
        ejection: None,
    }
}

/// Calls of `default/echo` aborted by fault injection.
pub const FAULTS_ABORTED: u64 = 3;

/// A kernel with the agent's five programs and two maps.
#[derive(Debug)]
pub struct FakeKernel;

impl KernelView for FakeKernel {
    fn attached(&self) -> bool {
        true
    }

    fn programs(&self) -> Result<Vec<api::Program>, KernelError> {
        let prog = |id, name: &str, t: &str, redirected| api::Program {
            id,
            name: name.into(),
            prog_type: t.into(),
            attach_type: Some("cgroup_inet4_connect".into()),
            attach_point: Some("cgroup /sys/fs/cgroup/test".into()),
            run_count: Some(100 + u64::from(id)),
            run_time_ns: Some(5_000),
            counters: [("redirected".to_owned(), redirected), ("passed".to_owned(), 7)]
                .into_iter()
                .collect(),
        };
        let mut sk_msg = prog(13, "sk_msg", "sk_msg", 900);
        sk_msg.counters.insert("bytes".to_owned(), SK_MSG_BYTES);
        Ok(vec![
            prog(11, "connect4", "cgroup_sock_addr", 42),
            prog(12, "sock_ops", "sock_ops", 84),
            sk_msg,
            prog(14, "getsockopt", "cgroup_sockopt", 42),
            prog(15, "connect6", "cgroup_sock_addr", CONNECT6_REDIRECTED),
        ])
    }

    fn maps(&self) -> Result<Vec<api::Map>, KernelError> {
        Ok(vec![
            api::Map {
                id: 21,
                name: "SERVICES".into(),
                map_type: "hash".into(),
                key_size: 8,
                value_size: 4,
                max_entries: 16384,
                entries: Some(1),
            },
            api::Map {
                id: 22,
                name: "ENROLLED".into(),
                map_type: "hash".into(),
                key_size: 8,
                value_size: 4,
                max_entries: 16384,
                entries: Some(1),
            },
        ])
    }

    fn map_dump(&self, name: &str) -> Result<Option<api::MapDump>, KernelError> {
        Ok((name == "SERVICES").then(|| api::MapDump {
            id: 21,
            name: "SERVICES".into(),
            entries: vec![api::MapEntry {
                key: "10.96.0.10:8000".into(),
                value: "flags 0x0".into(),
                key_hex: "0a 60 00 0a 1f 40 00 00".into(),
                value_hex: "00 00 00 00".into(),
            }],
        }))
    }
}

/// A running fixture admin server; stopped on drop.
pub struct Fixture {
    pub addr: SocketAddr,
    pub state: AdminState,
    /// Held connections/streams (listed by /api/v1/conns).
    _conns: Vec<ConnHandle>,
    _streams: Vec<StreamGuard>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the fixture; `kernel`: whether eBPF is "on".
pub fn start(kernel: bool) -> Fixture {
    let mut state = AdminState::new(Arc::new(|| vec![greeter(), echo()]));
    state.pods = Arc::new(|| {
        vec![api::Pod {
            pod: Some("default/client-0".into()),
            cgroup_id: Some(4242),
            cgroup: "/sys/fs/cgroup/kubepods/pod-client-0".into(),
            ip: Some("10.0.0.2".into()),
            ..api::Pod::default()
        }]
    });
    state.source = Arc::new(|| api::SourceStatus {
        kind: "static".into(),
        location: Some("/etc/balancer.yaml".into()),
        synced: true,
        reloads_ok: 3,
        reloads_failed: 1,
        last_error: Some("balancer.yaml: services[0].vip: invalid socket address".into()),
        pods_cgroup_missing: None,
        reports: Vec::new(),
    });
    if kernel {
        state.kernel = Some(Arc::new(FakeKernel));
    }
    let h = state.metrics.latency.service("greeter");
    for _ in 0..FAST {
        h.observe(Duration::from_micros(1500));
    }
    for _ in 0..SLOW {
        h.observe(Duration::from_millis(30));
    }
    let c1 = state.conns.register(ConnMeta {
        peer: "10.0.0.2:40000".parse().expect("peer"),
        original_dst: Some("10.96.0.10:8000".parse().expect("dst")),
        service: Some("greeter".into()),
        pod: None,
    });
    c1.set_protocol(Protocol::H2);
    let streams = vec![c1.stream(), c1.stream(), c1.stream()];
    let c2 = state.conns.register(ConnMeta {
        peer: "10.0.0.3:40001".parse().expect("peer"),
        original_dst: Some("10.96.0.10:8000".parse().expect("dst")),
        service: Some("greeter".into()),
        pod: Some("default/client-1".into()),
    });
    c2.set_protocol(Protocol::Tcp);
    state.conns.refused();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt
        .block_on(AdminServer::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &AdminOptions::default(),
        ))
        .expect("bind");
    let addr = server.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let served = state.clone();
    let thread = thread::spawn(move || {
        let _ = rt.block_on(server.run_until(served, async {
            let _ = rx.await;
        }));
    });
    Fixture {
        addr,
        state,
        _conns: vec![c1, c2],
        _streams: streams,
        stop: Some(tx),
        thread: Some(thread),
    }
}
