//! The status of balancer's Gateways, written by the elected agent (the
//! one holding the route-status Lease, [`super::lease`]):
//!
//! - `status.addresses`: the nodes' InternalIP addresses (every agent
//!   serves the Gateway on its node), else the writer's own node address;
//! - `status.conditions`: `Accepted` (True), `Programmed` (True when at
//!   least one listener is served);
//! - `status.listeners[]`: per listener `Accepted`, `ResolvedRefs` and
//!   `Programmed` with the Gateway API reasons, the number of GRPCRoutes
//!   attached, and the route kind served (`GRPCRoute`).
//!
//! In each of balancer's GatewayClasses (its controllerName), the
//! `Accepted` condition (True): the class is served.
//!
//! And in each GRPCRoute attached to such a Gateway, one
//! `status.parents[]` entry per parentRef naming it, under
//! [`GATEWAY_CONTROLLER`]: `Accepted` (True when at least one of its rules
//! is served; False, `NoMatchingParent` when no listener has the
//! `sectionName` or `port` it names, `NotAllowedByListeners` when none of
//! those takes routes of its namespace, or `UnsupportedValue`, with why) and
//! `ResolvedRefs` (False, `BackendNotFound`, when a rule was left out for
//! a backend). Other controllers' entries are kept as read, and the write
//! carries the route's resourceVersion (a concurrent change makes it fail,
//! and it is computed again).
//!
//! JSON merge patches of the `status` subresources, written only when they
//! differ from the current status (condition times aside); a failed write
//! is tried again at the next change or after [`RETRY`]. Best-effort: it
//! never stops balancing.

use std::{net::IpAddr, sync::Arc, time::Duration};

use gateway_api::{gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute};
use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{
    api::{ListParams, Patch, PatchParams},
    Api, ResourceExt,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::gateway::{Cond, GatewayVerdict, Key, Unattached, GATEWAY_CONTROLLER};

/// How soon a failed write is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// What the writer needs from one translation.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// balancer's GatewayClasses as the watch has them (with their status).
    pub classes: Vec<Arc<GatewayClass>>,
    /// balancer's Gateways as the watch has them (with their status).
    pub gateways: Vec<Arc<Gateway>>,
    pub verdicts: Vec<GatewayVerdict>,
    /// The GRPCRoutes naming one of them.
    pub routes: Vec<Arc<GrpcRoute>>,
    /// Rules of those routes left out (`namespace/route#rule`), and why.
    pub skipped: Vec<(String, String)>,
    /// Routes naming one of the Gateways that attach to none of its
    /// listeners.
    pub unattached: Vec<Unattached>,
    /// The writer's node address (when Nodes cannot be listed).
    pub node_ip: IpAddr,
}

/// Writes while `leading` is true, from the newest input.
pub async fn run(
    client: kube::Client,
    mut leading: watch::Receiver<bool>,
    mut inputs: watch::Receiver<Option<Arc<Input>>>,
) {
    let mut failed = false;
    loop {
        if *leading.borrow_and_update() {
            let input = inputs.borrow_and_update().clone();
            if let Some(input) = input {
                failed = !write_all(&client, &input).await;
            }
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return },
            r = inputs.changed() => if r.is_err() { return },
            () = tokio::time::sleep(RETRY), if failed => {}
        }
    }
}

