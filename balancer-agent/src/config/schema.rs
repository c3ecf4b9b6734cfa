//! The static file's YAML shape, and its translation into a [`Model`].
//!
//! Every struct denies unknown keys, so a typo is an error naming the key
//! rather than a silently ignored setting.

use std::{collections::HashSet, fmt, net::SocketAddr, path::PathBuf};

use serde::{
    de::{self, MapAccess, Visitor},
    Deserialize, Deserializer,
};

use crate::model::{
    parse_abort_code, parse_duration, Backend, Ejection, Endpoint, EndpointState, Fault, FaultAbort, FaultDelay,
    HeaderMatch, InternalTrafficPolicy, Labels, Locality, Model, ModelError, Policy, Route, RouteMatch, Service, Share,
    StringMatch, TrafficDistribution,
};

use super::{
    filters::{into_filters, FilterFile},
    NodeConfig,
};
use crate::traces::{TracingConfig, TracingError};

pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    listen: Option<Addr>,
    #[serde(default)]
    admin: Option<Addr>,
    #[serde(default)]
    attach_cgroup: Option<PathBuf>,
    #[serde(default)]
    enroll: Vec<PathBuf>,
    #[serde(default = "yes")]
    fast_path: bool,
    /// The agent's zone and node, for services that prefer close endpoints.
    #[serde(default)]
    zone: Option<NonEmpty>,
    #[serde(default)]
    node: Option<NonEmpty>,
    #[serde(default)]
    services: Vec<ServiceFile>,
    /// Listeners for clients outside the cluster (`config/gateway.rs`).
    #[serde(default)]
    gateways: Vec<super::gateway::GatewayFile>,
    #[serde(default)]
    tracing: Option<TracingFile>,
}

/// `tracing:` — the agent's spans, exported over OTLP/HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TracingFile {
    otlp_endpoint: String,
    #[serde(default)]
    sampling: Option<f64>,
    #[serde(default)]
    service_name: Option<String>,
}

impl TracingFile {
    fn into_config(self) -> Result<TracingConfig, Invalid> {
        TracingConfig::new(&self.otlp_endpoint, self.sampling, self.service_name.as_deref()).map_err(|e| {
            let key = match e {
                TracingError::BadEndpoint(_) | TracingError::NotHttp(_) => "otlp_endpoint",
                TracingError::BadSampling(_) => "sampling",
                TracingError::EmptyServiceName => "service_name",
            };
            invalid(format!("tracing.{key}"), e.to_string())
        })
    }
}

/// A name that is not empty (an empty zone or node would match endpoints
/// that have none).
#[derive(Debug)]
struct NonEmpty(String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        Ok(NonEmpty(s))
    }
}

/// `traffic_distribution:` — Kubernetes' spellings.
#[derive(Debug, Default, Deserialize)]
enum TrafficDistributionFile {
    #[default]
    Any,
    PreferClose,
    PreferSameZone,
}

/// `internal_traffic_policy:` — Kubernetes' spellings.
#[derive(Debug, Default, Deserialize)]
enum InternalTrafficPolicyFile {
    #[default]
    Cluster,
    Local,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    name: String,
    /// One VIP (`vip:`) and/or several (`vips:`).
    #[serde(default)]
    vip: Option<Addr>,
    #[serde(default)]
    vips: Vec<Addr>,
    #[serde(default)]
    listen: Option<Addr>,
    #[serde(default)]
    policy: Policy,
    /// With `policy: ring-hash`: the request header that picks the endpoint.
    #[serde(default)]
    hash_header: Option<String>,
    #[serde(default)]
    endpoints: Vec<EndpointFile>,
    #[serde(default)]
    routes: Vec<RouteFile>,
    #[serde(default)]
    traffic_distribution: TrafficDistributionFile,
    #[serde(default)]
    internal_traffic_policy: InternalTrafficPolicyFile,
    #[serde(default)]
    fault: Option<FaultFile>,
    /// The service's own outlier detection, instead of the agent's.
    #[serde(default)]
    ejection: Option<EjectionFile>,
}

