//! The cluster's state (what the reflectors hold) onto a [`Model`]: the
//! rules, one Service (or pod) at a time.
//!
//! Pure: no I/O but the `cgroups_of` callback, so every rule here is tested on
//! plain objects. [`translate`] translates a whole [`Snapshot`]; the agent
//! translates incrementally with a [`Translator`], from the same rules.

use std::{
    collections::{btree_map::Entry, BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::Arc,
};

use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServicePort};
use kube::ResourceExt;

use super::{
    grpcroute::{self, service_label, AttachedRoute, RouteError},
    istio::{self, DestinationRule, PodLabels, VirtualService},
    mesh::Mesh,
    slice::{Slice, SliceEndpoint},
    translator::{Interner, Translator},
    INJECT_ANNOTATION, INJECT_LABEL, RECONNECT_PINNED_ANNOTATION, RECONNECT_PINNED_LABEL, TOPOLOGY_HINTS_ANNOTATION,
    TOPOLOGY_MODE_ANNOTATION,
};
use crate::model::{
    self, Endpoint, EndpointState, Enrolled, InternalTrafficPolicy, Labels, Model, ModelError, PodRef, Route,
    RouteMatch, StringMatch, TrafficDistribution,
};

/// The EndpointSlice label naming its Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the reflectors hold, at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<Slice>>,
    /// Pods on this node.
    pub pods: Vec<Arc<Pod>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub routes: Vec<Arc<GrpcRoute>>,
    pub virtual_services: Vec<Arc<VirtualService>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
    /// Pods' labels, for DestinationRule subsets.
    pub pod_labels: Vec<Arc<PodLabels>>,
}

/// A GRPCRoute that was ignored, and why.
#[derive(Debug, Clone)]
pub struct InvalidRoute {
    pub route: Arc<GrpcRoute>,
    pub error: Arc<RouteError>,
}

/// The result of [`translate`]: the model and what was left out of it.
#[derive(Debug, Default)]
pub struct Translation {
    pub model: Model,
    pub invalid_routes: Vec<InvalidRoute>,
    /// VirtualServices and DestinationRules not applied, or applied without
    /// some of their fields.
    pub istio_reports: Vec<istio::Report>,
    /// `(service, problem)` of Services with an annotation that was not
    /// applied (see [`super::annotations`]); they use the default.
    pub bad_annotations: Vec<(String, String)>,
    /// Services left out because they would make the model invalid.
    pub dropped: Vec<(String, ModelError)>,
    /// Opted-in pods whose cgroup was not found: not enrolled (yet).
    pub cgroup_missing: Vec<Arc<Pod>>,
    /// Opted-in pods left out because a service mesh captures their
    /// connections (see [`super::mesh`]).
    pub meshed: Vec<(Arc<Pod>, Mesh)>,
}

/// Whether a port speaks gRPC: named `grpc` or `grpc-*`, or with
/// `appProtocol` `grpc` or `kubernetes.io/h2c`; TCP only.
pub fn is_grpc_port(p: &ServicePort) -> bool {
    if !matches!(p.protocol.as_deref(), None | Some("TCP")) {
        return false;
    }
    let named = p.name.as_deref().is_some_and(|n| n == "grpc" || n.starts_with("grpc-"));
    let proto = matches!(p.app_protocol.as_deref(), Some("grpc" | "kubernetes.io/h2c"));
    named || proto
}

/// Whether `pod` opted in: its annotation `balancer.io/inject` says
/// `enabled` (or `disabled`, which wins over the namespace), else its
/// namespace's label `balancer.io/inject=enabled`.
pub fn opted_in(pod: &Pod, namespace: Option<&Namespace>) -> bool {
    match pod.annotations().get(INJECT_ANNOTATION).map(String::as_str) {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => namespace.is_some_and(|ns| ns.labels().get(INJECT_LABEL).map(String::as_str) == Some("enabled")),
    }
}

