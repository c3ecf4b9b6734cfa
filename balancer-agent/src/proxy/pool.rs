//! Pooled HTTP/2 client connections to one endpoint.
//!
//! Calls are multiplexed over a few connections: a call takes the least busy
//! open connection; another connection is opened when that one already
//! carries `soft_streams` calls (up to `soft_connections`) or when every
//! connection is at the endpoint's `SETTINGS_MAX_CONCURRENT_STREAMS` (up to
//! `max_connections`). Each connection is driven by its own task, pinged every
//! `keepalive_interval` (closed when a PING goes unanswered for
//! `keepalive_timeout`) and closed after `idle_timeout` without calls. A
//! connection that received GOAWAY or failed is taken out of the pool; calls
//! already on it finish there.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::{net::TcpStream, sync::Notify, time::Instant};
use tracing::{debug, Instrument};

use super::{coalesce::Coalesce, keepalive::Keepalive};

/// How upstream connections are made and kept.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub connect_timeout: Duration,
    /// Calls on one connection before another is opened (while fewer than
    /// `soft_connections` are open).
    pub soft_streams: usize,
    pub soft_connections: usize,
    /// Hard cap on connections per endpoint; beyond it calls queue in h2.
    pub max_connections: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub idle_timeout: Duration,
    pub stream_window: u32,
    pub connection_window: u32,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            connect_timeout: Duration::from_secs(2),
            soft_streams: 64,
            soft_connections: 2,
            max_connections: 16,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            stream_window: 1 << 20,
            connection_window: 4 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2 handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
}

#[derive(Debug)]
struct UpConn {
    id: u64,
    send: SendRequest<Bytes>,
    active: AtomicUsize,
    closed: AtomicBool,
    close: Notify,
    idle_since: Mutex<Option<Instant>>,
}

impl UpConn {
    fn usable(&self) -> bool {
        !self.closed.load(Relaxed)
    }

    fn at_limit(&self) -> bool {
        self.active.load(Relaxed) >= self.send.current_max_send_streams().max(1)
    }
}

#[derive(Debug, Default)]
struct Inner {
    conns: Mutex<Vec<Arc<UpConn>>>,
    connecting: tokio::sync::Mutex<()>,
    open: AtomicUsize,
    next_id: AtomicU64,
}

/// The connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    addr: SocketAddr,
    /// Made at the first connection: the endpoints of a large cluster a
    /// node never calls hold no pool state.
    inner: std::sync::OnceLock<Arc<Inner>>,
}

/// A call's hold on one pooled connection; dropping it ends the call there.
#[derive(Debug)]
pub struct Lease {
    conn: Arc<UpConn>,
}

impl Lease {
    /// Takes the connection out of the pool (after GOAWAY or an error):
    /// calls on it finish, new calls open another.
    pub fn retire(&self) {
        self.conn.closed.store(true, Relaxed);
    }

    pub fn connection_id(&self) -> u64 {
        self.conn.id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Relaxed) == 1 {
            if let Ok(mut idle) = self.conn.idle_since.lock() {
                *idle = Some(Instant::now());
            }
        }
    }
}

impl EndpointPool {
    fn inner(&self) -> &Arc<Inner> {
        self.inner.get_or_init(Arc::default)
    }

    pub fn new(addr: SocketAddr) -> Self {
        EndpointPool {
            addr,
            inner: std::sync::OnceLock::new(),
        }
    }

    pub fn open_connections(&self) -> usize {
        self.inner.get().map_or(0, |i| i.open.load(Relaxed))
    }

    fn take(conn: &Arc<UpConn>) -> (SendRequest<Bytes>, Lease) {
        conn.active.fetch_add(1, Relaxed);
        (conn.send.clone(), Lease { conn: Arc::clone(conn) })
    }

    /// A connection for one more call, or `None` when another should be
    /// opened first. `force` takes the least busy usable one regardless.
    fn try_take(&self, opts: &PoolOptions, force: bool) -> Option<(SendRequest<Bytes>, Lease)> {
        let conns = self.inner.get()?.conns.lock().ok()?;
        let best = conns
            .iter()
            .filter(|c| c.usable() && (force || !c.at_limit()))
            .min_by_key(|c| c.active.load(Relaxed))?;
        if !force && best.active.load(Relaxed) >= opts.soft_streams && conns.len() < opts.soft_connections {
            return None;
        }
        Some(Self::take(best))
    }

    fn count(&self) -> usize {
        self.inner
            .get()
            .map_or(0, |i| i.conns.lock().map(|c| c.len()).unwrap_or(0))
    }

    /// A sender and lease for one call, connecting if needed.
    pub async fn lease(&self, opts: &PoolOptions) -> Result<(SendRequest<Bytes>, Lease), PoolError> {
        if let Some(l) = self.try_take(opts, false) {
            return Ok(l);
        }
        let _one_connect_at_a_time = self.inner().connecting.lock().await;
        if let Some(l) = self.try_take(opts, false) {
            return Ok(l);
        }
        if self.count() >= opts.max_connections {
            if let Some(l) = self.try_take(opts, true) {
                return Ok(l);
            }
        }
        // Boxed: connecting is rare, and its future would otherwise make
        // every call's task larger.
        match Box::pin(self.connect(opts)).await {
            Ok(conn) => Ok(Self::take(&conn)),
            Err(e) => match self.try_take(opts, true) {
                // Another connection still works: use it rather than fail.
                Some(l) => Ok(l),
                None => Err(e),
            },
        }
    }

