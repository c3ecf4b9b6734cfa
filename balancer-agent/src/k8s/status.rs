//! The status leader's writer: while this agent holds the Lease
//! ([`super::lease`]), it brings every GRPCRoute's `status.parents[]` to
//! what [`super::route_status`] computes from the latest translation.
//!
//! How it writes: a JSON merge patch of the `status` subresource carrying
//! the `resourceVersion` the status was computed from. `status.parents` is
//! an atomic list in the Gateway API CRDs (no list-map keys), so a merge
//! patch or a server-side apply of it replaces the whole list; the patch
//! therefore holds the other controllers' entries as read, and the
//! resourceVersion precondition makes the API server refuse it (409) if
//! anyone changed the route in between, rather than drop their entries. A
//! refused write is computed again from the route the watch brings next.
//!
//! It writes only what differs from the route's current status, so an
//! unchanged translation writes nothing. Failures are logged, once until the
//! next success, and never stop balancing: route status is best-effort. A
//! missing permission (403) pauses the writes for [`FORBIDDEN_PAUSE`]
//! rather than retrying at every recomputation.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteStatus, GrpcRouteStatusParents};
use k8s_openapi::{api::core::v1::Service, jiff::Timestamp};
use kube::{
    api::{Patch, PatchParams},
    runtime::events::Reporter,
    Api, ResourceExt,
};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::Instrument;

use super::{
    grpcroute::RouteError,
    lease::{Elector, LeaseOptions},
    report::RouteEvents,
    route_status::{self, CONTROLLER_NAME},
    translate::InvalidRoute,
};

/// The field manager of the status writes (in `managedFields`).
pub const FIELD_MANAGER: &str = "balancer-agent";
/// How long writes pause after a 403.
pub const FORBIDDEN_PAUSE: Duration = Duration::from_secs(60);

/// What the writer needs from one translation.
#[derive(Debug, Default)]
pub struct StatusInput {
    pub routes: Vec<Arc<GrpcRoute>>,
    pub services: Vec<Arc<Service>>,
    pub invalid: Vec<InvalidRoute>,
}

type Key = (String, String);

/// The election and the status writer of one agent: its Lease elector
/// and, fed by [`Election::offer`], the writer that acts while the elector
/// leads. Dropping it stops both without releasing the Lease.
pub struct Election {
    input: watch::Sender<Option<Arc<StatusInput>>>,
    gateways: watch::Sender<Option<Arc<super::gateway_status::Input>>>,
    gateway_writer: JoinHandle<()>,
    stop: watch::Sender<bool>,
    leading: watch::Receiver<bool>,
    elector: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Election {
    pub fn spawn(client: kube::Client, lease: LeaseOptions, reporter: Reporter) -> Election {
        let (leading_tx, leading) = watch::channel(false);
        let (stop, mut stopping) = watch::channel(false);
        let (input, inputs) = watch::channel(None);
        let (gateways, gateway_inputs) = watch::channel(None);
        let gateway_writer = tokio::spawn(
            super::gateway_status::run(client.clone(), leading.clone(), gateway_inputs)
                .instrument(tracing::info_span!("gateway_status")),
        );
        let elector = Elector::new(client.clone(), lease);
        let until_stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let elector = tokio::spawn(
            elector
                .run(leading_tx, until_stopped)
                .instrument(tracing::info_span!("election")),
        );
        let writer = StatusWriter::new(client.clone(), RouteEvents::new(client, reporter));
        let is_leading = leading.clone();
        let writer = tokio::spawn(
            writer
                .run(leading, inputs)
                .instrument(tracing::info_span!("route_status")),
        );
        Election {
            input,
            gateways,
            gateway_writer,
            stop,
            leading: is_leading,
            elector,
            writer,
        }
    }

    /// Whether this agent holds the Lease now.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// The latest translation; the writer works from the newest it has.
    pub fn offer(&self, input: StatusInput) {
        self.input.send_replace(Some(Arc::new(input)));
    }

    /// The latest Gateways and what their listeners got; only a change is
    /// passed on to the writer.
    pub fn offer_gateways(&self, input: super::gateway_status::Input) {
        self.gateways.send_if_modified(|cur| {
            if cur.as_deref() == Some(&input) {
                return false;
            }
            *cur = Some(Arc::new(input));
            true
        });
    }

    /// Stops writing and releases the Lease if this agent holds it, waiting
    /// at most `wait`.
    pub async fn stop(mut self, wait: Duration) {
        self.writer.abort();
        self.gateway_writer.abort();
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(wait, &mut self.elector).await;
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.writer.abort();
        self.gateway_writer.abort();
        self.elector.abort();
    }
}

fn key_of(route: &GrpcRoute) -> Key {
    (route.namespace().unwrap_or_default(), route.name_any())
}

/// Writes route status while leading.
pub struct StatusWriter {
    client: kube::Client,
    events: RouteEvents,
    /// Routes written, with the resourceVersion the write was based on:
    /// until the watch brings the route back changed, its stored status is
    /// older than what was written, and is not compared again.
    written: HashMap<Key, String>,
    /// A failure is logged once until the next successful write.
    failing: bool,
    /// After a 403: no writes until then.
    paused_until: Option<Instant>,
}

impl StatusWriter {
    pub fn new(client: kube::Client, events: RouteEvents) -> StatusWriter {
        StatusWriter {
            client,
            events,
            written: HashMap::new(),
            failing: false,
            paused_until: None,
        }
    }

