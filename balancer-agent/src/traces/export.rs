//! The exporter: one background task takes finished spans from a bounded
//! queue and posts them in batches to the collector (OTLP/HTTP, protobuf,
//! `POST /v1/traces`). Calls never wait for it: when the queue is full the
//! span is dropped and counted ([`super::Tracer::end`]); a batch the
//! collector refuses or does not answer in time is dropped and counted.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans},
};
use prost::Message;
use tokio::{
    net::TcpStream,
    sync::{mpsc, Notify},
    time::Instant,
};
use tracing::{debug, warn};

use super::{FinishedSpan, TraceCounters, TracingConfig};

/// Spans waiting for the exporter (OpenTelemetry's default queue size).
pub const QUEUE: usize = 2048;
/// Spans per request.
pub const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long one request may take, connecting included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about failed exports per this long.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What a failed export was.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("the collector answered {0}")]
    Status(http::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The OTLP request for a batch.
pub fn request(config: &TracingConfig, spans: &[FinishedSpan]) -> ExportTraceServiceRequest {
    let string = |k: &str, v: &str| KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.to_owned())),
        }),
        ..KeyValue::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", &config.service_name)],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "balancer".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans: spans.iter().map(FinishedSpan::to_otlp).collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// One HTTP/1 connection to the collector, reopened when it closes.
struct Collector {
    config: TracingConfig,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Collector {
    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ExportError> {
        if self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let addr = &self.config.endpoint.authority;
            let stream = TcpStream::connect(addr).await.map_err(|source| ExportError::Connect {
                addr: addr.clone(),
                source,
            })?;
            let _ = stream.set_nodelay(true);
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "collector connection closed");
                }
            });
            self.conn = Some(send);
        }
        let send = self.conn.as_mut().ok_or(ExportError::Timeout(Duration::ZERO))?;
        send.ready().await?;
        Ok(send)
    }

    async fn post(&mut self, body: Vec<u8>) -> Result<(), ExportError> {
        let req = http::Request::post(self.config.endpoint.path.as_str())
            .header(http::header::HOST, self.config.endpoint.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.sender().await?.send_request(req).await?;
        let status = resp.status();
        // Read the (small) answer so that the connection can be reused.
        let _ = resp.into_body().collect().await;
        if !status.is_success() {
            return Err(ExportError::Status(status));
        }
        Ok(())
    }

    async fn export(&mut self, spans: &[FinishedSpan]) -> Result<(), ExportError> {
        let body = request(&self.config, spans).encode_to_vec();
        match tokio::time::timeout(EXPORT_TIMEOUT, self.post(body)).await {
            Ok(r) => r,
            Err(_) => {
                // A connection stuck mid-request is not reused.
                self.conn = None;
                Err(ExportError::Timeout(EXPORT_TIMEOUT))
            }
        }
        .inspect_err(|_| self.conn = None)
    }
}

/// Runs until every sender of `rx` is gone, or until `closing` (then
/// what is queued is sent first).
pub async fn run(
    config: TracingConfig,
    mut rx: mpsc::Receiver<FinishedSpan>,
    counters: Arc<TraceCounters>,
    closing: Arc<Notify>,
) {
    debug!(endpoint = %config.endpoint, "exporting spans");
    let mut exporter = Exporter {
        collector: Collector { config, conn: None },
        counters,
        warned: None,
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 {
                return;
            },
            () = closing.notified() => {
                while rx.recv_many(&mut batch, MAX_BATCH).now_or_never().unwrap_or(0) > 0 {
                    exporter.send(&mut batch).await;
                }
                return;
            }
        }
        let until = Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        exporter.send(&mut batch).await;
    }
}

/// The collector and the counts of what became of the spans.
struct Exporter {
    collector: Collector,
    counters: Arc<TraceCounters>,
    warned: Option<Instant>,
}

impl Exporter {
    /// Sends `batch` (emptied) and counts its spans exported or dropped.
    async fn send(&mut self, batch: &mut Vec<FinishedSpan>) {
        let n = batch.len() as u64;
        match self.collector.export(batch).await {
            Ok(()) => {
                self.counters.exported.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.counters.dropped_export_failed.fetch_add(n, Relaxed);
                if self.warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    warn!(
                        endpoint = %self.collector.config.endpoint,
                        spans = n,
                        error = %crate::error::Chain(&e),
                        "spans not exported (dropped)"
                    );
                }
            }
        }
        batch.clear();
    }
}
