//! The HTTP side: routes a request to a resource and verb, applies the
//! test's switches (outage, not-served resources, forbidden verbs), and
//! answers as kube-apiserver does.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt as _, Limited};
use serde_json::{json, Value};

use super::{
    body::{ApiBody, WatchBody},
    resources::{def, query, route, Route, Target},
    selector::Filter,
    status::ApiError,
    store::Obj,
    writes::{self, Addr},
    Shared,
};

/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The test took the server down: the request's connection is closed
/// without an answer.
#[derive(Debug, thiserror::Error)]
#[error("the API server is down")]
pub struct Down;

/// Serves one request: failures are Status responses, except while the
/// server is down ([`Down`]).
pub async fn handle<B>(shared: Arc<Shared>, req: Request<B>) -> Result<Response<ApiBody>, Down>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("/", |pq| pq.as_str())
    );
    tracing::debug!(request = %line, "request");
    let down = {
        let mut st = shared.lock();
        st.requests.push(line);
        st.unavailable
    };
    if down {
        return Err(Down);
    }
    Ok(match route(req.uri().path()) {
        Route::Version => json_response(StatusCode::OK, &version()),
        Route::Health => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(ApiBody::Full(Some(Bytes::from_static(b"ok"))))
            .unwrap_or_else(|_| internal()),
        Route::Unknown => error(&ApiError::no_such_resource()),
        Route::Resource(t) => serve(&shared, req, t).await.unwrap_or_else(|e| error(&e)),
    })
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-balancer-fake",
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "", "compiler": "", "platform": "linux/amd64",
    })
}

fn internal() -> Response<ApiBody> {
    let mut r = Response::new(ApiBody::Full(None));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

fn bytes_response(status: StatusCode, body: Bytes) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(ApiBody::Full(Some(body)))
        .unwrap_or_else(|_| internal())
}

fn json_response(status: StatusCode, v: &Value) -> Response<ApiBody> {
    bytes_response(status, Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
}

fn object_response(status: StatusCode, obj: &Obj) -> Response<ApiBody> {
    bytes_response(status, obj.bytes.clone())
}

fn error(e: &ApiError) -> Response<ApiBody> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_json())
}

async fn read_body<B>(req: Request<B>) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "the request body is too large",
        )),
        Err(e) => Err(ApiError::bad_request(format!("reading the request body: {e}"))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// `resourceVersion`: None for "" and "0" (the current state).
fn resource_version(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: {v:?}"))),
    }
}

fn number(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    q.get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("{key}: Invalid value: {v:?}")))
        })
        .transpose()
}

async fn serve<B>(shared: &Shared, req: Request<B>, t: Target) -> Result<Response<ApiBody>, ApiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let d = def(t.rid);
    let q = query(req.uri().query());
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let method = req.method().clone();
    let verb = match (&method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        _ => return Err(ApiError::method_not_allowed(method.as_str())),
    };
    {
        let st = shared.lock();
        if st.not_served.contains(&t.rid) {
            return Err(ApiError::no_such_resource());
        }
        if st.is_forbidden(verb, d.plural, t.sub.as_deref()) {
            return Err(ApiError::forbidden(
                &shared.user,
                verb,
                d,
                t.sub.as_deref(),
                t.namespace.as_deref(),
                t.name.as_deref(),
            ));
        }
    }
    let name = t.name.as_deref().unwrap_or_default();
    let addr = Addr {
        rid: t.rid,
        namespace: t.namespace.as_deref(),
        name,
        status: t.sub.is_some(),
    };
    let key = || (t.namespace.clone().unwrap_or_default(), name.to_owned());
    match verb {
        "get" => {
            let obj = shared.lock().store.get(t.rid, &key());
            let obj = obj.ok_or_else(|| ApiError::not_found(d, name))?;
            Ok(object_response(StatusCode::OK, &obj))
        }
        "list" => {
            let filter = filter(&t, &q)?;
            let limit = number(&q, "limit")?.filter(|l| *l > 0).map(|l| l as usize);
            let cont = q.get("continue").map(String::as_str).filter(|c| !c.is_empty());
            let rv = resource_version(&q)?;
            let page = {
                let st = shared.lock();
                if let Some(rv) = rv {
                    if q.get("resourceVersionMatch").map(String::as_str) == Some("Exact")
                        && st.store.is_compacted(t.rid, rv)
                    {
                        return Err(ApiError::too_old(rv, st.store.rv()));
                    }
                }
                st.store.list(t.rid, &filter, limit, cont)?
            };
            let mut meta = json!({ "resourceVersion": page.rv.to_string() });
            if let Some(c) = page.continue_ {
                meta["continue"] = json!(c);
            }
            let head = format!(
                "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
                d.kind,
                d.api_version(),
                meta
            );
            let size = head.len() + page.items.iter().map(|o| o.bytes.len() + 1).sum::<usize>() + 2;
            let mut body = BytesMut::with_capacity(size);
            body.put_slice(head.as_bytes());
            for (i, o) in page.items.iter().enumerate() {
                if i > 0 {
                    body.put_u8(b',');
                }
                body.put_slice(&o.bytes);
            }
            body.put_slice(b"]}");
            Ok(bytes_response(StatusCode::OK, body.freeze()))
        }
        "watch" => {
            let filter = filter(&t, &q)?;
            let from = resource_version(&q)?;
            let timeout = number(&q, "timeoutSeconds")?.filter(|s| *s > 0);
            let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
            let initial = q.get("sendInitialEvents").map(String::as_str) == Some("true");
            let rx = shared.lock().store.watch(
                t.rid,
                filter,
                if initial { None } else { from },
                bookmarks,
                initial && bookmarks,
            );
            let deadline = timeout.map(|s| tokio::time::sleep(Duration::from_secs(s)));
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(ApiBody::Watch(WatchBody::new(rx, deadline)))
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
        }
        "create" => {
            let body = parse_json(&read_body(req).await?)?;
            let obj = writes::create(&mut shared.lock().store, t.rid, t.namespace.as_deref(), body)?;
            Ok(object_response(StatusCode::CREATED, &obj))
        }
        "update" => {
            let body = parse_json(&read_body(req).await?)?;
            let obj = writes::replace(&mut shared.lock().store, &addr, body)?;
            Ok(object_response(StatusCode::OK, &obj))
        }
        "patch" => {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = read_body(req).await?;
            let (obj, created) = writes::patch(&mut shared.lock().store, &addr, &ct, &body)?;
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(object_response(status, &obj))
        }
        _ => {
            let obj = writes::delete(&mut shared.lock().store, &addr)?;
            Ok(object_response(StatusCode::OK, &obj))
        }
    }
}

fn filter(t: &Target, q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    Filter::new(
        def(t.rid),
        t.namespace.clone(),
        q.get("fieldSelector").map(String::as_str),
        q.get("labelSelector").map(String::as_str),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))
}
