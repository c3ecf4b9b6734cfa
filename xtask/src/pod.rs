//! A client "pod" for the demo and the bench: its own network namespace on a
//! veth (no default route, so a connect that is not redirected fails inside
//! it instead of leaving the machine) and its own cgroup below an attach
//! cgroup, with a cgroup for the agent beside it. Everything is removed on
//! drop, also when a task fails (`balancer-testing`'s guards).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context;
use balancer_testing::{
    cgroup::{cgroup2_mount, Cgroup},
    netns::NetNs,
    process::place,
};

/// Where a pod lives: names and addresses (fixed, so that a leftover of an
/// interrupted run is found and replaced).
pub struct PodSpec<'a> {
    /// The attach cgroup, below the cgroup v2 mount point.
    pub cgroup: &'a str,
    pub netns: &'a str,
    /// The host side of the veth; the pod side is `eth0`.
    pub host_if: &'a str,
    /// `host_ip/30` on the host side, `pod_ip/30` on `eth0`.
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
}

/// Fields drop in order: the agent's, the backends' and the pod's cgroups,
/// the attach cgroup, then the namespace.
pub struct Pod {
    /// `<attach>/agent`: the agent's own cgroup, as a service manager or a
    /// container runtime starts it (the agent never moves itself).
    pub agent: Cgroup,
    /// `<attach>/backends`: endpoints that are pods of this node (the
    /// bench's, so that the agent's connections to them take the fast path
    /// too).
    pub backends: Cgroup,
    /// `<attach>/client`: the pod's cgroup, enrolled.
    pub cgroup: Cgroup,
    /// Where the kernel programs attach.
    pub attach: Cgroup,
    pub net: NetNs,
}

impl Pod {
    pub fn create(spec: &PodSpec<'_>) -> anyhow::Result<Pod> {
        let attach = Cgroup::replace(cgroup2_mount()?.join(spec.cgroup))?;
        let cgroup = attach.child("client")?;
        let agent = attach.child("agent")?;
        let backends = attach.child("backends")?;
        let net =
            NetNs::named(spec.netns).with_context(|| format!("cannot create the network namespace {}", spec.netns))?;
        // Deleting a namespace deletes its veth pair; a half-made pair of
        // an interrupted run may still have its host side.
        let _ = Command::new("ip")
            .args(["link", "del", spec.host_if])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        net.veth_to_host(
            spec.host_if,
            &format!("{}/30", spec.host_ip),
            "eth0",
            &format!("{}/30", spec.pod_ip),
        )
        .with_context(|| format!("cannot link the network namespace {} to the host", spec.netns))?;
        Ok(Pod {
            agent,
            backends,
            cgroup,
            attach,
            net,
        })
    }

    /// `program args…` run inside the pod: its cgroup first, then its
    /// network namespace (with `setns`, /sys not remounted). One PID from
    /// start to end.
    pub fn command(&self, program: &Path, args: &[String]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        place(&mut cmd, Some(&self.net), Some(&self.cgroup))?;
        Ok(cmd)
    }

    /// Makes the agent's command start in the agent's cgroup (in the
    /// host's namespace).
    pub fn place_agent(&self, cmd: &mut Command) -> anyhow::Result<()> {
        place(cmd, None, Some(&self.agent))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn privileged() -> bool {
        if crate::sh::is_root() {
            return true;
        }
        assert!(
            std::env::var("BALANCER_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "BALANCER_REQUIRE_PRIVILEGED=1 but not root"
        );
        eprintln!("SKIPPED: the pod plumbing test needs root (network namespaces, cgroups)");
        false
    }

    #[test]
    fn a_command_in_the_pod_runs_in_its_cgroup_and_namespace() {
        if !privileged() {
            return;
        }
        let cgroup2 = cgroup2_mount().expect("cgroup v2 mount");
        let pod = Pod::create(&PodSpec {
            cgroup: "balancer-xtask-test",
            netns: "balancer-xtask-test",
            host_if: "bxtask0",
            host_ip: "10.250.9.1",
            pod_ip: "10.250.9.2",
        })
        .expect("pod");
        let root_path = pod.attach.path().to_owned();
        let out = pod
            .command(
                Path::new("sh"),
                &[
                    "-c".into(),
                    "cat /proc/self/cgroup; ip -4 -o addr show dev eth0; ip route".into(),
                ],
            )
            .expect("command")
            .output()
            .expect("run in pod");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        let rel = pod.cgroup.path().strip_prefix(&cgroup2).expect("below the mount");
        assert!(
            text.lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&format!("/{}", rel.display()))),
            "not in the pod's cgroup: {text}"
        );
        assert!(text.contains("10.250.9.2/30"), "no pod address: {text}");
        assert!(!text.contains("default"), "the pod must have no default route: {text}");
        // The namespace and the cgroups are gone with their guards.
        drop(pod);
        let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
        assert!(!String::from_utf8_lossy(&list.stdout).contains("balancer-xtask-test"));
        assert!(!root_path.exists(), "cgroup tree left behind");
    }
}
