//! Telling users about GRPCRoutes the agent ignores: a log line and a
//! Warning Event on the route (`kubectl describe grpcroute` shows it), once
//! per distinct problem rather than at every recomputation.

use std::collections::HashMap;

use kube::{
    runtime::events::{Event, EventType, Recorder, Reporter},
    Resource, ResourceExt,
};
use tracing::Instrument;

use super::translate::InvalidRoute;

/// The Event reason on an ignored GRPCRoute.
pub const INVALID_ROUTE_REASON: &str = "InvalidGRPCRoute";

pub struct RouteReporter {
    recorder: Recorder,
    /// `namespace/name` → the problem last reported for it.
    reported: HashMap<String, String>,
}

impl RouteReporter {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        RouteReporter {
            recorder: Recorder::new(client, reporter),
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
                let recorder = self.recorder.clone();
                let reference = inv.route.object_ref(&());
                let event = Event {
                    type_: EventType::Warning,
                    reason: INVALID_ROUTE_REASON.to_owned(),
                    note: Some(format!("ignored by balancer: {message}")),
                    action: "Translate".to_owned(),
                    secondary: None,
                };
                let span = tracing::info_span!("event", grpcroute = %key);
                tokio::spawn(
                    async move {
                        if let Err(e) = recorder.publish(&event, &reference).await {
                            tracing::warn!(error = %e, "could not publish an Event (RBAC: create events.events.k8s.io?)");
                        }
                    }
                    .instrument(span),
                );
            }
            now.insert(key, message);
        }
        self.reported = now;
    }
}
