#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use http::HeaderMap;

use super::*;
use crate::model::{
    Backend, Endpoint, HeaderMatch, InternalTrafficPolicy, Labels, Locality, Route, RouteMatch, StringMatch,
    TrafficDistribution,
};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn labels(version: &str) -> Labels {
    [("version".to_string(), version.to_string())].into_iter().collect()
}

fn service(policy: Policy, endpoints: Vec<Endpoint>, routes: Vec<Route>) -> Service {
    Service {
        name: "greeter".into(),
        vips: vec!["10.96.0.10:8000".parse().unwrap()],
        listen: None,
        policy,
        hash_header: (policy == Policy::RingHash).then(|| "x-user-id".to_owned()),
        endpoints,
        routes,
        fault: None,
        traffic_distribution: TrafficDistribution::Any,
        internal_traffic_policy: InternalTrafficPolicy::Cluster,
        ejection: None,
    }
}

fn three(policy: Policy) -> Model {
    Model {
        services: vec![Arc::new(service(
            policy,
            vec![
                Endpoint::ready(addr(1), labels("v1")),
                Endpoint::ready(addr(2), labels("v1")),
                Endpoint::ready(addr(3), labels("v2")),
            ],
            vec![],
        ))],
        enrolled: vec![],
        locality: Locality::default(),
        gateways: vec![],
    }
}

fn split(v1: u32, v2: u32) -> Route {
    Route {
        name: Some("split".into()),
        matches: vec![RouteMatch {
            service: Some(StringMatch::Exact("helloworld.Greeter".into())),
            method: Some(StringMatch::Exact("SayHello".into())),
            headers: vec![],
        }],
        backends: vec![
            Backend {
                labels: labels("v1"),
                weight: v1,
                filters: Default::default(),
            },
            Backend {
                labels: labels("v2"),
                weight: v2,
                filters: Default::default(),
            },
        ],
        filters: Default::default(),
        timeout: None,
    }
}

fn count(table: &Table, path: &str, headers: &HeaderMap, n: usize) -> HashMap<u16, usize> {
    let slot = table.service("greeter").expect("service");
    let st = slot.state().expect("state");
    let meta = CallMeta::from_path(path, headers);
    let mut m = HashMap::new();
    for _ in 0..n {
        if let Some(ep) = st.pick(&meta, &[]) {
            *m.entry(ep.address.port()).or_default() += 1;
        }
    }
    m
}

const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

#[test]
fn round_robin_spreads_evenly() {
    let t = Table::new(&three(Policy::RoundRobin));
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 3000);
    assert_eq!(c[&1], 1000);
    assert_eq!(c[&2], 1000);
    assert_eq!(c[&3], 1000);
}

#[test]
fn weighted_split_within_two_percent_over_10k_calls() {
    let mut m = three(Policy::RoundRobin);
    Arc::make_mut(&mut m.services[0]).routes = vec![split(90, 10)];
    let t = Table::new(&m);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 10_000);
    let v1 = c.get(&1).copied().unwrap_or(0) + c.get(&2).copied().unwrap_or(0);
    let v2 = c.get(&3).copied().unwrap_or(0);
    assert!((8800..=9200).contains(&v1), "v1 got {v1}");
    assert!((800..=1200).contains(&v2), "v2 got {v2}");
    // Within the v1 subset, round-robin still spreads.
    assert!(c[&1].abs_diff(c[&2]) <= 1, "{c:?}");

    // Odd weights with every policy.
    for policy in [Policy::RoundRobin, Policy::LeastRequest, Policy::PeakEwma] {
        let mut m = three(policy);
        Arc::make_mut(&mut m.services[0]).routes = vec![split(37, 63)];
        let t = Table::new(&m);
        let c = count(&t, SAY_HELLO, &HeaderMap::new(), 10_000);
        let v2 = c.get(&3).copied().unwrap_or(0);
        assert!((6100..=6500).contains(&v2), "{policy}: v2 got {v2}");
    }
}

#[test]
fn reload_changes_weights_at_once_and_keeps_endpoint_state() {
    let mut m = three(Policy::RoundRobin);
    Arc::make_mut(&mut m.services[0]).routes = vec![split(50, 50)];
    let t = Table::new(&m);
    let before = t.service("greeter").unwrap().state().unwrap();
    let held = before.endpoints[2].start_call();
    before.endpoints[0].start_call().finish(Outcome::Status(0));

    Arc::make_mut(&mut m.services[0]).routes = vec![split(0, 100)];
    t.update(&m);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 1000);
    assert_eq!(c.get(&3).copied(), Some(1000), "{c:?}");

    let after = t.service("greeter").unwrap().state().unwrap();
    assert!(
        Arc::ptr_eq(&before.endpoints[2], &after.endpoints[2]),
        "endpoint state kept"
    );
    assert_eq!(after.endpoints[2].in_flight(), 1);
    assert_eq!(after.endpoints[0].snapshot().stats.calls, 1);
    drop(held);
    assert_eq!(after.endpoints[2].in_flight(), 0);
}

