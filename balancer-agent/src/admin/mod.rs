//! The admin server: health, readiness, Prometheus metrics and the JSON API
//! that `balancerctl` reads. It binds loopback only unless told otherwise:
//! what it shows (pods, connections, kernel maps) is for the node's operator.
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | 200 while the process serves |
//! | `/readyz` | 200 when the programs are attached (or eBPF is off) and the state is synced; 503 with the reasons otherwise |
//! | `/metrics` | OpenMetrics text |
//! | `/api/v1/status` | [`api::Status`] |
//! | `/api/v1/services`, `/api/v1/services/{name}` | [`api::Service`] |
//! | `/api/v1/services/{name}/endpoints` | [`api::Endpoint`] list |
//! | `/api/v1/services/{name}/explain?method=/pkg.Svc/M&header=name:value` | [`api::Explanation`]: what applies to that call |
//! | `/api/v1/gateways`, `/api/v1/gateways/{name}` | [`api::Gateway`] |
//! | `/api/v1/pods` | [`api::Pod`] list |
//! | `/api/v1/conns` | [`api::Conn`] list |
//! | `/api/v1/programs`, `/api/v1/maps`, `/api/v1/maps/{name}` | [`api::Program`], [`api::Map`], [`api::MapDump`] |
//! | `/api/v1/stats` | [`api::Stats`] |
//!
//! Service and gateway names may contain `/` (`namespace/name`); clients send it as-is
//! or percent-encoded.

pub mod decode;
mod http;
pub mod kernel;
pub mod views;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpListener;

// The API's types and the connection registry live outside the admin server
// (the data plane and the metrics use them too); the admin server reads them.
pub use crate::{
    api,
    conns::{self, ConnHandle, ConnMeta, ConnRegistry, Protocol, StreamGuard, StreamSource},
};
pub use kernel::KernelError;
pub use views::{KernelView, PodsView, ServicesView, SourceView};

use crate::{
    health::Health,
    metrics::{self, Metrics},
    pinned::tally::Tally,
};

/// The admin server's default address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:15000";

#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    /// Allow binding an address that is not loopback (the admin API shows
    /// pods, connections and kernel maps, and has no authentication).
    pub allow_non_loopback: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin server: refusing to bind non-loopback address {0}: the admin API has no authentication \
         (use a loopback address, or allow it explicitly with --admin-allow-non-loopback)"
    )]
    NonLoopback(SocketAddr),
    #[error("admin server: cannot bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin server: accept failed")]
    Accept(#[source] std::io::Error),
}

/// What the admin server shows. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    pub services: Arc<dyn ServicesView>,
    pub pods: Arc<dyn PodsView>,
    pub source: Arc<dyn SourceView>,
    /// `None` when eBPF is off (`--no-ebpf`): ready without programs.
    pub kernel: Option<Arc<dyn KernelView>>,
    pub conns: ConnRegistry,
    pub metrics: Arc<Metrics>,
    /// The agent's own conditions (unsupported node, draining, maps synced,
    /// foreign programs).
    pub health: Arc<Health>,
    /// What the sweeps for pinned connections found; `None` when they do
    /// not run.
    pub pinned: Option<Arc<Tally>>,
    pub started: Instant,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ebpf", &self.kernel.is_some())
            .field("conns", &self.conns.totals())
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// A state with the given services view, no pods, an always-synced
    /// source, no kernel, and fresh registries; replace fields as needed.
    pub fn new(services: Arc<dyn ServicesView>) -> Self {
        AdminState {
            services,
            pods: views::no_pods(),
            source: views::synced_source("static"),
            kernel: None,
            conns: ConnRegistry::new(),
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::new(false)),
            pinned: None,
            started: Instant::now(),
        }
    }

    /// Readiness and where the state comes from.
    pub fn status(&self) -> api::Status {
        let source = self.source.source();
        let programs_attached = self.kernel.as_ref().is_some_and(|k| k.attached());
        let conditions = self.health.conditions();
        let mut not_ready = conditions.not_ready;
        let mut lasting = conditions.lasting;
        if self.kernel.is_some() && !programs_attached && !conditions.draining {
            not_ready.push("kernel programs are not attached".to_owned());
            lasting = false;
        }
        if !source.synced && !conditions.unsupported {
            not_ready.push(format!("{} state is not synced yet", source.kind));
            lasting = false;
        }
        api::Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready: not_ready.is_empty(),
            settled: not_ready.is_empty() || lasting,
            not_ready,
            warnings: conditions.warnings,
            ebpf: self.kernel.is_some(),
            programs_attached,
            source,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            pinned: self.pinned.as_ref().map(|t| t.summary()),
        }
    }

    /// The enrolled pods / cgroups, with what the last sweep found of each.
    pub fn pods(&self) -> Vec<api::Pod> {
        let mut pods = self.pods.pods();
        if let Some(tally) = &self.pinned {
            tally.fill(&mut pods);
        }
        pods
    }

    /// The open connections, each with its pod looked up by the peer's IP
    /// when the proxy did not know it. An IP that more than one enrolled pod
    /// has (host-network pods share the node's) names none of them.
    pub fn conns(&self) -> Vec<api::Conn> {
        let mut conns = self.conns.list();
        if conns.iter().any(|c| c.pod.is_none()) {
            let pods = self.pods.pods();
            for c in conns.iter_mut().filter(|c| c.pod.is_none()) {
                let ip = c.peer.ip().to_string();
                let mut owners = pods
                    .iter()
                    .filter(|p| p.ip.as_deref() == Some(ip.as_str()))
                    .map(|p| p.pod.as_ref().unwrap_or(&p.cgroup));
                let first = owners.next();
                c.pod = first.filter(|f| owners.all(|o| o == *f)).cloned();
            }
        }
        conns
    }

    /// Per-service calls and latency histograms.
    pub fn stats(&self) -> api::Stats {
        let services = self.services.services();
        let mut latency = self.latency(&services);
        api::Stats {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            services: services
                .iter()
                .map(|s| api::ServiceStats {
                    service: s.name.clone(),
                    calls: s.counters.calls,
                    errors: s.errors(),
                    no_endpoint: s.counters.no_endpoint,
                    in_flight: s.in_flight(),
                    latency: latency
                        .remove(&s.name)
                        .unwrap_or_else(|| crate::metrics::LatencyHistogram::default().snapshot()),
                })
                .collect(),
        }
    }

    fn latency(&self, services: &[api::Service]) -> std::collections::BTreeMap<String, api::Histogram> {
        self.metrics
            .latency
            .snapshot(&|name| services.iter().any(|s| s.name == name))
    }

    /// One scrape's worth of metrics, read from every view.
    pub fn scrape(&self) -> metrics::Scrape {
        let status = self.status();
        let services = self.services.services();
        let programs = self.kernel.as_ref().and_then(|k| k.programs().ok()).unwrap_or_default();
        metrics::Scrape {
            version: status.version,
            ready: status.ready,
            ebpf: status.ebpf,
            programs_attached: status.programs_attached,
            latency: self.latency(&services),
            services,
            conns: self.conns.totals(),
            programs,
            source: status.source,
            enrolled_pods: self.pods.pods().len() as u64,
            health: self.health.conditions(),
            pinned: status.pinned,
            traces: self.metrics.traces.snapshot(),
            unrouted: self.metrics.unrouted.snapshot(),
        }
    }
}

