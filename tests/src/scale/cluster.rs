//! The synthetic cluster of the scale bench: S Services with 10 endpoints
//! each, shaped like what a real API server returns (labels, owner
//! references, one `managedFields` entry, endpoint conditions, node, zone,
//! target pod), plus the one real greeter Service, and the EndpointSlice
//! changes of a churn.
//!
//! Addresses: Service cluster IPs from 10.96.0.0/12 (the greeter's is
//! 10.96.0.10, the others from 10.97.0.0 on), endpoints from 10.128.0.0/10.
//! Nothing routes either in the bench's namespaces; only the greeter's
//! endpoints are real (greeter servers on the node's loopback).

use std::{
    io::{self, BufWriter, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use serde_json::{json, Value};

/// The node the agent runs on.
pub const NODE: &str = "node-a";
/// The namespace of the greeter Service and the client pod.
pub const DEMO_NAMESPACE: &str = "demo";
/// The greeter Service's name.
pub const GREETER: &str = "greeter";
/// The greeter Service's VIP.
pub const GREETER_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 8000);
/// The port of every Service's first gRPC port.
pub const SERVICE_PORT: u16 = 8000;
/// The endpoints' port of the first gRPC port.
pub const TARGET_PORT: u16 = 50051;
/// Services per namespace.
pub const PER_NAMESPACE: usize = 100;
/// The names of the gRPC ports of a Service with several.
const PORT_NAMES: [&str; 3] = ["grpc", "grpc-admin", "grpc-health"];
/// The zones endpoints are spread over.
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// A fixed time for every object (the server keeps what it is given).
const CREATED: &str = "2025-01-01T00:00:00Z";

/// How the cluster looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    /// Services, the greeter included.
    pub services: usize,
    /// Endpoints per synthetic Service (one EndpointSlice each).
    pub endpoints: usize,
    /// Every n-th synthetic Service has three gRPC ports instead of one
    /// (each port is a VIP of its own in the kernel map).
    pub multi_port_every: Option<usize>,
}

impl Shape {
    /// S Services of 10 endpoints, one gRPC port each.
    pub fn plain(services: usize) -> Shape {
        Shape {
            services: services.max(1),
            endpoints: 10,
            multi_port_every: None,
        }
    }

    fn synthetic(&self) -> usize {
        self.services - 1
    }

    fn ports_of(&self, i: usize) -> usize {
        match self.multi_port_every {
            Some(n) if n > 0 && i % n == n - 1 => PORT_NAMES.len(),
            _ => 1,
        }
    }

    /// Service VIPs (address and port) the cluster has: the ones a
    /// complete kernel map holds.
    pub fn vips(&self) -> usize {
        1 + (0..self.synthetic()).map(|i| self.ports_of(i)).sum::<usize>()
    }

    /// Endpoints in the cluster (the greeter's one included).
    pub fn total_endpoints(&self) -> usize {
        self.synthetic() * self.endpoints + 1
    }
}

/// The synthetic Services and what a churn changed so far.
pub struct Cluster {
    pub shape: Shape,
    /// The current endpoint addresses of each synthetic Service.
    endpoints: Vec<Vec<Ipv4Addr>>,
    /// Addresses handed out to replaced endpoints so far.
    fresh: u32,
    rng: Rng,
}

/// xorshift64*: deterministic, good enough to pick Services.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn offset(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

fn namespace_of(i: usize) -> String {
    format!("scale-{:03}", i / PER_NAMESPACE)
}

fn name_of(i: usize) -> String {
    format!("svc-{i:05}")
}

/// A pod name as a ReplicaSet makes them.
fn pod_name(service: &str, ip: Ipv4Addr) -> String {
    format!("{service}-6d4cf56db6-{:05x}", u32::from(ip) & 0xf_ffff)
}

