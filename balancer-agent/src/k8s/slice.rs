//! EndpointSlices as the agent keeps them: only the fields it reads.
//!
//! Every agent holds every EndpointSlice of the cluster. `k8s-openapi`'s
//! `EndpointSlice` spends about 340 bytes on each endpoint before any string
//! (the `targetRef` alone is seven optional strings); [`Slice`] is
//! deserialized from the same JSON but keeps an endpoint's first address,
//! its conditions, node, zone, zone hints and pod name — what
//! [`super::translate`] reads — in about 90 bytes plus the strings. Unknown fields are skipped while
//! parsing, never allocated.

use std::borrow::Cow;

use k8s_openapi::{api::discovery::v1::EndpointPort, NamespaceResourceScope};
use kube::{api::ObjectMeta, Resource};
use serde::{Deserialize, Deserializer};

/// An EndpointSlice (`discovery.k8s.io/v1`), lean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slice {
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ports: Vec<EndpointPort>,
}

/// One endpoint of a slice, lean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// The first of `addresses` (the API: they are fungible; consumers may
    /// use the first).
    #[serde(rename = "addresses", default, deserialize_with = "first_address")]
    pub address: Option<Box<str>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub conditions: Conditions,
    #[serde(default)]
    pub node_name: Option<Box<str>>,
    #[serde(default)]
    pub zone: Option<Box<str>>,
    /// `hints.forZones[].name`: the zones this endpoint should serve
    /// (topology aware routing); `None` without hints.
    #[serde(rename = "hints", default, deserialize_with = "zone_hints")]
    pub for_zones: Option<Zones>,
    /// `targetRef.name` when it is a Pod: whose labels DestinationRule
    /// subsets select by.
    #[serde(rename = "targetRef", default, deserialize_with = "target_pod")]
    pub target_pod: Option<Box<str>>,
}

/// Zone names.
pub type Zones = Box<[Box<str>]>;

/// `hints` as the API sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hints {
    #[serde(default)]
    for_zones: Option<Vec<ForZone>>,
}

#[derive(Deserialize)]
struct ForZone {
    name: String,
}

fn zone_hints<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Zones>, D::Error> {
    let hints: Option<Hints> = Option::deserialize(d)?;
    Ok(hints
        .and_then(|h| h.for_zones)
        .map(|zones| zones.into_iter().map(|z| z.name.into_boxed_str()).collect()))
}

/// `conditions` of an endpoint; absent fields are the API's defaults (see
/// [`super::translate`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Deserialize)]
struct TargetRef {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn target_pod<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    let target: Option<TargetRef> = Option::deserialize(d)?;
    Ok(target
        .filter(|t| t.kind.as_deref() == Some("Pod"))
        .and_then(|t| t.name)
        .map(String::into_boxed_str))
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn first_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    let all: Option<Vec<String>> = Option::deserialize(d)?;
    Ok(all.and_then(|a| a.into_iter().next()).map(String::into_boxed_str))
}

impl Resource for Slice {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("EndpointSlice")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("discovery.k8s.io")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("endpointslices")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_what_the_api_server_sends_and_keeps_what_is_read() {
        let v = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "greeter-abc", "namespace": "demo",
                          "labels": { "kubernetes.io/service-name": "greeter" } },
            "addressType": "IPv4",
            "endpoints": [
                { "addresses": ["10.1.0.1", "10.1.0.9"],
                  "conditions": { "ready": false, "serving": true, "terminating": true },
                  "nodeName": "node-a", "zone": "zone-1", "hostname": "greeter-0",
                  "targetRef": { "kind": "Pod", "name": "greeter-0", "namespace": "demo", "uid": "p1" },
                  "hints": { "forZones": [{ "name": "zone-1" }] } },
                { "addresses": ["10.1.0.2"], "conditions": null }
            ],
            "ports": [{ "name": "grpc", "port": 50051, "protocol": "TCP" }]
        });
        // The full type accepts it too: the same JSON.
        let full: EndpointSlice = serde_json::from_value(v.clone()).unwrap();
        let lean: Slice = serde_json::from_value(v).unwrap();
        assert_eq!(lean.metadata, full.metadata);
        assert_eq!(lean.address_type, "IPv4");
        assert_eq!(lean.ports, full.ports.unwrap());
        let e = &lean.endpoints[0];
        assert_eq!(e.address.as_deref(), Some("10.1.0.1"));
        assert_eq!(
            e.conditions,
            Conditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true)
            }
        );
        assert_eq!(
            (e.node_name.as_deref(), e.zone.as_deref()),
            (Some("node-a"), Some("zone-1"))
        );
        let hint: Vec<&str> = e.for_zones.iter().flatten().map(|z| &**z).collect();
        assert_eq!(hint, ["zone-1"]);
        assert_eq!(e.target_pod.as_deref(), Some("greeter-0"));
        assert_eq!(lean.endpoints[1].conditions, Conditions::default());
        assert_eq!(lean.endpoints[1].for_zones, None);
        // An empty slice may come with `endpoints: null`.
        let empty: Slice = serde_json::from_value(json!({
            "metadata": { "name": "e" }, "addressType": "IPv4", "endpoints": null
        }))
        .unwrap();
        assert!(empty.endpoints.is_empty() && empty.ports.is_empty());
        assert!(
            std::mem::size_of::<SliceEndpoint>() <= 88,
            "{}",
            std::mem::size_of::<SliceEndpoint>()
        );
    }
}
