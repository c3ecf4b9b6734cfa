//! What the agent balances, whatever it was learned from.
//!
//! Static mode (the YAML file, [`crate::config`]) and Kubernetes mode both
//! produce a [`Model`]; the kernel maps and the demultiplexer are built from
//! it and nothing else. A `Model` is plain data and already validated: every
//! constructor of one (the config parser, the Kubernetes translator) checks it
//! with [`Model::validate`].

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

mod filters;

pub use filters::{check_name as check_filter_header, FilterError, Filters, HeaderModifier, HeaderValue, Mirror};
mod gateway;
pub use gateway::{
    host_matches, valid_hostname, CertificateSource, Gateway, GatewayError, GatewayListener, GatewayRoute,
    ServiceBackend,
};

/// Labels of an endpoint; route backends select endpoints by them.
pub type Labels = BTreeMap<String, String>;

/// The whole balanced state.
///
/// Services are shared (`Arc`): a new model keeps the `Arc` of every service
/// that did not change, so consumers find what changed by pointer
/// ([`diff`]) instead of comparing the whole cluster. Producers keep them
/// sorted by name ([`Model::sort`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Model {
    pub services: Vec<Arc<Service>>,
    /// cgroup v2 directories whose processes are redirected by the kernel
    /// programs (static `enroll:`; in Kubernetes the enrolled pods' cgroups,
    /// each with its pod).
    pub enrolled: Vec<Enrolled>,
    /// Where the agent itself runs: the node and zone that locality-aware
    /// services prefer (see [`TrafficDistribution`]).
    pub locality: Locality,
    /// Listeners for clients outside the cluster, routing calls to the
    /// services above; sorted by name.
    pub gateways: Vec<Arc<Gateway>>,
}

/// A node and its zone (the agent's; an endpoint's are on [`Endpoint`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Locality {
    /// Static `zone:`; in Kubernetes the Node's `topology.kubernetes.io/zone`.
    pub zone: Option<Arc<str>>,
    /// Static `node:`; in Kubernetes the agent's node name.
    pub node: Option<Arc<str>>,
}

/// An enrolled cgroup: it and every cgroup below it are redirected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Enrolled {
    /// The cgroup v2 directory.
    pub cgroup: PathBuf,
    /// The pod it belongs to (Kubernetes mode); `None` for static `enroll:`.
    pub pod: Option<PodRef>,
    /// Close the pod's connections that bypass the agent (opened before it
    /// was enrolled) so that it re-dials through the agent; otherwise they
    /// are only counted. See [`crate::pinned`].
    pub reconnect_pinned: bool,
}

impl From<PathBuf> for Enrolled {
    /// A cgroup enrolled by path alone (static mode).
    fn from(cgroup: PathBuf) -> Self {
        Enrolled {
            cgroup,
            pod: None,
            reconnect_pinned: false,
        }
    }
}

/// Which pod an enrolled cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// The pod's IPs (`status.podIPs`), IPv4 first: its redirected
    /// connections come from the IPv4 one.
    pub ips: Vec<IpAddr>,
}

impl fmt::Display for PodRef {
    /// `namespace/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One balanced Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Unique name (`namespace/name` in Kubernetes).
    pub name: String,
    /// What clients dial: connections to these are redirected to the agent.
    pub vips: Vec<SocketAddr>,
    /// Optional explicit listener: no eBPF needed to reach this service.
    pub listen: Option<SocketAddr>,
    pub policy: Policy,
    /// With [`Policy::RingHash`]: the request header (lower case) whose
    /// value picks the endpoint on the ring.
    pub hash_header: Option<String>,
    pub endpoints: Vec<Endpoint>,
    /// First match wins; a call that matches no route goes to all ready
    /// endpoints.
    pub routes: Vec<Route>,
    /// Faults injected into a share of the calls (resilience testing).
    pub fault: Option<Fault>,
    /// Whether calls prefer endpoints close to the agent.
    pub traffic_distribution: TrafficDistribution,
    /// Whether calls may leave the agent's node at all.
    pub internal_traffic_policy: InternalTrafficPolicy,
    /// Passive outlier detection of the endpoints; `None`: the agent's
    /// defaults.
    pub ejection: Option<Ejection>,
}

