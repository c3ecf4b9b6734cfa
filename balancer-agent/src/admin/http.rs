//! HTTP/1.1 serving and routing of the admin server.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::{api, AdminError, AdminState};
use crate::metrics;

type Body = Full<Bytes>;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// Everything (loopback admin server).
    Full,
    /// `/metrics` and `/healthz` (the node-IP metrics listener).
    MetricsOnly,
}

pub(super) async fn accept_loop(listener: TcpListener, state: Arc<AdminState>, scope: Scope) -> Result<(), AdminError> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            // Transient (out of fds, a connection reset before accept): keep serving.
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "admin server: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(AdminError::Accept(e)),
        };
        let state = Arc::clone(&state);
        let span = tracing::debug_span!("admin", %peer);
        tokio::spawn(
            async move {
                let svc = service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move {
                        let allowed = scope == Scope::Full || matches!(req.uri().path(), "/metrics" | "/healthz");
                        Ok::<_, Infallible>(if allowed {
                            handle(&state, req)
                        } else {
                            error(
                                StatusCode::NOT_FOUND,
                                "this listener serves /metrics only; the admin API is on loopback".to_owned(),
                            )
                        })
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || e.raw_os_error() == Some(libc::EMFILE)
        || e.raw_os_error() == Some(libc::ENFILE)
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(body) => text(status, "application/json", body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        ),
    }
}

fn error(status: StatusCode, msg: String) -> Response<Body> {
    let body = serde_json::to_string(&api::ApiError { error: msg.clone() })
        .unwrap_or_else(|_| format!("{{\"error\":{msg:?}}}"));
    text(status, "application/json", body)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `/api/v1/services/{name}/explain?method=/pkg.Service/Method&header=name:value…`
fn explain(state: &AdminState, name: &str, query: &str) -> Response<Body> {
    let Some(name) = percent_decode(name) else {
        return error(StatusCode::BAD_REQUEST, format!("malformed service name `{name}`"));
    };
    let mut method = None;
    let mut headers = http::HeaderMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // `+` is a space in a query string.
        let Some(value) = percent_decode(&value.replace('+', " ")) else {
            return error(StatusCode::BAD_REQUEST, format!("malformed query parameter `{pair}`"));
        };
        match key {
            "method" => method = Some(value),
            "header" => {
                let Some((n, v)) = value.split_once(':') else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("header `{value}`: expected name:value"),
                    );
                };
                let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()),
                    http::HeaderValue::from_str(v.trim()),
                ) else {
                    return error(StatusCode::BAD_REQUEST, format!("header `{value}`: not a valid header"));
                };
                headers.append(n, v);
            }
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown query parameter `{key}`")),
        }
    }
    let Some(method) = method else {
        return error(
            StatusCode::BAD_REQUEST,
            "explain needs the call: method=/package.Service/Method".to_owned(),
        );
    };
    let path = if method.starts_with('/') {
        method
    } else {
        format!("/{method}")
    };
    match state.services.explain(&name, &path, &headers) {
        Some(e) => json(StatusCode::OK, &e),
        None => error(StatusCode::NOT_FOUND, format!("no service named `{name}`")),
    }
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} not allowed: the admin API is read-only", req.method()),
        );
    }
    let path = req.uri().path();
    match path {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let status = state.status();
            if status.ready {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", status.not_ready.join("; ")),
                )
            }
        }
        "/metrics" => match metrics::encode(state.scrape()) {
            Ok(body) => text(StatusCode::OK, metrics::CONTENT_TYPE, body),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "cannot encode the metrics\n".into(),
            ),
        },
        "/api/v1/status" => json(StatusCode::OK, &state.status()),
        "/api/v1/services" => json(StatusCode::OK, &state.services.services()),
        "/api/v1/gateways" => json(StatusCode::OK, &state.services.gateways()),
        "/api/v1/pods" => json(StatusCode::OK, &state.pods()),
        "/api/v1/conns" => json(StatusCode::OK, &state.conns()),
        "/api/v1/stats" => json(StatusCode::OK, &state.stats()),
        "/api/v1/programs" => kernel(state, |k| k.programs().map(|p| json(StatusCode::OK, &p))),
        "/api/v1/maps" => kernel(state, |k| k.maps().map(|m| json(StatusCode::OK, &m))),
        _ => {
            if let Some(rest) = path.strip_prefix("/api/v1/services/") {
                if let Some(name) = rest.strip_suffix("/explain") {
                    return explain(state, name, req.uri().query().unwrap_or(""));
                }
                let (name, endpoints) = match rest.strip_suffix("/endpoints") {
                    Some(name) => (name, true),
                    None => (rest, false),
                };
                let Some(name) = percent_decode(name) else {
                    return error(StatusCode::BAD_REQUEST, format!("malformed service name in {path}"));
                };
                let services = state.services.services();
                return match services.into_iter().find(|s| s.name == name) {
                    Some(s) if endpoints => json(StatusCode::OK, &s.endpoints),
                    Some(s) => json(StatusCode::OK, &s),
                    None => error(StatusCode::NOT_FOUND, format!("no service named `{name}`")),
                };
            }
            if let Some(name) = path.strip_prefix("/api/v1/gateways/") {
                let Some(name) = percent_decode(name) else {
                    return error(StatusCode::BAD_REQUEST, format!("malformed gateway name in {path}"));
                };
                return match state.services.gateways().into_iter().find(|g| g.name == name) {
                    Some(g) => json(StatusCode::OK, &g),
                    None => error(StatusCode::NOT_FOUND, format!("no gateway named `{name}`")),
                };
            }
            if let Some(name) = path.strip_prefix("/api/v1/maps/") {
                let Some(name) = percent_decode(name) else {
                    return error(StatusCode::BAD_REQUEST, format!("malformed map name in {path}"));
                };
                return kernel(state, |k| {
                    Ok(match k.map_dump(&name)? {
                        Some(d) => json(StatusCode::OK, &d),
                        None => error(StatusCode::NOT_FOUND, format!("no map named `{name}`")),
                    })
                });
            }
            error(StatusCode::NOT_FOUND, format!("no such path: {path}"))
        }
    }
}

fn kernel(
    state: &AdminState,
    f: impl FnOnce(&dyn super::KernelView) -> Result<Response<Body>, super::kernel::KernelError>,
) -> Response<Body> {
    match &state.kernel {
        None => error(
            StatusCode::CONFLICT,
            "the agent runs without eBPF (--no-ebpf): no kernel programs or maps".into(),
        ),
        Some(k) => f(k.as_ref())
            .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, crate::error::Chain(&e).to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("default%2Fgreeter").as_deref(), Some("default/greeter"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }
}
