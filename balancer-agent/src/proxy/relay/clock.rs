//! One clock read per step of a connection: the calls that one read of the
//! socket (or one batch of messages) starts, answers or ends share the time
//! the step began, as an event loop's cached time. Latency samples and
//! durations are then as precise as a step is short (microseconds).

use std::cell::Cell;

use tokio::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct StepClock {
    now: Cell<Option<Instant>>,
}

impl StepClock {
    /// The time of the current step, read at its first use.
    pub fn now(&self) -> Instant {
        match self.now.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.now.set(Some(t));
                t
            }
        }
    }

    /// A new step begins: the next [`StepClock::now`] reads the clock.
    pub fn next_step(&mut self) {
        self.now.set(None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_read_per_step() {
        let mut c = StepClock::default();
        let a = c.now();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(c.now(), a, "within a step the time stays");
        c.next_step();
        assert_eq!(c.now(), a + Duration::from_millis(5), "a new step reads the clock");
    }
}
