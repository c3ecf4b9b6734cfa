//! A client "pod" for the demo and the bench: its own network namespace on a
//! veth (no default route, so a connect that is not redirected fails inside
//! it instead of leaving the machine) and its own cgroup below an attach
//! cgroup. Everything is removed on drop, also when a task fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context;

use crate::sh::exec;

/// A network namespace joined to the host by a veth pair: `host_ip/30` on
/// the host side, `pod_ip/30` on `eth0` inside. Deleted on drop.
pub struct PodNet {
    name: String,
    host_if: String,
}

impl PodNet {
    pub fn create(name: &str, host_if: &str, host_ip: &str, pod_ip: &str) -> anyhow::Result<Self> {
        // A leftover from an interrupted run goes first.
        delete(name, host_if);
        exec(Command::new("ip").args(["netns", "add", name]))?;
        let net = PodNet {
            name: name.to_owned(),
            host_if: host_if.to_owned(),
        };
        exec(Command::new("ip").args([
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]))?;
        exec(Command::new("ip").args(["addr", "add", &format!("{host_ip}/30"), "dev", host_if]))?;
        exec(Command::new("ip").args(["link", "set", host_if, "up"]))?;
        let pod = |args: &[&str]| exec(Command::new("ip").args(["netns", "exec", name, "ip"]).args(args));
        pod(&["addr", "add", &format!("{pod_ip}/30"), "dev", "eth0"])?;
        pod(&["link", "set", "eth0", "up"])?;
        pod(&["link", "set", "lo", "up"])?;
        Ok(net)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        delete(&self.name, &self.host_if);
    }
}

fn delete(name: &str, host_if: &str) {
    let quiet = |args: &[&str]| {
        let _ = Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    quiet(&["netns", "del", name]);
    // Deleting the namespace deletes the veth pair; a half-made one may
    // still have its host side.
    quiet(&["link", "del", host_if]);
}

/// A cgroup v2 directory tree, removed (children first) on drop.
pub struct CgroupTree {
    path: PathBuf,
}

impl CgroupTree {
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        remove_cgroup_tree(&path);
        fs::create_dir_all(&path).with_context(|| format!("cannot create the cgroup {}", path.display()))?;
        Ok(CgroupTree { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a child cgroup (removed with the tree).
    pub fn child(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.path.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

/// cgroup directories can only be removed empty, children first.
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .context("no cgroup v2 hierarchy is mounted (see /proc/mounts); balancer needs cgroup v2")
}

/// A command that runs `program` in its own `cgroup` (created if needed), as
/// a service manager or a container runtime starts the agent: the agent
/// never moves itself. The shell `exec`s, so the command keeps one PID.
pub fn in_cgroup(cgroup: &Path, program: &Path) -> anyhow::Result<Command> {
    fs::create_dir_all(cgroup).with_context(|| format!("cannot create the cgroup {}", cgroup.display()))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(cgroup)
        .arg(program);
    Ok(cmd)
}

/// A command that runs `program args…` inside the pod: first into its
/// cgroup, then into its network namespace (`ip netns exec` remounts /sys,
/// so the cgroup must come first). The shell `exec`s, so the command keeps
/// one PID from start to end.
pub fn in_pod(cgroup: &Path, netns: &str, program: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ns="$1"; shift; echo $$ > "$0/cgroup.procs" && exec ip netns exec "$ns" "$@""#)
        .arg(cgroup)
        .arg(netns)
        .arg(program)
        .args(args);
    cmd
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
        let tree = CgroupTree::create(cgroup2.join("balancer-xtask-test")).expect("cgroup");
        let pod = tree.child("pod").expect("pod cgroup");
        let root_path = tree.path().to_owned();
        {
            let net =
                PodNet::create("balancer-xtask-test", "bxtask0", "10.250.9.1", "10.250.9.2").expect("pod network");
            let out = in_pod(
                &pod,
                net.name(),
                Path::new("sh"),
                &[
                    "-c".into(),
                    "cat /proc/self/cgroup; ip -4 -o addr show dev eth0; ip route".into(),
                ],
            )
            .output()
            .expect("run in pod");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
            let rel = pod.strip_prefix(&cgroup2).expect("below the mount");
            assert!(
                text.lines()
                    .any(|l| l.starts_with("0::") && l.ends_with(&format!("/{}", rel.display()))),
                "not in the pod's cgroup: {text}"
            );
            assert!(text.contains("10.250.9.2/30"), "no pod address: {text}");
            assert!(!text.contains("default"), "the pod must have no default route: {text}");
        }
        // The namespace is gone with its guard, the cgroups with theirs.
        let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
        assert!(!String::from_utf8_lossy(&list.stdout).contains("balancer-xtask-test"));
        drop(tree);
        assert!(!root_path.exists(), "cgroup tree left behind");
    }
}
