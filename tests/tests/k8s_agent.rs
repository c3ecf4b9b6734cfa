//! The agent's Kubernetes mode against an API server that runs as its own
//! process and speaks HTTP like kube-apiserver: a missing permission is
//! fatal, said in one line, every time.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use balancer_tests::{
    apiserver::{FakeApiOptions, FakeApiServer},
    process::ChildGuard,
};

fn agent_bin() -> PathBuf {
    balancer_tests::built("balancer-agent")
}

#[test]
fn a_forbidden_list_makes_the_agent_exit_with_one_line_every_time() {
    for run in 1..=5 {
        let api = FakeApiServer::start(&FakeApiOptions::default()).expect("fake API server");
        api.forbid("list", "endpointslices").expect("forbid");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = dir.path().join("stderr");
        let mut cmd = Command::new(agent_bin());
        cmd.args(["--no-ebpf", "--admin", "127.0.0.1:0"])
            .env("KUBECONFIG", api.kubeconfig())
            .env("NODE_NAME", "node-a")
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        let mut agent = ChildGuard::new(cmd.spawn().expect("start the agent"));
        let started = Instant::now();
        let status = agent.wait_timeout(Duration::from_secs(20)).expect("wait");
        let text = std::fs::read_to_string(&err).unwrap_or_default();
        let status = status.unwrap_or_else(|| panic!("run {run}: the agent hung instead of exiting: {text}"));
        assert_eq!(status.code(), Some(1), "run {run}: {text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "run {run}: one line: {text}");
        assert!(
            lines[0].starts_with("balancer-agent: forbidden: the agent's service account may not list endpointslices.discovery.k8s.io cluster-wide"),
            "run {run}: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "run {run} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn sigterm_stops_an_agent_that_cannot_reach_the_api_server() {
    let api = FakeApiServer::start(&FakeApiOptions::default()).expect("fake API server");
    api.set_unavailable(true).expect("down");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--no-ebpf", "--admin", "127.0.0.1:0"])
        .env("KUBECONFIG", api.kubeconfig())
        .env("NODE_NAME", "node-a")
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut agent = ChildGuard::new(cmd.spawn().expect("start the agent"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.child_mut().try_wait().expect("try_wait").is_none(),
        "it keeps trying"
    );
    // SAFETY: kill on the pid of a child not yet reaped.
    assert_eq!(unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = agent.wait_timeout(Duration::from_secs(15)).expect("wait");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "SIGTERM ends it cleanly");
}
