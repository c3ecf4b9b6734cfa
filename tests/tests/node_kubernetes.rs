//! The agent in Kubernetes mode, started the way deploy/daemonset.yaml starts
//! it (its init step, its environment, its probes — read from the manifest)
//! on a node shaped like a systemd + containerd cgroup v2 node: a private
//! cgroup namespace, cgroup2 with `nsdelegate`, pods in the kubelet's cgroup
//! layout, and an API server that runs as its own process and speaks HTTP.
//!
//! What it shows, with real gRPC clients in pod namespaces: calls of one
//! connection split 50:50, then 90:10 and 0:100 by a GRPCRoute change; a pod
//! without the annotation not redirected; a second agent overlapping the
//! first under load with no failed call; SIGTERM under load with no failed
//! call. Needs root.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use balancer_testing::k8s as k8s_objects;
use balancer_tests::{
    apiserver::{FakeApiOptions, FakeApiServer},
    built,
    clients::{self, backends, GrpcioLoad},
    container::{CgroupView, HostCgroupMount, NsDelegate},
    kubelet::{Kubepods, PodCgroups, Qos},
    kubeproxy::KubeProxy,
    manifest::DaemonSet,
    node_agent::{NodeAgent, NodeAgentOptions},
    privileged::serial_or_skip,
    process::{place, ChildGuard},
    topology::Topology,
};
use serde_json::{json, Value};

const NODE: &str = "node-a";
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 8000);
const V1: &str = "127.0.0.11";
const V2: &str = "127.0.0.12";
const BACKEND_PORT: u16 = 50080;

fn service(name: &str, ip: &str) -> Value {
    k8s_objects::service("demo", name, ip, VIP.port(), BACKEND_PORT)
}

fn slice(service: &str, ips: &[&str]) -> Value {
    let endpoints = ips.iter().map(|ip| k8s_objects::ready(ip)).collect();
    k8s_objects::slice("demo", &format!("{service}-x1"), service, BACKEND_PORT, endpoints)
}

fn pod(name: &str, cgroups: &PodCgroups, ip: Ipv4Addr, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": "demo", "name": name, "uid": cgroups.uid, "annotations": annotations},
           "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "client"}]},
           "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                      "qosClass": "BestEffort",
                      "containerStatuses": [{"name": "app", "image": "client", "imageID": "client",
                                             "containerID": cgroups.container_id, "ready": true,
                                             "restartCount": 0}]}})
}

fn route(v1: u32, v2: u32) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
           "metadata": {"namespace": "demo", "name": "greeter-split"},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "greeter", "port": VIP.port()}],
                    "rules": [{"matches": [{"method": {"service": "helloworld.Greeter"}}],
                               "backendRefs": [{"name": "greeter-v1", "port": VIP.port(), "weight": v1},
                                               {"name": "greeter-v2", "port": VIP.port(), "weight": v2}]}]}})
}

/// The node and everything on it but the agents.
struct Node {
    manifest: DaemonSet,
    api: FakeApiServer,
    _kube_proxy: KubeProxy,
    _backends: Vec<ChildGuard>,
    client: PodCgroups,
    other: PodCgroups,
    kubepods: Kubepods,
    host: HostCgroupMount,
    dir: tempfile::TempDir,
    topo: Topology,
    _nsdelegate: NsDelegate,
}

