//! The admin API's JSON documents: what `/api/v1/*` serves and what
//! `balancerctl` reads. Plain data, stable field names; optional fields are
//! `null` when the agent does not know them.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    balance::{EndpointSnapshot, ServiceSnapshot},
    model,
};

pub use crate::balance::{
    explain::{BackendPath, EndpointPath, Explanation, RouteChoice, TierPath},
    EndpointStats, ServiceCounters,
};

/// `/api/v1/status`: what `/readyz` decides on, and where the state comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub ready: bool,
    /// Ready, or not ready for reasons that last until an operator acts (a
    /// node without cgroup v2, a program that rewrites VIPs first): the
    /// agent is done starting. The DaemonSet's readiness probe passes on
    /// it, so such a node does not hold up a rollout.
    #[serde(default)]
    pub settled: bool,
    /// Why the agent is not ready (empty when it is).
    pub not_ready: Vec<String>,
    /// Worth knowing, no reason to be unready.
    #[serde(default)]
    pub warnings: Vec<String>,
    pub ebpf: bool,
    pub programs_attached: bool,
    pub source: SourceStatus,
    pub uptime_seconds: f64,
    /// The sweeps for enrolled pods' connections that bypass the agent;
    /// `None` when they do not run (static mode, eBPF off).
    #[serde(default)]
    pub pinned: Option<PinnedSweeps>,
}

/// What the periodic sweeps for pinned connections found: an enrolled
/// pod's connections to a balanced VIP that bypass the agent (opened before
/// the pod was enrolled).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PinnedSweeps {
    /// Time between sweeps.
    pub interval_seconds: f64,
    /// Sweeps so far.
    pub sweeps: u64,
    /// How long the last sweep took (closes wait for the node-wide rate).
    pub last_sweep_seconds: f64,
    /// Pinned connections the last sweep left open, on the node.
    pub pinned: u64,
    /// The same, by the pods' namespace.
    pub pinned_by_namespace: BTreeMap<String, u64>,
    /// Pinned connections closed so far (pods opted in with
    /// `balancer.io/reconnect-pinned: enabled`).
    pub closed: u64,
    /// Closes put off to a later sweep by the rate limit, so far.
    pub deferred: u64,
    /// Pods' sweeps that stopped short, by reason (`cgroup_gone`,
    /// `not_visible`, `permission`, `close_refused`, `other`).
    pub errors: BTreeMap<String, u64>,
}

/// Where services and enrolled pods come from (static file or Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// `static` or `kubernetes`.
    pub kind: String,
    /// The file, or the API server.
    pub location: Option<String>,
    /// The state has been read completely at least once.
    pub synced: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The last failed reload's error, until a reload succeeds.
    pub last_error: Option<String>,
    /// Kubernetes mode: opted-in pods not enrolled because their cgroup
    /// was not found in time (each has a `CgroupNotFound` Event).
    #[serde(default)]
    pub pods_cgroup_missing: Option<u64>,
    /// Kubernetes mode: routing objects (GRPCRoutes, VirtualServices,
    /// DestinationRules) not applied as written, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<String>,
}

/// `/api/v1/services[/{name}]`: a balanced service, its policy, routes and
/// per-endpoint state. Its counters are the balancer's snapshot
/// ([`ServiceCounters`]: `calls`, `no_endpoint`, `retries`,
/// `l4_connections`), flattened into the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub vips: Vec<SocketAddr>,
    pub listen: Option<SocketAddr>,
    pub policy: String,
    /// With policy `ring-hash`: the request header whose value picks the
    /// endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Faults injected into the service's calls, e.g. `delay 500ms to 10%,
    /// abort UNAVAILABLE to 5%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    pub routes: Vec<Route>,
    pub endpoints: Vec<Endpoint>,
    #[serde(flatten)]
    pub counters: ServiceCounters,
    /// `PreferClose` when calls prefer close endpoints; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
    /// `Local` when calls stay on the agent's node; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// The service's own outlier detection, e.g. `after 3 consecutive
    /// failures, for 30s (growing)`; absent: the agent's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<String>,
}

impl Service {
    /// Calls that did not end with OK: those that ended so on an endpoint
    /// (resets included) and those the agent answered UNAVAILABLE itself.
    pub fn errors(&self) -> u64 {
        self.endpoints.iter().map(|e| e.stats.errors()).sum::<u64>() + self.counters.no_endpoint
    }

    pub fn in_flight(&self) -> u64 {
        self.endpoints.iter().map(|e| e.stats.in_flight).sum()
    }