#[test]
fn routes_match_service_method_and_headers_first_match_wins() {
    let mut m = three(Policy::RoundRobin);
    let to = |v: &str| {
        vec![Backend {
            labels: labels(v),
            weight: 1,
            filters: Default::default(),
        }]
    };
    Arc::make_mut(&mut m.services[0]).routes = vec![
        Route {
            name: Some("canary-header".into()),
            matches: vec![RouteMatch {
                service: None,
                method: None,
                headers: vec![HeaderMatch {
                    name: "x-canary".into(),
                    value: StringMatch::Exact("yes".into()),
                }],
            }],
            backends: to("v2"),
            filters: Default::default(),
            timeout: None,
        },
        Route {
            name: Some("say-regex".into()),
            matches: vec![RouteMatch {
                service: Some(StringMatch::RegularExpression(r"helloworld\..*".into())),
                method: Some(StringMatch::RegularExpression("Say.*".into())),
                headers: vec![],
            }],
            backends: to("v1"),
            filters: Default::default(),
            timeout: None,
        },
    ];
    let t = Table::new(&m);
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", "yes".parse().unwrap());
    let c = count(&t, SAY_HELLO, &canary, 100);
    assert_eq!(c.get(&3).copied(), Some(100), "header route first: {c:?}");

    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 100);
    assert_eq!(c.get(&3), None, "regex route to v1: {c:?}");
    assert_eq!(c[&1] + c[&2], 100);

    // The regex matches the whole value.
    let c = count(&t, "/helloworld.Greeter/ISayHello", &HeaderMap::new(), 99);
    assert_eq!(c.len(), 3, "no route: all endpoints: {c:?}");
    let c = count(&t, "/other.Service/SayHello", &HeaderMap::new(), 99);
    assert_eq!(c.len(), 3, "no route: all endpoints: {c:?}");

    canary.insert("x-canary", "no".parse().unwrap());
    let c = count(&t, "/x.Y/Z", &canary, 90);
    assert_eq!(c.len(), 3, "header value differs: {c:?}");
}

#[test]
fn draining_endpoints_get_no_new_calls() {
    let mut m = three(Policy::RoundRobin);
    Arc::make_mut(&mut m.services[0]).endpoints[1].state = EndpointState::Draining;
    let t = Table::new(&m);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 300);
    assert_eq!(c.get(&2), None, "{c:?}");
    assert_eq!(c[&1] + c[&3], 300);
    for p in [Policy::LeastRequest, Policy::PeakEwma] {
        let mut m = three(p);
        Arc::make_mut(&mut m.services[0]).endpoints[1].state = EndpointState::Draining;
        let t = Table::new(&m);
        assert_eq!(count(&t, SAY_HELLO, &HeaderMap::new(), 300).get(&2), None);
    }
}

#[test]
fn split_subset_without_available_endpoint_falls_back_to_the_others() {
    let mut m = three(Policy::RoundRobin);
    Arc::make_mut(&mut m.services[0]).routes = vec![split(50, 50)];
    Arc::make_mut(&mut m.services[0]).endpoints[2].state = EndpointState::Draining;
    let t = Table::new(&m);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 100);
    assert_eq!(c.get(&3), None);
    assert_eq!(c[&1] + c[&2], 100);
}

#[test]
fn least_request_prefers_fewer_in_flight() {
    let mut m = three(Policy::LeastRequest);
    Arc::make_mut(&mut m.services[0]).endpoints.truncate(2);
    let t = Table::new(&m);
    let st = t.service("greeter").unwrap().state().unwrap();
    let _held: Vec<_> = (0..5).map(|_| st.endpoints[0].start_call()).collect();
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 200);
    assert_eq!(c.get(&2).copied(), Some(200), "{c:?}");

    // With three endpoints, the loaded one is picked only when both random
    // choices... cannot both be it: it is never picked.
    let t = Table::new(&three(Policy::LeastRequest));
    let st = t.service("greeter").unwrap().state().unwrap();
    let _held: Vec<_> = (0..5).map(|_| st.endpoints[0].start_call()).collect();
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 300);
    assert_eq!(c.get(&1), None, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_avoids_the_slow_endpoint_and_forgives_it_later() {
    let mut m = three(Policy::PeakEwma);
    Arc::make_mut(&mut m.services[0]).endpoints.truncate(2);
    let t = Table::new(&m);
    let st = t.service("greeter").unwrap().state().unwrap();
    // One slow response on endpoint 1, fast ones on endpoint 2.
    let slow = st.endpoints[0].start_call();
    let fast = st.endpoints[1].start_call();
    tokio::time::advance(Duration::from_millis(2)).await;
    fast.first_byte_at(tokio::time::Instant::now());
    fast.finish(Outcome::Status(0));
    tokio::time::advance(Duration::from_millis(200)).await;
    slow.first_byte_at(tokio::time::Instant::now());
    slow.finish(Outcome::Status(0));
    assert!(st.endpoints[0].ewma_ns() > 100e6);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 100);
    assert_eq!(c.get(&2).copied(), Some(100), "{c:?}");

    // The estimate decays towards zero without samples.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(st.endpoints[0].ewma_ns() < 1e6, "{}", st.endpoints[0].ewma_ns());
}