/// `ejection:` of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EjectionFile {
    /// Consecutive failures (failed connects, `UNAVAILABLE`) that eject an
    /// endpoint; 0: never.
    #[serde(default = "default_consecutive_failures")]
    consecutive_failures: u32,
    /// The first ejection's length (`10s`); the n-th lasts n times as long.
    #[serde(default)]
    base: Option<String>,
    /// At most this share of the service's endpoints ejected at once.
    #[serde(default = "hundred_percent")]
    max_percent: u32,
}

fn default_consecutive_failures() -> u32 {
    Ejection::DEFAULT_CONSECUTIVE_FAILURES
}

fn hundred_percent() -> u32 {
    100
}

/// A duration at `at` that must be more than 0 (`zero` says why).
fn positive_duration(text: &str, at: String, zero: &str) -> Result<std::time::Duration, Invalid> {
    let d = parse_duration(text).map_err(|e| invalid(at.clone(), e.to_string()))?;
    if d.is_zero() {
        return Err(invalid(at, zero));
    }
    Ok(d)
}

impl EjectionFile {
    fn into_ejection(self, at: &str) -> Result<Ejection, Invalid> {
        let base = match self.base {
            None => Ejection::DEFAULT_BASE,
            Some(b) => positive_duration(&b, format!("{at}.base"), "an ejection must last more than 0")?,
        };
        if self.max_percent > 100 {
            return Err(invalid(
                format!("{at}.max_percent"),
                format!("{} is not a percentage (0–100)", self.max_percent),
            ));
        }
        Ok(Ejection {
            consecutive_failures: self.consecutive_failures,
            base,
            max_percent: self.max_percent,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    #[serde(default)]
    delay: Option<DelayFile>,
    #[serde(default)]
    abort: Option<AbortFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayFile {
    /// `500ms`, `2s`, `1m`.
    duration: String,
    #[serde(default = "hundred")]
    percent: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortFile {
    /// A gRPC status name (`UNAVAILABLE`) or number (`14`).
    status: StatusFile,
    #[serde(default = "hundred")]
    percent: f64,
    #[serde(default)]
    message: Option<String>,
}

fn hundred() -> f64 {
    100.0
}

/// A status name or number, kept as text.
#[derive(Debug)]
struct StatusFile(String);

impl<'de> Deserialize<'de> for StatusFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gRPC status name (e.g. UNAVAILABLE) or number")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StatusFile(v.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StatusFile(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StatusFile(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The message an injected abort carries unless one is given.
pub const DEFAULT_ABORT_MESSAGE: &str = "fault injected";

impl FaultFile {
    fn into_fault(self, at: &str) -> Result<Fault, Invalid> {
        let share = |p: f64, at: String| {
            Share::from_percent(p).ok_or_else(|| invalid(at, ModelError::BadPercent(p.to_string()).to_string()))
        };
        let delay = match self.delay {
            None => None,
            Some(d) => Some(FaultDelay {
                share: share(d.percent, format!("{at}.delay.percent"))?,
                duration: parse_duration(&d.duration)
                    .map_err(|e| invalid(format!("{at}.delay.duration"), e.to_string()))?,
            }),
        };
        let abort = match self.abort {
            None => None,
            Some(a) => Some(FaultAbort {
                share: share(a.percent, format!("{at}.abort.percent"))?,
                code: parse_abort_code(&a.status.0)
                    .map_err(|e| invalid(format!("{at}.abort.status"), e.to_string()))?,
                message: a.message.unwrap_or_else(|| DEFAULT_ABORT_MESSAGE.to_owned()),
            }),
        };
        if delay.is_none() && abort.is_none() {
            return Err(invalid(at.to_owned(), "a fault needs `delay` and/or `abort`"));
        }
        Ok(Fault { delay, abort })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFile {
    address: Addr,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    state: StateFile,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    node: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StateFile {
    #[default]
    Ready,
    Draining,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<MatchFile>,
    #[serde(default)]
    backends: Vec<BackendFile>,
    /// Header modifiers and mirrors (see [`super::filters`]).
    #[serde(default)]
    filters: Vec<FilterFile>,
    /// How long the route's calls may take (`2s`, `500ms`); a call's own
    /// shorter `grpc-timeout` still applies.
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MatchFile {
    #[serde(default)]
    service: Option<StringMatchFile>,
    #[serde(default)]
    method: Option<StringMatchFile>,
    #[serde(default)]
    headers: Vec<HeaderFile>,
}

/// `name` and exactly one of `value` (exact) or `regex`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFile {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendFile {
    #[serde(default)]
    labels: Labels,
    /// Gateway API's default weight.
    #[serde(default = "one")]
    weight: u32,
    /// Header modifiers for the calls sent to this backend.
    #[serde(default)]
    filters: Vec<FilterFile>,
}

fn one() -> u32 {
    1
}

/// A socket address whose parse error shows the offending text.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addr(pub(super) SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Addr).map_err(|_| {
            de::Error::custom(format!(
                "invalid socket address {s:?} (expected IP:PORT, e.g. 127.0.0.1:50051 or \"[::1]:50051\")"
            ))
        })
    }
}

/// A plain string (exact), `{ exact: ... }` or `{ regex: ... }`.
#[derive(Debug)]
struct StringMatchFile(StringMatch);

impl<'de> Deserialize<'de> for StringMatchFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMatchFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, { exact: STRING } or { regex: STRING }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringMatchFile(StringMatch::Exact(v.to_owned())))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(
                        "expected { exact: STRING } or { regex: STRING }, found {}",
                    ));
                };
                let value: String = map.next_value()?;
                let m = match kind.as_str() {
                    "exact" => StringMatch::Exact(value),
                    "regex" => StringMatch::RegularExpression(value),
                    other => return Err(de::Error::unknown_field(other, &["exact", "regex"])),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "`{extra}` given besides `{kind}`: a match is either exact or regex"
                    )));
                }
                Ok(StringMatchFile(m))
            }
        }
        d.deserialize_any(V)
    }
}

