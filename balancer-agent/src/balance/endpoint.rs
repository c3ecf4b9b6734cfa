//! Runtime state of one endpoint: load (in-flight calls, latency EWMA),
//! passive outlier detection and call statistics. Everything on the per-call
//! path is an atomic; the EWMA sits behind a tiny uncontended mutex that is
//! never held across an await.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    stats::{EndpointSnapshot, EndpointStats, STATUS_OTHER, STATUS_RESET},
    BalanceOptions,
};

/// Number of gRPC status codes (0 OK ..= 16 UNAUTHENTICATED).
pub const GRPC_CODES: usize = 17;
/// gRPC status UNAVAILABLE.
pub const UNAVAILABLE: u16 = 14;

/// How a call on an endpoint ended, as far as the balancer cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call ended with this gRPC status (0 = OK). A response without
    /// `grpc-status` counts as OK when its HTTP status is 2xx.
    Status(u16),
    /// The stream was reset (by either side) or the connection broke after the
    /// request went out.
    Reset,
    /// The endpoint could not be reached (connect refused or timed out).
    ConnectFailed,
    /// The endpoint refused the call before handling it (REFUSED_STREAM,
    /// GOAWAY above its id): it was retried elsewhere.
    Refused,
    /// The client gave up (cancel, deadline) before the call reached the
    /// endpoint: nothing to hold against it.
    Abandoned,
}

/// Peak-EWMA of response latency (time to response headers), decaying
/// towards zero while no sample arrives, as Linkerd's and tower's do.
#[derive(Debug)]
struct Ewma {
    ns: f64,
    at: Instant,
}

/// One endpoint of one service. Kept across reloads as long as the service
/// keeps an endpoint with this address. What picking reads is inline; the
/// outcome counters exist from the endpoint's first call on, so that the
/// endpoints of a large cluster a node never calls stay small.
#[derive(Debug)]
pub struct EndpointRt {
    pub address: SocketAddr,
    opts: Arc<BalanceOptions>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Nanoseconds since `epoch` until which the endpoint is ejected; 0: never.
    ejected_until: AtomicU64,
    /// Consecutive failures that eject it (0: never), and the first
    /// ejection's length: the service's, set at each reload.
    eject_after: AtomicU32,
    base_ejection_ns: AtomicU64,
    epoch: Instant,
    ewma: Mutex<Ewma>,
    counters: OnceLock<Box<Counters>>,
    /// The data plane's connections to this endpoint, made at its first
    /// call.
    conns: OnceLock<Box<dyn EndpointConns>>,
    /// The endpoints of its service, for the service's limit on how many
    /// may be ejected at once.
    group: OnceLock<Arc<EjectionGroup>>,
}

/// The endpoints of one service, as far as ejection goes: at most
/// `max_percent` of them may be ejected at once. An endpoint is ejected only
/// while fewer than that share are (so at least one may be, unless the
/// share is 0), as Envoy and gRPC's outlier detection count.
#[derive(Debug)]
pub(crate) struct EjectionGroup {
    max_percent: AtomicU32,
    /// The service's endpoints, while `max_percent` is below 100.
    members: Mutex<Vec<std::sync::Weak<EndpointRt>>>,
}

impl EjectionGroup {
    pub(crate) fn new() -> Self {
        EjectionGroup {
            max_percent: AtomicU32::new(100),
            members: Mutex::new(Vec::new()),
        }
    }

    /// The service's endpoints and its limit, at each reload; each endpoint
    /// joins the group it was first built in (its service's).
    pub(crate) fn set(self: &Arc<Self>, max_percent: u32, endpoints: &[Arc<EndpointRt>]) {
        let max_percent = max_percent.min(100);
        self.max_percent.store(max_percent, Relaxed);
        let members = if max_percent < 100 {
            endpoints.iter().map(Arc::downgrade).collect()
        } else {
            Vec::new()
        };
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = members;
        for e in endpoints {
            let _ = e.group.set(Arc::clone(self));
        }
    }

    /// Runs `eject` for `me` if the service's limit allows one more
    /// ejection; the check and the ejection happen under one lock, so two
    /// endpoints failing together cannot both pass the last place.
    fn eject_if_allowed(&self, me: &EndpointRt, eject: impl FnOnce()) -> bool {
        let max = self.max_percent.load(Relaxed) as usize;
        if max >= 100 {
            eject();
            return true;
        }
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let ejected = members
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|e| !std::ptr::eq(Arc::as_ptr(e), me) && e.is_ejected())
            .count();
        let allowed = ejected * 100 < members.len() * max;
        if allowed {
            eject();
        }
        allowed
    }
}

/// The upstream connections a data plane keeps to one endpoint. The
/// balancer holds them with the endpoint (they go when it goes) and only
/// counts them.
pub trait EndpointConns: std::any::Any + Send + Sync + std::fmt::Debug {
    fn open_connections(&self) -> usize;
}

