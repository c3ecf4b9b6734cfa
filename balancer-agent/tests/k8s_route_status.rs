//! What balancer writes in a GRPCRoute's `status.parents[]`: the conditions
//! and Gateway API reasons for good and refused routes, computed from the
//! same translation that builds the model, and the merge with what the
//! route's status already holds.

use std::{collections::HashMap, sync::Arc};

use balancer_agent::k8s::{
    route_status::{desired_status, parent_verdicts, ParentVerdict, CONTROLLER_NAME},
    translate, Snapshot,
};
use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteStatus};
use k8s_openapi::{api::core::v1::Service, jiff::Timestamp};
use kube::ResourceExt;
use serde_json::{json, Value};

fn from<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("test object parses"))
}

fn service(name: &str, ip: &str) -> Arc<Service> {
    from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "demo" },
        "spec": { "clusterIP": ip, "clusterIPs": [ip],
                  "ports": [{ "name": "grpc", "port": 8000, "targetPort": 50051 }] }
    }))
}

fn route_with(spec: Value, status: Value) -> Arc<GrpcRoute> {
    from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": { "name": "r", "namespace": "demo", "generation": 3 },
        "spec": spec,
        "status": status
    }))
}

fn route(spec: Value) -> Arc<GrpcRoute> {
    route_with(spec, Value::Null)
}

fn parent(name: &str) -> Value {
    json!({ "group": "", "kind": "Service", "name": name, "port": 8000 })
}

fn to_v1() -> Value {
    json!([{ "backendRefs": [{ "name": "greeter-v1", "port": 8000 }] }])
}

/// The verdicts on `r` next to greeter, greeter-v1 and greeter-v2, through
/// the translation as the agent runs it.
fn verdicts(r: &Arc<GrpcRoute>) -> Vec<ParentVerdict> {
    let snap = Snapshot {
        services: vec![
            service("greeter", "10.96.0.10"),
            service("greeter-v1", "10.96.0.11"),
            service("greeter-v2", "10.96.0.12"),
        ],
        routes: vec![Arc::clone(r)],
        ..Snapshot::default()
    };
    let t = translate(&snap, |_| Vec::new());
    let error = t.invalid_routes.first().map(|i| Arc::clone(&i.error));
    let services: HashMap<String, &Service> = snap.services.iter().map(|s| (s.name_any(), s.as_ref())).collect();
    parent_verdicts(r, error.as_deref(), |ns, name| {
        (ns == "demo").then(|| services.get(name).copied()).flatten()
    })
}

/// `(Accepted status/reason, ResolvedRefs status/reason)` of the one parent.
fn conditions(spec: Value) -> ((bool, &'static str), (bool, &'static str), String) {
    let v = verdicts(&route(spec));
    assert_eq!(v.len(), 1);
    let v = &v[0];
    (
        (v.accepted.ok, v.accepted.reason),
        (v.resolved_refs.ok, v.resolved_refs.reason),
        format!("{} | {}", v.accepted.message, v.resolved_refs.message),
    )
}

#[test]
fn a_good_route_is_accepted_with_its_refs_resolved() {
    let (acc, refs, _) = conditions(json!({ "parentRefs": [parent("greeter")], "rules": to_v1() }));
    assert_eq!(acc, (true, "Accepted"));
    assert_eq!(refs, (true, "ResolvedRefs"));
}

#[test]
fn a_route_with_header_modifiers_and_a_mirror_is_accepted() {
    let (acc, refs, msg) = conditions(json!({ "parentRefs": [parent("greeter")], "rules": [{
        "filters": [
            { "type": "RequestHeaderModifier",
              "requestHeaderModifier": { "set": [{ "name": "x-tenant", "value": "acme" }] } },
            { "type": "ResponseHeaderModifier",
              "responseHeaderModifier": { "remove": ["x-debug"] } },
            { "type": "RequestMirror",
              "requestMirror": { "backendRef": { "name": "greeter-v2", "port": 8000 }, "percent": 10 } }
        ],
        "backendRefs": [{ "name": "greeter-v1", "port": 8000, "filters": [
            { "type": "RequestHeaderModifier",
              "requestHeaderModifier": { "add": [{ "name": "x-version", "value": "v1" }] } }
        ] }]
    }] }));
    assert_eq!(acc, (true, "Accepted"), "{msg}");
    assert_eq!(refs, (true, "ResolvedRefs"), "{msg}");
}

