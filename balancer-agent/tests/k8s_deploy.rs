//! Every manifest under deploy/ parses into the Kubernetes (and Gateway API)
//! types without a field lost, the kustomizations list every file, the RBAC
//! grants what the agent watches, and the DaemonSet has what the agent needs.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use balancer_agent::k8s::{self, translate, Kind, Snapshot};
use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, Namespace, ResourceQuota, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("deploy/ is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("readable");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Parses `doc` as `T` and checks that serializing it back gives the same
/// document: a misspelled or misplaced field would be dropped and show here.
fn strict<T: DeserializeOwned + Serialize>(path: &Path, doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(&back, doc, "{}: fields lost in parsing (a typo?)", path.display());
    typed
}

#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    daemonsets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    routes: Vec<GrpcRoute>,
    gateways: Vec<gateway_api::gateways::Gateway>,
    gateway_classes: Vec<gateway_api::gatewayclasses::GatewayClass>,
    quotas: Vec<ResourceQuota>,
}

fn load(dir: &Path) -> Manifests {
    let mut m = Manifests::default();
    for path in yaml_files(dir) {
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            check_kustomization(&path);
            continue;
        }
        for doc in documents(&path) {
            let api = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            match (api.as_str(), kind.as_str()) {
                ("v1", "Namespace") => m.namespaces.push(strict(&path, &doc)),
                ("v1", "ServiceAccount") => m.service_accounts.push(strict(&path, &doc)),
                ("v1", "Service") => m.services.push(strict(&path, &doc)),
                ("v1", "ConfigMap") => {
                    strict::<ConfigMap>(&path, &doc);
                }
                ("v1", "ResourceQuota") => m.quotas.push(strict(&path, &doc)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.cluster_roles.push(strict(&path, &doc)),
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => m.bindings.push(strict(&path, &doc)),
                ("rbac.authorization.k8s.io/v1", "Role") => m.roles.push(strict(&path, &doc)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => m.role_bindings.push(strict(&path, &doc)),
                ("apps/v1", "DaemonSet") => m.daemonsets.push(strict(&path, &doc)),
                ("apps/v1", "Deployment") => m.deployments.push(strict(&path, &doc)),
                ("gateway.networking.k8s.io/v1", "GRPCRoute") => m.routes.push(strict(&path, &doc)),
                ("gateway.networking.k8s.io/v1", "Gateway") => m.gateways.push(strict(&path, &doc)),
                ("gateway.networking.k8s.io/v1", "GatewayClass") => m.gateway_classes.push(strict(&path, &doc)),
                _ => panic!(
                    "{}: {api} {kind} is not checked here: add its type to load()",
                    path.display()
                ),
            }
        }
    }
    m
}

/// A kustomization lists exactly the manifests next to it (none forgotten,
/// none missing).
fn check_kustomization(path: &Path) {
    let docs = documents(path);
    assert_eq!(docs.len(), 1, "{}", path.display());
    let k = &docs[0];
    assert_eq!(k["kind"], "Kustomization");
    let dir = path.parent().expect("parent");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource path").to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "{}: resources vs files", path.display());
}

#[test]
fn every_manifest_parses_strictly() {
    let all = yaml_files(&deploy_dir());
    assert!(all.len() >= 9, "deploy/ has its manifests: {all:?}");
    let m = load(&deploy_dir());
    assert_eq!(m.daemonsets.len(), 1);
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(m.routes.len(), 2);
    assert_eq!(m.gateways.len(), 1);
}

#[test]
fn the_gateway_class_and_example_are_balancers() {
    let m = load(&deploy_dir().join("gateway"));
    let class = m.gateway_classes.first().expect("the GatewayClass");
    assert_eq!(class.metadata.name.as_deref(), Some(k8s::gateway::GATEWAY_CLASS));
    assert_eq!(class.spec.controller_name, k8s::gateway::GATEWAY_CONTROLLER);
    let m = load(&deploy_dir().join("examples").join("gateway"));
    let gw = m.gateways.first().expect("the example Gateway");
    assert_eq!(gw.spec.gateway_class_name, k8s::gateway::GATEWAY_CLASS);
    let route = m.routes.first().expect("its GRPCRoute");
    let parent = &route.spec.parent_refs.as_ref().expect("parentRefs")[0];
    assert_eq!(Some(&parent.name), gw.metadata.name.as_ref());
    // The load balancer sends the Gateway's ports to the agents.
    let svc = m.services.first().expect("the LoadBalancer Service");
    let spec = svc.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ds_labels = agent().1.spec.expect("spec").selector.match_labels.expect("labels");
    assert_eq!(spec.selector.as_ref(), Some(&ds_labels));
    let targets: Vec<i32> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| match &p.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => Some(*n),
            _ => None,
        })
        .collect();
    let listeners: Vec<i32> = gw.spec.listeners.iter().map(|l| l.port).collect();
    assert_eq!(targets, listeners);
}

