//! The node-wide bound on socket destroys: a token bucket kept as the
//! theoretical arrival time of the next token (GCRA), so its state is one
//! instant and it never drifts.
//!
//! With rate `r` per second and burst `b`, any interval of length `t` holds
//! at most `b + r·t` destroys; with the default burst of 1 they are spaced
//! at least `1/r` apart (at most `r` in any second).

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

/// A token bucket of `rate` tokens per second holding at most `burst`.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    interval: Duration,
    /// How far ahead of now the next token's time may be and still allow a
    /// take: `(burst - 1) × interval`.
    slack: Duration,
    /// When the bucket will be full again; `None` when it is (initially).
    next: Option<Instant>,
}

impl RateLimiter {
    /// `rate` tokens per second, `burst` at once; starts full.
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> RateLimiter {
        let interval = Duration::from_secs(1) / rate.get();
        RateLimiter {
            interval,
            slack: interval * (burst.get() - 1),
            next: None,
        }
    }

    /// The earliest instant at or after `now` at which a token is available.
    pub fn ready_at(&self, now: Instant) -> Instant {
        match self.next {
            None => now,
            Some(next) => next.checked_sub(self.slack).map_or(now, |at| at.max(now)),
        }
    }

    /// Takes a token at `at` (which must not be before [`ready_at`](Self::ready_at)).
    pub fn take(&mut self, at: Instant) {
        let base = self.next.map_or(at, |next| next.max(at));
        self.next = Some(base + self.interval);
    }

    /// Waits (sleeping the calling thread) for a token and takes it, unless
    /// the token would come after `deadline`: then returns false at once.
    pub fn acquire_before(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        let at = self.ready_at(now);
        if at > deadline {
            return false;
        }
        if at > now {
            std::thread::sleep(at - now);
        }
        self.take(at);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    /// Takes `n` tokens as early as allowed; returns their times relative
    /// to `t0`.
    fn schedule(limiter: &mut RateLimiter, t0: Instant, n: usize) -> Vec<Duration> {
        let mut now = t0;
        (0..n)
            .map(|_| {
                let at = limiter.ready_at(now);
                limiter.take(at);
                now = at;
                at - t0
            })
            .collect()
    }

    #[test]
    fn burst_one_spaces_tokens_by_the_interval() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(nz(2), nz(1));
        let ms: Vec<u128> = schedule(&mut l, t0, 5).iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 500, 1000, 1500, 2000]);
    }

    #[test]
    fn burst_allows_that_many_at_once_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(nz(4), nz(3));
        let ms: Vec<u128> = schedule(&mut l, t0, 6).iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 0, 0, 250, 500, 750]);
    }

    #[test]
    fn an_idle_bucket_refills_but_not_beyond_its_burst() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(nz(10), nz(2));
        schedule(&mut l, t0, 2);
        // Ten seconds idle: two tokens at once, then the rate again.
        let later = t0 + Duration::from_secs(10);
        let ms: Vec<u128> = schedule(&mut l, later, 4).iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 0, 100, 200]);
    }

    #[test]
    fn any_second_holds_at_most_rate_plus_burst_minus_one() {
        let t0 = Instant::now();
        let (rate, burst) = (5u32, 3u32);
        let mut l = RateLimiter::new(nz(rate), nz(burst));
        let times = schedule(&mut l, t0, 40);
        for (i, start) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|t| **t < *start + Duration::from_secs(1))
                .count();
            assert!(
                in_window <= (rate + burst - 1) as usize,
                "{in_window} in the second from {start:?}"
            );
        }
    }

    #[test]
    fn acquire_gives_up_when_the_token_comes_after_the_deadline() {
        let mut l = RateLimiter::new(nz(1), nz(1));
        let now = Instant::now();
        assert!(l.acquire_before(now + Duration::from_millis(100)));
        // The next token is a second away.
        let start = Instant::now();
        assert!(!l.acquire_before(start + Duration::from_millis(100)));
        assert!(start.elapsed() < Duration::from_millis(100), "did not wait");
    }
}
