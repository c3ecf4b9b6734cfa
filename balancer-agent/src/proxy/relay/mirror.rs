//! Request mirroring (GRPCRoute `RequestMirror`): a copy of a call sent to
//! another service, its answer discarded. A copy never holds the real call
//! back: it is sent only when the mirror has an endpoint and a connection
//! that takes it at once, it carries at most the replay buffer's worth of
//! request (a longer request cuts it off), at most [`MAX_COPIES`] are in
//! flight per client connection, each for at most [`COPY_TIMEOUT`], and its
//! response is credited back as it arrives and dropped. What becomes of a
//! copy is counted on the mirroring service: sent (its whole request handed
//! to a mirror connection) or dropped; a sent copy that the mirror never
//! answers (unreachable, refused, reset, timed out) is counted failed too.
//!
//! A copy travels on the client connection's mailbox like an attempt of
//! the call, under an attempt number with [`MIRROR`] set, so that no
//! attempt of the real call can take its messages.

use std::{cmp::Reverse, collections::BinaryHeap, sync::Arc, time::Duration};

use balancer_relay::frame::Reason;
use bytes::Bytes;
use tokio::time::Instant;

use super::{
    head::Head,
    mailbox::Mailbox,
    msg::{CallKey, ToClient, ToUp, Upstream},
    pool,
    upstream::UpHandle,
    Map,
};
use crate::{
    balance::{filters::RouteMirrors, CallGuard, CallMeta, Outcome, ServiceSlot},
    proxy::{ctx::Ctx, fault::drawn, grpc},
};

/// The attempt-number bit of a mirrored copy (real attempts are few).
pub(crate) const MIRROR: u32 = 1 << 31;
/// Copies a call may have (one bit each in [`Copies`]).
const MAX_TARGETS: usize = 8;
/// Copies in flight per client connection.
const MAX_COPIES: usize = 64;
/// A copy still open after this long is cancelled.
const COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// The copies of one call that still take its request bytes, by bit.
pub(crate) type Copies = u8;

/// The copies drawn for one call: where they go and their head.
pub(crate) struct Plan {
    head: Head,
    services: Vec<Arc<str>>,
}

/// Draws the route's mirrors for one call; `None` when no copy is due.
pub(crate) fn plan(m: &RouteMirrors, head: &Head) -> Option<Plan> {
    let services: Vec<Arc<str>> = m
        .mirrors
        .iter()
        .take(MAX_TARGETS)
        .filter(|c| drawn(c.share))
        .map(|c| Arc::clone(&c.service))
        .collect();
    if services.is_empty() {
        return None;
    }
    let head = match &m.request {
        Some(e) => head.edited(e),
        None => head.clone(),
    };
    Some(Plan {
        head: head.shadowed(),
        services,
    })
}

struct Copy {
    up: Arc<UpHandle>,
    guard: CallGuard,
    /// Request bytes sent so far.
    sent: usize,
    req_end: bool,
    /// Its timer in [`Mirrors::timers`].
    until: Instant,
    /// The mirroring service (the copies count in its counters).
    slot: Arc<ServiceSlot>,
}

/// One copy to open: of the call on `stream`, to mirror `service`.
struct Open<'a> {
    stream: u32,
    tag: u32,
    service: &'a str,
    head: &'a Head,
    sent: Option<&'a [u8]>,
    req_end: bool,
}

/// What a client connection's copies need of it.
pub(crate) struct Env<'a> {
    pub ctx: &'a Ctx,
    pub conn: u64,
    pub me: &'a Arc<Mailbox<ToClient>>,
}

impl Env<'_> {
    fn key(&self, stream: u32, tag: u32) -> CallKey {
        CallKey {
            conn: self.conn,
            stream,
            attempt: MIRROR | tag,
        }
    }
}

