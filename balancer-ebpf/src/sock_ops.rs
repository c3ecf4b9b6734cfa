//! `sock_ops`: pair the two local sockets of a redirected connection.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext as _,
};
use balancer_common::{
    path, port_from_host_u32, port_from_remote_u32, Connection, Ipv4Endpoint, Program, SockKey,
};

use crate::maps::{config, count, Outcome, CONNECTIONS, ORIG_BY_COOKIE, SOCKETS};

const AF_INET: u32 = 2;

#[sock_ops]
pub fn bal_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => count(Program::SockOps, on_active(&ctx)),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => count(Program::SockOps, on_passive(&ctx)),
        BPF_SOCK_OPS_STATE_CB => on_state(&ctx),
        _ => {}
    }
    1
}

fn own_key(ctx: &SockOpsContext) -> SockKey {
    SockKey {
        // SAFETY: helper call with the program's own context.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        local: Ipv4Endpoint::new(ctx.local_ip4(), port_from_host_u32(ctx.local_port())),
        remote: Ipv4Endpoint::new(ctx.remote_ip4(), port_from_remote_u32(ctx.remote_port())),
    }
}

/// The pod's side (it called connect) is established.
fn on_active(ctx: &SockOpsContext) -> Result<Outcome, ()> {
    if ctx.family() != AF_INET {
        return Ok(Outcome::Passed);
    }
    // SAFETY: helper call with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(original) = ORIG_BY_COOKIE.get_ptr(&cookie) else {
        return Ok(Outcome::Passed);
    };
    // SAFETY: a value pointer returned by the lookup.
    let original = unsafe { *original };
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    let Some(cfg) = config() else {
        return Ok(Outcome::Passed);
    };
    let own = own_key(ctx);
    let connection = Connection {
        original,
        pod_netns: own.netns,
        pod_cookie: cookie,
        pod_path: path::UNDECIDED,
        agent_path: path::UNDECIDED,
        flags: 0,
        _pad: 0,
    };
    CONNECTIONS
        .insert(&own.peer(cfg.agent_netns), &connection, BPF_ANY.into())
        .map_err(|_| ())?;
    insert_socket(ctx, own, cfg.fast_path != 0)
}

/// The agent's side (accepted) is established.
fn on_passive(ctx: &SockOpsContext) -> Result<Outcome, ()> {
    if ctx.family() != AF_INET {
        return Ok(Outcome::Passed);
    }
    let own = own_key(ctx);
    if CONNECTIONS.get_ptr(&own).is_none() {
        return Ok(Outcome::Passed);
    }
    // Get told when it closes, to drop the connection's entry.
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
    ctx.set_cb_flags(flags as i32).map_err(|_| ())?;
    let fast_path = config().is_some_and(|cfg| cfg.fast_path != 0);
    insert_socket(ctx, own, fast_path)
}

fn insert_socket(ctx: &SockOpsContext, key: SockKey, fast_path: bool) -> Result<Outcome, ()> {
    if !fast_path {
        // Fast path off: keep the socket out of the map entirely (a socket
        // in the map that always passes is slower than plain TCP).
        return Ok(Outcome::Passed);
    }
    // SAFETY: the context pointer is the kernel's bpf_sock_ops.
    let ops = unsafe { &mut *ctx.ops };
    SOCKETS.update(key, ops, BPF_ANY.into()).map_err(|_| ())?;
    Ok(Outcome::Redirected)
}

fn on_state(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE && ctx.family() == AF_INET {
        let _ = CONNECTIONS.remove(&own_key(ctx));
    }
}
