//! The client that sees an endpoint change: `SayHello` calls one after the
//! other over one gRPC channel (one connection, as an application keeps
//! it), printing a JSON line each time the answer changes — another backend,
//! or a failure. It runs inside the client pod
//! (`balancer-scale-bench follow`); [`Follower`] starts it there and
//! timestamps its lines as they arrive.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::SocketAddrV4,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{cgroup::Cgroup, netns::NetNs, process::ChildGuard};

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("starting the runtime")]
    Runtime(#[source] io::Error),
    #[error("no channel to {target} within {limit:?}: {last}")]
    Connect {
        target: SocketAddrV4,
        limit: Duration,
        last: String,
    },
    #[error("writing a line")]
    Output(#[source] io::Error),
    #[error("starting the follower in the pod")]
    Spawn(#[source] io::Error),
    #[error("the follower saw no answer from {backend} within {limit:?} (last: {last:?})")]
    NotSeen {
        backend: String,
        limit: Duration,
        last: Option<String>,
    },
}

/// One line of the follower: what the calls answer from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The backend that answered, or `None` when the call failed.
    pub backend: Option<String>,
    /// The failure's gRPC code, when it failed.
    pub error: Option<String>,
    /// Calls made so far.
    pub calls: u64,
}

/// The loop run in the pod: calls `target` every `interval` until stdin
/// closes or `max` has passed.
pub fn run(target: SocketAddrV4, interval: Duration, max: Duration) -> Result<(), FollowError> {
    // The parent closes stdin to stop the loop.
    std::thread::spawn(|| {
        let mut sink = String::new();
        while io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FollowError::Runtime)?;
    rt.block_on(follow(target, interval, max))
}

async fn follow(target: SocketAddrV4, interval: Duration, max: Duration) -> Result<(), FollowError> {
    let start = Instant::now();
    let limit = Duration::from_secs(10);
    let addr = target.to_string();
    let channel = loop {
        match greeter::client::connect(&addr).await {
            Ok(c) => break c,
            Err(e) if start.elapsed() > limit => {
                return Err(FollowError::Connect {
                    target,
                    limit,
                    last: format!("{e:?}"),
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut client = greeter::client::greeter(channel);
    let mut last: Option<(Option<String>, Option<String>)> = None;
    let mut calls = 0u64;
    let stdout = io::stdout();
    while start.elapsed() < max {
        let mut req = tonic::Request::new(greeter::pb::helloworld::HelloRequest { name: "scale".into() });
        req.set_timeout(Duration::from_secs(2));
        let answer = match client.say_hello(req).await {
            Ok(r) => (Some(r.into_inner().backend), None),
            Err(status) => (None, Some(format!("{:?}", status.code()))),
        };
        calls += 1;
        if last.as_ref() != Some(&answer) {
            let line = Answer {
                backend: answer.0.clone(),
                error: answer.1.clone(),
                calls,
            };
            let mut out = stdout.lock();
            serde_json::to_writer(&mut out, &line).map_err(|e| FollowError::Output(e.into()))?;
            out.write_all(b"\n")
                .and_then(|()| out.flush())
                .map_err(FollowError::Output)?;
            last = Some(answer);
        }
        tokio::time::sleep(interval).await;
    }
    Ok(())
}

/// The follower running in a pod; its lines with the time each arrived.
pub struct Follower {
    process: ChildGuard,
    lines: Receiver<(Instant, Answer)>,
    last: Option<Answer>,
}

impl Follower {
    /// Starts `bin follow` in the pod (its cgroup, then its namespace).
    pub fn start(
        bin: &Path,
        netns: &NetNs,
        cgroup: &Cgroup,
        target: SocketAddrV4,
        interval: Duration,
        max: Duration,
    ) -> Result<Follower, FollowError> {
        let mut cmd = Command::new(bin);
        cmd.args([
            "follow",
            "--target",
            &target.to_string(),
            "--interval-us",
            &interval.as_micros().to_string(),
            "--max-secs",
            &max.as_secs().max(1).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        crate::process::place(&mut cmd, Some(netns), Some(cgroup)).map_err(FollowError::Spawn)?;
        let mut child = cmd.spawn().map_err(FollowError::Spawn)?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| FollowError::Spawn(io::Error::other("no stdout")))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let Ok(answer) = serde_json::from_str::<Answer>(&line) else {
                    continue;
                };
                if tx.send((at, answer)).is_err() {
                    break;
                }
            }
        });
        Ok(Follower {
            process: ChildGuard::new(child),
            lines,
            last: None,
        })
    }

    /// Forgets the lines that arrived so far (keeping the last answer).
    pub fn drain(&mut self) {
        while let Ok((_, a)) = self.lines.try_recv() {
            self.last = Some(a);
        }
    }

    /// The most recent answer seen.
    pub fn last(&mut self) -> Option<&Answer> {
        self.drain();
        self.last.as_ref()
    }

    /// When the first answer from `backend` arrived, waiting at most
    /// `limit` from now. Lines read before are not looked at: call
    /// [`Follower::drain`] before the change.
    pub fn wait_for(&mut self, backend: &str, limit: Duration) -> Result<Instant, FollowError> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, a)) => {
                    let hit = a.backend.as_deref() == Some(backend);
                    self.last = Some(a);
                    if hit {
                        return Ok(at);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(FollowError::NotSeen {
                        backend: backend.to_owned(),
                        limit,
                        last: self.last.as_ref().map(|a| format!("{a:?}")),
                    })
                }
            }
        }
    }

    /// Stops the loop (closes its stdin; killed if it lingers).
    pub fn stop(mut self) {
        drop(self.process.child_mut().stdin.take());
        let _ = self.process.wait_timeout(Duration::from_secs(3));
    }
}