fn agent() -> (Manifests, DaemonSet) {
    let mut m = load(&deploy_dir());
    let ds = m.daemonsets.pop().expect("the agent DaemonSet");
    (m, ds)
}

#[test]
fn the_daemonset_runs_the_agent_as_a_node_level_data_plane() {
    let (_, ds) = agent();
    let spec = ds.spec.as_ref().expect("spec");
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));

    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.service_account_name.as_deref(), Some("balancer-agent"));
    assert_ne!(pod.host_pid, Some(true), "the agent keeps its own PID namespace");
    let selinux = pod
        .security_context
        .as_ref()
        .and_then(|s| s.se_linux_options.as_ref())
        .expect("seLinuxOptions");
    assert_eq!(selinux.type_.as_deref(), Some("spc_t"));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert!(
        c.args.iter().flatten().all(|a| a != "--config"),
        "Kubernetes mode: no --config"
    );
    let host_path = |c: &k8s_openapi::api::core::v1::Container, mount_path: &str| {
        let m = c.volume_mounts.iter().flatten().find(|m| m.mount_path == mount_path)?;
        let v = pod.volumes.iter().flatten().find(|v| v.name == m.name)?;
        Some((v.host_path.as_ref()?.path.clone(), m.clone()))
    };

    // The init step mounts the host's cgroup v2 hierarchy from the host's
    // namespaces, at the path the agent is told.
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "mount-cgroup2")
        .expect("init step");
    let command = init.command.clone().unwrap_or_default();
    assert_eq!(command[..2], ["balancer-agent", "mount-cgroup2"], "{command:?}");
    let target = command[2].clone();
    let host_proc = command
        .windows(2)
        .find(|w| w[0] == "--host-proc")
        .map(|w| w[1].clone())
        .expect("--host-proc");
    let (proc_path, proc_mount) = host_path(init, &host_proc).expect("the host's /proc");
    assert_eq!(proc_path, "/proc");
    assert_eq!(proc_mount.read_only, Some(true));
    let init_caps: BTreeSet<&str> = init
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref()?.add.as_ref())
        .map(|a| a.iter().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(init_caps, BTreeSet::from(["SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"]));

    // Capabilities, not full privilege.
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    let caps: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .map(|a| a.iter().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        caps,
        BTreeSet::from(["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON", "SYS_PTRACE"])
    );

    // Downward API.
    let field = |name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref().map(|f| f.field_path.clone()))
    };
    assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(field("HOST_IPS").as_deref(), Some("status.hostIPs"));
    assert_eq!(field("HOST_IP").as_deref(), Some("status.hostIP"));
    // The route-status Lease: its holder and its namespace.
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    let value = |name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };

    // The agent reaches the hierarchy the init step mounted, read-only,
    // with later host mounts propagating; nothing else of the host's
    // cgroups or BPF file system.
    let cgroup_root = value("BALANCER_CGROUP_ROOT").expect("BALANCER_CGROUP_ROOT");
    assert_eq!(cgroup_root, target);
    let (path, mount) = host_path(c, &cgroup_root).expect("the hierarchy's hostPath");
    assert_eq!(path, target);
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    assert_eq!(mount.read_only, Some(true));
    assert!(
        host_path(c, "/sys/fs/cgroup").is_none(),
        "the container's own /sys/fs/cgroup stays"
    );
    assert!(
        pod.volumes
            .iter()
            .flatten()
            .all(|v| v.host_path.as_ref().is_none_or(|h| h.path != "/sys/fs/bpf")),
        "nothing is pinned: no bpffs"
    );
    assert!(
        value("BALANCER_ATTACH_CGROUP").is_none(),
        "attach at the hierarchy's root"
    );
    assert!(
        value("BALANCER_ADMIN").is_none(),
        "the admin port moves for a second instance"
    );

    // Pinned-connection sweeps find pods' processes through the host's
    // /proc, read-only, without sharing the host's PID namespace.
    let procfs = value("BALANCER_PROCFS").expect("BALANCER_PROCFS");
    let (path, mount) = host_path(c, &procfs).expect("the host's /proc for the agent");
    assert_eq!(path, "/proc");
    assert_eq!(mount.read_only, Some(true));
    assert!(
        value("BALANCER_PINNED_INTERVAL_SECONDS").is_none_or(|s| s != "0"),
        "sweeps on"
    );

    // Probes run in the pod and ask its own instance (its run directory
    // is a per-pod emptyDir).
    let run_dir = value("BALANCER_RUN_DIR").expect("BALANCER_RUN_DIR");
    let run_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == run_dir)
        .expect("run dir");
    let run_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == run_mount.name)
        .expect("volume");
    assert!(run_volume.empty_dir.is_some(), "per pod");
    let exec = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.exec.as_ref()?.command.clone()).expect("exec probe")
    };
    assert_eq!(exec(c.readiness_probe.as_ref()), ["balancer-agent", "probe", "ready"]);
    assert_eq!(exec(c.liveness_probe.as_ref()), ["balancer-agent", "probe", "live"]);
    assert!(
        value("BALANCER_METRICS_PORT").is_some(),
        "metrics a cluster's Prometheus can scrape"
    );

    // The drain fits in the termination grace.
    let drain: i64 = value("BALANCER_DRAIN_SECONDS")
        .expect("drain")
        .parse()
        .expect("seconds");
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(grace >= drain + 5, "grace {grace} s for a drain of {drain} s");

    // GKE admits system-node-critical pods outside kube-system only with a
    // quota for that class in their namespace.
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let (m, _) = agent();
    let quota = m.quotas.first().expect("ResourceQuota");
    assert_eq!(quota.metadata.namespace, ds.metadata.namespace);
    let scope = quota
        .spec
        .as_ref()
        .and_then(|s| s.scope_selector.as_ref()?.match_expressions.clone())
        .expect("scopeSelector");
    assert_eq!(scope[0].scope_name, "PriorityClass");
    assert_eq!(
        scope[0].values.as_deref(),
        Some(&["system-node-critical".to_owned()][..])
    );

    let res = c.resources.as_ref().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(
            res.requests.as_ref().is_some_and(|r| r.contains_key(key)),
            "request {key}"
        );
        assert!(res.limits.as_ref().is_some_and(|r| r.contains_key(key)), "limit {key}");
    }
    // Declared ports would be hostPorts on the host network, which the old
    // and new agent of a surge cannot share.
    assert!(c.ports.as_ref().is_none_or(|p| p.is_empty()));
}

