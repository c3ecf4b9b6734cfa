//! The agent put together: where the state comes from (static file or
//! Kubernetes), the kernel programs, the demultiplexer's listeners, the
//! admin server, and the loop that applies every new model to all of them.

pub mod bind;
pub mod gateways;
mod listeners;
pub mod pinned;
mod views;

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
    time::Instant,
};
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminOptions, AdminServer},
    balance::Table,
    config,
    ebpf::{Kernel, KernelOptions},
    error::Chain,
    health::Health,
    logging,
    model::{Change, Model},
    proxy::{FastPath, Observers, Proxy, ProxyOptions},
};
use gateways::Gateways;
use listeners::Listeners;

/// Where the kernel-redirected connections arrive in Kubernetes mode, on
/// the node IP.
pub const DEFAULT_K8S_LISTEN_PORT: u16 = 15001;
/// How often the static file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_millis(250);
/// How long open calls may run on at shutdown, by default.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(20);
/// How long a stopping agent waits, after its calls are done, for pods to
/// close their fast-path sockets (bytes queued to a pod would be lost if
/// the agent's maps went away first).
const FAST_PATH_LINGER: Duration = Duration::from_secs(2);
/// How long a stopping agent waits for the last spans to be exported.
const TRACES_FLUSH: Duration = Duration::from_secs(3);
/// How often the attach cgroup is checked for foreign connect programs.
const FOREIGN_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Where services and enrolled pods come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A YAML file, reloaded when it changes.
    Static(PathBuf),
    /// The Kubernetes API (in-cluster config or KUBECONFIG).
    Kubernetes {
        node_name: Option<String>,
        /// The node's addresses (`status.hostIPs`, else `status.hostIP`):
        /// the listener goes on the first IPv4 one.
        host_ips: Vec<IpAddr>,
    },
}

/// The agent's command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    pub ebpf: bool,
    pub threads: Option<usize>,
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub admin_allow_non_loopback: bool,
    pub attach_cgroup: Option<PathBuf>,
    pub log_format: String,
    pub access_log: bool,
    /// The host's cgroup v2 hierarchy: where the programs attach and pods'
    /// cgroups are found (default: found in /proc/self/mountinfo).
    pub cgroup_root: Option<PathBuf>,
    /// Kubernetes mode: the agent's pod, named in the Events it reports
    /// and the holder of the route-status Lease.
    pub pod_name: Option<String>,
    /// Where this instance writes its admin address for local tools.
    pub run_dir: Option<PathBuf>,
    /// A read-only metrics listener (for a cluster's Prometheus).
    pub metrics: Option<SocketAddr>,
    /// ...or only its port, on the redirect listener's (the node's) address.
    pub metrics_port: Option<u16>,
    /// How long open calls may run on after SIGTERM.
    pub drain: Duration,
    /// Entries of the SERVICES map; `None`: sized from the cluster at start.
    pub services_map_size: Option<u32>,
    /// Kubernetes mode: the agent's namespace, where the route-status Lease
    /// lives. Without it (or `pod_name`) the agent writes no route status.
    pub pod_namespace: Option<String>,
    /// Kubernetes mode: the sweeps for enrolled pods' connections that
    /// bypass the agent.
    pub pinned: pinned::PinnedOptions,
    /// Traces from the flags (`--otlp-endpoint`), over the static file's
    /// `tracing:`.
    pub tracing: Option<crate::traces::TracingConfig>,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn main(opts: Options) -> anyhow::Result<()> {
    let format = opts.log_format.parse()?;
    logging::init(format, opts.access_log)?;
    // One thread: a current-thread runtime, which runs everything on the
    // main thread without the cross-thread queues and wake-ups a one-worker
    // multi-thread runtime still pays for.
    let mut rt = match opts.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all().thread_name("balancer");
    let rt = rt.build().context("cannot start the runtime")?;
    rt.block_on(run(opts))
}

/// The state source once started: the first model, the stream of later
/// ones, and what the admin server shows of it.
struct Started {
    /// The node-level settings (in Kubernetes mode from flags and defaults).
    node: config::NodeConfig,
    models: watch::Receiver<Arc<Model>>,
    source: Arc<dyn admin::SourceView>,
    /// Kubernetes mode: the discovery task, which ends (releasing the
    /// route-status Lease) once `stopping` turns true.
    k8s_task: Option<tokio::task::JoinHandle<()>>,
}

