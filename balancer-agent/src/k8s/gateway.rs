//! Gateway API `Gateway`s of balancer's class onto the model's gateways:
//! every agent serves their listeners on its node's address, routed by the
//! GRPCRoutes whose `parentRefs` name the Gateway.
//!
//! - Class: `spec.gatewayClassName` names a GatewayClass whose
//!   `controllerName` is [`GATEWAY_CONTROLLER`] (`deploy/gateway/` ships
//!   one, [`GATEWAY_CLASS`]), whatever its name. Other Gateways — those of
//!   another controller's class, or of a class that does not exist — are
//!   left alone. When GatewayClasses cannot be read, the class named
//!   [`GATEWAY_CLASS`] is assumed to be balancer's.
//! - Listeners: protocol `HTTP` is served as cleartext HTTP/2 (prior
//!   knowledge), `HTTPS` with `tls.mode: Terminate` as TLS (ALPN `h2`) with
//!   the certificates of its `certificateRefs`: `kubernetes.io/tls` Secrets
//!   in the Gateway's namespace, read one by one (never listed). Listeners
//!   sharing a port are served by one socket; SNI picks among their
//!   certificates and `:authority` among their hostnames. Other protocols,
//!   TLS passthrough and cross-namespace references are not accepted.
//! - Routes: a GRPCRoute attaches to the listeners its parentRef names (all,
//!   or the one its `sectionName` names) that allow it: `allowedRoutes`
//!   `namespaces` (`Same` by default, `All`, or a `Selector` on the route
//!   namespace's labels) and `kinds` (when set, GRPCRoute must be one; a
//!   listener that takes no GRPCRoute is not served). A rule of an attached
//!   route matches on the route's `hostnames`,
//!   then on its method and header matches; its `backendRefs` name balanced
//!   Services (gRPC ports) of the route's namespace, weighted. Rules are
//!   tried most specific first: exact hostnames, then wildcards, then none;
//!   rules with matches before catch-alls; then the oldest route.
//!
//! Pure: the Secrets' contents come in as an argument; what each listener
//! got comes out as [`GatewayVerdict`]s, which the elected agent writes in
//! the Gateway's status ([`super::gateway_status`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use gateway_api::{
    gatewayclasses::GatewayClass,
    gateways::{
        Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From,
        GatewayListenersAllowedRoutesNamespacesSelector as Selector, GatewayListenersTlsMode,
    },
    grpcroutes::{GrpcRoute, GrpcRouteParentRefs},
};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::grpcroute::{backend_port, to_match};
use crate::model::{self, valid_hostname, CertificateSource, GatewayListener, GatewayRoute, ServiceBackend};

/// The name of the GatewayClass `deploy/gateway/` ships.
pub const GATEWAY_CLASS: &str = "balancer";
/// The `controllerName` of balancer's GatewayClass.
pub const GATEWAY_CONTROLLER: &str = "balancer.io/gateway-controller";

/// `(namespace, name)`.
pub type Key = (String, String);

/// A TLS Secret's PEM certificate chain and key, checked; or why they
/// cannot be used.
pub type SecretPem = Result<(Arc<[u8]>, Arc<[u8]>), String>;

/// One condition of a listener or Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    fn yes(reason: &'static str) -> Cond {
        Cond {
            ok: true,
            reason,
            message: String::new(),
        }
    }

    fn no(reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// What one listener of a Gateway got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerVerdict {
    pub name: String,
    pub accepted: Cond,
    pub resolved_refs: Cond,
    pub attached_routes: i32,
}

impl ListenerVerdict {
    /// Served by the agents.
    pub fn programmed(&self) -> bool {
        self.accepted.ok && self.resolved_refs.ok
    }
}

/// What one Gateway of balancer's class got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayVerdict {
    pub key: Key,
    pub generation: Option<i64>,
    pub listeners: Vec<ListenerVerdict>,
}

/// The model's gateways and what each Gateway got.
#[derive(Debug, Default)]
pub struct Translated {
    pub gateways: Vec<Arc<model::Gateway>>,
    pub verdicts: Vec<GatewayVerdict>,
    /// GRPCRoute rules attached to a Gateway and left out, and why.
    pub skipped_rules: Vec<(String, String)>,
    /// GRPCRoutes naming a Gateway they do not attach to, and why.
    pub unattached: Vec<Unattached>,
}

/// A GRPCRoute (`namespace/name`) whose parentRefs name a Gateway but
/// attach to none of its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unattached {
    pub route: String,
    pub gateway: Key,
    /// The route's `Accepted` condition for that Gateway (False), with the
    /// Gateway API reason: `NoMatchingParent` (no listener has the
    /// `sectionName` or `port` named) or `NotAllowedByListeners` (the
    /// listeners named do not take routes of the route's namespace).
    pub why: Cond,
}

