//! The relay's connections to one endpoint. A call goes to the first open
//! connection with room under the endpoint's MAX_CONCURRENT_STREAMS, so one
//! connection fills before another opens (fewer, fuller writes for the
//! endpoint); past `max_connections`, calls wait on the least busy one.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use super::upstream::{self, UpHandle};
use crate::{
    balance::endpoint::{EndpointConns, EndpointRt},
    proxy::options::PoolOptions,
};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct RelayPool {
    addr: SocketAddr,
    conns: Mutex<Vec<Arc<UpHandle>>>,
}

impl std::fmt::Debug for RelayPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayPool")
            .field("addr", &self.addr)
            .field("connections", &self.open_connections())
            .finish()
    }
}

impl RelayPool {
    pub fn new(addr: SocketAddr) -> RelayPool {
        RelayPool {
            addr,
            conns: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<UpHandle>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for one more call (counted on it).
    pub fn lease(self: &Arc<Self>, opts: &PoolOptions) -> Arc<UpHandle> {
        let mut conns = self.lock();
        conns.retain(|c| !c.closed.load(Relaxed));
        let full = conns.len() >= opts.max_connections.max(1);
        let chosen = match conns.iter().find(|c| c.has_room()) {
            Some(c) => Arc::clone(c),
            None => match conns.iter().min_by_key(|c| c.active.load(Relaxed)) {
                Some(c) if full => Arc::clone(c),
                _ => self.open(&mut conns, opts),
            },
        };
        chosen.active.fetch_add(1, Relaxed);
        chosen
    }

    /// A connection that takes one more call at once (one with room, or a
    /// new one under `max_connections`); `None` rather than a wait.
    pub fn try_lease(self: &Arc<Self>, opts: &PoolOptions) -> Option<Arc<UpHandle>> {
        let mut conns = self.lock();
        conns.retain(|c| !c.closed.load(Relaxed));
        let chosen = match conns.iter().find(|c| c.has_room()) {
            Some(c) => Arc::clone(c),
            None if conns.len() < opts.max_connections.max(1) => self.open(&mut conns, opts),
            None => return None,
        };
        chosen.active.fetch_add(1, Relaxed);
        Some(chosen)
    }

    fn open(self: &Arc<Self>, conns: &mut Vec<Arc<UpHandle>>, opts: &PoolOptions) -> Arc<UpHandle> {
        let c = Arc::new(UpHandle::new(NEXT_ID.fetch_add(1, Relaxed)));
        conns.push(Arc::clone(&c));
        upstream::spawn(Arc::clone(&c), self.addr, opts.clone(), Arc::downgrade(self));
        c
    }

    pub fn remove(&self, handle: &Arc<UpHandle>) {
        self.lock().retain(|c| !Arc::ptr_eq(c, handle));
    }

    pub fn open_connections(&self) -> usize {
        self.lock().len()
    }
}

/// The relay's pool as an endpoint holds it.
#[derive(Debug)]
struct Held(Arc<RelayPool>);

impl EndpointConns for Held {
    fn open_connections(&self) -> usize {
        self.0.open_connections()
    }
}

/// The relay's connections to `ep`, made at its first call.
pub(crate) fn of(ep: &EndpointRt) -> Option<&Arc<RelayPool>> {
    ep.conns(|addr| Held(Arc::new(RelayPool::new(addr)))).map(|h| &h.0)
}
