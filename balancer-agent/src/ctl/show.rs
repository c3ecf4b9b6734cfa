//! One function per object: fetch, then print as a table or JSON.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    client::{segment, AdminClient},
    print_json,
    table::{join, opt, secs, Table},
    Cli, CtlError, Format,
};
use crate::admin::{api, kernel::KernelReader};

fn kernel_reader() -> Result<KernelReader, CtlError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(CtlError::NotRoot);
    }
    Ok(KernelReader::discover())
}

fn kernel_err(e: crate::admin::kernel::KernelError) -> CtlError {
    if e.is_permission_denied() {
        CtlError::NotRoot
    } else {
        CtlError::Kernel(e)
    }
}

pub(super) fn programs(
    cli: &Cli,
    client: &AdminClient,
    out: &mut dyn Write,
    format: Format,
    id: Option<u32>,
) -> Result<(), CtlError> {
    let mut progs: Vec<api::Program> = if cli.kernel {
        kernel_reader()?.programs().map_err(kernel_err)?
    } else {
        client.get("/api/v1/programs")?
    };
    if let Some(id) = id {
        progs.retain(|p| p.id == id);
        if progs.is_empty() {
            return Err(CtlError::NoProgram(id));
        }
    }
    if format != Format::Table {
        return print_json(out, format, &progs);
    }
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "TYPE",
        "ATTACH",
        "ATTACHED TO",
        "RUNS",
        "RUN TIME",
        "REDIRECTED",
        "PASSED",
        "ERRORS",
        "BYTES",
        "PINNED",
    ]);
    for p in &progs {
        let c = |k: &str| opt(p.counters.get(k));
        t.row(vec![
            p.id.to_string(),
            p.name.clone(),
            p.prog_type.clone(),
            opt(p.attach_type.as_ref()),
            opt(p.attach_point.as_ref()),
            opt(p.run_count),
            p.run_time_ns.map_or_else(|| "-".into(), |ns| secs(ns as f64 / 1e9)),
            c("redirected"),
            c("passed"),
            c("errors"),
            c("bytes"),
            c("pinned"),
        ]);
    }
    write!(out, "{}", t.render())?;
    Ok(())
}

pub(super) fn maps(cli: &Cli, client: &AdminClient, out: &mut dyn Write, format: Format) -> Result<(), CtlError> {
    let maps: Vec<api::Map> = if cli.kernel {
        kernel_reader()?.maps().map_err(kernel_err)?
    } else {
        client.get("/api/v1/maps")?
    };
    if format != Format::Table {
        return print_json(out, format, &maps);
    }
    let mut t = Table::new(&["ID", "NAME", "TYPE", "KEY", "VALUE", "MAX ENTRIES", "ENTRIES"]);
    for m in &maps {
        t.row(vec![
            m.id.to_string(),
            m.name.clone(),
            m.map_type.clone(),
            format!("{}B", m.key_size),
            format!("{}B", m.value_size),
            m.max_entries.to_string(),
            opt(m.entries),
        ]);
    }
    write!(out, "{}", t.render())?;
    Ok(())
}

pub(super) fn map_dump(
    cli: &Cli,
    client: &AdminClient,
    out: &mut dyn Write,
    format: Format,
    name: &str,
) -> Result<(), CtlError> {
    let dump: api::MapDump = if cli.kernel {
        kernel_reader()?
            .dump(name)
            .map_err(kernel_err)?
            .ok_or_else(|| CtlError::NoMap(name.to_owned()))?
    } else {
        client.get(&format!("/api/v1/maps/{}", segment(name)))?
    };
    if format != Format::Table {
        return print_json(out, format, &dump);
    }
    let mut t = Table::new(&["KEY", "VALUE"]);
    for e in &dump.entries {
        t.row(vec![e.key.clone(), e.value.clone()]);
    }
    write!(out, "{}", t.render())?;
    writeln!(
        out,
        "Found {} element{}",
        dump.entries.len(),
        if dump.entries.len() == 1 { "" } else { "s" }
    )?;
    Ok(())
}

