//! The TLS Secrets balancer's Gateways reference, read one by one with
//! `get` (the agent never lists Secrets): again whenever the set of
//! references changes and every `every`, so a renewed certificate is
//! served within that time. Reads are served from the API server's watch
//! cache (`resourceVersion=0`), not quorum reads: every node's agent reads
//! them.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{api::GetParams, Api};
use tokio::{sync::watch, task::JoinHandle};
use tracing::Instrument;

use super::gateway::{secret_pem, Key, SecretPem};

/// What was read: the Secrets asked for (`asked`) and, by Secret, their
/// contents (a Secret that does not exist is absent).
#[derive(Debug, Default, PartialEq)]
pub struct Read {
    pub asked: BTreeSet<Key>,
    pub pem: HashMap<Key, SecretPem>,
}

pub type Secrets = Arc<Read>;

/// Starts the reader of the Secrets in `wanted`.
pub fn spawn(
    client: kube::Client,
    mut wanted: watch::Receiver<BTreeSet<Key>>,
    every: Duration,
) -> (watch::Receiver<Secrets>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Secrets::default());
    let task = tokio::spawn(
        async move {
            loop {
                let asked = wanted.borrow_and_update().clone();
                let mut got = HashMap::with_capacity(asked.len());
                for (ns, name) in asked.iter().cloned() {
                    let api = Api::<Secret>::namespaced(client.clone(), &ns);
                    let read = match api.get_with(&name, &GetParams::any()).await {
                        Ok(secret) => secret_pem(&secret),
                        Err(kube::Error::Api(e)) if e.code == 404 => continue,
                        Err(e) => Err(format!("cannot be read: {e}")),
                    };
                    got.insert((ns, name), read);
                }
                let read = Read { asked, pem: got };
                tx.send_if_modified(|cur| {
                    let changed = **cur != read;
                    if changed {
                        *cur = Arc::new(read);
                    }
                    changed
                });
                tokio::select! {
                    r = wanted.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(every) => {}
                    () = tx.closed() => return,
                }
            }
        }
        .instrument(tracing::info_span!("gateway_secrets")),
    );
    (rx, task)
}
