//! Another project's `cgroup/connect4` program, as a test stand-in for a
//! CNI's socket load balancer (Cilium's socket LB, Calico's connect-time
//! LB): it rewrites one VIP:port to a backend address at connect time. Loaded
//! from a few hand-assembled instructions with the `bpf` system call and
//! attached through a link that goes when the guard drops.

use std::{
    io,
    net::SocketAddrV4,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `struct bpf_sock_addr`: `user_ip4` and `user_port` offsets.
const USER_IP4: i16 = 4;
const USER_PORT: i16 = 24;

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct LinkAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), std::mem::size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor this guard now owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A foreign connect4 program attached at a cgroup; detached on drop.
pub struct ForeignConnect4 {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl ForeignConnect4 {
    /// Attaches at `cgroup` a program named `name` that rewrites connects
    /// to `vip` into connects to `to`.
    pub fn attach(cgroup: &Path, name: &str, vip: SocketAddrV4, to: SocketAddrV4) -> io::Result<ForeignConnect4> {
        let ip = |a: &SocketAddrV4| i32::from_ne_bytes(a.ip().octets());
        let port = |a: &SocketAddrV4| i32::from(a.port().to_be());
        let prog = [
            // r2 = ctx->user_ip4; r3 = ctx->user_port
            insn(0x61, 2, 1, USER_IP4, 0),
            insn(0x61, 3, 1, USER_PORT, 0),
            // if (u32)r2 != vip ip goto allow; if (u32)r3 != vip port goto allow
            insn(0x56, 2, 0, 5, ip(&vip)),
            insn(0x56, 3, 0, 4, port(&vip)),
            // ctx->user_ip4 = to ip; ctx->user_port = to port
            insn(0xb4, 2, 0, 0, ip(&to)),
            insn(0x63, 1, 2, USER_IP4, 0),
            insn(0xb4, 2, 0, 0, port(&to)),
            insn(0x63, 1, 2, USER_PORT, 0),
            // allow: r0 = 1; exit
            insn(0xb7, 0, 0, 0, 1),
            insn(0x95, 0, 0, 0, 0),
        ];
        let license = b"GPL\0";
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let mut log = vec![0u8; 4096];
        let mut load = LoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name,
            expected_attach_type: BPF_CGROUP_INET4_CONNECT,
            ..LoadAttr::default()
        };
        let prog_fd = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            io::Error::other(format!(
                "loading the foreign program: {e}: {}",
                text.trim_end_matches('\0')
            ))
        })?;
        let cgroup_fd = std::fs::File::open(cgroup)?;
        let mut link = LinkAttr {
            prog_fd: prog_fd.as_raw_fd() as u32,
            target_fd: cgroup_fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_INET4_CONNECT,
            ..LinkAttr::default()
        };
        let link_fd = bpf(BPF_LINK_CREATE, &mut link)?;
        Ok(ForeignConnect4 {
            _link: link_fd,
            _prog: prog_fd,
        })
    }
}