/// A check failed after deserializing: the key path and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Invalid {
    pub path: String,
    pub message: String,
}

pub(super) fn invalid(path: String, message: impl Into<String>) -> Invalid {
    Invalid {
        path,
        message: message.into(),
    }
}

impl File {
    /// Translates the file into the node settings and a model; checks what
    /// Model::validate does not (and names the key of what it does).
    pub fn into_config(self, base: &std::path::Path) -> Result<(NodeConfig, Model), Invalid> {
        let default_admin: SocketAddr = DEFAULT_ADMIN.parse().expect("the default admin address parses");
        let node = NodeConfig {
            listen: self.listen.map(|a| a.0),
            admin: self.admin.map_or(default_admin, |a| a.0),
            attach_cgroup: self.attach_cgroup,
            fast_path: self.fast_path,
            tracing: self.tracing.map(TracingFile::into_config).transpose()?,
        };
        let vip_given: Vec<bool> = self.services.iter().map(|s| s.vip.is_some()).collect();
        let names: HashSet<String> = self.services.iter().map(|s| s.name.clone()).collect();
        let services = self
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.into_service(&format!("services[{i}]"), &names))
            .collect::<Result<Vec<_>, _>>()?;
        let gateways = self
            .gateways
            .into_iter()
            .enumerate()
            .map(|(i, g)| g.into_gateway(&format!("gateways[{i}]"), base).map(std::sync::Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut model = Model {
            gateways,
            services: services.into_iter().map(std::sync::Arc::new).collect(),
            enrolled: self.enroll.into_iter().map(crate::model::Enrolled::from).collect(),
            locality: Locality {
                zone: self.zone.map(|z| z.0.into()),
                node: self.node.map(|n| n.0.into()),
            },
        };
        model
            .validate()
            .map_err(|e| locate_model_error(&model, &vip_given, e))?;
        // Errors above name services by their place in the file; the model
        // itself is sorted by name.
        model.sort();
        Ok((node, model))
    }
}

impl ServiceFile {
    fn into_service(self, at: &str, names: &HashSet<String>) -> Result<Service, Invalid> {
        let mut vips: Vec<SocketAddr> = self.vip.iter().map(|a| a.0).collect();
        vips.extend(self.vips.iter().map(|a| a.0));
        if vips.is_empty() && self.listen.is_none() {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "service `{}` has neither `vip` nor `listen`: nothing can reach it",
                    self.name
                ),
            ));
        }
        let endpoints = self
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                address: e.address.0,
                labels: e.labels.into(),
                state: match e.state {
                    StateFile::Ready => EndpointState::Ready,
                    StateFile::Draining => EndpointState::Draining,
                },
                zone: e.zone.map(Into::into),
                node: e.node.map(Into::into),
                for_zones: None,
            })
            .collect();
        let routes = self
            .routes
            .into_iter()
            .enumerate()
            .map(|(r, route)| route.into_route(&format!("{at}.routes[{r}]"), names))
            .collect::<Result<Vec<_>, _>>()?;
        let hash_header = self.hash_header.map(|h| h.to_ascii_lowercase());
        match (self.policy, &hash_header) {
            (Policy::RingHash, None) => {
                return Err(invalid(
                    format!("{at}.policy"),
                    "policy ring-hash needs `hash_header` (the request header whose value picks the endpoint)",
                ))
            }
            (Policy::RingHash, Some(h)) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                return Err(invalid(
                    format!("{at}.hash_header"),
                    format!("invalid header name {h:?}"),
                ))
            }
            (Policy::RingHash, Some(_)) => {}
            (other, Some(_)) => {
                return Err(invalid(
                    format!("{at}.hash_header"),
                    format!("`hash_header` is used only by policy ring-hash (this service's policy is {other})"),
                ))
            }
            (_, None) => {}
        }
        let fault = self.fault.map(|f| f.into_fault(&format!("{at}.fault"))).transpose()?;
        let ejection = self
            .ejection
            .map(|e| e.into_ejection(&format!("{at}.ejection")))
            .transpose()?;
        Ok(Service {
            name: self.name,
            vips,
            listen: self.listen.map(|a| a.0),
            policy: self.policy,
            hash_header,
            endpoints,
            routes,
            fault,
            traffic_distribution: match self.traffic_distribution {
                TrafficDistributionFile::Any => TrafficDistribution::Any,
                TrafficDistributionFile::PreferClose | TrafficDistributionFile::PreferSameZone => {
                    TrafficDistribution::PreferClose
                }
            },
            internal_traffic_policy: match self.internal_traffic_policy {
                InternalTrafficPolicyFile::Cluster => InternalTrafficPolicy::Cluster,
                InternalTrafficPolicyFile::Local => InternalTrafficPolicy::Local,
            },
            ejection,
        })
    }
}

