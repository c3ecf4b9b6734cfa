//! Gateway API `GRPCRoute` with a Service parent (the GAMMA mesh pattern)
//! onto the model's routes.
//!
//! A route attaches to every `parentRef` of kind `Service` (group `""`); its
//! `backendRefs` name Services in the route's namespace (one Service per
//! version: the subset pattern). Each backend Service becomes a label
//! selector, [`service_label`], over the parent's endpoints; the translator
//! adds the backend Services' endpoints to the parent, labelled with the
//! Service they came from.
//!
//! What is supported: method matches (`Exact`, `RegularExpression`) on
//! service and/or method, header matches (`Exact`, `RegularExpression`),
//! weighted `backendRefs`. Precedence is the Gateway API's: the most
//! specific match first (characters of an exact service, then of an exact
//! method, then the number of header matches), ties to the oldest route, then
//! `namespace/name`, then rule order. Filters: see [`super::route_filters`].
//! A route this agent cannot honour exactly (an unsupported filter,
//! a missing backend, all weights 0, a bad regular expression) is refused as a
//! whole — never half-applied — and reported: each [`RouteError`] names the
//! route condition it turns False ([`RouteError::condition`]), which the
//! elected agent writes in the route's status ([`super::route_status`]).

use gateway_api::grpcroutes::{
    GrpcRoute, GrpcRouteParentRefs, GrpcRouteRules, GrpcRouteRulesBackendRefs, GrpcRouteRulesMatches,
    GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethodType,
};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use kube::ResourceExt;

use super::route_status::{reason, RouteCondition};
use crate::model::{Backend, HeaderMatch, Labels, Route, RouteMatch, StringMatch};

/// Endpoint label key marking the Kubernetes Service an endpoint belongs to
/// (`service.balancer.io/<service name>: "true"`). An address can belong to
/// several Services at once (the parent selects every version, `greeter-v1`
/// one of them), so each Service has its own key.
pub const SERVICE_LABEL_PREFIX: &str = "service.balancer.io/";

/// The label (key, value) of endpoints that belong to Service `name`.
pub fn service_label(name: &str) -> (String, String) {
    (format!("{SERVICE_LABEL_PREFIX}{name}"), "true".to_owned())
}

/// Why a GRPCRoute is ignored. Rule numbers count from 0, as in
/// `spec.rules[N]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("parent Service `{service}` not found")]
    ParentNotFound { service: String },
    #[error("parent Service `{service}` has no port {port}")]
    ParentPortNotFound { service: String, port: i32 },
    #[error("rules[{rule}]: no backendRefs")]
    NoBackends { rule: usize },
    #[error("rules[{rule}]: backend Service `{service}` not found")]
    BackendNotFound { rule: usize, service: String },
    #[error("rules[{rule}]: backend Service `{service}` has no port {port}")]
    BackendPortNotFound { rule: usize, service: String, port: i32 },
    #[error("rules[{rule}]: backendRef to Service `{service}` needs a port (the Service has several)")]
    BackendPortRequired { rule: usize, service: String },
    #[error("rules[{rule}]: backendRef kind `{kind}` is not supported (only core Services)")]
    UnsupportedBackendKind { rule: usize, kind: String },
    #[error("rules[{rule}]: backendRef to namespace `{namespace}`: cross-namespace backends are not supported")]
    CrossNamespaceBackend { rule: usize, namespace: String },
    #[error("rules[{rule}]: backendRef `{service}` has negative weight {weight}")]
    NegativeWeight { rule: usize, service: String, weight: i32 },
    #[error("rules[{rule}]: every backendRef has weight 0")]
    AllWeightsZero { rule: usize },
    #[error("rules[{rule}]: bad regular expression `{pattern}`: {reason}")]
    BadRegex {
        rule: usize,
        pattern: String,
        reason: String,
    },
    #[error("rules[{rule}]: filter {filter} is not supported (RequestHeaderModifier, ResponseHeaderModifier and RequestMirror are)")]
    UnsupportedFilter { rule: usize, filter: String },
    #[error("rules[{rule}]: {reason}")]
    BadFilter { rule: usize, reason: String },
    #[error("rules[{rule}]: RequestMirror to Service `{service}` port {port}: not a gRPC port the agent balances (name it grpc or grpc-*, or set appProtocol grpc, and give the Service a cluster IP)")]
    MirrorNotBalanced { rule: usize, service: String, port: i32 },
}

impl RouteError {
    /// The condition of the route's `status.parents[]` entry this error
    /// turns False, with the Gateway API reason.
    pub fn condition(&self) -> (RouteCondition, &'static str) {
        use RouteError::*;
        match self {
            ParentNotFound { .. } | ParentPortNotFound { .. } => (RouteCondition::Accepted, reason::NO_MATCHING_PARENT),
            BackendNotFound { .. } | BackendPortNotFound { .. } => {
                (RouteCondition::ResolvedRefs, reason::BACKEND_NOT_FOUND)
            }
            UnsupportedBackendKind { .. } => (RouteCondition::ResolvedRefs, reason::INVALID_KIND),
            CrossNamespaceBackend { .. } => (RouteCondition::ResolvedRefs, reason::REF_NOT_PERMITTED),
            UnsupportedFilter { .. } => (RouteCondition::Accepted, reason::INCOMPATIBLE_FILTERS),
            NoBackends { .. }
            | BackendPortRequired { .. }
            | NegativeWeight { .. }
            | AllWeightsZero { .. }
            | BadFilter { .. }
            | MirrorNotBalanced { .. }
            | BadRegex { .. } => (RouteCondition::Accepted, reason::UNSUPPORTED_VALUE),
        }
    }

