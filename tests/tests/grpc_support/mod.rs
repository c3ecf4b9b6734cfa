//! Shared by the gRPC conformance tests: the agent as a process in static
//! mode (`--config FILE --no-ebpf`, unprivileged, explicit listeners only),
//! its YAML file, and the Python grpcio peers. Starting the agent, free
//! ports and waiting are `balancer-testing`'s.
//!
//! The agent binary is built on first use (`cargo build --workspace
//! --exclude balancer-ebpf --bins`, a no-op when it is up to date) in the target
//! directory of the running test; `BALANCER_AGENT_BIN` points at another.
#![allow(dead_code, reason = "each test file uses a different part")]
#![expect(clippy::unwrap_used, reason = "test support: any error fails the test loudly")]

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use balancer_testing::{
    agent::{self, AgentProcess, Log},
    port,
};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `target/<profile>` of the running test binary (`.../deps/grpc_x-hash`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    deps.parent().unwrap().to_owned()
}

/// The agent binary, built if needed.
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BALANCER_AGENT_BIN") {
            return PathBuf::from(p);
        }
        let dir = profile_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(root())
            // The same build as `cargo xtask test` makes first, so that it
            // is a no-op there.
            .args(["build", "-q", "--workspace", "--exclude", "balancer-ebpf", "--bins"]);
        // Cargo's variables for this test process would look like a changed
        // environment to build scripts (ring's) and rebuild half the tree.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CARGO_") && !matches!(k.as_str(), "CARGO_TARGET_DIR" | "CARGO_HOME") {
                build.env_remove(k);
            }
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let out = build.output().expect("cannot run cargo to build balancer-agent");
        assert!(
            out.status.success(),
            "building balancer-agent failed (run `cargo build -p balancer-agent` to see why):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = dir.join("balancer-agent");
        assert!(bin.exists(), "no agent binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> SocketAddr {
    port::free_port().unwrap()
}

/// Replaces `path` atomically (a reader never sees half a file).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One endpoint line of a service.
pub struct Ep {
    pub addr: SocketAddr,
    pub version: String,
}

pub fn ep(addr: SocketAddr, version: &str) -> Ep {
    Ep {
        addr,
        version: version.to_owned(),
    }
}

/// A static config with one service `name` on the explicit listener
/// `listen`; `weights` (version, weight) adds a route over all calls.
pub fn config(admin: SocketAddr, name: &str, listen: SocketAddr, eps: &[Ep], weights: &[(&str, u32)]) -> String {
    let mut s = format!(
        "admin: {admin}\nservices:\n  - name: {name}\n    listen: {listen}\n    policy: round-robin\n    endpoints:"
    );
    if eps.is_empty() {
        s.push_str(" []\n");
    } else {
        s.push('\n');
        for e in eps {
            writeln!(
                s,
                "      - {{ address: \"{}\", labels: {{ version: {} }} }}",
                e.addr, e.version
            )
            .unwrap();
        }
    }
    if !weights.is_empty() {
        s.push_str("    routes:\n      - backends:\n");
        for (v, w) in weights {
            writeln!(s, "          - {{ labels: {{ version: {v} }}, weight: {w} }}").unwrap();
        }
    }
    s
}

/// The agent running in static mode; killed (by its pid) on drop.
pub struct Agent {
    pub process: AgentProcess,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub listen: SocketAddr,
}

impl Agent {
    /// Starts the agent on `config` (whose service listens on `listen`,
    /// admin on `admin`) and waits until the listener accepts.
    pub fn start(admin: SocketAddr, listen: SocketAddr, config: &str) -> Agent {
        Agent::start_with(admin, listen, config, &[])
    }

    /// [`Agent::start`] with more command-line arguments (e.g.
    /// `--access-log`).
    pub fn start_with(admin: SocketAddr, listen: SocketAddr, config: &str, args: &[&str]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("balancer.yaml");
        write_atomic(&path, config);
        let mut cmd = agent::command(&agent_bin(), Some(&path));
        cmd.arg("--no-ebpf")
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("BALANCER_LOG_FORMAT", "text");
        let mut process = AgentProcess::spawn(cmd, Log::File(dir.path().join("agent.log"))).unwrap();
        if let Err(e) = process.wait_until(
            &format!("balancer-agent listening on {listen}"),
            Duration::from_secs(20),
            || port::accepts(listen),
        ) {
            panic!("{e}");
        }
        Agent {
            process,
            dir,
            config: path,
            admin,
            listen,
        }
    }

    /// Rewrites the config file (the agent polls it).
    pub fn rewrite(&self, config: &str) {
        write_atomic(&self.config, config);
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn target(&self) -> String {
        self.listen.to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- balancer-agent log ----\n{}", self.log());
        }
    }
}

/// Python with grpcio: `BALANCER_PYTHON`, else the project's `.venv`.
/// Missing grpcio fails the test (`cargo xtask setup` installs it).
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let py = std::env::var_os("BALANCER_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".venv/bin/python"));
        let ok = Command::new(&py)
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{} has no grpcio/grpcio-tools: run `cargo xtask setup`, or \
             `python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt`, \
             or point BALANCER_PYTHON at a Python that has them",
            py.display()
        );
        py
    })
    .clone()
}

