//! The real agent on the real kernel: an enrolled pod's gRPC client dials a
//! Service VIP that nothing routes; the agent's programs redirect the
//! connection and the agent spreads every call over the endpoints.
//!
//! Topology: the agent and three greeter backends (tonic) in the test's
//! "node" network namespace, the client (tonic's greeter-client) in a pod
//! namespace and cgroup. Needs root; see `balancer_tests::privileged`.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use balancer_testing::{
    agent::{self, AgentProcess, Log},
    http,
};
use balancer_tests::{
    built,
    cgroup::Cgroup,
    otlp::Collector,
    privileged::serial_or_skip,
    process::{place, ChildGuard},
    topology::{Pod, Topology},
};

const VIP: &str = "10.96.0.10:8000";
const BACKENDS: [(&str, &str, &str); 3] = [
    ("greeter-a", "127.0.0.1:50061", "v1"),
    ("greeter-b", "127.0.0.1:50062", "v1"),
    ("greeter-c", "127.0.0.1:50063", "v2"),
];
const ADMIN: &str = "127.0.0.1:15000";

/// The node side: three backends and the agent, in the node's namespace.
struct Node {
    /// In the order of `BACKENDS`.
    backends: Vec<ChildGuard>,
    agent: AgentProcess,
    config: PathBuf,
    dir: tempfile::TempDir,
}

fn config(topo: &Topology, weights: Option<(u32, u32)>) -> String {
    let listen = SocketAddr::new(topo.node.ip.into(), 15001);
    let mut s = format!(
        "listen: {listen}\nadmin: {ADMIN}\nattach_cgroup: {}\nenroll:\n  - {}\nservices:\n  - name: greeter\n    vip: {VIP}\n    endpoints:\n",
        topo.root_cgroup.path().display(),
        topo.pods[0].cgroup.path().display(),
    );
    for (_, addr, version) in BACKENDS {
        s.push_str(&format!(
            "      - {{ address: {addr}, labels: {{ version: {version} }} }}\n"
        ));
    }
    if let Some((v1, v2)) = weights {
        s.push_str(&format!(
            "    routes:\n      - backends:\n          - {{ labels: {{ version: v1 }}, weight: {v1} }}\n          - {{ labels: {{ version: v2 }}, weight: {v2} }}\n"
        ));
    }
    s
}

/// Runs `argv` in the node's namespace until it exits (bounded).
fn node_cmd(topo: &Topology, argv: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    place(&mut cmd, Some(&topo.node.netns), None).expect("place");
    cmd.output().expect("run in node netns")
}

fn start_node(topo: &Topology, weights: Option<(u32, u32)>) -> Node {
    start_node_with(topo, &config(topo, weights), None)
}

