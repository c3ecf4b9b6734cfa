//! PING keepalive for relay connections, without a task of its own: a PING
//! after every `interval` without one in flight; a peer that leaves it
//! unanswered for `timeout` is gone and its connection is closed.

use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct PingTimer {
    interval: Duration,
    timeout: Duration,
    /// When the PING in flight was sent.
    sent: Option<Instant>,
    /// When the last PING was answered (or the connection opened).
    last: Instant,
}

/// What a due keepalive asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    Ping,
    Dead,
    Nothing,
}

impl PingTimer {
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> PingTimer {
        PingTimer {
            interval: interval.max(Duration::from_millis(10)),
            timeout: timeout.max(Duration::from_millis(10)),
            sent: None,
            last: now,
        }
    }

    pub fn next(&self) -> Instant {
        match self.sent {
            Some(s) => s + self.timeout,
            None => self.last + self.interval,
        }
    }

    pub fn fire(&mut self, now: Instant) -> Due {
        match self.sent {
            Some(s) if now >= s + self.timeout => Due::Dead,
            Some(_) => Due::Nothing,
            None if now >= self.last + self.interval => {
                self.sent = Some(now);
                Due::Ping
            }
            None => Due::Nothing,
        }
    }

    pub fn answered(&mut self, now: Instant) {
        self.sent = None;
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_after_the_interval_and_declares_silence_dead() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = PingTimer::new(10 * s, 5 * s, t0);
        assert_eq!(k.next(), t0 + 10 * s);
        assert_eq!(k.fire(t0 + 9 * s), Due::Nothing);
        assert_eq!(k.fire(t0 + 10 * s), Due::Ping);
        assert_eq!(k.next(), t0 + 15 * s);
        assert_eq!(k.fire(t0 + 12 * s), Due::Nothing);
        k.answered(t0 + 12 * s);
        assert_eq!(k.next(), t0 + 22 * s);
        assert_eq!(k.fire(t0 + 22 * s), Due::Ping);
        assert_eq!(k.fire(t0 + 27 * s), Due::Dead);
    }
}