pub(super) fn services(
    client: &AdminClient,
    out: &mut dyn Write,
    format: Format,
    name: Option<&str>,
) -> Result<(), CtlError> {
    if let Some(name) = name {
        let svc: api::Service = client.get(&format!("/api/v1/services/{}", segment(name)))?;
        if format != Format::Table {
            return print_json(out, format, &svc);
        }
        writeln!(out, "Name:       {}", svc.name)?;
        writeln!(out, "VIPs:       {}", join(&svc.vips))?;
        writeln!(out, "Listen:     {}", opt(svc.listen))?;
        match &svc.hash_header {
            Some(h) => writeln!(out, "Policy:     {} (header {h}; without it round-robin)", svc.policy)?,
            None => writeln!(out, "Policy:     {}", svc.policy)?,
        }
        if let Some(f) = &svc.fault {
            writeln!(
                out,
                "Faults:     {f} (so far {} delayed, {} aborted)",
                svc.counters.faults_delayed, svc.counters.faults_aborted
            )?;
        }
        if let Some(l) = locality_line(&svc) {
            writeln!(out, "Locality:   {l}")?;
        }
        if let Some(e) = &svc.ejection {
            writeln!(out, "Ejection:   {e}")?;
        }
        writeln!(out, "Calls:      {}", svc.counters.calls)?;
        writeln!(out, "Errors:     {}", svc.errors())?;
        writeln!(out, "No endpoint: {}", svc.counters.no_endpoint)?;
        writeln!(out, "In flight:  {}", svc.in_flight())?;
        writeln!(out, "Retries:    {}", svc.counters.retries)?;
        writeln!(out, "Routes:")?;
        if svc.routes.is_empty() {
            writeln!(out, "  (none: every call goes to all ready endpoints)")?;
        } else {
            let mut t = Table::new(&["  NAME", "MATCHES", "BACKENDS", "TIMEOUT"]);
            for r in &svc.routes {
                let backends = r
                    .backends
                    .iter()
                    .map(|b| format!("{}:{}", b.selector, b.weight))
                    .collect::<Vec<_>>();
                t.row(vec![
                    format!("  {}", opt(r.name.as_ref())),
                    r.matches.join(" | "),
                    backends.join(" "),
                    opt(r.timeout.as_ref()),
                ]);
            }
            write!(out, "{}", t.render())?;
            let filtered: Vec<&api::Route> = svc.routes.iter().filter(|r| !r.filters.is_empty()).collect();
            if !filtered.is_empty() {
                writeln!(out, "Filters:")?;
                for r in filtered {
                    writeln!(out, "  {}:", opt(r.name.as_ref()))?;
                    for f in &r.filters {
                        writeln!(out, "    {f}")?;
                    }
                }
            }
        }
        let c = &svc.counters;
        if c.mirrored + c.mirrors_dropped > 0 {
            writeln!(
                out,
                "Mirrored:   {} sent ({} unanswered), {} dropped",
                c.mirrored, c.mirrors_failed, c.mirrors_dropped
            )?;
        }
        writeln!(out, "Endpoints:")?;
        write!(out, "{}", indent(&endpoint_table(&svc.endpoints).render()))?;
        return Ok(());
    }
    let services: Vec<api::Service> = client.get("/api/v1/services")?;
    if format != Format::Table {
        return print_json(out, format, &services);
    }
    let mut t = Table::new(&[
        "NAME",
        "VIPS",
        "LISTEN",
        "POLICY",
        "ENDPOINTS",
        "ROUTES",
        "IN-FLIGHT",
        "CALLS",
        "ERRORS",
        "NO-ENDPOINT",
        "RETRIES",
    ]);
    for s in &services {
        let ready = s
            .endpoints
            .iter()
            .filter(|e| e.state == "ready" && !e.stats.ejected)
            .count();
        t.row(vec![
            s.name.clone(),
            join(&s.vips),
            opt(s.listen),
            s.policy.clone(),
            format!("{ready}/{}", s.endpoints.len()),
            s.routes.len().to_string(),
            s.in_flight().to_string(),
            s.counters.calls.to_string(),
            s.errors().to_string(),
            s.counters.no_endpoint.to_string(),
            s.counters.retries.to_string(),
        ]);
    }
    write!(out, "{}", t.render())?;
    Ok(())
}

