//! HTTP/2 PING keepalive, for client and endpoint connections alike: a PING
//! after every `interval` without one in flight; a peer that leaves a PING
//! unanswered for `timeout` is gone (a pod whose network namespace vanished,
//! a cut link, a hung process) and its connection is closed rather than
//! kept forever.

use std::time::Duration;

use h2::{Ping, PingPong};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// One connection's keepalive state. [`Keepalive::dead`] is cancel-safe: it
/// can sit in a `select!` loop next to the connection itself.
pub(crate) struct Keepalive {
    ping: Option<PingPong>,
    tick: Interval,
    interval: Duration,
    timeout: Duration,
    /// When the PING in flight was sent.
    sent: Option<Instant>,
    /// When the last PING was answered (or the connection opened).
    last: Instant,
}

impl Keepalive {
    /// `ping` is the connection's `ping_pong()`; without one (already taken)
    /// the connection is never declared dead.
    pub fn new(ping: Option<PingPong>, interval: Duration, timeout: Duration) -> Self {
        let every = interval.min(timeout).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Keepalive {
            ping,
            tick,
            interval,
            timeout,
            sent: None,
            last: Instant::now(),
        }
    }

    /// Resolves once the peer left a PING unanswered for the timeout, or
    /// the connection can no longer carry PINGs (it ended).
    pub async fn dead(&mut self) {
        let Some(ping) = self.ping.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                biased;
                pong = std::future::poll_fn(|cx| ping.poll_pong(cx)), if self.sent.is_some() => {
                    if pong.is_err() {
                        return;
                    }
                    self.sent = None;
                    self.last = Instant::now();
                }
                _ = self.tick.tick() => match self.sent {
                    Some(sent) if sent.elapsed() >= self.timeout => return,
                    Some(_) => {}
                    None if self.last.elapsed() >= self.interval => {
                        if ping.send_ping(Ping::opaque()).is_err() {
                            return;
                        }
                        self.sent = Some(Instant::now());
                    }
                    None => {}
                },
            }
        }
    }
}
