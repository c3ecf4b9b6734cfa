//! The bits of gRPC-over-HTTP/2 the proxy reads and writes itself:
//! `grpc-timeout`, `grpc-status`, and trailers-only error responses.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

pub const OK: u16 = 0;
pub const CANCELLED: u16 = 1;
pub const DEADLINE_EXCEEDED: u16 = 4;
pub const UNAVAILABLE: u16 = 14;

/// Parses `grpc-timeout` (`1-8 digits` + `H M S m u n`). A malformed value
/// is ignored, as gRPC servers do.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get("grpc-timeout")?.as_bytes())
}

/// Parses one `grpc-timeout` value.
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

/// The gRPC status of a finished response: `grpc-status` from its trailers
/// (or from trailers-only headers); without one, OK for HTTP 2xx and
/// UNKNOWN otherwise.
pub fn status(headers: Option<&HeaderMap>, http: StatusCode) -> u16 {
    match headers.and_then(|h| h.get("grpc-status")) {
        Some(v) => parse_status(v.as_bytes()),
        None if http.is_success() => OK,
        None => 2,
    }
}

/// A `grpc-status` value; UNKNOWN (2) when it is not a number.
pub fn parse_status(v: &[u8]) -> u16 {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(2)
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks.
fn encode_message(msg: &str) -> HeaderValue {
    HeaderValue::from_str(&message_text(msg)).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

/// A `grpc-message` value: `msg` percent-encoded.
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

fn status_value(code: u16) -> HeaderValue {
    HeaderValue::from(code)
}

/// Trailers carrying a gRPC status.
pub fn status_trailers(code: u16, msg: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    h.insert("grpc-status", status_value(code));
    h.insert("grpc-message", encode_message(msg));
    h
}

/// A trailers-only response (headers with END_STREAM) carrying an error.
pub fn trailers_only(code: u16, msg: &str) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", status_value(code));
    h.insert("grpc-message", encode_message(msg));
    r
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        m
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(timeout(&h("100m")), Some(Duration::from_millis(100)));
        assert_eq!(timeout(&h("2S")), Some(Duration::from_secs(2)));
        assert_eq!(timeout(&h("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(timeout(&h("5u")), Some(Duration::from_micros(5)));
        assert_eq!(timeout(&h("99999999n")), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(timeout(&h("123456789S")), None, "more than 8 digits");
        assert_eq!(timeout(&h("10x")), None);
        assert_eq!(timeout(&h("S")), None);
        assert_eq!(timeout(&h("-1S")), None);
    }

    #[test]
    fn status_from_trailers_or_http() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status(Some(&t), StatusCode::OK), 14);
        assert_eq!(status(None, StatusCode::OK), 0);
        assert_eq!(status(None, StatusCode::BAD_GATEWAY), 2);
    }

    #[test]
    fn messages_are_percent_encoded() {
        let r = trailers_only(14, "no endpoint for `greeter` — 100%");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            "no endpoint for `greeter` %E2%80%94 100%25"
        );
    }
}
