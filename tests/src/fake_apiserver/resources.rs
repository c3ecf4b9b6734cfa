//! The resource types the fake API server serves, and how request paths
//! name them (`/api/v1/...`, `/apis/{group}/{version}/...`).

/// One served resource type.
#[derive(Debug)]
pub struct ResourceDef {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural, lower case: the path segment and the RBAC resource.
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `status` subresource: writes to the object keep its status,
    /// writes to `/status` change nothing else.
    pub status: bool,
    /// Field selectors a real API server accepts besides
    /// `metadata.name` and `metadata.namespace`.
    pub fields: &'static [&'static str],
}

impl ResourceDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as kube-apiserver's messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Index into [`RESOURCES`].
pub type Rid = usize;

/// Every served resource type.
pub const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        status: true,
        fields: &["spec.clusterIP", "spec.type"],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        status: true,
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        status: true,
        fields: &["status.phase"],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        status: true,
        fields: &["spec.unschedulable"],
    },
    ResourceDef {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        status: false,
        fields: &["addressType"],
    },
    ResourceDef {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "grpcroutes",
        kind: "GRPCRoute",
        namespaced: true,
        status: true,
        fields: &[],
    },
    ResourceDef {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status: false,
        fields: &[
            "reason",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
        ],
    },
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status: false,
        fields: &[],
    },
    ResourceDef {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
        status: true,
        fields: &[],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        status: false,
        fields: &["type"],
    },
    ResourceDef {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gatewayclasses",
        kind: "GatewayClass",
        namespaced: false,
        status: true,
        fields: &[],
    },
];

/// The events.k8s.io Events, listed by the `events` control command.
pub const EVENTS: Rid = 6;

pub fn def(rid: Rid) -> &'static ResourceDef {
    &RESOURCES[rid]
}

/// The resource `name` designates: its plural (`services`), plural and
/// group (`endpointslices.discovery.k8s.io`), or kind (`GRPCRoute`, any
/// case).
pub fn resolve(name: &str) -> Option<Rid> {
    RESOURCES
        .iter()
        .position(|d| d.plural == name || d.qualified() == name || d.kind.eq_ignore_ascii_case(name))
}

/// The resource of an object with this `apiVersion` (optional) and `kind`.
pub fn by_kind(api_version: Option<&str>, kind: &str) -> Option<Rid> {
    RESOURCES
        .iter()
        .position(|d| d.kind == kind && api_version.is_none_or(|v| v == d.api_version()))
}

/// What a request path addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Version,
    Health,
    Resource(Target),
    /// No such path, or a group/version/resource not served.
    Unknown,
}

/// A resource collection, object or subresource.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub rid: Rid,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// Parses a request path.
pub fn route(path: &str) -> Route {
    match path {
        "/version" | "/version/" => return Route::Version,
        "/healthz" | "/livez" | "/readyz" => return Route::Health,
        _ => {}
    }
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::Unknown,
    };
    // `namespaces/{ns}/{resource}...`, except the namespaces' own
    // `namespaces/{name}[/status]`.
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, more @ ..]
            if !(group.is_empty() && matches!(*resource, "status" | "finalize")) =>
        {
            (Some(*ns), [&[*resource][..], more].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Route::Unknown,
    };
    let Some(rid) = RESOURCES
        .iter()
        .position(|d| d.group == group && d.version == version && d.plural == plural)
    else {
        return Route::Unknown;
    };
    let d = def(rid);
    if namespace.is_some() && !d.namespaced {
        return Route::Unknown;
    }
    // A namespaced object is addressed within its namespace.
    if d.namespaced && namespace.is_none() && name.is_some() {
        return Route::Unknown;
    }
    if sub.is_some_and(|s| s != "status" || !d.status) {
        return Route::Unknown;
    }
    let owned = |s: Option<&str>| s.map(percent_decode);
    Route::Resource(Target {
        rid,
        namespace: owned(namespace),
        name: owned(name),
        sub: owned(sub),
    })
}

