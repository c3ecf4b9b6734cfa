//! End to end: the real `balancer-agent` in static mode without eBPF, real
//! gRPC calls through its explicit listener to two greeter backends, then
//! `balancerctl` and `/metrics` checked against the number of calls made.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_ctl;

use std::{net::SocketAddr, path::Path, process::Output, time::Duration};

use balancer_agent::admin::api;
use balancer_testing::metrics::sum as metric_sum;
use balancer_testing::{
    agent::{self, AgentProcess, Log},
    port::free_port,
};
use greeter::server::TestServer;

const CALLS: u64 = 60;

fn ctl(admin: SocketAddr, args: &[&str]) -> Output {
    support_ctl::run(&admin.to_string(), args)
}

fn ctl_json<T: serde::de::DeserializeOwned>(admin: SocketAddr, args: &[&str]) -> T {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = ctl(admin, &all);
    assert!(
        out.status.success(),
        "balancerctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The agent on `config` without eBPF, logging at `rust_log` to `log`;
/// killed (by its pid) when the test ends, pass or fail.
fn start_agent(dir: &Path, config: &str, extra: &[&str], rust_log: &str, log: Log) -> AgentProcess {
    let path = dir.join("balancer.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = agent::command(Path::new(env!("CARGO_BIN_EXE_balancer-agent")), Some(&path));
    cmd.arg("--no-ebpf")
        .args(extra)
        .env("RUST_LOG", rust_log)
        .env_remove("BALANCER_ADMIN");
    AgentProcess::spawn(cmd, log).unwrap()
}

/// `calls` calls over one HTTP/2 connection to `listen`, `concurrency` at a
/// time, bounded in time.
fn calls_over_one_connection(listen: SocketAddr, calls: u64, concurrency: usize) -> greeter::client::Spread {
    calls_with(listen, calls, concurrency, &[])
}

/// The same, each call with `headers`.
fn calls_with(
    listen: SocketAddr,
    calls: u64,
    concurrency: usize,
    headers: &[(String, String)],
) -> greeter::client::Spread {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = greeter::client::connect(&listen.to_string()).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            greeter::client::say_hello_spread_with(channel, calls, concurrency, Duration::from_secs(10), headers),
        )
        .await
        .expect("calls finished within 60 s")
    })
}

