//! VirtualServices and DestinationRules onto the model: for each Service
//! they name, its routes (in the VirtualService's order: first match wins),
//! the subsets those routes send calls to, and the Service's policy and
//! ejection.
//!
//! Which object applies: for a Service, the oldest VirtualService naming it
//! in `hosts` and the oldest DestinationRule naming it in `host` (then by
//! `namespace/name`); a younger one is reported as shadowed. A Service a
//! GRPCRoute routes keeps the GRPCRoute's routes (the Gateway API standard
//! object wins; the VirtualService is reported for it), while its
//! DestinationRule's policy still applies.
//!
//! What changes where calls go and cannot be honoured exactly (a rewrite, a
//! redirect, an unknown subset, a match on something other than the path and
//! headers) refuses the whole VirtualService, never half of it. What only
//! adds to a call (fault, mirror, header changes, CORS, retry conditions
//! the agent does not retry on) is left out and named in the object's
//! report.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::{
    error::IstioError,
    object::{DestinationRule, VirtualService},
    path,
    rule::{destination_rule, resolve_host, unsupported, Rule},
    spec::{self, HttpMatch, HttpRoute, VirtualServiceSpec},
};
use crate::{
    k8s::{
        grpcroute::{service_label, BackendPort},
        slice::Slice,
        translator::Key,
        POLICY_ANNOTATION,
    },
    model::{Backend, Ejection, Endpoint, HeaderMatch, Labels, Policy, Route, RouteMatch, StringMatch},
};

/// Endpoint label key marking the endpoints of a DestinationRule subset:
/// `subset.balancer.io/<service>.<subset>: "true"`.
pub const SUBSET_LABEL_PREFIX: &str = "subset.balancer.io/";

/// The endpoints of a DestinationRule subset: those of `service`'s pods
/// whose labels include `labels`, marked with `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetLabel {
    pub service: String,
    pub key: String,
    pub labels: Labels,
}

/// What Istio's objects give one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The VirtualService's routes in its order (empty: none applies).
    pub routes: Vec<Route>,
    /// Other Services (in the same namespace) whose endpoints the routes
    /// send calls to.
    pub backends: Vec<BackendPort>,
    /// The subsets the routes select, to be marked on the endpoints.
    pub subsets: Vec<SubsetLabel>,
    /// The DestinationRule's load-balancing policy, unless the Service's
    /// `balancer.io/policy` annotation chose one.
    pub policy: Option<(Policy, Option<String>)>,
    /// The DestinationRule's `outlierDetection`.
    pub ejection: Option<Ejection>,
}

/// What balancer made of one VirtualService or DestinationRule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// Why the object is not applied at all, if it is not.
    pub refused: Option<IstioError>,
    /// What is left out of an applied object (or, with `refused`, also
    /// noticed), one line each.
    pub notes: Vec<String>,
}

impl Report {
    /// One line: `VirtualService demo/greeter: not applied: ...` or
    /// `... applied without: a; b`.
    pub fn line(&self) -> String {
        let who = format!("{} {}/{}", self.kind, self.namespace, self.name);
        match &self.refused {
            Some(e) => format!("{who}: not applied: {e}"),
            None => format!("{who}: applied without: {}", self.notes.join("; ")),
        }
    }

    /// Whether there is anything to tell.
    pub fn is_problem(&self) -> bool {
        self.refused.is_some() || !self.notes.is_empty()
    }
}

/// The translation of every Istio object.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Translated {
    pub services: HashMap<Key, Arc<Applied>>,
    /// One per object with something to tell, VirtualServices first, each
    /// kind oldest first.
    pub reports: Vec<Report>,
}

fn oldest_first<K: ResourceExt>(objs: &[Arc<K>]) -> Vec<&Arc<K>> {
    let mut v: Vec<_> = objs.iter().collect();
    v.sort_by_key(|o| (o.creation_timestamp().map(|t| t.0), o.namespace(), o.name_any()));
    v
}

fn report_of<K: ResourceExt>(kind: &'static str, o: &K) -> Report {
    Report {
        kind,
        namespace: o.namespace().unwrap_or_default(),
        name: o.name_any(),
        uid: o.uid(),
        refused: None,
        notes: Vec::new(),
    }
}

