//! balancer's kernel programs.
//!
//! * `cgroup/connect4` rewrites an enrolled pod's connect to a balanced
//!   VIP:port into a connect to the agent's listener, remembering the
//!   original destination by socket cookie.
//! * `sock_ops` moves that destination to the connections map (keyed by the
//!   agent side's socket) when the pod's side is established, and puts both
//!   local sockets into the fast-path SOCKHASH (unless the fast path is off).
//!   An agent socket offered by cookie (`UPSTREAM_OFFERS`) is paired the same
//!   way with the endpoint's accepted socket, when that endpoint is a pod of
//!   this node.
//! * `sk_msg` on that SOCKHASH hands each message to the peer socket. A
//!   socket decides at its first message: if it cannot be redirected then, it
//!   stays on TCP for good (mixing the two paths would reorder bytes).
//! * `cgroup/getsockopt` answers `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on the
//!   agent's accepted sockets from the connections map.
//!
//! Every program lets anything it does not recognise through untouched.
#![no_std]
#![no_main]

mod connect4;
mod getsockopt;
mod maps;
mod sk_msg;
mod sock_ops;

/// The helpers used (sockhash redirect, cgroup ancestors) need a
/// GPL-compatible license string.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that
    // could get here.
    loop {}
}
