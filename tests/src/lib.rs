//! Helpers for balancer's end-to-end tests on the real kernel: network
//! namespaces, veth links, cgroups, processes placed in both, and the small
//! agent/pod programs the kernel tests drive.
//!
//! Everything that creates kernel state returns a guard that removes it on
//! drop, also when the test fails. Typical use:
//!
//! ```no_run
//! use balancer_tests::{privileged, topology::Topology};
//!
//! let Some(_serial) = privileged::serial_or_skip("my_test") else { return };
//! let topo = Topology::new(2).expect("topology"); // node netns + 2 pods
//! // topo.node.netns, topo.pods[0].netns / .cgroup / .ip, topo.root_cgroup ...
//! ```
//!
//! * [`privileged`]: skip (loudly) without root, or fail when
//!   `BALANCER_REQUIRE_PRIVILEGED=1`; one privileged test at a time.
//! * [`netns`], [`cgroup`], [`process`]: `NetNs` and `Cgroup` guards, a
//!   command placed in both, the guard that kills and reaps it — from
//!   `balancer-testing`, which the agent's tests and xtask share.
//! * [`topology`]: a "node" netns joined by veth to N "pod" netns, no default
//!   routes anywhere, plus the test's cgroup tree.
//! * [`agent`]: drive `balancer-test-agent` (the kernel programs loaded, the
//!   test protocol served) over its stdin/stdout.
//! * [`pod`]: run `balancer-test-pod` client workloads inside a pod.
//! * [`wire`]: the test protocol both programs speak.
//! * [`container`], [`node_agent`]: the real agent started as its DaemonSet
//!   starts it (own cgroup, private cgroup namespace, nsdelegate, the host's
//!   hierarchy mounted by its init step); [`kubeproxy`]: a Service VIP that
//!   answers when the agent does not redirect (fail-open); [`foreign`]:
//!   another project's connect4 program.
//! * [`apiserver`]: `FakeApiServer`, a fake kube-apiserver in its own
//!   process (`balancer-fake-apiserver`, implemented in [`fake_apiserver`])
//!   for the agent's Kubernetes mode, with a kubeconfig pointing at it.
//! * [`otlp`]: a fake OTLP/HTTP collector that keeps the spans it gets.
//! * [`scale`]: the scale bench (`balancer-scale-bench`): the agent against
//!   a cluster of S Services.

pub mod agent;
pub mod apiserver;
pub mod clients;
pub mod container;
pub mod fake_apiserver;
pub mod foreign;
pub mod kubelet;
pub mod kubeproxy;
pub mod manifest;
pub mod node_agent;
pub mod otlp;
pub mod pod;
pub mod privileged;
pub mod scale;
pub mod topology;
pub mod wire;

pub use balancer_testing::{cgroup, netns, process, unique_name};

use std::path::PathBuf;

/// Path of one of this crate's binaries (`balancer-test-agent`,
/// `balancer-test-pod`), next to the running test executable. Integration
/// tests of this package can use `env!("CARGO_BIN_EXE_<name>")` instead.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    dir.join(name)
}

/// [`bin_path`] of a binary that must have been built: a test that needs
/// one fails with how to build it.
pub fn built(name: &str) -> PathBuf {
    let p = bin_path(name);
    assert!(
        p.exists(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`; `cargo xtask test` does)",
        p.display()
    );
    p
}
