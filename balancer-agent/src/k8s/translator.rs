//! The incremental translation of the cluster's Services, EndpointSlices and
//! GRPCRoutes into the model's services.
//!
//! A [`Translator`] keeps the objects by key and what each Service produced,
//! and is told about changes one object at a time. [`Translator::flush`]
//! translates again only the Services a change touched: an EndpointSlice
//! change costs the translation of its Service (and of the Services whose
//! GRPCRoutes select it), not of the cluster. Every model service is checked
//! on its own when it is translated ([`Model::validate`] on one service);
//! VIPs are kept unique across services by claims: a service one of whose
//! VIPs is also claimed by a valid service with a smaller name is left out
//! ([`ModelError::DuplicateVip`]) until that other service lets go of it.
//! Unchanged services keep their `Arc`, so the consumers of the model
//! ([`crate::model::diff`]) rebuild only what changed.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
};

use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::{
    grpcroute::{self, AttachedRoute},
    istio::{self, DestinationRule, PodLabels, VirtualService},
    slice::Slice,
    translate::{self, InvalidRoute, SERVICE_NAME_LABEL},
};
use crate::model::{self, Labels, Model, ModelError};

/// `(namespace, name)` of an object.
pub type Key = (String, String);

/// The key of a namespaced object.
pub fn key_of<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name`
/// label), if it names one.
fn owner_of(slice: &Slice) -> Option<Key> {
    let svc = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some((slice.namespace().unwrap_or_default(), svc.clone()))
}

/// Strings many endpoints share (zones, node names), stored once.
#[derive(Debug, Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(Arc::clone(&a));
        a
    }

    /// Forgets the strings nothing else holds any more.
    fn trim(&mut self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// The cluster's objects, as far as the model's services are built from
/// them, and what they were translated into.
#[derive(Debug, Default)]
pub struct Translator {
    services: HashMap<Key, Arc<Service>>,
    /// Slices by their Service, in slice-name order.
    slices_of: HashMap<Key, BTreeMap<String, Arc<Slice>>>,
    /// Which Service each slice was filed under.
    slice_owner: HashMap<Key, Key>,
    routes: Vec<Arc<GrpcRoute>>,
    routes_dirty: bool,
    /// GRPCRoutes attached to each parent Service.
    attached: HashMap<Key, Vec<AttachedRoute>>,
    /// Services the routes' attachment looked at: a change to one of them
    /// attaches the routes again.
    route_refs: HashSet<Key>,
    /// Parent Services whose routes select each backend Service.
    parents_of: HashMap<Key, HashSet<Key>>,
    invalid_routes: Vec<InvalidRoute>,
    virtual_services: Vec<Arc<VirtualService>>,
    destination_rules: Vec<Arc<DestinationRule>>,
    /// What the VirtualServices and DestinationRules give each Service.
    istio: HashMap<Key, Arc<istio::Applied>>,
    istio_reports: Vec<istio::Report>,
    /// Pods' labels, by `(namespace, name)`, for DestinationRule subsets.
    pod_labels: HashMap<Key, Labels>,
    /// Model service names each Service produced (valid or not).
    produced: HashMap<Key, Vec<Arc<str>>>,
    /// Model services that passed their own checks, by name.
    candidates: HashMap<Arc<str>, Arc<model::Service>>,
    /// Valid candidates claiming each VIP.
    claims: HashMap<SocketAddr, BTreeSet<Arc<str>>>,
    /// Left out, by model name, and why.
    dropped: BTreeMap<Arc<str>, ModelError>,
    /// `namespace/name` → the annotations of the Service that were not
    /// applied, and why.
    bad_annotations: BTreeMap<String, Vec<String>>,
    dirty: HashSet<Key>,
    interner: Interner,
    /// The published services, sorted by name.
    list: Vec<Arc<model::Service>>,
}

impl Translator {
    /// A Service was added or changed.
    pub fn service_applied(&mut self, svc: Arc<Service>) {
        let key = key_of(svc.as_ref());
        if self.services.get(&key).is_some_and(|old| Arc::ptr_eq(old, &svc)) {
            return;
        }
        self.touch_service(&key);
        self.services.insert(key, svc);
    }

    pub fn service_deleted(&mut self, key: &Key) {
        if self.services.remove(key).is_some() {
            self.touch_service(key);
        }
    }

    fn touch_service(&mut self, key: &Key) {
        if self.route_refs.contains(key) {
            self.routes_dirty = true;
        }
        self.dirty.insert(key.clone());
    }

    /// An EndpointSlice was added or changed.
    pub fn slice_applied(&mut self, slice: Arc<Slice>) {
        let key = key_of(slice.as_ref());
        let owner = owner_of(&slice);
        let same = self.slice_owner.get(&key) == owner.as_ref()
            && owner
                .as_ref()
                .and_then(|o| self.slices_of.get(o)?.get(&key.1))
                .is_some_and(|old| Arc::ptr_eq(old, &slice));
        if same {
            return;
        }
        self.slice_deleted(&key);
        if let Some(owner) = owner {
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.1.clone(), slice);
            self.slice_owner.insert(key, owner.clone());
            self.touch_endpoints(owner);
        }
    }

    pub fn slice_deleted(&mut self, key: &Key) {
        let Some(owner) = self.slice_owner.remove(key) else {
            return;
        };
        if let Some(slices) = self.slices_of.get_mut(&owner) {
            slices.remove(&key.1);
            if slices.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        self.touch_endpoints(owner);
    }

    /// The endpoints of Service `key` changed: it and the parents whose
    /// routes select it are translated again.
    fn touch_endpoints(&mut self, key: Key) {
        if let Some(parents) = self.parents_of.get(&key) {
            self.dirty.extend(parents.iter().cloned());
        }
        self.dirty.insert(key);
    }

    /// The GRPCRoutes (all of them: they are few).
    pub fn routes_replaced(&mut self, routes: Vec<Arc<GrpcRoute>>) {
        let same = routes.len() == self.routes.len() && {
            let old: HashSet<*const GrpcRoute> = self.routes.iter().map(Arc::as_ptr).collect();
            routes.iter().all(|r| old.contains(&Arc::as_ptr(r)))
        };
        if !same {
            self.routes = routes;
            self.routes_dirty = true;
        }
    }

    /// The VirtualServices and DestinationRules (all of them: they are few).
    pub fn istio_replaced(&mut self, vs: Vec<Arc<VirtualService>>, dr: Vec<Arc<DestinationRule>>) {
        let same = |a: &[Arc<VirtualService>], b: &[Arc<VirtualService>]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
        };
        let same_dr = |a: &[Arc<DestinationRule>], b: &[Arc<DestinationRule>]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
        };
        if !(same(&vs, &self.virtual_services) && same_dr(&dr, &self.destination_rules)) {
            self.virtual_services = vs;
            self.destination_rules = dr;
            self.routes_dirty = true;
        }
    }

    /// Whether a DestinationRule has subsets: pods' labels are needed.
    pub fn needs_pod_labels(&self) -> bool {
        self.destination_rules.iter().any(|dr| {
            dr.spec
                .get("subsets")
                .and_then(|s| s.as_array())
                .is_some_and(|s| !s.is_empty())
        })
    }

    /// A pod's labels were added, changed or deleted (`None`).
    pub fn pod_changed(&mut self, key: &Key, pod: Option<&PodLabels>) {
        let labels = pod.and_then(|p| p.metadata.labels.clone()).unwrap_or_default();
        let old = if labels.is_empty() {
            self.pod_labels.remove(key)
        } else {
            self.pod_labels.insert(key.clone(), labels.clone())
        };
        if old.unwrap_or_default() != labels {
            self.touch_subsets(&key.0);
        }
    }

    /// Every pod's labels, after a (re)list.
    pub fn pods_replaced(&mut self, all: Vec<Arc<PodLabels>>) {
        let labels: HashMap<Key, Labels> = all
            .iter()
            .filter_map(|p| Some((key_of(p.as_ref()), p.metadata.labels.clone().filter(|l| !l.is_empty())?)))
            .collect();
        if labels != self.pod_labels {
            let namespaces: HashSet<String> = labels
                .keys()
                .chain(self.pod_labels.keys())
                .map(|k| k.0.clone())
                .collect();
            self.pod_labels = labels;
            for ns in namespaces {
                self.touch_subsets(&ns);
            }
        }
    }

    /// The Services of `namespace` whose endpoints are marked by subsets are
    /// translated again.
    fn touch_subsets(&mut self, namespace: &str) {
        let keys: Vec<Key> = self
            .istio
            .iter()
            .filter(|(k, a)| k.0 == namespace && !a.subsets.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        self.dirty.extend(keys);
    }

    /// The Services after a (re)list: what differs from the known state is
    /// applied or deleted.
    pub fn services_replaced(&mut self, all: Vec<Arc<Service>>) {
        let keys: HashSet<Key> = all.iter().map(|s| key_of(s.as_ref())).collect();
        let gone: Vec<Key> = self.services.keys().filter(|k| !keys.contains(*k)).cloned().collect();
        for k in &gone {
            self.service_deleted(k);
        }
        for s in all {
            self.service_applied(s);
        }
    }

    /// The EndpointSlices after a (re)list.
    pub fn slices_replaced(&mut self, all: Vec<Arc<Slice>>) {
        let keys: HashSet<Key> = all.iter().map(|s| key_of(s.as_ref())).collect();
        let gone: Vec<Key> = self
            .slice_owner
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for k in &gone {
            self.slice_deleted(k);
        }
        for s in all {
            self.slice_applied(s);
        }
    }

    /// Whether a change waits for [`Translator::flush`].
    pub fn is_dirty(&self) -> bool {
        self.routes_dirty || !self.dirty.is_empty()
    }

    /// Translates what changed since the last flush.
    pub fn flush(&mut self) {
        if self.routes_dirty {
            self.attach_routes();
        }
        if self.dirty.is_empty() {
            return;
        }
        let dirty: Vec<Key> = self.dirty.drain().collect();
        let mut decide: BTreeSet<Arc<str>> = BTreeSet::new();
        for key in &dirty {
            self.retranslate(key, &mut decide);
        }
        for name in decide {
            self.decide(&name);
        }
        self.interner.trim();
    }

    /// Attaches every GRPCRoute again; the parents whose routes changed are
    /// translated again.
    fn attach_routes(&mut self) {
        self.routes_dirty = false;
        let looked = RefCell::new(HashSet::new());
        let services = &self.services;
        let lookup = |ns: &str, name: &str| {
            let key = (ns.to_owned(), name.to_owned());
            let found = services.get(&key).map(|s| s.as_ref());
            looked.borrow_mut().insert(key);
            found
        };
        let mut attached: HashMap<Key, Vec<AttachedRoute>> = HashMap::new();
        let mut invalid = Vec::new();
        for route in translate::ordered_routes(&self.routes) {
            // Every Service the route names is looked at (and so watched for
            // changes), whatever attaching finds first: the route's status
            // names them all.
            let namespace = route.namespace().unwrap_or_default();
            let _ = grpcroute::check_refs(route, lookup);
            for parent in grpcroute::service_parents(route) {
                let _ = grpcroute::check_parent(&namespace, parent, lookup);
            }
            match grpcroute::attach(route, lookup) {
                Ok(list) => {
                    for a in list {
                        attached
                            .entry((a.namespace.clone(), a.service.clone()))
                            .or_default()
                            .push(a);
                    }
                }
                Err(error) => invalid.push(InvalidRoute {
                    route: Arc::clone(route),
                    error: Arc::new(error),
                }),
            }
        }
        let routed: HashSet<Key> = attached.keys().cloned().collect();
        let translated = istio::translate(&self.virtual_services, &self.destination_rules, lookup, &routed);
        let mut parents_of: HashMap<Key, HashSet<Key>> = HashMap::new();
        let istio_backends = translated
            .services
            .iter()
            .flat_map(|(parent, a)| a.backends.iter().map(move |b| (parent, b)));
        let route_backends = attached
            .iter()
            .flat_map(|(parent, list)| list.iter().flat_map(|a| &a.backends).map(move |b| (parent, b)));
        for (parent, b) in route_backends.chain(istio_backends) {
            parents_of
                .entry((parent.0.clone(), b.service.clone()))
                .or_default()
                .insert(parent.clone());
        }
        for key in attached.keys().chain(self.attached.keys()) {
            if attached.get(key) != self.attached.get(key) {
                self.dirty.insert(key.clone());
            }
        }
        for key in translated.services.keys().chain(self.istio.keys()) {
            if translated.services.get(key) != self.istio.get(key) {
                self.dirty.insert(key.clone());
            }
        }
        self.istio = translated.services;
        self.istio_reports = translated.reports;
        self.route_refs = looked.into_inner();
        self.attached = attached;
        self.parents_of = parents_of;
        self.invalid_routes = invalid;
    }

    /// Translates Service `key` again: its old model services leave, the
    /// new ones are checked and claim their VIPs; every name whose fate may
    /// have changed goes into `decide`.
    fn retranslate(&mut self, key: &Key, decide: &mut BTreeSet<Arc<str>>) {
        for name in self.produced.remove(key).unwrap_or_default() {
            if let Some(old) = self.candidates.remove(&name) {
                for vip in &old.vips {
                    self.unclaim(*vip, &name, decide);
                }
            }
            self.dropped.remove(&name);
            decide.insert(name);
        }
        self.bad_annotations.remove(&format!("{}/{}", key.0, key.1));
        let Some(svc) = self.services.get(key).cloned() else {
            return;
        };
        let pod_labels = &self.pod_labels;
        let labels_of = |ns: &str, name: &str| pod_labels.get(&(ns.to_owned(), name.to_owned()));
        let built = translate::service(
            &svc,
            self.attached.get(key).map(Vec::as_slice).unwrap_or_default(),
            self.istio.get(key).map(Arc::as_ref),
            |ns, name| self.slices_of.get(&(ns.to_owned(), name.to_owned())),
            &labels_of,
            &mut self.interner,
        );
        for (name, problem) in built.bad_annotations {
            self.bad_annotations.entry(name).or_default().push(problem);
        }
        let mut names = Vec::with_capacity(built.services.len());
        for service in built.services {
            let name: Arc<str> = Arc::from(service.name.as_str());
            let service = Arc::new(service);
            let checked = if self.candidates.contains_key(&name) {
                Err(ModelError::DuplicateService(name.to_string()))
            } else {
                Model {
                    services: vec![Arc::clone(&service)],
                    ..Model::default()
                }
                .validate()
            };
            match checked {
                Ok(()) => {
                    for vip in &service.vips {
                        self.claims.entry(*vip).or_default().insert(Arc::clone(&name));
                        decide.extend(self.claims[vip].iter().cloned());
                    }
                    self.candidates.insert(Arc::clone(&name), service);
                }
                Err(e) => {
                    self.dropped.insert(Arc::clone(&name), e);
                }
            }
            decide.insert(Arc::clone(&name));
            names.push(name);
        }
        self.produced.insert(key.clone(), names);
    }

    fn unclaim(&mut self, vip: SocketAddr, name: &Arc<str>, decide: &mut BTreeSet<Arc<str>>) {
        if let Some(claimants) = self.claims.get_mut(&vip) {
            claimants.remove(name);
            decide.extend(claimants.iter().cloned());
            if claimants.is_empty() {
                self.claims.remove(&vip);
            }
        }
    }

    /// Publishes a candidate, or leaves it out for a VIP a valid service
    /// with a smaller name claims too.
    fn decide(&mut self, name: &Arc<str>) {
        let Some(candidate) = self.candidates.get(name).cloned() else {
            self.unpublish(name);
            return;
        };
        let taken = candidate.vips.iter().find_map(|vip| {
            let first = self.claims.get(vip)?.first()?;
            (first != name).then(|| (*vip, first.to_string()))
        });
        match taken {
            Some((vip, other)) => {
                self.dropped.insert(
                    Arc::clone(name),
                    ModelError::DuplicateVip {
                        service: name.to_string(),
                        vip,
                        other,
                    },
                );
                self.unpublish(name);
            }
            None => {
                self.dropped.remove(name);
                match self.position(name) {
                    Ok(i) if Arc::ptr_eq(&self.list[i], &candidate) => {}
                    Ok(i) => self.list[i] = candidate,
                    Err(i) => self.list.insert(i, candidate),
                }
            }
        }
    }

    fn unpublish(&mut self, name: &Arc<str>) {
        if let Ok(i) = self.position(name) {
            self.list.remove(i);
        }
    }

    /// Where `name` is (or would go) in the sorted list.
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.list.binary_search_by(|s| s.name.as_str().cmp(name))
    }

    /// The model's services, sorted by name: the same `Arc`s as before for
    /// the services no change touched.
    pub fn services(&self) -> Vec<Arc<model::Service>> {
        self.list.clone()
    }

    /// The Services the GRPCRoutes name (as parents or backends), for the
    /// routes' status.
    pub fn route_services(&self) -> Vec<Arc<Service>> {
        self.route_refs
            .iter()
            .filter_map(|k| self.services.get(k).cloned())
            .collect()
    }

    /// VirtualServices and DestinationRules not applied, or applied
    /// without some of their fields.
    pub fn istio_reports(&self) -> &[istio::Report] {
        &self.istio_reports
    }

    /// GRPCRoutes that were refused, and why.
    pub fn invalid_routes(&self) -> &[InvalidRoute] {
        &self.invalid_routes
    }

    /// `(namespace/name, problem)` of Services' annotations that were not
    /// applied.
    pub fn bad_annotations(&self) -> Vec<(String, String)> {
        self.bad_annotations
            .iter()
            .flat_map(|(k, v)| v.iter().map(|p| (k.clone(), p.clone())))
            .collect()
    }

    /// Model services left out, and why.
    pub fn dropped(&self) -> Vec<(String, ModelError)> {
        self.dropped.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
}
