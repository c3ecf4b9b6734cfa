//! `balancerctl service explain NAME METHOD [-H name=value]...`: what the
//! agent would do with a call — the route that matches, its backends and
//! their shares, each backend's locality tiers and endpoints, and for a
//! ring-hash call the endpoint its key lands on.

use std::io::Write;

use super::{
    client::{segment, AdminClient},
    print_json,
    table::Table,
    CtlError, Format,
};
use crate::admin::api;

pub(super) fn explain(
    client: &AdminClient,
    out: &mut dyn Write,
    format: Format,
    service: &str,
    method: &str,
    headers: &[(String, String)],
) -> Result<(), CtlError> {
    let mut path = format!(
        "/api/v1/services/{}/explain?method={}",
        segment(service),
        segment(method)
    );
    for (name, value) in headers {
        path.push_str(&format!("&header={}", segment(&format!("{name}:{value}"))));
    }
    let e: api::Explanation = client.get(&path)?;
    if format != Format::Table {
        return print_json(out, format, &e);
    }
    write!(out, "{}", render(&e))?;
    Ok(())
}

fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// The explanation as text.
fn render(e: &api::Explanation) -> String {
    let mut s = format!("Call:       /{}/{}\n", e.service, e.method);
    match &e.route {
        Some(r) => s.push_str(&format!(
            "Route:      {} (route {} of {})\n",
            r.name.as_deref().unwrap_or("(unnamed)"),
            r.index + 1,
            r.routes
        )),
        None => s.push_str("Route:      none matches: every ready endpoint may take the call\n"),
    }
    if let Some(t) = e.route.as_ref().and_then(|r| r.timeout.as_ref()) {
        s.push_str(&format!(
            "Timeout:    {t} (a call's own shorter grpc-timeout still applies)\n"
        ));
    }
    for f in e.route.iter().flat_map(|r| &r.filters) {
        s.push_str(&format!("Filter:     {f}\n"));
    }
    if let Some(f) = &e.fault {
        s.push_str(&format!("Faults:     {f}\n"));
    }
    if let Some(h) = &e.hash_header {
        match &e.hash_key {
            Some(k) => s.push_str(&format!("Hash:       {h}: {k:?}\n")),
            None => s.push_str(&format!("Hash:       no {h} header: picked round-robin\n")),
        }
    }
    if let Some(why) = &e.no_endpoint {
        s.push_str(&format!("No endpoint: {why}\n"));
    }
    let mut t = Table::new(&["  BACKEND", "WEIGHT", "SHARE", "TIER", "TIER-SHARE", "ENDPOINTS"]);
    for b in &e.backends {
        let hashed = |a: &std::net::SocketAddr| b.hashed_to.as_ref() == Some(a);
        if b.tiers.is_empty() {
            t.row(vec![
                format!("  {}", b.selector),
                b.weight.to_string(),
                percent(b.share),
                "-".into(),
                "-".into(),
                "(none)".into(),
            ]);
        }
        for (i, tier) in b.tiers.iter().enumerate() {
            let endpoints: Vec<String> = tier
                .endpoints
                .iter()
                .map(|ep| {
                    let mut cell = ep.address.to_string();
                    if ep.state != "available" {
                        cell.push_str(&format!(" ({})", ep.state));
                    }
                    if hashed(&ep.address) {
                        cell.push_str(" <- key");
                    }
                    cell
                })
                .collect();
            let first = i == 0;
            t.row(vec![
                if first {
                    format!("  {}", b.selector)
                } else {
                    "  ".into()
                },
                if first { b.weight.to_string() } else { String::new() },
                if first { percent(b.share) } else { String::new() },
                tier.tier.clone().unwrap_or_else(|| "-".into()),
                percent(tier.share),
                endpoints.join(", "),
            ]);
        }
    }
    s.push_str("Backends:\n");
    s.push_str(&t.render());
    s
}
