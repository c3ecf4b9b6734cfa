//! An upstream connection: carries the calls of any number of client
//! connections to one endpoint, each on its own stream, and sends what the
//! endpoint answers back to the calls' client connections.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    os::fd::AsFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed},
        Arc, Weak,
    },
};

use balancer_relay::frame::{self, Reason};
use bytes::{Bytes, BytesMut};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpSocket, TcpStream},
    time::Instant,
};
use tracing::{debug, Instrument};

use super::{
    conn::{Conn, Event},
    driver::{Driver, Machine},
    flow::{Outflow, Owed},
    head::{Builder, Head},
    keepalive::{Due, PingTimer},
    mailbox::Mailbox,
    msg::{CallKey, GaveBack, ToClient, ToUp, Upstream},
    out::Out,
    pool::RelayPool,
    streams::Streams,
    Map, Set,
};
use crate::proxy::options::PoolOptions;

/// What the pool and the calls see of an upstream connection.
pub(crate) struct UpHandle {
    pub id: u64,
    pub mailbox: Arc<Mailbox<ToUp>>,
    /// Calls sent to this connection and not yet over.
    pub active: AtomicUsize,
    /// The endpoint's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: AtomicU32,
    /// Takes no new calls (GOAWAY, failed, closed).
    pub closed: AtomicBool,
}

impl UpHandle {
    pub fn new(id: u64) -> UpHandle {
        UpHandle {
            id,
            mailbox: Arc::default(),
            active: AtomicUsize::new(0),
            max_streams: AtomicU32::new(100),
            closed: AtomicBool::new(false),
        }
    }

    pub fn has_room(&self) -> bool {
        !self.closed.load(Relaxed) && self.active.load(Relaxed) < self.max_streams.load(Relaxed) as usize
    }
}

/// Connects to `addr` and drives the connection until it ends.
pub(crate) fn spawn(handle: Arc<UpHandle>, addr: SocketAddr, opts: PoolOptions, pool: Weak<RelayPool>) {
    let span = tracing::debug_span!("upstream", id = handle.id, endpoint = %addr);
    tokio::spawn(
        async move {
            let why = match run(&handle, addr, &opts).await {
                Ok(()) => GaveBack::Refused("upstream connection closed"),
                Err(e) => {
                    debug!(error = %e, "upstream connection ended");
                    GaveBack::Unreachable(e.into())
                }
            };
            handle.closed.store(true, Relaxed);
            if let Some(p) = pool.upgrade() {
                p.remove(&handle);
            }
            for msg in handle.mailbox.close() {
                if let ToUp::Open { key, reply, .. } = msg {
                    give_back(&reply, key, why.clone());
                }
            }
        }
        .instrument(span),
    );
}

/// Connects to `addr`, first offering the socket to the kernel's fast path
/// when there is one.
async fn connect(addr: SocketAddr, opts: &PoolOptions) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(fast) = &opts.fast_path {
        fast.0.offer_upstream(socket.as_fd());
    }
    socket.connect(addr).await
}

