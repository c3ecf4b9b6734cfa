//! A test "node" network namespace joined by veth links to N "pod"
//! namespaces, and the test's cgroup tree. No namespace has a default route,
//! so anything not redirected fails locally instead of leaving the machine.
//!
//! Addresses: the node's own address ([`Node::ip`], 10.200.0.1, on its
//! loopback — where the agent listens); pod `i` is 10.200.(i+1).2/24 with
//! the node's end of its link at 10.200.(i+1).1, and a single route to the
//! node address. Namespaces are private, so concurrent tests do not clash.

use std::{io, net::Ipv4Addr};

use crate::{cgroup::Cgroup, netns::NetNs};

/// The node: where the agent runs.
pub struct Node {
    pub netns: NetNs,
    /// The node's address, reachable from every pod.
    pub ip: Ipv4Addr,
}

/// One pod: its own network namespace and cgroup.
pub struct Pod {
    pub netns: NetNs,
    /// `<root cgroup>/pod-<i>`.
    pub cgroup: Cgroup,
    pub ip: Ipv4Addr,
    /// The pod's end of its veth link.
    pub veth_pod: String,
    /// The node's end of the pod's veth link.
    pub veth_node: String,
}

/// Fields drop in order: pods, node, then the cgroups.
pub struct Topology {
    pub pods: Vec<Pod>,
    pub node: Node,
    /// `<root cgroup>/agent`: where the agent runs (it never moves itself;
    /// a container runtime or service manager gives it its cgroup).
    pub agent_cgroup: Cgroup,
    /// The test's own cgroup (below the cgroup v2 root): attach the kernel
    /// programs here; pods are its children.
    pub root_cgroup: Cgroup,
}

impl Topology {
    /// A node and `pods` pods (at most 200).
    pub fn new(pods: usize) -> io::Result<Topology> {
        let root_cgroup = Cgroup::new_top("balancer-test-")?;
        let node_ns = NetNs::new("btnode")?;
        let node_ip = Ipv4Addr::new(10, 200, 0, 1);
        node_ns.ip(&["addr", "add", &format!("{node_ip}/32"), "dev", "lo"])?;
        let node = Node {
            netns: node_ns,
            ip: node_ip,
        };
        let agent_cgroup = root_cgroup.child("agent")?;
        let mut topo = Topology {
            pods: Vec::new(),
            node,
            agent_cgroup,
            root_cgroup,
        };
        for i in 0..pods {
            let subnet = u8::try_from(i + 1).map_err(io::Error::other)?;
            let netns = NetNs::new("btpod")?;
            let cgroup = topo.root_cgroup.child(&format!("pod-{i}"))?;
            let veth_node = crate::unique_name("bvn");
            let veth_pod = crate::unique_name("bvp");
            let pod = Pod {
                netns,
                cgroup,
                ip: Ipv4Addr::new(10, 200, subnet, 2),
                veth_pod,
                veth_node,
            };
            let node_side = Ipv4Addr::new(10, 200, subnet, 1);
            crate::netns::ip(&[
                "link",
                "add",
                &pod.veth_node,
                "netns",
                topo.node.netns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &pod.veth_pod,
                "netns",
                pod.netns.name(),
            ])?;
            let nn = &topo.node.netns;
            nn.ip(&["addr", "add", &format!("{node_side}/24"), "dev", &pod.veth_node])?;
            nn.ip(&["link", "set", &pod.veth_node, "up"])?;
            pod.netns
                .ip(&["addr", "add", &format!("{}/24", pod.ip), "dev", &pod.veth_pod])?;
            pod.netns.ip(&["link", "set", &pod.veth_pod, "up"])?;
            pod.netns
                .ip(&["route", "add", &format!("{node_ip}/32"), "via", &node_side.to_string()])?;
            topo.pods.push(pod);
        }
        Ok(topo)
    }

    /// Steers received packets of every veth (both ends) to the CPUs in
    /// `mask` (hex, e.g. "2" for CPU 1) with RPS; "0" turns it off.
    pub fn set_rps(&self, mask: &str) -> io::Result<()> {
        for pod in &self.pods {
            self.node.netns.sh(&format!(
                "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
                pod.veth_node
            ))?;
            pod.netns.sh(&format!(
                "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
                pod.veth_pod
            ))?;
        }
        Ok(())
    }
}
