//! Loopback ports: one nothing listens on, and waiting until one accepts.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use crate::ready;

/// A loopback address (127.0.0.1, a port the kernel chose) that nothing
/// listens on right now.
pub fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Whether something accepts a connection on `addr` within 200 ms.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits until something accepts connections on `addr`, up to `limit`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> Result<(), ready::WaitError> {
    ready::wait(
        &format!("something listening on {addr}"),
        limit,
        || None,
        || accepts(addr),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_free_until_bound_and_then_accepts() {
        let addr = free_port().expect("free port");
        assert!(addr.ip().is_loopback());
        assert!(!accepts(addr), "nothing listens on a free port");
        let _l = TcpListener::bind(addr).expect("the free port can be bound");
        wait_for_port(addr, Duration::from_secs(2)).expect("a bound port accepts");
    }

    #[test]
    fn waiting_for_a_port_nobody_binds_times_out() {
        let addr = free_port().expect("free port");
        let err = wait_for_port(addr, Duration::from_millis(300)).expect_err("nothing listens");
        assert!(matches!(err, ready::WaitError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
