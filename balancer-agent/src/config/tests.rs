#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use std::{collections::BTreeMap, time::Duration};

use super::*;
use crate::model::{
    Backend, Endpoint, EndpointState, HeaderMatch, Labels, Policy, Route, RouteMatch, Service, StringMatch,
};

/// The example of the static-mode documentation, verbatim.
const EXAMPLE: &str = "\
listen: 10.250.0.1:15001        # where kernel-redirected connections arrive
admin: 127.0.0.1:15000
attach_cgroup: /sys/fs/cgroup/unified/balancer   # where programs attach (default: cgroup v2 root)
enroll:                          # cgroup v2 dirs whose processes are redirected
  - /sys/fs/cgroup/unified/balancer/client
services:
  - name: greeter
    vip: 10.96.0.10:8000         # what clients dial
    listen: 127.0.0.1:18000      # optional explicit listener (no eBPF needed)
    policy: round-robin          # round-robin | least-request | peak-ewma
    endpoints:
      - { address: 127.0.0.1:50051, labels: { version: v1 } }
      - { address: 127.0.0.1:50052, labels: { version: v2 } }
    routes:                      # optional; first match wins; no route = all endpoints
      - matches: [ { service: helloworld.Greeter, method: SayHello } ]
        backends:
          - { labels: { version: v1 }, weight: 90 }
          - { labels: { version: v2 }, weight: 10 }
