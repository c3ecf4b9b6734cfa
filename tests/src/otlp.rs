//! A fake OpenTelemetry collector: an OTLP/HTTP server (`POST /v1/traces`,
//! protobuf) on a listener the test gives it (loopback, or one bound inside
//! a test's network namespace), keeping every span it receives.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value,
    trace::v1::Span,
};
use prost::Message;
use tokio::sync::oneshot;

/// A span as the collector got it, with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct Received {
    pub service_name: String,
    pub span: Span,
}

impl Received {
    /// A string attribute (`None` when absent or of another type).
    pub fn str(&self, key: &str) -> Option<&str> {
        match attr(&self.span, key)? {
            Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        match attr(&self.span, key)? {
            Value::IntValue(n) => Some(*n),
            _ => None,
        }
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// Whether the span's status is an error.
    pub fn is_error(&self) -> bool {
        self.span.status.as_ref().is_some_and(|s| s.code == 2)
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

/// Lowercase hex of an id.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The collector, stopped on drop.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Collector {
    /// On a loopback port of its own.
    pub fn start() -> io::Result<Collector> {
        Collector::start_on(std::net::TcpListener::bind("127.0.0.1:0")?)
    }

    /// On `listener` (e.g. bound inside a test's network namespace).
    pub fn start_on(listener: std::net::TcpListener) -> io::Result<Collector> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let kept = Arc::clone(&spans);
        let thread = thread::Builder::new().name("otlp-collector".into()).spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                    };
                    let kept = Arc::clone(&kept);
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| export(Arc::clone(&kept), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        })?;
        Ok(Collector {
            addr,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://ADDR`, for `otlp_endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in order.
    pub fn spans(&self) -> Vec<Received> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits (bounded) until at least `n` spans arrived; returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let until = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= n || Instant::now() >= until {
                return spans;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn export(
    kept: Arc<Mutex<Vec<Received>>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let bad = |why: String| {
        let mut r = Response::new(Full::new(Bytes::from(why)));
        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
        Ok(r)
    };
    if req.uri().path() != "/v1/traces" {
        return bad(format!("unexpected path {}", req.uri().path()));
    }
    if req.headers().get(hyper::header::CONTENT_TYPE).map(|v| v.as_bytes()) != Some(b"application/x-protobuf") {
        return bad("content-type is not application/x-protobuf".into());
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(e.to_string()),
    };
    let decoded = match ExportTraceServiceRequest::decode(body) {
        Ok(d) => d,
        Err(e) => return bad(e.to_string()),
    };
    let mut got = Vec::new();
    for rs in decoded.resource_spans {
        let service_name = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            got.extend(ss.spans.into_iter().map(|span| Received {
                service_name: service_name.clone(),
                span,
            }));
        }
    }
    kept.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend(got);
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let mut r = Response::new(Full::new(Bytes::from(answer)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(r)
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