/// Translates every VirtualService and DestinationRule. `lookup(namespace,
/// name)` finds a Service; `routed` are the Services a GRPCRoute routes.
pub fn translate<'a>(
    virtual_services: &[Arc<VirtualService>],
    destination_rules: &[Arc<DestinationRule>],
    lookup: impl Fn(&str, &str) -> Option<&'a Service>,
    routed: &HashSet<Key>,
) -> Translated {
    let mut out = Translated::default();
    let mut rules: HashMap<Key, Rule> = HashMap::new();
    let mut dr_reports = Vec::new();
    for dr in oldest_first(destination_rules) {
        let mut report = report_of(DestinationRule::KIND, dr.as_ref());
        match destination_rule(dr, &lookup, &mut report.notes) {
            Ok((key, rule)) => match rules.get(&key) {
                Some(older) => {
                    report.refused = Some(IstioError::Shadowed {
                        kind: DestinationRule::KIND,
                        by: format!("{}/{}", key.0, older.name),
                        service: format!("{}/{}", key.0, key.1),
                    })
                }
                None => {
                    rules.insert(key, rule);
                }
            },
            Err(e) => report.refused = Some(e),
        }
        if report.is_problem() {
            dr_reports.push(report);
        }
    }

    let mut taken: HashMap<Key, String> = HashMap::new();
    for vs in oldest_first(virtual_services) {
        let mut report = report_of(VirtualService::KIND, vs.as_ref());
        match virtual_service(vs, &lookup, &rules, &mut report.notes) {
            Ok(per_host) => {
                let mut applies = false;
                let mut lost = Vec::new();
                for (key, applied) in per_host {
                    let service = format!("{}/{}", key.0, key.1);
                    if routed.contains(&key) {
                        lost.push(IstioError::LostToGrpcRoute(service));
                    } else if let Some(by) = taken.get(&key) {
                        lost.push(IstioError::Shadowed {
                            kind: VirtualService::KIND,
                            by: by.clone(),
                            service,
                        });
                    } else {
                        taken.insert(key.clone(), format!("{}/{}", report.namespace, report.name));
                        out.services.insert(key, Arc::new(applied));
                        applies = true;
                    }
                }
                if applies {
                    report.notes.extend(lost.iter().map(ToString::to_string));
                } else {
                    report.refused = lost.into_iter().next();
                }
            }
            Err(e) => report.refused = Some(e),
        }
        if report.is_problem() {
            out.reports.push(report);
        }
    }
    out.reports.extend(dr_reports);

    // Each DestinationRule's policy and ejection, whether a VirtualService
    // or a GRPCRoute routes its Service or nothing does.
    for (key, rule) in rules {
        if let Some(e) = rule.ejection {
            Arc::make_mut(out.services.entry(key.clone()).or_default()).ejection = Some(e);
        }
        let Some(policy) = rule.policy else { continue };
        let annotated = lookup(&key.0, &key.1).is_some_and(|s| s.annotations().contains_key(POLICY_ANNOTATION));
        if annotated {
            let note = format!("trafficPolicy.loadBalancer (the Service's {POLICY_ANNOTATION} annotation wins)");
            match out
                .reports
                .iter_mut()
                .find(|r| r.kind == DestinationRule::KIND && r.namespace == key.0 && r.name == rule.name)
            {
                Some(r) => r.notes.push(note),
                None => out.reports.push(Report {
                    kind: DestinationRule::KIND,
                    namespace: key.0.clone(),
                    name: rule.name.clone(),
                    uid: rule.uid.clone(),
                    refused: None,
                    notes: vec![note],
                }),
            }
            continue;
        }
        let entry = out.services.entry(key).or_default();
        Arc::make_mut(entry).policy = Some(policy);
    }
    out
}

/// Fields of an `http` route that decide where a call goes or what it
/// becomes: a route with one of them cannot be applied without it.
const ROUTE_CHANGING: [&str; 4] = ["rewrite", "redirect", "directResponse", "delegate"];

/// Retry conditions the agent honours: it retries a call on another
/// endpoint when no endpoint handled it.
const NEVER_SENT: [&str; 3] = ["connect-failure", "refused-stream", "reset-before-request"];

