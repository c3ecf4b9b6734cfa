//! GRPCRoute filters in the model (Gateway API v1): request and response
//! header modifiers, on a route and on a backend, and request mirrors on a
//! route. Both modes build them and check them with [`Filters::validate`].

use serde::Serialize;

use super::Share;

/// The filters of a route, or of one backend of a route (a backend's apply
/// after its route's, to the calls sent to that backend).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filters {
    /// Applied to the request head sent to the endpoint.
    pub request: Option<HeaderModifier>,
    /// Applied to the response head sent back to the client (not to
    /// trailers that follow a body).
    pub response: Option<HeaderModifier>,
    /// Copies of the calls sent to other services (route level only).
    pub mirrors: Vec<Mirror>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.request.is_none() && self.response.is_none() && self.mirrors.is_empty()
    }

    /// Checks every header name and value.
    pub fn validate(&self) -> Result<(), FilterError> {
        for m in self.request.iter().chain(self.response.iter()) {
            m.validate()?;
        }
        Ok(())
    }
}

/// Gateway API `HTTPHeaderFilter`: applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderModifier {
    /// Replace every value of the header with this one (added if absent).
    pub set: Vec<HeaderValue>,
    /// Add a value (another field line; earlier values stay).
    pub add: Vec<HeaderValue>,
    /// Remove every value of the header.
    pub remove: Vec<String>,
}

/// A header name (lower case) and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

impl HeaderValue {
    pub fn new(name: &str, value: &str) -> Self {
        HeaderValue {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }
}

/// A copy of `share` of the route's calls sent to the model service
/// `service`; its answer is discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub service: String,
    pub share: Share,
}

/// Why a header modifier cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("invalid header name {0:?}")]
    BadName(String),
    #[error("header `{0}` may not be modified: pseudo-headers, `te`, `content-type`, `content-length`, `host`, `grpc-*` and connection-specific headers are reserved")]
    Reserved(String),
    #[error("header `{name}`: invalid value {value:?} (no control characters, no leading or trailing whitespace; base64 for `-bin` headers)")]
    BadValue { name: String, value: String },
}

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn validate(&self) -> Result<(), FilterError> {
        for name in self
            .remove
            .iter()
            .chain(self.set.iter().chain(&self.add).map(|h| &h.name))
        {
            check_name(name)?;
        }
        for h in self.set.iter().chain(&self.add) {
            check_value(&h.name, &h.value)?;
        }
        Ok(())
    }
}

/// A name a filter may touch: a lower-case token that is not reserved.
pub fn check_name(name: &str) -> Result<(), FilterError> {
    let token = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.starts_with(':') {
        return Err(FilterError::Reserved(name.to_owned()));
    }
    if name.is_empty() || !name.bytes().all(token) {
        return Err(FilterError::BadName(name.to_owned()));
    }
    let reserved = matches!(
        name,
        "te" | "content-type"
            | "content-length"
            | "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
    ) || name.starts_with("grpc-");
    if reserved {
        return Err(FilterError::Reserved(name.to_owned()));
    }
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), FilterError> {
    let bad = || FilterError::BadValue {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    let visible = value.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t');
    let trimmed = !value.starts_with([' ', '\t']) && !value.ends_with([' ', '\t']);
    if !visible || !trimmed {
        return Err(bad());
    }
    if name.ends_with("-bin") && !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{HeaderValue as H, *};

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        for name in [
            ":path",
            ":authority",
            "te",
            "content-type",
            "grpc-timeout",
            "grpc-status",
            "connection",
            "host",
        ] {
            assert_eq!(check_name(name), Err(FilterError::Reserved(name.into())), "{name}");
        }
        for name in ["", "X-Upper", "a b", "a:b"] {
            assert_eq!(check_name(name), Err(FilterError::BadName(name.into())), "{name:?}");
        }
        assert_eq!(check_name("x-tenant"), Ok(()));
        let m = |v: &str| HeaderModifier {
            set: vec![H::new("x-a", v)],
            ..HeaderModifier::default()
        };
        assert_eq!(m("ok value").validate(), Ok(()));
        for bad in ["a\r\nb", " lead", "trail ", "nul\0", "é"] {
            assert!(
                matches!(m(bad).validate(), Err(FilterError::BadValue { .. })),
                "{bad:?}"
            );
        }
        let bin = HeaderModifier {
            add: vec![H::new("x-key-bin", "not base64!")],
            ..HeaderModifier::default()
        };
        assert!(matches!(bin.validate(), Err(FilterError::BadValue { .. })));
    }
}
