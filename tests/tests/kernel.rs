//! The kernel programs on the real kernel: redirect, original destination,
//! enrollment, loop freedom, fail-open, the sk_msg fast path (ordering under
//! the first-write race) and back-pressure.
//!
//! Each test builds its own node and pod network namespaces (no default
//! route), its own cgroups, and its own agent process, and removes them even
//! when it fails. Run as root; they run one at a time (a process-wide lock),
//! e.g. `cargo test -p balancer-tests --test kernel -- --test-threads=1`.
//! Without root they skip loudly; `BALANCER_REQUIRE_PRIVILEGED=1` turns a
//! skip into a failure.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use balancer_tests::{
    agent::{AgentOptions, TestAgent},
    pod,
    privileged::serial_or_skip,
    topology::Topology,
};
use serde_json::Value;

const AGENT_BIN: &str = env!("CARGO_BIN_EXE_balancer-test-agent");
const POD_BIN: &str = env!("CARGO_BIN_EXE_balancer-test-pod");

/// A Service VIP nothing routes.
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 50051);
const LISTEN_PORT: u16 = 15001;
const ENETUNREACH: i64 = 101;

fn options(topo: &Topology, enroll: Vec<PathBuf>, fast_path: bool) -> AgentOptions {
    AgentOptions {
        attach_cgroup: topo.root_cgroup.path().to_owned(),
        listen: SocketAddrV4::new(topo.node.ip, LISTEN_PORT),
        fast_path,
        services: vec![VIP],
        enroll,
    }
}

fn agent(topo: &Topology, enroll: Vec<PathBuf>, fast_path: bool) -> TestAgent {
    TestAgent::spawn(Path::new(AGENT_BIN), &topo.node.netns, &options(topo, enroll, fast_path))
        .expect("start the test agent")
}

fn probe(topo: &Topology, pod_index: usize, to: SocketAddrV4) -> Value {
    let args = vec!["probe".into(), "--to".into(), to.to_string()];
    pod::run(Path::new(POD_BIN), &topo.pods[pod_index], &args, Duration::from_secs(20)).expect("run probe")
}

#[test]
fn enrolled_pod_is_redirected_and_agent_learns_original_destination() {
    let Some(_serial) = serial_or_skip("enrolled_pod_is_redirected") else { return };
    let topo = Topology::new(1).expect("topology");
    let mut agent = agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], true);
    let before = agent.counters().expect("counters");
    let out = probe(&topo, 0, VIP);
    assert_eq!(out["connect"], "ok", "{out}");
    assert_eq!(out["orig"], VIP.to_string(), "agent's SO_ORIGINAL_DST: {out}");
    assert_eq!(out["peer"], agent.listen.to_string(), "{out}");
    assert_eq!(out["echo_ok"], true, "bytes round trip: {out}");
    let after = agent.counters().expect("counters");
    assert_eq!(after.connect4.redirected - before.connect4.redirected, 1);
    assert_eq!(after.getsockopt.redirected - before.getsockopt.redirected, 1);
    assert_eq!(after.sock_ops.redirected - before.sock_ops.redirected, 2, "both sockets in the fast path");
    assert!(after.sk_msg.bytes > before.sk_msg.bytes, "echo went through sk_msg: {after:?}");
}
