//! Gateway calls: which service a call arriving at a gateway listener goes
//! to, by its host (`:authority`) and its gRPC service, method and headers.
//! The service's own policy, routes, retries and ejection then pick the
//! endpoint, as for any call of that service.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
};

use super::{
    route::{CallMeta, Matches, Split},
    ServiceSlot, Table,
};
use crate::model::{host_matches, Gateway, GatewayListener};

/// One listener's routes, replaced when the model changes (open
/// connections route their next call with the new ones).
#[derive(Debug)]
pub struct GatewaySlot {
    routes: RwLock<Arc<ListenerRoutes>>,
}

impl GatewaySlot {
    pub fn new(routes: ListenerRoutes) -> Arc<Self> {
        Arc::new(GatewaySlot {
            routes: RwLock::new(Arc::new(routes)),
        })
    }

    pub fn set(&self, routes: ListenerRoutes) {
        if let Ok(mut r) = self.routes.write() {
            *r = Arc::new(routes);
        }
    }

    pub fn current(&self) -> Arc<ListenerRoutes> {
        Arc::clone(&self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// The routes attached to one listener, compiled.
#[derive(Debug)]
pub struct ListenerRoutes {
    /// `gateway/listener`, for messages.
    pub name: String,
    /// The gateway's and the listener's names, for counters.
    pub gateway: String,
    pub listener: String,
    hostnames: Vec<String>,
    routes: Vec<CompiledGatewayRoute>,
}

#[derive(Debug)]
struct CompiledGatewayRoute {
    hostnames: Vec<String>,
    matches: Matches,
    /// The service's name and slot (`None`: not in the table).
    backends: Vec<(String, Option<Arc<ServiceSlot>>)>,
    split: Split,
}

/// Why a gateway call has no service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// The listener does not take this host.
    Host(String),
    /// No route matches the call.
    Route(String),
    /// The chosen backend names a service the agent does not have.
    Service(String),
}

impl Miss {
    /// The `reason` label of the call in `balancer_gateway_unrouted_calls_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Miss::Host(_) => "host",
            Miss::Route(_) => "route",
            Miss::Service(_) => "service",
        }
    }

    pub fn message(&self, listener: &str) -> String {
        match self {
            Miss::Host(h) => format!("gateway listener `{listener}` serves no host `{h}`"),
            Miss::Route(h) => format!("gateway listener `{listener}`: no route for this call to host `{h}`"),
            Miss::Service(s) => format!("gateway listener `{listener}`: backend service `{s}` is not available"),
        }
    }
}

