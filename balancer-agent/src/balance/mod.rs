//! Per-call balancing: which endpoint takes each gRPC call.
//!
//! A [`Table`] is built from a [`Model`] and updated in place at reload: each
//! service has a [`ServiceSlot`] whose current [`ServiceState`] (policy,
//! endpoints, compiled routes) is swapped atomically, so new weights apply to
//! the next call while the runtime state of endpoints that stay (in-flight
//! calls, latency EWMA, ejection, statistics, pooled connections) is kept.
//!
//! Policies are implemented here rather than with `tower::balance`: tower's
//! balancer is a `Service` that owns its endpoints behind `poll_ready`, while
//! a call here must pick within a route's label-selected subset, skip ejected
//! and draining endpoints and endpoints the call already tried, and share the
//! endpoint state across routes. The algorithms are the same (P2C; peak-EWMA
//! with decay, cost = latency × (in-flight + 1)).

pub mod endpoint;
pub mod explain;
pub mod filters;
pub mod gateway;
pub mod locality;
pub mod pick;
pub mod rand;
pub mod ring;
pub mod route;
pub mod stats;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use endpoint::EjectionGroup;
pub use endpoint::{CallGuard, EndpointRt, Outcome};
pub use route::{CallHeaders, CallMeta};
pub use stats::{EndpointSnapshot, EndpointStats, ServiceCounters, ServiceSnapshot, TableSnapshot};

use crate::model::{self, Change, EndpointState, InternalTrafficPolicy, Locality, Model, Policy, Service};
use pick::Tried;
use route::{CompiledRoute, Subset};

/// Tunables of outlier detection and peak-EWMA.
#[derive(Debug, Clone)]
pub struct BalanceOptions {
    /// Consecutive failures (connect failures, UNAVAILABLE) that eject an
    /// endpoint; 0 disables ejection.
    pub consecutive_failures: u32,
    /// First ejection lasts this long; the n-th, n times as long.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Time constant of the latency EWMA.
    pub ewma_decay: Duration,
    /// Latency assumed for an endpoint with no sample yet.
    pub default_rtt: Duration,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        BalanceOptions {
            consecutive_failures: model::Ejection::DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: model::Ejection::DEFAULT_BASE,
            max_ejection: Duration::from_secs(300),
            ewma_decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(1),
        }
    }
}

/// The immutable part of a service at one model version.
#[derive(Debug)]
pub struct ServiceState {
    pub policy: Policy,
    /// With [`Policy::RingHash`]: the header whose value is hashed.
    pub hash_header: Option<http::HeaderName>,
    /// Faults injected into this service's calls.
    pub fault: Option<model::Fault>,
    pub vips: Vec<SocketAddr>,
    pub endpoints: Vec<Arc<EndpointRt>>,
    /// Its limit on ejected endpoints, kept across reloads.
    ejection: Option<Arc<EjectionGroup>>,
    all: Subset,
    routes: Vec<CompiledRoute>,
    /// Whether a route has a timeout (calls of other services skip the
    /// lookup).
    timeouts: bool,
    /// `internal_traffic_policy: Local` and no endpoint on this node: why
    /// every call gets UNAVAILABLE.
    no_local: Option<Arc<str>>,
}

impl ServiceState {
    fn build(
        svc: &Service,
        old: Option<&ServiceState>,
        opts: &Arc<BalanceOptions>,
        epoch: Instant,
        here: &Locality,
    ) -> Self {
        let kept: HashMap<SocketAddr, &Arc<EndpointRt>> = old
            .map(|o| o.endpoints.iter().map(|e| (e.address, e)).collect())
            .unwrap_or_default();
        let endpoints: Vec<Arc<EndpointRt>> = svc
            .endpoints
            .iter()
            .map(|e| {
                let rt = kept
                    .get(&e.address)
                    .map(|rt| Arc::clone(rt))
                    .unwrap_or_else(|| Arc::new(EndpointRt::new(e.address, Arc::clone(opts), epoch)));
                rt.set_draining(e.state == EndpointState::Draining);
                match svc.ejection {
                    Some(e) => rt.set_ejection(e.consecutive_failures, e.base),
                    None => rt.set_ejection(opts.consecutive_failures, opts.base_ejection),
                }
                rt
            })
            .collect();
        // A group only for a service that has had a limit (the endpoints of
        // a large cluster stay small); once made it is kept, as the
        // endpoints keep theirs.
        let max_percent = svc.ejection.map_or(100, |e| e.max_percent);
        let ejection = old
            .and_then(|o| o.ejection.clone())
            .or_else(|| (max_percent < 100).then(|| Arc::new(EjectionGroup::new())));
        if let Some(group) = &ejection {
            group.set(max_percent, &endpoints);
        }
        let classes = locality::classify(svc, here);
        let mut routes: Vec<CompiledRoute> = svc
            .routes
            .iter()
            .map(|r| CompiledRoute::compile(r, &svc.endpoints, &classes))
            .collect();
        let mut all = locality::subset((0..endpoints.len()).collect(), &classes);
        let no_local =
            (svc.internal_traffic_policy == InternalTrafficPolicy::Local && all.members.is_empty()).then(|| {
                let node = here.node.as_deref().unwrap_or("(unknown: set `node:`)");
                format!(
                    "service `{}` has internalTrafficPolicy Local and no endpoint on this node `{node}`",
                    svc.name
                )
                .into()
            });
        let hash_header = match svc.policy {
            Policy::RingHash => svc
                .hash_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            _ => None,
        };
        if hash_header.is_some() {
            // The rings are built here, once per change of the service: one
            // per subset and, in a service split by locality, one per tier.
            let addresses: Vec<SocketAddr> = svc.endpoints.iter().map(|e| e.address).collect();
            all.build_ring(&addresses);
            for r in &mut routes {
                for (subset, _) in &mut r.backends {
                    subset.build_ring(&addresses);
                }
            }
        }
        ServiceState {
            policy: svc.policy,
            hash_header,
            fault: svc.fault.clone(),
            vips: svc.vips.clone(),
            all,
            endpoints,
            ejection,
            timeouts: routes.iter().any(|r| r.timeout.is_some()),
            routes,
            no_local,
        }
    }