/// Writes every GatewayClass and Gateway whose status differs; whether
/// all writes worked.
async fn write_all(client: &kube::Client, input: &Input) -> bool {
    let mut addresses: Option<Vec<String>> = None;
    let mut ok = true;
    for class in &input.classes {
        let current = serde_json::to_value(&class.status).unwrap_or(Value::Null);
        let Some(desired) = class_status(class, &current, Timestamp::now()) else {
            continue;
        };
        let api: Api<GatewayClass> = Api::all(client.clone());
        let patch = json!({ "status": desired });
        match api
            .patch_status(&class.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(class = %class.name_any(), "GatewayClass status written"),
            Err(e) => {
                ok = false;
                warn!(class = %class.name_any(), error = %e, "GatewayClass status not written; retrying later");
            }
        }
    }
    for v in &input.verdicts {
        let Some(gw) = input
            .gateways
            .iter()
            .find(|g| g.namespace().as_deref() == Some(v.key.0.as_str()) && g.name_any() == v.key.1)
        else {
            continue;
        };
        if addresses.is_none() {
            addresses = Some(node_addresses(client, input.node_ip).await);
        }
        let current = serde_json::to_value(&gw.status).unwrap_or(Value::Null);
        let desired = desired_status(v, addresses.as_deref().unwrap_or_default(), &current, Timestamp::now());
        if strip_times(&current) == strip_times(&desired) {
            continue;
        }
        let api: Api<Gateway> = Api::namespaced(client.clone(), &v.key.0);
        let patch = json!({ "status": desired });
        match api
            .patch_status(&v.key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(gateway = %format!("{}/{}", v.key.0, v.key.1), "Gateway status written"),
            Err(e) => {
                ok = false;
                warn!(gateway = %format!("{}/{}", v.key.0, v.key.1), error = %e, "Gateway status not written; retrying later");
            }
        }
    }
    let ours: Vec<(String, String)> = input.verdicts.iter().map(|v| v.key.clone()).collect();
    for route in &input.routes {
        let Some(parents) = route_parents(route, &ours, &input.skipped, &input.unattached, Timestamp::now()) else {
            continue;
        };
        let ns = route.namespace().unwrap_or_default();
        let api: Api<GrpcRoute> = Api::namespaced(client.clone(), &ns);
        let patch = json!({
            "metadata": { "resourceVersion": route.resource_version() },
            "status": { "parents": parents },
        });
        match api
            .patch_status(&route.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(route = %format!("{ns}/{}", route.name_any()), "GRPCRoute status written for its Gateway"),
            Err(e) => {
                ok = false;
                debug!(route = %format!("{ns}/{}", route.name_any()), error = %e, "GRPCRoute status not written; retrying later");
            }
        }
    }
    ok
}

/// The `status.parents` `route` should have: other controllers' entries as
/// they are, balancer's gateway entries for the parentRefs naming one of
/// `ours`; `None` when it has them already (times aside). `unattached`:
/// the (route, Gateway) pairs where no listener takes the route.
pub fn route_parents(
    route: &GrpcRoute,
    ours: &[Key],
    skipped: &[(String, String)],
    unattached: &[Unattached],
    now: Timestamp,
) -> Option<Vec<Value>> {
    let ns = route.namespace().unwrap_or_default();
    let route_key = format!("{ns}/{}", route.name_any());
    let name = format!("{route_key}#");
    let current = list(&serde_json::to_value(&route.status).unwrap_or(Value::Null)["parents"]);
    let rules = route.spec.rules.as_ref().map_or(0, Vec::len);
    let mine: Vec<&(String, String)> = skipped.iter().filter(|(r, _)| r.starts_with(&name)).collect();
    let accepted = if mine.len() < rules {
        Cond {
            ok: true,
            reason: "Accepted",
            message: String::new(),
        }
    } else {
        Cond {
            ok: false,
            reason: "UnsupportedValue",
            message: mine
                .first()
                .map_or_else(|| "no rules".to_owned(), |(r, why)| format!("{r}: {why}")),
        }
    };
    let unresolved = mine
        .iter()
        .find(|(_, why)| why.contains("backend") || why.contains("Service"));
    let resolved = match unresolved {
        None => Cond {
            ok: true,
            reason: "ResolvedRefs",
            message: String::new(),
        },
        Some((r, why)) => Cond {
            ok: false,
            reason: "BackendNotFound",
            message: format!("{r}: {why}"),
        },
    };
    let mut parents: Vec<Value> = current
        .iter()
        .filter(|p| p["controllerName"] != GATEWAY_CONTROLLER)
        .cloned()
        .collect();
    for p in route.spec.parent_refs.iter().flatten() {
        let gw = (p.namespace.clone().unwrap_or_else(|| ns.clone()), p.name.clone());
        let is_gateway = matches!(p.group.as_deref(), None | Some("gateway.networking.k8s.io"))
            && matches!(p.kind.as_deref(), None | Some("Gateway"));
        if !is_gateway || !ours.contains(&gw) {
            continue;
        }
        let accepted = unattached
            .iter()
            .find(|u| u.route == route_key && u.gateway == gw)
            .map_or_else(|| accepted.clone(), |u| u.why.clone());
        // With the defaults the API server fills in, so that what is
        // stored compares equal to what is written.
        let mut parent_ref = serde_json::to_value(p).unwrap_or(Value::Null);
        parent_ref["group"] = json!("gateway.networking.k8s.io");
        parent_ref["kind"] = json!("Gateway");
        let old = current
            .iter()
            .find(|c| c["controllerName"] == GATEWAY_CONTROLLER && c["parentRef"] == parent_ref)
            .map(|c| list(&c["conditions"]))
            .unwrap_or_default();
        let g = route.metadata.generation;
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": GATEWAY_CONTROLLER,
            "conditions": [
                condition("Accepted", &accepted, g, &old, now),
                condition("ResolvedRefs", &resolved, g, &old, now),
            ],
        }));
    }
    (strip_times(&Value::Array(parents.clone())) != strip_times(&Value::Array(current))).then_some(parents)
}