/// How a service's calls treat locality, e.g. `PreferClose: 1 node, 2
/// zone, 3 other`; `None` when they do not.
fn locality_line(svc: &api::Service) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(itp) = &svc.internal_traffic_policy {
        parts.push(format!("internalTrafficPolicy {itp}"));
    }
    if let Some(td) = &svc.traffic_distribution {
        parts.push(td.clone());
    }
    if parts.is_empty() {
        return None;
    }
    let mut tiers: Vec<String> = Vec::new();
    for tier in ["node", "zone", "other", "off-node"] {
        let n = svc
            .endpoints
            .iter()
            .filter(|e| e.locality.as_deref() == Some(tier))
            .count();
        if n > 0 {
            tiers.push(format!("{n} {tier}"));
        }
    }
    let mut line = parts.join(", ");
    if !tiers.is_empty() {
        line.push_str(&format!(" (endpoints: {})", tiers.join(", ")));
    }
    Some(line)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// The endpoints; a LOCALITY column (tier for this agent) when the service
/// prefers close endpoints or stays on the node.
fn endpoint_table(eps: &[api::Endpoint]) -> Table {
    let tiered = eps.iter().any(|e| e.locality.is_some());
    let mut head = vec![
        "ADDRESS",
        "STATE",
        "EJECTED",
        "IN-FLIGHT",
        "EWMA",
        "CALLS",
        "ERRORS",
        "CONNS",
        "LABELS",
    ];
    if tiered {
        head.insert(2, "LOCALITY");
    }
    let mut t = Table::new(&head);
    for e in eps {
        let st = &e.stats;
        let errors: Vec<String> = st
            .statuses
            .iter()
            .filter(|(k, _)| k.as_str() != "0")
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        let mut row = vec![
            e.address.to_string(),
            e.state.clone(),
            if st.ejected {
                format!("yes ({})", st.ejections)
            } else {
                "no".into()
            },
            st.in_flight.to_string(),
            st.ewma_ms.map_or_else(|| "-".into(), |ms| secs(ms / 1e3)),
            st.calls.to_string(),
            if errors.is_empty() {
                "0".into()
            } else {
                format!("{} ({})", st.errors(), errors.join(","))
            },
            st.upstream_connections.to_string(),
            crate::api::selector(&e.labels),
        ];
        if tiered {
            row.insert(2, e.locality.clone().unwrap_or_else(|| "-".into()));
        }
        t.row(row);
    }
    t
}

pub(super) fn endpoints(
    client: &AdminClient,
    out: &mut dyn Write,
    format: Format,
    service: &str,
) -> Result<(), CtlError> {
    let eps: Vec<api::Endpoint> = client.get(&format!("/api/v1/services/{}/endpoints", segment(service)))?;
    if format != Format::Table {
        return print_json(out, format, &eps);
    }
    write!(out, "{}", endpoint_table(&eps).render())?;
    Ok(())
}

