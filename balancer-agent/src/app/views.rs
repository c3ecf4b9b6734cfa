//! What the admin server shows, read from the agent's parts: the balance
//! table joined with the current model, the enrolled cgroups, the state
//! source and the kernel programs.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::{
    admin::{api, kernel::KernelReader, AdminState, ServicesView, SourceView},
    balance::{endpoint::EndpointSnapshot, locality, Table},
    config::ReloadStats,
    ebpf::Kernel,
    model::Model,
    proxy::Observers,
};

/// The services as configured, with the table's live statistics.
struct TableView {
    table: Arc<Table>,
    models: watch::Receiver<Arc<Model>>,
}

impl ServicesView for TableView {
    fn services(&self) -> Vec<api::Service> {
        let model = self.models.borrow().clone();
        let snapshot = self.table.snapshot();
        let live: HashMap<&str, _> = snapshot.services.iter().map(|s| (s.name.as_str(), s)).collect();
        model
            .services
            .iter()
            .map(|svc| {
                let mut out = api::Service::from_model(svc);
                let classes = locality::classify(svc, &model.locality);
                for (i, ep) in out.endpoints.iter_mut().enumerate() {
                    ep.locality = classes.label(i).map(str::to_owned);
                }
                if let Some(snap) = live.get(svc.name.as_str()) {
                    out.retries = snap.retries;
                    out.l4_connections = snap.tcp_connections;
                    out.received = snap.calls;
                    out.no_endpoint = snap.no_endpoint;
                    let eps: HashMap<_, _> = snap.endpoints.iter().map(|e| (e.address, e)).collect();
                    for ep in &mut out.endpoints {
                        if let Some(s) = eps.get(&ep.address) {
                            fill_endpoint(ep, s);
                        }
                    }
                }
                out
            })
            .collect()
    }
}

fn fill_endpoint(ep: &mut api::Endpoint, s: &EndpointSnapshot) {
    if s.draining {
        ep.state = "draining".to_owned();
    }
    ep.ejected = s.ejected;
    ep.ejections = u64::from(s.ejections);
    ep.ejections_total = s.ejections_total;
    ep.in_flight = s.in_flight as u64;
    ep.ewma_ms = (s.ewma_ms > 0.0).then_some(s.ewma_ms);
    ep.calls = s.calls;
    ep.statuses = s.errors.clone().into_iter().collect();
    if s.ok > 0 {
        ep.statuses.insert("0".to_owned(), s.ok);
    }
    if s.resets > 0 {
        ep.statuses.insert("reset".to_owned(), s.resets);
    }
    ep.connect_failures = s.connect_failures;
    ep.upstream_connections = s.upstream_connections as u64;
}

/// Static mode: the file and its reload counters.
pub fn static_source(path: &Path, stats: Arc<ReloadStats>) -> Arc<dyn SourceView> {
    let location = path.display().to_string();
    Arc::new(move || api::SourceStatus {
        kind: "static".to_owned(),
        location: Some(location.clone()),
        synced: true,
        reloads_ok: stats.ok(),
        reloads_failed: stats.failed(),
        last_error: stats.last_error(),
        pods_cgroup_missing: None,
    })
}

/// Everything the admin server shows.
pub fn admin_state(
    table: Arc<Table>,
    kernel: Option<Arc<Mutex<Kernel>>>,
    source: Arc<dyn SourceView>,
    models: watch::Receiver<Arc<Model>>,
    observers: &Observers,
) -> AdminState {
    let mut state = AdminState::new(Arc::new(TableView {
        table,
        models: models.clone(),
    }));
    state.pods = crate::admin::views::model_pods(models);
    state.metrics = Arc::clone(&observers.metrics);
    state.conns = observers.conns.clone();
    state.source = source;
    state.kernel = kernel.map(|k| {
        let ids = k
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .programs()
            .into_iter()
            .map(|p| p.id)
            .collect();
        Arc::new(KernelReader::for_programs(ids)) as Arc<dyn crate::admin::KernelView>
    });
    state
}
