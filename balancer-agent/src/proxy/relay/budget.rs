//! Budgets for what a peer may do a lot of but not endlessly (reset calls,
//! send empty DATA, SETTINGS or PINGs): a bucket that refills with time, so
//! that a flood gets the connection ended however slowly it is sent, and a
//! busy honest peer never runs dry.

use std::sync::OnceLock;

use tokio::time::Instant;

/// A budget in eight bytes (every connection holds a few): what is left and
/// the second (since the process's first budget) it was last refilled; its
/// size and refill rate are the caller's constants.
#[derive(Debug)]
pub(crate) struct Budget {
    left: u32,
    refilled: u32,
    cap: u16,
    per_second: u16,
}

/// When the first budget was made: budgets refill at whole seconds since.
fn epoch(now: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| now)
}

/// Seconds since [`epoch`].
fn seconds(now: Instant) -> u32 {
    u32::try_from(now.saturating_duration_since(epoch(now)).as_secs()).unwrap_or(u32::MAX)
}

impl Budget {
    /// A full budget of `cap`, refilled by `per_second`.
    pub fn new(cap: u16, per_second: u16, now: Instant) -> Budget {
        Budget {
            left: u32::from(cap),
            refilled: seconds(now),
            cap,
            per_second,
        }
    }

    /// Spends one; false when nothing is left.
    pub fn spend(&mut self, now: Instant) -> bool {
        let now = seconds(now);
        let secs = now.saturating_sub(self.refilled);
        if secs > 0 {
            let refill = secs.saturating_mul(u32::from(self.per_second));
            self.left = self.left.saturating_add(refill).min(u32::from(self.cap));
            self.refilled = now;
        }
        match self.left.checked_sub(1) {
            Some(l) => {
                self.left = l;
                true
            }
            None => false,
        }
    }

    /// Earns one back (a reset budget, for every call answered).
    pub fn earn(&mut self) {
        self.left = (self.left + 1).min(u32::from(self.cap));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_runs_dry_and_time_refills_it() {
        // At a whole second of the refill clock (the process's other
        // budgets may have started it).
        let t0 = epoch(Instant::now()) + Duration::from_secs(10);
        let mut b = Budget::new(3, 2, t0);
        assert!(b.spend(t0) && b.spend(t0) && b.spend(t0));
        assert!(!b.spend(t0), "a fourth at once is over the budget");
        assert!(!b.spend(t0 + Duration::from_millis(900)));
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.spend(t1) && b.spend(t1));
        assert!(!b.spend(t1));
        b.earn();
        assert!(b.spend(t1));
        assert!(b.spend(t1 + Duration::from_secs(3600)), "refills up to the cap");
    }

    #[test]
    fn a_slow_flood_still_runs_dry() {
        // Ten a second against a refill of two: dry within a few seconds.
        let t0 = Instant::now();
        let mut b = Budget::new(20, 2, t0);
        let dry = (0..200).find(|i| !b.spend(t0 + Duration::from_millis(100 * i)));
        assert!(dry.is_some_and(|i| i < 40), "{dry:?}");
    }
}