/// What happened to an endpoint's calls.
#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    statuses: [AtomicU64; GRPC_CODES],
    other_status: AtomicU64,
    resets: AtomicU64,
    connect_failures: AtomicU64,
    refused: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Every ejection since the endpoint appeared.
    ejections_total: AtomicU64,
}

/// The counters of an endpoint that never had a call.
static NO_COUNTS: std::sync::LazyLock<Counters> = std::sync::LazyLock::new(Counters::default);

impl EndpointRt {
    pub(crate) fn new(address: SocketAddr, opts: Arc<BalanceOptions>, epoch: Instant) -> Self {
        let default_ns = opts.default_rtt.as_nanos() as f64;
        let (eject_after, base_ejection_ns) = (opts.consecutive_failures, opts.base_ejection.as_nanos() as u64);
        EndpointRt {
            address,
            opts,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            eject_after: AtomicU32::new(eject_after),
            base_ejection_ns: AtomicU64::new(base_ejection_ns),
            epoch,
            ewma: Mutex::new(Ewma {
                ns: default_ns,
                at: Instant::now(),
            }),
            counters: OnceLock::new(),
            conns: OnceLock::new(),
            group: OnceLock::new(),
        }
    }

    /// The data plane's connections to this endpoint, made by `make` at the
    /// first call; `None` if they are of another type than `T`.
    pub fn conns<T: EndpointConns>(&self, make: impl FnOnce(SocketAddr) -> T) -> Option<&T> {
        let conns: &dyn EndpointConns = &**self.conns.get_or_init(|| Box::new(make(self.address)));
        (conns as &dyn std::any::Any).downcast_ref::<T>()
    }

    /// The counters, to count into (made at the first call).
    fn counters(&self) -> &Counters {
        self.counters.get_or_init(Box::default)
    }

    /// The counters, to read (shared zeros before the first call).
    fn counts(&self) -> &Counters {
        self.counters.get().map_or(&*NO_COUNTS, |c| c)
    }

    pub(crate) fn set_draining(&self, draining: bool) {
        if self.draining.load(Relaxed) != draining {
            self.draining.store(draining, Relaxed);
        }
    }