impl Node {
    fn new() -> Node {
        let manifest = DaemonSet::load();
        let nsdelegate = NsDelegate::enable().expect("cgroup2 nsdelegate");
        let topo = Topology::new(2).expect("topology");

        // The init step, as the manifest runs it: `balancer-agent
        // mount-cgroup2 DIR --host-proc P`; here DIR is the test's own and
        // this process stands for the host's PID 1.
        let init = &manifest.init_command;
        assert_eq!(init[..2], ["balancer-agent", "mount-cgroup2"], "{init:?}");
        assert!(init.iter().any(|a| a == "--host-proc"), "{init:?}");
        let init_cgroup = topo.root_cgroup.child("init").expect("init cgroup");
        let host_dir = PathBuf::from(format!("/run/{}", balancer_tests::unique_name("balancer-test-k8s")));
        let host = HostCgroupMount::create(&built("balancer-agent"), host_dir, &init_cgroup).expect("mount-cgroup2");
        drop(init_cgroup);

        let kubepods = Kubepods::new(&topo.root_cgroup).expect("kubepods");
        let client = kubepods.pod(Qos::BestEffort, 1).expect("client pod");
        let other = kubepods.pod(Qos::BestEffort, 2).expect("other pod");

        let mut servers = Vec::new();
        for (ip, name) in [(V1, "greeter-v1"), (V2, "greeter-v2")] {
            let mut cmd = Command::new(built("greeter-server"));
            cmd.args(["--listen", &format!("{ip}:{BACKEND_PORT}"), "--name", name])
                .stdout(Stdio::null());
            place(&mut cmd, Some(&topo.node.netns), None).expect("place backend");
            servers.push(ChildGuard::new(cmd.spawn().expect("start greeter-server")));
        }
        let targets: Vec<SocketAddr> = [V1, V2]
            .iter()
            .map(|ip| SocketAddr::new(ip.parse().expect("ip"), BACKEND_PORT))
            .collect();
        let kube_proxy = KubeProxy::start(&built("balancer-test-pod"), &topo, VIP, &targets).expect("kube-proxy");

        let api = FakeApiServer::spawn(&FakeApiOptions::default(), Some(&topo.node.netns)).expect("API server");
        let objects = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
            service("greeter", "10.96.0.10"),
            service("greeter-v1", "10.96.0.11"),
            service("greeter-v2", "10.96.0.12"),
            slice("greeter", &[V1, V2]),
            slice("greeter-v1", &[V1]),
            slice("greeter-v2", &[V2]),
            pod(
                "client",
                &client,
                topo.pods[0].ip,
                json!({"balancer.io/inject": "enabled"}),
            ),
            pod("other", &other, topo.pods[1].ip, json!({})),
        ];
        api.apply_all(objects).expect("seed the cluster");
        Node {
            manifest,
            api,
            _kube_proxy: kube_proxy,
            _backends: servers,
            client,
            other,
            kubepods,
            host,
            dir: tempfile::tempdir().expect("tempdir"),
            topo,
            _nsdelegate: nsdelegate,
        }
    }

    /// The agent's environment: the manifest's literal values, with the
    /// host hierarchy at the test's mount and the run directory the pod's; the downward API's values for
    /// this node; the kubeconfig of the API server process; and the attach
    /// cgroup narrowed to the test's `kubepods.slice` (not the machine's
    /// root).
    fn agent_env(&self, pod_name: &str) -> Vec<(String, String)> {
        let node_ip = self.topo.node.ip.to_string();
        let mut env = self
            .manifest
            .node_env(self.host.dir(), NODE, &node_ip, pod_name)
            .unwrap_or_else(|field| panic!("the DaemonSet reads {field} from the downward API; give it a value here"));
        env.push(("KUBECONFIG".into(), self.api.kubeconfig().display().to_string()));
        env.push((
            "BALANCER_ATTACH_CGROUP".into(),
            self.host.view_of(self.kubepods.slice.path()).display().to_string(),
        ));
        env
    }

    fn start_agent(&self, name: &str, cgroups: &PodCgroups) -> NodeAgent {
        let opts = NodeAgentOptions {
            config: None,
            args: Vec::new(),
            env: self.agent_env(name),
            view: CgroupView::Namespaced,
            read_only: vec![self.host.dir().to_owned()],
        };
        NodeAgent::start(
            &built("balancer-agent"),
            &self.topo.node.netns,
            &cgroups.container,
            &opts,
        )
        .expect("start balancer-agent")
    }

    /// The kubelet's readiness probe, as the manifest defines it.
    fn probe_ready(&self, agent: &NodeAgent) -> (bool, String) {
        agent
            .exec(&built("balancer-agent"), &self.manifest.readiness)
            .expect("exec probe")
    }

    fn wait_ready(&self, agent: &mut NodeAgent) {
        agent.wait(false, Duration::from_secs(30)).expect("ready");
        let start = Instant::now();
        loop {
            let (ok, out) = self.probe_ready(agent);
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "probe: {out}\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn greeter(&self, cgroups: &PodCgroups, pod: usize, calls: u64) -> Value {
        let mut c = clients::greeter(
            &built("greeter-client"),
            &self.topo.pods[pod].netns,
            &cgroups.container,
            VIP,
            calls,
        );
        c.next_json(Duration::from_secs(120)).expect("client report")
    }

    fn greeter_with(&self, calls: u64, extra: &[&str]) -> Value {
        let mut c = clients::greeter_with(
            &built("greeter-client"),
            &self.topo.pods[0].netns,
            &self.client.container,
            VIP,
            calls,
            extra,
        );
        c.next_json(Duration::from_secs(120)).expect("client report")
    }

    fn grpcio(&self, calls: u64) -> GrpcioLoad {
        GrpcioLoad::start(
            &self.topo.pods[0].netns,
            &self.client.container,
            VIP,
            calls,
            self.dir.path(),
        )
    }
}

