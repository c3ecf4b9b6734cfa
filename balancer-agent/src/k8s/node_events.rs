//! Warning Events on this agent's Node for what keeps it from serving the
//! node until an operator acts: the node cannot run balancer (no cgroup v2,
//! an old kernel: [`NODE_UNSUPPORTED_REASON`]), or another connect program
//! runs before balancer's and rewrites Service VIPs first
//! ([`FOREIGN_CONNECT_PROGRAM_REASON`], one Event per such program), or the
//! SERVICES map cannot hold every VIP ([`SERVICES_MAP_FULL_REASON`]).
//!
//! The agent's main loop finds these ([`crate::health::Health`]) and
//! publishes them on a watch channel; each distinct problem is posted once,
//! not at every periodic check. A problem that goes away and comes back is
//! posted again.

use std::collections::HashSet;

use tokio::sync::watch;

use super::{event_note, report::Events};
use crate::health::NodeProblems;

/// The Event reason on a Node that cannot run balancer.
pub const NODE_UNSUPPORTED_REASON: &str = "NodeUnsupported";
/// The Event reason on a Node whose SERVICES map cannot hold every VIP.
pub const SERVICES_MAP_FULL_REASON: &str = "ServicesMapFull";
/// The Event reason on a Node where another connect program runs first.
pub const FOREIGN_CONNECT_PROGRAM_REASON: &str = "ForeignConnectProgram";

/// The Events `problems` call for: (reason, note), one per problem.
pub fn notices(problems: &NodeProblems) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(reason) = &problems.unsupported {
        out.push((
            NODE_UNSUPPORTED_REASON,
            format!(
                "balancer cannot run on this node: {reason}. Opted-in pods on it are not balanced (their \
                 connections go to Services directly); the agent stays up, not ready."
            ),
        ));
    }
    for program in &problems.shadowing {
        out.push((
            FOREIGN_CONNECT_PROGRAM_REASON,
            format!(
                "{program} runs before balancer's connect program and rewrites Service VIPs first: opted-in \
                 pods on this node are not balanced. See balancer's README, Coexistence (e.g. Cilium's \
                 socketLB.hostNamespaceOnly=true)."
            ),
        ));
    }
    if let Some(overflow) = &problems.overflow {
        out.push((SERVICES_MAP_FULL_REASON, overflow.clone()));
    }
    for (_, note) in &mut out {
        event_note::fit(note);
    }
    out
}

/// Posts an Event on Node `node` for each distinct problem, as `problems`
/// changes, until its sender is gone.
pub async fn report(events: Events, node: String, mut problems: watch::Receiver<NodeProblems>) {
    let mut told: HashSet<(&'static str, String)> = HashSet::new();
    loop {
        let now: HashSet<(&'static str, String)> = notices(&problems.borrow_and_update()).into_iter().collect();
        for (reason, note) in now.difference(&told) {
            tracing::info!(node = %node, reason, "posting a Warning Event on the node");
            events.node(&node, reason, note.clone(), "Redirect");
        }
        told = now;
        if problems.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notice_per_problem() {
        assert!(notices(&NodeProblems::default()).is_empty());
        let n = notices(&NodeProblems {
            unsupported: Some("no cgroup v2 hierarchy".into()),
            shadowing: vec!["connect4 program a (id 1)".into(), "connect6 program b (id 2)".into()],
            overflow: None,
        });
        let reasons: Vec<&str> = n.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            reasons,
            [
                NODE_UNSUPPORTED_REASON,
                FOREIGN_CONNECT_PROGRAM_REASON,
                FOREIGN_CONNECT_PROGRAM_REASON
            ]
        );
        assert!(n[0].1.contains("no cgroup v2 hierarchy"));
        assert!(n[2].1.starts_with("connect6 program b (id 2) runs before"));
        let long = notices(&NodeProblems {
            unsupported: Some("é".repeat(1000)),
            shadowing: vec![],
            overflow: None,
        });
        assert!(long[0].1.len() <= event_note::NOTE_MAX && long[0].1.ends_with("..."));
    }
}
