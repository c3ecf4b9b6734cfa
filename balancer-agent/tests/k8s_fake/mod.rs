//! A faked Kubernetes API server behind `kube::Client`, in kube's
//! `tower_test::mock` style: lists, watches (with a resourceVersion log so a
//! resumed watch replays what it missed), 410 Gone to force a relist, an
//! outage, 403/404 per resource, a record of the Events posted, Leases
//! (get, create, update with resourceVersion conflicts), Secrets (get) and
//! the GRPCRoute, Gateway and GatewayClass `status` subresources (get,
//! merge patch, update), with every write
//! recorded under the name of the client that made it.
#![allow(dead_code, reason = "shared by several test crates, each using a part of it")]

pub mod run;

use std::{
    collections::{BTreeMap, HashSet},
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use serde_json::{json, Value};

pub type Body = UnsyncBoxBody<Bytes, io::Error>;
type Chunk = Result<Frame<Bytes>, io::Error>;

struct Watch {
    resource: &'static str,
    node: Option<String>,
    tx: mpsc::UnboundedSender<Chunk>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace/name) → object.
    objects: BTreeMap<(&'static str, String), Value>,
    /// (rv, resource, event type, object): what a resumed watch replays.
    log: Vec<(u64, &'static str, &'static str, Value)>,
    /// Watches from an older resourceVersion get 410 Gone.
    compacted: u64,
    watches: Vec<Watch>,
    down: bool,
    forbidden: HashSet<&'static str>,
    not_found: HashSet<&'static str>,
    requests: Vec<String>,
    events: Vec<Value>,
    writes: Vec<Write>,
    /// Resources whose next write is answered 409 Conflict.
    conflict_next: HashSet<&'static str>,
}

/// A write (POST, PUT, PATCH) the fake accepted or refused.
#[derive(Debug, Clone)]
pub struct Write {
    /// The name given to [`FakeApi::client_named`].
    pub client: String,
    pub method: String,
    pub path: String,
    pub body: Value,
    /// The HTTP status answered.
    pub code: u16,
}

#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>);

fn resource_of(path: &str) -> Option<&'static str> {
    Some(match path {
        "/api/v1/services" => "services",
        "/api/v1/pods" => "pods",
        "/api/v1/namespaces" => "namespaces",
        "/api/v1/nodes" => "nodes",
        "/apis/discovery.k8s.io/v1/endpointslices" => "endpointslices",
        "/apis/gateway.networking.k8s.io/v1/grpcroutes" => "grpcroutes",
        "/apis/gateway.networking.k8s.io/v1/gateways" => "gateways",
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses" => "gatewayclasses",
        "/apis/networking.istio.io/v1/virtualservices" => "virtualservices",
        "/apis/networking.istio.io/v1/destinationrules" => "destinationrules",
        _ => return None,
    })
}

fn resource_of_kind(kind: &str) -> &'static str {
    match kind {
        "Service" => "services",
        "Pod" => "pods",
        "Namespace" => "namespaces",
        "Node" => "nodes",
        "EndpointSlice" => "endpointslices",
        "GRPCRoute" => "grpcroutes",
        "Gateway" => "gateways",
        "GatewayClass" => "gatewayclasses",
        "Secret" => "secrets",
        "VirtualService" => "virtualservices",
        "DestinationRule" => "destinationrules",
        "Lease" => "leases",
        other => panic!("the fake API server does not serve {other}"),
    }
}

fn key_of(obj: &Value) -> String {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().expect("objects have a name");
    format!("{ns}/{name}")
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 query")
}

fn query(req: &Request<kube::client::Body>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect()
}

/// Whether `obj` passes the field selector `selector` (`spec.nodeName=N`
/// for pods, `metadata.name=N` for any resource).
fn on_node(resource: &str, selector: Option<&str>, obj: &Value) -> bool {
    let Some((field, value)) = selector.and_then(|s| s.split_once('=')) else {
        return true;
    };
    match field {
        "spec.nodeName" if resource == "pods" => obj["spec"]["nodeName"].as_str() == Some(value),
        "metadata.name" => obj["metadata"]["name"].as_str() == Some(value),
        _ => true,
    }
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(&body).expect("json"));
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(bytes).map_err(|never| match never {}).boxed_unsync())
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "code": code, "reason": reason, "message": message })
}

