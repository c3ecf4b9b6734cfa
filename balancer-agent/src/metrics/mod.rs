//! Prometheus metrics (OpenMetrics text via `prometheus-client`).
//!
//! Almost everything is read at scrape time from what the agent keeps anyway
//! (the balance table's per-endpoint statistics, the connection registry, the
//! kernel programs' counters, the config source), so the data path pays
//! nothing for it. The one thing recorded for metrics alone is the call
//! latency histogram ([`LatencyRecorder`]: three relaxed atomic adds per call).
//!
//! # Wiring (what the demultiplexer calls)
//!
//! - Latency: when a service slot is built, take
//!   `metrics.latency.service(&name)` (an `Arc<LatencyHistogram>`); when a
//!   call ends (trailers or reset sent to the client), call
//!   `histogram.observe(started.elapsed())` with `started` taken when its
//!   request headers arrived. Without this, `balancer_request_duration_seconds`
//!   and the p50/p99 of `balancerctl stats` stay empty.
//! - Connections: [`crate::conns::ConnRegistry`] (see its module docs).
//! - The access log: [`crate::logging::access`] at the same point as the
//!   latency, guarded by [`crate::logging::access_enabled`].
//!
//! Label sets are bounded: `service` and `endpoint` by the configuration,
//! `grpc_status` by the 17 gRPC codes plus `reset`/`other`, `program` and
//! `event` by the kernel programs, `namespace` by the namespaces with
//! enrolled pods, `reason` by the sweep errors' kinds. No metric is per pod
//! (pods come and go; `balancerctl pod show` has the per-pod numbers).

mod latency;

use std::collections::BTreeMap;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

pub use latency::{LatencyHistogram, LatencyRecorder, BUCKETS};

use crate::{api, balance::ServiceCounters, conns::ConnTotals};

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The recorders the data path writes to. Everything else is read from the
/// views at scrape time.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per-service call latency: the demultiplexer observes every call's
    /// duration (request headers in to the response's end).
    pub latency: LatencyRecorder,
    /// What became of the agent's spans (tracing on).
    pub traces: std::sync::Arc<crate::traces::TraceCounters>,
    /// Calls gateway listeners answered themselves (no host, route or
    /// service for them).
    pub unrouted: std::sync::Arc<crate::balance::gateway::Unrouted>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Everything one scrape shows, read from the views once.
