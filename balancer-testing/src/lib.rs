//! What balancer's tests, the end-to-end tests, the bench and the demo share
//! to drive the agent from the outside: one implementation of each.
//!
//! * [`agent`]: the `balancer-agent` process, started from its binary with
//!   its config and flags, awaited until ready, stopped by its PID.
//! * [`ready`]: polling until something is ready, failing early when the
//!   process that should become ready has exited.
//! * [`port`]: free loopback ports and waiting until one accepts.
//! * [`http`]: `GET` on the agent's admin API (plain HTTP/1.1 on loopback).
//! * [`netns`], [`cgroup`]: network namespaces and cgroup v2 directories,
//!   removed on drop, also when a test fails.
//! * [`process`]: a command placed in a cgroup and a network namespace, and
//!   a guard that kills and reaps it.
//! * [`k8s`]: Kubernetes objects (JSON) for the fake API servers.
//! * [`metrics`]: sample values read from the agent's `/metrics`.
//!
//! The standard library, libc, serde_json and prometheus-parse only: the agent's own tests,
//! the end-to-end tests crate and xtask all build it, and it does not
//! depend on the agent.

pub mod agent;
pub mod cgroup;
pub mod http;
pub mod k8s;
pub mod metrics;
pub mod netns;
pub mod port;
pub mod process;
pub mod ready;

/// A unique short name (interface names are limited to 15 bytes).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}