/// Whether `pod`'s connections that bypass the agent are closed so that it
/// re-dials through it: its annotation `balancer.io/reconnect-pinned` says
/// `enabled` (or `disabled`, which wins over the namespace), else its
/// namespace's label of that name, else the namespace's annotation, says
/// `enabled`.
pub fn reconnects_pinned(pod: &Pod, namespace: Option<&Namespace>) -> bool {
    match pod.annotations().get(RECONNECT_PINNED_ANNOTATION).map(String::as_str) {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => namespace.is_some_and(|ns| {
            let value = ns
                .labels()
                .get(RECONNECT_PINNED_LABEL)
                .or_else(|| ns.annotations().get(RECONNECT_PINNED_LABEL));
            value.map(String::as_str) == Some("enabled")
        }),
    }
}

/// Who `pod` is, for display: name and IPs (IPv4 first).
pub fn pod_ref(pod: &Pod) -> PodRef {
    let status = pod.status.as_ref();
    let listed = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.ip.as_str());
    let mut ips: Vec<IpAddr> = listed.filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    ips.sort_by_key(IpAddr::is_ipv6);
    ips.dedup();
    PodRef {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        ips,
    }
}

/// Whether a pod still runs processes (its cgroup may hold sockets).
fn running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The IPv4 cluster IPs of a Service: none for headless and ExternalName.
fn cluster_ipv4s(svc: &Service) -> Vec<Ipv4Addr> {
    let Some(spec) = &svc.spec else { return Vec::new() };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let ips: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    let mut out: Vec<Ipv4Addr> = ips.into_iter().filter_map(|ip| ip.parse().ok()).collect();
    out.dedup();
    out
}

fn endpoint_state(ep: &SliceEndpoint) -> Option<EndpointState> {
    let c = ep.conditions;
    // The API: an absent `ready` means ready; `serving` defaults to `ready`.
    let ready = c.ready.unwrap_or(true);
    let serving = c.serving.unwrap_or(ready);
    let terminating = c.terminating.unwrap_or(false);
    if ready {
        Some(EndpointState::Ready)
    } else if serving && terminating {
        Some(EndpointState::Draining)
    } else {
        None
    }
}

/// The TCP port of an IPv4 slice named `port_name`, if it has one.
pub(super) fn slice_port(slice: &Slice, port_name: Option<&str>) -> Option<u16> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let port = slice.ports.iter().find(|p| {
        p.name.as_deref().filter(|n| !n.is_empty()) == port_name && matches!(p.protocol.as_deref(), None | Some("TCP"))
    });
    port.and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// Adds the endpoints of Service `namespace/service`, port `port_name` (from
/// its EndpointSlices `slices`), to `out`, labelled as belonging to that
/// Service. An address already present (the same pod behind the parent and
/// a version Service) gets the label added; ready wins over draining.
/// Endpoints share one label set per Service and interned zone and node
/// names.
fn add_endpoints<'s>(
    out: &mut BTreeMap<SocketAddr, Endpoint>,
    slices: impl IntoIterator<Item = &'s Arc<Slice>>,
    service: &str,
    port_name: Option<&str>,
    interner: &mut Interner,
) {
    let (key, value) = service_label(service);
    let mut shared: Option<Arc<Labels>> = None;
    for slice in slices {
        let Some(port) = slice_port(slice, port_name) else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(state) = endpoint_state(ep) else { continue };
            // The API: addresses are fungible; consumers may use the first.
            let Some(ip) = ep.address.as_deref().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let address = SocketAddr::V4(SocketAddrV4::new(ip, port));
            match out.entry(address) {
                Entry::Vacant(v) => {
                    let labels = shared
                        .get_or_insert_with(|| Arc::new(Labels::from([(key.clone(), value.clone())])))
                        .clone();
                    v.insert(Endpoint {
                        address,
                        labels,
                        state,
                        zone: ep.zone.as_deref().map(|z| interner.get(z)),
                        node: ep.node_name.as_deref().map(|n| interner.get(n)),
                        for_zones: for_zones(ep, interner),
                    });
                }
                Entry::Occupied(mut o) => {
                    let e = o.get_mut();
                    if !e.labels.contains_key(&key) {
                        Arc::make_mut(&mut e.labels).insert(key.clone(), value.clone());
                    }
                    if state == EndpointState::Ready {
                        e.state = EndpointState::Ready;
                    }
                    if e.zone.is_none() {
                        e.zone = ep.zone.as_deref().map(|z| interner.get(z));
                    }
                    if e.node.is_none() {
                        e.node = ep.node_name.as_deref().map(|n| interner.get(n));
                    }
                    if e.for_zones.is_none() {
                        e.for_zones = for_zones(ep, interner);
                    }
                }
            }
        }
    }
}