/// A UUID-shaped id from two numbers.
fn uid(kind: u32, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

impl Cluster {
    pub fn new(shape: Shape, seed: u64) -> Cluster {
        let base = Ipv4Addr::new(10, 128, 0, 0);
        let endpoints = (0..shape.synthetic())
            .map(|i| {
                (0..shape.endpoints)
                    .map(|k| offset(base, (i * shape.endpoints + k) as u32))
                    .collect()
            })
            .collect();
        Cluster {
            shape,
            endpoints,
            fresh: 0,
            rng: Rng(seed | 1),
        }
    }

    /// Synthetic Service `i`'s VIP.
    pub fn vip(i: usize) -> Ipv4Addr {
        offset(Ipv4Addr::new(10, 97, 0, 0), i as u32)
    }

    fn port_names(&self, i: usize) -> &'static [&'static str] {
        &PORT_NAMES[..self.shape.ports_of(i)]
    }

    /// Every object of the cluster but the greeter's and the pods, in the
    /// order to apply them (namespaces, Services, EndpointSlices), written
    /// as JSON lines to `path`.
    pub fn write_objects(&self, path: &Path) -> io::Result<usize> {
        let mut out = BufWriter::new(std::fs::File::create(path)?);
        let mut n = 0;
        let mut line = |v: &Value| -> io::Result<()> {
            serde_json::to_writer(&mut out, v).map_err(io::Error::other)?;
            out.write_all(b"\n")?;
            n += 1;
            Ok(())
        };
        let namespaces = self.shape.synthetic().div_ceil(PER_NAMESPACE);
        for ns in 0..namespaces {
            line(&namespace(&namespace_of(ns * PER_NAMESPACE)))?;
        }
        for i in 0..self.shape.synthetic() {
            line(&service(
                &namespace_of(i),
                &name_of(i),
                Self::vip(i),
                self.port_names(i),
                i as u64,
            ))?;
        }
        for i in 0..self.shape.synthetic() {
            line(&self.slice(i))?;
        }
        out.flush()?;
        Ok(n)
    }

    fn slice(&self, i: usize) -> Value {
        let ports: Vec<(&str, u16)> = self
            .port_names(i)
            .iter()
            .enumerate()
            .map(|(k, name)| (*name, TARGET_PORT + k as u16))
            .collect();
        endpoint_slice(
            &namespace_of(i),
            &name_of(i),
            i as u64,
            &ports,
            &self.endpoints[i],
            |k| format!("node-{:02}", (i + k) % 50),
        )
    }

    /// One churn step: a random synthetic Service has one of its endpoints
    /// replaced (a pod rescheduled with a new address). Returns its new
    /// EndpointSlice; `None` if there is no synthetic Service.
    pub fn churn(&mut self) -> Option<Value> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n);
        let k = self.rng.below(self.endpoints[i].len());
        self.fresh += 1;
        self.endpoints[i][k] = offset(Ipv4Addr::new(10, 160, 0, 0), self.fresh);
        Some(self.slice(i))
    }
}

fn managed_fields(manager: &str, api_version: &str, fields: Value) -> Value {
    json!([{"manager": manager, "operation": "Update", "apiVersion": api_version, "time": CREATED,
            "fieldsType": "FieldsV1", "fieldsV1": fields}])
}

/// A Namespace.
pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "creationTimestamp": CREATED,
                        "labels": {"kubernetes.io/metadata.name": name}},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// A ClusterIP Service with the gRPC ports `ports` (8000, 8001, ... to
/// 50051, 50052, ...).
pub fn service(namespace: &str, name: &str, ip: Ipv4Addr, ports: &[&str], n: u64) -> Value {
    let ip = ip.to_string();
    let spec_ports: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(k, p)| {
            json!({"name": p, "port": SERVICE_PORT + k as u16, "protocol": "TCP",
                   "targetPort": TARGET_PORT + k as u16})
        })
        .collect();
    let fields = json!({
        "f:metadata": {"f:labels": {".": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {}}},
        "f:spec": {"f:internalTrafficPolicy": {}, "f:ports": {".": {}}, "f:selector": {}, "f:sessionAffinity": {},
                   "f:type": {}}});
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": namespace, "name": name, "uid": uid(1, n), "creationTimestamp": CREATED,
                        "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "scale-bench"},
                        "managedFields": managed_fields("kubectl-client-side-apply", "v1", fields)},
           "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
                    "sessionAffinity": "None", "selector": {"app.kubernetes.io/name": name},
                    "ports": spec_ports},
           "status": {"loadBalancer": {}}})
}

