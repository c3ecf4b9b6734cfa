//! GRPCRoute filters onto the model's [`Filters`]: `RequestHeaderModifier`
//! and `ResponseHeaderModifier` on a rule and on a backendRef,
//! `RequestMirror` on a rule (to a Service the agent balances: the copy
//! goes to that Service's model service). `ExtensionRef`, and a mirror on
//! a backendRef, are not supported: the route is refused as a whole.

use gateway_api::grpcroutes::{
    GrpcRouteRulesBackendRefs, GrpcRouteRulesBackendRefsFilters, GrpcRouteRulesFilters,
    GrpcRouteRulesFiltersRequestHeaderModifier, GrpcRouteRulesFiltersRequestMirror, GrpcRouteRulesFiltersType,
};
use k8s_openapi::api::core::v1::Service;

use super::grpcroute::{backend_port, RouteError};
use crate::model::{Filters, HeaderModifier, HeaderValue, Mirror, Share};

/// Mirrors a rule may have.
const MAX_MIRRORS: usize = 8;

/// The filters of rule `i` of a route in `namespace`.
pub(super) fn rule_filters<'a>(
    i: usize,
    list: &[GrpcRouteRulesFilters],
    namespace: &str,
    lookup: &impl Fn(&str, &str) -> Option<&'a Service>,
) -> Result<Filters, RouteError> {
    let mut out = Filters::default();
    for f in list {
        match f.r#type {
            GrpcRouteRulesFiltersType::RequestHeaderModifier => {
                out.request = Some(modifier(
                    i,
                    "RequestHeaderModifier",
                    f.request_header_modifier.as_ref(),
                )?);
            }
            GrpcRouteRulesFiltersType::ResponseHeaderModifier => {
                // The same shape under another name.
                let m = f
                    .response_header_modifier
                    .as_ref()
                    .and_then(|m| serde_json::to_value(m).ok())
                    .and_then(|v| serde_json::from_value(v).ok());
                out.response = Some(modifier(i, "ResponseHeaderModifier", m.as_ref())?);
            }
            GrpcRouteRulesFiltersType::RequestMirror => {
                let Some(m) = &f.request_mirror else {
                    return Err(bad(i, "RequestMirror without `requestMirror`"));
                };
                if out.mirrors.len() == MAX_MIRRORS {
                    return Err(bad(i, &format!("more than {MAX_MIRRORS} RequestMirror filters")));
                }
                out.mirrors.push(mirror(i, m, namespace, lookup)?);
            }
            GrpcRouteRulesFiltersType::ExtensionRef => {
                return Err(RouteError::UnsupportedFilter {
                    rule: i,
                    filter: "ExtensionRef".into(),
                })
            }
        }
    }
    Ok(out)
}

/// The filters of a backendRef of rule `i`: header modifiers only.
pub(super) fn backend_filters(i: usize, list: &[GrpcRouteRulesBackendRefsFilters]) -> Result<Filters, RouteError> {
    let mut rule_shaped = Vec::with_capacity(list.len());
    for f in list {
        // A backendRef's filters have the rule's shape under other names.
        let Some(g) = serde_json::to_value(f)
            .ok()
            .and_then(|v| serde_json::from_value::<GrpcRouteRulesFilters>(v).ok())
        else {
            return Err(bad(i, "a backendRef filter that does not parse"));
        };
        if matches!(g.r#type, GrpcRouteRulesFiltersType::RequestMirror) {
            return Err(RouteError::UnsupportedFilter {
                rule: i,
                filter: "RequestMirror on a backendRef".into(),
            });
        }
        rule_shaped.push(g);
    }
    rule_filters(i, &rule_shaped, "", &|_: &str, _: &str| None)
}

fn bad(rule: usize, reason: &str) -> RouteError {
    RouteError::BadFilter {
        rule,
        reason: reason.to_owned(),
    }
}

fn modifier(
    i: usize,
    kind: &str,
    m: Option<&GrpcRouteRulesFiltersRequestHeaderModifier>,
) -> Result<HeaderModifier, RouteError> {
    let Some(m) = m else {
        return Err(bad(i, &format!("{kind} without its settings")));
    };
    let values = |v: Option<Vec<(String, String)>>| {
        v.unwrap_or_default()
            .into_iter()
            .map(|(name, value)| HeaderValue {
                name: name.to_ascii_lowercase(),
                value,
            })
            .collect()
    };
    let out = HeaderModifier {
        set: values(
            m.set
                .as_ref()
                .map(|s| s.iter().map(|h| (h.name.clone(), h.value.clone())).collect()),
        ),
        add: values(
            m.add
                .as_ref()
                .map(|s| s.iter().map(|h| (h.name.clone(), h.value.clone())).collect()),
        ),
        remove: m.remove.iter().flatten().map(|n| n.to_ascii_lowercase()).collect(),
    };
    out.validate().map_err(|e| bad(i, &format!("{kind}: {e}")))?;
    Ok(out)
}

fn mirror<'a>(
    i: usize,
    m: &GrpcRouteRulesFiltersRequestMirror,
    namespace: &str,
    lookup: &impl Fn(&str, &str) -> Option<&'a Service>,
) -> Result<Mirror, RouteError> {
    let r = &m.backend_ref;
    let as_backend = GrpcRouteRulesBackendRefs {
        group: r.group.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        port: r.port,
        ..GrpcRouteRulesBackendRefs::default()
    };
    let port = backend_port(i, &as_backend, namespace, lookup)?;
    let service = lookup(namespace, &r.name)
        .and_then(|svc| super::translate::model_name(svc, port.port))
        .ok_or_else(|| RouteError::MirrorNotBalanced {
            rule: i,
            service: format!("{namespace}/{}", r.name),
            port: port.port,
        })?;
    let percent = match (&m.fraction, m.percent) {
        (Some(f), _) => {
            let den = f.denominator.unwrap_or(100);
            if den <= 0 || f.numerator < 0 || f.numerator > den {
                return Err(bad(
                    i,
                    "RequestMirror fraction must be 0 ≤ numerator ≤ denominator, denominator > 0",
                ));
            }
            100.0 * f64::from(f.numerator) / f64::from(den)
        }
        (None, Some(p)) => f64::from(p),
        (None, None) => 100.0,
    };
    let share = Share::from_percent(percent)
        .ok_or_else(|| bad(i, &format!("RequestMirror percent {percent} is not 0 to 100")))?;
    Ok(Mirror { service, share })
}
