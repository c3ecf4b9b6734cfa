//! The balancer agent: one per node.
//!
//! `balancer-agent --config FILE` runs from a static YAML file (reloaded when
//! it changes); without `--config` it runs against the Kubernetes API.
//! `balancer-agent probe ready|live` is the DaemonSet's readiness and
//! liveness probe; `balancer-agent mount-cgroup2 DIR` its init step.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use balancer_agent::{
    app::{self, Options, Source},
    error::Chain,
    node,
};
use clap::{Parser, Subcommand};

/// jemalloc: fewer resident pages per idle client connection and cheaper
/// per-call allocations than the system allocator (see docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's `malloc_conf` (a C string pointer jemalloc reads at start):
/// freed memory goes back to the system after a second, not ten.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points at a static, immutable, NUL-terminated string.
unsafe impl Sync for MallocConf {}

#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// The agent (not its one-shot subcommands, which must stay single-threaded
/// to enter other namespaces) gets jemalloc's background thread: it gives
/// the transient memory of a large cluster's initial lists (and of a
/// relist) back to the system even while the agent is idle, so a pod memory
/// limit sees what the agent holds, not what it once parsed.
fn return_freed_memory_in_the_background() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("balancer-agent: jemalloc background thread not started: {e}");
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "balancer-agent",
    version,
    about = "Per-call gRPC load balancing for a node's pods"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

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
    /// API `status.hostIP`; `HOST_IPS` wins when set).
    #[arg(long, env = "HOST_IP")]
    host_ip: Option<std::net::IpAddr>,

    /// Kubernetes mode: this node's IPs, comma-separated (downward API
    /// `status.hostIPs`); the listener goes on the first IPv4 one.
    #[arg(long, env = "HOST_IPS", value_delimiter = ',')]
    host_ips: Vec<std::net::IpAddr>,

    /// The host's cgroup v2 hierarchy (its root): where the programs attach
    /// and pods' cgroups are found (default: the cgroup2 mount of this
    /// mount namespace that shows the root).
    #[arg(long, value_name = "DIR", env = "BALANCER_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,

    /// Where this instance writes its admin address, for the probes and
    /// balancerctl (the DaemonSet: a per-pod emptyDir).
    #[arg(long, value_name = "DIR", env = "BALANCER_RUN_DIR")]
    run_dir: Option<PathBuf>,

    /// A read-only metrics listener (`/metrics` only) for a cluster's
    /// Prometheus, e.g. $HOST_IP:15090; shared by the instances of a
    /// rolling update.
    #[arg(long, value_name = "ADDR", env = "BALANCER_METRICS")]
    metrics: Option<SocketAddr>,

    /// The metrics listener's port on the node's address (where the
    /// redirect listener is), when --metrics is not given.
    #[arg(long, value_name = "PORT", env = "BALANCER_METRICS_PORT")]
    metrics_port: Option<u16>,

    /// How long open calls may run on after SIGTERM (seconds); keep the
    /// DaemonSet's terminationGracePeriodSeconds above it.
    #[arg(long, value_name = "SECONDS", env = "BALANCER_DRAIN_SECONDS", default_value_t = app::DEFAULT_DRAIN.as_secs())]
    drain_seconds: u64,

    /// Entries of the kernel's SERVICES map (VIP:port pairs); default: sized
    /// for the cluster at start (twice its VIPs, at least 16384).
    #[arg(long, value_name = "N", env = "BALANCER_SERVICES_MAP_SIZE")]
    services_map_size: Option<u32>,

    /// Kubernetes mode: the agent's own pod (downward API), named in Events
    /// and holding the route-status Lease when it leads.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,

    /// Kubernetes mode: the agent's namespace (downward API), where the
    /// route-status Lease lives.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,

    /// Kubernetes mode: how often enrolled pods are swept for connections
    /// that bypass the agent (opened before the pod was enrolled), in
    /// seconds; 0 turns the sweeps off.
    #[arg(long, value_name = "SECONDS", env = "BALANCER_PINNED_INTERVAL_SECONDS",
          default_value_t = app::pinned::DEFAULT_INTERVAL.as_secs())]
    pinned_interval_seconds: u64,

    /// At most this many such connections are closed per second on the
    /// node (pods opted in with `balancer.io/reconnect-pinned: enabled`).
    #[arg(long, value_name = "PER_SECOND", env = "BALANCER_PINNED_CLOSE_RATE",
          default_value_t = NonZeroU32::new(app::pinned::DEFAULT_CLOSE_RATE).unwrap_or(NonZeroU32::MIN))]
    pinned_close_rate: NonZeroU32,

    /// Where pods' processes are read, to find their network namespaces:
    /// the host's /proc (the DaemonSet mounts it at /hostproc; the agent's
    /// own /proc shows only its own PID namespace).
    #[arg(long, value_name = "DIR", env = "BALANCER_PROCFS", default_value = "/proc")]
    procfs: PathBuf,

    /// Traces: a span per call, exported to this OTLP/HTTP collector
    /// (e.g. http://otel-collector.observability:4318; the path defaults
    /// to /v1/traces). Overrides the static file's `tracing:`. Off without it.
    #[arg(long, value_name = "URL", env = "BALANCER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,

    /// With --otlp-endpoint: the share of the traces the agent starts that
    /// are sampled, 0 to 1 (default 1); a client's `traceparent` decides
    /// for its own calls.
    #[arg(long, value_name = "RATIO", env = "BALANCER_TRACE_SAMPLING")]
    trace_sampling: Option<f64>,

    /// With --otlp-endpoint: the spans' `service.name` (default balancer).
    #[arg(long, value_name = "NAME", env = "BALANCER_TRACE_SERVICE_NAME")]
    trace_service_name: Option<String>,
}

