//! Pinned connections (`balancer_agent::pinned`) on the real kernel: a "pod"
//! (its own network namespace and cgroup, a `balancer-test-pod hold` process
//! in both) holds connections to a "VIP" (an address on the pod's loopback
//! with an echo listener) and to addresses that are not VIPs; the sweep must
//! count exactly the VIP ones, close them only when asked and no faster than
//! its rate, and report empty or vanished cgroups without failing.
//!
//! Run as root, one at a time: `cargo test -p balancer-tests --test pinned
//! -- --test-threads=1`. Without root they skip loudly;
//! `BALANCER_REQUIRE_PRIVILEGED=1` turns a skip into a failure.

use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    num::NonZeroU32,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use balancer_agent::pinned::{
    diag::Family, netns::run_in, netns::NetnsError, Action, PinnedError, PodReport, PodTarget, SweepConfig, Sweeper,
};
use balancer_tests::{
    cgroup::Cgroup,
    netns::NetNs,
    pod::{self, PodProcess},
    privileged::serial_or_skip,
};
use serde_json::Value;

const POD_BIN: &str = env!("CARGO_BIN_EXE_balancer-test-pod");
const SWEEP_BIN: &str = env!("CARGO_BIN_EXE_balancer-test-sweep");

/// The balanced Service VIP:port.
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 50051);
/// The VIP's address on a port that is not balanced.
const VIP_OTHER_PORT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 50052);
/// Another address, not a VIP.
const OTHER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 50051);
const ECONNABORTED: i64 = 103;

