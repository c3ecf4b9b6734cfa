//! Routes compiled from the model: matching a call on its gRPC service,
//! method and headers, and the weighted split between backend subsets.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use http::{HeaderMap, HeaderName};

use super::{
    filters::{CallFilters, RouteMirrors},
    locality::{self, Classes, Tiers},
    rand::rand_u64,
    ring::Ring,
};
use crate::model::{self, StringMatch};

/// What a route looks at in a call.
#[derive(Debug, Clone, Copy)]
pub struct CallMeta<'a> {
    /// gRPC service from `:path` (`/pkg.Service/Method` → `pkg.Service`).
    pub service: &'a str,
    pub method: &'a str,
    pub headers: &'a (dyn CallHeaders + Sync),
}

/// The request headers a route matches on, whichever engine holds them.
pub trait CallHeaders: std::fmt::Debug {
    /// Whether a value of header `name` (lowercase) satisfies `pred`.
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool;
}

impl CallHeaders for HeaderMap {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool {
        self.get_all(name)
            .iter()
            .any(|v| v.to_str().map(&mut *pred).unwrap_or(false))
    }
}

impl<'a> CallMeta<'a> {
    pub fn from_path(path: &'a str, headers: &'a (dyn CallHeaders + Sync)) -> Self {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = match trimmed.split_once('/') {
            Some((s, m)) => (s, m),
            None => (trimmed, ""),
        };
        CallMeta {
            service,
            method,
            headers,
        }
    }
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Regex(regex::Regex),
    Never,
}

impl Matcher {
    /// Regular expressions match the whole value. The model was validated,
    /// so a pattern that fails to compile here cannot happen; if it did, the
    /// matcher matches nothing rather than everything.
    fn compile(m: &StringMatch) -> Matcher {
        match m {
            StringMatch::Exact(s) => Matcher::Exact(s.clone()),
            StringMatch::RegularExpression(p) => match regex::Regex::new(&format!("^(?:{p})$")) {
                Ok(re) => Matcher::Regex(re),
                Err(e) => {
                    tracing::error!(pattern = %p, error = %e, "route regex does not compile; it matches nothing");
                    Matcher::Never
                }
            },
        }
    }

    fn is_match(&self, v: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == v,
            Matcher::Regex(re) => re.is_match(v),
            Matcher::Never => false,
        }
    }
}

#[derive(Debug)]
struct CompiledMatch {
    service: Option<Matcher>,
    method: Option<Matcher>,
    headers: Vec<(Option<HeaderName>, Matcher)>,
}

impl CompiledMatch {
    fn is_match(&self, call: &CallMeta<'_>) -> bool {
        if let Some(m) = &self.service {
            if !m.is_match(call.service) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.is_match(call.method) {
                return false;
            }
        }
        self.headers.iter().all(|(name, m)| {
            let Some(name) = name else { return false };
            call.headers.any_value(name.as_str(), &mut |v| m.is_match(v))
        })
    }
}

/// A subset of a service's endpoints (indices into its endpoint list) with
/// its own round-robin cursor and, for a ring-hash service, its ring; split
/// by locality tier when the service prefers close endpoints (see
/// [`super::locality`]), each tier with its own cursor and ring.
#[derive(Debug, Default)]
pub struct Subset {
    pub(crate) members: Vec<usize>,
    pub(crate) cursor: AtomicUsize,
    pub(crate) ring: Option<Ring>,
    pub(crate) tiers: Option<Box<Tiers>>,
}

impl Subset {
    pub fn new(members: Vec<usize>) -> Self {
        Subset {
            members,
            cursor: AtomicUsize::new(0),
            ring: None,
            tiers: None,
        }
    }

