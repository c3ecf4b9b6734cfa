//! What the admin server and the metrics show, as small traits that the
//! agent's parts implement (or closures, for the simple ones). Every method
//! is called at request or scrape time, never on the data path.

use std::sync::Arc;

use tokio::sync::watch;

use super::{api, kernel::KernelError};
use crate::model::Model;

/// The balanced services with their statistics (the balance table).
pub trait ServicesView: Send + Sync + 'static {
    fn services(&self) -> Vec<api::Service>;

    /// What the agent would do with a call to `service`'s `path` (e.g.
    /// `/helloworld.Greeter/SayHello`) with these request headers; `None`
    /// when there is no such service (or the view cannot tell).
    fn explain(&self, _service: &str, _path: &str, _headers: &http::HeaderMap) -> Option<api::Explanation> {
        None
    }

    /// The gateways (listeners for clients outside the cluster).
    fn gateways(&self) -> Vec<api::Gateway> {
        Vec::new()
    }
}

impl<F> ServicesView for F
where
    F: Fn() -> Vec<api::Service> + Send + Sync + 'static,
{
    fn services(&self) -> Vec<api::Service> {
        self()
    }
}

/// The enrolled pods / cgroups.
pub trait PodsView: Send + Sync + 'static {
    fn pods(&self) -> Vec<api::Pod>;
}

impl<F> PodsView for F
where
    F: Fn() -> Vec<api::Pod> + Send + Sync + 'static,
{
    fn pods(&self) -> Vec<api::Pod> {
        self()
    }
}

/// Where the state comes from and whether it is in sync.
pub trait SourceView: Send + Sync + 'static {
    fn source(&self) -> api::SourceStatus;
}

impl<F> SourceView for F
where
    F: Fn() -> api::SourceStatus + Send + Sync + 'static,
{
    fn source(&self) -> api::SourceStatus {
        self()
    }
}

/// The agent's kernel programs and maps (absent when eBPF is off).
///
/// `api::Program::name` is the short program name of
/// `balancer_common::Program::name()` (`connect4`, `connect6`, `sock_ops`,
/// `sk_msg`, `getsockopt`: one `COUNTERS` slot each), and its `counters`
/// hold the fields of `balancer_common::ProgramCounters` by name
/// (`redirected`, `passed`, `errors`, `bytes`, `pinned`): the metrics add
/// connect4's and connect6's `redirected` up as the redirected connections.
pub trait KernelView: Send + Sync + 'static {
    /// Every program is loaded and attached.
    fn attached(&self) -> bool;
    fn programs(&self) -> Result<Vec<api::Program>, KernelError>;
    fn maps(&self) -> Result<Vec<api::Map>, KernelError>;
    /// `Ok(None)` when the agent has no map of that name.
    fn map_dump(&self, name: &str) -> Result<Option<api::MapDump>, KernelError>;
}

/// A fixed services list (tests, and the agent before its table exists).
pub fn fixed_services(services: Vec<api::Service>) -> Arc<dyn ServicesView> {
    Arc::new(move || services.clone())
}

/// The enrolled cgroups of the current model, each with its pod in
/// Kubernetes mode.
pub fn model_pods(models: watch::Receiver<Arc<Model>>) -> Arc<dyn PodsView> {
    Arc::new(move || {
        let model = Arc::clone(&models.borrow());
        model.enrolled.iter().map(api::Pod::from_model).collect()
    })
}

/// Kubernetes mode: synced once every watcher has listed once, and how
/// many opted-in pods have no cgroup.
pub fn kubernetes_source(status: watch::Receiver<crate::k8s::Status>) -> Arc<dyn SourceView> {
    Arc::new(move || {
        let s = status.borrow().clone();
        api::SourceStatus {
            kind: "kubernetes".to_owned(),
            location: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            synced: s.synced,
            pods_cgroup_missing: Some(s.pods_cgroup_missing),
            reports: s.reports,
            ..api::SourceStatus::default()
        }
    })
}

/// No enrolled pods.
pub fn no_pods() -> Arc<dyn PodsView> {
    Arc::new(Vec::new)
}

/// A source that is always in sync (static mode before reload counting is
/// wired, and tests).
pub fn synced_source(kind: &str) -> Arc<dyn SourceView> {
    let status = api::SourceStatus {
        kind: kind.to_owned(),
        synced: true,
        ..api::SourceStatus::default()
    };
    Arc::new(move || status.clone())
}