    /// Why no call can be balanced, when it is the service's own setting
    /// (`internal_traffic_policy: Local` with no endpoint on this node).
    pub fn no_endpoint_reason(&self) -> Option<&str> {
        self.no_local.as_deref()
    }

    /// The hash of the call's key for a ring-hash service: the first value
    /// of its hash header; `None` without one (the call is picked
    /// round-robin).
    fn call_key(&self, call: &CallMeta<'_>) -> Option<u64> {
        let name = self.hash_header.as_ref()?;
        let mut key = None;
        call.headers.any_value(name.as_str(), &mut |v| {
            key = Some(ring::key_hash(v.as_bytes()));
            true
        });
        key
    }

    /// The endpoint for a call: the first matching route's weighted backend
    /// (falling back to its other weighted backends when that subset has no
    /// available endpoint), or any endpoint when no route matches.
    /// The timeout of the route `call` takes, if that route has one.
    /// Whether any route of the service has a timeout.
    pub fn has_route_timeouts(&self) -> bool {
        self.timeouts
    }

    pub fn route_timeout(&self, call: &CallMeta<'_>) -> Option<Duration> {
        if !self.timeouts {
            return None;
        }
        self.routes.iter().find(|r| r.is_match(call)).and_then(|r| r.timeout)
    }

    pub fn pick(&self, call: &CallMeta<'_>, tried: Tried<'_>) -> Option<Arc<EndpointRt>> {
        self.route(call, tried).map(|r| r.endpoint)
    }

    /// [`Self::pick`], with the filters of the route and backend that took
    /// the call.
    pub fn route(&self, call: &CallMeta<'_>, tried: Tried<'_>) -> Option<Routed<'_>> {
        let key = self.call_key(call);
        let pick = |subset: &Subset| pick::pick(self.policy, subset, &self.endpoints, tried, key);
        let plain = |endpoint| Routed {
            endpoint,
            filters: None,
            mirrors: None,
        };
        match self.routes.iter().find(|r| r.is_match(call)) {
            None => pick(&self.all).map(plain),
            Some(route) => {
                let b = route.next_backend();
                let found = route
                    .backends
                    .get(b)
                    .and_then(|(subset, _)| pick(subset))
                    .map(|ep| (b, ep))
                    .or_else(|| {
                        route
                            .backends
                            .iter()
                            .enumerate()
                            .filter(|(_, (_, w))| *w > 0)
                            .find_map(|(i, (s, _))| pick(s).map(|ep| (i, ep)))
                    });
                found.map(|(b, endpoint)| Routed {
                    endpoint,
                    filters: route.filters(b),
                    mirrors: route.mirrors.as_deref(),
                })
            }
        }
    }

    /// The endpoint for a plain TCP connection (no call to route on; a
    /// ring-hash service picks round-robin).
    pub fn pick_connection(&self, tried: Tried<'_>) -> Option<Arc<EndpointRt>> {
        pick::pick(self.policy, &self.all, &self.endpoints, tried, None)
    }
}

/// Where a call goes: its endpoint, and what the route and backend that
/// chose it apply to it.
#[derive(Debug)]
pub struct Routed<'a> {
    pub endpoint: Arc<EndpointRt>,
    /// Header edits of the route and backend; `None` for most calls.
    pub filters: Option<&'a filters::CallFilters>,
    pub mirrors: Option<&'a filters::RouteMirrors>,
}

