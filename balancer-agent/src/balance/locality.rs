//! Locality: which endpoints a call prefers, seen from the agent's node.
//!
//! A service with `traffic_distribution: PreferClose` sorts its endpoints,
//! when the model changes (never per call), into three tiers: on the
//! agent's node, in its zone, and the rest. A call goes to one tier, drawn
//! by the tiers' shares, and the service's policy picks inside it.
//!
//! The shares follow Envoy's priority levels with its overprovisioning
//! factor 1.4: a tier's health is `1.4 × available / endpoints`, capped at
//! 100%; the closest tier takes its health's worth of calls, the next tier
//! up to its own health of what is left, and so on. A tier with at least
//! 5 of 7 endpoints available (71% × 1.4 ≥ 100%) keeps every call; below
//! that the rest spills over to the next tier in proportion. When the
//! tiers' healths sum to less than 100% (every tier degraded), the shares
//! are scaled up to 100% among them. "Available" is what picking already
//! uses: neither draining nor ejected by outlier detection, so overload
//! that makes endpoints fail or refuse calls moves traffic outwards too.
//! A call whose drawn tier has nothing left for it (every endpoint tried or
//! unavailable) tries the other tiers, closest first; a call retried (its
//! endpoint refused it or could not be reached) goes first to the closest
//! tier it has not tried yet, as Envoy's `previous_priorities` retry
//! option does. So endpoints dying near the agent, before outlier
//! detection ejects them, fail no call while others are ready.
//!
//! With policy `ring-hash`, each tier has its own ring and a call's key
//! (the hash header's value) draws its tier instead of a random number: a
//! key keeps landing in the same tier and on the same endpoint of it while
//! the tiers' health stays; when the close tier degrades, the keys that
//! spill over are the same ones each time, and only they move. A call with
//! no key draws at random and picks round-robin inside its tier.
//!
//! `internal_traffic_policy: Local` keeps only the endpoints on the agent's
//! node; the others never take a call, even when none is local.
//!
//! A service with neither is balanced as if locality did not exist: one
//! subset, no per-call work. A tiered pick costs one pass over the subset
//! per call (counting each tier's available endpoints), which is what
//! keeps the spill-over exact as endpoints are ejected and come back.

use std::sync::Arc;

use serde::Serialize;

use super::{
    endpoint::EndpointRt,
    pick::{identity, Tried},
    rand::rand_u64,
    route::Subset,
};
use crate::model::{Endpoint, InternalTrafficPolicy, Locality, Policy, Service, TrafficDistribution};

/// Envoy's overprovisioning factor: a tier keeps all its calls while at
/// least 1/1.4 (71%) of its endpoints are available.
pub const OVERPROVISIONING: f64 = 1.4;

/// How close an endpoint is to the agent, closest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Node,
    Zone,
    Other,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Node, Tier::Zone, Tier::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Node => "node",
            Tier::Zone => "zone",
            Tier::Other => "other",
        }
    }
}

/// Where a service's endpoints stand for this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classes {
    /// Every endpoint alike: no preference, no restriction.
    Flat,
    /// Per endpoint (in the service's order): its tier, or `None` when it
    /// must take no call (`internal_traffic_policy: Local`, another node).
    Tiered(Vec<Option<Tier>>),
}

impl Classes {
    /// The class of endpoint `i`, for display: `None` when flat.
    pub fn label(&self, i: usize) -> Option<&'static str> {
        match self {
            Classes::Flat => None,
            Classes::Tiered(t) => Some(t.get(i).copied().flatten().map_or("off-node", Tier::as_str)),
        }
    }
}

