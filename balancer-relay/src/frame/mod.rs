//! The HTTP/2 frame codec (RFC 9113 §4 and §6), sans-IO.
//!
//! Reading is two steps: [`next`] finds one complete frame at the start of a
//! buffer and returns its [`Head`]; the caller then hands the `head.len`
//! payload bytes that follow the header to the parser for that frame type
//! ([`data`], [`headers`], [`settings`], ...). Parsers never allocate: they
//! return ranges into, or slices of, the payload they were given. Header
//! blocks split over HEADERS + CONTINUATION frames are assembled by
//! [`HeaderBlock`], which enforces size and frame-count limits.
//!
//! Writing appends complete frames to a [`bytes::BytesMut`] (`put_*`).
//!
//! Every error carries the [`Reason`] and the [`Scope`] RFC 9113 gives it, so
//! the caller knows whether to reset one stream or GOAWAY the connection.

mod block;
mod head;
mod parse;
mod reason;
mod settings;
mod write;

#[cfg(test)]
mod tests;

pub use block::HeaderBlock;
pub use head::{Head, Kind};
pub use parse::{continuation, data, goaway, headers, ping, priority, rst_stream, window_update, GoAway, HeadersFrame};
pub use reason::Reason;
pub use settings::{
    put_settings, put_settings_ack, settings, Settings, SETTINGS_ENABLE_CONNECT_PROTOCOL, SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE, SETTINGS_NO_RFC7540_PRIORITIES,
};
pub use write::{finish_headers, put_data_head, put_goaway, put_headers, put_ping, put_rst_stream, put_window_update};

/// Length of the fixed frame header (RFC 9113 §4.1).
pub const HEADER_LEN: usize = 9;
/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The initial SETTINGS_MAX_FRAME_SIZE, and the smallest value allowed.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE allowed (2^24 - 1).
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Mask for a 31-bit stream identifier (drops the reserved bit).
pub const STREAM_ID_MASK: u32 = (1 << 31) - 1;

/// Frame flags. The same bit means different things on different frame
/// types (`END_STREAM` on DATA/HEADERS is `ACK` on SETTINGS/PING).
pub mod flags {
    /// DATA, HEADERS: the last frame the sender sends on this stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, PUSH_PROMISE, CONTINUATION: the header block ends here.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS, PUSH_PROMISE: a pad length byte and padding are present.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: the 5-byte priority block is present.
    pub const PRIORITY: u8 = 0x20;
}

/// A frame error, with the scope RFC 9113 gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} ({reason})")]
pub struct Error {
    /// The error code to send (in GOAWAY or RST_STREAM).
    pub reason: Reason,
    /// Whether the whole connection or a single stream is in error.
    pub scope: Scope,
    /// A short description for logs.
    pub what: &'static str,
}

/// What an [`Error`] applies to (RFC 9113 §5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A connection error: GOAWAY and close.
    Connection,
    /// A stream error on this stream: RST_STREAM it, the connection lives on.
    Stream(u32),
}

impl Error {
    /// A connection error.
    pub const fn conn(reason: Reason, what: &'static str) -> Error {
        Error {
            reason,
            scope: Scope::Connection,
            what,
        }
    }

    /// A stream error on `stream`.
    pub const fn stream(stream: u32, reason: Reason, what: &'static str) -> Error {
        Error {
            reason,
            scope: Scope::Stream(stream),
            what,
        }
    }
}

/// Looks for one complete frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(head))` when `buf`
/// holds at least `HEADER_LEN + head.len` bytes, and a FRAME_SIZE_ERROR
/// connection error when the frame is longer than `max_frame_size` (the
/// SETTINGS_MAX_FRAME_SIZE we announced). The size check happens as soon as
/// the header is in, so an oversized frame is refused before it is buffered.
pub fn next(buf: &[u8], max_frame_size: u32) -> Result<Option<Head>, Error> {
    let Some(raw) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let head = Head::parse(raw);
    if head.len > max_frame_size {
        return Err(Error::conn(
            Reason::FRAME_SIZE_ERROR,
            "frame larger than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    Ok((buf.len() - HEADER_LEN >= head.len as usize).then_some(head))
}

/// The length of the whole frames at the start of `buf`: what [`next`]
/// can take without waiting for more bytes. A frame longer than
/// `max_frame_size` counts with its header only, so that [`next`] refuses
/// it at once.
pub fn complete(buf: &[u8], max_frame_size: u32) -> usize {
    let mut pos = 0;
    while let Some(raw) = buf[pos..].first_chunk::<HEADER_LEN>() {
        let len = Head::parse(raw).len;
        if len > max_frame_size {
            return pos + HEADER_LEN;
        }
        let end = pos + HEADER_LEN + len as usize;
        if end > buf.len() {
            break;
        }
        pos = end;
    }
    pos
}

/// Checks the client connection preface (RFC 9113 §3.4).
///
/// `Ok(true)` when `buf` starts with the whole [`PREFACE`], `Ok(false)` when
/// `buf` is a (possibly empty) prefix of it, and a PROTOCOL_ERROR connection
/// error when it can no longer become one.
pub fn preface(buf: &[u8]) -> Result<bool, Error> {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        return Err(Error::conn(Reason::PROTOCOL_ERROR, "invalid connection preface"));
    }
    Ok(n == PREFACE.len())
}