#[tokio::test(start_paused = true)]
async fn outlier_ejection_and_backoff() {
    let t = Table::new(&three(Policy::RoundRobin));
    let st = t.service("greeter").unwrap().state().unwrap();
    let bad = &st.endpoints[0];
    for _ in 0..4 {
        bad.start_call().finish(Outcome::ConnectFailed);
    }
    assert!(bad.is_available(), "four failures do not eject");
    bad.start_call().finish(Outcome::Status(14));
    assert!(!bad.is_available(), "the fifth does");
    assert!(bad.snapshot().stats.ejected);
    assert_eq!(count(&t, SAY_HELLO, &HeaderMap::new(), 100).get(&1), None);

    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(bad.is_ejected());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(bad.is_available(), "back after the base ejection time");
    assert!(count(&t, SAY_HELLO, &HeaderMap::new(), 99).contains_key(&1));

    // Failing again right away: the second ejection lasts twice as long.
    for _ in 0..5 {
        bad.start_call().finish(Outcome::ConnectFailed);
    }
    tokio::time::advance(Duration::from_secs(15)).await;
    assert!(bad.is_ejected(), "second ejection is 20 s");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(bad.is_available());
    assert_eq!(bad.snapshot().stats.ejections, 2);

    // A success after recovery resets the multiplier; the total stays.
    bad.start_call().finish(Outcome::Status(0));
    assert_eq!(
        (bad.snapshot().stats.ejections, bad.snapshot().stats.ejections_total),
        (0, 2)
    );

    // A success in between resets the consecutive count.
    for _ in 0..4 {
        bad.start_call().finish(Outcome::ConnectFailed);
    }
    bad.start_call().finish(Outcome::Status(0));
    bad.start_call().finish(Outcome::ConnectFailed);
    assert!(bad.is_available());
}

#[tokio::test(start_paused = true)]
async fn a_services_own_ejection_settings_apply_and_follow_reloads() {
    let mut m = three(Policy::RoundRobin);
    let with = |m: &Model, e: Option<crate::model::Ejection>| {
        let mut svc = (*m.services[0]).clone();
        svc.ejection = e;
        Model {
            services: vec![Arc::new(svc)],
            ..m.clone()
        }
    };
    m = with(
        &m,
        Some(crate::model::Ejection {
            consecutive_failures: 2,
            base: Duration::from_secs(30),
            max_percent: 100,
        }),
    );
    let t = Table::new(&m);
    let st = t.service("greeter").unwrap().state().unwrap();
    let bad = Arc::clone(&st.endpoints[0]);
    bad.start_call().finish(Outcome::ConnectFailed);
    assert!(bad.is_available());
    bad.start_call().finish(Outcome::Status(14));
    assert!(bad.is_ejected(), "two failures eject");
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(bad.is_ejected(), "for 30 s");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(bad.is_available());
    bad.start_call().finish(Outcome::Status(0));

    // Back to the agent's defaults: the kept endpoint needs five again.
    t.update(&with(&m, None));
    let st = t.service("greeter").unwrap().state().unwrap();
    assert!(Arc::ptr_eq(&st.endpoints[0], &bad), "the endpoint's state is kept");
    for _ in 0..4 {
        bad.start_call().finish(Outcome::ConnectFailed);
    }
    assert!(bad.is_available(), "four failures do not eject");
    // And 0 turns ejection off.
    t.update(&with(
        &m,
        Some(crate::model::Ejection {
            consecutive_failures: 0,
            base: Duration::from_secs(30),
            max_percent: 100,
        }),
    ));
    for _ in 0..20 {
        bad.start_call().finish(Outcome::ConnectFailed);
    }
    assert!(bad.is_available());
}

#[tokio::test(start_paused = true)]
async fn a_services_ejection_limit_keeps_endpoints_taking_calls() {
    let limited = |max_percent: u32| {
        let mut m = three(Policy::RoundRobin);
        let mut svc = (*m.services[0]).clone();
        svc.ejection = Some(crate::model::Ejection {
            consecutive_failures: 2,
            base: Duration::from_secs(30),
            max_percent,
        });
        m.services = vec![Arc::new(svc)];
        m
    };
    let fail_all = |st: &ServiceState| {
        for ep in &st.endpoints {
            for _ in 0..2 {
                ep.start_call().finish(Outcome::ConnectFailed);
            }
        }
        st.endpoints.iter().filter(|e| e.is_ejected()).count()
    };
    let h = HeaderMap::new();

    // Istio's default, 10%: of three endpoints one may be ejected, and
    // calls still find the other two.
    let t = Table::new(&limited(10));
    let st = t.service("greeter").unwrap().state().unwrap();
    assert_eq!(fail_all(&st), 1);
    assert!(st.pick(&CallMeta::from_path(SAY_HELLO, &h), &[]).is_some());
    // When the ejected one comes back, another may take its place.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(fail_all(&st), 1);

    // 50%: two of three (ejecting while fewer than half are ejected).
    let t = Table::new(&limited(50));
    let st = t.service("greeter").unwrap().state().unwrap();
    assert_eq!(fail_all(&st), 2);
    // 0: none.
    let t = Table::new(&limited(0));
    let st = t.service("greeter").unwrap().state().unwrap();
    assert_eq!(fail_all(&st), 0);

    // The limit follows a reload, and endpoints kept across it count.
    let t = Table::new(&limited(10));
    let st = t.service("greeter").unwrap().state().unwrap();
    assert_eq!(fail_all(&st), 1);
    t.update(&limited(100));
    let st = t.service("greeter").unwrap().state().unwrap();
    assert_eq!(fail_all(&st), 3, "100%: every endpoint may be ejected");
    t.update(&limited(50));
    let st = t.service("greeter").unwrap().state().unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(fail_all(&st), 2, "after the reload at most two of three again");
}

