//! What the watchers keep of each object: only the fields the agent reads.
//!
//! Every agent holds every Service and EndpointSlice of the cluster; most of
//! an object's size is fields the agent never reads (managed fields, owner
//! references, annotations of other tools, an endpoint's `targetRef` but
//! its pod's name, and its hostname). They are dropped as each object
//! arrives, before it enters a reflector store.

use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::ObjectMeta;

use super::{
    annotations, slice::Slice, translate::SERVICE_NAME_LABEL, TOPOLOGY_HINTS_ANNOTATION, TOPOLOGY_MODE_ANNOTATION,
};

/// Drops what no reader of any kind uses.
pub(super) fn common(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

/// Drops what is not read of the objects every agent holds by the
/// thousand: all but their name, namespace, labels and annotations (the
/// watcher keeps its own resource version).
fn held_by_the_thousand(meta: &mut ObjectMeta) {
    common(meta);
    meta.uid = None;
    meta.resource_version = None;
    meta.generate_name = None;
    meta.generation = None;
    meta.creation_timestamp = None;
}

/// Keeps only the annotations or labels `keys` of `map`.
fn keep_only(map: &mut Option<std::collections::BTreeMap<String, String>>, keys: &[&str]) {
    if let Some(m) = map {
        m.retain(|k, _| keys.contains(&k.as_str()));
        if m.is_empty() {
            *map = None;
        }
    }
}

/// The Service annotations the agent reads: its own (policy, hash header,
/// faults) and those of topology aware routing.
const SERVICE_ANNOTATIONS: [&str; annotations::ALL.len() + 2] = {
    let mut keys = [TOPOLOGY_MODE_ANNOTATION; annotations::ALL.len() + 2];
    let mut i = 0;
    while i < annotations::ALL.len() {
        keys[i] = annotations::ALL[i];
        i += 1;
    }
    keys[i] = TOPOLOGY_HINTS_ANNOTATION;
    keys
};

/// A Service: its name, ports, cluster IPs, type, traffic policies and
/// the annotations the agent reads.
pub fn service(svc: &mut Service) {
    held_by_the_thousand(&mut svc.metadata);
    keep_only(&mut svc.metadata.annotations, &SERVICE_ANNOTATIONS);
    svc.metadata.labels = None;
    svc.status = None;
    if let Some(spec) = &mut svc.spec {
        spec.selector = None;
        spec.external_ips = None;
        spec.load_balancer_source_ranges = None;
        spec.session_affinity_config = None;
    }
}

/// An EndpointSlice (already lean, see [`Slice`]): its metadata keeps only
/// the Service label.
pub fn endpoint_slice(slice: &mut Slice) {
    held_by_the_thousand(&mut slice.metadata);
    slice.metadata.annotations = None;
    keep_only(&mut slice.metadata.labels, &[SERVICE_NAME_LABEL]);
}

/// A pod on this node: everything the enrollment and mesh checks read
/// stays (they are few); only the managed fields go.
pub fn pod(pod: &mut Pod) {
    common(&mut pod.metadata);
}

/// A namespace: its labels and annotations (opt-in) stay.
pub fn namespace(ns: &mut Namespace) {
    common(&mut ns.metadata);
}

/// This node: only its name and zone label.
pub fn node(node: &mut k8s_openapi::api::core::v1::Node) {
    held_by_the_thousand(&mut node.metadata);
    node.metadata.annotations = None;
    keep_only(&mut node.metadata.labels, &[super::ZONE_LABEL]);
    node.spec = None;
    node.status = None;
}

/// A GRPCRoute: read whole (its status too; they are few), only the managed
/// fields go.
pub fn grpc_route(route: &mut GrpcRoute) {
    route.metadata.managed_fields = None;
}

/// Gateways: their spec and status are read (status to compare with what
/// the elected agent writes).
pub fn gateway(gw: &mut gateway_api::gateways::Gateway) {
    gw.metadata.managed_fields = None;
}

/// GatewayClasses: their controllerName, and their status (to compare
/// with what the elected agent writes).
pub fn gateway_class(class: &mut gateway_api::gatewayclasses::GatewayClass) {
    class.metadata.managed_fields = None;
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::k8s::translate::{translate, Snapshot};

    fn rich() -> (Service, Slice) {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {
                "name": "greeter", "namespace": "demo", "uid": "u1",
                "labels": { "app": "greeter" },
                "annotations": {
                    "balancer.io/policy": "least-request",
                    "balancer.io/fault-abort": "UNAVAILABLE",
                    "balancer.io/fault-abort-percent": "5",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                    "service.kubernetes.io/topology-mode": "Auto"
                },
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
                "ownerReferences": [{ "apiVersion": "v1", "kind": "X", "name": "x", "uid": "u" }]
            },
            "spec": {
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
                "selector": { "app": "greeter" }, "internalTrafficPolicy": "Local",
                "ports": [{ "name": "grpc", "port": 8000, "targetPort": 50051 }]
            },
            "status": { "loadBalancer": {} }
        }))
        .unwrap();
        let slice: Slice = serde_json::from_value(json!({
            "metadata": {
                "name": "greeter-abc", "namespace": "demo",
                "labels": { "kubernetes.io/service-name": "greeter", "endpointslice.kubernetes.io/managed-by": "x" },
                "annotations": { "endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z" }
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["10.1.0.1"],
                "conditions": { "ready": true, "serving": true, "terminating": false },
                "nodeName": "node-a", "zone": "zone-1", "hostname": "greeter-0",
                "targetRef": { "kind": "Pod", "name": "greeter-0", "namespace": "demo", "uid": "p1" },
                "hints": { "forZones": [{ "name": "zone-1" }] }
            }],
            "ports": [{ "name": "grpc", "port": 50051, "protocol": "TCP" }]
        }))
        .unwrap();
        (svc, slice)
    }

    #[test]
    fn stripped_objects_translate_as_the_originals_and_are_smaller() {
        let (svc, slice) = rich();
        let (mut s2, mut e2) = (svc.clone(), slice.clone());
        service(&mut s2);
        endpoint_slice(&mut e2);
        let snap = |s: &Service, e: &Slice| Snapshot {
            services: vec![Arc::new(s.clone())],
            endpoint_slices: vec![Arc::new(e.clone())],
            ..Snapshot::default()
        };
        let before = translate(&snap(&svc, &slice), |_| Vec::new()).model;
        let after = translate(&snap(&s2, &e2), |_| Vec::new()).model;
        assert_eq!(before, after);
        assert_eq!(after.services[0].policy, crate::model::Policy::LeastRequest);
        let abort = after.services[0].fault.as_ref().and_then(|f| f.abort.as_ref());
        assert_eq!(
            abort.map(|a| (a.code, a.share.percent())),
            Some((14, 5.0)),
            "fault annotations kept"
        );
        assert_eq!(after.services[0].endpoints[0].zone.as_deref(), Some("zone-1"));
        assert_eq!(
            after.services[0].endpoints[0].for_zones.as_deref().map(<[_]>::len),
            Some(1)
        );
        assert_eq!(
            after.services[0].traffic_distribution,
            crate::model::TrafficDistribution::PreferClose
        );
        assert_eq!(
            after.services[0].internal_traffic_policy,
            crate::model::InternalTrafficPolicy::Local
        );
        let size = |v: serde_json::Value| v.to_string().len();
        let (svc, s2j) = (serde_json::to_value(&svc).unwrap(), serde_json::to_value(&s2).unwrap());
        assert!(size(s2j) < size(svc));
        assert!(s2.metadata.managed_fields.is_none() && s2.metadata.labels.is_none());
        let labels = e2.metadata.labels.unwrap();
        assert_eq!(labels.keys().collect::<Vec<_>>(), [SERVICE_NAME_LABEL]);
        assert!(e2.metadata.annotations.is_none());
    }
}
