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
                    let api = Api::<Secret>::namespaced(client.clone(), &ns);
                    let read = match api.get_with(&name, &GetParams::any()).await {
                        Ok(secret) => secret_pem(&secret),
                        Err(kube::Error::Api(e)) if e.code == 404 => continue,
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