    /// Places the members on a ring, and each tier's members on the tier's
    /// own ring; `addresses` are the service's endpoints' addresses, by
    /// index.
    pub fn build_ring(&mut self, addresses: &[std::net::SocketAddr]) {
        let members: Vec<(usize, std::net::SocketAddr)> = self
            .members
            .iter()
            .filter_map(|i| addresses.get(*i).map(|a| (*i, *a)))
            .collect();
        self.ring = Some(Ring::build(members.into_iter()));
        if let Some(tiers) = &mut self.tiers {
            tiers.build_rings(addresses);
        }
    }
}

/// How a route's calls are divided among its backends.
#[derive(Debug)]
pub(crate) enum Split {
    /// One backend with weight.
    Single(usize),
    /// A smooth weighted round-robin schedule (weights reduced by their gcd
    /// and small enough): exact shares, interleaved.
    Schedule { order: Vec<u16>, cursor: AtomicUsize },
    /// Weighted random over cumulative weights (huge weight sums).
    Random { cumulative: Vec<(u64, usize)>, total: u64 },
}

const MAX_SCHEDULE: u64 = 4096;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Split {
    pub(crate) fn new(weights: &[u32]) -> Split {
        let live: Vec<(usize, u64)> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(i, w)| (i, u64::from(*w)))
            .collect();
        if live.len() <= 1 {
            return Split::Single(live.first().map(|(i, _)| *i).unwrap_or(0));
        }
        let g = live.iter().fold(0, |g, (_, w)| gcd(g, *w));
        let reduced: Vec<(usize, u64)> = live.iter().map(|(i, w)| (*i, w / g.max(1))).collect();
        let total: u64 = reduced.iter().map(|(_, w)| w).sum();
        if total <= MAX_SCHEDULE && weights.len() <= usize::from(u16::MAX) {
            // nginx's smooth weighted round-robin, unrolled once.
            let mut current = vec![0i64; reduced.len()];
            let mut order = Vec::with_capacity(total as usize);
            for _ in 0..total {
                let mut best = 0;
                for (k, (_, w)) in reduced.iter().enumerate() {
                    current[k] += *w as i64;
                    if current[k] > current[best] {
                        best = k;
                    }
                }
                current[best] -= total as i64;
                order.push(reduced[best].0 as u16);
            }
            Split::Schedule {
                order,
                cursor: AtomicUsize::new(0),
            }
        } else {
            let mut acc = 0;
            let cumulative = live
                .iter()
                .map(|(i, w)| {
                    acc += w;
                    (acc, *i)
                })
                .collect();
            Split::Random { cumulative, total: acc }
        }
    }

    pub(crate) fn next(&self) -> usize {
        match self {
            Split::Single(i) => *i,
            Split::Schedule { order, cursor } => {
                let n = cursor.fetch_add(1, Relaxed);
                usize::from(order[n % order.len()])
            }
            Split::Random { cumulative, total } => {
                let r = rand_u64() % total.max(&1);
                cumulative
                    .iter()
                    .find(|(c, _)| r < *c)
                    .or(cumulative.last())
                    .map(|(_, i)| *i)
                    .unwrap_or(0)
            }
        }
    }
}

/// A route's matches, compiled: an empty list matches every call,
/// otherwise any one match.
#[derive(Debug)]
pub(crate) struct Matches(Vec<CompiledMatch>);

impl Matches {
    pub(crate) fn compile(matches: &[model::RouteMatch]) -> Self {
        Matches(
            matches
                .iter()
                .map(|m| CompiledMatch {
                    service: m.service.as_ref().map(Matcher::compile),
                    method: m.method.as_ref().map(Matcher::compile),
                    headers: m
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                HeaderName::from_bytes(h.name.as_bytes()).ok(),
                                Matcher::compile(&h.value),
                            )
                        })
                        .collect(),
                })
                .collect(),
        )
    }

    pub(crate) fn is_match(&self, call: &CallMeta<'_>) -> bool {
        self.0.is_empty() || self.0.iter().any(|m| m.is_match(call))
    }
}

