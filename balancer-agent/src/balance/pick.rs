//! The per-call policies over a subset of endpoints: round-robin, the
//! power of two choices over in-flight calls or over peak-EWMA cost, and
//! consistent hashing on the subset's ring.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use super::{endpoint::EndpointRt, rand::rand_u64, route::Subset};
use crate::model::Policy;

fn rand_below(n: usize) -> usize {
    (rand_u64() % n as u64) as usize
}

/// Endpoints already tried by this call, by [`identity`].
pub type Tried<'a> = &'a [usize];

/// An endpoint's identity for [`Tried`].
pub fn identity(ep: &Arc<EndpointRt>) -> usize {
    Arc::as_ptr(ep) as usize
}

fn eligible(ep: &Arc<EndpointRt>, tried: Tried<'_>) -> bool {
    ep.is_available() && !tried.contains(&identity(ep))
}

/// Picks an available endpoint of `subset` that the call has not tried yet:
/// in a locality tier first when the subset has tiers (see
/// [`super::locality`]). `key` is the hash of the call's key for
/// [`Policy::RingHash`]: the first endpoint from it on the ring (the
/// subset's, or the tier's) that is available and untried (an ejected,
/// draining or tried one is walked past, so its keys spread over the next
/// ones); without a key, ring-hash picks round-robin.
pub fn pick(
    policy: Policy,
    subset: &Subset,
    endpoints: &[Arc<EndpointRt>],
    tried: Tried<'_>,
    key: Option<u64>,
) -> Option<Arc<EndpointRt>> {
    match &subset.tiers {
        None => pick_flat(policy, subset, endpoints, tried, key),
        Some(tiers) => super::locality::pick(policy, tiers, endpoints, tried, key),
    }
}

/// Picks among every member of `subset`, whatever their tier.
pub(super) fn pick_flat(
    policy: Policy,
    subset: &Subset,
    endpoints: &[Arc<EndpointRt>],
    tried: Tried<'_>,
    key: Option<u64>,
) -> Option<Arc<EndpointRt>> {
    let n = subset.members.len();
    let ep = |k: usize| endpoints.get(subset.members[k]);
    match n {
        0 => None,
        1 => ep(0).filter(|e| eligible(e, tried)).cloned(),
        _ => match (policy, key.zip(subset.ring.as_ref())) {
            (Policy::RingHash, Some((hash, ring))) => ring
                .find(hash, |i| endpoints.get(i).is_some_and(|e| eligible(e, tried)))
                .and_then(|i| endpoints.get(i))
                .cloned(),
            (Policy::RoundRobin | Policy::RingHash, _) => {
                let start = subset.cursor.fetch_add(1, Relaxed);
                (0..n)
                    .filter_map(|i| ep((start + i) % n))
                    .find(|e| eligible(e, tried))
                    .cloned()
            }
            (Policy::LeastRequest, _) => p2c(n, &ep, tried, |e| e.in_flight() as f64),
            (Policy::PeakEwma, _) => p2c(n, &ep, tried, |e| e.ewma_cost()),
        },
    }
}

/// Power of two choices: two distinct random members, the lower load wins.
/// When a choice is not eligible, the lowest-load eligible member is taken
/// (a linear scan, only on that rare path).
fn p2c<'e>(
    n: usize,
    ep: &impl Fn(usize) -> Option<&'e Arc<EndpointRt>>,
    tried: Tried<'_>,
    load: impl Fn(&EndpointRt) -> f64,
) -> Option<Arc<EndpointRt>> {
    let a = rand_below(n);
    let mut b = rand_below(n - 1);
    if b >= a {
        b += 1;
    }
    match (
        ep(a).filter(|e| eligible(e, tried)),
        ep(b).filter(|e| eligible(e, tried)),
    ) {
        (Some(x), Some(y)) => Some(if load(y) < load(x) { y } else { x }.clone()),
        _ => {
            let start = rand_below(n);
            (0..n)
                .filter_map(|i| ep((start + i) % n))
                .filter(|e| eligible(e, tried))
                .min_by(|x, y| load(x).total_cmp(&load(y)))
                .cloned()
        }
    }
}
