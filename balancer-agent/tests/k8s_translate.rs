//! Kubernetes objects onto the model: gRPC ports, VIPs, endpoint states,
//! version subsets, policies, GRPCRoute (valid and invalid) and pod opt-in.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use balancer_agent::k8s::slice::Slice as EndpointSlice;
use balancer_agent::{
    k8s::{
        grpcroute::{service_label, RouteError},
        mesh::Mesh,
        translate,
        translate::{member_services, Translation},
        Snapshot,
    },
    model::{Backend, EndpointState, HeaderMatch, Labels, Policy, RouteMatch, StringMatch},
};
use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::ResourceExt;
use serde_json::{json, Value};

fn from<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("test object parses"))
}

fn service(name: &str, ip: &str, ports: Value) -> Arc<Service> {
    from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "demo" },
        "spec": { "clusterIP": ip, "clusterIPs": [ip], "ports": ports }
    }))
}

fn grpc_service(name: &str, ip: &str) -> Arc<Service> {
    service(name, ip, json!([{ "name": "grpc", "port": 8000, "targetPort": 50051 }]))
}

/// An EndpointSlice of `svc` with port `grpc` = 50051; `eps` are
/// `(ip, ready, serving, terminating)`.
fn slice(svc: &str, suffix: &str, eps: &[(&str, bool, bool, bool)]) -> Arc<EndpointSlice> {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, ready, serving, terminating)| {
            json!({
                "addresses": [ip],
                "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
                "nodeName": "node-a", "zone": "zone-1"
            })
        })
        .collect();
    from(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{svc}-{suffix}"), "namespace": "demo",
                      "labels": { "kubernetes.io/service-name": svc } },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "grpc", "port": 50051, "protocol": "TCP" }]
    }))
}

fn grpcroute(name: &str, spec: Value) -> Arc<GrpcRoute> {
    from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": { "name": name, "namespace": "demo" },
        "spec": spec
    }))
}

fn split(parent: &str, backends: Value) -> Value {
    json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": parent, "port": 8000 }],
        "rules": [{ "backendRefs": backends }]
    })
}

fn no_cgroups(_: &Pod) -> Vec<PathBuf> {
    Vec::new()
}

fn run(snap: &Snapshot) -> Translation {
    let t = translate(snap, no_cgroups);
    t.model.validate().expect("translated model validates");
    t
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// The greeter: parent Service selecting both versions, one Service per
/// version, pods 10.1.0.1 (v1) and 10.1.0.2 (v2).
fn greeter() -> Snapshot {
    Snapshot {
        services: vec![
            grpc_service("greeter", "10.96.0.10"),
            grpc_service("greeter-v1", "10.96.0.11"),
            grpc_service("greeter-v2", "10.96.0.12"),
        ],
        endpoint_slices: vec![
            slice(
                "greeter",
                "a",
                &[("10.1.0.1", true, true, false), ("10.1.0.2", true, true, false)],
            ),
            slice("greeter-v1", "a", &[("10.1.0.1", true, true, false)]),
            slice("greeter-v2", "a", &[("10.1.0.2", true, true, false)]),
        ],
        ..Snapshot::default()
    }
}

#[test]
fn grpc_ports_by_name_or_app_protocol_become_vips() {
    let snap = Snapshot {
        services: vec![service(
            "multi",
            "10.96.0.20",
            json!([
                { "name": "grpc-api", "port": 9000 },
                { "name": "h2", "port": 9001, "appProtocol": "kubernetes.io/h2c" },
                { "name": "plain", "port": 9002, "appProtocol": "grpc" },
                { "name": "http", "port": 80 },
                { "name": "grpc-udp", "port": 9003, "protocol": "UDP" },
                { "name": "grpcweb", "port": 9004 }
            ]),
        )],
        ..Snapshot::default()
    };
    let t = run(&snap);
    let mut vips: Vec<SocketAddr> = t.model.services.iter().flat_map(|s| s.vips.clone()).collect();
    vips.sort();
    assert_eq!(
        vips,
        vec![
            addr("10.96.0.20:9000"),
            addr("10.96.0.20:9001"),
            addr("10.96.0.20:9002")
        ]
    );
    // Several gRPC ports: one model service each, named by port.
    assert!(t.model.service("demo/multi:grpc-api").is_some());
    assert!(t.model.service("demo/multi:h2").is_some());
}

#[test]
fn headless_external_name_and_ipv6_services_are_skipped() {
    let headless = service("headless", "None", json!([{ "name": "grpc", "port": 8000 }]));
    let v6 = service("v6", "fd00::10", json!([{ "name": "grpc", "port": 8000 }]));
    let ext: Arc<Service> = from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "ext", "namespace": "demo" },
        "spec": { "type": "ExternalName", "externalName": "example.invalid",
                  "ports": [{ "name": "grpc", "port": 8000 }] }
    }));
    let t = run(&Snapshot {
        services: vec![headless, v6, ext],
        ..Snapshot::default()
    });
    assert!(t.model.services.is_empty(), "{:?}", t.model.services);
}

