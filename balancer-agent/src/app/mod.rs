//! The agent put together: where the state comes from (static file or
//! Kubernetes), the kernel programs, the demultiplexer's listeners, the
//! admin server, and the loop that applies every new model to all of them.

mod listeners;
mod views;

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{info, warn};

use crate::{
    admin::{self, AdminOptions, AdminServer},
    balance::Table,
    config,
    ebpf::{Kernel, KernelOptions},
    logging,
    model::Model,
    proxy::{Observers, Proxy, ProxyOptions},
};
use listeners::Listeners;

/// Where the kernel-redirected connections arrive in Kubernetes mode, on
/// the node IP.
pub const DEFAULT_K8S_LISTEN_PORT: u16 = 15001;
/// How often the static file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_millis(250);
/// How long open calls may run on at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where services and enrolled pods come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A YAML file, reloaded when it changes.
    Static(PathBuf),
    /// The Kubernetes API (in-cluster config or KUBECONFIG).
    Kubernetes {
        node_name: Option<String>,
        host_ip: Option<IpAddr>,
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
    /// Kubernetes mode: where pods' cgroups are looked up (default: the
    /// cgroup v2 mount).
    pub cgroup_root: Option<PathBuf>,
    /// Kubernetes mode: the agent's pod, named in the Events it reports
    /// and the holder of the route-status Lease.
    pub pod_name: Option<String>,
    /// Kubernetes mode: the agent's namespace, where the route-status Lease
    /// lives. Without it (or `pod_name`) the agent writes no route status.
    pub pod_namespace: Option<String>,
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

async fn start_source(
    opts: &Options,
    fatal: &watch::Sender<Option<String>>,
    mut stopping: watch::Receiver<bool>,
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
                        warn!("listen, admin, attach_cgroup and fast_path changes apply at the next start");
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
        Source::Kubernetes { node_name, host_ip } => {
            let node_name = node_name
                .clone()
                .context("Kubernetes mode needs NODE_NAME (or --node-name): set it from the downward API")?;
            let listen = match (opts.listen, host_ip) {
                (Some(l), _) => Some(l),
                (None, Some(ip)) => Some(SocketAddr::new(*ip, DEFAULT_K8S_LISTEN_PORT)),
                (None, None) if opts.ebpf => bail!(
                    "Kubernetes mode needs HOST_IP (or --host-ip / --listen): the address pods reach the agent on"
                ),
                (None, None) => None,
            };
            let cgroup_root = match &opts.cgroup_root {
                Some(root) => root.clone(),
                None => crate::cgroup::cgroup2_mount()?,
            };
            let client = crate::k8s::client().await?;
            let (tx, models) = watch::channel(Arc::new(Model::default()));
            let (ready_tx, ready) = watch::channel(false);
            let mut k8s_opts = crate::k8s::K8sOptions::new(node_name, cgroup_root);
            k8s_opts.instance = opts.pod_name.clone();
            match (&opts.pod_namespace, &opts.pod_name) {
                (Some(ns), Some(pod)) => k8s_opts.lease = Some(crate::k8s::lease::LeaseOptions::new(ns, pod)),
                _ => warn!("POD_NAMESPACE or POD_NAME unset: this agent never writes GRPCRoute status"),
            }
            let fatal = fatal.clone();
            let until_stopping = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            let k8s_task = tokio::spawn(async move {
                if let Err(e) = crate::k8s::run_until(client, k8s_opts, tx, ready_tx, until_stopping).await {
                    // Missing RBAC and the like: one clear line and a restart.
                    fatal.send_replace(Some(e.to_string()));
                }
            });
            Ok(Started {
                node: config::NodeConfig {
                    listen,
                    admin: admin::DEFAULT_ADDR.parse().context("default admin address")?,
                    attach_cgroup: None,
                    fast_path: true,
                },
                models,
                source: views::kubernetes_source(ready),
                k8s_task: Some(k8s_task),
            })
        }
    }
}