/// `--otlp-endpoint` and its companions.
fn tracing_flags(args: &Args) -> Result<Option<balancer_agent::traces::TracingConfig>, String> {
    let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty()) else {
        if args.trace_sampling.is_some() || args.trace_service_name.is_some() {
            return Err("--trace-sampling and --trace-service-name need --otlp-endpoint".to_owned());
        }
        return Ok(None);
    };
    balancer_agent::traces::TracingConfig::new(endpoint, args.trace_sampling, args.trace_service_name.as_deref())
        .map(Some)
        .map_err(|e| {
            use balancer_agent::traces::TracingError as E;
            let flag = match e {
                E::BadEndpoint(_) | E::NotHttp(_) => "--otlp-endpoint",
                E::BadSampling(_) => "--trace-sampling",
                E::EmptyServiceName => "--trace-service-name",
            };
            format!("{flag}: {e}")
        })
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask this instance's admin server (address from --admin, else the
    /// run directory, else the default) whether it is ready or alive: exit
    /// 0 if so. `ready` also passes when the agent is settled (not ready
    /// for reasons that last until an operator acts, which it prints).
    Probe {
        #[arg(value_enum)]
        what: node::Probe,
    },
    /// Mount the host's cgroup v2 hierarchy at DIR from the host's cgroup
    /// and mount namespaces (those of --host-pid under --host-proc): the
    /// DaemonSet's init step. Does nothing if DIR already shows it.
    #[command(name = "mount-cgroup2")]
    MountCgroup2 {
        dir: PathBuf,
        /// The host's /proc (mounted into the init container).
        #[arg(long, default_value = "/proc")]
        host_proc: PathBuf,
        /// A process in the host's namespaces, under --host-proc.
        #[arg(long, default_value_t = 1)]
        host_pid: u32,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Probe { what }) => {
            return match node::probe(what, args.admin, args.run_dir.as_deref(), Duration::from_secs(3)) {
                Ok(line) => {
                    println!("{line}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Some(Command::MountCgroup2 {
            dir,
            host_proc,
            host_pid,
        }) => {
            return match node::mount_host_cgroup2(&dir, &host_proc.join(host_pid.to_string())) {
                Ok(done) => {
                    eprintln!("balancer-agent: {done}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("balancer-agent: {}", Chain(&e));
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    return_freed_memory_in_the_background();
    let tracing = match tracing_flags(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("balancer-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let source = match args.config {
        Some(path) => Source::Static(path),
        None => Source::Kubernetes {
            node_name: args.node_name,
            host_ips: if args.host_ips.is_empty() {
                args.host_ip.into_iter().collect()
            } else {
                args.host_ips
            },
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
        run_dir: args.run_dir,
        metrics: args.metrics,
        metrics_port: args.metrics_port,
        drain: Duration::from_secs(args.drain_seconds),
        services_map_size: args.services_map_size,
        pod_namespace: args.pod_namespace,
        pinned: app::pinned::PinnedOptions {
            interval: Some(Duration::from_secs(args.pinned_interval_seconds)).filter(|d| !d.is_zero()),
            procfs: args.procfs,
            close_rate: args.pinned_close_rate,
        },
        tracing,
    };
    match app::main(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balancer-agent: {}", Chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