/// Waits until `agent` serves the route with weights v1:v2.
fn wait_route(agent: &NodeAgent, v1: u32, v2: u32) {
    let start = Instant::now();
    loop {
        let (_, body) = agent.get("/api/v1/services").expect("services");
        let services: Value = serde_json::from_str(&body).expect("json");
        let weights: Vec<u64> = services
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == "demo/greeter")
            .flat_map(|s| s["routes"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["backends"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| b["weight"].as_u64())
            .collect();
        if weights == [u64::from(v1), u64::from(v2)] {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "route {v1}:{v2} not applied: {weights:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn calls(agent: &NodeAgent) -> u64 {
    agent.calls().expect("stats").values().sum()
}

#[test]
fn the_daemonset_agent_balances_routes_rolls_and_stops_without_a_failed_call() {
    let Some(_serial) = serial_or_skip("the_daemonset_agent_balances_routes_rolls_and_stops_without_a_failed_call")
    else {
        return;
    };
    let node = Node::new();
    let agent_a_cgroups = node.kubepods.pod(Qos::Burstable, 100).expect("agent pod");
    let mut a = node.start_agent("balancer-agent-a", &agent_a_cgroups);
    node.wait_ready(&mut a);
    assert_eq!(
        agent_a_cgroups.container.pids().expect("pids"),
        vec![a.pid()],
        "it stayed in its container"
    );

    // Metrics on the node's address, for the cluster's Prometheus; the
    // admin API is not there.
    let port = node.manifest.value("BALANCER_METRICS_PORT").expect("metrics port");
    let metrics = format!("{}:{port}", node.topo.node.ip);
    let (status, text) = node
        .topo
        .node
        .netns
        .run(move || {
            let c = balancer_agent::ctl::client::AdminClient::new(&metrics);
            let m = c.get_raw("/metrics").expect("scrape");
            let api = c.get_raw("/api/v1/status").expect("status");
            (api.0, String::from_utf8_lossy(&m.1).into_owned())
        })
        .expect("in the node");
    assert_eq!(status, 404, "the admin API stays on loopback");
    assert!(text.contains("balancer_ebpf_enabled 1"), "{text}");

    // 1. One connection's calls, every one balanced: the parent Service's
    // endpoints are both versions.
    let v = node.greeter(&node.client, 0, 400);
    assert_eq!(v["errors"], 0, "{v}\n{}", a.log());
    assert_eq!(
        backends(&v),
        BTreeMap::from([("greeter-v1".to_owned(), 200), ("greeter-v2".to_owned(), 200)]),
        "{v}"
    );
    let (_, pods) = a.get("/api/v1/pods").expect("pods");
    assert!(
        pods.contains("demo/client") && pods.contains(&node.topo.pods[0].ip.to_string()),
        "pod show names the enrolled pod: {pods}"
    );

    // 2. 90:10 by a GRPCRoute, applied to the running agent.
    node.api.apply(route(90, 10)).expect("route");
    wait_route(&a, 90, 10);
    let v = node.greeter(&node.client, 0, 1000);
    assert_eq!(v["errors"], 0, "{v}");
    let v2 = backends(&v).get("greeter-v2").copied().unwrap_or(0);
    assert!((70..=130).contains(&v2), "v2 gets 10% of 1000 calls ±3%: {v}");
    // The one elected agent reports the route accepted.
    let start = Instant::now();
    loop {
        let r = node.api.get("grpcroutes", Some("demo"), "greeter-split").expect("get");
        let conditions = r.as_ref().map(|r| r["status"]["parents"][0]["conditions"].clone());
        let accepted = conditions
            .as_ref()
            .and_then(|c| c.as_array().cloned())
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Accepted" && c["status"] == "True");
        if accepted {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no Accepted status: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3. 0:100.
    node.api.apply(route(0, 100)).expect("route");
    wait_route(&a, 0, 100);
    let v = node.greeter(&node.client, 0, 200);
    assert_eq!(backends(&v), BTreeMap::from([("greeter-v2".to_owned(), 200)]), "{v}");

    // 4. A pod without the annotation reaches the Service through
    // kube-proxy; the agent never sees its calls.
    let before = calls(&a);
    let v = node.greeter(&node.other, 1, 30);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(calls(&a), before, "the agent served a pod that did not opt in");

    // 5. A rolling update: a second agent overlaps the first under load.
    let load = node.grpcio(8000);
    let start = Instant::now();
    while calls(&a) < before + 500 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the load never reached the agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent_b_cgroups = node.kubepods.pod(Qos::Burstable, 101).expect("agent pod");
    let mut b = node.start_agent("balancer-agent-b", &agent_b_cgroups);
    node.wait_ready(&mut b);
    // Each probe asks its own instance.
    assert!(node.probe_ready(&a).0 && node.probe_ready(&b).0);
    a.sigterm().expect("SIGTERM a");
    assert_eq!(
        a.wait_exit(Duration::from_secs(40)).expect("exit"),
        Some(0),
        "{}",
        a.log()
    );
    let (served, failed) = load.finish();
    assert!(
        failed.is_empty(),
        "calls failed in the rollout: {failed:?}\na:\n{}\nb:\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(served.values().sum::<u64>(), 8000);
    assert!(calls(&b) > 0, "the new agent took over: {}", b.log());

    // 6. The last agent stops under load: calls go on to the Service.
    let mut load = node.grpcio(6000);
    let start = Instant::now();
    let served_before = calls(&b);
    while calls(&b) < served_before + 500 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the load never reached the agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    b.sigterm().expect("SIGTERM b");
    assert_eq!(
        b.wait_exit(Duration::from_secs(40)).expect("exit"),
        Some(0),
        "{}",
        b.log()
    );
    assert!(load.running(), "the load ended before the agent stopped");
    let (served, failed) = load.finish();
    assert!(
        failed.is_empty(),
        "calls failed when the agent stopped: {failed:?}\n{}",
        b.log()
    );
    assert_eq!(served.values().sum::<u64>(), 6000);
    drop(agent_a_cgroups);
    drop(agent_b_cgroups);
}

/// Waits until `agent` shows the endpoints of `demo/greeter` with these
/// locality tiers (`-` for none).
fn wait_tiers(agent: &NodeAgent, want: &[&str]) {
    let start = Instant::now();
    loop {
        let (_, body) = agent.get("/api/v1/services/demo%2Fgreeter").expect("service");
        let svc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let tiers: Vec<String> = svc["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["locality"].as_str().unwrap_or("-").to_owned())
            .collect();
        if tiers == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tiers {want:?} not applied: {tiers:?}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Locality in Kubernetes mode through the kernel redirect: the Node's zone
/// label, the Service's `trafficDistribution: PreferClose` and the
/// EndpointSlice's zones keep the pod's calls in the agent's zone; when
/// that zone's endpoint dies they go to the other zone, none failing;
/// `internalTrafficPolicy: Local` keeps them on the agent's node.
#[test]
fn the_daemonset_agent_keeps_calls_in_its_zone_and_spills_over() {
    let Some(_serial) = serial_or_skip("the_daemonset_agent_keeps_calls_in_its_zone_and_spills_over") else {
        return;
    };
    let mut node = Node::new();
    let zoned = |itp: &str, v2_node: &str| {
        let mut svc = service("greeter", "10.96.0.10");
        svc["spec"]["trafficDistribution"] = json!("PreferClose");
        svc["spec"]["internalTrafficPolicy"] = json!(itp);
        let mut sl = slice("greeter", &[V1, V2]);
        sl["endpoints"][0]["zone"] = json!("zone-1");
        sl["endpoints"][0]["nodeName"] = json!("node-b");
        sl["endpoints"][1]["zone"] = json!("zone-2");
        sl["endpoints"][1]["nodeName"] = json!(v2_node);
        vec![svc, sl]
    };
    let mut objects = zoned("Cluster", "node-c");
    objects.push(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-1"}}}));
    node.api.apply_all(objects).expect("zones");
    let agent_cgroups = node.kubepods.pod(Qos::Burstable, 100).expect("agent pod");
    let mut a = node.start_agent("balancer-agent-a", &agent_cgroups);
    node.wait_ready(&mut a);
    wait_tiers(&a, &["zone", "other"]);

    let v = node.greeter(&node.client, 0, 300);
    assert_eq!(v["errors"], 0, "{v}\n{}", a.log());
    assert_eq!(
        backends(&v),
        BTreeMap::from([("greeter-v1".to_owned(), 300)]),
        "zone-1 only: {v}"
    );

    // Zone 1's endpoint dies: the calls go to zone 2, none fails.
    node._backends[0].kill().expect("kill greeter-v1");
    let v = node.greeter(&node.client, 0, 300);
    assert_eq!(v["errors"], 0, "{v}\n{}", a.log());
    assert_eq!(backends(&v), BTreeMap::from([("greeter-v2".to_owned(), 300)]), "{v}");

    // internalTrafficPolicy Local, greeter-v2 on this node: the only one.
    node.api.apply_all(zoned("Local", NODE)).expect("local");
    wait_tiers(&a, &["off-node", "node"]);
    let v = node.greeter(&node.client, 0, 100);
    assert_eq!(v["errors"], 0, "{v}\n{}", a.log());
    assert_eq!(backends(&v), BTreeMap::from([("greeter-v2".to_owned(), 100)]), "{v}");
}

/// Waits until `agent` serves demo/greeter with a service field `key`
/// equal to `want`.
fn wait_service_field(agent: &NodeAgent, key: &str, want: &Value) {
    let start = Instant::now();
    loop {
        let (_, body) = agent.get("/api/v1/services/demo/greeter").expect("service");
        let svc: Value = serde_json::from_str(&body).unwrap_or_default();
        if &svc[key] == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{key} is not {want} after 10 s: {svc}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn service_annotations_choose_ring_hash_and_inject_faults() {
    let Some(_serial) = serial_or_skip("service_annotations_choose_ring_hash_and_inject_faults") else {
        return;
    };
    let node = Node::new();
    let cgroups = node.kubepods.pod(Qos::Burstable, 100).expect("agent pod");
    let mut a = node.start_agent("balancer-agent-a", &cgroups);
    node.wait_ready(&mut a);

    // Consistent hashing on x-user-id: each user's calls on one endpoint.
    let mut svc = service("greeter", "10.96.0.10");
    svc["metadata"]["annotations"] = json!({
        "balancer.io/policy": "ring-hash",
        "balancer.io/hash-header": "x-user-id",
    });
    node.api.apply(svc.clone()).expect("service");
    wait_service_field(&a, "hash_header", &json!("x-user-id"));
    let mut seen = std::collections::BTreeSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let v = node.greeter_with(40, &["--header", &format!("x-user-id={user}")]);
        assert_eq!(v["errors"], 0, "{user}: {v}\n{}", a.log());
        let b = backends(&v);
        assert_eq!(b.len(), 1, "the calls of {user} went to several endpoints: {v}");
        seen.extend(b.into_keys());
    }
    assert_eq!(seen.len(), 2, "six users all on one of two endpoints: {seen:?}");

    // Every call aborted by the agent with the annotated status.
    svc["metadata"]["annotations"] = json!({
        "balancer.io/fault-abort": "PERMISSION_DENIED",
        "balancer.io/fault-abort-message": "chaos",
    });
    node.api.apply(svc).expect("service");
    wait_service_field(
        &a,
        "fault",
        &json!("abort PERMISSION_DENIED (\"chaos\") to 100% of calls"),
    );
    let v = node.greeter(&node.client, 0, 30);
    assert_eq!(v["errors"], 30, "{v}");
    assert_eq!(v["error_codes"]["PermissionDenied"], 30, "{v}");
    assert_eq!(v["first_error"], "PermissionDenied: chaos", "{v}");
    drop(cgroups);
}
