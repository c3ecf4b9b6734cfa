//! The node of the scale bench: a kubelet-shaped node (its network
//! namespace, the pod cgroups, the host's cgroup hierarchy mounted by the
//! agent's init step), two real greeter backends on it, a kube-proxy
//! stand-in for the greeter VIP, one enrolled client pod, and the fake API
//! server process inside the node's namespace. The agent is started as its
//! DaemonSet starts it (`deploy/daemonset.yaml`'s environment, its own
//! container cgroup and cgroup namespace).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{json, Value};

use super::{
    cluster::{self, DEMO_NAMESPACE, GREETER_VIP, NODE},
    ScaleError,
};
use crate::{
    apiserver::{FakeApiOptions, FakeApiServer},
    container::{CgroupView, HostCgroupMount},
    kubelet::{Kubepods, PodCgroups, Qos},
    kubeproxy::KubeProxy,
    manifest::DaemonSet,
    node_agent::{NodeAgent, NodeAgentOptions},
    process::{place, ChildGuard},
    topology::Topology,
};

/// The greeter backends: (name, address in the node's namespace).
pub const BACKENDS: [(&str, SocketAddrV4); 2] = [
    ("greeter-a", SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 50080)),
    ("greeter-b", SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 12), 50080)),
];

/// Where the bench's programs are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub agent: PathBuf,
    pub greeter_server: PathBuf,
    pub fake_apiserver: PathBuf,
    /// `balancer-test-pod` (the kube-proxy stand-in).
    pub test_pod: PathBuf,
    /// `balancer-scale-bench` (its `follow` subcommand runs in the pod).
    pub scale_bench: PathBuf,
}

impl Bins {
    /// Every program in `dir`; fails naming the first one missing.
    pub fn in_dir(dir: &Path) -> Result<Bins, ScaleError> {
        let find = |name: &str| {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(ScaleError::MissingBinary(p))
            }
        };
        Ok(Bins {
            agent: find("balancer-agent")?,
            greeter_server: find("greeter-server")?,
            fake_apiserver: find(crate::apiserver::BIN)?,
            test_pod: find("balancer-test-pod")?,
            scale_bench: find("balancer-scale-bench")?,
        })
    }
}

/// Everything on the node but the agent. Fields drop in order: processes
/// first, cgroups and namespaces last.
pub struct BenchNode {
    pub api: FakeApiServer,
    _kube_proxy: KubeProxy,
    _backends: Vec<ChildGuard>,
    /// The enrolled client pod.
    pub client: PodCgroups,
    agent_pod: PodCgroups,
    kubepods: Kubepods,
    host: HostCgroupMount,
    manifest: DaemonSet,
    pub topo: Topology,
}

impl BenchNode {
    /// Sets the node up and starts the API server, empty.
    pub fn new(bins: &Bins) -> Result<BenchNode, ScaleError> {
        let manifest = DaemonSet::load();
        let topo = Topology::new(1).map_err(ScaleError::setup("topology"))?;
        let init_cgroup = topo
            .root_cgroup
            .child("init")
            .map_err(ScaleError::setup("init cgroup"))?;
        let host_dir = PathBuf::from(format!("/run/{}", crate::unique_name("balancer-scale")));
        let host = HostCgroupMount::create(&bins.agent, host_dir, &init_cgroup)
            .map_err(ScaleError::setup("the init step (mount-cgroup2)"))?;
        drop(init_cgroup);
        let kubepods = Kubepods::new(&topo.root_cgroup).map_err(ScaleError::setup("kubepods"))?;
        let client = kubepods
            .pod(Qos::BestEffort, 1)
            .map_err(ScaleError::setup("client pod cgroup"))?;
        let agent_pod = kubepods
            .pod(Qos::Burstable, 100)
            .map_err(ScaleError::setup("agent pod cgroup"))?;

        let mut backends = Vec::new();
        for (name, addr) in BACKENDS {
            let mut cmd = Command::new(&bins.greeter_server);
            cmd.args(["--listen", &addr.to_string(), "--name", name])
                .stdout(Stdio::null());
            place(&mut cmd, Some(&topo.node.netns), None).map_err(ScaleError::setup("backend"))?;
            backends.push(ChildGuard::new(
                cmd.spawn().map_err(ScaleError::setup("greeter-server"))?,
            ));
        }
        let targets: Vec<SocketAddr> = BACKENDS.iter().map(|(_, a)| SocketAddr::V4(*a)).collect();
        let kube_proxy =
            KubeProxy::start(&bins.test_pod, &topo, GREETER_VIP, &targets).map_err(ScaleError::setup("kube-proxy"))?;
        let opts = FakeApiOptions {
            bin: Some(bins.fake_apiserver.clone()),
            ..FakeApiOptions::default()
        };
        let api = FakeApiServer::spawn(&opts, Some(&topo.node.netns))?;
        Ok(BenchNode {
            api,
            _kube_proxy: kube_proxy,
            _backends: backends,
            client,
            agent_pod,
            kubepods,
            host,
            manifest,
            topo,
        })
    }

    /// The objects of this node: its Node, the demo namespace, the greeter
    /// Service (endpoints: backend `backend`), the enrolled client pod.
    pub fn objects(&self, backend: usize) -> Vec<Value> {
        let ip = self.topo.pods[0].ip.to_string();
        let c = &self.client;
        vec![
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
            cluster::namespace(DEMO_NAMESPACE),
            cluster::greeter_service(),
            cluster::greeter_slice(&[BACKENDS[backend].1]),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"namespace": DEMO_NAMESPACE, "name": "client", "uid": c.uid,
                                "annotations": {"balancer.io/inject": "enabled"}},
                   "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "client"}]},
                   "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "qosClass": "BestEffort",
                              "containerStatuses": [{"name": "app", "image": "client", "imageID": "client",
                                                     "containerID": c.container_id, "ready": true,
                                                     "restartCount": 0}]}}),
        ]
    }

    /// The agent's environment: the DaemonSet's literal values and what the
    /// downward API gives it on this node, the API server's kubeconfig, and
    /// the programs attached at the node's `kubepods.slice`.
    fn agent_env(&self) -> Result<Vec<(String, String)>, ScaleError> {
        let node_ip = self.topo.node.ip.to_string();
        let mut env = self
            .manifest
            .node_env(self.host.dir(), NODE, &node_ip, "balancer-agent-scale")
            .map_err(ScaleError::Manifest)?;
        env.push(("KUBECONFIG".into(), self.api.kubeconfig().display().to_string()));
        env.push((
            "BALANCER_ATTACH_CGROUP".into(),
            self.host.view_of(self.kubepods.slice.path()).display().to_string(),
        ));
        Ok(env)
    }

    /// Starts the agent in its pod's container cgroup, in the node's
    /// namespace, with `extra` environment on top of the DaemonSet's.
    pub fn start_agent(&self, agent: &Path, extra: &[(String, String)]) -> Result<NodeAgent, ScaleError> {
        let mut env = self.agent_env()?;
        env.extend(extra.iter().cloned());
        let opts = NodeAgentOptions {
            config: None,
            args: Vec::new(),
            env,
            view: CgroupView::Namespaced,
            read_only: vec![self.host.dir().to_owned()],
        };
        NodeAgent::start(agent, &self.topo.node.netns, &self.agent_pod.container, &opts)
            .map_err(ScaleError::setup("starting balancer-agent"))
    }
}