pub(super) fn pods(client: &AdminClient, out: &mut dyn Write, format: Format) -> Result<(), CtlError> {
    let pods: Vec<api::Pod> = client.get("/api/v1/pods")?;
    if format != Format::Table {
        return print_json(out, format, &pods);
    }
    let mut t = Table::new(&["POD", "IP", "CGROUP ID", "PINNED", "CLOSED", "CGROUP"]);
    for p in &pods {
        let (pinned, closed) = pinned_cells(p);
        t.row(vec![
            opt(p.pod.as_ref()),
            opt(p.ip.as_ref()),
            opt(p.cgroup_id),
            pinned,
            closed,
            p.cgroup.clone(),
        ]);
    }
    write!(out, "{}", t.render())?;
    for p in pods.iter().filter(|p| p.pinned_error.is_some()) {
        writeln!(
            out,
            "{}: sweep failed: {}",
            p.pod.as_ref().unwrap_or(&p.cgroup),
            p.pinned_error.as_deref().unwrap_or_default()
        )?;
    }
    Ok(())
}

/// PINNED: connections that bypass the agent, left open by the last sweep
/// (`?`: the sweep could not look; `-`: not swept). CLOSED: those the agent
/// closed so far (`off`: the pod has not opted in to that).
fn pinned_cells(p: &api::Pod) -> (String, String) {
    let swept = p.pinned.is_some() || p.pinned_error.is_some();
    let pinned = match (p.pinned, &p.pinned_error) {
        (Some(n), _) => n.to_string(),
        (None, Some(_)) => "?".to_owned(),
        (None, None) => "-".to_owned(),
    };
    let closed = if !swept {
        "-".to_owned()
    } else if p.reconnect_pinned || p.pinned_closed > 0 {
        p.pinned_closed.to_string()
    } else {
        "off".to_owned()
    };
    (pinned, closed)
}

pub(super) fn conns(client: &AdminClient, out: &mut dyn Write, format: Format) -> Result<(), CtlError> {
    let conns: Vec<api::Conn> = client.get("/api/v1/conns")?;
    if format != Format::Table {
        return print_json(out, format, &conns);
    }
    let mut t = Table::new(&[
        "ID",
        "PEER",
        "POD",
        "ORIGINAL DST",
        "SERVICE",
        "PROTO",
        "STREAMS",
        "TOTAL",
        "AGE",
    ]);
    for c in &conns {
        t.row(vec![
            c.id.to_string(),
            c.peer.to_string(),
            opt(c.pod.as_ref()),
            opt(c.original_dst),
            opt(c.service.as_ref()),
            c.protocol.clone(),
            c.open_streams.to_string(),
            c.total_streams.to_string(),
            secs(c.age_seconds),
        ]);
    }
    write!(out, "{}", t.render())?;
    Ok(())
}

pub(super) fn status(client: &AdminClient, out: &mut dyn Write, format: Format) -> Result<(), CtlError> {
    let s: api::Status = client.get("/api/v1/status")?;
    if format != Format::Table {
        return print_json(out, format, &s);
    }
    writeln!(out, "Version:    {}", s.version)?;
    writeln!(
        out,
        "Ready:      {}",
        if s.ready {
            "yes".to_owned()
        } else {
            format!("no ({})", s.not_ready.join("; "))
        }
    )?;
    writeln!(
        out,
        "eBPF:       {}",
        if !s.ebpf {
            "off"
        } else if s.programs_attached {
            "attached"
        } else {
            "not attached"
        }
    )?;
    writeln!(
        out,
        "Source:     {}{}",
        s.source.kind,
        s.source.location.map(|l| format!(" ({l})")).unwrap_or_default()
    )?;
    writeln!(out, "Synced:     {}", if s.source.synced { "yes" } else { "no" })?;
    writeln!(
        out,
        "Reloads:    {} ok, {} failed",
        s.source.reloads_ok, s.source.reloads_failed
    )?;
    if let Some(e) = s.source.last_error {
        writeln!(out, "Last error: {e}")?;
    }
    if let Some(n) = s.source.pods_cgroup_missing {
        writeln!(
            out,
            "No cgroup:  {n} opted-in pods not enrolled (their Events: CgroupNotFound)"
        )?;
    }
    if !s.source.reports.is_empty() {
        writeln!(out, "Not applied as written:")?;
        for r in &s.source.reports {
            writeln!(out, "  {r}")?;
        }
    }
    if let Some(p) = &s.pinned {
        writeln!(
            out,
            "Pinned:     {} connections bypass the agent, {} closed (sweeps every {})",
            p.pinned,
            p.closed,
            secs(p.interval_seconds)
        )?;
    }
    writeln!(out, "Uptime:     {}", secs(s.uptime_seconds))?;
    Ok(())
}

