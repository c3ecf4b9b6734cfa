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
//! A JSON merge patch of the `status` subresource, written only when it
//! differs from the Gateway's current status (condition times aside); a
//! failed write is tried again at the next change or after
//! [`RETRY`]. Best-effort: it never stops balancing.

use std::{net::IpAddr, sync::Arc, time::Duration};

use gateway_api::gateways::Gateway;
use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{
    api::{ListParams, Patch, PatchParams},
    Api, ResourceExt,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::gateway::{Cond, GatewayVerdict};

/// How soon a failed write is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// What the writer needs from one translation.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// balancer's Gateways as the watch has them (with their status).
    pub gateways: Vec<Arc<Gateway>>,
    pub verdicts: Vec<GatewayVerdict>,
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

/// Writes every Gateway whose status differs; whether all writes worked.
async fn write_all(client: &kube::Client, input: &Input) -> bool {
    let mut addresses: Option<Vec<String>> = None;
    let mut ok = true;
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
    ok
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
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": [ { "group": "gateway.networking.k8s.io", "kind": "GRPCRoute" } ],
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
