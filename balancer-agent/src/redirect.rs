//! What the demultiplexer asks of the kernel path about one accepted
//! connection. The eBPF loader implements it; explicit listeners and tests
//! run without it.

use std::{io, net::SocketAddr, os::fd::BorrowedFd};

/// The kernel side of a redirected connection.
pub trait Redirects: Send + Sync + 'static {
    /// The address the client dialed before the kernel redirected it to the
    /// agent's listener (`getsockopt(SOL_IP, SO_ORIGINAL_DST)`), or `None`
    /// when the connection was not redirected — such a connection is refused:
    /// the agent is never an open proxy.
    fn original_dst(&self, accepted: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>>;

    /// Takes the connection out of the sk_msg fast path, so that its bytes go
    /// through TCP and its receive buffer bounds a client that floods it. The
    /// agent calls this for connections it proxies as plain TCP.
    fn leave_fast_path(&self, accepted: BorrowedFd<'_>);

    /// Offers the agent's socket, before it connects to an endpoint, to the
    /// fast path: if the endpoint's socket turns out to be on this node,
    /// under the attach cgroup, the kernel pairs the two sockets and the
    /// connection's bytes skip TCP like a redirected pod's.
    fn offer_upstream(&self, _socket: BorrowedFd<'_>) {}

    /// Called once an offered connection's HTTP/2 handshake is over, after
    /// the agent's first message: whether its bytes take the fast path. A
    /// socket that was not paired leaves the kernel's maps (a socket there
    /// whose messages all go by TCP is slower than plain TCP).
    fn settle_upstream(&self, _socket: BorrowedFd<'_>) -> bool {
        false
    }
}