#[test]
fn endpoint_conditions_map_to_ready_draining_or_dropped() {
    let snap = Snapshot {
        services: vec![grpc_service("greeter", "10.96.0.10")],
        endpoint_slices: vec![slice(
            "greeter",
            "a",
            &[
                ("10.1.0.1", true, true, false),   // ready
                ("10.1.0.2", false, true, true),   // serving, terminating: drain
                ("10.1.0.3", false, false, true),  // terminating, not serving: gone
                ("10.1.0.4", false, false, false), // not ready: gone
                ("fd00::1", true, true, false),    // not IPv4: gone
            ],
        )],
        ..Snapshot::default()
    };
    let t = run(&snap);
    let svc = t.model.service("demo/greeter").expect("greeter");
    assert_eq!(svc.vips, vec![addr("10.96.0.10:8000")]);
    let states: Vec<(SocketAddr, EndpointState)> = svc.endpoints.iter().map(|e| (e.address, e.state)).collect();
    assert_eq!(
        states,
        vec![
            (addr("10.1.0.1:50051"), EndpointState::Ready),
            (addr("10.1.0.2:50051"), EndpointState::Draining),
        ]
    );
    assert_eq!(svc.endpoints[0].zone.as_deref(), Some("zone-1"));
    assert_eq!(svc.endpoints[0].node.as_deref(), Some("node-a"));
}

#[test]
fn slices_of_a_service_are_merged_and_ready_wins() {
    let snap = Snapshot {
        services: vec![grpc_service("greeter", "10.96.0.10")],
        endpoint_slices: vec![
            slice("greeter", "a", &[("10.1.0.1", false, true, true)]),
            slice(
                "greeter",
                "b",
                &[("10.1.0.1", true, true, false), ("10.1.0.2", true, true, false)],
            ),
        ],
        ..Snapshot::default()
    };
    let svc = run(&snap).model.services.remove(0);
    assert_eq!(svc.endpoints.len(), 2);
    assert!(svc.endpoints.iter().all(|e| e.state == EndpointState::Ready));
}

#[test]
fn policy_annotation_chooses_the_policy_and_a_bad_one_falls_back() {
    let mk = |name: &str, ip: &str, policy: &str| -> Arc<Service> {
        from(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "demo",
                          "annotations": { "balancer.io/policy": policy } },
            "spec": { "clusterIP": ip, "ports": [{ "name": "grpc", "port": 8000 }] }
        }))
    };
    let snap = Snapshot {
        services: vec![mk("a", "10.96.0.1", "peak-ewma"), mk("b", "10.96.0.2", "fastest")],
        ..Snapshot::default()
    };
    let t = run(&snap);
    assert_eq!(t.model.service("demo/a").map(|s| s.policy), Some(Policy::PeakEwma));
    assert_eq!(t.model.service("demo/b").map(|s| s.policy), Some(Policy::RoundRobin));
    assert_eq!(t.bad_annotations.len(), 1);
    assert_eq!(t.bad_annotations[0].0, "demo/b");
    assert!(
        t.bad_annotations[0]
            .1
            .starts_with("balancer.io/policy: unknown policy `fastest`"),
        "{:?}",
        t.bad_annotations
    );
}

#[test]
fn ring_hash_and_fault_annotations_reach_the_model() {
    let svc = from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "a", "namespace": "demo",
                      "annotations": {
                          "balancer.io/policy": "ring-hash",
                          "balancer.io/hash-header": "x-user-id",
                          "balancer.io/fault-delay": "200ms",
                          "balancer.io/fault-delay-percent": "25",
                          "balancer.io/fault-abort": "UNAVAILABLE",
                          "balancer.io/fault-abort-message": "chaos",
                          "kubectl.kubernetes.io/last-applied-configuration": "{}"
                      } },
        "spec": { "clusterIP": "10.96.0.1", "ports": [{ "name": "grpc", "port": 8000 }] }
    }));
    let t = run(&Snapshot {
        services: vec![svc],
        ..Snapshot::default()
    });
    assert!(t.bad_annotations.is_empty(), "{:?}", t.bad_annotations);
    let s = t.model.service("demo/a").expect("the service");
    assert_eq!(
        (s.policy, s.hash_header.as_deref()),
        (Policy::RingHash, Some("x-user-id"))
    );
    let f = s.fault.as_ref().expect("a fault");
    let d = f.delay.as_ref().expect("a delay");
    assert_eq!((d.duration.as_millis(), d.share.percent()), (200, 25.0));
    let a = f.abort.as_ref().expect("an abort");
    assert_eq!((a.code, a.share.percent(), a.message.as_str()), (14, 100.0, "chaos"));
}

