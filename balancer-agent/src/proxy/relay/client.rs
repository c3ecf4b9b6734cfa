//! The client-facing side of the relay: one task per client connection
//! parses its frames, gives every new stream (every call) an endpoint and an
//! upstream connection, forwards the call's frames both ways, and retries
//! what an endpoint never handled.

use std::{cmp::Reverse, collections::BinaryHeap, io, sync::Arc};

use balancer_relay::frame::{self, Reason};
use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;
use tracing::debug;

use super::{
    budget::Budget,
    clock::StepClock,
    closed::RecentlyClosed,
    conn::{Conn, Event, MAX_HEADER_LIST},
    driver::{Driver, Io, Machine},
    flow::{Outflow, Owed},
    head::{check_request, Builder, Head, Malformed, RequestCheck},
    keepalive::{Due, PingTimer},
    mailbox::Mailbox,
    mirror::{self, Copies, Mirrors},
    msg::{CallKey, GaveBack, ToClient, ToUp, Upstream},
    out::Out,
    pool,
    retry::{self, Next, Standing},
    streams::Streams,
    trace,
    upstream::UpHandle,
};
use crate::{
    balance::{
        endpoint::CallGuard,
        filters::HeaderEdit,
        gateway::{GatewaySlot, Miss},
        pick::identity,
        CallMeta, Outcome, ServiceSlot, ServiceState,
    },
    conns::{ConnHandle, StreamGuard},
    logging::{self, AccessEntry},
    metrics::LatencyHistogram,
    proxy::{ctx::Ctx, fault, grpc},
    traces::{CallSpan, FinishedSpan},
};

/// The PING that follows the first GOAWAY of a graceful shutdown.
const DRAIN_PING: [u8; 8] = *b"draining";
/// How long the client has to answer it before new streams are refused.
const DRAIN_ROUND_TRIP: std::time::Duration = std::time::Duration::from_secs(1);

/// A graceful shutdown in two steps (RFC 9113 §6.8): a GOAWAY that names no
/// stream and a PING; once the PING comes back, every stream the client
/// sent before it has arrived, and a second GOAWAY names the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drain {
    No,
    Announced,
    Refusing,
}

/// Attempts per call, whatever the options say.
const MAX_ATTEMPTS: usize = 8;
/// Rapid reset (CVE-2023-44487): a client may reset calls that got no
/// response yet out of a budget of this many, refilled by `RESET_REFILL`
/// per second and by one for every call answered; a client that spends it
/// gets GOAWAY(ENHANCE_YOUR_CALM).
const RESET_BUDGET: u16 = 200;
const RESET_REFILL: u16 = 100;
/// Empty DATA frames without END_STREAM a client may send (a budget
/// refilled every second) before it gets GOAWAY(ENHANCE_YOUR_CALM).
const EMPTY_DATA_BUDGET: u16 = 1_000;
const EMPTY_DATA_REFILL: u16 = 100;

/// Where a client connection's calls go.
pub(crate) enum Target {
    /// Every call to one service (kernel-redirected and explicit listeners).
    Service(Arc<ServiceSlot>),
    /// Each call to the service its host and match route it to (gateway
    /// listeners).
    Gateway(Arc<GatewaySlot>),
}

/// [`Target`] with the service's latency histogram at hand.
enum Targets {
    Service {
        slot: Arc<ServiceSlot>,
        latency: Arc<LatencyHistogram>,
    },
    Gateway(Arc<GatewaySlot>),
}

/// Serves one client connection whose first bytes (`prefix`, the preface)
/// were already read.
pub(crate) async fn serve<I: Io>(
    ctx: &Arc<Ctx>,
    io: I,
    prefix: &[u8],
    target: Target,
    handle: &ConnHandle,
) -> io::Result<()> {
    // Built outside this async fn: only the driver lives across its awaits,
    // which keeps every connection's task small.
    let mut driver = start(ctx, io, prefix, target, handle);
    let mut draining = false;
    loop {
        tokio::select! {
            r = driver.run() => return r,
            _ = ctx.drained(), if !draining => {
                draining = true;
                debug!("shutting down: GOAWAY to client");
                driver.drain();
            }
        }
    }
}

