//! The agent's own conditions, beyond what its parts report: written by the
//! agent's main loop, read by the admin server (`/readyz`, `balancerctl
//! status`, metrics).
//!
//! Some conditions pass (the maps catch up with a new state, a drain ends
//! with the process); others last until an operator acts (a node without
//! cgroup v2, another program that rewrites VIPs before balancer's). The
//! latter leave the agent "settled": not ready, but done starting, so that
//! a DaemonSet rollout does not wait on a node that can never be ready.

use std::sync::Mutex;

use tokio::sync::watch;

#[derive(Debug, Default, Clone)]
struct State {
    /// Why this node cannot run balancer at all.
    unsupported: Option<String>,
    /// Whether the kernel maps must hold the published state before the
    /// agent is ready (eBPF on).
    needs_maps: bool,
    maps_synced: bool,
    draining: bool,
    /// Foreign connect programs that run before balancer's.
    shadowing: Vec<String>,
    /// Foreign connect programs that run after balancer's (harmless).
    coexisting: Vec<String>,
    /// VIP:port pairs that did not fit the SERVICES map.
    overflow: Option<Overflow>,
}

/// The SERVICES map is full: these VIP:port pairs are not redirected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    pub capacity: u32,
    pub vips: Vec<std::net::SocketAddrV4>,
}

impl Overflow {
    /// One line naming what does not fit (the first ten VIPs).
    pub fn describe(&self) -> String {
        let shown: Vec<String> = self.vips.iter().take(10).map(ToString::to_string).collect();
        let more = self.vips.len().saturating_sub(shown.len());
        format!(
            "{} Service VIP:port pairs do not fit the SERVICES map ({} entries) and are not redirected: {}{}; \
             restart the agent to size the map for the cluster, or set BALANCER_SERVICES_MAP_SIZE",
            self.vips.len(),
            self.capacity,
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    }
}

/// The agent's conditions. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
    problems: watch::Sender<NodeProblems>,
}

/// What keeps this node from being served until an operator acts, for
/// Kubernetes mode's Warning Events on the Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeProblems {
    /// Why this node cannot run balancer at all.
    pub unsupported: Option<String>,
    /// Foreign connect programs that run before balancer's.
    pub shadowing: Vec<String>,
    /// VIPs that do not fit the SERVICES map.
    pub overflow: Option<String>,
}

/// What the conditions add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Reasons the agent is not ready (empty when it is, as far as these
    /// conditions go).
    pub not_ready: Vec<String>,
    /// Every reason in `not_ready` lasts until an operator acts.
    pub lasting: bool,
    /// Worth knowing, not a reason to be unready.
    pub warnings: Vec<String>,
    pub unsupported: bool,
    pub draining: bool,
    /// Foreign connect programs that run before balancer's.
    pub shadowing: usize,
    /// VIP:port pairs that do not fit the SERVICES map.
    pub overflow: usize,
}

