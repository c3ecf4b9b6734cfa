//! SETTINGS frames (RFC 9113 §6.5).

use bytes::{BufMut, BytesMut};

use super::parse::on_connection;
use super::{flags, Error, Head, Kind, Reason, DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE, MAX_WINDOW};

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// RFC 8441 §3 (extended CONNECT).
pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
/// RFC 9218 §2.1. Validated (0 or 1) but not kept in [`Settings`].
pub const SETTINGS_NO_RFC7540_PRIORITIES: u16 = 0x9;

/// Length of one setting: 16-bit identifier, 32-bit value.
const SETTING_LEN: usize = 6;

/// SETTINGS: the values a peer sent, validated. `None` for a setting the
/// frame did not carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub enable_connect_protocol: Option<bool>,
}

/// Parses a SETTINGS frame. `Ok(None)` for an ACK (an ACK with a payload is
/// a FRAME_SIZE_ERROR). Unknown identifiers are ignored; a later value of the
/// same identifier wins. Role-specific rules (a client receiving
/// ENABLE_PUSH = 1) are the caller's.
pub fn settings(head: &Head, payload: &[u8]) -> Result<Option<Settings>, Error> {
    on_connection(head, "SETTINGS on a stream")?;
    if head.has(flags::ACK) {
        return match payload.len() {
            0 => Ok(None),
            _ => Err(Error::conn(Reason::FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")),
        };
    }
    if !payload.len().is_multiple_of(SETTING_LEN) {
        return Err(Error::conn(
            Reason::FRAME_SIZE_ERROR,
            "SETTINGS length is not a multiple of 6",
        ));
    }
    let mut out = Settings::default();
    for raw in payload.chunks_exact(SETTING_LEN) {
        let id = u16::from_be_bytes([raw[0], raw[1]]);
        let value = u32::from_be_bytes([raw[2], raw[3], raw[4], raw[5]]);
        out.apply(id, value)?;
    }
    Ok(Some(out))
}

impl Settings {
    /// Validates one setting and records it.
    fn apply(&mut self, id: u16, value: u32) -> Result<(), Error> {
        match id {
            SETTINGS_HEADER_TABLE_SIZE => self.header_table_size = Some(value),
            SETTINGS_ENABLE_PUSH => self.enable_push = Some(flag(value, "SETTINGS_ENABLE_PUSH is not 0 or 1")?),
            SETTINGS_MAX_CONCURRENT_STREAMS => self.max_concurrent_streams = Some(value),
            SETTINGS_INITIAL_WINDOW_SIZE => self.initial_window_size = Some(window(value)?),
            SETTINGS_MAX_FRAME_SIZE => self.max_frame_size = Some(frame_size(value)?),
            SETTINGS_MAX_HEADER_LIST_SIZE => self.max_header_list_size = Some(value),
            SETTINGS_ENABLE_CONNECT_PROTOCOL => {
                self.enable_connect_protocol = Some(flag(value, "SETTINGS_ENABLE_CONNECT_PROTOCOL is not 0 or 1")?)
            }
            SETTINGS_NO_RFC7540_PRIORITIES => {
                flag(value, "SETTINGS_NO_RFC7540_PRIORITIES is not 0 or 1")?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The settings present, as `(id, value)` pairs for [`put_settings`].
    pub fn to_pairs(&self) -> impl Iterator<Item = (u16, u32)> {
        [
            (SETTINGS_HEADER_TABLE_SIZE, self.header_table_size),
            (SETTINGS_ENABLE_PUSH, self.enable_push.map(u32::from)),
            (SETTINGS_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (SETTINGS_INITIAL_WINDOW_SIZE, self.initial_window_size),
            (SETTINGS_MAX_FRAME_SIZE, self.max_frame_size),
            (SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            (
                SETTINGS_ENABLE_CONNECT_PROTOCOL,
                self.enable_connect_protocol.map(u32::from),
            ),
        ]
        .into_iter()
        .filter_map(|(id, value)| Some((id, value?)))
    }
}

fn flag(value: u32, what: &'static str) -> Result<bool, Error> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::conn(Reason::PROTOCOL_ERROR, what)),
    }
}

fn window(value: u32) -> Result<u32, Error> {
    if value > MAX_WINDOW {
        return Err(Error::conn(
            Reason::FLOW_CONTROL_ERROR,
            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
        ));
    }
    Ok(value)
}

fn frame_size(value: u32) -> Result<u32, Error> {
    if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) {
        return Err(Error::conn(
            Reason::PROTOCOL_ERROR,
            "SETTINGS_MAX_FRAME_SIZE out of range",
        ));
    }
    Ok(value)
}

/// Appends a SETTINGS frame carrying `values` in order.
pub fn put_settings(dst: &mut BytesMut, values: &[(u16, u32)]) {
    let len = values.len() * SETTING_LEN;
    debug_assert!(
        len <= DEFAULT_MAX_FRAME_SIZE as usize,
        "too many settings for one frame"
    );
    dst.reserve(super::HEADER_LEN + len);
    Head {
        len: len as u32,
        kind: Kind::Settings,
        flags: 0,
        stream: 0,
    }
    .write(dst);
    for &(id, value) in values {
        dst.put_u16(id);
        dst.put_u32(value);
    }
}

/// Appends a SETTINGS frame with ACK and no payload.
pub fn put_settings_ack(dst: &mut BytesMut) {
    Head {
        len: 0,
        kind: Kind::Settings,
        flags: flags::ACK,
        stream: 0,
    }
    .write(dst);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::frame::{Scope, HEADER_LEN};

    fn parse(frame: &[u8]) -> Result<Option<Settings>, Error> {
        let (raw, payload) = frame.split_first_chunk::<HEADER_LEN>().unwrap();
        let head = Head::parse(raw);
        assert_eq!(head.len as usize, payload.len());
        settings(&head, payload)
    }

    fn err(frame: &[u8]) -> (Reason, Scope) {
        let e = parse(frame).unwrap_err();
        (e.reason, e.scope)
    }

    #[test]
    fn empty_settings() {
        let f = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
        assert_eq!(parse(&f).unwrap(), Some(Settings::default()));
    }

    #[test]
    fn every_known_setting() {
        #[rustfmt::skip]
        let f = [
            0, 0, 42, 0x4, 0, 0, 0, 0, 0,
            0, 1, 0, 0, 0x10, 0,        // HEADER_TABLE_SIZE 4096
            0, 2, 0, 0, 0, 0,           // ENABLE_PUSH 0
            0, 3, 0, 0, 0, 100,         // MAX_CONCURRENT_STREAMS 100
            0, 4, 0x7f, 0xff, 0xff, 0xff, // INITIAL_WINDOW_SIZE 2^31-1
            0, 5, 0, 0xff, 0xff, 0xff,  // MAX_FRAME_SIZE 2^24-1
            0, 6, 0, 0, 0x40, 0,        // MAX_HEADER_LIST_SIZE 16384
            0, 8, 0, 0, 0, 1,           // ENABLE_CONNECT_PROTOCOL 1
        ];
        let s = parse(&f).unwrap().unwrap();
        assert_eq!(
            s,
            Settings {
                header_table_size: Some(4096),
                enable_push: Some(false),
                max_concurrent_streams: Some(100),
                initial_window_size: Some(MAX_WINDOW),
                max_frame_size: Some(MAX_MAX_FRAME_SIZE),
                max_header_list_size: Some(16_384),
                enable_connect_protocol: Some(true),
            }
        );
    }

    #[test]
    fn unknown_ids_ignored_and_last_wins() {
        #[rustfmt::skip]
        let f = [
            0, 0, 30, 0x4, 0, 0, 0, 0, 0,
            0, 3, 0, 0, 0, 1,           // MAX_CONCURRENT_STREAMS 1
            0xab, 0xcd, 0xff, 0xff, 0xff, 0xff, // unknown
            0, 7, 0xff, 0xff, 0xff, 0xff, // unassigned 7
            0, 9, 0, 0, 0, 1,           // NO_RFC7540_PRIORITIES 1: valid, not kept
            0, 3, 0, 0, 0, 2,           // MAX_CONCURRENT_STREAMS 2 wins
        ];
        let s = parse(&f).unwrap().unwrap();
        assert_eq!(
            s,
            Settings {
                max_concurrent_streams: Some(2),
                ..Settings::default()
            }
        );
    }

    #[test]
    fn ack() {
        let f = [0, 0, 0, 0x4, 0x1, 0, 0, 0, 0];
        assert_eq!(parse(&f).unwrap(), None);
    }

    #[test]
    fn ack_with_payload() {
        let f = [0, 0, 6, 0x4, 0x1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1];
        assert_eq!(err(&f), (Reason::FRAME_SIZE_ERROR, Scope::Connection));
    }

    #[test]
    fn on_a_stream() {
        let f = [0, 0, 0, 0x4, 0, 0, 0, 0, 1];
        assert_eq!(err(&f), (Reason::PROTOCOL_ERROR, Scope::Connection));
        let f = [0, 0, 0, 0x4, 0x1, 0, 0, 0, 1];
        assert_eq!(err(&f), (Reason::PROTOCOL_ERROR, Scope::Connection));
    }

    #[test]
    fn length_not_multiple_of_six() {
        let f = [0, 0, 5, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0];
        assert_eq!(err(&f), (Reason::FRAME_SIZE_ERROR, Scope::Connection));
        let f = [0, 0, 7, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0];
        assert_eq!(err(&f), (Reason::FRAME_SIZE_ERROR, Scope::Connection));
    }

    #[test]
    fn enable_push_above_one() {
        let f = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2];
        assert_eq!(err(&f), (Reason::PROTOCOL_ERROR, Scope::Connection));
        let f = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1];
        assert_eq!(parse(&f).unwrap().unwrap().enable_push, Some(true));
    }

    #[test]
    fn enable_connect_protocol_above_one() {
        let f = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 8, 0, 0, 1, 0];
        assert_eq!(err(&f), (Reason::PROTOCOL_ERROR, Scope::Connection));
    }

    #[test]
    fn no_rfc7540_priorities_above_one() {
        let f = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 2];
        assert_eq!(err(&f), (Reason::PROTOCOL_ERROR, Scope::Connection));
    }

    #[test]
    fn initial_window_size_too_big() {
        let f = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 4, 0x80, 0, 0, 0];
        assert_eq!(err(&f), (Reason::FLOW_CONTROL_ERROR, Scope::Connection));
        let f = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0];
        assert_eq!(parse(&f).unwrap().unwrap().initial_window_size, Some(0));
    }

    #[test]
    fn max_frame_size_bounds() {
        let ok = |v: u32| {
            let mut f = vec![0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 5];
            f.extend_from_slice(&v.to_be_bytes());
            parse(&f)
        };
        assert_eq!(ok(16_384).unwrap().unwrap().max_frame_size, Some(16_384));
        assert_eq!(ok(16_777_215).unwrap().unwrap().max_frame_size, Some(16_777_215));
        for bad in [0, 16_383, 16_777_216, u32::MAX] {
            let e = ok(bad).unwrap_err();
            assert_eq!(
                (e.reason, e.scope),
                (Reason::PROTOCOL_ERROR, Scope::Connection),
                "{bad}"
            );
        }
    }

    #[test]
    fn write_by_hand() {
        let mut dst = BytesMut::new();
        put_settings(
            &mut dst,
            &[
                (SETTINGS_MAX_CONCURRENT_STREAMS, 100),
                (SETTINGS_INITIAL_WINDOW_SIZE, 65_535),
            ],
        );
        put_settings_ack(&mut dst);
        #[rustfmt::skip]
        let want = [
            0, 0, 12, 0x4, 0, 0, 0, 0, 0,
            0, 3, 0, 0, 0, 100,
            0, 4, 0, 0, 0xff, 0xff,
            0, 0, 0, 0x4, 0x1, 0, 0, 0, 0,
        ];
        assert_eq!(&dst[..], &want);
    }

    #[test]
    fn to_pairs_round_trip() {
        let s = Settings {
            header_table_size: Some(0),
            enable_push: Some(false),
            initial_window_size: Some(1 << 20),
            max_frame_size: Some(1 << 20),
            enable_connect_protocol: Some(true),
            ..Settings::default()
        };
        let pairs: Vec<_> = s.to_pairs().collect();
        assert_eq!(pairs.len(), 5);
        let mut dst = BytesMut::new();
        put_settings(&mut dst, &pairs);
        assert_eq!(parse(&dst).unwrap(), Some(s));
    }
}
