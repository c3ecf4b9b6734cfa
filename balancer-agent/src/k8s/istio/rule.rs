//! A DestinationRule as applied to its Service: its subsets, its
//! load-balancing policy and its outlier detection as the agent's ejection.
//! The Service a host names is resolved here for both kinds.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::{
    error::IstioError,
    object::DestinationRule,
    spec::{self, DestinationRuleSpec, Other},
};
use crate::{
    k8s::translator::Key,
    model::{Ejection, Labels, Policy},
};

/// Istio's defaults when `outlierDetection` leaves them out.
const ISTIO_CONSECUTIVE_5XX: u32 = 5;
const ISTIO_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Istio's default `maxEjectionPercent`.
const ISTIO_MAX_EJECTION_PERCENT: u32 = 10;

/// The Service a host names, relative to `namespace`: `name`, `name.ns`,
/// `name.ns.svc` and `name.ns.svc.<cluster domain>`.
pub fn resolve_host(host: &str, namespace: &str) -> Option<Key> {
    if host.contains('*') || host.is_empty() {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    match parts[..] {
        [name] => Some((namespace.to_owned(), name.to_owned())),
        [name, ns] => Some((ns.to_owned(), name.to_owned())),
        [name, ns, "svc", ..] => Some((ns.to_owned(), name.to_owned())),
        _ => None,
    }
}

/// Names each field of `other` as not supported, under `path`.
pub(super) fn unsupported(path: &str, other: &Other, notes: &mut Vec<String>) {
    for field in other.keys() {
        notes.push(format!("{path}{field} (not supported)"));
    }
}

/// A DestinationRule as applied to its Service.
pub(super) struct Rule {
    pub name: String,
    pub uid: Option<String>,
    pub subsets: BTreeMap<String, Labels>,
    pub policy: Option<(Policy, Option<String>)>,
    pub ejection: Option<Ejection>,
}

/// Reads a DestinationRule: the Service it names and what applies to it;
/// what does not map goes into `notes`.
pub(super) fn destination_rule<'a>(
    dr: &DestinationRule,
    lookup: &impl Fn(&str, &str) -> Option<&'a Service>,
    notes: &mut Vec<String>,
) -> Result<(Key, Rule), IstioError> {
    let spec: DestinationRuleSpec = spec::parse(&dr.spec).map_err(IstioError::Malformed)?;
    let namespace = dr.namespace().unwrap_or_default();
    let key = resolve_host(&spec.host, &namespace)
        .filter(|k| lookup(&k.0, &k.1).is_some())
        .ok_or_else(|| IstioError::NoService(format!("host `{}`", spec.host)))?;
    unsupported("", &spec.other, notes);
    if !spec.export_to.is_empty() && !spec.export_to.iter().any(|e| e == "*") {
        notes.push("exportTo (every agent applies the rule)".to_owned());
    }
    let mut policy = None;
    let mut ejection = None;
    if let Some(tp) = &spec.traffic_policy {
        unsupported("trafficPolicy.", &tp.other, notes);
        if let Some(lb) = &tp.load_balancer {
            unsupported("trafficPolicy.loadBalancer.", &lb.other, notes);
            policy = load_balancer(lb, notes);
        }
        if let Some(od) = &tp.outlier_detection {
            ejection = Some(outlier_detection(od, notes));
        }
    }
    let mut subsets = BTreeMap::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if s.traffic_policy.is_some() {
            notes.push(format!("subsets[{i}].trafficPolicy (not supported)"));
        }
        unsupported(&format!("subsets[{i}]."), &s.other, notes);
        if subsets.insert(s.name.clone(), s.labels.clone()).is_some() {
            return Err(IstioError::Invalid {
                path: format!("subsets[{i}]"),
                problem: format!("subset `{}` is defined twice", s.name),
            });
        }
    }
    Ok((
        key,
        Rule {
            name: dr.name_any(),
            uid: dr.uid(),
            subsets,
            policy,
            ejection,
        },
    ))
}

