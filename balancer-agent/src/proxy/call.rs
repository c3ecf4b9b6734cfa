//! One call (one client stream): pick an endpoint, send the request,
//! retry what the endpoint never handled, then forward the response, with
//! cancellation both ways and the call's `grpc-timeout` enforced.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use h2::{server::SendResponse, Reason, RecvStream, SendStream};
use http::{Request, Response};
use tokio::time::Instant;
use tracing::debug;

use super::{
    body::{self, PumpError, ReqBody},
    grpc, Ctx,
};
use crate::{
    balance::{endpoint::CallGuard, pick::identity, CallMeta, Outcome, ServiceSlot},
    error::Chain,
};

/// How a call ended, for the latency histogram and the access log.
#[derive(Debug, Default)]
pub(crate) struct CallReport {
    /// The last endpoint tried.
    pub endpoint: Option<std::net::SocketAddr>,
    /// The gRPC status the client got; `None` when its stream was reset.
    pub status: Option<u16>,
    pub attempts: u32,
}

impl CallReport {
    fn finish(&mut self, guard: CallGuard, outcome: Outcome) {
        self.endpoint = Some(guard.endpoint().address);
        self.status = match outcome {
            Outcome::Status(code) => Some(code),
            Outcome::Reset | Outcome::Abandoned => None,
            Outcome::ConnectFailed | Outcome::Refused => self.status,
        };
        guard.finish(outcome);
    }

    fn fail(&mut self, respond: &mut SendResponse<Bytes>, code: u16, msg: &str) {
        self.status = Some(code);
        fail(respond, code, msg);
    }
}

/// Attempts per call, whatever the options say.
const MAX_ATTEMPTS: usize = 8;

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

/// How a step of the call that runs while the request body still flows to
/// the endpoint ended: waiting for the response headers, then forwarding
/// the response.
enum Step<T> {
    /// The step itself finished.
    Done(T),
    ClientGone,
    Deadline,
}

/// Drives `step` while the rest of the request body goes to the endpoint,
/// until the step finishes, the client goes away (its request stream fails
/// or `client_reset` fires), or the call's deadline passes.
async fn while_request_flows<T>(
    step: impl Future<Output = T>,
    body: &mut ReqBody,
    up: &mut SendStream<Bytes>,
    client_reset: impl Future,
    mut deadline: Pin<&mut impl Future<Output = ()>>,
) -> Step<T> {
    tokio::pin!(step);
    tokio::pin!(client_reset);
    let pump = body.pump(up);
    tokio::pin!(pump);
    let mut pump_done = false;
    loop {
        tokio::select! {
            biased;
            r = &mut step => return Step::Done(r),
            r = &mut pump, if !pump_done => match r {
                Ok(()) => pump_done = true,
                Err(PumpError::Recv(_)) => return Step::ClientGone,
                // What happened upstream, the step says.
                Err(PumpError::Send(_)) => pump_done = true,
            },
            _ = &mut client_reset => return Step::ClientGone,
            _ = &mut deadline => return Step::Deadline,
        }
    }
}

/// A call the endpoint never handled, so it may go elsewhere: the stream was
/// refused, or the endpoint is going away (graceful GOAWAY) and did not take
/// it.
fn never_handled(e: &h2::Error) -> bool {
    e.reason() == Some(Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR))
}

/// The request head for an attempt. A retry carries what is left of the
/// call's deadline in `grpc-timeout`, so the endpoint does not wait longer
/// than the client will.
fn upstream_request(parts: &http::request::Parts, retry_deadline: Option<Instant>) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = http::Version::HTTP_2;
    *r.headers_mut() = parts.headers.clone();
    if let Some(d) = retry_deadline {
        let left_ms = d
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(1, 99_999_999);
        if let Ok(v) = http::HeaderValue::from_str(&format!("{left_ms}m")) {
            r.headers_mut().insert("grpc-timeout", v);
        }
    }
    r
}

fn fail(respond: &mut SendResponse<Bytes>, code: u16, msg: &str) {
    debug!(code, msg, "call answered by the proxy");
    let _ = respond.send_response(grpc::trailers_only(code, msg), true);
}

