//! The HTTP/2 demultiplexer: accepts client connections (kernel-redirected or
//! on explicit per-service listeners), tells HTTP/2 from anything else, and
//! forwards every stream — every gRPC call — to the endpoint the balancer
//! picks for it. Anything that is not HTTP/2 is proxied as plain TCP to one
//! endpoint.
//!
//! Module map: [`sniff`] (preface detection), [`server`] (client-facing
//! HTTP/2 connections), [`call`] (one stream: pick, retry, forward),
//! [`body`] (DATA with end-to-end flow control), [`pool`] (upstream
//! connections), [`coalesce`] (fewer, larger writes), [`keepalive`] (PINGs
//! that find dead peers), [`tcp`] (plain TCP fallback), [`grpc`] (status,
//! timeout).

mod body;
mod call;
mod coalesce;
pub mod grpc;
mod keepalive;
pub mod pool;
mod server;
pub mod sniff;
mod tcp;

use std::{
    future::Future,
    net::SocketAddr,
    os::fd::AsFd,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Notify},
};
use tracing::{debug, info, warn, Instrument};

use crate::{
    admin::{ConnHandle, ConnMeta, ConnRegistry, Protocol as ConnProtocol},
    balance::{ServiceSlot, Table},
    error::Chain,
    metrics::Metrics,
    redirect::Redirects,
};

/// Where the demultiplexer reports what it does: the latency histograms
/// and the client connections the admin server shows.
#[derive(Debug, Clone, Default)]
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub conns: ConnRegistry,
}
pub use pool::PoolOptions;
use sniff::Protocol;

