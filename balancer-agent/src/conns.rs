//! The registry of client connections behind `/api/v1/conns` and the
//! connection metrics. The demultiplexer registers each accepted connection
//! ([`ConnRegistry::register`]), marks what it turned out to speak
//! ([`ConnHandle::set_protocol`]) and holds a [`StreamGuard`] per open
//! stream; dropping the handle removes the connection. Per stream this costs
//! two relaxed atomic adds; per connection one short mutex hold.
//!
//! Where the demultiplexer hooks it: `registry.refused()` where a redirected
//! connection without an original destination (or to an unknown VIP) is
//! dropped; `registry.register(ConnMeta { peer, original_dst, service, pod:
//! None })` where a connection is spawned, the handle moved into its task;
//! `handle.set_protocol(Protocol::H2 | Protocol::Tcp)` after sniffing the
//! preface; `let _s = handle.stream();` held by each stream's task.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Instant,
};

use crate::api;

/// What a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Protocol {
    /// Not decided yet (no bytes read).
    New = 0,
    /// HTTP/2: every call balanced on its own.
    H2 = 1,
    /// No HTTP/2 preface: proxied as plain TCP to one endpoint.
    Tcp = 2,
}

impl Protocol {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Protocol::H2,
            2 => Protocol::Tcp,
            _ => Protocol::New,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::New => "new",
            Protocol::H2 => "h2",
            Protocol::Tcp => "tcp",
        }
    }
}

/// What the proxy knows about a connection when it accepts it.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub peer: SocketAddr,
    pub original_dst: Option<SocketAddr>,
    pub service: Option<String>,
    /// The pod, when the proxy knows it; otherwise the admin API looks the
    /// peer's IP up among the enrolled pods.
    pub pod: Option<String>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    meta: ConnMeta,
    since: Instant,
    protocol: AtomicU8,
    open_streams: AtomicU64,
    total_streams: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: AtomicU64,
    conns: Mutex<BTreeMap<u64, Arc<Entry>>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    l4: AtomicU64,
    streams: AtomicU64,
}

/// Cheap to clone; every clone is the same registry.
#[derive(Debug, Clone, Default)]
pub struct ConnRegistry {
    inner: Arc<Inner>,
}

/// Totals since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnTotals {
    pub open: u64,
    pub accepted: u64,
    /// Connections refused because they had no original destination.
    pub refused: u64,
    /// Connections proxied as plain TCP.
    pub l4_fallback: u64,
    /// Streams (calls) accepted on HTTP/2 connections.
    pub streams: u64,
}

impl ConnRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an accepted client connection; it is listed until the
    /// returned handle is dropped.
    pub fn register(&self, meta: ConnMeta) -> ConnHandle {
        let id = self.inner.next_id.fetch_add(1, Relaxed) + 1;
        let entry = Arc::new(Entry {
            id,
            meta,
            since: Instant::now(),
            protocol: AtomicU8::new(Protocol::New as u8),
            open_streams: AtomicU64::new(0),
            total_streams: AtomicU64::new(0),
        });
        self.inner.accepted.fetch_add(1, Relaxed);
        self.lock().insert(id, Arc::clone(&entry));
        ConnHandle {
            registry: self.clone(),
            entry,
        }
    }

    /// Counts a connection refused before registration (no original
    /// destination: the agent is never an open proxy).
    pub fn refused(&self) {
        self.inner.refused.fetch_add(1, Relaxed);
    }

    pub fn totals(&self) -> ConnTotals {
        ConnTotals {
            open: self.lock().len() as u64,
            accepted: self.inner.accepted.load(Relaxed),
            refused: self.inner.refused.load(Relaxed),
            l4_fallback: self.inner.l4.load(Relaxed),
            streams: self.inner.streams.load(Relaxed),
        }
    }

    /// The open connections, oldest first.
    pub fn list(&self) -> Vec<api::Conn> {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        entries
            .iter()
            .map(|e| api::Conn {
                id: e.id,
                peer: e.meta.peer,
                pod: e.meta.pod.clone(),
                original_dst: e.meta.original_dst,
                service: e.meta.service.clone(),
                protocol: Protocol::from_u8(e.protocol.load(Relaxed)).as_str().to_owned(),
                open_streams: e.open_streams.load(Relaxed),
                total_streams: e.total_streams.load(Relaxed),
                age_seconds: e.since.elapsed().as_secs_f64(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        // A panic elsewhere while holding this lock leaves a consistent map
        // (single insert/remove), so a poisoned lock is still usable.
        self.inner.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One registered connection; dropping it removes the connection.
#[derive(Debug)]
pub struct ConnHandle {
    registry: ConnRegistry,
    entry: Arc<Entry>,
}

impl ConnHandle {
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// Records what the connection speaks; `Tcp` counts an L4 fallback.
    pub fn set_protocol(&self, protocol: Protocol) {
        let old = self.entry.protocol.swap(protocol as u8, Relaxed);
        if protocol == Protocol::Tcp && old != Protocol::Tcp as u8 {
            self.registry.inner.l4.fetch_add(1, Relaxed);
        }
    }

    /// Opens a stream (one call) on the connection; it counts as open until
    /// the guard is dropped.
    pub fn stream(&self) -> StreamGuard {
        open_stream(&self.registry, &self.entry)
    }

    /// What opens streams on this connection from a task that does not hold
    /// the handle.
    pub fn stream_source(&self) -> StreamSource {
        StreamSource {
            registry: self.registry.clone(),
            entry: Arc::clone(&self.entry),
        }
    }
}

fn open_stream(registry: &ConnRegistry, entry: &Arc<Entry>) -> StreamGuard {
    entry.open_streams.fetch_add(1, Relaxed);
    entry.total_streams.fetch_add(1, Relaxed);
    registry.inner.streams.fetch_add(1, Relaxed);
    StreamGuard {
        entry: Arc::clone(entry),
    }
}

/// Opens streams on one registered connection (see [`ConnHandle::stream`]).
#[derive(Debug)]
pub struct StreamSource {
    registry: ConnRegistry,
    entry: Arc<Entry>,
}

impl StreamSource {
    pub fn stream(&self) -> StreamGuard {
        open_stream(&self.registry, &self.entry)
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.entry.id);
    }
}

/// One open stream of a connection; dropping it closes the stream.
#[derive(Debug)]
pub struct StreamGuard {
    entry: Arc<Entry>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.entry.open_streams.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    fn meta() -> ConnMeta {
        ConnMeta {
            peer: "10.0.0.2:40000".parse().unwrap(),
            original_dst: Some("10.96.0.10:8000".parse().unwrap()),
            service: Some("greeter".into()),
            pod: None,
        }
    }

    #[test]
    fn connections_are_listed_while_held_and_streams_counted() {
        let reg = ConnRegistry::new();
        let a = reg.register(meta());
        let b = reg.register(meta());
        a.set_protocol(Protocol::H2);
        b.set_protocol(Protocol::Tcp);
        let s1 = a.stream();
        let _s2 = a.stream();
        drop(s1);
        let list = reg.list();
        assert_eq!(list.len(), 2);
        let la = list.iter().find(|c| c.id == a.id()).unwrap();
        assert_eq!((la.open_streams, la.total_streams), (1, 2));
        assert_eq!(la.protocol, "h2");
        drop(b);
        assert_eq!(reg.list().len(), 1);
        reg.refused();
        let t = reg.totals();
        assert_eq!(
            t,
            ConnTotals {
                open: 1,
                accepted: 2,
                refused: 1,
                l4_fallback: 1,
                streams: 2
            }
        );
    }
}