/// An echo server on `addr` inside a network namespace, served by the test
/// process (so its sockets are in the test's cgroup, not the pod's).
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(netns: &NetNs, addr: SocketAddrV4) -> EchoServer {
        let ns = netns.open().expect("open netns");
        let listener = run_in(&ns, move || TcpListener::bind(addr))
            .expect("enter the pod netns")
            .expect("bind the echo listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let flag = flag.clone();
                        conns.push(std::thread::spawn(move || echo(s, &flag)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        EchoServer {
            stop,
            thread: Some(thread),
        }
    }
}

fn echo(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pod without a process yet: its netns (VIP and OTHER on its loopback,
/// echo servers on VIP, VIP_OTHER_PORT and OTHER) and its cgroup. Fields
/// drop in order: servers, cgroup, netns.
struct Fixture {
    _servers: Vec<EchoServer>,
    cgroup: Cgroup,
    netns: NetNs,
}

fn fixture() -> Fixture {
    let netns = NetNs::new("btpin").expect("netns");
    for ip in [VIP.ip(), OTHER.ip()] {
        netns
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .expect("address on lo");
    }
    let cgroup = Cgroup::new_top("balancer-pinned-").expect("cgroup");
    let servers = [VIP, VIP_OTHER_PORT, OTHER]
        .into_iter()
        .map(|a| EchoServer::start(&netns, a))
        .collect();
    Fixture {
        _servers: servers,
        cgroup,
        netns,
    }
}

/// Starts `balancer-test-pod hold` in the pod; returns it once every
/// connection is up, with the local address of each.
fn hold(fx: &Fixture, to: &[SocketAddrV4], mapped: &[SocketAddrV4]) -> (PodProcess, Vec<String>) {
    let mut args = vec!["hold".to_owned()];
    for a in to {
        args.extend(["--to".to_owned(), a.to_string()]);
    }
    for a in mapped {
        args.extend(["--to-mapped".to_owned(), a.to_string()]);
    }
    let mut p = pod::spawn_in(Path::new(POD_BIN), &fx.netns, &fx.cgroup, &args).expect("spawn hold");
    let v = p.next_json(Duration::from_secs(15)).expect("hold's connections");
    let locals = v["conns"]
        .as_array()
        .expect("conns")
        .iter()
        .map(|c| {
            assert!(c["local"].is_string(), "connect failed: {v}");
            c["local"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    (p, locals)
}

/// Each connection's echo round trip: `Ok(())` or the errno it failed with.
fn check(p: &mut PodProcess) -> Vec<Result<(), i64>> {
    let stdin = p.stdin.as_mut().expect("hold's stdin");
    writeln!(stdin, "check").expect("write check");
    stdin.flush().expect("flush");
    let v = p.next_json(Duration::from_secs(30)).expect("hold's status");
    v["status"]
        .as_array()
        .expect("status")
        .iter()
        .map(|s| {
            if s["ok"] == true {
                Ok(())
            } else {
                Err(s["errno"].as_i64().unwrap_or(-1))
            }
        })
        .collect()
}

fn vips() -> HashSet<SocketAddr> {
    HashSet::from([SocketAddr::V4(VIP)])
}

fn target(fx: &Fixture, remedy: bool) -> PodTarget<String> {
    PodTarget {
        key: "ns/pod".to_owned(),
        cgroup: fx.cgroup.path().to_owned(),
        remedy,
    }
}

fn sweeper(rate: u32, max_wait: Duration) -> Sweeper<String> {
    Sweeper::new(SweepConfig {
        destroy_rate: NonZeroU32::new(rate).expect("rate"),
        max_wait,
        ..SweepConfig::default()
    })
}

fn one(mut reports: Vec<PodReport<String>>) -> PodReport<String> {
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

#[test]
fn scan_counts_only_the_pods_connection_to_the_vip() {
    let Some(_serial) = serial_or_skip("scan_counts_only_the_pods_connection_to_the_vip") else {
        return;
    };
    let fx = fixture();
    let (mut pod, locals) = hold(&fx, &[VIP, VIP_OTHER_PORT, OTHER], &[]);
    // The test process's own connection to the VIP from inside the pod's
    // namespace: same namespace, but not the pod's cgroup.
    let ns = fx.netns.open().expect("netns");
    let mut outsider = run_in(&ns, || TcpStream::connect(VIP))
        .expect("enter")
        .expect("connect");

    let mut sweeper = sweeper(100, Duration::from_secs(5));
    let report = one(sweeper.sweep(&[target(&fx, false)], &vips()));
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.pinned(), 1, "{:?}", report.conns);
    let conn = &report.conns[0];
    assert_eq!(conn.vip, SocketAddr::V4(VIP));
    assert_eq!(conn.local.to_string(), locals[0]);
    assert_eq!(conn.family, Family::V4);
    assert_eq!(conn.action, Action::Kept, "remedy off: nothing is closed");
    assert_eq!(report.closed(), 0);
    assert_eq!(check(&mut pod), vec![Ok(()), Ok(()), Ok(())]);

    // A second sweep uses the cached namespace and finds the same socket.
    let again = one(sweeper.sweep(&[target(&fx, false)], &vips()));
    assert_eq!(again.conns, report.conns);
    assert_eq!(sweeper.cached_pods(), 1);
    // With no VIPs nothing is pinned.
    assert_eq!(one(sweeper.sweep(&[target(&fx, false)], &HashSet::new())).pinned(), 0);

    outsider.write_all(b"y").expect("outsider write");
    let mut b = [0u8; 1];
    outsider.read_exact(&mut b).expect("outsider echo");
}

#[test]
fn remedy_closes_the_vip_connection_and_nothing_else() {
    let Some(_serial) = serial_or_skip("remedy_closes_the_vip_connection_and_nothing_else") else {
        return;
    };
    let fx = fixture();
    let (mut pod, _) = hold(&fx, &[VIP, VIP_OTHER_PORT, OTHER], &[]);
    let ns = fx.netns.open().expect("netns");
    let mut outsider = run_in(&ns, || TcpStream::connect(VIP))
        .expect("enter")
        .expect("connect");

    let mut sweeper = sweeper(100, Duration::from_secs(5));
    let report = one(sweeper.sweep(&[target(&fx, true)], &vips()));
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!((report.pinned(), report.closed()), (1, 1), "{:?}", report.conns);
    assert_eq!(check(&mut pod), vec![Err(ECONNABORTED), Ok(()), Ok(())]);
    outsider.write_all(b"y").expect("outsider write");
    let mut b = [0u8; 1];
    outsider
        .read_exact(&mut b)
        .expect("the test's own VIP connection is untouched");

    let after = one(sweeper.sweep(&[target(&fx, true)], &vips()));
    assert_eq!(after.pinned(), 0, "the destroyed socket is gone: {:?}", after.conns);
}

#[test]
fn a_dual_stack_socket_to_a_mapped_vip_is_found_and_closed() {
    let Some(_serial) = serial_or_skip("a_dual_stack_socket_to_a_mapped_vip_is_found_and_closed") else {
        return;
    };
    let fx = fixture();
    let (mut pod, _) = hold(&fx, &[OTHER], &[VIP, OTHER]);
    let mut sweeper = sweeper(100, Duration::from_secs(5));
    let report = one(sweeper.sweep(&[target(&fx, false)], &vips()));
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.pinned(), 1, "{:?}", report.conns);
    assert_eq!(report.conns[0].family, Family::V6);
    assert_eq!(report.conns[0].vip, SocketAddr::V4(VIP));
    assert!(report.conns[0].local.is_ipv6(), "{:?}", report.conns[0]);

    let report = one(sweeper.sweep(&[target(&fx, true)], &vips()));
    assert_eq!(report.closed(), 1, "{report:?}");
    assert_eq!(check(&mut pod), vec![Ok(()), Err(ECONNABORTED), Ok(())]);
}

#[test]
fn closes_keep_to_the_node_wide_rate() {
    let Some(_serial) = serial_or_skip("closes_keep_to_the_node_wide_rate") else {
        return;
    };
    let fx = fixture();
    let (mut pod, _) = hold(&fx, &[VIP; 5], &[]);
    let mut sweeper = sweeper(2, Duration::from_secs(10));
    let started = Instant::now();
    let report = one(sweeper.sweep(&[target(&fx, true)], &vips()));
    let took = started.elapsed();
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!((report.pinned(), report.closed()), (5, 5), "{:?}", report.conns);
    // 2/s, one at a time: the fifth close comes 4 × 0.5 s after the first.
    assert!(took >= Duration::from_secs(2), "5 closes at 2/s took {took:?}");
    assert!(took < Duration::from_secs(6), "5 closes at 2/s took {took:?}");
    assert_eq!(check(&mut pod), vec![Err(ECONNABORTED); 5]);
}

#[test]
fn closes_beyond_the_sweeps_wait_are_deferred_to_later_sweeps() {
    let Some(_serial) = serial_or_skip("closes_beyond_the_sweeps_wait_are_deferred_to_later_sweeps") else {
        return;
    };
    let fx = fixture();
    let (mut pod, _) = hold(&fx, &[VIP; 3], &[]);
    let mut sweeper = sweeper(1, Duration::from_millis(300));
    let started = Instant::now();
    let report = one(sweeper.sweep(&[target(&fx, true)], &vips()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a sweep waits at most max_wait"
    );
    assert_eq!((report.pinned(), report.closed(), report.deferred()), (3, 1, 2));
    let mut status = check(&mut pod);
    status.sort();
    assert_eq!(status, vec![Ok(()), Ok(()), Err(ECONNABORTED)]);
    // The limit holds across sweeps: the next token is a second after the
    // first close.
    let report = one(sweeper.sweep(&[target(&fx, true)], &vips()));
    assert_eq!((report.pinned(), report.closed(), report.deferred()), (2, 0, 2));
    std::thread::sleep(Duration::from_millis(800));
    let report = one(sweeper.sweep(&[target(&fx, true)], &vips()));
    assert_eq!((report.pinned(), report.closed(), report.deferred()), (2, 1, 1));
}

#[test]
fn a_pod_cgroup_without_processes_counts_zero() {
    let Some(_serial) = serial_or_skip("a_pod_cgroup_without_processes_counts_zero") else {
        return;
    };
    let fx = fixture();
    let child = fx.cgroup.child("container").expect("child cgroup");
    let mut sweeper = sweeper(100, Duration::from_secs(5));
    let report = one(sweeper.sweep(&[target(&fx, true)], &vips()));
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.pinned(), 0);
    assert_eq!(sweeper.cached_pods(), 0);
    drop(child);
}

#[test]
fn a_vanished_cgroup_is_reported_and_forgotten() {
    let Some(_serial) = serial_or_skip("a_vanished_cgroup_is_reported_and_forgotten") else {
        return;
    };
    let fx = fixture();
    let gone = fx.cgroup.child("gone").expect("child cgroup");
    let pod_target = PodTarget {
        key: "ns/gone".to_owned(),
        cgroup: gone.path().to_owned(),
        remedy: true,
    };
    let never = PodTarget {
        key: "ns/never".to_owned(),
        cgroup: fx.cgroup.path().join("never-existed"),
        remedy: false,
    };
    let mut sweeper = sweeper(100, Duration::from_secs(5));
    {
        // A process that lives in `gone` for one sweep.
        let mut args = vec!["hold".to_owned(), "--to".to_owned(), VIP.to_string()];
        args.push("--to".to_owned());
        args.push(OTHER.to_string());
        let mut p = pod::spawn_in(Path::new(POD_BIN), &fx.netns, &gone, &args).expect("spawn");
        p.next_json(Duration::from_secs(15)).expect("conns");
        let reports = sweeper.sweep(&[pod_target.clone(), never.clone()], &vips());
        assert_eq!(reports[0].pinned(), 1, "{:?}", reports[0]);
        assert!(
            matches!(&reports[1].error, Some(PinnedError::Netns(NetnsError::CgroupGone(p))) if *p == never.cgroup),
            "{:?}",
            reports[1].error
        );
        assert_eq!(sweeper.cached_pods(), 1);
        p.process.kill().expect("kill");
    }
    std::fs::remove_dir(gone.path()).expect("remove the pod's cgroup");
    let reports = sweeper.sweep(&[pod_target], &vips());
    assert!(
        matches!(&reports[0].error, Some(PinnedError::Netns(NetnsError::CgroupGone(_)))),
        "{:?}",
        reports[0].error
    );
    assert_eq!(reports[0].pinned(), 0);
    assert_eq!(sweeper.cached_pods(), 0, "the vanished pod's namespace is closed");
}

#[test]
fn a_restarted_container_is_found_again() {
    let Some(_serial) = serial_or_skip("a_restarted_container_is_found_again") else {
        return;
    };
    let fx = fixture();
    let mut sweeper = sweeper(100, Duration::from_secs(5));
    let (mut first, _) = hold(&fx, &[VIP], &[]);
    assert_eq!(one(sweeper.sweep(&[target(&fx, false)], &vips())).pinned(), 1);
    first.process.kill().expect("kill");
    // The cached process is gone; a new one in the same pod holds two.
    let (_second, _) = hold(&fx, &[VIP, VIP], &[]);
    let report = one(sweeper.sweep(&[target(&fx, false)], &vips()));
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.pinned(), 2);
    // Pods no longer passed are forgotten.
    sweeper.sweep(&[], &vips());
    assert_eq!(sweeper.cached_pods(), 0);
}

/// Runs `balancer-test-sweep` through `unshare` (a new PID namespace, as the
/// agent's container has) and returns its JSON line.
fn sweep_from_own_pid_namespace(fx: &Fixture, unshare: &[&str], remedy: bool) -> Value {
    let mut cmd = Command::new("unshare");
    cmd.args(unshare)
        .arg(SWEEP_BIN)
        .arg("--cgroup")
        .arg(fx.cgroup.path())
        .args(["--vip", &VIP.to_string()]);
    if remedy {
        cmd.arg("--remedy");
    }
    let out = cmd.output().expect("run unshare");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("sweep JSON")
}

#[test]
fn from_its_own_pid_namespace_the_agent_finds_pods_through_the_hosts_proc() {
    let Some(_serial) = serial_or_skip("from_its_own_pid_namespace_the_agent_finds_pods_through_the_hosts_proc") else {
        return;
    };
    let fx = fixture();
    let (mut pod, _) = hold(&fx, &[VIP, OTHER], &[]);
    // New PID namespace, the host's /proc still mounted (as /hostproc is in
    // the DaemonSet): cgroup.procs shows the pod's process as 0, the procfs
    // scan finds it.
    let v = sweep_from_own_pid_namespace(&fx, &["--pid", "--fork"], false);
    assert_eq!(v["visible_pids"], 0, "{v}");
    assert!(v["hidden_pids"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(v["pinned"], 1, "{v}");
    let v = sweep_from_own_pid_namespace(&fx, &["--pid", "--fork"], true);
    assert_eq!(v["closed"], 1, "{v}");
    assert_eq!(check(&mut pod), vec![Err(ECONNABORTED), Ok(())]);

    // Its own /proc only: the pod's processes cannot be seen, and the error
    // says what the deployment lacks.
    let (_pod2, _) = hold(&fx, &[VIP], &[]);
    let v = sweep_from_own_pid_namespace(&fx, &["--pid", "--fork", "--mount-proc"], false);
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("none of them is visible"), "{v}");
}
