//! Kubernetes mode: a Gateway of balancer's class (a GatewayClass of its
//! controller, whatever its name), a GRPCRoute naming it and the TLS Secret
//! it references, read from the fake API server, serve gRPC calls from
//! outside the cluster over TLS (the certificate from the Secret) and
//! cleartext HTTP/2, every call balanced over the Service's endpoints; the
//! elected agent writes the Gateway's status and the class's. Gateways of
//! another controller's class are left alone.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod k8s_fake;
mod support_tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use balancer_agent::{
    app::gateways::Gateways,
    balance::Table,
    k8s::lease::LeaseOptions,
    model::Model,
    proxy::{Proxy, ProxyOptions},
};
use greeter::server::TestServer;
use k8s_fake::{run::K8sRun, FakeApi};
use serde_json::{json, Value};
use support_tls::{h2c_channel, tls_channel, Ca};

const NODE: &str = "node-1";

fn seed(fake: &FakeApi, backend_port: u16, https: u16, h2c: u16, secret: Option<&support_tls::Leaf>) {
    fake.apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "demo" } }));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": NODE },
        "status": { "addresses": [ { "type": "InternalIP", "address": "192.0.2.10" } ] }
    }));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "greeter", "namespace": "demo" },
        "spec": { "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                  "ports": [{ "name": "grpc", "port": 8000, "targetPort": backend_port }] }
    }));
    fake.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "greeter-abcde", "namespace": "demo",
                      "labels": { "kubernetes.io/service-name": "greeter" } },
        "addressType": "IPv4",
        "endpoints": [
            { "addresses": ["127.0.0.2"], "conditions": { "ready": true } },
            { "addresses": ["127.0.0.3"], "conditions": { "ready": true } }
        ],
        "ports": [{ "name": "grpc", "port": backend_port, "protocol": "TCP" }]
    }));
    if let Some(leaf) = secret {
        apply_secret(fake, leaf);
    }
    // balancer's class under another name than the one deploy/ ships.
    apply_class(fake, "edge", "balancer.io/gateway-controller");
    fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": { "name": "public", "namespace": "demo", "generation": 1 },
        "spec": {
            "gatewayClassName": "edge",
            "listeners": [
                { "name": "https", "port": https, "protocol": "HTTPS", "hostname": "*.example.com",
                  "tls": { "mode": "Terminate", "certificateRefs": [ { "name": "greeter-tls" } ] } },
                { "name": "h2c", "port": h2c, "protocol": "HTTP" }
            ]
        }
    }));
    fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": { "name": "greeter", "namespace": "demo" },
        "spec": {
            "parentRefs": [ { "name": "public" } ],
            "hostnames": [ "greeter.example.com" ],
            "rules": [ { "matches": [ { "method": { "service": "helloworld.Greeter" } } ],
                         "backendRefs": [ { "name": "greeter", "port": 8000 } ] } ]
        }
    }));
}

/// The TLS Secret `demo/greeter-tls` holding `leaf`.
fn apply_secret(fake: &FakeApi, leaf: &support_tls::Leaf) {
    fake.apply(leaf.secret("demo", "greeter-tls"));
}

fn start(fake: &FakeApi) -> K8sRun {
    K8sRun::start(
        fake,
        NODE,
        |_| {},
        |o| {
            o.gateway_ip = "127.0.0.1".parse().unwrap();
            o.lease = Some(LeaseOptions::new("balancer-system", "agent-1"));
            o.instance = Some("agent-1".into());
            o.secret_refresh = Duration::from_millis(300);
        },
    )
}

/// The proxy with the model's gateway listeners bound.
async fn serve(model: &Model) -> (Arc<Table>, Gateways) {
    let table = Table::new(model);
    let proxy = Proxy::new(Arc::clone(&table), ProxyOptions::default());
    let mut gateways = Gateways::new(proxy, Duration::from_millis(250));
    gateways.sync(model, &table, true).await.unwrap();
    (table, gateways)
}

