//! The agent binary in Kubernetes mode, against an API server that runs as
//! its own process: a Gateway of balancer's class (a GatewayClass of its
//! controller), its GRPCRoute and TLS Secret make the agent serve TLS on
//! its node address (`HOST_IPS`), every call of an outside client's
//! connection balanced over the Service's endpoints, and the agent (the
//! only one, so the elected one) writes the status of the Gateway and of
//! its class.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use balancer_testing::{
    agent::{self, AgentProcess, Log},
    port::free_port,
};
use balancer_tests::apiserver::{FakeApiOptions, FakeApiServer};
use greeter::server::TestServer;
use serde_json::json;

#[path = "../../balancer-agent/tests/support_tls/mod.rs"]
mod support_tls;

#[test]
fn the_agent_serves_a_gateway_from_the_api_and_writes_its_status() {
    let port = free_port().expect("port").port();
    let b1 = TestServer::spawn_on(SocketAddr::from(([127, 0, 0, 2], port)), "greeter-a").expect("greeter");
    let b2 = TestServer::spawn_on(SocketAddr::from(([127, 0, 0, 3], port)), "greeter-b").expect("greeter");
    let https = free_port().expect("port");
    let ca = support_tls::Ca::new("cluster CA");
    let api = FakeApiServer::start(&FakeApiOptions::default()).expect("fake API server");
    let objects = vec![
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "demo" } }),
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "balancer-system" } }),
        json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "node-a" },
                "status": { "addresses": [ { "type": "InternalIP", "address": "127.0.0.1" } ] } }),
        json!({ "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "greeter", "namespace": "demo" },
                "spec": { "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                          "ports": [{ "name": "grpc", "port": 8000, "targetPort": port }] } }),
        json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": { "name": "greeter-abcde", "namespace": "demo",
                              "labels": { "kubernetes.io/service-name": "greeter" } },
                "addressType": "IPv4",
                "endpoints": [ { "addresses": ["127.0.0.2"], "conditions": { "ready": true } },
                               { "addresses": ["127.0.0.3"], "conditions": { "ready": true } } ],
                "ports": [{ "name": "grpc", "port": port, "protocol": "TCP" }] }),
        ca.leaf(&["greeter.example.com"]).secret("demo", "greeter-tls"),
        json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": { "name": "grpc-edge" },
                "spec": { "controllerName": "balancer.io/gateway-controller" } }),
        json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": { "name": "public", "namespace": "demo" },
                "spec": { "gatewayClassName": "grpc-edge",
                          "listeners": [ { "name": "https", "port": https.port(), "protocol": "HTTPS",
                                           "tls": { "certificateRefs": [ { "name": "greeter-tls" } ] } } ] } }),
        json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
                "metadata": { "name": "greeter", "namespace": "demo" },
                "spec": { "parentRefs": [ { "name": "public" } ],
                          "rules": [ { "backendRefs": [ { "name": "greeter", "port": 8000 } ] } ] } }),
    ];
    api.apply_all(objects).expect("objects applied");

    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port().expect("port");
    let mut cmd = agent::command(&balancer_tests::built("balancer-agent"), None);
    cmd.args(["--no-ebpf", "--admin", &admin.to_string()])
        .env("KUBECONFIG", api.kubeconfig())
        .env("NODE_NAME", "node-a")
        .env("HOST_IPS", "127.0.0.1")
        .env("POD_NAME", "agent-a")
        .env("POD_NAMESPACE", "balancer-system")
        .env("RUST_LOG", "info");
    let mut agent = AgentProcess::spawn(cmd, Log::File(dir.path().join("agent.log"))).expect("start the agent");
    agent.wait_readyz(admin, Duration::from_secs(30)).expect("ready");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spread = rt.block_on(async {
        // The listener is bound once the model with the Gateway applies.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let channel = loop {
            match support_tls::tls_channel(https, "greeter.example.com", &ca.pem()).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no TLS listener: {e}: {}",
                        agent.log()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        greeter::client::say_hello_spread(channel, 30, 4, Duration::from_secs(10)).await
    });
    assert_eq!(spread.ok, 30, "{}", spread.table());
    assert!(b1.calls() > 0 && b2.calls() > 0, "spread over both: {}", spread.table());

    // The Gateway's status, from the elected agent, and its class's.
    let status = until_condition(&api, &agent, ("gateways", Some("demo"), "public"), "Programmed");
    assert_eq!(
        status["addresses"],
        json!([{ "type": "IPAddress", "value": "127.0.0.1" }])
    );
    assert_eq!(status["listeners"][0]["attachedRoutes"], 1, "{status:#}");
    until_condition(&api, &agent, ("gatewayclasses", None, "grpc-edge"), "Accepted");
}

/// The status of the object `(resource, namespace, name)` once its
/// condition `kind` is True (within 30 s).
fn until_condition(
    api: &FakeApiServer,
    agent: &AgentProcess,
    (resource, namespace, name): (&str, Option<&str>, &str),
    kind: &str,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let obj = api.get(resource, namespace, name).expect("get").expect("the object");
        let status = &obj["status"];
        let met = status["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"));
        if met {
            return status.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{resource} {name}: {kind} is not True: {status:#}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
