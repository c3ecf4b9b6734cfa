//! Telling users what the agent leaves out: a log line once per distinct
//! problem rather than at every recomputation, and a Warning Event on the
//! object (`kubectl describe` shows it). For GRPCRoutes every agent logs and
//! the status leader alone writes `status.parents[]` and posts the Event
//! ([`super::status`]); pods the agent does not enroll are tracked in
//! [`super::enrollment`].

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{Event, EventType, Recorder, Reporter},
    Resource, ResourceExt,
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
}

impl Events {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Events {
            recorder: Recorder::new(client, reporter),
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