fn line(v: &Value) -> Chunk {
    let mut bytes = serde_json::to_vec(v).expect("json");
    bytes.push(b'\n');
    Ok(Frame::data(Bytes::from(bytes)))
}

impl FakeApi {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().expect("fake API state")
    }

    /// A `kube::Client` whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        self.client_named("client")
    }

    /// A client whose writes are recorded under `name`.
    pub fn client_named(&self, name: &str) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let fake = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let fake = fake.clone();
                let name = name.clone();
                tokio::spawn(async move { send.send_response(fake.serve(req, &name).await) });
            }
        });
        kube::Client::new(svc, "default")
    }

    async fn serve(&self, req: Request<kube::client::Body>, client: &str) -> Response<Body> {
        let q = query(&req);
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        self.state().requests.push(format!("{method} {}", req.uri()));
        if self.state().down {
            return full(
                StatusCode::SERVICE_UNAVAILABLE,
                status(503, "ServiceUnavailable", "down"),
            );
        }
        if path.starts_with("/apis/events.k8s.io/v1/namespaces/") {
            let body = req.into_body().collect().await.expect("request body").to_bytes();
            let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            self.state().events.push(event.clone());
            return full(StatusCode::CREATED, event);
        }
        if let Some(target) = Target::parse(&path) {
            let body = req.into_body().collect().await.expect("request body").to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let res = self.serve_object(&method, &target, &body);
            if method != Method::GET {
                self.state().writes.push(Write {
                    client: client.to_owned(),
                    method: method.to_string(),
                    path: path.clone(),
                    body,
                    code: res.status().as_u16(),
                });
            }
            return res;
        }
        let Some(resource) = resource_of(&path).filter(|_| method == Method::GET) else {
            return full(StatusCode::NOT_FOUND, status(404, "NotFound", "no such path"));
        };
        let mut st = self.state();
        let verb = if q.get("watch").map(String::as_str) == Some("true") {
            "watch"
        } else {
            "list"
        };
        if st.forbidden.contains(resource) {
            let msg = format!("{resource} is forbidden: User \"system:serviceaccount:balancer:agent\" cannot {verb} resource \"{resource}\" at the cluster scope");
            return full(StatusCode::FORBIDDEN, status(403, "Forbidden", &msg));
        }
        if st.not_found.contains(resource) {
            return full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", "the server could not find the requested resource"),
            );
        }
        let node = q.get("fieldSelector").cloned();
        if verb == "list" {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((r, _), o)| *r == resource && on_node(resource, node.as_deref(), o))
                .map(|(_, o)| o.clone())
                .collect();
            let list = json!({ "apiVersion": "v1", "kind": "List",
                               "metadata": { "resourceVersion": st.rv.to_string() },
                               "items": items });
            return full(StatusCode::OK, list);
        }
        let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (tx, rx) = mpsc::unbounded();
        if from < st.compacted {
            let _ = tx.unbounded_send(line(&json!({ "type": "ERROR",
                "object": status(410, "Expired", "too old resource version") })));
        } else {
            for (rv, r, ty, obj) in &st.log {
                if *rv > from && *r == resource && on_node(resource, node.as_deref(), obj) {
                    let _ = tx.unbounded_send(line(&json!({ "type": ty, "object": obj })));
                }
            }
            st.watches.push(Watch { resource, node, tx });
        }
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(rx).boxed_unsync())
            .expect("response")
    }

    /// Leases and the GRPCRoute status subresource.
    fn serve_object(&self, method: &Method, target: &Target, body: &Value) -> Response<Body> {
        let forbidden_as = match (target.status, target.resource) {
            (true, "gateways") => "gateways/status",
            (true, "gatewayclasses") => "gatewayclasses/status",
            (true, _) => "grpcroutes/status",
            (false, resource) => resource,
        };
        let verb = match *method {
            Method::GET => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            _ => "do",
        };
        {
            let mut st = self.state();
            if st.forbidden.contains(forbidden_as) {
                let msg = format!("{forbidden_as} is forbidden: User \"system:serviceaccount:balancer:agent\" cannot {verb} resource \"{forbidden_as}\" in the namespace \"{}\"", target.namespace);
                return full(StatusCode::FORBIDDEN, status(403, "Forbidden", &msg));
            }
            if *method != Method::GET && st.conflict_next.remove(forbidden_as) {
                return full(
                    StatusCode::CONFLICT,
                    status(409, "Conflict", "the object has been modified"),
                );
            }
        }
        let name = match (&target.name, method) {
            (Some(n), _) => n.clone(),
            (None, &Method::POST) => body["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            (None, _) => return full(StatusCode::NOT_FOUND, status(404, "NotFound", "no such path")),
        };
        let key = (target.resource, format!("{}/{name}", target.namespace));
        let existing = self.state().objects.get(&key).cloned();
        let not_found = || {
            full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", &format!("{name} not found")),
            )
        };
        let conflict = || {
            full(
                StatusCode::CONFLICT,
                status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version",
                ),
            )
        };
        let stale = |existing: &Value| {
            let sent = &body["metadata"]["resourceVersion"];
            !sent.is_null() && *sent != existing["metadata"]["resourceVersion"]
        };
        match (method, existing) {
            (&Method::GET, Some(obj)) => full(StatusCode::OK, obj),
            (&Method::GET, None) => not_found(),
            (&Method::POST, Some(_)) => full(
                StatusCode::CONFLICT,
                status(409, "AlreadyExists", &format!("{name} already exists")),
            ),
            (&Method::POST, None) if !target.status => {
                let mut obj = body.clone();
                obj["metadata"]["namespace"] = json!(target.namespace);
                obj["kind"] = json!(target.kind);
                self.record("ADDED", obj, false);
                full(
                    StatusCode::CREATED,
                    self.object(target.resource, &key.1).expect("created"),
                )
            }
            (&Method::PUT | &Method::PATCH, None) => not_found(),
            (&Method::PUT | &Method::PATCH, Some(existing)) if stale(&existing) => conflict(),
            (&Method::PUT, Some(existing)) => {
                let obj = if target.status {
                    let mut obj = existing;
                    obj["status"] = body["status"].clone();
                    obj
                } else {
                    let mut obj = body.clone();
                    obj["kind"] = json!(target.kind);
                    obj["metadata"]["uid"] = existing["metadata"]["uid"].clone();
                    obj
                };
                self.record("MODIFIED", obj, false);
                full(StatusCode::OK, self.object(target.resource, &key.1).expect("updated"))
            }
            (&Method::PATCH, Some(mut obj)) if target.status => {
                merge(&mut obj["status"], &body["status"]);
                self.record("MODIFIED", obj, false);
                full(StatusCode::OK, self.object(target.resource, &key.1).expect("patched"))
            }
            _ => full(
                StatusCode::METHOD_NOT_ALLOWED,
                status(405, "MethodNotAllowed", "not served by the fake"),
            ),
        }
    }

    fn record(&self, ty: &'static str, mut obj: Value, silently: bool) {
        let mut st = self.state();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        let resource = resource_of_kind(obj["kind"].as_str().expect("objects have a kind"));
        let key = (resource, key_of(&obj));
        if ty == "DELETED" {
            st.objects.remove(&key);
        } else {
            st.objects.insert(key, obj.clone());
        }
        if silently {
            return;
        }
        st.log.push((rv, resource, ty, obj.clone()));
        let msg = json!({ "type": ty, "object": obj });
        st.watches.retain(|w| {
            if w.resource != resource || !on_node(resource, w.node.as_deref(), &obj) {
                return !w.tx.is_closed();
            }
            w.tx.unbounded_send(line(&msg)).is_ok()
        });
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers). As
    /// the API server does, `metadata.generation` counts spec changes, and
    /// an object given without `status` keeps the one it had.
    pub fn apply(&self, mut obj: Value) {
        let resource = resource_of_kind(obj["kind"].as_str().expect("kind"));
        let existing = self.state().objects.get(&(resource, key_of(&obj))).cloned();
        let generation = match &existing {
            Some(e) if e["spec"] == obj["spec"] => e["metadata"]["generation"].as_i64().unwrap_or(1),
            Some(e) => e["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => obj["metadata"]["generation"].as_i64().unwrap_or(1),
        };
        obj["metadata"]["generation"] = json!(generation);
        if let Some(e) = &existing {
            if obj["status"].is_null() && !e["status"].is_null() {
                obj["status"] = e["status"].clone();
            }
        }
        self.record(if existing.is_some() { "MODIFIED" } else { "ADDED" }, obj, false);
    }

    /// The stored object `namespace/name` of `resource` (`"grpcroutes"`,
    /// `"leases"`, ...).
    pub fn object(&self, resource: &str, key: &str) -> Option<Value> {
        self.state()
            .objects
            .iter()
            .find(|((r, k), _)| *r == resource && k == key)
            .map(|(_, o)| o.clone())
    }

    /// The next write (create, update, patch) to `resource` (`"leases"`,
    /// `"grpcroutes/status"`) gets 409 Conflict, as if another client had
    /// written first.
    pub fn conflict_next(&self, resource: &'static str) {
        self.state().conflict_next.insert(resource);
    }

    /// Every write to a Lease or a GRPCRoute's status, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.state().writes.clone()
    }

    /// The accepted writes to GRPCRoute status.
    pub fn status_writes(&self) -> Vec<Write> {
        self.writes()
            .into_iter()
            .filter(|w| w.path.ends_with("/status") && w.code < 300)
            .collect()
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, obj: Value) {
        self.record("DELETED", obj, false);
    }

    /// Changes the state with no watch event: only a relist sees it.
    pub fn apply_unseen(&self, obj: Value) {
        self.record("MODIFIED", obj, true);
    }

    pub fn delete_unseen(&self, obj: Value) {
        self.record("DELETED", obj, true);
    }

    /// Every open watch gets `410 Gone` and every older resourceVersion is
    /// compacted: watchers must relist.
    pub fn expire(&self) {
        let mut st = self.state();
        st.compacted = st.rv + 1;
        let msg = json!({ "type": "ERROR", "object": status(410, "Expired", "too old resource version") });
        for w in st.watches.drain(..) {
            let _ = w.tx.unbounded_send(line(&msg));
        }
    }

    /// The API server goes away: open watches break, requests get 503
    /// until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        let mut st = self.state();
        st.down = down;
        if down {
            for w in st.watches.drain(..) {
                let _ =
                    w.tx.unbounded_send(Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone")));
            }
        }
    }

    /// 403 for `resource`: a watched resource, `"leases"` or
    /// `"grpcroutes/status"`.
    pub fn forbid(&self, resource: &'static str) {
        self.state().forbidden.insert(resource);
    }

    pub fn allow(&self, resource: &'static str) {
        self.state().forbidden.remove(resource);
    }

    pub fn not_installed(&self, resource: &'static str) {
        self.state().not_found.insert(resource);
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }
}

