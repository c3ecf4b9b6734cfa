//! The agent started as its DaemonSet starts it on a systemd + containerd
//! cgroup v2 node: its own container cgroup, a private cgroup namespace,
//! cgroup2 mounted with `nsdelegate`, the host's hierarchy reached through
//! the mount its init step makes — and stopped and rolled the way the
//! kubelet stops and rolls it, under load, counting failed calls.
//!
//! Topology: the agent, three greeter backends and a kube-proxy stand-in
//! (the Service VIP, balanced per connection) in the node's network
//! namespace; clients in pod namespaces and cgroups. Needs root.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use balancer_agent::ebpf::query::{self, Hook};
use balancer_tests::{
    built,
    cgroup::Cgroup,
    clients::{self, backends, GrpcioLoad},
    container::{CgroupView, HostCgroupMount, NsDelegate},
    foreign::ForeignConnect4,
    kubeproxy::KubeProxy,
    node_agent::{NodeAgent, NodeAgentOptions},
    pod::PodProcess,
    privileged::serial_or_skip,
    process::{place, ChildGuard},
    topology::{Pod, Topology},
};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 8000);
const BACKENDS: [(&str, &str); 3] = [
    ("greeter-a", "127.0.0.1:50071"),
    ("greeter-b", "127.0.0.1:50072"),
    ("greeter-c", "127.0.0.1:50073"),
];

/// A node: topology, nsdelegate, the host hierarchy as the init step mounts
/// it, the backends and the kube-proxy stand-in for the VIP.
struct Node {
    _kube_proxy: KubeProxy,
    _backends: Vec<ChildGuard>,
    host: HostCgroupMount,
    dir: tempfile::TempDir,
    topo: Topology,
    /// Kept last: the cgroup2 mount's options come back once all is gone.
    _nsdelegate: NsDelegate,
}

impl Node {
    fn new(pods: usize) -> Node {
        let nsdelegate = NsDelegate::enable().expect("cgroup2 nsdelegate");
        assert!(NsDelegate::active(), "nsdelegate is on for the test");
        let topo = Topology::new(pods).expect("topology");
        let mut backends = Vec::new();
        for (name, addr) in BACKENDS {
            let mut cmd = Command::new(built("greeter-server"));
            cmd.args(["--listen", addr, "--name", name]).stdout(Stdio::null());
            place(&mut cmd, Some(&topo.node.netns), None).expect("place backend");
            backends.push(ChildGuard::new(cmd.spawn().expect("start greeter-server")));
        }
        let init = topo.root_cgroup.child("init").expect("init container cgroup");
        let host_dir = PathBuf::from(format!("/run/{}", balancer_tests::unique_name("balancer-test-cg")));
        let host = HostCgroupMount::create(&built("balancer-agent"), host_dir, &init).expect("mount-cgroup2");
        drop(init);
        let targets: Vec<SocketAddr> = BACKENDS.iter().map(|(_, a)| a.parse().expect("addr")).collect();
        let kube_proxy = KubeProxy::start(&built("balancer-test-pod"), &topo, VIP, &targets).expect("kube-proxy");
        Node {
            _kube_proxy: kube_proxy,
            _backends: backends,
            host,
            dir: tempfile::tempdir().expect("tempdir"),
            topo,
            _nsdelegate: nsdelegate,
        }
    }

    /// The static configuration: the programs attach at the enrolled pod's
    /// cgroup, which the agent's container cgroup is not below.
    fn config(&self) -> PathBuf {
        self.config_with(0)
    }

    /// The same with `extra` more services (VIPs after the greeter's).
    fn config_with(&self, extra: u8) -> PathBuf {
        let path = self.dir.path().join("balancer.yaml");
        let mut s = format!(
            "listen: {}:15001\nadmin: 127.0.0.1:15000\nattach_cgroup: {}\nenroll:\n  - {}\nservices:\n  - name: greeter\n    vip: {VIP}\n    endpoints:\n",
            self.topo.node.ip,
            self.host.view_of(self.attach().path()).display(),
            self.host.view_of(self.topo.pods[0].cgroup.path()).display(),
        );
        for (_, addr) in BACKENDS {
            s.push_str(&format!("      - {{ address: {addr} }}\n"));
        }
        for i in 0..extra {
            s.push_str(&format!(
                "  - name: extra-{i}\n    vip: 10.96.9.{i}:8000\n    endpoints:\n      - {{ address: {} }}\n",
                BACKENDS[0].1
            ));
        }
        std::fs::write(&path, s).expect("write config");
        path
    }