/// The node on the static file `text`, with the backends in
/// `backend_cgroup` (pods of this node under the attach cgroup) or, by
/// default, outside the attach cgroup.
fn start_node_with(topo: &Topology, text: &str, backend_cgroup: Option<&Cgroup>) -> Node {
    let mut backends = Vec::new();
    for (name, addr, _) in BACKENDS {
        let mut cmd = Command::new(built("greeter-server"));
        cmd.args(["--listen", addr, "--name", name]).stdout(Stdio::null());
        place(&mut cmd, Some(&topo.node.netns), backend_cgroup).expect("place backend");
        backends.push(ChildGuard::new(cmd.spawn().expect("start greeter-server")));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("balancer.yaml");
    fs::write(&config_path, text).expect("write config");
    let mut cmd = agent::command(&built("balancer-agent"), Some(&config_path));
    cmd.env("RUST_LOG", "info").env("BALANCER_LOG_FORMAT", "text");
    // The agent runs in a cgroup of its own, as a service manager or a
    // container runtime would start it.
    place(&mut cmd, Some(&topo.node.netns), Some(&topo.agent_cgroup)).expect("place agent");
    let mut agent = AgentProcess::spawn(cmd, Log::File(dir.path().join("agent.log"))).expect("start balancer-agent");
    // `/readyz` on the agent's admin port, asked from inside the node's
    // namespace.
    let admin: SocketAddr = ADMIN.parse().expect("admin address");
    let ready = agent.wait_until("balancer-agent ready", Duration::from_secs(20), || {
        topo.node.netns.run(move || http::ok(admin, "/readyz")).unwrap_or(false)
    });
    if let Err(e) = ready {
        panic!("{e}");
    }
    Node {
        backends,
        agent,
        config: config_path,
        dir,
    }
}

impl Node {
    fn log(&self) -> String {
        self.agent.log()
    }
}

/// The agent's connections map (`/api/v1/maps/CONNECTIONS`), entries decoded
/// as `balancerctl map dump` shows them; asked from inside the node's
/// namespace.
fn connections_map(topo: &Topology) -> Vec<String> {
    let admin: SocketAddr = ADMIN.parse().expect("admin address");
    let r = topo
        .node
        .netns
        .run(move || http::get(admin, "/api/v1/maps/CONNECTIONS"))
        .expect("thread in the node's namespace")
        .unwrap_or_else(|e| panic!("connections map: {e}"));
    let dump: serde_json::Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("connections map: {e}: {} {}", r.status, r.body));
    dump["entries"]
        .as_array()
        .map(|es| es.iter().map(|e| format!("{} -> {}", e["key"], e["value"])).collect())
        .unwrap_or_default()
}

/// greeter-client in the pod: `calls` calls over one connection to the VIP.
fn client(pod: &Pod, calls: u64) -> serde_json::Value {
    client_with(pod, calls, &[])
}

