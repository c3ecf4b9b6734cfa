//! The real `balancer-agent` started the way its DaemonSet starts it: in its
//! own container cgroup with a private cgroup namespace
//! ([`crate::container`]), in the node's network namespace, with a run
//! directory of its own (the pod's emptyDir) where it writes its admin
//! address. Its admin API is reached from a thread inside the node's
//! namespace, the way the kubelet's exec probe reaches it.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use balancer_agent::{admin::api, node};
use balancer_testing::{
    agent::{self, AgentProcess, Log},
    http,
    ready::{self, WaitError},
};

use crate::{
    cgroup::Cgroup,
    container::{place_container, CgroupView},
    netns::{run_in, NetNs},
    process::place_at,
};

/// How to start one agent.
#[derive(Debug, Clone)]
pub struct NodeAgentOptions {
    /// Static mode's file; `None`: Kubernetes mode.
    pub config: Option<PathBuf>,
    /// Extra flags.
    pub args: Vec<String>,
    /// Environment (the DaemonSet's `env:`).
    pub env: Vec<(String, String)>,
    pub view: CgroupView,
    /// Host mounts the container sees read-only.
    pub read_only: Vec<PathBuf>,
}

/// A running agent; killed on drop if still running.
pub struct NodeAgent {
    process: AgentProcess,
    dir: tempfile::TempDir,
    netns_path: PathBuf,
    env: Vec<(String, String)>,
}

impl NodeAgent {
    /// Starts `bin` in `netns` and `cgroup` as a container.
    pub fn start(bin: &Path, netns: &NetNs, cgroup: &Cgroup, opts: &NodeAgentOptions) -> io::Result<NodeAgent> {
        let dir = tempfile::tempdir()?;
        let mut cmd = agent::command(bin, opts.config.as_deref());
        // The data plane's debug lines are one per failure (and one GOAWAY per
        // connection at a stop): what a failed call needs explained.
        cmd.args(&opts.args)
            .env("RUST_LOG", "info,balancer_agent::proxy=debug")
            .env("BALANCER_LOG_FORMAT", "text")
            .env("BALANCER_RUN_DIR", dir.path().join("run"))
            .envs(opts.env.iter().map(|(k, v)| (k, v)));
        place_container(&mut cmd, netns, cgroup, opts.view, &opts.read_only)?;
        let process = AgentProcess::spawn(cmd, Log::File(dir.path().join("agent.log")))?;
        Ok(NodeAgent {
            process,
            netns_path: netns.path(),
            env: opts.env.clone(),
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs `argv` as the kubelet runs an exec probe: in the pod's network
    /// namespace with the container's environment (`balancer-agent` is
    /// this build's binary). Whether it exited 0, and what it printed.
    pub fn exec(&self, bin: &Path, argv: &[String]) -> io::Result<(bool, String)> {
        let (program, args) = argv.split_first().ok_or_else(|| io::Error::other("empty command"))?;
        let program = if program == "balancer-agent" {
            bin.to_owned()
        } else {
            PathBuf::from(program)
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("BALANCER_RUN_DIR", self.run_dir());
        place_at(&mut cmd, Some(&self.netns_path), None)?;
        let out = cmd.output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// This pod's run directory (the probes read the admin address there).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// `/api/v1/status` of this instance.
    pub fn status(&self) -> io::Result<api::Status> {
        self.admin().status()
    }

    /// This instance's admin server, reachable while the agent is waited
    /// for ([`NodeAgent::wait_until`]).
    pub fn admin(&self) -> Admin {
        Admin {
            run_dir: self.run_dir(),
            netns: self.netns_path.clone(),
        }
    }

    /// The DaemonSet's readiness probe (`balancer-agent probe ready`) as the
    /// kubelet would run it in this pod: whether it passes, and its line.
    pub fn probe_ready(&self) -> io::Result<Result<String, String>> {
        let run_dir = self.run_dir();
        run_in(&self.netns_path, move || {
            node::probe(node::Probe::Ready, None, Some(&run_dir), Duration::from_secs(3))
        })
    }

    /// `GET path` on this instance's admin server: status and body.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        self.admin().get(path).map(|r| (r.status, r.body))
    }

    /// Calls the agent received, per service (from its stats; those it
    /// answered UNAVAILABLE itself included).
    pub fn calls(&self) -> io::Result<BTreeMap<String, u64>> {
        let stats: api::Stats = self.admin().get_json("/api/v1/stats")?;
        Ok(stats.services.into_iter().map(|s| (s.service, s.calls)).collect())
    }

    /// Waits until the agent is ready (or `settled`: done starting, ready
    /// or not). Fails with the agent's log if it exits or takes too long.
    pub fn wait(&mut self, settled: bool, limit: Duration) -> io::Result<api::Status> {
        let what = if settled {
            "balancer-agent settled"
        } else {
            "balancer-agent ready"
        };
        let mut last = None;
        let admin = self.admin();
        self.wait_until(what, limit, ready::POLL, || {
            last = admin.status().ok();
            last.as_ref().is_some_and(|s| s.ready || (settled && s.settled))
        })?;
        last.ok_or_else(|| io::Error::other("no status"))
    }

    /// Polls `ready` every `every` until it holds, for at most `limit`;
    /// fails with the agent's log if it exits first.
    pub fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        every: Duration,
        ready: impl FnMut() -> bool,
    ) -> Result<(), WaitError> {
        self.process.wait_until_every(what, limit, every, ready)
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.process.try_wait()
    }

    /// Sends SIGTERM (what the kubelet does to stop the pod).
    pub fn sigterm(&self) -> io::Result<()> {
        self.process.sigterm()
    }

    /// Waits for the process to exit (killed after `limit`): its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> io::Result<Option<i32>> {
        Ok(self.process.wait_exit(limit)?.and_then(|s| s.code()))
    }
}

/// One instance's admin server, reached from inside the node's network
/// namespace at the address the instance wrote in its run directory.
pub struct Admin {
    run_dir: PathBuf,
    netns: PathBuf,
}

impl Admin {
    /// `GET path` on this instance's admin server, from inside the node's
    /// network namespace.
    pub fn get(&self, path: &str) -> io::Result<http::Response> {
        // Only this instance's own address: never the default, which may be
        // another instance's.
        let addr: SocketAddr = balancer_agent::app::bind::read_admin_address(&self.run_dir).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the agent has not written its admin address yet",
            )
        })?;
        let path = path.to_owned();
        run_in(&self.netns, move || http::get(addr, &path))?.map_err(io::Error::other)
    }

    /// `GET path` on this instance's JSON API, decoded.
    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> io::Result<T> {
        let r = self.get(path)?;
        if r.status != 200 {
            return Err(io::Error::other(format!("GET {path}: {}: {}", r.status, r.body.trim())));
        }
        serde_json::from_str(&r.body).map_err(|e| io::Error::other(format!("GET {path}: {e}")))
    }

    fn status(&self) -> io::Result<api::Status> {
        self.get_json("/api/v1/status")
    }
}