    /// Where the programs attach: a cgroup the agent's container cgroup is
    /// not below (its accepted sockets need sock_ops attached at its own).
    fn attach(&self) -> &Cgroup {
        &self.topo.pods[0].cgroup
    }

    fn agent_options(&self) -> NodeAgentOptions {
        NodeAgentOptions {
            config: Some(self.config()),
            args: Vec::new(),
            env: vec![("BALANCER_CGROUP_ROOT".to_owned(), self.host.dir().display().to_string())],
            view: CgroupView::Namespaced,
            read_only: vec![self.host.dir().to_owned()],
        }
    }

    fn start_agent(&self, cgroup: &Cgroup) -> NodeAgent {
        NodeAgent::start(
            &built("balancer-agent"),
            &self.topo.node.netns,
            cgroup,
            &self.agent_options(),
        )
        .expect("start balancer-agent")
    }
}

/// greeter-client in `pod`: `calls` calls over one channel to the VIP.
fn load(pod: &Pod, calls: u64) -> PodProcess {
    clients::greeter(&built("greeter-client"), &pod.netns, &pod.cgroup, VIP, calls)
}

fn grpcio_load(node: &Node, calls: u64) -> GrpcioLoad {
    let pod = &node.topo.pods[0];
    GrpcioLoad::start(&pod.netns, &pod.cgroup, VIP, calls, node.dir.path())
}

fn names_at(cgroup: &Path, hook: Hook) -> Vec<String> {
    let fd = std::fs::File::open(cgroup).expect("open cgroup");
    let ids = query::attached(&fd, hook, false).expect("BPF_PROG_QUERY");
    let names = query::names(&ids);
    ids.iter()
        .map(|id| names.get(id).cloned().unwrap_or_default())
        .collect()
}

/// Waits until the agent has finished `calls` calls.
fn wait_for_calls(agent: &NodeAgent, calls: u64, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if agent.calls().is_ok_and(|c| c.values().sum::<u64>() >= calls) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "the agent did not serve {calls} calls within {limit:?}; log:\n{}",
        agent.log()
    );
}

#[test]
fn a_container_shaped_agent_stays_in_its_cgroup_and_balances() {
    let Some(_serial) = serial_or_skip("a_container_shaped_agent_stays_in_its_cgroup_and_balances") else {
        return;
    };
    let node = Node::new(2);
    let mut agent = node.start_agent(&node.topo.agent_cgroup);
    agent.wait(false, Duration::from_secs(20)).expect("ready");

    // It never left the cgroup its runtime gave it, and sees itself at the
    // root of a cgroup namespace of its own.
    assert_eq!(node.topo.agent_cgroup.pids().expect("pids"), vec![agent.pid()]);
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).expect("cgroup namespace");
    assert_ne!(
        ns(&agent.pid().to_string()),
        ns("self"),
        "not in a cgroup namespace of its own"
    );

    // connect4/6 and sock_ops where the pods are; getsockopt only where the
    // agent's own sockets are (and sock_ops too: it is not below the pods).
    let attach = node.attach().path();
    assert_eq!(names_at(attach, Hook::Connect4), ["bal_connect4"]);
    assert_eq!(names_at(attach, Hook::Connect6), ["bal_connect6"]);
    assert_eq!(names_at(attach, Hook::SockOps), ["bal_sockops"]);
    assert!(
        names_at(attach, Hook::GetSockopt).is_empty(),
        "getsockopt runs for the pods"
    );
    let own_dir = node.topo.agent_cgroup.path();
    assert_eq!(names_at(own_dir, Hook::GetSockopt), ["bal_getsockopt"]);
    assert_eq!(names_at(own_dir, Hook::SockOps), ["bal_sockops"]);
    assert!(names_at(own_dir, Hook::Connect4).is_empty());

    // Calls of one connection from the enrolled pod spread over every
    // backend (the agent's own connects to them were not redirected).
    let mut client = load(&node.topo.pods[0], 300);
    let v = client.next_json(Duration::from_secs(60)).expect("client report");
    assert_eq!(v["errors"], 0, "calls failed: {v}\nagent log:\n{}", agent.log());
    let counts = backends(&v);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100],
        "{counts:?}"
    );
    assert_eq!(agent.calls().expect("stats").values().sum::<u64>(), 300);

    // The pod without the annotation reaches the VIP through kube-proxy:
    // the agent never sees its calls.
    let mut other = load(&node.topo.pods[1], 30);
    let v = other.next_json(Duration::from_secs(60)).expect("client report");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(agent.calls().expect("stats").values().sum::<u64>(), 300);

    agent.sigterm().expect("SIGTERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(30)).expect("exit"),
        Some(0),
        "{}",
        agent.log()
    );
}

