//! A lock-free latency histogram per service: the data path records a call
//! with three relaxed atomic adds, the scrape reads the buckets.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, RwLock,
    },
    time::Duration,
};

use crate::api;

/// Upper bounds of the call latency buckets, seconds (100 µs to 30 s).
pub const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// One service's call latencies.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// `counts[i]`: calls in `(BUCKETS[i-1], BUCKETS[i]]`; the last one is
    /// above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Records one call's duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.partition_point(|&b| b < secs);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn snapshot(&self) -> api::Histogram {
        api::Histogram {
            bounds: BUCKETS.to_vec(),
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// The histograms of every service, created on first use.
#[derive(Debug, Default)]
pub struct LatencyRecorder {
    by_service: RwLock<BTreeMap<String, Arc<LatencyHistogram>>>,
}

impl LatencyRecorder {
    /// The histogram of `service`. Take it once per connection (or per
    /// service on reload) and call [`LatencyHistogram::observe`] per call;
    /// this lookup takes a lock.
    pub fn service(&self, service: &str) -> Arc<LatencyHistogram> {
        if let Some(h) = self.read().get(service) {
            return Arc::clone(h);
        }
        let mut map = self.by_service.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(service.to_owned()).or_default())
    }

    /// Records one call of `service` (looks the histogram up: for occasional
    /// use; the data path keeps the `Arc` of [`Self::service`]).
    pub fn observe(&self, service: &str, d: Duration) {
        self.service(service).observe(d);
    }

    /// Snapshots of the services in `keep`; histograms of services that are
    /// gone and that nobody holds any more are dropped, so the label set stays
    /// bounded by the configured services.
    pub fn snapshot(&self, keep: &dyn Fn(&str) -> bool) -> BTreeMap<String, api::Histogram> {
        {
            let mut map = self.by_service.write().unwrap_or_else(|p| p.into_inner());
            map.retain(|name, h| keep(name) || Arc::strong_count(h) > 1);
        }
        self.read()
            .iter()
            .filter(|(name, _)| keep(name))
            .map(|(name, h)| (name.clone(), h.snapshot()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<LatencyHistogram>>> {
        self.by_service.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50)); // <= 100 µs
        h.observe(Duration::from_micros(100)); // == bound: same bucket
        h.observe(Duration::from_millis(3)); // (2.5 ms, 5 ms]
        h.observe(Duration::from_secs(60)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[5], 1);
        assert_eq!(s.counts[BUCKETS.len()], 1);
        assert_eq!(s.count(), 4);
        assert!((s.sum_seconds - 60.00315).abs() < 1e-6);
    }

    #[test]
    fn gone_services_are_dropped_unless_held() {
        let r = LatencyRecorder::default();
        r.observe("a", Duration::from_millis(1));
        let held = r.service("b");
        held.observe(Duration::from_millis(1));
        let snap = r.snapshot(&|name| name == "a");
        assert_eq!(snap.keys().collect::<Vec<_>>(), vec!["a"]);
        // "b" is still held by the data path: kept (but not shown).
        assert!(r.read().contains_key("b"));
        drop(held);
        r.snapshot(&|name| name == "a");
        assert!(!r.read().contains_key("b"));
    }
}