fn allows(rules: Option<&Vec<PolicyRule>>, group: &str, resource: &str, verb: &str) -> bool {
    rules.into_iter().flatten().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_grants_what_the_agent_uses_and_nothing_to_change_workloads() {
    let (m, ds) = agent();
    let role = &m.cluster_roles[0];
    let allows = |group: &str, resource: &str, verb: &str| allows(role.rules.as_ref(), group, resource, verb);
    for kind in Kind::ALL {
        let (resource, group) = kind.resource().split_once('.').unwrap_or((kind.resource(), ""));
        for verb in ["get", "list", "watch"] {
            assert!(
                allows(group, resource, verb),
                "ClusterRole lacks {verb} {}",
                kind.resource()
            );
        }
    }
    // Secrets: get only, never listed nor watched.
    assert!(allows("", "secrets", "get"));
    assert!(!allows("", "secrets", "list") && !allows("", "secrets", "watch"));
    assert!(allows("gateway.networking.k8s.io", "gateways/status", "patch"));
    assert!(allows("gateway.networking.k8s.io", "gatewayclasses/status", "patch"));
    assert!(allows("events.k8s.io", "events", "create"));
    assert!(allows("events.k8s.io", "events", "patch"));
    // The route-status leader patches the status subresource.
    for verb in ["get", "patch", "update"] {
        assert!(
            allows("gateway.networking.k8s.io", "grpcroutes/status", verb),
            "ClusterRole lacks {verb} grpcroutes/status"
        );
    }
    for r in role.rules.iter().flatten() {
        for v in &r.verbs {
            assert!(
                ["get", "list", "watch", "create", "patch", "update"].contains(&v.as_str()),
                "verb {v}"
            );
        }
        // Writes only to Events and the status of routes, Gateways and
        // GatewayClasses: never to workloads, nor to any spec.
        if r.verbs
            .iter()
            .any(|v| ["create", "patch", "update"].contains(&v.as_str()))
        {
            let resources = r.resources.as_deref().unwrap_or_default();
            let status = ["grpcroutes/status", "gateways/status", "gatewayclasses/status"];
            assert!(
                resources == ["events"] || resources.iter().all(|r| status.contains(&r.as_str())),
                "writes to {resources:?}"
            );
        }
    }

    let binding = &m.bindings[0];
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().expect("name"));
    let sa = &m.service_accounts[0];
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
}