#[derive(Debug, Default)]
pub struct Scrape {
    pub version: String,
    pub ready: bool,
    pub ebpf: bool,
    pub programs_attached: bool,
    /// The services as the JSON API shows them: their counters are the
    /// balancer's snapshot ([`ServiceCounters`], `balance::EndpointStats`),
    /// encoded here as they are.
    pub services: Vec<api::Service>,
    pub latency: BTreeMap<String, api::Histogram>,
    pub conns: ConnTotals,
    pub programs: Vec<api::Program>,
    pub source: api::SourceStatus,
    pub enrolled_pods: u64,
    /// The agent's own conditions.
    pub health: crate::health::Conditions,
    /// The sweeps for pinned connections, when they run.
    pub pinned: Option<api::PinnedSweeps>,
    /// The agent's spans: exported and dropped.
    pub traces: crate::traces::TraceCounts,
    /// (gateway, listener, reason, calls).
    pub unrouted: Vec<(String, String, &'static str, u64)>,
}

/// Renders a scrape as OpenMetrics text.
pub fn encode(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A per-service counter: its name, help and field.
type PerService = (&'static str, &'static str, fn(&ServiceCounters) -> u64);

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels<'_>, u64)]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        } else {
            family(&mut m, labels)?.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels<'_>, i64)]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            family(&mut m, labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

fn family<'s>(m: &'s mut MetricEncoder<'_>, labels: &'s Labels<'_>) -> Result<MetricEncoder<'s>, std::fmt::Error> {
    m.encode_family(labels)
}

fn per_ep<'a, V: Copy>(rows: &'a [((&'a str, String), V)]) -> Vec<(Labels<'a>, V)> {
    rows.iter()
        .map(|((s, ep), v)| (vec![("service", *s), ("endpoint", ep.as_str())], *v))
        .collect()
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The pinned-connection sweeps: open pinned connections per namespace
/// (sum them for the node), closes, deferrals, errors by reason.
fn encode_pinned(e: &mut DescriptorEncoder, p: &api::PinnedSweeps) -> std::fmt::Result {
    gauge(
        e,
        "balancer_pinned_connections",
        "Enrolled pods' connections to a balanced VIP that bypass the agent (opened before the pod was \
         enrolled), left open by the last sweep, by the pods' namespace.",
        &p.pinned_by_namespace
            .iter()
            .map(|(ns, n)| (vec![("namespace", ns.as_str())], i(*n)))
            .collect::<Vec<_>>(),
    )?;
    counter(
        e,
        "balancer_pinned_connections_closed",
        "Pinned connections the agent closed so that their pod re-dials through it \
         (balancer.io/reconnect-pinned: enabled).",
        &[(vec![], p.closed)],
    )?;
    counter(
        e,
        "balancer_pinned_connections_deferred",
        "Closes of pinned connections put off to a later sweep by the node-wide rate limit.",
        &[(vec![], p.deferred)],
    )?;
    counter(
        e,
        "balancer_pinned_sweeps",
        "Sweeps of the enrolled pods for pinned connections.",
        &[(vec![], p.sweeps)],
    )?;
    counter(
        e,
        "balancer_pinned_sweep_errors",
        "Pods' sweeps that stopped short, by reason (cgroup_gone, not_visible, permission, close_refused, other).",
        &p.errors
            .iter()
            .map(|(r, n)| (vec![("reason", r.as_str())], *n))
            .collect::<Vec<_>>(),
    )
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut enc;
        let version = self.version.as_str();
        gauge(
            e,
            "balancer_build_info",
            "The agent's version.",
            &[(vec![("version", version)], 1)],
        )?;
        gauge(
            e,
            "balancer_ready",
            "1 when the agent is ready (programs attached, state synced).",
            &[(vec![], i64::from(self.ready))],
        )?;

        // Calls, per service, endpoint and gRPC status.
        let mut requests = Vec::new();
        let mut in_flight = Vec::new();
        let mut upstream = Vec::new();
        let mut ejected = Vec::new();
        let mut ejections = Vec::new();
        let mut ejections_total = Vec::new();
        let mut connect_failures = Vec::new();
        let mut refused = Vec::new();
        let mut ewma = Vec::new();
        for svc in &self.services {
            for ep in &svc.endpoints {
                let addr = ep.address.to_string();
                let st = &ep.stats;
                for (status, n) in &st.statuses {
                    requests.push(((svc.name.as_str(), addr.clone(), status.as_str()), *n));
                }
                in_flight.push(((svc.name.as_str(), addr.clone()), i(st.in_flight)));
                upstream.push(((svc.name.as_str(), addr.clone()), i(st.upstream_connections)));
                ejected.push(((svc.name.as_str(), addr.clone()), i64::from(st.ejected)));
                ejections.push(((svc.name.as_str(), addr.clone()), i(st.ejections)));
                ejections_total.push(((svc.name.as_str(), addr.clone()), st.ejections_total));
                connect_failures.push(((svc.name.as_str(), addr.clone()), st.connect_failures));
                refused.push(((svc.name.as_str(), addr.clone()), st.refused));
                if let Some(ms) = st.ewma_ms {
                    ewma.push(((svc.name.as_str(), addr.clone()), ms / 1e3));
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "balancer_requests",
                "Calls that ended on an endpoint, by gRPC status (reset: the stream was reset before a status).",
                None,
                MetricType::Counter,
            )?;
            for ((s, ep, st), n) in &requests {
                let l: Labels<'_> = vec![("service", s), ("endpoint", ep.as_str()), ("grpc_status", st)];
                family(&mut m, &l)?.encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        gauge(
            e,
            "balancer_in_flight_streams",
            "Calls in flight to an endpoint.",
            &per_ep(&in_flight),
        )?;
        gauge(
            e,
            "balancer_upstream_connections",
            "Open HTTP/2 connections to an endpoint.",
            &per_ep(&upstream),
        )?;
        gauge(
            e,
            "balancer_endpoint_ejected",
            "1 while passive health checking keeps the endpoint out.",
            &per_ep(&ejected),
        )?;
        gauge(
            e,
            "balancer_endpoint_ejection_backoff",
            "Consecutive ejections of the endpoint (its back-off multiplier; 0 once it recovered).",
            &per_ep(&ejections),
        )?;
        counter(
            e,
            "balancer_endpoint_ejections",
            "Times passive health checking ejected the endpoint.",
            &per_ep(&ejections_total),
        )?;
        counter(
            e,
            "balancer_endpoint_connect_failures",
            "Connects to an endpoint that failed.",
            &per_ep(&connect_failures),
        )?;
        counter(
            e,
            "balancer_endpoint_refused",
            "Calls an endpoint refused before handling them (REFUSED_STREAM, GOAWAY): retried elsewhere.",
            &per_ep(&refused),
        )?;
        {
            let mut m = e.encode_descriptor(
                "balancer_endpoint_latency_ewma_seconds",
                "Peak-EWMA of the time to response headers.",
                None,
                MetricType::Gauge,
            )?;
            for ((s, ep), v) in &ewma {
                let l: Labels<'_> = vec![("service", s), ("endpoint", ep.as_str())];
                family(&mut m, &l)?.encode_gauge(v)?;
            }
        }

        // Per service: every counter of the balancer's snapshot.
        let per_svc: [PerService; 4] = [
            (
                "balancer_service_calls",
                "Calls a service received, those the agent answered itself included.",
                |c| c.calls,
            ),
            (
                "balancer_no_endpoint",
                "Calls the agent answered UNAVAILABLE because no endpoint could take them.",
                |c| c.no_endpoint,
            ),
            ("balancer_retries", "Calls retried on another endpoint.", |c| c.retries),
            (
                "balancer_service_l4_connections",
                "Client connections to a service proxied as plain TCP (no HTTP/2 preface).",
                |c| c.l4_connections,
            ),
        ];
        for (name, help, value) in per_svc {
            let rows: Vec<(Labels<'_>, u64)> = self
                .services
                .iter()
                .map(|s| (vec![("service", s.name.as_str())], value(&s.counters)))
                .collect();
            counter(e, name, help, &rows)?;
        }
        {
            let faults: Vec<(Labels<'_>, u64)> = self
                .services
                .iter()
                .filter(|s| s.fault.is_some() || s.counters.faults_delayed + s.counters.faults_aborted > 0)
                .flat_map(|s| {
                    [
                        ("delay", s.counters.faults_delayed),
                        ("abort", s.counters.faults_aborted),
                    ]
                    .into_iter()
                    .map(|(kind, n)| (vec![("service", s.name.as_str()), ("fault", kind)], n))
                })
                .collect();
            counter(
                e,
                "balancer_faults_injected",
                "Calls into which the agent injected a fault (fault=delay or abort).",
                &faults,
            )?;
        }
        {
            let mirrors: Vec<(Labels<'_>, u64)> = self
                .services
                .iter()
                .filter(|s| {
                    s.routes.iter().any(|r| !r.filters.is_empty())
                        || s.counters.mirrored + s.counters.mirrors_dropped + s.counters.mirrors_failed > 0
                })
                .flat_map(|s| {
                    [
                        ("sent", s.counters.mirrored),
                        ("dropped", s.counters.mirrors_dropped),
                        ("failed", s.counters.mirrors_failed),
                    ]
                    .into_iter()
                    .map(|(result, n)| (vec![("service", s.name.as_str()), ("result", result)], n))
                })
                .collect();
            counter(
                e,
                "balancer_mirrored_calls",
                "Copies of calls for a GRPCRoute RequestMirror: sent (the whole request handed to a mirror connection), dropped (no mirror endpoint or connection ready at once, too many in flight, or a request beyond the copy's bound), failed (sent, then never answered: unreachable, refused, reset or timed out).",
                &mirrors,
            )?;
        }
        {
            let mut m = e.encode_descriptor(
                "balancer_request_duration_seconds",
                "Call duration at the agent, from the request's headers to the end of the response.",
                None,
                MetricType::Histogram,
            )?;
            for (svc, h) in &self.latency {
                let l: Labels<'_> = vec![("service", svc.as_str())];
                let buckets: Vec<(f64, u64)> = h
                    .counts
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (h.bounds.get(i).copied().unwrap_or(f64::INFINITY), *c))
                    .collect();
                family(&mut m, &l)?.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count(), &buckets, None)?;
            }
        }

        // Client connections.
        let c = self.conns;
        gauge(
            e,
            "balancer_client_connections",
            "Open client connections.",
            &[(vec![], i(c.open))],
        )?;
        counter(
            e,
            "balancer_client_connections_accepted",
            "Client connections accepted.",
            &[(vec![], c.accepted)],
        )?;
        counter(
            e,
            "balancer_client_connections_refused",
            "Client connections refused: no original destination (the agent is not an open proxy).",
            &[(vec![], c.refused)],
        )?;
        counter(
            e,
            "balancer_l4_fallback_connections",
            "Client connections proxied as plain TCP to one endpoint (no HTTP/2 preface).",
            &[(vec![], c.l4_fallback)],
        )?;
        counter(
            e,
            "balancer_client_streams",
            "Streams (calls) accepted from clients.",
            &[(vec![], c.streams)],
        )?;

        // The agent's conditions.
        gauge(
            e,
            "balancer_node_unsupported",
            "1 when this node cannot run balancer (no cgroup v2, an old kernel); see balancerctl status.",
            &[(vec![], i64::from(self.health.unsupported))],
        )?;
        gauge(
            e,
            "balancer_draining",
            "1 while the agent stops: nothing new is redirected to it.",
            &[(vec![], i64::from(self.health.draining))],
        )?;
        gauge(
            e,
            "balancer_services_map_overflow",
            "Service VIP:port pairs that do not fit the kernel's SERVICES map: their connections are not \
             redirected (see balancerctl status).",
            &[(vec![], self.health.overflow as i64)],
        )?;
        gauge(
            e,
            "balancer_foreign_connect_programs",
            "Other programs on the connect hooks of the attach cgroup, by whether they run before balancer's \
             (then they rewrite Service VIPs first and nothing is redirected).",
            &[
                (vec![("runs_first", "true")], self.health.shadowing as i64),
                (vec![("runs_first", "false")], self.health.warnings.len() as i64),
            ],
        )?;

        // Kernel.
        gauge(
            e,
            "balancer_ebpf_enabled",
            "1 when the kernel programs are used.",
            &[(vec![], i64::from(self.ebpf))],
        )?;
        gauge(
            e,
            "balancer_kernel_programs_attached",
            "1 when every kernel program is loaded and attached.",
            &[(vec![], i64::from(self.programs_attached))],
        )?;
        let redirected: u64 = self
            .programs
            .iter()
            .filter(|p| p.name == "connect4" || p.name == "connect6")
            .filter_map(|p| p.counters.get("redirected"))
            .sum();
        if self.ebpf {
            counter(
                e,
                "balancer_redirected_connections",
                "Connects to a Service VIP that the kernel redirected to the agent.",
                &[(vec![], redirected)],
            )?;
        }
        counter(
            e,
            "balancer_kernel_program_runs",
            "Runs of each kernel program (kernel statistics; needs kernel.bpf_stats_enabled).",
            &self
                .programs
                .iter()
                .filter_map(|p| Some((vec![("program", p.name.as_str())], p.run_count?)))
                .collect::<Vec<_>>(),
        )?;
        {
            let mut m = e.encode_descriptor(
                "balancer_kernel_program_run_seconds",
                "Time spent in each kernel program (kernel statistics).",
                None,
                MetricType::Counter,
            )?;
            for p in &self.programs {
                if let Some(ns) = p.run_time_ns {
                    let l: Labels<'_> = vec![("program", p.name.as_str())];
                    family(&mut m, &l)?.encode_counter::<NoLabelSet, _, u64>(&(ns as f64 / 1e9), None)?;
                }
            }
        }
        let mut events = Vec::new();
        for p in &self.programs {
            for (ev, v) in &p.counters {
                events.push((vec![("program", p.name.as_str()), ("event", ev.as_str())], *v));
            }
        }
        counter(
            e,
            "balancer_kernel_events",
            "The kernel programs' own counters (redirected, passed, errors, bytes, pinned).",
            &events,
        )?;

        // Config / discovery.
        let src = &self.source;
        counter(
            e,
            "balancer_config_reloads",
            "Reloads of the state (static file or Kubernetes), by result.",
            &[
                (vec![("result", "ok")], src.reloads_ok),
                (vec![("result", "failed")], src.reloads_failed),
            ],
        )?;
        gauge(
            e,
            "balancer_discovery_synced",
            "1 once services and pods have been read completely.",
            &[(vec![("source", src.kind.as_str())], i64::from(src.synced))],
        )?;
        gauge(
            e,
            "balancer_services",
            "Balanced services.",
            &[(vec![], self.services.len() as i64)],
        )?;
        gauge(
            e,
            "balancer_enrolled_pods",
            "Enrolled pods (cgroups).",
            &[(vec![], i(self.enrolled_pods))],
        )?;
        if let Some(p) = &self.pinned {
            encode_pinned(e, p)?;
        }
        counter(
            e,
            "balancer_trace_spans_exported",
            "Spans of calls sent to the OTLP collector.",
            &[(vec![], self.traces.exported)],
        )?;
        counter(
            e,
            "balancer_trace_spans_dropped",
            "Spans of sampled calls lost: the exporter's queue was full (queue_full) or the collector \
             refused or did not answer (export_failed).",
            &[
                (vec![("reason", "queue_full")], self.traces.dropped_queue_full),
                (vec![("reason", "export_failed")], self.traces.dropped_export_failed),
            ],
        )?;
        if !self.unrouted.is_empty() {
            let rows: Vec<(Labels<'_>, u64)> = self
                .unrouted
                .iter()
                .map(|(g, l, r, n)| {
                    (
                        vec![("gateway", g.as_str()), ("listener", l.as_str()), ("reason", *r)],
                        *n,
                    )
                })
                .collect();
            counter(
                e,
                "balancer_gateway_unrouted_calls",
                "Calls a gateway listener answered itself: the listener serves no such host (host, \
                 UNIMPLEMENTED), no route matches the call (route, UNIMPLEMENTED), or the route's service \
                 is not available (service, UNAVAILABLE).",
                &rows,
            )?;
        }
        if let Some(missing) = src.pods_cgroup_missing {
            gauge(
                e,
                "balancer_pods_cgroup_missing",
                "Opted-in pods not enrolled because their cgroup was not found in time (Kubernetes mode).",
                &[(vec![], i(missing))],
            )?;
        }
        Ok(())
    }
}
