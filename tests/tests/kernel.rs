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
const ECONNRESET: i64 = 104;

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
    TestAgent::spawn(
        Path::new(AGENT_BIN),
        &topo.node.netns,
        &topo.agent_cgroup,
        &options(topo, enroll, fast_path),
    )
    .expect("start the test agent")
}

fn probe(topo: &Topology, pod_index: usize, to: SocketAddrV4) -> Value {
    let args = vec!["probe".into(), "--to".into(), to.to_string()];
    pod::run(
        Path::new(POD_BIN),
        &topo.pods[pod_index],
        &args,
        Duration::from_secs(20),
    )
    .expect("run probe")
}

#[test]
fn enrolled_pod_is_redirected_and_agent_learns_original_destination() {
    let Some(_serial) = serial_or_skip("enrolled_pod_is_redirected") else {
        return;
    };
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
    assert_eq!(
        after.sock_ops.redirected - before.sock_ops.redirected,
        2,
        "both sockets in the fast path"
    );
    assert!(
        after.sk_msg.bytes > before.sk_msg.bytes,
        "echo went through sk_msg: {after:?}"
    );
}

#[test]
fn pod_not_enrolled_is_not_redirected() {
    let Some(_serial) = serial_or_skip("pod_not_enrolled_is_not_redirected") else {
        return;
    };
    let topo = Topology::new(2).expect("topology");
    let mut agent = agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], true);
    // The enrolled pod is redirected (the programs are live) ...
    assert_eq!(probe(&topo, 0, VIP)["orig"], VIP.to_string());
    // ... the other pod's connect to the same VIP is left alone: no route.
    let out = probe(&topo, 1, VIP);
    assert_eq!(out["connect"], "error", "{out}");
    assert_eq!(out["errno"], ENETUNREACH, "{out}");
    // An enrolled pod dialing a port that is not balanced is left alone too.
    let other_port = SocketAddrV4::new(*VIP.ip(), VIP.port() + 1);
    let out = probe(&topo, 0, other_port);
    assert_eq!(out["errno"], ENETUNREACH, "{out}");
    let counters = agent.counters().expect("counters");
    assert_eq!(counters.connect4.redirected, 1, "{counters:?}");

    // Enrollment and services are synced at run time: enroll only pod 1 ...
    let pod1 = topo.pods[1].cgroup.path().display().to_string();
    assert_eq!(agent.command(&format!("enroll {pod1}")).expect("enroll"), "ok");
    assert_eq!(probe(&topo, 1, VIP)["orig"], VIP.to_string(), "pod 1 is now redirected");
    assert_eq!(probe(&topo, 0, VIP)["errno"], ENETUNREACH, "pod 0 no longer is");
    // ... and replace the service: the old VIP is left alone, the new one redirected.
    let new_vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 443);
    assert_eq!(agent.command(&format!("services {new_vip}")).expect("services"), "ok");
    assert_eq!(probe(&topo, 1, VIP)["errno"], ENETUNREACH, "old VIP no longer balanced");
    assert_eq!(probe(&topo, 1, new_vip)["orig"], new_vip.to_string());
}

#[test]
fn agent_own_connect_is_not_redirected() {
    let Some(_serial) = serial_or_skip("agent_own_connect_is_not_redirected") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    // Enroll the attach cgroup itself: every cgroup below it is enrolled,
    // the agent's own cgroup included — only the agent exception is left.
    let mut agent = agent(&topo, vec![topo.root_cgroup.path().to_owned()], true);
    assert_eq!(
        probe(&topo, 0, VIP)["orig"],
        VIP.to_string(),
        "a pod below the enrolled cgroup is redirected"
    );
    let reply = agent.command(&format!("connect {VIP}")).expect("agent connect");
    assert!(
        reply.starts_with(&format!("err {ENETUNREACH} ")),
        "the agent's connect must go to the VIP itself (unroutable here), got: {reply}"
    );
    let counters = agent.counters().expect("counters");
    assert_eq!(counters.connect4.redirected, 1, "{counters:?}");

    // Belt and braces: a socket carrying the skip mark is never redirected,
    // even from an enrolled cgroup.
    let args = vec![
        "probe".into(),
        "--to".into(),
        VIP.to_string(),
        "--mark".into(),
        balancer_agent::ebpf::SKIP_MARK.to_string(),
    ];
    let out = pod::run(Path::new(POD_BIN), &topo.pods[0], &args, Duration::from_secs(20)).expect("probe");
    assert_eq!(out["errno"], ENETUNREACH, "marked socket went to the VIP itself: {out}");
}

