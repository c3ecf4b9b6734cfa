//! What the table would do with a call, without doing it: the route that
//! matches, each of its backends with its share of the calls, the locality
//! tiers of each backend with theirs, the endpoints that may take the call,
//! and, for a ring-hash call with its key, the endpoint the key lands on.
//! `balancerctl service explain` shows it; no cursor moves and no counter
//! changes, so asking does not disturb the traffic.

use std::{net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use super::{
    endpoint::EndpointRt,
    locality, pick,
    route::{CallMeta, Subset},
    ServiceState,
};
use crate::model;

/// The explanation of one call (`/api/v1/services/{name}/explain`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The call's gRPC service and method, as matched.
    pub service: String,
    pub method: String,
    /// The route that takes the call (`None`: no route matches, every
    /// ready endpoint may take it).
    pub route: Option<RouteChoice>,
    /// The backends of that route (one, `*`, when no route matches).
    pub backends: Vec<BackendPath>,
    /// Faults injected into the service's calls, as configured.
    pub fault: Option<String>,
    /// Why no call can be balanced, when it is the service's own setting.
    pub no_endpoint: Option<String>,
    /// For a ring-hash service: the hash header and whether the call has it.
    pub hash_header: Option<String>,
    pub hash_key: Option<String>,
}

/// The route a call takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteChoice {
    /// Its position among the service's routes, from 0.
    pub index: usize,
    pub name: Option<String>,
    pub routes: usize,
    /// Its header modifiers and mirrors, one line each (see
    /// [`super::filters::describe`]).
    #[serde(default)]
    pub filters: Vec<String>,
    /// The route's limit on a call's duration, e.g. `300ms` (a call's own
    /// shorter `grpc-timeout` still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// One backend of the route: its label selector, weight, and where its
/// calls go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendPath {
    pub selector: String,
    pub weight: u32,
    /// The backend's share of the route's calls, 0–1.
    pub share: f64,
    /// Its endpoints by locality tier (one entry, tier `None`, when the
    /// service does not prefer close endpoints or all are in one tier).
    pub tiers: Vec<TierPath>,
    /// With a hash key: the endpoint the key lands on in this backend.
    pub hashed_to: Option<SocketAddr>,
}

/// The endpoints of a backend in one locality tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierPath {
    pub tier: Option<String>,
    /// The tier's share of the backend's new calls now, 0–1 (from how many
    /// of its endpoints are available).
    pub share: f64,
    pub endpoints: Vec<EndpointPath>,
}

/// An endpoint a call may be sent to, and whether it takes calls now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointPath {
    pub address: SocketAddr,
    /// `available`, `ejected` or `draining`.
    pub state: String,
}

impl ServiceState {
    /// Explains `call`; `svc` is the service as configured (for the
    /// backends' label selectors and the fault settings).
    pub fn explain(&self, svc: &model::Service, call: &CallMeta<'_>) -> Explanation {
        let key = self.call_key(call);
        let mut out = Explanation {
            service: call.service.to_owned(),
            method: call.method.to_owned(),
            fault: self.fault.as_ref().map(ToString::to_string),
            no_endpoint: self.no_local.as_deref().map(str::to_owned),
            hash_header: self.hash_header.as_ref().map(|h| h.as_str().to_owned()),
            ..Explanation::default()
        };
        if let Some(name) = &self.hash_header {
            call.headers.any_value(name.as_str(), &mut |v| {
                out.hash_key = Some(v.to_owned());
                true
            });
        }
        let path = |subset: &Subset, selector: String, weight: u32, share: f64| BackendPath {
            selector,
            weight,
            share,
            tiers: self.tiers(subset),
            hashed_to: key
                .and_then(|k| pick::pick(self.policy, subset, &self.endpoints, &[], Some(k)))
                .map(|e| e.address),
        };
        match self.routes.iter().position(|r| r.is_match(call)) {
            None => out.backends.push(path(&self.all, "*".to_owned(), 1, 1.0)),
            Some(index) => {
                let route = &self.routes[index];
                out.route = Some(RouteChoice {
                    index,
                    name: route.name.clone(),
                    routes: self.routes.len(),
                    filters: route.described.clone(),
                    timeout: route.timeout.map(|d| format!("{d:?}")),
                });
                let total: u64 = route.backends.iter().map(|(_, w)| u64::from(*w)).sum();
                let configured = svc.routes.get(index).map(|r| r.backends.as_slice()).unwrap_or(&[]);
                for (i, (subset, weight)) in route.backends.iter().enumerate() {
                    let selector = configured
                        .get(i)
                        .map_or_else(|| "?".to_owned(), |b| model::selector(&b.labels));
                    let share = if total == 0 {
                        0.0
                    } else {
                        f64::from(*weight) / total as f64
                    };
                    out.backends.push(path(subset, selector, *weight, share));
                }
            }
        }
        out
    }

    /// A subset's endpoints by tier, with each tier's share now.
    fn tiers(&self, subset: &Subset) -> Vec<TierPath> {
        let Some(tiers) = &subset.tiers else {
            return vec![TierPath {
                tier: None,
                share: if subset.members.is_empty() { 0.0 } else { 1.0 },
                endpoints: self.endpoint_paths(&subset.members),
            }];
        };
        let mut available = [0; 3];
        let mut total = [0; 3];
        let mut out = Vec::new();
        for (t, (tier, members)) in tiers.members().enumerate() {
            total[t] = members.len();
            available[t] = members
                .iter()
                .filter(|i| self.endpoints.get(**i).is_some_and(|e| e.is_available()))
                .count();
            out.push(TierPath {
                tier: Some(tier.as_str().to_owned()),
                share: 0.0,
                endpoints: self.endpoint_paths(members),
            });
        }
        let shares = locality::shares(available, total);
        for (t, share) in out.iter_mut().zip(shares) {
            t.share = share;
        }
        out.retain(|t| !t.endpoints.is_empty());
        out
    }

    fn endpoint_paths(&self, members: &[usize]) -> Vec<EndpointPath> {
        members
            .iter()
            .filter_map(|i| self.endpoints.get(*i))
            .map(|e| EndpointPath {
                address: e.address,
                state: state(e).to_owned(),
            })
            .collect()
    }
}

fn state(e: &Arc<EndpointRt>) -> &'static str {
    if e.is_draining() {
        "draining"
    } else if e.is_ejected() {
        "ejected"
    } else {
        "available"
    }
}
