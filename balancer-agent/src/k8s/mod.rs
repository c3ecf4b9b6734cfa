//! Kubernetes mode: the cluster's Services, EndpointSlices, opted-in pods and
//! GRPCRoutes, watched with kube-runtime reflectors and translated into the
//! same [`Model`] static mode reads from a file.
//!
//! - gRPC ports: named `grpc` or `grpc-*`, or `appProtocol: grpc` /
//!   `kubernetes.io/h2c`; VIPs are the Service's IPv4 ClusterIPs.
//! - Endpoints: EndpointSlices of the Service and port. Ready endpoints take
//!   new calls; serving-but-terminating ones drain; zone and node are kept.
//! - Policy: the Service annotation [`POLICY_ANNOTATION`] (with
//!   [`HASH_HEADER_ANNOTATION`] for `ring-hash`); injected faults: the
//!   `balancer.io/fault-*` annotations ([`annotations`]).
//! - Locality: the agent's node (`NODE_NAME`) and its zone (the Node's
//!   [`ZONE_LABEL`], watched); a Service's `spec.trafficDistribution`
//!   (`PreferClose`) or [`TOPOLOGY_MODE_ANNOTATION`] and
//!   `spec.internalTrafficPolicy`, endpoints' zones and zone hints (see
//!   [`crate::balance::locality`]).
//! - Routes: GRPCRoutes whose `parentRefs` name a Service (GAMMA); see
//!   [`grpcroute`]. Istio's VirtualServices and DestinationRules for
//!   Services no GRPCRoute routes, and DestinationRules' policies; see
//!   [`istio`].
//! - Gateways of balancer's classes (the GatewayClasses of its controller):
//!   every agent serves their listeners on its node's address, routed by
//!   the GRPCRoutes that name them, with the TLS Secrets they reference
//!   ([`gateway`], [`secrets`]); the elected agent writes their status and
//!   the classes' ([`gateway_status`]).
//! - Enrolled: pods on this node opted in by [`INJECT_ANNOTATION`] or their
//!   namespace's [`INJECT_LABEL`], by their cgroup v2 directories (found by
//!   scanning the node's hierarchy, see [`cgroup`]), unless a service mesh
//!   captures their connections ([`mesh`]). Pods left out get a Warning
//!   Event ([`enrollment`]). An enrolled pod's connections opened before it
//!   was enrolled are counted by the agent and, opted in with
//!   [`RECONNECT_PINNED_ANNOTATION`] or its namespace's
//!   [`RECONNECT_PINNED_LABEL`], closed ([`crate::pinned`]).
//! - The node: what keeps the agent from serving it (no cgroup v2, another
//!   connect program first) gets a Warning Event on the Node
//!   ([`node_events`]).
//! - Route status: the agent that holds a Lease ([`lease`]) writes the
//!   GRPCRoutes' `status.parents[]` ([`route_status`]); the others only
//!   balance.

mod annotations;
pub mod cgroup;
pub mod enrollment;
mod event_note;
pub mod gateway;
pub mod gateway_status;
pub mod grpcroute;
pub mod istio;
pub mod lease;
pub mod mesh;
pub mod node_events;
mod report;
mod route_filters;
pub mod route_status;
mod secrets;
pub mod slice;
mod status;
pub mod strip;
pub mod translate;
pub mod translator;
pub mod watch;

