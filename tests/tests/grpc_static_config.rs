//! The agent's static mode as a user meets it: a bad file at start is one
//! line naming the file, the key and the line, and the agent does not start.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

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
    let mut child = Command::new(agent_bin())
        .arg("--config")
        .arg(&path)
        .arg("--no-ebpf")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent kept running on a bad config");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("services[0].endpoints[1].address"))
        .unwrap_or_else(|| panic!("no line names the key:\n{stderr}"));
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(line.contains("invalid socket address \"x\""), "{line}");
    assert!(line.contains("at line 7 column"), "{line}");
}
