//! The HTTP/2 demultiplexer: accepts client connections (kernel-redirected or
//! on explicit per-service listeners), tells HTTP/2 from anything else, and
//! forwards every stream — every gRPC call — to the endpoint the balancer
//! picks for it. Anything that is not HTTP/2 is proxied as plain TCP to one
//! endpoint.
//!
//! Module map: [`sniff`] (preface detection), [`relay`] (the HTTP/2 data
//! plane: a frame-level relay), [`tcp`] (plain TCP fallback), [`grpc`]
//! (status, timeout), [`fault`] (injected delays and aborts), [`ctx`] (what
//! connection tasks share), [`options`].

mod ctx;
mod fault;
mod gateway;
pub mod grpc;
mod options;
mod relay;
pub mod sniff;
mod tcp;

use std::{
    future::Future,
    net::SocketAddr,
    os::fd::AsFd,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};

use crate::{
    balance::{ServiceSlot, Table},
    conns::{ConnHandle, ConnMeta, Protocol as ConnProtocol},
    error::Chain,
    redirect::Redirects,
};

pub(crate) use ctx::Ctx;
pub use ctx::Observers;
use ctx::{Shutdown, Tracker};
pub use options::{FastPath, PoolOptions, ProxyOptions};
use sniff::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
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
                shutdown: Shutdown::default(),
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
        self.ctx.shutdown.enter(Shutdown::DRAINING);
        if tokio::time::timeout(grace, self.ctx.tracker.wait()).await.is_err() {
            warn!(
                open = self.ctx.tracker.count.load(Relaxed),
                "grace period over: closing remaining connections"
            );
            self.ctx.shutdown.enter(Shutdown::FORCED);
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
        Protocol::Http2 => {
            handle.set_protocol(ConnProtocol::H2);
            if let Err(e) = relay::serve(ctx, stream, &prefix, relay::Target::Service(slot), &handle).await {
                debug!(error = %e, "client connection ended with an error");
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