    /// Whether the error is about one parentRef rather than the rules.
    pub fn is_parent_error(&self) -> bool {
        matches!(
            self,
            RouteError::ParentNotFound { .. } | RouteError::ParentPortNotFound { .. }
        )
    }
}

/// A Service port a backendRef resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPort {
    /// The backend Service's name (in the route's namespace).
    pub service: String,
    /// The Service port's name (EndpointSlice ports carry the same name).
    pub port_name: Option<String>,
    pub port: i32,
}

/// One GRPCRoute attached to one parent Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedRoute {
    pub namespace: String,
    /// The parent Service.
    pub service: String,
    /// `parentRef.port`: only this port of the parent; `None` for all.
    pub port: Option<i32>,
    /// The model's routes, one per rule, in rule order.
    pub routes: Vec<Route>,
    /// Every backend Service port the rules select.
    pub backends: Vec<BackendPort>,
}

fn is_core_service(group: Option<&str>, kind: Option<&str>) -> bool {
    matches!(group, None | Some("")) && matches!(kind, None | Some("Service"))
}

/// The route's parentRefs that name a core Service (group `""`, kind
/// `Service`); a parentRef's group and kind default to the Gateway API's
/// Gateway.
pub fn service_parents(route: &GrpcRoute) -> impl Iterator<Item = &GrpcRouteParentRefs> {
    route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .filter(|p| matches!(p.group.as_deref(), Some("")) && p.kind.as_deref() == Some("Service"))
}

/// Checks one Service parentRef of a route in `namespace`: the Service
/// exists and has `parentRef.port`, if given.
pub fn check_parent<'a>(
    namespace: &str,
    parent: &GrpcRouteParentRefs,
    lookup: impl Fn(&str, &str) -> Option<&'a Service>,
) -> Result<(), RouteError> {
    let parent_ns = parent.namespace.as_deref().unwrap_or(namespace);
    let service = || format!("{parent_ns}/{}", parent.name);
    let Some(svc) = lookup(parent_ns, &parent.name) else {
        return Err(RouteError::ParentNotFound { service: service() });
    };
    match parent.port {
        Some(port) if find_port(svc, port).is_none() => Err(RouteError::ParentPortNotFound {
            service: service(),
            port,
        }),
        _ => Ok(()),
    }
}

/// The first backendRef of any rule that does not resolve (a Service or
/// port not found, a kind other than Service, another namespace): what the
/// Gateway API's `ResolvedRefs` condition reports. Unlike [`attach`], which
/// stops at the first problem of any kind, this looks at every backendRef.
pub fn check_refs<'a>(route: &GrpcRoute, lookup: impl Fn(&str, &str) -> Option<&'a Service>) -> Result<(), RouteError> {
    let namespace = route.namespace().unwrap_or_default();
    for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
        for r in rule.backend_refs.iter().flatten() {
            match backend_port(i, r, &namespace, &lookup) {
                Err(e) if e.condition().0 == RouteCondition::ResolvedRefs => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Translates `route` for every Service parent. `lookup(namespace, name)`
/// finds a Service. A route whose parents are all Gateways gives `Ok([])`:
/// it is some gateway's business, not the mesh's.
pub fn attach<'a>(
    route: &GrpcRoute,
    lookup: impl Fn(&str, &str) -> Option<&'a Service>,
) -> Result<Vec<AttachedRoute>, RouteError> {
    let namespace = route.namespace().unwrap_or_default();
    let parents: Vec<_> = service_parents(route).collect();
    if parents.is_empty() {
        return Ok(Vec::new());
    }

    let rules = route.spec.rules.as_deref().unwrap_or_default();
    let mut routes = Vec::with_capacity(rules.len());
    let mut backends = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = format!("{namespace}/{}#{i}", route.name_any());
        let (r, b) = rule_to_route(i, name, rule, &namespace, &lookup)?;
        routes.push(r);
        for b in b {
            if !backends.contains(&b) {
                backends.push(b);
            }
        }
    }

    let mut out = Vec::with_capacity(parents.len());
    for parent in parents {
        check_parent(&namespace, parent, &lookup)?;
        let parent_ns = parent.namespace.clone().unwrap_or_else(|| namespace.clone());
        out.push(AttachedRoute {
            namespace: parent_ns,
            service: parent.name.clone(),
            port: parent.port,
            routes: routes.clone(),
            backends: backends.clone(),
        });
    }
    Ok(out)
}

fn find_port(svc: &Service, port: i32) -> Option<&ServicePort> {
    svc.spec.as_ref()?.ports.as_ref()?.iter().find(|p| p.port == port)
}

fn rule_to_route<'a>(
    i: usize,
    name: String,
    rule: &GrpcRouteRules,
    namespace: &str,
    lookup: &impl Fn(&str, &str) -> Option<&'a Service>,
) -> Result<(Route, Vec<BackendPort>), RouteError> {
    let filters =
        super::route_filters::rule_filters(i, rule.filters.as_deref().unwrap_or_default(), namespace, lookup)?;
    let refs = rule.backend_refs.as_deref().unwrap_or_default();
    if refs.is_empty() {
        return Err(RouteError::NoBackends { rule: i });
    }
    let mut backends = Vec::with_capacity(refs.len());
    let mut ports = Vec::with_capacity(refs.len());
    for r in refs {
        let port = backend_port(i, r, namespace, lookup)?;
        let weight = r.weight.unwrap_or(1);
        let weight = u32::try_from(weight).map_err(|_| RouteError::NegativeWeight {
            rule: i,
            service: r.name.clone(),
            weight,
        })?;
        let (key, value) = service_label(&r.name);
        backends.push(Backend {
            labels: Labels::from([(key, value)]),
            weight,
            filters: super::route_filters::backend_filters(i, r.filters.as_deref().unwrap_or_default())?,
        });
        ports.push(port);
    }
    if backends.iter().all(|b| b.weight == 0) {
        return Err(RouteError::AllWeightsZero { rule: i });
    }
    let matches = rule
        .matches
        .iter()
        .flatten()
        .map(|m| to_match(i, m))
        .collect::<Result<_, _>>()?;
    Ok((
        Route {
            name: Some(name),
            matches,
            backends,
            filters,
            timeout: None,
        },
        ports,
    ))
}