#[test]
fn grpcroute_splits_over_version_services() {
    let mut snap = greeter();
    snap.routes.push(grpcroute(
        "greeter-split",
        split(
            "greeter",
            json!([
                { "name": "greeter-v1", "port": 8000, "weight": 90 },
                { "name": "greeter-v2", "port": 8000, "weight": 10 }
            ]),
        ),
    ));
    let t = run(&snap);
    assert!(t.invalid_routes.is_empty(), "{:?}", t.invalid_routes);
    let svc = t.model.service("demo/greeter").expect("greeter");
    // Each endpoint carries the Services it belongs to.
    let members: Vec<_> = svc
        .endpoints
        .iter()
        .map(|e| {
            let mut m: Vec<_> = member_services(e).into_iter().collect();
            m.sort();
            (e.address, m)
        })
        .collect();
    assert_eq!(
        members,
        vec![
            (addr("10.1.0.1:50051"), vec!["greeter", "greeter-v1"]),
            (addr("10.1.0.2:50051"), vec!["greeter", "greeter-v2"]),
        ]
    );
    assert_eq!(svc.routes.len(), 1);
    let route = &svc.routes[0];
    assert_eq!(route.name.as_deref(), Some("demo/greeter-split#0"));
    assert!(route.matches.is_empty());
    let label = |s: &str| Labels::from([service_label(s)]);
    assert_eq!(
        route.backends,
        vec![
            Backend {
                labels: label("greeter-v1"),
                weight: 90,
                filters: Default::default(),
            },
            Backend {
                labels: label("greeter-v2"),
                weight: 10,
                filters: Default::default(),
            },
        ]
    );
    // The version Services stay balanced services of their own.
    assert!(t.model.service("demo/greeter-v1").is_some());
}

#[test]
fn backend_services_add_endpoints_the_parent_does_not_select() {
    // A parent Service with no endpoints of its own (no selector).
    let mut snap = greeter();
    snap.endpoint_slices
        .retain(|s| s.metadata.name.as_deref() != Some("greeter-a"));
    snap.routes.push(grpcroute(
        "canary",
        split("greeter", json!([{ "name": "greeter-v2", "port": 8000 }])),
    ));
    let t = run(&snap);
    let svc = t.model.service("demo/greeter").expect("greeter");
    assert_eq!(svc.endpoints.len(), 1);
    assert_eq!(svc.endpoints[0].address, addr("10.1.0.2:50051"));
    assert_eq!(svc.routes[0].backends[0].weight, 1, "weight defaults to 1");
}

#[test]
fn grpcroute_method_and_header_matches() {
    let mut snap = greeter();
    snap.routes.push(grpcroute(
        "by-method",
        json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "greeter" }],
            "rules": [
                {
                    "matches": [
                        { "method": { "service": "helloworld.Greeter", "method": "SayHello" } },
                        { "method": { "type": "RegularExpression", "method": "Say.*" },
                          "headers": [
                              { "name": "X-Canary", "value": "yes" },
                              { "name": "x-canary", "value": "ignored: second entry" },
                              { "type": "RegularExpression", "name": "x-user", "value": "u[0-9]+" }
                          ] }
                    ],
                    "backendRefs": [{ "name": "greeter-v2", "port": 8000 }]
                },
                { "backendRefs": [{ "name": "greeter-v1", "port": 8000 }] }
            ]
        }),
    ));
    let t = run(&snap);
    let svc = t.model.service("demo/greeter").expect("greeter");
    // One model route per match, most specific first.
    assert_eq!(svc.routes.len(), 3);
    assert_eq!(
        svc.routes[0].matches,
        vec![RouteMatch {
            service: Some(StringMatch::Exact("helloworld.Greeter".into())),
            method: Some(StringMatch::Exact("SayHello".into())),
            headers: vec![],
        }]
    );
    assert_eq!(
        svc.routes[1].matches,
        vec![RouteMatch {
            service: None,
            method: Some(StringMatch::RegularExpression("Say.*".into())),
            headers: vec![
                HeaderMatch {
                    name: "x-canary".into(),
                    value: StringMatch::Exact("yes".into())
                },
                HeaderMatch {
                    name: "x-user".into(),
                    value: StringMatch::RegularExpression("u[0-9]+".into()),
                },
            ],
        },]
    );
    assert_eq!(svc.routes[0].backends, svc.routes[1].backends, "both matches of rule 0");
    assert!(
        svc.routes[2].matches.is_empty(),
        "a rule without matches matches every call"
    );
    assert_eq!(svc.routes[2].name.as_deref(), Some("demo/by-method#1"));
}

#[test]
fn more_specific_matches_win_over_older_routes() {
    let mut snap = greeter();
    let route = |name: &str, created: &str, rule: Value| -> Arc<GrpcRoute> {
        from(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": { "name": name, "namespace": "demo", "creationTimestamp": created },
            "spec": {
                "parentRefs": [{ "group": "", "kind": "Service", "name": "greeter" }],
                "rules": [rule]
            }
        }))
    };
    snap.routes = vec![
        route(
            "catch-all",
            "2024-01-01T00:00:00Z",
            json!({
                "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
            }),
        ),
        route(
            "by-service",
            "2024-06-01T00:00:00Z",
            json!({
                "matches": [{ "method": { "service": "helloworld.Greeter" } }],
                "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
            }),
        ),
        route(
            "say-hello",
            "2025-01-01T00:00:00Z",
            json!({
                "matches": [{ "method": { "service": "helloworld.Greeter", "method": "SayHello" } }],
                "backendRefs": [{ "name": "greeter-v2", "port": 8000 }]
            }),
        ),
        // Same specificity as say-hello but newer: after it.
        route(
            "say-hello-too",
            "2025-02-01T00:00:00Z",
            json!({
                "matches": [{ "method": { "service": "helloworld.Greeter", "method": "SayHello" } }],
                "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
            }),
        ),
    ];
    let t = run(&snap);
    let names: Vec<_> = t
        .model
        .service("demo/greeter")
        .expect("greeter")
        .routes
        .iter()
        .map(|r| r.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        vec![
            "demo/say-hello#0",
            "demo/say-hello-too#0",
            "demo/by-service#0",
            "demo/catch-all#0"
        ]
    );
}

