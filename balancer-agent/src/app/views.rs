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
    balance::{gateway::Unrouted, locality, CallMeta, Table},
    config::ReloadStats,
    ebpf::Kernel,
    model::Model,
    proxy::Observers,
};

/// The services as configured, with the table's live statistics.
struct TableView {
    table: Arc<Table>,
    models: watch::Receiver<Arc<Model>>,
    unrouted: Arc<Unrouted>,
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
                let mut out = api::Service::new(svc, live.get(svc.name.as_str()).copied());
                let classes = locality::classify(svc, &model.locality);
                for (i, ep) in out.endpoints.iter_mut().enumerate() {
                    ep.locality = classes.label(i).map(str::to_owned);
                }
                out
            })
            .collect()
    }

    fn explain(&self, service: &str, path: &str, headers: &http::HeaderMap) -> Option<api::Explanation> {
        let model = self.models.borrow().clone();
        let svc = model.services.iter().find(|s| s.name == service)?;
        let state = self.table.service(service)?.state()?;
        Some(state.explain(svc, &CallMeta::from_path(path, headers)))
    }

    fn gateways(&self) -> Vec<api::Gateway> {
        let model = self.models.borrow().clone();
        model
            .gateways
            .iter()
            .map(|g| {
                let mut out = api::Gateway::from_model(g);
                for l in &mut out.listeners {
                    l.unrouted = self.unrouted.of(&out.name, &l.name);
                }
                out
            })
            .collect()
    }
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
        reports: Vec::new(),
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
        unrouted: Arc::clone(&observers.metrics.unrouted),
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

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::{balance::Outcome, metrics};

    use balancer_testing::metrics::one as sample;

    /// Calls counted by the balancer's atomics show up with the same values
    /// in the JSON API and in `/metrics`, those the agent answered
    /// UNAVAILABLE itself (no endpoint) included.
    #[tokio::test]
    async fn json_and_metrics_show_the_same_counters() {
        let loaded = crate::config::parse(
            "services:\n  - name: greeter\n    vip: 10.96.0.10:8000\n    endpoints:\n      - { address: 127.0.0.1:50051 }\n      - { address: 127.0.0.1:50052, state: draining }\n",
            "test.yaml",
        )
        .unwrap();
        let model = Arc::new(loaded.model);
        let table = Table::new(&model);
        let slot = table.service("greeter").unwrap();
        let st = slot.state().unwrap();
        let ep = &st.endpoints[0];
        for outcome in [
            Outcome::Status(0),
            Outcome::Status(0),
            Outcome::Status(5),
            Outcome::Reset,
        ] {
            slot.count_call();
            ep.start_call().finish(outcome);
        }
        ep.start_call().finish(Outcome::ConnectFailed);
        ep.start_call().finish(Outcome::Refused);
        slot.count_retry();
        for _ in 0..3 {
            slot.count_call();
            slot.count_no_endpoint();
        }
        let (_tx, models) = watch::channel(Arc::clone(&model));
        let observers = Observers::default();
        let state = admin_state(
            Arc::clone(&table),
            None,
            crate::admin::views::synced_source("static"),
            models,
            &observers,
        );

        // The JSON documents, as served.
        let json = serde_json::to_value(state.services.services()).unwrap();
        let greeter = &json[0];
        assert_eq!(greeter["calls"], 7);
        assert_eq!(greeter["no_endpoint"], 3);
        assert_eq!(greeter["retries"], 1);
        let e0 = &greeter["endpoints"][0];
        assert_eq!(e0["calls"], 4);
        assert_eq!(e0["statuses"]["0"], 2);
        assert_eq!(e0["statuses"]["5"], 1);
        assert_eq!(e0["statuses"]["reset"], 1);
        assert_eq!(e0["connect_failures"], 1);
        assert_eq!(e0["refused"], 1);
        assert_eq!(greeter["endpoints"][1]["state"], "draining");
        let stats = serde_json::to_value(state.stats()).unwrap();
        assert_eq!(stats["services"][0]["calls"], 7);
        assert_eq!(stats["services"][0]["no_endpoint"], 3);
        // OK twice; status 5, a reset and three UNAVAILABLE from the agent.
        assert_eq!(stats["services"][0]["errors"], 5);

        // /metrics: the same numbers.
        let text = metrics::encode(state.scrape()).unwrap();
        let svc = [("service", "greeter")];
        let as_f64 = |v: &serde_json::Value| v.as_u64().unwrap() as f64;
        assert_eq!(
            sample(&text, "balancer_service_calls_total", &svc),
            as_f64(&greeter["calls"])
        );
        assert_eq!(
            sample(&text, "balancer_no_endpoint_total", &svc),
            as_f64(&greeter["no_endpoint"])
        );
        assert_eq!(
            sample(&text, "balancer_retries_total", &svc),
            as_f64(&greeter["retries"])
        );
        let a = [("service", "greeter"), ("endpoint", "127.0.0.1:50051")];
        for (status, n) in e0["statuses"].as_object().unwrap() {
            let mut l = a.to_vec();
            l.push(("grpc_status", status.as_str()));
            assert_eq!(sample(&text, "balancer_requests_total", &l), as_f64(n), "{status}");
        }
        assert_eq!(
            sample(&text, "balancer_endpoint_connect_failures_total", &a),
            as_f64(&e0["connect_failures"])
        );
        assert_eq!(
            sample(&text, "balancer_endpoint_refused_total", &a),
            as_f64(&e0["refused"])
        );
    }
}
