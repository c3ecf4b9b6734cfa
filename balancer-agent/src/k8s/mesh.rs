//! Pods that a service mesh already captures, which are never enrolled.
//!
//! A sidecar (Istio's Envoy, Linkerd's proxy) or Istio ambient's in-pod
//! redirection captures the pod's outgoing connections with iptables in
//! the pod's network namespace. The connection that `connect4` redirects to
//! the agent would be captured too, and the proxy would dial the agent from
//! a socket of its own, one with no original destination: the agent refuses
//! it and the call fails. So such pods stay out, whatever they opted into.

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// Annotation Istio's injector puts on pods that got a sidecar.
pub const ISTIO_SIDECAR_ANNOTATION: &str = "sidecar.istio.io/status";
/// Annotation (and label) Linkerd's injector puts on meshed pods.
pub const LINKERD_PROXY_VERSION: &str = "linkerd.io/proxy-version";
/// Annotation istio-cni sets to `enabled` on pods it redirects to ztunnel.
pub const ISTIO_AMBIENT_ANNOTATION: &str = "ambient.istio.io/redirection";

/// The mesh that captures a pod's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mesh {
    /// Istio with an Envoy sidecar in the pod.
    IstioSidecar,
    /// Istio ambient: ztunnel, through redirection set up in the pod.
    IstioAmbient,
    /// Linkerd's proxy sidecar.
    Linkerd,
}

impl Mesh {
    /// The mesh `pod` is in, judged by what each mesh's injector or CNI
    /// agent writes on the pod.
    pub fn of(pod: &Pod) -> Option<Mesh> {
        let annotations = pod.annotations();
        if annotations.contains_key(ISTIO_SIDECAR_ANNOTATION) {
            Some(Mesh::IstioSidecar)
        } else if annotations.contains_key(LINKERD_PROXY_VERSION) || pod.labels().contains_key(LINKERD_PROXY_VERSION) {
            Some(Mesh::Linkerd)
        } else if annotations.get(ISTIO_AMBIENT_ANNOTATION).map(String::as_str) == Some("enabled") {
            Some(Mesh::IstioAmbient)
        } else {
            None
        }
    }

    /// What marks the pod as meshed, as the user would look for it.
    pub fn marker(self) -> &'static str {
        match self {
            Mesh::IstioSidecar => "annotation sidecar.istio.io/status",
            Mesh::IstioAmbient => "annotation ambient.istio.io/redirection=enabled",
            Mesh::Linkerd => "linkerd.io/proxy-version",
        }
    }

    /// Why the pod is not enrolled, for the Event on it.
    pub fn explain(self) -> String {
        let proxy = match self {
            Mesh::IstioSidecar => "its Istio sidecar (Envoy)",
            Mesh::IstioAmbient => "Istio ambient's ztunnel, through the pod's redirection rules,",
            Mesh::Linkerd => "its Linkerd proxy",
        };
        format!(
            "not enrolled: the pod is in the {self} mesh ({}); {proxy} would capture the connection \
             balancer redirects to the node agent and re-dial it without its original destination, \
             which the agent refuses. The mesh balances this pod's gRPC calls instead.",
            self.marker()
        )
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mesh::IstioSidecar => "Istio (sidecar)",
            Mesh::IstioAmbient => "Istio (ambient)",
            Mesh::Linkerd => "Linkerd",
        })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    fn pod(meta: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta
        }))
        .unwrap()
    }

    #[test]
    fn each_mesh_is_recognised_by_its_marker() {
        let p = pod(serde_json::json!({ "name": "a", "annotations": { "sidecar.istio.io/status": "{}" } }));
        assert_eq!(Mesh::of(&p), Some(Mesh::IstioSidecar));
        let p = pod(serde_json::json!({ "name": "a", "annotations": { "linkerd.io/proxy-version": "edge" } }));
        assert_eq!(Mesh::of(&p), Some(Mesh::Linkerd));
        let p = pod(serde_json::json!({ "name": "a", "labels": { "linkerd.io/proxy-version": "stable" } }));
        assert_eq!(Mesh::of(&p), Some(Mesh::Linkerd));
        let p = pod(serde_json::json!({ "name": "a", "annotations": { "ambient.istio.io/redirection": "enabled" } }));
        assert_eq!(Mesh::of(&p), Some(Mesh::IstioAmbient));
        // Ambient redirection that is off or pending does not count.
        let p = pod(serde_json::json!({ "name": "a", "annotations": { "ambient.istio.io/redirection": "disabled" } }));
        assert_eq!(Mesh::of(&p), None);
        let p = pod(serde_json::json!({ "name": "a", "annotations": { "balancer.io/inject": "enabled" } }));
        assert_eq!(Mesh::of(&p), None);
    }

    #[test]
    fn the_explanation_names_the_mesh_and_the_marker() {
        let e = Mesh::Linkerd.explain();
        assert!(e.contains("Linkerd mesh (linkerd.io/proxy-version)"), "{e}");
        assert!(e.contains("capture the connection"), "{e}");
    }
}