fn virtual_service<'a>(
    vs: &VirtualService,
    lookup: &impl Fn(&str, &str) -> Option<&'a Service>,
    rules: &HashMap<Key, Rule>,
    notes: &mut Vec<String>,
) -> Result<Vec<(Key, Applied)>, IstioError> {
    let spec: VirtualServiceSpec = spec::parse(&vs.spec).map_err(IstioError::Malformed)?;
    let namespace = vs.namespace().unwrap_or_default();
    if !spec.gateways.is_empty() {
        if !spec.gateways.iter().any(|g| g == "mesh") {
            return Err(IstioError::GatewaysOnly(spec.gateways.clone()));
        }
        notes.push("gateways other than `mesh`".to_owned());
    }
    let mut hosts = Vec::new();
    let mut unresolved = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        match resolve_host(h, &namespace).filter(|k| lookup(&k.0, &k.1).is_some()) {
            Some(k) if !hosts.contains(&k) => hosts.push(k),
            Some(_) => {}
            None => unresolved.push(format!("hosts[{i}] `{h}`")),
        }
    }
    if hosts.is_empty() {
        return Err(IstioError::NoService(unresolved.join(", ")));
    }
    for u in unresolved {
        notes.push(format!("{u} (names no Service)"));
    }
    unsupported("", &spec.other, notes);
    if !spec.export_to.is_empty() && !spec.export_to.iter().any(|e| e == "*") {
        notes.push("exportTo (every agent applies the routes)".to_owned());
    }

    // Each host's own translation: a destination is the host itself, or
    // another Service of the host's namespace whose endpoints join it.
    // The notes are the same for every host: told once.
    let mut per_host = Vec::with_capacity(hosts.len());
    for (n, this) in hosts.into_iter().enumerate() {
        let mut scratch = Vec::new();
        let notes = if n == 0 { &mut *notes } else { &mut scratch };
        let mut applied = Applied::default();
        for (i, r) in spec.http.iter().enumerate() {
            let route = http_route(i, r, &namespace, &this, lookup, rules, &mut applied, notes)?;
            applied.routes.push(route);
        }
        if applied.routes.last().is_some_and(|r| !r.matches.is_empty()) {
            notes.push(
                "no catch-all last route: calls that match no route go to every endpoint of the Service \
                 (Istio refuses them)"
                    .to_owned(),
            );
        }
        per_host.push((this, applied));
    }
    Ok(per_host)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one route of the VirtualService being translated"
)]
fn http_route<'a>(
    i: usize,
    r: &HttpRoute,
    namespace: &str,
    this: &Key,
    lookup: &impl Fn(&str, &str) -> Option<&'a Service>,
    rules: &HashMap<Key, Rule>,
    applied: &mut Applied,
    notes: &mut Vec<String>,
) -> Result<Route, IstioError> {
    let at = format!("http[{i}]");
    for field in r.other.keys() {
        if ROUTE_CHANGING.contains(&field.as_str()) {
            return Err(IstioError::Unsupported {
                path: at.clone(),
                field: field.clone(),
            });
        }
        notes.push(format!("{at}.{field} (not supported)"));
    }
    // `0s` turns the timeout off, as in Istio.
    let timeout = match r.timeout.as_deref() {
        None => None,
        Some(t) => match spec::duration(t) {
            Some(d) => Some(d).filter(|d| !d.is_zero()),
            None => {
                return Err(IstioError::Invalid {
                    path: format!("{at}.timeout"),
                    problem: format!("`{t}` is not a duration"),
                })
            }
        },
    };
    if let Some(retries) = &r.retries {
        retry_notes(&at, retries, notes);
    }
    let matches = r
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| http_match(&format!("{at}.match[{j}]"), m))
        .collect::<Result<Vec<_>, _>>()?;
    if r.route.is_empty() {
        return Err(IstioError::Invalid {
            path: at,
            problem: "no route destinations".to_owned(),
        });
    }
    let mut backends = Vec::with_capacity(r.route.len());
    for (j, d) in r.route.iter().enumerate() {
        let at = format!("{at}.route[{j}]");
        for field in d.other.keys() {
            notes.push(format!("{at}.{field} (not supported)"));
        }
        unsupported(&format!("{at}.destination."), &d.destination.other, notes);
        let weight = match d.weight {
            None if r.route.len() == 1 => 100,
            None => 0,
            Some(w) => u32::try_from(w).map_err(|_| IstioError::Invalid {
                path: at.clone(),
                problem: format!("negative weight {w}"),
            })?,
        };
        let labels = destination(&at, &d.destination, namespace, this, lookup, rules, applied)?;
        backends.push(Backend {
            labels,
            weight,
            filters: Default::default(),
        });
    }
    if backends.iter().all(|b| b.weight == 0) {
        return Err(IstioError::Invalid {
            path: at,
            problem: "every destination has weight 0".to_owned(),
        });
    }
    Ok(Route {
        name: Some(format!("{namespace}/{}", r.name.clone().unwrap_or_else(|| at.clone()))),
        matches,
        backends,
        timeout,
        filters: Default::default(),
    })
}

