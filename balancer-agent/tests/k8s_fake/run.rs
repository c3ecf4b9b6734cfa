//! The agent's Kubernetes mode (`k8s::run`) in the test's process against
//! the fake API server: the models it publishes and its status.

use std::{path::Path, sync::Arc, time::Duration};

use balancer_agent::{
    k8s::{self, K8sError, K8sOptions},
    model::Model,
};
use tokio::{sync::watch, task::JoinHandle, time::timeout};

use super::FakeApi;

pub struct K8sRun {
    pub models: watch::Receiver<Arc<Model>>,
    pub status: watch::Receiver<k8s::Status>,
    /// The `k8s::run` task: it ends only on a fatal error.
    pub task: JoinHandle<Result<(), K8sError>>,
    /// The cgroup root it finds pods' cgroups under.
    pub cgroups: tempfile::TempDir,
}

impl K8sRun {
    /// Runs as the agent of `node`; `prepare` gets the cgroup root before
    /// the run starts, `tune` its options.
    pub fn start(
        fake: &FakeApi,
        node: &str,
        prepare: impl FnOnce(&Path),
        tune: impl FnOnce(&mut K8sOptions),
    ) -> K8sRun {
        let cgroups = tempfile::tempdir().expect("tempdir");
        prepare(cgroups.path());
        let mut opts = K8sOptions::new(node, cgroups.path());
        tune(&mut opts);
        let (tx, models) = watch::channel(Arc::new(Model::default()));
        let (status_tx, status) = watch::channel(k8s::Status::default());
        let task = tokio::spawn(k8s::run(fake.client(), opts, tx, status_tx));
        K8sRun {
            models,
            status,
            task,
            cgroups,
        }
    }

    /// Waits (10 s at most) for the first full sync; the model then.
    pub async fn until_ready(&mut self) -> Arc<Model> {
        timeout(Duration::from_secs(10), self.status.wait_for(|s| s.synced))
            .await
            .expect("ready within 10 s")
            .expect("run() is alive");
        Arc::clone(&self.models.borrow())
    }

    /// Waits (bounded) for a published model that satisfies `pred`.
    pub async fn until(&mut self, what: &str, wait: Duration, pred: impl Fn(&Model) -> bool) -> Arc<Model> {
        let found = timeout(wait, self.models.wait_for(|m| pred(m)))
            .await
            .map(|r| r.map(|m| Arc::clone(&m)));
        match found {
            Ok(Ok(m)) => m,
            _ => panic!(
                "no model where {what} within {wait:?}; last: {:#?}",
                self.models.borrow()
            ),
        }
    }
}

impl Drop for K8sRun {
    fn drop(&mut self) {
        self.task.abort();
    }
}
