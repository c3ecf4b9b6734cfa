//! W3C Trace Context (`traceparent`): parsing what a client sent, and the
//! value the agent forwards with its own span as the parent.
//!
//! <https://www.w3.org/TR/trace-context/#traceparent-header>: a value that
//! does not parse is treated as absent (the agent then starts a trace of
//! its own); `tracestate` is never read, only passed on.

use std::fmt;

use crate::balance::rand::rand_u64;

/// A trace's 16-byte id (never all zeros).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's 8-byte id (never all zeros).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// The `sampled` bit of `trace-flags`.
const SAMPLED: u8 = 1;
/// `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;

/// What a valid `traceparent` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span.
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceId {
    /// A random id (a fast generator: ids need to be unique, not secret).
    pub fn random() -> TraceId {
        loop {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&rand_u64().to_be_bytes());
            b[8..].copy_from_slice(&rand_u64().to_be_bytes());
            if b != [0; 16] {
                return TraceId(b);
            }
        }
    }

    /// The last 8 bytes as a number: what ratio sampling compares (as
    /// OpenTelemetry's `TraceIdRatioBased` does, so that every sampler of a
    /// trace decides alike).
    pub fn low_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(b)
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        loop {
            let n = rand_u64();
            if n != 0 {
                return SpanId(n.to_be_bytes());
            }
        }
    }
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// Ids print as lowercase hex, as `traceparent` carries them.
macro_rules! hex_formats {
    ($($id:ty),*) => {$(
        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                hex(f, &self.0)
            }
        }

        impl fmt::Debug for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                hex(f, &self.0)
            }
        }
    )*};
}

hex_formats!(TraceId, SpanId);

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        // Lowercase only: the spec does not allow uppercase hex.
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = unhex(pair[0])? << 4 | unhex(pair[1])?;
    }
    Some(out)
}

/// Parses one `traceparent` value; `None` when it is not valid (which
/// the caller treats as no `traceparent` at all).
pub fn parse(v: &[u8]) -> Option<TraceParent> {
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let [version] = decode::<1>(&v[..2])?;
    match version {
        // Version 255 is invalid.
        0xff => return None,
        // Version 00 is exactly 55 characters.
        0 if v.len() != TRACEPARENT_LEN => return None,
        // A later version: parse what version 00 defines, and what
        // follows must start with a dash.
        _ if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = decode::<16>(&v[3..35])?;
    let parent_id = decode::<8>(&v[36..52])?;
    let [flags] = decode::<1>(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id: TraceId(trace_id),
        parent_id: SpanId(parent_id),
        sampled: flags & SAMPLED != 0,
    })
}

/// The version-00 `traceparent` naming `span` as the parent.
pub fn format(trace_id: TraceId, span: SpanId, sampled: bool) -> [u8; TRACEPARENT_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; TRACEPARENT_LEN];
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = DIGITS[usize::from(b >> 4)];
            out[at + 2 * i + 1] = DIGITS[usize::from(b & 15)];
        }
    };
    put(0, &[0]);
    put(3, &trace_id.0);
    put(36, &span.0);
    put(53, &[u8::from(sampled)]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses_and_formats_back() {
        let tp = parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(tp.sampled);
        let back = format(tp.trace_id, tp.parent_id, true);
        assert_eq!(std::str::from_utf8(&back), Ok(GOOD));
        let unsampled = parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!unsampled.sampled);
        // Other flag bits are allowed; only `sampled` is read.
        assert!(parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").is_some_and(|t| t.sampled));
    }

    #[test]
    fn invalid_values_are_treated_as_absent() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero trace id and parent id.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with more after it.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Wrong separators, non-hex, short fields.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for v in bad {
            assert_eq!(parse(v.as_bytes()), None, "{v:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00_when_what_follows_starts_with_a_dash() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds";
        assert!(parse(v.as_bytes()).is_some());
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(parse(v.as_bytes()), None);
    }

    #[test]
    fn random_ids_are_never_zero_and_differ() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        assert_ne!(SpanId::random().0, [0; 8]);
        let tp = format(a, SpanId::random(), false);
        let back = parse(&tp).expect("what the agent sends parses");
        assert_eq!(back.trace_id, a);
        assert!(!back.sampled);
    }
}