/// [`client`] with more arguments (`--header NAME=VALUE`, ...).
fn client_with(pod: &Pod, calls: u64, extra: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(built("greeter-client"));
    cmd.args([
        "--target",
        VIP,
        "--calls",
        &calls.to_string(),
        "--concurrency",
        "8",
        "--json",
    ]);
    cmd.args(extra);
    place(&mut cmd, Some(&pod.netns), Some(&pod.cgroup)).expect("place client");
    let out = cmd.stderr(Stdio::piped()).output().expect("run greeter-client");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "greeter-client printed no JSON ({e}): stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One call from `pod` to `target` (2 s deadline): did it succeed?
fn one_call_succeeds(pod: &Pod, target: &str) -> bool {
    let mut cmd = Command::new(built("greeter-client"));
    cmd.args(["--target", target, "--calls", "1", "--json", "--timeout-ms", "2000"]);
    place(&mut cmd, Some(&pod.netns), Some(&pod.cgroup)).expect("place client");
    cmd.stderr(Stdio::null())
        .output()
        .expect("run greeter-client")
        .status
        .success()
}

fn per_backend(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v["backends"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

#[test]
fn one_connection_from_an_enrolled_pod_is_spread_call_by_call() {
    let Some(_serial) = serial_or_skip("one_connection_from_an_enrolled_pod_is_spread_call_by_call") else {
        return;
    };
    let topo = Topology::new(2).expect("topology");
    let node = start_node(&topo, None);

    let v = client(&topo.pods[0], 300);
    assert_eq!(v["errors"], 0, "calls failed: {v}\nagent log:\n{}", node.log());
    let counts = per_backend(&v);
    assert_eq!(
        counts.len(),
        3,
        "every backend serves calls of the one connection: {counts:?}"
    );
    for (name, n) in &counts {
        assert_eq!(
            *n, 100,
            "round robin over 3 endpoints: {name} got {n} of 300 ({counts:?})"
        );
    }

    // The backends are not under the attach cgroup: the agent's connections
    // to them could not be paired, and left the fast path's maps.
    let upstream: Vec<String> = connections_map(&topo)
        .into_iter()
        .filter(|e| e.contains("upstream"))
        .collect();
    assert!(
        upstream.is_empty(),
        "unpaired upstream connections stayed in the map: {upstream:?}"
    );

    // A pod that is not enrolled is not redirected: the VIP is unroutable.
    assert!(
        !one_call_succeeds(&topo.pods[1], VIP),
        "a pod that is not enrolled reached the VIP"
    );
}

/// Endpoints that are pods of this node (under the attach cgroup): the
/// agent's connections to them skip TCP both ways, like the client's.
#[test]
fn connections_to_endpoints_on_this_node_take_the_fast_path_too() {
    let Some(_serial) = serial_or_skip("connections_to_endpoints_on_this_node_take_the_fast_path_too") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let backends = topo.root_cgroup.child("backends").expect("backends cgroup");
    let node = start_node_with(&topo, &config(&topo, None), Some(&backends));

    let v = client(&topo.pods[0], 300);
    assert_eq!(v["errors"], 0, "calls failed: {v}\nagent log:\n{}", node.log());
    let counts = per_backend(&v);
    assert_eq!(counts.len(), 3, "every backend serves calls: {counts:?}");
    for (name, n) in &counts {
        assert_eq!(
            *n, 100,
            "round robin over 3 endpoints: {name} got {n} of 300 ({counts:?})"
        );
    }
    let entries = connections_map(&topo);
    let upstream: Vec<&String> = entries.iter().filter(|e| e.contains("upstream")).collect();
    assert_eq!(
        upstream.len(),
        3,
        "one paired upstream connection per endpoint: {entries:#?}\nagent log:\n{}",
        node.log()
    );
    for e in &upstream {
        assert!(
            e.contains("pod path redirect agent path redirect"),
            "both ends of an upstream connection send through the fast path: {e}"
        );
    }
}

#[test]
fn weights_change_live_and_a_killed_agent_leaves_no_redirection() {
    let Some(_serial) = serial_or_skip("weights_change_live_and_a_killed_agent_leaves_no_redirection") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let mut node = start_node(&topo, Some((90, 10)));

    let v = client(&topo.pods[0], 1000);
    assert_eq!(v["errors"], 0, "calls failed: {v}");
    let counts = per_backend(&v);
    let v2 = counts.get("greeter-c").copied().unwrap_or(0);
    assert!(
        (80..=120).contains(&v2),
        "v2 gets 10% ±2% of 1000 calls, got {v2}: {counts:?}"
    );

    // 0:100 — applied by the running agent within a second.
    fs::write(&node.config, config(&topo, Some((0, 100)))).expect("rewrite config");
    std::thread::sleep(Duration::from_millis(1200));
    let v = client(&topo.pods[0], 200);
    assert_eq!(per_backend(&v), BTreeMap::from([("greeter-c".to_owned(), 200)]), "{v}");

    // Fail-open: once the agent is gone the pod's connect is not redirected.
    node.agent.kill().expect("kill agent");
    assert!(
        !one_call_succeeds(&topo.pods[0], VIP),
        "the VIP answered after the agent was killed"
    );
}

#[test]
fn the_real_agent_refuses_connections_that_were_not_redirected() {
    let Some(_serial) = serial_or_skip("the_real_agent_refuses_connections_that_were_not_redirected") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let node = start_node(&topo, None);
    // From the pod, straight to the agent's listener: no original
    // destination, so the agent closes it without reading or answering.
    assert!(
        one_call_succeeds(&topo.pods[0], VIP),
        "the redirected call works: {}",
        node.log()
    );
    let listen = format!("{}:15001", topo.node.ip);
    assert!(
        !one_call_succeeds(&topo.pods[0], &listen),
        "the agent proxied a connection without an original destination: {}",
        node.log()
    );
}

/// Python's grpcio (a gRPC stack nobody here wrote) in the enrolled pod,
/// through the kernel redirect: spread, 4 and 8 MiB messages, bidi streaming.
#[test]
fn a_grpcio_client_in_the_pod_goes_through_the_redirect() {
    let Some(_serial) = serial_or_skip("a_grpcio_client_in_the_pod_goes_through_the_redirect") else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = balancer_tests::clients::python();
    let topo = Topology::new(1).expect("topology");
    let node = start_node(&topo, None);
    let pod = &topo.pods[0];
    // gRPC C-core opens a dual-stack AF_INET6 socket and dials the IPv4 VIP
    // as ::ffff:10.96.0.10: connect6 must redirect it like connect4 does.
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("python/peer.py"))
        .args(["client", "--target", VIP, "spread=300,8", "large", "bidi"]);
    place(&mut cmd, Some(&pod.netns), Some(&pod.cgroup)).expect("place client");
    let err_path = node.dir.path().join("grpcio-client.err");
    let err_file = fs::File::create(&err_path).expect("stderr file");
    let mut child = ChildGuard::new(
        cmd.stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .expect("start grpcio client"),
    );
    // Its report is one JSON line: it fits the pipe while we wait.
    let mut stdout = child.child_mut().stdout.take().expect("stdout");
    let status = child.wait_timeout(Duration::from_secs(120)).expect("wait");
    assert!(status.is_some(), "the grpcio client ran for more than 120 s");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).expect("read the client's report");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        let err = fs::read_to_string(&err_path).unwrap_or_default();
        panic!(
            "grpcio client printed no JSON ({e}): {out:?}\nits stderr:\n{err}\nagent log:\n{}",
            node.log()
        )
    });
    let spread = &r["spread=300,8"];
    assert_eq!(spread["errors"], serde_json::json!({}), "{r}");
    for (name, _, _) in BACKENDS {
        assert_eq!(spread["backends"][name], 100, "round robin over 3 endpoints: {r}");
    }
    for size in [4u64 << 20, (8 << 20) + 17] {
        let case = &r["large"][size.to_string()];
        assert_eq!(case["echo_equal"], true, "{size}-byte echo: {r}");
        assert_eq!(case["reply_len"], size, "{size}-byte reply: {r}");
    }
    assert_eq!(r["bidi"]["pairs_ok"], true, "bidi: {r}");

    // connect6 redirected those connects and counted them in a slot of its
    // own: balancerctl shows the five programs apart.
    let ctl = built("balancerctl");
    let out = node_cmd(
        &topo,
        &[ctl.to_str().expect("path"), "--admin", ADMIN, "-j", "prog", "show"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("prog show JSON");
    let mut names: Vec<&str> = progs.iter().filter_map(|p| p["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["connect4", "connect6", "getsockopt", "sk_msg", "sock_ops"]);
    let redirected = |name: &str| {
        progs.iter().find(|p| p["name"] == name).expect("program")["counters"]["redirected"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(redirected("connect6") >= 1, "connect6's own counter: {progs:?}");
}

/// The agent in zone a on node n1; greeter-a and greeter-b in zone a (on
/// other nodes), greeter-c in zone b; `keys` are the service's extra keys,
/// `nodes` the backends' nodes in `BACKENDS` order.
fn locality_config(topo: &Topology, keys: &str, nodes: [&str; 3]) -> String {
    let listen = SocketAddr::new(topo.node.ip.into(), 15001);
    let mut s = format!(
        "listen: {listen}\nadmin: {ADMIN}\nattach_cgroup: {}\nenroll:\n  - {}\nzone: a\nnode: n1\nservices:\n  - name: greeter\n    vip: {VIP}\n{keys}    endpoints:\n",
        topo.root_cgroup.path().display(),
        topo.pods[0].cgroup.path().display(),
    );
    for ((_, addr, _), (zone, node)) in BACKENDS.iter().zip([("a", nodes[0]), ("a", nodes[1]), ("b", nodes[2])]) {
        s.push_str(&format!("      - {{ address: {addr}, zone: {zone}, node: {node} }}\n"));
    }
    s
}

/// Locality through the kernel redirect: a PreferClose service keeps the
/// pod's calls in the agent's zone, spills them to the other zone with no
/// failed call when the zone's endpoints die, and an
/// `internal_traffic_policy: Local` service stays on the node or answers
/// UNAVAILABLE saying why.
#[test]
fn calls_through_the_redirect_stay_close_and_spill_over_when_the_zone_dies() {
    let Some(_serial) = serial_or_skip("calls_through_the_redirect_stay_close_and_spill_over_when_the_zone_dies")
    else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let prefer = "    traffic_distribution: PreferClose\n";
    let mut node = start_node_with(&topo, &locality_config(&topo, prefer, ["n2", "n3", "n4"]), None);
    let pod = &topo.pods[0];

    let v = client(pod, 300);
    assert_eq!(v["errors"], 0, "calls failed: {v}\nagent log:\n{}", node.log());
    assert_eq!(
        per_backend(&v),
        BTreeMap::from([("greeter-a".to_owned(), 150), ("greeter-b".to_owned(), 150)]),
        "zone a only, round robin there: {v}"
    );

    // Zone a's backends die outright: new calls go to zone b, none fails
    // (each is retried there until outlier detection ejects zone a).
    node.backends[0].kill().expect("kill greeter-a");
    node.backends[1].kill().expect("kill greeter-b");
    let v = client(pod, 300);
    assert_eq!(
        v["errors"],
        0,
        "calls failed after zone a died: {v}\nagent log:\n{}",
        node.log()
    );
    assert_eq!(per_backend(&v), BTreeMap::from([("greeter-c".to_owned(), 300)]), "{v}");

    // internal_traffic_policy Local: greeter-c on the agent's node takes
    // every call...
    let local = "    internal_traffic_policy: Local\n";
    fs::write(&node.config, locality_config(&topo, local, ["n2", "n3", "n1"])).expect("rewrite config");
    std::thread::sleep(Duration::from_millis(1200));
    let v = client(pod, 100);
    assert_eq!(per_backend(&v), BTreeMap::from([("greeter-c".to_owned(), 100)]), "{v}");
    // ... and on another node it takes none: UNAVAILABLE, saying why.
    fs::write(&node.config, locality_config(&topo, local, ["n2", "n3", "n4"])).expect("rewrite config");
    std::thread::sleep(Duration::from_millis(1200));
    let v = client(pod, 10);
    assert_eq!(v["errors"], 10, "{v}");
    let first = v["first_error"].as_str().unwrap_or_default();
    assert!(
        first.starts_with("Unavailable")
            && first.contains("internalTrafficPolicy Local and no endpoint on this node `n1`"),
        "{v}"
    );
}

/// Consistent hashing and injected faults on redirected connections: a
/// user's calls stay on one endpoint; an injected abort never reaches an
/// endpoint; an injected delay holds the calls.
#[test]
fn ring_hash_and_injected_faults_through_the_redirect() {
    let Some(_serial) = serial_or_skip("ring_hash_and_injected_faults_through_the_redirect") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let node = start_node(&topo, None);
    let pod = &topo.pods[0];
    let ring_hash = format!(
        "{}    policy: ring-hash\n    hash_header: x-user-id\n",
        config(&topo, None)
    );
    fs::write(&node.config, &ring_hash).expect("rewrite config");
    std::thread::sleep(Duration::from_millis(1200));

    let mut owners = BTreeMap::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let header = format!("x-user-id={user}");
        for _ in 0..2 {
            let v = client_with(pod, 40, &["--header", &header]);
            assert_eq!(v["errors"], 0, "{user}: {v}\nagent log:\n{}", node.log());
            let counts = per_backend(&v);
            assert_eq!(
                counts.len(),
                1,
                "the calls of {user} went to several endpoints: {counts:?}"
            );
            let owner = counts.keys().next().cloned().unwrap_or_default();
            assert_eq!(
                owners.entry(user).or_insert_with(|| owner.clone()),
                &owner,
                "{user} moved between two connections"
            );
        }
    }
    let used: std::collections::BTreeSet<&String> = owners.values().collect();
    assert!(used.len() >= 2, "8 users all on one endpoint: {owners:?}");

    // Every call aborted by the agent with the chosen status.
    let abort = format!("{ring_hash}    fault:\n      abort: {{ status: UNAVAILABLE, percent: 100 }}\n");
    fs::write(&node.config, abort).expect("rewrite config");
    std::thread::sleep(Duration::from_millis(1200));
    let v = client_with(pod, 50, &["--header", "x-user-id=alice"]);
    assert_eq!(v["errors"], 50, "{v}");
    assert_eq!(v["error_codes"]["Unavailable"], 50, "{v}");
    assert_eq!(v["first_error"], "Unavailable: fault injected", "{v}");

    // Every call delayed 300 ms: 8 calls one at a time take 2.4 s or more.
    let delay = format!("{ring_hash}    fault:\n      delay: {{ duration: 300ms }}\n");
    fs::write(&node.config, delay).expect("rewrite config");
    std::thread::sleep(Duration::from_millis(1200));
    let start = Instant::now();
    let mut cmd = Command::new(built("greeter-client"));
    cmd.args(["--target", VIP, "--calls", "8", "--concurrency", "1", "--json"]);
    place(&mut cmd, Some(&pod.netns), Some(&pod.cgroup)).expect("place client");
    let out = cmd.stderr(Stdio::null()).output().expect("run greeter-client");
    let took = start.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the client's JSON");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(took >= Duration::from_millis(2400), "8 delayed calls took {took:?}");
}

/// Traces on redirected connections: each call's span reaches a collector
/// (a fake one in the node's namespace); calls that carry the pod's
/// `traceparent` keep its trace with the pod's span as their parent, the
/// others each start a trace of their own.
#[test]
fn every_redirected_call_gets_a_span_in_the_pods_trace_or_its_own() {
    let Some(_serial) = serial_or_skip("every_redirected_call_gets_a_span_in_the_pods_trace_or_its_own") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let listener = topo
        .node
        .netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("thread in the node's namespace")
        .expect("collector listener");
    let collector = Collector::start_on(listener).expect("collector");
    let text = format!(
        "{}tracing:\n  otlp_endpoint: {}\n  service_name: node-1-balancer\n",
        config(&topo, None),
        collector.url()
    );
    let node = start_node_with(&topo, &text, None);
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const POD_SPAN: &str = "00f067aa0ba902b7";
    let header = format!("traceparent=00-{TRACE}-{POD_SPAN}-01");

    let v = client_with(&topo.pods[0], 30, &["--header", &header]);
    assert_eq!(v["errors"], 0, "{v}\nagent log:\n{}", node.log());
    let v = client(&topo.pods[0], 30);
    assert_eq!(v["errors"], 0, "{v}");

    let spans = collector.wait_for(60, Duration::from_secs(15));
    assert_eq!(spans.len(), 60, "one span per call\nagent log:\n{}", node.log());
    let (child, root): (Vec<_>, Vec<_>) = spans.iter().partition(|s| s.trace_id() == TRACE);
    assert_eq!((child.len(), root.len()), (30, 30));
    let backends: std::collections::BTreeSet<&str> = BACKENDS.iter().map(|(_, addr, _)| *addr).collect();
    for s in &spans {
        assert_eq!(s.service_name, "node-1-balancer");
        assert_eq!(s.span.name, "helloworld.Greeter/SayHello");
        assert_eq!(s.str("balancer.service"), Some("greeter"));
        assert_eq!(s.int("rpc.grpc.status_code"), Some(0));
        let ep = s.str("balancer.endpoint").unwrap_or_default();
        assert!(backends.contains(ep), "{ep} is not a backend");
    }
    for s in &child {
        assert_eq!(s.parent_span_id(), POD_SPAN, "the pod's span is the parent");
    }
    let child_spans: std::collections::BTreeSet<String> = child.iter().map(|s| s.span_id()).collect();
    assert_eq!(child_spans.len(), 30, "a new span per call");
    let root_traces: std::collections::BTreeSet<String> = root.iter().map(|s| s.trace_id()).collect();
    assert_eq!(root_traces.len(), 30, "a trace per call without a traceparent");
    assert!(root.iter().all(|s| s.span.parent_span_id.is_empty()));
}