/// Sorts the endpoints of `svc` for an agent at `here`.
///
/// The zone tier uses the EndpointSlice hints when every endpoint has them
/// (as kube-proxy does): an endpoint is in it when its `for_zones` names the
/// agent's zone. Otherwise an endpoint is in it when it runs in that zone.
pub fn classify(svc: &Service, here: &Locality) -> Classes {
    let on_node = |ep: &Endpoint| here.node.is_some() && ep.node == here.node;
    if svc.internal_traffic_policy == InternalTrafficPolicy::Local {
        let t = svc
            .endpoints
            .iter()
            .map(|ep| on_node(ep).then_some(Tier::Node))
            .collect();
        return Classes::Tiered(t);
    }
    if svc.traffic_distribution != TrafficDistribution::PreferClose || (here.zone.is_none() && here.node.is_none()) {
        return Classes::Flat;
    }
    let hinted = !svc.endpoints.is_empty() && svc.endpoints.iter().all(|ep| ep.for_zones.is_some());
    let in_zone = |ep: &Endpoint| {
        let Some(zone) = &here.zone else { return false };
        if hinted {
            ep.for_zones.as_deref().is_some_and(|z| z.contains(zone))
        } else {
            ep.zone.as_ref() == Some(zone)
        }
    };
    let t = svc
        .endpoints
        .iter()
        .map(|ep| {
            Some(if on_node(ep) {
                Tier::Node
            } else if in_zone(ep) {
                Tier::Zone
            } else {
                Tier::Other
            })
        })
        .collect();
    Classes::Tiered(t)
}

/// A subset split by tier: each tier with its own round-robin cursor and,
/// for a ring-hash service, its own ring.
#[derive(Debug, Default)]
pub struct Tiers([Subset; 3]);

impl Tiers {
    /// The members of the subset by tier.
    pub fn members(&self) -> impl Iterator<Item = (Tier, &[usize])> {
        Tier::ALL.into_iter().zip(self.0.iter().map(|s| s.members.as_slice()))
    }

    /// Places each tier's members on the tier's own ring.
    pub(super) fn build_rings(&mut self, addresses: &[std::net::SocketAddr]) {
        for s in &mut self.0 {
            s.build_ring(addresses);
        }
    }
}

/// The subset of `members` (indices into the service's endpoints) that may
/// take calls, split by tier when more than one tier has members.
pub fn subset(members: Vec<usize>, classes: &Classes) -> Subset {
    let Classes::Tiered(tiers) = classes else {
        return Subset::new(members);
    };
    let mut by_tier: [Vec<usize>; 3] = Default::default();
    let kept: Vec<usize> = members
        .into_iter()
        .filter(|i| match tiers.get(*i).copied().flatten() {
            Some(t) => {
                by_tier[t as usize].push(*i);
                true
            }
            None => false,
        })
        .collect();
    let mut s = Subset::new(kept);
    if by_tier.iter().filter(|t| !t.is_empty()).count() > 1 {
        s.tiers = Some(Box::new(Tiers(by_tier.map(Subset::new))));
    }
    s
}

/// The share of calls of each tier, from how many of its endpoints are
/// available and how many it has (see the module's documentation). All
/// zeros when no endpoint is available.
pub fn shares(available: [usize; 3], total: [usize; 3]) -> [f64; 3] {
    let mut out = [0.0; 3];
    let mut left = 1.0_f64;
    for i in 0..3 {
        let health = if total[i] == 0 {
            0.0
        } else {
            (OVERPROVISIONING * available[i] as f64 / total[i] as f64).min(1.0)
        };
        out[i] = health.min(left);
        left -= out[i];
    }
    let sum = 1.0 - left;
    if sum > 0.0 && left > 1e-12 {
        for s in &mut out {
            *s /= sum;
        }
    }
    out
}

/// The tier a draw `u` in `[0, 1)` lands in, by `shares`; the closest tier
/// when every share is zero.
pub fn tier_for(shares: [f64; 3], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, s) in shares.iter().enumerate() {
        acc += s;
        if *s > 0.0 && u < acc {
            return i;
        }
    }
    shares.iter().rposition(|s| *s > 0.0).unwrap_or(0)
}