pub(crate) fn backend_port<'a>(
    i: usize,
    r: &GrpcRouteRulesBackendRefs,
    namespace: &str,
    lookup: &impl Fn(&str, &str) -> Option<&'a Service>,
) -> Result<BackendPort, RouteError> {
    if !is_core_service(r.group.as_deref(), r.kind.as_deref()) {
        let kind = match r.group.as_deref() {
            Some(g) if !g.is_empty() => format!("{g}/{}", r.kind.as_deref().unwrap_or("Service")),
            _ => r.kind.clone().unwrap_or_default(),
        };
        return Err(RouteError::UnsupportedBackendKind { rule: i, kind });
    }
    if let Some(ns) = r.namespace.as_deref() {
        if ns != namespace {
            return Err(RouteError::CrossNamespaceBackend {
                rule: i,
                namespace: ns.to_owned(),
            });
        }
    }
    let Some(svc) = lookup(namespace, &r.name) else {
        return Err(RouteError::BackendNotFound {
            rule: i,
            service: format!("{namespace}/{}", r.name),
        });
    };
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let port = match r.port {
        Some(port) => ports
            .iter()
            .find(|p| p.port == port)
            .ok_or_else(|| RouteError::BackendPortNotFound {
                rule: i,
                service: format!("{namespace}/{}", r.name),
                port,
            })?,
        None => match ports {
            [only] => only,
            _ => {
                return Err(RouteError::BackendPortRequired {
                    rule: i,
                    service: format!("{namespace}/{}", r.name),
                })
            }
        },
    };
    Ok(BackendPort {
        service: r.name.clone(),
        port_name: port.name.clone().filter(|n| !n.is_empty()),
        port: port.port,
    })
}

fn string_match(i: usize, regex: bool, value: Option<&str>) -> Result<Option<StringMatch>, RouteError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if !regex {
        return Ok(Some(StringMatch::Exact(value.to_owned())));
    }
    if let Err(e) = regex::Regex::new(value) {
        let reason = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
        return Err(RouteError::BadRegex {
            rule: i,
            pattern: value.to_owned(),
            reason,
        });
    }
    Ok(Some(StringMatch::RegularExpression(value.to_owned())))
}

pub(crate) fn to_match(i: usize, m: &GrpcRouteRulesMatches) -> Result<RouteMatch, RouteError> {
    let mut out = RouteMatch::default();
    if let Some(method) = &m.method {
        let regex = matches!(method.r#type, Some(GrpcRouteRulesMatchesMethodType::RegularExpression));
        out.service = string_match(i, regex, method.service.as_deref())?;
        out.method = string_match(i, regex, method.method.as_deref())?;
    }
    let mut seen = std::collections::HashSet::new();
    for h in m.headers.iter().flatten() {
        let name = h.name.to_ascii_lowercase();
        // The Gateway API: only the first entry for a header name counts.
        if !seen.insert(name.clone()) {
            continue;
        }
        let regex = matches!(h.r#type, Some(GrpcRouteRulesMatchesHeadersType::RegularExpression));
        let value = match string_match(i, regex, Some(&h.value))? {
            Some(v) => v,
            // An empty value matches only an empty header value.
            None => StringMatch::Exact(String::new()),
        };
        out.headers.push(HeaderMatch { name, value });
    }
    Ok(out)
}