/// One row of `balancerctl stats`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct StatsRow {
    pub service: String,
    pub calls: u64,
    pub calls_per_second: f64,
    pub errors: u64,
    /// Of the errors, calls the agent answered UNAVAILABLE for want of an
    /// endpoint.
    pub no_endpoint: u64,
    pub in_flight: u64,
    /// Seconds; `null` without calls in the interval.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// Rows over the interval between `before` (or the agent's start) and `now`.
fn rows(before: Option<&api::Stats>, now: &api::Stats, interval: f64) -> Vec<StatsRow> {
    now.services
        .iter()
        .map(|s| {
            let prev = before.and_then(|b| b.services.iter().find(|p| p.service == s.service));
            let (calls, errors, no_endpoint, hist) = match prev {
                Some(p) => (
                    s.calls.saturating_sub(p.calls),
                    s.errors.saturating_sub(p.errors),
                    s.no_endpoint.saturating_sub(p.no_endpoint),
                    s.latency.since(&p.latency),
                ),
                None => (s.calls, s.errors, s.no_endpoint, s.latency.clone()),
            };
            StatsRow {
                service: s.service.clone(),
                calls,
                calls_per_second: if interval > 0.0 { calls as f64 / interval } else { 0.0 },
                errors,
                no_endpoint,
                in_flight: s.in_flight,
                p50_seconds: hist.quantile(0.5),
                p99_seconds: hist.quantile(0.99),
            }
        })
        .collect()
}

fn stats_table(rows: &[StatsRow]) -> String {
    let mut t = Table::new(&[
        "SERVICE",
        "CALLS",
        "CALLS/S",
        "P50",
        "P99",
        "ERRORS",
        "NO-ENDPOINT",
        "IN-FLIGHT",
    ]);
    for r in rows {
        t.row(vec![
            r.service.clone(),
            r.calls.to_string(),
            format!("{:.1}", r.calls_per_second),
            r.p50_seconds.map_or_else(|| "-".into(), secs),
            r.p99_seconds.map_or_else(|| "-".into(), secs),
            r.errors.to_string(),
            r.no_endpoint.to_string(),
            r.in_flight.to_string(),
        ]);
    }
    t.render()
}

pub(super) fn stats(
    client: &AdminClient,
    out: &mut dyn Write,
    format: Format,
    watch: bool,
    count: Option<u64>,
) -> Result<(), CtlError> {
    let first: api::Stats = client.get("/api/v1/stats")?;
    if !watch {
        // Since the agent started.
        let rows = rows(None, &first, first.uptime_seconds);
        if format != Format::Table {
            return print_json(out, format, &rows);
        }
        write!(out, "{}", stats_table(&rows))?;
        return Ok(());
    }
    let mut prev = first;
    let mut at = Instant::now();
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_secs(1).saturating_sub(at.elapsed()));
        let now: api::Stats = client.get("/api/v1/stats")?;
        let interval = (now.uptime_seconds - prev.uptime_seconds).max(1e-3);
        at = Instant::now();
        let rows = rows(Some(&prev), &now, interval);
        if format == Format::Table {
            // Clear the screen and redraw, like top.
            write!(out, "\x1b[2J\x1b[H{}", stats_table(&rows))?;
        } else {
            print_json(out, format, &rows)?;
        }
        out.flush()?;
        prev = now;
        n += 1;
    }
    Ok(())
}