    /// The service's outlier detection: `consecutive` failures eject the
    /// endpoint (0: never) for `base` the first time.
    pub(crate) fn set_ejection(&self, consecutive: u32, base: Duration) {
        self.eject_after.store(consecutive, Relaxed);
        self.base_ejection_ns.store(base.as_nanos() as u64, Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    fn now_ns(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && self.now_ns() < until
    }

    /// May this endpoint take a new call?
    pub fn is_available(&self) -> bool {
        !self.is_draining() && !self.is_ejected()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Peak-EWMA cost: decayed latency estimate times (in-flight + 1).
    pub fn ewma_cost(&self) -> f64 {
        let rtt = self.ewma_ns();
        rtt * (self.in_flight() as f64 + 1.0)
    }

    /// The latency estimate, decayed to now.
    pub fn ewma_ns(&self) -> f64 {
        let now = Instant::now();
        let Ok(mut e) = self.ewma.lock() else { return 0.0 };
        let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
        if elapsed > 0.0 {
            let tau = self.opts.ewma_decay.as_secs_f64().max(1e-3);
            e.ns *= (-elapsed / tau).exp();
            e.at = now;
        }
        e.ns
    }

    /// A latency sample `rtt`, taken at `now`.
    fn observe_rtt(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let Ok(mut e) = self.ewma.lock() else { return };
        if sample > e.ns {
            // Peak: a slow response raises the estimate at once.
            e.ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
            let tau = self.opts.ewma_decay.as_secs_f64().max(1e-3);
            let w = (-elapsed / tau).exp();
            e.ns = e.ns * w + sample * (1.0 - w);
        }
        e.at = now;
    }

    /// Starts a call on this endpoint: counts it in flight until the guard is
    /// finished or dropped.
    pub fn start_call(self: &Arc<Self>) -> CallGuard {
        self.start_call_at(Instant::now())
    }

    /// [`EndpointRt::start_call`], the call starting at `now`.
    pub fn start_call_at(self: &Arc<Self>, now: Instant) -> CallGuard {
        self.in_flight.fetch_add(1, Relaxed);
        CallGuard {
            ep: Arc::clone(self),
            started: now,
            finished: false,
        }
    }

    /// Starts a plain TCP connection on this endpoint (counted in flight).
    pub fn start_connection(self: &Arc<Self>) -> CallGuard {
        self.start_call()
    }

    fn record(&self, outcome: Outcome) {
        let c = self.counters();
        match outcome {
            Outcome::Status(code) => {
                c.calls.fetch_add(1, Relaxed);
                match c.statuses.get(usize::from(code)) {
                    Some(n) => n.fetch_add(1, Relaxed),
                    None => c.other_status.fetch_add(1, Relaxed),
                };
                if code == UNAVAILABLE {
                    self.failure();
                } else {
                    self.success();
                }
            }
            Outcome::Reset => {
                c.calls.fetch_add(1, Relaxed);
                c.resets.fetch_add(1, Relaxed);
            }
            Outcome::ConnectFailed => {
                c.connect_failures.fetch_add(1, Relaxed);
                self.failure();
            }
            Outcome::Refused => {
                c.refused.fetch_add(1, Relaxed);
            }
            Outcome::Abandoned => {}
        }
    }

    fn success(&self) {
        let c = self.counters();
        if c.consecutive_failures.load(Relaxed) != 0 {
            c.consecutive_failures.store(0, Relaxed);
        }
        if c.ejections.load(Relaxed) != 0 && !self.is_ejected() {
            c.ejections.store(0, Relaxed);
        }
    }

    /// Passive outlier detection: N consecutive failures eject the endpoint
    /// for `base_ejection × ejections` (capped), after which it takes calls
    /// again; a success afterwards resets the multiplier.
    fn failure(&self) {
        let threshold = self.eject_after.load(Relaxed);
        if threshold == 0 {
            return;
        }
        let c = self.counters();
        let n = c.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n < threshold {
            return;
        }
        if c.consecutive_failures.compare_exchange(n, 0, Relaxed, Relaxed).is_err() {
            return; // someone else ejected it
        }
        let eject = || {
            let k = c.ejections.fetch_add(1, Relaxed).saturating_add(1);
            c.ejections_total.fetch_add(1, Relaxed);
            let base = Duration::from_nanos(self.base_ejection_ns.load(Relaxed));
            let backoff = base.saturating_mul(k).min(self.opts.max_ejection);
            let until = self.now_ns().saturating_add(backoff.as_nanos() as u64).max(1);
            self.ejected_until.store(until, Relaxed);
            tracing::warn!(endpoint = %self.address, ejection = k, backoff_ms = backoff.as_millis() as u64,
                "endpoint ejected after {n} consecutive failures");
        };
        let ejected = match self.group.get() {
            Some(group) => group.eject_if_allowed(self, eject),
            None => {
                eject();
                true
            }
        };
        if !ejected {
            tracing::info!(endpoint = %self.address,
                "endpoint not ejected after {n} consecutive failures: the service's limit on ejected endpoints is reached");
        }
    }

    /// The endpoint's statistics, read from its atomics: the one place
    /// they are read (the admin API and `/metrics` show this).
    pub fn snapshot(&self) -> EndpointSnapshot {
        let c = self.counts();
        let mut statuses = BTreeMap::new();
        let mut add = |key: String, n: &AtomicU64| {
            let v = n.load(Relaxed);
            if v != 0 {
                statuses.insert(key, v);
            }
        };
        for (code, n) in c.statuses.iter().enumerate() {
            add(code.to_string(), n);
        }
        add(STATUS_OTHER.to_owned(), &c.other_status);
        add(STATUS_RESET.to_owned(), &c.resets);
        let until = self.ejected_until.load(Relaxed);
        let now = self.now_ns();
        let ewma_ns = self.ewma_ns();
        EndpointSnapshot {
            address: self.address,
            draining: self.is_draining(),
            stats: EndpointStats {
                ejected: until != 0 && now < until,
                ejected_for_ms: until.saturating_sub(now) / 1_000_000,
                ejections: u64::from(c.ejections.load(Relaxed)),
                ejections_total: c.ejections_total.load(Relaxed),
                consecutive_failures: u64::from(c.consecutive_failures.load(Relaxed)),
                in_flight: self.in_flight() as u64,
                ewma_ms: (ewma_ns > 0.0).then_some(ewma_ns / 1e6),
                calls: c.calls.load(Relaxed),
                statuses,
                connect_failures: c.connect_failures.load(Relaxed),
                refused: c.refused.load(Relaxed),
                upstream_connections: self.conns.get().map_or(0, |c| c.open_connections() as u64),
            },
        }
    }
}

/// Holds one call (or TCP connection) in flight on an endpoint.
#[derive(Debug)]
pub struct CallGuard {
    ep: Arc<EndpointRt>,
    started: Instant,
    finished: bool,
}

impl CallGuard {
    pub fn endpoint(&self) -> &Arc<EndpointRt> {
        &self.ep
    }

    /// Response headers arrived at `now`: a latency sample for the EWMA.
    pub fn first_byte_at(&self, now: Instant) {
        self.ep.observe_rtt(now.saturating_duration_since(self.started), now);
    }

    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.ep.record(outcome);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.ep.in_flight.fetch_sub(1, Relaxed);
        if !self.finished {
            self.ep.record(Outcome::Reset);
        }
    }
}