/// Drives the connection; Err says why no HTTP/2 connection could be made.
async fn run(handle: &Arc<UpHandle>, addr: SocketAddr, opts: &PoolOptions) -> Result<(), String> {
    let mut io = match tokio::time::timeout(opts.connect_timeout, connect(addr, opts)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => return Err(format!("connect to {addr}: {e}")),
        Err(_) => return Err(format!("connect to {addr} timed out")),
    };
    let _ = io.set_nodelay(true);
    let conn = Conn::new(opts.connection_window);
    let mut out = BytesMut::with_capacity(64);
    out.extend_from_slice(frame::PREFACE);
    conn.start(
        &mut out,
        &[
            (frame::SETTINGS_ENABLE_PUSH, 0),
            (frame::SETTINGS_INITIAL_WINDOW_SIZE, opts.stream_window),
        ],
    );
    if let Some(fast) = &opts.fast_path {
        // The first message decides the socket's path: send it, then ask
        // the kernel whether it went to the endpoint's socket directly.
        if let Err(e) = io.write_all(&out).await {
            return Err(format!("HTTP/2 handshake with {addr} failed: {e}"));
        }
        out.clear();
        let paired = fast.0.settle_upstream(io.as_fd());
        debug!(paired, "upstream fast path");
    }
    let machine = UpConn {
        conn,
        st: UpState {
            handle: Arc::clone(handle),
            streams: Streams::default(),
            by_key: Map::default(),
            waiting: VecDeque::new(),
            next_stream: 1,
            goaway: None,
            stream_window: opts.stream_window,
            eof: false,
            keepalive: PingTimer::new(opts.keepalive_interval, opts.keepalive_timeout, Instant::now()),
            idle_since: Some(Instant::now()),
            idle_timeout: opts.idle_timeout,
            handshake_by: Some(Instant::now() + opts.connect_timeout),
            unreachable: None,
            addr,
        },
    };
    let mut driver = Driver::new(io, machine, Arc::clone(&handle.mailbox), out);
    let r = driver.run().await;
    let handshake_done = driver.m.conn.peer_settings;
    let st = &mut driver.m.st;
    let unreachable = match st.unreachable.take() {
        None if !handshake_done => Some(format!("HTTP/2 handshake with {addr} failed").into()),
        u => u,
    };
    st.abort_all(unreachable.clone());
    if let Some(why) = unreachable {
        return Err(why.to_string());
    }
    if let Err(e) = r {
        debug!(error = %e, "upstream connection failed");
    }
    Ok(())
}

fn give_back(reply: &Mailbox<ToClient>, key: CallKey, why: GaveBack) {
    let _ = reply.push(ToClient {
        stream: key.stream,
        attempt: key.attempt,
        what: Upstream::GaveBack(why),
    });
}

struct UpStream {
    key: CallKey,
    reply: Arc<Mailbox<ToClient>>,
    /// Request bytes towards the endpoint.
    out: Outflow,
    /// What the endpoint may still send on this stream, and what it is owed.
    recv_window: i64,
    owed: Owed,
    responded: bool,
    remote_ended: bool,
}

impl UpStream {
    fn tell(&self, what: Upstream) {
        let _ = self.reply.push(ToClient {
            stream: self.key.stream,
            attempt: self.key.attempt,
            what,
        });
    }
}

struct Opening {
    key: CallKey,
    reply: Arc<Mailbox<ToClient>>,
    head: Head,
    /// The request's DATA so far (none empty).
    data: Vec<Bytes>,
    end: bool,
    trailers: Option<Head>,
}

struct UpConn {
    conn: Conn,
    st: UpState,
}

struct UpState {
    handle: Arc<UpHandle>,
    streams: Streams<UpStream>,
    by_key: Map<CallKey, u32>,
    /// Calls beyond the endpoint's MAX_CONCURRENT_STREAMS.
    waiting: VecDeque<Opening>,
    next_stream: u32,
    /// The endpoint's GOAWAY: its last stream.
    goaway: Option<u32>,
    stream_window: u32,
    eof: bool,
    keepalive: PingTimer,
    /// Since when no call used the connection.
    idle_since: Option<Instant>,
    idle_timeout: std::time::Duration,
    /// The endpoint's SETTINGS are due by then.
    handshake_by: Option<Instant>,
    /// Why the connection never became usable.
    unreachable: Option<Arc<str>>,
    addr: SocketAddr,
}

