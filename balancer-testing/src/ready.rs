//! Waiting until something is ready: polled, bounded, and cut short when
//! the process that should become ready has exited.

use std::{
    thread,
    time::{Duration, Instant},
};

/// How often [`wait`] polls.
pub const POLL: Duration = Duration::from_millis(50);

/// Why [`wait`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The process exited before it was ready: what it left (its exit
    /// status, its log).
    #[error("exited while waiting for {what}: {detail}")]
    Exited { what: String, detail: String },
    /// Not ready within the limit; `detail` is empty or says more (`; `
    /// first).
    #[error("no {what} within {limit:?}{detail}")]
    TimedOut {
        what: String,
        limit: Duration,
        detail: String,
    },
}

impl From<WaitError> for std::io::Error {
    fn from(e: WaitError) -> Self {
        let kind = match e {
            WaitError::TimedOut { .. } => std::io::ErrorKind::TimedOut,
            WaitError::Exited { .. } => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// Polls `ready` every [`POLL`] until it returns true, for at most `limit`
/// (`what` names what is awaited, for the error). `exited` is asked first
/// each round: `Some(detail)` means the process is gone and will never be
/// ready.
pub fn wait(
    what: &str,
    limit: Duration,
    exited: impl FnMut() -> Option<String>,
    ready: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    wait_every(what, limit, POLL, exited, ready)
}

/// [`wait`], polling every `every` (a measurement of when something became
/// ready wants a finer grain than a test).
pub fn wait_every(
    what: &str,
    limit: Duration,
    every: Duration,
    mut exited: impl FnMut() -> Option<String>,
    mut ready: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(detail) = exited() {
            return Err(WaitError::Exited {
                what: what.to_owned(),
                detail,
            });
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(WaitError::TimedOut {
                what: what.to_owned(),
                limit,
                detail: String::new(),
            });
        }
        thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_ready() {
        let mut polls = 0;
        wait(
            "the third poll",
            Duration::from_secs(5),
            || None,
            || {
                polls += 1;
                polls == 3
            },
        )
        .expect("ready");
        assert_eq!(polls, 3);
    }

    #[test]
    fn an_exit_ends_the_wait_with_its_detail() {
        let err = wait(
            "readiness",
            Duration::from_secs(5),
            || Some("exit status: 1".into()),
            || false,
        )
        .expect_err("exited");
        assert_eq!(err.to_string(), "exited while waiting for readiness: exit status: 1");
    }

    #[test]
    fn gives_up_after_the_limit() {
        let start = Instant::now();
        let err = wait("readiness", Duration::from_millis(200), || None, || false).expect_err("never ready");
        assert!(matches!(err, WaitError::TimedOut { .. }));
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
