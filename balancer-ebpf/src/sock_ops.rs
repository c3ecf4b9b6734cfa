//! `sock_ops`: pair the two local sockets of a redirected connection, and
//! of the agent's connection to an endpoint on this node.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext as _,
};
use balancer_common::{
    path, port_from_host_u32, port_from_remote_u32, Connection, Ipv4Endpoint, Program, SockKey, CONN_UPSTREAM,
};

use crate::maps::{config, count, Outcome, CONNECTIONS, ORIG_BY_COOKIE, SOCKETS, UPSTREAM_OFFERS};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn bal_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => count(Program::SockOps, on_active(&ctx)),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => count(Program::SockOps, on_passive(&ctx)),
        BPF_SOCK_OPS_STATE_CB => on_state(&ctx),
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => on_transmit(&ctx),
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

/// The pod's side (it called connect) is established. A dual-stack socket
/// (AF_INET6) is here only when connect6 redirected its v4-mapped connect:
/// its IPv4 addresses are what local_ip4/remote_ip4 show.
fn on_active(ctx: &SockOpsContext) -> Result<Outcome, ()> {
    if ctx.family() != AF_INET && ctx.family() != AF_INET6 {
        return Ok(Outcome::Passed);
    }
    // SAFETY: helper call with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(original) = ORIG_BY_COOKIE.get_ptr(cookie) else {
        return on_upstream(ctx, cookie);
    };
    // SAFETY: a value pointer returned by the lookup.
    let original = unsafe { *original };
    let _ = ORIG_BY_COOKIE.remove(cookie);
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
        .insert(own.peer(cfg.agent_netns), connection, BPF_ANY.into())
        .map_err(|_| ())?;
    insert_socket(ctx, own, cfg.fast_path != 0, 0)
}

/// An active socket that is not a redirected pod's: the agent's connection
/// to an endpoint, if the agent offered it to the fast path. Its entry waits
/// for the endpoint's side (`on_passive`); if that never comes — the
/// endpoint is on another node, or outside the attach cgroup — the agent's
/// first message finds no peer and pins the socket to TCP, and the agent
/// takes it out of the map.
fn on_upstream(ctx: &SockOpsContext, cookie: u64) -> Result<Outcome, ()> {
    if UPSTREAM_OFFERS.get_ptr(cookie).is_none() {
        return Ok(Outcome::Passed);
    }
    let _ = UPSTREAM_OFFERS.remove(cookie);
    let Some(cfg) = config() else {
        return Ok(Outcome::Passed);
    };
    let own = own_key(ctx);
    if cfg.fast_path == 0 || ctx.family() != AF_INET || own.netns != cfg.agent_netns {
        return Ok(Outcome::Passed);
    }
    let connection = Connection {
        original: own.remote,
        pod_netns: 0,
        pod_cookie: 0,
        pod_path: path::UNDECIDED,
        agent_path: path::UNDECIDED,
        flags: CONN_UPSTREAM,
        _pad: 0,
    };
    CONNECTIONS.insert(own, connection, BPF_ANY.into()).map_err(|_| ())?;
    // Get told when it closes, to drop the connection's entry.
    insert_socket(ctx, own, true, BPF_SOCK_OPS_STATE_CB_FLAG)
}

/// The passive side is established: the agent's accepted socket of a
/// redirected connection, or a node-local endpoint's socket accepted from
/// the agent's upstream connect.
fn on_passive(ctx: &SockOpsContext) -> Result<Outcome, ()> {
    if ctx.family() != AF_INET && ctx.family() != AF_INET6 {
        return Ok(Outcome::Passed);
    }
    let own = own_key(ctx);
    if CONNECTIONS.get_ptr(own).is_some() {
        if ctx.family() != AF_INET {
            return Ok(Outcome::Passed);
        }
        let fast_path = config().is_some_and(|cfg| cfg.fast_path != 0);
        // Get told when it closes, to drop the connection's entry.
        return insert_socket(ctx, own, fast_path, BPF_SOCK_OPS_STATE_CB_FLAG);
    }
    let Some(cfg) = config() else {
        return Ok(Outcome::Passed);
    };
    let Some(conn) = CONNECTIONS.get_ptr_mut(own.peer(cfg.agent_netns)) else {
        return Ok(Outcome::Passed);
    };
    // SAFETY: a value pointer returned by the lookup.
    let conn = unsafe { &mut *conn };
    if conn.flags & CONN_UPSTREAM == 0 {
        return Ok(Outcome::Passed);
    }
    conn.pod_netns = own.netns;
    // SAFETY: helper call with the program's own context.
    conn.pod_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    insert_socket(ctx, own, true, 0)
}

/// Puts the socket into the fast-path map (if the fast path is on) and sets
/// the callbacks it needs (`extra_flags`, plus transmit callbacks while its
/// path is undecided).
fn insert_socket(ctx: &SockOpsContext, key: SockKey, fast_path: bool, extra_flags: u32) -> Result<Outcome, ()> {
    let mut flags = ctx.cb_flags() | extra_flags;
    let outcome = if fast_path {
        // SAFETY: the context pointer is the kernel's bpf_sock_ops.
        let ops = unsafe { &mut *ctx.ops };
        SOCKETS.update(key, ops, BPF_ANY.into()).map_err(|_| ())?;
        // Watch transmits until sk_msg has decided this socket's path: see
        // `on_transmit`.
        flags |= BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
        Outcome::Redirected
    } else {
        // Fast path off: keep the socket out of the map entirely (a socket
        // in the map that always passes is slower than plain TCP).
        Outcome::Passed
    };
    if flags != ctx.cb_flags() {
        ctx.set_cb_flags(flags as i32).map_err(|_| ())?;
    }
    Ok(outcome)
}

/// A socket of a redirected connection transmits a TCP segment while its
/// path may still be undecided.
///
/// The socket state turns ESTABLISHED before the socket enters the map, and a
/// non-blocking client polling for connect completion can call `sendmsg` in
/// between: that first write then takes plain TCP without sk_msg ever seeing
/// it. If a later write were redirected, the receiver would read it first
/// (it drains the redirect queue before the TCP queue) — reordered bytes. So a
/// data segment sent while the path is undecided pins the socket to TCP, just
/// as a first message that finds no peer does.
fn on_transmit(ctx: &SockOpsContext) {
    let Some(cfg) = config() else {
        return;
    };
    let own = own_key(ctx);
    // SAFETY: the context is valid for the program's whole run.
    let data_len = unsafe { (*ctx.ops).skb_len };
    let (agent_side, conn) = match CONNECTIONS.get_ptr_mut(own) {
        Some(conn) => (true, Some(conn)),
        None => (false, CONNECTIONS.get_ptr_mut(own.peer(cfg.agent_netns))),
    };
    if let Some(conn) = conn {
        // SAFETY: a value pointer returned by the lookup; this socket's path
        // field is only written under this socket's lock.
        let path = unsafe {
            if agent_side {
                &mut (*conn).agent_path
            } else {
                &mut (*conn).pod_path
            }
        };
        if *path == path::UNDECIDED {
            if data_len == 0 {
                // A pure ACK: keep watching.
                return;
            }
            *path = path::TCP;
            count(Program::SkMsg, Ok(Outcome::Pinned));
        }
    }
    // Decided (or not ours any more): stop the per-segment callbacks.
    let flags = ctx.cb_flags() & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
    let _ = ctx.set_cb_flags(flags as i32);
}

fn on_state(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE && ctx.family() == AF_INET {
        let _ = CONNECTIONS.remove(own_key(ctx));
    }
}