/// What every route checks alike (services' and gateways'): some
/// backend with weight, and its matches. `shape` shows a backend.
pub(super) fn route_matches(
    at: &str,
    matches: Vec<MatchFile>,
    weights: &[u32],
    shape: &str,
) -> Result<Vec<RouteMatch>, Invalid> {
    if weights.is_empty() {
        return Err(invalid(
            format!("{at}.backends"),
            format!("a route needs at least one backend ({shape})"),
        ));
    }
    if weights.iter().all(|w| *w == 0) {
        return Err(invalid(format!("{at}.backends"), "every backend has weight 0"));
    }
    matches
        .into_iter()
        .enumerate()
        .map(|(m, mf)| mf.into_match(&format!("{at}.matches[{m}]")))
        .collect()
}

impl RouteFile {
    fn into_route(self, at: &str, names: &HashSet<String>) -> Result<Route, Invalid> {
        let weights: Vec<u32> = self.backends.iter().map(|b| b.weight).collect();
        let matches = route_matches(at, self.matches, &weights, "{ labels: {...}, weight: N }")?;
        let filters = into_filters(self.filters, &format!("{at}.filters"), names, true)?;
        let backends = self
            .backends
            .into_iter()
            .enumerate()
            .map(|(b, file)| {
                Ok(Backend {
                    filters: into_filters(file.filters, &format!("{at}.backends[{b}].filters"), names, false)?,
                    labels: file.labels,
                    weight: file.weight,
                })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        let timeout = self
            .timeout
            .map(|t| positive_duration(&t, format!("{at}.timeout"), "a route timeout must be more than 0"))
            .transpose()?;
        Ok(Route {
            name: self.name,
            matches,
            backends,
            filters,
            timeout,
        })
    }
}

impl MatchFile {
    fn into_match(self, at: &str) -> Result<RouteMatch, Invalid> {
        let service = self.service.map(|s| s.0);
        let method = self.method.map(|s| s.0);
        if let Some(m) = &service {
            check_regex(m, &format!("{at}.service.regex"))?;
        }
        if let Some(m) = &method {
            check_regex(m, &format!("{at}.method.regex"))?;
        }
        let headers = self
            .headers
            .into_iter()
            .enumerate()
            .map(|(h, hf)| hf.into_header(&format!("{at}.headers[{h}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteMatch {
            service,
            method,
            headers,
        })
    }
}

impl HeaderFile {
    fn into_header(self, at: &str) -> Result<HeaderMatch, Invalid> {
        let name = self.name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(
                format!("{at}.name"),
                format!("invalid header name {:?}", self.name),
            ));
        }
        let value = match (self.value, self.regex) {
            (Some(v), None) => StringMatch::Exact(v),
            (None, Some(r)) => StringMatch::RegularExpression(r),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("{at}.regex"),
                    "give either `value` (exact) or `regex`, not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    format!("{at}.name"),
                    "a header match needs `value` (exact) or `regex`",
                ))
            }
        };
        check_regex(&value, &format!("{at}.regex"))?;
        Ok(HeaderMatch { name, value })
    }
}

