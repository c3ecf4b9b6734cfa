//! A fake Kubernetes API server in its own process, for tests of the
//! agent's Kubernetes mode: `balancer-fake-apiserver` speaks HTTP/1.1 like
//! kube-apiserver, and [`FakeApiServer`] starts it (optionally inside a
//! test network namespace), writes a kubeconfig for it, and drives it over
//! the process's stdin/stdout, so that the test needs no route to it.
//!
//! ```no_run
//! use balancer_tests::apiserver::{FakeApiServer, FakeApiOptions};
//! use serde_json::json;
//!
//! let api = FakeApiServer::start(&FakeApiOptions::default()).expect("fake API server");
//! api.apply(json!({"apiVersion": "v1", "kind": "Service",
//!                  "metadata": {"namespace": "demo", "name": "greeter"},
//!                  "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "grpc", "port": 50051}]}}))
//!     .unwrap();
//! // The agent (or `kube::Client::try_default()`) reads this file:
//! let mut agent = std::process::Command::new("balancer-agent");
//! agent.env("KUBECONFIG", api.kubeconfig());
//! // Later: api.delete("services", Some("demo"), "greeter"), api.compact(),
//! // api.close_watches(), api.requests(), api.events() ...
//! ```
//!
//! For an agent in a network namespace, pass it to [`FakeApiServer::spawn`]:
//! the server then listens on that namespace's loopback (or
//! [`FakeApiOptions::listen`]) and the kubeconfig names that address.
//!
//! # What the HTTP side serves
//!
//! Resources: `services`, `pods`, `namespaces`, `nodes` (core `v1`),
//! `endpointslices` (`discovery.k8s.io/v1`), `grpcroutes`, `gateways` and
//! `gatewayclasses` (`gateway.networking.k8s.io/v1`, with a `status`
//! subresource), `events`
//! (`events.k8s.io/v1`) and `leases` (`coordination.k8s.io/v1`); every verb
//! on each (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`),
//! cluster-wide and per namespace, as kube-apiserver does:
//!
//! * list: a `<Kind>List` with `metadata.resourceVersion`; `limit` and
//!   `continue` page (the pages of one list report its first page's
//!   resourceVersion; a continue token from before a compaction is 410);
//!   `fieldSelector` (`metadata.name`, `metadata.namespace`, and per
//!   resource the fields a real server accepts, e.g. `spec.nodeName` for
//!   pods; others are 400) and `labelSelector` (`=`, `==`, `!=`, `in`,
//!   `notin`, `k`, `!k`).
//! * watch (`watch=true|1`): newline-delimited WatchEvents over a chunked
//!   response. From `resourceVersion` R the changes after R are replayed
//!   first; from none or `0`, ADDED for every current object; R older than
//!   the last compaction gets one ERROR event (Status code 410, reason
//!   Expired) and the end of the response, so kube's watcher relists.
//!   Objects that start or stop matching a selector arrive as ADDED and
//!   DELETED. `allowWatchBookmarks=true` brings BOOKMARK events every
//!   bookmark interval; `sendInitialEvents=true` ends the initial events
//!   with the `k8s.io/initial-events-end` bookmark; `timeoutSeconds` ends
//!   the response.
//! * create: 201, or 409 AlreadyExists; `generateName` works. update: 404
//!   if absent, 409 Conflict if the body's resourceVersion is stale (none:
//!   unconditional). patch: `merge-patch+json`, `strategic-merge-patch+json`
//!   and `apply-patch+yaml` (JSON bodies) as JSON merge patches (apply
//!   creates a missing object), `json-patch+json` as RFC 6902; a
//!   resourceVersion in a merge patch is a precondition (409).
//! * `status` subresource (services, pods, namespaces, nodes, grpcroutes,
//!   gateways, gatewayclasses):
//!   GET, PUT and PATCH on `.../{name}/status` change only the status, and
//!   are counted ([`FakeApiServer::status_writes`]); writes to the object
//!   itself keep its status, and create drops it.
//! * Errors are `Status` objects: 404 NotFound for unknown paths and
//!   objects, 400 BadRequest for bad input, 403 Forbidden worded like RBAC
//!   for forbidden (verb, resource) pairs. While the server is down
//!   (`unavailable`) every connection is closed unanswered. `/version`
//!   and `/healthz` answer too. Server-side: uid, generation (bumped when
//!   `spec` changes) and resourceVersion (one counter for all resources).
//!
//! # The control protocol
//!
//! The process prints `LISTENING <addr>` once, then answers each JSON line
//! on stdin with one JSON line on stdout: `{"ok": true, ...}` or
//! `{"ok": false, "error": "..."}`. It exits when stdin closes. Commands
//! (`{"cmd": NAME, ...}`); `resource` is a plural, `plural.group` or kind:
//!
//! | cmd | fields | reply |
//! |-----|--------|-------|
//! | `apply` | `object` | `type` (ADDED/MODIFIED), `resource_version`, `object` |
//! | `apply_all` | `objects` (array) or `path` (JSON lines file) | `applied`, `resource_version` |
//! | `delete` | `resource`, `namespace`, `name` | `deleted` (bool) |
//! | `get` | `resource`, `namespace`, `name` | `object` (or null), `status_writes` |
//! | `list` | `resource`, `namespace` (optional) | `items` |
//! | `events` | | `events`: events.k8s.io Events, oldest first |
//! | `forbid` / `allow` | `verb` (or `*`), `resource` (`plural[/status]`) | |
//! | `serve` | `resource`, `served` (false: 404, a missing CRD) | |
//! | `compact` | | `resource_version`: the oldest still valid |
//! | `close_watches` | `abort` (bool: break connections) | `closed` |
//! | `bookmark` | | (a BOOKMARK on every watch that allows them) |
//! | `watches` | | `watches`: open watches per resource |
//! | `requests` | `since` (index) | `requests` (`METHOD path?query`), `next` |
//! | `clear_requests` | | |
//! | `unavailable` | `on` (connections closed unanswered; watches broken) | |
//! | `info` | | `resource_version`, `objects` per resource |
//!
//! Objects given to `apply` keep what they carry (uid, generation, status);
//! the server sets the resourceVersion, and a uid and generation 1 when
//! missing.

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{
        mpsc::{Receiver, RecvTimeoutError},
        Mutex,
    },
    time::Duration,
};

