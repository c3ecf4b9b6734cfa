//! Locality in Kubernetes mode against a faked API server: the agent's zone
//! from its Node's `topology.kubernetes.io/zone` label (followed when it
//! changes), a Service's `trafficDistribution`, topology-mode annotation and
//! `internalTrafficPolicy`, EndpointSlice zones and hints — and what the
//! balance table makes of them.

mod k8s_fake;

use std::time::Duration;

use balancer_agent::{
    balance::{CallMeta, Table},
    model::{InternalTrafficPolicy, Model, TrafficDistribution},
};
use balancer_testing::k8s as k8s_objects;
use k8s_fake::{run::K8sRun, FakeApi};
use serde_json::{json, Value};

const NODE: &str = "node-a";

fn node(zone: Option<&str>) -> Value {
    let labels = match zone {
        Some(z) => json!({ "kubernetes.io/hostname": NODE, "topology.kubernetes.io/zone": z }),
        None => json!({ "kubernetes.io/hostname": NODE }),
    };
    json!({ "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": NODE, "labels": labels },
            "spec": { "podCIDR": "10.1.0.0/24" } })
}

fn other_node() -> Value {
    json!({ "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "node-z", "labels": { "topology.kubernetes.io/zone": "zone-9" } } })
}

fn service(name: &str, ip: &str, spec: Value, annotations: Value) -> Value {
    k8s_objects::merged(
        k8s_objects::service("demo", name, ip, 8000, 50051),
        json!({ "metadata": { "annotations": annotations }, "spec": spec }),
    )
}

/// `eps`: (ip, node, zone, hinted zones).
fn slice(svc: &str, eps: &[(&str, &str, &str, Option<&[&str]>)]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node, zone, hints)| {
            let mut e = json!({ "addresses": [ip], "conditions": { "ready": true },
                                "nodeName": node, "zone": zone });
            if let Some(h) = hints {
                let zones: Vec<Value> = h.iter().map(|z| json!({ "name": z })).collect();
                e["hints"] = json!({ "forZones": zones });
            }
            e
        })
        .collect();
    k8s_objects::slice("demo", &format!("{svc}-abcde"), svc, 50051, endpoints)
}

/// Three endpoints: on this node (zone-1), another node of zone-1, zone-2.
const EPS: [(&str, &str, &str, Option<&[&str]>); 3] = [
    ("10.1.0.1", NODE, "zone-1", None),
    ("10.1.0.2", "node-b", "zone-1", None),
    ("10.1.0.3", "node-c", "zone-2", None),
];

fn seed(fake: &FakeApi) {
    fake.apply(k8s_objects::namespace("demo"));
    fake.apply(node(Some("zone-1")));
    fake.apply(other_node());
    fake.apply(service(
        "near",
        "10.96.0.10",
        json!({ "trafficDistribution": "PreferClose" }),
        json!({}),
    ));
    fake.apply(slice("near", &EPS));
    fake.apply(service("plain", "10.96.0.11", json!({}), json!({})));
    fake.apply(slice("plain", &EPS));
    fake.apply(service(
        "local",
        "10.96.0.12",
        json!({ "internalTrafficPolicy": "Local" }),
        json!({}),
    ));
    fake.apply(slice("local", &EPS));
    fake.apply(service(
        "auto",
        "10.96.0.13",
        json!({}),
        json!({ "service.kubernetes.io/topology-mode": "Auto" }),
    ));
    // The slice controller's hints send zone-1's calls to 10.1.0.3 only.
    fake.apply(slice(
        "auto",
        &[
            ("10.1.0.2", "node-b", "zone-1", Some(&["zone-2"])),
            ("10.1.0.3", "node-c", "zone-2", Some(&["zone-1"])),
        ],
    ));
}

/// The agent's Kubernetes mode on this test's node.
struct Agent;

impl Agent {
    fn start(fake: &FakeApi) -> K8sRun {
        K8sRun::start(fake, NODE, |_| {}, |_| {})
    }
}

const SHORT: Duration = Duration::from_secs(5);