#[test]
fn balancerctl_and_metrics_count_the_calls_made() {
    let v1 = TestServer::spawn("greeter-v1").unwrap();
    let v2 = TestServer::spawn("greeter-v2").unwrap();
    let admin = free_port().unwrap();
    let listen = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "admin: {admin}\nservices:\n  - name: greeter\n    vip: 10.96.0.10:8000\n    listen: {listen}\n    policy: round-robin\n    endpoints:\n      - {{ address: {}, labels: {{ version: v1 }} }}\n      - {{ address: {}, labels: {{ version: v2 }} }}\n",
        v1.addr(),
        v2.addr()
    );
    let mut agent = start_agent(dir.path(), &config, &[], "warn", Log::Discard);
    agent.wait_readyz(admin, Duration::from_secs(30)).unwrap();

    // CALLS calls over one HTTP/2 connection, bounded in time.
    let spread = calls_over_one_connection(listen, CALLS, 4);
    assert_eq!(spread.ok, CALLS, "{}", spread.table());
    assert_eq!(v1.calls() + v2.calls(), CALLS);
    assert!(
        v1.calls() > 0 && v2.calls() > 0,
        "calls spread over both backends: {}",
        spread.table()
    );

    // service show: JSON and table.
    let svc: api::Service = ctl_json(admin, &["service", "show", "greeter"]);
    assert_eq!(svc.counters.calls, CALLS);
    assert_eq!(svc.counters.no_endpoint, 0);
    assert_eq!(svc.errors(), 0);
    assert_eq!(svc.vips, vec!["10.96.0.10:8000".parse::<SocketAddr>().unwrap()]);
    let services: Vec<api::Service> = ctl_json(admin, &["service", "show"]);
    assert_eq!(services.len(), 1);
    let table = String::from_utf8(ctl(admin, &["service", "show"]).stdout).unwrap();
    let row = table.lines().nth(1).expect("a row for greeter");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[0], "greeter");
    assert!(cells.contains(&CALLS.to_string().as_str()), "{table}");

    // endpoint show: every endpoint's calls match what its backend served.
    let eps: Vec<api::Endpoint> = ctl_json(admin, &["endpoint", "show", "greeter"]);
    for (ep, backend) in eps.iter().zip([&v1, &v2]) {
        assert_eq!(ep.address, backend.addr());
        assert_eq!(ep.stats.calls, backend.calls(), "{}", ep.address);
        assert_eq!(ep.stats.statuses.get("0").copied(), Some(backend.calls()));
    }
    let table = String::from_utf8(ctl(admin, &["endpoint", "show", "greeter"]).stdout).unwrap();
    assert!(
        table.contains(&v1.addr().to_string()) && table.contains(&v2.addr().to_string()),
        "{table}"
    );

    // stats: the lifetime totals.
    let rows: Vec<serde_json::Value> = ctl_json(admin, &["stats"]);
    assert_eq!(rows[0]["service"], "greeter");
    assert_eq!(rows[0]["calls"], CALLS);

    // status, pods (none in static mode without enroll), conns.
    let status: api::Status = ctl_json(admin, &["status"]);
    assert!(status.ready && !status.ebpf, "{status:?}");
    assert_eq!(status.source.kind, "static");
    let pods: Vec<api::Pod> = ctl_json(admin, &["pod", "show"]);
    assert!(pods.is_empty());
    let _: Vec<api::Conn> = ctl_json(admin, &["conn", "show"]);
    // Without eBPF, kernel objects say so.
    let out = ctl(admin, &["prog", "show"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without eBPF"));

    // /metrics: the same numbers.
    let r = balancer_testing::http::get(admin, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    let text = r.body;
    let ok = metric_sum(
        &text,
        "balancer_requests_total",
        &[("service", "greeter"), ("grpc_status", "0")],
    );
    assert_eq!(ok, CALLS as f64);
    let all = metric_sum(&text, "balancer_requests_total", &[("service", "greeter")]);
    assert_eq!(all, CALLS as f64);
    for backend in [&v1, &v2] {
        let per = metric_sum(
            &text,
            "balancer_requests_total",
            &[("endpoint", &backend.addr().to_string())],
        );
        assert_eq!(per, backend.calls() as f64);
    }
    // Every call's duration went into the histogram, and all of them came
    // as streams of the one client connection.
    let count = text
        .lines()
        .find(|l| l.starts_with("balancer_request_duration_seconds_count") && l.contains("service=\"greeter\""))
        .unwrap_or_else(|| panic!("no latency histogram for greeter in:\n{text}"));
    let count: f64 = count.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(count, CALLS as f64, "latency observations");
    assert_eq!(
        metric_sum(&text, "balancer_client_connections_accepted_total", &[]),
        1.0
    );
    assert_eq!(metric_sum(&text, "balancer_client_streams_total", &[]), CALLS as f64);
    assert_eq!(metric_sum(&text, "balancer_ready", &[]), 1.0);
    assert_eq!(
        metric_sum(&text, "balancer_discovery_synced", &[("source", "static")]),
        1.0
    );
    v1.stop();
    v2.stop();
}

/// Calls no endpoint could take are answered UNAVAILABLE by the agent
/// itself: `balancerctl` (JSON and tables) and `/metrics` count them alike.
#[test]
fn calls_the_agent_answers_itself_are_counted_alike_everywhere() {
    const REFUSED: u64 = 7;
    let admin = free_port().unwrap();
    let listen = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The service's only endpoint is draining: no call can go anywhere.
    let config = format!(
        "admin: {admin}\nservices:\n  - name: closed\n    vip: 10.96.0.12:8000\n    listen: {listen}\n    endpoints:\n      - {{ address: 127.0.0.1:1, state: draining }}\n"
    );
    let mut agent = start_agent(dir.path(), &config, &[], "warn", Log::Discard);
    agent.wait_readyz(admin, Duration::from_secs(30)).unwrap();

    let spread = calls_over_one_connection(listen, REFUSED, 1);
    assert_eq!(
        spread.error_codes.get("Unavailable"),
        Some(&REFUSED),
        "{}",
        spread.table()
    );
    assert!(
        spread.first_error.as_deref().is_some_and(|e| e.contains("closed")),
        "the answer names the service: {}",
        spread.table()
    );

    // JSON: the service document and the stats.
    let svc: api::Service = ctl_json(admin, &["service", "show", "closed"]);
    assert_eq!((svc.counters.calls, svc.counters.no_endpoint), (REFUSED, REFUSED));
    assert_eq!(svc.errors(), REFUSED);
    assert_eq!(svc.endpoints[0].stats.calls, 0, "no call reached the endpoint");
    let rows: Vec<serde_json::Value> = ctl_json(admin, &["stats"]);
    let row = rows.iter().find(|r| r["service"] == "closed").unwrap();
    assert_eq!(
        (&row["calls"], &row["errors"], &row["no_endpoint"]),
        (&REFUSED.into(), &REFUSED.into(), &REFUSED.into())
    );

    // Tables.
    let table = String::from_utf8(ctl(admin, &["service", "show"]).stdout).unwrap();
    let mut lines = table.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let col = |name: &str| {
        row[head
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("{name}: {table}"))]
    };
    assert_eq!(
        (col("CALLS"), col("ERRORS"), col("NO-ENDPOINT")),
        ("7", "7", "7"),
        "{table}"
    );

    // /metrics: the same numbers.
    let r = balancer_testing::http::get(admin, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    let text = r.body;
    let closed = [("service", "closed")];
    assert_eq!(
        metric_sum(&text, "balancer_service_calls_total", &closed),
        REFUSED as f64
    );
    assert_eq!(metric_sum(&text, "balancer_no_endpoint_total", &closed), REFUSED as f64);
    assert_eq!(metric_sum(&text, "balancer_requests_total", &closed), 0.0);
}

#[test]
fn the_agent_refuses_a_non_loopback_admin_address() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port().unwrap();
    let config = format!(
        "services:\n  - name: greeter\n    vip: 10.96.0.10:8000\n    listen: {listen}\n    endpoints:\n      - {{ address: 127.0.0.1:1 }}\n"
    );
    let log = dir.path().join("stderr");
    let mut agent = start_agent(dir.path(), &config, &["--admin", "0.0.0.0:0"], "off", Log::File(log));
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap()
        .expect("the agent kept running with a non-loopback admin address");
    let err = agent.log();
    assert!(!status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("refusing to bind non-loopback address 0.0.0.0:0"), "{err}");
}

#[test]
fn service_explain_tells_which_route_and_endpoint_take_a_call() {
    let servers: Vec<TestServer> = (1..=3)
        .map(|i| TestServer::spawn(&format!("greeter-{i}")).unwrap())
        .collect();
    let admin = free_port().unwrap();
    let listen = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "admin: {admin}\nservices:\n  - name: greeter\n    listen: {listen}\n    policy: ring-hash\n    hash_header: x-user-id\n    endpoints:\n"
    );
    for (i, s) in servers.iter().enumerate() {
        let version = if i == 2 { "v2" } else { "v1" };
        config.push_str(&format!(
            "      - {{ address: {}, labels: {{ version: {version} }} }}\n",
            s.addr()
        ));
    }
    config.push_str(
        "    routes:\n      - name: canary\n        matches: [ { headers: [ { name: x-canary, value: \"1\" } ] } ]\n        backends: [ { labels: { version: v2 }, weight: 100 } ]\n        filters: [ { request_header_modifier: { set: [ { name: x-tenant, value: acme } ] } } ]\n",
    );
    let mut agent = start_agent(dir.path(), &config, &[], "warn", Log::Discard);
    agent.wait_readyz(admin, Duration::from_secs(30)).unwrap();

    // Each user's calls land where `explain` said its key lands.
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let e: api::Explanation = ctl_json(
            admin,
            &[
                "service",
                "explain",
                "greeter",
                "helloworld.Greeter/SayHello",
                "-H",
                &format!("x-user-id={user}"),
            ],
        );
        assert!(e.route.is_none(), "{e:?}");
        assert_eq!(e.hash_key.as_deref(), Some(user));
        let predicted = e.backends[0].hashed_to.expect("a hash key lands on an endpoint");
        let before: Vec<u64> = servers.iter().map(TestServer::calls).collect();
        let spread = calls_with(listen, 5, 1, &[("x-user-id".to_owned(), user.to_owned())]);
        assert_eq!(spread.ok, 5, "{}", spread.table());
        let served: Vec<SocketAddr> = servers
            .iter()
            .zip(&before)
            .filter(|(s, b)| s.calls() > **b)
            .map(|(s, _)| s.addr())
            .collect();
        assert_eq!(served, [predicted], "{user}'s calls");
    }

    // A call with the canary header takes the route, to v2 only.
    let out = ctl(
        admin,
        &[
            "service",
            "explain",
            "greeter",
            "/helloworld.Greeter/SayHello",
            "-H",
            "x-canary=1",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Route:      canary (route 1 of 1)"), "{text}");
    assert!(text.contains("Filter:     request: set x-tenant=acme\n"), "{text}");
    assert!(
        text.contains("version=v2") && text.contains(&servers[2].addr().to_string()),
        "{text}"
    );
    assert!(!text.contains(&servers[0].addr().to_string()), "{text}");
    assert!(text.contains("no x-user-id header"), "{text}");

    // Unknown service, malformed header: one-line errors.
    let out = ctl(admin, &["service", "explain", "nope", "a.B/C"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named `nope`"));
    let out = ctl(admin, &["service", "explain", "greeter", "a.B/C", "-H", "bad header=1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a valid header"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `balancerctl gateway` shows what the agent serves to clients outside
/// the cluster: each gateway's listeners and its routes to services, and a
/// call through a listener goes where the routes say.
#[test]
fn balancerctl_shows_the_gateways_listeners_and_routes() {
    let server = TestServer::spawn("greeter-1").unwrap();
    let admin = free_port().unwrap();
    let (edge, internal) = (free_port().unwrap(), free_port().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"admin: {admin}
services:
  - name: greeter
    vip: 10.96.0.10:8000
    endpoints: [ {{ address: {backend} }} ]
gateways:
  - name: edge/public
    listeners:
      - name: edge
        address: "{edge}"
        hostnames: [api.example.com]
      - name: internal
        address: "{internal}"
    routes:
      - name: greeter-api
        listeners: [edge]
        matches: [ {{ service: helloworld.Greeter, method: SayHello }} ]
        backends: [ {{ service: greeter, weight: 3 }} ]
      - backends: [ {{ service: greeter }} ]
"#,
        backend = server.addr(),
    );
    let mut agent = start_agent(dir.path(), &config, &[], "warn", Log::Discard);
    agent.wait_readyz(admin, Duration::from_secs(30)).unwrap();

    let all: Vec<api::Gateway> = ctl_json(admin, &["gateway"]);
    assert_eq!(all.len(), 1, "{all:?}");
    let gw = &all[0];
    assert_eq!(gw.name, "edge/public");
    let listeners: Vec<(&str, SocketAddr, &str)> = gw
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address, l.protocol.as_str()))
        .collect();
    assert_eq!(listeners, [("edge", edge, "h2c"), ("internal", internal, "h2c")]);
    assert_eq!(gw.listeners[0].hostnames, ["api.example.com"]);
    assert_eq!(gw.routes.len(), 2);
    assert_eq!(gw.routes[0].name.as_deref(), Some("greeter-api"));
    assert_eq!(gw.routes[0].listeners, ["edge"]);
    assert_eq!(gw.routes[0].matches, ["service=helloworld.Greeter method=SayHello"]);
    assert_eq!(
        (
            gw.routes[0].backends[0].service.as_str(),
            gw.routes[0].backends[0].weight
        ),
        ("greeter", 3)
    );
    assert_eq!(gw.routes[1].matches, ["*"]);

    // The table, by name (a `/` in it is fine).
    let out = ctl(admin, &["gateway", "show", "edge/public"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Name:       edge/public"), "{text}");
    assert!(
        text.contains(&format!("{edge}")) && text.contains("api.example.com"),
        "{text}"
    );
    assert!(text.contains("greeter:3"), "{text}");
    let list = ctl(admin, &["gw", "list"]);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.contains("edge/public") && list.contains(&format!("{internal} h2c")),
        "{list}"
    );

    // What the routes say is what a call gets: the catch-all route serves
    // the internal listener.
    let spread = calls_over_one_connection(internal, 3, 1);
    assert_eq!(spread.ok, 3, "{}", spread.table());
    assert_eq!(server.calls(), 3);

    // The edge listener takes api.example.com only: a call to another host
    // is answered UNIMPLEMENTED by the agent, and counted.
    let spread = calls_over_one_connection(edge, 2, 1);
    assert_eq!((spread.ok, spread.errors), (0, 2), "{}", spread.table());
    assert_eq!(spread.error_codes.get("Unimplemented"), Some(&2), "{}", spread.table());
    assert_eq!(server.calls(), 3, "no unrouted call reached the backend");
    let again: api::Gateway = ctl_json(admin, &["gateway", "show", "edge/public"]);
    let unrouted: Vec<u64> = again.listeners.iter().map(|l| l.unrouted).collect();
    assert_eq!(unrouted, [2, 0]);
    let r = balancer_testing::http::get(admin, "/metrics").unwrap();
    let n = metric_sum(
        &r.body,
        "balancer_gateway_unrouted_calls_total",
        &[("gateway", "edge/public"), ("listener", "edge"), ("reason", "host")],
    );
    assert_eq!(n, 2.0, "{}", r.body);

    let out = ctl(admin, &["gateway", "show", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no gateway named `nope`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A route's `timeout` in the static file ends its calls that run longer
/// with DEADLINE_EXCEEDED; calls of other routes are not touched.
#[test]
fn a_route_timeout_from_the_file_ends_a_slow_call() {
    let server = TestServer::spawn("greeter-1").unwrap();
    let admin = free_port().unwrap();
    let listen = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"admin: {admin}
services:
  - name: greeter
    listen: {listen}
    endpoints: [ {{ address: {backend} }} ]
    routes:
      - name: sleep
        matches: [ {{ service: balancer.test.Echo, method: Sleep }} ]
        backends: [ {{ labels: {{}}, weight: 1 }} ]
        timeout: 300ms
"#,
        backend = server.addr(),
    );
    let mut agent = start_agent(dir.path(), &config, &[], "warn", Log::Discard);
    agent.wait_readyz(admin, Duration::from_secs(30)).unwrap();
    let svc: api::Service = ctl_json(admin, &["service", "show", "greeter"]);
    assert_eq!(svc.routes[0].timeout.as_deref(), Some("300ms"));
    // `explain` names the limit for a call the route takes, and none for
    // one it does not.
    let out = ctl(admin, &["service", "explain", "greeter", "balancer.test.Echo/Sleep"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Timeout:    300ms"), "{text}");
    let e: api::Explanation = ctl_json(admin, &["service", "explain", "greeter", "helloworld.Greeter/SayHello"]);
    assert!(e.route.is_none(), "{e:?}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (slept, took) = rt.block_on(async {
        let channel = greeter::client::connect(&listen.to_string()).await.unwrap();
        let started = std::time::Instant::now();
        let slept = tokio::time::timeout(
            Duration::from_secs(10),
            greeter::client::echo(channel).sleep(greeter::pb::echo::SleepRequest { millis: 3000 }),
        )
        .await
        .expect("the call ended within 10 s");
        (slept, started.elapsed())
    });
    let e = slept.expect_err("the route's timeout ends the call");
    assert_eq!(format!("{:?}", e.code()), "DeadlineExceeded", "{e:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // Calls of the service's other methods have no timeout and go on.
    let spread = calls_over_one_connection(listen, 3, 1);
    assert_eq!(spread.ok, 3, "{}", spread.table());
}

/// A service's `ejection` in the static file: with two of three endpoints
/// dead, `max_percent: 33` lets one of them be ejected, never both, and the
/// calls still all succeed (a refused connect is retried elsewhere).
#[test]
fn a_services_ejection_limit_from_the_file_keeps_endpoints_in_play() {
    let server = TestServer::spawn("greeter-1").unwrap();
    let admin = free_port().unwrap();
    let listen = free_port().unwrap();
    // Nothing listens on these: connects are refused.
    let (dead_a, dead_b) = (free_port().unwrap(), free_port().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"admin: {admin}
services:
  - name: greeter
    listen: {listen}
    endpoints: [ {{ address: {live} }}, {{ address: {dead_a} }}, {{ address: {dead_b} }} ]
    ejection: {{ consecutive_failures: 1, base: 60s, max_percent: 33 }}
"#,
        live = server.addr(),
    );
    let mut agent = start_agent(dir.path(), &config, &[], "warn", Log::Discard);
    agent.wait_readyz(admin, Duration::from_secs(30)).unwrap();
    let svc: api::Service = ctl_json(admin, &["service", "show", "greeter"]);
    assert_eq!(
        svc.ejection.as_deref(),
        Some("after 1 consecutive failures, for 60s (growing), at most 33% of endpoints at once")
    );

    let spread = calls_over_one_connection(listen, 30, 1);
    assert_eq!(spread.ok, 30, "{}", spread.table());
    let eps: Vec<api::Endpoint> = ctl_json(admin, &["endpoint", "show", "greeter"]);
    let dead: Vec<&api::Endpoint> = eps.iter().filter(|e| e.address != server.addr()).collect();
    assert_eq!(dead.len(), 2, "{eps:?}");
    assert!(
        dead.iter().all(|e| e.stats.connect_failures > 0),
        "both dead endpoints were tried: {eps:?}"
    );
    let ejected: Vec<SocketAddr> = eps.iter().filter(|e| e.stats.ejected).map(|e| e.address).collect();
    assert_eq!(ejected.len(), 1, "one of three ejected at most: {eps:?}");
    assert_ne!(ejected[0], server.addr());
}
