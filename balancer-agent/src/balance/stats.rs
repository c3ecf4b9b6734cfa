//! The balancer's statistics as one snapshot: read from the atomics in one
//! place ([`super::Table::snapshot`], [`super::EndpointRt::snapshot`]) and
//! shown as they are — the admin API's documents embed these structs
//! (flattened, so their fields are the JSON's fields) and `/metrics` encodes
//! the same values. A counter added here shows up in both.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::Policy;

/// The key of a call's status in [`EndpointStats::statuses`]: `"0"` (OK) to
/// `"16"`, `"other"` for codes above 16, `"reset"` for a stream reset before
/// a status arrived. `/metrics` uses it as the `grpc_status` label.
pub const STATUS_OK: &str = "0";
pub const STATUS_OTHER: &str = "other";
pub const STATUS_RESET: &str = "reset";

/// What happened to one service's calls, counted as they happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCounters {
    /// Calls the service received: those that reached an endpoint and those
    /// the agent answered itself.
    pub calls: u64,
    /// Calls the agent answered UNAVAILABLE because no endpoint could take
    /// them (none ready, all ejected or draining, every try failed).
    pub no_endpoint: u64,
    /// Attempts retried on another endpoint (or connection).
    pub retries: u64,
    /// Client connections proxied as plain TCP (no HTTP/2 preface).
    pub l4_connections: u64,
    /// Calls delayed by fault injection.
    #[serde(default)]
    pub faults_delayed: u64,
    /// Calls aborted by fault injection.
    #[serde(default)]
    pub faults_aborted: u64,
    /// Copies of calls sent to a mirror (GRPCRoute `RequestMirror`).
    #[serde(default)]
    pub mirrored: u64,
    /// Copies not sent or cut short: no mirror endpoint or connection ready
    /// at once, too many copies in flight, or a request larger than the
    /// copy's bound.
    #[serde(default)]
    pub mirrors_dropped: u64,
    /// Copies sent (counted in `mirrored`) that the mirror never answered:
    /// unreachable, refused, reset or cancelled after their time.
    #[serde(default)]
    pub mirrors_failed: u64,
}

/// One endpoint's load, health and call statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Passive health checking keeps it out for now.
    pub ejected: bool,
    /// How much longer it stays ejected, milliseconds.
    #[serde(default)]
    pub ejected_for_ms: u64,
    /// Consecutive ejections (the back-off multiplier; 0 once recovered).
    pub ejections: u64,
    /// Every ejection since the endpoint appeared.
    pub ejections_total: u64,
    /// Failures in a row so far (connect failures, `UNAVAILABLE`).
    #[serde(default)]
    pub consecutive_failures: u64,
    pub in_flight: u64,
    /// Peak-EWMA of the time to response headers, milliseconds; `None`
    /// before the first response.
    pub ewma_ms: Option<f64>,
    /// Calls that reached the endpoint and ended (any status or reset).
    pub calls: u64,
    /// Those calls by how they ended (keys: [`STATUS_OK`], `"1"`..`"16"`,
    /// [`STATUS_OTHER`], [`STATUS_RESET`]); they sum to `calls`.
    pub statuses: BTreeMap<String, u64>,
    /// Connects that failed.
    pub connect_failures: u64,
    /// Calls it refused before handling them (REFUSED_STREAM, GOAWAY):
    /// retried elsewhere.
    #[serde(default)]
    pub refused: u64,
    /// Open HTTP/2 connections to it.
    pub upstream_connections: u64,
}

impl EndpointStats {
    /// Calls that did not end with OK (resets included).
    pub fn errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(k, _)| k.as_str() != STATUS_OK)
            .map(|(_, v)| *v)
            .sum()
    }
}

/// Statistics of every service and endpoint of the table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableSnapshot {
    pub services: Vec<ServiceSnapshot>,
}

/// One service of the table with its statistics.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSnapshot {
    pub name: String,
    pub policy: Policy,
    pub vips: Vec<SocketAddr>,
    #[serde(flatten)]
    pub counters: ServiceCounters,
    pub routes: Vec<RouteSnapshot>,
    pub endpoints: Vec<EndpointSnapshot>,
}

impl ServiceSnapshot {
    /// Calls in flight on its endpoints.
    pub fn in_flight(&self) -> u64 {
        self.endpoints.iter().map(|e| e.stats.in_flight).sum()
    }
}

/// One endpoint of the table with its statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSnapshot {
    pub address: SocketAddr,
    /// It takes no new calls.
    pub draining: bool,
    #[serde(flatten)]
    pub stats: EndpointStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteSnapshot {
    pub name: Option<String>,
    /// Its filters, one line each (see [`super::filters::describe`]).
    pub filters: Vec<String>,
    pub backends: Vec<BackendSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendSnapshot {
    pub weight: u32,
    pub endpoints: Vec<SocketAddr>,
}
