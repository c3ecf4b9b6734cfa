//! `/metrics`: parsed with a Prometheus text parser and every family checked
//! against the fixture's known numbers.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_admin;

use std::collections::HashMap;

use balancer_testing::http;
use prometheus_parse::{Sample, Scrape, Value};
use support_admin::*;

fn scrape(fx: &Fixture) -> Scrape {
    let r = http::get(fx.addr, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{}: not a number: {other:?}", s.metric),
    }
}

/// The one sample of `metric` whose labels include `labels`.
fn get(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric}{labels:?}: {} samples", found.len());
    value(found[0])
}

#[test]
fn call_counters_match_the_known_calls() {
    let fx = start(true);
    let s = scrape(&fx);
    let a = [("service", "greeter"), ("endpoint", "127.0.0.1:50051")];
    let b = [("service", "greeter"), ("endpoint", "127.0.0.1:50052")];
    let with = |l: &[(&'static str, &'static str)], st: &'static str| {
        let mut v = l.to_vec();
        v.push(("grpc_status", st));
        v
    };
    assert_eq!(get(&s, "balancer_requests_total", &with(&a, "0")), OK_A as f64);
    assert_eq!(get(&s, "balancer_requests_total", &with(&b, "0")), OK_B as f64);
    assert_eq!(
        get(&s, "balancer_requests_total", &with(&b, "14")),
        UNAVAILABLE_B as f64
    );
    assert_eq!(get(&s, "balancer_requests_total", &with(&b, "reset")), RESETS_B as f64);
    let total: f64 = s
        .samples
        .iter()
        .filter(|x| x.metric == "balancer_requests_total")
        .map(value)
        .sum();
    assert_eq!(total, (OK_A + OK_B + UNAVAILABLE_B + RESETS_B) as f64);

    assert_eq!(get(&s, "balancer_in_flight_streams", &b), 3.0);
    assert_eq!(get(&s, "balancer_endpoint_ejected", &b), 1.0);
    assert_eq!(get(&s, "balancer_endpoint_ejected", &a), 0.0);
    assert_eq!(get(&s, "balancer_endpoint_ejection_backoff", &b), 1.0);
    assert_eq!(get(&s, "balancer_endpoint_ejections_total", &b), 4.0);
    assert_eq!(get(&s, "balancer_endpoint_ejections_total", &a), 0.0);
    assert_eq!(get(&s, "balancer_upstream_connections", &a), 1.0);
    assert_eq!(get(&s, "balancer_retries_total", &[("service", "greeter")]), 5.0);
    assert_eq!(
        get(&s, "balancer_service_l4_connections_total", &[("service", "greeter")]),
        2.0
    );
    assert_eq!(get(&s, "balancer_endpoint_refused_total", &b), 6.0);
    let greeter = [("service", "greeter")];
    assert_eq!(get(&s, "balancer_service_calls_total", &greeter), RECEIVED as f64);
    assert_eq!(get(&s, "balancer_no_endpoint_total", &greeter), NO_ENDPOINT as f64);
    let echo_abort = [("service", "default/echo"), ("fault", "abort")];
    assert_eq!(
        get(&s, "balancer_faults_injected_total", &echo_abort),
        FAULTS_ABORTED as f64
    );
    for (result, n) in [("sent", 7.0), ("dropped", 2.0), ("failed", 1.0)] {
        let l = [("service", "greeter"), ("result", result)];
        assert_eq!(get(&s, "balancer_mirrored_calls_total", &l), n, "{result}");
    }
    let echo_delay = [("service", "default/echo"), ("fault", "delay")];
    assert_eq!(get(&s, "balancer_faults_injected_total", &echo_delay), 0.0);
    assert_eq!(
        get(&s, "balancer_no_endpoint_total", &[("service", "default/echo")]),
        0.0
    );
    assert!((get(&s, "balancer_endpoint_latency_ewma_seconds", &a) - 0.00125).abs() < 1e-9);
}

