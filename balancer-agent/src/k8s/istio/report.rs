//! Telling users what of their Istio objects balancer does not apply: a log
//! line from every agent, and a Warning Event on the object from one agent
//! (the route-status leader, or this agent when none is elected), each once
//! per distinct problem. `kubectl describe virtualservice NAME` shows it;
//! `balancerctl status` lists the same lines.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::Instrument;

use super::{object, translate::Report};
use crate::k8s::event_note;

/// The Event reason on an Istio object balancer does not apply at all.
pub const NOT_APPLIED_REASON: &str = "IstioNotApplied";
/// The Event reason on an Istio object applied without some of its fields.
pub const PARTLY_APPLIED_REASON: &str = "IstioPartlyApplied";

type ObjKey = (&'static str, String, String);

fn key(r: &Report) -> ObjKey {
    (r.kind, r.namespace.clone(), r.name.clone())
}

/// Logs and posts reports as they change.
pub struct Reports {
    recorder: Recorder,
    logged: HashMap<ObjKey, String>,
    posted: HashMap<ObjKey, String>,
}

impl Reports {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Reports {
            recorder: Recorder::new(client, reporter),
            logged: HashMap::new(),
            posted: HashMap::new(),
        }
    }

    /// Logs the reports that are new since the last call; when `post`
    /// (this agent speaks for all), posts an Event for each report it has
    /// not posted yet. A problem that goes away and comes back is told
    /// again.
    pub fn update(&mut self, reports: &[Report], post: bool) {
        let mut logged = HashMap::with_capacity(reports.len());
        let mut posted = HashMap::new();
        for r in reports {
            let line = r.line();
            let k = key(r);
            if self.logged.get(&k) != Some(&line) {
                tracing::warn!(kind = r.kind, object = %format!("{}/{}", r.namespace, r.name), report = %line,
                    "Istio object not applied as written");
            }
            if post {
                if self.posted.get(&k) != Some(&line) {
                    self.post(r, line.clone());
                }
                posted.insert(k.clone(), line.clone());
            }
            logged.insert(k, line);
        }
        self.logged = logged;
        self.posted = posted;
    }

    fn post(&self, r: &Report, mut note: String) {
        event_note::fit(&mut note);
        let reference = ObjectReference {
            api_version: Some(format!("{}/{}", object::GROUP, object::VERSION)),
            kind: Some(r.kind.to_owned()),
            name: Some(r.name.clone()),
            namespace: Some(r.namespace.clone()),
            uid: r.uid.clone(),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: if r.refused.is_some() {
                NOT_APPLIED_REASON
            } else {
                PARTLY_APPLIED_REASON
            }
            .to_owned(),
            note: Some(note),
            action: "Translate".to_owned(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let span = tracing::info_span!("event", kind = r.kind, object = %format!("{}/{}", r.namespace, r.name));
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
