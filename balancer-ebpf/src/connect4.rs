//! `cgroup/connect4`: redirect an enrolled pod's connect to a balanced VIP;
//! `cgroup/connect6` does the same for IPv4 VIPs dialed as v4-mapped IPv6
//! addresses (`::ffff:a.b.c.d`) from dual-stack sockets, as gRPC C-core and
//! Java clients do.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use balancer_common::{port_from_sock_addr, port_to_sock_addr, Ipv4Endpoint, Program, MAX_CGROUP_DEPTH, SKIP_MARK};

use crate::maps::{config, count, Outcome, ENROLLED, ORIG_BY_COOKIE, SERVICES};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
/// `::ffff:0:0/96`, the third word in network byte order as read natively.
const V4_MAPPED_PREFIX: u32 = u32::from_be(0x0000_ffff);

#[cgroup_sock_addr(connect4)]
pub fn bal_connect4(ctx: SockAddrContext) -> i32 {
    count(Program::Connect4, try_connect4(&ctx));
    // Always allow the connect: redirected or untouched.
    1
}

fn try_connect4(ctx: &SockAddrContext) -> Result<Outcome, ()> {
    let Some(cfg) = config() else {
        return Ok(Outcome::Passed);
    };
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's whole run.
    let (family, ty, ip, port) = unsafe { ((*sa).user_family, (*sa).type_, (*sa).user_ip4, (*sa).user_port) };
    if family != AF_INET || ty != SOCK_STREAM {
        return Ok(Outcome::Passed);
    }
    if !record(ctx, cfg.agent_cgroup, Ipv4Endpoint::new(ip, port_from_sock_addr(port)))? {
        return Ok(Outcome::Passed);
    }
    // SAFETY: user_ip4/user_port are writable in connect4.
    unsafe {
        (*sa).user_ip4 = cfg.listener.ip;
        (*sa).user_port = port_to_sock_addr(cfg.listener.port);
    }
    Ok(Outcome::Redirected)
}

#[cgroup_sock_addr(connect6)]
pub fn bal_connect6(ctx: SockAddrContext) -> i32 {
    count(Program::Connect6, try_connect6(&ctx));
    1
}

fn try_connect6(ctx: &SockAddrContext) -> Result<Outcome, ()> {
    let Some(cfg) = config() else {
        return Ok(Outcome::Passed);
    };
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's whole run.
    let (family, ty, ip6, port) = unsafe { ((*sa).user_family, (*sa).type_, (*sa).user_ip6, (*sa).user_port) };
    // Only IPv4 VIPs dialed through a dual-stack socket.
    if family != AF_INET6 || ty != SOCK_STREAM || ip6[0] != 0 || ip6[1] != 0 || ip6[2] != V4_MAPPED_PREFIX {
        return Ok(Outcome::Passed);
    }
    if !record(
        ctx,
        cfg.agent_cgroup,
        Ipv4Endpoint::new(ip6[3], port_from_sock_addr(port)),
    )? {
        return Ok(Outcome::Passed);
    }
    // SAFETY: user_ip6/user_port are writable in connect6; the address
    // stays v4-mapped, now to the listener.
    unsafe {
        (*sa).user_ip6[3] = cfg.listener.ip;
        (*sa).user_port = port_to_sock_addr(cfg.listener.port);
    }
    Ok(Outcome::Redirected)
}

/// Whether `original` is a balanced VIP dialed by an enrolled process (not
/// the agent, not a socket with the skip mark); if so its original
/// destination is recorded by socket cookie for sock_ops.
#[inline(always)]
fn record(ctx: &SockAddrContext, agent_cgroup: u64, original: Ipv4Endpoint) -> Result<bool, ()> {
    let sa = ctx.sock_addr;
    if SERVICES.get_ptr(original).is_none() || !caller_enrolled(agent_cgroup) {
        return Ok(false);
    }
    // SAFETY: `sk` is always a valid socket in connect4.
    let mark = unsafe { (*(*sa).__bindgen_anon_1.sk).mark };
    if mark == SKIP_MARK {
        return Ok(false);
    }
    // SAFETY: helper call with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // No record, no redirect: the agent would refuse the connection.
    ORIG_BY_COOKIE
        .insert(cookie, original, BPF_ANY.into())
        .map_err(|_| ())?;
    Ok(true)
}

/// Whether the calling process's cgroup, or one of its ancestors, is
/// enrolled — and none of them is the agent's own cgroup.
#[inline(always)]
fn caller_enrolled(agent_cgroup: u64) -> bool {
    let mut enrolled = false;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: plain helper call; returns 0 past the cgroup's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        if id == agent_cgroup {
            return false;
        }
        if ENROLLED.get_ptr(id).is_some() {
            enrolled = true;
        }
        level += 1;
    }
    enrolled
}
