//! Route filters compiled for the data plane: header modifiers folded into
//! one edit per backend (the route's, then the backend's), applied in one
//! pass over a header block, and the route's mirrors.

use std::sync::Arc;

use crate::model::{self, HeaderModifier, Share};

/// Header modifiers in effect, as one pass over a header block: the fields
/// whose name is in `clear` are dropped, then `append` is added at the end.
/// Any sequence of remove/set/add comes down to this: a remove or a set of
/// a name drops its earlier values, a set then appends its value, an add
/// appends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderEdit {
    pub clear: Vec<Box<[u8]>>,
    pub append: Vec<Field>,
}

/// A header field an edit appends: name, value.
pub type Field = (Box<[u8]>, Box<[u8]>);

impl HeaderEdit {
    /// The edit of `mods` applied in order (each one remove, set, add);
    /// `None` when they change nothing.
    pub fn of<'a>(mods: impl IntoIterator<Item = &'a HeaderModifier>) -> Option<HeaderEdit> {
        let mut e = HeaderEdit::default();
        for m in mods {
            for name in &m.remove {
                e.drop_name(name.as_bytes());
            }
            for h in &m.set {
                e.drop_name(h.name.as_bytes());
                e.append.push((h.name.as_bytes().into(), h.value.as_bytes().into()));
            }
            for h in &m.add {
                e.append.push((h.name.as_bytes().into(), h.value.as_bytes().into()));
            }
        }
        (!e.clear.is_empty() || !e.append.is_empty()).then_some(e)
    }

    fn drop_name(&mut self, name: &[u8]) {
        self.append.retain(|(n, _)| &**n != name);
        if !self.clear.iter().any(|n| &**n == name) {
            self.clear.push(name.into());
        }
    }

    /// Whether fields named `name` are dropped.
    pub fn clears(&self, name: &[u8]) -> bool {
        self.clear.iter().any(|n| &**n == name)
    }
}

/// What applies to a call sent to one backend of a route.
#[derive(Debug, Default)]
pub struct CallFilters {
    /// On the request head sent to the endpoint.
    pub request: Option<HeaderEdit>,
    /// On the response head sent to the client (shared with the call).
    pub response: Option<Arc<HeaderEdit>>,
}

impl CallFilters {
    /// The route's filters then the backend's; `None` when neither modifies
    /// headers (the call's head goes on untouched).
    pub fn compile(route: &model::Filters, backend: &model::Filters) -> Option<Box<CallFilters>> {
        let request = HeaderEdit::of(route.request.iter().chain(backend.request.iter()));
        let response = HeaderEdit::of(route.response.iter().chain(backend.response.iter())).map(Arc::new);
        (request.is_some() || response.is_some()).then(|| Box::new(CallFilters { request, response }))
    }
}

/// A route's mirrors, with the route's own request edit (a copy carries
/// the route's header changes, not a backend's).
#[derive(Debug)]
pub struct RouteMirrors {
    pub mirrors: Vec<CompiledMirror>,
    pub request: Option<HeaderEdit>,
}

#[derive(Debug)]
pub struct CompiledMirror {
    /// The model service the copies go to.
    pub service: Arc<str>,
    pub share: Share,
}

impl RouteMirrors {
    pub fn compile(route: &model::Filters) -> Option<Box<RouteMirrors>> {
        if route.mirrors.is_empty() {
            return None;
        }
        Some(Box::new(RouteMirrors {
            mirrors: route
                .mirrors
                .iter()
                .map(|m| CompiledMirror {
                    service: m.service.as_str().into(),
                    share: m.share,
                })
                .collect(),
            request: HeaderEdit::of(route.request.iter()),
        }))
    }
}

/// The filters of `route` and of its backends, one line each, as
/// `balancerctl service show` prints them, e.g. `request: set x-a=1, remove
/// x-b`, `backend 1 response: add x-c=2`, `mirror: shadow 10%`.
pub fn describe(route: &model::Route) -> Vec<String> {
    fn modifier(m: &HeaderModifier) -> String {
        let mut parts: Vec<String> = m.set.iter().map(|h| format!("set {}={}", h.name, h.value)).collect();
        parts.extend(m.add.iter().map(|h| format!("add {}={}", h.name, h.value)));
        parts.extend(m.remove.iter().map(|n| format!("remove {n}")));
        parts.join(", ")
    }
    let mut out = Vec::new();
    let mut filters = |prefix: &str, f: &model::Filters| {
        if let Some(m) = &f.request {
            out.push(format!("{prefix}request: {}", modifier(m)));
        }
        if let Some(m) = &f.response {
            out.push(format!("{prefix}response: {}", modifier(m)));
        }
        for m in &f.mirrors {
            out.push(format!("{prefix}mirror: {} {}%", m.service, m.share.percent()));
        }
    };
    filters("", &route.filters);
    for (i, b) in route.backends.iter().enumerate() {
        filters(&format!("backend {i} "), &b.filters);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HeaderValue as H;

    #[test]
    fn modifiers_fold_into_one_edit_in_order() {
        let route = HeaderModifier {
            set: vec![H::new("x-a", "route")],
            add: vec![H::new("x-b", "1")],
            remove: vec!["x-gone".into()],
        };
        let backend = HeaderModifier {
            set: vec![H::new("x-b", "backend")],
            add: vec![H::new("x-a", "more")],
            remove: vec![],
        };
        let e = HeaderEdit::of([&route, &backend]).unwrap_or_default();
        let names: Vec<&[u8]> = e.clear.iter().map(|n| &**n).collect();
        assert_eq!(names, [&b"x-gone"[..], b"x-a", b"x-b"]);
        let appended: Vec<(&[u8], &[u8])> = e.append.iter().map(|(n, v)| (&**n, &**v)).collect();
        // The backend's set of x-b replaced the route's add of it.
        assert_eq!(
            appended,
            [(&b"x-a"[..], &b"route"[..]), (b"x-b", b"backend"), (b"x-a", b"more")]
        );
        assert!(HeaderEdit::of([&HeaderModifier::default()]).is_none());
    }
}