/// `outlierDetection` as the agent's ejection. The agent counts as a
/// failure what Envoy counts as a gateway error on a gRPC call: a failed
/// connect and `UNAVAILABLE` (503). `consecutiveGatewayErrors` maps
/// exactly; `consecutive5xxErrors` (default 5) counts those failures only;
/// the lower non-zero threshold wins, 0 for both turns ejection off.
/// `baseEjectionTime` (default 30s) is the first ejection's length, the
/// n-th lasting n times as long, as in Envoy (capped at 300 s).
/// `maxEjectionPercent` (default 10) caps the share of the service's
/// endpoints ejected at once: one more is ejected only while fewer than
/// that share are, so at least one can be. The agent ejects at the failure
/// itself, so `interval` has no equivalent.
fn outlier_detection(od: &spec::OutlierDetection, notes: &mut Vec<String>) -> Ejection {
    unsupported("trafficPolicy.outlierDetection.", &od.other, notes);
    let five_xx = od.consecutive_5xx_errors.unwrap_or(ISTIO_CONSECUTIVE_5XX);
    let gateway = od.consecutive_gateway_errors.unwrap_or(0);
    let consecutive_failures = [five_xx, gateway].into_iter().filter(|n| *n > 0).min().unwrap_or(0);
    if od.consecutive_5xx_errors.is_some_and(|n| n > 0) && consecutive_failures == five_xx {
        notes.push(format!(
            "trafficPolicy.outlierDetection.consecutive5xxErrors counts only connect failures and UNAVAILABLE \
             (as consecutiveGatewayErrors {five_xx})"
        ));
    }
    let base = match od.base_ejection_time.as_deref() {
        None => ISTIO_BASE_EJECTION,
        Some(t) => spec::duration(t).unwrap_or_else(|| {
            notes.push(format!(
                "trafficPolicy.outlierDetection.baseEjectionTime `{t}` (not a duration; 30s used)"
            ));
            ISTIO_BASE_EJECTION
        }),
    };
    let max_percent = match od.max_ejection_percent {
        None => ISTIO_MAX_EJECTION_PERCENT,
        Some(p @ 0..=100) => p as u32,
        Some(p) => {
            notes.push(format!(
                "trafficPolicy.outlierDetection.maxEjectionPercent {p} (not 0–100; {ISTIO_MAX_EJECTION_PERCENT} used)"
            ));
            ISTIO_MAX_EJECTION_PERCENT
        }
    };
    Ejection {
        consecutive_failures,
        base,
        max_percent,
    }
}

/// `simple`: ROUND_ROBIN → round-robin; LEAST_REQUEST (and the older
/// LEAST_CONN) → least-request (both are the power of two choices);
/// RANDOM → round-robin (the same even share without the randomness).
/// `consistentHash.httpHeaderName` → ring-hash on that header.
fn load_balancer(lb: &spec::LoadBalancer, notes: &mut Vec<String>) -> Option<(Policy, Option<String>)> {
    if let Some(ch) = &lb.consistent_hash {
        unsupported("trafficPolicy.loadBalancer.consistentHash.", &ch.other, notes);
        match ch.http_header_name.as_deref().map(str::to_ascii_lowercase) {
            Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() && !h.starts_with(':') => {
                return Some((Policy::RingHash, Some(h)))
            }
            Some(h) => notes.push(format!(
                "trafficPolicy.loadBalancer.consistentHash.httpHeaderName `{h}` (not a header name)"
            )),
            None => {}
        }
    }
    match lb.simple.as_deref() {
        None | Some("UNSPECIFIED") => None,
        Some("ROUND_ROBIN" | "RANDOM") => Some((Policy::RoundRobin, None)),
        Some("LEAST_REQUEST" | "LEAST_CONN") => Some((Policy::LeastRequest, None)),
        Some(other) => {
            notes.push(format!("trafficPolicy.loadBalancer.simple `{other}` (not supported)"));
            None
        }
    }
}
