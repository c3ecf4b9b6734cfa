//! Traces: W3C Trace Context propagated through the agent with a span of
//! its own per call, exported to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf). Off unless an OTLP endpoint is configured.
//!
//! - [`context`]: the `traceparent` header, parsed and formatted.
//! - [`span`]: a call's span, from its request headers to its end.
//! - [`export`]: the background exporter (bounded queue, batches; a slow
//!   or absent collector loses spans, counted, and never slows a call).
//!
//! Crates: only `opentelemetry-proto`'s generated OTLP messages (with
//! `prost` to encode them) and the hyper HTTP/1 client the agent already
//! has. The `opentelemetry_sdk` pipeline and `opentelemetry-otlp` were
//! weighed and left out: the relay makes its spans from plain data at a
//! call's end (no per-call `Context` or boxed span objects), needs its own
//! drop counters, and OTLP/gRPC would bring tonic and tower into the agent
//! for no gain over OTLP/HTTP, which every collector accepts.

pub mod context;
pub mod export;
pub mod span;

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use tokio::sync::{mpsc, Notify};

pub use context::{SpanId, TraceId, TraceParent};
pub use span::{CallSpan, FinishedSpan};

/// The default `service.name` of the agent's spans.
pub const DEFAULT_SERVICE_NAME: &str = "balancer";

/// What is wrong with a tracing setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TracingError {
    #[error("`{0}` is not an http:// URL with a host (OTLP/HTTP, e.g. http://otel-collector:4318)")]
    BadEndpoint(String),
    #[error("`{0}`: only http:// is supported (OTLP/HTTP without TLS)")]
    NotHttp(String),
    #[error("sampling {0} is not a ratio between 0 and 1")]
    BadSampling(String),
    #[error("the service name is empty")]
    EmptyServiceName,
}

/// Where spans go: an OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// `host:port` to connect to (and the `Host` header).
    pub authority: String,
    /// The request path: as given, or `/v1/traces` when the URL has none.
    pub path: String,
}

impl OtlpEndpoint {
    pub fn parse(url: &str) -> Result<OtlpEndpoint, TracingError> {
        let bad = || TracingError::BadEndpoint(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(TracingError::NotHttp(url.to_owned())),
            None => return Err(bad()),
        }
        let authority = uri.authority().filter(|a| !a.host().is_empty()).ok_or_else(bad)?;
        let authority = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.as_str()),
        };
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => "/v1/traces".to_owned(),
            Some(p) => p.to_owned(),
        };
        Ok(OtlpEndpoint { authority, path })
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Head-based ratio sampling of the traces the agent starts (a call whose
/// client sent a valid `traceparent` keeps the client's decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampling {
    /// A trace is sampled when its id's low 63 bits are below this
    /// (OpenTelemetry's `TraceIdRatioBased`).
    bound: u64,
}

impl Sampling {
    pub const ALWAYS: Sampling = Sampling { bound: 1 << 63 };

    pub fn ratio(ratio: f64) -> Result<Sampling, TracingError> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(TracingError::BadSampling(ratio.to_string()));
        }
        Ok(Sampling {
            bound: (ratio * (1u64 << 63) as f64) as u64,
        })
    }

    pub fn as_ratio(self) -> f64 {
        self.bound as f64 / (1u64 << 63) as f64
    }

    pub fn sampled(self, trace: TraceId) -> bool {
        trace.low_u64() >> 1 < self.bound
    }
}

/// Tracing, when configured (static `tracing:` or the agent's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    pub endpoint: OtlpEndpoint,
    pub sampling: Sampling,
    /// The `service.name` resource attribute of the agent's spans.
    pub service_name: String,
}

impl TracingConfig {
    pub fn new(endpoint: &str, sampling: Option<f64>, service_name: Option<&str>) -> Result<Self, TracingError> {
        let service_name = service_name.unwrap_or(DEFAULT_SERVICE_NAME).trim();
        if service_name.is_empty() {
            return Err(TracingError::EmptyServiceName);
        }
        Ok(TracingConfig {
            endpoint: OtlpEndpoint::parse(endpoint)?,
            sampling: sampling.map_or(Ok(Sampling::ALWAYS), Sampling::ratio)?,
            service_name: service_name.to_owned(),
        })
    }
}

/// What became of the agent's spans (the metrics show them).
#[derive(Debug, Default)]
pub struct TraceCounters {
    pub exported: AtomicU64,
    /// The queue to the exporter was full (the collector is slow or down).
    pub dropped_queue_full: AtomicU64,
    /// The collector refused a batch or could not be reached.
    pub dropped_export_failed: AtomicU64,
}