/// The zones an endpoint's hints say it serves, interned.
fn for_zones(ep: &SliceEndpoint, interner: &mut Interner) -> Option<Arc<[Arc<str>]>> {
    ep.for_zones
        .as_deref()
        .map(|zones| zones.iter().map(|z| interner.get(z)).collect())
}

/// A Service's preference for close endpoints: `spec.trafficDistribution`
/// `PreferClose` (or its newer names `PreferSameZone`, `PreferSameNode`),
/// or topology aware routing (`service.kubernetes.io/topology-mode: Auto`,
/// formerly `service.kubernetes.io/topology-aware-hints: auto`).
pub fn traffic_distribution(svc: &Service) -> TrafficDistribution {
    let spec = svc.spec.as_ref();
    let field = spec.and_then(|s| s.traffic_distribution.as_deref());
    let annotations = svc.annotations();
    let auto = [TOPOLOGY_MODE_ANNOTATION, TOPOLOGY_HINTS_ANNOTATION]
        .iter()
        .any(|a| annotations.get(*a).is_some_and(|v| v.eq_ignore_ascii_case("auto")));
    match field {
        Some("PreferClose" | "PreferSameZone" | "PreferSameNode") => TrafficDistribution::PreferClose,
        _ if auto => TrafficDistribution::PreferClose,
        _ => TrafficDistribution::Any,
    }
}

/// `spec.internalTrafficPolicy`: `Local` keeps calls on the node.
pub fn internal_traffic_policy(svc: &Service) -> InternalTrafficPolicy {
    match svc.spec.as_ref().and_then(|s| s.internal_traffic_policy.as_deref()) {
        Some("Local") => InternalTrafficPolicy::Local,
        _ => InternalTrafficPolicy::Cluster,
    }
}

/// GRPCRoutes in the order the Gateway API gives conflicting routes: oldest
/// first, then by `namespace/name`.
pub(super) fn ordered_routes(routes: &[Arc<GrpcRoute>]) -> Vec<&Arc<GrpcRoute>> {
    let mut v: Vec<_> = routes.iter().collect();
    v.sort_by_key(|r| {
        (
            r.creation_timestamp().map(|t| t.0),
            r.namespace().unwrap_or_default(),
            r.name_any(),
        )
    });
    v
}

/// How specific a match is, in the Gateway API's precedence order for
/// GRPCRoute: characters of an exact service, of an exact method, then the
/// number of header matches (and regular-expression matches last).
fn specificity(m: Option<&RouteMatch>) -> (usize, usize, usize, usize) {
    let Some(m) = m else { return (0, 0, 0, 0) };
    let exact = |s: &Option<StringMatch>| match s {
        Some(StringMatch::Exact(v)) => v.chars().count(),
        _ => 0,
    };
    let regexes = [&m.service, &m.method]
        .into_iter()
        .filter(|s| matches!(s, Some(StringMatch::RegularExpression(_))))
        .count();
    (exact(&m.service), exact(&m.method), m.headers.len(), regexes)
}

