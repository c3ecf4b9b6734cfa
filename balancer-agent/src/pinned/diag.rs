//! TCP sockets through `NETLINK_SOCK_DIAG` (inet_diag): dump the established
//! sockets of one network namespace, and destroy one of them
//! (`SOCK_DESTROY`).
//!
//! A sock_diag socket answers for the network namespace it was created in,
//! whichever thread uses it later: [`DiagSocket::open_in`] creates it inside
//! a pod's namespace on a short-lived thread (see
//! [`run_in`](super::netns::run_in)), and the caller's thread never changes
//! namespace.
//!
//! The netlink encoding is written out here (a few fixed-layout structs).
//! Every length the kernel sends is checked before use; a reply that does
//! not add up is an error ([`DiagError::Malformed`]), never a panic.
//!
//! Wire layouts (`linux/netlink.h`, `linux/inet_diag.h`; host byte order
//! unless marked big-endian):
//!
//! * `nlmsghdr` (16 bytes): len u32, type u16, flags u16, seq u32, pid u32.
//! * `inet_diag_req_v2` (56): family u8, protocol u8, ext u8, pad u8,
//!   states u32, `inet_diag_sockid`.
//! * `inet_diag_sockid` (48): sport be16, dport be16, src 16 bytes, dst 16
//!   bytes (IPv4 in the first 4), if u32, cookie 2×u32.
//! * `inet_diag_msg` (72): family u8, state u8, timer u8, retrans u8,
//!   `inet_diag_sockid`, expires, rqueue, wqueue, uid, inode (u32 each),
//!   then `nlattr`s (len u16, type u16, payload, padded to 4).

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    time::Duration,
};

use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

/// `SOCK_DIAG_BY_FAMILY` (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY` (`linux/sock_diag.h`).
const SOCK_DESTROY: u16 = 21;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;

const NLMSG_HDRLEN: usize = 16;
const SOCKID_LEN: usize = 48;
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const NLA_HDRLEN: usize = 4;
/// `nla_type` without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `INET_DIAG_CGROUP_ID`: the cgroup v2 id of the socket (kernel 5.7+,
/// always sent when the kernel has `CONFIG_SOCK_CGROUP_DATA`, which cgroup
/// BPF selects).
const INET_DIAG_CGROUP_ID: u16 = 21;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
/// `TCP_ESTABLISHED` in the kernel's `enum tcp_states`.
pub const TCP_ESTABLISHED: u8 = 1;

/// The receive buffer: the kernel sizes dump datagrams from the reader's
/// buffer, capped near 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// How long one reply may take before the request is abandoned.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of sock_diag requests.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("opening a NETLINK_SOCK_DIAG socket")]
    Socket(#[source] io::Error),
    #[error("sending a sock_diag request")]
    Send(#[source] io::Error),
    #[error("receiving a sock_diag reply")]
    Recv(#[source] io::Error),
    #[error("the kernel refused the sock_diag request")]
    Kernel(#[source] io::Error),
    #[error("a sock_diag reply of {0} bytes did not fit the receive buffer")]
    Truncated(usize),
    #[error("malformed sock_diag reply: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Netns(#[from] super::netns::NetnsError),
}

/// Address family of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn raw(self) -> u8 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }
}

/// One TCP socket as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    pub family: Family,
    /// `enum tcp_states` (1 = ESTABLISHED).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's socket cookie (unique while the system runs).
    pub cookie: u64,
    /// The socket's inode (as in `/proc/<pid>/fd` links).
    pub inode: u32,
    pub uid: u32,
    /// The cgroup v2 id the socket was created in, when the kernel said.
    pub cgroup_id: Option<u64>,
    /// The kernel's `inet_diag_sockid`, sent back as is to destroy exactly
    /// this socket (the cookie makes a later socket on the same 4-tuple
    /// answer `ESTALE` instead of being destroyed).
    id: [u8; SOCKID_LEN],
}

/// What [`DiagSocket::destroy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// The kernel aborted the socket: its owner sees `ECONNABORTED`, the
    /// peer a reset.
    Closed,
    /// No such socket any more (closed meanwhile, or its 4-tuple now
    /// belongs to a newer socket).
    Gone,
}