#[test]
fn routes_attach_to_the_named_parent_port_only() {
    let mut snap = greeter();
    snap.services[0] = service(
        "greeter",
        "10.96.0.10",
        json!([{ "name": "grpc", "port": 8000 }, { "name": "grpc-admin", "port": 8001 }]),
    );
    snap.routes.push(grpcroute(
        "only-8000",
        split("greeter", json!([{ "name": "greeter-v2", "port": 8000 }])),
    ));
    let t = run(&snap);
    assert_eq!(t.model.service("demo/greeter:grpc").map(|s| s.routes.len()), Some(1));
    assert_eq!(
        t.model.service("demo/greeter:grpc-admin").map(|s| s.routes.len()),
        Some(0)
    );
}

#[test]
fn gateway_parents_are_not_ours() {
    let mut snap = greeter();
    snap.routes.push(grpcroute(
        "north-south",
        json!({
            "parentRefs": [{ "name": "my-gateway" }],
            "rules": [{ "backendRefs": [{ "name": "missing", "port": 1 }] }]
        }),
    ));
    let t = run(&snap);
    assert!(t.invalid_routes.is_empty());
    assert!(t.model.services.iter().all(|s| s.routes.is_empty()));
}

fn invalid(spec: Value) -> RouteError {
    let mut snap = greeter();
    snap.routes.push(grpcroute("bad", spec));
    // A good route on the same parent survives the bad one.
    snap.routes.push(grpcroute(
        "good",
        split("greeter", json!([{ "name": "greeter-v1", "port": 8000 }])),
    ));
    let t = run(&snap);
    let svc = t.model.service("demo/greeter").expect("greeter");
    assert_eq!(svc.routes.len(), 1, "only the good route is applied");
    assert_eq!(svc.routes[0].name.as_deref(), Some("demo/good#0"));
    assert_eq!(t.invalid_routes.len(), 1);
    assert_eq!(t.invalid_routes[0].route.metadata.name.as_deref(), Some("bad"));
    Arc::try_unwrap(t.invalid_routes.into_iter().next().expect("one").error).expect("sole owner")
}

#[test]
fn grpcroute_with_a_missing_backend_is_ignored() {
    let e = invalid(split(
        "greeter",
        json!([
            { "name": "greeter-v1", "port": 8000, "weight": 50 },
            { "name": "greeter-v3", "port": 8000, "weight": 50 }
        ]),
    ));
    assert_eq!(
        e,
        RouteError::BackendNotFound {
            rule: 0,
            service: "demo/greeter-v3".into()
        }
    );
    assert_eq!(e.to_string(), "rules[0]: backend Service `demo/greeter-v3` not found");
}

#[test]
fn grpcroute_with_all_weights_zero_is_ignored() {
    let e = invalid(split(
        "greeter",
        json!([
            { "name": "greeter-v1", "port": 8000, "weight": 0 },
            { "name": "greeter-v2", "port": 8000, "weight": 0 }
        ]),
    ));
    assert_eq!(e, RouteError::AllWeightsZero { rule: 0 });
}

#[test]
fn grpcroute_with_a_bad_regex_is_ignored() {
    let e = invalid(json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "greeter" }],
        "rules": [{
            "matches": [{ "method": { "type": "RegularExpression", "method": "Say(" } }],
            "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
        }]
    }));
    assert!(
        matches!(&e, RouteError::BadRegex { rule: 0, pattern, .. } if pattern == "Say("),
        "{e}"
    );
}

#[test]
fn grpcroute_other_invalid_shapes_are_ignored() {
    let e = invalid(split(
        "greeter",
        json!([{ "name": "greeter-v1", "port": 8000, "weight": -1 }]),
    ));
    assert!(matches!(e, RouteError::NegativeWeight { weight: -1, .. }));
    let e = invalid(split("greeter", json!([{ "name": "greeter-v1", "port": 9999 }])));
    assert!(matches!(e, RouteError::BackendPortNotFound { port: 9999, .. }));
    let e = invalid(split("greeter", json!([])));
    assert_eq!(e, RouteError::NoBackends { rule: 0 });
    let e = invalid(split(
        "greeter",
        json!([{ "name": "greeter-v1", "port": 8000, "namespace": "other" }]),
    ));
    assert!(matches!(e, RouteError::CrossNamespaceBackend { .. }));
    let e = invalid(split(
        "greeter",
        json!([{ "group": "example.io", "kind": "Backend", "name": "greeter-v1" }]),
    ));
    assert!(matches!(e, RouteError::UnsupportedBackendKind { .. }), "{e}");
    let e = invalid(json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "greeter" }],
        "rules": [{
            "filters": [{ "type": "ExtensionRef",
                          "extensionRef": { "group": "example.io", "kind": "Thing", "name": "x" } }],
            "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
        }]
    }));
    assert_eq!(
        e,
        RouteError::UnsupportedFilter {
            rule: 0,
            filter: "ExtensionRef".into()
        }
    );
    let e = invalid(split("nowhere", json!([{ "name": "greeter-v1", "port": 8000 }])));
    assert_eq!(
        e,
        RouteError::ParentNotFound {
            service: "demo/nowhere".into()
        }
    );
}