/// When a service's endpoints are ejected (in Kubernetes: a
/// DestinationRule's `outlierDetection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Ejection {
    /// Consecutive failures (connect failures, `UNAVAILABLE`) that eject an
    /// endpoint; 0: never.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long, the n-th n times as long
    /// (capped at the agent's maximum).
    pub base: std::time::Duration,
    /// At most this share of the service's endpoints is ejected at once,
    /// 0–100 (100: every endpoint may be).
    pub max_percent: u32,
}

impl Ejection {
    /// The agent's own: for services that set none.
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
    pub const DEFAULT_BASE: std::time::Duration = std::time::Duration::from_secs(10);
}

/// Which endpoints a service's calls prefer (Kubernetes Service
/// `spec.trafficDistribution`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficDistribution {
    /// Every endpoint alike (the default).
    #[default]
    Any,
    /// Endpoints on the agent's node first, then in its zone, then the
    /// rest, each tier spilling over to the next as its endpoints become
    /// unavailable (see [`crate::balance::locality`]).
    PreferClose,
}

impl TrafficDistribution {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficDistribution::Any => "Any",
            TrafficDistribution::PreferClose => "PreferClose",
        }
    }
}

/// Whether calls may go to endpoints on other nodes (Kubernetes Service
/// `spec.internalTrafficPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InternalTrafficPolicy {
    /// Any endpoint (the default).
    #[default]
    Cluster,
    /// Only endpoints on the agent's node; with none, calls get
    /// `UNAVAILABLE` (as kube-proxy drops them).
    Local,
}

impl InternalTrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            InternalTrafficPolicy::Cluster => "Cluster",
            InternalTrafficPolicy::Local => "Local",
        }
    }
}

/// Faults injected into calls, as Istio's VirtualService `fault`: a delay
/// before the call is forwarded and/or an abort answered by the agent. When
/// both are drawn for a call, the delay comes first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

impl fmt::Display for Fault {
    /// E.g. `delay 2s to 10% of calls, abort UNAVAILABLE ("down") to 5% of calls`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(d) = &self.delay {
            write!(f, "delay {:?} to {}% of calls", d.duration, d.share.percent())?;
            sep = ", ";
        }
        if let Some(a) = &self.abort {
            let name = GRPC_CODES.get(usize::from(a.code)).copied().unwrap_or("?");
            write!(
                f,
                "{sep}abort {name} ({:?}) to {}% of calls",
                a.message,
                a.share.percent()
            )?;
        }
        Ok(())
    }
}