#[test]
fn sigterm_under_load_fails_no_call() {
    let Some(_serial) = serial_or_skip("sigterm_under_load_fails_no_call") else {
        return;
    };
    let node = Node::new(1);
    let mut agent = node.start_agent(&node.topo.agent_cgroup);
    agent.wait(false, Duration::from_secs(20)).expect("ready");

    const CALLS: u64 = 6000;
    let client = grpcio_load(&node, CALLS);
    wait_for_calls(&agent, 500, Duration::from_secs(60));
    let stopped = Instant::now();
    agent.sigterm().expect("SIGTERM");
    let code = agent.wait_exit(Duration::from_secs(40)).expect("exit");
    let stop_took = stopped.elapsed();
    // Calls went on after the agent was gone: to the Service directly.
    let mut client = client;
    assert!(client.running(), "the load ended before the agent stopped: raise CALLS");
    let (served, failed) = client.finish();
    assert!(
        failed.is_empty(),
        "calls failed when the agent stopped: {failed:?}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(served.values().sum::<u64>(), CALLS, "{served:?}");
    assert_eq!(code, Some(0), "the agent exits cleanly: {}", agent.log());
    let log = agent.log();
    let detached = log.find("connect programs detached").expect("detached before draining");
    let draining = log.find("draining: GOAWAY").expect("then drained");
    assert!(detached < draining, "{log}");
    assert!(stop_took < Duration::from_secs(25), "the stop took {stop_took:?}");
}

#[test]
fn a_second_agent_overlapping_the_first_fails_no_call() {
    let Some(_serial) = serial_or_skip("a_second_agent_overlapping_the_first_fails_no_call") else {
        return;
    };
    let node = Node::new(1);
    let old_cgroup = node.topo.root_cgroup.child("agent-old").expect("cgroup");
    let new_cgroup = node.topo.root_cgroup.child("agent-new").expect("cgroup");
    let mut old = node.start_agent(&old_cgroup);
    old.wait(false, Duration::from_secs(20)).expect("old ready");

    const CALLS: u64 = 8000;
    let client = grpcio_load(&node, CALLS);
    wait_for_calls(&old, 500, Duration::from_secs(60));

    // The surge: a new agent on the same node while the old one serves.
    let mut new = node.start_agent(&new_cgroup);
    let status = new.wait(false, Duration::from_secs(20)).expect("new ready");
    assert!(status.ready, "{status:?}");
    // Each probe reaches its own instance.
    let old_pass = old.probe_ready().expect("probe old");
    let new_pass = new.probe_ready().expect("probe new");
    assert!(old_pass.is_ok() && new_pass.is_ok(), "{old_pass:?} {new_pass:?}");
    let old_admin = balancer_agent::app::bind::read_admin_address(&old.run_dir()).expect("old admin");
    let new_admin = balancer_agent::app::bind::read_admin_address(&new.run_dir()).expect("new admin");
    assert_ne!(old_admin, new_admin, "two instances, two admin servers");

    // The old one goes.
    old.sigterm().expect("SIGTERM");
    assert_eq!(
        old.wait_exit(Duration::from_secs(40)).expect("exit"),
        Some(0),
        "{}",
        old.log()
    );
    let (served, failed) = client.finish();
    assert!(
        failed.is_empty(),
        "calls failed in the rollout: {failed:?}\nold log:\n{}\nnew log:\n{}",
        old.log(),
        new.log()
    );
    assert_eq!(served.values().sum::<u64>(), CALLS, "{served:?}");
    // The client's re-dial went to the new agent (its connect program was
    // next in line), which served the rest.
    let served_by_new = new.calls().expect("stats").values().sum::<u64>();
    assert!(
        served_by_new > 0,
        "the new agent served nothing: {served:?}\n{}",
        new.log()
    );

    new.sigterm().expect("SIGTERM");
    assert_eq!(new.wait_exit(Duration::from_secs(40)).expect("exit"), Some(0));
}

#[test]
fn a_node_without_cgroup_v2_leaves_the_agent_up_not_ready_and_settled() {
    let Some(_serial) = serial_or_skip("a_node_without_cgroup_v2_leaves_the_agent_up_not_ready_and_settled") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("balancer.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {}:15001\nadmin: 127.0.0.1:15000\nservices:\n  - name: greeter\n    vip: {VIP}\n    endpoints:\n      - {{ address: 127.0.0.1:50071 }}\n",
            topo.node.ip
        ),
    )
    .expect("config");
    let opts = NodeAgentOptions {
        config: Some(config),
        args: Vec::new(),
        env: Vec::new(),
        view: CgroupView::NoCgroup2,
        read_only: Vec::new(),
    };
    let mut agent =
        NodeAgent::start(&built("balancer-agent"), &topo.node.netns, &topo.agent_cgroup, &opts).expect("start");
    let status = agent.wait(true, Duration::from_secs(20)).expect("settled");
    assert!(!status.ready, "{status:?}");
    let reason = status.not_ready.join("; ");
    assert!(reason.contains("cgroup v2"), "{reason}");
    // It says so in one line and does not restart in a loop.
    let log = agent.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("this node cannot run balancer"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.status().is_ok(), "the agent is still up");
    // /readyz says not ready, and why; the rollout's probe passes.
    let (code, body) = agent.get("/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cgroup v2"), "{body}");
    let probe = agent.probe_ready().expect("probe");
    assert!(probe.as_ref().is_ok_and(|l| l.contains("settled")), "{probe:?}");
    let (_, metrics) = agent.get("/metrics").expect("metrics");
    assert!(metrics.contains("balancer_node_unsupported 1"), "{metrics}");

    agent.sigterm().expect("SIGTERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).expect("exit"), Some(0));
}

