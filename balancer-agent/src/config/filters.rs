//! `filters:` of a route and of a route backend, in the shapes of Gateway
//! API GRPCRoute filters:
//!
//! ```yaml
//! filters:
//!   - request_header_modifier: { set: [ { name: x-a, value: "1" } ], add: [...], remove: [x-b] }
//!   - response_header_modifier: { ... }
//!   - request_mirror: { service: shadow, percent: 10 }   # routes only
//! ```

use std::collections::HashSet;

use serde::Deserialize;

use super::schema::{invalid, Invalid};
use crate::model::{Filters, HeaderModifier, HeaderValue, Mirror, ModelError, Share};

/// One filter: exactly one of its keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilterFile {
    #[serde(default)]
    request_header_modifier: Option<ModifierFile>,
    #[serde(default)]
    response_header_modifier: Option<ModifierFile>,
    #[serde(default)]
    request_mirror: Option<MirrorFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModifierFile {
    #[serde(default)]
    set: Vec<HeaderValueFile>,
    #[serde(default)]
    add: Vec<HeaderValueFile>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderValueFile {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MirrorFile {
    /// Another service of the file.
    service: String,
    /// The share of the calls copied (default 100), or `fraction`.
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    fraction: Option<FractionFile>,
}

/// Gateway API's `fraction`: `numerator` of every `denominator` (default
/// 100) calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FractionFile {
    numerator: u32,
    #[serde(default = "hundred_u32")]
    denominator: u32,
}

fn hundred_u32() -> u32 {
    100
}

enum One {
    Request(ModifierFile),
    Response(ModifierFile),
    Mirror(MirrorFile),
}

/// Mirrors a route may have.
const MAX_MIRRORS: usize = 8;

impl ModifierFile {
    fn into_modifier(self, at: &str) -> Result<HeaderModifier, Invalid> {
        let lower = |v: Vec<HeaderValueFile>| {
            v.into_iter()
                .map(|h| HeaderValue {
                    name: h.name.to_ascii_lowercase(),
                    value: h.value,
                })
                .collect()
        };
        let m = HeaderModifier {
            set: lower(self.set),
            add: lower(self.add),
            remove: self.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
        };
        if m.is_empty() {
            return Err(invalid(
                at.to_owned(),
                "a header modifier needs `set`, `add` or `remove`",
            ));
        }
        m.validate().map_err(|e| invalid(at.to_owned(), e.to_string()))?;
        Ok(m)
    }
}

/// The filters at `at` (`...routes[N].filters` or `...backends[M].filters`);
/// `services`: every service name of the file, for mirrors; `mirrors`:
/// whether this place may mirror (routes may, backends not).
pub(super) fn into_filters(
    list: Vec<FilterFile>,
    at: &str,
    services: &HashSet<String>,
    mirrors: bool,
) -> Result<Filters, Invalid> {
    let mut f = Filters::default();
    for (i, item) in list.into_iter().enumerate() {
        let at = format!("{at}[{i}]");
        let one = match item {
            FilterFile {
                request_header_modifier: Some(m),
                response_header_modifier: None,
                request_mirror: None,
            } => One::Request(m),
            FilterFile {
                request_header_modifier: None,
                response_header_modifier: Some(m),
                request_mirror: None,
            } => One::Response(m),
            FilterFile {
                request_header_modifier: None,
                response_header_modifier: None,
                request_mirror: Some(m),
            } => One::Mirror(m),
            _ => return Err(invalid(
                at,
                "a filter is exactly one of `request_header_modifier`, `response_header_modifier`, `request_mirror`",
            )),
        };
        match one {
            One::Request(m) => {
                let at = format!("{at}.request_header_modifier");
                if f.request.is_some() {
                    return Err(invalid(at, "given twice: put every change in one modifier"));
                }
                f.request = Some(m.into_modifier(&at)?);
            }
            One::Response(m) => {
                let at = format!("{at}.response_header_modifier");
                if f.response.is_some() {
                    return Err(invalid(at, "given twice: put every change in one modifier"));
                }
                f.response = Some(m.into_modifier(&at)?);
            }
            One::Mirror(m) => {
                let at = format!("{at}.request_mirror");
                if !mirrors {
                    return Err(invalid(
                        at,
                        "a backend cannot mirror calls: put `request_mirror` on the route",
                    ));
                }
                if !services.contains(&m.service) {
                    return Err(invalid(
                        format!("{at}.service"),
                        format!("no service named `{}` in this file", m.service),
                    ));
                }
                let percent = match (m.percent, m.fraction) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(at, "give either `percent` or `fraction`, not both"));
                    }
                    (Some(p), None) => p,
                    (None, Some(f)) if f.denominator > 0 && f.numerator <= f.denominator => {
                        100.0 * f64::from(f.numerator) / f64::from(f.denominator)
                    }
                    (None, Some(_)) => {
                        return Err(invalid(
                            format!("{at}.fraction"),
                            "needs 0 ≤ numerator ≤ denominator and a denominator above 0",
                        ));
                    }
                    (None, None) => 100.0,
                };
                let share = Share::from_percent(percent).ok_or_else(|| {
                    invalid(
                        format!("{at}.percent"),
                        ModelError::BadPercent(percent.to_string()).to_string(),
                    )
                })?;
                if f.mirrors.len() == MAX_MIRRORS {
                    return Err(invalid(at, format!("at most {MAX_MIRRORS} mirrors per route")));
                }
                f.mirrors.push(Mirror {
                    service: m.service,
                    share,
                });
            }
        }
    }
    Ok(f)
}
