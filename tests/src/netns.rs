//! Network namespaces created with `ip netns add` and deleted on drop.

use std::{
    fs::File,
    io,
    path::PathBuf,
    process::{Command, Output},
};

/// A named network namespace (`/run/netns/<name>`); deleted on drop, which
/// also deletes the interfaces inside it.
pub struct NetNs {
    name: String,
}

/// Runs `ip <args>`; an error carries ip's stderr.
pub fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl NetNs {
    /// Creates a namespace with a unique name starting with `prefix`, with
    /// its loopback up and nothing else (no routes).
    pub fn new(prefix: &str) -> io::Result<NetNs> {
        let name = crate::unique_name(prefix);
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Opens the namespace file (for `setns(fd, CLONE_NEWNET)`).
    pub fn open(&self) -> io::Result<File> {
        File::open(self.path())
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a shell command with `ip netns exec` (which also mounts this
    /// namespace's /sys: use it for /sys/class/net, not for processes that
    /// need the cgroup file system).
    pub fn sh(&self, script: &str) -> io::Result<Output> {
        run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", script]))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: deleting netns {}: {e}", self.name);
        }
    }
}
