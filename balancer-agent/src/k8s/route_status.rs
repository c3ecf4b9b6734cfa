//! What balancer says in a GRPCRoute's `status.parents[]`: one entry per
//! Service parentRef, written under [`CONTROLLER_NAME`], with two
//! conditions:
//!
//! - `Accepted`: `True` (reason `Accepted`) when balancer applies the route
//!   to that parent; `False` when it does not: `NoMatchingParent` (the
//!   parent Service or its port does not exist), `IncompatibleFilters`
//!   (filters), `UnsupportedValue` (anything else balancer cannot honour
//!   exactly: a bad regular expression, every weight 0, no backendRefs, and
//!   a backendRef that does not resolve, because balancer refuses such a
//!   route as a whole rather than failing its share of calls).
//! - `ResolvedRefs`: `True` (reason `ResolvedRefs`) when every backendRef
//!   names an existing Service port in the route's namespace; `False` with
//!   `BackendNotFound`, `RefNotPermitted` (another namespace) or
//!   `InvalidKind` (not a core Service).
//!
//! Pure: the reasons come from the translation's [`RouteError`]s; the
//! status writer of the elected agent decides when to write.

use gateway_api::grpcroutes::{
    GrpcRoute, GrpcRouteParentRefs, GrpcRouteStatus, GrpcRouteStatusParents, GrpcRouteStatusParentsParentRef,
};
use k8s_openapi::{
    api::core::v1::Service,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;

use super::grpcroute::{self, RouteError};

/// The `controllerName` of balancer's entries in `status.parents[]`. Entries
/// with another controllerName belong to other controllers and are never
/// changed.
pub const CONTROLLER_NAME: &str = "balancer.io/agent";

/// The Gateway API reasons balancer gives its route conditions.
pub mod reason {
    /// `Accepted` is True.
    pub const ACCEPTED: &str = "Accepted";
    /// The parent Service, or its `parentRef.port`, does not exist.
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    /// The route has filters, which balancer does not implement.
    pub const INCOMPATIBLE_FILTERS: &str = "IncompatibleFilters";
    /// Something else in the route balancer cannot honour exactly.
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    /// `ResolvedRefs` is True.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// A backend Service (or its port) does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// A backendRef to another namespace.
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    /// A backendRef to something other than a core Service.
    pub const INVALID_KIND: &str = "InvalidKind";
}

/// The two conditions of a route's parent entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCondition {
    Accepted,
    ResolvedRefs,
}

impl RouteCondition {
    /// The condition's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteCondition::Accepted => "Accepted",
            RouteCondition::ResolvedRefs => "ResolvedRefs",
        }
    }
}

/// One condition's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    fn ok(reason: &'static str, message: &str) -> Verdict {
        Verdict {
            ok: true,
            reason,
            message: message.to_owned(),
        }
    }

    fn failed(reason: &'static str, message: String) -> Verdict {
        Verdict {
            ok: false,
            reason,
            message,
        }
    }
}

/// balancer's view of a route for one Service parentRef.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentVerdict {
    /// The spec's parentRef, as the status echoes it.
    pub parent_ref: GrpcRouteStatusParentsParentRef,
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
}

/// The verdicts on `route`, one per Service parentRef in spec order (none
/// for a route whose parents are all Gateways). `error` is why the
/// translation refused the route ([`super::Translation::invalid_routes`]),
/// `lookup(namespace, name)` finds a Service.
pub fn parent_verdicts<'a>(
    route: &GrpcRoute,
    error: Option<&RouteError>,
    lookup: impl Fn(&str, &str) -> Option<&'a Service>,
) -> Vec<ParentVerdict> {
    let namespace = route.namespace().unwrap_or_default();
    let parents: Vec<&GrpcRouteParentRefs> = grpcroute::service_parents(route).collect();
    if parents.is_empty() {
        return Vec::new();
    }
    let resolved_refs = match grpcroute::check_refs(route, &lookup) {
        Ok(()) => Verdict::ok(reason::RESOLVED_REFS, "every backendRef resolved"),
        Err(e) => Verdict::failed(e.condition().1, e.to_string()),
    };
    parents
        .into_iter()
        .map(|parent| {
            let accepted = match (grpcroute::check_parent(&namespace, parent, &lookup), error) {
                (Err(e), _) => Verdict::failed(e.condition().1, e.to_string()),
                (Ok(()), None) => Verdict::ok(reason::ACCEPTED, "applied by balancer"),
                // Another parent is missing: balancer applies a route to all
                // of its parents or to none.
                (Ok(()), Some(e)) if e.is_parent_error() => Verdict::failed(
                    reason::UNSUPPORTED_VALUE,
                    format!("{e}: the route applies to all its parents or to none"),
                ),
                (Ok(()), Some(e)) => match e.condition() {
                    (RouteCondition::Accepted, reason) => Verdict::failed(reason, e.to_string()),
                    (RouteCondition::ResolvedRefs, _) => Verdict::failed(
                        reason::UNSUPPORTED_VALUE,
                        format!("{e}: a route applies only when every backendRef resolves"),
                    ),
                },
            };
            ParentVerdict {
                parent_ref: to_status_ref(parent),
                accepted,
                resolved_refs: resolved_refs.clone(),
            }
        })
        .collect()
}

/// The status `route` should have: the entries of other controllers as they
/// are, balancer's replaced by `verdicts` (balancer's entries for parents no
/// longer in the spec disappear). A condition keeps its
/// `lastTransitionTime` while its status stays the same; `now` stamps the
/// others. `None` when the route already has exactly this status: nothing
/// to write.
pub fn desired_status(route: &GrpcRoute, verdicts: &[ParentVerdict], now: Timestamp) -> Option<GrpcRouteStatus> {
    let current: &[GrpcRouteStatusParents] = route.status.as_ref().map_or(&[], |s| s.parents.as_slice());
    let generation = route.metadata.generation;
    // Whole seconds: what the API server keeps of a timestamp.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let mut parents: Vec<GrpcRouteStatusParents> = current
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for v in verdicts {
        let old = current
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == v.parent_ref);
        let condition = |kind: RouteCondition, verdict: &Verdict| {
            let status = if verdict.ok { "True" } else { "False" };
            let since = old
                .and_then(|o| o.conditions.iter().find(|c| c.type_ == kind.as_str()))
                .filter(|c| c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: kind.as_str().to_owned(),
                status: status.to_owned(),
                reason: verdict.reason.to_owned(),
                message: verdict.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        };
        parents.push(GrpcRouteStatusParents {
            conditions: vec![
                condition(RouteCondition::Accepted, &v.accepted),
                condition(RouteCondition::ResolvedRefs, &v.resolved_refs),
            ],
            controller_name: CONTROLLER_NAME.to_owned(),
            parent_ref: v.parent_ref.clone(),
        });
    }
    if parents.as_slice() == current {
        return None;
    }
    Some(GrpcRouteStatus { parents })
}

fn to_status_ref(p: &GrpcRouteParentRefs) -> GrpcRouteStatusParentsParentRef {
    GrpcRouteStatusParentsParentRef {
        group: p.group.clone(),
        kind: p.kind.clone(),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        port: p.port,
        section_name: p.section_name.clone(),
    }
}