fn pod(name: &str, uid: &str, annotations: Value, phase: &str) -> Arc<Pod> {
    from(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "demo", "uid": uid, "annotations": annotations },
        "spec": { "nodeName": "node-a", "containers": [{ "name": "c", "image": "x" }] },
        "status": { "phase": phase, "qosClass": "BestEffort" }
    }))
}

fn namespace(inject: Option<&str>) -> Arc<Namespace> {
    let labels = match inject {
        Some(v) => json!({ "balancer.io/inject": v }),
        None => json!({}),
    };
    from(json!({ "apiVersion": "v1", "kind": "Namespace",
                 "metadata": { "name": "demo", "labels": labels } }))
}

fn enrolled(snap: &Snapshot) -> Vec<PathBuf> {
    // Every pod "has" a cgroup named after its UID.
    let t = translate(snap, |p: &Pod| {
        p.metadata.uid.iter().map(|u| PathBuf::from("/cg").join(u)).collect()
    });
    t.model.enrolled_cgroups()
}

#[test]
fn pods_opt_in_by_annotation_or_namespace_label() {
    let pods = vec![
        pod(
            "annotated",
            "uid-a",
            json!({ "balancer.io/inject": "enabled" }),
            "Running",
        ),
        pod("plain", "uid-b", json!({}), "Running"),
        pod(
            "opted-out",
            "uid-c",
            json!({ "balancer.io/inject": "disabled" }),
            "Running",
        ),
        pod(
            "finished",
            "uid-d",
            json!({ "balancer.io/inject": "enabled" }),
            "Succeeded",
        ),
    ];
    let mut snap = Snapshot {
        pods,
        namespaces: vec![namespace(None)],
        ..Snapshot::default()
    };
    assert_eq!(enrolled(&snap), vec![PathBuf::from("/cg/uid-a")]);

    snap.namespaces = vec![namespace(Some("enabled"))];
    assert_eq!(
        enrolled(&snap),
        vec![PathBuf::from("/cg/uid-a"), PathBuf::from("/cg/uid-b")]
    );

    // A pod whose cgroup cannot be found is not enrolled (yet), and is
    // listed as such.
    let t = translate(&snap, no_cgroups);
    assert!(t.model.enrolled.is_empty());
    let missing: Vec<String> = t.cgroup_missing.iter().map(|p| p.name_any()).collect();
    assert_eq!(missing, ["annotated", "plain"]);
}

fn with(pod: &Arc<Pod>, f: impl FnOnce(&mut Pod)) -> Arc<Pod> {
    let mut p = (**pod).clone();
    f(&mut p);
    Arc::new(p)
}