#[test]
fn the_status_lease_is_granted_in_the_agents_namespace_only() {
    let (m, ds) = agent();
    let namespace = ds.metadata.namespace.clone().expect("the DaemonSet's namespace");
    // Nothing cluster-wide about Leases.
    for r in m.cluster_roles.iter().flat_map(|r| r.rules.iter().flatten()) {
        assert!(
            !r.resources.iter().flatten().any(|x| x == "leases"),
            "Leases in a ClusterRole"
        );
    }
    assert_eq!(m.roles.len(), 1);
    let role = &m.roles[0];
    assert_eq!(role.metadata.namespace.as_ref(), Some(&namespace));
    for verb in ["get", "create", "update", "patch"] {
        assert!(
            allows(role.rules.as_ref(), "coordination.k8s.io", "leases", verb),
            "Role lacks {verb} leases"
        );
    }
    for r in role.rules.iter().flatten() {
        assert_eq!(r.resources.as_deref(), Some(&["leases".to_owned()][..]));
        assert!(r.verbs.iter().all(|v| v != "delete" && v != "deletecollection"));
    }

    assert_eq!(m.role_bindings.len(), 1);
    let binding = &m.role_bindings[0];
    assert_eq!(binding.metadata.namespace.as_ref(), Some(&namespace));
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().expect("name"));
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(
        Some(&subject.name),
        ds.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.service_account_name.as_ref())
    );
    assert_eq!(subject.namespace.as_ref(), Some(&namespace));
    // Should the Role name Leases, it must name the agent's.
    let opts = k8s::lease::LeaseOptions::new(namespace.clone(), "agent");
    assert!(
        role.rules
            .iter()
            .flatten()
            .all(|r| r.resource_names.as_ref().is_none_or(|n| n.contains(&opts.name))),
        "resourceNames must include {}",
        opts.name
    );
}

#[test]
fn the_example_splits_the_greeter_90_10_for_an_opted_in_client() {
    let m = load(&deploy_dir().join("examples"));
    let client = m
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("greeter-client"))
        .expect("client Deployment");
    let annotations = client
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    assert_eq!(
        annotations
            .and_then(|a| a.get(k8s::INJECT_ANNOTATION))
            .map(String::as_str),
        Some("enabled")
    );

    // The manifests carry no cluster IPs: give the Services some, then
    // translate with the route.
    let services = m
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut s = s.clone();
            let spec = s.spec.as_mut().expect("spec");
            spec.cluster_ip = Some(format!("10.96.0.{}", 10 + i));
            Arc::new(s)
        })
        .collect();
    let snap = Snapshot {
        services,
        routes: m.routes.into_iter().map(Arc::new).collect(),
        ..Snapshot::default()
    };
    let t = translate(&snap, |_| Vec::new());
    assert!(t.invalid_routes.is_empty(), "{:?}", t.invalid_routes);
    t.model.validate().expect("valid");
    let greeter = t.model.service("demo/greeter").expect("the parent Service is balanced");
    assert_eq!(greeter.routes.len(), 1);
    let weights: Vec<u32> = greeter.routes[0].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, vec![90, 10]);
    assert_eq!(greeter.policy.as_str(), "round-robin");
}