fn peer_script() -> PathBuf {
    root().join("tests/python/peer.py")
}

/// A grpcio server process (greeter + echo), killed on drop.
pub struct PyServer {
    child: Child,
    _stdout: std::process::ChildStdout,
    pub addr: SocketAddr,
    pub name: String,
}

impl PyServer {
    pub fn start(name: &str) -> PyServer {
        let mut child = Command::new(python())
            .arg(peer_script())
            .args(["server", "--listen", "127.0.0.1:0", "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the Python gRPC server");
        // The first stdout line: `listening on ADDR`.
        let mut stdout = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("the Python server did not start: {line:?}")
            });
        PyServer {
            child,
            _stdout: stdout,
            addr,
            name: name.to_owned(),
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the grpcio client against `target`: `args` after `client --target`.
/// Returns its JSON report.
pub fn py_client(target: &str, args: &[&str]) -> serde_json::Value {
    let mut child = Command::new(python())
        .arg(peer_script())
        .args(["client", "--target", target])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the Python gRPC client");
    // Bounded: the client's calls all have deadlines; this is the backstop.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the Python client ran for more than 120 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the Python client printed no JSON ({e}); status {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A plain TCP echo server (not HTTP/2), for the fallback path.
pub struct TcpEcho {
    pub addr: SocketAddr,
}

impl TcpEcho {
    pub fn start() -> TcpEcho {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for conn in l.incoming().take(64) {
                let Ok(mut conn) = conn else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        TcpEcho { addr }
    }
}

/// The deadline of every call the gRPC tests make.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `calls` SayHello calls over `ch`, `concurrency` at a time.
pub async fn spread(ch: &tonic::transport::Channel, calls: u64, concurrency: usize) -> greeter::client::Spread {
    greeter::client::say_hello_spread(ch.clone(), calls, concurrency, CALL_TIMEOUT).await
}

/// How many calls of `s` `backend` served.
pub fn count(s: &greeter::client::Spread, backend: &str) -> u64 {
    s.backends.get(backend).copied().unwrap_or_default()
}

/// `calls` calls over `ch`, 16 at a time; once `reached()` says the load got
/// where it should (within 20 s), `stop` runs beside it (endpoints stopping
/// gracefully: GOAWAY, open calls finish, the port closes). Returns the
/// calls' spread once both are done, each bounded in time; `what` names the
/// stopping side in failures.
pub async fn stop_under_load(
    ch: &tonic::transport::Channel,
    calls: u64,
    what: &str,
    reached: impl Fn() -> bool,
    stop: impl FnOnce() + Send + 'static,
) -> greeter::client::Spread {
    let load = tokio::spawn({
        let ch = ch.clone();
        async move { spread(&ch, calls, 16).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reached() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(reached(), "the load never reached {what}");
    let stopping = tokio::task::spawn_blocking(stop);
    let s = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the load ends")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .unwrap_or_else(|_| panic!("{what} stops once its connections close"))
        .unwrap();
    s
}
