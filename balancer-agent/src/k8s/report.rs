//! Telling users what the agent leaves out: a log line once per distinct
//! problem rather than at every recomputation, and a Warning Event on the
//! object (`kubectl describe` shows it). For GRPCRoutes every agent logs and
//! the status leader alone writes `status.parents[]` and posts the Event
//! ([`super::status`]); pods the agent does not enroll are tracked in
//! [`super::enrollment`].

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::PostParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
    Api, Resource, ResourceExt,
};
use tracing::Instrument;

use super::{enrollment::PodNotice, translate::InvalidRoute};

/// The Event reason on a GRPCRoute balancer does not apply.
pub const INVALID_ROUTE_REASON: &str = "InvalidGRPCRoute";

/// Posts Warning Events, each from its own task (the API server being slow
/// or down never holds up the model).
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    client: kube::Client,
    reporter: Reporter,
    /// Makes the names of Events created in one nanosecond differ.
    seq: Arc<AtomicU64>,
}

impl Events {
    /// Events reported by `reporter` (the agent's controller name and pod).
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Events {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
            seq: Arc::default(),
        }
    }

    fn warn(&self, reference: ObjectReference, reason: &str, note: String, action: &str, span: tracing::Span) {
        let recorder = self.recorder.clone();
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        tokio::spawn(
            async move {
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::warn!(error = %e, "could not publish an Event (RBAC: create events.events.k8s.io?)");
                }
            }
            .instrument(span),
        );
    }

    /// Creates a Warning Event on the Node object `node` (this agent's
    /// node), in the namespace `default` as the kubelet's node Events are.
    /// The reference carries the node's name as its UID, as the kubelet's
    /// do (`kubectl describe node` finds them; the agent may not read
    /// Nodes). Each call creates an Event of its own: the recorder behind
    /// [`Events::pod`] would fold two notes with the same reason on the same
    /// object into one Event's count, and the callers post each distinct
    /// problem once.
    pub fn node(&self, node: &str, reason: &str, note: String, action: &str) {
        let regarding = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(node.to_owned()),
            uid: Some(node.to_owned()),
            ..ObjectReference::default()
        };
        let now = Timestamp::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{node}.{:x}.{seq}", now.as_nanosecond())),
                namespace: Some("default".to_owned()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some("Warning".to_owned()),
            reason: Some(reason.to_owned()),
            action: Some(action.to_owned()),
            note: Some(note),
            regarding: Some(regarding),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            ..K8sEvent::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), "default");
        let span = tracing::info_span!("event", node, reason);
        tokio::spawn(
            async move {
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::warn!(error = %e, "could not publish an Event (RBAC: create events.events.k8s.io?)");
                }
            }
            .instrument(span),
        );
    }

    /// Posts the Event `notice` describes on its pod.
    pub fn pod(&self, notice: &PodNotice) {
        let key = format!(
            "{}/{}",
            notice.pod.namespace().unwrap_or_default(),
            notice.pod.name_any()
        );
        let span = tracing::info_span!("event", pod = %key, reason = notice.reason);
        self.warn(
            notice.pod.object_ref(&()),
            notice.reason,
            notice.note.clone(),
            "Enroll",
            span,
        );
    }
}

/// Logs ignored routes, once per distinct problem.
#[derive(Default)]
pub struct RouteLog {
    /// `namespace/name` → the problem last logged for it.
    logged: HashMap<String, String>,
}

impl RouteLog {
    /// Logs the problems that are new since the last call and forgets those
    /// that are gone (so that breaking a route again logs again).
    pub fn log(&mut self, invalid: &[InvalidRoute]) {
        let mut now = HashMap::with_capacity(invalid.len());
        for inv in invalid {
            let key = format!("{}/{}", inv.route.namespace().unwrap_or_default(), inv.route.name_any());
            let message = inv.error.to_string();
            if self.logged.get(&key) != Some(&message) {
                tracing::warn!(grpcroute = %key, error = %message, "GRPCRoute ignored");
            }
            now.insert(key, message);
        }
        self.logged = now;
    }
}

/// Publishes Warning Events on GRPCRoutes.
pub struct RouteEvents {
    recorder: Recorder,
}

impl RouteEvents {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        RouteEvents {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes a Warning Event `note` on `route` in the background.
    pub fn warn<K: Resource<DynamicType = ()>>(&self, route: &K, note: String) {
        let recorder = self.recorder.clone();
        let reference = route.object_ref(&());
        let event = Event {
            type_: EventType::Warning,
            reason: INVALID_ROUTE_REASON.to_owned(),
            note: Some(note),
            action: "Translate".to_owned(),
            secondary: None,
        };
        let span = tracing::info_span!(
            "event",
            grpcroute = %format!("{}/{}", route.meta().namespace.as_deref().unwrap_or_default(),
                                 route.meta().name.as_deref().unwrap_or_default())
        );
        tokio::spawn(
            async move {
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::warn!(error = %e, "could not publish an Event (RBAC: create events.events.k8s.io?)");
                }
            }
            .instrument(span),
        );
    }
}
