//! The agent's static mode as a user meets it: a bad file at start is one
//! line naming the file, the key and the line, and the agent does not start.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::time::Duration;

use balancer_testing::agent::{self, AgentProcess, Log};
use grpc_support::{agent_bin, free_port};

#[test]
fn a_bad_file_stops_the_agent_with_one_line_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greeter.yaml");
    let (admin, listen) = (free_port(), free_port());
    std::fs::write(
        &path,
        format!(
            "admin: {admin}\nservices:\n  - name: greeter\n    listen: {listen}\n    endpoints:\n      - {{ address: 127.0.0.1:50051 }}\n      - {{ address: x }}\n"
        ),
    )
    .unwrap();
    let mut cmd = agent::command(&agent_bin(), Some(&path));
    cmd.arg("--no-ebpf");
    let mut agent = AgentProcess::spawn(cmd, Log::File(dir.path().join("stderr"))).unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .unwrap()
        .expect("the agent kept running on a bad config");
    assert!(!status.success());
    let stderr = agent.log();
    let line = stderr
        .lines()
        .find(|l| l.contains("services[0].endpoints[1].address"))
        .unwrap_or_else(|| panic!("no line names the key:\n{stderr}"));
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(line.contains("invalid socket address \"x\""), "{line}");
    assert!(line.contains("at line 7 column"), "{line}");
}
