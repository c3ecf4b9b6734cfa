//! What every connection task shares: the balancing table, the options,
//! the observers, and the shutdown signals.

use std::sync::{
    atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed},
    Arc,
};

use tokio::sync::Notify;

use super::options::ProxyOptions;
use crate::{balance::Table, conns::ConnRegistry, metrics::Metrics, traces::Tracer};

/// Where the demultiplexer reports what it does: the latency histograms
/// and the client connections the admin server shows.
#[derive(Debug, Clone, Default)]
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub conns: ConnRegistry,
    /// Traces: the agent's span per call, when tracing is configured.
    pub tracer: Option<Arc<Tracer>>,
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
    pub shutdown: Shutdown,
    pub tracker: Tracker,
    pub next_conn: AtomicU64,
}

impl Ctx {
    pub fn track(self: &Arc<Self>) -> TrackGuard {
        self.tracker.count.fetch_add(1, Relaxed);
        TrackGuard(Arc::clone(self))
    }

    /// Resolves once shutting down: stop accepting, GOAWAY clients.
    pub async fn drained(&self) {
        self.shutdown.reached(Shutdown::DRAINING).await;
    }

    /// Resolves once the grace period is over: drop what is left.
    pub async fn forced(&self) {
        self.shutdown.reached(Shutdown::FORCED).await;
    }
}

/// How far shutting down has gone. Every connection waits on it, so its
/// future is kept small (a `Notify` waiter rather than a watch receiver).
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    phase: AtomicU8,
    changed: Notify,
}

impl Shutdown {
    pub const DRAINING: u8 = 1;
    pub const FORCED: u8 = 2;

    pub fn enter(&self, phase: u8) {
        self.phase.fetch_max(phase, Relaxed);
        self.changed.notify_waiters();
    }

    async fn reached(&self, phase: u8) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.phase.load(Relaxed) >= phase {
                return;
            }
            changed.await;
        }
    }
}
