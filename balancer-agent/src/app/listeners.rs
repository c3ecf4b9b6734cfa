//! The explicit per-service listeners, kept in step with the model: a new or
//! moved `listen:` is bound, a removed one stops accepting (its open
//! connections carry on).

use std::{collections::HashMap, net::SocketAddr};

use anyhow::Context;
use tokio::{net::TcpListener, sync::oneshot};
use tracing::{info, warn};

use crate::{model::Model, proxy::Proxy};

pub struct Listeners {
    proxy: Proxy,
    /// Service name → its listener's address and the switch that stops it.
    open: HashMap<String, (SocketAddr, oneshot::Sender<()>)>,
}

impl Listeners {
    pub fn new(proxy: Proxy) -> Self {
        Listeners {
            proxy,
            open: HashMap::new(),
        }
    }

    /// Brings the listeners in line with `model`. At start (`fatal`) a
    /// listener that cannot be bound is an error; at reload it is logged and
    /// the rest still applies.
    pub async fn sync(&mut self, model: &Model, fatal: bool) -> anyhow::Result<()> {
        let wanted: HashMap<&str, SocketAddr> = model
            .services
            .iter()
            .filter_map(|s| s.listen.map(|l| (s.name.as_str(), l)))
            .collect();
        // Stop first, so that a listener moving between services can rebind.
        let stale: Vec<String> = self
            .open
            .iter()
            .filter(|(name, (addr, _))| wanted.get(name.as_str()) != Some(addr))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((addr, stop)) = self.open.remove(&name) {
                info!(service = %name, %addr, "explicit listener stopped");
                let _ = stop.send(());
            }
        }
        for (name, addr) in wanted {
            if self.open.contains_key(name) {
                continue;
            }
            let listener = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) if fatal => {
                    return Err(e).with_context(|| format!("service `{name}`: cannot listen on {addr}"));
                }
                Err(e) => {
                    warn!(service = %name, %addr, error = %e, "explicit listener not started");
                    continue;
                }
            };
            info!(service = %name, %addr, "explicit listener started");
            let (stop, stopped) = oneshot::channel();
            let proxy = self.proxy.clone();
            let service = name.to_owned();
            tokio::spawn(async move {
                proxy
                    .serve_explicit_until(listener, service, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            self.open.insert(name.to_owned(), (addr, stop));
        }
        Ok(())
    }
}
