//! gRPC clients run inside a test pod (its network namespace and cgroup):
//! tonic's `greeter-client`, and a load from gRPC C-core (Python grpcio),
//! whose GOAWAY handling follows the gRPC spec.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    cgroup::Cgroup,
    netns::NetNs,
    pod::{self, PodProcess},
    process::{place, ChildGuard},
};

/// `bin` (greeter-client) in the pod: `calls` SayHello calls over one
/// channel to `target`, 8 at a time, started now; its JSON report
/// (`backends`, `errors`, ...) is its one line.
pub fn greeter(bin: &Path, netns: &NetNs, cgroup: &Cgroup, target: SocketAddrV4, calls: u64) -> PodProcess {
    greeter_with(bin, netns, cgroup, target, calls, &[])
}

/// [`greeter`] with more arguments (`--header NAME=VALUE`, ...).
pub fn greeter_with(
    bin: &Path,
    netns: &NetNs,
    cgroup: &Cgroup,
    target: SocketAddrV4,
    calls: u64,
    extra: &[&str],
) -> PodProcess {
    let args: Vec<String> = [
        "--target",
        &target.to_string(),
        "--calls",
        &calls.to_string(),
        "--concurrency",
        "8",
        "--json",
    ]
    .iter()
    .chain(extra)
    .map(|s| (*s).to_owned())
    .collect();
    pod::spawn_in(bin, netns, cgroup, &args).expect("start greeter-client")
}

/// Successful calls per backend in a greeter-client report.
pub fn backends(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v["backends"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

/// The Python of the test peers' virtualenv (`cargo xtask setup` makes it).
pub fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("BALANCER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.parent().expect("workspace").join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs tests/python/requirements.txt into .venv)",
        python.display()
    );
    python
}

/// A load of `calls` calls over one channel from a gRPC C-core client
/// (Python grpcio) in a pod: a client that, as the gRPC spec asks, moves
/// calls not yet sent to a new connection when its connection gets GOAWAY.
/// (tonic's client fails the calls it had queued at that moment instead.)
pub struct GrpcioLoad {
    child: ChildGuard,
    out: PathBuf,
    err: PathBuf,
    case: String,
}

impl GrpcioLoad {
    /// Starts the load; its output goes into `dir`.
    pub fn start(netns: &NetNs, cgroup: &Cgroup, target: SocketAddrV4, calls: u64, dir: &Path) -> GrpcioLoad {
        Self::case(netns, cgroup, target, &format!("spread={calls},8"), dir)
    }

    /// Starts any case of `tests/python/peer.py client` (`stream=N,SIZE,MS`,
    /// `bidi`, ...) over one channel to `target`.
    pub fn case(netns: &NetNs, cgroup: &Cgroup, target: SocketAddrV4, case: &str, dir: &Path) -> GrpcioLoad {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let tag: String = case
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let out = dir.join(format!("grpcio-{tag}.out"));
        let err = dir.join(format!("grpcio-{tag}.err"));
        let mut cmd = Command::new(python());
        cmd.arg(root.join("python/peer.py"))
            .args(["client", "--target", &target.to_string(), case])
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        place(&mut cmd, Some(netns), Some(cgroup)).expect("place client");
        GrpcioLoad {
            child: ChildGuard::new(cmd.spawn().expect("start the grpcio client")),
            out,
            err,
            case: case.to_owned(),
        }
    }

    /// Whether it is still making calls.
    pub fn running(&mut self) -> bool {
        self.child.child_mut().try_wait().is_ok_and(|s| s.is_none())
    }

    /// Waits for the client to finish: its report of the case.
    pub fn report(mut self) -> serde_json::Value {
        let status = self.child.wait_timeout(Duration::from_secs(180)).expect("wait");
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        assert!(status.is_some(), "the grpcio client ran for more than 180 s: {err}");
        let mut r: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("no JSON report ({e}): {out:?}\n{err}"));
        r[&self.case].take()
    }

    /// Waits for a load's report: calls per backend, and the failed calls.
    pub fn finish(self) -> (BTreeMap<String, u64>, Failures) {
        let case = self.report();
        let counts = |v: &serde_json::Value| -> BTreeMap<String, u64> {
            v.as_object()
                .map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
                .unwrap_or_default()
        };
        assert!(case.get("backends").is_some(), "the load itself failed: {case}");
        let details = case["details"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        (
            counts(&case["backends"]),
            Failures {
                per_code: counts(&case["errors"]),
                details,
            },
        )
    }
}

/// The calls of a load that failed: how many per gRPC code, and what the
/// first of them said (with the client's wall-clock time).
#[derive(Debug, Default)]
pub struct Failures {
    pub per_code: BTreeMap<String, u64>,
    pub details: Vec<String>,
}

impl Failures {
    pub fn is_empty(&self) -> bool {
        self.per_code.is_empty()
    }
}
