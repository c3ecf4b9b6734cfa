//! Gateway listeners: connections from clients outside the cluster, in
//! cleartext HTTP/2 (prior knowledge) or TLS (ALPN `h2`), each call routed
//! by its host and match to a service and balanced like any other call.

use std::{future::Future, net::SocketAddr, sync::atomic::Ordering::Relaxed, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};

use super::{relay, Ctx, Proxy};
use crate::{
    balance::gateway::GatewaySlot,
    conns::{ConnHandle, ConnMeta, Protocol as ConnProtocol},
};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Proxy {
    /// Serves a gateway listener until `stop` resolves or the proxy drains;
    /// connections already accepted carry on. With `tls`, connections are
    /// TLS (the certificate the client's SNI names, ALPN `h2`); without,
    /// cleartext HTTP/2.
    pub async fn serve_gateway(
        &self,
        listener: TcpListener,
        routes: Arc<GatewaySlot>,
        tls: Option<Arc<ServerConfig>>,
        stop: impl Future<Output = ()>,
    ) {
        let ctx = &self.ctx;
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                _ = ctx.drained() => break,
                _ = &mut stop => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => self.spawn_gateway_conn(stream, peer, &routes, acceptor.clone()),
                Err(e) => {
                    warn!(error = %e, "accept on a gateway listener failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        info!(listener = %routes.current().name, "gateway listener stopped");
    }

    fn spawn_gateway_conn(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        routes: &Arc<GatewaySlot>,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let ctx = Arc::clone(&self.ctx);
        let id = ctx.next_conn.fetch_add(1, Relaxed);
        let span = tracing::debug_span!("gateway", id, %peer, listener = %routes.current().name);
        let guard = ctx.track();
        let handle = ctx.observers.conns.register(ConnMeta {
            peer,
            original_dst: stream.local_addr().ok(),
            service: None,
            pod: None,
        });
        let routes = Arc::clone(routes);
        tokio::spawn(
            async move {
                let _guard = guard;
                tokio::select! {
                    _ = handle_gateway_conn(&ctx, stream, routes, acceptor, handle) => {}
                    _ = ctx.forced() => debug!("connection dropped at shutdown"),
                }
            }
            .instrument(span),
        );
    }
}

async fn handle_gateway_conn(
    ctx: &Arc<Ctx>,
    stream: TcpStream,
    routes: Arc<GatewaySlot>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    handle: ConnHandle,
) {
    let _ = stream.set_nodelay(true);
    let target = relay::Target::Gateway(routes);
    let served = match acceptor {
        None => {
            handle.set_protocol(ConnProtocol::H2);
            relay::serve(ctx, stream, &[], target, &handle).await
        }
        Some(acceptor) => {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            debug!(sni = session.server_name().unwrap_or("-"), "TLS handshake done");
            handle.set_protocol(ConnProtocol::H2);
            relay::serve(ctx, tls, &[], target, &handle).await
        }
    };
    if let Err(e) = served {
        debug!(error = %e, "gateway connection ended with an error");
    }
}
