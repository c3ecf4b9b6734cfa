//! Network namespaces created with `ip netns add` and deleted on drop.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
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
        NetNs::create(crate::unique_name(prefix))
    }

    /// A namespace with a fixed `name` (a tool's own, not a test's unique
    /// one): a leftover of an interrupted run is deleted first.
    pub fn named(name: &str) -> io::Result<NetNs> {
        if PathBuf::from("/run/netns").join(name).exists() {
            ip(&["netns", "del", name])?;
        }
        NetNs::create(name.to_owned())
    }

    fn create(name: String) -> io::Result<NetNs> {
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Joins this namespace to the caller's by a veth pair: `host_if` with
    /// `host_cidr` outside, `inner_if` with `inner_cidr` inside, both up.
    /// No route is added: only the link's subnet is reachable. The pair
    /// goes with the namespace.
    pub fn veth_to_host(&self, host_if: &str, host_cidr: &str, inner_if: &str, inner_cidr: &str) -> io::Result<()> {
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", inner_if, "netns", &self.name,
        ])?;
        ip(&["addr", "add", host_cidr, "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        self.ip(&["addr", "add", inner_cidr, "dev", inner_if])?;
        self.ip(&["link", "set", inner_if, "up"])?;
        Ok(())
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

    /// Runs `f` on a thread of this process that has entered the namespace
    /// (`setns` moves only that thread), e.g. to reach an agent's admin
    /// server on the namespace's loopback.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        run_in(&self.path(), f)
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

/// Runs `f` on a thread inside the network namespace at `path`.
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let file = File::open(path)?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on a namespace file this thread owns.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: deleting netns {}: {e}", self.name);
        }
    }
}