#[tokio::test(start_paused = true)]
async fn all_ejected_means_no_endpoint() {
    let t = Table::new(&three(Policy::LeastRequest));
    let st = t.service("greeter").unwrap().state().unwrap();
    for ep in &st.endpoints {
        for _ in 0..5 {
            ep.start_call().finish(Outcome::ConnectFailed);
        }
    }
    let h = HeaderMap::new();
    assert!(st.pick(&CallMeta::from_path(SAY_HELLO, &h), &[]).is_none());
    assert!(st.pick_connection(&[]).is_none());
}

#[test]
fn tried_endpoints_are_skipped() {
    let t = Table::new(&three(Policy::RoundRobin));
    let st = t.service("greeter").unwrap().state().unwrap();
    let h = HeaderMap::new();
    let meta = CallMeta::from_path(SAY_HELLO, &h);
    let tried: Vec<usize> = st.endpoints[..2].iter().map(pick::identity).collect();
    for _ in 0..10 {
        assert_eq!(st.pick(&meta, &tried).unwrap().address, addr(3));
    }
    let all: Vec<usize> = st.endpoints.iter().map(pick::identity).collect();
    assert!(st.pick(&meta, &all).is_none());
}

#[tokio::test]
async fn removed_services_are_signalled_and_vips_resolve() {
    let m = three(Policy::RoundRobin);
    let t = Table::new(&m);
    let slot = t.service_by_vip("10.96.0.10:8000".parse().unwrap()).expect("by vip");
    assert_eq!(slot.name(), "greeter");
    assert!(t.service_by_vip("10.96.0.11:8000".parse().unwrap()).is_none());
    let waiter = tokio::spawn({
        let slot = Arc::clone(&slot);
        async move { slot.removed().await }
    });
    t.update(&Model::default());
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(slot.is_removed());
    assert!(slot.state().is_none());
    assert!(t.service("greeter").is_none());
}

#[test]
fn snapshot_shows_stats_and_serializes() {
    let t = Table::new(&three(Policy::PeakEwma));
    let st = t.service("greeter").unwrap().state().unwrap();
    st.endpoints[0].start_call().finish(Outcome::Status(0));
    st.endpoints[0].start_call().finish(Outcome::Status(5));
    st.endpoints[1].start_call().finish(Outcome::ConnectFailed);
    let _held = st.endpoints[2].start_call();
    let s = t.snapshot();
    let svc = &s.services[0];
    assert_eq!(svc.name, "greeter");
    assert_eq!(svc.in_flight(), 1);
    let e0 = &svc.endpoints[0].stats;
    assert_eq!(e0.calls, 2);
    assert_eq!(e0.statuses.get("0"), Some(&1));
    assert_eq!(e0.statuses.get("5"), Some(&1));
    assert_eq!(e0.errors(), 1);
    assert_eq!(svc.endpoints[1].stats.connect_failures, 1);
    assert_eq!(svc.endpoints[1].stats.calls, 0, "a failed connect is no call");
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"policy\":\"peak-ewma\""), "{json}");
    assert!(json.contains("\"upstream_connections\":0"), "{json}");
}

#[test]
fn an_update_rebuilds_only_the_services_that_changed_and_moves_vips() {
    let mut other = service(Policy::RoundRobin, vec![Endpoint::ready(addr(9), labels("v1"))], vec![]);
    other.name = "other".into();
    other.vips = vec!["10.96.0.20:8000".parse().unwrap()];
    let mut m = three(Policy::RoundRobin);
    m.services.push(Arc::new(other));
    let t = Table::new(&m);
    let greeter = t.service("greeter").unwrap().state().unwrap();
    let before = t.service("other").unwrap().state().unwrap();

    // A new endpoint for `other`: `greeter` keeps its state object.
    Arc::make_mut(&mut m.services[1])
        .endpoints
        .push(Endpoint::ready(addr(10), labels("v1")));
    t.update(&m);
    assert!(Arc::ptr_eq(&greeter, &t.service("greeter").unwrap().state().unwrap()));
    let after = t.service("other").unwrap().state().unwrap();
    assert_eq!(after.endpoints.len(), 2);
    assert!(
        Arc::ptr_eq(&before.endpoints[0], &after.endpoints[0]),
        "the endpoint that stays keeps its state"
    );

    // `other` takes greeter's VIP in the same update that greeter drops it.
    let vip: SocketAddr = "10.96.0.10:8000".parse().unwrap();
    Arc::make_mut(&mut m.services[0]).vips = vec!["10.96.0.30:8000".parse().unwrap()];
    Arc::make_mut(&mut m.services[1]).vips.push(vip);
    t.update(&m);
    assert_eq!(t.service_by_vip(vip).unwrap().name(), "other");
    assert_eq!(
        t.service_by_vip("10.96.0.30:8000".parse().unwrap()).unwrap().name(),
        "greeter"
    );
}

