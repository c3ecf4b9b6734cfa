//! Kubernetes objects as the API server serves them (JSON), for the tests
//! that feed a fake API server: one shape of each, with what a test varies
//! as arguments. Every gRPC port is named `grpc`.

use serde_json::{json, Value};

/// A Namespace.
pub fn namespace(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } })
}

/// A ClusterIP Service `ns/name` at `ip`, its port `grpc` `port` forwarded
/// to `target_port` on its endpoints.
pub fn service(ns: &str, name: &str, ip: &str, port: u16, target_port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "clusterIP": ip, "clusterIPs": [ip],
                  "ports": [{ "name": "grpc", "port": port, "targetPort": target_port, "protocol": "TCP" }] }
    })
}

/// An IPv4 EndpointSlice `ns/name` of Service `svc`, port `grpc` `port`,
/// with `endpoints` (see [`ready`]).
pub fn slice(ns: &str, name: &str, svc: &str, port: u16, endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": ns,
                      "labels": { "kubernetes.io/service-name": svc } },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "grpc", "port": port, "protocol": "TCP" }]
    })
}

/// A ready endpoint at `ip`.
pub fn ready(ip: &str) -> Value {
    json!({ "addresses": [ip], "conditions": { "ready": true } })
}

/// `obj` with the fields of `patch` merged in, recursively (a JSON merge
/// patch without deletes), e.g. a Service's `spec.trafficDistribution`.
pub fn merged(mut obj: Value, patch: Value) -> Value {
    merge(&mut obj, patch);
    obj
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(into.entry(k).or_insert(Value::Null), v);
            }
        }
        (into, patch) => *into = patch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_adds_and_replaces_nested_fields() {
        let svc = merged(
            service("demo", "greeter", "10.96.0.10", 8000, 50051),
            json!({ "metadata": { "annotations": { "a": "1" } }, "spec": { "clusterIP": "10.96.0.11" } }),
        );
        assert_eq!(svc["metadata"]["name"], "greeter");
        assert_eq!(svc["metadata"]["annotations"]["a"], "1");
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.11");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 50051);
    }
}
