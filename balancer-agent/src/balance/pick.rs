//! The per-call policies over a subset of endpoints: round-robin, and the
//! power of two choices over in-flight calls or over peak-EWMA cost.

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
/// in a locality tier first when the subset has tiers.
pub fn pick(
    policy: Policy,
    subset: &Subset,
    endpoints: &[Arc<EndpointRt>],
    tried: Tried<'_>,
) -> Option<Arc<EndpointRt>> {
    match &subset.tiers {
        None => pick_flat(policy, subset, endpoints, tried),
        Some(tiers) => super::locality::pick(policy, tiers, endpoints, tried),
    }
}

/// Picks among every member of `subset`, whatever their tier.
pub(super) fn pick_flat(
    policy: Policy,
    subset: &Subset,
    endpoints: &[Arc<EndpointRt>],
    tried: Tried<'_>,
) -> Option<Arc<EndpointRt>> {
    let n = subset.members.len();
    let ep = |k: usize| endpoints.get(subset.members[k]);
    match n {
        0 => None,
        1 => ep(0).filter(|e| eligible(e, tried)).cloned(),
        _ => match policy {
            Policy::RoundRobin => {
                let start = subset.cursor.fetch_add(1, Relaxed);
                (0..n)
                    .filter_map(|i| ep((start + i) % n))
                    .find(|e| eligible(e, tried))
                    .cloned()
            }
            Policy::LeastRequest => p2c(n, &ep, tried, |e| e.in_flight() as f64),
            Policy::PeakEwma => p2c(n, &ep, tried, |e| e.ewma_cost()),
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