    /// Syncs whenever the input or the leadership changes, while leading.
    /// Ends when either sender goes away.
    pub async fn run(
        mut self,
        mut leading: watch::Receiver<bool>,
        mut input: watch::Receiver<Option<Arc<StatusInput>>>,
    ) {
        loop {
            tokio::select! {
                changed = input.changed() => if changed.is_err() { return },
                changed = leading.changed() => if changed.is_err() { return },
            }
            if !*leading.borrow_and_update() {
                self.written.clear();
                continue;
            }
            let Some(current) = input.borrow_and_update().clone() else {
                continue;
            };
            self.sync(&current, &leading).await;
        }
    }

    /// Writes the status of every route in `input` that differs from what
    /// it should be; stops early if leadership is lost.
    pub async fn sync(&mut self, input: &StatusInput, leading: &watch::Receiver<bool>) {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.paused_until = None;
        let services: HashMap<Key, &Service> = input
            .services
            .iter()
            .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s.as_ref()))
            .collect();
        let lookup = |ns: &str, name: &str| services.get(&(ns.to_owned(), name.to_owned())).copied();
        let errors: HashMap<Key, &RouteError> = input
            .invalid
            .iter()
            .map(|i| (key_of(&i.route), i.error.as_ref()))
            .collect();
        let now = Timestamp::now();
        let mut seen = HashSet::with_capacity(input.routes.len());
        for route in &input.routes {
            let key = key_of(route);
            let rv = route.resource_version().unwrap_or_default();
            if self.written.get(&key) == Some(&rv) {
                seen.insert(key);
                continue;
            }
            let verdicts = route_status::parent_verdicts(route, errors.get(&key).copied(), lookup);
            if let Some(status) = route_status::desired_status(route, &verdicts, now) {
                if !*leading.borrow() || self.paused_until.is_some() {
                    return;
                }
                self.write(route, &key, rv, status).await;
            }
            seen.insert(key);
        }
        self.written.retain(|k, _| seen.contains(k));
    }

    async fn write(&mut self, route: &GrpcRoute, key: &Key, rv: String, status: GrpcRouteStatus) {
        let (namespace, name) = key;
        let grpcroute = format!("{namespace}/{name}");
        let api: Api<GrpcRoute> = Api::namespaced(self.client.clone(), namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = json!({ "metadata": { "resourceVersion": rv }, "status": status });
        match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!("GRPCRoute status writes work again");
                }
                let ours: Vec<&GrpcRouteStatusParents> = status
                    .parents
                    .iter()
                    .filter(|p| p.controller_name == CONTROLLER_NAME)
                    .collect();
                let summary: Vec<String> = ours.iter().map(|p| summarize(p)).collect();
                tracing::info!(%grpcroute, parents = ?summary, "GRPCRoute status written");
                let problems = new_problems(route, &ours);
                if !problems.is_empty() {
                    self.events
                        .warn(route, format!("not applied by balancer: {}", problems.join("; ")));
                }
                self.written.insert(key.clone(), rv);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(%grpcroute, "GRPCRoute changed meanwhile; its status is computed again");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::debug!(%grpcroute, "GRPCRoute gone before its status was written");
            }
            Err(e) => {
                let forbidden = matches!(&e, kube::Error::Api(s) if s.code == 403);
                if forbidden {
                    self.paused_until = Some(Instant::now() + FORBIDDEN_PAUSE);
                }
                if !self.failing {
                    self.failing = true;
                    if forbidden {
                        tracing::warn!(
                            %grpcroute,
                            error = %e,
                            "cannot write GRPCRoute status (RBAC: the ClusterRole needs get, patch and update on \
                             grpcroutes/status); balancing goes on, retrying in {}s",
                            FORBIDDEN_PAUSE.as_secs()
                        );
                    } else {
                        tracing::warn!(
                            %grpcroute,
                            error = %e,
                            "cannot write GRPCRoute status; balancing goes on, retrying at the next change"
                        );
                    }
                } else {
                    tracing::debug!(%grpcroute, error = %e, "GRPCRoute status still not written");
                }
            }
        }
    }
}

fn summarize(p: &GrpcRouteStatusParents) -> String {
    let conditions: Vec<String> = p
        .conditions
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect();
    format!("{}: {}", p.parent_ref.name, conditions.join(","))
}

/// The False conditions of `ours` that the route's status did not already
/// say (same type, reason and message): what deserves a Warning Event.
fn new_problems(route: &GrpcRoute, ours: &[&GrpcRouteStatusParents]) -> Vec<String> {
    let before: HashSet<(&str, &str, &str)> = route
        .status
        .iter()
        .flat_map(|s| s.parents.iter())
        .filter(|p| p.controller_name == CONTROLLER_NAME)
        .flat_map(|p| p.conditions.iter())
        .filter(|c| c.status == "False")
        .map(|c| (c.type_.as_str(), c.reason.as_str(), c.message.as_str()))
        .collect();
    let mut notes = Vec::new();
    for c in ours.iter().flat_map(|p| p.conditions.iter()) {
        if c.status != "False" || before.contains(&(c.type_.as_str(), c.reason.as_str(), c.message.as_str())) {
            continue;
        }
        let note = format!("{} ({}): {}", c.type_, c.reason, c.message);
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    notes
}