    /// The service as configured, with the statistics of `live` (the
    /// balancer's snapshot of it; zeros without one).
    pub fn new(svc: &model::Service, live: Option<&ServiceSnapshot>) -> Self {
        let live_eps: HashMap<SocketAddr, &EndpointSnapshot> = live
            .map(|l| l.endpoints.iter().map(|e| (e.address, e)).collect())
            .unwrap_or_default();
        let endpoints = svc
            .endpoints
            .iter()
            .map(|ep| Endpoint::new(ep, live_eps.get(&ep.address).copied()))
            .collect();
        Service {
            name: svc.name.clone(),
            vips: svc.vips.clone(),
            listen: svc.listen,
            policy: svc.policy.to_string(),
            hash_header: svc.hash_header.clone(),
            fault: svc.fault.as_ref().map(ToString::to_string),
            routes: svc.routes.iter().map(Route::from_model).collect(),
            endpoints,
            counters: live.map(|l| l.counters).unwrap_or_default(),
            traffic_distribution: (svc.traffic_distribution != model::TrafficDistribution::Any)
                .then(|| svc.traffic_distribution.as_str().to_owned()),
            internal_traffic_policy: (svc.internal_traffic_policy != model::InternalTrafficPolicy::Cluster)
                .then(|| svc.internal_traffic_policy.as_str().to_owned()),
            ejection: svc.ejection.map(|e| match e.consecutive_failures {
                0 => "off".to_owned(),
                n if e.max_percent < 100 => format!(
                    "after {n} consecutive failures, for {:?} (growing), at most {}% of endpoints at once",
                    e.base, e.max_percent
                ),
                n => format!("after {n} consecutive failures, for {:?} (growing)", e.base),
            }),
        }
    }
}

/// `delay 500ms to 10% of calls, abort UNAVAILABLE ("msg") to 5% of calls`.
/// A route in display form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub name: Option<String>,
    /// One string per match, e.g. `service=helloworld.Greeter method=~Say.*`;
    /// `*` matches every call.
    pub matches: Vec<String>,
    pub backends: Vec<Backend>,
    /// Header modifiers and mirrors, one line each, e.g. `request: set
    /// x-tenant=a, remove x-debug`, `backend 1 response: add x-v=2`,
    /// `mirror: shadow 10%`.
    #[serde(default)]
    pub filters: Vec<String>,
    /// How long the route's calls may take, e.g. `300ms`; absent: no limit
    /// but the call's own `grpc-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// One string per match, e.g. `service=helloworld.Greeter method=~Say.*`;
/// `*` for a match (or a list of none) that takes every call.
fn describe_matches(matches: &[model::RouteMatch]) -> Vec<String> {
    fn sm(m: &model::StringMatch) -> String {
        match m {
            model::StringMatch::Exact(s) => format!("={s}"),
            model::StringMatch::RegularExpression(s) => format!("=~{s}"),
        }
    }
    if matches.is_empty() {
        return vec!["*".to_owned()];
    }
    matches
        .iter()
        .map(|m| {
            let mut parts = Vec::new();
            if let Some(s) = &m.service {
                parts.push(format!("service{}", sm(s)));
            }
            if let Some(s) = &m.method {
                parts.push(format!("method{}", sm(s)));
            }
            for h in &m.headers {
                parts.push(format!("header:{}{}", h.name, sm(&h.value)));
            }
            if parts.is_empty() {
                "*".to_owned()
            } else {
                parts.join(" ")
            }
        })
        .collect()
}

/// A gateway as configured: its listeners and the routes attached to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    pub name: String,
    pub listeners: Vec<GatewayListener>,
    /// In order: the first that matches a call takes it.
    pub routes: Vec<GatewayRoute>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayListener {
    pub name: String,
    pub address: SocketAddr,
    /// `tls` (ALPN `h2`), or `h2c` (cleartext HTTP/2 with prior knowledge).
    pub protocol: String,
    /// The hosts it takes; empty: any.
    pub hostnames: Vec<String>,
    /// Where its certificates come from (files or Secrets; never key
    /// material).
    pub certificates: Vec<String>,
    /// Calls it answered itself: no such host, no route for the call, or
    /// the route's service not available.
    #[serde(default)]
    pub unrouted: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayRoute {
    pub name: Option<String>,
    /// Listener names it is attached to; empty: every listener.
    pub listeners: Vec<String>,
    pub hostnames: Vec<String>,
    /// As in [`Route::matches`].
    pub matches: Vec<String>,
    pub backends: Vec<GatewayBackend>,
}

/// A share of a gateway route's calls for a balanced service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayBackend {
    pub service: String,
    pub weight: u32,
}

