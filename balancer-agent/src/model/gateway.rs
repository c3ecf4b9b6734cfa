//! Gateways: listeners for clients outside the cluster (north-south), each
//! call routed by its `:authority` and gRPC service/method/headers to one of
//! the configured services, then balanced like any other call of that
//! service.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use serde::Serialize;

use super::RouteMatch;

/// One gateway: its listeners and the routes attached to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    /// Unique name (`namespace/name` in Kubernetes).
    pub name: String,
    pub listeners: Vec<GatewayListener>,
    /// First match wins (see [`GatewayRoute`]).
    pub routes: Vec<GatewayRoute>,
}

/// A socket the gateway serves: cleartext HTTP/2 (prior knowledge) without
/// certificates, TLS (ALPN `h2`) with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayListener {
    pub name: String,
    pub address: SocketAddr,
    /// The hosts this listener takes (`*.example.com` wildcards allowed);
    /// empty: any.
    pub hostnames: Vec<String>,
    /// With several, the client's SNI picks the one whose certificate names
    /// it; the first one otherwise.
    pub certificates: Vec<CertificateSource>,
}

impl GatewayListener {
    pub fn is_tls(&self) -> bool {
        !self.certificates.is_empty()
    }
}

/// Where a listener's certificate chain and private key come from.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateSource {
    /// PEM files, re-read when they change (static mode).
    Files { cert: PathBuf, key: PathBuf },
    /// PEM bytes (a `kubernetes.io/tls` Secret, named in `name`).
    Pem {
        name: String,
        #[serde(skip)]
        cert: Arc<[u8]>,
        #[serde(skip)]
        key: Arc<[u8]>,
    },
}

impl std::fmt::Debug for CertificateSource {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertificateSource::Files { cert, key } => {
                f.debug_struct("Files").field("cert", cert).field("key", key).finish()
            }
            CertificateSource::Pem { name, .. } => f.debug_struct("Pem").field("name", name).finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Display for CertificateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertificateSource::Files { cert, .. } => write!(f, "{}", cert.display()),
            CertificateSource::Pem { name, .. } => write!(f, "Secret {name}"),
        }
    }
}

/// A rule in the shape of a GRPCRoute rule whose parent is a Gateway: the
/// call's host must match one of `hostnames` (none: any host the listener
/// takes), then any one of `matches` (none: every call), and the call goes
/// to a service picked by weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayRoute {
    /// For display (`namespace/grpcroute-name#rule-index` in Kubernetes).
    pub name: Option<String>,
    /// Listener names this route is attached to; empty: every listener.
    pub listeners: Vec<String>,
    pub hostnames: Vec<String>,
    pub matches: Vec<RouteMatch>,
    pub backends: Vec<ServiceBackend>,
}

/// A share of a route's calls for a configured service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceBackend {
    /// The service's name in the model.
    pub service: String,
    pub weight: u32,
}

/// What is wrong with a gateway.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    #[error("gateway name is empty")]
    EmptyName,
    #[error("gateway `{0}` is defined twice")]
    Duplicate(String),
    #[error("gateway `{0}` has no listeners")]
    NoListeners(String),
    #[error("gateway `{gateway}`: listener {address} is also used by {other}")]
    DuplicateAddress {
        gateway: String,
        address: SocketAddr,
        other: String,
    },
    #[error("gateway `{gateway}`: listener name `{listener}` is used twice")]
    DuplicateListener { gateway: String, listener: String },
    #[error("gateway `{gateway}`: invalid hostname {hostname:?} (expected e.g. api.example.com or *.example.com)")]
    BadHostname { gateway: String, hostname: String },
    #[error("gateway `{gateway}`, route {route}: no backends")]
    NoBackends { gateway: String, route: usize },
    #[error("gateway `{gateway}`, route {route}: every backend has weight 0")]
    AllWeightsZero { gateway: String, route: usize },
    #[error("gateway `{gateway}`, route {route}: backend service `{service}` is not configured")]
    UnknownService {
        gateway: String,
        route: usize,
        service: String,
    },
    #[error("gateway `{gateway}`, route {route}: no listener named `{listener}`")]
    UnknownListener {
        gateway: String,
        route: usize,
        listener: String,
    },
}

/// Whether `host` (lower case, no port) is a valid hostname or a
/// `*.`-prefixed wildcard of one.
pub fn valid_hostname(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Whether `host` is matched by `pattern` (exact, or `*.suffix`: one or
/// more labels before the suffix, as the Gateway API says).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

impl Gateway {
    /// Checks the gateway; `services` tells which service names exist.
    pub fn validate(&self, service_exists: &dyn Fn(&str) -> bool) -> Result<(), GatewayError> {
        let g = || self.name.clone();
        if self.name.is_empty() {
            return Err(GatewayError::EmptyName);
        }
        if self.listeners.is_empty() {
            return Err(GatewayError::NoListeners(g()));
        }
        let mut names = BTreeMap::new();
        for l in &self.listeners {
            if names.insert(l.name.as_str(), ()).is_some() {
                return Err(GatewayError::DuplicateListener {
                    gateway: g(),
                    listener: l.name.clone(),
                });
            }
            for h in &l.hostnames {
                if !valid_hostname(h) {
                    return Err(GatewayError::BadHostname {
                        gateway: g(),
                        hostname: h.clone(),
                    });
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.backends.is_empty() {
                return Err(GatewayError::NoBackends { gateway: g(), route: i });
            }
            if r.backends.iter().all(|b| b.weight == 0) {
                return Err(GatewayError::AllWeightsZero { gateway: g(), route: i });
            }
            for b in &r.backends {
                if !service_exists(&b.service) {
                    return Err(GatewayError::UnknownService {
                        gateway: g(),
                        route: i,
                        service: b.service.clone(),
                    });
                }
            }
            for h in &r.hostnames {
                if !valid_hostname(h) {
                    return Err(GatewayError::BadHostname {
                        gateway: g(),
                        hostname: h.clone(),
                    });
                }
            }
            for l in &r.listeners {
                if !names.contains_key(l.as_str()) {
                    return Err(GatewayError::UnknownListener {
                        gateway: g(),
                        route: i,
                        listener: l.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Checks a set of gateways together: unique names and listener addresses
/// (also against the services' explicit listeners).
pub fn validate_all(
    gateways: &[Arc<Gateway>],
    service_exists: &dyn Fn(&str) -> bool,
    service_listeners: &BTreeMap<SocketAddr, &str>,
) -> Result<(), GatewayError> {
    let mut names = BTreeMap::new();
    let mut addresses: BTreeMap<SocketAddr, String> = service_listeners
        .iter()
        .map(|(a, s)| (*a, format!("service `{s}`")))
        .collect();
    for gw in gateways {
        gw.validate(service_exists)?;
        if names.insert(gw.name.as_str(), ()).is_some() {
            return Err(GatewayError::Duplicate(gw.name.clone()));
        }
        for l in &gw.listeners {
            let me = format!("gateway `{}` listener `{}`", gw.name, l.name);
            if let Some(other) = addresses.insert(l.address, me) {
                return Err(GatewayError::DuplicateAddress {
                    gateway: gw.name.clone(),
                    address: l.address,
                    other,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_or_more_labels() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("api.example.com", "api.example.com"));
        assert!(!host_matches("api.example.com", "web.example.com"));
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_hostname("api.example.com"));
        assert!(valid_hostname("*.example.com"));
        assert!(!valid_hostname("API.example.com"));
        assert!(!valid_hostname("a..b"));
        assert!(!valid_hostname("*"));
        assert!(!valid_hostname("a.*.b"));
        assert!(!valid_hostname("host:443"));
    }
}
