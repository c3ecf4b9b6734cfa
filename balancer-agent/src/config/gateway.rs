//! The static file's `gateways:`: listeners for clients outside the
//! cluster and the routes that send their calls to the services.
//!
//! ```yaml
//! gateways:
//!   - name: public
//!     listeners:
//!       - name: https                  # default: listener-N
//!         address: 0.0.0.0:8443
//!         hostnames: ["*.example.com"] # optional: the hosts it takes
//!         tls: { cert: tls.crt, key: tls.key }   # PEM; relative to this file
//!         # several, picked by SNI: tls: { certificates: [ { cert, key }, ... ] }
//!       - name: h2c                    # no `tls`: cleartext HTTP/2
//!         address: 127.0.0.1:8080
//!     routes:
//!       - hostnames: [greeter.example.com]
//!         listeners: [https]           # optional: default every listener
//!         matches: [ { service: helloworld.Greeter } ]
//!         backends:
//!           - { service: greeter, weight: 90 }
//!           - { service: greeter-canary, weight: 10 }
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::schema::{invalid, route_matches, Addr, Invalid, MatchFile};
use crate::model::{
    valid_hostname, CertificateSource, Gateway, GatewayError, GatewayListener, GatewayRoute, Model, ServiceBackend,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GatewayFile {
    name: String,
    #[serde(default)]
    listeners: Vec<ListenerFile>,
    #[serde(default)]
    routes: Vec<GatewayRouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerFile {
    #[serde(default)]
    name: Option<String>,
    address: Addr,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    tls: Option<TlsFile>,
}

/// `{ cert, key }`, or `{ certificates: [ { cert, key }, ... ] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    certificates: Vec<CertFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertFile {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayRouteFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    listeners: Vec<String>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    matches: Vec<MatchFile>,
    #[serde(default)]
    backends: Vec<ServiceBackendFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBackendFile {
    service: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl GatewayFile {
    /// `base`: the file's directory, which relative certificate paths are
    /// relative to.
    pub(super) fn into_gateway(self, at: &str, base: &Path) -> Result<Gateway, Invalid> {
        if self.listeners.is_empty() {
            return Err(invalid(
                format!("{at}.listeners"),
                "a gateway needs at least one listener ({ address: IP:PORT })",
            ));
        }
        let listeners = self
            .listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| l.into_listener(&format!("{at}.listeners[{i}]"), i, base))
            .collect::<Result<Vec<_>, _>>()?;
        let routes = self
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_route(&format!("{at}.routes[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Gateway {
            name: self.name,
            listeners,
            routes,
        })
    }
}

fn hostnames(names: Vec<String>, at: &str) -> Result<Vec<String>, Invalid> {
    names
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let h = h.to_ascii_lowercase();
            if valid_hostname(&h) {
                Ok(h)
            } else {
                Err(invalid(
                    format!("{at}[{i}]"),
                    format!("invalid hostname {h:?} (expected e.g. api.example.com or *.example.com, no port)"),
                ))
            }
        })
        .collect()
}

impl ListenerFile {
    fn into_listener(self, at: &str, index: usize, base: &Path) -> Result<GatewayListener, Invalid> {
        let certificates = match self.tls {
            None => vec![],
            Some(tls) => tls.into_sources(&format!("{at}.tls"), base)?,
        };
        Ok(GatewayListener {
            name: self.name.unwrap_or_else(|| format!("listener-{index}")),
            address: self.address.0,
            hostnames: hostnames(self.hostnames, &format!("{at}.hostnames"))?,
            certificates,
        })
    }
}