#[test]
fn latency_histogram_counts_every_call() {
    let fx = start(true);
    let s = scrape(&fx);
    let h = s
        .samples
        .iter()
        .find(|x| x.metric == "balancer_request_duration_seconds" && x.labels.get("service") == Some("greeter"))
        .expect("greeter's histogram");
    let Value::Histogram(buckets) = &h.value else {
        panic!("not a histogram: {:?}", h.value)
    };
    let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count).unwrap();
    assert_eq!(at(0.001), 0.0);
    assert_eq!(at(0.0025), FAST as f64);
    assert_eq!(at(0.025), FAST as f64);
    assert_eq!(at(0.05), (FAST + SLOW) as f64);
    assert_eq!(at(f64::INFINITY), (FAST + SLOW) as f64);
    assert_eq!(
        get(&s, "balancer_request_duration_seconds_count", &[("service", "greeter")]),
        (FAST + SLOW) as f64
    );
    let sum = get(&s, "balancer_request_duration_seconds_sum", &[("service", "greeter")]);
    assert!(
        (sum - (FAST as f64 * 0.0015 + SLOW as f64 * 0.03)).abs() < 1e-6,
        "{sum}"
    );
}

#[test]
fn connections_kernel_and_source() {
    let fx = start(true);
    let s = scrape(&fx);
    assert_eq!(get(&s, "balancer_client_connections", &[]), 2.0);
    assert_eq!(get(&s, "balancer_client_connections_accepted_total", &[]), 2.0);
    assert_eq!(get(&s, "balancer_client_connections_refused_total", &[]), 1.0);
    assert_eq!(get(&s, "balancer_l4_fallback_connections_total", &[]), 1.0);
    assert_eq!(get(&s, "balancer_client_streams_total", &[]), 3.0);
    // Both connect programs redirect; each has its own counters.
    assert_eq!(
        get(&s, "balancer_redirected_connections_total", &[]),
        (42 + CONNECT6_REDIRECTED) as f64
    );
    for (program, redirected) in [("connect4", 42), ("connect6", CONNECT6_REDIRECTED)] {
        assert_eq!(
            get(
                &s,
                "balancer_kernel_events_total",
                &[("program", program), ("event", "redirected")]
            ),
            redirected as f64
        );
    }
    let programs: std::collections::BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| x.metric == "balancer_kernel_program_runs_total")
        .filter_map(|x| x.labels.get("program"))
        .collect();
    assert_eq!(
        programs,
        ["connect4", "connect6", "getsockopt", "sk_msg", "sock_ops"].into()
    );
    assert_eq!(
        get(&s, "balancer_kernel_program_runs_total", &[("program", "sk_msg")]),
        113.0
    );
    assert_eq!(
        get(
            &s,
            "balancer_kernel_events_total",
            &[("program", "sk_msg"), ("event", "redirected")]
        ),
        900.0
    );
    assert_eq!(get(&s, "balancer_config_reloads_total", &[("result", "ok")]), 3.0);
    assert_eq!(get(&s, "balancer_config_reloads_total", &[("result", "failed")]), 1.0);
    assert_eq!(get(&s, "balancer_discovery_synced", &[("source", "static")]), 1.0);
    assert_eq!(get(&s, "balancer_kernel_programs_attached", &[]), 1.0);
    assert_eq!(get(&s, "balancer_ready", &[]), 1.0);
    assert_eq!(get(&s, "balancer_enrolled_pods", &[]), 1.0);
    assert_eq!(get(&s, "balancer_services", &[]), 2.0);
    // Every family has help text.
    let docs: HashMap<_, _> = s.docs.iter().collect();
    assert!(docs.contains_key(&"balancer_requests".to_owned()), "{docs:?}");
}

#[test]
fn without_ebpf_there_is_no_redirect_counter() {
    let fx = start(false);
    let s = scrape(&fx);
    assert!(!s
        .samples
        .iter()
        .any(|x| x.metric == "balancer_redirected_connections_total"));
    assert_eq!(get(&s, "balancer_ebpf_enabled", &[]), 0.0);
    assert_eq!(get(&s, "balancer_ready", &[]), 1.0);
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let fx = start(true);
    let s = scrape(&fx);
    let exported: std::collections::HashSet<&str> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/balancer.json");
    let dashboard = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert_eq!(doc["uid"], "balancer-overview");
    let mut names = std::collections::BTreeSet::new();
    let b = dashboard.as_bytes();
    let mut i = 0;
    while let Some(at) = dashboard[i..].find("balancer_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_' || b[end].is_ascii_digit()) {
            end += 1;
        }
        names.insert(&dashboard[start..end]);
        i = end;
    }
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        // The histogram's series are its buckets, sum and count.
        let series = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            exported.contains(name) || exported.contains(series),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}
