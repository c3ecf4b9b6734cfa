//! The demultiplexer's tunables.

use std::{fmt, sync::Arc, time::Duration};

use crate::redirect::Redirects;

/// Tunables of the demultiplexer.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// How long to wait for a client's first bytes before treating the
    /// connection as not HTTP/2 (server-first protocols send nothing).
    pub sniff_timeout: Duration,
    /// Extra attempts for a call that was never handled by an endpoint.
    pub max_retries: usize,
    /// Request bytes kept per call so that a call refused after sending
    /// some DATA can still be retried; beyond it, no retry.
    pub replay_buffer: usize,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` announced to clients.
    pub max_concurrent_streams: u32,
    /// HTTP/2 windows announced to clients.
    pub stream_window: u32,
    pub connection_window: u32,
    /// A PING to each client after this long without one in flight...
    pub client_keepalive_interval: Duration,
    /// ...and its connection closed when the PING goes unanswered this long
    /// (a pod that vanished without closing its connections).
    pub client_keepalive_timeout: Duration,
    pub pool: PoolOptions,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            sniff_timeout: Duration::from_secs(1),
            max_retries: 2,
            replay_buffer: 64 * 1024,
            max_concurrent_streams: 1024,
            stream_window: 1 << 20,
            connection_window: 4 << 20,
            client_keepalive_interval: Duration::from_secs(60),
            client_keepalive_timeout: Duration::from_secs(20),
            pool: PoolOptions::default(),
        }
    }
}

/// How upstream connections are made and kept.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub connect_timeout: Duration,
    /// Connections per endpoint: a call takes the first with room under the
    /// endpoint's MAX_CONCURRENT_STREAMS; when all are full, another opens,
    /// up to this many; beyond it calls wait on the least busy one.
    pub max_connections: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub idle_timeout: Duration,
    pub stream_window: u32,
    pub connection_window: u32,
    /// The kernel's fast path, offered every upstream connection (it pairs
    /// those whose endpoint is on this node); `None` without it.
    pub fast_path: Option<FastPath>,
}

/// The kernel side that pairs upstream connections with node-local
/// endpoints' sockets.
#[derive(Clone)]
pub struct FastPath(pub Arc<dyn Redirects>);

impl fmt::Debug for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FastPath")
    }
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            connect_timeout: Duration::from_secs(2),
            max_connections: 16,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            stream_window: 1 << 20,
            connection_window: 4 << 20,
            fast_path: None,
        }
    }
}