/// The nodes' InternalIP addresses, sorted; `fallback` alone if none can
/// be read.
async fn node_addresses(client: &kube::Client, fallback: IpAddr) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut out: Vec<String> = match nodes.list(&ListParams::default().match_any()).await {
        Ok(list) => list
            .items
            .iter()
            .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
            .collect(),
        Err(e) => {
            debug!(error = %e, "Nodes not listed: the Gateway's address is this node's");
            Vec::new()
        }
    };
    if out.is_empty() && !fallback.is_unspecified() {
        out.push(fallback.to_string());
    }
    out.sort();
    out.dedup();
    out
}

fn condition(kind: &str, c: &Cond, generation: Option<i64>, current: &[Value], now: Timestamp) -> Value {
    let status = if c.ok { "True" } else { "False" };
    // Whole seconds: what the API server keeps of a timestamp.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    // The transition time stays while the condition's status does.
    let since = current
        .iter()
        .find(|x| x["type"] == kind && x["status"] == status)
        .and_then(|x| x["lastTransitionTime"].as_str().map(str::to_owned))
        .unwrap_or_else(|| now.to_string());
    json!({
        "type": kind,
        "status": status,
        "reason": c.reason,
        "message": c.message,
        "observedGeneration": generation.unwrap_or(0),
        "lastTransitionTime": since,
    })
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// `Programmed`: True, or False (`Invalid`) saying `why_not`.
fn programmed_cond(ok: bool, why_not: &str) -> Cond {
    Cond {
        ok,
        reason: if ok { "Programmed" } else { "Invalid" },
        message: if ok { String::new() } else { why_not.to_owned() },
    }
}

/// The status balancer gives one of its GatewayClasses, `current` being
/// its status now: `Accepted`, True, in place of the API server's default
/// (`Unknown`, "Waiting for controller"); `None` when it has it already
/// (times aside). Other fields of the status are kept.
pub fn class_status(class: &GatewayClass, current: &Value, now: Timestamp) -> Option<Value> {
    let accepted = Cond {
        ok: true,
        reason: "Accepted",
        message: "served by the balancer agent on every node".to_owned(),
    };
    let conditions = list(&current["conditions"]);
    let desired = json!([condition(
        "Accepted",
        &accepted,
        class.metadata.generation,
        &conditions,
        now
    )]);
    (strip_times(&desired) != strip_times(&Value::Array(conditions))).then(|| json!({ "conditions": desired }))
}

/// The status balancer gives a Gateway; `current` is its status now.
pub fn desired_status(v: &GatewayVerdict, addresses: &[String], current: &Value, now: Timestamp) -> Value {
    let g = v.generation;
    let programmed = v.listeners.iter().any(|l| l.programmed());
    let gw_conditions = list(&current["conditions"]);
    let listeners: Vec<Value> = v
        .listeners
        .iter()
        .map(|l| {
            let cur = list(&current["listeners"])
                .into_iter()
                .find(|x| x["name"] == l.name.as_str())
                .map(|x| list(&x["conditions"]))
                .unwrap_or_default();
            let prog = programmed_cond(l.programmed(), "not served");
            // None of the kinds the listener asks for is served.
            let kinds = if l.resolved_refs.reason == "InvalidRouteKinds" {
                json!([])
            } else {
                json!([ { "group": "gateway.networking.k8s.io", "kind": "GRPCRoute" } ])
            };
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": kinds,
                "conditions": [
                    condition("Accepted", &l.accepted, g, &cur, now),
                    condition("ResolvedRefs", &l.resolved_refs, g, &cur, now),
                    condition("Programmed", &prog, g, &cur, now),
                ],
            })
        })
        .collect();
    let accepted = Cond {
        ok: true,
        reason: "Accepted",
        message: String::new(),
    };
    let prog = programmed_cond(programmed, "no listener is served");
    json!({
        "addresses": addresses.iter().map(|a| json!({ "type": "IPAddress", "value": a })).collect::<Vec<_>>(),
        "conditions": [
            condition("Accepted", &accepted, g, &gw_conditions, now),
            condition("Programmed", &prog, g, &gw_conditions, now),
        ],
        "listeners": listeners,
    })
}

/// `v` without `lastTransitionTime`s, and without the empty lists and
/// fields the API server drops, for comparing statuses.
fn strip_times(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| *k != "lastTransitionTime" && !v.is_null())
                .map(|(k, v)| (k.clone(), strip_times(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_times).collect()),
        other => other.clone(),
    }
}
