//! Payload parsers for the frame types (RFC 9113 §6), except SETTINGS
//! (see `settings.rs`). Each takes the frame's [`Head`] and exactly
//! `head.len` payload bytes, validates them, and returns borrowed results:
//! nothing here allocates.

use std::ops::Range;

use super::{flags, Error, Head, Reason, STREAM_ID_MASK};

/// Length of the HEADERS / PRIORITY priority block: stream dependency (with
/// the exclusive bit) and weight.
const PRIORITY_LEN: usize = 5;

/// A parsed HEADERS frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadersFrame {
    /// The header block fragment, as a range of the payload (padding and
    /// priority block removed).
    pub fragment: Range<usize>,
    pub end_stream: bool,
    pub end_headers: bool,
}

/// A parsed GOAWAY frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoAway<'a> {
    /// The last stream the sender may have processed (reserved bit dropped).
    pub last_stream: u32,
    pub reason: Reason,
    /// Opaque debug data.
    pub debug: &'a [u8],
}

/// DATA (§6.1): the range of the data inside `payload` after padding
/// removal. Flow control counts the whole `head.len`, padding included.
pub fn data(head: &Head, payload: &[u8]) -> Result<Range<usize>, Error> {
    on_stream(head, "DATA on stream 0")?;
    unpad(head, payload, 0)
}

/// HEADERS (§6.2): the header block fragment, with padding and the priority
/// block stripped. The priority itself is deprecated (§5.3.2) and dropped,
/// but a stream depending on itself is still a stream error.
pub fn headers(head: &Head, payload: &[u8]) -> Result<HeadersFrame, Error> {
    on_stream(head, "HEADERS on stream 0")?;
    let has_priority = head.has(flags::PRIORITY);
    let fixed = if has_priority { PRIORITY_LEN } else { 0 };
    let body = unpad(head, payload, fixed)?;
    if has_priority {
        check_dependency(head, &payload[body.start - PRIORITY_LEN..body.start])?;
    }
    Ok(HeadersFrame {
        fragment: body,
        end_stream: head.has(flags::END_STREAM),
        end_headers: head.has(flags::END_HEADERS),
    })
}

/// PRIORITY (§6.3): validated and otherwise ignored.
pub fn priority(head: &Head, payload: &[u8]) -> Result<(), Error> {
    on_stream(head, "PRIORITY on stream 0")?;
    if payload.len() != PRIORITY_LEN {
        return Err(Error::stream(
            head.stream,
            Reason::FRAME_SIZE_ERROR,
            "PRIORITY length is not 5",
        ));
    }
    check_dependency(head, payload)
}

/// RST_STREAM (§6.4): the error code.
pub fn rst_stream(head: &Head, payload: &[u8]) -> Result<Reason, Error> {
    on_stream(head, "RST_STREAM on stream 0")?;
    if payload.len() != 4 {
        return Err(Error::conn(Reason::FRAME_SIZE_ERROR, "RST_STREAM length is not 4"));
    }
    Ok(Reason(be32(payload, 0)))
}

/// WINDOW_UPDATE (§6.9): the window size increment (reserved bit dropped).
pub fn window_update(head: &Head, payload: &[u8]) -> Result<u32, Error> {
    if payload.len() != 4 {
        return Err(Error::conn(Reason::FRAME_SIZE_ERROR, "WINDOW_UPDATE length is not 4"));
    }
    let increment = be32(payload, 0) & STREAM_ID_MASK;
    if increment == 0 {
        const WHAT: &str = "WINDOW_UPDATE with a zero increment";
        return Err(match head.stream {
            0 => Error::conn(Reason::PROTOCOL_ERROR, WHAT),
            stream => Error::stream(stream, Reason::PROTOCOL_ERROR, WHAT),
        });
    }
    Ok(increment)
}

/// PING (§6.7): the opaque data (the caller echoes it unless ACK is set).
pub fn ping(head: &Head, payload: &[u8]) -> Result<[u8; 8], Error> {
    on_connection(head, "PING on a stream")?;
    payload
        .try_into()
        .map_err(|_| Error::conn(Reason::FRAME_SIZE_ERROR, "PING length is not 8"))
}