#[test]
fn enrolled_cgroups_carry_their_pod_and_its_ipv4_address() {
    let opted = json!({ "balancer.io/inject": "enabled" });
    let dual = with(&pod("dual", "uid-a", opted.clone(), "Running"), |p| {
        let st = p.status.as_mut().expect("status");
        st.pod_ip = Some("fd00::5".into());
        st.pod_ips = Some(vec![
            serde_json::from_value(json!({ "ip": "fd00::5" })).expect("podIP"),
            serde_json::from_value(json!({ "ip": "10.244.1.5" })).expect("podIP"),
        ]);
    });
    let old_style = with(&pod("single", "uid-b", opted, "Running"), |p| {
        p.status.as_mut().expect("status").pod_ip = Some("10.244.1.6".into());
    });
    let snap = Snapshot {
        pods: vec![dual, old_style],
        namespaces: vec![namespace(None)],
        ..Snapshot::default()
    };
    // "dual" has no pod-level cgroup: two container cgroups.
    let t = translate(&snap, |p: &Pod| match p.name_any().as_str() {
        "dual" => vec![PathBuf::from("/cg/ctr-2"), PathBuf::from("/cg/ctr-1")],
        _ => vec![PathBuf::from("/cg/pod-b")],
    });
    let rows: Vec<(String, String, Vec<String>)> = t
        .model
        .enrolled
        .iter()
        .map(|e| {
            let pod = e.pod.as_ref().expect("a pod in Kubernetes mode");
            (
                e.cgroup.display().to_string(),
                pod.to_string(),
                pod.ips.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    let dual_ips = vec!["10.244.1.5".to_owned(), "fd00::5".to_owned()];
    assert_eq!(
        rows,
        vec![
            ("/cg/ctr-1".into(), "demo/dual".into(), dual_ips.clone()),
            ("/cg/ctr-2".into(), "demo/dual".into(), dual_ips),
            ("/cg/pod-b".into(), "demo/single".into(), vec!["10.244.1.6".to_owned()]),
        ]
    );
}

#[test]
fn pods_in_a_service_mesh_are_never_enrolled() {
    let opted = |extra: Value| {
        let mut a = json!({ "balancer.io/inject": "enabled" });
        a.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        a
    };
    let istio = pod(
        "istio",
        "uid-a",
        opted(json!({ "sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}" })),
        "Running",
    );
    let linkerd = pod(
        "linkerd",
        "uid-b",
        opted(json!({ "linkerd.io/proxy-version": "stable-2.14" })),
        "Running",
    );
    let linkerd_label = with(&pod("linkerd-label", "uid-c", opted(json!({})), "Running"), |p| {
        p.metadata.labels = Some([("linkerd.io/proxy-version".to_owned(), "edge".to_owned())].into());
    });
    let ambient = pod(
        "ambient",
        "uid-d",
        opted(json!({ "ambient.istio.io/redirection": "enabled" })),
        "Running",
    );
    let plain = pod("plain", "uid-e", opted(json!({})), "Running");
    // Meshed but not opted in: nothing to say.
    let unasked = pod(
        "unasked",
        "uid-f",
        json!({ "sidecar.istio.io/status": "{}" }),
        "Running",
    );
    let snap = Snapshot {
        pods: vec![istio, linkerd, linkerd_label, ambient, plain, unasked],
        namespaces: vec![namespace(None)],
        ..Snapshot::default()
    };
    assert_eq!(enrolled(&snap), vec![PathBuf::from("/cg/uid-e")]);
    let t = translate(&snap, no_cgroups);
    let meshed: Vec<(String, Mesh)> = t.meshed.iter().map(|(p, m)| (p.name_any(), *m)).collect();
    assert_eq!(
        meshed,
        vec![
            ("istio".to_owned(), Mesh::IstioSidecar),
            ("linkerd".to_owned(), Mesh::Linkerd),
            ("linkerd-label".to_owned(), Mesh::Linkerd),
            ("ambient".to_owned(), Mesh::IstioAmbient),
        ]
    );
    // Meshed pods are not "missing a cgroup" either.
    let missing: Vec<String> = t.cgroup_missing.iter().map(|p| p.name_any()).collect();
    assert_eq!(missing, ["plain"]);
}

/// Each enrolled pod's `reconnect_pinned`, by pod name.
fn reconnect_choices(snap: &Snapshot) -> Vec<(String, bool)> {
    let t = translate(snap, |p: &Pod| {
        p.metadata.uid.iter().map(|u| PathBuf::from("/cg").join(u)).collect()
    });
    t.model
        .enrolled
        .iter()
        .map(|e| {
            let pod = e.pod.as_ref().expect("a pod in Kubernetes mode");
            (pod.name.clone(), e.reconnect_pinned)
        })
        .collect()
}

#[test]
fn reconnecting_pinned_connections_is_opted_in_by_pod_or_namespace_and_the_pod_wins() {
    let opted = |extra: Value| {
        let mut a = json!({ "balancer.io/inject": "enabled" });
        a.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        a
    };
    let pods = vec![
        pod(
            "on",
            "uid-a",
            opted(json!({ "balancer.io/reconnect-pinned": "enabled" })),
            "Running",
        ),
        pod("unsaid", "uid-b", opted(json!({})), "Running"),
        pod(
            "off",
            "uid-c",
            opted(json!({ "balancer.io/reconnect-pinned": "disabled" })),
            "Running",
        ),
        // Not enrolled: nothing to reconnect.
        pod(
            "not-enrolled",
            "uid-d",
            json!({ "balancer.io/reconnect-pinned": "enabled" }),
            "Running",
        ),
    ];
    let ns = |labels: Value, annotations: Value| -> Arc<Namespace> {
        from(json!({ "apiVersion": "v1", "kind": "Namespace",
                     "metadata": { "name": "demo", "labels": labels, "annotations": annotations } }))
    };
    let mut snap = Snapshot {
        pods,
        namespaces: vec![namespace(None)],
        ..Snapshot::default()
    };
    let expect = |unsaid: bool| {
        vec![
            ("on".to_owned(), true),
            ("unsaid".to_owned(), unsaid),
            ("off".to_owned(), false),
        ]
    };
    let mut got = reconnect_choices(&snap);
    got.sort_by_key(|(n, _)| ["on", "unsaid", "off"].iter().position(|x| x == n));
    assert_eq!(got, expect(false), "off unless asked");

    for (labels, annotations, unsaid) in [
        (json!({ "balancer.io/reconnect-pinned": "enabled" }), json!({}), true),
        (json!({}), json!({ "balancer.io/reconnect-pinned": "enabled" }), true),
        // The namespace's label wins over its annotation.
        (
            json!({ "balancer.io/reconnect-pinned": "disabled" }),
            json!({ "balancer.io/reconnect-pinned": "enabled" }),
            false,
        ),
        (json!({ "balancer.io/reconnect-pinned": "yes" }), json!({}), false),
    ] {
        snap.namespaces = vec![ns(labels.clone(), annotations.clone())];
        let mut got = reconnect_choices(&snap);
        got.sort_by_key(|(n, _)| ["on", "unsaid", "off"].iter().position(|x| x == n));
        assert_eq!(
            got,
            expect(unsaid),
            "namespace labels {labels}, annotations {annotations}"
        );
    }
}

/// A small deterministic generator for the incremental test.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn incremental_translation_matches_a_fresh_one_after_every_change() {
    use balancer_agent::k8s::translator::{key_of, Translator};
    use std::collections::BTreeMap;

    // Services s0..s7 (s6 and s7 share s0's VIP pool: duplicate VIPs come
    // and go), slices, and a route over s0 with s1 and s2 as backends.
    let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    let vip = |i: usize| format!("10.96.0.{}", 10 + i % 6);
    let mut services: BTreeMap<String, Arc<Service>> = BTreeMap::new();
    let mut slices: BTreeMap<String, Arc<EndpointSlice>> = BTreeMap::new();
    let mut routes: Vec<Arc<GrpcRoute>> = Vec::new();
    let route = grpcroute(
        "split",
        split(
            "s0",
            json!([{ "name": "s1", "port": 8000, "weight": 3 }, { "name": "s2", "port": 8000, "weight": 1 }]),
        ),
    );
    let mut tr = Translator::default();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut previous = tr.services();
    for step in 0..400 {
        let i = rng.below(names.len());
        let name = &names[i];
        let what = rng.below(7);
        match what {
            0 => {
                let s = grpc_service(name, &vip(i + rng.below(2)));
                services.insert(name.clone(), Arc::clone(&s));
                tr.service_applied(s);
            }
            1 => {
                if let Some(s) = services.remove(name) {
                    tr.service_deleted(&key_of(s.as_ref()));
                }
            }
            2 | 3 => {
                let suffix = ["a", "b"][rng.below(2)];
                let eps: Vec<(String, bool, bool, bool)> = (0..1 + rng.below(3))
                    .map(|_| {
                        (
                            format!("10.1.{i}.{}", rng.below(5)),
                            rng.below(4) > 0,
                            true,
                            rng.below(3) == 0,
                        )
                    })
                    .collect();
                let eps: Vec<(&str, bool, bool, bool)> =
                    eps.iter().map(|(a, r, s, t)| (a.as_str(), *r, *s, *t)).collect();
                let s = slice(name, suffix, &eps);
                slices.insert(s.name_any(), Arc::clone(&s));
                tr.slice_applied(s);
            }
            4 => {
                let key = format!("{name}-{}", ["a", "b"][rng.below(2)]);
                if let Some(s) = slices.remove(&key) {
                    tr.slice_deleted(&key_of(s.as_ref()));
                }
            }
            5 => {
                routes = if routes.is_empty() {
                    vec![Arc::clone(&route)]
                } else {
                    Vec::new()
                };
                tr.routes_replaced(routes.clone());
            }
            _ => {
                // A no-op resync: nothing may change.
                tr.services_replaced(services.values().cloned().collect());
                tr.slices_replaced(slices.values().cloned().collect());
            }
        }
        tr.flush();
        let now = tr.services();
        let fresh = translate(
            &Snapshot {
                services: services.values().cloned().collect(),
                endpoint_slices: slices.values().cloned().collect(),
                routes: routes.clone(),
                ..Snapshot::default()
            },
            no_cgroups,
        );
        let mut expected = fresh.model.services.clone();
        expected.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(now, expected, "step {step}: change {what} of {name}");
        let mut dropped: Vec<String> = tr.dropped().into_iter().map(|(n, e)| format!("{n}: {e}")).collect();
        let mut fresh_dropped: Vec<String> = fresh.dropped.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        dropped.sort();
        fresh_dropped.sort();
        assert_eq!(dropped, fresh_dropped, "step {step}");
        // What the change did not touch keeps its Arc.
        let touched = |s: &str| s == format!("demo/{name}") || (!routes.is_empty() || what == 5) && s == "demo/s0";
        for old in &previous {
            if let Some(new) = now.iter().find(|n| n.name == old.name) {
                if !touched(&old.name) && **old == **new {
                    assert!(Arc::ptr_eq(old, new), "step {step}: {} was rebuilt", old.name);
                }
            }
        }
        previous = now;
    }
}

/// A route on `greeter` to greeter-v1 with rule `filters` and backendRef
/// `backend_filters`.
fn filtered(filters: Value, backend_filters: Value) -> Value {
    json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "greeter", "port": 8000 }],
        "rules": [{
            "filters": filters,
            "backendRefs": [{ "name": "greeter-v1", "port": 8000, "filters": backend_filters }]
        }]
    })
}