async fn deadline_sleep(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn run(
    ctx: &Arc<Ctx>,
    slot: &Arc<ServiceSlot>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> CallReport {
    let mut rec = CallReport::default();
    slot.count_call();
    let (parts, recv) = req.into_parts();
    let timeout = grpc::timeout(&parts.headers);
    let deadline = timeout.map(|d| Instant::now() + d.min(Duration::from_secs(86400 * 365)));
    let sleep = deadline_sleep(deadline);
    tokio::pin!(sleep);
    let mut body = ReqBody::new(recv, ctx.opts.replay_buffer);
    let mut tried = Tried::default();
    let mut last_err: Option<String> = None;
    // After a refusal tied to one connection (GOAWAY, REFUSED_STREAM), the
    // same endpoint may take the retry on another connection.
    let mut allow_same = false;
    let max_attempts = (ctx.opts.max_retries + 1).min(MAX_ATTEMPTS);

    // Phase 1: find an endpoint that takes the call.
    let (resp, mut up_send, guard, _lease) = loop {
        let Some(state) = slot.state() else {
            rec.fail(
                &mut respond,
                grpc::UNAVAILABLE,
                &format!("service `{}` was removed", slot.name()),
            );
            return rec;
        };
        let meta = CallMeta::from_path(parts.uri.path(), &parts.headers);
        let picked =
            state
                .pick(&meta, tried.as_slice())
                .or_else(|| if allow_same { state.pick(&meta, &[]) } else { None });
        let Some(ep) = picked else {
            slot.count_no_endpoint();
            let msg = match &last_err {
                Some(e) => format!("no endpoint of service `{}` could take the call: {e}", slot.name()),
                None => format!("no healthy endpoint for service `{}`", slot.name()),
            };
            rec.fail(&mut respond, grpc::UNAVAILABLE, &msg);
            return rec;
        };
        drop(state);
        if tried.len > 0 {
            slot.count_retry();
        }
        tried.push(identity(&ep));
        rec.attempts += 1;
        let attempts = tried.len;
        let guard = ep.start_call();
        let leased = tokio::select! {
            l = ep.pool.lease(&ctx.opts.pool) => l,
            _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
                rec.finish(guard, Outcome::Abandoned);
                return rec;
            }
            _ = &mut sleep => {
                rec.fail(&mut respond, grpc::DEADLINE_EXCEEDED, "deadline exceeded");
                rec.finish(guard, Outcome::Abandoned);
                return rec;
            }
        };
        let (mut sender, lease) = match leased {
            Ok(x) => x,
            Err(e) => {
                let e = Chain(&e).to_string();
                debug!(endpoint = %ep.address, error = %e, "endpoint unreachable");
                rec.finish(guard, Outcome::ConnectFailed);
                last_err = Some(e.clone());
                allow_same = false;
                if attempts >= max_attempts {
                    slot.count_no_endpoint();
                    let msg = format!("no endpoint of service `{}` could take the call: {e}", slot.name());
                    rec.fail(&mut respond, grpc::UNAVAILABLE, &msg);
                    return rec;
                }
                continue;
            }
        };
        let (resp_fut, mut up_send) =
            match sender.send_request(upstream_request(&parts, deadline.filter(|_| attempts > 1)), body.empty) {
                Ok(x) => x,
                Err(e) => {
                    // The connection is closing (GOAWAY) or broke: nothing was sent.
                    debug!(endpoint = %ep.address, error = %e, "connection refused a new stream");
                    lease.retire();
                    rec.finish(guard, Outcome::Refused);
                    last_err = Some(format!("endpoint {}: {e}", ep.address));
                    allow_same = true;
                    if attempts >= max_attempts {
                        slot.count_no_endpoint();
                        let msg = format!("no endpoint of service `{}` could take the call: {e}", slot.name());
                        rec.fail(&mut respond, grpc::UNAVAILABLE, &msg);
                        return rec;
                    }
                    continue;
                }
            };
        body.restart();
        let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
        match while_request_flows(resp_fut, &mut body, &mut up_send, reset, sleep.as_mut()).await {
            Step::Done(Ok(resp)) => break (resp, up_send, guard, lease),
            Step::Done(Err(e)) => {
                if never_handled(&e) {
                    if e.is_go_away() {
                        lease.retire();
                    }
                    rec.finish(guard, Outcome::Refused);
                    last_err = Some(format!("endpoint {}: {e}", ep.address));
                    if body.replayable && attempts < max_attempts {
                        allow_same = true;
                        continue;
                    }
                    rec.fail(
                        &mut respond,
                        grpc::UNAVAILABLE,
                        &format!("service `{}`: {}", slot.name(), last_err.as_deref().unwrap_or("")),
                    );
                    return rec;
                }
                match (e.is_reset(), e.reason()) {
                    (true, Some(reason)) => {
                        debug!(endpoint = %ep.address, ?reason, "endpoint reset the call before responding");
                        respond.send_reset(reason);
                        rec.finish(guard, Outcome::Reset);
                    }
                    _ => {
                        let msg = format!("service `{}`: endpoint {} failed: {e}", slot.name(), ep.address);
                        rec.fail(&mut respond, grpc::UNAVAILABLE, &msg);
                        rec.finish(guard, Outcome::Status(grpc::UNAVAILABLE));
                    }
                }
                return rec;
            }
            Step::ClientGone => {
                up_send.send_reset(Reason::CANCEL);
                rec.finish(guard, Outcome::Reset);
                return rec;
            }
            Step::Deadline => {
                up_send.send_reset(Reason::CANCEL);
                rec.fail(&mut respond, grpc::DEADLINE_EXCEEDED, "deadline exceeded");
                rec.finish(guard, Outcome::Status(grpc::DEADLINE_EXCEEDED));
                return rec;
            }
        }
    };

    // Phase 2: forward the response while the request may still stream.
    guard.first_byte();
    body.forget_replay();
    let (head, mut resp_body) = resp.into_parts();
    let http_status = head.status;
    if resp_body.is_end_stream() {
        let code = grpc::status(Some(&head.headers), http_status);
        let _ = respond.send_response(Response::from_parts(head, ()), true);
        rec.finish(guard, Outcome::Status(code));
        return rec;
    }
    let mut down = match respond.send_response(Response::from_parts(head, ()), false) {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "client stream gone before response headers");
            up_send.send_reset(Reason::CANCEL);
            return rec;
        }
    };
    // The response pump watches for the client resetting its stream.
    let resp_pump = body::pump_response(&mut resp_body, &mut down, http_status);
    let end = while_request_flows(
        resp_pump,
        &mut body,
        &mut up_send,
        std::future::pending::<()>(),
        sleep.as_mut(),
    )
    .await;
    let address = guard.endpoint().address;
    match end {
        Step::Done(Ok(status)) => {
            rec.finish(
                guard,
                Outcome::Status(status.unwrap_or_else(|| grpc::status(None, http_status))),
            );
        }
        Step::Done(Err(PumpError::Recv(e))) => match (e.is_reset(), e.reason()) {
            (true, Some(reason)) => {
                down.send_reset(reason);
                rec.finish(guard, Outcome::Reset);
            }
            _ => {
                let msg = format!("service `{}`: endpoint {address} failed mid-call: {e}", slot.name());
                if down
                    .send_trailers(grpc::status_trailers(grpc::UNAVAILABLE, &msg))
                    .is_err()
                {
                    down.send_reset(Reason::INTERNAL_ERROR);
                }
                rec.finish(guard, Outcome::Status(grpc::UNAVAILABLE));
            }
        },
        Step::Done(Err(PumpError::Send(e))) => {
            debug!(error = ?e, "client stream gone mid-response");
            up_send.send_reset(Reason::CANCEL);
            rec.finish(guard, Outcome::Reset);
        }
        Step::ClientGone => {
            up_send.send_reset(Reason::CANCEL);
            down.send_reset(Reason::CANCEL);
            rec.finish(guard, Outcome::Reset);
        }
        Step::Deadline => {
            up_send.send_reset(Reason::CANCEL);
            if down
                .send_trailers(grpc::status_trailers(grpc::DEADLINE_EXCEEDED, "deadline exceeded"))
                .is_err()
            {
                down.send_reset(Reason::CANCEL);
            }
            rec.finish(guard, Outcome::Status(grpc::DEADLINE_EXCEEDED));
        }
    }
    rec
}
