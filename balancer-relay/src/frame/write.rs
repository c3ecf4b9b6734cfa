//! Frame writers: each appends one complete frame (or, for header blocks,
//! a HEADERS + CONTINUATION sequence) to a `BytesMut`. SETTINGS writers are in
//! `settings.rs`.

use bytes::{BufMut, BytesMut};

use super::{
    flags, Head, Kind, Reason, DEFAULT_MAX_FRAME_SIZE, HEADER_LEN, MAX_MAX_FRAME_SIZE, MAX_WINDOW, STREAM_ID_MASK,
};

/// Appends a PING frame (with ACK when `ack`).
pub fn put_ping(dst: &mut BytesMut, ack: bool, data: [u8; 8]) {
    let flags = if ack { flags::ACK } else { 0 };
    dst.reserve(HEADER_LEN + 8);
    Head {
        len: 8,
        kind: Kind::Ping,
        flags,
        stream: 0,
    }
    .write(dst);
    dst.put_slice(&data);
}

/// Appends a WINDOW_UPDATE frame (`stream` 0 for the connection window).
/// `increment` must be in `1..=MAX_WINDOW`.
pub fn put_window_update(dst: &mut BytesMut, stream: u32, increment: u32) {
    debug_assert!(
        (1..=MAX_WINDOW).contains(&increment),
        "bad WINDOW_UPDATE increment {increment}"
    );
    dst.reserve(HEADER_LEN + 4);
    Head {
        len: 4,
        kind: Kind::WindowUpdate,
        flags: 0,
        stream,
    }
    .write(dst);
    dst.put_u32(increment & MAX_WINDOW);
}

/// Appends a RST_STREAM frame.
pub fn put_rst_stream(dst: &mut BytesMut, stream: u32, reason: Reason) {
    dst.reserve(HEADER_LEN + 4);
    Head {
        len: 4,
        kind: Kind::RstStream,
        flags: 0,
        stream,
    }
    .write(dst);
    dst.put_u32(reason.0);
}

/// Appends a GOAWAY frame. `debug` is cut to fit the smallest maximum frame
/// size any peer may have (16384 bytes of payload).
pub fn put_goaway(dst: &mut BytesMut, last_stream: u32, reason: Reason, debug: &[u8]) {
    let debug = &debug[..debug.len().min(DEFAULT_MAX_FRAME_SIZE as usize - 8)];
    let len = 8 + debug.len();
    dst.reserve(HEADER_LEN + len);
    Head {
        len: len as u32,
        kind: Kind::GoAway,
        flags: 0,
        stream: 0,
    }
    .write(dst);
    dst.put_u32(last_stream & STREAM_ID_MASK);
    dst.put_u32(reason.0);
    dst.put_slice(debug);
}

/// DATA frame header only (the caller appends `len` payload bytes).
pub fn put_data_head(dst: &mut BytesMut, stream: u32, len: u32, end_stream: bool) {
    let flags = if end_stream { flags::END_STREAM } else { 0 };
    Head {
        len,
        kind: Kind::Data,
        flags,
        stream,
    }
    .write(dst);
}

/// A complete header block as HEADERS + as many CONTINUATION frames as
/// `max_frame_size` needs (END_HEADERS on the last; END_STREAM on the
/// HEADERS frame when `end_stream`). An empty block is one empty HEADERS.
pub fn put_headers(dst: &mut BytesMut, stream: u32, block: &[u8], end_stream: bool, max_frame_size: u32) {
    let max = clamp(max_frame_size);
    let frames = frame_count(block.len(), max);
    dst.reserve(block.len() + frames * HEADER_LEN);
    for i in 0..frames {
        let chunk = &block[i * max..block.len().min((i + 1) * max)];
        block_head(i, frames, chunk.len(), stream, end_stream).write(dst);
        dst.put_slice(chunk);
    }
}