/// Five endpoints: 1–3 in zone a (on nodes n1, n2, n3), 4–5 in zone b;
/// the agent in zone a on node `node`.
fn zoned(td: TrafficDistribution, itp: InternalTrafficPolicy, node: &str) -> Model {
    let ep = |port: u16, zone: &str, node: &str| Endpoint {
        zone: Some(zone.into()),
        node: Some(node.into()),
        ..Endpoint::ready(addr(port), labels(if port % 2 == 1 { "v1" } else { "v2" }))
    };
    let mut svc = service(
        Policy::RoundRobin,
        vec![
            ep(1, "a", "n1"),
            ep(2, "a", "n2"),
            ep(3, "a", "n3"),
            ep(4, "b", "n4"),
            ep(5, "b", "n5"),
        ],
        vec![],
    );
    svc.traffic_distribution = td;
    svc.internal_traffic_policy = itp;
    Model {
        services: vec![Arc::new(svc)],
        enrolled: vec![],
        locality: Locality {
            zone: Some("a".into()),
            node: Some(node.into()),
        },
        gateways: vec![],
    }
}

fn fail_until_ejected(ep: &Arc<EndpointRt>) {
    for _ in 0..5 {
        ep.start_call().finish(Outcome::ConnectFailed);
    }
    assert!(ep.is_ejected());
}

#[test]
fn without_prefer_close_zones_change_nothing() {
    let t = Table::new(&zoned(TrafficDistribution::Any, InternalTrafficPolicy::Cluster, "n1"));
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 5000);
    for port in 1..=5 {
        assert_eq!(c[&port], 1000, "{c:?}");
    }
}

#[test]
fn prefer_close_keeps_calls_in_the_zone_spread_by_the_policy() {
    // No endpoint on the agent's node: the zone's three share every call.
    let t = Table::new(&zoned(
        TrafficDistribution::PreferClose,
        InternalTrafficPolicy::Cluster,
        "n9",
    ));
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 3000);
    assert_eq!(
        (c.get(&1), c.get(&2), c.get(&3)),
        (Some(&1000), Some(&1000), Some(&1000)),
        "{c:?}"
    );
    assert!(!c.contains_key(&4) && !c.contains_key(&5), "{c:?}");
    for policy in [Policy::LeastRequest, Policy::PeakEwma] {
        let mut m = zoned(TrafficDistribution::PreferClose, InternalTrafficPolicy::Cluster, "n9");
        Arc::make_mut(&mut m.services[0]).policy = policy;
        let c = count(&Table::new(&m), SAY_HELLO, &HeaderMap::new(), 3000);
        assert_eq!(c.keys().filter(|p| **p > 3).count(), 0, "{policy}: {c:?}");
        assert_eq!(c.values().sum::<usize>(), 3000);
    }
    // An endpoint on the agent's node comes first.
    let t = Table::new(&zoned(
        TrafficDistribution::PreferClose,
        InternalTrafficPolicy::Cluster,
        "n2",
    ));
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 1000);
    assert_eq!(c.get(&2), Some(&1000), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_degraded_zone_spills_over_in_proportion_and_a_dead_one_entirely() {
    let t = Table::new(&zoned(
        TrafficDistribution::PreferClose,
        InternalTrafficPolicy::Cluster,
        "n9",
    ));
    let st = t.service("greeter").unwrap().state().unwrap();
    // One of three ejected: 1.4 × 2/3 = 93.3% stays in the zone.
    fail_until_ejected(&st.endpoints[0]);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 10_000);
    let remote = c.get(&4).copied().unwrap_or(0) + c.get(&5).copied().unwrap_or(0);
    assert!((450..=900).contains(&remote), "6.7% expected remote: {c:?}");
    // Two of three: 46.7% stays.
    fail_until_ejected(&st.endpoints[1]);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 10_000);
    let local = c.get(&3).copied().unwrap_or(0);
    assert!((4370..=4970).contains(&local), "46.7% expected local: {c:?}");
    // All three: everything goes to the other zone, no call is refused.
    fail_until_ejected(&st.endpoints[2]);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 1000);
    assert_eq!((c.get(&4), c.get(&5)), (Some(&500), Some(&500)), "{c:?}");
    // Back after the ejection: the zone takes its calls again.
    tokio::time::advance(Duration::from_secs(11)).await;
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 999);
    assert_eq!(c.keys().copied().max(), Some(3), "{c:?}");
}

#[test]
fn a_call_that_tried_the_close_endpoints_goes_further() {
    let t = Table::new(&zoned(
        TrafficDistribution::PreferClose,
        InternalTrafficPolicy::Cluster,
        "n2",
    ));
    let st = t.service("greeter").unwrap().state().unwrap();
    let h = HeaderMap::new();
    let meta = CallMeta::from_path(SAY_HELLO, &h);
    let first = st.pick(&meta, &[]).unwrap();
    assert_eq!(first.address, addr(2));
    let second = st.pick(&meta, &[pick::identity(&first)]).unwrap();
    assert!([addr(1), addr(3)].contains(&second.address), "the zone next");
    let tried = [pick::identity(&first), pick::identity(&second)];
    let third = st.pick(&meta, &tried).unwrap();
    assert!(
        [addr(4), addr(5)].contains(&third.address),
        "a retry goes to a tier it has not tried, before the rest of the zone"
    );
    let tried: Vec<usize> = [0, 1, 3].iter().map(|i| pick::identity(&st.endpoints[*i])).collect();
    let fourth = st.pick(&meta, &tried).unwrap();
    assert_eq!(fourth.address, addr(3), "then what is left, closest first");
}