#[test]
fn refused_routes_say_why_with_gateway_api_reasons() {
    let spec = |rules: Value| json!({ "parentRefs": [parent("greeter")], "rules": rules });

    // An ExtensionRef filter: not implemented; the backends resolve.
    let (acc, refs, msg) = conditions(spec(json!([{
        "filters": [{ "type": "ExtensionRef",
                      "extensionRef": { "group": "example.io", "kind": "Thing", "name": "x" } }],
        "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
    }])));
    assert_eq!((acc, refs), ((false, "IncompatibleFilters"), (true, "ResolvedRefs")));
    assert!(msg.contains("filter ExtensionRef is not supported"), "{msg}");

    // A header the filters may not touch.
    let (acc, refs, msg) = conditions(spec(json!([{
        "filters": [{ "type": "RequestHeaderModifier",
                      "requestHeaderModifier": { "remove": ["grpc-timeout"] } }],
        "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
    }])));
    assert_eq!((acc, refs), ((false, "UnsupportedValue"), (true, "ResolvedRefs")));
    assert!(msg.contains("header `grpc-timeout` may not be modified"), "{msg}");

    // A bad regular expression.
    let (acc, refs, msg) = conditions(spec(json!([{
        "matches": [{ "method": { "type": "RegularExpression", "method": "Say(" } }],
        "backendRefs": [{ "name": "greeter-v1", "port": 8000 }]
    }])));
    assert_eq!((acc, refs), ((false, "UnsupportedValue"), (true, "ResolvedRefs")));
    assert!(msg.contains("bad regular expression `Say(`"), "{msg}");

    // Every weight 0.
    let (acc, _, _) = conditions(spec(
        json!([{ "backendRefs": [{ "name": "greeter-v1", "port": 8000, "weight": 0 }] }]),
    ));
    assert_eq!(acc, (false, "UnsupportedValue"));

    // A missing backend: not resolved, and the route is refused as a whole.
    let (acc, refs, msg) = conditions(spec(json!([{ "backendRefs": [
        { "name": "greeter-v1", "port": 8000, "weight": 90 },
        { "name": "greeter-v3", "port": 8000, "weight": 10 }
    ] }])));
    assert_eq!((acc, refs), ((false, "UnsupportedValue"), (false, "BackendNotFound")));
    assert!(msg.contains("backend Service `demo/greeter-v3` not found"), "{msg}");

    // A backend port that does not exist.
    let (_, refs, _) = conditions(spec(
        json!([{ "backendRefs": [{ "name": "greeter-v1", "port": 9999 }] }]),
    ));
    assert_eq!(refs, (false, "BackendNotFound"));

    // Another namespace.
    let (acc, refs, _) = conditions(spec(json!([{ "backendRefs": [
        { "name": "greeter-v1", "namespace": "other", "port": 8000 }
    ] }])));
    assert_eq!((acc, refs), ((false, "UnsupportedValue"), (false, "RefNotPermitted")));

    // Not a Service.
    let (_, refs, _) = conditions(spec(json!([{ "backendRefs": [
        { "group": "example.io", "kind": "Backend", "name": "greeter-v1" }
    ] }])));
    assert_eq!(refs, (false, "InvalidKind"));

    // A parent Service that does not exist.
    let (acc, refs, msg) = conditions(json!({ "parentRefs": [parent("nowhere")], "rules": to_v1() }));
    assert_eq!((acc, refs), ((false, "NoMatchingParent"), (true, "ResolvedRefs")));
    assert!(msg.contains("parent Service `demo/nowhere` not found"), "{msg}");
}

#[test]
fn resolved_refs_looks_past_the_first_problem() {
    // The filter in rule 0 is what the translation stops at; the missing
    // backend of rule 1 still shows in ResolvedRefs.
    let (acc, refs, msg) = conditions(json!({
        "parentRefs": [parent("greeter")],
        "rules": [
            { "filters": [{ "type": "ExtensionRef",
                            "extensionRef": { "group": "example.io", "kind": "Thing", "name": "x" } }],
              "backendRefs": [{ "name": "greeter-v1", "port": 8000 }] },
            { "backendRefs": [{ "name": "greeter-v3", "port": 8000 }] }
        ]
    }));
    assert_eq!(
        (acc, refs),
        ((false, "IncompatibleFilters"), (false, "BackendNotFound"))
    );
    assert!(msg.contains("rules[1]: backend Service `demo/greeter-v3`"), "{msg}");
}

