//! The real `balancer-agent` started the way its DaemonSet starts it: in its
//! own container cgroup with a private cgroup namespace
//! ([`crate::container`]), in the node's network namespace, with a run
//! directory of its own (the pod's emptyDir) where it writes its admin
//! address. Its admin API is reached from a thread inside the node's
//! namespace, the way the kubelet's exec probe reaches it.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use balancer_agent::{admin::api, ctl::client::AdminClient, node};

use crate::{
    cgroup::Cgroup,
    container::{place_container, CgroupView},
    netns::{run_in, NetNs},
    process::ChildGuard,
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
    process: ChildGuard,
    dir: tempfile::TempDir,
    netns_path: PathBuf,
    env: Vec<(String, String)>,
}

impl NodeAgent {
    /// Starts `bin` in `netns` and `cgroup` as a container.
    pub fn start(bin: &Path, netns: &NetNs, cgroup: &Cgroup, opts: &NodeAgentOptions) -> io::Result<NodeAgent> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(bin);
        if let Some(config) = &opts.config {
            cmd.arg("--config").arg(config);
        }
        // The data plane's debug lines are one per failure (and one GOAWAY per
        // connection at a stop): what a failed call needs explained.
        cmd.args(&opts.args)
            .env("RUST_LOG", "info,balancer_agent::proxy=debug")
            .env("BALANCER_LOG_FORMAT", "text")
            .env("BALANCER_RUN_DIR", dir.path().join("run"))
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("agent.log"))?);
        place_container(&mut cmd, netns, cgroup, opts.view, &opts.read_only)?;
        let process = ChildGuard::new(cmd.spawn()?);
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
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let (program, args) = argv.split_first().ok_or_else(|| io::Error::other("empty command"))?;
        let program = if program == "balancer-agent" {
            bin.to_owned()
        } else {
            PathBuf::from(program)
        };
        let ns = fs::File::open(&self.netns_path)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("BALANCER_RUN_DIR", self.run_dir());
        // SAFETY: setns is async-signal-safe; the fd lives until after spawn.
        unsafe {
            let fd = ns.as_raw_fd();
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output()?;
        drop(ns);
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// This pod's run directory (the probes read the admin address there).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Runs `f` with an admin client of this instance, from inside the
    /// node's network namespace.
    fn with_admin<T: Send + 'static>(&self, f: impl FnOnce(AdminClient) -> T + Send + 'static) -> io::Result<T> {
        // Only this instance's own address: never the default, which may be
        // another instance's.
        let addr = balancer_agent::app::bind::read_admin_address(&self.run_dir()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the agent has not written its admin address yet",
            )
        })?;
        run_in(&self.netns_path, move || {
            f(AdminClient::new(&addr.to_string()).with_timeout(Duration::from_secs(5)))
        })
    }

    /// `/api/v1/status` of this instance.
    pub fn status(&self) -> io::Result<api::Status> {
        self.with_admin(|c| c.get::<api::Status>("/api/v1/status"))?
            .map_err(|e| io::Error::other(e.to_string()))
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
        let path = path.to_owned();
        self.with_admin(move |c| c.get_raw(&path))?
            .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Calls the agent received, per service (from its stats; those it
    /// answered UNAVAILABLE itself included).
    pub fn calls(&self) -> io::Result<BTreeMap<String, u64>> {
        let stats: api::Stats = self
            .with_admin(|c| c.get::<api::Stats>("/api/v1/stats"))?
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(stats.services.into_iter().map(|s| (s.service, s.calls)).collect())
    }

    /// Waits until the agent is ready (or `settled`: done starting, ready
    /// or not). Fails with the agent's log if it exits or takes too long.
    pub fn wait(&mut self, settled: bool, limit: Duration) -> io::Result<api::Status> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.process.child_mut().try_wait()? {
                return Err(io::Error::other(format!(
                    "the agent exited ({status}) while starting; its log:\n{}",
                    self.log()
                )));
            }
            if let Ok(s) = self.status() {
                if s.ready || (settled && s.settled) {
                    return Ok(s);
                }
            }
            if start.elapsed() > limit {
                return Err(io::Error::other(format!(
                    "the agent was not {} within {limit:?}; status {:?}; its log:\n{}",
                    if settled { "settled" } else { "ready" },
                    self.status().ok(),
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.process.child_mut().try_wait()
    }

    /// Sends SIGTERM (what the kubelet does to stop the pod).
    pub fn sigterm(&self) -> io::Result<()> {
        // SAFETY: kill on the pid of a child this guard has not reaped.
        if unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the process to exit (killed after `limit`): its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> io::Result<Option<i32>> {
        Ok(self.process.wait_timeout(limit)?.and_then(|s| s.code()))
    }
}