impl Gateway {
    pub fn from_model(g: &model::Gateway) -> Self {
        Gateway {
            name: g.name.clone(),
            listeners: g
                .listeners
                .iter()
                .map(|l| GatewayListener {
                    name: l.name.clone(),
                    address: l.address,
                    protocol: if l.is_tls() { "tls" } else { "h2c" }.to_owned(),
                    hostnames: l.hostnames.clone(),
                    certificates: l.certificates.iter().map(ToString::to_string).collect(),
                    unrouted: 0,
                })
                .collect(),
            routes: g
                .routes
                .iter()
                .map(|r| GatewayRoute {
                    name: r.name.clone(),
                    listeners: r.listeners.clone(),
                    hostnames: r.hostnames.clone(),
                    matches: describe_matches(&r.matches),
                    backends: r
                        .backends
                        .iter()
                        .map(|b| GatewayBackend {
                            service: b.service.clone(),
                            weight: b.weight,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    /// Label selector, e.g. `version=v1` (`*` for every endpoint).
    pub selector: String,
    pub weight: u32,
}

impl Route {
    pub fn from_model(r: &model::Route) -> Self {
        Route {
            name: r.name.clone(),
            matches: describe_matches(&r.matches),
            backends: r
                .backends
                .iter()
                .map(|b| Backend {
                    selector: selector(&b.labels),
                    weight: b.weight,
                })
                .collect(),
            filters: crate::balance::filters::describe(r),
            timeout: r.timeout.map(|d| format!("{d:?}")),
        }
    }
}

pub use crate::model::selector;

/// One endpoint of a service: where it is, what it is, and the balancer's
/// statistics of it ([`EndpointStats`], flattened into the document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// `ready` or `draining`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub zone: Option<String>,
    pub node: Option<String>,
    /// Its locality tier for this agent, when the service prefers close
    /// endpoints or stays on the node: `node`, `zone`, `other`, or
    /// `off-node` (takes no call: `internalTrafficPolicy: Local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(flatten)]
    pub stats: EndpointStats,
}

impl Endpoint {
    /// The endpoint as configured, with the statistics of `live` (zeros
    /// without one). Draining in either is draining.
    pub fn new(ep: &model::Endpoint, live: Option<&EndpointSnapshot>) -> Self {
        let draining = ep.state == model::EndpointState::Draining || live.is_some_and(|l| l.draining);
        Endpoint {
            address: ep.address,
            state: if draining { "draining" } else { "ready" }.to_owned(),
            labels: (*ep.labels).clone(),
            zone: ep.zone.as_deref().map(str::to_owned),
            node: ep.node.as_deref().map(str::to_owned),
            locality: None,
            stats: live.map(|l| l.stats.clone()).unwrap_or_default(),
        }
    }
}

/// `/api/v1/pods`: an enrolled cgroup (a pod, in Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    /// `namespace/name` in Kubernetes; `None` in static mode.
    pub pod: Option<String>,
    /// The cgroup v2 id (inode number of its directory), as the kernel maps
    /// hold it; `None` when the directory does not exist (yet).
    pub cgroup_id: Option<u64>,
    /// The cgroup's directory.
    pub cgroup: String,
    /// The pod's IP, when known (its IPv4 one: the address its redirected
    /// connections come from).
    pub ip: Option<String>,
    /// Whether its pinned connections are closed so that it re-dials
    /// through the agent (`balancer.io/reconnect-pinned: enabled`).
    #[serde(default)]
    pub reconnect_pinned: bool,
    /// Its connections to a balanced VIP that bypass the agent, left open
    /// by the last sweep; `None` before its first sweep, when sweeps do not
    /// run, or when the sweep could not look (`pinned_error`).
    #[serde(default)]
    pub pinned: Option<u64>,
    /// Its pinned connections the agent closed so far.
    #[serde(default)]
    pub pinned_closed: u64,
    /// Why its last sweep stopped short.
    #[serde(default)]
    pub pinned_error: Option<String>,
}

impl Pod {
    /// An enrolled cgroup of the model, its id read from the directory.
    pub fn from_model(e: &model::Enrolled) -> Self {
        Pod {
            pod: e.pod.as_ref().map(ToString::to_string),
            cgroup_id: crate::cgroup::cgroup_id(&e.cgroup).ok(),
            cgroup: e.cgroup.display().to_string(),
            ip: e.pod.as_ref().and_then(|p| p.ips.first()).map(ToString::to_string),
            reconnect_pinned: e.reconnect_pinned,
            pinned: None,
            pinned_closed: 0,
            pinned_error: None,
        }
    }
}

/// `/api/v1/conns`: one client connection the agent holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conn {
    pub id: u64,
    /// The client's address (the pod's IP and port).
    pub peer: SocketAddr,
    /// The enrolled pod (or cgroup) it came from, when known.
    pub pod: Option<String>,
    /// What the client dialed (the Service VIP), for redirected connections;
    /// the listener for explicit listeners.
    pub original_dst: Option<SocketAddr>,
    pub service: Option<String>,
    /// `h2` (per-call balancing) or `tcp` (plain TCP fallback); `new` until
    /// the first bytes decided it.
    pub protocol: String,
    pub open_streams: u64,
    pub total_streams: u64,
    pub age_seconds: f64,
}

/// `/api/v1/programs`: one kernel program of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub id: u32,
    pub name: String,
    /// Kernel program type, e.g. `cgroup_sock_addr`.
    #[serde(rename = "type")]
    pub prog_type: String,
    /// Attach type, e.g. `cgroup_inet4_connect`.
    pub attach_type: Option<String>,
    /// Where it is attached: a cgroup directory or a map.
    pub attach_point: Option<String>,
    /// Run count and time (kernel statistics; `None` when not enabled).
    pub run_count: Option<u64>,
    pub run_time_ns: Option<u64>,
    /// The program's own counters (redirected, passed, errors, ...).
    pub counters: BTreeMap<String, u64>,
}

/// `/api/v1/maps`: one kernel map of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Map {
    pub id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub map_type: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// Current number of entries, when counted.
    pub entries: Option<u64>,
}

/// `/api/v1/maps/{name}`: a map's entries, keys and values decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapDump {
    pub id: u32,
    pub name: String,
    pub entries: Vec<MapEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapEntry {
    /// Decoded key (e.g. `10.96.0.10:8000`, `cgroup 1234 (/sys/fs/...)`).
    pub key: String,
    /// Decoded value.
    pub value: String,
    /// Raw bytes, hex (as bpftool shows them).
    pub key_hex: String,
    pub value_hex: String,
}

/// `/api/v1/stats`: per-service call counts and latency histograms, for
/// `balancerctl stats` (rates and percentiles come from two samples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub uptime_seconds: f64,
    pub services: Vec<ServiceStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub service: String,
    /// Calls the service received ([`ServiceCounters::calls`]).
    pub calls: u64,
    /// Calls that did not end with OK ([`Service::errors`]).
    pub errors: u64,
    /// Of those, calls the agent answered UNAVAILABLE for want of an
    /// endpoint ([`ServiceCounters::no_endpoint`]).
    #[serde(default)]
    pub no_endpoint: u64,
    pub in_flight: u64,
    pub latency: Histogram,
}

