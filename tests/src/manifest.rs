//! What `deploy/daemonset.yaml` tells the agent, read from the manifest
//! itself so that a node-shaped test starts the agent the way the DaemonSet
//! does: its init step's command, its literal environment, its probes.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The parts of the agent's DaemonSet a test reproduces.
#[derive(Debug, Clone)]
pub struct DaemonSet {
    /// The init step's command (`balancer-agent mount-cgroup2 DIR ...`).
    pub init_command: Vec<String>,
    /// The agent container's environment given as literal values.
    pub env: Vec<(String, String)>,
    /// The agent container's environment taken from the downward API:
    /// (name, fieldPath).
    pub downward: Vec<(String, String)>,
    pub readiness: Vec<String>,
    pub liveness: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

impl DaemonSet {
    /// The repository's `deploy/daemonset.yaml`.
    pub fn path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml")
    }

    pub fn load() -> DaemonSet {
        let text = std::fs::read_to_string(Self::path()).expect("deploy/daemonset.yaml");
        let ds: Value = serde_yaml_ng::from_str(&text).expect("the DaemonSet parses");
        let pod = &ds["spec"]["template"]["spec"];
        let init = pod["initContainers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "mount-cgroup2"))
            .expect("the mount-cgroup2 init step");
        let agent = pod["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "agent"))
            .expect("the agent container");
        let mut env = Vec::new();
        let mut downward = Vec::new();
        for e in agent["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().expect("env name").to_owned();
            if let Some(v) = e["value"].as_str() {
                env.push((name, v.to_owned()));
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                downward.push((name, f.to_owned()));
            }
        }
        DaemonSet {
            init_command: strings(&init["command"]),
            env,
            downward,
            readiness: strings(&agent["readinessProbe"]["exec"]["command"]),
            liveness: strings(&agent["livenessProbe"]["exec"]["command"]),
        }
    }

    /// The agent container's environment as a node on this machine gives
    /// it: the literal values, with the host hierarchy mounted at
    /// `cgroup_root` and the host's processes in this machine's `/proc` (the
    /// DaemonSet mounts them at `/hostproc`), without the run directory
    /// (each pod's own; `NodeAgent` gives one); then the downward API's
    /// fields as `downward(fieldPath)` answers. `Err(fieldPath)`: a field it
    /// has no answer for.
    pub fn container_env(
        &self,
        cgroup_root: &Path,
        downward: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k != "BALANCER_RUN_DIR")
            .map(|(k, v)| {
                let v = match k.as_str() {
                    "BALANCER_CGROUP_ROOT" => cgroup_root.display().to_string(),
                    "BALANCER_PROCFS" => "/proc".to_owned(),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        for (name, field) in &self.downward {
            env.push((name.clone(), downward(field).ok_or_else(|| field.clone())?));
        }
        Ok(env)
    }

    /// [`DaemonSet::container_env`] for the agent pod `pod` (namespace
    /// `balancer-system`) on node `node` at `node_ip`.
    pub fn node_env(
        &self,
        cgroup_root: &Path,
        node: &str,
        node_ip: &str,
        pod: &str,
    ) -> Result<Vec<(String, String)>, String> {
        self.container_env(cgroup_root, |field| match field {
            "spec.nodeName" => Some(node.to_owned()),
            "status.hostIPs" | "status.hostIP" => Some(node_ip.to_owned()),
            "metadata.name" => Some(pod.to_owned()),
            "metadata.namespace" => Some("balancer-system".to_owned()),
            _ => None,
        })
    }

    /// A literal env value of the agent container.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}
