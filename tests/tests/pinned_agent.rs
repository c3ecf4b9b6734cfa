//! The running agent (Kubernetes mode, against the fake API server, started
//! as its DaemonSet starts it) and a pod whose gRPC connection to a Service
//! VIP was opened before the agent enrolled it: the agent's sweeps count
//! the connection in `balancerctl pod show`, and once the pod is annotated
//! `balancer.io/reconnect-pinned: enabled` they close it, and the client's
//! next connection is redirected to the agent, which spreads its calls.
//!
//! Topology: the agent, the fake API server, three greeter backends and a
//! kube-proxy stand-in for the VIP in the node's network namespace; the
//! client in a pod namespace and in a cgroup named as the kubelet names a
//! pod's (`kubepods-besteffort-pod<uid>.slice`). Needs root:
//! `BALANCER_REQUIRE_PRIVILEGED=1 cargo test -p balancer-tests --test
//! pinned_agent -- --test-threads=1`.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use balancer_agent::admin::api;
use balancer_tests::{
    apiserver::{FakeApiOptions, FakeApiServer},
    built,
    container::{CgroupView, HostCgroupMount, NsDelegate},
    kubeproxy::KubeProxy,
    node_agent::{NodeAgent, NodeAgentOptions},
    pod::{self, PodProcess},
    privileged::serial_or_skip,
    process::{place, ChildGuard},
    topology::Topology,
};
use serde_json::{json, Value};

const NODE: &str = "node-pinned";
const POD_UID: &str = "5c7e1f0a-1b2c-4d3e-8f90-0123456789ab";
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 8000);
const BACKENDS: [(&str, u16); 3] = [("greeter-a", 50071), ("greeter-b", 50072), ("greeter-c", 50073)];

/// The node's objects in the API: the namespace, the greeter Service and
/// one EndpointSlice per backend (each on its own port).
fn cluster(api: &FakeApiServer) {
    let apply = |v: Value| {
        api.apply(v).expect("apply");
    };
    apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "demo" } }));
    apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "greeter", "namespace": "demo" },
        "spec": { "clusterIP": VIP.ip().to_string(), "clusterIPs": [VIP.ip().to_string()],
                  "ports": [{ "name": "grpc", "port": VIP.port(), "targetPort": 50051 }] }
    }));
    for (name, port) in BACKENDS {
        apply(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": format!("greeter-{name}"), "namespace": "demo",
                          "labels": { "kubernetes.io/service-name": "greeter" } },
            "addressType": "IPv4",
            "endpoints": [{ "addresses": ["127.0.0.1"], "conditions": { "ready": true } }],
            "ports": [{ "name": "grpc", "port": port, "protocol": "TCP" }]
        }));
    }
}

/// The client pod, opted in; `reconnect`: also annotated
/// `balancer.io/reconnect-pinned: enabled`.
fn client_pod(ip: Ipv4Addr, reconnect: bool) -> Value {
    let mut annotations = json!({ "balancer.io/inject": "enabled" });
    if reconnect {
        annotations["balancer.io/reconnect-pinned"] = json!("enabled");
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "client", "namespace": "demo", "uid": POD_UID, "annotations": annotations },
        "spec": { "nodeName": NODE, "containers": [{ "name": "client", "image": "greeter" }] },
        "status": { "phase": "Running", "qosClass": "BestEffort", "podIP": ip.to_string(),
                    "podIPs": [{ "ip": ip.to_string() }] }
    })
}