#[test]
fn each_service_parent_gets_its_own_entry_and_gateways_none() {
    let r = route(json!({
        "parentRefs": [parent("greeter"), { "name": "my-gateway" }, parent("nowhere")],
        "rules": to_v1()
    }));
    let v = verdicts(&r);
    let names: Vec<&str> = v.iter().map(|p| p.parent_ref.name.as_str()).collect();
    assert_eq!(names, ["greeter", "nowhere"]);
    assert_eq!(v[1].accepted.reason, "NoMatchingParent");
    // balancer applies a route to all its parents or none: the existing
    // parent is not accepted either, and says why.
    assert!(!v[0].accepted.ok);
    assert!(
        v[0].accepted
            .message
            .contains("parent Service `demo/nowhere` not found"),
        "{}",
        v[0].accepted.message
    );

    let gateway_only = route(json!({ "parentRefs": [{ "name": "my-gateway" }], "rules": to_v1() }));
    assert!(verdicts(&gateway_only).is_empty());
    assert_eq!(desired_status(&gateway_only, &[], Timestamp::now()), None);
}

fn foreign_entry() -> Value {
    json!({
        "controllerName": "example.com/gateway-controller",
        "parentRef": { "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "my-gateway" },
        "conditions": [{ "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                         "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z" }]
    })
}

fn status_json(s: &GrpcRouteStatus) -> Value {
    serde_json::to_value(s).expect("serializes")
}

#[test]
fn the_desired_status_keeps_other_controllers_entries_and_is_stable() {
    let spec = json!({ "parentRefs": [parent("greeter"), { "name": "my-gateway" }], "rules": to_v1() });
    let r = route_with(spec.clone(), json!({ "parents": [foreign_entry()] }));
    let now: Timestamp = "2025-06-01T12:00:00.123456Z".parse().expect("timestamp");
    let status = desired_status(&r, &verdicts(&r), now).expect("ours is missing: a write");
    let s = status_json(&status);
    assert_eq!(
        s["parents"][0],
        foreign_entry(),
        "the other controller's entry as it was"
    );
    let ours = &s["parents"][1];
    assert_eq!(ours["controllerName"], CONTROLLER_NAME);
    assert_eq!(ours["parentRef"], parent("greeter"));
    let conds = ours["conditions"].as_array().expect("conditions");
    assert_eq!(conds.len(), 2);
    for (c, (ty, reason)) in conds
        .iter()
        .zip([("Accepted", "Accepted"), ("ResolvedRefs", "ResolvedRefs")])
    {
        assert_eq!(c["type"], ty);
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], reason);
        assert_eq!(c["observedGeneration"], 3);
        assert_eq!(c["lastTransitionTime"], "2025-06-01T12:00:00Z", "whole seconds");
    }

    // Once written, the same verdicts write nothing, whatever the time.
    let written = route_with(spec.clone(), s.clone());
    let later: Timestamp = "2025-06-02T00:00:00Z".parse().expect("timestamp");
    assert_eq!(desired_status(&written, &verdicts(&written), later), None);

    // A new generation with the same verdicts: observedGeneration moves,
    // lastTransitionTime stays.
    let mut next = (*written).clone();
    next.metadata.generation = Some(4);
    let next = Arc::new(next);
    let s2 = status_json(&desired_status(&next, &verdicts(&next), later).expect("a write"));
    assert_eq!(s2["parents"][1]["conditions"][0]["observedGeneration"], 4);
    assert_eq!(
        s2["parents"][1]["conditions"][0]["lastTransitionTime"],
        "2025-06-01T12:00:00Z"
    );

    // The verdict flips: only the flipped condition gets a new time.
    let broken = route_with(
        json!({ "parentRefs": [parent("greeter"), { "name": "my-gateway" }],
                "rules": [{ "backendRefs": [{ "name": "greeter-v3", "port": 8000 }] }] }),
        s.clone(),
    );
    let s3 = status_json(&desired_status(&broken, &verdicts(&broken), later).expect("a write"));
    let conds = &s3["parents"][1]["conditions"];
    assert_eq!(conds[0]["status"], "False");
    assert_eq!(conds[0]["lastTransitionTime"], "2025-06-02T00:00:00Z");
    assert_eq!(conds[1]["reason"], "BackendNotFound");
    assert_eq!(s3["parents"][0], foreign_entry());
}

#[test]
fn entries_for_parents_no_longer_in_the_spec_are_removed() {
    let before = route_with(
        json!({ "parentRefs": [parent("greeter")], "rules": to_v1() }),
        Value::Null,
    );
    let s = status_json(&desired_status(&before, &verdicts(&before), Timestamp::now()).expect("a write"));
    let mut with_foreign = s.clone();
    with_foreign["parents"]
        .as_array_mut()
        .expect("parents")
        .insert(0, foreign_entry());
    // The route now attaches to a Gateway only: our entry goes, theirs stays.
    let after = route_with(
        json!({ "parentRefs": [{ "name": "my-gateway" }], "rules": to_v1() }),
        with_foreign,
    );
    let s = status_json(&desired_status(&after, &verdicts(&after), Timestamp::now()).expect("a write"));
    assert_eq!(s["parents"], json!([foreign_entry()]));
}