/// The model picks the first route that matches, so each match of a rule
/// becomes a route of its own and the most specific come first. Ties keep
/// their order: routes oldest first, then rule order.
fn by_precedence(routes: Vec<Route>) -> Vec<Route> {
    let mut split: Vec<Route> = Vec::with_capacity(routes.len());
    for r in routes {
        if r.matches.len() <= 1 {
            split.push(r);
            continue;
        }
        for m in &r.matches {
            split.push(Route {
                name: r.name.clone(),
                matches: vec![m.clone()],
                backends: r.backends.clone(),
                timeout: r.timeout,
            });
        }
    }
    split.sort_by_key(|r| std::cmp::Reverse(specificity(r.matches.first())));
    split
}

/// What one Kubernetes Service translates into.
#[derive(Debug, Default)]
pub(super) struct Built {
    /// One model service per gRPC port (not yet checked).
    pub services: Vec<model::Service>,
    /// `(namespace/name, problem)` for each annotation that was not applied.
    pub bad_annotations: Vec<(String, String)>,
}

/// Translates one Service: a model service per gRPC port and IPv4 cluster
/// IP set, with the endpoints of its EndpointSlices (`slices_of(namespace,
/// service)`) and of the backend Services its `attached` GRPCRoutes select,
/// or else of those its VirtualService's routes select (`istio`, with its
/// DestinationRule's subsets marked on the endpoints of the pods
/// `pod_labels(namespace, pod)` selects, and its policy).
pub(super) fn service<'s, 'p>(
    svc: &Service,
    attached: &[AttachedRoute],
    istio: Option<&istio::Applied>,
    slices_of: impl Fn(&str, &str) -> Option<&'s BTreeMap<String, Arc<Slice>>>,
    pod_labels: &dyn Fn(&str, &str) -> Option<&'p Labels>,
    interner: &mut Interner,
) -> Built {
    let mut out = Built::default();
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let ips = cluster_ipv4s(svc);
    if ips.is_empty() {
        return out;
    }
    let grpc_ports: Vec<&ServicePort> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| is_grpc_port(p))
        .collect();
    let settings = super::annotations::read(svc.annotations());
    out.bad_annotations = settings
        .problems
        .iter()
        .map(|p| (format!("{ns}/{name}"), p.clone()))
        .collect();
    let (policy, hash_header) = match istio.and_then(|i| i.policy.clone()) {
        Some(p) => p,
        None => (settings.policy, settings.hash_header.clone()),
    };
    let slices = |service: &str| slices_of(&ns, service).into_iter().flat_map(BTreeMap::values);
    for sp in &grpc_ports {
        let Ok(port) = u16::try_from(sp.port) else { continue };
        let model_name = if grpc_ports.len() == 1 {
            format!("{ns}/{name}")
        } else {
            format!("{ns}/{name}:{}", sp.name.as_deref().unwrap_or("grpc"))
        };
        let port_name = sp.name.as_deref().filter(|n| !n.is_empty());

        let mut endpoints = BTreeMap::new();
        add_endpoints(&mut endpoints, slices(&name), &name, port_name, interner);
        let istio_routes = istio.filter(|i| !i.routes.is_empty());
        let attached: Vec<&AttachedRoute> = attached
            .iter()
            .filter(|a| a.port.is_none_or(|p| p == sp.port))
            .collect();
        let backends = istio_routes
            .into_iter()
            .flat_map(|i| &i.backends)
            .chain(attached.iter().flat_map(|a| &a.backends));
        for b in backends {
            add_endpoints(
                &mut endpoints,
                slices(&b.service),
                &b.service,
                b.port_name.as_deref(),
                interner,
            );
        }
        if let Some(i) = istio_routes {
            for subset in &i.subsets {
                let port_name = match i.backends.iter().find(|b| b.service == subset.service) {
                    Some(b) => b.port_name.as_deref(),
                    None => port_name,
                };
                istio::label_subset(&mut endpoints, slices(&subset.service), port_name, subset, pod_labels);
            }
        }
        let routes = match istio_routes {
            // A VirtualService's routes keep their order: first match wins.
            Some(i) => i.routes.clone(),
            None => by_precedence(attached.iter().flat_map(|a| a.routes.iter().cloned()).collect()),
        };
        out.services.push(model::Service {
            name: model_name,
            vips: ips
                .iter()
                .map(|ip| SocketAddr::V4(SocketAddrV4::new(*ip, port)))
                .collect(),
            listen: None,
            policy,
            hash_header: hash_header.clone(),
            endpoints: endpoints.into_values().collect(),
            routes,
            fault: settings.fault.clone(),
            traffic_distribution: traffic_distribution(svc),
            internal_traffic_policy: internal_traffic_policy(svc),
            ejection: istio.and_then(|i| i.ejection),
        });
    }
    out
}