/// The draw in `[0, 1)` that places a call in a tier: random, or for a
/// call with a hash key (ring-hash) a function of the key, so that a key
/// lands in the same tier, and so on the same endpoint of that tier's ring,
/// for as long as the shares stay. The key is mixed first (SplitMix64's
/// finalizer): the keys of one tier are then spread over its whole ring,
/// not the keys of one arc of it.
fn draw(key: Option<u64>) -> f64 {
    let bits = match key {
        None => rand_u64(),
        Some(k) => {
            let mut z = k ^ (k >> 30);
            z = z.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z ^= z >> 27;
            z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    };
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Picks for a call in a tiered subset: a tier by shares, then `policy`
/// inside it (with ring-hash, on that tier's ring from `key`); the other
/// tiers, closest first, when that tier has no endpoint left for the call.
pub(super) fn pick(
    policy: Policy,
    tiers: &Tiers,
    endpoints: &[Arc<EndpointRt>],
    tried: Tried<'_>,
    key: Option<u64>,
) -> Option<Arc<EndpointRt>> {
    let mut available = [0; 3];
    let mut total = [0; 3];
    for (t, s) in tiers.0.iter().enumerate() {
        total[t] = s.members.len();
        available[t] = s
            .members
            .iter()
            .filter(|i| endpoints.get(**i).is_some_and(|e| e.is_available()))
            .count();
    }
    if !tried.is_empty() {
        // A retry: tiers the call has not tried yet first, closest first.
        let mut was_tried = [false; 3];
        for (t, s) in tiers.0.iter().enumerate() {
            was_tried[t] = s
                .members
                .iter()
                .any(|i| endpoints.get(*i).is_some_and(|e| tried.contains(&identity(e))));
        }
        let order = (0..3)
            .filter(|t| !was_tried[*t])
            .chain((0..3).filter(|t| was_tried[*t]));
        return order
            .into_iter()
            .find_map(|t| super::pick::pick_flat(policy, &tiers.0[t], endpoints, tried, key));
    }
    let shares = shares(available, total);
    let first = if shares.contains(&1.0) {
        tier_for(shares, 0.0)
    } else {
        tier_for(shares, draw(key))
    };
    std::iter::once(first)
        .chain((0..3).filter(|t| *t != first))
        .find_map(|t| super::pick::pick_flat(policy, &tiers.0[t], endpoints, tried, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 3], b: [f64; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn a_healthy_close_tier_keeps_every_call() {
        assert_eq!(shares([2, 3, 5], [2, 3, 5]), [1.0, 0.0, 0.0]);
        assert_eq!(shares([0, 3, 5], [0, 3, 5]), [0.0, 1.0, 0.0]);
        // 5 of 7 available: 1.4 × 5/7 = 100%, still every call.
        assert!(close(shares([0, 5, 4], [0, 7, 4]), [0.0, 1.0, 0.0]));
    }

    #[test]
    fn below_the_threshold_the_rest_spills_to_the_next_tier() {
        // 2 of 3: 1.4 × 2/3 = 93.3% stays, 6.7% spills.
        assert!(close(shares([0, 2, 3], [0, 3, 3]), [0.0, 14.0 / 15.0, 1.0 / 15.0]));
        // 1 of 4: 35% stays.
        assert!(close(shares([0, 1, 6], [0, 4, 6]), [0.0, 0.35, 0.65]));
        // The node tier spills into the zone tier before the rest.
        assert!(close(shares([1, 4, 6], [2, 4, 6]), [0.7, 0.3, 0.0]));
    }

    #[test]
    fn a_tier_with_nothing_available_takes_no_call() {
        assert_eq!(shares([0, 0, 2], [1, 3, 2]), [0.0, 0.0, 1.0]);
        assert_eq!(shares([0, 0, 0], [1, 3, 2]), [0.0, 0.0, 0.0]);
    }

    #[test]
    fn when_every_tier_is_degraded_the_shares_are_scaled_to_all_calls() {
        // Healths 35% and 14%: 49% in all, scaled up.
        let s = shares([0, 1, 1], [0, 4, 10]);
        assert!(close(s, [0.0, 0.35 / 0.49, 0.14 / 0.49]), "{s:?}");
    }

    #[test]
    fn draws_land_in_tiers_by_share() {
        let s = [0.0, 0.7, 0.3];
        assert_eq!(tier_for(s, 0.0), 1);
        assert_eq!(tier_for(s, 0.69), 1);
        assert_eq!(tier_for(s, 0.71), 2);
        assert_eq!(tier_for(s, 0.999_999), 2);
        assert_eq!(tier_for([0.0; 3], 0.5), 0);
        // Rounding never sends a draw to an empty tier.
        assert_eq!(tier_for([0.3, 0.7 - 1e-15, 0.0], 0.999_999_999_999_999_9), 1);
    }
}