/// The labels of the endpoints a destination names: a subset of its
/// Service, or all of it. `this` is the Service the routes are for; another
/// Service must be in its namespace.
fn destination<'a>(
    at: &str,
    d: &spec::Destination,
    namespace: &str,
    this: &Key,
    lookup: &impl Fn(&str, &str) -> Option<&'a Service>,
    rules: &HashMap<Key, Rule>,
    applied: &mut Applied,
) -> Result<Labels, IstioError> {
    let invalid = |problem: String| IstioError::Invalid {
        path: at.to_owned(),
        problem,
    };
    let key = resolve_host(&d.host, namespace)
        .ok_or_else(|| invalid(format!("destination host `{}` is not a Service", d.host)))?;
    if key.0 != this.0 {
        return Err(invalid(format!(
            "destination `{}/{}` is in another namespace (not supported)",
            key.0, key.1
        )));
    }
    let svc = lookup(&key.0, &key.1)
        .ok_or_else(|| invalid(format!("destination Service `{}/{}` not found", key.0, key.1)))?;
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let port = match d.port.as_ref().and_then(|p| p.number) {
        Some(n) => Some(
            ports
                .iter()
                .find(|p| i64::from(p.port) == i64::from(n))
                .ok_or_else(|| invalid(format!("destination Service `{}/{}` has no port {n}", key.0, key.1)))?,
        ),
        None => None,
    };
    if key != *this {
        let port = match (port, ports) {
            (Some(p), _) | (None, [p]) => p,
            _ => {
                return Err(invalid(format!(
                    "destination `{}` needs a port (the Service has several)",
                    d.host
                )))
            }
        };
        let b = BackendPort {
            service: key.1.clone(),
            port_name: port.name.clone().filter(|n| !n.is_empty()),
            port: port.port,
        };
        if !applied.backends.contains(&b) {
            applied.backends.push(b);
        }
    }
    let Some(subset) = &d.subset else {
        let (k, v) = service_label(&key.1);
        return Ok(Labels::from([(k, v)]));
    };
    let rule = rules.get(&key).ok_or_else(|| {
        invalid(format!(
            "subset `{subset}`: no DestinationRule for `{}/{}`",
            key.0, key.1
        ))
    })?;
    let labels = rule.subsets.get(subset).ok_or_else(|| {
        invalid(format!(
            "subset `{subset}` is not in DestinationRule `{}/{}`",
            key.0, rule.name
        ))
    })?;
    let label = SubsetLabel {
        service: key.1.clone(),
        key: format!("{SUBSET_LABEL_PREFIX}{}.{subset}", key.1),
        labels: labels.clone(),
    };
    let selector = Labels::from([(label.key.clone(), "true".to_owned())]);
    if !applied.subsets.contains(&label) {
        applied.subsets.push(label);
    }
    Ok(selector)
}

fn retry_notes(at: &str, r: &spec::Retries, notes: &mut Vec<String>) {
    unsupported(&format!("{at}.retries."), &r.other, notes);
    if r.attempts == Some(0) {
        notes.push(format!(
            "{at}.retries.attempts 0 (the agent still retries calls no endpoint handled)"
        ));
    }
    if let Some(on) = &r.retry_on {
        let others: Vec<&str> = on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty() && !NEVER_SENT.contains(c))
            .collect();
        if !others.is_empty() {
            notes.push(format!(
                "{at}.retries.retryOn `{}` (the agent retries only calls no endpoint handled: connect-failure, \
                 refused-stream)",
                others.join(",")
            ));
        }
    }
    if let Some(t) = &r.per_try_timeout {
        notes.push(format!("{at}.retries.perTryTimeout `{t}` (not supported)"));
    }
}

/// Match fields that narrow which calls a route takes: without them the
/// route would take calls it must not.
fn http_match(at: &str, m: &HttpMatch) -> Result<RouteMatch, IstioError> {
    for (field, value) in &m.other {
        let harmless = match field.as_str() {
            // gRPC calls are all POST.
            "method" => value.get("exact").and_then(|v| v.as_str()) == Some("POST"),
            "ignoreUriCase" => value.as_bool() == Some(false),
            _ => false,
        };
        if !harmless {
            return Err(IstioError::Unsupported {
                path: at.to_owned(),
                field: field.clone(),
            });
        }
    }
    let mut out = RouteMatch::default();
    if let Some(uri) = &m.uri {
        let one = one_of(&format!("{at}.uri"), uri)?;
        let pm = match one {
            Kind::Exact(p) => path::exact_path(p),
            Kind::Prefix(p) => path::prefix(p),
            Kind::Regex(p) => path::regex(p),
        }
        .map_err(|problem| IstioError::Invalid {
            path: format!("{at}.uri"),
            problem,
        })?;
        out.service = pm.service;
        out.method = pm.method;
    }
    for (name, value) in &m.headers {
        let at = format!("{at}.headers.{name}");
        let value = match one_of(&at, value)? {
            Kind::Exact(v) => StringMatch::Exact(v.to_owned()),
            Kind::Prefix(v) => StringMatch::RegularExpression(format!("{}.*", regex::escape(v))),
            Kind::Regex(v) => {
                if let Err(e) = regex::Regex::new(v) {
                    let reason = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
                    return Err(IstioError::Invalid {
                        path: at,
                        problem: format!("bad regular expression `{v}`: {reason}"),
                    });
                }
                StringMatch::RegularExpression(v.to_owned())
            }
        };
        out.headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value,
        });
    }
    Ok(out)
}

