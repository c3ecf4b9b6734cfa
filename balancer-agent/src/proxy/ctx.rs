//! What every connection task shares: the balancing table, the options,
//! the observers, and the shutdown signals.

use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    Arc,
};

use tokio::sync::{watch, Notify};

use super::options::ProxyOptions;
use crate::{admin::ConnRegistry, balance::Table, metrics::Metrics};

/// Where the demultiplexer reports what it does: the latency histograms
/// and the client connections the admin server shows.
#[derive(Debug, Clone, Default)]
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub conns: ConnRegistry,
}
/// Counts the tasks that hold client connections, so shutdown can wait.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub count: AtomicUsize,
    idle: Notify,
}

pub(crate) struct TrackGuard(Arc<Ctx>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.tracker.count.fetch_sub(1, Relaxed) == 1 {
            self.0.tracker.idle.notify_waiters();
        }
    }
}

impl Tracker {
    pub async fn wait(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What every connection and call task shares.
pub(crate) struct Ctx {
    pub table: Arc<Table>,
    pub opts: ProxyOptions,
    pub observers: Observers,
    /// Set when shutting down: stop accepting, GOAWAY clients.
    pub draining: watch::Sender<bool>,
    /// Set when the grace period is over: drop what is left.
    pub force: watch::Sender<bool>,
    pub tracker: Tracker,
    pub next_conn: AtomicU64,
}

impl Ctx {
    pub fn track(self: &Arc<Self>) -> TrackGuard {
        self.tracker.count.fetch_add(1, Relaxed);
        TrackGuard(Arc::clone(self))
    }

    pub async fn drained(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub async fn forced(&self) {
        let mut rx = self.force.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}
