//! The 9-byte frame header (RFC 9113 §4.1) and frame types (§6).

use bytes::{BufMut, BytesMut};

use super::{HEADER_LEN, MAX_MAX_FRAME_SIZE, STREAM_ID_MASK};

/// A frame type. Unknown types are kept so the caller can ignore them
/// (RFC 9113 §4.1: implementations MUST ignore unknown frame types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    Unknown(u8),
}

impl Kind {
    /// The frame type for a type octet.
    pub fn from_u8(b: u8) -> Kind {
        match b {
            0x0 => Kind::Data,
            0x1 => Kind::Headers,
            0x2 => Kind::Priority,
            0x3 => Kind::RstStream,
            0x4 => Kind::Settings,
            0x5 => Kind::PushPromise,
            0x6 => Kind::Ping,
            0x7 => Kind::GoAway,
            0x8 => Kind::WindowUpdate,
            0x9 => Kind::Continuation,
            other => Kind::Unknown(other),
        }
    }

    /// The type octet for this frame type.
    pub fn as_u8(self) -> u8 {
        match self {
            Kind::Data => 0x0,
            Kind::Headers => 0x1,
            Kind::Priority => 0x2,
            Kind::RstStream => 0x3,
            Kind::Settings => 0x4,
            Kind::PushPromise => 0x5,
            Kind::Ping => 0x6,
            Kind::GoAway => 0x7,
            Kind::WindowUpdate => 0x8,
            Kind::Continuation => 0x9,
            Kind::Unknown(other) => other,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Payload length (24 bits).
    pub len: u32,
    pub kind: Kind,
    pub flags: u8,
    /// Stream identifier (31 bits; the reserved bit is dropped).
    pub stream: u32,
}

impl Head {
    /// Parses the 9-byte frame header (the stream id's reserved bit is ignored/masked).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: Kind::from_u8(b[3]),
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & STREAM_ID_MASK,
        }
    }

    /// Appends the header to `dst`.
    pub fn write(&self, dst: &mut BytesMut) {
        let mut raw = [0; HEADER_LEN];
        self.write_to(&mut raw);
        dst.put_slice(&raw);
    }

    /// Writes the header into an existing 9-byte slice (used to rewrite a
    /// forwarded DATA frame's header in place). The reserved bit is written
    /// as zero; `len` must fit in 24 bits.
    pub fn write_to(&self, dst: &mut [u8; HEADER_LEN]) {
        debug_assert!(
            self.len <= MAX_MAX_FRAME_SIZE,
            "frame length {} does not fit in 24 bits",
            self.len
        );
        let len = self.len.to_be_bytes();
        dst[..3].copy_from_slice(&len[1..]);
        dst[3] = self.kind.as_u8();
        dst[4] = self.flags;
        dst[5..].copy_from_slice(&(self.stream & STREAM_ID_MASK).to_be_bytes());
    }

    /// True when every bit of `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::frame::flags;

    #[test]
    fn kind_round_trips_every_octet() {
        for b in 0..=u8::MAX {
            let kind = Kind::from_u8(b);
            assert_eq!(kind.as_u8(), b);
            assert_eq!(matches!(kind, Kind::Unknown(_)), b > 9);
        }
        assert_eq!(Kind::from_u8(0x4), Kind::Settings);
        assert_eq!(Kind::from_u8(0x9), Kind::Continuation);
    }

    #[test]
    fn parse_by_hand() {
        // len 0x012345, HEADERS, END_STREAM|END_HEADERS, stream 0x7fff_fffe.
        let raw = [0x01, 0x23, 0x45, 0x01, 0x05, 0x7f, 0xff, 0xff, 0xfe];
        let head = Head::parse(&raw);
        assert_eq!(
            head,
            Head {
                len: 0x01_2345,
                kind: Kind::Headers,
                flags: 0x05,
                stream: 0x7fff_fffe
            }
        );
        assert!(head.has(flags::END_STREAM));
        assert!(head.has(flags::END_HEADERS));
        assert!(head.has(flags::END_STREAM | flags::END_HEADERS));
        assert!(!head.has(flags::PADDED));
        assert!(!head.has(flags::PADDED | flags::END_HEADERS));
    }

    #[test]
    fn parse_masks_reserved_bit() {
        let raw = [0, 0, 0, 0x0, 0, 0x80, 0, 0, 0x03];
        assert_eq!(Head::parse(&raw).stream, 3);
        let raw = [0, 0, 0, 0x0, 0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(Head::parse(&raw).stream, 0x7fff_ffff);
    }

    #[test]
    fn write_round_trip_24_bit_lengths() {
        for len in [0, 1, 255, 256, 16_384, 65_535, 65_536, 0xff_ffff] {
            for stream in [0, 1, 0x7fff_ffff] {
                let head = Head {
                    len,
                    kind: Kind::Unknown(0xfa),
                    flags: 0xa5,
                    stream,
                };
                let mut dst = BytesMut::new();
                head.write(&mut dst);
                let raw: &[u8; HEADER_LEN] = dst[..].try_into().unwrap();
                assert_eq!(Head::parse(raw), head);
            }
        }
    }

    #[test]
    fn write_clears_reserved_bit() {
        let head = Head {
            len: 7,
            kind: Kind::Data,
            flags: 0,
            stream: 0x8000_0005,
        };
        let mut raw = [0xff; HEADER_LEN];
        head.write_to(&mut raw);
        assert_eq!(raw, [0, 0, 7, 0, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn write_to_rewrites_in_place() {
        let mut buf = [0u8; 20];
        let slot: &mut [u8; HEADER_LEN] = (&mut buf[4..13]).try_into().unwrap();
        Head {
            len: 0x10203,
            kind: Kind::Data,
            flags: flags::END_STREAM,
            stream: 9,
        }
        .write_to(slot);
        assert_eq!(&buf[4..13], &[0x01, 0x02, 0x03, 0x00, 0x01, 0, 0, 0, 9]);
        assert!(buf[..4].iter().chain(&buf[13..]).all(|&b| b == 0));
    }
}