/// The host of an `:authority` (lower case, without port).
pub fn host_of(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl ListenerRoutes {
    /// The routes of `gateway` attached to `listener`, with their services'
    /// slots from `table` (which must already hold the model's services).
    pub fn compile(gateway: &Gateway, listener: &GatewayListener, table: &Table) -> Self {
        let routes = gateway
            .routes
            .iter()
            .filter(|r| r.listeners.is_empty() || r.listeners.contains(&listener.name))
            .map(|r| {
                let weights: Vec<u32> = r.backends.iter().map(|b| b.weight).collect();
                CompiledGatewayRoute {
                    hostnames: r.hostnames.clone(),
                    matches: Matches::compile(&r.matches),
                    backends: r
                        .backends
                        .iter()
                        .map(|b| (b.service.clone(), table.service(&b.service)))
                        .collect(),
                    split: Split::new(&weights),
                }
            })
            .collect();
        ListenerRoutes {
            name: format!("{}/{}", gateway.name, listener.name),
            gateway: gateway.name.clone(),
            listener: listener.name.clone(),
            hostnames: listener.hostnames.clone(),
            routes,
        }
    }

    /// The service for a call to `authority`: the first route whose
    /// hostnames and matches fit, then a backend by weight.
    pub fn route(&self, authority: &str, call: &CallMeta<'_>) -> Result<Arc<ServiceSlot>, Miss> {
        let host = host_of(authority);
        if !self.hostnames.is_empty() && !self.hostnames.iter().any(|p| host_matches(p, &host)) {
            return Err(Miss::Host(host));
        }
        let Some(route) = self.routes.iter().find(|r| {
            (r.hostnames.is_empty() || r.hostnames.iter().any(|p| host_matches(p, &host))) && r.matches.is_match(call)
        }) else {
            return Err(Miss::Route(host));
        };
        let (name, slot) = &route.backends[route.split.next().min(route.backends.len() - 1)];
        match slot {
            Some(slot) if !slot.is_removed() => Ok(Arc::clone(slot)),
            _ => Err(Miss::Service(name.clone())),
        }
    }
}

/// Calls gateway listeners answered themselves, for want of a host, a route
/// or a service for them: per gateway, listener and reason. Counted off the
/// path of routed calls, so a lock serves.
#[derive(Debug, Default)]
pub struct Unrouted(Mutex<BTreeMap<(String, String, &'static str), u64>>);

impl Unrouted {
    pub fn count(&self, routes: &ListenerRoutes, miss: &Miss) {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry((routes.gateway.clone(), routes.listener.clone(), miss.reason()))
            .or_default() += 1;
    }

    /// (gateway, listener, reason, calls), ordered.
    pub fn snapshot(&self) -> Vec<(String, String, &'static str, u64)> {
        let m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter().map(|((g, l, r), n)| (g.clone(), l.clone(), *r, *n)).collect()
    }

    /// Every unrouted call of one listener, whatever the reason.
    pub fn of(&self, gateway: &str, listener: &str) -> u64 {
        let m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter()
            .filter(|((g, l, _), _)| g == gateway && l == listener)
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::model::{Endpoint, GatewayRoute, Model, RouteMatch, Service, ServiceBackend, StringMatch};

    fn service(name: &str) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            vips: vec![],
            listen: Some("127.0.0.1:1".parse().unwrap()),
            policy: Default::default(),
            hash_header: None,
            endpoints: vec![Endpoint::ready("127.0.0.1:2".parse().unwrap(), Default::default())],
            routes: vec![],
            fault: None,
            traffic_distribution: Default::default(),
            internal_traffic_policy: Default::default(),
            ejection: Default::default(),
        })
    }

    fn gateway() -> (Gateway, Arc<Table>) {
        let model = Model {
            services: vec![service("a"), service("b")],
            ..Model::default()
        };
        let route = |host: &str, svc: Option<&str>, backends: Vec<(&str, u32)>| GatewayRoute {
            name: None,
            listeners: vec![],
            hostnames: vec![host.into()],
            matches: svc
                .map(|s| {
                    vec![RouteMatch {
                        service: Some(StringMatch::Exact(s.into())),
                        ..Default::default()
                    }]
                })
                .unwrap_or_default(),
            backends: backends
                .into_iter()
                .map(|(s, w)| ServiceBackend {
                    service: s.into(),
                    weight: w,
                })
                .collect(),
        };
        let gw = Gateway {
            name: "gw".into(),
            listeners: vec![GatewayListener {
                name: "l".into(),
                address: "127.0.0.1:3".parse().unwrap(),
                hostnames: vec!["*.example.com".into()],
                certificates: vec![],
            }],
            routes: vec![
                route("a.example.com", Some("pkg.A"), vec![("a", 1)]),
                route("*.example.com", None, vec![("a", 3), ("b", 1)]),
                route("gone.example.com", None, vec![("missing", 1)]),
            ],
        };
        (gw, Table::new(&model))
    }

    #[test]
    fn host_then_match_then_weight() {
        let (gw, table) = gateway();
        let routes = ListenerRoutes::compile(&gw, &gw.listeners[0], &table);
        let h = http::HeaderMap::new();
        let a = CallMeta::from_path("/pkg.A/Do", &h);
        assert_eq!(routes.route("a.example.com:443", &a).unwrap().name(), "a");
        assert_eq!(
            routes.route("other.org", &a).unwrap_err(),
            Miss::Host("other.org".into())
        );
        let other = CallMeta::from_path("/pkg.B/Do", &h);
        let picks: Vec<String> = (0..400)
            .map(|_| routes.route("x.example.com", &other).unwrap().name().to_owned())
            .collect();
        assert_eq!(picks.iter().filter(|p| *p == "a").count(), 300);
    }

    #[test]
    fn authority_hosts_lose_port_and_case() {
        assert_eq!(host_of("API.Example.com:8443"), "api.example.com");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("example.com."), "example.com");
    }
}