    async fn connect(&self, opts: &PoolOptions) -> Result<Arc<UpConn>, PoolError> {
        let addr = self.addr;
        let tcp = match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(PoolError::ConnectTimeout(addr)),
            Ok(Err(source)) => return Err(PoolError::Connect { addr, source }),
            Ok(Ok(t)) => t,
        };
        let _ = tcp.set_nodelay(true);
        let handshake = h2::client::Builder::new()
            .initial_window_size(opts.stream_window)
            .initial_connection_window_size(opts.connection_window)
            .enable_push(false)
            .handshake::<_, Bytes>(Coalesce::new(tcp));
        let (send, mut conn) = match tokio::time::timeout(opts.connect_timeout, handshake).await {
            Err(_) => return Err(PoolError::ConnectTimeout(addr)),
            Ok(Err(source)) => return Err(PoolError::Handshake { addr, source }),
            Ok(Ok(x)) => x,
        };
        // The handshake future does not wait for the endpoint: one PING
        // round trip proves it speaks HTTP/2 before calls are put on it.
        let mut ping = conn.ping_pong();
        if let Some(pp) = ping.as_mut() {
            let proven = async {
                tokio::select! {
                    pong = pp.ping(h2::Ping::opaque()) => pong.map(|_| ()),
                    ended = &mut conn => Err(ended.err().unwrap_or_else(|| h2::Error::from(h2::Reason::NO_ERROR))),
                }
            };
            match tokio::time::timeout(opts.connect_timeout, proven).await {
                Err(_) => return Err(PoolError::ConnectTimeout(addr)),
                Ok(Err(source)) => return Err(PoolError::Handshake { addr, source }),
                Ok(Ok(())) => {}
            }
        }
        let id = self.inner().next_id.fetch_add(1, Relaxed);
        let up = Arc::new(UpConn {
            id,
            send,
            active: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            close: Notify::new(),
            idle_since: Mutex::new(Some(Instant::now())),
        });
        if let Ok(mut conns) = self.inner().conns.lock() {
            conns.push(Arc::clone(&up));
        }
        self.inner().open.fetch_add(1, Relaxed);
        let weak = Arc::downgrade(self.inner());
        let driver = drive(conn, ping, Arc::clone(&up), weak, opts.clone());
        tokio::spawn(driver.instrument(tracing::debug_span!("upstream", endpoint = %addr, conn = id)));
        debug!(endpoint = %addr, conn = id, "upstream connection open");
        Ok(up)
    }
}

/// Drives one upstream connection until it ends, fails keepalive, idles out,
/// or its pool goes away; then removes it from the pool.
async fn drive(
    mut conn: h2::client::Connection<Coalesce<TcpStream>, Bytes>,
    ping: Option<h2::PingPong>,
    up: Arc<UpConn>,
    pool: Weak<Inner>,
    opts: PoolOptions,
) {
    let tick_every = opts
        .keepalive_interval
        .min(opts.idle_timeout / 2)
        .max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(Instant::now() + tick_every, tick_every);
    let mut keepalive = Keepalive::new(ping, opts.keepalive_interval, opts.keepalive_timeout);
    loop {
        tokio::select! {
            biased;
            r = &mut conn => {
                if let Err(e) = r { debug!(error = %e, "upstream connection ended with an error") }
                break;
            }
            _ = up.close.notified() => break,
            _ = keepalive.dead() => {
                tracing::warn!("upstream connection closed: keepalive PING unanswered");
                break;
            }
            _ = tick.tick() => {
                let Some(inner) = pool.upgrade() else { break };
                if up.closed.load(Relaxed) && up.active.load(Relaxed) == 0 {
                    break;
                }
                if idle_expired(&up, &inner, opts.idle_timeout) {
                    debug!("upstream connection idle: closed");
                    break;
                }
            }
        }
    }
    up.closed.store(true, Relaxed);
    if let Some(inner) = pool.upgrade() {
        if let Ok(mut conns) = inner.conns.lock() {
            conns.retain(|c| c.id != up.id);
        }
        inner.open.fetch_sub(1, Relaxed);
    }
}

/// Marks the connection closed (under the pool lock, so no call takes it
/// meanwhile) when it has carried no call for `idle`.
fn idle_expired(up: &UpConn, inner: &Inner, idle: Duration) -> bool {
    let Ok(conns) = inner.conns.lock() else { return false };
    if up.active.load(Relaxed) != 0 {
        return false;
    }
    let since = up.idle_since.lock().ok().and_then(|s| *s);
    match since {
        Some(t) if t.elapsed() >= idle => {
            up.closed.store(true, Relaxed);
            drop(conns);
            true
        }
        _ => false,
    }
}
