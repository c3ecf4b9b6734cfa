//! `cgroup/getsockopt`: answer `SO_ORIGINAL_DST` for the agent's sockets.
//!
//! Attached at the agent's own cgroup only, so no other process's
//! getsockopt runs it.

use core::ptr::write_volatile;

use aya_ebpf::{helpers::bpf_get_netns_cookie, macros::cgroup_sockopt, programs::SockoptContext, EbpfContext as _};
use balancer_common::{port_from_be16, port_from_host_u32, Ipv4Endpoint, Program, SockKey, SOL_IP, SO_ORIGINAL_DST};

use crate::maps::{count, Outcome, CONNECTIONS};

const AF_INET: u32 = 2;

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

#[cgroup_sockopt(getsockopt)]
pub fn bal_getsockopt(ctx: SockoptContext) -> i32 {
    count(Program::GetSockopt, try_getsockopt(&ctx));
    // 1: return to user space (with the kernel's answer or ours).
    1
}

/// The most option data a cgroup sockopt program is shown; more than that
/// is the kernel's own answer, which the program must leave alone.
const PAGE_SIZE: i32 = 4096;

fn try_getsockopt(ctx: &SockoptContext) -> Result<Outcome, ()> {
    let so = ctx.sockopt;
    // SAFETY: the context is valid for the program's whole run.
    unsafe {
        if (*so).level != SOL_IP || (*so).optname != SO_ORIGINAL_DST {
            // Someone else's option. An answer longer than a page (iptables'
            // IPT_SO_GET_ENTRIES) reaches the program cut to a page; left as
            // it is, kernels before 6.6 fail the call with EFAULT. optlen 0
            // tells the kernel to return its own answer untouched.
            if (*so).optlen > PAGE_SIZE {
                write_volatile(&raw mut (*so).optlen, 0);
            }
            return Ok(Outcome::Ignored);
        }
        let sk = (*so).__bindgen_anon_1.sk;
        if sk.is_null() || (*sk).family != AF_INET {
            return Ok(Outcome::Passed);
        }
        let key = SockKey {
            netns: bpf_get_netns_cookie(ctx.as_ptr()),
            local: Ipv4Endpoint::new((*sk).src_ip4, port_from_host_u32((*sk).src_port)),
            remote: Ipv4Endpoint::new((*sk).dst_ip4, port_from_be16((*sk).dst_port)),
        };
        let Some(conn) = CONNECTIONS.get_ptr(key) else {
            // Not redirected: keep the kernel's own answer (usually ENOENT).
            return Ok(Outcome::Passed);
        };
        let original = (*conn).original;
        let start = (*so).__bindgen_anon_2.optval as usize;
        let end = (*so).__bindgen_anon_3.optval_end as usize;
        if start + core::mem::size_of::<SockaddrIn>() > end {
            // The caller's buffer is too small for a sockaddr_in.
            return Err(());
        }
        let out = start as *mut SockaddrIn;
        (*out).family = AF_INET as u16;
        (*out).port = original.port;
        (*out).addr = original.ip;
        (*out).zero = [0; 8];
        // Two separate 4-byte stores: merged into one 8-byte store they are
        // rejected by the verifier.
        write_volatile(&raw mut (*so).optlen, core::mem::size_of::<SockaddrIn>() as i32);
        write_volatile(&raw mut (*so).retval, 0);
    }
    Ok(Outcome::Redirected)
}
