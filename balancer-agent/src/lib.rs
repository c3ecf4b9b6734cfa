//! balancer: a node-level, eBPF-assisted L7 load balancer for gRPC.
//!
//! The agent terminates the HTTP/2 connections of enrolled pods (redirected
//! into it by the kernel programs, or arriving on explicit listeners) and
//! forwards every stream — every gRPC call — to an endpoint chosen for that
//! call.

pub mod admin;
pub mod api;
pub mod app;
pub mod balance;
pub mod cgroup;
pub mod config;
pub mod conns;
pub mod ctl;
pub mod ebpf;
pub mod error;
pub mod health;
pub mod k8s;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod node;
pub mod pinned;
pub mod proxy;
pub mod redirect;
pub mod tls;
pub mod traces;
