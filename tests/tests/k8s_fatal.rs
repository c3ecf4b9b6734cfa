//! The agent process in Kubernetes mode against the fake API server: a
//! missing RBAC grant stops it with one clear last line, naming the verb and
//! the resource, and a failing exit status (the DaemonSet then restarts it).
//! Unprivileged (`--no-ebpf`), loopback only.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use std::{
    io::Read as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use balancer_tests::{
    apiserver::{FakeApiOptions, FakeApiServer},
    bin_path,
    process::ChildGuard,
};

fn bin(name: &str) -> PathBuf {
    let p = bin_path(name);
    assert!(
        p.exists(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`; `cargo xtask test` does)",
        p.display()
    );
    p
}

#[test]
fn missing_rbac_stops_the_agent_with_one_clear_line() {
    let api = FakeApiServer::start(&FakeApiOptions {
        bin: Some(bin("balancer-fake-apiserver")),
        ..FakeApiOptions::default()
    })
    .unwrap();
    api.forbid("list", "endpointslices.discovery.k8s.io").unwrap();

    let mut agent = ChildGuard::new(
        Command::new(bin("balancer-agent"))
            .args(["--no-ebpf", "--node-name", "node-1", "--admin", "127.0.0.1:0"])
            .env("KUBECONFIG", api.kubeconfig())
            .env("BALANCER_LOG_FORMAT", "text")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = agent.child_mut().stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = agent
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the agent stops on its own");
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "balancer-agent: forbidden: the agent's service account may not list \
             endpointslices.discovery.k8s.io cluster-wide"
        ),
        "{stderr}"
    );
}
