//! A header list the relay keeps between decoding it from one peer and
//! encoding it towards another: one buffer per header block, fields stored
//! back to back as `flags, name length, value length, name, value`.
//!
//! Request heads are checked against RFC 9113 §8.2–8.3 as they are built;
//! a malformed request is answered with `RST_STREAM(PROTOCOL_ERROR)`.

use bytes::Bytes;

use crate::balance::{filters::HeaderEdit, CallHeaders};

const NEVER_INDEX: u8 = 1;
/// flags (1) + name length (2) + value length (4).
const ENTRY: usize = 7;

/// One decoded header block.
#[derive(Clone, Debug, Default)]
pub(crate) struct Head {
    buf: Bytes,
}

/// A field of a [`Head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub never_index: bool,
}

impl Head {
    pub fn iter(&self) -> Fields<'_> {
        Fields { rest: &self.buf }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|f| f.name == name).map(|f| f.value)
    }

    /// The same head with `name` set to `value` (every other field kept in
    /// order), e.g. the remaining `grpc-timeout` on a retry.
    pub fn with(&self, name: &[u8], value: &[u8]) -> Head {
        let mut b = Builder::with_capacity(self.buf.len() + value.len() + ENTRY + name.len());
        let mut set = false;
        for f in self.iter() {
            if f.name == name {
                if !set {
                    b.push(name, value, false);
                    set = true;
                }
            } else {
                b.push(f.name, f.value, f.never_index);
            }
        }
        if !set {
            b.push(name, value, false);
        }
        b.finish()
    }

    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The fields as stored: equal bytes, equal fields.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The same head through a route's header edit, in one pass: fields
    /// whose name the edit clears are dropped, the edit's fields appended
    /// (after every pseudo-header, which an edit never names).
    pub fn edited(&self, e: &HeaderEdit) -> Head {
        let extra: usize = e.append.iter().map(|(n, v)| ENTRY + n.len() + v.len()).sum();
        let mut b = Builder::with_capacity(self.buf.len() + extra);
        for f in self.iter().filter(|f| !e.clears(f.name)) {
            b.push(f.name, f.value, f.never_index);
        }
        for (n, v) in &e.append {
            b.push(n, v, false);
        }
        b.finish()
    }

    /// A mirrored copy's head: `:authority` (and `host`, if any) with the
    /// `-shadow` suffix on the host part, as Envoy and Istio send copies.
    pub fn shadowed(&self) -> Head {
        let mut h = self.clone();
        for name in [&b":authority"[..], b"host"] {
            if let Some(v) = h.get(name) {
                let v = shadow_authority(v);
                h = h.with(name, &v);
            }
        }
        h
    }
}

/// `host:port` → `host-shadow:port` (`[v6]:port` and a bare host alike).
fn shadow_authority(v: &[u8]) -> Vec<u8> {
    let split = match v.iter().rposition(|&b| b == b':') {
        Some(i) if !v[i..].contains(&b']') => i,
        _ => v.len(),
    };
    let mut out = Vec::with_capacity(v.len() + 7);
    out.extend_from_slice(&v[..split]);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(&v[split..]);
    out
}

pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        let r = self.rest;
        if r.len() < ENTRY {
            return None;
        }
        let name_len = u16::from_be_bytes([r[1], r[2]]) as usize;
        let value_len = u32::from_be_bytes([r[3], r[4], r[5], r[6]]) as usize;
        let name = r.get(ENTRY..ENTRY + name_len)?;
        let value = r.get(ENTRY + name_len..ENTRY + name_len + value_len)?;
        self.rest = &r[ENTRY + name_len + value_len..];
        Some(Field {
            name,
            value,
            never_index: r[0] & NEVER_INDEX != 0,
        })
    }
}

/// Builds a [`Head`] field by field.
pub(crate) struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn with_capacity(n: usize) -> Builder {
        Builder {
            buf: Vec::with_capacity(n),
        }
    }

    /// A builder for the fields a header block of `len` bytes decodes to.
    /// Indexed fields expand many times over (a gRPC request's block of a
    /// few dozen bytes decodes to about 200), literals barely: room for a
    /// usual head from the start saves growing it field by field.
    pub fn for_block(len: usize) -> Builder {
        Builder::with_capacity(len * 2 + 256)
    }

    pub fn push(&mut self, name: &[u8], value: &[u8], never_index: bool) {
        // Names longer than 64 KiB never get here: the header list limit is
        // far smaller.
        let name = &name[..name.len().min(u16::MAX as usize)];
        let mut entry = [0u8; ENTRY];
        entry[0] = if never_index { NEVER_INDEX } else { 0 };
        entry[1..3].copy_from_slice(&(name.len() as u16).to_be_bytes());
        entry[3..].copy_from_slice(&(value.len() as u32).to_be_bytes());
        self.buf.reserve(ENTRY + name.len() + value.len());
        self.buf.extend_from_slice(&entry);
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(value);
    }

    pub fn finish(self) -> Head {
        Head {
            buf: Bytes::from(self.buf),
        }
    }
}