/// A backend on the node's address, which pods reach without the agent.
fn direct_backend(node: &Node) -> (ChildGuard, SocketAddrV4) {
    let addr = SocketAddrV4::new(node.topo.node.ip, 50080);
    let mut cmd = Command::new(built("greeter-server"));
    cmd.args(["--listen", &addr.to_string(), "--name", "greeter-direct"])
        .stdout(Stdio::null());
    place(&mut cmd, Some(&node.topo.node.netns), None).expect("place backend");
    (ChildGuard::new(cmd.spawn().expect("start greeter-server")), addr)
}

#[test]
fn a_foreign_connect_program_that_runs_first_is_reported() {
    let Some(_serial) = serial_or_skip("a_foreign_connect_program_that_runs_first_is_reported") else {
        return;
    };
    let node = Node::new(1);
    let (_direct, direct) = direct_backend(&node);
    // Attached before the agent, at the same cgroup: it runs first and
    // turns the VIP into a backend address, as a CNI's socket LB does.
    let _foreign = ForeignConnect4::attach(node.attach().path(), "cil_sock4_conn", VIP, direct).expect("foreign");
    let mut agent = node.start_agent(&node.topo.agent_cgroup);
    let status = agent.wait(true, Duration::from_secs(20)).expect("settled");
    assert!(!status.ready, "{status:?}");
    let reasons = status.not_ready.join("; ");
    assert!(
        reasons.contains("cil_sock4_conn") && reasons.contains("runs before"),
        "{reasons}"
    );
    let (_, metrics) = agent.get("/metrics").expect("metrics");
    assert!(
        metrics.contains("balancer_foreign_connect_programs{runs_first=\"true\"} 1"),
        "{metrics}"
    );
    // What it means: the pod's calls never reach the agent.
    let mut client = load(&node.topo.pods[0], 50);
    let v = client.next_json(Duration::from_secs(60)).expect("client report");
    assert_eq!(backends(&v), BTreeMap::from([("greeter-direct".to_owned(), 50)]), "{v}");
    assert_eq!(agent.calls().expect("stats").values().sum::<u64>(), 0);
}