/// The EndpointSlice of Service `name` as the EndpointSlice controller
/// writes it: one endpoint per address, ready, on the node `node_of(k)`.
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    n: u64,
    ports: &[(&str, u16)],
    addresses: &[Ipv4Addr],
    node_of: impl Fn(usize) -> String,
) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .enumerate()
        .map(|(k, ip)| {
            json!({"addresses": [ip.to_string()],
                   "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": node_of(k), "zone": ZONES[k % ZONES.len()],
                   "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod_name(name, *ip),
                                 "uid": uid(3, u64::from(u32::from(*ip)))}})
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(p, port)| json!({"name": p, "port": port, "protocol": "TCP"}))
        .collect();
    let fields = json!({
        "f:addressType": {}, "f:endpoints": {}, "f:ports": {},
        "f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:endpointslice.kubernetes.io/managed-by": {},
                                                          "f:kubernetes.io/service-name": {}},
                       "f:ownerReferences": {".": {}, "k:{\"uid\":\"\"}": {}}}});
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"namespace": namespace, "name": format!("{name}-x7k2p"), "generateName": format!("{name}-"),
                        "uid": uid(2, n), "creationTimestamp": CREATED,
                        "labels": {"kubernetes.io/service-name": name,
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                                   "app.kubernetes.io/name": name},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": uid(1, n),
                                             "controller": true, "blockOwnerDeletion": true}],
                        "managedFields": managed_fields("kube-controller-manager", "discovery.k8s.io/v1", fields)},
           "addressType": "IPv4", "endpoints": endpoints, "ports": ports})
}

/// The greeter Service (VIP [`GREETER_VIP`]).
pub fn greeter_service() -> Value {
    service(DEMO_NAMESPACE, GREETER, *GREETER_VIP.ip(), &["grpc"], u64::MAX >> 16)
}

/// The greeter's EndpointSlice: the backends at `backends` (in the node's
/// namespace).
pub fn greeter_slice(backends: &[SocketAddrV4]) -> Value {
    let port = backends.first().map_or(TARGET_PORT, SocketAddrV4::port);
    let ips: Vec<Ipv4Addr> = backends.iter().map(|b| *b.ip()).collect();
    endpoint_slice(DEMO_NAMESPACE, GREETER, u64::MAX >> 16, &[("grpc", port)], &ips, |_| {
        NODE.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_count_every_grpc_port() {
        assert_eq!(Shape::plain(1000).vips(), 1000);
        let multi = Shape {
            services: 21,
            endpoints: 10,
            multi_port_every: Some(10),
        };
        // 20 synthetic, two of them (9 and 19) with three ports; the greeter.
        assert_eq!(multi.vips(), 1 + 18 + 2 * 3);
        assert_eq!(multi.total_endpoints(), 201);
    }

    #[test]
    fn objects_are_namespaces_services_then_slices() {
        let shape = Shape::plain(251);
        let cluster = Cluster::new(shape, 7);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("objects.jsonl");
        let n = cluster.write_objects(&path).expect("write");
        assert_eq!(n, 3 + 250 + 250);
        let text = std::fs::read_to_string(&path).expect("read");
        let objects: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(objects[0]["kind"], "Namespace");
        assert_eq!(objects[3]["kind"], "Service");
        assert_eq!(objects[3]["spec"]["clusterIP"], "10.97.0.0");
        assert_eq!(objects[3]["spec"]["ports"][0]["name"], "grpc");
        let slice = &objects[253];
        assert_eq!(slice["kind"], "EndpointSlice");
        assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "svc-00000");
        assert_eq!(slice["endpoints"].as_array().map(Vec::len), Some(10));
        assert_eq!(objects[252]["metadata"]["namespace"], "scale-002");
    }

    #[test]
    fn a_churn_step_replaces_one_endpoint_of_one_service() {
        let mut cluster = Cluster::new(Shape::plain(11), 3);
        let before: Vec<Value> = (0..10).map(|i| cluster.slice(i)).collect();
        let changed = cluster.churn().expect("a change");
        let name = changed["metadata"]["labels"]["kubernetes.io/service-name"]
            .as_str()
            .expect("service name");
        let i: usize = name.trim_start_matches("svc-").parse().expect("index");
        let old: Vec<&Value> = before[i]["endpoints"].as_array().expect("endpoints").iter().collect();
        let new: Vec<&Value> = changed["endpoints"].as_array().expect("endpoints").iter().collect();
        assert_eq!(old.len(), new.len());
        let differing = old
            .iter()
            .zip(&new)
            .filter(|(a, b)| a["addresses"] != b["addresses"])
            .count();
        assert_eq!(differing, 1);
    }

    #[test]
    fn the_greeter_slice_names_its_backends() {
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 50080);
        let s = greeter_slice(&[a]);
        assert_eq!(s["endpoints"][0]["addresses"][0], "127.0.0.11");
        assert_eq!(s["ports"][0]["port"], 50080);
        assert_eq!(s["metadata"]["namespace"], DEMO_NAMESPACE);
    }
}