/// GOAWAY (§6.8).
pub fn goaway<'a>(head: &Head, payload: &'a [u8]) -> Result<GoAway<'a>, Error> {
    on_connection(head, "GOAWAY on a stream")?;
    if payload.len() < 8 {
        return Err(Error::conn(Reason::FRAME_SIZE_ERROR, "GOAWAY shorter than 8"));
    }
    Ok(GoAway {
        last_stream: be32(payload, 0) & STREAM_ID_MASK,
        reason: Reason(be32(payload, 4)),
        debug: &payload[8..],
    })
}

/// CONTINUATION (§6.10): only the stream id is checked here; the whole
/// payload is a header block fragment, and the sequencing rules are in
/// [`super::HeaderBlock`].
pub fn continuation(head: &Head, _payload: &[u8]) -> Result<(), Error> {
    on_stream(head, "CONTINUATION on stream 0")
}

/// A frame type that must be on a stream, on stream 0: PROTOCOL_ERROR.
pub(super) fn on_stream(head: &Head, what: &'static str) -> Result<(), Error> {
    match head.stream {
        0 => Err(Error::conn(Reason::PROTOCOL_ERROR, what)),
        _ => Ok(()),
    }
}

/// A connection-level frame type on a stream: PROTOCOL_ERROR.
pub(super) fn on_connection(head: &Head, what: &'static str) -> Result<(), Error> {
    match head.stream {
        0 => Ok(()),
        _ => Err(Error::conn(Reason::PROTOCOL_ERROR, what)),
    }
}

/// Removes the pad length byte (when PADDED), `fixed` bytes of fixed fields
/// after it, and the trailing padding; returns what is left as a range of
/// `payload`. A payload too short for its fixed fields is a FRAME_SIZE_ERROR;
/// padding longer than what remains is a PROTOCOL_ERROR (§6.1, §6.2).
fn unpad(head: &Head, payload: &[u8], fixed: usize) -> Result<Range<usize>, Error> {
    let padded = head.has(flags::PADDED);
    let start = usize::from(padded) + fixed;
    if payload.len() < start {
        return Err(Error::conn(
            Reason::FRAME_SIZE_ERROR,
            "frame too short for its fixed fields",
        ));
    }
    let pad = if padded { usize::from(payload[0]) } else { 0 };
    if pad > payload.len() - start {
        return Err(Error::conn(Reason::PROTOCOL_ERROR, "padding exceeds the frame payload"));
    }
    Ok(start..payload.len() - pad)
}

/// A 5-byte priority block: a stream cannot depend on itself (§5.3.1).
fn check_dependency(head: &Head, block: &[u8]) -> Result<(), Error> {
    if be32(block, 0) & STREAM_ID_MASK == head.stream {
        return Err(Error::stream(
            head.stream,
            Reason::PROTOCOL_ERROR,
            "stream depends on itself",
        ));
    }
    Ok(())
}