impl Health {
    /// Conditions of an agent that loads the kernel programs (`ebpf`): it
    /// is not ready until the maps hold the published state.
    pub fn new(ebpf: bool) -> Self {
        Health {
            state: Mutex::new(State {
                needs_maps: ebpf,
                ..State::default()
            }),
            problems: watch::Sender::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The node's lasting problems, now and as they change.
    pub fn problems(&self) -> watch::Receiver<NodeProblems> {
        self.problems.subscribe()
    }

    fn publish(&self) {
        let now = self.with(|s| NodeProblems {
            unsupported: s.unsupported.clone(),
            shadowing: s.shadowing.clone(),
            overflow: s.overflow.as_ref().map(Overflow::describe),
        });
        self.problems.send_if_modified(|p| {
            let changed = *p != now;
            *p = now;
            changed
        });
    }

    /// This node cannot run balancer (no cgroup v2, an old kernel).
    pub fn set_unsupported(&self, reason: String) {
        self.with(|s| s.unsupported = Some(reason));
        self.publish();
    }

    /// Whether the kernel maps hold the model last published.
    pub fn set_maps_synced(&self, synced: bool) {
        self.with(|s| s.maps_synced = synced);
    }

    /// What did not fit the SERVICES map at its last update (`None`:
    /// everything did); whether that changed.
    pub fn set_overflow(&self, overflow: Option<Overflow>) -> bool {
        let changed = self.with(|s| {
            let changed = s.overflow != overflow;
            s.overflow = overflow;
            changed
        });
        if changed {
            self.publish();
        }
        changed
    }

    /// The agent is stopping: no new connection is redirected to it.
    pub fn set_draining(&self) {
        self.with(|s| s.draining = true);
    }

    /// Whether the kernel maps hold the model last published.
    pub fn maps_synced(&self) -> bool {
        self.with(|s| s.maps_synced)
    }

    /// Foreign connect programs found at the attach cgroup; whether that
    /// changed what was known.
    pub fn set_foreign(&self, shadowing: Vec<String>, coexisting: Vec<String>) -> bool {
        let changed = self.with(|s| {
            let changed = s.shadowing != shadowing || s.coexisting != coexisting;
            s.shadowing = shadowing;
            s.coexisting = coexisting;
            changed
        });
        self.publish();
        changed
    }

    pub fn conditions(&self) -> Conditions {
        self.with(|s| {
            let mut lasting_reasons = Vec::new();
            let mut passing = Vec::new();
            if let Some(reason) = &s.unsupported {
                lasting_reasons.push(format!("this node cannot run balancer: {reason}"));
            }
            for p in &s.shadowing {
                lasting_reasons.push(format!(
                    "{p} runs before balancer's program and rewrites Service VIPs first: nothing is redirected \
                     (see the README: Coexistence)"
                ));
            }
            if let Some(o) = &s.overflow {
                lasting_reasons.push(o.describe());
            }
            if s.draining {
                passing.push("draining: no new connection is redirected".to_owned());
            } else if s.needs_maps && s.unsupported.is_none() && !s.maps_synced {
                passing.push("the kernel maps do not hold the current state yet".to_owned());
            }
            let lasting = !lasting_reasons.is_empty() && passing.is_empty();
            let mut not_ready = lasting_reasons;
            not_ready.extend(passing);
            Conditions {
                not_ready,
                lasting,
                warnings: s
                    .coexisting
                    .iter()
                    .map(|p| format!("{p} is attached too and runs after balancer's program"))
                    .collect(),
                unsupported: s.unsupported.is_some(),
                draining: s.draining,
                shadowing: s.shadowing.len(),
                overflow: s.overflow.as_ref().map_or(0, |o| o.vips.len()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_the_maps_hold_the_state() {
        let h = Health::new(true);
        assert_eq!(h.conditions().not_ready.len(), 1);
        assert!(!h.conditions().lasting);
        h.set_maps_synced(true);
        assert!(h.conditions().not_ready.is_empty());
        // Without eBPF there are no maps to wait for.
        assert!(Health::new(false).conditions().not_ready.is_empty());
    }

    #[test]
    fn an_unsupported_node_is_settled_but_a_draining_agent_is_not() {
        let h = Health::new(true);
        h.set_unsupported("no cgroup v2".into());
        let c = h.conditions();
        assert!(c.lasting && c.unsupported);
        assert_eq!(
            c.not_ready,
            vec!["this node cannot run balancer: no cgroup v2".to_owned()]
        );
        h.set_draining();
        assert!(!h.conditions().lasting);
    }

    #[test]
    fn vips_that_do_not_fit_are_named_and_the_rest_serves() {
        let h = Health::new(true);
        h.set_maps_synced(true);
        let mut problems = h.problems();
        let vips: Vec<std::net::SocketAddrV4> = (0..12u8)
            .map(|i| std::net::SocketAddrV4::new([10, 96, 0, i].into(), 8000))
            .collect();
        h.set_overflow(Some(Overflow { capacity: 16, vips }));
        let c = h.conditions();
        assert!(c.lasting && c.overflow == 12, "{c:?}");
        assert!(
            c.not_ready[0].starts_with("12 Service VIP:port pairs do not fit the SERVICES map (16 entries)")
                && c.not_ready[0].contains("10.96.0.9:8000 and 2 more"),
            "{c:?}"
        );
        assert!(problems.has_changed().unwrap_or(false));
        assert!(problems.borrow_and_update().overflow.is_some());
        h.set_overflow(None);
        assert!(h.conditions().not_ready.is_empty());
    }

    #[test]
    fn foreign_programs_that_run_first_make_it_unready_the_others_warn() {
        let h = Health::new(true);
        h.set_maps_synced(true);
        h.set_foreign(vec!["connect4 program cil_sock4_connect (id 7)".into()], vec![]);
        let c = h.conditions();
        assert!(c.lasting && c.not_ready[0].contains("cil_sock4_connect"), "{c:?}");
        h.set_foreign(vec![], vec!["connect4 program x (id 8)".into()]);
        let c = h.conditions();
        assert!(c.not_ready.is_empty() && c.warnings.len() == 1, "{c:?}");
    }

    #[test]
    fn lasting_problems_are_published_when_they_change() {
        let h = Health::new(true);
        let mut rx = h.problems();
        assert_eq!(*rx.borrow_and_update(), NodeProblems::default());
        h.set_foreign(vec![], vec!["connect4 program x (id 8)".into()]);
        assert!(
            !rx.has_changed().unwrap_or(true),
            "a program that runs after is no problem"
        );
        h.set_foreign(vec!["connect4 program cil (id 7)".into()], vec![]);
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(rx.borrow_and_update().shadowing, ["connect4 program cil (id 7)"]);
        // Found again at the next check: no change.
        h.set_foreign(vec!["connect4 program cil (id 7)".into()], vec![]);
        assert!(!rx.has_changed().unwrap_or(true));
        h.set_unsupported("no cgroup v2".into());
        assert_eq!(rx.borrow_and_update().unsupported.as_deref(), Some("no cgroup v2"));
    }
}