/// One service by name, for as long as the model has it.
#[derive(Debug)]
pub struct ServiceSlot {
    name: Arc<str>,
    state: RwLock<Option<Arc<ServiceState>>>,
    removed: watch::Sender<bool>,
    calls: AtomicU64,
    retries: AtomicU64,
    no_endpoint: AtomicU64,
    tcp_connections: AtomicU64,
    faults_delayed: AtomicU64,
    faults_aborted: AtomicU64,
    mirrored: AtomicU64,
    mirrors_dropped: AtomicU64,
    mirrors_failed: AtomicU64,
}

impl ServiceSlot {
    fn new(name: &str) -> Self {
        ServiceSlot {
            name: name.into(),
            state: RwLock::new(None),
            removed: watch::Sender::new(false),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            no_endpoint: AtomicU64::new(0),
            tcp_connections: AtomicU64::new(0),
            faults_delayed: AtomicU64::new(0),
            faults_aborted: AtomicU64::new(0),
            mirrored: AtomicU64::new(0),
            mirrors_dropped: AtomicU64::new(0),
            mirrors_failed: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state, or `None` once the service left the model.
    pub fn state(&self) -> Option<Arc<ServiceState>> {
        self.state.read().ok().and_then(|s| s.clone())
    }

    fn set_state(&self, st: Option<Arc<ServiceState>>) {
        if let Ok(mut s) = self.state.write() {
            *s = st;
        }
    }

    pub fn is_removed(&self) -> bool {
        *self.removed.borrow()
    }

    /// Resolves when the service leaves the model.
    pub async fn removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn count_call(&self) {
        self.calls.fetch_add(1, Relaxed);
    }

    pub fn count_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub fn count_no_endpoint(&self) {
        self.no_endpoint.fetch_add(1, Relaxed);
    }

    /// The service's counters as they are now.
    pub fn counters(&self) -> ServiceCounters {
        ServiceCounters {
            calls: self.calls.load(Relaxed),
            no_endpoint: self.no_endpoint.load(Relaxed),
            retries: self.retries.load(Relaxed),
            l4_connections: self.tcp_connections.load(Relaxed),
            faults_delayed: self.faults_delayed.load(Relaxed),
            faults_aborted: self.faults_aborted.load(Relaxed),
            mirrored: self.mirrored.load(Relaxed),
            mirrors_dropped: self.mirrors_dropped.load(Relaxed),
            mirrors_failed: self.mirrors_failed.load(Relaxed),
        }
    }

    pub fn count_tcp_connection(&self) {
        self.tcp_connections.fetch_add(1, Relaxed);
    }

    /// A call delayed by fault injection.
    pub fn count_fault_delay(&self) {
        self.faults_delayed.fetch_add(1, Relaxed);
    }

    /// A copy of a call sent to a mirror.
    pub fn count_mirrored(&self) {
        self.mirrored.fetch_add(1, Relaxed);
    }

    /// A copy of a call not sent, or cut short: the mirror had no endpoint
    /// or connection ready for it, or the request outgrew the copy's bound.
    pub fn count_mirror_dropped(&self) {
        self.mirrors_dropped.fetch_add(1, Relaxed);
    }

    /// A copy sent whole that the mirror never answered (unreachable,
    /// refused, reset, or cancelled after its time).
    pub fn count_mirror_failed(&self) {
        self.mirrors_failed.fetch_add(1, Relaxed);
    }

    /// A call aborted by fault injection.
    pub fn count_fault_abort(&self) {
        self.faults_aborted.fetch_add(1, Relaxed);
    }
}

#[derive(Debug, Default)]
struct Index {
    by_name: HashMap<Arc<str>, Arc<ServiceSlot>>,
    by_vip: HashMap<SocketAddr, Arc<ServiceSlot>>,
}

/// The runtime balancing state of every service.
#[derive(Debug)]
pub struct Table {
    index: RwLock<Index>,
    /// The model the index was last built from (and the lock that
    /// serializes updates): an update rebuilds only the services whose
    /// `Arc` changed.
    built: Mutex<Arc<Model>>,
    opts: Arc<BalanceOptions>,
    epoch: Instant,
}

impl Table {
    pub fn new(model: &Model) -> Arc<Table> {
        Table::with_options(model, BalanceOptions::default())
    }

    pub fn with_options(model: &Model, opts: BalanceOptions) -> Arc<Table> {
        let t = Table {
            index: RwLock::new(Index::default()),
            built: Mutex::new(Arc::default()),
            opts: Arc::new(opts),
            epoch: Instant::now(),
        };
        t.update(model);
        Arc::new(t)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a new model: new weights and routes take effect for the next
    /// call; endpoints that stay keep their state and connections; services
    /// that left are marked removed (their listeners stop, their remaining
    /// connections get `UNAVAILABLE` for new calls). Only the services whose
    /// `Arc` differs from the last model's are rebuilt.
    pub fn update(&self, model: &Model) {
        self.update_shared(&Arc::new(model.clone()));
    }

    /// [`Table::update`] from a shared model, which the table keeps (no
    /// copy of the service list).
    pub fn update_shared(&self, model: &Arc<Model>) {
        let mut built = self.built.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let here = &model.locality;
        let changes = if built.locality == *here {
            model::diff(&built.services, &model.services)
        } else {
            // The agent's own locality changed: every service's tiers may.
            let mut all = model::diff(&built.services, &model.services);
            let changed: std::collections::HashSet<&str> = all.iter().map(Change::name).collect();
            let old: HashMap<&str, &Arc<Service>> = built.services.iter().map(|s| (s.name.as_str(), s)).collect();
            for svc in &model.services {
                if let (false, Some(o)) = (changed.contains(svc.name.as_str()), old.get(svc.name.as_str())) {
                    all.push(Change::Changed { old: o, new: svc });
                }
            }
            all
        };
        if !changes.is_empty() {
            let mut index = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for change in changes {
                match change {
                    Change::Removed(svc) => index.remove(svc),
                    Change::Changed { old, new } => {
                        index.remove_vips(old);
                        index.upsert(new, &self.opts, self.epoch, here);
                    }
                    Change::Added(svc) => index.upsert(svc, &self.opts, self.epoch, here),
                }
            }
        }
        *built = Arc::clone(model);
    }

    pub fn service(&self, name: &str) -> Option<Arc<ServiceSlot>> {
        self.read().by_name.get(name).cloned()
    }

    pub fn service_by_vip(&self, vip: SocketAddr) -> Option<Arc<ServiceSlot>> {
        self.read().by_vip.get(&vip).cloned()
    }

    /// Statistics of every service and endpoint, read from the atomics:
    /// what the admin API and `/metrics` show.
    pub fn snapshot(&self) -> TableSnapshot {
        let slots: Vec<Arc<ServiceSlot>> = self.read().by_name.values().cloned().collect();
        let mut services: Vec<ServiceSnapshot> = slots
            .iter()
            .filter_map(|slot| {
                let st = slot.state()?;
                let endpoints: Vec<EndpointSnapshot> = st.endpoints.iter().map(|e| e.snapshot()).collect();
                Some(ServiceSnapshot {
                    name: slot.name.to_string(),
                    policy: st.policy,
                    vips: st.vips.clone(),
                    counters: slot.counters(),
                    routes: st
                        .routes
                        .iter()
                        .map(|r| stats::RouteSnapshot {
                            name: r.name.clone(),
                            filters: r.described.clone(),
                            backends: r
                                .backends
                                .iter()
                                .map(|(s, w)| stats::BackendSnapshot {
                                    weight: *w,
                                    endpoints: s
                                        .members
                                        .iter()
                                        .filter_map(|i| st.endpoints.get(*i).map(|e| e.address))
                                        .collect(),
                                })
                                .collect(),
                        })
                        .collect(),
                    endpoints,
                })
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        TableSnapshot { services }
    }
}

impl Index {
    /// Builds (or rebuilds, keeping its endpoints' runtime state) the slot
    /// of `svc` and points its VIPs at it.
    fn upsert(&mut self, svc: &Service, opts: &Arc<BalanceOptions>, epoch: Instant, here: &Locality) {
        let slot = match self.by_name.get(svc.name.as_str()) {
            Some(slot) => Arc::clone(slot),
            None => {
                let slot = Arc::new(ServiceSlot::new(&svc.name));
                self.by_name.insert(Arc::clone(&slot.name), Arc::clone(&slot));
                slot
            }
        };
        let prev = slot.state();
        let st = ServiceState::build(svc, prev.as_deref(), opts, epoch, here);
        slot.set_state(Some(Arc::new(st)));
        for vip in &svc.vips {
            self.by_vip.insert(*vip, Arc::clone(&slot));
        }
    }

    /// Unpoints the VIPs of `svc` that still point at its slot.
    fn remove_vips(&mut self, svc: &Service) {
        for vip in &svc.vips {
            if self.by_vip.get(vip).is_some_and(|s| *s.name == *svc.name) {
                self.by_vip.remove(vip);
            }
        }
    }

    /// The service left the model: its slot is marked removed.
    fn remove(&mut self, svc: &Service) {
        self.remove_vips(svc);
        if let Some(slot) = self.by_name.remove(svc.name.as_str()) {
            slot.set_state(None);
            slot.removed.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests;