/// Same as [`put_headers`], but the header block was already encoded in
/// place: `dst` ends with a 9-byte placeholder at `head_at` followed by the
/// block. Fixes up the header, and when the block exceeds `max_frame_size`
/// splits it into CONTINUATIONs by moving bytes towards the end (the buffer
/// grows by 9 bytes per extra frame).
///
/// # Panics
/// When `dst` is shorter than `head_at + HEADER_LEN`.
pub fn finish_headers(dst: &mut BytesMut, head_at: usize, stream: u32, end_stream: bool, max_frame_size: u32) {
    let block_at = head_at + HEADER_LEN;
    assert!(
        dst.len() >= block_at,
        "finish_headers: no header placeholder at {head_at}"
    );
    let max = clamp(max_frame_size);
    let len = dst.len() - block_at;
    let frames = frame_count(len, max);
    dst.resize(dst.len() + (frames - 1) * HEADER_LEN, 0);
    // Last frame first: every chunk moves 9 bytes per frame before it, towards
    // the end, so moving from the back never overwrites unmoved bytes.
    for i in (0..frames).rev() {
        let from = block_at + i * max;
        let n = max.min(len - i * max);
        let at = head_at + i * (HEADER_LEN + max);
        dst.copy_within(from..from + n, at + HEADER_LEN);
        let mut raw = [0; HEADER_LEN];
        block_head(i, frames, n, stream, end_stream).write_to(&mut raw);
        dst[at..at + HEADER_LEN].copy_from_slice(&raw);
    }
}

/// The header of frame `i` of `frames` carrying a header block.
fn block_head(i: usize, frames: usize, len: usize, stream: u32, end_stream: bool) -> Head {
    let (kind, mut flags) = match i {
        0 if end_stream => (Kind::Headers, flags::END_STREAM),
        0 => (Kind::Headers, 0),
        _ => (Kind::Continuation, 0),
    };
    if i + 1 == frames {
        flags |= flags::END_HEADERS;
    }
    Head {
        len: len as u32,
        kind,
        flags,
        stream,
    }
}

/// Frames needed for a block of `len` bytes (at least one, even when empty).
fn frame_count(len: usize, max: usize) -> usize {
    len.div_ceil(max).max(1)
}

