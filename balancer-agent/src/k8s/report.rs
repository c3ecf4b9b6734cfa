//! Telling users what the agent leaves out: a log line and a Warning Event
//! on the object (`kubectl describe` shows it), once per distinct problem
//! rather than at every recomputation. GRPCRoutes it ignores are tracked
//! here; pods it does not enroll in [`super::enrollment`].

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{Event, EventType, Recorder, Reporter},
    Resource, ResourceExt,
};
use tracing::Instrument;

use super::{enrollment::PodNotice, translate::InvalidRoute};

/// The Event reason on an ignored GRPCRoute.
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

pub struct RouteReporter {
    events: Events,
    /// `namespace/name` → the problem last reported for it.
    reported: HashMap<String, String>,
}

impl RouteReporter {
    pub fn new(events: Events) -> Self {
        RouteReporter {
            events,
            reported: HashMap::new(),
        }
    }

    /// Reports the problems that are new since the last call and forgets
    /// those that are gone (so that breaking a route again reports again).
    pub fn report(&mut self, invalid: &[InvalidRoute]) {
        let mut now = HashMap::with_capacity(invalid.len());
        for inv in invalid {
            let key = format!("{}/{}", inv.route.namespace().unwrap_or_default(), inv.route.name_any());
            let message = inv.error.to_string();
            if self.reported.get(&key) != Some(&message) {
                tracing::warn!(grpcroute = %key, error = %message, "GRPCRoute ignored");
                let span = tracing::info_span!("event", grpcroute = %key);
                self.events.warn(
                    inv.route.object_ref(&()),
                    INVALID_ROUTE_REASON,
                    format!("ignored by balancer: {message}"),
                    "Translate",
                    span,
                );
            }
            now.insert(key, message);
        }
        self.reported = now;
    }
}