#[test]
fn agent_death_fails_open() {
    let Some(_serial) = serial_or_skip("agent_death_fails_open") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let mut agent = agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], true);
    assert_eq!(probe(&topo, 0, VIP)["orig"], VIP.to_string());
    agent.kill().expect("SIGKILL the agent");
    let out = probe(&topo, 0, VIP);
    assert_eq!(out["connect"], "error", "after the agent died: {out}");
    assert_eq!(out["errno"], ENETUNREACH, "connect went to the VIP itself: {out}");
    // A new agent attaches again.
    let _again = self::agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], true);
    assert_eq!(probe(&topo, 0, VIP)["orig"], VIP.to_string());
}

#[test]
fn direct_connection_to_the_listener_is_refused() {
    let Some(_serial) = serial_or_skip("direct_connection_to_the_listener_is_refused") else {
        return;
    };
    let topo = Topology::new(2).expect("topology");
    let mut agent = agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], true);
    for pod in [0, 1] {
        let out = probe(&topo, pod, agent.listen);
        // The agent resets the connection at once: the client sees either an
        // established connection closed without a word, or the reset already
        // at connect completion.
        let reset_at_connect = out["connect"] == "error" && out["errno"] == ECONNRESET;
        let closed_silently = out["connect"] == "ok" && out["orig"] == Value::Null;
        assert!(
            reset_at_connect || closed_silently,
            "no original destination, no service: {out}"
        );
    }
    let refused = agent.events().iter().filter(|e| e.starts_with("EVENT refused")).count();
    assert_eq!(refused, 2, "{:?}", agent.events());
}

/// Runs `conns` verified connections from pod 0 and checks all arrived
/// whole and in order.
fn load(topo: &Topology, conns: u64, seed: u64, cpu: Option<usize>) -> Value {
    let mut args: Vec<String> = [
        "load",
        "--to",
        &VIP.to_string(),
        "--conns",
        &conns.to_string(),
        "--threads",
        "8",
        "--max-size",
        &(1u64 << 20).to_string(),
        "--seed",
        &seed.to_string(),
        "--deadline-secs",
        "40",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(cpu) = cpu {
        args.extend(["--cpu".to_owned(), cpu.to_string()]);
    }
    let out = pod::run(Path::new(POD_BIN), &topo.pods[0], &args, Duration::from_secs(60)).expect("run load");
    eprintln!("load: {out}");
    assert_eq!(out["done"], conns, "every connection ran: {out}");
    assert_eq!(out["bad_count"], 0, "lost or reordered bytes: {out}");
    assert_eq!(out["error_count"], 0, "{out}");
    assert_eq!(out["ok"], conns, "{out}");
    out
}

const LOAD_CONNS: u64 = 2000;

#[test]
fn fast_path_carries_every_byte_in_order() {
    let Some(_serial) = serial_or_skip("fast_path_carries_every_byte_in_order") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let mut agent = agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], true);
    let before = agent.counters().expect("counters");
    let out = load(&topo, LOAD_CONNS, 11, None);
    let after = agent.counters().expect("counters");
    let payload = out["bytes"].as_u64().unwrap_or(0);
    let carried = after.sk_msg.bytes - before.sk_msg.bytes;
    eprintln!(
        "fast path: {carried} of {payload} payload bytes redirected, {} sockets pinned to TCP",
        after.sk_msg.pinned - before.sk_msg.pinned
    );
    assert_eq!(after.connect4.redirected - before.connect4.redirected, LOAD_CONNS);
    assert!(
        carried >= payload / 2,
        "most payload bytes must take the fast path: {carried} of {payload}"
    );
}

#[test]
fn first_write_race_with_packets_on_the_other_cpu_keeps_order() {
    let Some(_serial) = serial_or_skip("first_write_race_with_packets_on_the_other_cpu") else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs 2 CPUs to move packet processing off the client's CPU"
    );
    let topo = Topology::new(1).expect("topology");
    // Client on CPU 0, every veth's receive processing on CPU 1.
    topo.set_rps("2").expect("RPS on the veth");
    let mut agent = agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], true);
    let before = agent.counters().expect("counters");
    load(&topo, LOAD_CONNS, 12, Some(0));
    let after = agent.counters().expect("counters");
    let pinned = after.sk_msg.pinned - before.sk_msg.pinned;
    eprintln!(
        "rps: {pinned} sockets met the first-write race and stayed on TCP; {} bytes redirected",
        after.sk_msg.bytes - before.sk_msg.bytes
    );
    assert!(after.sk_msg.redirected > before.sk_msg.redirected, "{after:?}");
    assert!(
        pinned > 0,
        "with packet processing on the other CPU some first writes must race the agent's \
         socket into the map; none did, so this run did not exercise the race"
    );
}