impl TlsFile {
    fn into_sources(self, at: &str, base: &Path) -> Result<Vec<CertificateSource>, Invalid> {
        let pairs: Vec<(String, PathBuf, PathBuf)> = match (self.cert, self.key, self.certificates.is_empty()) {
            (Some(cert), Some(key), true) => vec![(at.to_owned(), cert, key)],
            (None, None, false) => self
                .certificates
                .into_iter()
                .enumerate()
                .map(|(i, c)| (format!("{at}.certificates[{i}]"), c.cert, c.key))
                .collect(),
            (Some(_), None, true) => return Err(invalid(format!("{at}.cert"), "`cert` without `key`")),
            (None, Some(_), true) => return Err(invalid(format!("{at}.key"), "`key` without `cert`")),
            (None, None, true) => {
                return Err(invalid(
                    at.to_owned(),
                    "tls needs `cert` and `key`, or `certificates: [ { cert, key }, ... ]`",
                ))
            }
            _ => {
                return Err(invalid(
                    format!("{at}.certificates"),
                    "give either `cert`/`key` or `certificates`, not both",
                ))
            }
        };
        pairs
            .into_iter()
            .map(|(at, cert, key)| {
                let source = CertificateSource::Files {
                    cert: base.join(cert),
                    key: base.join(key),
                };
                // Checked now, so a bad file is refused with its key path.
                crate::tls::load(&source)
                    .map_err(|e| invalid(format!("{at}.cert"), crate::error::Chain(&e).to_string()))?;
                Ok(source)
            })
            .collect()
    }
}

impl GatewayRouteFile {
    fn into_route(self, at: &str) -> Result<GatewayRoute, Invalid> {
        let weights: Vec<u32> = self.backends.iter().map(|b| b.weight).collect();
        let matches = route_matches(at, self.matches, &weights, "{ service: NAME, weight: N }")?;
        Ok(GatewayRoute {
            name: self.name,
            listeners: self.listeners,
            hostnames: hostnames(self.hostnames, &format!("{at}.hostnames"))?,
            matches,
            backends: self
                .backends
                .into_iter()
                .map(|b| ServiceBackend {
                    service: b.service,
                    weight: b.weight,
                })
                .collect(),
        })
    }
}

