//! The client-facing side: an HTTP/2 server connection (cleartext, prior
//! knowledge) whose every stream becomes a call task.

use std::{sync::Arc, time::Instant};

use tokio::net::TcpStream;
use tracing::{debug, Instrument};

use super::{call, coalesce::Coalesce, keepalive::Keepalive, sniff::Prefixed, Ctx, ProxyError};
use crate::{
    admin::ConnHandle,
    balance::ServiceSlot,
    logging::{self, AccessEntry},
};

pub(crate) async fn serve(
    ctx: &Arc<Ctx>,
    io: Prefixed<TcpStream>,
    slot: Arc<ServiceSlot>,
    handle: &ConnHandle,
) -> Result<(), ProxyError> {
    let latency = ctx.observers.metrics.latency.service(slot.name());
    let o = &ctx.opts;
    let mut conn = h2::server::Builder::new()
        .initial_window_size(o.stream_window)
        .initial_connection_window_size(o.connection_window)
        .max_concurrent_streams(o.max_concurrent_streams)
        .handshake::<_, bytes::Bytes>(Coalesce::new(io))
        .await
        .map_err(ProxyError::Client)?;
    let mut keepalive = Keepalive::new(
        conn.ping_pong(),
        o.client_keepalive_interval,
        o.client_keepalive_timeout,
    );
    let mut draining = false;
    loop {
        let next = tokio::select! {
            n = conn.accept() => n,
            _ = keepalive.dead() => {
                debug!("client left a PING unanswered: connection closed");
                return Ok(());
            }
            _ = ctx.drained(), if !draining => {
                debug!("shutting down: GOAWAY to client");
                conn.graceful_shutdown();
                draining = true;
                continue;
            }
        };
        match next {
            None => return Ok(()),
            Some(Err(e)) => return Err(ProxyError::Client(e)),
            Some(Ok((req, respond))) => {
                let ctx = Arc::clone(ctx);
                let slot = Arc::clone(&slot);
                let span = tracing::trace_span!("call", stream = respond.stream_id().as_u32());
                let stream_guard = handle.stream();
                let latency = Arc::clone(&latency);
                tokio::spawn(
                    async move {
                        let _stream = stream_guard;
                        let started = Instant::now();
                        let path = logging::access_enabled().then(|| req.uri().path().to_owned());
                        let report = call::run(&ctx, &slot, req, respond).await;
                        let duration = started.elapsed();
                        latency.observe(duration);
                        if let Some(method) = path {
                            logging::access(&AccessEntry {
                                service: slot.name(),
                                method: &method,
                                endpoint: report.endpoint,
                                grpc_status: report.status,
                                duration,
                                retries: report.attempts.saturating_sub(1),
                            });
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }
}