/// A client connection's copies in flight.
#[derive(Default)]
pub(crate) struct Mirrors {
    copies: Map<(u32, u32), Copy>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl Mirrors {
    /// Sends the plan's copies of the call on `stream` of service `slot`,
    /// with the request bytes it sent so far (`None`: not all of them are
    /// kept); returns the copies that still take request bytes.
    pub fn start(
        &mut self,
        env: &Env<'_>,
        slot: &Arc<ServiceSlot>,
        stream: u32,
        plan: Plan,
        sent: Option<&[u8]>,
        req_end: bool,
    ) -> Copies {
        let mut open: Copies = 0;
        for (tag, service) in plan.services.iter().enumerate() {
            let copy = Open {
                stream,
                tag: tag as u32,
                service,
                head: &plan.head,
                sent,
                req_end,
            };
            if self.start_one(env, slot, copy) {
                if req_end {
                    slot.count_mirrored();
                } else {
                    open |= 1 << tag;
                }
            } else {
                slot.count_mirror_dropped();
            }
        }
        open
    }

    fn start_one(&mut self, env: &Env<'_>, slot: &Arc<ServiceSlot>, copy: Open<'_>) -> bool {
        let Open {
            stream,
            tag,
            service,
            head,
            sent,
            req_end,
        } = copy;
        let Some(sent) = sent.filter(|s| s.len() <= env.ctx.opts.replay_buffer) else {
            return false;
        };
        if self.copies.len() >= MAX_COPIES {
            return false;
        }
        let Some(state) = env.ctx.table.service(service).and_then(|slot| slot.state()) else {
            return false;
        };
        let path = std::str::from_utf8(head.get(b":path").unwrap_or_default()).unwrap_or_default();
        let Some(ep) = state.pick(&CallMeta::from_path(path, head), &[]) else {
            return false;
        };
        drop(state);
        let Some(up) = pool::of(&ep).and_then(|p| p.try_lease(&env.ctx.opts.pool)) else {
            return false;
        };
        let key = env.key(stream, tag);
        let msg = ToUp::Open {
            key,
            reply: Arc::clone(env.me),
            head: head.clone(),
            data: Bytes::copy_from_slice(sent),
            end: req_end,
        };
        if up.mailbox.push(msg).is_err() {
            up.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        let until = Instant::now() + COPY_TIMEOUT;
        self.timers.push(Reverse((until, stream, key.attempt)));
        self.copies.insert(
            (stream, key.attempt),
            Copy {
                up,
                guard: ep.start_call(),
                sent: sent.len(),
                req_end,
                until,
                slot: Arc::clone(slot),
            },
        );
        true
    }

    /// More of the call's request: to each copy that takes it, within the
    /// bound (a copy that would outgrow it is cancelled).
    pub fn data(&mut self, env: &Env<'_>, stream: u32, open: &mut Copies, data: &Bytes, end: bool) {
        for tag in bits(*open) {
            let k = (stream, MIRROR | tag);
            let Some(copy) = self.copies.get_mut(&k) else {
                *open &= !(1 << tag);
                continue;
            };
            if copy.sent + data.len() > env.ctx.opts.replay_buffer {
                *open &= !(1 << tag);
                self.cancel(env, k);
                continue;
            }
            copy.sent += data.len();
            let _ = copy.up.mailbox.push(ToUp::Data {
                key: env.key(stream, tag),
                data: data.clone(),
                end,
            });
            if end {
                copy.req_end = true;
                *open &= !(1 << tag);
                copy.slot.count_mirrored();
            }
        }
    }

    /// The call's request trailers end each copy's request too.
    pub fn trailers(&mut self, env: &Env<'_>, stream: u32, open: &mut Copies, head: &Head) {
        for tag in bits(*open) {
            if let Some(copy) = self.copies.get_mut(&(stream, MIRROR | tag)) {
                let _ = copy.up.mailbox.push(ToUp::Trailers {
                    key: env.key(stream, tag),
                    head: head.clone(),
                });
                copy.req_end = true;
                copy.slot.count_mirrored();
            }
        }
        *open = 0;
    }

    /// The call ended before its request did: its open copies are
    /// cancelled.
    pub fn call_ended(&mut self, env: &Env<'_>, stream: u32, open: Copies) {
        for tag in bits(open) {
            self.cancel(env, (stream, MIRROR | tag));
        }
    }

    /// Ends a copy before its answer: dropped if its request was not all
    /// sent, failed if it was.
    fn cancel(&mut self, env: &Env<'_>, k: (u32, u32)) {
        let Some(copy) = self.copies.remove(&k) else { return };
        let _ = copy.up.mailbox.push(ToUp::Reset {
            key: env.key(k.0, k.1 & !MIRROR),
            reason: Reason::CANCEL,
        });
        copy.guard.finish(Outcome::Abandoned);
        if copy.req_end {
            copy.slot.count_mirror_failed();
        } else {
            copy.slot.count_mirror_dropped();
        }
    }

    /// What a mirror answered: credited back and dropped; the copy is over
    /// with its response, a reset or a give-back (never retried).
    pub fn on_msg(&mut self, env: &Env<'_>, msg: ToClient) {
        let k = (msg.stream, msg.attempt);
        let Some(copy) = self.copies.get_mut(&k) else { return };
        let outcome = match msg.what {
            Upstream::Head { head, end: true } => {
                Outcome::Status(head.get(b"grpc-status").map_or(grpc::UNKNOWN, grpc::parse_status))
            }
            Upstream::Head { end: false, .. } | Upstream::Credit(_) => return,
            Upstream::Data { data, end } => {
                if !end {
                    if !data.is_empty() {
                        let _ = copy.up.mailbox.push(ToUp::Credit {
                            key: env.key(k.0, k.1 & !MIRROR),
                            n: data.len() as u32,
                        });
                    }
                    return;
                }
                Outcome::Status(grpc::OK)
            }
            Upstream::Reset(_) => Outcome::Reset,
            Upstream::GaveBack(super::msg::GaveBack::Unreachable(_)) => Outcome::ConnectFailed,
            Upstream::GaveBack(_) => Outcome::Refused,
        };
        if let Some(copy) = self.copies.remove(&k) {
            let answered = matches!(outcome, Outcome::Status(_));
            match (copy.req_end, answered) {
                (false, _) => copy.slot.count_mirror_dropped(),
                (true, false) => copy.slot.count_mirror_failed(),
                (true, true) => {}
            }
            copy.guard.finish(outcome);
        }
    }

    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Cancels the copies past their time.
    pub fn on_timer(&mut self, env: &Env<'_>, now: Instant) {
        while let Some(&Reverse((at, stream, attempt))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.copies.get(&(stream, attempt)).is_some_and(|c| c.until == at) {
                self.cancel(env, (stream, attempt));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }
}

/// The client connection is over while copies it sent whole still wait for
/// their answers (those still sending their request were cancelled with
/// their call): a task of their own takes over the connection's mailbox,
/// reads and drops their answers until the last one ends or times out,
/// then closes the mailbox. Returns whether it started (no runtime: no).
pub(crate) fn linger(mut copies: Mirrors, ctx: Arc<Ctx>, conn: u64, me: Arc<Mailbox<ToClient>>) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    rt.spawn(async move {
        let mut msgs = Vec::new();
        while !copies.is_empty() {
            let next = copies.next_timer().unwrap_or_else(|| Instant::now() + COPY_TIMEOUT);
            let env = Env {
                ctx: &ctx,
                conn,
                me: &me,
            };
            let take = std::future::poll_fn(|cx| {
                if me.take(cx, &mut msgs) {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            });
            tokio::select! {
                () = take => {
                    for msg in msgs.drain(..) {
                        if msg.attempt & MIRROR != 0 {
                            copies.on_msg(&env, msg);
                        }
                    }
                }
                () = tokio::time::sleep_until(next) => copies.on_timer(&env, Instant::now()),
            }
        }
        me.close();
    });
    true
}

fn bits(mask: Copies) -> impl Iterator<Item = u32> {
    (0..MAX_TARGETS as u32).filter(move |t| mask & (1 << t) != 0)
}