/// Why a request head is malformed (RFC 9113 §8.2–8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("a header name has uppercase characters")]
    Uppercase,
    #[error("a header name has a character that is not a token character")]
    BadName,
    #[error("a header value starts or ends with whitespace")]
    Whitespace,
    #[error("`content-length` is not a number, or does not match the DATA")]
    ContentLength,
    #[error("`host` and `:authority` differ")]
    HostAuthority,
    #[error("a pseudo-header follows a regular header")]
    PseudoAfterRegular,
    #[error("unknown or repeated pseudo-header")]
    BadPseudo,
    #[error("a connection-specific header")]
    ConnectionSpecific,
    #[error("`te` other than `trailers`")]
    Te,
    #[error("a header value with NUL, CR or LF, or a name that is empty")]
    BadValue,
    #[error("`:method`, `:scheme` or `:path` missing or empty")]
    MissingPseudo,
    #[error("trailers with pseudo-headers")]
    PseudoInTrailers,
}

/// Checks a request's fields one at a time while they are decoded.
#[derive(Default)]
pub(crate) struct RequestCheck {
    seen: u8,
    regular: bool,
    trailers: bool,
    pub error: Option<Malformed>,
}

const METHOD: u8 = 1;
const SCHEME: u8 = 2;
const PATH: u8 = 4;
const AUTHORITY: u8 = 8;

impl RequestCheck {
    pub fn trailers() -> RequestCheck {
        RequestCheck {
            trailers: true,
            ..RequestCheck::default()
        }
    }

    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.error.is_none() {
            if let Err(e) = self.check(name, value) {
                self.error = Some(e);
            }
        }
    }

    fn check(&mut self, name: &[u8], value: &[u8]) -> Result<(), Malformed> {
        // Without an early exit the scan of the value vectorises.
        let bad_value = value
            .iter()
            .fold(false, |bad, &b| bad | (b == 0) | (b == b'\r') | (b == b'\n'));
        if name.is_empty() || bad_value {
            return Err(Malformed::BadValue);
        }
        if name[0] == b':' {
            if self.trailers {
                return Err(Malformed::PseudoInTrailers);
            }
            if self.regular {
                return Err(Malformed::PseudoAfterRegular);
            }
            let bit = match name {
                b":method" => METHOD,
                b":scheme" => SCHEME,
                b":path" => PATH,
                b":authority" => AUTHORITY,
                _ => return Err(Malformed::BadPseudo),
            };
            if self.seen & bit != 0 {
                return Err(Malformed::BadPseudo);
            }
            if value.is_empty() && bit != AUTHORITY {
                return Err(Malformed::MissingPseudo);
            }
            self.seen |= bit;
            return Ok(());
        }
        self.regular = true;
        if !name.iter().all(|&b| LOWER_TOKEN[usize::from(b)]) {
            return Err(if name.iter().any(u8::is_ascii_uppercase) {
                Malformed::Uppercase
            } else {
                Malformed::BadName
            });
        }
        if matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t')) {
            return Err(Malformed::Whitespace);
        }
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade" => {
                Err(Malformed::ConnectionSpecific)
            }
            b"te" if value != b"trailers" => Err(Malformed::Te),
            _ => Ok(()),
        }
    }

    /// The verdict once the whole block was decoded.
    pub fn finish(&self) -> Result<(), Malformed> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.trailers && self.seen & (METHOD | SCHEME | PATH) != METHOD | SCHEME | PATH {
            return Err(Malformed::MissingPseudo);
        }
        Ok(())
    }
}

/// RFC 9110 token characters, lowercase (RFC 9113 §8.2.1): what a field
/// name may hold, by byte.
static LOWER_TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~');
        b += 1;
    }
    t
};