/// A namespace's labels, by its name; `None` when it is not known.
pub type NamespaceLabels<'a> = &'a dyn Fn(&str) -> Option<BTreeMap<String, String>>;

fn key_of<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// The names of the GatewayClasses balancer serves.
pub type Classes = BTreeSet<String>;

/// balancer's GatewayClasses among `classes`: those of its controller.
pub fn our_classes(classes: &[Arc<GatewayClass>]) -> Vec<Arc<GatewayClass>> {
    classes
        .iter()
        .filter(|c| c.spec.controller_name == GATEWAY_CONTROLLER)
        .cloned()
        .collect()
}

/// The names of `classes`.
pub fn class_names(classes: &[Arc<GatewayClass>]) -> Classes {
    classes.iter().map(|c| c.name_any()).collect()
}

/// What is taken for balancer's classes when GatewayClasses cannot be
/// read: the one `deploy/gateway/` ships.
pub fn assumed_classes() -> Classes {
    [GATEWAY_CLASS.to_owned()].into()
}

/// balancer's Gateways among `gateways`: those of one of `classes`.
pub fn ours(gateways: Vec<Arc<Gateway>>, classes: &Classes) -> Vec<Arc<Gateway>> {
    gateways
        .into_iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name))
        .collect()
}

/// The Secrets balancer's Gateways (`gateways`) reference, in their own
/// namespace: the only ones the agent reads.
pub fn secret_refs(gateways: &[Arc<Gateway>]) -> BTreeSet<Key> {
    gateways
        .iter()
        .flat_map(|g| {
            let ns = g.namespace().unwrap_or_default();
            g.spec
                .listeners
                .iter()
                .filter_map(|l| l.tls.as_ref()?.certificate_refs.as_ref())
                .flatten()
                .filter(|r| is_secret(r.group.as_deref(), r.kind.as_deref()))
                .filter(|r| r.namespace.as_deref().is_none_or(|n| n == ns))
                .map(|r| (ns.clone(), r.name.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn is_secret(group: Option<&str>, kind: Option<&str>) -> bool {
    matches!(group, None | Some("")) && matches!(kind, None | Some("Secret"))
}

/// The routes with a parentRef naming one of `gateways`.
pub fn routes_of(gateways: &[Arc<Gateway>], routes: &[Arc<GrpcRoute>]) -> Vec<Arc<GrpcRoute>> {
    let keys: Vec<Key> = gateways.iter().map(|g| key_of(g.as_ref())).collect();
    routes
        .iter()
        .filter(|r| {
            let ns = r.namespace().unwrap_or_default();
            r.spec
                .parent_refs
                .iter()
                .flatten()
                .any(|p| keys.iter().any(|k| names_gateway(p, &ns, k)))
        })
        .cloned()
        .collect()
}

/// Whether `p` names the Gateway `gw` (a route in `route_ns`).
fn names_gateway(p: &GrpcRouteParentRefs, route_ns: &str, gw: &Key) -> bool {
    matches!(p.group.as_deref(), None | Some("gateway.networking.k8s.io"))
        && matches!(p.kind.as_deref(), None | Some("Gateway"))
        && p.namespace.as_deref().unwrap_or(route_ns) == gw.0
        && p.name == gw.1
}

/// Whether listener `l` takes GRPCRoutes: `allowedRoutes.kinds`, when set
/// and not empty, must name GRPCRoute.
fn takes_grpc_routes(l: &GatewayListeners) -> bool {
    match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_deref()) {
        None | Some([]) => true,
        Some(kinds) => kinds
            .iter()
            .any(|k| k.kind == "GRPCRoute" && k.group.as_deref().is_none_or(|g| g == "gateway.networking.k8s.io")),
    }
}

/// Whether listener `l` of a Gateway in `gw_ns` takes routes of
/// `route_ns`: `allowedRoutes.namespaces.from` `Same` (the default), `All`,
/// or `Selector`, matched against the namespace's labels.
fn allows_namespace(l: &GatewayListeners, gw_ns: &str, route_ns: &str, labels: NamespaceLabels<'_>) -> bool {
    let namespaces = l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(From::Same) => route_ns == gw_ns,
        Some(From::All) => true,
        Some(From::Selector) => match (namespaces.and_then(|n| n.selector.as_ref()), labels(route_ns)) {
            (Some(selector), Some(have)) => selects(selector, &have),
            _ => false,
        },
    }
}

/// A label selector against `labels`: every `matchLabels` pair and every
/// `matchExpressions` term (In, NotIn, Exists, DoesNotExist) holds; an
/// empty selector selects everything, an unknown operator nothing.
fn selects(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let listed = || value.is_some_and(|v| e.values.iter().flatten().any(|x| x == v));
            match e.operator.as_str() {
                "In" => listed(),
                "NotIn" => !listed(),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The listener's protocol and certificates, or why it is not accepted.
fn listener_tls(
    l: &GatewayListeners,
    ns: &str,
    secrets: &HashMap<Key, SecretPem>,
) -> Result<Vec<CertificateSource>, (bool, Cond)> {
    match l.protocol.as_str() {
        "HTTP" => return Ok(vec![]),
        "HTTPS" => {}
        other => {
            return Err((
                false,
                Cond::no(
                    "UnsupportedProtocol",
                    format!("protocol {other} is not served (HTTP for cleartext HTTP/2, HTTPS for TLS)"),
                ),
            ))
        }
    }
    let Some(tls) = &l.tls else {
        return Err((
            true,
            Cond::no("InvalidCertificateRef", "HTTPS needs tls.certificateRefs"),
        ));
    };
    if matches!(tls.mode, Some(GatewayListenersTlsMode::Passthrough)) {
        return Err((
            false,
            Cond::no(
                "UnsupportedValue",
                "tls.mode Passthrough is not supported (only Terminate)",
            ),
        ));
    }
    let refs = tls.certificate_refs.as_deref().unwrap_or_default();
    if refs.is_empty() {
        return Err((true, Cond::no("InvalidCertificateRef", "no tls.certificateRefs")));
    }
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        if !is_secret(r.group.as_deref(), r.kind.as_deref()) {
            return Err((
                true,
                Cond::no(
                    "InvalidCertificateRef",
                    format!("certificateRef `{}` is not a Secret", r.name),
                ),
            ));
        }
        if r.namespace.as_deref().is_some_and(|n| n != ns) {
            return Err((
                true,
                Cond::no(
                    "RefNotPermitted",
                    format!("certificateRef `{}`: Secrets of other namespaces are not read", r.name),
                ),
            ));
        }
        let key = (ns.to_owned(), r.name.clone());
        match secrets.get(&key) {
            Some(Ok((cert, pem_key))) => out.push(CertificateSource::Pem {
                name: format!("{ns}/{}", r.name),
                cert: Arc::clone(cert),
                key: Arc::clone(pem_key),
            }),
            Some(Err(why)) => {
                return Err((
                    true,
                    Cond::no("InvalidCertificateRef", format!("Secret {ns}/{}: {why}", r.name)),
                ))
            }
            None => {
                return Err((
                    true,
                    Cond::no("InvalidCertificateRef", format!("Secret {ns}/{} not found", r.name)),
                ))
            }
        }
    }
    Ok(out)
}

/// Sort key of a rule: exact hostnames first, then wildcards, then none;
/// rules with matches before catch-alls.
fn precedence(hostnames: &[String], has_matches: bool) -> (u8, u8) {
    let host = if hostnames.iter().any(|h| !h.starts_with('*')) {
        0
    } else if !hostnames.is_empty() {
        1
    } else {
        2
    };
    (host, u8::from(!has_matches))
}

/// Translates balancer's Gateways ([`ours`]). `node_ip` is where this
/// agent serves them; `services(ns, name)` finds a Service; `balanced` are the model's
/// service names (a backend must be one); `secrets` the referenced Secrets;
/// `namespaces` the labels of the routes' namespaces.
pub fn translate(
    gateways: &[Arc<Gateway>],
    routes: &[Arc<GrpcRoute>],
    services: &dyn Fn(&str, &str) -> Option<Arc<Service>>,
    balanced: &HashSet<&str>,
    secrets: &HashMap<Key, SecretPem>,
    namespaces: NamespaceLabels<'_>,
    node_ip: IpAddr,
) -> Translated {
    let mut ours: Vec<&Arc<Gateway>> = gateways.iter().collect();
    ours.sort_by_key(|g| (g.creation_timestamp(), key_of(g.as_ref())));
    let mut routes: Vec<&Arc<GrpcRoute>> = routes.iter().collect();
    routes.sort_by_key(|r| (r.creation_timestamp(), key_of(r.as_ref())));
    let mut out = Translated::default();
    let mut ports_taken: HashMap<u16, String> = HashMap::new();
    for gw in ours {
        let key = key_of(gw.as_ref());
        let ns = key.0.clone();
        let gw_name = format!("{}/{}", key.0, key.1);
        let mut verdicts = Vec::with_capacity(gw.spec.listeners.len());
        // Port → the model listener serving it.
        let mut by_port: BTreeMap<u16, GatewayListener> = BTreeMap::new();
        // Gateway listener name → its model listener's name and port.
        let mut served: HashMap<&str, (String, u16)> = HashMap::new();
        for l in &gw.spec.listeners {
            let mut v = ListenerVerdict {
                name: l.name.clone(),
                accepted: Cond::yes("Accepted"),
                resolved_refs: Cond::yes("ResolvedRefs"),
                attached_routes: 0,
            };
            let port = u16::try_from(l.port).unwrap_or(0);
            let hostname = l.hostname.as_ref().map(|h| h.to_ascii_lowercase());
            match listener_tls(l, &ns, secrets) {
                Err((accepted, cond)) => {
                    if accepted {
                        v.resolved_refs = cond;
                    } else {
                        v.accepted = cond;
                    }
                }
                Ok(_) if port == 0 => v.accepted = Cond::no("UnsupportedValue", format!("port {}", l.port)),
                Ok(_) if hostname.as_deref().is_some_and(|h| !valid_hostname(h)) => {
                    v.accepted = Cond::no("UnsupportedValue", "invalid hostname")
                }
                Ok(_) if !takes_grpc_routes(l) => {
                    v.resolved_refs = Cond::no(
                        "InvalidRouteKinds",
                        "allowedRoutes.kinds names no GRPCRoute: balancer serves GRPCRoutes only",
                    )
                }
                Ok(_) if ports_taken.get(&port).is_some_and(|other| *other != gw_name) => {
                    v.accepted = Cond::no(
                        "PortUnavailable",
                        format!("port {port} is served for Gateway {}", ports_taken[&port]),
                    )
                }
                Ok(certs) => {
                    let entry = by_port.entry(port).or_insert_with(|| GatewayListener {
                        name: l.name.clone(),
                        address: SocketAddr::new(node_ip, port),
                        hostnames: Vec::new(),
                        certificates: Vec::new(),
                    });
                    let fresh = entry.name == l.name;
                    if !fresh && entry.certificates.is_empty() != certs.is_empty() {
                        v.accepted = Cond::no(
                            "ProtocolConflict",
                            format!("port {port} is also a listener with another protocol"),
                        );
                    } else {
                        // A listener without hostname takes any host.
                        let any = (!fresh && entry.hostnames.is_empty()) || hostname.is_none();
                        if any {
                            entry.hostnames.clear();
                        } else if let Some(h) = hostname {
                            entry.hostnames.push(h);
                        }
                        entry.certificates.extend(certs);
                        ports_taken.insert(port, gw_name.clone());
                        served.insert(l.name.as_str(), (entry.name.clone(), port));
                    }
                }
            }
            verdicts.push(v);
        }
        // Routes attached to this Gateway.
        let mut rules: Vec<((u8, u8), usize, GatewayRoute)> = Vec::new();
        for (order, route) in routes.iter().enumerate() {
            let route_ns = route.namespace().unwrap_or_default();
            let parents: Vec<&GrpcRouteParentRefs> = route
                .spec
                .parent_refs
                .iter()
                .flatten()
                .filter(|p| names_gateway(p, &route_ns, &key))
                .collect();
            if parents.is_empty() {
                continue;
            }
            // The Gateway listeners it attaches to.
            let mut sections: Vec<&str> = Vec::new();
            let (mut named, mut refused) = (false, false);
            for p in &parents {
                for l in &gw.spec.listeners {
                    let by_section = p.section_name.as_deref().is_none_or(|s| s == l.name);
                    let by_port = p.port.is_none_or(|port| port == l.port);
                    named |= by_section && by_port;
                    if by_section && by_port && served.contains_key(l.name.as_str()) {
                        if allows_namespace(l, &ns, &route_ns, namespaces) {
                            sections.push(l.name.as_str());
                        } else {
                            refused = true;
                        }
                    }
                }
            }
            sections.sort_unstable();
            sections.dedup();
            if sections.is_empty() {
                let why = match (named, refused) {
                    (false, _) => Some(Cond::no(
                        "NoMatchingParent",
                        format!("Gateway {gw_name} has no listener with the sectionName or port named"),
                    )),
                    (true, true) => Some(Cond::no(
                        "NotAllowedByListeners",
                        format!(
                            "no listener of Gateway {gw_name} allows routes from namespace {route_ns} (allowedRoutes)"
                        ),
                    )),
                    // Only listeners that are not served: nothing to say
                    // beyond what their own conditions say.
                    (true, false) => None,
                };
                if let Some(why) = why {
                    out.unattached.push(Unattached {
                        route: format!("{route_ns}/{}", route.name_any()),
                        gateway: key.clone(),
                        why,
                    });
                }
                continue;
            }
            let hostnames: Vec<String> = route
                .spec
                .hostnames
                .iter()
                .flatten()
                .map(|h| h.to_ascii_lowercase())
                .filter(|h| valid_hostname(h))
                .collect();
            let route_name = format!("{route_ns}/{}", route.name_any());
            let mut accepted = false;
            for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
                let name = format!("{route_name}#{i}");
                match gateway_rule(i, rule, &route_ns, services, balanced) {
                    Ok((matches, backends)) => {
                        accepted = true;
                        let mut listeners: Vec<String> = sections.iter().map(|s| served[s].0.clone()).collect();
                        listeners.sort();
                        listeners.dedup();
                        let p = precedence(&hostnames, !matches.is_empty());
                        rules.push((
                            p,
                            order,
                            GatewayRoute {
                                name: Some(name),
                                listeners,
                                hostnames: hostnames.clone(),
                                matches,
                                backends,
                            },
                        ));
                    }
                    Err(why) => out.skipped_rules.push((name, why)),
                }
            }
            if accepted {
                for v in &mut verdicts {
                    if sections.contains(&v.name.as_str()) {
                        v.attached_routes += 1;
                    }
                }
            }
        }
        rules.sort_by_key(|(p, order, _)| (*p, *order));
        if !by_port.is_empty() {
            out.gateways.push(Arc::new(model::Gateway {
                name: gw_name,
                listeners: by_port.into_values().collect(),
                routes: rules.into_iter().map(|(_, _, r)| r).collect(),
            }));
        }
        out.verdicts.push(GatewayVerdict {
            key,
            generation: gw.metadata.generation,
            listeners: verdicts,
        });
    }
    out.gateways.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One rule of a route attached to a Gateway: its matches and its
/// backends (model service names), or why it is left out.
fn gateway_rule(
    i: usize,
    rule: &gateway_api::grpcroutes::GrpcRouteRules,
    namespace: &str,
    services: &dyn Fn(&str, &str) -> Option<Arc<Service>>,
    balanced: &HashSet<&str>,
) -> Result<(Vec<model::RouteMatch>, Vec<ServiceBackend>), String> {
    if rule.filters.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err("filters are not supported".to_owned());
    }
    let refs = rule.backend_refs.as_deref().unwrap_or_default();
    if refs.is_empty() {
        return Err("no backendRefs".to_owned());
    }
    let mut backends = Vec::with_capacity(refs.len());
    for r in refs {
        let svc = services(namespace, &r.name);
        let port = backend_port(i, r, namespace, &|ns: &str, name: &str| {
            svc.as_deref()
                .filter(|s| s.namespace().as_deref() == Some(ns) && s.name_any() == name)
        })
        .map_err(|e| e.to_string())?;
        let whole = format!("{namespace}/{}", port.service);
        let by_port = format!("{whole}:{}", port.port_name.as_deref().unwrap_or("grpc"));
        let service = [whole, by_port]
            .into_iter()
            .find(|n| balanced.contains(n.as_str()))
            .ok_or_else(|| {
                format!(
                    "backend Service `{namespace}/{}` port {} is not balanced (not a gRPC port)",
                    r.name, port.port
                )
            })?;
        let weight =
            u32::try_from(r.weight.unwrap_or(1)).map_err(|_| format!("backendRef `{}`: negative weight", r.name))?;
        backends.push(ServiceBackend { service, weight });
    }
    if backends.iter().all(|b| b.weight == 0) {
        return Err("every backendRef has weight 0".to_owned());
    }
    let matches = rule
        .matches
        .iter()
        .flatten()
        .map(|m| to_match(i, m))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok((matches, backends))
}

/// Reads a `kubernetes.io/tls` Secret's `tls.crt` and `tls.key`, checked
/// (the key matches the certificate).
pub fn secret_pem(secret: &k8s_openapi::api::core::v1::Secret) -> SecretPem {
    if secret.type_.as_deref().is_some_and(|t| t != "kubernetes.io/tls") {
        return Err(format!(
            "type {} (expected kubernetes.io/tls)",
            secret.type_.as_deref().unwrap_or_default()
        ));
    }
    let data = secret.data.as_ref();
    let get = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.clone());
    let (Some(cert), Some(key)) = (get("tls.crt"), get("tls.key")) else {
        return Err("no tls.crt and tls.key".to_owned());
    };
    crate::tls::certified_key(&cert, &key, "certificate").map_err(|e| crate::error::Chain(&e).to_string())?;
    Ok((cert.into(), key.into()))
}
