//! PING keepalive for relay connections, without a task of its own: a PING
//! after every `interval` without one in flight; a peer that leaves it
//! unanswered for `timeout` is gone and its connection is closed.

use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct PingTimer {
    /// When the PING in flight was sent, or (none in flight) when the last
    /// one was answered or the connection opened.
    since: Instant,
    in_flight: bool,
    interval_ms: u32,
    timeout_ms: u32,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.max(Duration::from_millis(10)).as_millis()).unwrap_or(u32::MAX)
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
            since: now,
            in_flight: false,
            interval_ms: millis(interval),
            timeout_ms: millis(timeout),
        }
    }

    pub fn next(&self) -> Instant {
        let wait = if self.in_flight {
            self.timeout_ms
        } else {
            self.interval_ms
        };
        self.since + Duration::from_millis(u64::from(wait))
    }

    pub fn fire(&mut self, now: Instant) -> Due {
        if now < self.next() {
            return Due::Nothing;
        }
        if self.in_flight {
            return Due::Dead;
        }
        self.in_flight = true;
        self.since = now;
        Due::Ping
    }

    pub fn answered(&mut self, now: Instant) {
        self.in_flight = false;
        self.since = now;
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
