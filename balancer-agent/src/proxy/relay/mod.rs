//! The relay engine: a frame-level HTTP/2 data plane. Each connection —
//! client or upstream — is one task that owns it outright; calls are frames
//! forwarded between them through mailboxes, with header blocks re-encoded
//! towards each peer and DATA under a rewritten frame header (large payloads
//! as slices of the buffer they were read into, written by vectored writes,
//! never copied). No task per call, no lock shared between a connection and
//! its streams; per-call state lives in a slab per connection.
//!
//! Module map: [`client`] (client connections and the calls on them),
//! [`upstream`] (connections to endpoints), [`pool`] (which upstream
//! connection a call takes), [`retry`] (what a call given back does next),
//! [`conn`] (what both sides do alike: SETTINGS, PING, windows, header
//! blocks), [`flow`] (one direction of a stream and its window), [`head`]
//! (decoded header lists and request checks), [`closed`] (streams that
//! closed lately), [`budget`] (limits on floods), [`keepalive`] (PINGs that
//! find dead peers), [`trace`] (a call's span and the `traceparent` it
//! forwards), [`msg`] and [`mailbox`] (how connections talk),
//! [`driver`] (socket I/O of one connection), [`out`] (what a connection
//! has to send), [`streams`] (per-stream state by stream id). The wire formats are in the
//! `balancer-relay` crate.

mod budget;
mod client;
mod clock;
mod closed;
mod conn;
mod driver;
mod flow;
mod head;
mod keepalive;
mod mailbox;
mod mirror;
mod msg;
mod out;
mod pool;
mod recent;
mod retry;
mod streams;
mod trace;
mod upstream;

pub(crate) use client::{serve, Target};

/// The maps a connection keeps of its streams and calls. Their keys come
/// from peers, but a connection holds few (MAX_CONCURRENT_STREAMS), so a
/// fast seeded hasher serves.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