/// `balancerctl ARGS` against `agent`, run inside the node's namespace as
/// `kubectl exec` into the agent's pod would.
fn ctl(agent: &NodeAgent, topo: &Topology, args: &[&str]) -> String {
    let admin = balancer_agent::app::bind::read_admin_address(&agent.run_dir()).expect("the agent's admin address");
    let mut cmd = Command::new(built("balancerctl"));
    cmd.arg("--admin").arg(admin.to_string()).args(args);
    place(&mut cmd, Some(&topo.node.netns), None).expect("place balancerctl");
    let out = cmd.output().expect("run balancerctl");
    assert!(
        out.status.success(),
        "balancerctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The POD, PINNED and CLOSED cells of `pod show`'s table.
fn pinned_rows(table: &str) -> Vec<(String, String, String)> {
    let split = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut lines = table.lines().take_while(|l| !l.trim().is_empty());
    let head = split(lines.next().unwrap_or_default());
    let col = |row: &[String], name: &str| {
        head.iter()
            .position(|h| h == name)
            .and_then(|i| row.get(i).cloned())
            .unwrap_or_default()
    };
    lines
        .filter(|l| !l.contains("sweep failed"))
        .map(|l| {
            let row = split(l);
            (col(&row, "POD"), col(&row, "PINNED"), col(&row, "CLOSED"))
        })
        .collect()
}

/// The client pod as `/api/v1/pods` shows it.
fn client_in(agent: &NodeAgent) -> Option<api::Pod> {
    let (code, body) = agent.get("/api/v1/pods").ok()?;
    if code != 200 {
        return None;
    }
    let pods: Vec<api::Pod> = serde_json::from_str(&body).ok()?;
    pods.into_iter().find(|p| p.pod.as_deref() == Some("demo/client"))
}

fn wait_for<T>(what: &str, limit: Duration, agent: &NodeAgent, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_connection_opened_before_enrollment_is_counted_and_with_the_annotation_redialed_through_the_agent() {
    let Some(_serial) = serial_or_skip(
        "a_connection_opened_before_enrollment_is_counted_and_with_the_annotation_redialed_through_the_agent",
    ) else {
        return;
    };
    let nsdelegate = NsDelegate::enable().expect("cgroup2 nsdelegate");
    let topo = Topology::new(1).expect("topology");
    let pod = &topo.pods[0];
    let mut backends = Vec::new();
    for (name, port) in BACKENDS {
        let mut cmd = Command::new(built("greeter-server"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--name", name])
            .stdout(Stdio::null());
        place(&mut cmd, Some(&topo.node.netns), None).expect("place backend");
        backends.push(ChildGuard::new(cmd.spawn().expect("start greeter-server")));
    }
    let targets: Vec<SocketAddr> = BACKENDS
        .iter()
        .map(|(_, port)| SocketAddr::from(([127, 0, 0, 1], *port)))
        .collect();
    let _kube_proxy = KubeProxy::start(&built("balancer-test-pod"), &topo, VIP, &targets).expect("kube-proxy");
    let init = topo.root_cgroup.child("init").expect("init container cgroup");
    let host_dir = PathBuf::from(format!("/run/{}", balancer_tests::unique_name("balancer-test-cg")));
    let host = HostCgroupMount::create(&built("balancer-agent"), host_dir, &init).expect("mount-cgroup2");
    drop(init);
    let api = FakeApiServer::spawn(&FakeApiOptions::default(), Some(&topo.node.netns)).expect("fake API server");
    cluster(&api);
    api.apply(client_pod(pod.ip, false)).expect("apply the pod");
    // The kubelet's pod cgroup, below the cgroup the programs attach at.
    let pod_cgroup = pod
        .cgroup
        .child(&format!("kubepods-besteffort-pod{}.slice", POD_UID.replace('-', "_")))
        .expect("pod cgroup");

    // The client dials before there is an agent: kube-proxy picks one
    // backend for its one connection.
    let args: Vec<String> = [
        "--target",
        &VIP.to_string(),
        "--calls",
        "800",
        "--interval-ms",
        "50",
        "--json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut client: PodProcess =
        pod::spawn_in(&built("greeter-client"), &pod.netns, &pod_cgroup, &args).expect("start greeter-client");
    std::thread::sleep(Duration::from_millis(500));

    let env = [
        ("KUBECONFIG", api.kubeconfig().display().to_string()),
        ("NODE_NAME", NODE.to_owned()),
        ("HOST_IP", topo.node.ip.to_string()),
        ("BALANCER_CGROUP_ROOT", host.dir().display().to_string()),
        (
            "BALANCER_ATTACH_CGROUP",
            host.view_of(pod.cgroup.path()).display().to_string(),
        ),
        ("BALANCER_PINNED_INTERVAL_SECONDS", "1".to_owned()),
        ("BALANCER_PROCFS", "/proc".to_owned()),
    ];
    let opts = NodeAgentOptions {
        config: None,
        args: Vec::new(),
        env: env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        view: CgroupView::Namespaced,
        read_only: vec![host.dir().to_owned()],
    };
    let mut agent =
        NodeAgent::start(&built("balancer-agent"), &topo.node.netns, &topo.agent_cgroup, &opts).expect("start agent");
    agent.wait(false, Duration::from_secs(30)).expect("ready");

    // Enrolled, swept: the connection that bypasses the agent is counted,
    // not closed.
    let counted = wait_for("the pinned connection counted", Duration::from_secs(15), &agent, || {
        client_in(&agent).filter(|p| p.pinned == Some(1))
    });
    assert!(!counted.reconnect_pinned);
    assert_eq!(counted.pinned_closed, 0);
    let table = ctl(&agent, &topo, &["pod", "show"]);
    assert_eq!(
        pinned_rows(&table),
        vec![("demo/client".to_owned(), "1".to_owned(), "off".to_owned())],
        "{table}"
    );
    // Its calls never reach the agent, sweep after sweep.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(agent.calls().expect("stats").values().sum::<u64>(), 0);
    assert_eq!(client_in(&agent).and_then(|p| p.pinned), Some(1));

    // Opted in: the next sweep closes it, the client re-dials, and the
    // re-dial is redirected to the agent.
    api.apply(client_pod(pod.ip, true)).expect("annotate the pod");
    wait_for("the pinned connection closed", Duration::from_secs(15), &agent, || {
        client_in(&agent).filter(|p| p.pinned_closed == 1 && p.pinned == Some(0))
    });
    let table = ctl(&agent, &topo, &["pod", "show"]);
    assert_eq!(
        pinned_rows(&table),
        vec![("demo/client".to_owned(), "0".to_owned(), "1".to_owned())],
        "{table}"
    );
    wait_for("calls through the agent", Duration::from_secs(15), &agent, || {
        (agent.calls().ok()?.values().sum::<u64>() >= 30).then_some(())
    });
    let (_, metrics) = agent.get("/metrics").expect("metrics");
    assert!(
        metrics.contains("balancer_pinned_connections_closed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("balancer_pinned_connections{namespace=\"demo\"} 0"),
        "{metrics}"
    );

    let report = client.next_json(Duration::from_secs(90)).expect("the client's report");
    eprintln!("the client's report: {report}");
    assert!(
        client
            .process
            .wait_timeout(Duration::from_secs(10))
            .expect("wait")
            .is_some(),
        "the client exits"
    );
    // At most the call on the wire when the connection was closed fails.
    assert!(report["errors"].as_u64().unwrap_or(u64::MAX) <= 1, "{report}");
    // Before: one backend (kube-proxy's pick for the one connection);
    // after: the agent spreads the calls over all three.
    let spread = report["backends"].as_object().cloned().unwrap_or_default();
    assert_eq!(spread.len(), 3, "{report}\nagent log:\n{}", agent.log());
    let through_agent = agent.calls().expect("stats").values().sum::<u64>();
    assert!(through_agent >= 30, "{through_agent}");
    assert!(
        report["ok"].as_u64().unwrap_or(0) > through_agent,
        "calls before the close went past the agent: {report}"
    );

    agent.sigterm().expect("SIGTERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(30)).expect("exit"),
        Some(0),
        "{}",
        agent.log()
    );
    drop(client);
    drop(agent);
    drop(pod_cgroup);
    drop(api);
    drop(host);
    drop(backends);
    drop(topo);
    drop(nsdelegate);
}