/// A label selector in display form, e.g. `version=v1` (`*` for every
/// endpoint).
pub fn selector(labels: &Labels) -> String {
    if labels.is_empty() {
        return "*".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Delays `share` of the calls by `duration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultDelay {
    pub share: Share,
    pub duration: std::time::Duration,
}

/// Answers `share` of the calls with gRPC status `code` and `message`,
/// without contacting an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultAbort {
    pub share: Share,
    pub code: u16,
    pub message: String,
}

/// A share of calls in parts per million (0 to 100 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Share(u32);

impl Share {
    pub const MILLION: u32 = 1_000_000;
    pub const ALL: Share = Share(Share::MILLION);

    /// A percentage from 0 to 100 (fractions allowed: 0.1 is one call in a
    /// thousand); `None` outside that range.
    pub fn from_percent(p: f64) -> Option<Share> {
        if !(0.0..=100.0).contains(&p) {
            return None;
        }
        Some(Share((p * 10_000.0).round() as u32))
    }

    pub fn per_million(self) -> u32 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Whether a uniform draw in `0..MILLION` falls into the share.
    pub fn contains(self, draw: u32) -> bool {
        draw < self.0
    }
}

/// gRPC status codes by name, in code order.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC status from its name (`UNAVAILABLE`, any case) or its number
/// (`14`); an abort cannot be `OK`.
pub fn parse_abort_code(s: &str) -> Result<u16, ModelError> {
    let s = s.trim();
    let code = match s.parse::<u16>() {
        Ok(n) => Some(n).filter(|n| usize::from(*n) < GRPC_CODES.len()),
        Err(_) => GRPC_CODES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .map(|i| i as u16),
    };
    match code {
        Some(0) | None => Err(ModelError::BadAbortStatus(s.to_owned())),
        Some(c) => Ok(c),
    }
}

/// A duration such as `500ms`, `2s`, `1.5s` or `1m` (units ms, s, m).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, ModelError> {
    let t = s.trim();
    let bad = || ModelError::BadDuration(s.to_owned());
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= std::time::Duration::from_secs(3600))
        .ok_or_else(bad)
}

/// How a service picks the endpoint for each call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight calls.
    LeastRequest,
    /// Power of two choices over a peak-EWMA of latency times load.
    PeakEwma,
    /// Consistent hashing of a request header ([`Service::hash_header`])
    /// on a ring; calls without the header are picked round-robin.
    RingHash,
}

impl Policy {
    pub const NAMES: [&'static str; 4] = ["round-robin", "least-request", "peak-ewma", "ring-hash"];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastRequest => "least-request",
            Policy::PeakEwma => "peak-ewma",
            Policy::RingHash => "ring-hash",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round-robin" => Ok(Policy::RoundRobin),
            "least-request" => Ok(Policy::LeastRequest),
            "peak-ewma" => Ok(Policy::PeakEwma),
            "ring-hash" => Ok(Policy::RingHash),
            other => Err(ModelError::UnknownPolicy(other.to_owned())),
        }
    }
}

/// One endpoint (a pod's address) of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// Shared: the endpoints of one Service have one label set.
    pub labels: Arc<Labels>,
    pub state: EndpointState,
    /// Where it runs (EndpointSlice `zone` / `nodeName`); shared strings.
    pub zone: Option<Arc<str>>,
    pub node: Option<Arc<str>>,
    /// The zones this endpoint should serve (EndpointSlice
    /// `hints.forZones`); `None` without hints.
    pub for_zones: Option<Arc<[Arc<str>]>>,
}

impl Endpoint {
    pub fn ready(address: SocketAddr, labels: Labels) -> Self {
        Endpoint {
            address,
            labels: Arc::new(labels),
            state: EndpointState::Ready,
            zone: None,
            node: None,
            for_zones: None,
        }
    }
}

/// Whether an endpoint takes new calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    /// Receives new calls.
    #[default]
    Ready,
    /// Serving but terminating: receives no new calls, its open calls finish.
    Draining,
}

/// A rule in the shape of a Gateway API GRPCRoute rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// For display (`namespace/grpcroute-name#rule-index` in Kubernetes).
    pub name: Option<String>,
    /// Any one match selects the route; an empty list matches every call.
    pub matches: Vec<RouteMatch>,
    /// Weighted subsets of the service's endpoints.
    pub backends: Vec<Backend>,
    /// Header modifiers and mirrors for the route's calls.
    pub filters: Filters,
    /// The longest a call of this route may take (in Kubernetes: a
    /// VirtualService route's `timeout`); a call's own shorter
    /// `grpc-timeout` still applies.
    pub timeout: Option<std::time::Duration>,
}

/// Every present field must match (GRPCRoute `GRPCRouteMatch`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteMatch {
    /// gRPC service, e.g. `helloworld.Greeter` (from `:path`).
    pub service: Option<StringMatch>,
    /// gRPC method, e.g. `SayHello`.
    pub method: Option<StringMatch>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    pub value: StringMatch,
}

/// GRPCRoute's match types. Regular expressions are checked by
/// [`Model::validate`] and match the whole value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StringMatch {
    Exact(String),
    RegularExpression(String),
}

impl StringMatch {
    pub fn pattern(&self) -> &str {
        match self {
            StringMatch::Exact(s) | StringMatch::RegularExpression(s) => s,
        }
    }
}