/// Translates the snapshot. `cgroups_of` finds an opted-in pod's cgroup
/// directories (see [`super::cgroup`]); pods it finds none for are not
/// enrolled yet ([`Translation::cgroup_missing`]). Pods in a service mesh
/// are never enrolled ([`Translation::meshed`]).
pub fn translate(snap: &Snapshot, cgroups_of: impl FnMut(&Pod) -> Vec<PathBuf>) -> Translation {
    let mut tr = Translator::default();
    tr.services_replaced(snap.services.clone());
    tr.slices_replaced(snap.endpoint_slices.clone());
    tr.routes_replaced(snap.routes.clone());
    tr.istio_replaced(snap.virtual_services.clone(), snap.destination_rules.clone());
    tr.pods_replaced(snap.pod_labels.clone());
    tr.flush();
    let mut t = Translation {
        invalid_routes: tr.invalid_routes().to_vec(),
        istio_reports: tr.istio_reports().to_vec(),
        bad_annotations: tr.bad_annotations(),
        dropped: tr.dropped(),
        ..Translation::default()
    };
    t.model.services = tr.services();
    let namespaces: HashMap<String, &Arc<Namespace>> = snap.namespaces.iter().map(|n| (n.name_any(), n)).collect();
    enroll(
        &mut t,
        &snap.pods,
        |name| namespaces.get(name).map(|n| Arc::clone(n)),
        cgroups_of,
    );
    t
}

/// The enrolled cgroups of the opted-in pods (`pods` are this node's; their
/// namespaces by `namespace_of(name)`): into `t.model.enrolled`, and the
/// pods left out into `t.cgroup_missing` and `t.meshed`.
pub fn enroll(
    t: &mut Translation,
    pods: &[Arc<Pod>],
    namespace_of: impl Fn(&str) -> Option<Arc<Namespace>>,
    mut cgroups_of: impl FnMut(&Pod) -> Vec<PathBuf>,
) {
    let mut enrolled: Vec<Enrolled> = Vec::new();
    for pod in pods {
        let namespace = namespace_of(&pod.namespace().unwrap_or_default());
        let namespace = namespace.as_deref();
        if !running(pod) || !opted_in(pod, namespace) {
            continue;
        }
        if let Some(mesh) = Mesh::of(pod) {
            t.meshed.push((Arc::clone(pod), mesh));
            continue;
        }
        let dirs = cgroups_of(pod);
        if dirs.is_empty() {
            t.cgroup_missing.push(Arc::clone(pod));
            continue;
        }
        let who = pod_ref(pod);
        let reconnect_pinned = reconnects_pinned(pod, namespace);
        enrolled.extend(dirs.into_iter().map(|cgroup| Enrolled {
            cgroup,
            pod: Some(who.clone()),
            reconnect_pinned,
        }));
    }
    enrolled.sort();
    enrolled.dedup_by(|a, b| a.cgroup == b.cgroup);
    t.model.enrolled = enrolled;
}

/// Names of the Services whose endpoints a model service was built from, for
/// tests and display: the label keys minus the prefix.
pub fn member_services(ep: &Endpoint) -> HashSet<&str> {
    ep.labels
        .keys()
        .filter_map(|k| k.strip_prefix(grpcroute::SERVICE_LABEL_PREFIX))
        .collect()
}