/// A compiled route: its matches and its weighted backend subsets.
#[derive(Debug)]
pub struct CompiledRoute {
    pub name: Option<String>,
    matches: Matches,
    pub(crate) backends: Vec<(Subset, u32)>,
    split: Split,
    /// Header edits for the calls sent to each backend (by index; empty
    /// when no backend has any).
    pub(crate) filters: Vec<Option<Box<CallFilters>>>,
    pub(crate) mirrors: Option<Box<RouteMirrors>>,
    /// The filters, one line each, for display.
    pub(crate) described: Vec<String>,
    /// The route's own limit on a call's duration.
    pub timeout: Option<std::time::Duration>,
}

impl CompiledRoute {
    /// `endpoints` are the service's endpoints, in the order the indices of
    /// subsets refer to; `classes` their locality for this agent.
    pub fn compile(route: &model::Route, endpoints: &[model::Endpoint], classes: &Classes) -> Self {
        let matches = Matches::compile(&route.matches);
        let backends: Vec<(Subset, u32)> = route
            .backends
            .iter()
            .map(|b| {
                let members = endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, ep)| b.labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
                    .map(|(i, _)| i)
                    .collect();
                (locality::subset(members, classes), b.weight)
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|(_, w)| *w).collect();
        let mut filters: Vec<Option<Box<CallFilters>>> = route
            .backends
            .iter()
            .map(|b| CallFilters::compile(&route.filters, &b.filters))
            .collect();
        if filters.iter().all(Option::is_none) {
            filters = Vec::new();
        }
        CompiledRoute {
            name: route.name.clone(),
            matches,
            backends,
            split: Split::new(&weights),
            filters,
            mirrors: RouteMirrors::compile(&route.filters),
            described: super::filters::describe(route),
            timeout: route.timeout,
        }
    }

    /// The header edits for calls sent to backend `b`.
    pub fn filters(&self, b: usize) -> Option<&CallFilters> {
        self.filters.get(b).and_then(|f| f.as_deref())
    }

    /// An empty match list matches every call; otherwise any one match.
    pub fn is_match(&self, call: &CallMeta<'_>) -> bool {
        self.matches.is_match(call)
    }

    /// The backend for the next call, by weight.
    pub fn next_backend(&self) -> usize {
        self.split.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_splits_exactly_and_interleaves() {
        let s = Split::new(&[90, 10]);
        let mut counts = [0usize; 2];
        let picks: Vec<usize> = (0..10_000).map(|_| s.next()).collect();
        for p in &picks {
            counts[*p] += 1;
        }
        assert_eq!(counts, [9000, 1000]);
        // Interleaved: never more than 9 v1 calls in a row for 90:10.
        let longest = picks.split(|p| *p == 1).map(|run| run.len()).max().unwrap_or(0);
        assert!(longest <= 9, "longest run {longest}");
    }

    #[test]
    fn zero_weights_get_nothing() {
        let s = Split::new(&[0, 100]);
        assert!((0..1000).all(|_| s.next() == 1));
        let s = Split::new(&[3, 0, 1]);
        let n0 = (0..4000).filter(|_| s.next() == 0).count();
        assert_eq!(n0, 3000);
    }

    #[test]
    fn huge_weights_use_random_within_two_percent() {
        let s = Split::new(&[700_001, 300_000]);
        assert!(matches!(s, Split::Random { .. }));
        let n0 = (0..10_000).filter(|_| s.next() == 0).count();
        assert!((6800..=7200).contains(&n0), "{n0}");
    }

    #[test]
    fn call_meta_splits_the_path() {
        let h = HeaderMap::new();
        let c = CallMeta::from_path("/helloworld.Greeter/SayHello", &h);
        assert_eq!((c.service, c.method), ("helloworld.Greeter", "SayHello"));
        let c = CallMeta::from_path("/odd", &h);
        assert_eq!((c.service, c.method), ("odd", ""));
    }
}
