//! The watched Istio objects and the pod labels their subsets select.
//!
//! `VirtualService` and `DestinationRule` (`networking.istio.io/v1`) are
//! kept with their spec as JSON: the spec is parsed when translated
//! ([`super::spec`]), so a malformed object is reported with the path of
//! what is wrong instead of failing the whole watch. No Istio crate: only
//! the fields balancer reads are typed.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use kube::{api::ObjectMeta, Resource};
use serde::Deserialize;
use serde_json::Value;

/// The API group and version of both kinds.
pub const GROUP: &str = "networking.istio.io";
pub const VERSION: &str = "v1";

macro_rules! istio_kind {
    ($name:ident, $kind:literal, $plural:literal) => {
        #[doc = concat!("An Istio `", $kind, "`: metadata and the spec as JSON.")]
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        pub struct $name {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: Value,
        }

        impl $name {
            pub const KIND: &'static str = $kind;
        }

        impl Resource for $name {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }

            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }

            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }

            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

istio_kind!(VirtualService, "VirtualService", "virtualservices");
istio_kind!(DestinationRule, "DestinationRule", "destinationrules");

/// A pod's name, namespace and labels: what DestinationRule subsets select
/// endpoints by (an EndpointSlice names each endpoint's pod, not its
/// labels).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PodLabels {
    pub metadata: ObjectMeta,
}

impl Resource for PodLabels {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Keeps of an Istio object what the translation and its Events read:
/// name, namespace, uid, generation, creation time and the spec.
pub fn strip_istio(meta: &mut ObjectMeta) {
    crate::k8s::strip::common(meta);
    meta.annotations = None;
    meta.labels = None;
}

pub fn strip_virtual_service(vs: &mut VirtualService) {
    strip_istio(&mut vs.metadata);
}

pub fn strip_destination_rule(dr: &mut DestinationRule) {
    strip_istio(&mut dr.metadata);
}

/// A pod's labels: only its name, namespace and labels stay.
pub fn strip_pod_labels(pod: &mut PodLabels) {
    let meta = &mut pod.metadata;
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: meta.labels.take(),
        ..ObjectMeta::default()
    };
}
