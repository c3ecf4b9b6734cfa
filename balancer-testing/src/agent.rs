//! The `balancer-agent` process: started from its binary with its config
//! file and flags, awaited until it is ready, stopped by its PID.
//!
//! ```no_run
//! use std::time::Duration;
//! use balancer_testing::{agent::{self, AgentProcess, Log}, port};
//!
//! let admin = port::free_port()?;
//! # let (bin, config) = (std::path::Path::new("balancer-agent"), std::path::Path::new("b.yaml"));
//! let mut cmd = agent::command(bin, Some(config));
//! cmd.arg("--no-ebpf").args(["--admin", &admin.to_string()]);
//! let mut agent = AgentProcess::spawn(cmd, Log::Discard)?;
//! agent.wait_readyz(admin, Duration::from_secs(30))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::{
    process::ChildGuard,
    ready::{self, WaitError},
};

/// `bin --config <config>` (Kubernetes mode without a config), its
/// standard input closed; the caller adds flags and environment.
pub fn command(bin: &Path, config: Option<&Path>) -> Command {
    let mut cmd = Command::new(bin);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Where the agent's log (its standard error) goes.
#[derive(Debug, Clone)]
pub enum Log {
    Discard,
    /// To this file, read back by [`AgentProcess::log`].
    File(PathBuf),
    /// To the caller's standard error.
    Inherit,
}

/// A running agent; killed (SIGKILL, by its PID) and reaped on drop.
pub struct AgentProcess {
    process: ChildGuard,
    log: Option<PathBuf>,
}

impl AgentProcess {
    /// Starts `cmd`. Its standard output is discarded; its standard error
    /// (the agent's log) goes where `log` says.
    pub fn spawn(mut cmd: Command, log: Log) -> io::Result<AgentProcess> {
        cmd.stdout(Stdio::null());
        let log = match log {
            Log::Discard => {
                cmd.stderr(Stdio::null());
                None
            }
            Log::File(path) => {
                cmd.stderr(fs::File::create(&path)?);
                Some(path)
            }
            Log::Inherit => {
                cmd.stderr(Stdio::inherit());
                None
            }
        };
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()),
            )
        })?;
        Ok(AgentProcess {
            process: ChildGuard::new(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything the agent logged so far (empty without a log file).
    pub fn log(&self) -> String {
        self.log
            .as_deref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The exit status if the agent has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.process.try_wait()
    }

    /// Waits until `ready` holds, for at most `limit`; fails with the
    /// agent's exit status and log if it exits first. `what` names what
    /// is awaited.
    pub fn wait_until(&mut self, what: &str, limit: Duration, ready: impl FnMut() -> bool) -> Result<(), WaitError> {
        self.wait_until_every(what, limit, ready::POLL, ready)
    }

    /// [`AgentProcess::wait_until`], polling every `every`.
    pub fn wait_until_every(
        &mut self,
        what: &str,
        limit: Duration,
        every: Duration,
        ready: impl FnMut() -> bool,
    ) -> Result<(), WaitError> {
        let process = &mut self.process;
        let log = &self.log;
        let result = ready::wait_every(
            what,
            limit,
            every,
            || match process.try_wait() {
                Ok(Some(status)) => Some(format!("balancer-agent exited ({status})")),
                Ok(None) => None,
                Err(e) => Some(format!("balancer-agent cannot be waited for: {e}")),
            },
            ready,
        );
        result.map_err(|e| with_log(e, log))
    }

    /// Waits until `GET /readyz` on the admin address `admin` answers 200:
    /// the programs attached (or eBPF off) and the state synced.
    pub fn wait_readyz(&mut self, admin: SocketAddr, limit: Duration) -> Result<(), WaitError> {
        self.wait_until(&format!("balancer-agent ready at http://{admin}/readyz"), limit, || {
            crate::http::ok(admin, "/readyz")
        })
    }

    /// Sends SIGTERM (how the kubelet and service managers stop it).
    pub fn sigterm(&self) -> io::Result<()> {
        self.process.signal(libc::SIGTERM)
    }

    /// Waits up to `limit` for the agent to exit on its own (killed after
    /// that): its exit status, `None` if it had to be killed.
    pub fn wait_exit(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        self.process.wait_timeout(limit)
    }

    /// SIGKILL and wait until it is gone.
    pub fn kill(&mut self) -> io::Result<()> {
        self.process.kill()
    }
}

/// `e` with the agent's log appended, when there is one to read.
fn with_log(e: WaitError, log: &Option<PathBuf>) -> WaitError {
    let Some(text) = log.as_deref().and_then(|p| fs::read_to_string(p).ok()) else {
        return e;
    };
    let tail = format!("; its log:\n{text}");
    match e {
        WaitError::Exited { what, detail } => WaitError::Exited {
            what,
            detail: detail + &tail,
        },
        WaitError::TimedOut { what, limit, detail } => WaitError::TimedOut {
            what,
            limit,
            detail: detail + &tail,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    /// A stand-in for the agent: `sh -c script`.
    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn an_agent_that_exits_while_starting_fails_the_wait_with_its_log() {
        let dir = std::env::temp_dir().join(format!("balancer-testing-agent-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("agent.log");
        let mut agent =
            AgentProcess::spawn(sh("echo 'bad config: line 3' >&2; exit 3"), Log::File(log)).expect("spawn");
        let err = agent
            .wait_until("ready", Duration::from_secs(10), || false)
            .expect_err("it exited");
        let text = err.to_string();
        assert!(matches!(err, WaitError::Exited { .. }), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("bad config: line 3"), "{text}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn sigterm_stops_it_and_the_exit_is_seen() {
        let mut agent = AgentProcess::spawn(sh("exec sleep 30"), Log::Discard).expect("spawn");
        assert!(agent.try_wait().expect("try_wait").is_none(), "still running");
        agent.sigterm().expect("SIGTERM");
        let status = agent
            .wait_exit(Duration::from_secs(10))
            .expect("wait")
            .expect("it exited on its own");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn an_agent_that_never_answers_times_out() {
        let mut agent = AgentProcess::spawn(sh("exec sleep 30"), Log::Discard).expect("spawn");
        let admin = crate::port::free_port().expect("port");
        let err = agent
            .wait_readyz(admin, Duration::from_millis(300))
            .expect_err("nothing answers");
        assert!(matches!(err, WaitError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains(&format!("http://{admin}/readyz")), "{err}");
        let pid = agent.pid();
        drop(agent);
        // Dropped: killed and reaped, by its PID.
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid} still there");
    }
}
