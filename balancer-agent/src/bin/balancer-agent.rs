//! The balancer agent: one per node.
//!
//! `balancer-agent --config FILE` runs from a static YAML file (reloaded when
//! it changes); without `--config` it runs against the Kubernetes API.

use std::{net::SocketAddr, path::PathBuf};

use balancer_agent::app::{self, Options, Source};
use clap::Parser;

/// jemalloc: fewer resident pages per idle client connection and cheaper
/// per-call allocations than the system allocator (see docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "balancer-agent",
    version,
    about = "Per-call gRPC load balancing for a node's pods"
)]
struct Args {
    /// Static mode: the YAML file that describes listeners, enrolled cgroups
    /// and services (reloaded when it changes). Without it the agent runs in
    /// Kubernetes mode.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Do not load the kernel programs: serve only the explicit per-service
    /// listeners (unprivileged).
    #[arg(long)]
    no_ebpf: bool,

    /// Worker threads of the data plane (default: one per CPU); 1 runs the
    /// whole agent on one thread.
    #[arg(long, env = "BALANCER_THREADS")]
    threads: Option<usize>,

    /// Where kernel-redirected connections arrive (overrides the config;
    /// in Kubernetes mode default: $HOST_IP:15001).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// The admin server's address (overrides the config; default
    /// 127.0.0.1:15000).
    #[arg(long, value_name = "ADDR", env = "BALANCER_ADMIN")]
    admin: Option<SocketAddr>,

    /// Let the admin server bind a non-loopback address.
    #[arg(long)]
    admin_allow_non_loopback: bool,

    /// The cgroup v2 directory the programs attach to (overrides the config;
    /// default: the cgroup v2 root).
    #[arg(long, value_name = "DIR", env = "BALANCER_ATTACH_CGROUP")]
    attach_cgroup: Option<PathBuf>,

    /// Log format: auto (text on a terminal, JSON otherwise), text or json.
    #[arg(long, default_value = "auto", env = "BALANCER_LOG_FORMAT")]
    log_format: String,

    /// Log one line per call (target `balancer::access`).
    #[arg(long, env = "BALANCER_ACCESS_LOG")]
    access_log: bool,

    /// Kubernetes mode: this node's name (downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,

    /// Kubernetes mode: this node's IP, where pods reach the agent (downward
    /// API).
    #[arg(long, env = "HOST_IP")]
    host_ip: Option<std::net::IpAddr>,

    /// Kubernetes mode: the cgroup v2 directory below which pods' cgroups
    /// are found (default: the cgroup v2 mount from /proc/mounts).
    #[arg(long, value_name = "DIR", env = "BALANCER_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,

    /// Kubernetes mode: the agent's own pod (downward API), named in Events
    /// and holding the route-status Lease when it leads.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,

    /// Kubernetes mode: the agent's namespace (downward API), where the
    /// route-status Lease lives.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let source = match args.config {
        Some(path) => Source::Static(path),
        None => Source::Kubernetes {
            node_name: args.node_name,
            host_ip: args.host_ip,
        },
    };
    let opts = Options {
        source,
        ebpf: !args.no_ebpf,
        threads: args.threads,
        listen: args.listen,
        admin: args.admin,
        admin_allow_non_loopback: args.admin_allow_non_loopback,
        attach_cgroup: args.attach_cgroup,
        log_format: args.log_format,
        access_log: args.access_log,
        cgroup_root: args.cgroup_root,
        pod_name: args.pod_name,
        pod_namespace: args.pod_namespace,
    };
    match app::main(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balancer-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
