//! `sk_msg`: hand each message to the peer socket (the fast path).

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_F_INGRESS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
    EbpfContext as _,
};
use balancer_common::{
    path, port_from_host_u32, port_from_remote_u32, Ipv4Endpoint, Program, SockKey, CONN_LEFT_FAST_PATH,
};

use crate::maps::{config, count, count_bytes, Outcome, CONNECTIONS, SOCKETS};

#[sk_msg]
pub fn bal_sk_msg(ctx: SkMsgContext) -> u32 {
    count(Program::SkMsg, try_sk_msg(&ctx));
    // After a successful redirect SK_PASS delivers to the peer; otherwise it
    // sends through TCP as usual.
    SK_PASS
}

fn try_sk_msg(ctx: &SkMsgContext) -> Result<Outcome, ()> {
    let Some(cfg) = config() else {
        return Ok(Outcome::Passed);
    };
    let md = ctx.msg;
    // SAFETY: the context is valid for the program's whole run.
    let own = unsafe {
        SockKey {
            netns: bpf_get_netns_cookie(ctx.as_ptr()),
            local: Ipv4Endpoint::new((*md).local_ip4, port_from_host_u32((*md).local_port)),
            remote: Ipv4Endpoint::new((*md).remote_ip4, port_from_remote_u32((*md).remote_port)),
        }
    };
    // The connection's entry is keyed by the agent's socket: this socket's
    // own key on the agent's side, its peer's on the other.
    let (agent_side, conn_key, conn) = match CONNECTIONS.get_ptr_mut(own) {
        Some(conn) => (true, own, conn),
        None => {
            let key = own.peer(cfg.agent_netns);
            let Some(conn) = CONNECTIONS.get_ptr_mut(key) else {
                return Ok(Outcome::Passed);
            };
            (false, key, conn)
        }
    };
    // SAFETY: a value pointer returned by the lookup; each side writes only
    // its own path field, under its socket's lock.
    let conn = unsafe { &mut *conn };
    let peer = if agent_side { own.peer(conn.pod_netns) } else { conn_key };
    let left = conn.flags & CONN_LEFT_FAST_PATH != 0;
    let path = if agent_side {
        &mut conn.agent_path
    } else {
        &mut conn.pod_path
    };
    if left {
        *path = path::TCP;
        return Ok(Outcome::Passed);
    }
    match *path {
        path::TCP => Ok(Outcome::Passed),
        decided_or_not => {
            let redirected = SOCKETS.redirect_msg(ctx, peer, BPF_F_INGRESS.into()) == SK_PASS.into();
            if redirected {
                *path = path::REDIRECT;
                count_bytes(Program::SkMsg, u64::from(ctx.size()));
                Ok(Outcome::Redirected)
            } else {
                // Pin: this socket's bytes go through TCP from now on. At the
                // first message that is the first-write race (the peer is not
                // in the map yet); later, the peer has gone.
                *path = path::TCP;
                if decided_or_not == path::UNDECIDED {
                    Ok(Outcome::Pinned)
                } else {
                    Ok(Outcome::Passed)
                }
            }
        }
    }
}