/// The first IPv4 address of the node (pods reach the agent there), else
/// the first address.
pub fn node_address(host_ips: &[IpAddr]) -> Option<IpAddr> {
    host_ips.iter().find(|ip| ip.is_ipv4()).or(host_ips.first()).copied()
}

async fn start_source(
    opts: &Options,
    fatal: &watch::Sender<Option<Arc<crate::k8s::K8sError>>>,
    mut stopping: watch::Receiver<bool>,
    health: &Health,
) -> anyhow::Result<Started> {
    match &opts.source {
        Source::Static(path) => {
            let watched = config::watch(path, RELOAD_INTERVAL)?;
            let first = watched.current();
            let node = first.node.clone();
            let (tx, models) = watch::channel(Arc::new(first.model.clone()));
            let source = views::static_source(path, Arc::clone(&watched.stats));
            let mut rx = watched.rx.clone();
            let first_node = node.clone();
            tokio::spawn(async move {
                let _watched = watched;
                while rx.changed().await.is_ok() {
                    let loaded = rx.borrow_and_update().clone();
                    if loaded.node != first_node {
                        warn!("listen, admin, attach_cgroup, fast_path and tracing changes apply at the next start");
                    }
                    info!(generation = loaded.generation, "configuration reloaded");
                    tx.send_replace(Arc::new(loaded.model.clone()));
                }
            });
            Ok(Started {
                node,
                models,
                source,
                k8s_task: None,
            })
        }
        Source::Kubernetes { node_name, host_ips } => {
            let node_name = node_name
                .clone()
                .context("Kubernetes mode needs NODE_NAME (or --node-name): set it from the downward API")?;
            let listen = match (opts.listen, node_address(host_ips)) {
                (Some(l), _) => Some(l),
                (None, Some(ip)) => Some(SocketAddr::new(ip, DEFAULT_K8S_LISTEN_PORT)),
                (None, None) if opts.ebpf => bail!(
                    "Kubernetes mode needs HOST_IPS or HOST_IP (or --host-ip / --listen): the address pods reach the agent on"
                ),
                (None, None) => None,
            };
            let cgroup_root = match &opts.cgroup_root {
                Some(root) => root.clone(),
                None => crate::cgroup::host_hierarchy(None).unwrap_or_else(|_| PathBuf::from("/sys/fs/cgroup")),
            };
            let client = crate::k8s::client().await?;
            let (tx, models) = watch::channel(Arc::new(Model::default()));
            let (status_tx, status) = watch::channel(crate::k8s::Status::default());
            let mut k8s_opts = crate::k8s::K8sOptions::new(node_name, cgroup_root);
            k8s_opts.instance = opts.pod_name.clone();
            // Gateway listeners go on the node's address, as the redirect
            // listener does.
            if let Some(ip) = listen.map(|l| l.ip()).or(node_address(host_ips)) {
                k8s_opts.gateway_ip = ip;
            }
            match (&opts.pod_namespace, &opts.pod_name) {
                (Some(ns), Some(pod)) => k8s_opts.lease = Some(crate::k8s::lease::LeaseOptions::new(ns, pod)),
                _ => warn!("POD_NAMESPACE or POD_NAME unset: this agent never writes GRPCRoute status"),
            }
            let fatal = fatal.clone();
            let until_stopping = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            // What keeps the agent from serving the node: Warning Events on
            // the Node.
            let node_events = crate::k8s::node_events::report(
                crate::k8s::Events::new(client.clone(), k8s_opts.reporter()),
                k8s_opts.node_name.clone(),
                health.problems(),
            );
            let k8s_task = tokio::spawn(async move {
                let node_events = tokio::spawn(node_events);
                if let Err(e) = crate::k8s::run_until(client, k8s_opts, tx, status_tx, until_stopping).await {
                    // Missing RBAC and the like: one clear line and a restart.
                    fatal.send_replace(Some(Arc::new(e)));
                }
                node_events.abort();
            });
            Ok(Started {
                node: config::NodeConfig {
                    listen,
                    admin: admin::DEFAULT_ADDR.parse().context("default admin address")?,
                    attach_cgroup: None,
                    fast_path: true,
                    tracing: None,
                },
                models,
                source: admin::views::kubernetes_source(status),
                k8s_task: Some(k8s_task),
            })
        }
    }
}