impl UpState {
    fn open(&mut self, c: &mut Conn, o: Opening, out: &mut Out) {
        if self.next_stream > frame::STREAM_ID_MASK - 1 {
            // Stream ids used up: the connection takes no new calls and ends
            // once the ones on it have.
            self.handle.closed.store(true, Relaxed);
            self.goaway.get_or_insert(frame::STREAM_ID_MASK);
        }
        if self.goaway.is_some() || c.finished || self.eof {
            give_back(&o.reply, o.key, GaveBack::Refused("upstream connection is closing"));
            self.release();
            return;
        }
        if self.streams.len() >= c.peer_max_streams as usize {
            self.waiting.push_back(o);
            return;
        }
        let id = self.next_stream;
        self.next_stream += 2;
        self.idle_since = None;
        let headers_end = o.end && o.data.is_empty() && o.trailers.is_none();
        c.put_head(out, id, &o.head, headers_end);
        let mut flow = Outflow::new(c.peer_initial_window);
        if headers_end {
            flow.ended = true;
        } else {
            for d in o.data {
                flow.push(d, false);
            }
            flow.push(Bytes::new(), o.end);
            if let Some(t) = o.trailers {
                flow.push_trailers(t);
            }
        }
        self.by_key.insert(o.key, id);
        self.streams.insert(
            id,
            UpStream {
                key: o.key,
                reply: o.reply,
                out: flow,
                recv_window: i64::from(self.stream_window),
                owed: Owed::default(),
                responded: false,
                remote_ended: false,
            },
        );
        self.flush(c, id, out);
    }