/// A latency histogram: `counts[i]` calls took at most `bounds[i]` seconds
/// (and more than `bounds[i-1]`); the last count is above every bound.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `self - earlier`, bucket by bucket (for rates over an interval). If
    /// the bounds differ (agent restarted with another build) it is `self`.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        if earlier.bounds != self.bounds || earlier.counts.len() != self.counts.len() {
            return self.clone();
        }
        Histogram {
            bounds: self.bounds.clone(),
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
        }
    }

    /// The `q` quantile (0..=1) in seconds, interpolated linearly inside its
    /// bucket as Prometheus' `histogram_quantile` does; `None` without
    /// samples. Above the last bound it answers the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = (rank - seen as f64) / c as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            seen += c;
        }
        self.bounds.last().copied()
    }
}

/// The error document every failing `/api/v1` request answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let h = Histogram {
            bounds: vec![0.001, 0.002, 0.004],
            counts: vec![50, 40, 10, 0],
            sum_seconds: 0.1,
        };
        // 50% of 100 is the last sample of the first bucket.
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-9, "{p50}");
        // 99th: 9 of the 10 in (0.002, 0.004].
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - 0.0038).abs() < 1e-9, "{p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn since_subtracts_bucketwise() {
        let a = Histogram {
            bounds: vec![1.0],
            counts: vec![3, 1],
            sum_seconds: 2.0,
        };
        let b = Histogram {
            bounds: vec![1.0],
            counts: vec![5, 4],
            sum_seconds: 6.0,
        };
        let d = b.since(&a);
        assert_eq!(d.counts, vec![2, 3]);
        assert_eq!(d.count(), 5);
        assert!((d.sum_seconds - 4.0).abs() < 1e-9);
    }
}