/// Refuses a non-loopback address unless allowed.
pub fn check_addr(addr: SocketAddr, opts: &AdminOptions) -> Result<(), AdminError> {
    if addr.ip().is_loopback() || opts.allow_non_loopback {
        Ok(())
    } else {
        Err(AdminError::NonLoopback(addr))
    }
}

/// A bound admin server (bind first to learn the port, e.g. with port 0).
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr, opts: &AdminOptions) -> Result<Self, AdminError> {
        check_addr(addr, opts)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(AdminServer { listener })
    }

    /// Serves on a listener bound elsewhere (see `app::bind`).
    pub fn from_listener(listener: TcpListener) -> Self {
        AdminServer { listener }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/metrics` (and `/healthz`) only: a listener a cluster's
    /// Prometheus can reach, with nothing of the JSON API behind it.
    pub async fn run_metrics_only(self, state: AdminState) -> Result<(), AdminError> {
        http::accept_loop(self.listener, Arc::new(state), http::Scope::MetricsOnly).await
    }

    /// Serves until `shutdown` completes (open requests are not awaited).
    pub async fn run_until(self, state: AdminState, shutdown: impl Future<Output = ()>) -> Result<(), AdminError> {
        tokio::select! {
            r = http::accept_loop(self.listener, Arc::new(state), http::Scope::Full) => r,
            () = shutdown => Ok(()),
        }
    }

    /// Serves forever (until the task is dropped or an accept fails).
    pub async fn run(self, state: AdminState) -> Result<(), AdminError> {
        http::accept_loop(self.listener, Arc::new(state), http::Scope::Full).await
    }
}

/// Binds `addr` (loopback only unless `opts` allows otherwise) and serves.
pub async fn serve(addr: SocketAddr, opts: AdminOptions, state: AdminState) -> Result<(), AdminError> {
    let server = AdminServer::bind(addr, &opts).await?;
    tracing::info!(%addr, "admin server listening");
    server.run(state).await
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_attributed_to_the_one_pod_with_its_ip() {
        let mut state = AdminState::new(views::fixed_services(Vec::new()));
        let pod = |name: &str, cgroup: &str, ip: &str| api::Pod {
            pod: Some(name.to_owned()),
            cgroup_id: None,
            cgroup: cgroup.to_owned(),
            ip: Some(ip.to_owned()),
            ..api::Pod::default()
        };
        let pods = vec![
            // One pod, two container cgroups.
            pod("demo/client", "/cg/a", "10.244.1.5"),
            pod("demo/client", "/cg/b", "10.244.1.5"),
            // Two host-network pods on the node's IP.
            pod("demo/host-a", "/cg/c", "192.168.1.10"),
            pod("demo/host-b", "/cg/d", "192.168.1.10"),
        ];
        state.pods = Arc::new(move || pods.clone());
        let conn = |peer: &str| ConnMeta {
            peer: peer.parse().unwrap(),
            original_dst: None,
            service: None,
            pod: None,
        };
        let _a = state.conns.register(conn("10.244.1.5:40000"));
        let _b = state.conns.register(conn("192.168.1.10:40001"));
        let _c = state.conns.register(conn("10.244.1.99:40002"));
        let pods: Vec<Option<String>> = state.conns().into_iter().map(|c| c.pod).collect();
        assert_eq!(pods, [Some("demo/client".to_owned()), None, None]);
    }

    #[test]
    fn non_loopback_is_refused_unless_allowed() {
        let any: SocketAddr = "0.0.0.0:15000".parse().unwrap();
        let err = check_addr(any, &AdminOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("refusing to bind non-loopback address 0.0.0.0:15000"),
            "{err}"
        );
        check_addr(
            any,
            &AdminOptions {
                allow_non_loopback: true,
            },
        )
        .unwrap();
        check_addr("127.0.0.1:0".parse().unwrap(), &AdminOptions::default()).unwrap();
        check_addr("[::1]:0".parse().unwrap(), &AdminOptions::default()).unwrap();
    }
}
