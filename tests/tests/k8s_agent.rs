//! The agent's Kubernetes mode against an API server that runs as its own
//! process and speaks HTTP like kube-apiserver: a missing permission is
//! fatal, said in one line, every time.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_testing::agent::{self, AgentProcess, Log};
use balancer_tests::apiserver::{FakeApiOptions, FakeApiServer};

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
        let mut cmd = agent::command(&agent_bin(), None);
        cmd.args(["--no-ebpf", "--admin", "127.0.0.1:0"])
            .env("KUBECONFIG", api.kubeconfig())
            .env("NODE_NAME", "node-a")
            .env("RUST_LOG", "off");
        let mut agent = AgentProcess::spawn(cmd, Log::File(err)).expect("start the agent");
        let started = Instant::now();
        let status = agent.wait_exit(Duration::from_secs(20)).expect("wait");
        let text = agent.log();
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
    let mut cmd = agent::command(&agent_bin(), None);
    cmd.args(["--no-ebpf", "--admin", "127.0.0.1:0"])
        .env("KUBECONFIG", api.kubeconfig())
        .env("NODE_NAME", "node-a")
        .env("RUST_LOG", "off");
    let mut agent = AgentProcess::spawn(cmd, Log::Discard).expect("start the agent");
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.try_wait().expect("try_wait").is_none(), "it keeps trying");
    agent.sigterm().expect("SIGTERM");
    let status = agent.wait_exit(Duration::from_secs(15)).expect("wait");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "SIGTERM ends it cleanly");
}