/// Names the key a gateway's validation error is about.
pub(super) fn locate(model: &Model, e: &GatewayError) -> String {
    let index_of = |name: &str| model.gateways.iter().rposition(|g| g.name == name).unwrap_or_default();
    match e {
        GatewayError::EmptyName => {
            let i = model
                .gateways
                .iter()
                .position(|g| g.name.is_empty())
                .unwrap_or_default();
            format!("gateways[{i}].name")
        }
        GatewayError::Duplicate(name) | GatewayError::NoListeners(name) => format!("gateways[{}].name", index_of(name)),
        GatewayError::DuplicateAddress { gateway, address, .. } => {
            let i = index_of(gateway);
            let j = model.gateways[i]
                .listeners
                .iter()
                .position(|l| l.address == *address)
                .unwrap_or_default();
            format!("gateways[{i}].listeners[{j}].address")
        }
        GatewayError::DuplicateListener { gateway, listener } => {
            let i = index_of(gateway);
            let j = model.gateways[i]
                .listeners
                .iter()
                .rposition(|l| l.name == *listener)
                .unwrap_or_default();
            format!("gateways[{i}].listeners[{j}].name")
        }
        GatewayError::BadHostname { gateway, .. } => format!("gateways[{}]", index_of(gateway)),
        GatewayError::NoBackends { gateway, route } | GatewayError::AllWeightsZero { gateway, route } => {
            format!("gateways[{}].routes[{route}].backends", index_of(gateway))
        }
        GatewayError::UnknownService {
            gateway,
            route,
            service,
        } => {
            let i = index_of(gateway);
            let j = model.gateways[i].routes[*route]
                .backends
                .iter()
                .position(|b| b.service == *service)
                .unwrap_or_default();
            format!("gateways[{i}].routes[{route}].backends[{j}].service")
        }
        GatewayError::UnknownListener {
            gateway,
            route,
            listener,
        } => {
            let i = index_of(gateway);
            let j = model.gateways[i].routes[*route]
                .listeners
                .iter()
                .position(|l| l == listener)
                .unwrap_or_default();
            format!("gateways[{i}].routes[{route}].listeners[{j}]")
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests {
    use super::super::parse;

    const SERVICES: &str = "\
services:
  - name: greeter
    listen: 127.0.0.1:18000
    endpoints: [ { address: 127.0.0.1:50051 } ]
";

    fn err(gateways: &str) -> String {
        let text = format!("{SERVICES}gateways:\n{gateways}");
        match parse(&text, "gw.yaml") {
            Ok(l) => panic!("expected an error, parsed {l:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(!e.contains('\n'), "one line: {e}");
                e
            }
        }
    }

    #[test]
    fn a_cleartext_gateway_parses() {
        let text = format!(
            "{SERVICES}gateways:
  - name: public
    listeners: [ {{ address: 127.0.0.1:8080, hostnames: [API.example.com] }} ]
    routes:
      - hostnames: [\"*.example.com\"]
        matches: [ {{ service: helloworld.Greeter }} ]
        backends: [ {{ service: greeter, weight: 3 }} ]
"
        );
        let loaded = parse(&text, "gw.yaml").unwrap();
        let gw = &loaded.model.gateways[0];
        assert_eq!(gw.listeners[0].name, "listener-0");
        assert_eq!(gw.listeners[0].hostnames, vec!["api.example.com"]);
        assert!(!gw.listeners[0].is_tls());
        assert_eq!(gw.routes[0].backends[0].weight, 3);
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = err("  - name: g\n    listeners: [ { address: 127.0.0.1:8080 } ]\n    routes: [ { backends: [ { service: nope } ] } ]\n");
        assert!(
            e.contains("gateways[0].routes[0].backends[0].service") && e.contains("`nope` is not configured"),
            "{e}"
        );
        let e = err("  - name: g\n    listeners: []\n");
        assert!(
            e.contains("gateways[0].listeners: a gateway needs at least one listener"),
            "{e}"
        );
        let e =
            err("  - name: g\n    listeners: [ { address: 127.0.0.1:8080, hostnames: [\"a.example.com:443\"] } ]\n");
        assert!(
            e.contains("gateways[0].listeners[0].hostnames[0]: invalid hostname"),
            "{e}"
        );
        let e = err("  - name: g\n    listeners: [ { address: 127.0.0.1:18000 } ]\n");
        assert!(
            e.contains("gateways[0].listeners[0].address") && e.contains("also used by service `greeter`"),
            "{e}"
        );
        let e = err("  - name: g\n    listeners: [ { address: 127.0.0.1:8080, tls: { cert: a.crt } } ]\n");
        assert!(
            e.contains("gateways[0].listeners[0].tls.cert: `cert` without `key`"),
            "{e}"
        );
        let e = err("  - name: g\n    listeners: [ { address: 127.0.0.1:8080, tlss: {} } ]\n");
        assert!(e.contains("unknown field `tlss`"), "{e}");
        let e = err("  - name: g\n    listeners: [ { address: 127.0.0.1:8080 } ]\n    routes: [ { listeners: [x], backends: [ { service: greeter } ] } ]\n");
        assert!(
            e.contains("gateways[0].routes[0].listeners[0]") && e.contains("no listener named `x`"),
            "{e}"
        );
        let e = err("  - name: g\n    listeners: [ { address: 127.0.0.1:8080 } ]\n    routes: [ { backends: [ { service: greeter, weight: 0 } ] } ]\n");
        assert!(
            e.contains("gateways[0].routes[0].backends: every backend has weight 0"),
            "{e}"
        );
    }

    #[test]
    fn certificate_files_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.yaml");
        let gateway = "gateways:\n  - name: g\n    listeners: [ { address: 127.0.0.1:8443, tls: { cert: tls.crt, key: tls.key } } ]\n";
        std::fs::write(&file, format!("{SERVICES}{gateway}")).unwrap();
        let e = super::super::load(&file).unwrap_err().to_string();
        assert!(
            e.contains("gateways[0].listeners[0].tls.cert") && e.contains("cannot read") && e.contains("tls.crt"),
            "{e}"
        );
        std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        let e = super::super::load(&file).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