/// Which endpoints (last octet) 300 calls of `svc` go to, through a balance
/// table built from `m`.
fn picks(m: &Model, svc: &str) -> Vec<(u8, usize)> {
    let table = Table::new(m);
    let state = table.service(svc).and_then(|s| s.state()).expect("service");
    let headers = http::HeaderMap::new();
    let meta = CallMeta::from_path("/helloworld.Greeter/SayHello", &headers);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..300 {
        if let Some(ep) = state.pick(&meta, &[]) {
            let std::net::IpAddr::V4(ip) = ep.address.ip() else {
                continue;
            };
            *counts.entry(ip.octets()[3]).or_insert(0) += 1;
        }
    }
    counts.into_iter().collect()
}

#[tokio::test]
async fn the_nodes_zone_and_the_services_policies_shape_where_calls_go() {
    let fake = FakeApi::default();
    seed(&fake);
    let mut agent = Agent::start(&fake);
    let m = agent.until_ready().await;
    assert_eq!(m.locality.node.as_deref(), Some(NODE));
    assert_eq!(m.locality.zone.as_deref(), Some("zone-1"));
    let svc = |n: &str| m.service(&format!("demo/{n}")).expect("service").clone();
    assert_eq!(svc("near").traffic_distribution, TrafficDistribution::PreferClose);
    assert_eq!(svc("auto").traffic_distribution, TrafficDistribution::PreferClose);
    assert_eq!(svc("plain").traffic_distribution, TrafficDistribution::Any);
    assert_eq!(svc("local").internal_traffic_policy, InternalTrafficPolicy::Local);
    assert_eq!(svc("near").endpoints[0].zone.as_deref(), Some("zone-1"));
    // Only this one Node is watched.
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /api/v1/nodes?") && r.contains("metadata.name%3Dnode-a")),
        "{reqs:#?}"
    );

    // PreferClose: the endpoint on this node takes every call.
    assert_eq!(picks(&m, "demo/near"), [(1, 300)]);
    // No preference: all three alike.
    assert_eq!(picks(&m, "demo/plain"), [(1, 100), (2, 100), (3, 100)]);
    // Local: this node's endpoint only.
    assert_eq!(picks(&m, "demo/local"), [(1, 300)]);
    // Hints: zone-1's calls go where the hints say.
    assert_eq!(picks(&m, "demo/auto"), [(3, 300)]);

    // The endpoint on this node goes: PreferClose keeps to the zone, Local
    // has nothing left.
    let rest = [EPS[1], EPS[2]];
    fake.apply(slice("near", &rest));
    fake.apply(slice("local", &rest));
    let m = agent
        .until("this node's endpoints are gone", SHORT, |m| {
            m.service("demo/local").is_some_and(|s| s.endpoints.len() == 2)
                && m.service("demo/near").is_some_and(|s| s.endpoints.len() == 2)
        })
        .await;
    assert_eq!(picks(&m, "demo/near"), [(2, 300)]);
    assert_eq!(picks(&m, "demo/local"), []);
    let table = Table::new(&m);
    let state = table.service("demo/local").and_then(|s| s.state()).expect("local");
    assert_eq!(
        state.no_endpoint_reason(),
        Some("service `demo/local` has internalTrafficPolicy Local and no endpoint on this node `node-a`")
    );

    // The Node moves to zone-2 (a relabel): the zone tier follows.
    fake.apply(node(Some("zone-2")));
    let m = agent
        .until("the zone is zone-2", SHORT, |m| {
            m.locality.zone.as_deref() == Some("zone-2")
        })
        .await;
    assert_eq!(picks(&m, "demo/near"), [(3, 300)]);
    // Without the label, no zone: nothing is close, all alike.
    fake.apply(node(None));
    let m = agent.until("no zone", SHORT, |m| m.locality.zone.is_none()).await;
    assert_eq!(picks(&m, "demo/near"), [(2, 150), (3, 150)]);
}

#[tokio::test]
async fn without_permission_to_read_nodes_the_agent_still_balances() {
    let fake = FakeApi::default();
    seed(&fake);
    fake.forbid("nodes");
    let mut agent = Agent::start(&fake);
    let m = agent.until_ready().await;
    assert_eq!(m.locality.node.as_deref(), Some(NODE));
    assert_eq!(m.locality.zone, None);
    assert_eq!(m.services.len(), 4);
    // This node is still known: its endpoint comes first.
    assert_eq!(picks(&m, "demo/near"), [(1, 300)]);
    assert!(!agent.task.is_finished());
}