/// The kernel side, once started: the programs and the redirect listener.
struct KernelSide {
    kernel: Arc<Mutex<Kernel>>,
    listener: tokio::net::TcpListener,
}

/// Binds the redirect listener (moving to the next port if another agent
/// holds it) and loads the programs pointed at it. A node that cannot run
/// balancer is reported in `health` and gives `None`; anything else is an
/// error.
fn start_kernel(
    opts: &Options,
    node: &config::NodeConfig,
    listen: Option<SocketAddr>,
    health: &Health,
    services_capacity: u32,
) -> anyhow::Result<Option<KernelSide>> {
    let listener_addr = match listen {
        Some(SocketAddr::V4(v4)) => v4,
        Some(other) => bail!("listen address {other}: the kernel path redirects IPv4 only"),
        None => bail!(
            "no `listen:` address for kernel-redirected connections: set it (an address pods reach, \
             not 127.0.0.1) or run with --no-ebpf"
        ),
    };
    check_listener_addr(listener_addr)?;
    let listener = bind::bind_instance(SocketAddr::V4(listener_addr), true)
        .with_context(|| format!("cannot listen on {listener_addr} for redirected connections"))?;
    let bound = match listener.local_addr()? {
        SocketAddr::V4(v4) => v4,
        other => bail!("the redirect listener bound {other}, not IPv4"),
    };
    let loaded = Kernel::load(&KernelOptions {
        hierarchy: opts.cgroup_root.clone(),
        attach_cgroup: opts.attach_cgroup.clone().or(node.attach_cgroup.clone()),
        listener: bound,
        fast_path: node.fast_path,
        services_capacity,
    });
    let kernel = match loaded {
        Ok(k) => k,
        Err(e) if e.node_unsupported() => {
            let e = Chain(&e).to_string();
            error!("this node cannot run balancer: {e}; not redirecting (the agent stays up, not ready)");
            health.set_unsupported(e);
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    info!(addr = %bound, "listening for redirected connections");
    Ok(Some(KernelSide {
        kernel: Arc::new(Mutex::new(kernel)),
        listener,
    }))
}

async fn run(opts: Options) -> anyhow::Result<()> {
    // A part that cannot go on (Kubernetes discovery without permissions)
    // stops the agent with its error.
    let (fatal_tx, mut fatal) = watch::channel(None::<Arc<crate::k8s::K8sError>>);
    let (stopping, stopping_rx) = watch::channel(false);
    let health = Arc::new(Health::new(opts.ebpf));
    let Started {
        node,
        mut models,
        source,
        k8s_task,
    } = start_source(&opts, &fatal_tx, stopping_rx.clone(), &health).await?;
    let listen = opts.listen.or(node.listen);
    let admin_addr = opts.admin.unwrap_or(node.admin);
    let admin_opts = AdminOptions {
        allow_non_loopback: opts.admin_allow_non_loopback,
    };
    // Check the admin address before anything is attached.
    admin::check_addr(admin_addr, &admin_opts)?;

    let kernel_side = if opts.ebpf {
        let capacity = match opts.services_map_size {
            Some(n) => n,
            None => {
                // Sized for the cluster: the first full state (bounded wait).
                let synced = wait_synced(&source, &mut models, &mut fatal, FIRST_SYNC_WAIT).await;
                let vips: usize = models.borrow().services.iter().map(|s| s.vips.len()).sum();
                let capacity = crate::ebpf::services_capacity_for(vips);
                info!(vips, capacity, synced, "services map sized for the cluster");
                capacity
            }
        };
        start_kernel(&opts, &node, listen, &health, capacity)?
    } else {
        None
    };
    let kernel = kernel_side.as_ref().map(|k| Arc::clone(&k.kernel));

    let model = models.borrow_and_update().clone();
    let table = Table::new(&model);
    let mut observers = Observers::default();
    let mut exporter = None;
    if let Some(config) = opts.tracing.clone().or_else(|| node.tracing.clone()) {
        info!(
            endpoint = %config.endpoint,
            sampling = config.sampling.as_ratio(),
            service_name = %config.service_name,
            "tracing: a span per call, exported over OTLP/HTTP"
        );
        let (tracer, export) = crate::traces::Tracer::new(config, Arc::clone(&observers.metrics.traces));
        observers.tracer = Some(tracer);
        exporter = Some(tokio::spawn(export));
    }
    let mut proxy_opts = ProxyOptions::default();
    if let Some(side) = &kernel_side {
        // Upstream connections to endpoints on this node take the fast path
        // too, when the kernel can pair them.
        proxy_opts.pool.fast_path = Some(FastPath(lock(&side.kernel).redirects()));
    }
    let proxy = Proxy::with_observers(Arc::clone(&table), proxy_opts, observers.clone());

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(side) = kernel_side {
        let redirects = lock(&side.kernel).redirects();
        let proxy = proxy.clone();
        tasks.spawn(async move { proxy.serve_redirected(side.listener, redirects).await });
    }
    let mut listeners = Listeners::new(proxy.clone());
    listeners.sync(&model, true).await?;
    let mut gateways = Gateways::new(proxy.clone(), RELOAD_INTERVAL);
    // A static file's listener that cannot be served stops the start; a
    // Gateway object's (a port taken on this node) is logged, and tried
    // again at the next change.
    gateways
        .sync(&model, &table, matches!(opts.source, Source::Static(_)))
        .await?;

    // A second agent on the node (a rolling update) moves to the next admin
    // port unless one was given on the command line; the run directory
    // tells the probes and balancerctl which one this instance has.
    let admin_listener =
        bind::bind_instance(admin_addr, opts.admin.is_none()).map_err(|source| admin::AdminError::Bind {
            addr: admin_addr,
            source,
        })?;
    let admin_server = AdminServer::from_listener(admin_listener);
    let admin_bound = admin_server.local_addr()?;
    info!(addr = %admin_bound, "admin server listening");
    if let Some(dir) = &opts.run_dir {
        let file = bind::write_admin_address(dir, admin_bound)
            .with_context(|| format!("cannot write the admin address into {}", dir.display()))?;
        info!(file = %file.display(), "admin address written for local tools");
    }
    let mut state = views::admin_state(Arc::clone(&table), kernel.clone(), source, models.clone(), &observers);
    state.health = Arc::clone(&health);
    // Kubernetes mode with the kernel programs: enrolled pods are swept for
    // connections that bypass the agent.
    let sweeps = match (&opts.source, &kernel, opts.pinned.interval) {
        (Source::Kubernetes { .. }, Some(kernel), Some(interval)) if !interval.is_zero() => {
            Some((Arc::clone(kernel), interval))
        }
        _ => None,
    };
    if let Some((kernel, interval)) = sweeps {
        let tally = Arc::new(crate::pinned::tally::Tally::new(interval));
        state.pinned = Some(Arc::clone(&tally));
        tasks.spawn(pinned::run(
            opts.pinned.sweep_config(interval),
            interval,
            kernel,
            models.clone(),
            tally,
            stopping_rx,
        ));
    }
    let admin_state = state.clone();
    tasks.spawn(async move {
        if let Err(e) = admin_server.run(admin_state).await {
            tracing::error!(error = %Chain(&e), "admin server stopped");
        }
    });
    let metrics_addr = opts
        .metrics
        .or_else(|| Some(SocketAddr::new(listen?.ip(), opts.metrics_port?)));
    if let Some(addr) = metrics_addr {
        let listener =
            bind::bind_shared(addr).with_context(|| format!("cannot listen on {addr} for metrics scrapes"))?;
        info!(%addr, "metrics listener (read-only /metrics)");
        let metrics_state = state.clone();
        tasks.spawn(async move {
            if let Err(e) = AdminServer::from_listener(listener)
                .run_metrics_only(metrics_state)
                .await
            {
                tracing::error!(error = %Chain(&e), "metrics listener stopped");
            }
        });
    }

    let mut kernel_sync = KernelSync::default();
    if let Some(kernel) = &kernel {
        kernel_sync.apply(kernel, &model, &health, is_synced(&state));
        check_foreign(kernel, &health);
    }

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut source_open = true;
    let mut foreign_check = tokio::time::interval_at(Instant::now() + FOREIGN_CHECK_INTERVAL, FOREIGN_CHECK_INTERVAL);
    // The maps wait for the source's first full state (Kubernetes: every
    // watcher listed) before the agent can call itself ready.
    let mut sync_check = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            changed = models.changed(), if source_open => {
                if changed.is_err() {
                    // The source ended; a fatal error may follow (below).
                    warn!("the state source stopped; serving the last known state");
                    source_open = false;
                    continue;
                }
                let model = models.borrow_and_update().clone();
                table.update_shared(&model);
                if let Some(kernel) = &kernel {
                    kernel_sync.apply(kernel, &model, &health, is_synced(&state));
                }
                if let Err(e) = listeners.sync(&model, false).await {
                    warn!(error = %Chain(e.as_ref()), "listeners not updated");
                }
                if let Err(e) = gateways.sync(&model, &table, false).await {
                    warn!(error = %Chain(e.as_ref()), "gateway listeners not updated");
                }
            }
            _ = sync_check.tick(), if kernel.is_some() && !health.maps_synced() => {
                if let Some(kernel) = &kernel {
                    let model = models.borrow().clone();
                    kernel_sync.apply(kernel, &model, &health, is_synced(&state));
                }
            }
            _ = foreign_check.tick(), if kernel.is_some() => {
                if let Some(kernel) = &kernel {
                    check_foreign(kernel, &health);
                }
            }
            _ = fatal.changed() => {
                let e = fatal.borrow().clone();
                proxy.shutdown(Duration::from_secs(1)).await;
                match e {
                    Some(e) => return Err(e.into()),
                    None => bail!("the Kubernetes source stopped"),
                }
            }
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { info!("SIGINT: stopping"); break; }
        }
    }
    // The route-status Lease is handed over while the agent drains (the
    // Kubernetes side stops, releasing it, bounded inside).
    stopping.send_replace(true);
    stop(kernel.as_ref(), &proxy, &health, opts.drain).await;
    // The drained calls' spans go out (bounded: a collector that is down
    // does not hold the stop).
    if let (Some(tracer), Some(task)) = (&observers.tracer, exporter) {
        tracer.close();
        let _ = tokio::time::timeout(TRACES_FLUSH, task).await;
    }
    if let Some(task) = k8s_task {
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    tasks.abort_all();
    // Dropping the kernel handle detaches the remaining programs.
    drop(kernel);
    info!("stopped");
    Ok(())
}

/// How long the agent waits for the cluster's state before it sizes the
/// kernel maps and attaches (then it goes on with the default size).
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(20);

/// Waits until the source has a complete state (or `limit` passes, or a
/// fatal error arrives): whether it has.
async fn wait_synced(
    source: &Arc<dyn admin::SourceView>,
    models: &mut watch::Receiver<Arc<Model>>,
    fatal: &mut watch::Receiver<Option<Arc<crate::k8s::K8sError>>>,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while !source.source().synced {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = models.changed() => {}
            _ = fatal.changed() => return false,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    true
}

/// The stop that fails no call: stop redirecting new connects (and make
/// sure the kernel no longer runs the connect programs), GOAWAY every client
/// connection and let their calls finish within `drain`, then wait for the
/// pods to close their fast-path sockets. Connections opened meanwhile go
/// to the Service directly, or to another agent on the node.
async fn stop(kernel: Option<&Arc<Mutex<Kernel>>>, proxy: &Proxy, health: &Health, drain: Duration) {
    if let Some(kernel) = kernel {
        match lock(kernel).stop_redirecting() {
            Ok(()) => {}
            Err(e) => error!(error = %Chain(&e), "could not stop redirecting; draining anyway"),
        }
    }
    health.set_draining();
    info!(grace = ?drain, "draining: GOAWAY to clients, open calls finish");
    proxy.shutdown(drain).await;
    if let Some(kernel) = kernel {
        let linger_until = Instant::now() + FAST_PATH_LINGER;
        loop {
            let open = lock(kernel).fast_path_sockets();
            if open == 0 {
                break;
            }
            if Instant::now() >= linger_until {
                warn!(open, "pods kept fast-path sockets open past the linger time; exiting");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn is_synced(state: &admin::AdminState) -> bool {
    state.source.source().synced
}

fn lock(kernel: &Mutex<Kernel>) -> std::sync::MutexGuard<'_, Kernel> {
    kernel.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps the kernel maps in line with the published models, by difference.
#[derive(Default)]
struct KernelSync {
    /// The model the SERVICES map was last updated from.
    applied: Arc<Model>,
}

impl KernelSync {
    /// Brings the kernel maps in line with `model` (the services map by the
    /// services whose `Arc` changed since the last call); the agent is ready
    /// once they hold a complete state (`synced`).
    fn apply(&mut self, kernel: &Mutex<Kernel>, model: &Arc<Model>, health: &Health, synced: bool) {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for change in crate::model::diff(&self.applied.services, &model.services) {
            match change {
                Change::Added(s) => added.extend(s.vips.iter().copied()),
                Change::Removed(s) => removed.extend(s.vips.iter().copied()),
                Change::Changed { old, new } => {
                    removed.extend(old.vips.iter().filter(|v| !new.vips.contains(v)).copied());
                    added.extend(new.vips.iter().filter(|v| !old.vips.contains(v)).copied());
                }
            }
        }
        let mut kernel = lock(kernel);
        // Each map on its own: a full services map must not keep pods from
        // being enrolled.
        let services = kernel.update_services(&removed, &added);
        match &services {
            Ok(fill) => {
                self.applied = Arc::clone(model);
                let overflow = (!fill.overflow.is_empty()).then(|| crate::health::Overflow {
                    capacity: fill.capacity,
                    vips: fill.overflow.clone(),
                });
                let described = overflow.as_ref().map(crate::health::Overflow::describe);
                if health.set_overflow(overflow) {
                    match described {
                        Some(d) => warn!(capacity = fill.capacity, "the services map is full: {d}"),
                        None => info!(entries = fill.entries, "every VIP fits the services map again"),
                    }
                }
            }
            Err(e) => warn!(error = %Chain(e), "services map not updated"),
        }
        let enrolled = kernel.set_enrolled(&model.enrolled_cgroups());
        if let Err(e) = &enrolled {
            warn!(error = %Chain(e), "enrolled map not updated");
        }
        health.set_maps_synced(synced && services.is_ok() && enrolled.is_ok());
    }
}

/// Looks for other programs on the connect hooks and reports them.
fn check_foreign(kernel: &Mutex<Kernel>, health: &Health) {
    let found = match lock(kernel).foreign_connect_programs() {
        Ok(found) => found,
        Err(e) => {
            warn!(error = %Chain(&e), "cannot list the attach cgroup's connect programs");
            return;
        }
    };
    let describe = |p: &crate::ebpf::ForeignProgram| format!("{} program {} (id {})", p.hook, p.name, p.id);
    let shadowing: Vec<String> = found.iter().filter(|p| p.runs_first).map(describe).collect();
    let coexisting: Vec<String> = found.iter().filter(|p| !p.runs_first).map(describe).collect();
    if !health.set_foreign(shadowing.clone(), coexisting.clone()) {
        return;
    }
    for p in &shadowing {
        warn!(program = %p, "a foreign connect program runs before balancer's and rewrites Service VIPs first: nothing is redirected");
    }
    for p in &coexisting {
        info!(program = %p, "a foreign connect program runs after balancer's (no conflict)");
    }
}

/// Pods in their own network namespace cannot reach the agent on loopback
/// or on the wildcard address the kernel cannot redirect to.
fn check_listener_addr(addr: SocketAddrV4) -> anyhow::Result<()> {
    if addr.ip().is_unspecified() {
        bail!("listen address {addr}: redirected connections need a concrete address pods reach (the node IP)");
    }
    if addr.port() == 0 {
        bail!("listen address {addr}: needs a port");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_goes_on_the_first_ipv4_node_address() {
        let v6: IpAddr = "fd00::1".parse().expect("ip");
        let v4: IpAddr = "10.0.0.7".parse().expect("ip");
        // status.hostIPs on an IPv6-primary dual-stack node.
        assert_eq!(node_address(&[v6, v4]), Some(v4));
        assert_eq!(node_address(&[v4, v6]), Some(v4));
        assert_eq!(node_address(&[v6]), Some(v6));
        assert_eq!(node_address(&[]), None);
    }
}