/// The big-endian u32 at `at` (the caller has checked the length).
pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::frame::{Kind, Scope, HEADER_LEN};

    /// Splits a hand-written frame into its parsed header and payload.
    fn split(frame: &[u8]) -> (Head, &[u8]) {
        let (raw, payload) = frame.split_first_chunk::<HEADER_LEN>().unwrap();
        let head = Head::parse(raw);
        assert_eq!(head.len as usize, payload.len(), "test frame length mismatch");
        (head, payload)
    }

    fn conn(reason: Reason) -> (Reason, Scope) {
        (reason, Scope::Connection)
    }

    fn on(stream: u32, reason: Reason) -> (Reason, Scope) {
        (reason, Scope::Stream(stream))
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> (Reason, Scope) {
        let e = r.unwrap_err();
        (e.reason, e.scope)
    }

    // ---- DATA ----

    #[test]
    fn data_plain() {
        let f = [0, 0, 3, 0x0, 0x1, 0, 0, 0, 1, b'a', b'b', b'c'];
        let (h, p) = split(&f);
        assert_eq!(h.kind, Kind::Data);
        assert!(h.has(flags::END_STREAM));
        assert_eq!(data(&h, p).unwrap(), 0..3);
    }

    #[test]
    fn data_empty() {
        let f = [0, 0, 0, 0x0, 0x1, 0, 0, 0, 1];
        let (h, p) = split(&f);
        assert_eq!(data(&h, p).unwrap(), 0..0);
    }

    #[test]
    fn data_padded() {
        // pad length 2, "hi", two zero pad bytes.
        let f = [0, 0, 5, 0x0, 0x8, 0, 0, 0, 3, 2, b'h', b'i', 0, 0];
        let (h, p) = split(&f);
        let r = data(&h, p).unwrap();
        assert_eq!(&p[r], b"hi");
    }

    #[test]
    fn data_padded_all_padding() {
        // pad length 3 in a 4-byte payload: no data, valid.
        let f = [0, 0, 4, 0x0, 0x8, 0, 0, 0, 3, 3, 0, 0, 0];
        let (h, p) = split(&f);
        assert_eq!(data(&h, p).unwrap(), 1..1);
        // pad length 0 is valid too.
        let f = [0, 0, 2, 0x0, 0x8, 0, 0, 0, 3, 0, b'x'];
        let (h, p) = split(&f);
        assert_eq!(data(&h, p).unwrap(), 1..2);
    }

    #[test]
    fn data_pad_length_too_big() {
        // pad length 4 == payload length: PROTOCOL_ERROR.
        let f = [0, 0, 4, 0x0, 0x8, 0, 0, 0, 3, 4, 0, 0, 0];
        let (h, p) = split(&f);
        assert_eq!(code(data(&h, p)), conn(Reason::PROTOCOL_ERROR));
        let f = [0, 0, 1, 0x0, 0x8, 0, 0, 0, 3, 0xff];
        let (h, p) = split(&f);
        assert_eq!(code(data(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn data_padded_without_pad_length() {
        let f = [0, 0, 0, 0x0, 0x8, 0, 0, 0, 3];
        let (h, p) = split(&f);
        assert_eq!(code(data(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
    }

    #[test]
    fn data_on_stream_zero() {
        let f = [0, 0, 1, 0x0, 0x0, 0, 0, 0, 0, b'x'];
        let (h, p) = split(&f);
        assert_eq!(code(data(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    // ---- HEADERS ----

    #[test]
    fn headers_plain() {
        let f = [0, 0, 2, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x86];
        let (h, p) = split(&f);
        let hf = headers(&h, p).unwrap();
        assert_eq!(
            hf,
            HeadersFrame {
                fragment: 0..2,
                end_stream: true,
                end_headers: true
            }
        );
    }

    #[test]
    fn headers_without_end_flags() {
        let f = [0, 0, 1, 0x1, 0x0, 0, 0, 0, 5, 0x82];
        let (h, p) = split(&f);
        let hf = headers(&h, p).unwrap();
        assert_eq!(
            hf,
            HeadersFrame {
                fragment: 0..1,
                end_stream: false,
                end_headers: false
            }
        );
    }

    #[test]
    fn headers_padded() {
        // pad length 3, fragment 0x82 0x86, 3 pad bytes.
        let f = [0, 0, 6, 0x1, 0x4 | 0x8, 0, 0, 0, 1, 3, 0x82, 0x86, 0, 0, 0];
        let (h, p) = split(&f);
        let hf = headers(&h, p).unwrap();
        assert_eq!(&p[hf.fragment], &[0x82, 0x86]);
        assert!(hf.end_headers && !hf.end_stream);
    }

    #[test]
    fn headers_priority() {
        // exclusive dependency on stream 3, weight 15, fragment 0x82.
        let f = [0, 0, 6, 0x1, 0x4 | 0x20, 0, 0, 0, 5, 0x80, 0, 0, 3, 15, 0x82];
        let (h, p) = split(&f);
        let hf = headers(&h, p).unwrap();
        assert_eq!(hf.fragment, 5..6);
    }

    #[test]
    fn headers_padded_and_priority() {
        // pad length 2, dependency 0 weight 255, fragment 0x82 0x84, 2 pad bytes.
        let f = [
            0,
            0,
            10,
            0x1,
            0x1 | 0x4 | 0x8 | 0x20,
            0,
            0,
            0,
            7,
            2,
            0,
            0,
            0,
            0,
            255,
            0x82,
            0x84,
            0,
            0,
        ];
        let (h, p) = split(&f);
        let hf = headers(&h, p).unwrap();
        assert_eq!(&p[hf.fragment], &[0x82, 0x84]);
        assert!(hf.end_headers && hf.end_stream);
    }

    #[test]
    fn headers_padded_and_priority_empty_fragment() {
        // pad length 1 fills what is left after the priority block.
        let f = [0, 0, 7, 0x1, 0x4 | 0x8 | 0x20, 0, 0, 0, 7, 1, 0, 0, 0, 1, 16, 0];
        let (h, p) = split(&f);
        assert_eq!(headers(&h, p).unwrap().fragment, 6..6);
    }

    #[test]
    fn headers_padding_too_long() {
        // 6 bytes: pad length byte + priority block leaves 0 for 1 pad byte.
        let f = [0, 0, 6, 0x1, 0x4 | 0x8 | 0x20, 0, 0, 0, 7, 1, 0, 0, 0, 1, 16];
        let (h, p) = split(&f);
        assert_eq!(code(headers(&h, p)), conn(Reason::PROTOCOL_ERROR));
        let f = [0, 0, 2, 0x1, 0x4 | 0x8, 0, 0, 0, 7, 2, 0x82];
        let (h, p) = split(&f);
        assert_eq!(code(headers(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn headers_too_short_for_fixed_fields() {
        // PRIORITY set but only 4 bytes.
        let f = [0, 0, 4, 0x1, 0x4 | 0x20, 0, 0, 0, 7, 0, 0, 0, 1];
        let (h, p) = split(&f);
        assert_eq!(code(headers(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
        // PADDED | PRIORITY with 5 bytes.
        let f = [0, 0, 5, 0x1, 0x4 | 0x8 | 0x20, 0, 0, 0, 7, 0, 0, 0, 0, 1];
        let (h, p) = split(&f);
        assert_eq!(code(headers(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
        // PADDED with an empty payload.
        let f = [0, 0, 0, 0x1, 0x4 | 0x8, 0, 0, 0, 7];
        let (h, p) = split(&f);
        assert_eq!(code(headers(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
    }

    #[test]
    fn headers_on_stream_zero() {
        let f = [0, 0, 1, 0x1, 0x4, 0, 0, 0, 0, 0x82];
        let (h, p) = split(&f);
        assert_eq!(code(headers(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn headers_self_dependency() {
        // stream 9 depends (exclusively: reserved bit ignored) on stream 9.
        let f = [0, 0, 6, 0x1, 0x4 | 0x20, 0, 0, 0, 9, 0x80, 0, 0, 9, 0, 0x82];
        let (h, p) = split(&f);
        assert_eq!(code(headers(&h, p)), on(9, Reason::PROTOCOL_ERROR));
    }

    // ---- PRIORITY ----

    #[test]
    fn priority_valid() {
        let f = [0, 0, 5, 0x2, 0, 0, 0, 0, 3, 0, 0, 0, 1, 200];
        let (h, p) = split(&f);
        assert_eq!(h.kind, Kind::Priority);
        priority(&h, p).unwrap();
    }

    #[test]
    fn priority_wrong_length() {
        let f = [0, 0, 4, 0x2, 0, 0, 0, 0, 3, 0, 0, 0, 1];
        let (h, p) = split(&f);
        assert_eq!(code(priority(&h, p)), on(3, Reason::FRAME_SIZE_ERROR));
        let f = [0, 0, 6, 0x2, 0, 0, 0, 0, 3, 0, 0, 0, 1, 200, 0];
        let (h, p) = split(&f);
        assert_eq!(code(priority(&h, p)), on(3, Reason::FRAME_SIZE_ERROR));
    }

    #[test]
    fn priority_on_stream_zero() {
        let f = [0, 0, 5, 0x2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 200];
        let (h, p) = split(&f);
        assert_eq!(code(priority(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn priority_self_dependency() {
        let f = [0, 0, 5, 0x2, 0, 0, 0, 0, 3, 0, 0, 0, 3, 200];
        let (h, p) = split(&f);
        assert_eq!(code(priority(&h, p)), on(3, Reason::PROTOCOL_ERROR));
    }

    // ---- RST_STREAM ----

    #[test]
    fn rst_stream_valid() {
        let f = [0, 0, 4, 0x3, 0, 0, 0, 0, 1, 0, 0, 0, 8];
        let (h, p) = split(&f);
        assert_eq!(rst_stream(&h, p).unwrap(), Reason::CANCEL);
        let f = [0, 0, 4, 0x3, 0, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        let (h, p) = split(&f);
        assert_eq!(rst_stream(&h, p).unwrap(), Reason(0xdead_beef));
    }

    #[test]
    fn rst_stream_wrong_length() {
        let f = [0, 0, 3, 0x3, 0, 0, 0, 0, 1, 0, 0, 8];
        let (h, p) = split(&f);
        assert_eq!(code(rst_stream(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
        let f = [0, 0, 5, 0x3, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0];
        let (h, p) = split(&f);
        assert_eq!(code(rst_stream(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
    }

    #[test]
    fn rst_stream_on_stream_zero() {
        let f = [0, 0, 4, 0x3, 0, 0, 0, 0, 0, 0, 0, 0, 8];
        let (h, p) = split(&f);
        assert_eq!(code(rst_stream(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    // ---- WINDOW_UPDATE ----

    #[test]
    fn window_update_valid() {
        let f = [0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0x40, 0];
        let (h, p) = split(&f);
        assert_eq!(window_update(&h, p).unwrap(), 0x4000);
        // reserved bit ignored, maximum increment.
        let f = [0, 0, 4, 0x8, 0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff];
        let (h, p) = split(&f);
        assert_eq!(window_update(&h, p).unwrap(), crate::frame::MAX_WINDOW);
    }

    #[test]
    fn window_update_wrong_length() {
        let f = [0, 0, 3, 0x8, 0, 0, 0, 0, 5, 0, 0, 1];
        let (h, p) = split(&f);
        assert_eq!(code(window_update(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
    }

    #[test]
    fn window_update_zero_increment() {
        let f = [0, 0, 4, 0x8, 0, 0, 0, 0, 5, 0, 0, 0, 0];
        let (h, p) = split(&f);
        assert_eq!(code(window_update(&h, p)), on(5, Reason::PROTOCOL_ERROR));
        // only the reserved bit set: still zero.
        let f = [0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0x80, 0, 0, 0];
        let (h, p) = split(&f);
        assert_eq!(code(window_update(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    // ---- PING ----

    #[test]
    fn ping_valid() {
        let f = [0, 0, 8, 0x6, 0x1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let (h, p) = split(&f);
        assert!(h.has(flags::ACK));
        assert_eq!(ping(&h, p).unwrap(), [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn ping_wrong_length() {
        let f = [0, 0, 7, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7];
        let (h, p) = split(&f);
        assert_eq!(code(ping(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
        let f = [0, 0, 9, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let (h, p) = split(&f);
        assert_eq!(code(ping(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
    }

    #[test]
    fn ping_on_stream() {
        let f = [0, 0, 8, 0x6, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
        let (h, p) = split(&f);
        assert_eq!(code(ping(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    // ---- GOAWAY ----

    #[test]
    fn goaway_valid() {
        let f = [0, 0, 10, 0x7, 0, 0, 0, 0, 0, 0x80, 0, 0, 7, 0, 0, 0, 0xb, b'h', b'i'];
        let (h, p) = split(&f);
        let g = goaway(&h, p).unwrap();
        assert_eq!(
            g,
            GoAway {
                last_stream: 7,
                reason: Reason::ENHANCE_YOUR_CALM,
                debug: b"hi"
            }
        );
        let f = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (h, p) = split(&f);
        let g = goaway(&h, p).unwrap();
        assert_eq!(
            g,
            GoAway {
                last_stream: 0,
                reason: Reason::NO_ERROR,
                debug: b""
            }
        );
    }

    #[test]
    fn goaway_too_short() {
        let f = [0, 0, 7, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0];
        let (h, p) = split(&f);
        assert_eq!(code(goaway(&h, p)), conn(Reason::FRAME_SIZE_ERROR));
    }

    #[test]
    fn goaway_on_stream() {
        let f = [0, 0, 8, 0x7, 0, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0];
        let (h, p) = split(&f);
        assert_eq!(code(goaway(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }

    // ---- CONTINUATION ----

    #[test]
    fn continuation_checks_stream() {
        let f = [0, 0, 1, 0x9, 0x4, 0, 0, 0, 1, 0x82];
        let (h, p) = split(&f);
        continuation(&h, p).unwrap();
        let f = [0, 0, 1, 0x9, 0x4, 0, 0, 0, 0, 0x82];
        let (h, p) = split(&f);
        assert_eq!(code(continuation(&h, p)), conn(Reason::PROTOCOL_ERROR));
    }
}