enum Kind<'s> {
    Exact(&'s str),
    Prefix(&'s str),
    Regex(&'s str),
}

fn one_of<'s>(at: &str, m: &'s spec::StringMatch) -> Result<Kind<'s>, IstioError> {
    if let Some(field) = m.other.keys().next() {
        return Err(IstioError::Unsupported {
            path: at.to_owned(),
            field: field.clone(),
        });
    }
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), None, None) => Ok(Kind::Exact(v)),
        (None, Some(v), None) => Ok(Kind::Prefix(v)),
        (None, None, Some(v)) => Ok(Kind::Regex(v)),
        _ => Err(IstioError::Invalid {
            path: at.to_owned(),
            problem: "exactly one of exact, prefix and regex is needed".to_owned(),
        }),
    }
}

/// Marks the endpoints of `subset` in `endpoints`: those of its Service's
/// slices (port `port_name`) whose pod's labels (`pod_labels(namespace,
/// pod)`) include the subset's labels.
pub fn label_subset<'s, 'p>(
    endpoints: &mut BTreeMap<SocketAddr, Endpoint>,
    slices: impl IntoIterator<Item = &'s Arc<Slice>>,
    port_name: Option<&str>,
    subset: &SubsetLabel,
    pod_labels: &dyn Fn(&str, &str) -> Option<&'p Labels>,
) {
    for slice in slices {
        let Some(port) = crate::k8s::translate::slice_port(slice, port_name) else {
            continue;
        };
        let namespace = slice.namespace().unwrap_or_default();
        for ep in &slice.endpoints {
            let (Some(address), Some(pod)) = (ep.address.as_deref(), ep.target_pod.as_deref()) else {
                continue;
            };
            let Ok(ip) = address.parse::<std::net::Ipv4Addr>() else {
                continue;
            };
            let Some(labels) = pod_labels(&namespace, pod) else {
                continue;
            };
            if !subset.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            if let Some(e) = endpoints.get_mut(&SocketAddr::from((ip, port))) {
                Arc::make_mut(&mut e.labels).insert(subset.key.clone(), "true".to_owned());
            }
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;

    fn svc(name: &str, annotations: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": { "namespace": "demo", "name": name, "annotations": annotations },
            "spec": { "clusterIP": "10.96.0.10", "ports": [{ "name": "grpc", "port": 8000 }] }
        }))
        .unwrap()
    }

    fn vs(name: &str, created: &str, spec: Value) -> Arc<VirtualService> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "namespace": "demo", "name": name, "creationTimestamp": created },
                "spec": spec
            }))
            .unwrap(),
        )
    }

    fn dr(name: &str, spec: Value) -> Arc<DestinationRule> {
        Arc::new(
            serde_json::from_value(json!({ "metadata": { "namespace": "demo", "name": name }, "spec": spec })).unwrap(),
        )
    }

    fn subsets() -> Arc<DestinationRule> {
        dr(
            "greeter",
            json!({ "host": "greeter", "subsets": [
                { "name": "v1", "labels": { "version": "v1" } },
                { "name": "v2", "labels": { "version": "v2" } } ] }),
        )
    }

    fn run(vss: &[Arc<VirtualService>], drs: &[Arc<DestinationRule>], routed: &[&str]) -> Translated {
        let services = [
            svc("greeter", json!({})),
            svc("other", json!({})),
            svc("pinned", json!({ "balancer.io/policy": "peak-ewma" })),
        ];
        let lookup = |ns: &str, name: &str| services.iter().find(|s| ns == "demo" && s.name_any() == name);
        let routed = routed.iter().map(|n| ("demo".to_owned(), (*n).to_owned())).collect();
        translate(vss, drs, lookup, &routed)
    }

    fn key(name: &str) -> Key {
        ("demo".to_owned(), name.to_owned())
    }

    fn lines(t: &Translated) -> Vec<String> {
        t.reports.iter().map(Report::line).collect()
    }

    #[test]
    fn hosts_name_services_by_short_namespaced_or_full_name() {
        for h in [
            "greeter",
            "greeter.demo",
            "greeter.demo.svc",
            "greeter.demo.svc.cluster.local",
        ] {
            assert_eq!(resolve_host(h, "demo"), Some(key("greeter")), "{h}");
        }
        assert_eq!(
            resolve_host("greeter.prod", "demo"),
            Some(("prod".into(), "greeter".into()))
        );
        for h in ["*.demo.svc.cluster.local", "api.example.com", ""] {
            assert_eq!(resolve_host(h, "demo"), None, "{h}");
        }
    }

    #[test]
    fn a_canary_becomes_ordered_routes_over_marked_subsets() {
        let v = vs(
            "greeter",
            "2026-01-01T00:00:00Z",
            json!({ "hosts": ["greeter.demo.svc.cluster.local"], "http": [
                { "match": [{ "uri": { "exact": "/helloworld.Greeter/SayHello" },
                               "headers": { "X-Canary": { "prefix": "yes" } } }],
                  "route": [{ "destination": { "host": "greeter", "subset": "v2" } }] },
                { "route": [{ "destination": { "host": "greeter", "subset": "v1" }, "weight": 90 },
                            { "destination": { "host": "greeter", "subset": "v2" }, "weight": 10 }] } ] }),
        );
        let t = run(&[v], &[subsets()], &[]);
        assert!(t.reports.is_empty(), "{:?}", lines(&t));
        let a = &t.services[&key("greeter")];
        assert_eq!(a.routes.len(), 2);
        let m = &a.routes[0].matches[0];
        assert_eq!(m.service, Some(StringMatch::Exact("helloworld.Greeter".into())));
        assert_eq!(m.method, Some(StringMatch::Exact("SayHello".into())));
        assert_eq!(m.headers[0].name, "x-canary");
        assert_eq!(m.headers[0].value, StringMatch::RegularExpression("yes.*".into()));
        assert_eq!(
            a.routes[0].backends[0].weight, 100,
            "a lone destination takes every call"
        );
        let split: Vec<(String, u32)> = a.routes[1]
            .backends
            .iter()
            .map(|b| (b.labels.keys().next().unwrap().clone(), b.weight))
            .collect();
        assert_eq!(
            split,
            [
                ("subset.balancer.io/greeter.v1".to_owned(), 90),
                ("subset.balancer.io/greeter.v2".to_owned(), 10)
            ]
        );
        assert_eq!(a.subsets.len(), 2);
        assert_eq!(a.subsets[0].labels, Labels::from([("version".into(), "v2".into())]));
        assert!(a.routes[1].matches.is_empty(), "the catch-all");
        assert_eq!(a.policy, None);
    }

    #[test]
    fn what_would_send_calls_elsewhere_refuses_the_object_in_one_line() {
        let cases = [
            (
                json!({ "hosts": ["greeter"], "http": [{ "rewrite": { "uri": "/x" },
                        "route": [{ "destination": { "host": "greeter" } }] }] }),
                "VirtualService demo/greeter: not applied: http[0]: `rewrite` is not supported",
            ),
            (
                json!({ "hosts": ["greeter"], "http": [{ "route": [{ "destination": { "host": "greeter", "subset": "v3" } }] }] }),
                "VirtualService demo/greeter: not applied: http[0].route[0]: subset `v3` is not in DestinationRule \
                 `demo/greeter`",
            ),
            (
                json!({ "hosts": ["greeter"], "http": [{ "match": [{ "queryParams": { "a": { "exact": "b" } } }],
                        "route": [{ "destination": { "host": "greeter" } }] }] }),
                "VirtualService demo/greeter: not applied: http[0].match[0]: `queryParams` is not supported",
            ),
            (
                json!({ "hosts": ["greeter"], "http": [{ "match": [{ "uri": { "regex": ".*Hello" } }],
                        "route": [{ "destination": { "host": "greeter" } }] }] }),
                "VirtualService demo/greeter: not applied: http[0].match[0].uri: uri regex `.*Hello` cannot be split \
                 into a service and a method (it does not start with `/`); write it as `/SERVICE/METHOD` with one \
                 `/` outside groups, e.g. `/helloworld\\.Greeter/Say.*`",
            ),
            (
                json!({ "hosts": ["greeter"], "http": [{ "route": [
                        { "destination": { "host": "greeter", "subset": "v1" }, "weight": 0 },
                        { "destination": { "host": "greeter", "subset": "v2" }, "weight": 0 } ] }] }),
                "VirtualService demo/greeter: not applied: http[0]: every destination has weight 0",
            ),
            (
                json!({ "hosts": ["greeter"], "http": [{ "route": [{ "destination": { "host": "api.example.com" } }] }] }),
                "VirtualService demo/greeter: not applied: http[0].route[0]: destination host `api.example.com` is \
                 not a Service",
            ),
            (
                json!({ "hosts": ["api.example.com"], "http": [] }),
                "VirtualService demo/greeter: not applied: no host names a Service in the cluster (hosts[0] \
                 `api.example.com`)",
            ),
            (
                json!({ "hosts": ["greeter"], "gateways": ["istio-system/ingress"], "http": [] }),
                "VirtualService demo/greeter: not applied: gateways [\"istio-system/ingress\"] do not include \
                 `mesh`: it routes gateways, not Services' clients",
            ),
            (
                json!({ "hosts": ["greeter"], "http": [{ "timeout": "soon",
                        "route": [{ "destination": { "host": "greeter" } }] }] }),
                "VirtualService demo/greeter: not applied: http[0].timeout: `soon` is not a duration",
            ),
            (
                json!({ "hosts": "greeter" }),
                "VirtualService demo/greeter: not applied: spec.hosts: invalid type: string \"greeter\", expected a \
                 sequence",
            ),
        ];
        for (spec, line) in cases {
            let t = run(&[vs("greeter", "2026-01-01T00:00:00Z", spec)], &[subsets()], &[]);
            assert_eq!(lines(&t), [line]);
            assert!(!t.services.contains_key(&key("greeter")));
        }
    }

    #[test]
    fn what_only_adds_to_calls_is_left_out_and_named() {
        let v = vs(
            "greeter",
            "2026-01-01T00:00:00Z",
            json!({ "hosts": ["greeter", "api.example.com"], "tcp": [{}], "http": [{
                "match": [{ "uri": { "prefix": "/helloworld.Greeter/" } }],
                "fault": {}, "corsPolicy": {}, "headers": {}, "timeout": "1s",
                "retries": { "attempts": 0, "retryOn": "refused-stream,5xx", "perTryTimeout": "1s" },
                "route": [{ "destination": { "host": "greeter" }, "headers": {} }] }] }),
        );
        let t = run(&[v], &[], &[]);
        assert_eq!(t.services[&key("greeter")].routes.len(), 1);
        assert_eq!(
            t.services[&key("greeter")].routes[0].timeout,
            Some(Duration::from_secs(1))
        );
        let r = &t.reports[0];
        assert!(r.refused.is_none());
        assert_eq!(
            r.notes,
            [
                "hosts[1] `api.example.com` (names no Service)",
                "tcp (not supported)",
                "http[0].corsPolicy (not supported)",
                "http[0].fault (not supported)",
                "http[0].headers (not supported)",
                "http[0].retries.attempts 0 (the agent still retries calls no endpoint handled)",
                "http[0].retries.retryOn `5xx` (the agent retries only calls no endpoint handled: connect-failure, \
                 refused-stream)",
                "http[0].retries.perTryTimeout `1s` (not supported)",
                "http[0].route[0].headers (not supported)",
                "no catch-all last route: calls that match no route go to every endpoint of the Service (Istio \
                 refuses them)",
            ]
        );
    }

    #[test]
    fn each_host_gets_its_own_routes_and_other_services_join_as_backends() {
        let v = vs(
            "both",
            "2026-01-01T00:00:00Z",
            json!({ "hosts": ["greeter", "other"], "http": [
                { "route": [{ "destination": { "host": "greeter", "port": { "number": 8000 } } }] } ] }),
        );
        let t = run(&[v], &[], &[]);
        assert!(t.reports.is_empty(), "{:?}", lines(&t));
        let greeter = &t.services[&key("greeter")];
        assert!(greeter.backends.is_empty(), "its own endpoints");
        let other = &t.services[&key("other")];
        assert_eq!(
            other.backends,
            [BackendPort {
                service: "greeter".into(),
                port_name: Some("grpc".into()),
                port: 8000
            }]
        );
        let (k, v) = service_label("greeter");
        assert_eq!(other.routes[0].backends[0].labels, Labels::from([(k, v)]));
    }

    #[test]
    fn the_oldest_virtual_service_wins_and_a_grpcroute_wins_over_all() {
        let route = json!({ "hosts": ["greeter"], "http": [{ "route": [{ "destination": { "host": "greeter" } }] }] });
        let old = vs("old", "2026-01-01T00:00:00Z", route.clone());
        let young = vs("young", "2026-02-01T00:00:00Z", route);
        let t = run(&[Arc::clone(&young), Arc::clone(&old)], &[], &[]);
        assert_eq!(
            t.services[&key("greeter")].routes[0].name.as_deref(),
            Some("demo/http[0]")
        );
        assert_eq!(
            lines(&t),
            ["VirtualService demo/young: not applied: shadowed by the older VirtualService `demo/old`, which applies \
              to `demo/greeter`"]
        );
        let t = run(&[old], &[], &["greeter"]);
        assert!(!t.services.contains_key(&key("greeter")));
        assert_eq!(
            lines(&t),
            ["VirtualService demo/old: not applied: a GRPCRoute routes `demo/greeter` and wins over a VirtualService"]
        );
    }

    #[test]
    fn outlier_detection_maps_onto_the_services_ejection() {
        let ejection = |od: Value| {
            let t = run(
                &[],
                &[dr(
                    "greeter",
                    json!({ "host": "greeter", "trafficPolicy": { "outlierDetection": od } }),
                )],
                &[],
            );
            (t.services.get(&key("greeter")).and_then(|a| a.ejection), lines(&t))
        };
        let e = |n: u32, secs: u64| {
            Some(Ejection {
                consecutive_failures: n,
                base: Duration::from_secs(secs),
                max_percent: 10,
            })
        };
        assert_eq!(
            ejection(json!({ "consecutiveGatewayErrors": 3, "baseEjectionTime": "1m", "interval": "10s" })),
            (e(3, 60), vec![]),
            "gateway errors map exactly; Istio's default 5 for 5xx is the higher"
        );
        assert_eq!(ejection(json!({})), (e(5, 30), vec![]), "Istio's defaults");
        assert_eq!(
            ejection(json!({ "consecutive5xxErrors": 0, "consecutiveGatewayErrors": 0 })).0,
            e(0, 30),
            "off"
        );
        let (got, notes) = ejection(json!({ "consecutive5xxErrors": 2, "maxEjectionPercent": 50,
                                            "baseEjectionTime": "soon", "minHealthPercent": 50 }));
        assert_eq!(got.map(|e| e.max_percent), Some(50), "maxEjectionPercent applies");
        assert_eq!(
            got.map(|e| (e.consecutive_failures, e.base)),
            Some((2, Duration::from_secs(30)))
        );
        assert_eq!(
            notes,
            [
                "DestinationRule demo/greeter: applied without: trafficPolicy.outlierDetection.minHealthPercent (not \
              supported); trafficPolicy.outlierDetection.consecutive5xxErrors counts only connect failures and \
              UNAVAILABLE (as consecutiveGatewayErrors 2); trafficPolicy.outlierDetection.baseEjectionTime `soon` \
              (not a duration; 30s used)"
            ]
        );
        let (got, notes) = ejection(json!({ "maxEjectionPercent": 150 }));
        assert_eq!(got, e(5, 30));
        assert_eq!(
            notes,
            [
                "DestinationRule demo/greeter: applied without: trafficPolicy.outlierDetection.maxEjectionPercent 150 \
              (not 0–100; 10 used)"
            ]
        );
    }

    #[test]
    fn load_balancer_policies_map_onto_the_agent_s() {
        let policy = |lb: Value| {
            let t = run(
                &[],
                &[dr(
                    "greeter",
                    json!({ "host": "greeter", "trafficPolicy": { "loadBalancer": lb } }),
                )],
                &[],
            );
            (
                t.services.get(&key("greeter")).and_then(|a| a.policy.clone()),
                lines(&t),
            )
        };
        assert_eq!(
            policy(json!({ "simple": "ROUND_ROBIN" })).0,
            Some((Policy::RoundRobin, None))
        );
        assert_eq!(
            policy(json!({ "simple": "RANDOM" })).0,
            Some((Policy::RoundRobin, None))
        );
        assert_eq!(
            policy(json!({ "simple": "LEAST_REQUEST" })).0,
            Some((Policy::LeastRequest, None))
        );
        assert_eq!(
            policy(json!({ "consistentHash": { "httpHeaderName": "X-User" } })).0,
            Some((Policy::RingHash, Some("x-user".into())))
        );
        assert_eq!(
            policy(json!({ "simple": "PASSTHROUGH" })),
            (
                None,
                vec![
                    "DestinationRule demo/greeter: applied without: trafficPolicy.loadBalancer.simple `PASSTHROUGH` \
                      (not supported)"
                        .to_owned()
                ]
            )
        );
        // The Service's own annotation wins.
        let t = run(
            &[],
            &[dr(
                "pinned",
                json!({ "host": "pinned", "trafficPolicy": { "loadBalancer": { "simple": "ROUND_ROBIN" } } }),
            )],
            &[],
        );
        assert!(!t.services.contains_key(&key("pinned")));
        assert_eq!(
            lines(&t),
            [
                "DestinationRule demo/pinned: applied without: trafficPolicy.loadBalancer (the Service's \
              balancer.io/policy annotation wins)"
            ]
        );
        // Policy applies to a Service a GRPCRoute routes, too.
        let t = run(
            &[],
            &[dr(
                "greeter",
                json!({ "host": "greeter", "trafficPolicy": { "loadBalancer": { "simple": "LEAST_REQUEST" },
                                                                          "connectionPool": {} } }),
            )],
            &["greeter"],
        );
        assert_eq!(t.services[&key("greeter")].policy, Some((Policy::LeastRequest, None)));
        assert_eq!(
            lines(&t),
            ["DestinationRule demo/greeter: applied without: trafficPolicy.connectionPool (not supported)"]
        );
    }
}