async fn gateway_status(fake: &FakeApi, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = fake
            .object("gateways", "demo/public")
            .map(|g| g["status"].clone())
            .unwrap_or_default();
        if pred(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Gateway status where {what} within 20 s; last: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn apply_class(fake: &FakeApi, name: &str, controller: &str) {
    fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": { "name": name, "generation": 1 },
        "spec": { "controllerName": controller }
    }));
}

/// A GatewayClass named `balancer` that another controller owns, and a
/// Gateway of that class listening on `port`.
fn seed_foreign(fake: &FakeApi, port: u16) {
    apply_class(fake, "balancer", "example.com/another-controller");
    fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": { "name": "foreign", "namespace": "demo", "generation": 1 },
        "spec": { "gatewayClassName": "balancer",
                  "listeners": [ { "name": "h2c", "port": port, "protocol": "HTTP" } ] }
    }));
}

fn condition<'a>(conditions: &'a Value, kind: &str) -> &'a Value {
    conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

fn listener<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or(&Value::Null)
}

fn free_port() -> u16 {
    balancer_testing::port::free_port().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_tls_secret_serves_calls_and_gets_its_status() {
    let port = free_port();
    let b1 = TestServer::spawn_on(SocketAddr::from(([127, 0, 0, 2], port)), "greeter-a").unwrap();
    let b2 = TestServer::spawn_on(SocketAddr::from(([127, 0, 0, 3], port)), "greeter-b").unwrap();
    let (https, h2c) = (free_port(), free_port());
    let ca = Ca::new("cluster CA");
    let leaf = ca.leaf(&["*.example.com"]);
    let fake = FakeApi::default();
    seed(&fake, port, https, h2c, Some(&leaf));
    seed_foreign(&fake, free_port());
    let mut run = start(&fake);
    run.until_ready().await;
    let model = run
        .until("the gateway has both listeners", Duration::from_secs(10), |m| {
            m.gateways.first().is_some_and(|g| g.listeners.len() == 2)
        })
        .await;
    // The other controller's Gateway is not served.
    assert_eq!(model.gateways.len(), 1, "{:#?}", model.gateways);
    let gw = &model.gateways[0];
    assert_eq!(gw.name, "demo/public");
    assert_eq!(gw.routes.len(), 1);
    assert_eq!(gw.routes[0].backends[0].service, "demo/greeter");
    let (table, mut gateways) = serve(&model).await;

    // An external client over TLS: the Secret's certificate, verified for
    // the name asked; calls spread over both endpoints.
    let https_addr = SocketAddr::from(([127, 0, 0, 1], https));
    let channel = tls_channel(https_addr, "greeter.example.com", &ca.pem()).await.unwrap();
    let s = greeter::client::say_hello_spread(channel, 30, 4, Duration::from_secs(10)).await;
    assert_eq!(s.ok, 30, "{}", s.table());
    assert!(b1.calls() > 0 && b2.calls() > 0, "spread over both: {}", s.table());

    // Cleartext HTTP/2 on the other listener; a host no route names gets
    // UNIMPLEMENTED.
    let h2c_addr = SocketAddr::from(([127, 0, 0, 1], h2c));
    let s = greeter::client::say_hello_spread(
        h2c_channel(h2c_addr, "greeter.example.com").await,
        10,
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s.ok, 10, "{}", s.table());
    let s = greeter::client::say_hello_spread(h2c_channel(h2c_addr, "other.org").await, 2, 1, Duration::from_secs(10))
        .await;
    assert_eq!(s.error_codes.get("Unimplemented"), Some(&2), "{}", s.table());
    assert_eq!(b1.calls() + b2.calls(), 40);

    // The elected agent's status: the nodes' addresses, Accepted and
    // Programmed, each listener with its route attached.
    let status = gateway_status(&fake, "Programmed is True", |s| {
        condition(&s["conditions"], "Programmed")["status"] == "True"
    })
    .await;
    assert_eq!(
        status["addresses"],
        json!([{ "type": "IPAddress", "value": "192.0.2.10" }])
    );
    assert_eq!(condition(&status["conditions"], "Accepted")["status"], "True");
    for name in ["https", "h2c"] {
        let l = listener(&status, name);
        assert_eq!(l["attachedRoutes"], 1, "{name}: {l:#}");
        for kind in ["Accepted", "ResolvedRefs", "Programmed"] {
            assert_eq!(
                condition(&l["conditions"], kind)["status"],
                "True",
                "{name} {kind}: {l:#}"
            );
        }
    }

    // balancer's class is Accepted; the other controller's class and
    // Gateway get nothing from balancer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let class = fake.object("gatewayclasses", "/edge").unwrap_or_default();
        let accepted = condition(&class["status"]["conditions"], "Accepted");
        if accepted["status"] == "True" {
            assert_eq!(accepted["reason"], "Accepted", "{class:#}");
            assert_eq!(accepted["observedGeneration"], 1, "{class:#}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no GatewayClass status: {class:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let foreign = |w: &&k8s_fake::Write| w.path.contains("/gatewayclasses/balancer") || w.path.contains("/foreign");
    assert!(
        !fake.status_writes().iter().any(|w| foreign(&w)),
        "{:#?}",
        fake.status_writes()
    );

    // The route's status names the Gateway as a parent that accepted it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let route = fake.object("grpcroutes", "demo/greeter").unwrap_or_default();
        let entry = route["status"]["parents"].as_array().and_then(|p| {
            p.iter()
                .find(|e| e["controllerName"] == "balancer.io/gateway-controller")
                .cloned()
        });
        if let Some(entry) = entry {
            assert_eq!(entry["parentRef"]["name"], "public", "{entry:#}");
            assert_eq!(
                condition(&entry["conditions"], "Accepted")["status"],
                "True",
                "{entry:#}"
            );
            assert_eq!(
                condition(&entry["conditions"], "ResolvedRefs")["status"],
                "True",
                "{entry:#}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no GRPCRoute status: {route:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No write loop: what the API server stores compares equal to what
    // was written, so the watch bringing it back writes nothing.
    let writes = || fake.status_writes().len();
    let settled = writes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(writes(), settled, "status writes go on: {:#?}", fake.status_writes());
    // Nothing was said before the Secret had been read.
    assert!(
        fake.status_writes()
            .iter()
            .all(|w| !w.body.to_string().contains("not found")),
        "{:#?}",
        fake.status_writes()
    );

    // The Secret renewed (another CA): new connections get the new
    // certificate once the agent has read it.
    let renewed_ca = Ca::new("renewed CA");
    apply_secret(&fake, &renewed_ca.leaf(&["*.example.com"]));
    let renewed = run
        .until("the renewed certificate", Duration::from_secs(10), |m| {
            m.gateways.first().map(|g| &g.listeners) != model.gateways.first().map(|g| &g.listeners)
        })
        .await;
    table.update(&renewed);
    gateways.sync(&renewed, &table, false).await.unwrap();
    let channel = tls_channel(https_addr, "greeter.example.com", &renewed_ca.pem())
        .await
        .unwrap();
    let s = greeter::client::say_hello_spread(channel, 4, 2, Duration::from_secs(10)).await;
    assert_eq!(s.ok, 4, "{}", s.table());
    assert!(tls_channel(https_addr, "greeter.example.com", &ca.pem()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_leaves_the_listener_unserved_and_says_why() {
    let port = free_port();
    let (https, h2c) = (free_port(), free_port());
    let fake = FakeApi::default();
    seed(&fake, port, https, h2c, None);
    let mut run = start(&fake);
    run.until_ready().await;
    let model = run
        .until("the gateway is published", Duration::from_secs(10), |m| {
            !m.gateways.is_empty()
        })
        .await;
    let names: Vec<&str> = model.gateways[0].listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["h2c"], "only the cleartext listener is served");
    let status = gateway_status(&fake, "the https listener says why", |s| {
        condition(&listener(s, "https")["conditions"], "ResolvedRefs")["status"] == "False"
    })
    .await;
    let refs = condition(&listener(&status, "https")["conditions"], "ResolvedRefs");
    assert_eq!(refs["reason"], "InvalidCertificateRef");
    assert!(
        refs["message"].as_str().unwrap().contains("demo/greeter-tls not found"),
        "{refs:#}"
    );
    assert_eq!(
        condition(&listener(&status, "https")["conditions"], "Programmed")["status"],
        "False"
    );
    assert_eq!(
        condition(&listener(&status, "h2c")["conditions"], "Programmed")["status"],
        "True"
    );

    // The Secret appears: the listener is served at the next read.
    let ca = Ca::new("cluster CA");
    let leaf = ca.leaf(&["*.example.com"]);
    seed(&fake, port, https, h2c, Some(&leaf));
    run.until("the https listener is served", Duration::from_secs(20), |m| {
        m.gateways.first().is_some_and(|g| g.listeners.len() == 2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gateway_classes_the_class_named_balancer_is_taken_for_balancers() {
    let port = free_port();
    let (https, h2c, other) = (free_port(), free_port(), free_port());
    let fake = FakeApi::default();
    seed(&fake, port, https, h2c, None);
    seed_foreign(&fake, other);
    // GatewayClasses cannot be read (an RBAC role from before they were).
    fake.forbid("gatewayclasses");
    let mut run = start(&fake);
    run.until_ready().await;
    let model = run
        .until(
            "the Gateway of class balancer is served",
            Duration::from_secs(10),
            |m| !m.gateways.is_empty(),
        )
        .await;
    let names: Vec<&str> = model.gateways.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["demo/foreign"]);
    assert_eq!(model.gateways[0].listeners[0].address.port(), other);

    // Readable again: the classes decide.
    fake.allow("gatewayclasses");
    run.until("balancer's class is served instead", Duration::from_secs(20), |m| {
        m.gateways.iter().map(|g| g.name.as_str()).eq(["demo/public"])
    })
    .await;
}

/// The translation alone, for what listeners and routes get.
mod translation {
    use std::{
        collections::{BTreeMap, HashMap, HashSet},
        sync::Arc,
    };

    use balancer_agent::k8s::{
        gateway::{secret_refs, translate, SecretPem, Translated},
        gateway_status::route_parents,
    };
    use gateway_api::{gateways::Gateway, grpcroutes::GrpcRoute};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{json, Value};

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn gateway(name: &str, created: &str, listeners: Value) -> Arc<Gateway> {
        from(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": { "name": name, "namespace": "demo", "creationTimestamp": created },
            "spec": { "gatewayClassName": "balancer", "listeners": listeners }
        }))
    }

    fn route(name: &str, created: &str, spec: Value) -> Arc<GrpcRoute> {
        from(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": { "name": name, "namespace": "demo", "creationTimestamp": created },
            "spec": spec
        }))
    }

    fn run(gateways: &[Arc<Gateway>], routes: &[Arc<GrpcRoute>]) -> Translated {
        run_with_namespaces(gateways, routes, &BTreeMap::new())
    }

    /// `namespaces`: the labels of each namespace known, by name.
    fn run_with_namespaces(
        gateways: &[Arc<Gateway>],
        routes: &[Arc<GrpcRoute>],
        namespaces: &BTreeMap<&str, BTreeMap<String, String>>,
    ) -> Translated {
        let leaf = super::support_tls::Ca::new("ca").leaf(&["a.example.com"]);
        let secrets: HashMap<(String, String), SecretPem> = [(
            ("demo".to_owned(), "s".to_owned()),
            Ok((leaf.cert.into_bytes().into(), leaf.key.into_bytes().into())),
        )]
        .into();
        // `greeter` is a balanced Service in `demo`, and in `team-a` for
        // routes of that namespace.
        let svc = |ns: &str| -> Arc<Service> {
            from(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "greeter", "namespace": ns },
                "spec": { "ports": [ { "name": "grpc", "port": 8000 }, { "name": "admin", "port": 9000 } ] }
            }))
        };
        let services = [svc("demo"), svc("team-a")];
        let lookup = move |ns: &str, name: &str| {
            services
                .iter()
                .find(|s| s.metadata.namespace.as_deref() == Some(ns) && name == "greeter")
                .cloned()
        };
        let balanced: HashSet<&str> = ["demo/greeter:grpc", "team-a/greeter:grpc"].into();
        let labels = |ns: &str| namespaces.get(ns).cloned();
        translate(
            gateways,
            routes,
            &lookup,
            &balanced,
            &secrets,
            &labels,
            "127.0.0.1".parse().unwrap(),
        )
    }

    fn cond(t: &Translated, gw: usize, listener: &str) -> (bool, &'static str, bool, &'static str) {
        let l = t.verdicts[gw].listeners.iter().find(|l| l.name == listener).unwrap();
        (
            l.accepted.ok,
            l.accepted.reason,
            l.resolved_refs.ok,
            l.resolved_refs.reason,
        )
    }

    #[test]
    fn listeners_it_cannot_serve_say_why() {
        let a = gateway(
            "a",
            "2026-01-01T00:00:00Z",
            json!([
                { "name": "tcp", "port": 7000, "protocol": "TCP" },
                { "name": "h2c", "port": 8080, "protocol": "HTTP" },
                { "name": "clash", "port": 8080, "protocol": "HTTPS",
                  "tls": { "certificateRefs": [ { "name": "s" } ] } },
                { "name": "other-ns", "port": 8443, "protocol": "HTTPS",
                  "tls": { "certificateRefs": [ { "name": "s", "namespace": "prod" } ] } },
                { "name": "missing", "port": 9443, "protocol": "HTTPS",
                  "tls": { "certificateRefs": [ { "name": "nope" } ] } }
            ]),
        );
        let b = gateway(
            "b",
            "2026-02-01T00:00:00Z",
            json!([ { "name": "h2c", "port": 8080, "protocol": "HTTP" } ]),
        );
        let t = run(&[Arc::clone(&b), Arc::clone(&a)], &[]);
        assert_eq!(cond(&t, 0, "tcp"), (false, "UnsupportedProtocol", true, "ResolvedRefs"));
        assert_eq!(cond(&t, 0, "h2c"), (true, "Accepted", true, "ResolvedRefs"));
        assert_eq!(cond(&t, 0, "clash"), (false, "ProtocolConflict", true, "ResolvedRefs"));
        assert_eq!(cond(&t, 0, "other-ns"), (true, "Accepted", false, "RefNotPermitted"));
        assert_eq!(
            cond(&t, 0, "missing"),
            (true, "Accepted", false, "InvalidCertificateRef")
        );
        // The older Gateway has the port.
        assert_eq!(cond(&t, 1, "h2c"), (false, "PortUnavailable", true, "ResolvedRefs"));
        assert_eq!(t.gateways.len(), 1);
        assert_eq!(t.gateways[0].name, "demo/a");
        // Only Secrets of the Gateway's own namespace are ever read.
        let refs: Vec<(String, String)> = secret_refs(&[a]).into_iter().collect();
        assert_eq!(
            refs,
            [
                ("demo".to_owned(), "nope".to_owned()),
                ("demo".to_owned(), "s".to_owned())
            ]
        );
    }

    #[test]
    fn routes_attach_by_section_and_sort_exact_hosts_first() {
        let gw = gateway(
            "a",
            "2026-01-01T00:00:00Z",
            json!([
                { "name": "one", "port": 8080, "protocol": "HTTP" },
                { "name": "two", "port": 8081, "protocol": "HTTP" }
            ]),
        );
        let backend = json!([ { "backendRefs": [ { "name": "greeter", "port": 8000 } ] } ]);
        let wildcard = route(
            "old-wildcard",
            "2026-01-01T00:00:00Z",
            json!({ "parentRefs": [ { "name": "a", "sectionName": "two" } ],
                    "hostnames": ["*.example.com"], "rules": backend }),
        );
        let exact = route(
            "new-exact",
            "2026-03-01T00:00:00Z",
            json!({ "parentRefs": [ { "name": "a" } ], "hostnames": ["api.example.com"], "rules": backend }),
        );
        let unbalanced = route(
            "admin",
            "2026-03-02T00:00:00Z",
            json!({ "parentRefs": [ { "name": "a" } ],
                    "rules": [ { "backendRefs": [ { "name": "greeter", "port": 9000 } ] } ] }),
        );
        let t = run(&[gw], &[wildcard, exact, unbalanced]);
        let g = &t.gateways[0];
        let names: Vec<&str> = g.routes.iter().filter_map(|r| r.name.as_deref()).collect();
        assert_eq!(names, ["demo/new-exact#0", "demo/old-wildcard#0"]);
        assert_eq!(g.routes[1].listeners, ["two"]);
        assert_eq!(g.routes[0].backends[0].service, "demo/greeter:grpc");
        let attached: Vec<i32> = t.verdicts[0].listeners.iter().map(|l| l.attached_routes).collect();
        assert_eq!(attached, [1, 2]);
        assert_eq!(t.skipped_rules.len(), 1);
        assert!(
            t.skipped_rules[0].1.contains("port 9000 is not balanced"),
            "{:?}",
            t.skipped_rules
        );
    }

    /// A route in namespace `ns` naming the Gateway demo/public, with one
    /// rule to the Service demo/greeter... of its own namespace: only
    /// attachment is looked at here.
    fn route_in(ns: &str, name: &str) -> Arc<GrpcRoute> {
        from(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": { "name": name, "namespace": ns, "creationTimestamp": "2026-03-01T00:00:00Z" },
            "spec": { "parentRefs": [ { "name": "public", "namespace": "demo" } ],
                      "rules": [ { "backendRefs": [ { "name": "greeter", "port": 8000 } ] } ] }
        }))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn attached(t: &Translated) -> i32 {
        t.verdicts[0].listeners[0].attached_routes
    }

    /// The routes left unattached: (route, gateway, reason).
    fn unattached_routes(t: &Translated) -> Vec<(&str, &(String, String), &str)> {
        t.unattached
            .iter()
            .map(|u| (u.route.as_str(), &u.gateway, u.why.reason))
            .collect()
    }

    #[test]
    fn routes_attach_only_from_the_namespaces_a_listener_allows() {
        let own = route_in("demo", "own");
        let team_a = route_in("team-a", "a");
        let namespaces: BTreeMap<&str, _> = [("demo", labels(&[])), ("team-a", labels(&[("team", "a")]))].into();
        let with = |allowed: Value| {
            let gw = gateway(
                "public",
                "2026-01-01T00:00:00Z",
                json!([ { "name": "h2c", "port": 8080, "protocol": "HTTP", "allowedRoutes": allowed } ]),
            );
            run_with_namespaces(&[gw], &[Arc::clone(&own), Arc::clone(&team_a)], &namespaces)
        };
        let demo_public = ("demo".to_owned(), "public".to_owned());

        // Same namespace, the default: the other namespace's route is refused.
        let t = with(json!({}));
        assert_eq!(attached(&t), 1);
        let unattached = unattached_routes(&t);
        assert_eq!(unattached, [("team-a/a", &demo_public, "NotAllowedByListeners")]);
        assert_eq!(t.gateways[0].routes.len(), 1);
        assert_eq!(t.gateways[0].routes[0].name.as_deref(), Some("demo/own#0"));
        assert_eq!(t.verdicts, with(json!({ "namespaces": { "from": "Same" } })).verdicts);

        // All namespaces.
        let t = with(json!({ "namespaces": { "from": "All" } }));
        assert_eq!((attached(&t), t.unattached.len()), (2, 0));

        // A selector on the namespace's labels.
        for (selector, want) in [
            (json!({ "matchLabels": { "team": "a" } }), 1),
            (json!({ "matchLabels": { "team": "b" } }), 0),
            (
                json!({ "matchExpressions": [ { "key": "team", "operator": "In", "values": ["a", "c"] } ] }),
                1,
            ),
            (
                json!({ "matchExpressions": [ { "key": "team", "operator": "NotIn", "values": ["a"] } ] }),
                1,
            ),
            (
                json!({ "matchExpressions": [ { "key": "team", "operator": "Exists" } ] }),
                1,
            ),
            (
                json!({ "matchExpressions": [ { "key": "team", "operator": "DoesNotExist" } ] }),
                1,
            ),
            (json!({}), 2),
        ] {
            let t = with(json!({ "namespaces": { "from": "Selector", "selector": selector } }));
            assert_eq!(attached(&t), want, "selector {selector}");
            assert_eq!(t.unattached.len(), 2 - want as usize, "selector {selector}");
        }

        // The refused route's status says so; the attached one's is Accepted.
        let t = with(json!({}));
        let ours = [demo_public.clone()];
        let accepted = |route: &GrpcRoute| {
            let parents = route_parents(route, &ours, &t.skipped_rules, &t.unattached, Timestamp::now()).unwrap();
            let c = parents[0]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Accepted")
                .unwrap()
                .clone();
            (
                c["status"].as_str().unwrap().to_owned(),
                c["reason"].as_str().unwrap().to_owned(),
            )
        };
        assert_eq!(
            accepted(&team_a),
            ("False".to_owned(), "NotAllowedByListeners".to_owned())
        );
        assert_eq!(accepted(&own), ("True".to_owned(), "Accepted".to_owned()));

        // A sectionName no listener has.
        let astray = from::<GrpcRoute>(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": { "name": "astray", "namespace": "demo", "creationTimestamp": "2026-03-01T00:00:00Z" },
            "spec": { "parentRefs": [ { "name": "public", "sectionName": "grpcs" } ],
                      "rules": [ { "backendRefs": [ { "name": "greeter", "port": 8000 } ] } ] }
        }));
        let gw = gateway(
            "public",
            "2026-01-01T00:00:00Z",
            json!([ { "name": "h2c", "port": 8080, "protocol": "HTTP" } ]),
        );
        let t = run(&[gw], &[Arc::clone(&astray)]);
        assert_eq!(attached(&t), 0);
        let unattached = unattached_routes(&t);
        assert_eq!(unattached, [("demo/astray", &demo_public, "NoMatchingParent")]);
        let parents = route_parents(&astray, &ours, &t.skipped_rules, &t.unattached, Timestamp::now()).unwrap();
        assert!(
            parents[0]["conditions"].to_string().contains("NoMatchingParent"),
            "{parents:#?}"
        );
    }

    #[test]
    fn a_listener_for_other_route_kinds_is_not_served() {
        let gw = gateway(
            "public",
            "2026-01-01T00:00:00Z",
            json!([
                { "name": "http-routes", "port": 8080, "protocol": "HTTP",
                  "allowedRoutes": { "kinds": [ { "kind": "HTTPRoute" } ] } },
                { "name": "grpc-routes", "port": 8081, "protocol": "HTTP",
                  "allowedRoutes": { "kinds": [ { "group": "gateway.networking.k8s.io", "kind": "GRPCRoute" } ] } }
            ]),
        );
        let t = run(&[gw], &[route_in("demo", "own")]);
        assert_eq!(
            cond(&t, 0, "http-routes"),
            (true, "Accepted", false, "InvalidRouteKinds")
        );
        assert_eq!(cond(&t, 0, "grpc-routes"), (true, "Accepted", true, "ResolvedRefs"));
        let served: Vec<&str> = t.gateways[0].listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(served, ["grpc-routes"]);
        assert_eq!(t.verdicts[0].listeners[1].attached_routes, 1);
    }
}
