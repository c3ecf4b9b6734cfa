//! Runs `balancer-test-pod` workloads inside a pod (its cgroup, then its
//! network namespace). Each subcommand prints one JSON line:
//!
//! * `probe --to ip:port [--echo N]`: connect; `{"connect":"error","errno":..}`
//!   or `{"connect":"ok","orig":"ip:port"|null,"echo_ok":bool}`.
//! * `load --to ip:port --conns N ...`: N connections that write a small
//!   header right after connect, then a checksummed payload of random size;
//!   `{"planned":N,"done":..,"ok":..,"bad":[..],"errors":[..],"bytes":..}`.
//! * `flood --to ip:port --prefix N --max-bytes M --secs S`: fills a
//!   connection the agent stopped reading; prints
//!   `{"written_after_left":..,"blocked":bool}` and keeps the connection open
//!   until its stdin closes (`--keep-fast-path`: the agent stops reading
//!   without taking the connection out of the fast path).
//! * `hold --to ip:port... --to-mapped ip:port...`: opens IPv4 (and
//!   dual-stack IPv6, `::ffff:ip`) connections, prints
//!   `{"conns":[{"to","local"}..]}`, then answers each `check` line on stdin
//!   with `{"status":[{"to","ok","errno","eof"}..]}` (an echo round trip per
//!   connection) until stdin closes.

use std::{
    io,
    path::Path,
    process::{ChildStdin, Command, Stdio},
    sync::mpsc::Receiver,
    time::Duration,
};

use crate::{cgroup::Cgroup, netns::NetNs, process::ChildGuard, topology::Pod};

fn command(bin: &Path, netns: &NetNs, cgroup: &Cgroup, args: &[String]) -> io::Result<Command> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    crate::process::place(&mut cmd, Some(netns), Some(cgroup))?;
    Ok(cmd)
}

/// Runs a subcommand to completion (killed after `timeout`) and returns its
/// JSON line.
pub fn run(bin: &Path, pod: &Pod, args: &[String], timeout: Duration) -> io::Result<serde_json::Value> {
    let mut proc = spawn(bin, pod, args)?;
    let v = proc.next_json(timeout)?;
    drop(proc.stdin.take());
    proc.process.wait_timeout(Duration::from_secs(5))?;
    Ok(v)
}

/// A pod process whose stdout lines are read as they come.
pub struct PodProcess {
    pub process: ChildGuard,
    pub stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

/// Starts a subcommand and returns without waiting.
pub fn spawn(bin: &Path, pod: &Pod, args: &[String]) -> io::Result<PodProcess> {
    spawn_in(bin, &pod.netns, &pod.cgroup, args)
}

/// [`spawn`] in any network namespace and cgroup (a pod without a node).
pub fn spawn_in(bin: &Path, netns: &NetNs, cgroup: &Cgroup, args: &[String]) -> io::Result<PodProcess> {
    let mut cmd = command(bin, netns, cgroup, args)?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
    let lines = crate::process::lines(stdout);
    Ok(PodProcess {
        process: ChildGuard::new(child),
        stdin,
        lines,
    })
}

impl PodProcess {
    /// The next stdout line, parsed as JSON.
    pub fn next_json(&mut self, timeout: Duration) -> io::Result<serde_json::Value> {
        let line = self
            .lines
            .recv_timeout(timeout)
            .map_err(|e| io::Error::new(io::ErrorKind::TimedOut, format!("pod process: {e}")))?;
        serde_json::from_str(&line).map_err(|e| io::Error::other(format!("{e}: {line}")))
    }
}