use std::{
    collections::{BTreeSet, HashSet},
    future::Future,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use gateway_api::{gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::{
    runtime::{
        events::Reporter,
        reflector::{ObjectRef, Store},
        watcher,
    },
    Api, ResourceExt,
};
use tokio::{
    sync::{mpsc, watch as tokio_watch},
    task::JoinHandle,
    time::Instant,
};

use crate::model::{Locality, Model};
pub use enrollment::{CGROUP_NOT_FOUND_REASON, NOT_ENROLLED_REASON};
pub use node_events::{FOREIGN_CONNECT_PROGRAM_REASON, NODE_UNSUPPORTED_REASON};
pub use report::{Events, INVALID_ROUTE_REASON};
pub use translate::{translate, Snapshot, Translation};
use translator::Translator;
pub use watch::Kind;

/// Pod annotation that opts a pod in (`"enabled"`) or out (`"disabled"`,
/// which wins over the namespace label).
pub const INJECT_ANNOTATION: &str = "balancer.io/inject";
/// Namespace label that opts every pod of the namespace in (`enabled`).
pub const INJECT_LABEL: &str = "balancer.io/inject";
/// Pod annotation that turns on (`"enabled"`) or off (`"disabled"`, which
/// wins over the namespace) closing the pod's connections that bypass the
/// agent, so that it re-dials through it (see [`crate::pinned`]).
pub const RECONNECT_PINNED_ANNOTATION: &str = "balancer.io/reconnect-pinned";
/// Namespace label (or annotation) that turns it on for every pod of the
/// namespace (`enabled`).
pub const RECONNECT_PINNED_LABEL: &str = "balancer.io/reconnect-pinned";
/// Service annotation choosing the balancing policy: `round-robin`
/// (default), `least-request`, `peak-ewma` or `ring-hash`.
pub const POLICY_ANNOTATION: &str = "balancer.io/policy";
/// With `ring-hash`: the request header whose value picks the endpoint.
pub const HASH_HEADER_ANNOTATION: &str = "balancer.io/hash-header";
/// Injected delay of calls (`500ms`, `2s`), for resilience testing.
pub const FAULT_DELAY_ANNOTATION: &str = "balancer.io/fault-delay";
/// The percentage of calls delayed (default 100).
pub const FAULT_DELAY_PERCENT_ANNOTATION: &str = "balancer.io/fault-delay-percent";
/// Injected abort: the gRPC status calls are answered with
/// (`UNAVAILABLE` or `14`), without reaching an endpoint.
pub const FAULT_ABORT_ANNOTATION: &str = "balancer.io/fault-abort";
/// The percentage of calls aborted (default 100).
pub const FAULT_ABORT_PERCENT_ANNOTATION: &str = "balancer.io/fault-abort-percent";
/// The `grpc-message` of injected aborts (default `fault injected`).
pub const FAULT_ABORT_MESSAGE_ANNOTATION: &str = "balancer.io/fault-abort-message";
/// Service annotation of topology aware routing (`Auto`): prefer close
/// endpoints, as `spec.trafficDistribution: PreferClose` does.
pub const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
/// Its older name (Kubernetes 1.23–1.26; `auto`).
pub const TOPOLOGY_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";
/// The Node label naming its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// How Kubernetes mode runs.
#[derive(Debug, Clone)]
pub struct K8sOptions {
    /// This node's name (`NODE_NAME` from the downward API): only its pods
    /// are enrolled.
    pub node_name: String,
    /// Where the node's cgroup v2 hierarchy is mounted in the agent's mount
    /// namespace (in a DaemonSet the host's, e.g. `/run/balancer/cgroupv2`,
    /// not the container's own `/sys/fs/cgroup`); pods' cgroups are looked
    /// up below it.
    pub cgroup_root: PathBuf,
    /// How many levels below `cgroup_root` pods' cgroups are looked for.
    pub cgroup_max_depth: usize,
    /// A pod whose cgroup is not in the kept index walks the hierarchy
    /// again, at most this often.
    pub cgroup_rescan: Duration,
    /// An opted-in pod whose cgroup is still missing this long after the
    /// agent first saw it wanting enrollment gets a `CgroupNotFound` Event
    /// and is counted in [`Status::pods_cgroup_missing`].
    pub cgroup_missing_after: Duration,
    /// Changes closer together than this are published as one model (a
    /// burst, such as a rollout touching many EndpointSlices, becomes one
    /// update; each change alone costs only what it touches).
    pub debounce: Duration,
    /// Recompute this often even without API changes (a pod's cgroup
    /// directory can appear after the pod's last update).
    pub resync: Duration,
    /// `reportingController` of the Events the status leader publishes.
    pub controller: String,
    /// `reportingInstance` of those Events (the agent's pod name; default:
    /// the node name).
    pub instance: Option<String>,
    /// The Lease that elects the one agent writing GRPCRoute status; `None`:
    /// this agent never writes status.
    pub lease: Option<lease::LeaseOptions>,
    /// Where this agent serves the listeners of balancer's Gateways (the
    /// node's address).
    pub gateway_ip: IpAddr,
    /// How often the Secrets Gateways reference are read again (a renewed
    /// certificate is served within this time).
    pub secret_refresh: Duration,
}

impl K8sOptions {
    /// Who the agent's Events say reported them.
    pub fn reporter(&self) -> Reporter {
        Reporter {
            controller: self.controller.clone(),
            instance: self.instance.clone().or_else(|| Some(self.node_name.clone())),
        }
    }

    pub fn new(node_name: impl Into<String>, cgroup_root: impl Into<PathBuf>) -> Self {
        K8sOptions {
            node_name: node_name.into(),
            cgroup_root: cgroup_root.into(),
            cgroup_max_depth: cgroup::DEFAULT_MAX_DEPTH,
            cgroup_rescan: Duration::from_secs(1),
            cgroup_missing_after: Duration::from_secs(10),
            debounce: Duration::from_millis(10),
            resync: Duration::from_secs(10),
            controller: route_status::CONTROLLER_NAME.to_owned(),
            instance: None,
            lease: None,
            gateway_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            secret_refresh: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("NODE_NAME is empty: set it from the downward API (spec.nodeName)")]
    NoNodeName,
    #[error(
        "forbidden: the agent's service account may not {verb} {resource} cluster-wide; \
         grant it in the ClusterRole (deploy/rbac.yaml) ({message})"
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        message: String,
    },
    #[error("the Kubernetes watchers stopped")]
    WatchersStopped,
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG)")]
    Client(#[source] kube::Error),
}

/// What Kubernetes mode reports besides the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Every watcher has listed once and the first model is published.
    pub synced: bool,
    /// Opted-in pods whose cgroup has been missing for longer than
    /// [`K8sOptions::cgroup_missing_after`].
    pub pods_cgroup_missing: u64,
    /// Routing objects not applied as written, one line each: GRPCRoutes
    /// refused, VirtualServices and DestinationRules refused or applied
    /// without some fields.
    pub reports: Vec<String>,
}

/// A client from the in-cluster configuration or `KUBECONFIG`.
pub async fn client() -> Result<kube::Client, K8sError> {
    kube::Client::try_default().await.map_err(K8sError::Client)
}

struct Stores {
    services: Store<Service>,
    slices: Store<slice::Slice>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    routes: Store<GrpcRoute>,
    /// This node alone (for its zone).
    nodes: Store<Node>,
    virtual_services: Store<istio::VirtualService>,
    destination_rules: Store<istio::DestinationRule>,
    /// Every pod's labels, once a DestinationRule has subsets.
    pod_labels: Option<Store<istio::PodLabels>>,
    gateways: Store<Gateway>,
    gateway_classes: Store<GatewayClass>,
}

impl Stores {
    /// Where this agent runs: its node, and the zone its Node object names.
    fn locality(&self, node_name: &str) -> Locality {
        let zone = self.nodes.get(&ObjectRef::new(node_name)).and_then(|n| {
            n.labels()
                .get(ZONE_LABEL)
                .filter(|z| !z.is_empty())
                .map(|z| z.as_str().into())
        });
        Locality {
            zone,
            node: Some(node_name.into()),
        }
    }
}

impl Stores {
    /// Tells the translator what the store of `kind` now holds for `key`.
    fn changed(&self, translator: &mut Translator, kind: Kind, key: &translator::Key) {
        match kind {
            Kind::Services => match self.services.get(&ObjectRef::new(&key.1).within(&key.0)) {
                Some(svc) => translator.service_applied(svc),
                None => translator.service_deleted(key),
            },
            Kind::EndpointSlices => match self.slices.get(&ObjectRef::new(&key.1).within(&key.0)) {
                Some(slice) => translator.slice_applied(slice),
                None => translator.slice_deleted(key),
            },
            Kind::GrpcRoutes => translator.routes_replaced(self.routes.state()),
            Kind::VirtualServices | Kind::DestinationRules => self.istio(translator),
            Kind::PodLabels => {
                let pod = self
                    .pod_labels
                    .as_ref()
                    .and_then(|s| s.get(&ObjectRef::new(&key.1).within(&key.0)));
                translator.pod_changed(key, pod.as_deref());
            }
            // Enrollment, locality and gateways are worked out again at
            // every publish.
            Kind::Pods | Kind::Namespaces | Kind::Nodes | Kind::Gateways | Kind::GatewayClasses => {}
        }
    }

    fn istio(&self, translator: &mut Translator) {
        translator.istio_replaced(self.virtual_services.state(), self.destination_rules.state());
    }

    /// A (re)list of `kind` completed: the translator takes its whole state.
    fn relisted(&self, translator: &mut Translator, kind: Kind) {
        match kind {
            Kind::Services => translator.services_replaced(self.services.state()),
            Kind::EndpointSlices => translator.slices_replaced(self.slices.state()),
            Kind::GrpcRoutes => translator.routes_replaced(self.routes.state()),
            Kind::VirtualServices | Kind::DestinationRules => self.istio(translator),
            Kind::PodLabels => {
                if let Some(s) = &self.pod_labels {
                    translator.pods_replaced(s.state());
                }
            }
            Kind::Pods | Kind::Namespaces | Kind::Nodes | Kind::Gateways | Kind::GatewayClasses => {}
        }
    }
}

/// Aborts the reflector tasks when `run` ends or is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Watches the cluster and publishes a new [`Model`] on `tx` whenever it
/// changes (changes closer than `opts.debounce` are published together).
/// `status` turns `synced` once every reflector has completed its first
/// list and the first model is published, and counts the opted-in pods
/// without a cgroup. API server failures are retried with backoff while the
/// last known state stays published.
///
/// Runs until an unrecoverable error: a missing RBAC permission at startup
/// ([`K8sError::Forbidden`], naming the verb and resource). Drop the future
/// to stop it.
pub async fn run(
    client: kube::Client,
    opts: K8sOptions,
    tx: tokio_watch::Sender<Arc<Model>>,
    status: tokio_watch::Sender<Status>,
) -> Result<(), K8sError> {
    run_until(client, opts, tx, status, std::future::pending()).await
}

/// How long a stopping agent waits for its Lease to be released.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// [`run`] until `stop` completes; then, if this agent leads the route-status
/// election, it releases the Lease (waiting at most 2 s) so that another
/// agent takes over at once, and returns `Ok(())`.
pub async fn run_until(
    client: kube::Client,
    opts: K8sOptions,
    tx: tokio_watch::Sender<Arc<Model>>,
    status: tokio_watch::Sender<Status>,
    stop: impl Future<Output = ()>,
) -> Result<(), K8sError> {
    if opts.node_name.is_empty() {
        return Err(K8sError::NoNodeName);
    }
    let (sig_tx, mut signals) = mpsc::unbounded_channel();
    // Lists are served from the API server's watch cache (resourceVersion
    // 0), not quorum reads from etcd: thousands of agents start at once.
    let all = watcher::Config::default().any_semantic();
    let on_node = all.clone().fields(&format!("spec.nodeName={}", opts.node_name));
    let (services, t1) = watch::spawn(
        Kind::Services,
        Api::all(client.clone()),
        all.clone(),
        strip::service,
        sig_tx.clone(),
    );
    let (slices, t2) = watch::spawn(
        Kind::EndpointSlices,
        Api::all(client.clone()),
        all.clone(),
        strip::endpoint_slice,
        sig_tx.clone(),
    );
    let (pods, t3) = watch::spawn(
        Kind::Pods,
        Api::all(client.clone()),
        on_node,
        strip::pod,
        sig_tx.clone(),
    );
    let (namespaces, t4) = watch::spawn(
        Kind::Namespaces,
        Api::all(client.clone()),
        all.clone(),
        strip::namespace,
        sig_tx.clone(),
    );
    let (routes, t5) = watch::spawn(
        Kind::GrpcRoutes,
        Api::all(client.clone()),
        all.clone(),
        strip::grpc_route,
        sig_tx.clone(),
    );
    let (virtual_services, t7) = watch::spawn(
        Kind::VirtualServices,
        Api::all(client.clone()),
        all.clone(),
        istio::object::strip_virtual_service,
        sig_tx.clone(),
    );
    let (destination_rules, t8) = watch::spawn(
        Kind::DestinationRules,
        Api::all(client.clone()),
        all.clone(),
        istio::object::strip_destination_rule,
        sig_tx.clone(),
    );
    let (gateways, t9) = watch::spawn(
        Kind::Gateways,
        Api::all(client.clone()),
        all.clone(),
        strip::gateway,
        sig_tx.clone(),
    );
    let (gateway_classes, t11) = watch::spawn(
        Kind::GatewayClasses,
        Api::all(client.clone()),
        all.clone(),
        strip::gateway_class,
        sig_tx.clone(),
    );
    let this_node = all.clone().fields(&format!("metadata.name={}", opts.node_name));
    let (nodes, t6) = watch::spawn(
        Kind::Nodes,
        Api::all(client.clone()),
        this_node,
        strip::node,
        sig_tx.clone(),
    );
    let (wanted_secrets, wanted) = tokio_watch::channel(BTreeSet::new());
    let (mut secrets, t10) = secrets::spawn(client.clone(), wanted, opts.secret_refresh);
    let mut tasks = Tasks(vec![t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11]);
    let mut stores = Stores {
        services,
        slices,
        pods,
        namespaces,
        routes,
        nodes,
        virtual_services,
        destination_rules,
        pod_labels: None,
        gateways,
        gateway_classes,
    };
    // Listed before the first model: every kind of ALL, and pods' labels
    // once they are watched.
    let mut required: HashSet<Kind> = Kind::ALL.into_iter().collect();

    let events = report::Events::new(client.clone(), opts.reporter());
    let election = opts
        .lease
        .clone()
        .map(|lease| status::Election::spawn(client.clone(), lease, opts.reporter()));
    let mut stop = std::pin::pin!(stop);
    let mut translator = Translator::default();
    let mut route_log = report::RouteLog::default();
    let mut istio_reports = istio::report::Reports::new(client.clone(), opts.reporter());
    let mut cgroups = cgroup::CgroupFinder::new(&opts.cgroup_root, opts.cgroup_max_depth, opts.cgroup_rescan);
    let mut enrollment = enrollment::Tracker::new(opts.cgroup_missing_after);
    let mut warned = Warned::default();
    let mut synced: HashSet<Kind> = HashSet::new();
    let mut failing: HashSet<Kind> = HashSet::new();
    let mut is_ready = false;
    // GatewayClasses cannot be read (no permission, no CRD): the class
    // deploy/gateway/ ships is taken for balancer's.
    let mut classes_unreadable = false;
    let mut deadline: Option<Instant> = None;
    let mut resync = tokio::time::interval(opts.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let publish_now = tokio::select! {
            sig = signals.recv() => {
                let Some(sig) = sig else {
                    return Err(K8sError::WatchersStopped);
                };
                match sig {
                    watch::Signal::Changed(kind, key) => {
                        if failing.remove(&kind) {
                            tracing::info!(resource = kind.resource(), "watch resumed");
                        }
                        classes_unreadable &= kind != Kind::GatewayClasses;
                        stores.changed(&mut translator, kind, &key);
                    }
                    watch::Signal::Synced(kind) => {
                        if failing.remove(&kind) {
                            tracing::info!(resource = kind.resource(), "watch resumed");
                        }
                        classes_unreadable &= kind != Kind::GatewayClasses;
                        stores.relisted(&mut translator, kind);
                        if synced.insert(kind) {
                            tracing::debug!(resource = kind.resource(), "initial list complete");
                        }
                    }
                    watch::Signal::Failed { kind, failure, error } => {
                        match failure {
                            watch::Failure::Forbidden { .. } | watch::Failure::NotServed if kind == Kind::Nodes => {
                                if failing.insert(kind) {
                                    tracing::warn!(%error,
                                        "cannot read this node's Node object (grant get/list/watch on nodes, \
                                         deploy/rbac.yaml): its zone is unknown, so services that prefer \
                                         close endpoints prefer this node's only");
                                }
                                synced.insert(kind);
                            }
                            watch::Failure::NotServed | watch::Failure::Forbidden { .. } if kind == Kind::Gateways => {
                                if failing.insert(kind) {
                                    tracing::warn!(%error,
                                        "Gateways (gateway.networking.k8s.io/v1) cannot be watched: \
                                         no gateway listeners until the CRD is installed and readable"
                                    );
                                }
                                // No CRD (or no permission): no Gateways, a complete state.
                                synced.insert(kind);
                            }
                            watch::Failure::NotServed | watch::Failure::Forbidden { .. } if kind == Kind::GatewayClasses => {
                                if failing.insert(kind) {
                                    tracing::warn!(%error,
                                        "GatewayClasses (gateway.networking.k8s.io/v1) cannot be watched \
                                         (grant get/list/watch on gatewayclasses, deploy/rbac.yaml): the class named \
                                         `balancer` is taken for balancer's, and no class status is written"
                                    );
                                }
                                classes_unreadable = true;
                                synced.insert(kind);
                            }
                            watch::Failure::NotServed | watch::Failure::Forbidden { .. }
                                if matches!(kind, Kind::VirtualServices | Kind::DestinationRules | Kind::PodLabels) =>
                            {
                                if failing.insert(kind) {
                                    match failure {
                                        watch::Failure::NotServed => tracing::info!(resource = kind.resource(),
                                            "not installed: Istio's traffic rules are not read until its CRDs are"),
                                        _ => tracing::warn!(resource = kind.resource(), %error,
                                            "cannot read Istio's traffic rules (grant get/list/watch, deploy/rbac.yaml); \
                                             they are not applied"),
                                    }
                                }
                                // Nothing readable means nothing to apply: a complete (empty) state.
                                synced.insert(kind);
                            }
                            watch::Failure::Forbidden { verb } if !is_ready => {
                                return Err(K8sError::Forbidden { verb, resource: kind.resource(), message: error });
                            }
                            watch::Failure::NotServed if kind == Kind::GrpcRoutes => {
                                if failing.insert(kind) {
                                    tracing::warn!(
                                        "GRPCRoute (gateway.networking.k8s.io/v1) is not installed: \
                                         routing by GRPCRoute is off until its CRD is installed"
                                    );
                                }
                                // No CRD means no routes: a complete (empty) state.
                                synced.insert(kind);
                            }
                            watch::Failure::Gone => {
                                tracing::debug!(resource = kind.resource(), "watch expired; relisting");
                            }
                            _ => {
                                if failing.insert(kind) {
                                    tracing::warn!(resource = kind.resource(), %error, "watch failed; retrying with backoff, keeping the last known state");
                                } else {
                                    tracing::debug!(resource = kind.resource(), %error, "watch still failing");
                                }
                            }
                        }
                    }
                }
                if stores.pod_labels.is_none() && translator.needs_pod_labels() {
                    // A DestinationRule has subsets: every pod's labels are
                    // needed to find the subsets' endpoints.
                    let (store, task) = watch::spawn(
                        Kind::PodLabels,
                        Api::all(client.clone()),
                        all.clone(),
                        istio::object::strip_pod_labels,
                        sig_tx.clone(),
                    );
                    stores.pod_labels = Some(store);
                    tasks.0.push(task);
                    required.insert(Kind::PodLabels);
                }
                if !is_ready {
                    // The first model goes out as soon as everything is listed.
                    required.iter().all(|k| synced.contains(k))
                } else {
                    let due = Instant::now() + opts.debounce;
                    deadline = Some(deadline.map_or(due, |d| d.min(due)));
                    false
                }
            }
            r = secrets.changed() => {
                if r.is_err() {
                    return Err(K8sError::WatchersStopped);
                }
                if is_ready {
                    let due = Instant::now() + opts.debounce;
                    deadline = Some(deadline.map_or(due, |d| d.min(due)));
                }
                false
            }
            () = sleep_until(deadline) => {
                deadline = None;
                true
            }
            _ = resync.tick(), if is_ready => true,
            () = &mut stop => {
                if let Some(election) = election {
                    election.stop(RELEASE_WAIT).await;
                }
                return Ok(());
            }
        };
        if !publish_now {
            continue;
        }
        // Only what changed is translated again; enrollment (this node's
        // pods) is worked out again each time.
        translator.flush();
        let pods = stores.pods.state();
        let mut t = Translation {
            invalid_routes: translator.invalid_routes().to_vec(),
            istio_reports: translator.istio_reports().to_vec(),
            bad_annotations: translator.bad_annotations(),
            dropped: translator.dropped(),
            ..Translation::default()
        };
        t.model.services = translator.services();
        t.model.locality = stores.locality(&opts.node_name);
        let (classes, class_names) = if classes_unreadable {
            (Vec::new(), gateway::assumed_classes())
        } else {
            let ours = gateway::our_classes(&stores.gateway_classes.state());
            let names = gateway::class_names(&ours);
            (ours, names)
        };
        let gateways = gateway::ours(stores.gateways.state(), &class_names);
        let refs = gateway::secret_refs(&gateways);
        let read = Arc::clone(&secrets.borrow_and_update());
        // Until the Secrets asked for are read, a listener waiting for one
        // is not served, and nothing is said about it in the status.
        let secrets_read = read.asked == refs;
        wanted_secrets.send_if_modified(|w| {
            let changed = *w != refs;
            *w = refs;
            changed
        });
        let gw = {
            let balanced: HashSet<&str> = t.model.services.iter().map(|s| s.name.as_str()).collect();
            let lookup = |ns: &str, name: &str| stores.services.get(&ObjectRef::new(name).within(ns));
            let labels = |ns: &str| {
                stores
                    .namespaces
                    .get(&ObjectRef::new(ns))
                    .map(|n| n.metadata.labels.clone().unwrap_or_default())
            };
            gateway::translate(
                &gateways,
                &stores.routes.state(),
                &lookup,
                &balanced,
                &read.pem,
                &labels,
                opts.gateway_ip,
            )
        };
        t.model.gateways = gw.gateways;
        if secrets_read {
            warned.log_gateways(&gw.skipped_rules, &gw.verdicts);
        }
        translate::enroll(
            &mut t,
            &pods,
            |name| stores.namespaces.get(&ObjectRef::new(name)),
            |pod| cgroups.find(&cgroup::PodKeys::of(pod)),
        );
        warned.log(&t);
        route_log.log(&t.invalid_routes);
        // One agent posts the Events: the route-status leader, or this one
        // when none is elected.
        let speaks = election.as_ref().is_none_or(status::Election::is_leading);
        istio_reports.update(&t.istio_reports, speaks);
        let reports = report_lines(&t);
        let searched = enrollment::Searched {
            root: cgroups.root(),
            max_depth: cgroups.max_depth(),
        };
        let outcome = enrollment.update(&pods, &t, Instant::now(), searched);
        for notice in &outcome.notices {
            events.pod(notice);
        }
        status.send_if_modified(|s| {
            let changed = s.pods_cgroup_missing != outcome.cgroup_missing || s.reports != reports;
            s.pods_cgroup_missing = outcome.cgroup_missing;
            s.reports = reports;
            changed
        });
        if let Some(until) = outcome.pending_until {
            // A pod waits for its cgroup: look again soon (the finder walks
            // at most every `cgroup_rescan`; never sooner than a debounce)
            // until its threshold has passed.
            let next = (Instant::now() + opts.cgroup_rescan.max(opts.debounce)).min(until);
            deadline = Some(deadline.map_or(next, |d| d.min(next)));
        }
        if let Some(election) = &election {
            election.offer(status::StatusInput {
                routes: stores.routes.state(),
                services: translator.route_services(),
                invalid: t.invalid_routes.clone(),
            });
            if secrets_read {
                let routes = gateway::routes_of(&gateways, &stores.routes.state());
                election.offer_gateways(gateway_status::Input {
                    classes,
                    gateways,
                    verdicts: gw.verdicts,
                    routes,
                    skipped: gw.skipped_rules,
                    unattached: gw.unattached,
                    node_ip: opts.gateway_ip,
                });
            }
        }
        // The translator checked every service and kept VIPs unique.
        debug_assert_eq!(t.model.validate(), Ok(()));
        let model = t.model;
        let changed = tx.send_if_modified(|cur| {
            if **cur == model {
                false
            } else {
                *cur = Arc::new(model);
                true
            }
        });
        if changed {
            // Every EndpointSlice change publishes: info only for the first.
            let m = tx.borrow();
            if is_ready {
                tracing::debug!(
                    services = m.services.len(),
                    enrolled = m.enrolled.len(),
                    "model published"
                );
            } else {
                tracing::info!(
                    services = m.services.len(),
                    enrolled = m.enrolled.len(),
                    "model published"
                );
            }
        }
        if !is_ready {
            is_ready = true;
            status.send_modify(|s| s.synced = true);
            tracing::info!("Kubernetes state synced");
        }
    }
}

/// One line per routing object not applied as written.
fn report_lines(t: &Translation) -> Vec<String> {
    let routes = t.invalid_routes.iter().map(|i| {
        format!(
            "GRPCRoute {}/{}: not applied: {}",
            i.route.namespace().unwrap_or_default(),
            i.route.name_any(),
            i.error
        )
    });
    routes.chain(t.istio_reports.iter().map(istio::Report::line)).collect()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Problems already logged, so that a recomputation does not repeat them.
#[derive(Default)]
struct Warned {
    policies: HashSet<(String, String)>,
    dropped: HashSet<String>,
    gateways: HashSet<String>,
}

impl Warned {
    /// Gateway rules left out and listeners not served, once each.
    fn log_gateways(&mut self, skipped: &[(String, String)], verdicts: &[gateway::GatewayVerdict]) {
        let mut now: HashSet<String> = skipped
            .iter()
            .map(|(r, why)| format!("GRPCRoute rule {r}: {why}"))
            .collect();
        for v in verdicts {
            for l in v.listeners.iter().filter(|l| !l.programmed()) {
                let why = if l.accepted.ok { &l.resolved_refs } else { &l.accepted };
                now.insert(format!(
                    "Gateway {}/{} listener {}: {} ({})",
                    v.key.0, v.key.1, l.name, why.message, why.reason
                ));
            }
        }
        for problem in now.difference(&self.gateways) {
            tracing::warn!(%problem, "gateway configuration not served");
        }
        self.gateways = now;
    }

    fn log(&mut self, t: &Translation) {
        let policies: HashSet<_> = t.bad_annotations.iter().cloned().collect();
        for (service, problem) in policies.difference(&self.policies) {
            tracing::warn!(%service, %problem, "Service annotation not applied");
        }
        self.policies = policies;
        let dropped: HashSet<String> = t.dropped.iter().map(|(s, e)| format!("{s}: {e}")).collect();
        for d in dropped.difference(&self.dropped) {
            tracing::warn!(service = %d, "service left out of the model");
        }
        self.dropped = dropped;
    }
}