/// A frame size usable for splitting: at least 1, at most 2^24 - 1.
fn clamp(max_frame_size: u32) -> usize {
    max_frame_size.clamp(1, MAX_MAX_FRAME_SIZE) as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ping_by_hand() {
        let mut dst = BytesMut::new();
        put_ping(&mut dst, false, *b"abcdefgh");
        put_ping(&mut dst, true, [0; 8]);
        #[rustfmt::skip]
        let want = [
            0, 0, 8, 0x6, 0, 0, 0, 0, 0, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h',
            0, 0, 8, 0x6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&dst[..], &want);
    }

    #[test]
    fn window_update_by_hand() {
        let mut dst = BytesMut::new();
        put_window_update(&mut dst, 3, MAX_WINDOW);
        assert_eq!(&dst[..], &[0, 0, 4, 0x8, 0, 0, 0, 0, 3, 0x7f, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn rst_stream_by_hand() {
        let mut dst = BytesMut::new();
        put_rst_stream(&mut dst, 0x101, Reason::REFUSED_STREAM);
        assert_eq!(&dst[..], &[0, 0, 4, 0x3, 0, 0, 0, 1, 1, 0, 0, 0, 7]);
    }

    #[test]
    fn goaway_by_hand() {
        let mut dst = BytesMut::new();
        put_goaway(&mut dst, 5, Reason::ENHANCE_YOUR_CALM, b"x");
        assert_eq!(&dst[..], &[0, 0, 9, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0xb, b'x']);
    }

    #[test]
    fn goaway_debug_is_cut() {
        let mut dst = BytesMut::new();
        put_goaway(&mut dst, 1, Reason::NO_ERROR, &[7; 20_000]);
        assert_eq!(dst.len(), HEADER_LEN + 16_384);
        assert_eq!(&dst[..3], &[0, 0x40, 0]);
    }

    #[test]
    fn data_head_by_hand() {
        let mut dst = BytesMut::new();
        put_data_head(&mut dst, 1, 0x4000, true);
        put_data_head(&mut dst, 3, 0, false);
        assert_eq!(&dst[..], &[0, 0x40, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn headers_small_block_by_hand() {
        let mut dst = BytesMut::new();
        put_headers(&mut dst, 1, &[0x82, 0x86], true, 16_384);
        assert_eq!(&dst[..], &[0, 0, 2, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x86]);
    }

    #[test]
    fn headers_empty_block() {
        let mut dst = BytesMut::new();
        put_headers(&mut dst, 3, &[], false, 16_384);
        assert_eq!(&dst[..], &[0, 0, 0, 0x1, 0x4, 0, 0, 0, 3]);
        let mut dst = BytesMut::from(&[9u8; 9][..]);
        finish_headers(&mut dst, 0, 3, true, 16_384);
        assert_eq!(&dst[..], &[0, 0, 0, 0x1, 0x5, 0, 0, 0, 3]);
    }

    #[test]
    fn headers_split_by_hand() {
        // 5 bytes at max frame size 2: HEADERS(2) CONTINUATION(2) CONTINUATION(1).
        #[rustfmt::skip]
        let want = [
            0, 0, 2, 0x1, 0x1, 0, 0, 0, 7, 1, 2,
            0, 0, 2, 0x9, 0x0, 0, 0, 0, 7, 3, 4,
            0, 0, 1, 0x9, 0x4, 0, 0, 0, 7, 5,
        ];
        let mut dst = BytesMut::new();
        put_headers(&mut dst, 7, &[1, 2, 3, 4, 5], true, 2);
        assert_eq!(&dst[..], &want);

        let mut dst = BytesMut::from(&b"prefix"[..]);
        dst.put_slice(&[0xee; HEADER_LEN]);
        dst.put_slice(&[1, 2, 3, 4, 5]);
        finish_headers(&mut dst, 6, 7, true, 2);
        assert_eq!(&dst[..6], b"prefix");
        assert_eq!(&dst[6..], &want);
    }

    #[test]
    fn headers_split_exact_multiple() {
        // 4 bytes at max 2: exactly two frames, no empty trailing CONTINUATION.
        #[rustfmt::skip]
        let want = [
            0, 0, 2, 0x1, 0x0, 0, 0, 0, 1, 1, 2,
            0, 0, 2, 0x9, 0x4, 0, 0, 0, 1, 3, 4,
        ];
        let mut dst = BytesMut::new();
        put_headers(&mut dst, 1, &[1, 2, 3, 4], false, 2);
        assert_eq!(&dst[..], &want);
        let mut dst = BytesMut::from(&[0u8; HEADER_LEN][..]);
        dst.put_slice(&[1, 2, 3, 4]);
        finish_headers(&mut dst, 0, 1, false, 2);
        assert_eq!(&dst[..], &want);
    }

    #[test]
    fn finish_headers_matches_put_headers() {
        let block: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for max in [0, 1, 2, 9, 10, 100, 999, 1000, 1001, 16_384] {
            for len in [0, 1, 9, 10, 11, 500, 1000] {
                let mut want = BytesMut::new();
                put_headers(&mut want, 5, &block[..len], len % 2 == 0, max);
                let mut got = BytesMut::from(&b"xy"[..]);
                got.put_slice(&[0; HEADER_LEN]);
                got.put_slice(&block[..len]);
                finish_headers(&mut got, 2, 5, len % 2 == 0, max);
                assert_eq!(&got[2..], &want[..], "max {max} len {len}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "no header placeholder")]
    fn finish_headers_without_placeholder() {
        let mut dst = BytesMut::from(&[0u8; 4][..]);
        finish_headers(&mut dst, 0, 1, false, 16_384);
    }
}
