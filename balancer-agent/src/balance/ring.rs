//! Consistent hashing: a ring hash with virtual nodes.
//!
//! Each endpoint is placed on a 64-bit ring at many points (its address and
//! a replica number, hashed); a key takes the first point at or after its
//! own hash, walking on (clockwise) past endpoints that cannot take the
//! call. Removing an endpoint moves only the keys that landed on its points,
//! about 1/N of them; adding one takes about 1/(N+1) from the others.
//!
//! The hash is XXH3 (64 bits), whose output is fixed by its specification:
//! agents on every node, of every build, map a key to the same endpoint.
//! The ring is built when a service's endpoints change (with the service's
//! state), never per call.

use std::net::SocketAddr;

use xxhash_rust::xxh3::xxh3_64;

/// Points per endpoint, at most: with 160, each of ten endpoints holds its
/// share of keys within a few percent.
const MAX_POINTS_PER_ENDPOINT: usize = 160;
/// Points on the whole ring, at most (fewer per endpoint for huge services).
const MAX_POINTS: usize = 1 << 17;

/// The hash of a request's key (a header value).
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// A ring over some endpoints, each named by the index the caller gave it.
#[derive(Debug, Default)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// `members` are (index, address) pairs; the address places the
    /// endpoint, so the same endpoint lands on the same points whatever its
    /// index or the other members.
    pub fn build(members: impl ExactSizeIterator<Item = (usize, SocketAddr)>) -> Ring {
        let n = members.len();
        if n == 0 {
            return Ring::default();
        }
        let per = (MAX_POINTS / n).clamp(1, MAX_POINTS_PER_ENDPOINT);
        let mut points = Vec::with_capacity(n * per);
        let mut name = String::with_capacity(64);
        for (index, address) in members {
            let Ok(index) = u32::try_from(index) else { continue };
            for replica in 0..per {
                name.clear();
                use std::fmt::Write;
                let _ = write!(name, "{address}#{replica}");
                points.push((xxh3_64(name.as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The endpoint of `hash`: the first point at or after it (wrapping)
    /// whose endpoint `accept`s, walking the ring once at most. Each
    /// endpoint is offered once.
    pub fn find(&self, hash: u64, mut accept: impl FnMut(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let mut refused: Vec<u32> = Vec::new();
        for k in 0..n {
            let (_, index) = self.points[(start + k) % n];
            if refused.contains(&index) {
                continue;
            }
            if accept(index as usize) {
                return Some(index as usize);
            }
            refused.push(index);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 50051))
    }

    fn ring_of(addrs: &[SocketAddr]) -> Ring {
        Ring::build(addrs.iter().copied().enumerate())
    }

    fn owner(ring: &Ring, addrs: &[SocketAddr], key: &str) -> SocketAddr {
        let i = ring.find(key_hash(key.as_bytes()), |_| true).expect("an endpoint");
        addrs[i]
    }

    const KEYS: usize = 20_000;

    fn key(k: usize) -> String {
        format!("user-{k}")
    }

    #[test]
    fn same_key_same_endpoint_and_keys_spread_evenly() {
        let addrs: Vec<SocketAddr> = (0..10).map(addr).collect();
        let ring = ring_of(&addrs);
        let mut counts = std::collections::HashMap::new();
        for k in 0..KEYS {
            let a = owner(&ring, &addrs, &key(k));
            assert_eq!(a, owner(&ring, &addrs, &key(k)));
            *counts.entry(a).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 10, "every endpoint owns keys");
        let fair = KEYS / 10;
        for (a, c) in counts {
            assert!(c > fair * 6 / 10 && c < fair * 14 / 10, "{a} owns {c} of {KEYS} keys");
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let addrs: Vec<SocketAddr> = (0..10).map(addr).collect();
        let ring = ring_of(&addrs);
        let before: Vec<SocketAddr> = (0..KEYS).map(|k| owner(&ring, &addrs, &key(k))).collect();
        let gone = addrs[3];
        let rest: Vec<SocketAddr> = addrs.iter().copied().filter(|a| *a != gone).collect();
        let ring2 = ring_of(&rest);
        let mut moved = 0;
        for (k, was) in before.iter().enumerate() {
            let now = owner(&ring2, &rest, &key(k));
            if *was != gone {
                assert_eq!(now, *was, "key {k} moved off a staying endpoint");
            } else {
                moved += 1;
            }
        }
        // Only the removed endpoint's keys move: about 1/N of them.
        assert!(moved > 0 && moved < KEYS * 3 / 2 / 10, "{moved} of {KEYS} keys moved");
    }

    #[test]
    fn adding_an_endpoint_takes_about_one_share() {
        let addrs: Vec<SocketAddr> = (0..10).map(addr).collect();
        let ring = ring_of(&addrs);
        let mut more = addrs.clone();
        more.push(addr(10));
        let ring2 = ring_of(&more);
        let mut moved = 0;
        for k in 0..KEYS {
            let (was, now) = (owner(&ring, &addrs, &key(k)), owner(&ring2, &more, &key(k)));
            if was != now {
                assert_eq!(now, addr(10), "a key moved between two old endpoints");
                moved += 1;
            }
        }
        assert!(moved > 0 && moved < KEYS * 3 / 2 / 11, "{moved} of {KEYS} keys moved");
    }

    #[test]
    fn refused_endpoints_are_walked_past_and_their_keys_spread() {
        let addrs: Vec<SocketAddr> = (0..5).map(addr).collect();
        let ring = ring_of(&addrs);
        let down = 2;
        let mut took = std::collections::HashSet::new();
        for k in 0..2000 {
            let h = key_hash(key(k).as_bytes());
            let first = ring.find(h, |_| true).expect("an endpoint");
            let walked = ring.find(h, |i| i != down).expect("an endpoint");
            assert_ne!(walked, down);
            if first != down {
                assert_eq!(walked, first, "a key of an up endpoint moved");
            } else {
                took.insert(walked);
            }
        }
        assert!(
            took.len() >= 2,
            "the down endpoint's keys go to several others: {took:?}"
        );
        assert_eq!(ring.find(1, |_| false), None);
        let mut offered = Vec::new();
        ring.find(7, |i| {
            offered.push(i);
            false
        });
        offered.sort_unstable();
        assert_eq!(offered, vec![0, 1, 2, 3, 4], "each endpoint is offered once");
    }

    #[test]
    fn the_ring_depends_on_addresses_not_indices() {
        let addrs: Vec<SocketAddr> = (0..4).map(addr).collect();
        let reversed: Vec<SocketAddr> = addrs.iter().rev().copied().collect();
        let (a, b) = (ring_of(&addrs), ring_of(&reversed));
        for k in 0..500 {
            assert_eq!(owner(&a, &addrs, &key(k)), owner(&b, &reversed, &key(k)));
        }
        assert!(Ring::build(std::iter::empty()).is_empty());
    }
}
