//! What a Service's `balancer.io/*` annotations ask of its calls: the
//! policy, the ring-hash header and injected faults. A value that does not
//! parse is left out (the service takes the default) and reported in one
//! line naming the annotation.

use std::collections::BTreeMap;

use crate::model::{parse_abort_code, parse_duration, Fault, FaultAbort, FaultDelay, ModelError, Policy, Share};

use super::{
    FAULT_ABORT_ANNOTATION, FAULT_ABORT_MESSAGE_ANNOTATION, FAULT_ABORT_PERCENT_ANNOTATION, FAULT_DELAY_ANNOTATION,
    FAULT_DELAY_PERCENT_ANNOTATION, HASH_HEADER_ANNOTATION, POLICY_ANNOTATION,
};

/// Every annotation read here (the others are dropped from the cache).
pub const ALL: [&str; 7] = [
    POLICY_ANNOTATION,
    HASH_HEADER_ANNOTATION,
    FAULT_DELAY_ANNOTATION,
    FAULT_DELAY_PERCENT_ANNOTATION,
    FAULT_ABORT_ANNOTATION,
    FAULT_ABORT_PERCENT_ANNOTATION,
    FAULT_ABORT_MESSAGE_ANNOTATION,
];

/// The message of an injected abort unless one is annotated.
const DEFAULT_ABORT_MESSAGE: &str = "fault injected";

/// A Service's settings from its annotations.
#[derive(Debug, Default, PartialEq)]
pub struct Settings {
    pub policy: Policy,
    pub hash_header: Option<String>,
    pub fault: Option<Fault>,
    /// One line per annotation that was left out, and why.
    pub problems: Vec<String>,
}

/// Reads the annotations of one Service.
pub fn read(a: &BTreeMap<String, String>) -> Settings {
    let mut s = Settings::default();
    let get = |k: &str| a.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(v) = get(POLICY_ANNOTATION) {
        match v.parse::<Policy>() {
            Ok(p) => s.policy = p,
            Err(e) => s.problems.push(format!("{POLICY_ANNOTATION}: {e}; using round-robin")),
        }
    }
    let header = get(HASH_HEADER_ANNOTATION).map(str::to_ascii_lowercase);
    match (s.policy, header) {
        (Policy::RingHash, Some(h)) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => s.hash_header = Some(h),
        (Policy::RingHash, Some(h)) => {
            s.policy = Policy::RoundRobin;
            s.problems.push(format!(
                "{HASH_HEADER_ANNOTATION}: invalid header name {h:?}; using round-robin"
            ));
        }
        (Policy::RingHash, None) => {
            s.policy = Policy::RoundRobin;
            s.problems.push(format!(
                "{POLICY_ANNOTATION}: ring-hash needs {HASH_HEADER_ANNOTATION} (the request header whose value picks the endpoint); using round-robin"
            ));
        }
        (_, Some(_)) => s.problems.push(format!(
            "{HASH_HEADER_ANNOTATION}: used only with {POLICY_ANNOTATION}: ring-hash; ignored"
        )),
        (_, None) => {}
    }
    let percent = |key: &str, problems: &mut Vec<String>| -> Option<Share> {
        let Some(v) = get(key) else { return Some(Share::ALL) };
        let p = v
            .trim_end_matches('%')
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(Share::from_percent);
        if p.is_none() {
            problems.push(format!("{key}: {}", ModelError::BadPercent(v.to_owned())));
        }
        p
    };
    let delay = get(FAULT_DELAY_ANNOTATION).and_then(|v| {
        let duration = parse_duration(v)
            .map_err(|e| {
                s.problems
                    .push(format!("{FAULT_DELAY_ANNOTATION}: {e}; no delay injected"))
            })
            .ok()?;
        let share = percent(FAULT_DELAY_PERCENT_ANNOTATION, &mut s.problems)?;
        Some(FaultDelay { share, duration })
    });
    let abort = get(FAULT_ABORT_ANNOTATION).and_then(|v| {
        let code = parse_abort_code(v)
            .map_err(|e| {
                s.problems
                    .push(format!("{FAULT_ABORT_ANNOTATION}: {e}; no abort injected"))
            })
            .ok()?;
        let share = percent(FAULT_ABORT_PERCENT_ANNOTATION, &mut s.problems)?;
        let message = get(FAULT_ABORT_MESSAGE_ANNOTATION)
            .unwrap_or(DEFAULT_ABORT_MESSAGE)
            .to_owned();
        Some(FaultAbort { share, code, message })
    });
    if delay.is_some() || abort.is_some() {
        s.fault = Some(Fault { delay, abort });
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Settings {
        read(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn ring_hash_with_its_header() {
        let s = of(&[
            ("balancer.io/policy", "ring-hash"),
            ("balancer.io/hash-header", "X-User-Id"),
        ]);
        assert_eq!(
            (s.policy, s.hash_header.as_deref()),
            (Policy::RingHash, Some("x-user-id"))
        );
        assert!(s.problems.is_empty());
    }

    #[test]
    fn ring_hash_without_a_header_falls_back_and_says_so() {
        let s = of(&[("balancer.io/policy", "ring-hash")]);
        assert_eq!((s.policy, s.hash_header), (Policy::RoundRobin, None));
        assert!(
            s.problems[0].contains("needs balancer.io/hash-header"),
            "{:?}",
            s.problems
        );
        let s = of(&[("balancer.io/hash-header", "x-user-id")]);
        assert_eq!((s.policy, s.hash_header), (Policy::RoundRobin, None));
        assert_eq!(s.problems.len(), 1);
        let s = of(&[("balancer.io/policy", "random")]);
        assert!(s.problems[0].starts_with("balancer.io/policy: unknown policy `random`"));
    }

    #[test]
    fn faults_with_shares_status_and_message() {
        let s = of(&[
            ("balancer.io/fault-delay", "250ms"),
            ("balancer.io/fault-delay-percent", "10"),
            ("balancer.io/fault-abort", "RESOURCE_EXHAUSTED"),
            ("balancer.io/fault-abort-percent", "2.5%"),
            ("balancer.io/fault-abort-message", "try later"),
        ]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let f = s.fault.expect("a fault");
        let d = f.delay.expect("a delay");
        assert_eq!(
            (d.duration, d.share.per_million()),
            (Duration::from_millis(250), 100_000)
        );
        let a = f.abort.expect("an abort");
        assert_eq!(
            (a.code, a.share.per_million(), a.message.as_str()),
            (8, 25_000, "try later")
        );

        // Without a percentage, every call.
        let s = of(&[("balancer.io/fault-abort", "14")]);
        let a = s.fault.and_then(|f| f.abort).expect("an abort");
        assert_eq!(
            (a.code, a.share, a.message.as_str()),
            (14, Share::ALL, "fault injected")
        );
    }

    #[test]
    fn bad_fault_values_are_left_out_naming_the_annotation() {
        let s = of(&[("balancer.io/fault-delay", "soon"), ("balancer.io/fault-abort", "OK")]);
        assert_eq!(s.fault, None);
        assert_eq!(s.problems.len(), 2);
        assert!(s.problems[0].starts_with("balancer.io/fault-delay: invalid duration `soon`"));
        assert!(s.problems[1].starts_with("balancer.io/fault-abort: invalid gRPC status `OK`"));
        let s = of(&[
            ("balancer.io/fault-abort", "UNAVAILABLE"),
            ("balancer.io/fault-abort-percent", "150"),
        ]);
        assert_eq!(s.fault, None);
        assert!(s.problems[0].starts_with("balancer.io/fault-abort-percent: invalid percentage `150`"));
    }
}