fn check_regex(m: &StringMatch, at: &str) -> Result<(), Invalid> {
    let StringMatch::RegularExpression(p) = m else {
        return Ok(());
    };
    regex::Regex::new(p).map(|_| ()).map_err(|e| {
        let reason = e.to_string();
        let reason = reason.lines().last().unwrap_or_default().trim();
        let reason = reason.strip_prefix("error: ").unwrap_or(reason);
        invalid(at.to_owned(), format!("invalid regular expression {p:?}: {reason}"))
    })
}

/// Names the key a Model::validate error is about.
fn locate_model_error(model: &Model, vip_given: &[bool], e: crate::model::ModelError) -> Invalid {
    use crate::model::ModelError as E;
    let index_of = |name: &str| model.services.iter().rposition(|s| s.name == name).unwrap_or_default();
    let path = match &e {
        E::UnknownPolicy(_) | E::BadAbortStatus(_) | E::BadDuration(_) | E::BadPercent(_) => "services".to_owned(),
        E::RingHashWithoutHeader(service) => format!("services[{}].policy", index_of(service)),
        E::HeaderWithoutRingHash(service) | E::BadHashHeader { service, .. } => {
            format!("services[{}].hash_header", index_of(service))
        }
        E::EmptyServiceName => {
            let i = model
                .services
                .iter()
                .position(|s| s.name.is_empty())
                .unwrap_or_default();
            format!("services[{i}].name")
        }
        E::DuplicateService(name) => format!("services[{}].name", index_of(name)),
        E::DuplicateVip { service, vip, .. } => {
            let i = index_of(service);
            let s = &model.services[i];
            // `vip:` comes first in Service::vips, then `vips:`.
            let given = vip_given.get(i).copied().unwrap_or_default();
            match s.vips.iter().position(|v| v == vip) {
                Some(0) if given => format!("services[{i}].vip"),
                Some(j) if given => format!("services[{i}].vips[{}]", j - 1),
                Some(j) => format!("services[{i}].vips[{j}]"),
                None => format!("services[{i}]"),
            }
        }
        E::DuplicateListener { service, .. } => format!("services[{}].listen", index_of(service)),
        E::DuplicateEndpoint { service, address } => {
            let i = index_of(service);
            let j = model.services[i]
                .endpoints
                .iter()
                .rposition(|ep| ep.address == *address)
                .unwrap_or_default();
            format!("services[{i}].endpoints[{j}].address")
        }
        E::Gateway(g) => super::gateway::locate(model, g),
        E::NoBackends { service, route }
        | E::AllWeightsZero { service, route }
        | E::BadRegex { service, route, .. }
        | E::BadFilter { service, route, .. }
        | E::BackendMirror { service, route } => {
            format!("services[{}].routes[{route}]", index_of(service))
        }
    };
    invalid(path, e.to_string())
}