/// A `NETLINK_SOCK_DIAG` socket bound to one network namespace.
#[derive(Debug)]
pub struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl DiagSocket {
    /// A socket for the calling thread's network namespace.
    pub fn open_current() -> Result<DiagSocket, DiagError> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(|e| DiagError::Socket(e.into()))?;
        let timeout = nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &timeout).map_err(|e| DiagError::Socket(e.into()))?;
        Ok(DiagSocket {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// A socket for the network namespace `netns` (an open `ns/net` file),
    /// created on a short-lived thread that enters it; the caller's thread
    /// stays where it is.
    pub fn open_in(netns: &File) -> Result<DiagSocket, DiagError> {
        super::netns::run_in(netns, DiagSocket::open_current)?
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> Result<(), DiagError> {
        let kernel = NetlinkAddr::new(0, 0);
        let sent = socket::sendto(self.fd.as_raw_fd(), msg, &kernel, MsgFlags::empty())
            .map_err(|e| DiagError::Send(e.into()))?;
        if sent != msg.len() {
            return Err(DiagError::Send(io::Error::other("short netlink send")));
        }
        Ok(())
    }

    /// One datagram into `self.buf`; returns its length.
    fn recv(&mut self) -> Result<usize, DiagError> {
        loop {
            // MSG_TRUNC: the call returns the datagram's real length, so a
            // reply larger than the buffer is detected instead of cut.
            match socket::recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => return Err(DiagError::Truncated(n)),
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => {
                    return Err(DiagError::Recv(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no reply from the kernel",
                    )))
                }
                Err(e) => return Err(DiagError::Recv(e.into())),
            }
        }
    }

    /// Every TCP socket of `family` in state ESTABLISHED in this socket's
    /// network namespace. An IPv6 dump includes dual-stack sockets talking to
    /// IPv4 peers (`::ffff:a.b.c.d`).
    pub fn established_tcp(&mut self, family: Family) -> Result<Vec<TcpSocket>, DiagError> {
        let seq = self.next_seq();
        let req = encode_request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family.raw(),
            1 << TCP_ESTABLISHED,
            &[0; SOCKID_LEN],
        );
        self.send(&req)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            if parse_dump(&self.buf[..n], seq, &mut out)? {
                return Ok(out);
            }
        }
    }

    /// Aborts `sock` (`SOCK_DESTROY`; needs CAP_NET_ADMIN over the
    /// namespace and a kernel with `CONFIG_INET_DIAG_DESTROY`).
    pub fn destroy(&mut self, sock: &TcpSocket) -> Result<Destroyed, DiagError> {
        let seq = self.next_seq();
        let req = encode_request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            sock.family.raw(),
            u32::MAX,
            &sock.id,
        );
        self.send(&req)?;
        loop {
            let n = self.recv()?;
            match parse_ack(&self.buf[..n], seq)? {
                None => continue,
                Some(0) => return Ok(Destroyed::Closed),
                Some(libc::ENOENT | libc::ESTALE) => return Ok(Destroyed::Gone),
                Some(errno) => return Err(DiagError::Kernel(io::Error::from_raw_os_error(errno))),
            }
        }
    }
}

/// A request: `nlmsghdr` + `inet_diag_req_v2` for TCP.
fn encode_request(kind: u16, flags: u16, seq: u32, family: u8, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_V2_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One netlink message: type, flags, seq and payload.
struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

/// Splits a datagram into netlink messages, checking every length.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Message<'_>, DiagError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let (Some(len), Some(kind), Some(seq)) = (u32_at(buf, 0), u16_at(buf, 4), u32_at(buf, 8)) else {
            buf = &[];
            return Some(Err(DiagError::Malformed("bytes after the last message")));
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(DiagError::Malformed("message length outside the datagram")));
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some(Ok(Message { kind, seq, payload }))
    })
}

/// The errno in an `NLMSG_ERROR` or `NLMSG_DONE` payload (0 for success;
/// the kernel sends it negated, a positive code is taken as is).
fn errno_of(payload: &[u8]) -> Result<i32, DiagError> {
    let raw = payload
        .get(..4)
        .ok_or(DiagError::Malformed("error message without its code"))?;
    let code = i32::from_ne_bytes(raw.try_into().map_err(|_| DiagError::Malformed("error code"))?);
    Ok(code.checked_abs().unwrap_or(i32::MAX))
}

