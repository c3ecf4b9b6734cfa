//! The TLS Secrets balancer's Gateways reference, read one by one with
//! `get` (the agent never lists Secrets): again whenever the set of
//! references changes and every `every`, so a renewed certificate is
//! served within that time.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::{sync::watch, task::JoinHandle};
use tracing::Instrument;

use super::gateway::{secret_pem, Key, SecretPem};

/// What was read, by Secret; a Secret that does not exist is absent.
pub type Secrets = Arc<HashMap<Key, SecretPem>>;

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
                let want = wanted.borrow_and_update().clone();
                let mut got = HashMap::with_capacity(want.len());
                for (ns, name) in want {
                    let read = match Api::<Secret>::namespaced(client.clone(), &ns).get_opt(&name).await {
                        Ok(Some(secret)) => secret_pem(&secret),
                        Ok(None) => continue,
                        Err(e) => Err(format!("cannot be read: {e}")),
                    };
                    got.insert((ns, name), read);
                }
                tx.send_if_modified(|cur| {
                    let changed = **cur != got;
                    if changed {
                        *cur = Arc::new(got);
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
