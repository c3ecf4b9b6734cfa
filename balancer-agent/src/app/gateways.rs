//! The gateway listeners, kept in step with the model: a new listener is
//! bound, a moved or removed one stops accepting (its open connections
//! carry on), routes and certificates are replaced in place.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{sync::oneshot, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    balance::{
        gateway::{GatewaySlot, ListenerRoutes},
        Table,
    },
    error::Chain,
    model::{CertificateSource, Model},
    proxy::Proxy,
    tls::{self, Certificates},
};

/// One running listener.
struct Open {
    address: SocketAddr,
    sources: Vec<CertificateSource>,
    routes: Arc<GatewaySlot>,
    certs: Option<Arc<Certificates>>,
    /// Re-reads certificate files.
    watcher: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Gateways {
    proxy: Proxy,
    /// How often certificate files are checked for changes.
    reload: Duration,
    /// (gateway, listener) → what runs.
    open: HashMap<(String, String), Open>,
}

impl Gateways {
    pub fn new(proxy: Proxy, reload: Duration) -> Self {
        Gateways {
            proxy,
            reload,
            open: HashMap::new(),
        }
    }

    /// Brings the listeners in line with `model`; `table` must already
    /// hold the model's services. At start (`fatal`) a listener that cannot
    /// be bound or whose certificates do not load is an error; later it is
    /// logged and the rest still applies.
    pub async fn sync(&mut self, model: &Model, table: &Table, fatal: bool) -> anyhow::Result<()> {
        let wanted: HashMap<(String, String), (&crate::model::Gateway, &crate::model::GatewayListener)> = model
            .gateways
            .iter()
            .flat_map(|g| {
                g.listeners
                    .iter()
                    .map(move |l| ((g.name.clone(), l.name.clone()), (&**g, l)))
            })
            .collect();
        // Stop first, so that an address moving between listeners can rebind.
        let stale: Vec<(String, String)> = self
            .open
            .iter()
            .filter(|(key, open)| {
                wanted.get(*key).is_none_or(|(_, l)| {
                    l.address != open.address || l.certificates.is_empty() != open.sources.is_empty()
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        // A listener that moves keeps its routes' slot: the connections it
        // accepted before route their next calls with the new routes too.
        let mut moved: HashMap<(String, String), Arc<GatewaySlot>> = HashMap::new();
        for key in stale {
            if let Some(open) = self.open.remove(&key) {
                info!(gateway = %key.0, listener = %key.1, addr = %open.address, "gateway listener stopping");
                moved.insert(key, Arc::clone(&open.routes));
            }
        }
        for (key, (gw, l)) in wanted {
            let routes = ListenerRoutes::compile(gw, l, table);
            if let Some(open) = self.open.get_mut(&key) {
                open.routes.set(routes);
                if open.sources != l.certificates {
                    if let Some(certs) = &open.certs {
                        match load_all(&l.certificates) {
                            Ok(keys) => {
                                certs.set(keys);
                                open.sources = l.certificates.clone();
                                if let Some(w) = open.watcher.take() {
                                    w.abort();
                                }
                                open.watcher = watch(&open.sources, certs, self.reload);
                                info!(gateway = %key.0, listener = %key.1, "gateway certificates replaced");
                            }
                            Err(e) => warn!(
                                gateway = %key.0, listener = %key.1, error = %Chain(&e),
                                "new gateway certificates refused; the last good ones stay in use"
                            ),
                        }
                    }
                }
                continue;
            }
            match self.start(&key, l, routes, moved.remove(&key)) {
                Ok(open) => {
                    self.open.insert(key, open);
                }
                Err(e) if fatal => return Err(e),
                Err(e) => {
                    warn!(gateway = %key.0, listener = %key.1, error = %Chain(e.as_ref()), "gateway listener not started")
                }
            }
        }
        Ok(())
    }

    fn start(
        &self,
        key: &(String, String),
        l: &crate::model::GatewayListener,
        routes: ListenerRoutes,
        slot: Option<Arc<GatewaySlot>>,
    ) -> anyhow::Result<Open> {
        let (gw, name) = key;
        let certs = if l.is_tls() {
            let keys = load_all(&l.certificates).with_context(|| format!("gateway `{gw}` listener `{name}`"))?;
            Some(Certificates::new(keys))
        } else {
            None
        };
        // Shared (SO_REUSEPORT): during a rolling update the old and the
        // new agent both serve the node's gateway ports.
        let listener = super::bind::bind_shared(l.address)
            .with_context(|| format!("gateway `{gw}` listener `{name}`: cannot listen on {}", l.address))?;
        let slot = match slot {
            Some(slot) => {
                slot.set(routes);
                slot
            }
            None => GatewaySlot::new(routes),
        };
        let (stop, stopped) = oneshot::channel();
        let proxy = self.proxy.clone();
        let tls = certs.as_ref().map(|c| c.server_config());
        let serve_slot = Arc::clone(&slot);
        tokio::spawn(async move {
            proxy
                .serve_gateway(listener, serve_slot, tls, async {
                    let _ = stopped.await;
                })
                .await;
        });
        info!(gateway = %gw, listener = %name, addr = %l.address, tls = l.is_tls(), "gateway listener started");
        let watcher = certs.as_ref().and_then(|c| watch(&l.certificates, c, self.reload));
        Ok(Open {
            address: l.address,
            sources: l.certificates.clone(),
            routes: slot,
            certs,
            watcher,
            stop: Some(stop),
        })
    }
}

/// Watches the certificate files among `sources`, if any.
fn watch(sources: &[CertificateSource], certs: &Arc<Certificates>, every: Duration) -> Option<JoinHandle<()>> {
    sources
        .iter()
        .any(|s| matches!(s, CertificateSource::Files { .. }))
        .then(|| tokio::spawn(tls::watch_files(sources.to_vec(), Arc::clone(certs), every)))
}

fn load_all(sources: &[CertificateSource]) -> Result<Vec<Arc<rustls::sign::CertifiedKey>>, tls::TlsError> {
    sources.iter().map(tls::load).collect()
}
