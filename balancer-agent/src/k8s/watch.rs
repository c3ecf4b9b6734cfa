//! The reflectors: one kube-runtime `watcher` per resource, with the default
//! backoff, into a reflector store. Each watcher task tells the main loop
//! what happened ([`Signal`]); the stores keep the last known state through
//! disconnects (a relist replaces a store's content atomically when it is
//! complete).

use std::fmt::Debug;

use futures::StreamExt;
use kube::{
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    Api, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::Instrument;

/// The watched resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Services,
    EndpointSlices,
    Pods,
    Namespaces,
    GrpcRoutes,
    /// The agent's own Node (its zone).
    Nodes,
    /// Gateway API Gateways (balancer's class is served).
    Gateways,
    /// Gateway API GatewayClasses (which classes are balancer's).
    GatewayClasses,
    VirtualServices,
    DestinationRules,
    /// Every pod's labels, for DestinationRule subsets: watched only once a
    /// DestinationRule has subsets.
    PodLabels,
}

impl Kind {
    /// The resources listed before the first model is published.
    pub const ALL: [Kind; 10] = [
        Kind::Services,
        Kind::EndpointSlices,
        Kind::Pods,
        Kind::Namespaces,
        Kind::GrpcRoutes,
        Kind::Nodes,
        Kind::Gateways,
        Kind::GatewayClasses,
        Kind::VirtualServices,
        Kind::DestinationRules,
    ];

    /// The resource as RBAC rules name it (`resource.group`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices.discovery.k8s.io",
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::GrpcRoutes => "grpcroutes.gateway.networking.k8s.io",
            Kind::Nodes => "nodes",
            Kind::Gateways => "gateways.gateway.networking.k8s.io",
            Kind::GatewayClasses => "gatewayclasses.gateway.networking.k8s.io",
            Kind::VirtualServices => "virtualservices.networking.istio.io",
            Kind::DestinationRules => "destinationrules.networking.istio.io",
            Kind::PodLabels => "pods",
        }
    }
}

/// Why a watcher failed, as far as the main loop cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 403: the service account may not `verb` this resource.
    Forbidden { verb: &'static str },
    /// 404: the resource type is not served (a CRD not installed).
    NotServed,
    /// 410: the watch fell too far behind; the watcher relists.
    Gone,
    /// Anything else (disconnects, timeouts, 5xx): retried with backoff.
    Other,
}

/// What a watcher task reports.
#[derive(Debug)]
pub enum Signal {
    /// An object was added, changed or deleted: its `(namespace, name)`
    /// (the store holds what it is now, or nothing if it is gone).
    Changed(Kind, (String, String)),
    /// A (re)list completed: the store holds the full current state.
    Synced(Kind),
    /// The watcher failed; it retries after a backoff.
    Failed {
        kind: Kind,
        failure: Failure,
        error: String,
    },
}

/// Sorts a watcher error into a [`Failure`].
pub fn classify(e: &watcher::Error) -> Failure {
    let (verb, code) = match e {
        watcher::Error::InitialListFailed(e) => ("list", api_code(e)),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", api_code(e)),
        watcher::Error::WatchError(status) => ("watch", Some(status.code)),
        watcher::Error::NoResourceVersion => ("list", None),
    };
    match code {
        Some(403) => Failure::Forbidden { verb },
        Some(404) => Failure::NotServed,
        Some(410) => Failure::Gone,
        _ => Failure::Other,
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Starts the reflector of `api` and returns its store and task; `strip`
/// drops what the agent does not read from each object before the store
/// keeps it (see [`super::strip`]). The task ends when the main loop goes
/// away.
pub fn spawn<K>(
    kind: Kind,
    api: Api<K>,
    config: watcher::Config,
    strip: fn(&mut K),
    signals: mpsc::UnboundedSender<Signal>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(strip).reflect(writer);
    let span = tracing::info_span!("reflector", resource = kind.resource());
    let task = tokio::spawn(
        async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                let signal = match item {
                    Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                        Signal::Changed(kind, (o.namespace().unwrap_or_default(), o.name_any()))
                    }
                    Ok(watcher::Event::InitDone) => Signal::Synced(kind),
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                    Err(e) => Signal::Failed {
                        kind,
                        failure: classify(&e),
                        error: e.to_string(),
                    },
                };
                if signals.send(signal).is_err() {
                    break;
                }
            }
        }
        .instrument(span),
    );
    (reader, task)
}