async fn run(opts: Options) -> anyhow::Result<()> {
    // A part that cannot go on (Kubernetes discovery without permissions)
    // stops the agent with its error.
    let (fatal_tx, mut fatal) = watch::channel(None::<String>);
    let (stopping, stopping_rx) = watch::channel(false);
    let Started {
        node,
        mut models,
        source,
        k8s_task,
    } = start_source(&opts, &fatal_tx, stopping_rx).await?;
    let listen = opts.listen.or(node.listen);
    let admin_addr = opts.admin.unwrap_or(node.admin);
    let attach_cgroup = opts.attach_cgroup.clone().or(node.attach_cgroup);
    let admin_opts = AdminOptions {
        allow_non_loopback: opts.admin_allow_non_loopback,
    };
    // Check the admin address before anything is attached.
    admin::check_addr(admin_addr, &admin_opts)?;

    let model = models.borrow_and_update().clone();

    // The kernel programs come first: loading them moves the agent into its
    // own cgroup, and sockets (the listener included) belong to the cgroup
    // they were created in.
    let kernel = if opts.ebpf {
        let listener = match listen {
            Some(SocketAddr::V4(v4)) => v4,
            Some(other) => bail!("listen address {other}: the kernel path redirects IPv4 only"),
            None => bail!(
                "no `listen:` address for kernel-redirected connections: set it (an address pods reach, \
                 not 127.0.0.1) or run with --no-ebpf"
            ),
        };
        check_listener_addr(listener)?;
        let mut kernel = Kernel::load(&KernelOptions {
            attach_cgroup,
            listener,
            fast_path: node.fast_path,
        })?;
        sync_kernel(&mut kernel, &model)?;
        info!(
            attach = %kernel.attach_cgroup().display(),
            agent_cgroup = %kernel.agent_cgroup().display(),
            "kernel programs attached"
        );
        Some(Arc::new(Mutex::new(kernel)))
    } else {
        None
    };

    let table = Table::new(&model);
    let observers = Observers::default();
    let proxy = Proxy::with_observers(Arc::clone(&table), ProxyOptions::default(), observers.clone());

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(kernel) = &kernel {
        let addr = listen.context("listen address")?;
        let listener =
            bind_shared(addr).with_context(|| format!("cannot listen on {addr} for redirected connections"))?;
        info!(%addr, "listening for redirected connections");
        let redirects = lock(kernel).redirects();
        let proxy = proxy.clone();
        tasks.spawn(async move { proxy.serve_redirected(listener, redirects).await });
    }
    let mut listeners = Listeners::new(proxy.clone());
    listeners.sync(&model, true).await?;

    let admin_server = AdminServer::bind(admin_addr, &admin_opts).await?;
    info!(addr = %admin_server.local_addr()?, "admin server listening");
    let state = views::admin_state(Arc::clone(&table), kernel.clone(), source, models.clone(), &observers);
    let admin_state = state.clone();
    tasks.spawn(async move {
        if let Err(e) = admin_server.run(admin_state).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    loop {
        tokio::select! {
            changed = models.changed() => {
                if changed.is_err() {
                    warn!("the state source stopped; serving the last known state");
                    std::future::pending::<()>().await;
                }
                let model = models.borrow_and_update().clone();
                table.update(&model);
                if let Some(kernel) = &kernel {
                    if let Err(e) = sync_kernel(&mut lock(kernel), &model) {
                        warn!(error = %e, "kernel maps not updated");
                    }
                }
                if let Err(e) = listeners.sync(&model, false).await {
                    warn!(error = %e, "listeners not updated");
                }
            }
            _ = fatal.changed() => {
                let e = fatal.borrow().clone().unwrap_or_default();
                proxy.shutdown(Duration::from_secs(1)).await;
                bail!("{e}");
            }
            _ = term.recv() => { info!("SIGTERM: draining"); break; }
            _ = int.recv() => { info!("SIGINT: draining"); break; }
        }
    }
    // Hand the route-status Lease over first (bounded inside), then drain.
    stopping.send_replace(true);
    if let Some(task) = k8s_task {
        let _ = task.await;
    }
    proxy.shutdown(SHUTDOWN_GRACE).await;
    tasks.abort_all();
    // Dropping the kernel handle detaches the programs.
    drop(kernel);
    info!("stopped");
    Ok(())
}

/// The redirect listener is shared (`SO_REUSEPORT`): during a rolling
/// update the new agent binds it while the old one drains.
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn lock(kernel: &Mutex<Kernel>) -> std::sync::MutexGuard<'_, Kernel> {
    kernel.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sync_kernel(kernel: &mut Kernel, model: &Model) -> anyhow::Result<()> {
    let vips: Vec<SocketAddr> = model.services.iter().flat_map(|s| s.vips.iter().copied()).collect();
    kernel.set_services(&vips)?;
    kernel.set_enrolled(&model.enrolled)?;
    Ok(())
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