/// What a whole request head must also satisfy: `host` agrees with
/// `:authority`, and `content-length` (if any) is a number, zero when the
/// HEADERS frame ended the stream. Returns the declared length.
pub(crate) fn check_request(head: &Head, end: bool) -> Result<Option<u64>, Malformed> {
    // One pass over the head; the first value of each name counts.
    let (mut authority, mut host, mut length) = (None, None, None);
    for f in head.iter() {
        let slot = match f.name {
            b":authority" => &mut authority,
            b"host" => &mut host,
            b"content-length" => &mut length,
            _ => continue,
        };
        slot.get_or_insert(f.value);
    }
    if let (Some(a), Some(h)) = (authority, host) {
        if a != h {
            return Err(Malformed::HostAuthority);
        }
    }
    let Some(v) = length else {
        return Ok(None);
    };
    let n = std::str::from_utf8(v)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or(Malformed::ContentLength)?;
    if end && n != 0 {
        return Err(Malformed::ContentLength);
    }
    Ok(Some(n))
}

impl CallHeaders for Head {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool {
        self.iter()
            .filter(|f| f.name == name.as_bytes())
            .any(|f| std::str::from_utf8(f.value).map(&mut *pred).unwrap_or(false))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> Head {
        let mut b = Builder::with_capacity(64);
        for (n, v) in fields {
            b.push(n.as_bytes(), v.as_bytes(), *n == "authorization");
        }
        b.finish()
    }

    fn check(fields: &[(&str, &str)]) -> Result<(), Malformed> {
        let mut c = RequestCheck::default();
        for (n, v) in fields {
            c.field(n.as_bytes(), v.as_bytes());
        }
        c.finish()
    }

    const GOOD: &[(&str, &str)] = &[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/pkg.Svc/Do"),
        (":authority", "svc:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", "secret"),
    ];

    #[test]
    fn fields_come_back_in_order_with_their_flags() {
        let h = head(GOOD);
        let back: Vec<_> = h
            .iter()
            .map(|f| (String::from_utf8_lossy(f.name).into_owned(), f.never_index))
            .collect();
        assert_eq!(back.len(), GOOD.len());
        assert_eq!(back[2].0, ":path");
        assert!(back[6].1, "never-indexed survives");
        assert!(!back[0].1);
        assert_eq!(h.get(b":path"), Some(&b"/pkg.Svc/Do"[..]));
    }

    #[test]
    fn with_replaces_or_appends_one_field() {
        let h = head(GOOD).with(b"grpc-timeout", b"99m");
        assert_eq!(h.get(b"grpc-timeout"), Some(&b"99m"[..]));
        let h2 = h.with(b"grpc-timeout", b"5m");
        assert_eq!(h2.iter().filter(|f| f.name == b"grpc-timeout").count(), 1);
        assert_eq!(h2.get(b"grpc-timeout"), Some(&b"5m"[..]));
        assert_eq!(h2.iter().count(), GOOD.len() + 1);
    }