/// Parses one datagram of a dump reply into `out`; true once the dump is
/// complete. Messages of other requests (another `seq`) are skipped.
fn parse_dump(buf: &[u8], seq: u32, out: &mut Vec<TcpSocket>) -> Result<bool, DiagError> {
    for msg in messages(buf) {
        let msg = msg?;
        if msg.seq != seq {
            continue;
        }
        match msg.kind {
            NLMSG_DONE => {
                // A dump's DONE carries an int status; old kernels sent none.
                let errno = if msg.payload.len() >= 4 {
                    errno_of(msg.payload)?
                } else {
                    0
                };
                if errno != 0 {
                    return Err(DiagError::Kernel(io::Error::from_raw_os_error(errno)));
                }
                return Ok(true);
            }
            NLMSG_ERROR => {
                let errno = errno_of(msg.payload)?;
                return Err(DiagError::Kernel(io::Error::from_raw_os_error(errno)));
            }
            NLMSG_OVERRUN => return Err(DiagError::Malformed("netlink overrun")),
            NLMSG_NOOP => {}
            SOCK_DIAG_BY_FAMILY => {
                if let Some(sock) = parse_socket(msg.payload)? {
                    out.push(sock);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// The errno of the acknowledgement of request `seq` in a datagram, if it
/// holds one.
fn parse_ack(buf: &[u8], seq: u32) -> Result<Option<i32>, DiagError> {
    for msg in messages(buf) {
        let msg = msg?;
        if msg.seq == seq && msg.kind == NLMSG_ERROR {
            return errno_of(msg.payload).map(Some);
        }
    }
    Ok(None)
}

/// An `inet_diag_msg` and its attributes; `None` for a family this module
/// does not handle.
fn parse_socket(p: &[u8]) -> Result<Option<TcpSocket>, DiagError> {
    if p.len() < DIAG_MSG_LEN {
        return Err(DiagError::Malformed("inet_diag_msg shorter than 72 bytes"));
    }
    let family = match p[0] {
        AF_INET => Family::V4,
        AF_INET6 => Family::V6,
        _ => return Ok(None),
    };
    let mut id = [0u8; SOCKID_LEN];
    id.copy_from_slice(&p[4..4 + SOCKID_LEN]);
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let addr = |raw: &[u8]| -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
            Family::V6 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&raw[..16]);
                IpAddr::V6(Ipv6Addr::from(b))
            }
        }
    };
    let local = SocketAddr::new(addr(&id[4..20]), sport);
    let remote = SocketAddr::new(addr(&id[20..36]), dport);
    let cookie_lo = u64::from(u32::from_ne_bytes([id[40], id[41], id[42], id[43]]));
    let cookie_hi = u64::from(u32::from_ne_bytes([id[44], id[45], id[46], id[47]]));
    let field = |at: usize| u32_at(p, at).ok_or(DiagError::Malformed("inet_diag_msg field"));
    let uid = field(4 + SOCKID_LEN + 12)?;
    let inode = field(4 + SOCKID_LEN + 16)?;
    let cgroup_id = parse_cgroup_id(&p[align4(DIAG_MSG_LEN).min(p.len())..])?;
    Ok(Some(TcpSocket {
        family,
        state: p[1],
        local,
        remote,
        cookie: cookie_hi << 32 | cookie_lo,
        inode,
        uid,
        cgroup_id,
        id,
    }))
}

/// `INET_DIAG_CGROUP_ID` among a message's attributes.
fn parse_cgroup_id(mut attrs: &[u8]) -> Result<Option<u64>, DiagError> {
    let mut found = None;
    while !attrs.is_empty() {
        let (Some(len), Some(kind)) = (u16_at(attrs, 0), u16_at(attrs, 2)) else {
            return Err(DiagError::Malformed("bytes after the last attribute"));
        };
        let len = usize::from(len);
        if len < NLA_HDRLEN || len > attrs.len() {
            return Err(DiagError::Malformed("attribute length outside the message"));
        }
        if kind & NLA_TYPE_MASK == INET_DIAG_CGROUP_ID {
            let value: [u8; 8] = attrs[NLA_HDRLEN..len]
                .try_into()
                .map_err(|_| DiagError::Malformed("INET_DIAG_CGROUP_ID is not 8 bytes"))?;
            found = Some(u64::from_ne_bytes(value));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    /// An `inet_diag_msg` for an IPv4 or IPv6 socket, with attributes.
    fn diag_msg(family: u8, local: SocketAddr, remote: SocketAddr, cookie: u64, attrs: &[u8]) -> Vec<u8> {
        let mut p = vec![family, TCP_ESTABLISHED, 0, 0];
        p.extend_from_slice(&local.port().to_be_bytes());
        p.extend_from_slice(&remote.port().to_be_bytes());
        for a in [local.ip(), remote.ip()] {
            let mut raw = [0u8; 16];
            match a {
                IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => raw.copy_from_slice(&v6.octets()),
            }
            p.extend_from_slice(&raw);
        }
        p.extend_from_slice(&7u32.to_ne_bytes()); // if
        p.extend_from_slice(&(cookie as u32).to_ne_bytes());
        p.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        for v in [0u32, 0, 0, 1000, 4242] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        p.extend_from_slice(attrs);
        p
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn request_layout_matches_the_kernel_structs() {
        let mut id = [0u8; SOCKID_LEN];
        id[0] = 0xab;
        id[47] = 0xcd;
        let m = encode_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 9, AF_INET6, 2, &id);
        assert_eq!(m.len(), 72);
        assert_eq!(u32_at(&m, 0), Some(72));
        assert_eq!(u16_at(&m, 4), Some(SOCK_DESTROY));
        assert_eq!(u16_at(&m, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(u32_at(&m, 8), Some(9));
        assert_eq!(&m[16..20], &[AF_INET6, IPPROTO_TCP, 0, 0]);
        assert_eq!(u32_at(&m, 20), Some(2));
        assert_eq!(m[24], 0xab);
        assert_eq!(m[71], 0xcd);
    }

    #[test]
    fn parses_ipv4_and_mapped_ipv6_sockets_with_cgroup_ids() {
        let v4 = diag_msg(
            AF_INET,
            sa("10.1.0.2:40000"),
            sa("10.96.0.10:50051"),
            0x1_0000_0002,
            &attr(INET_DIAG_CGROUP_ID, &77u64.to_ne_bytes()),
        );
        let mapped = diag_msg(
            AF_INET6,
            sa("[::ffff:10.1.0.2]:40001"),
            sa("[::ffff:10.96.0.10]:50051"),
            3,
            // An unrelated attribute first, nested flag set on the cgroup id.
            &[
                attr(4, b"cubic\0"),
                attr(INET_DIAG_CGROUP_ID | 0x8000, &78u64.to_ne_bytes()),
            ]
            .concat(),
        );
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 5, &v4);
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 5, &mapped));
        let mut out = Vec::new();
        assert!(!parse_dump(&buf, 5, &mut out).expect("parse"));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].family, Family::V4);
        assert_eq!(out[0].local, sa("10.1.0.2:40000"));
        assert_eq!(out[0].remote, sa("10.96.0.10:50051"));
        assert_eq!(out[0].cookie, 0x1_0000_0002);
        assert_eq!(out[0].cgroup_id, Some(77));
        assert_eq!((out[0].uid, out[0].inode, out[0].state), (1000, 4242, TCP_ESTABLISHED));
        assert_eq!(out[1].family, Family::V6);
        assert_eq!(out[1].remote, sa("[::ffff:10.96.0.10]:50051"));
        assert_eq!(out[1].cgroup_id, Some(78));
        // The identity sent back to destroy is the kernel's, byte for byte.
        assert_eq!(&out[1].id[..], &mapped[4..4 + SOCKID_LEN]);

        let done = nlmsg(NLMSG_DONE, 5, &0i32.to_ne_bytes());
        assert!(parse_dump(&done, 5, &mut out).expect("done"));
    }

    #[test]
    fn a_socket_without_cgroup_attribute_has_none() {
        let m = diag_msg(AF_INET, sa("1.2.3.4:1"), sa("5.6.7.8:2"), 1, &[]);
        let mut out = Vec::new();
        parse_dump(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &m), 1, &mut out).expect("parse");
        assert_eq!(out[0].cgroup_id, None);
    }

    #[test]
    fn other_requests_messages_are_skipped() {
        let m = diag_msg(AF_INET, sa("1.2.3.4:1"), sa("5.6.7.8:2"), 1, &[]);
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 4, &m);
        buf.extend(nlmsg(NLMSG_DONE, 4, &0i32.to_ne_bytes()));
        let mut out = Vec::new();
        assert!(!parse_dump(&buf, 5, &mut out).expect("parse"));
        assert!(out.is_empty());
    }

    #[test]
    fn kernel_errors_are_errors() {
        let mut out = Vec::new();
        let err = nlmsg(NLMSG_ERROR, 1, &(-libc::EPERM).to_ne_bytes());
        match parse_dump(&err, 1, &mut out) {
            Err(DiagError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("expected EPERM, got {other:?}"),
        }
        let done = nlmsg(NLMSG_DONE, 1, &(-libc::EINTR).to_ne_bytes());
        assert!(matches!(parse_dump(&done, 1, &mut out), Err(DiagError::Kernel(_))));
        assert_eq!(
            parse_ack(&nlmsg(NLMSG_ERROR, 3, &0i32.to_ne_bytes()), 3).expect("ack"),
            Some(0)
        );
        assert_eq!(
            parse_ack(&nlmsg(NLMSG_ERROR, 3, &(-libc::ENOENT).to_ne_bytes()), 3).expect("ack"),
            Some(libc::ENOENT)
        );
        assert_eq!(
            parse_ack(&nlmsg(NLMSG_ERROR, 2, &0i32.to_ne_bytes()), 3).expect("ack"),
            None
        );
        // i32::MIN cannot be negated: still an error, no overflow.
        assert!(errno_of(&i32::MIN.to_ne_bytes()).expect("errno") > 0);
    }

    #[test]
    fn bad_lengths_are_malformed() {
        let good = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(AF_INET, sa("1.2.3.4:1"), sa("5.6.7.8:2"), 1, &[]),
        );
        let mut out = Vec::new();
        // A header claiming more than the datagram holds.
        let mut long = good.clone();
        long[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(parse_dump(&long, 1, &mut out), Err(DiagError::Malformed(_))));
        // A length below the header size.
        let mut short = good.clone();
        short[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(parse_dump(&short, 1, &mut out), Err(DiagError::Malformed(_))));
        // A payload too short for inet_diag_msg.
        let tiny = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &[AF_INET; 20]);
        assert!(matches!(parse_dump(&tiny, 1, &mut out), Err(DiagError::Malformed(_))));
        // Trailing bytes after the last message.
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            parse_dump(&trailing, 1, &mut out),
            Err(DiagError::Malformed(_))
        ));
        // An attribute running past the message, a cgroup id of 4 bytes.
        let over = [8u16.to_ne_bytes(), INET_DIAG_CGROUP_ID.to_ne_bytes()].concat();
        let bad_attr = diag_msg(AF_INET, sa("1.2.3.4:1"), sa("5.6.7.8:2"), 1, &over);
        let r = parse_dump(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &bad_attr), 1, &mut out);
        assert!(matches!(r, Err(DiagError::Malformed(_))));
        let small = diag_msg(
            AF_INET,
            sa("1.2.3.4:1"),
            sa("5.6.7.8:2"),
            1,
            &attr(INET_DIAG_CGROUP_ID, &[1; 4]),
        );
        let r = parse_dump(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &small), 1, &mut out);
        assert!(matches!(r, Err(DiagError::Malformed(_))));
        // An error message without its code.
        assert!(matches!(
            parse_dump(&nlmsg(NLMSG_ERROR, 1, &[]), 1, &mut out),
            Err(DiagError::Malformed(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every prefix and mutation of a
        // valid reply, and pseudo-random buffers.
        let mut valid = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(
                AF_INET6,
                sa("[::1]:1"),
                sa("[::ffff:1.2.3.4]:2"),
                1,
                &attr(INET_DIAG_CGROUP_ID, &[9; 8]),
            ),
        );
        valid.extend(nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()));
        let mut out = Vec::new();
        for cut in 0..=valid.len() {
            let _ = parse_dump(&valid[..cut], 1, &mut out);
            let _ = parse_ack(&valid[..cut], 1);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut b = valid.clone();
            let flips = next() % 6;
            for _ in 0..flips {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            let _ = parse_dump(&b, 1, &mut out);
            let len = (next() % 200) as usize;
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse_dump(&noise, 1, &mut out);
            let _ = parse_ack(&noise, 1);
        }
    }
}
