//! Assembly of header blocks split over HEADERS + CONTINUATION frames
//! (RFC 9113 §4.3, §6.10), with limits against CONTINUATION floods
//! (RUSTSEC-2024-0332 / CVE-2024-27316 class): a peer that keeps sending
//! CONTINUATION frames without END_HEADERS must not make us buffer without
//! bound or spin on empty frames.

use super::{flags, Error, Head, Kind, Reason};

/// Assembles a header block split over HEADERS + CONTINUATION frames, with
/// limits. Holds no memory until a block actually spans frames, and none
/// again after [`HeaderBlock::clear`].
#[derive(Debug)]
pub struct HeaderBlock {
    buf: Vec<u8>,
    /// The stream of the open block; `None` when no block is open.
    open: Option<u32>,
    end_stream: bool,
    /// CONTINUATION frames received for the open block.
    frames: u32,
    max_block: usize,
    max_frames: u32,
}

impl HeaderBlock {
    /// `max_block`: the largest encoded block accepted (bytes); `max_frames`:
    /// the most CONTINUATION frames accepted per block.
    pub fn new(max_block: usize, max_frames: u32) -> HeaderBlock {
        HeaderBlock {
            buf: Vec::new(),
            open: None,
            end_stream: false,
            frames: 0,
            max_block,
            max_frames,
        }
    }

    /// True while a block is open: only a CONTINUATION on [`Self::stream`]
    /// may follow (see [`Self::expecting`]).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The stream of the open block.
    pub fn stream(&self) -> Option<u32> {
        self.open
    }

    /// Checks that a frame may arrive now (RFC 9113 §6.10): while a block is
    /// open only a CONTINUATION on its stream may; otherwise a CONTINUATION
    /// may not. Either violation is a PROTOCOL_ERROR connection error. Call it
    /// for every frame header before dispatching on the frame type.
    pub fn expecting(&self, head: &Head) -> Result<(), Error> {
        let is_continuation = head.kind == Kind::Continuation;
        match self.open {
            Some(stream) if !is_continuation || head.stream != stream => Err(Error::conn(
                Reason::PROTOCOL_ERROR,
                "expected CONTINUATION of the open header block",
            )),
            None if is_continuation => Err(Error::conn(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION without a header block",
            )),
            _ => Ok(()),
        }
    }

    /// Starts a block from a HEADERS frame without END_HEADERS: copies the
    /// fragment. A block already open, or stream 0, is a PROTOCOL_ERROR; a
    /// fragment over `max_block` is ENHANCE_YOUR_CALM (connection errors).
    pub fn start(&mut self, stream: u32, end_stream: bool, fragment: &[u8]) -> Result<(), Error> {
        if self.open.is_some() {
            return Err(Error::conn(
                Reason::PROTOCOL_ERROR,
                "HEADERS while a header block is open",
            ));
        }
        if stream == 0 {
            return Err(Error::conn(Reason::PROTOCOL_ERROR, "header block on stream 0"));
        }
        if fragment.len() > self.max_block {
            return Err(self.abort("header block too large"));
        }
        self.buf.clear();
        self.buf.extend_from_slice(fragment);
        self.open = Some(stream);
        self.end_stream = end_stream;
        self.frames = 0;
        Ok(())
    }

    /// Adds a CONTINUATION. `Ok(Some((end_stream, block)))` when END_HEADERS
    /// completes the block (valid until the next call), `Ok(None)` while more
    /// is expected. Wrong frame type or stream, or no open block, is a
    /// PROTOCOL_ERROR; exceeding either limit is ENHANCE_YOUR_CALM (the
    /// caller GOAWAYs). Any error drops the block.
    pub fn push(&mut self, head: &Head, fragment: &[u8]) -> Result<Option<(bool, &[u8])>, Error> {
        if let Err(e) = self.expecting(head) {
            self.clear();
            return Err(e);
        }
        self.frames = self.frames.saturating_add(1);
        if self.frames > self.max_frames {
            return Err(self.abort("too many CONTINUATION frames"));
        }
        if fragment.len() > self.max_block - self.buf.len() {
            return Err(self.abort("header block too large"));
        }
        self.buf.extend_from_slice(fragment);
        if !head.has(flags::END_HEADERS) {
            return Ok(None);
        }
        self.open = None;
        Ok(Some((self.end_stream, &self.buf)))
    }

