//! HPACK integer representation (RFC 7541 §5.1).

use bytes::{BufMut, BytesMut};

use super::DecodeError;

/// At most this many continuation octets are accepted (35 bits, enough for
/// any value up to `u32::MAX` whatever the prefix).
const MAX_CONTINUATIONS: usize = 5;

/// Decodes an integer whose `prefix_bits`-bit prefix (1..=8) is in
/// `buf[*pos]`, advancing `pos` past it. Values above `u32::MAX` are rejected.
pub(crate) fn decode(buf: &[u8], pos: &mut usize, prefix_bits: u32) -> Result<u64, DecodeError> {
    debug_assert!((1..=8).contains(&prefix_bits));
    let mask = u8::MAX >> (8 - prefix_bits);
    let first = *buf.get(*pos).ok_or(DecodeError::Truncated)?;
    *pos += 1;
    let mut value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok(value);
    }
    for i in 0..MAX_CONTINUATIONS {
        let b = *buf.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        value += u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return if value > u64::from(u32::MAX) {
                Err(DecodeError::IntegerOverflow)
            } else {
                Ok(value)
            };
        }
    }
    Err(DecodeError::IntegerOverflow)
}

/// Encodes `value` with a `prefix_bits`-bit prefix (1..=8); `flags` holds the
/// bits of the first octet above the prefix.
pub(crate) fn encode(dst: &mut BytesMut, flags: u8, prefix_bits: u32, value: u64) {
    debug_assert!((1..=8).contains(&prefix_bits));
    let mask = u8::MAX >> (8 - prefix_bits);
    if value < u64::from(mask) {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask);
    let mut rest = value - u64::from(mask);
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn enc(flags: u8, prefix: u32, value: u64) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode(&mut dst, flags, prefix, value);
        dst.to_vec()
    }

    fn dec(buf: &[u8], prefix: u32) -> Result<(u64, usize), DecodeError> {
        let mut pos = 0;
        decode(buf, &mut pos, prefix).map(|v| (v, pos))
    }

    /// RFC 7541 C.1.1–C.1.3.
    #[test]
    fn rfc_c1() {
        assert_eq!(enc(0, 5, 10), [0x0a]);
        assert_eq!(dec(&[0x0a], 5), Ok((10, 1)));
        assert_eq!(enc(0, 5, 1337), [0x1f, 0x9a, 0x0a]);
        assert_eq!(dec(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
        assert_eq!(enc(0, 8, 42), [0x2a]);
        assert_eq!(dec(&[0x2a], 8), Ok((42, 1)));
        // Bits above the prefix are ignored by the decoder.
        assert_eq!(dec(&[0xea], 5), Ok((10, 1)));
    }

    #[test]
    fn round_trip() {
        for prefix in 1..=8 {
            for value in [
                0u64,
                1,
                30,
                31,
                32,
                126,
                127,
                128,
                254,
                255,
                256,
                16_383,
                16_384,
                1 << 28,
                u32::MAX.into(),
            ] {
                let bytes = enc(0, prefix, value);
                assert_eq!(
                    dec(&bytes, prefix),
                    Ok((value, bytes.len())),
                    "prefix {prefix} value {value}"
                );
            }
        }
    }

    #[test]
    fn errors() {
        assert_eq!(dec(&[], 5), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0x1f], 5), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0x1f, 0x80], 5), Err(DecodeError::Truncated));
        // u32::MAX + 1.
        let bytes = enc(0, 5, u64::from(u32::MAX) + 1);
        assert_eq!(dec(&bytes, 5), Err(DecodeError::IntegerOverflow));
        // Six continuation octets.
        assert_eq!(
            dec(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 5),
            Err(DecodeError::IntegerOverflow)
        );
        // Five, with redundant zero groups, is still fine.
        assert_eq!(dec(&[0x1f, 0x81, 0x80, 0x80, 0x80, 0x00], 5), Ok((32, 6)));
    }
}