/// A snapshot of [`TraceCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceCounts {
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
}

impl TraceCounters {
    pub fn snapshot(&self) -> TraceCounts {
        TraceCounts {
            exported: self.exported.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            dropped_export_failed: self.dropped_export_failed.load(Relaxed),
        }
    }
}

/// Starts and ends the agent's spans; shared by every connection task.
pub struct Tracer {
    sampling: Sampling,
    queue: mpsc::Sender<FinishedSpan>,
    counters: Arc<TraceCounters>,
    /// Tells the exporter to send what is queued and stop.
    closing: Arc<Notify>,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer").field("sampling", &self.sampling).finish()
    }
}

impl Tracer {
    /// The tracer and its exporter (a future to spawn: it runs until
    /// [`Tracer::close`], or until every clone of the tracer is gone).
    pub fn new(
        config: TracingConfig,
        counters: Arc<TraceCounters>,
    ) -> (Arc<Tracer>, impl std::future::Future<Output = ()> + Send + 'static) {
        let (queue, rx) = mpsc::channel(export::QUEUE);
        let closing = Arc::new(Notify::new());
        let tracer = Arc::new(Tracer {
            sampling: config.sampling,
            queue,
            counters: Arc::clone(&counters),
            closing: Arc::clone(&closing),
        });
        (tracer, export::run(config, rx, counters, closing))
    }

    /// At shutdown, once the calls are over: the exporter sends what is
    /// queued and ends.
    pub fn close(&self) {
        self.closing.notify_one();
    }

    /// A call's span, child of `incoming` (the client's valid
    /// `traceparent`) or the root of a new trace.
    pub fn begin(&self, incoming: Option<TraceParent>) -> CallSpan {
        match incoming {
            Some(p) => CallSpan::start(p.trace_id, Some(p.parent_id), p.sampled),
            None => {
                let trace = TraceId::random();
                CallSpan::start(trace, None, self.sampling.sampled(trace))
            }
        }
    }

    /// Hands a sampled call's span to the exporter, or counts it dropped
    /// when the queue is full.
    pub fn end(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            self.counters.dropped_queue_full.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_and_a_port() {
        let e = OtlpEndpoint::parse("http://collector:4318").expect("valid");
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("collector:4318", "/v1/traces")
        );
        let e = OtlpEndpoint::parse("http://10.0.0.1/custom/traces").expect("valid");
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("10.0.0.1:80", "/custom/traces")
        );
        assert_eq!(e.to_string(), "http://10.0.0.1:80/custom/traces");
        assert_eq!(
            OtlpEndpoint::parse("https://collector:4318").map_err(|e| e.to_string()),
            Err("`https://collector:4318`: only http:// is supported (OTLP/HTTP without TLS)".to_owned())
        );
        assert!(OtlpEndpoint::parse("collector:4318").is_err());
        assert!(OtlpEndpoint::parse("not a url").is_err());
    }

    #[test]
    fn ratio_sampling_keeps_about_the_ratio_and_the_extremes_exactly() {
        let n = 20_000;
        let count = |s: Sampling| (0..n).filter(|_| s.sampled(TraceId::random())).count();
        assert_eq!(count(Sampling::ALWAYS), n);
        assert_eq!(count(Sampling::ratio(0.0).expect("ratio")), 0);
        let tenth = count(Sampling::ratio(0.1).expect("ratio"));
        // Binomial(20000, 0.1): 2000 ± 42 is one deviation.
        assert!((1750..=2250).contains(&tenth), "{tenth}");
        assert!(Sampling::ratio(1.5).is_err());
        assert!(Sampling::ratio(f64::NAN).is_err());
        assert!((Sampling::ratio(0.25).expect("ratio").as_ratio() - 0.25).abs() < 1e-9);
    }

    #[test]
    fn a_client_trace_keeps_its_id_and_decision_and_gets_a_new_span() {
        let (tracer, _export) = Tracer::new(
            TracingConfig::new("http://127.0.0.1:4318", Some(0.0), None).expect("config"),
            Arc::default(),
        );
        let parent = context::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        let span = tracer.begin(Some(parent));
        assert_eq!(span.trace_id, parent.trace_id);
        assert_eq!(span.parent, Some(parent.parent_id));
        assert_ne!(span.span_id, parent.parent_id);
        assert!(span.sampled, "the client's decision wins over sampling 0");
        let root = tracer.begin(None);
        assert_eq!(root.parent, None);
        assert!(!root.sampled, "sampling 0");
    }
}
