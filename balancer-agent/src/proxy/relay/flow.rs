//! One direction of one stream towards a peer: the peer's window for it and
//! what waits for that window (DATA, then END_STREAM or trailers).
//!
//! Flow control is two loops joined per call: what one peer sends waits here
//! for the other peer's window, and the sender gets credit back (a
//! WINDOW_UPDATE) only when its bytes leave. So the relay never holds more
//! of a stream than the window it announced for it.

use std::collections::VecDeque;

use balancer_relay::frame;
use bytes::Bytes;

use super::{head::Head, out::Out};

#[derive(Default)]
pub(crate) struct Outflow {
    /// The peer's window for this stream.
    pub window: i64,
    chunks: VecDeque<Bytes>,
    /// END_STREAM follows the queued DATA.
    end: bool,
    trailers: Option<Head>,
    /// END_STREAM (or the trailers) went out.
    pub ended: bool,
}

impl Outflow {
    pub fn new(window: u32) -> Outflow {
        Outflow {
            window: i64::from(window),
            ..Outflow::default()
        }
    }

    pub fn push(&mut self, data: Bytes, end: bool) {
        if !data.is_empty() {
            self.chunks.push_back(data);
        }
        self.end |= end;
    }

    /// Trailers follow the queued DATA.
    pub fn push_trailers(&mut self, head: Head) {
        self.trailers = Some(head);
    }

    /// Whether everything queued went out and trailers are next.
    pub fn trailers_due(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_some()
    }

    pub fn take_trailers(&mut self) -> Option<Head> {
        let t = self.trailers.take();
        if t.is_some() {
            self.ended = true;
        }
        t
    }

    /// Writes DATA frames as far as both windows allow, and END_STREAM
    /// after the last queued byte; returns the bytes written.
    pub fn write(&mut self, out: &mut Out, stream: u32, conn_window: &mut i64, max_frame: u32) -> usize {
        let mut sent = 0;
        while !self.chunks.is_empty() {
            let single = self.chunks.len() == 1;
            let Some(chunk) = self.chunks.front_mut() else { break };
            let room = self.window.min(*conn_window).min(i64::from(max_frame));
            if room <= 0 {
                return sent;
            }
            let n = chunk.len().min(room as usize);
            let last = n == chunk.len() && single && self.end && self.trailers.is_none();
            frame::put_data_head(out, stream, n as u32, last);
            out.put_payload(chunk.split_to(n));
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
            self.window -= n as i64;
            *conn_window -= n as i64;
            sent += n;
            if last {
                self.ended = true;
            }
        }
        if self.end && !self.ended && self.trailers.is_none() {
            frame::put_data_head(out, stream, 0, true);
            self.ended = true;
        }
        sent
    }
}

/// Window a receiver owes its sender on one stream: what was forwarded and
/// not yet given back. It goes back in WINDOW_UPDATEs of a quarter of the
/// stream window or more, so a stream of small messages does not cost a
/// frame per message; the sender still has three quarters of its window
/// while the relay holds none of its bytes.
#[derive(Debug, Default)]
pub(crate) struct Owed(u32);

impl Owed {
    /// Adds `n`; returns the increment to send now, if it is time.
    pub fn add(&mut self, n: u32, window: u32) -> Option<u32> {
        self.0 = self.0.saturating_add(n);
        (self.0 >= (window / 4).max(1)).then(|| std::mem::take(&mut self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_goes_back_a_quarter_window_at_a_time() {
        let mut o = Owed::default();
        assert_eq!(o.add(100, 1000), None);
        assert_eq!(o.add(100, 1000), None);
        assert_eq!(o.add(50, 1000), Some(250));
        assert_eq!(o.add(10, 1000), None);
        assert_eq!(o.add(1000, 1000), Some(1010));
    }

    #[test]
    fn queued_data_waits_for_the_window_and_ends_with_the_stream() {
        let mut f = Outflow::new(10);
        let mut conn = 100i64;
        let mut out = Out::default();
        f.push(Bytes::from_static(b"0123456789abcdef"), true);
        assert_eq!(f.write(&mut out, 1, &mut conn, 16_384), 10);
        assert!(!f.ended, "six bytes wait for window");
        f.window += 6;
        assert_eq!(f.write(&mut out, 1, &mut conn, 16_384), 6);
        assert!(f.ended, "END_STREAM with the last byte");
        assert_eq!(conn, 84);
    }
}