#[test]
fn routes_pick_by_weight_then_by_locality_inside_the_backend() {
    // v1 = 1, 3 (zone a), 5 (zone b); v2 = 2 (zone a), 4 (zone b).
    let mut m = zoned(TrafficDistribution::PreferClose, InternalTrafficPolicy::Cluster, "n9");
    Arc::make_mut(&mut m.services[0]).routes = vec![split(50, 50)];
    let c = count(&Table::new(&m), SAY_HELLO, &HeaderMap::new(), 1000);
    assert_eq!(
        (c.get(&1), c.get(&3), c.get(&2)),
        (Some(&250), Some(&250), Some(&500)),
        "{c:?}"
    );
    assert!(!c.contains_key(&4) && !c.contains_key(&5), "{c:?}");
}

#[test]
fn zone_hints_decide_the_zone_tier_when_every_endpoint_has_them() {
    let mut m = zoned(TrafficDistribution::PreferClose, InternalTrafficPolicy::Cluster, "n9");
    let svc = Arc::make_mut(&mut m.services[0]);
    for (i, ep) in svc.endpoints.iter_mut().enumerate() {
        // The slice controller gave zone a's calls to 4 (in zone b).
        let zone = if i == 3 { "a" } else { "b" };
        ep.for_zones = Some(Arc::from(vec![Arc::<str>::from(zone)]));
    }
    let c = count(&Table::new(&m), SAY_HELLO, &HeaderMap::new(), 100);
    assert_eq!(c.get(&4), Some(&100), "{c:?}");
    // One endpoint without hints: zones decide.
    Arc::make_mut(&mut m.services[0]).endpoints[0].for_zones = None;
    let c = count(&Table::new(&m), SAY_HELLO, &HeaderMap::new(), 300);
    assert_eq!(c.keys().copied().max(), Some(3), "{c:?}");
}

#[test]
fn internal_traffic_policy_local_keeps_calls_on_the_node_or_fails_them() {
    let t = Table::new(&zoned(TrafficDistribution::Any, InternalTrafficPolicy::Local, "n3"));
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 100);
    assert_eq!(c.get(&3), Some(&100), "{c:?}");
    let st = t.service("greeter").unwrap().state().unwrap();
    assert!(st.no_endpoint_reason().is_none());
    // Tried already: nothing else is allowed.
    let h = HeaderMap::new();
    let meta = CallMeta::from_path(SAY_HELLO, &h);
    assert!(st.pick(&meta, &[pick::identity(&st.endpoints[2])]).is_none());

    let t = Table::new(&zoned(
        TrafficDistribution::PreferClose,
        InternalTrafficPolicy::Local,
        "n9",
    ));
    let st = t.service("greeter").unwrap().state().unwrap();
    assert!(st.pick(&meta, &[]).is_none());
    assert!(st.pick_connection(&[]).is_none());
    assert_eq!(
        st.no_endpoint_reason(),
        Some("service `greeter` has internalTrafficPolicy Local and no endpoint on this node `n9`")
    );
}

#[test]
fn a_new_agent_locality_re_tiers_every_service_and_keeps_endpoint_state() {
    let mut m = zoned(TrafficDistribution::PreferClose, InternalTrafficPolicy::Cluster, "n1");
    let t = Table::new(&m);
    let before = t.service("greeter").unwrap().state().unwrap();
    before.endpoints[0].start_call().finish(Outcome::Status(0));
    assert_eq!(count(&t, SAY_HELLO, &HeaderMap::new(), 10).get(&1), Some(&10));
    m.locality.zone = Some("b".into());
    m.locality.node = Some("n9".into());
    t.update(&m);
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 100);
    assert_eq!((c.get(&4), c.get(&5)), (Some(&50), Some(&50)), "{c:?}");
    let after = t.service("greeter").unwrap().state().unwrap();
    assert!(Arc::ptr_eq(&before.endpoints[0], &after.endpoints[0]));
    assert_eq!(after.endpoints[0].snapshot().stats.calls, 1);
}

fn user(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-user-id", id.parse().unwrap());
    h
}

