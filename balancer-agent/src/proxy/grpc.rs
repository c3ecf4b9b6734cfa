//! The bits of gRPC-over-HTTP/2 the relay reads and writes itself:
//! `grpc-timeout`, `grpc-status`, and the `grpc-message` of its own answers.

use std::time::Duration;

pub const OK: u16 = 0;
pub const UNKNOWN: u16 = 2;
pub const DEADLINE_EXCEEDED: u16 = 4;
pub const UNIMPLEMENTED: u16 = 12;
pub const INTERNAL: u16 = 13;
pub const UNAVAILABLE: u16 = 14;

/// Parses a `grpc-timeout` value (`1-8 digits` + `H M S m u n`). A malformed
/// value is ignored, as gRPC servers do.
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-status` value; UNKNOWN when it is not a number.
pub fn parse_status(v: &[u8]) -> u16 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(UNKNOWN)
}

/// A `grpc-message` value: `msg` percent-encoded, as the gRPC spec asks.
pub fn message_text(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &str| parse_timeout(v.as_bytes());
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("123456789S"), None, "more than 8 digits");
        assert_eq!(t("10x"), None);
        assert_eq!(t("S"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn status_values() {
        assert_eq!(parse_status(b"14"), 14);
        assert_eq!(parse_status(b"0"), OK);
        assert_eq!(parse_status(b"x"), UNKNOWN);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            message_text("no endpoint for `greeter` — 100%"),
            "no endpoint for `greeter` %E2%80%94 100%25"
        );
    }
}