/// The connection's driver, with our SETTINGS queued and `prefix` read.
fn start<I: Io>(ctx: &Arc<Ctx>, io: I, prefix: &[u8], target: Target, handle: &ConnHandle) -> Driver<ClientConn, I> {
    let o = &ctx.opts;
    let conn = Conn::new(o.connection_window);
    let mut out = BytesMut::with_capacity(64);
    conn.start(
        &mut out,
        &[
            (frame::SETTINGS_MAX_CONCURRENT_STREAMS, o.max_concurrent_streams),
            (frame::SETTINGS_INITIAL_WINDOW_SIZE, o.stream_window),
            (frame::SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
        ],
    );
    let mailbox: Arc<Mailbox<ToClient>> = Arc::default();
    let now = Instant::now();
    let machine = ClientConn {
        conn,
        st: ClientState {
            ctx: Arc::clone(ctx),
            target: match target {
                Target::Service(slot) => Targets::Service {
                    latency: ctx.observers.metrics.latency.service(slot.name()),
                    slot,
                },
                Target::Gateway(gw) => Targets::Gateway(gw),
            },
            id: handle.id(),
            handle: handle.stream_source(),
            me: Arc::clone(&mailbox),
            preface: false,
            calls: Streams::default(),
            last_stream: 0,
            drain: Drain::No,
            drain_by: None,
            recently_closed: RecentlyClosed::default(),
            eof: false,
            resets: Budget::new(RESET_BUDGET, RESET_REFILL, now),
            empty_data: Budget::new(EMPTY_DATA_BUDGET, EMPTY_DATA_REFILL, now),
            deadlines: BinaryHeap::new(),
            held: BinaryHeap::new(),
            mirrors: Mirrors::default(),
            keepalive: PingTimer::new(o.client_keepalive_interval, o.client_keepalive_timeout, now),
            clock: StepClock::default(),
        },
    };
    let mut driver = Driver::new(io, machine, mailbox, out);
    driver.feed(prefix);
    driver
}

struct ClientConn {
    conn: Conn,
    st: ClientState,
}

struct ClientState {
    ctx: Arc<Ctx>,
    target: Targets,
    id: u64,
    handle: crate::conns::StreamSource,
    me: Arc<Mailbox<ToClient>>,
    preface: bool,
    calls: Streams<Call>,
    last_stream: u32,
    drain: Drain,
    /// The last streams that closed, and whether the client had ended them.
    recently_closed: RecentlyClosed,
    /// When the drain PING is given up on.
    drain_by: Option<Instant>,
    eof: bool,
    resets: Budget,
    empty_data: Budget,
    /// Calls' deadlines (`grpc-timeout`), soonest first; entries of calls
    /// that ended are dropped when they come up or when they pile up.
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Calls held by an injected delay, by when they go on, soonest first
    /// (entries of calls that ended meanwhile are skipped).
    held: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Copies of calls sent to mirrors (GRPCRoute `RequestMirror`).
    mirrors: Mirrors,
    keepalive: PingTimer,
    clock: StepClock,
}

/// Decodes a request's header block (or its trailers), checking it field by
/// field (RFC 9113 §8.2–8.3): the head, or why it is refused (`None`: it did
/// not decode whole). `None` when the block failed the connection.
fn decode_request(
    c: &mut Conn,
    block: &[u8],
    trailers: bool,
    out: &mut Out,
) -> Option<Result<Head, Option<Malformed>>> {
    let mut check = if trailers {
        RequestCheck::trailers()
    } else {
        RequestCheck::default()
    };
    let mut b = Builder::for_block(block.len());
    let whole = c.decode(block, out, |n, v, never| {
        check.field(n, v);
        b.push(n, v, never);
        true
    });
    if c.finished {
        return None;
    }
    Some(match check.finish() {
        Ok(()) if whole => Ok(b.finish()),
        Ok(()) => Err(None),
        Err(e) => Err(Some(e)),
    })
}

/// Endpoints a call already tried, without allocating.
#[derive(Default)]
struct Tried {
    items: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    fn push(&mut self, id: usize) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = id;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[usize] {
        &self.items[..self.len]
    }
}

struct Call {
    attempt: u32,
    tried: Tried,
    /// After a refusal tied to one connection, the same endpoint may take
    /// the retry on another.
    allow_same: bool,
    up: Option<Arc<UpHandle>>,
    guard: Option<CallGuard>,
    head: Head,
    /// The request bytes so far, while the call may still be retried.
    replay: Option<BytesMut>,
    req_end: bool,
    /// What `content-length` says is still to come.
    content_left: Option<u64>,
    /// What the client may still send on this stream, and what it is owed.
    recv_window: i64,
    owed: Owed,
    /// The response towards the client.
    out: Outflow,
    responded: bool,
    http_ok: bool,
    status: Option<u16>,
    deadline: Option<Instant>,
    /// Until when an injected delay holds the call (its request is kept
    /// whole meanwhile, within the stream's window).
    held_until: Option<Instant>,
    /// An injected abort, answered once the delay (if any) is over.
    abort: Option<(u16, Box<str>)>,
    /// What was injected, for the access log.
    injected: Option<&'static str>,
    /// The route's edit of the response head, if any.
    response_edit: Option<Arc<HeaderEdit>>,
    /// Copies of this call that still take its request bytes.
    copies: Copies,
    started: Instant,
    last_error: Option<Box<str>>,
    /// The service the call went to, and its latency histogram.
    slot: Arc<ServiceSlot>,
    latency: Arc<LatencyHistogram>,
    /// The agent's span of the call (tracing on).
    span: Option<Box<CallSpan>>,
    _stream: StreamGuard,
}

impl Call {
    fn key(&self, conn: u64, stream: u32) -> CallKey {
        CallKey {
            conn,
            stream,
            attempt: self.attempt,
        }
    }

    fn tell_up(&self, msg: ToUp) {
        if let Some(up) = &self.up {
            let _ = up.mailbox.push(msg);
        }
    }
}

/// The mirrors' view of a client connection (its fields, borrowed apart
/// from `mirrors`).
macro_rules! mirror_env {
    ($st:expr) => {
        mirror::Env {
            ctx: &$st.ctx,
            conn: $st.id,
            me: &$st.me,
        }
    };
}

impl ClientState {
    fn on_event(&mut self, c: &mut Conn, ev: Event<'_>, out: &mut Out) {
        match ev {
            Event::Headers { stream, end, block } => self.on_headers(c, stream, end, block, out),
            Event::Data { stream, data, end } => self.on_data(c, stream, data, end, out),
            Event::Reset { stream, reason: _ } => {
                if stream > self.last_stream {
                    c.fail(Reason::PROTOCOL_ERROR, "RST_STREAM on an idle stream", out);
                    return;
                }
                if let Some(call) = self.calls.remove(&stream) {
                    if !call.responded && !self.resets.spend(Instant::now()) {
                        c.fail(Reason::ENHANCE_YOUR_CALM, "too many calls reset before a response", out);
                    }
                    call.tell_up(ToUp::Reset {
                        key: call.key(self.id, stream),
                        reason: Reason::CANCEL,
                    });
                    self.done(stream, call, Outcome::Reset);
                }
            }
            Event::Window { stream, increment } => {
                if stream > self.last_stream {
                    c.fail(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream", out);
                    return;
                }
                let Some(call) = self.calls.get_mut(&stream) else {
                    return;
                };
                call.out.window += i64::from(increment);
                if call.out.window > i64::from(frame::MAX_WINDOW) {
                    self.reset(c, stream, Reason::FLOW_CONTROL_ERROR, out);
                    return;
                }
                self.flush(c, stream, out);
            }
            Event::Windows { delta } => {
                for call in self.calls.values_mut() {
                    call.out.window += delta;
                }
                let ids: Vec<u32> = self.calls.keys().copied().collect();
                for id in ids {
                    self.flush(c, id, out);
                }
            }
            // The client opens no more streams; it closes the connection
            // when it is done, and until then PINGs and open calls go on.
            Event::GoAway { .. } => {}
            Event::StreamError { stream, reason } => self.reset(c, stream, reason, out),
        }
    }

    fn on_headers(&mut self, c: &mut Conn, stream: u32, end: bool, block: &[u8], out: &mut Out) {
        if stream.is_multiple_of(2) {
            c.fail(Reason::PROTOCOL_ERROR, "client stream id is even", out);
            return;
        }
        let trailers = self.calls.contains_key(&stream);
        let generation = c.dec.generation();
        // A request head the client sent before, unless it is trailers.
        let repeated = if trailers { None } else { c.repeated_head(block) };
        let is_repeat = repeated.is_some();
        // The head, or why it was refused (None: it did not decode whole).
        let decoded = match repeated {
            Some(head) => Ok(head),
            None => match decode_request(c, block, trailers, out) {
                Some(decoded) => decoded,
                None => return,
            },
        };
        if trailers {
            let Some(call) = self.calls.get_mut(&stream) else {
                return;
            };
            if call.req_end {
                // HEADERS after END_STREAM: half-closed (remote).
                self.reset(c, stream, Reason::STREAM_CLOSED, out);
                return;
            }
            let head = match decoded {
                Ok(head) if end && call.content_left.is_none_or(|n| n == 0) => head,
                _ => {
                    self.reset(c, stream, Reason::PROTOCOL_ERROR, out);
                    return;
                }
            };
            if call.held_until.is_some() {
                // gRPC clients end requests with DATA; trailers cannot wait
                // in a held call's request.
                self.answer(
                    c,
                    stream,
                    grpc::INTERNAL,
                    "request trailers during an injected delay are not supported",
                    out,
                );
                return;
            }
            call.req_end = true;
            call.replay = None;
            if call.copies != 0 {
                self.mirrors
                    .trailers(&mirror_env!(self), stream, &mut call.copies, &head);
            }
            call.tell_up(ToUp::Trailers {
                key: call.key(self.id, stream),
                head,
            });
            return;
        }
        if stream <= self.last_stream {
            match self.recently_closed.get(stream) {
                // Frames after the client's END_STREAM: a connection error.
                Some(true) => c.fail(Reason::STREAM_CLOSED, "HEADERS on a closed stream", out),
                // A stream the relay ended first: the client may not know yet.
                Some(false) => frame::put_rst_stream(out, stream, Reason::STREAM_CLOSED),
                None => c.fail(Reason::PROTOCOL_ERROR, "HEADERS on a stream id below the last one", out),
            }
            return;
        }
        self.last_stream = stream;
        c.last_peer_stream = stream;
        if self.drain == Drain::Refusing || self.calls.len() >= self.ctx.opts.max_concurrent_streams as usize {
            frame::put_rst_stream(out, stream, Reason::REFUSED_STREAM);
            return;
        }
        let head = match decoded {
            Ok(head) => head,
            Err(e) => {
                if let Some(e) = e {
                    debug!(stream, error = %e, "malformed request");
                }
                frame::put_rst_stream(out, stream, Reason::PROTOCOL_ERROR);
                return;
            }
        };
        let content_left = match check_request(&head, end) {
            Ok(n) => n,
            Err(e) => {
                debug!(stream, error = %e, "malformed request");
                frame::put_rst_stream(out, stream, Reason::PROTOCOL_ERROR);
                return;
            }
        };
        if !is_repeat {
            c.keep_head(block, &head, generation);
        }
        // Tracing on: the call's span, and the head names it as parent.
        let (head, span) = match &self.ctx.observers.tracer {
            None => (head, None),
            Some(tracer) => {
                let (head, span) = trace::begin(tracer, &head);
                (head, Some(span))
            }
        };
        let (slot, latency) = match &self.target {
            Targets::Service { slot, latency } => (Arc::clone(slot), Arc::clone(latency)),
            Targets::Gateway(gw) => {
                let routes = gw.current();
                let authority = head
                    .get(b":authority")
                    .or_else(|| head.get(b"host"))
                    .unwrap_or_default();
                let authority = std::str::from_utf8(authority).unwrap_or_default();
                let path = std::str::from_utf8(head.get(b":path").unwrap_or_default()).unwrap_or_default();
                match routes.route(authority, &CallMeta::from_path(path, &head)) {
                    Ok(slot) => {
                        let latency = self.ctx.observers.metrics.latency.service(slot.name());
                        (slot, latency)
                    }
                    Err(miss) => {
                        let code = match miss {
                            Miss::Host(_) | Miss::Route(_) => grpc::UNIMPLEMENTED,
                            Miss::Service(_) => grpc::UNAVAILABLE,
                        };
                        self.ctx.observers.metrics.unrouted.count(&routes, &miss);
                        let msg = miss.message(&routes.name);
                        debug!(stream, code, msg, "gateway call not routed");
                        put_status(c, out, stream, false, code, &msg);
                        if !end {
                            frame::put_rst_stream(out, stream, Reason::NO_ERROR);
                        }
                        self.recently_closed.remember(stream, end);
                        return;
                    }
                }
            }
        };
        // The service as it is now: read once, for the route's timeout and
        // the first attempt.
        let state = slot.state();
        // The call's own grpc-timeout, or its route's timeout if shorter.
        let route_timeout = state.as_ref().filter(|s| s.has_route_timeouts()).and_then(|s| {
            let path = std::str::from_utf8(head.get(b":path").unwrap_or_default()).unwrap_or_default();
            s.route_timeout(&CallMeta::from_path(path, &head))
        });
        let deadline = head
            .get(b"grpc-timeout")
            .and_then(grpc::parse_timeout)
            .into_iter()
            .chain(route_timeout)
            .min()
            .map(|d| self.clock.now() + d.min(std::time::Duration::from_secs(86400 * 365)));
        slot.count_call();
        let call = Call {
            attempt: 0,
            tried: Tried::default(),
            allow_same: false,
            up: None,
            guard: None,
            head,
            replay: Some(BytesMut::new()),
            req_end: end,
            content_left,
            recv_window: i64::from(self.ctx.opts.stream_window),
            owed: Owed::default(),
            out: Outflow::new(c.peer_initial_window),
            responded: false,
            http_ok: true,
            status: None,
            deadline,
            held_until: None,
            abort: None,
            injected: None,
            response_edit: None,
            copies: 0,
            started: self.clock.now(),
            last_error: None,
            slot,
            latency,
            span,
            _stream: self.handle.stream(),
        };
        self.calls.insert(stream, call);
        if let Some(d) = deadline {
            self.add_deadline(d, stream);
        }
        self.inject_or_attempt(c, stream, state, out);
    }

    /// Draws the service's faults for a new call: holds it for an injected
    /// delay (other calls of the connection go on meanwhile), answers an
    /// injected abort itself, or sends it on.
    fn inject_or_attempt(&mut self, c: &mut Conn, stream: u32, state: Option<Arc<ServiceState>>, out: &mut Out) {
        let Some(fault) = state.as_ref().and_then(|st| st.fault.as_ref()) else {
            // The common case: no fault configured, straight on.
            self.attempt_with(c, stream, state, out);
            return;
        };
        let injection = fault::draw(fault);
        drop(state);
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        call.injected = injection.label();
        call.abort = injection.abort;
        if let Some(delay) = injection.delay {
            call.slot.count_fault_delay();
            let at = Instant::now() + delay;
            call.held_until = Some(at);
            self.held.push(Reverse((at, stream)));
            return;
        }
        self.release(c, stream, out);
    }

    /// A call past its injected delay (or without one): its injected abort,
    /// or its first attempt.
    fn release(&mut self, c: &mut Conn, stream: u32, out: &mut Out) {
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        call.held_until = None;
        if let Some((code, msg)) = call.abort.take() {
            call.slot.count_fault_abort();
            self.answer(c, stream, code, &msg, out);
            return;
        }
        self.attempt(c, stream, out);
        // What was kept during the delay beyond the replay buffer cannot be
        // replayed by a retry.
        if let Some(call) = self.calls.get_mut(&stream) {
            if call
                .replay
                .as_ref()
                .is_some_and(|r| r.len() > self.ctx.opts.replay_buffer)
            {
                call.replay = None;
            }
        }
    }

    fn on_data(&mut self, c: &mut Conn, stream: u32, data: Bytes, end: bool, out: &mut Out) {
        if data.is_empty() && !end && !self.empty_data.spend(Instant::now()) {
            c.fail(Reason::ENHANCE_YOUR_CALM, "too many empty DATA frames", out);
            return;
        }
        let Some(call) = self.calls.get_mut(&stream) else {
            if stream > self.last_stream {
                c.fail(Reason::PROTOCOL_ERROR, "DATA on an idle stream", out);
            } else if self.recently_closed.get(stream) == Some(true) {
                c.fail(Reason::STREAM_CLOSED, "DATA on a closed stream", out);
            } else {
                frame::put_rst_stream(out, stream, Reason::STREAM_CLOSED);
            }
            return;
        };
        if call.req_end {
            self.reset(c, stream, Reason::STREAM_CLOSED, out);
            return;
        }
        call.recv_window -= data.len() as i64;
        if call.recv_window < 0 {
            self.reset(c, stream, Reason::FLOW_CONTROL_ERROR, out);
            return;
        }
        if let Some(left) = &mut call.content_left {
            match left.checked_sub(data.len() as u64) {
                Some(l) if !end || l == 0 => *left = l,
                _ => {
                    self.reset(c, stream, Reason::PROTOCOL_ERROR, out);
                    return;
                }
            }
        }
        call.req_end = end;
        if let Some(r) = &mut call.replay {
            // A held call keeps its whole request (its stream window bounds
            // it: no credit is returned before it goes on).
            if call.held_until.is_some() || r.len() + data.len() <= self.ctx.opts.replay_buffer {
                r.extend_from_slice(&data);
            } else {
                call.replay = None;
            }
        }
        if call.copies != 0 {
            self.mirrors
                .data(&mirror_env!(self), stream, &mut call.copies, &data, end);
        }
        call.tell_up(ToUp::Data {
            key: call.key(self.id, stream),
            data,
            end,
        });
    }

    /// Sends the call to an endpoint: its first attempt, or a retry.
    fn attempt(&mut self, c: &mut Conn, stream: u32, out: &mut Out) {
        let state = self.calls.get(&stream).and_then(|call| call.slot.state());
        self.attempt_with(c, stream, state, out);
    }

    /// [`Self::attempt`] with the service's state already at hand.
    fn attempt_with(&mut self, c: &mut Conn, stream: u32, state: Option<Arc<ServiceState>>, out: &mut Out) {
        let max_attempts = (self.ctx.opts.max_retries + 1).min(MAX_ATTEMPTS);
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        let Some(state) = state else {
            let msg = format!("service `{}` was removed", call.slot.name());
            self.answer(c, stream, grpc::UNAVAILABLE, &msg, out);
            return;
        };
        let path = std::str::from_utf8(call.head.get(b":path").unwrap_or_default()).unwrap_or_default();
        let meta = CallMeta::from_path(path, &call.head);
        let routed = state.route(&meta, call.tried.as_slice()).or_else(|| {
            if call.allow_same {
                state.route(&meta, &[])
            } else {
                None
            }
        });
        let Some(routed) = routed else {
            drop(state);
            self.no_endpoint(c, stream, out);
            return;
        };
        // Filters: the common call has none and pays one branch for them.
        // Each attempt takes its backend's (a retry may land on another).
        let (edited, response_edit) = match routed.filters {
            Some(f) => (f.request.as_ref().map(|e| call.head.edited(e)), f.response.clone()),
            None => (None, None),
        };
        call.response_edit = response_edit;
        let plan = match routed.mirrors {
            Some(m) if call.attempt == 0 => mirror::plan(m, &call.head),
            _ => None,
        };
        let ep = routed.endpoint;
        drop(state);
        if call.tried.len > 0 {
            call.slot.count_retry();
        }
        call.tried.push(identity(&ep));
        call.attempt += 1;
        let head = match call.deadline.filter(|_| call.attempt > 1 || call.injected.is_some()) {
            Some(d) => {
                let left = d
                    .saturating_duration_since(self.clock.now())
                    .as_millis()
                    .clamp(1, 99_999_999);
                edited
                    .as_ref()
                    .unwrap_or(&call.head)
                    .with(b"grpc-timeout", format!("{left}m").as_bytes())
            }
            None => edited.unwrap_or_else(|| call.head.clone()),
        };
        let guard = ep.start_call_at(self.clock.now());
        let Some(pool) = pool::of(&ep) else {
            // Only the relay makes an endpoint's connections.
            guard.finish(Outcome::Abandoned);
            self.answer(c, stream, grpc::INTERNAL, "endpoint connections of another kind", out);
            return;
        };
        let up = pool.lease(&self.ctx.opts.pool);
        let data = call
            .replay
            .as_ref()
            .map(|r| Bytes::copy_from_slice(r))
            .unwrap_or_default();
        let msg = ToUp::Open {
            key: call.key(self.id, stream),
            reply: Arc::clone(&self.me),
            head,
            data,
            end: call.req_end,
        };
        if up.mailbox.push(msg).is_err() {
            up.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            guard.finish(Outcome::Refused);
            call.last_error = Some("upstream connection closed".into());
            call.allow_same = true;
            if (call.attempt as usize) < max_attempts {
                self.attempt(c, stream, out);
            } else {
                self.no_endpoint(c, stream, out);
            }
            return;
        }
        call.up = Some(up);
        call.guard = Some(guard);
        if let Some(plan) = plan {
            let (sent, end) = (call.replay.as_deref(), call.req_end);
            call.copies = self
                .mirrors
                .start(&mirror_env!(self), &call.slot, stream, plan, sent, end);
        }
    }

    fn on_msg(&mut self, c: &mut Conn, msg: ToClient, out: &mut Out) {
        if msg.attempt & mirror::MIRROR != 0 {
            self.mirrors.on_msg(&mirror_env!(self), msg);
            return;
        }
        let stream = msg.stream;
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        if call.attempt != msg.attempt {
            return;
        }
        match msg.what {
            Upstream::Head { head, end } if !call.responded => {
                call.responded = true;
                self.resets.earn();
                call.replay = None;
                if let Some(g) = &call.guard {
                    g.first_byte_at(self.clock.now());
                }
                call.http_ok = head.get(b":status").is_some_and(|s| s.starts_with(b"2"));
                if end {
                    call.status = Some(head.get(b"grpc-status").map_or(grpc::UNKNOWN, grpc::parse_status));
                }
                let head = match &call.response_edit {
                    Some(e) => head.edited(e),
                    None => head,
                };
                c.put_head(out, stream, &head, end);
                if end {
                    call.out.ended = true;
                    self.finish_response(c, stream, out);
                }
            }
            Upstream::Head { head, .. } => {
                call.status = Some(head.get(b"grpc-status").map_or(grpc::UNKNOWN, grpc::parse_status));
                call.out.push_trailers(head);
                self.flush(c, stream, out);
            }
            Upstream::Data { data, end } => {
                call.out.push(data, end);
                self.flush(c, stream, out);
            }
            Upstream::Reset(reason) => {
                frame::put_rst_stream(out, stream, reason);
                if let Some(call) = self.calls.remove(&stream) {
                    self.done(stream, call, Outcome::Reset);
                }
            }
            Upstream::GaveBack(back) => {
                call.up = None;
                let standing = Standing {
                    responded: call.responded,
                    replayable: call.replay.is_some(),
                    attempts: call.attempt as usize,
                    max_attempts: (self.ctx.opts.max_retries + 1).min(MAX_ATTEMPTS),
                };
                let (outcome, next) = retry::after(&back, standing);
                let why: Box<str> = match back {
                    GaveBack::Unreachable(why) => why.as_ref().into(),
                    GaveBack::Refused(why) | GaveBack::Lost(why) => why.into(),
                };
                match next {
                    Next::Retry { same_endpoint } => {
                        if let Some(g) = call.guard.take() {
                            g.finish(outcome);
                        }
                        call.allow_same = same_endpoint;
                        call.last_error = Some(why);
                        self.attempt(c, stream, out);
                    }
                    Next::NoEndpoint => {
                        if let Some(g) = call.guard.take() {
                            g.finish(outcome);
                        }
                        call.last_error = Some(why);
                        self.no_endpoint(c, stream, out);
                    }
                    // The answer accounts for the endpoint (UNAVAILABLE).
                    Next::Failed => {
                        let msg = format!("service `{}`: {why}", call.slot.name());
                        self.answer(c, stream, grpc::UNAVAILABLE, &msg, out);
                    }
                }
            }
            Upstream::Credit(n) => {
                if !call.req_end {
                    if let Some(n) = call.owed.add(n, self.ctx.opts.stream_window) {
                        call.recv_window += i64::from(n);
                        frame::put_window_update(out, stream, n);
                    }
                }
            }
        }
    }

    /// Writes what the response may send; the call ends with its last byte.
    fn flush(&mut self, c: &mut Conn, stream: u32, out: &mut Out) {
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        let n = c.flush(out, stream, &mut call.out);
        if n > 0 && !call.out.ended {
            call.tell_up(ToUp::Credit {
                key: call.key(self.id, stream),
                n: n as u32,
            });
        }
        if call.out.ended {
            self.finish_response(c, stream, out);
        }
    }

    /// The response went out whole: the call is over.
    fn finish_response(&mut self, _c: &mut Conn, stream: u32, out: &mut Out) {
        let Some(call) = self.calls.remove(&stream) else { return };
        if !call.req_end {
            // The endpoint answered before the request was over.
            frame::put_rst_stream(out, stream, Reason::NO_ERROR);
        }
        let code = call
            .status
            .unwrap_or(if call.http_ok { grpc::OK } else { grpc::UNKNOWN });
        self.done(stream, call, Outcome::Status(code));
    }

    /// No endpoint could take the call: UNAVAILABLE, naming the last error.
    fn no_endpoint(&mut self, c: &mut Conn, stream: u32, out: &mut Out) {
        let Some(call) = self.calls.get(&stream) else { return };
        call.slot.count_no_endpoint();
        let reason = call
            .slot
            .state()
            .and_then(|s| s.no_endpoint_reason().map(str::to_owned));
        let msg = match (&call.last_error, reason) {
            (_, Some(reason)) => reason,
            (Some(e), None) => format!("no endpoint of service `{}` could take the call: {e}", call.slot.name()),
            (None, None) => format!("no healthy endpoint for service `{}`", call.slot.name()),
        };
        self.answer(c, stream, grpc::UNAVAILABLE, &msg, out);
    }

    /// Answers the call from the relay: trailers-only, or trailers after a
    /// response that already started.
    fn answer(&mut self, c: &mut Conn, stream: u32, code: u16, msg: &str, out: &mut Out) {
        let Some(mut call) = self.calls.remove(&stream) else {
            return;
        };
        debug!(stream, code, msg, "call answered by the relay");
        call.tell_up(ToUp::Reset {
            key: call.key(self.id, stream),
            reason: Reason::CANCEL,
        });
        put_status(c, out, stream, call.responded, code, msg);
        if !call.req_end {
            frame::put_rst_stream(out, stream, Reason::NO_ERROR);
        }
        call.status = Some(code);
        let outcome = if call.guard.is_some() {
            Outcome::Status(code)
        } else {
            Outcome::Abandoned
        };
        self.done(stream, call, outcome);
    }

    fn reset(&mut self, _c: &mut Conn, stream: u32, reason: Reason, out: &mut Out) {
        frame::put_rst_stream(out, stream, reason);
        if let Some(call) = self.calls.remove(&stream) {
            call.tell_up(ToUp::Reset {
                key: call.key(self.id, stream),
                reason: Reason::CANCEL,
            });
            self.done(stream, call, Outcome::Reset);
        }
    }

    /// Accounts for a call that is over.
    fn done(&mut self, stream: u32, mut call: Call, outcome: Outcome) {
        self.recently_closed.remember(stream, call.req_end);
        if call.copies != 0 {
            self.mirrors.call_ended(&mirror_env!(self), stream, call.copies);
        }
        let endpoint = call.guard.as_ref().map(|g| g.endpoint().address);
        if let Some(g) = call.guard.take() {
            g.finish(outcome);
        }
        let duration = self.clock.now().saturating_duration_since(call.started);
        call.latency.observe(duration);
        let retries = call.attempt.saturating_sub(1);
        let path = || String::from_utf8_lossy(call.head.get(b":path").unwrap_or_default()).into_owned();
        if logging::access_enabled() {
            logging::access(&AccessEntry {
                service: call.slot.name(),
                method: &path(),
                endpoint,
                grpc_status: call.status,
                duration,
                retries,
                injected: call.injected,
                trace_id: trace::logged_id(call.span.as_deref()),
            });
        }
        if let (Some(tracer), Some(span)) = (&self.ctx.observers.tracer, call.span.take()) {
            if span.sampled {
                tracer.end(FinishedSpan {
                    span: *span,
                    duration,
                    service: call.slot.name().to_owned(),
                    path: path(),
                    endpoint,
                    retries,
                    grpc_status: call.status,
                    fault: call.injected,
                });
            }
        }
    }

    fn add_deadline(&mut self, at: Instant, stream: u32) {
        if self.deadlines.len() > 2 * self.calls.len() + 64 {
            let calls = &self.calls;
            self.deadlines
                .retain(|Reverse((d, s))| calls.get(s).is_some_and(|c| c.deadline == Some(*d)));
        }
        self.deadlines.push(Reverse((at, stream)));
    }

    fn next_timer(&self) -> Instant {
        let mut at = self.keepalive.next();
        if let Some(Reverse((d, _))) = self.deadlines.peek() {
            at = at.min(*d);
        }
        if let Some(Reverse((d, _))) = self.held.peek() {
            at = at.min(*d);
        }
        if let Some(d) = self.drain_by {
            at = at.min(d);
        }
        if let Some(m) = self.mirrors.next_timer() {
            at = at.min(m);
        }
        at
    }

    /// The second GOAWAY of a graceful shutdown: streams after the last one
    /// seen are refused.
    fn refuse_new(&mut self, out: &mut Out) {
        self.drain = Drain::Refusing;
        self.drain_by = None;
        frame::put_goaway(out, self.last_stream, Reason::NO_ERROR, b"shutting down");
    }

    fn on_timer(&mut self, c: &mut Conn, now: Instant, out: &mut Out) {
        if self.drain_by.is_some_and(|d| now >= d) {
            self.refuse_new(out);
        }
        while let Some(&Reverse((at, stream))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self.calls.get(&stream).is_some_and(|call| call.deadline == Some(at)) {
                self.answer(c, stream, grpc::DEADLINE_EXCEEDED, "deadline exceeded", out);
            }
        }
        while let Some(&Reverse((at, stream))) = self.held.peek() {
            if at > now {
                break;
            }
            self.held.pop();
            if self.calls.get(&stream).is_some_and(|call| call.held_until == Some(at)) {
                self.release(c, stream, out);
            }
        }
        self.mirrors.on_timer(&mirror_env!(self), now);
        match self.keepalive.fire(now) {
            Due::Ping => frame::put_ping(out, false, *b"balancer"),
            Due::Dead => {
                debug!("client left a PING unanswered: connection closed");
                c.finished = true;
            }
            Due::Nothing => {}
        }
    }

    /// The connection is over: calls still open are cancelled upstream.
    fn abort_all(&mut self) {
        // Called outside the machine's steps (close, drop): a step of its own.
        self.clock.next_step();
        for (stream, call) in std::mem::take(&mut self.calls) {
            call.tell_up(ToUp::Reset {
                key: call.key(self.id, stream),
                reason: Reason::CANCEL,
            });
            self.done(stream, call, Outcome::Reset);
        }
    }
}

/// Ends a stream with a gRPC status: trailers-only, or trailers after a
/// response that already started.
fn put_status(c: &mut Conn, out: &mut Out, stream: u32, responded: bool, code: u16, msg: &str) {
    let code_text = code.to_string();
    let text = grpc::message_text(msg);
    let mut b = Builder::with_capacity(96 + text.len());
    if !responded {
        b.push(b":status", b"200", false);
        b.push(b"content-type", b"application/grpc", false);
    }
    b.push(b"grpc-status", code_text.as_bytes(), false);
    b.push(b"grpc-message", text.as_bytes(), false);
    c.put_head(out, stream, &b.finish(), true);
}

impl Drop for ClientState {
    /// However the connection ends (even dropped at a forced shutdown), its
    /// calls are cancelled upstream and accounted for. Copies sent whole to
    /// a mirror finish on their own (see [`mirror::linger`]).
    fn drop(&mut self) {
        self.abort_all();
        let copies = std::mem::take(&mut self.mirrors);
        let lingering =
            !copies.is_empty() && mirror::linger(copies, Arc::clone(&self.ctx), self.id, Arc::clone(&self.me));
        if !lingering {
            self.me.close();
        }
    }
}

impl Machine for ClientConn {
    type Msg = ToClient;

    fn on_bytes(&mut self, buf: &mut BytesMut, out: &mut Out) {
        self.st.clock.next_step();
        if !self.st.preface {
            match frame::preface(buf) {
                Ok(true) => {
                    self.st.preface = true;
                    buf.advance(frame::PREFACE.len());
                }
                Ok(false) => return,
                Err(_) => {
                    self.conn.fail(Reason::PROTOCOL_ERROR, "no HTTP/2 preface", out);
                    buf.clear();
                    return;
                }
            }
        }
        let st = &mut self.st;
        self.conn.read(buf, out, |c, ev, out| st.on_event(c, ev, out));
        match self.conn.pong.take() {
            Some(DRAIN_PING) if self.st.drain == Drain::Announced => self.st.refuse_new(out),
            Some(_) => self.st.keepalive.answered(Instant::now()),
            None => {}
        }
    }

    fn on_msgs(&mut self, msgs: &mut Vec<ToClient>, out: &mut Out) {
        self.st.clock.next_step();
        for m in msgs.drain(..) {
            self.st.on_msg(&mut self.conn, m, out);
        }
    }

    fn on_closed(&mut self, _error: Option<&io::Error>) {
        // The client is gone: nothing it asked for can reach it any more
        // (a call waiting for window would otherwise wait for the keepalive).
        self.st.eof = true;
        self.st.abort_all();
    }

    fn finished(&self) -> bool {
        self.conn.finished || self.st.eof || (self.st.drain == Drain::Refusing && self.st.calls.is_empty())
    }

    fn idle(&self) -> bool {
        self.st.calls.is_empty()
    }

    fn next_timer(&self) -> Option<Instant> {
        Some(self.st.next_timer())
    }

    fn on_timer(&mut self, now: Instant, out: &mut Out) {
        self.st.clock.next_step();
        self.st.on_timer(&mut self.conn, now, out);
    }
}

impl<I: Io> Driver<ClientConn, I> {
    /// Shutting down: GOAWAY, and the connection ends when its calls have.
    fn drain(&mut self) {
        if self.m.st.drain == Drain::No {
            self.m.st.drain = Drain::Announced;
            self.m.st.drain_by = Some(Instant::now() + DRAIN_ROUND_TRIP);
            self.push_out(|out| {
                frame::put_goaway(out, frame::STREAM_ID_MASK, Reason::NO_ERROR, b"shutting down");
                frame::put_ping(out, false, DRAIN_PING);
            });
        }
    }
}