    #[test]
    fn an_edit_removes_sets_and_adds_in_one_pass_and_keeps_the_rest() {
        use crate::model::{HeaderModifier, HeaderValue};
        let hv = HeaderValue::new;
        let m = HeaderModifier {
            set: vec![hv("x-set", "new")],
            add: vec![hv("x-add", "2")],
            remove: vec!["authorization".into(), "x-absent".into()],
        };
        let e = HeaderEdit::of([&m]).unwrap();
        let mut fields = GOOD.to_vec();
        fields.extend_from_slice(&[("x-set", "old"), ("x-add", "1"), ("x-set", "older")]);
        let h = head(&fields).edited(&e);
        let got: Vec<(String, String)> = h
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(f.name).into_owned(),
                    String::from_utf8_lossy(f.value).into_owned(),
                )
            })
            .collect();
        // `authorization` and both `x-set` gone, the rest in order, then
        // what the edit appends.
        let want: Vec<(String, String)> = GOOD[..6]
            .iter()
            .chain(&[("x-add", "1"), ("x-set", "new"), ("x-add", "2")])
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want);
        // The edited head is still a well-formed request.
        let mut c = RequestCheck::default();
        for f in h.iter() {
            c.field(f.name, f.value);
        }
        assert_eq!(c.finish(), Ok(()));
    }

    #[test]
    fn a_shadow_copy_names_its_authority_with_the_suffix() {
        let h = head(GOOD).shadowed();
        assert_eq!(h.get(b":authority"), Some(&b"svc-shadow:50051"[..]));
        assert_eq!(h.get(b":path"), Some(&b"/pkg.Svc/Do"[..]));
        assert_eq!(shadow_authority(b"greeter"), b"greeter-shadow");
        assert_eq!(shadow_authority(b"[::1]:8000"), b"[::1]-shadow:8000");
        assert_eq!(shadow_authority(b"[::1]"), b"[::1]-shadow");
        let with_host = head(&[(":authority", "a:1"), ("host", "a:1")]).shadowed();
        assert_eq!(check_request(&with_host, false), Ok(None), "host still agrees");
    }

    #[test]
    fn routes_see_header_values() {
        let h = head(&[("x-tenant", "a"), ("x-tenant", "b")]);
        assert!(h.any_value("x-tenant", &mut |v| v == "b"));
        assert!(!h.any_value("x-tenant", &mut |v| v == "c"));
        assert!(!h.any_value("x-other", &mut |_| true));
    }

    #[test]
    fn a_well_formed_request_passes() {
        assert_eq!(check(GOOD), Ok(()));
    }

    #[test]
    fn malformed_requests_are_named() {
        let cases: &[(&[(&str, &str)], Malformed)] = &[
            (&[(":method", "POST"), (":path", "/a")], Malformed::MissingPseudo),
            (
                &[(":method", "POST"), ("x", "1"), (":scheme", "http"), (":path", "/")],
                Malformed::PseudoAfterRegular,
            ),
            (&[(":method", "POST"), (":method", "GET")], Malformed::BadPseudo),
            (&[(":status", "200")], Malformed::BadPseudo),
            (&[(":method", "POST"), ("Content-Type", "x")], Malformed::Uppercase),
            (
                &[(":method", "POST"), ("connection", "close")],
                Malformed::ConnectionSpecific,
            ),
            (&[(":method", "POST"), ("te", "gzip")], Malformed::Te),
            (&[(":method", "POST"), ("x", "a\r\nb")], Malformed::BadValue),
            (&[(":method", "POST"), ("space name", "x")], Malformed::BadName),
            (&[(":method", "POST"), ("a:b", "x")], Malformed::BadName),
            (&[(":method", "POST"), ("\u{7f}x", "x")], Malformed::BadName),
            (&[(":method", "POST"), ("inválid", "x")], Malformed::BadName),
            (&[(":method", "POST"), ("x", " lead")], Malformed::Whitespace),
            (&[(":method", "POST"), ("x", "trail\t")], Malformed::Whitespace),
            (&[(":method", "POST"), (":path", "")], Malformed::MissingPseudo),
        ];
        for (fields, want) in cases {
            assert_eq!(check(fields), Err(*want), "{fields:?}");
        }
    }

    #[test]
    fn a_name_may_hold_exactly_the_lowercase_token_characters() {
        // RFC 9110 §5.6.2: tchar, less the uppercase letters (RFC 9113 §8.2.1).
        let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        for c in 0..=255u8 {
            let name = [b'x', c];
            let want = if c.is_ascii_uppercase() {
                Err(Malformed::Uppercase)
            } else if tchar(c) {
                Ok(())
            } else {
                Err(Malformed::BadName)
            };
            let mut check = RequestCheck::default();
            check.field(&name, b"v");
            assert_eq!(check.error.map_or(Ok(()), Err), want, "byte {c:#04x}");
        }
    }

    #[test]
    fn host_must_agree_with_authority_and_content_length_be_a_number() {
        let with = |extra: &[(&str, &str)]| {
            let mut f = GOOD.to_vec();
            f.extend_from_slice(extra);
            head(&f)
        };
        assert_eq!(check_request(&with(&[("host", "svc:50051")]), false), Ok(None));
        assert_eq!(
            check_request(&with(&[("host", "other")]), false),
            Err(Malformed::HostAuthority)
        );
        assert_eq!(check_request(&with(&[("content-length", "12")]), false), Ok(Some(12)));
        assert_eq!(
            check_request(&with(&[("content-length", "12")]), true),
            Err(Malformed::ContentLength),
            "HEADERS that end the stream carry no body"
        );
        assert_eq!(
            check_request(&with(&[("content-length", "-1")]), false),
            Err(Malformed::ContentLength)
        );
    }

    #[test]
    fn trailers_take_no_pseudo_headers() {
        let mut c = RequestCheck::trailers();
        c.field(b"x-sum", b"1");
        assert_eq!(c.finish(), Ok(()));
        let mut c = RequestCheck::trailers();
        c.field(b":path", b"/");
        assert_eq!(c.finish(), Err(Malformed::PseudoInTrailers));
    }
}
