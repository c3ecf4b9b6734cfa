//! A VirtualService `uri` match as a gRPC service and method match. A gRPC
//! call's path is `/SERVICE/METHOD`, neither part containing `/`, so:
//!
//! - `prefix: /pkg.Svc/` → service `pkg.Svc`; `prefix: /pkg.Svc/Say` →
//!   service `pkg.Svc`, method matching `Say.*`; `prefix: /pkg.` → service
//!   matching `pkg\..*`; `prefix: /` → every call;
//! - `exact: /pkg.Svc/Method` → that service and method;
//! - `regex: /A/B`, where the one `/` between A and B is outside any group,
//!   class or alternative → service matching A, method matching B (a path
//!   has exactly two slashes, so this is the same match). Other regular
//!   expressions cannot be split and are refused.

use crate::model::StringMatch;

/// The service and method a `uri` match selects (`None`: any).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathMatch {
    pub service: Option<StringMatch>,
    pub method: Option<StringMatch>,
}

fn exact(s: &str) -> Option<StringMatch> {
    Some(StringMatch::Exact(s.to_owned()))
}

fn starts_with(s: &str) -> Option<StringMatch> {
    Some(StringMatch::RegularExpression(format!("{}.*", regex::escape(s))))
}

pub fn prefix(p: &str) -> Result<PathMatch, String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!(
            "uri prefix `{p}` does not start with `/`: it matches no gRPC call"
        ));
    };
    Ok(match rest.split_once('/') {
        None if rest.is_empty() => PathMatch::default(),
        None => PathMatch {
            service: starts_with(rest),
            method: None,
        },
        Some((_, m)) if m.contains('/') => {
            return Err(format!(
                "uri prefix `{p}` has more than two `/`: it matches no gRPC call"
            ))
        }
        Some((s, "")) => PathMatch {
            service: exact(s),
            method: None,
        },
        Some((s, m)) => PathMatch {
            service: exact(s),
            method: starts_with(m),
        },
    })
}

pub fn exact_path(p: &str) -> Result<PathMatch, String> {
    let parts = p.strip_prefix('/').and_then(|r| r.split_once('/'));
    match parts {
        Some((s, m)) if !s.is_empty() && !m.is_empty() && !m.contains('/') => Ok(PathMatch {
            service: exact(s),
            method: exact(m),
        }),
        _ => Err(format!(
            "uri exact `{p}` is not a gRPC path `/SERVICE/METHOD`: it matches no gRPC call"
        )),
    }
}

/// Splits `/A/B` at its one top-level `/` after the first.
pub fn regex(r: &str) -> Result<PathMatch, String> {
    let bad = |why: &str| {
        Err(format!(
            "uri regex `{r}` cannot be split into a service and a method ({why}); write it as `/SERVICE/METHOD` \
             with one `/` outside groups, e.g. `/helloworld\\.Greeter/Say.*`"
        ))
    };
    if let Err(e) = regex::Regex::new(r) {
        let reason = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
        return Err(format!("uri regex `{r}`: {reason}"));
    }
    let body = r.strip_prefix('^').unwrap_or(r);
    let body = match body.strip_suffix('$') {
        Some(b) if !b.ends_with('\\') => b,
        _ => body,
    };
    let Some(body) = body.strip_prefix('/') else {
        return bad("it does not start with `/`");
    };
    let mut slashes = Vec::new();
    let (mut depth, mut class, mut escaped) = (0usize, false, false);
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' if !class => class = true,
            ']' if class => class = false,
            _ if class => {}
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '|' if depth == 0 => return bad("an alternative at the top level"),
            '/' if depth == 0 => slashes.push(i),
            _ => {}
        }
    }
    let [at] = slashes[..] else {
        return bad("it needs exactly one `/` between the service and the method");
    };
    let (s, m) = (&body[..at], &body[at + 1..]);
    let part = |p: &str| (!p.is_empty() && p != ".*").then(|| StringMatch::RegularExpression(p.to_owned()));
    Ok(PathMatch {
        service: part(s),
        method: part(m),
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::model::StringMatch::{Exact, RegularExpression as Re};

    fn pm(service: Option<StringMatch>, method: Option<StringMatch>) -> PathMatch {
        PathMatch { service, method }
    }

    #[test]
    fn prefixes_select_a_service_a_method_prefix_or_everything() {
        assert_eq!(prefix("/").unwrap(), PathMatch::default());
        assert_eq!(
            prefix("/helloworld.Greeter/").unwrap(),
            pm(Some(Exact("helloworld.Greeter".into())), None)
        );
        assert_eq!(
            prefix("/helloworld.Greeter/Say").unwrap(),
            pm(Some(Exact("helloworld.Greeter".into())), Some(Re("Say.*".into())))
        );
        assert_eq!(
            prefix("/helloworld.").unwrap(),
            pm(Some(Re("helloworld\\..*".into())), None)
        );
        assert!(prefix("greeter").unwrap_err().contains("does not start with `/`"));
        assert!(prefix("/a/b/c").is_err());
    }

    #[test]
    fn exact_paths_name_a_service_and_method() {
        assert_eq!(
            exact_path("/helloworld.Greeter/SayHello").unwrap(),
            pm(Some(Exact("helloworld.Greeter".into())), Some(Exact("SayHello".into())))
        );
        for bad in ["/helloworld.Greeter", "/helloworld.Greeter/", "/a/b/c", "x"] {
            assert!(exact_path(bad).unwrap_err().contains("is not a gRPC path"), "{bad}");
        }
    }

    #[test]
    fn regexes_split_at_their_one_top_level_slash() {
        assert_eq!(
            regex("/helloworld\\.Greeter/Say.*").unwrap(),
            pm(Some(Re("helloworld\\.Greeter".into())), Some(Re("Say.*".into())))
        );
        assert_eq!(
            regex("^/(a|b)\\.Svc/.*$").unwrap(),
            pm(Some(Re("(a|b)\\.Svc".into())), None)
        );
        assert_eq!(regex("/.*/Get[/]?x").unwrap(), pm(None, Some(Re("Get[/]?x".into()))));
        assert!(regex(".*Greeter.*").unwrap_err().contains("does not start with `/`"));
        assert!(regex("/a|/b").unwrap_err().contains("alternative"));
        assert!(regex("/a/b/c").unwrap_err().contains("exactly one `/`"));
        let e = regex("/a(/b").unwrap_err();
        assert!(e.starts_with("uri regex `/a(/b`:") && !e.contains('\n'), "{e}");
    }
}