/// The endpoints whose labels include all of `labels`, with a share of the
/// route's calls proportional to `weight`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub labels: Labels,
    pub weight: u32,
    /// Header modifiers for the calls sent to this backend, after the
    /// route's (no mirrors).
    pub filters: Filters,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("unknown policy `{0}` (expected one of round-robin, least-request, peak-ewma, ring-hash)")]
    UnknownPolicy(String),
    #[error("service `{0}`: policy ring-hash needs a hash header (the request header whose value picks the endpoint)")]
    RingHashWithoutHeader(String),
    #[error("service `{0}`: a hash header is used only by policy ring-hash")]
    HeaderWithoutRingHash(String),
    #[error("service `{service}`: invalid hash header name {header:?}")]
    BadHashHeader { service: String, header: String },
    #[error("invalid gRPC status `{0}` for an abort (expected a name such as UNAVAILABLE or a number from 1 to 16)")]
    BadAbortStatus(String),
    #[error("invalid duration `{0}` (expected e.g. 500ms, 2s or 1m, at most 1 hour)")]
    BadDuration(String),
    #[error("invalid percentage `{0}` (expected a number from 0 to 100)")]
    BadPercent(String),
    #[error("service `{0}` is defined twice")]
    DuplicateService(String),
    #[error("service name is empty")]
    EmptyServiceName,
    #[error("service `{service}`: VIP {vip} is also used by service `{other}`")]
    DuplicateVip {
        service: String,
        vip: SocketAddr,
        other: String,
    },
    #[error("service `{service}`: listener {listen} is also used by service `{other}`")]
    DuplicateListener {
        service: String,
        listen: SocketAddr,
        other: String,
    },
    #[error("service `{service}`: endpoint {address} is listed twice")]
    DuplicateEndpoint { service: String, address: SocketAddr },
    #[error("service `{service}`, route {route}: no backends")]
    NoBackends { service: String, route: usize },
    #[error("service `{service}`, route {route}: every backend has weight 0")]
    AllWeightsZero { service: String, route: usize },
    #[error("service `{service}`, route {route}: filters: {error}")]
    BadFilter {
        service: String,
        route: usize,
        error: FilterError,
    },
    #[error("service `{service}`, route {route}: a backend cannot mirror calls (put `request_mirror` on the route)")]
    BackendMirror { service: String, route: usize },
    #[error("service `{service}`, route {route}: bad regular expression `{pattern}`: {reason}")]
    BadRegex {
        service: String,
        route: usize,
        pattern: String,
        reason: String,
    },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl Model {
    /// Checks what the types cannot: unique names, VIPs and listeners, routes
    /// with backends and a non-zero weight, regular expressions that compile.
    pub fn validate(&self) -> Result<(), ModelError> {
        let mut names = HashSet::new();
        let mut vips: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        let mut listeners: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for svc in &self.services {
            if svc.name.is_empty() {
                return Err(ModelError::EmptyServiceName);
            }
            if !names.insert(svc.name.as_str()) {
                return Err(ModelError::DuplicateService(svc.name.clone()));
            }
            for vip in &svc.vips {
                if let Some(other) = vips.insert(*vip, &svc.name) {
                    return Err(ModelError::DuplicateVip {
                        service: svc.name.clone(),
                        vip: *vip,
                        other: other.to_owned(),
                    });
                }
            }
            if let Some(listen) = svc.listen {
                if let Some(other) = listeners.insert(listen, &svc.name) {
                    return Err(ModelError::DuplicateListener {
                        service: svc.name.clone(),
                        listen,
                        other: other.to_owned(),
                    });
                }
            }
            let mut addrs = HashSet::new();
            for ep in &svc.endpoints {
                if !addrs.insert(ep.address) {
                    return Err(ModelError::DuplicateEndpoint {
                        service: svc.name.clone(),
                        address: ep.address,
                    });
                }
            }
            for (i, route) in svc.routes.iter().enumerate() {
                route.validate(&svc.name, i)?;
            }
            match (svc.policy, &svc.hash_header) {
                (Policy::RingHash, None) => return Err(ModelError::RingHashWithoutHeader(svc.name.clone())),
                (Policy::RingHash, Some(h)) => {
                    if h.is_empty()
                        || h.bytes().any(|b| b.is_ascii_uppercase())
                        || http::HeaderName::from_bytes(h.as_bytes()).is_err()
                        || h.starts_with(':')
                    {
                        return Err(ModelError::BadHashHeader {
                            service: svc.name.clone(),
                            header: h.clone(),
                        });
                    }
                }
                (_, Some(_)) => return Err(ModelError::HeaderWithoutRingHash(svc.name.clone())),
                (_, None) => {}
            }
        }
        gateway::validate_all(&self.gateways, &|name| names.contains(name), &listeners)?;
        Ok(())
    }

    /// The service a VIP belongs to.
    pub fn service_by_vip(&self, vip: SocketAddr) -> Option<&Service> {
        self.services.iter().find(|s| s.vips.contains(&vip)).map(|s| &**s)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name).map(|s| &**s)
    }

    /// Sorts the services by name, the order [`diff`] walks them in.
    pub fn sort(&mut self) {
        self.services.sort_by(|a, b| a.name.cmp(&b.name));
        self.gateways.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The enrolled cgroup directories (what the kernel map holds).
    pub fn enrolled_cgroups(&self) -> Vec<PathBuf> {
        self.enrolled.iter().map(|e| e.cgroup.clone()).collect()
    }
}

