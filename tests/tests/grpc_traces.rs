//! Traces through the agent's explicit listener (static mode, `--no-ebpf`),
//! with tonic clients and backends and a fake OTLP collector on loopback:
//! one span per call with the call's attributes; a client's `traceparent`
//! keeps its trace id at the backend with the agent's span as the parent;
//! tracing off leaves the client's headers alone; a collector that is down
//! costs the calls nothing and its lost spans are counted. The kernel
//! redirect's side is in `agent_redirect.rs`.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use balancer_tests::otlp::{Collector, Received};
use greeter::{
    client,
    pb::echo::{EchoReply, EchoRequest, StatusRequest},
    server::TestServer,
};
use grpc_support::{config, ep, free_port, Agent};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const SPANS_TIMEOUT: Duration = Duration::from_secs(15);
/// The client's trace context in the tests below.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traced(base: String, endpoint: &str, extra: &str) -> String {
    format!("{base}tracing:\n  otlp_endpoint: {endpoint}\n{extra}")
}

/// One `Echo/Unary` call with `headers`; the reply echoes the request's
/// `x-*`, `traceparent` and `tracestate` as the backend saw them.
async fn echo_with(ch: &tonic::transport::Channel, headers: &[(&'static str, &str)]) -> EchoReply {
    let mut req = tonic::Request::new(EchoRequest {
        payload: b"p".to_vec(),
        message: "m".into(),
        reply_size: 0,
    });
    req.set_timeout(CALL_TIMEOUT);
    for (k, v) in headers {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    client::echo(ch.clone()).unary(req).await.unwrap().into_inner()
}

/// `(trace id, parent id, flags)` of a `traceparent`.
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!((p[0], tp.len()), ("00", 55), "{tp}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

/// A counter of the admin server's `/metrics` (`name{labels}` as printed).
fn metric(agent: &Agent, series: &str) -> Option<f64> {
    let body = balancer_testing::http::get(agent.admin, "/metrics").ok()?.body;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn start(servers: &[TestServer], tracing: Option<(&str, &str)>) -> Agent {
    let (admin, listen) = (free_port(), free_port());
    let eps: Vec<_> = servers.iter().map(|s| ep(s.addr(), "v1")).collect();
    let base = config(admin, "greeter", listen, &eps, &[]);
    let text = match tracing {
        Some((endpoint, extra)) => traced(base, endpoint, extra),
        None => base,
    };
    Agent::start_with(admin, listen, &text, &["--access-log"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_gets_one_span_with_the_calls_attributes() {
    let servers: Vec<_> = ["a", "b"].iter().map(|n| TestServer::spawn(n).unwrap()).collect();
    let collector = Collector::start().unwrap();
    let agent = start(&servers, Some((&collector.url(), "  service_name: node-7-balancer\n")));
    let ch = client::connect(&agent.target()).await.unwrap();

    const N: u64 = 20;
    let s = client::say_hello_spread(ch.clone(), N, 4, CALL_TIMEOUT).await;
    assert_eq!(s.ok, N, "{s:?}");
    // A call the backend fails: its span is an error with the status.
    let mut req = tonic::Request::new(StatusRequest {
        code: 14,
        message: "down for a test".into(),
        trailers: Default::default(),
    });
    req.set_timeout(CALL_TIMEOUT);
    let err = client::echo(ch.clone()).fail(req).await.expect_err("status 14");
    assert_eq!(err.code(), tonic::Code::Unavailable);

    let spans = collector.wait_for(N as usize + 1, SPANS_TIMEOUT);
    assert_eq!(spans.len(), N as usize + 1, "one span per call: {spans:#?}");
    let endpoints: BTreeSet<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let (hellos, fails): (Vec<&Received>, Vec<&Received>) =
        spans.iter().partition(|r| r.span.name == "helloworld.Greeter/SayHello");
    assert_eq!(hellos.len(), N as usize);
    for r in &hellos {
        assert_eq!(r.service_name, "node-7-balancer");
        assert_eq!(r.str("rpc.system"), Some("grpc"));
        assert_eq!(r.str("rpc.service"), Some("helloworld.Greeter"));
        assert_eq!(r.str("rpc.method"), Some("SayHello"));
        assert_eq!(r.int("rpc.grpc.status_code"), Some(0));
        assert_eq!(r.str("balancer.service"), Some("greeter"));
        assert_eq!(r.int("balancer.retries"), Some(0));
        let endpoint = r.str("balancer.endpoint").unwrap();
        assert!(endpoints.contains(endpoint), "{endpoint} is not a backend");
        let port: SocketAddr = endpoint.parse().unwrap();
        assert_eq!(r.int("server.port"), Some(i64::from(port.port())));
        assert!(!r.is_error());
        assert!(r.span.parent_span_id.is_empty(), "no client trace: a root span");
        assert!(r.span.end_time_unix_nano >= r.span.start_time_unix_nano);
        assert!(r.span.start_time_unix_nano > 0);
    }
    // Both backends served, and every call is a trace of its own.
    let used: BTreeSet<&str> = hellos.iter().filter_map(|r| r.str("balancer.endpoint")).collect();
    assert_eq!(used.len(), 2, "{used:?}");
    let traces: BTreeSet<String> = spans.iter().map(Received::trace_id).collect();
    assert_eq!(traces.len(), spans.len());

    let [fail] = fails[..] else {
        panic!("one failed call's span: {fails:#?}")
    };
    assert_eq!(fail.span.name, "balancer.test.Echo/Fail");
    assert_eq!(fail.int("rpc.grpc.status_code"), Some(14));
    assert!(fail.is_error(), "a non-OK call's span is an error");

    assert_eq!(
        metric(&agent, "balancer_trace_spans_exported_total"),
        Some((N + 1) as f64)
    );
    // The access log names each call's trace.
    let log = agent.log();
    let logged: BTreeSet<String> = log
        .lines()
        .filter(|l| l.contains("balancer::access"))
        .filter_map(|l| Some(l.split("trace_id=").nth(1)?.split_whitespace().next()?.to_owned()))
        .collect();
    assert_eq!(logged, traces, "access log trace ids:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_keeps_its_id_and_the_backend_sees_the_agents_span_as_parent() {
    let server = TestServer::spawn("a").unwrap();
    let collector = Collector::start().unwrap();
    // Sampling 0: traces the agent starts are not exported; the client's
    // decision still wins for its own.
    let agent = start(
        std::slice::from_ref(&server),
        Some((&collector.url(), "  sampling: 0\n")),
    );
    let ch = client::connect(&agent.target()).await.unwrap();

    // The client did not sample its trace: the agent propagates, exports nothing.
    let unsampled = format!("00-{}-{CLIENT_SPAN}-00", "1".repeat(32));
    let reply = echo_with(&ch, &[("traceparent", &unsampled)]).await;
    let (trace, parent, flags) = parts(&reply.metadata["traceparent"]);
    assert_eq!((trace.as_str(), flags.as_str()), ("1".repeat(32).as_str(), "00"));
    assert_ne!(parent, CLIENT_SPAN, "the agent's span is the backend's parent");

    // No client trace and sampling 0: a new, unsampled trace.
    let reply = echo_with(&ch, &[]).await;
    let (root_trace, _, flags) = parts(&reply.metadata["traceparent"]);
    assert_eq!(flags, "00");

    // A sampled client trace, with a tracestate.
    let client_tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let reply = echo_with(&ch, &[("traceparent", &client_tp), ("tracestate", state)]).await;
    let (trace, parent, flags) = parts(&reply.metadata["traceparent"]);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(parent, CLIENT_SPAN);
    assert_eq!(reply.metadata["tracestate"], state, "tracestate passes unchanged");

    let spans = collector.wait_for(1, SPANS_TIMEOUT);
    let [span] = &spans[..] else {
        panic!("only the sampled call is exported: {spans:#?}")
    };
    assert_eq!(span.trace_id(), TRACE);
    assert_eq!(
        span.parent_span_id(),
        CLIENT_SPAN,
        "the agent's span is the client's child"
    );
    assert_eq!(span.span_id(), parent, "the backend's parent is the exported span");
    assert_eq!(span.span.name, "balancer.test.Echo/Unary");
    assert_ne!(span.trace_id(), root_trace);

    // An invalid traceparent counts as none: a new trace (its tracestate
    // is still passed on).
    for bad in [
        format!("00-{}-{CLIENT_SPAN}-01", TRACE.to_uppercase()),
        format!("00-{}-{CLIENT_SPAN}-01", "0".repeat(32)),
        "garbage".to_owned(),
    ] {
        let reply = echo_with(&ch, &[("traceparent", &bad), ("tracestate", state)]).await;
        let (trace, parent, _) = parts(&reply.metadata["traceparent"]);
        assert_ne!(trace.to_lowercase(), TRACE, "{bad}");
        assert_ne!(trace, "0".repeat(32), "{bad}");
        assert_ne!(parent, CLIENT_SPAN, "{bad}");
        assert_eq!(reply.metadata["tracestate"], state);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_the_backend_sees_the_clients_headers_unchanged() {
    let server = TestServer::spawn("a").unwrap();
    let agent = start(std::slice::from_ref(&server), None);
    let ch = client::connect(&agent.target()).await.unwrap();

    let client_tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    for headers in [
        vec![("traceparent", client_tp.as_str()), ("tracestate", "rojo=1")],
        vec![("traceparent", "not-a-traceparent")],
        vec![("x-other", "1")],
    ] {
        let reply = echo_with(&ch, &headers).await;
        let sent: std::collections::HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(reply.metadata, sent, "the backend saw other headers");
    }
    assert_eq!(metric(&agent, "balancer_trace_spans_exported_total"), Some(0.0));
    let log = agent.log();
    assert!(!log.contains("trace_id="), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_calls_nothing_and_its_spans_are_counted_dropped() {
    let server = TestServer::spawn("a").unwrap();
    // Nothing listens there.
    let down = format!("http://{}", free_port());
    let agent = start(std::slice::from_ref(&server), Some((&down, "")));
    let ch = client::connect(&agent.target()).await.unwrap();

    const N: u64 = 300;
    let s = client::say_hello_spread(ch.clone(), N, 8, CALL_TIMEOUT).await;
    assert_eq!((s.ok, s.errors), (N, 0), "{s:?}");
    assert_eq!(server.calls(), N);
    // Every span is accounted for as dropped (bounded wait for the
    // exporter's last batch).
    let dropped = |reason: &str| {
        metric(
            &agent,
            &format!("balancer_trace_spans_dropped_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let until = std::time::Instant::now() + SPANS_TIMEOUT;
    while dropped("export_failed") + dropped("queue_full") < N as f64 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped("export_failed") + dropped("queue_full"), N as f64);
    assert_eq!(metric(&agent, "balancer_trace_spans_exported_total"), Some(0.0));
    // Later calls still work.
    let s = client::say_hello_spread(ch.clone(), 10, 2, CALL_TIMEOUT).await;
    assert_eq!(s.ok, 10, "{s:?}");
}

/// A collector that takes connections and never answers: the exporter
/// waits on it (5 s a batch), its queue fills, and later spans are dropped
/// at once — every call still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_fills_the_queue_and_calls_go_on() {
    let server = TestServer::spawn("a").unwrap();
    // Connections complete in the backlog; nothing reads them.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", stalled.local_addr().unwrap());
    let agent = start(std::slice::from_ref(&server), Some((&url, "")));
    let ch = client::connect(&agent.target()).await.unwrap();

    // More calls than the queue (2048) and one batch (512) hold.
    const N: u64 = 3_000;
    let s = client::say_hello_spread(ch.clone(), N, 16, CALL_TIMEOUT).await;
    assert_eq!((s.ok, s.errors), (N, 0), "{s:?}");
    // Each span is exported (none), dropped, queued (at most 2048) or in
    // the batch being sent (at most 512). On a quick machine the queue
    // filled (queue_full); on a slow one batches timed out (export_failed).
    let dropped = |reason: &str| {
        metric(
            &agent,
            &format!("balancer_trace_spans_dropped_total{{reason=\"{reason}\"}}"),
        )
        .unwrap()
    };
    let (full, failed) = (dropped("queue_full"), dropped("export_failed"));
    assert!(
        full + failed >= (N - 2048 - 512) as f64,
        "{full} spans dropped at a full queue, {failed} in failed batches"
    );
    assert_eq!(metric(&agent, "balancer_trace_spans_exported_total"), Some(0.0));
    drop(stalled);
}

/// Spans of the calls made just before a stop are sent before the agent
/// exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_calls_spans_are_sent_when_the_agent_stops() {
    let server = TestServer::spawn("a").unwrap();
    let collector = Collector::start().unwrap();
    let mut agent = start(std::slice::from_ref(&server), Some((&collector.url(), "")));
    let ch = client::connect(&agent.target()).await.unwrap();
    let s = client::say_hello_spread(ch.clone(), 7, 1, CALL_TIMEOUT).await;
    assert_eq!(s.ok, 7, "{s:?}");
    agent.process.sigterm().unwrap();
    let status = agent.process.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", agent.log());
    assert_eq!(collector.spans().len(), 7, "spans lost at the stop");
}

/// The flags (the DaemonSet's `BALANCER_OTLP_ENDPOINT` and companions in
/// Kubernetes mode) turn tracing on, over the static file's `tracing:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flags_turn_tracing_on_over_the_files_settings() {
    let server = TestServer::spawn("a").unwrap();
    let collector = Collector::start().unwrap();
    let (admin, listen) = (free_port(), free_port());
    let base = config(admin, "greeter", listen, &[ep(server.addr(), "v1")], &[]);
    // The file names a collector that is down; the flags win.
    let text = traced(base, &format!("http://{}", free_port()), "");
    let url = collector.url();
    let args = [
        "--otlp-endpoint",
        &url,
        "--trace-service-name",
        "from-flags",
        "--trace-sampling",
        "1",
    ];
    let agent = Agent::start_with(admin, listen, &text, &args);
    let ch = client::connect(&agent.target()).await.unwrap();
    let s = client::say_hello_spread(ch.clone(), 5, 1, CALL_TIMEOUT).await;
    assert_eq!(s.ok, 5, "{s:?}");
    let spans = collector.wait_for(5, SPANS_TIMEOUT);
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert!(spans.iter().all(|r| r.service_name == "from-flags"));
}

#[test]
fn bad_tracing_settings_are_one_line_errors_naming_the_key() {
    let cases = [
        ("  otlp_endpoint: https://collector:4318\n", "tracing.otlp_endpoint"),
        (
            "  otlp_endpoint: http://collector:4318\n  sampling: 1.5\n",
            "tracing.sampling",
        ),
        ("  otlp_endpoint: http://collector:4318\n  sampler: 1\n", "tracing"),
    ];
    for (body, key) in cases {
        let text = format!("services: []\ntracing:\n{body}");
        let err = balancer_agent::config::parse(&text, "b.yaml").unwrap_err().to_string();
        assert!(err.starts_with(&format!("b.yaml: {key}")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let ok = balancer_agent::config::parse(
        "services: []\ntracing:\n  otlp_endpoint: http://collector:4318\n  sampling: 0.25\n",
        "b.yaml",
    )
    .unwrap();
    let t = ok.node.tracing.unwrap();
    assert_eq!(t.endpoint.to_string(), "http://collector:4318/v1/traces");
    assert_eq!(t.service_name, "balancer");
    assert!((t.sampling.as_ratio() - 0.25).abs() < 1e-9);
}