#[test]
fn fast_path_off_keeps_sockets_out_of_the_map() {
    let Some(_serial) = serial_or_skip("fast_path_off_keeps_sockets_out_of_the_map") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let mut agent = agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], false);
    let before = agent.counters().expect("counters");
    load(&topo, LOAD_CONNS, 13, None);
    let after = agent.counters().expect("counters");
    assert_eq!(after.connect4.redirected - before.connect4.redirected, LOAD_CONNS);
    assert_eq!(after.getsockopt.redirected - before.getsockopt.redirected, LOAD_CONNS);
    assert_eq!(
        after.sock_ops.redirected, before.sock_ops.redirected,
        "no socket entered the map"
    );
    assert_eq!(after.sk_msg, before.sk_msg, "sk_msg never ran: {after:?}");
    // Switched on at run time, new connections take the fast path again.
    agent.command("fast-path on").expect("fast path on");
    assert_eq!(probe(&topo, 0, VIP)["echo_ok"], true);
    let on = agent.counters().expect("counters");
    assert!(on.sk_msg.bytes > after.sk_msg.bytes, "{on:?}");
}

/// Floods a connection whose agent side stops reading; returns the
/// client's report and the fast-path bytes counted meanwhile.
fn flood(topo: &Topology, agent: &mut TestAgent, prefix: u64, max: u64, keep_fast_path: bool) -> (Value, u64) {
    let before = agent.counters().expect("counters");
    let mut args: Vec<String> = [
        "flood",
        "--to",
        &VIP.to_string(),
        "--prefix",
        &prefix.to_string(),
        "--max-bytes",
        &max.to_string(),
        "--secs",
        "15",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if keep_fast_path {
        args.push("--keep-fast-path".into());
    }
    let mut flood = pod::spawn(Path::new(POD_BIN), &topo.pods[0], &args).expect("start flood");
    let out = flood.next_json(Duration::from_secs(40)).expect("flood result");
    eprintln!(
        "flood (keep_fast_path={keep_fast_path}): {out}; TCP memory {:?} pages",
        sockstat_tcp_mem_pages()
    );
    let during = agent.counters().expect("counters");
    drop(flood.stdin.take());
    flood.process.wait_timeout(Duration::from_secs(10)).expect("flood exit");
    (out, during.sk_msg.bytes - before.sk_msg.bytes)
}

#[test]
fn flooding_client_is_bounded_once_its_connection_leaves_the_fast_path() {
    let Some(_serial) = serial_or_skip("flooding_client_is_bounded") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let mut agent = agent(&topo, vec![topo.pods[0].cgroup.path().to_owned()], true);
    const PREFIX: u64 = 4 << 20;
    const BOUND: u64 = 64 << 20;
    // The hazard: a reader that stops while the connection stays in the fast
    // path lets the client queue far more than any socket buffer.
    let (held, _) = flood(&topo, &mut agent, PREFIX, 2 * BOUND, true);
    assert_eq!(held["left"], "HELD", "{held}");
    assert_eq!(
        held["written_after_left"].as_u64(),
        Some(2 * BOUND),
        "no back-pressure inside the fast path (kernel behaviour this test relies on): {held}"
    );
    // Taken out of the fast path, the same client is held back by TCP.
    let (out, fast_bytes) = flood(&topo, &mut agent, PREFIX, 512 << 20, false);
    assert_eq!(out["left"], "LEFT", "{out}");
    assert!(
        fast_bytes >= PREFIX,
        "the prefix went through the fast path ({fast_bytes} bytes)"
    );
    let written = out["written_after_left"].as_u64().expect("written");
    assert_eq!(out["blocked"], true, "the client must be held back: {out}");
    assert!(written < BOUND, "{written} bytes queued for a reader that stopped");
}

/// Pages of TCP memory in use on the node (`/proc/net/sockstat`, `TCP: ... mem N`).
fn sockstat_tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut fields = tcp.split_whitespace();
    while let Some(f) = fields.next() {
        if f == "mem" {
            return fields.next()?.parse().ok();
        }
    }
    None
}