#[test]
fn a_foreign_connect_program_that_runs_after_balancers_is_only_noted() {
    let Some(_serial) = serial_or_skip("a_foreign_connect_program_that_runs_after_balancers_is_only_noted") else {
        return;
    };
    let node = Node::new(1);
    let (_direct, direct) = direct_backend(&node);
    // At an ancestor of the attach cgroup: the kernel runs it after
    // balancer's program, which has already redirected the VIP.
    let _foreign =
        ForeignConnect4::attach(node.topo.root_cgroup.path(), "cil_sock4_conn", VIP, direct).expect("foreign");
    let mut agent = node.start_agent(&node.topo.agent_cgroup);
    let status = agent.wait(false, Duration::from_secs(20)).expect("ready");
    assert!(
        status.warnings.iter().any(|w| w.contains("cil_sock4_conn")),
        "{status:?}"
    );
    let mut client = load(&node.topo.pods[0], 90);
    let v = client.next_json(Duration::from_secs(60)).expect("client report");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(backends(&v).len(), 3, "balanced by the agent: {v}");
}

#[test]
fn a_stream_in_flight_when_the_agent_stops_arrives_whole() {
    let Some(_serial) = serial_or_skip("a_stream_in_flight_when_the_agent_stops_arrives_whole") else {
        return;
    };
    let node = Node::new(1);
    let mut agent = node.start_agent(&node.topo.agent_cgroup);
    agent.wait(false, Duration::from_secs(20)).expect("ready");
    // 60 replies of 64 KiB, one every 40 ms: about 2.4 s and 3.8 MiB on the
    // fast path, with the agent stopping in the middle.
    let pod = &node.topo.pods[0];
    let stream = GrpcioLoad::case(&pod.netns, &pod.cgroup, VIP, "stream=60,65536,40", node.dir.path());
    wait_for_calls_started(&agent, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(600));
    agent.sigterm().expect("SIGTERM");
    let report = stream.report();
    assert_eq!(report["count"], 60, "{report}\n{}", agent.log());
    assert_eq!(report["in_order"], true, "{report}");
    assert_eq!(report["sizes_ok"], true, "{report}");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(40)).expect("exit"),
        Some(0),
        "{}",
        agent.log()
    );
}

/// Waits until the agent has a call in flight.
fn wait_for_calls_started(agent: &NodeAgent, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let (_, stats) = agent.get("/api/v1/stats").expect("stats");
        let v: serde_json::Value = serde_json::from_str(&stats).expect("json");
        let in_flight: u64 = v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["in_flight"].as_u64())
            .sum();
        if in_flight > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no call reached the agent within {limit:?}; log:\n{}", agent.log());
}

#[test]
fn vips_that_do_not_fit_the_services_map_are_named_and_the_rest_is_balanced() {
    let Some(_serial) = serial_or_skip("vips_that_do_not_fit_the_services_map_are_named_and_the_rest_is_balanced")
    else {
        return;
    };
    let node = Node::new(1);
    let mut opts = node.agent_options();
    opts.config = Some(node.config_with(6));
    // Seven VIPs, room for four: the greeter's (first in address order)
    // and three others fit.
    opts.env.push(("BALANCER_SERVICES_MAP_SIZE".into(), "4".into()));
    let mut agent = NodeAgent::start(
        &built("balancer-agent"),
        &node.topo.node.netns,
        &node.topo.agent_cgroup,
        &opts,
    )
    .expect("start");
    let status = agent.wait(true, Duration::from_secs(20)).expect("settled");
    assert!(!status.ready, "{status:?}");
    let reasons = status.not_ready.join("; ");
    assert!(
        reasons.contains("3 Service VIP:port pairs do not fit the SERVICES map (4 entries)")
            && reasons.contains("10.96.9.3:8000, 10.96.9.4:8000, 10.96.9.5:8000"),
        "{reasons}"
    );
    let (_, metrics) = agent.get("/metrics").expect("metrics");
    assert!(metrics.contains("balancer_services_map_overflow 3"), "{metrics}");
    // Enrollment went on: the pod's calls to the VIP that fits are
    // balanced by the agent.
    let mut client = load(&node.topo.pods[0], 90);
    let v = client.next_json(Duration::from_secs(60)).expect("client report");
    assert_eq!(v["errors"], 0, "{v}\n{}", agent.log());
    assert_eq!(backends(&v).len(), 3, "{v}");
    assert_eq!(agent.calls().expect("stats").values().sum::<u64>(), 90);
}
