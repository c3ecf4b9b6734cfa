//! The streams of a client connection that closed last, so that a frame on
//! one of them gets the error RFC 9113 §5.1 gives it: a connection error
//! after the client's own END_STREAM, a stream error (RST_STREAM) when the
//! relay ended the stream first and the client may not know yet. A stream id
//! below the last one that is not among them was never opened.

use std::collections::VecDeque;

/// How many closed streams are remembered.
const REMEMBERED: usize = 32;

#[derive(Debug, Default)]
pub(crate) struct RecentlyClosed {
    ring: VecDeque<(u32, bool)>,
}

impl RecentlyClosed {
    pub fn remember(&mut self, stream: u32, client_ended: bool) {
        if self.ring.len() == REMEMBERED {
            self.ring.pop_front();
        }
        self.ring.push_back((stream, client_ended));
    }

    /// Whether `stream` closed lately, and if so whether the client had
    /// ended it.
    pub fn get(&self, stream: u32) -> Option<bool> {
        self.ring
            .iter()
            .rev()
            .find(|(s, _)| *s == stream)
            .map(|(_, ended)| *ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_streams_only() {
        let mut r = RecentlyClosed::default();
        r.remember(1, true);
        r.remember(3, false);
        assert_eq!(r.get(1), Some(true));
        assert_eq!(r.get(3), Some(false));
        assert_eq!(r.get(5), None);
        for s in 0..REMEMBERED as u32 {
            r.remember(101 + 2 * s, true);
        }
        assert_eq!(r.get(1), None, "forgotten after {REMEMBERED} more");
    }
}
