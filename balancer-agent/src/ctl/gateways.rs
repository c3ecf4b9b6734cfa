//! `balancerctl gateway`: the gateways' listeners and routes.

use std::io::Write;

use super::{
    client::{segment, AdminClient},
    print_json,
    table::{join, opt, Table},
    CtlError, Format,
};
use crate::admin::api;

/// Lists the gateways, or shows one (`name`) in detail.
pub(super) fn gateways(
    client: &AdminClient,
    out: &mut dyn Write,
    format: Format,
    name: Option<&str>,
) -> Result<(), CtlError> {
    if let Some(name) = name {
        let gw: api::Gateway = client.get(&format!("/api/v1/gateways/{}", segment(name)))?;
        if format != Format::Table {
            return print_json(out, format, &gw);
        }
        return detail(out, &gw);
    }
    let gateways: Vec<api::Gateway> = client.get("/api/v1/gateways")?;
    if format != Format::Table {
        return print_json(out, format, &gateways);
    }
    let mut t = Table::new(&["NAME", "LISTENERS", "ROUTES", "SERVICES", "UNROUTED"]);
    for g in &gateways {
        let listeners: Vec<String> = g
            .listeners
            .iter()
            .map(|l| format!("{} {}", l.address, l.protocol))
            .collect();
        let mut services: Vec<&str> = g
            .routes
            .iter()
            .flat_map(|r| r.backends.iter().map(|b| b.service.as_str()))
            .collect();
        services.sort_unstable();
        services.dedup();
        t.row(vec![
            g.name.clone(),
            join(&listeners),
            g.routes.len().to_string(),
            join(&services),
            g.listeners.iter().map(|l| l.unrouted).sum::<u64>().to_string(),
        ]);
    }
    write!(out, "{}", t.render())?;
    Ok(())
}

fn detail(out: &mut dyn Write, gw: &api::Gateway) -> Result<(), CtlError> {
    writeln!(out, "Name:       {}", gw.name)?;
    writeln!(out, "Listeners:")?;
    let mut t = Table::new(&["  NAME", "ADDRESS", "PROTOCOL", "HOSTNAMES", "UNROUTED", "CERTIFICATES"]);
    for l in &gw.listeners {
        t.row(vec![
            format!("  {}", l.name),
            l.address.to_string(),
            l.protocol.clone(),
            if l.hostnames.is_empty() {
                "*".to_owned()
            } else {
                join(&l.hostnames)
            },
            l.unrouted.to_string(),
            join(&l.certificates),
        ]);
    }
    write!(out, "{}", t.render())?;
    writeln!(out, "Routes:")?;
    if gw.routes.is_empty() {
        writeln!(out, "  (none: every call is answered UNIMPLEMENTED)")?;
        return Ok(());
    }
    let mut t = Table::new(&["  NAME", "LISTENERS", "HOSTNAMES", "MATCHES", "SERVICES"]);
    for r in &gw.routes {
        let backends: Vec<String> = r
            .backends
            .iter()
            .map(|b| format!("{}:{}", b.service, b.weight))
            .collect();
        t.row(vec![
            format!("  {}", opt(r.name.as_ref())),
            if r.listeners.is_empty() {
                "*".to_owned()
            } else {
                join(&r.listeners)
            },
            if r.hostnames.is_empty() {
                "*".to_owned()
            } else {
                join(&r.hostnames)
            },
            r.matches.join(" | "),
            backends.join(" "),
        ]);
    }
    write!(out, "{}", t.render())?;
    Ok(())
}