use serde_json::{json, Value};

use crate::{netns::NetNs, process::ChildGuard};

/// The binary's name.
pub const BIN: &str = "balancer-fake-apiserver";

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("starting {BIN}")]
    Spawn(#[source] io::Error),
    #[error("{BIN} failed to start: {0}")]
    Failed(String),
    #[error("talking to {BIN}")]
    Io(#[source] io::Error),
    #[error("{BIN} did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{BIN} exited")]
    Exited,
    #[error("{BIN} answered {line:?}")]
    Reply { line: String },
    #[error("{BIN} refused the command: {0}")]
    Command(String),
    #[error("writing the kubeconfig")]
    Kubeconfig(#[source] io::Error),
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct FakeApiOptions {
    /// The binary (default: next to the running test, see
    /// [`crate::bin_path`]).
    pub bin: Option<PathBuf>,
    /// Where to listen (in the network namespace, if any).
    pub listen: SocketAddr,
    /// Time between BOOKMARK events (None: only [`FakeApiServer::bookmark`]).
    pub bookmark_interval: Option<Duration>,
    /// Changes kept per resource for resumed watches (None: all until
    /// [`FakeApiServer::compact`]).
    pub history: Option<usize>,
    /// The kubeconfig context's namespace.
    pub namespace: String,
    /// The user 403 messages name.
    pub user: Option<String>,
}

impl Default for FakeApiOptions {
    fn default() -> Self {
        FakeApiOptions {
            bin: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Some(Duration::from_secs(1)),
            history: None,
            namespace: "default".to_owned(),
            user: None,
        }
    }
}

/// The reply to [`FakeApiServer::apply`].
#[derive(Debug, Clone)]
pub struct Applied {
    /// True for ADDED, false for MODIFIED.
    pub added: bool,
    pub resource_version: u64,
    /// The object as stored.
    pub object: Value,
}

struct Control {
    stdin: ChildStdin,
    lines: Receiver<String>,
}

/// A running `balancer-fake-apiserver`; killed on drop (and it exits by
/// itself when this process goes away and its stdin closes).
///
/// Every method sends one command and waits for its reply (a few
/// milliseconds; the server never waits on its HTTP clients), so they are
/// fine to call from async tests too.
pub struct FakeApiServer {
    // Killed before the kubeconfig goes.
    process: ChildGuard,
    control: Mutex<Control>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeApiServer {
    /// Starts the server in this process's network namespace.
    pub fn start(opts: &FakeApiOptions) -> Result<FakeApiServer, ApiServerError> {
        FakeApiServer::spawn(opts, None)
    }

    /// Starts the server, inside `netns` if given, and waits until it
    /// listens.
    pub fn spawn(opts: &FakeApiOptions, netns: Option<&NetNs>) -> Result<FakeApiServer, ApiServerError> {
        let bin = opts.bin.clone().unwrap_or_else(|| crate::bin_path(BIN));
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(opts.listen.to_string())
            .arg("--bookmark-interval-ms")
            .arg(opts.bookmark_interval.map_or(0, |d| d.as_millis().max(1)).to_string())
            .arg("--history")
            .arg(opts.history.unwrap_or(0).to_string());
        if let Some(user) = &opts.user {
            cmd.arg("--user").arg(user);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if netns.is_some() {
            crate::process::place(&mut cmd, netns, None).map_err(ApiServerError::Spawn)?;
        }
        let mut child = cmd.spawn().map_err(ApiServerError::Spawn)?;
        let stdin = child.stdin.take().ok_or(ApiServerError::Exited)?;
        let stdout = child.stdout.take().ok_or(ApiServerError::Exited)?;
        let process = ChildGuard::new(child);
        let lines = crate::process::lines(stdout);
        let first = recv(&lines, Duration::from_secs(30))?;
        let addr = match first.split_once(' ') {
            Some(("LISTENING", a)) => a.parse().map_err(|_| ApiServerError::Reply { line: first.clone() })?,
            Some(("FAILED", e)) => return Err(ApiServerError::Failed(e.to_owned())),
            _ => return Err(ApiServerError::Reply { line: first }),
        };
        let dir = tempfile::Builder::new()
            .prefix("balancer-fake-apiserver")
            .tempdir()
            .map_err(ApiServerError::Kubeconfig)?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(addr, &opts.namespace)).map_err(ApiServerError::Kubeconfig)?;
        Ok(FakeApiServer {
            process,
            control: Mutex::new(Control { stdin, lines }),
            addr,
            kubeconfig,
            _dir: dir,
        })
    }

    /// The address it listens on (in its network namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig naming the server (no credentials); set `KUBECONFIG`
    /// to it.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends a raw control command and returns its reply (an error if the
    /// server refused it).
    pub fn command(&self, cmd: &Value) -> Result<Value, ApiServerError> {
        self.command_timeout(cmd, Duration::from_secs(30))
    }

    fn command_timeout(&self, cmd: &Value, timeout: Duration) -> Result<Value, ApiServerError> {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        // A reply left over from a command that timed out is stale.
        while c.lines.try_recv().is_ok() {}
        let mut line = serde_json::to_vec(cmd).map_err(|e| ApiServerError::Io(e.into()))?;
        line.push(b'\n');
        c.stdin
            .write_all(&line)
            .and_then(|()| c.stdin.flush())
            .map_err(ApiServerError::Io)?;
        let reply = recv(&c.lines, timeout)?;
        let v: Value = serde_json::from_str(&reply).map_err(|_| ApiServerError::Reply { line: reply.clone() })?;
        if v["ok"] == json!(true) {
            Ok(v)
        } else {
            Err(ApiServerError::Command(
                v["error"].as_str().unwrap_or("no error message").to_owned(),
            ))
        }
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watches).
    pub fn apply(&self, object: Value) -> Result<Applied, ApiServerError> {
        let r = self.command(&json!({ "cmd": "apply", "object": object }))?;
        Ok(Applied {
            added: r["type"] == "ADDED",
            resource_version: r["resource_version"].as_u64().unwrap_or_default(),
            object: r["object"].clone(),
        })
    }

    /// Applies many objects in one command (validated first: all or none).
    /// Returns how many.
    pub fn apply_all(&self, objects: Vec<Value>) -> Result<usize, ApiServerError> {
        let r = self.command_timeout(
            &json!({ "cmd": "apply_all", "objects": objects }),
            Duration::from_secs(300),
        )?;
        Ok(r["applied"].as_u64().unwrap_or_default() as usize)
    }

    /// Applies the objects of a JSON-lines file (one object a line), read by
    /// the server. Returns how many.
    pub fn apply_file(&self, path: &Path) -> Result<usize, ApiServerError> {
        let r = self.command_timeout(&json!({ "cmd": "apply_all", "path": path }), Duration::from_secs(300))?;
        Ok(r["applied"].as_u64().unwrap_or_default() as usize)
    }

    /// Deletes an object (DELETED to watches); false if there was none.
    pub fn delete(&self, resource: &str, namespace: Option<&str>, name: &str) -> Result<bool, ApiServerError> {
        let r =
            self.command(&json!({ "cmd": "delete", "resource": resource, "namespace": namespace, "name": name }))?;
        Ok(r["deleted"] == json!(true))
    }

    /// The stored object, if any.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Result<Option<Value>, ApiServerError> {
        let r = self.command(&json!({ "cmd": "get", "resource": resource, "namespace": namespace, "name": name }))?;
        Ok(Some(r["object"].clone()).filter(|o| !o.is_null()))
    }

    /// How many writes to the object's `status` subresource the server
    /// took.
    pub fn status_writes(&self, resource: &str, namespace: Option<&str>, name: &str) -> Result<u64, ApiServerError> {
        let r = self.command(&json!({ "cmd": "get", "resource": resource, "namespace": namespace, "name": name }))?;
        Ok(r["status_writes"].as_u64().unwrap_or_default())
    }

    /// Every stored object of a resource (in a namespace).
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Result<Vec<Value>, ApiServerError> {
        let r = self.command(&json!({ "cmd": "list", "resource": resource, "namespace": namespace }))?;
        Ok(r["items"].as_array().cloned().unwrap_or_default())
    }

    /// The events.k8s.io Events clients wrote, oldest first.
    pub fn events(&self) -> Result<Vec<Value>, ApiServerError> {
        let r = self.command(&json!({ "cmd": "events" }))?;
        Ok(r["events"].as_array().cloned().unwrap_or_default())
    }

    /// Makes `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`, or `*`) on `resource` (`services`, `grpcroutes/status`...)
    /// answer 403 Forbidden.
    pub fn forbid(&self, verb: &str, resource: &str) -> Result<(), ApiServerError> {
        self.command(&json!({ "cmd": "forbid", "verb": verb, "resource": resource }))
            .map(drop)
    }

    /// Undoes [`FakeApiServer::forbid`].
    pub fn allow(&self, verb: &str, resource: &str) -> Result<(), ApiServerError> {
        self.command(&json!({ "cmd": "allow", "verb": verb, "resource": resource }))
            .map(drop)
    }

    /// `served: false` makes every request for `resource` 404, as for a
    /// CRD that is not installed.
    pub fn set_served(&self, resource: &str, served: bool) -> Result<(), ApiServerError> {
        self.command(&json!({ "cmd": "serve", "resource": resource, "served": served }))
            .map(drop)
    }

    /// Compacts: every resourceVersion handed out so far becomes too old
    /// (watches from them get a 410 ERROR event, lists continued from them
    /// 410). Open watches go on. Returns the oldest valid resourceVersion.
    pub fn compact(&self) -> Result<u64, ApiServerError> {
        let r = self.command(&json!({ "cmd": "compact" }))?;
        Ok(r["resource_version"].as_u64().unwrap_or_default())
    }

    /// Ends every open watch response cleanly (as at its timeout); clients
    /// watch again from their last resourceVersion. Returns how many.
    pub fn close_watches(&self) -> Result<usize, ApiServerError> {
        let r = self.command(&json!({ "cmd": "close_watches", "abort": false }))?;
        Ok(r["closed"].as_u64().unwrap_or_default() as usize)
    }

    /// Breaks the connection of every open watch (a network failure).
    pub fn abort_watches(&self) -> Result<usize, ApiServerError> {
        let r = self.command(&json!({ "cmd": "close_watches", "abort": true }))?;
        Ok(r["closed"].as_u64().unwrap_or_default() as usize)
    }

    /// Sends a BOOKMARK now on every watch that allows them.
    pub fn bookmark(&self) -> Result<(), ApiServerError> {
        self.command(&json!({ "cmd": "bookmark" })).map(drop)
    }

    /// Open watches per resource (plural).
    pub fn watches(&self) -> Result<BTreeMap<String, usize>, ApiServerError> {
        let r = self.command(&json!({ "cmd": "watches" }))?;
        Ok(r["watches"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or_default() as usize))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Result<Vec<String>, ApiServerError> {
        let r = self.command(&json!({ "cmd": "requests" }))?;
        Ok(r["requests"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) -> Result<(), ApiServerError> {
        self.command(&json!({ "cmd": "clear_requests" })).map(drop)
    }

    /// An outage, as while kube-apiserver restarts: open watches break and
    /// every connection is closed without an answer (no 503, which kube's
    /// client would retry for minutes), until `set_unavailable(false)`. The
    /// objects stay.
    pub fn set_unavailable(&self, on: bool) -> Result<(), ApiServerError> {
        self.command(&json!({ "cmd": "unavailable", "on": on })).map(drop)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> Result<u64, ApiServerError> {
        let r = self.command(&json!({ "cmd": "info" }))?;
        Ok(r["resource_version"].as_u64().unwrap_or_default())
    }

    /// Kills the server and waits until it is gone.
    pub fn kill(&mut self) -> io::Result<()> {
        self.process.kill()
    }
}

fn recv(lines: &Receiver<String>, timeout: Duration) -> Result<String, ApiServerError> {
    match lines.recv_timeout(timeout) {
        Ok(l) => Ok(l),
        Err(RecvTimeoutError::Timeout) => Err(ApiServerError::Timeout(timeout)),
        Err(RecvTimeoutError::Disconnected) => Err(ApiServerError::Exited),
    }
}

/// A kubeconfig for `http://<addr>`, no credentials, default namespace
/// `namespace`.
pub fn kubeconfig_yaml(addr: SocketAddr, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{addr}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: {namespace}
current-context: fake
"
    )
}