/// A namespaced object path the fake serves beyond lists and watches.
struct Target {
    resource: &'static str,
    kind: &'static str,
    namespace: String,
    name: Option<String>,
    /// The `status` subresource.
    status: bool,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (resource, kind, rest) = match parts.as_slice() {
            ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", rest @ ..] => {
                ("leases", "Lease", (ns, rest))
            }
            ["apis", "gateway.networking.k8s.io", "v1", "namespaces", ns, "grpcroutes", rest @ ..] => {
                ("grpcroutes", "GRPCRoute", (ns, rest))
            }
            ["apis", "gateway.networking.k8s.io", "v1", "namespaces", ns, "gateways", rest @ ..] => {
                ("gateways", "Gateway", (ns, rest))
            }
            // Cluster-scoped: no namespace.
            ["apis", "gateway.networking.k8s.io", "v1", "gatewayclasses", rest @ ..] => {
                ("gatewayclasses", "GatewayClass", (&"", rest))
            }
            ["api", "v1", "namespaces", ns, "secrets", rest @ ..] => ("secrets", "Secret", (ns, rest)),
            _ => return None,
        };
        let (namespace, rest) = rest;
        let (name, status) = match (resource, rest) {
            ("leases", []) => (None, false),
            ("leases", [name]) => (Some(*name), false),
            ("grpcroutes" | "gateways" | "gatewayclasses", [name, "status"]) => (Some(*name), true),
            ("secrets", [name]) => (Some(*name), false),
            _ => return None,
        };
        Some(Target {
            resource,
            kind,
            namespace: (*namespace).to_owned(),
            name: name.map(str::to_owned),
            status,
        })
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("an object");
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
