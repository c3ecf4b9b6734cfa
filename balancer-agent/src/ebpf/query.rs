//! Which programs a cgroup runs: `BPF_PROG_QUERY` (not wrapped by aya for
//! cgroup attach types) and the names of the programs it returns.
//!
//! Used to confirm that the agent's connect programs are gone before it
//! drains, and to find other connect programs (another CNI's socket load
//! balancer) that would rewrite a VIP before the agent's own program sees it.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd as _},
};

/// `enum bpf_cmd`: `BPF_PROG_QUERY`.
const BPF_PROG_QUERY: libc::c_long = 16;
/// `BPF_F_QUERY_EFFECTIVE`: the programs that run for the cgroup, its
/// ancestors' included, in the order they run.
const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// The cgroup attach types the agent uses (`enum bpf_attach_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Connect4 = 10,
    Connect6 = 11,
    SockOps = 3,
    GetSockopt = 21,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::SockOps => "sock_ops",
            Hook::GetSockopt => "getsockopt",
        }
    }
}

/// The query part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Ids of the programs attached at `cgroup` for `hook`; with `effective`,
/// of every program that runs for it (its ancestors' too), in run order.
pub fn attached(cgroup: impl AsFd, hook: Hook, effective: bool) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = QueryAttr {
            target_fd: cgroup.as_fd().as_raw_fd() as u32,
            attach_type: hook as u32,
            query_flags: if effective { BPF_F_QUERY_EFFECTIVE } else { 0 },
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..QueryAttr::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the
        // kernel writes at most `prog_cnt` ids into `ids`, which outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &raw mut attr,
                std::mem::size_of::<QueryAttr>(),
            )
        };
        if rc == 0 {
            ids.truncate(attr.prog_cnt as usize);
            return Ok(ids);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOSPC) && ids.len() < 4096 {
            ids.resize(ids.len() * 4, 0);
            continue;
        }
        return Err(err);
    }
}

/// Names of the loaded programs with the given ids (a program unloaded
/// meanwhile is left out).
pub fn names(ids: &[u32]) -> HashMap<u32, String> {
    if ids.is_empty() {
        return HashMap::new();
    }
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned()))
        .collect()
}
