//! Socket-level queries the loader and the redirect handle need: the
//! original destination (`SO_ORIGINAL_DST`), socket and network namespace
//! cookies, and a socket's map key.

use std::{
    io, mem,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsRawFd as _, BorrowedFd},
};

use balancer_common::{Ipv4Endpoint, SockKey, SOL_IP, SO_ORIGINAL_DST};

/// `SO_NETNS_COOKIE` (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

fn getsockopt_raw<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<libc::socklen_t> {
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is valid for `len` writable bytes and `fd` is open.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, std::ptr::from_mut(value).cast(), &mut len) };
    if rc == 0 {
        Ok(len)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The destination the client dialed before the kernel redirected the
/// connection, from a plain `getsockopt(SOL_IP, SO_ORIGINAL_DST)`; `None` if
/// the connection was not redirected. A conntrack answer that is just the
/// socket's own address (a direct connection) also counts as `None`.
pub fn original_dst(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
    match getsockopt_raw(fd, SOL_IP, SO_ORIGINAL_DST, &mut sin) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EINVAL)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    if libc::c_int::from(sin.sin_family) != libc::AF_INET {
        return Ok(None);
    }
    let original = SocketAddrV4::new(
        Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sin.sin_port),
    );
    let local = local_v4(fd)?;
    Ok((Some(original) != local).then_some(SocketAddr::V4(original)))
}

/// Cookie of the network namespace `fd` lives in.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    getsockopt_raw(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut cookie)?;
    Ok(cookie)
}

/// The socket's cookie (`SO_COOKIE`): what the kernel programs key a socket
/// by before it has addresses.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    getsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_COOKIE, &mut cookie)?;
    Ok(cookie)
}

/// Cookie of the network namespace the calling thread is in.
pub fn current_netns_cookie() -> io::Result<u64> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    use std::os::fd::AsFd as _;
    netns_cookie(socket.as_fd())
}

fn sockaddr_v4(
    fd: BorrowedFd<'_>,
    f: unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> io::Result<Option<SocketAddrV4>> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is valid for `len` bytes; `f` is getsockname/getpeername.
    let rc = unsafe { f(fd.as_raw_fd(), std::ptr::from_mut(&mut ss).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::c_int::from(ss.ss_family) != libc::AF_INET {
        return Ok(None);
    }
    // SAFETY: the family says this is a sockaddr_in.
    let sin: libc::sockaddr_in = unsafe { *std::ptr::from_ref(&ss).cast() };
    Ok(Some(SocketAddrV4::new(
        Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sin.sin_port),
    )))
}

fn local_v4(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddrV4>> {
    sockaddr_v4(fd, libc::getsockname)
}

/// The map key of a connected IPv4 socket (namespace cookie, local, remote);
/// `None` for other families.
pub fn sock_key(fd: BorrowedFd<'_>) -> io::Result<Option<SockKey>> {
    let (Some(local), Some(remote)) = (local_v4(fd)?, sockaddr_v4(fd, libc::getpeername)?) else {
        return Ok(None);
    };
    Ok(Some(SockKey {
        netns: netns_cookie(fd)?,
        local: endpoint(local),
        remote: endpoint(remote),
    }))
}

/// Map form of an IPv4 socket address.
pub fn endpoint(addr: SocketAddrV4) -> Ipv4Endpoint {
    Ipv4Endpoint::from_octets(addr.ip().octets(), addr.port())
}

/// Socket address of a map endpoint.
pub fn socket_addr(ep: Ipv4Endpoint) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ep.octets()), ep.host_port())
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsFd as _,
    };

    use super::*;

    #[test]
    fn endpoint_conversion_round_trips() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 50051);
        assert_eq!(socket_addr(endpoint(addr)), addr);
    }

    #[test]
    fn plain_loopback_connection_has_no_original_destination() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert_eq!(original_dst(accepted.as_fd()).expect("getsockopt"), None);
        let key = sock_key(accepted.as_fd()).expect("key").expect("ipv4");
        let client_key = sock_key(client.as_fd()).expect("key").expect("ipv4");
        assert_eq!(key.peer(client_key.netns), client_key);
        assert_eq!(key.netns, current_netns_cookie().expect("cookie"));
    }
}