/// What changed for one service between two models.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Added(&'a Arc<Service>),
    Removed(&'a Arc<Service>),
    /// The same name, another `Arc` (its content may still be equal).
    Changed {
        old: &'a Arc<Service>,
        new: &'a Arc<Service>,
    },
}

impl<'a> Change<'a> {
    /// The name of the service that changed.
    pub fn name(&self) -> &'a str {
        match self {
            Change::Added(s) | Change::Removed(s) | Change::Changed { new: s, .. } => &s.name,
        }
    }
}

/// The services that differ between `old` and `new`, by name, skipping
/// those whose `Arc` both share. Lists sorted by name ([`Model::sort`]) are
/// walked side by side, without hashing; other lists are compared through a
/// map by name.
pub fn diff<'a>(old: &'a [Arc<Service>], new: &'a [Arc<Service>]) -> Vec<Change<'a>> {
    if let Some(changes) = diff_in_place(old, new) {
        return changes;
    }
    let sorted = |l: &[Arc<Service>]| l.windows(2).all(|w| w[0].name < w[1].name);
    if !(sorted(old) && sorted(new)) {
        return diff_unsorted(old, new);
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if Arc::ptr_eq(o, n) => Ordering::Equal,
            (Some(o), Some(n)) => o.name.cmp(&n.name),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                out.push(Change::Removed(&old[i]));
                i += 1;
            }
            Ordering::Greater => {
                out.push(Change::Added(&new[j]));
                j += 1;
            }
            Ordering::Equal => {
                if !Arc::ptr_eq(&old[i], &new[j]) {
                    out.push(Change::Changed {
                        old: &old[i],
                        new: &new[j],
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// The common case, found by pointers alone: the same services in the same
/// places, some of them replaced. `None` if a service came or went.
fn diff_in_place<'a>(old: &'a [Arc<Service>], new: &'a [Arc<Service>]) -> Option<Vec<Change<'a>>> {
    if old.len() != new.len() {
        return None;
    }
    let mut out = Vec::new();
    for (o, n) in old.iter().zip(new) {
        if Arc::ptr_eq(o, n) {
            continue;
        }
        if o.name != n.name {
            return None;
        }
        out.push(Change::Changed { old: o, new: n });
    }
    Some(out)
}

fn diff_unsorted<'a>(old: &'a [Arc<Service>], new: &'a [Arc<Service>]) -> Vec<Change<'a>> {
    let before: HashMap<&str, &Arc<Service>> = old.iter().map(|s| (s.name.as_str(), s)).collect();
    let after: HashSet<&str> = new.iter().map(|s| s.name.as_str()).collect();
    let mut out: Vec<Change<'a>> = old
        .iter()
        .filter(|s| !after.contains(s.name.as_str()))
        .map(Change::Removed)
        .collect();
    for n in new {
        match before.get(n.name.as_str()) {
            None => out.push(Change::Added(n)),
            Some(o) if !Arc::ptr_eq(o, n) => out.push(Change::Changed { old: o, new: n }),
            Some(_) => {}
        }
    }
    out
}

impl Route {
    fn validate(&self, service: &str, route: usize) -> Result<(), ModelError> {
        if self.backends.is_empty() {
            return Err(ModelError::NoBackends {
                service: service.to_owned(),
                route,
            });
        }
        if self.backends.iter().all(|b| b.weight == 0) {
            return Err(ModelError::AllWeightsZero {
                service: service.to_owned(),
                route,
            });
        }
        let bad_filter = |error| ModelError::BadFilter {
            service: service.to_owned(),
            route,
            error,
        };
        self.filters.validate().map_err(bad_filter)?;
        for b in &self.backends {
            b.filters.validate().map_err(bad_filter)?;
            if !b.filters.mirrors.is_empty() {
                return Err(ModelError::BackendMirror {
                    service: service.to_owned(),
                    route,
                });
            }
        }
        let patterns = self.matches.iter().flat_map(|m| {
            m.service
                .iter()
                .chain(m.method.iter())
                .chain(m.headers.iter().map(|h| &h.value))
        });
        for p in patterns {
            if let StringMatch::RegularExpression(pattern) = p {
                if let Err(e) = regex::Regex::new(pattern) {
                    let reason = e.to_string().lines().last().unwrap_or_default().to_owned();
                    return Err(ModelError::BadRegex {
                        service: service.to_owned(),
                        route,
                        pattern: pattern.clone(),
                        reason,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    fn svc(name: &str, vip: &str) -> Service {
        Service {
            name: name.into(),
            vips: vec![vip.parse().unwrap()],
            listen: None,
            policy: Policy::default(),
            hash_header: None,
            endpoints: vec![Endpoint::ready("127.0.0.1:1".parse().unwrap(), Labels::new())],
            routes: vec![],
            fault: None,
            traffic_distribution: TrafficDistribution::Any,
            internal_traffic_policy: InternalTrafficPolicy::Cluster,
            ejection: None,
        }
    }

    #[test]
    fn policy_round_trips_through_its_name() {
        for name in Policy::NAMES {
            assert_eq!(name.parse::<Policy>().unwrap().as_str(), name);
        }
        assert_eq!(
            "random".parse::<Policy>().unwrap_err().to_string(),
            "unknown policy `random` (expected one of round-robin, least-request, peak-ewma, ring-hash)"
        );
    }

    #[test]
    fn duplicate_vips_are_refused() {
        let m = Model {
            services: vec![Arc::new(svc("a", "10.0.0.1:80")), Arc::new(svc("b", "10.0.0.1:80"))],
            enrolled: vec![],
            locality: Locality::default(),
            gateways: vec![],
        };
        assert!(matches!(m.validate(), Err(ModelError::DuplicateVip { .. })));
    }

    #[test]
    fn routes_need_a_weighted_backend_and_valid_regex() {
        let mut s = svc("a", "10.0.0.1:80");
        s.routes.push(Route {
            name: None,
            matches: vec![],
            backends: vec![Backend {
                labels: Labels::new(),
                weight: 0,
                filters: Filters::default(),
            }],
            filters: Filters::default(),
            timeout: None,
        });
        let m = Model {
            services: vec![Arc::new(s.clone())],
            enrolled: vec![],
            locality: Locality::default(),
            gateways: vec![],
        };
        assert!(matches!(m.validate(), Err(ModelError::AllWeightsZero { .. })));

        s.routes[0].backends[0].weight = 1;
        s.routes[0].matches.push(RouteMatch {
            method: Some(StringMatch::RegularExpression("Say(".into())),
            ..RouteMatch::default()
        });
        let m = Model {
            services: vec![Arc::new(s)],
            enrolled: vec![],
            locality: Locality::default(),
            gateways: vec![],
        };
        assert!(matches!(m.validate(), Err(ModelError::BadRegex { .. })));
    }

    fn names(changes: &[Change<'_>]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Added(s) => format!("+{}", s.name),
                Change::Removed(s) => format!("-{}", s.name),
                Change::Changed { new, .. } => format!("~{}", new.name),
            })
            .collect()
    }

    #[test]
    fn diff_names_what_was_added_removed_and_replaced_and_skips_shared_services() {
        let a = Arc::new(svc("a", "10.0.0.1:80"));
        let b = Arc::new(svc("b", "10.0.0.2:80"));
        let c = Arc::new(svc("c", "10.0.0.3:80"));
        let b2 = Arc::new(svc("b", "10.0.0.9:80"));
        let d = Arc::new(svc("d", "10.0.0.4:80"));
        let old = vec![Arc::clone(&a), Arc::clone(&b), Arc::clone(&c)];
        let new = vec![Arc::clone(&b2), Arc::clone(&c), Arc::clone(&d)];
        assert_eq!(names(&diff(&old, &new)), ["-a", "~b", "+d"]);
        assert!(diff(&old, &old.clone()).is_empty());
        // Unsorted lists give the same answer.
        let old_unsorted = vec![Arc::clone(&c), Arc::clone(&a), Arc::clone(&b)];
        let new_unsorted = vec![Arc::clone(&d), Arc::clone(&b2), Arc::clone(&c)];
        let mut got = names(&diff(&old_unsorted, &new_unsorted));
        got.sort();
        assert_eq!(got, ["+d", "-a", "~b"]);
    }

    #[test]
    fn ring_hash_and_its_header_come_together() {
        let mut s = svc("a", "10.0.0.1:80");
        let check = |s: &Service| {
            Model {
                services: vec![Arc::new(s.clone())],
                enrolled: vec![],
                locality: Locality::default(),
                gateways: vec![],
            }
            .validate()
        };
        s.policy = Policy::RingHash;
        assert_eq!(check(&s), Err(ModelError::RingHashWithoutHeader("a".into())));
        s.hash_header = Some("x-user-id".into());
        assert_eq!(check(&s), Ok(()));
        s.hash_header = Some("X-User".into());
        assert!(matches!(check(&s), Err(ModelError::BadHashHeader { .. })));
        s.hash_header = Some("x-user-id".into());
        s.policy = Policy::LeastRequest;
        assert_eq!(check(&s), Err(ModelError::HeaderWithoutRingHash("a".into())));
    }

    #[test]
    fn fault_values_parse_or_name_what_is_wrong() {
        assert_eq!(parse_abort_code("UNAVAILABLE"), Ok(14));
        assert_eq!(parse_abort_code("resource_exhausted"), Ok(8));
        assert_eq!(parse_abort_code("3"), Ok(3));
        assert_eq!(parse_abort_code("OK"), Err(ModelError::BadAbortStatus("OK".into())));
        assert_eq!(parse_abort_code("17"), Err(ModelError::BadAbortStatus("17".into())));
        assert_eq!(parse_abort_code("NOPE"), Err(ModelError::BadAbortStatus("NOPE".into())));
        assert_eq!(parse_duration("500ms"), Ok(std::time::Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(std::time::Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(std::time::Duration::from_secs(120)));
        for bad in ["", "5", "5h", "ms", "-1s", "2d", "61m"] {
            assert_eq!(parse_duration(bad), Err(ModelError::BadDuration(bad.into())), "{bad:?}");
        }
        assert_eq!(Share::from_percent(50.0).map(Share::per_million), Some(500_000));
        assert_eq!(Share::from_percent(0.1).map(Share::per_million), Some(1_000));
        assert_eq!(Share::from_percent(100.5), None);
        assert!(Share::ALL.contains(Share::MILLION - 1));
        assert!(!Share::from_percent(0.0).unwrap().contains(0));
    }
}