";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn err(text: &str) -> String {
    match parse(text, "greeter.yaml") {
        Ok(l) => panic!("expected an error, parsed {l:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_documented_example_parses_into_the_model() {
    let loaded = parse(EXAMPLE, "greeter.yaml").expect("the example is valid");
    assert_eq!(
        loaded.node,
        NodeConfig {
            listen: Some("10.250.0.1:15001".parse().unwrap()),
            admin: "127.0.0.1:15000".parse().unwrap(),
            attach_cgroup: Some("/sys/fs/cgroup/unified/balancer".into()),
            fast_path: true,
            tracing: None,
        }
    );
    assert_eq!(loaded.generation, 1);
    assert_eq!(
        loaded.model.enrolled_cgroups(),
        vec![std::path::PathBuf::from("/sys/fs/cgroup/unified/balancer/client")]
    );
    assert!(
        loaded.model.enrolled.iter().all(|e| e.pod.is_none()),
        "static enroll: names cgroups, not pods"
    );
    assert_eq!(
        loaded.model.services,
        vec![std::sync::Arc::new(Service {
            name: "greeter".into(),
            vips: vec!["10.96.0.10:8000".parse().unwrap()],
            listen: Some("127.0.0.1:18000".parse().unwrap()),
            policy: Policy::RoundRobin,
            hash_header: None,
            endpoints: vec![
                Endpoint::ready("127.0.0.1:50051".parse().unwrap(), labels(&[("version", "v1")])),
                Endpoint::ready("127.0.0.1:50052".parse().unwrap(), labels(&[("version", "v2")])),
            ],
            routes: vec![Route {
                name: None,
                matches: vec![RouteMatch {
                    service: Some(StringMatch::Exact("helloworld.Greeter".into())),
                    method: Some(StringMatch::Exact("SayHello".into())),
                    headers: vec![],
                }],
                backends: vec![
                    Backend {
                        labels: labels(&[("version", "v1")]),
                        weight: 90,
                        filters: Default::default(),
                    },
                    Backend {
                        labels: labels(&[("version", "v2")]),
                        weight: 10,
                        filters: Default::default(),
                    },
                ],
                filters: Default::default(),
                timeout: None,
            }],
            fault: None,
            traffic_distribution: crate::model::TrafficDistribution::Any,
            internal_traffic_policy: crate::model::InternalTrafficPolicy::Cluster,
            ejection: None,
        })]
    );
}

#[test]
fn omitted_keys_take_their_defaults() {
    let loaded = parse(
        "services:\n  - name: a\n    listen: 127.0.0.1:18000\n    routes:\n      - backends: [ { labels: { v: x } } ]\n",
        "a.yaml",
    )
    .unwrap();
    assert_eq!(loaded.node.listen, None);
    assert_eq!(loaded.node.admin, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(loaded.node.attach_cgroup, None);
    assert!(loaded.node.fast_path);
    let svc = &loaded.model.services[0];
    assert!(svc.vips.is_empty());
    assert_eq!(svc.policy, Policy::RoundRobin);
    assert!(svc.endpoints.is_empty(), "a service may have no endpoints yet");
    // An empty match list matches every call; Gateway API's default weight is 1.
    assert!(svc.routes[0].matches.is_empty());
    assert_eq!(svc.routes[0].backends[0].weight, 1);
}

#[test]
fn extras_fast_path_vips_state_regex_and_headers() {
    let text = "\
fast_path: false
services:
  - name: echo
    vips: [ 10.96.0.11:9000, 10.96.0.12:9000 ]
    vip: 10.96.0.10:9000
    policy: peak-ewma
    endpoints:
      - { address: 127.0.0.1:50061, state: draining, zone: a, node: n1 }
      - address: \"[::1]:50062\"
    routes:
      - name: canary
        matches:
          - method: { regex: \"Say.*\" }
            service: { exact: balancer.test.Echo }
            headers:
              - { name: X-Canary, value: \"1\" }
              - { name: x-user, regex: \"a.*\" }
        backends: [ { labels: { track: canary }, weight: 3 } ]
";
    let loaded = parse(text, "echo.yaml").unwrap();
    assert!(!loaded.node.fast_path);
    let svc = &loaded.model.services[0];
    assert_eq!(svc.policy, Policy::PeakEwma);
    let vips: Vec<String> = svc.vips.iter().map(|v| v.to_string()).collect();
    assert_eq!(vips, ["10.96.0.10:9000", "10.96.0.11:9000", "10.96.0.12:9000"]);
    assert_eq!(svc.endpoints[0].state, EndpointState::Draining);
    assert_eq!(svc.endpoints[0].zone.as_deref(), Some("a"));
    assert_eq!(svc.endpoints[0].node.as_deref(), Some("n1"));
    assert_eq!(svc.endpoints[1].state, EndpointState::Ready);
    assert_eq!(svc.endpoints[1].address, "[::1]:50062".parse().unwrap());
    let route = &svc.routes[0];
    assert_eq!(route.name.as_deref(), Some("canary"));
    assert_eq!(
        route.matches[0],
        RouteMatch {
            service: Some(StringMatch::Exact("balancer.test.Echo".into())),
            method: Some(StringMatch::RegularExpression("Say.*".into())),
            headers: vec![
                // Header names are matched lower-case, as HTTP/2 sends them.
                HeaderMatch {
                    name: "x-canary".into(),
                    value: StringMatch::Exact("1".into())
                },
                HeaderMatch {
                    name: "x-user".into(),
                    value: StringMatch::RegularExpression("a.*".into())
                },
            ],
        }
    );
}

#[test]
fn a_bad_address_names_file_key_value_and_line() {
    let text = "\
services:
  - name: greeter
    vip: 10.96.0.10:8000
    endpoints:
      - { address: 127.0.0.1:50051 }
      - address: x
";
    assert_eq!(
        err(text),
        "greeter.yaml: services[0].endpoints[1].address: invalid socket address \"x\" \
         (expected IP:PORT, e.g. 127.0.0.1:50051 or \"[::1]:50051\") at line 6 column 9"
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    assert_eq!(
        err("admin: 127.0.0.1:15000\nlisen: 127.0.0.1:15001\n"),
        "greeter.yaml: lisen: unknown field `lisen`, expected one of `listen`, `admin`, \
         `attach_cgroup`, `enroll`, `fast_path`, `zone`, `node`, `services`, `gateways`, `tracing` at line 2 column 1"
    );
    let e = err(
        "services:\n  - name: a\n    vip: 10.0.0.1:80\n    endpoints:\n      - { address: 127.0.0.1:1, weight: 3 }\n",
    );
    assert!(
        e.starts_with("greeter.yaml: services[0].endpoints[0].weight: unknown field `weight`"),
        "{e}"
    );
    assert!(e.ends_with(" at line 5 column 33"), "{e}");
    let e = err("services:\n  - name: a\n    vip: 10.0.0.1:80\n    routes:\n      - matches: [ { method: { regexp: x } } ]\n        backends: [ {weight: 1} ]\n");
    assert!(
        e.starts_with("greeter.yaml: services[0].routes[0].matches[0].method: unknown field `regexp`, expected `exact` or `regex`"),
        "{e}"
    );
}

#[test]
fn wrong_types_and_values_name_the_key() {
    assert_eq!(
        err("services:\n  - name: a\n    vip: 10.0.0.1:80\n    policy: random\n"),
        "greeter.yaml: services[0].policy: unknown variant `random`, expected one of \
         `round-robin`, `least-request`, `peak-ewma`, `ring-hash` at line 4 column 13"
    );
    assert_eq!(
        err("services:\n  - name: a\n    vip: 10.0.0.1:80\n    endpoints:\n      - address: 127.0.0.1:1\n        labels: { a: [1] }\n"),
        "greeter.yaml: services[0].endpoints[0].labels.a: invalid type: sequence, expected a string at line 6 column 22"
    );
    let e = err("fast_path: sometimes\n");
    assert!(e.starts_with("greeter.yaml: fast_path: invalid type"), "{e}");
    let e = err(
        "services:\n  - name: a\n    vip: 10.0.0.1:80\n    endpoints:\n      - { address: 127.0.0.1:1, state: gone }\n",
    );
    assert!(
        e.starts_with("greeter.yaml: services[0].endpoints[0].state: unknown variant `gone`"),
        "{e}"
    );
}

#[test]
fn yaml_syntax_errors_are_one_line_with_a_line_number() {
    let e = err("services: [\n  { name: a\n");
    assert!(e.starts_with("greeter.yaml: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("line 2") || e.contains("line 3"), "{e}");
    let e = err("admin: 127.0.0.1:1\nadmin: 127.0.0.1:2\n");
    assert!(e.contains("duplicate field `admin`"), "{e}");
}

#[test]
fn an_empty_file_is_refused() {
    assert_eq!(
        err("# nothing yet\n\n"),
        "greeter.yaml: the file is empty (write `services: []` for no services)"
    );
    assert!(parse("services: []\n", "x").unwrap().model.services.is_empty());
}

#[test]
fn semantic_errors_name_the_key_and_line() {
    assert_eq!(
        err("services:\n  - name: a\n    vip: 10.0.0.1:80\n  - name: a\n    vip: 10.0.0.2:80\n"),
        "greeter.yaml: services[1].name: service `a` is defined twice at line 4 column 5"
    );
    assert_eq!(
        err("services:\n  - name: a\n    vip: 10.0.0.1:80\n  - name: b\n    vip: 10.0.0.1:80\n"),
        "greeter.yaml: services[1].vip: service `b`: VIP 10.0.0.1:80 is also used by service `a` at line 5 column 5"
    );
    assert_eq!(
        err("services:\n  - name: a\n    vip: 10.0.0.1:80\n  - name: b\n    vips: [10.0.0.3:80, 10.0.0.1:80]\n"),
        "greeter.yaml: services[1].vips[1]: service `b`: VIP 10.0.0.1:80 is also used by service `a` at line 5 column 25"
    );
    assert_eq!(
        err("services:\n  - name: a\n    listen: 127.0.0.1:1\n  - name: b\n    listen: 127.0.0.1:1\n"),
        "greeter.yaml: services[1].listen: service `b`: listener 127.0.0.1:1 is also used by service `a` at line 5 column 5"
    );
    assert_eq!(
        err("services:\n  - name: a\n    vip: 10.0.0.1:80\n    endpoints:\n      - address: 127.0.0.1:1\n      - address: 127.0.0.1:2\n      - address: 127.0.0.1:1\n"),
        "greeter.yaml: services[0].endpoints[2].address: service `a`: endpoint 127.0.0.1:1 is listed twice at line 7 column 9"
    );
    assert_eq!(
        err("services:\n  - name: ''\n    vip: 10.0.0.1:80\n"),
        "greeter.yaml: services[0].name: service name is empty at line 2 column 5"
    );
    assert_eq!(
        err("services:\n  - name: a\n"),
        "greeter.yaml: services[0].name: service `a` has neither `vip` nor `listen`: nothing can reach it at line 2 column 5"
    );
}

#[test]
fn route_errors_name_the_key_and_line() {
    let route = |r: &str| format!("services:\n  - name: a\n    vip: 10.0.0.1:80\n    routes:\n{r}");
    assert_eq!(
        err(&route("      - matches: []\n")),
        "greeter.yaml: services[0].routes[0].backends: a route needs at least one backend \
         ({ labels: {...}, weight: N }) at line 5 column 9"
    );
    assert_eq!(
        err(&route("      - backends:\n          - { weight: 0 }\n")),
        "greeter.yaml: services[0].routes[0].backends: every backend has weight 0 at line 5 column 9"
    );
    assert_eq!(
        err(&route("      - matches: [ { method: { regex: \"Say(\" } } ]\n        backends: [ { weight: 1 } ]\n")),
        "greeter.yaml: services[0].routes[0].matches[0].method.regex: invalid regular expression \"Say(\": unclosed group at line 5 column 32"
    );
    assert_eq!(
        err(&route("      - matches: [ { headers: [ { name: x, value: a, regex: b } ] } ]\n        backends: [ { weight: 1 } ]\n")),
        "greeter.yaml: services[0].routes[0].matches[0].headers[0].regex: give either `value` (exact) or `regex`, not both at line 5 column 54"
    );
    assert_eq!(
        err(&route("      - matches: [ { headers: [ { name: x } ] } ]\n        backends: [ { weight: 1 } ]\n")),
        "greeter.yaml: services[0].routes[0].matches[0].headers[0].name: a header match needs `value` (exact) or `regex` at line 5 column 35"
    );
    assert_eq!(
        err(&route("      - matches: [ { headers: [ { name: \"a b\", value: x } ] } ]\n        backends: [ { weight: 1 } ]\n")),
        "greeter.yaml: services[0].routes[0].matches[0].headers[0].name: invalid header name \"a b\" at line 5 column 35"
    );
    let e = err(&route(
        "      - matches: [ { method: { exact: a, regex: b } } ]\n        backends: [ { weight: 1 } ]\n",
    ));
    assert!(
        e.starts_with("greeter.yaml: services[0].routes[0].matches[0].method: `regex` given besides `exact`"),
        "{e}"
    );
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greeter.yaml");
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(load(&path).unwrap().model.services[0].name, "greeter");

    std::fs::write(&path, "services:\n  - name: a\n    vip: nope\n").unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: services[0].vip: invalid socket address \"nope\"",
            path.display()
        )),
        "{e}"
    );

    let missing = dir.path().join("missing.yaml");
    let e = load(&missing).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    // The cause is shown once, after what failed.
    assert_eq!(
        crate::error::Chain(&e).to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

/// Writes like a careful editor: a temporary file renamed over the old one.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn weights(l: &Loaded) -> BTreeMap<String, u32> {
    l.model.services[0].routes[0]
        .backends
        .iter()
        .map(|b| (b.labels["version"].clone(), b.weight))
        .collect()
}

async fn next(rx: &mut tokio::sync::watch::Receiver<Arc<Loaded>>) -> Arc<Loaded> {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a reload within 5 s")
        .expect("the watcher is running");
    rx.borrow_and_update().clone()
}

use std::sync::Arc;

#[tokio::test]
async fn watch_applies_good_files_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greeter.yaml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let mut w = watch(&path, Duration::from_millis(20)).unwrap();
    let mut rx = w.rx.clone();
    assert_eq!(w.current().generation, 1);
    assert_eq!(
        weights(&w.current()),
        BTreeMap::from([("v1".into(), 90), ("v2".into(), 10)])
    );

    // A good change is published.
    replace(
        &path,
        &EXAMPLE
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10", "weight: 100"),
    );
    let l = next(&mut rx).await;
    assert_eq!(l.generation, 2);
    assert_eq!(weights(&l), BTreeMap::from([("v1".into(), 0), ("v2".into(), 100)]));
    assert_eq!((w.stats.ok(), w.stats.failed()), (1, 0));

    // A bad one is refused, counted once, and the last good one stays.
    replace(&path, &EXAMPLE.replace("127.0.0.1:50052", "127.0.0.1"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while w.stats.failed() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((w.stats.ok(), w.stats.failed()), (1, 1), "the bad file is counted once");
    let why = w.stats.last_error().expect("the refusal is kept");
    assert!(
        why.contains("services[0].endpoints[1].address: invalid socket address \"127.0.0.1\""),
        "{why}"
    );
    assert!(!rx.has_changed().unwrap());
    assert_eq!(w.current().generation, 2);
    assert_eq!(
        weights(&w.current()),
        BTreeMap::from([("v1".into(), 0), ("v2".into(), 100)])
    );

    // A deleted file is an error too; its return is a change.
    std::fs::remove_file(&path).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while w.stats.failed() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.stats.failed(), 2);
    assert_eq!(w.current().generation, 2);

    // Fixed: applied again, and the error is cleared.
    replace(&path, EXAMPLE);
    let l = next(&mut rx).await;
    assert_eq!(l.generation, 3);
    assert_eq!(weights(&l), BTreeMap::from([("v1".into(), 90), ("v2".into(), 10)]));
    assert_eq!(w.stats.ok(), 2);
    assert_eq!(w.stats.last_error(), None);

    // Dropping every receiver stops the polling task.
    drop(rx);
    let task = std::mem::replace(&mut w.task, tokio::spawn(async {}));
    drop(w);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the watcher stops once nobody listens")
        .unwrap();
}

#[tokio::test]
async fn watch_fails_at_start_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: a\n    vip: 10.0.0.1:80\n    polcy: round-robin\n",
    )
    .unwrap();
    let e = watch(&path, Duration::from_millis(20)).unwrap_err().to_string();
    assert!(e.contains("services[0].polcy: unknown field `polcy`"), "{e}");
    assert!(e.ends_with("at line 4 column 5"), "{e}");
}

#[test]
fn locality_keys_of_the_agent_and_of_services() {
    let text = "\
zone: zone-a
node: node-1
services:
  - name: near
    listen: 127.0.0.1:18000
    traffic_distribution: PreferClose
  - name: local
    listen: 127.0.0.1:18001
    internal_traffic_policy: Local
  - name: plain
    listen: 127.0.0.1:18002
";
    let loaded = parse(text, "l.yaml").unwrap();
    let m = &loaded.model;
    assert_eq!(m.locality.zone.as_deref(), Some("zone-a"));
    assert_eq!(m.locality.node.as_deref(), Some("node-1"));
    let by = |n: &str| m.service(n).unwrap();
    use crate::model::{InternalTrafficPolicy as Itp, TrafficDistribution as Td};
    assert_eq!(
        (by("near").traffic_distribution, by("near").internal_traffic_policy),
        (Td::PreferClose, Itp::Cluster)
    );
    assert_eq!(
        (by("local").traffic_distribution, by("local").internal_traffic_policy),
        (Td::Any, Itp::Local)
    );
    assert_eq!(
        (by("plain").traffic_distribution, by("plain").internal_traffic_policy),
        (Td::Any, Itp::Cluster)
    );
    // No zone or node given: none.
    let loaded = parse("services: []\n", "l.yaml").unwrap();
    assert_eq!(loaded.model.locality, crate::model::Locality::default());

    let e = err("services:\n  - name: a\n    listen: 127.0.0.1:1\n    traffic_distribution: Closest\n");
    assert!(
        e.starts_with("greeter.yaml: services[0].traffic_distribution: unknown variant `Closest`, expected one of"),
        "{e}"
    );
    assert!(e.ends_with("at line 4 column 27"), "{e}");
    let e = err("zone: \"\"\nservices: []\n");
    assert!(e.starts_with("greeter.yaml: zone: must not be empty"), "{e}");
}

#[test]
fn ring_hash_and_faults_from_the_file() {
    let text = "\
services:
  - name: greeter
    listen: 127.0.0.1:18000
    policy: ring-hash
    hash_header: X-User-Id
    fault:
      delay: { duration: 250ms, percent: 10 }
      abort: { status: UNAVAILABLE, percent: 2.5, message: chaos }
";
    let loaded = parse(text, "greeter.yaml").unwrap();
    let svc = &loaded.model.services[0];
    assert_eq!(svc.policy, Policy::RingHash);
    assert_eq!(svc.hash_header.as_deref(), Some("x-user-id"));
    let f = svc.fault.as_ref().unwrap();
    let d = f.delay.as_ref().unwrap();
    assert_eq!(
        (d.duration, d.share.per_million()),
        (std::time::Duration::from_millis(250), 100_000)
    );
    let a = f.abort.as_ref().unwrap();
    assert_eq!(
        (a.code, a.share.per_million(), a.message.as_str()),
        (14, 25_000, "chaos")
    );

    let text = "services:\n  - name: a\n    listen: 127.0.0.1:1\n    fault:\n      abort: { status: 8 }\n";
    let a = parse(text, "a.yaml").unwrap().model.services[0]
        .fault
        .clone()
        .unwrap()
        .abort
        .unwrap();
    assert_eq!(
        (a.code, a.share.percent(), a.message.as_str()),
        (8, 100.0, "fault injected")
    );
}

#[test]
fn a_route_timeout_from_the_file() {
    let base = "services:\n  - name: a\n    listen: 127.0.0.1:1\n    routes:\n";
    let loaded = parse(
        &format!("{base}      - {{ name: slow, timeout: 1.5s, matches: [ {{ method: Export }} ], backends: [ {{ labels: {{}}, weight: 1 }} ] }}\n      - {{ backends: [ {{ labels: {{}}, weight: 1 }} ] }}\n"),
        "a.yaml",
    )
    .unwrap();
    let routes = &loaded.model.services[0].routes;
    assert_eq!(routes[0].timeout, Some(std::time::Duration::from_millis(1500)));
    assert_eq!(routes[1].timeout, None);
    let e = err(&format!(
        "{base}      - {{ timeout: soon, backends: [ {{ labels: {{}}, weight: 1 }} ] }}\n"
    ));
    assert!(
        e.starts_with("greeter.yaml: services[0].routes[0].timeout: invalid duration `soon`"),
        "{e}"
    );
    let e = err(&format!(
        "{base}      - {{ timeout: 0s, backends: [ {{ labels: {{}}, weight: 1 }} ] }}\n"
    ));
    assert!(
        e.starts_with("greeter.yaml: services[0].routes[0].timeout: a route timeout must be more than 0"),
        "{e}"
    );
}

#[test]
fn a_services_ejection_from_the_file() {
    let base = "services:\n  - name: a\n    listen: 127.0.0.1:1\n";
    let loaded = parse(
        &format!("{base}    ejection: {{ consecutive_failures: 2, base: 30s, max_percent: 50 }}\n"),
        "a.yaml",
    )
    .unwrap();
    assert_eq!(
        loaded.model.services[0].ejection,
        Some(crate::model::Ejection {
            consecutive_failures: 2,
            base: std::time::Duration::from_secs(30),
            max_percent: 50,
        })
    );
    // Omitted keys: the agent's defaults, every endpoint may be ejected.
    let loaded = parse(&format!("{base}    ejection: {{ max_percent: 10 }}\n"), "a.yaml").unwrap();
    let e = loaded.model.services[0].ejection.unwrap();
    assert_eq!(
        (e.consecutive_failures, e.base, e.max_percent),
        (5, std::time::Duration::from_secs(10), 10)
    );
    assert_eq!(parse(base, "a.yaml").unwrap().model.services[0].ejection, None);
    for (bad, says) in [
        (
            "{ max_percent: 150 }",
            "services[0].ejection.max_percent: 150 is not a percentage (0–100)",
        ),
        ("{ base: soon }", "services[0].ejection.base: invalid duration `soon`"),
        (
            "{ base: 0s }",
            "services[0].ejection.base: an ejection must last more than 0",
        ),
        (
            "{ percent: 10 }",
            "services[0].ejection.percent: unknown field `percent`",
        ),
    ] {
        let e = err(&format!("{base}    ejection: {bad}\n"));
        assert!(e.starts_with(&format!("greeter.yaml: {says}")), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn ring_hash_and_fault_mistakes_name_the_key() {
    let base = "services:\n  - name: a\n    listen: 127.0.0.1:1\n";
    let e = err(&format!("{base}    policy: ring-hash\n"));
    assert!(
        e.starts_with("greeter.yaml: services[0].policy: policy ring-hash needs `hash_header`"),
        "{e}"
    );
    let e = err(&format!("{base}    hash_header: x-user-id\n"));
    assert!(
        e.starts_with("greeter.yaml: services[0].hash_header: `hash_header` is used only by policy ring-hash"),
        "{e}"
    );
    let e = err(&format!("{base}    policy: ring-hash\n    hash_header: \"x user\"\n"));
    assert!(
        e.starts_with("greeter.yaml: services[0].hash_header: invalid header name"),
        "{e}"
    );
    let e = err(&format!("{base}    fault:\n      delay: {{ duration: soon }}\n"));
    assert!(
        e.starts_with("greeter.yaml: services[0].fault.delay.duration: invalid duration `soon`"),
        "{e}"
    );
    let e = err(&format!("{base}    fault:\n      abort: {{ status: OK }}\n"));
    assert!(
        e.starts_with("greeter.yaml: services[0].fault.abort.status: invalid gRPC status `OK`"),
        "{e}"
    );
    let e = err(&format!(
        "{base}    fault:\n      abort: {{ status: 14, percent: 101 }}\n"
    ));
    assert!(
        e.starts_with("greeter.yaml: services[0].fault.abort.percent: invalid percentage `101`"),
        "{e}"
    );
    let e = err(&format!("{base}    fault: {{}}\n"));
    assert!(
        e.starts_with("greeter.yaml: services[0].fault: a fault needs `delay` and/or `abort`"),
        "{e}"
    );
}

/// A service `a` with one route whose filters are `route` and whose
/// backend's are `backend`, and a service `shadow` to mirror to.
fn filtered(route: &str, backend: &str) -> String {
    format!(
        "services:\n  - name: a\n    listen: 127.0.0.1:1\n    routes:\n      - filters: {route}\n        backends:\n          - {{ weight: 1, filters: {backend} }}\n  - name: shadow\n    listen: 127.0.0.1:2\n"
    )
}

#[test]
fn filters_of_routes_and_backends_from_the_file() {
    let text = filtered(
        "[ { request_header_modifier: { set: [ { name: X-Tenant, value: a } ], add: [ { name: x-add, value: \"1\" } ], remove: [ X-Debug ] } },\n                   { response_header_modifier: { add: [ { name: x-served-by, value: balancer } ] } },\n                   { request_mirror: { service: shadow, percent: 12.5 } } ]",
        "[ { request_header_modifier: { set: [ { name: x-backend, value: v1 } ] } } ]",
    );
    let l = parse(&text, "greeter.yaml").unwrap();
    let route = &l.model.service("a").unwrap().routes[0];
    let req = route.filters.request.as_ref().unwrap();
    assert_eq!((req.set[0].name.as_str(), req.set[0].value.as_str()), ("x-tenant", "a"));
    assert_eq!(req.add[0].name, "x-add");
    assert_eq!(req.remove, ["x-debug"], "names are lowercased");
    assert_eq!(route.filters.response.as_ref().unwrap().add[0].name, "x-served-by");
    let m = &route.filters.mirrors[0];
    assert_eq!((m.service.as_str(), m.share.percent()), ("shadow", 12.5));
    let b = route.backends[0].filters.request.as_ref().unwrap();
    assert_eq!(b.set[0].name, "x-backend");
    // Without `percent`, every call is mirrored; `fraction` as in the
    // Gateway API.
    let l = parse(&filtered("[ { request_mirror: { service: shadow } } ]", "[]"), "f").unwrap();
    let m = &l.model.service("a").unwrap().routes[0].filters.mirrors[0];
    assert_eq!(m.share.percent(), 100.0);
    let text = filtered(
        "[ { request_mirror: { service: shadow, fraction: { numerator: 1, denominator: 8 } } } ]",
        "[]",
    );
    let l = parse(&text, "f").unwrap();
    let m = &l.model.service("a").unwrap().routes[0].filters.mirrors[0];
    assert_eq!(m.share.percent(), 12.5);
}

#[test]
fn filter_mistakes_name_the_key() {
    let cases = [
        (
            filtered("[ { request_header_modifier: { set: [ { name: \":path\", value: /x } ] } } ]", "[]"),
            "services[0].routes[0].filters[0].request_header_modifier: header `:path` may not be modified",
        ),
        (
            filtered("[ { request_header_modifier: { remove: [ te ] } } ]", "[]"),
            "services[0].routes[0].filters[0].request_header_modifier: header `te` may not be modified",
        ),
        (
            filtered("[]", "[ { response_header_modifier: { set: [ { name: grpc-status, value: \"0\" } ] } } ]"),
            "services[0].routes[0].backends[0].filters[0].response_header_modifier: header `grpc-status` may not be modified",
        ),
        (
            filtered("[ { request_header_modifier: { add: [ { name: content-type, value: x } ] } } ]", "[]"),
            "header `content-type` may not be modified",
        ),
        (
            filtered("[ { request_header_modifier: { add: [ { name: connection, value: close } ] } } ]", "[]"),
            "header `connection` may not be modified",
        ),
        (
            filtered("[ { request_header_modifier: { add: [ { name: x-a, value: \" lead\" } ] } } ]", "[]"),
            "header `x-a`: invalid value \" lead\"",
        ),
        (
            filtered("[ { request_mirror: { service: shadow }, request_header_modifier: { remove: [x-a] } } ]", "[]"),
            "services[0].routes[0].filters[0]: a filter is exactly one of",
        ),
        (
            filtered("[ { request_header_modifier: {} } ]", "[]"),
            "a header modifier needs `set`, `add` or `remove`",
        ),
        (
            filtered("[ { request_mirror: { service: nowhere } } ]", "[]"),
            "services[0].routes[0].filters[0].request_mirror.service: no service named `nowhere` in this file",
        ),
        (
            filtered("[ { request_mirror: { service: shadow, percent: 120 } } ]", "[]"),
            "request_mirror.percent: invalid percentage `120`",
        ),
        (
            filtered("[ { request_mirror: { service: shadow, fraction: { numerator: 3, denominator: 2 } } } ]", "[]"),
            "request_mirror.fraction: needs 0 ≤ numerator ≤ denominator",
        ),
        (
            filtered("[ { request_mirror: { service: shadow, percent: 5, fraction: { numerator: 1 } } } ]", "[]"),
            "request_mirror: give either `percent` or `fraction`, not both",
        ),
        (
            filtered("[]", "[ { request_mirror: { service: shadow } } ]"),
            "services[0].routes[0].backends[0].filters[0].request_mirror: a backend cannot mirror calls",
        ),
        (
            filtered("[ { rewrite: {} } ]", "[]"),
            "unknown field `rewrite`",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "{want:?} not in {e:?}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```yaml\nlisten:")
        .expect("the static-mode example in the README")
        + "```yaml\n".len();
    let text = &readme[start..start + readme[start..].find("```").expect("its end")];
    let l = parse(text, "README.md").unwrap_or_else(|e| panic!("{e}"));
    let greeter = l.model.service("greeter").unwrap();
    let canary = &greeter.routes[0];
    assert_eq!(canary.filters.mirrors[0].service, "greeter-shadow");
    assert!(canary.backends[0].filters.request.is_some());
    let e = greeter.ejection.expect("the example's ejection");
    assert_eq!((e.consecutive_failures, e.max_percent), (5, 100));
}