#[test]
fn grpcroute_header_modifiers_and_mirrors_reach_the_model() {
    let mut snap = greeter();
    snap.services.push(service(
        "shadow",
        "10.96.0.13",
        json!([{ "name": "grpc", "port": 8000 }, { "name": "metrics", "port": 9090 }]),
    ));
    snap.routes.push(grpcroute(
        "filtered",
        filtered(
            json!([
                { "type": "RequestHeaderModifier",
                  "requestHeaderModifier": { "set": [{ "name": "X-Tenant", "value": "a" }],
                                             "add": [{ "name": "x-add", "value": "1" }],
                                             "remove": ["x-debug"] } },
                { "type": "ResponseHeaderModifier",
                  "responseHeaderModifier": { "add": [{ "name": "x-served-by", "value": "balancer" }] } },
                { "type": "RequestMirror",
                  "requestMirror": { "backendRef": { "name": "shadow", "port": 8000 }, "percent": 25 } },
                { "type": "RequestMirror",
                  "requestMirror": { "backendRef": { "name": "greeter-v2", "port": 8000 },
                                     "fraction": { "numerator": 1, "denominator": 8 } } }
            ]),
            json!([{ "type": "RequestHeaderModifier",
                     "requestHeaderModifier": { "set": [{ "name": "x-version", "value": "v1" }] } }]),
        ),
    ));
    let t = run(&snap);
    assert!(t.invalid_routes.is_empty(), "{:?}", t.invalid_routes);
    let svc = t.model.service("demo/greeter").expect("greeter");
    let f = &svc.routes[0].filters;
    let req = f.request.as_ref().expect("request modifier");
    assert_eq!((req.set[0].name.as_str(), req.set[0].value.as_str()), ("x-tenant", "a"));
    assert_eq!(req.add[0].name, "x-add");
    assert_eq!(req.remove, ["x-debug"]);
    assert_eq!(
        f.response.as_ref().expect("response modifier").add[0].name,
        "x-served-by"
    );
    let mirrors: Vec<(&str, f64)> = f
        .mirrors
        .iter()
        .map(|m| (m.service.as_str(), m.share.percent()))
        .collect();
    // Each mirror names the model service its Service port became.
    assert_eq!(mirrors, [("demo/shadow", 25.0), ("demo/greeter-v2", 12.5)]);
    assert!(t.model.service("demo/shadow").is_some());
    let b = svc.routes[0].backends[0]
        .filters
        .request
        .as_ref()
        .expect("backend modifier");
    assert_eq!(b.set[0].name, "x-version");
    // A mirror Service's endpoints are not added to the parent.
    assert!(svc.endpoints.iter().all(|e| !member_services(e).contains("shadow")));
}