    /// Writes what the stream may send, crediting the client connection.
    fn flush(&mut self, c: &mut Conn, id: u32, out: &mut Out) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let n = c.flush(out, id, &mut s.out);
        if n > 0 {
            s.tell(Upstream::Credit(n as u32));
        }
    }

    fn flush_all(&mut self, c: &mut Conn, out: &mut Out) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.flush(c, id, out);
        }
    }

    /// One call fewer on this connection: a waiting one may start.
    fn release(&self) {
        self.handle.active.fetch_sub(1, Relaxed);
    }

    fn close_stream(&mut self, c: &mut Conn, id: u32, out: &mut Out) {
        if let Some(s) = self.streams.remove(&id) {
            self.by_key.remove(&s.key);
            self.release();
            if let Some(o) = self.waiting.pop_front() {
                self.open(c, o, out);
            } else if self.streams.is_empty() {
                self.idle_since = Some(Instant::now());
            }
        }
    }

    fn on_msg(&mut self, c: &mut Conn, msg: ToUp, out: &mut Out) {
        match msg {
            ToUp::Open {
                key,
                reply,
                head,
                data,
                end,
            } => self.open(
                c,
                Opening {
                    key,
                    reply,
                    head,
                    data: if data.is_empty() { Vec::new() } else { vec![data] },
                    end,
                    trailers: None,
                },
                out,
            ),
            ToUp::Data { key, data, end } => match self.by_key.get(&key) {
                Some(&id) => {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.out.push(data, end);
                    }
                    self.flush(c, id, out);
                }
                None => {
                    if let Some(o) = self.waiting.iter_mut().find(|o| o.key == key) {
                        if !data.is_empty() {
                            o.data.push(data);
                        }
                        o.end |= end;
                    }
                }
            },
            ToUp::Trailers { key, head } => match self.by_key.get(&key) {
                Some(&id) => {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.out.push_trailers(head);
                    }
                    self.flush(c, id, out);
                }
                None => {
                    if let Some(o) = self.waiting.iter_mut().find(|o| o.key == key) {
                        o.trailers = Some(head);
                        o.end = true;
                    }
                }
            },
            ToUp::Reset { key, reason } => match self.by_key.get(&key) {
                Some(&id) => {
                    frame::put_rst_stream(out, id, reason);
                    self.close_stream(c, id, out);
                }
                None => {
                    if let Some(i) = self.waiting.iter().position(|o| o.key == key) {
                        self.waiting.remove(i);
                        self.release();
                    }
                }
            },
            ToUp::Credit { key, n } => {
                if let Some(&id) = self.by_key.get(&key) {
                    if let Some(s) = self.streams.get_mut(&id) {
                        if !s.remote_ended {
                            if let Some(n) = s.owed.add(n, self.stream_window) {
                                s.recv_window += i64::from(n);
                                frame::put_window_update(out, id, n);
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_event(&mut self, c: &mut Conn, ev: Event<'_>, out: &mut Out) {
        match ev {
            Event::Headers { stream, end, block } => {
                // A head (or trailers) the endpoint sent before, or decoded.
                let head = match c.repeated_head(block) {
                    Some(head) => Some(head),
                    None => {
                        let generation = c.dec.generation();
                        let mut b = Builder::for_block(block.len());
                        let ok = c.decode(block, out, |n, v, never| {
                            b.push(n, v, never);
                            true
                        });
                        ok.then(|| {
                            let head = b.finish();
                            c.keep_head(block, &head, generation);
                            head
                        })
                    }
                };
                let Some(s) = self.streams.get_mut(&stream) else { return };
                let Some(head) = head else {
                    frame::put_rst_stream(out, stream, Reason::PROTOCOL_ERROR);
                    s.tell(Upstream::GaveBack(GaveBack::Lost("endpoint sent headers too large")));
                    self.close_stream(c, stream, out);
                    return;
                };
                s.responded = true;
                s.tell(Upstream::Head { head, end });
                if end {
                    self.remote_end(c, stream, out);
                }
            }
            Event::Data { stream, data, end } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                s.recv_window -= data.len() as i64;
                if s.recv_window < 0 {
                    frame::put_rst_stream(out, stream, Reason::FLOW_CONTROL_ERROR);
                    s.tell(Upstream::GaveBack(GaveBack::Lost("endpoint overran its window")));
                    self.close_stream(c, stream, out);
                    return;
                }
                s.tell(Upstream::Data { data, end });
                if end {
                    self.remote_end(c, stream, out);
                }
            }
            Event::Reset { stream, reason } => {
                let Some(s) = self.streams.get(&stream) else { return };
                if reason == Reason::REFUSED_STREAM && !s.responded {
                    s.tell(Upstream::GaveBack(GaveBack::Refused("endpoint refused the stream")));
                } else {
                    s.tell(Upstream::Reset(reason));
                }
                self.close_stream(c, stream, out);
            }
            Event::Window { stream, increment } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.out.window += i64::from(increment);
                    if s.out.window > i64::from(frame::MAX_WINDOW) {
                        frame::put_rst_stream(out, stream, Reason::FLOW_CONTROL_ERROR);
                        s.tell(Upstream::GaveBack(GaveBack::Lost("endpoint overflowed a window")));
                        self.close_stream(c, stream, out);
                        return;
                    }
                    self.flush(c, stream, out);
                }
            }
            Event::Windows { delta } => {
                self.handle.max_streams.store(c.peer_max_streams, Relaxed);
                for s in self.streams.values_mut() {
                    s.out.window += delta;
                }
                self.flush_all(c, out);
            }
            Event::GoAway { last, reason } => {
                debug!(last, %reason, "endpoint sent GOAWAY");
                self.goaway = Some(last);
                self.handle.closed.store(true, Relaxed);
                let above: Vec<u32> = self.streams.keys().copied().filter(|&id| id > last).collect();
                for id in above {
                    if let Some(s) = self.streams.get(&id) {
                        s.tell(Upstream::GaveBack(GaveBack::Refused("endpoint is going away")));
                    }
                    self.close_stream(c, id, out);
                }
                for o in std::mem::take(&mut self.waiting) {
                    give_back(&o.reply, o.key, GaveBack::Refused("endpoint is going away"));
                    self.release();
                }
            }
            Event::StreamError { stream, reason } => {
                frame::put_rst_stream(out, stream, reason);
                if let Some(s) = self.streams.get(&stream) {
                    s.tell(Upstream::GaveBack(GaveBack::Lost("endpoint broke the protocol")));
                }
                self.close_stream(c, stream, out);
            }
        }
    }

    /// The endpoint ended its side of `stream`.
    fn remote_end(&mut self, c: &mut Conn, id: u32, out: &mut Out) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        s.remote_ended = true;
        if !s.out.ended {
            // The endpoint answered before the request was over.
            frame::put_rst_stream(out, id, Reason::NO_ERROR);
        }
        self.close_stream(c, id, out);
    }

    fn next_timer(&self) -> Instant {
        let mut at = self.keepalive.next();
        if let Some(i) = self.idle_since {
            at = at.min(i + self.idle_timeout);
        }
        if let Some(h) = self.handshake_by {
            at = at.min(h);
        }
        at
    }

    fn on_timer(&mut self, c: &mut Conn, now: Instant, out: &mut Out) {
        if let Some(h) = self.handshake_by {
            if c.peer_settings {
                self.handshake_by = None;
            } else if now >= h {
                debug!("endpoint sent no SETTINGS: connection closed");
                self.unreachable = Some(format!("HTTP/2 handshake with {} timed out", self.addr).into());
                self.handle.closed.store(true, Relaxed);
                c.finished = true;
                return;
            }
        }
        if self.idle_since.is_some_and(|i| now >= i + self.idle_timeout) && self.waiting.is_empty() {
            debug!("upstream connection idle: closed");
            self.handle.closed.store(true, Relaxed);
            frame::put_goaway(out, 0, Reason::NO_ERROR, b"idle");
            c.finished = true;
            return;
        }
        match self.keepalive.fire(now) {
            Due::Ping => frame::put_ping(out, false, *b"balancer"),
            Due::Dead => {
                debug!("endpoint left a PING unanswered: connection closed");
                self.handle.closed.store(true, Relaxed);
                c.finished = true;
            }
            Due::Nothing => {}
        }
    }

    /// The connection is gone: every call on it learns how (`unreachable`:
    /// it never became an HTTP/2 connection).
    fn abort_all(&mut self, unreachable: Option<Arc<str>>) {
        self.handle.closed.store(true, Relaxed);
        for (_, s) in self.streams.drain() {
            let why = match (&unreachable, s.responded) {
                (Some(u), _) => GaveBack::Unreachable(Arc::clone(u)),
                (None, true) => GaveBack::Lost("upstream connection lost"),
                (None, false) => GaveBack::Lost("upstream connection lost before a response"),
            };
            s.tell(Upstream::GaveBack(why));
            self.handle.active.fetch_sub(1, Relaxed);
        }
        self.by_key.clear();
        for o in std::mem::take(&mut self.waiting) {
            let why = match &unreachable {
                Some(u) => GaveBack::Unreachable(Arc::clone(u)),
                None => GaveBack::Refused("upstream connection closed"),
            };
            give_back(&o.reply, o.key, why);
            self.handle.active.fetch_sub(1, Relaxed);
        }
    }
}