/// The endpoint (port) each of `users` lands on.
fn owners(t: &Table, users: &[String]) -> Vec<u16> {
    let st = t.service("greeter").unwrap().state().unwrap();
    users
        .iter()
        .map(|u| {
            let h = user(u);
            st.pick(&CallMeta::from_path(SAY_HELLO, &h), &[])
                .unwrap()
                .address
                .port()
        })
        .collect()
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[test]
fn ring_hash_keeps_a_key_on_one_endpoint_and_spreads_keys() {
    let t = Table::new(&three(Policy::RingHash));
    for u in ["alice", "bob", "carol"] {
        let c = count(&t, SAY_HELLO, &user(u), 100);
        assert_eq!(c.len(), 1, "{u}: {c:?}");
    }
    let us = users(600);
    let first = owners(&t, &us);
    assert_eq!(owners(&t, &us), first, "the same keys land on the same endpoints");
    for port in 1..=3 {
        let n = first.iter().filter(|p| **p == port).count();
        assert!((100..=300).contains(&n), "endpoint {port} owns {n} of 600 keys");
    }
    // Without the header: round-robin.
    let c = count(&t, SAY_HELLO, &HeaderMap::new(), 300);
    assert_eq!((c[&1], c[&2], c[&3]), (100, 100, 100));
    // A plain TCP connection has no header either.
    let st = t.service("greeter").unwrap().state().unwrap();
    let ports: std::collections::HashSet<u16> = (0..3)
        .map(|_| st.pick_connection(&[]).unwrap().address.port())
        .collect();
    assert_eq!(ports.len(), 3);
}

#[test]
fn ring_hash_moves_only_the_keys_of_a_removed_endpoint() {
    let mut m = three(Policy::RingHash);
    let t = Table::new(&m);
    let us = users(1000);
    let before = owners(&t, &us);
    Arc::make_mut(&mut m.services[0]).endpoints.remove(1);
    t.update(&m);
    let after = owners(&t, &us);
    for (b, a) in before.iter().zip(&after) {
        if *b != 2 {
            assert_eq!(a, b, "a key of a staying endpoint moved");
        } else {
            assert_ne!(*a, 2);
        }
    }
    // Back again: the keys return to it.
    Arc::make_mut(&mut m.services[0])
        .endpoints
        .insert(1, Endpoint::ready(addr(2), labels("v1")));
    t.update(&m);
    assert_eq!(owners(&t, &us), before);
}

#[tokio::test(start_paused = true)]
async fn ring_hash_walks_past_ejected_draining_and_tried_endpoints() {
    let mut m = three(Policy::RingHash);
    let t = Table::new(&m);
    let us = users(300);
    let before = owners(&t, &us);
    // Endpoint 2 ejected: its keys go elsewhere, the others' stay.
    let st = t.service("greeter").unwrap().state().unwrap();
    for _ in 0..5 {
        st.endpoints[1].start_call().finish(Outcome::ConnectFailed);
    }
    assert!(!st.endpoints[1].is_available());
    let ejected = owners(&t, &us);
    for (b, a) in before.iter().zip(&ejected) {
        assert_ne!(*a, 2);
        if *b != 2 {
            assert_eq!(a, b);
        }
    }
    // Endpoint 3 draining (a new model): walked past as well.
    Arc::make_mut(&mut m.services[0]).endpoints[2].state = EndpointState::Draining;
    t.update(&m);
    assert!(owners(&t, &us).iter().all(|p| *p == 1));
    // A retry skips what the call tried.
    let t = Table::new(&three(Policy::RingHash));
    let st = t.service("greeter").unwrap().state().unwrap();
    let h = user("alice");
    let meta = CallMeta::from_path(SAY_HELLO, &h);
    let first = st.pick(&meta, &[]).unwrap();
    let second = st.pick(&meta, &[pick::identity(&first)]).unwrap();
    assert_ne!(first.address, second.address);
}

#[test]
fn ring_hash_within_a_route_subset() {
    let mut m = three(Policy::RingHash);
    Arc::make_mut(&mut m.services[0]).routes = vec![split(100, 0)];
    let t = Table::new(&m);
    let us = users(200);
    let o = owners(&t, &us);
    assert!(o.iter().all(|p| *p == 1 || *p == 2), "only v1 endpoints: {o:?}");
    assert!(o.contains(&1) && o.contains(&2));
    assert_eq!(owners(&t, &us), o);
}

#[tokio::test(start_paused = true)]
async fn ring_hash_picks_on_the_ring_of_the_close_tier_and_spills_the_same_keys() {
    let mut m = zoned(TrafficDistribution::PreferClose, InternalTrafficPolicy::Cluster, "n9");
    let svc = Arc::make_mut(&mut m.services[0]);
    svc.policy = Policy::RingHash;
    svc.hash_header = Some("x-user-id".into());
    let t = Table::new(&m);
    let us = users(1000);
    let first = owners(&t, &us);
    assert_eq!(owners(&t, &us), first, "the same keys land on the same endpoints");
    for port in 1..=3 {
        let n = first.iter().filter(|p| **p == port).count();
        assert!((150..=500).contains(&n), "endpoint {port} owns {n} of 1000 keys");
    }
    assert!(first.iter().all(|p| *p <= 3), "a healthy zone keeps every key");

    // One of the zone's three ejected: 6.7% of the keys spill to zone b,
    // the same keys on every call; the keys that stay in the zone and were
    // not on the ejected endpoint do not move.
    let st = t.service("greeter").unwrap().state().unwrap();
    fail_until_ejected(&st.endpoints[0]);
    let degraded = owners(&t, &us);
    assert_eq!(owners(&t, &us), degraded, "spill-over by key, not at random");
    let remote = degraded.iter().filter(|p| **p > 3).count();
    assert!((30..=110).contains(&remote), "6.7% of keys expected remote: {remote}");
    assert!(!degraded.contains(&1));
    for (b, a) in first.iter().zip(&degraded) {
        if *b != 1 && *a <= 3 {
            assert_eq!(a, b, "a key of a staying endpoint moved inside the zone");
        }
    }
    // The whole zone ejected: zone b's ring takes every key, spread.
    fail_until_ejected(&st.endpoints[1]);
    fail_until_ejected(&st.endpoints[2]);
    let away = owners(&t, &us);
    assert!(away.iter().all(|p| *p >= 4), "{away:?}");
    assert!(away.contains(&4) && away.contains(&5));
    // Back after the ejection: every key returns to its endpoint.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(owners(&t, &us), first);
}

fn explain(t: &Table, m: &Model, path: &str, headers: &HeaderMap) -> explain::Explanation {
    let st = t.service("greeter").unwrap().state().unwrap();
    st.explain(&m.services[0], &CallMeta::from_path(path, headers))
}

#[test]
fn explain_names_the_route_its_backends_shares_and_endpoints_without_moving_the_schedule() {
    let mut m = three(Policy::RoundRobin);
    Arc::make_mut(&mut m.services[0]).routes = vec![split(90, 10)];
    let t = Table::new(&m);
    let e = explain(&t, &m, SAY_HELLO, &HeaderMap::new());
    let route = e.route.as_ref().unwrap();
    assert_eq!(
        (route.index, route.name.as_deref(), route.routes),
        (0, Some("split"), 1)
    );
    let backends: Vec<(&str, u32, f64)> = e
        .backends
        .iter()
        .map(|b| (b.selector.as_str(), b.weight, b.share))
        .collect();
    assert_eq!(backends, [("version=v1", 90, 0.9), ("version=v2", 10, 0.1)]);
    let ports = |b: &explain::BackendPath| -> Vec<u16> {
        b.tiers
            .iter()
            .flat_map(|t| t.endpoints.iter().map(|e| e.address.port()))
            .collect()
    };
    assert_eq!(ports(&e.backends[0]), [1, 2]);
    assert_eq!(ports(&e.backends[1]), [3]);
    // Another method matches no route: every endpoint, one backend.
    let e = explain(&t, &m, "/other.Service/Call", &HeaderMap::new());
    assert!(e.route.is_none());
    assert_eq!(ports(&e.backends[0]), [1, 2, 3]);
    // Asking between calls leaves the exact 90:10 schedule as it was.
    let st = t.service("greeter").unwrap().state().unwrap();
    let none = HeaderMap::new();
    let meta = CallMeta::from_path(SAY_HELLO, &none);
    let mut v2 = 0;
    for _ in 0..1000 {
        explain(&t, &m, SAY_HELLO, &HeaderMap::new());
        v2 += usize::from(st.pick(&meta, &[]).unwrap().address.port() == 3);
    }
    assert_eq!(v2, 100);
}

#[tokio::test(start_paused = true)]
async fn explain_shows_tier_shares_and_endpoint_states_as_they_are_now() {
    let m = zoned(TrafficDistribution::PreferClose, InternalTrafficPolicy::Cluster, "n9");
    let t = Table::new(&m);
    let tiers = |e: &explain::Explanation| -> Vec<(Option<String>, f64, Vec<String>)> {
        e.backends[0]
            .tiers
            .iter()
            .map(|t| {
                let states = t.endpoints.iter().map(|e| e.state.clone()).collect();
                (t.tier.clone(), (t.share * 1000.0).round() / 1000.0, states)
            })
            .collect()
    };
    let e = explain(&t, &m, SAY_HELLO, &HeaderMap::new());
    let available = || "available".to_owned();
    assert_eq!(
        tiers(&e),
        [
            (Some("zone".into()), 1.0, vec![available(), available(), available()]),
            (Some("other".into()), 0.0, vec![available(), available()]),
        ]
    );
    // One of the zone's three ejected: 93.3% stays, as the picks do.
    let st = t.service("greeter").unwrap().state().unwrap();
    fail_until_ejected(&st.endpoints[0]);
    let e = explain(&t, &m, SAY_HELLO, &HeaderMap::new());
    assert_eq!(
        tiers(&e),
        [
            (
                Some("zone".into()),
                0.933,
                vec!["ejected".into(), available(), available()]
            ),
            (Some("other".into()), 0.067, vec![available(), available()]),
        ]
    );
}

#[test]
fn explain_finds_the_endpoint_a_hash_key_lands_on() {
    let mut m = three(Policy::RingHash);
    Arc::make_mut(&mut m.services[0]).routes = vec![split(90, 10)];
    let t = Table::new(&m);
    let st = t.service("greeter").unwrap().state().unwrap();
    for user in 0..50 {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", format!("user-{user}").parse().unwrap());
        let e = explain(&t, &m, SAY_HELLO, &h);
        assert_eq!(e.hash_key.as_deref(), Some(format!("user-{user}").as_str()));
        let picked = st.pick(&CallMeta::from_path(SAY_HELLO, &h), &[]).unwrap().address;
        let predicted: Vec<SocketAddr> = e.backends.iter().filter_map(|b| b.hashed_to).collect();
        assert_eq!(predicted.len(), 2, "one endpoint per backend");
        assert!(
            predicted.contains(&picked),
            "user-{user}: picked {picked}, explained {predicted:?}"
        );
    }
    let e = explain(&t, &m, SAY_HELLO, &HeaderMap::new());
    assert!(e.hash_key.is_none() && e.backends.iter().all(|b| b.hashed_to.is_none()));
}