#[test]
fn grpcroute_filters_that_cannot_apply_are_reported() {
    let header = |kind: &str, field: &str, name: &str| json!([{ "type": kind, field: { "set": [{ "name": name, "value": "x" }] } }]);
    for (filters, backend, want) in [
        (
            header("RequestHeaderModifier", "requestHeaderModifier", ":path"),
            json!([]),
            "rules[0]: RequestHeaderModifier: header `:path` may not be modified",
        ),
        (
            header("RequestHeaderModifier", "requestHeaderModifier", "te"),
            json!([]),
            "header `te` may not be modified",
        ),
        (
            json!([]),
            header("ResponseHeaderModifier", "responseHeaderModifier", "grpc-status"),
            "rules[0]: ResponseHeaderModifier: header `grpc-status` may not be modified",
        ),
        (
            header("RequestHeaderModifier", "requestHeaderModifier", "content-type"),
            json!([]),
            "header `content-type` may not be modified",
        ),
        (
            header("RequestHeaderModifier", "requestHeaderModifier", "transfer-encoding"),
            json!([]),
            "header `transfer-encoding` may not be modified",
        ),
        (
            json!([{ "type": "RequestMirror",
                     "requestMirror": { "backendRef": { "name": "greeter-v9", "port": 8000 } } }]),
            json!([]),
            "rules[0]: backend Service `demo/greeter-v9` not found",
        ),
        (
            json!([]),
            json!([{ "type": "RequestMirror",
                     "requestMirror": { "backendRef": { "name": "greeter-v2", "port": 8000 } } }]),
            "filter RequestMirror on a backendRef is not supported",
        ),
    ] {
        let e = invalid(filtered(filters, backend));
        assert!(e.to_string().contains(want), "{want:?} not in {e}");
    }
    // A mirror to a port the agent does not balance.
    let mut snap = greeter();
    snap.services
        .push(service("web", "10.96.0.14", json!([{ "name": "http", "port": 80 }])));
    snap.routes.push(grpcroute(
        "to-web",
        filtered(
            json!([{ "type": "RequestMirror",
                     "requestMirror": { "backendRef": { "name": "web", "port": 80 } } }]),
            json!([]),
        ),
    ));
    let t = run(&snap);
    assert_eq!(t.invalid_routes.len(), 1);
    let e = t.invalid_routes[0].error.as_ref();
    assert!(matches!(e, RouteError::MirrorNotBalanced { port: 80, .. }), "{e}");
    assert_eq!(e.condition().1, "UnsupportedValue");
}