    /// Frees the buffer and drops any open block (after a completed block,
    /// so idle connections hold nothing).
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.open = None;
        self.frames = 0;
    }

    /// Drops the block and returns the flood error.
    fn abort(&mut self, what: &'static str) -> Error {
        self.clear();
        Error::conn(Reason::ENHANCE_YOUR_CALM, what)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::frame::Scope;

    fn cont(stream: u32, end: bool) -> Head {
        Head {
            len: 0,
            kind: Kind::Continuation,
            flags: if end { flags::END_HEADERS } else { 0 },
            stream,
        }
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> (Reason, Scope) {
        let e = r.unwrap_err();
        (e.reason, e.scope)
    }

    #[test]
    fn new_does_not_allocate() {
        let b = HeaderBlock::new(1 << 20, 10);
        assert_eq!(b.buf.capacity(), 0);
        assert!(!b.is_open());
        assert_eq!(b.stream(), None);
    }

    #[test]
    fn assembles_and_clears() {
        let mut b = HeaderBlock::new(100, 4);
        b.start(3, true, b"ab").unwrap();
        assert!(b.is_open());
        assert_eq!(b.stream(), Some(3));
        assert_eq!(b.push(&cont(3, false), b"cd").unwrap(), None);
        assert_eq!(b.push(&cont(3, false), b"").unwrap(), None);
        assert_eq!(b.push(&cont(3, true), b"ef").unwrap(), Some((true, &b"abcdef"[..])));
        assert!(!b.is_open());
        b.clear();
        assert_eq!(b.buf.capacity(), 0);
        // reusable
        b.start(5, false, b"x").unwrap();
        assert_eq!(b.push(&cont(5, true), b"y").unwrap(), Some((false, &b"xy"[..])));
    }

    #[test]
    fn expecting_rules() {
        let mut b = HeaderBlock::new(100, 4);
        let data = Head {
            len: 0,
            kind: Kind::Data,
            flags: 0,
            stream: 3,
        };
        b.expecting(&data).unwrap();
        assert_eq!(
            code(b.expecting(&cont(3, true))),
            (Reason::PROTOCOL_ERROR, Scope::Connection)
        );
        b.start(3, false, b"").unwrap();
        b.expecting(&cont(3, true)).unwrap();
        assert_eq!(code(b.expecting(&data)), (Reason::PROTOCOL_ERROR, Scope::Connection));
        assert_eq!(
            code(b.expecting(&cont(5, true))),
            (Reason::PROTOCOL_ERROR, Scope::Connection)
        );
        let ping = Head {
            len: 8,
            kind: Kind::Ping,
            flags: 0,
            stream: 0,
        };
        assert_eq!(code(b.expecting(&ping)), (Reason::PROTOCOL_ERROR, Scope::Connection));
    }

    #[test]
    fn interleaved_stream_is_protocol_error() {
        let mut b = HeaderBlock::new(100, 4);
        b.start(3, false, b"ab").unwrap();
        assert_eq!(
            code(b.push(&cont(5, true), b"cd")),
            (Reason::PROTOCOL_ERROR, Scope::Connection)
        );
        assert!(!b.is_open());
    }

    #[test]
    fn interleaved_frame_type_is_protocol_error() {
        let mut b = HeaderBlock::new(100, 4);
        b.start(3, false, b"ab").unwrap();
        let headers = Head {
            len: 0,
            kind: Kind::Headers,
            flags: flags::END_HEADERS,
            stream: 3,
        };
        assert_eq!(code(b.push(&headers, b"")), (Reason::PROTOCOL_ERROR, Scope::Connection));
    }

    #[test]
    fn push_without_block_is_protocol_error() {
        let mut b = HeaderBlock::new(100, 4);
        assert_eq!(
            code(b.push(&cont(1, true), b"")),
            (Reason::PROTOCOL_ERROR, Scope::Connection)
        );
    }

    #[test]
    fn start_while_open_or_on_stream_zero() {
        let mut b = HeaderBlock::new(100, 4);
        assert_eq!(
            code(b.start(0, false, b"")),
            (Reason::PROTOCOL_ERROR, Scope::Connection)
        );
        b.start(1, false, b"").unwrap();
        assert_eq!(
            code(b.start(3, false, b"")),
            (Reason::PROTOCOL_ERROR, Scope::Connection)
        );
    }

    #[test]
    fn too_many_frames() {
        let mut b = HeaderBlock::new(1000, 3);
        b.start(1, false, b"").unwrap();
        for _ in 0..3 {
            assert_eq!(b.push(&cont(1, false), b"").unwrap(), None);
        }
        assert_eq!(
            code(b.push(&cont(1, false), b"")),
            (Reason::ENHANCE_YOUR_CALM, Scope::Connection)
        );
        assert!(!b.is_open());
        assert_eq!(b.buf.capacity(), 0);
    }

    #[test]
    fn max_frames_allows_exactly_the_limit() {
        let mut b = HeaderBlock::new(1000, 2);
        b.start(1, false, b"a").unwrap();
        assert_eq!(b.push(&cont(1, false), b"b").unwrap(), None);
        assert_eq!(b.push(&cont(1, true), b"c").unwrap(), Some((false, &b"abc"[..])));
    }

    #[test]
    fn too_many_bytes() {
        let mut b = HeaderBlock::new(10, 100);
        assert_eq!(
            code(b.start(1, false, &[0; 11])),
            (Reason::ENHANCE_YOUR_CALM, Scope::Connection)
        );
        b.start(1, false, &[0; 6]).unwrap();
        assert_eq!(b.push(&cont(1, false), &[0; 4]).unwrap(), None);
        assert_eq!(
            code(b.push(&cont(1, true), &[0; 1])),
            (Reason::ENHANCE_YOUR_CALM, Scope::Connection)
        );
        assert!(!b.is_open());
    }

    #[test]
    fn exactly_max_block_is_accepted() {
        let mut b = HeaderBlock::new(10, 100);
        b.start(1, true, &[1; 6]).unwrap();
        assert_eq!(b.push(&cont(1, true), &[2; 4]).unwrap().unwrap().1.len(), 10);
    }
}
