//! Drives `balancer-test-agent`: the kernel programs loaded by
//! `balancer_agent::ebpf::Kernel` and the [`crate::wire`] protocol served,
//! inside a test's node namespace.
//!
//! Control protocol (one line each way): the test writes a command on the
//! agent's stdin, the agent answers `RESP <text>` on stdout. Commands:
//! `counters` (JSON, see [`counters_from_json`]), `fast-path on|off`,
//! `services <ip:port>,...`, `enroll <cgroup dir>,...`, `connect <ip:port>`
//! (the agent's own outbound connect: `RESP ok <peer>` or
//! `RESP err <errno> <text>`), `programs`. Unsolicited lines start with
//! `EVENT ` (e.g. `EVENT refused <peer>`). Startup ends with `READY <addr>`
//! or `FAILED <error>`.

use std::{
    io::{self, Write as _},
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use balancer_agent::ebpf::{Counters, Program, ProgramCounters};

use crate::{cgroup::Cgroup, netns::NetNs, process::ChildGuard};

/// How to start the test agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// cgroup to attach the programs at.
    pub attach_cgroup: PathBuf,
    pub listen: SocketAddrV4,
    pub fast_path: bool,
    pub services: Vec<SocketAddrV4>,
    pub enroll: Vec<PathBuf>,
}

/// A running test agent; killed on drop.
pub struct TestAgent {
    // Declared first so it is dropped (killed) first.
    process: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    events: Vec<String>,
    pub listen: SocketAddrV4,
}

impl TestAgent {
    /// Starts `bin` (`balancer-test-agent`) in `netns` and its own `cgroup`
    /// (as a container runtime or service manager starts the agent) and
    /// waits until it has attached the programs and listens.
    pub fn spawn(bin: &Path, netns: &NetNs, cgroup: &Cgroup, opts: &AgentOptions) -> io::Result<TestAgent> {
        let mut cmd = Command::new(bin);
        cmd.arg("--attach-cgroup")
            .arg(&opts.attach_cgroup)
            .arg("--listen")
            .arg(opts.listen.to_string())
            .arg("--fast-path")
            .arg(if opts.fast_path { "on" } else { "off" });
        for s in &opts.services {
            cmd.arg("--service").arg(s.to_string());
        }
        for e in &opts.enroll {
            cmd.arg("--enroll").arg(e);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        crate::process::place(&mut cmd, Some(netns), Some(cgroup))?;
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let process = ChildGuard::new(child);
        let lines = crate::process::lines(stdout);
        let mut agent = TestAgent {
            process,
            stdin,
            lines,
            events: Vec::new(),
            listen: opts.listen,
        };
        let line = agent.next_line(Duration::from_secs(30), |l| {
            l.starts_with("READY ") || l.starts_with("FAILED ")
        })?;
        if let Some(err) = line.strip_prefix("FAILED ") {
            return Err(io::Error::other(format!("test agent failed to start: {err}")));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn next_line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return Ok(line),
                Ok(line) => self.events.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "test agent did not answer"))
                }
                Err(RecvTimeoutError::Disconnected) => return Err(io::Error::other("test agent exited")),
            }
        }
    }

    /// Sends one command and returns the text after `RESP `.
    pub fn command(&mut self, cmd: &str) -> io::Result<String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("agent stdin closed"))?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        let line = self.next_line(Duration::from_secs(20), |l| l.starts_with("RESP "))?;
        Ok(line["RESP ".len()..].to_owned())
    }

    /// The kernel programs' counters, summed over CPUs.
    pub fn counters(&mut self) -> io::Result<Counters> {
        let text = self.command("counters")?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
        Ok(counters_from_json(&v))
    }

    /// Unsolicited `EVENT` lines seen so far (also drains pending ones).
    pub fn events(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.events.push(line);
        }
        &self.events
    }

    /// SIGKILL the agent and wait until it is gone.
    pub fn kill(&mut self) -> io::Result<()> {
        self.stdin = None;
        self.process.kill()
    }
}

/// JSON form of the counters, as the test agent prints them.
pub fn counters_to_json(c: &Counters) -> serde_json::Value {
    let one = |p: ProgramCounters| {
        serde_json::json!({
            "redirected": p.redirected, "passed": p.passed, "errors": p.errors,
            "bytes": p.bytes, "pinned": p.pinned,
        })
    };
    let mut map = serde_json::Map::new();
    for p in Program::ALL {
        map.insert(p.name().to_owned(), one(c.get(p)));
    }
    serde_json::Value::Object(map)
}

/// Inverse of [`counters_to_json`] (missing fields read as 0).
pub fn counters_from_json(v: &serde_json::Value) -> Counters {
    let one = |name: &str| {
        let p = &v[name];
        let f = |k: &str| p[k].as_u64().unwrap_or(0);
        ProgramCounters {
            redirected: f("redirected"),
            passed: f("passed"),
            errors: f("errors"),
            bytes: f("bytes"),
            pinned: f("pinned"),
        }
    };
    Counters {
        connect4: one("connect4"),
        sock_ops: one("sock_ops"),
        sk_msg: one("sk_msg"),
        getsockopt: one("getsockopt"),
        connect6: one("connect6"),
    }
}
