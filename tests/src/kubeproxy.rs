//! A stand-in for kube-proxy in a test topology: a Service VIP that pods can
//! reach when the agent does not redirect them (fail-open), balanced per
//! connection as kube-proxy balances it. The VIP goes on the node's
//! loopback, each pod gets a route to it through its link to the node, and a
//! forwarder process (`balancer-test-pod forward`) in the node's namespace
//! sends each connection to one backend.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    process::{place, ChildGuard},
    topology::Topology,
};

/// The forwarder; killed on drop (the addresses and routes go with the
/// namespaces).
pub struct KubeProxy {
    _forwarder: ChildGuard,
    pub vip: SocketAddrV4,
}

impl KubeProxy {
    /// Makes `vip` reachable from every pod of `topo`, forwarding to
    /// `backends` (addresses in the node's namespace).
    pub fn start(pod_bin: &Path, topo: &Topology, vip: SocketAddrV4, backends: &[SocketAddr]) -> io::Result<KubeProxy> {
        topo.node
            .netns
            .ip(&["addr", "add", &format!("{}/32", vip.ip()), "dev", "lo"])?;
        for (i, pod) in topo.pods.iter().enumerate() {
            let node_side = format!("10.200.{}.1", i + 1);
            pod.netns
                .ip(&["route", "add", &format!("{}/32", vip.ip()), "via", &node_side])?;
        }
        let to: Vec<String> = backends.iter().map(ToString::to_string).collect();
        let mut cmd = Command::new(pod_bin);
        cmd.args(["forward", "--listen", &vip.to_string(), "--to", &to.join(",")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(&mut cmd, Some(&topo.node.netns), None)?;
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let guard = ChildGuard::new(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::other("the forwarder did not start"))?;
        if !line.contains("\"listening\":true") {
            return Err(io::Error::other(format!("the forwarder failed: {line}")));
        }
        Ok(KubeProxy { _forwarder: guard, vip })
    }
}