/// Decodes `%XX` escapes (and `+` as a space when `plus` is true, as in
/// query strings). Invalid escapes stay as they are.
pub fn decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_decode(s: &str) -> String {
    decode(s, false)
}

/// A query string's parameters, decoded (the last of repeated keys wins).
pub fn query(q: Option<&str>) -> std::collections::HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k, true), decode(v, true)),
            None => (decode(kv, true), String::new()),
        })
        .collect()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    fn target(rid: Rid, ns: Option<&str>, name: Option<&str>, sub: Option<&str>) -> Route {
        Route::Resource(Target {
            rid,
            namespace: ns.map(str::to_owned),
            name: name.map(str::to_owned),
            sub: sub.map(str::to_owned),
        })
    }

    #[test]
    fn paths_name_resources() {
        let svc = resolve("services").unwrap();
        let ns = resolve("namespaces").unwrap();
        let routes = resolve("grpcroutes.gateway.networking.k8s.io").unwrap();
        assert_eq!(route("/api/v1/services"), target(svc, None, None, None));
        assert_eq!(
            route("/api/v1/namespaces/a/services"),
            target(svc, Some("a"), None, None)
        );
        assert_eq!(
            route("/api/v1/namespaces/a/services/b"),
            target(svc, Some("a"), Some("b"), None)
        );
        assert_eq!(route("/api/v1/namespaces"), target(ns, None, None, None));
        assert_eq!(route("/api/v1/namespaces/a"), target(ns, None, Some("a"), None));
        assert_eq!(
            route("/api/v1/namespaces/a/status"),
            target(ns, None, Some("a"), Some("status"))
        );
        assert_eq!(
            route("/apis/gateway.networking.k8s.io/v1/namespaces/n/grpcroutes/r/status"),
            target(routes, Some("n"), Some("r"), Some("status"))
        );
        assert_eq!(
            route("/api/v1/services/b"),
            Route::Unknown,
            "named object without namespace"
        );
        assert_eq!(
            route("/api/v1/namespaces/a/nodes"),
            Route::Unknown,
            "cluster-scoped in a namespace"
        );
        assert_eq!(route("/apis/discovery.k8s.io/v1beta1/endpointslices"), Route::Unknown);
        assert_eq!(
            route("/apis/coordination.k8s.io/v1/namespaces/a/leases/l/status"),
            Route::Unknown
        );
        assert_eq!(route("/api/v1/namespaces/a/services/b/c/d"), Route::Unknown);
        assert_eq!(route("/"), Route::Unknown);
        assert_eq!(route(""), Route::Unknown);
        assert_eq!(route("/version"), Route::Version);
    }

    #[test]
    fn resources_resolve_by_any_name() {
        let slices = resolve("endpointslices").unwrap();
        assert_eq!(resolve("endpointslices.discovery.k8s.io"), Some(slices));
        assert_eq!(resolve("EndpointSlice"), Some(slices));
        assert_eq!(by_kind(Some("discovery.k8s.io/v1"), "EndpointSlice"), Some(slices));
        assert_eq!(by_kind(Some("discovery.k8s.io/v1beta1"), "EndpointSlice"), None);
        assert_eq!(resolve("widgets"), None);
        assert_eq!(def(EVENTS).qualified(), "events.events.k8s.io");
    }

    #[test]
    fn queries_decode() {
        let q = query(Some(
            "fieldSelector=spec.nodeName%3Dn1&labelSelector=a+in+(b%2Cc)&watch&x=%zz",
        ));
        assert_eq!(q["fieldSelector"], "spec.nodeName=n1");
        assert_eq!(q["labelSelector"], "a in (b,c)");
        assert_eq!(q["watch"], "");
        assert_eq!(q["x"], "%zz");
        assert_eq!(decode("%", false), "%");
        assert_eq!(decode("a%4", false), "a%4");
    }
}