impl Machine for UpConn {
    type Msg = ToUp;

    fn on_bytes(&mut self, buf: &mut BytesMut, out: &mut Out) {
        let st = &mut self.st;
        self.conn.read(buf, out, |c, ev, out| st.on_event(c, ev, out));
        if self.conn.pong.take().is_some() {
            self.st.keepalive.answered(Instant::now());
        }
        if self.conn.finished {
            self.st.handle.closed.store(true, Relaxed);
        }
    }

    fn on_msgs(&mut self, msgs: &mut Vec<ToUp>, out: &mut Out) {
        // A call opened and reset within one batch (a client's rapid reset)
        // never reaches the endpoint.
        let reset: Set<CallKey> = msgs
            .iter()
            .filter_map(|m| match m {
                ToUp::Reset { key, .. } => Some(*key),
                _ => None,
            })
            .collect();
        for m in msgs.drain(..) {
            match m {
                ToUp::Open { key, .. } if reset.contains(&key) => self.st.release(),
                m => self.st.on_msg(&mut self.conn, m, out),
            }
        }
    }

    fn on_closed(&mut self, _error: Option<&io::Error>) {
        self.st.eof = true;
        // No new call leases it from now on.
        self.st.handle.closed.store(true, Relaxed);
    }

    fn finished(&self) -> bool {
        self.conn.finished || self.st.eof || (self.st.goaway.is_some() && self.st.streams.is_empty())
    }

    fn idle(&self) -> bool {
        self.st.streams.is_empty() && self.st.waiting.is_empty()
    }

    fn next_timer(&self) -> Option<Instant> {
        Some(self.st.next_timer())
    }

    fn on_timer(&mut self, now: Instant, out: &mut Out) {
        self.st.on_timer(&mut self.conn, now, out);
    }
}