/// Tunables of the demultiplexer.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// How long to wait for a client's first bytes before treating the
    /// connection as not HTTP/2 (server-first protocols send nothing).
    pub sniff_timeout: Duration,
    /// Extra attempts for a call that was never handled by an endpoint.
    pub max_retries: usize,
    /// Request bytes kept per call so that a call refused after sending
    /// some DATA can still be retried; beyond it, no retry.
    pub replay_buffer: usize,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` announced to clients.
    pub max_concurrent_streams: u32,
    /// HTTP/2 windows announced to clients.
    pub stream_window: u32,
    pub connection_window: u32,
    /// A PING to each client after this long without one in flight...
    pub client_keepalive_interval: Duration,
    /// ...and its connection closed when the PING goes unanswered this long
    /// (a pod that vanished without closing its connections).
    pub client_keepalive_timeout: Duration,
    pub pool: PoolOptions,
    /// Which data plane carries HTTP/2 calls.
    pub engine: Engine,
}

/// The HTTP/2 data plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Engine {
    /// Streams through `h2` on both sides, a task per call.
    #[default]
    H2,
    /// The frame-level relay ([`crate::relay`]).
    Relay,
}

impl Engine {
    /// From `BALANCER_ENGINE` (`h2` or `relay`; unset: h2). The default
    /// options take it too, so that a whole test run can use either engine.
    pub fn from_env() -> Result<Engine, String> {
        match std::env::var("BALANCER_ENGINE").as_deref() {
            Err(_) | Ok("") | Ok("h2") => Ok(Engine::H2),
            Ok("relay") => Ok(Engine::Relay),
            Ok(other) => Err(format!("BALANCER_ENGINE: `{other}` is neither `h2` nor `relay`")),
        }
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            sniff_timeout: Duration::from_secs(1),
            max_retries: 2,
            replay_buffer: 64 * 1024,
            max_concurrent_streams: 1024,
            stream_window: 1 << 20,
            connection_window: 4 << 20,
            client_keepalive_interval: Duration::from_secs(60),
            client_keepalive_timeout: Duration::from_secs(20),
            pool: PoolOptions::default(),
            engine: Engine::from_env().unwrap_or_default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("HTTP/2 with client")]
    Client(#[source] h2::Error),
    #[error("HTTP/2 with endpoint")]
    Upstream(#[source] h2::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
}

/// Counts the tasks that hold client connections, so shutdown can wait.
#[derive(Debug, Default)]
struct Tracker {
    count: AtomicUsize,
    idle: Notify,
}

struct TrackGuard(Arc<Ctx>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.tracker.count.fetch_sub(1, Relaxed) == 1 {
            self.0.tracker.idle.notify_waiters();
        }
    }
}

impl Tracker {
    async fn wait(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What every connection and call task shares.
pub(crate) struct Ctx {
    pub table: Arc<Table>,
    pub opts: ProxyOptions,
    pub observers: Observers,
    /// Set when shutting down: stop accepting, GOAWAY clients.
    pub draining: watch::Sender<bool>,
    /// Set when the grace period is over: drop what is left.
    pub force: watch::Sender<bool>,
    tracker: Tracker,
    next_conn: AtomicU64,
}

impl Ctx {
    fn track(self: &Arc<Self>) -> TrackGuard {
        self.tracker.count.fetch_add(1, Relaxed);
        TrackGuard(Arc::clone(self))
    }

    pub async fn drained(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub async fn forced(&self) {
        let mut rx = self.force.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// The demultiplexer. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Proxy {
    ctx: Arc<Ctx>,
}

impl Proxy {
    pub fn new(table: Arc<Table>, opts: ProxyOptions) -> Proxy {
        Self::with_observers(table, opts, Observers::default())
    }

    /// A proxy that reports calls and connections to `observers`.
    pub fn with_observers(table: Arc<Table>, opts: ProxyOptions, observers: Observers) -> Proxy {
        Proxy {
            ctx: Arc::new(Ctx {
                table,
                opts,
                observers,
                draining: watch::Sender::new(false),
                force: watch::Sender::new(false),
                tracker: Tracker::default(),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// Serves connections the kernel redirected to `listener`: each one's
    /// original destination (the VIP) selects the service; a connection
    /// without one, or to a VIP no service has, is closed at once.
    ///
    /// Keeps accepting while the proxy drains: a connect redirected just
    /// before the programs were detached still arrives, and is served (its
    /// client gets GOAWAY at once and re-dials, to the Service). Returns
    /// when the drain is over.
    pub async fn serve_redirected(&self, listener: TcpListener, redirects: Arc<dyn Redirects>) {
        let ctx = &self.ctx;
        loop {
            let accepted = tokio::select! {
                _ = ctx.forced() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept on the redirect listener failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let vip = match redirects.original_dst(stream.as_fd()) {
                Ok(Some(vip)) => vip,
                Ok(None) => {
                    debug!(%peer, "connection without original destination refused");
                    ctx.observers.conns.refused();
                    continue;
                }
                Err(e) => {
                    warn!(%peer, error = %e, "original destination unreadable; connection refused");
                    continue;
                }
            };
            let Some(slot) = ctx.table.service_by_vip(vip) else {
                debug!(%peer, %vip, "connection to a VIP of no service refused");
                ctx.observers.conns.refused();
                continue;
            };
            self.spawn_conn(stream, peer, Some(vip), slot, Some(Arc::clone(&redirects)));
        }
    }

    /// Serves an explicit listener of `service` until the service leaves
    /// the model or the proxy shuts down.
    pub async fn serve_explicit(&self, listener: TcpListener, service: String) {
        self.serve_explicit_until(listener, service, std::future::pending())
            .await
    }

    /// As [`Proxy::serve_explicit`], and also stops when `stop` resolves
    /// (e.g. a listener address changed at reload). Connections already
    /// accepted carry on.
    pub async fn serve_explicit_until(&self, listener: TcpListener, service: String, stop: impl Future<Output = ()>) {
        let ctx = &self.ctx;
        let Some(slot) = ctx.table.service(&service) else {
            warn!(%service, "explicit listener for an unknown service not started");
            return;
        };
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                _ = ctx.drained() => break,
                _ = slot.removed() => {
                    info!(%service, "service removed: its listener stops");
                    break;
                }
                _ = &mut stop => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let local = stream.local_addr().ok();
                    self.spawn_conn(stream, peer, local, Arc::clone(&slot), None);
                }
                Err(e) => {
                    warn!(%service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Stops accepting, sends GOAWAY to every client connection, waits up to
    /// `grace` for open calls and connections to finish, then drops the rest.
    pub async fn shutdown(&self, grace: Duration) {
        self.ctx.draining.send_replace(true);
        if tokio::time::timeout(grace, self.ctx.tracker.wait()).await.is_err() {
            warn!(
                open = self.ctx.tracker.count.load(Relaxed),
                "grace period over: closing remaining connections"
            );
            self.ctx.force.send_replace(true);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.ctx.tracker.wait()).await;
        }
    }

    /// Client connections currently open.
    pub fn open_connections(&self) -> usize {
        self.ctx.tracker.count.load(Relaxed)
    }

    fn spawn_conn(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        original_dst: Option<SocketAddr>,
        slot: Arc<ServiceSlot>,
        redirects: Option<Arc<dyn Redirects>>,
    ) {
        let ctx = Arc::clone(&self.ctx);
        let id = ctx.next_conn.fetch_add(1, Relaxed);
        let span = match original_dst {
            Some(dst) => tracing::debug_span!("conn", id, %peer, %dst, service = %slot.name()),
            None => tracing::debug_span!("conn", id, %peer, service = %slot.name()),
        };
        let guard = ctx.track();
        let handle = ctx.observers.conns.register(ConnMeta {
            peer,
            original_dst,
            service: Some(slot.name().to_owned()),
            pod: None,
        });
        tokio::spawn(
            async move {
                let _guard = guard;
                tokio::select! {
                    _ = handle_conn(&ctx, stream, slot, redirects, handle) => {}
                    _ = ctx.forced() => debug!("connection dropped at shutdown"),
                }
            }
            .instrument(span),
        );
    }
}

async fn handle_conn(
    ctx: &Arc<Ctx>,
    mut stream: TcpStream,
    slot: Arc<ServiceSlot>,
    redirects: Option<Arc<dyn Redirects>>,
    handle: ConnHandle,
) {
    let _ = stream.set_nodelay(true);
    let (proto, prefix) = match sniff::sniff(&mut stream, ctx.opts.sniff_timeout).await {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "connection failed before its first bytes");
            return;
        }
    };
    match proto {
        Protocol::Closed => {}
        Protocol::Http2 if ctx.opts.engine == Engine::Relay => {
            handle.set_protocol(ConnProtocol::H2);
            if let Err(e) = crate::relay::serve(ctx, stream, &prefix, slot, &handle).await {
                debug!(error = %e, "client connection ended with an error");
            }
        }
        Protocol::Http2 => {
            handle.set_protocol(ConnProtocol::H2);
            // Boxed: the h2 engine's state would otherwise size every
            // connection's task, relay or not.
            let serve = Box::pin(server::serve(ctx, sniff::Prefixed::new(prefix, stream), slot, &handle));
            if let Err(e) = serve.await {
                debug!(error = %Chain(&e), "client connection ended with an error");
            }
        }
        Protocol::Other => {
            handle.set_protocol(ConnProtocol::Tcp);
            if let Some(r) = &redirects {
                r.leave_fast_path(stream.as_fd());
            }
            if let Err(e) = Box::pin(tcp::proxy(ctx, stream, prefix, &slot)).await {
                debug!(error = %Chain(&e), "plain TCP connection ended with an error");
            }
        }
    }
}
