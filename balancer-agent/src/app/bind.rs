//! The agent's sockets on the node: the redirect listener, the admin server
//! and the metrics listener, and the file that tells local tools (the
//! readiness probe, `balancerctl`) where this instance's admin server is.
//!
//! During a rolling update two agents run on one node. Each one's kernel
//! programs redirect to its own listener, so the two must not share a port
//! (`SO_REUSEPORT` would hand one agent's connections to the other, which
//! knows nothing of them): a taken port moves an instance to the next one.
//! The metrics listener is shared instead, so that a scrape target stays
//! put.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use tokio::net::{TcpListener, TcpSocket};

/// How many ports above the configured one an instance may move to.
pub const PORT_TRIES: u16 = 4;

/// The file in the run directory that holds the admin server's address.
pub const ADMIN_ADDRESS_FILE: &str = "admin";

fn socket_for(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Binds `addr`; with `move_on` and its port taken (another instance), the
/// next free port of up to [`PORT_TRIES`].
pub fn bind_instance(addr: SocketAddr, move_on: bool) -> io::Result<TcpListener> {
    let tries = if move_on && addr.port() != 0 { PORT_TRIES } else { 1 };
    let mut last = None;
    for i in 0..tries {
        let Some(port) = addr.port().checked_add(i) else {
            break;
        };
        let candidate = SocketAddr::new(addr.ip(), port);
        match bind_one(candidate) {
            Ok(l) => {
                if i > 0 {
                    tracing::info!(configured = %addr, bound = %candidate, "port taken (another agent instance?): using the next one");
                }
                return Ok(l);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// Binds `addr` shared with other instances (`SO_REUSEPORT`): for the
/// read-only metrics listener, which any instance may answer.
pub fn bind_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Writes this instance's admin address into `run_dir` (atomically).
pub fn write_admin_address(run_dir: &Path, addr: SocketAddr) -> io::Result<PathBuf> {
    std::fs::create_dir_all(run_dir)?;
    let path = run_dir.join(ADMIN_ADDRESS_FILE);
    let tmp = run_dir.join(format!(".{ADMIN_ADDRESS_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The admin address an instance wrote into `run_dir`, if any.
pub fn read_admin_address(run_dir: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(run_dir.join(ADMIN_ADDRESS_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_instance_moves_to_the_next_port() {
        let first = bind_instance("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let taken = first.local_addr().unwrap();
        // Not allowed to move: the port is taken.
        let err = bind_instance(taken, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        // Allowed: the next free one (the port after may be taken by someone
        // else on a busy machine; it is within the tries).
        let second = bind_instance(taken, true).unwrap();
        let port = second.local_addr().unwrap().port();
        assert!(port > taken.port() && port < taken.port() + PORT_TRIES, "{port}");
    }

    #[tokio::test]
    async fn the_metrics_listener_is_shared() {
        let a = bind_shared("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_shared(addr).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }

    #[test]
    fn the_admin_address_round_trips_through_the_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_admin_address(dir.path()), None);
        let addr: SocketAddr = "127.0.0.1:15002".parse().unwrap();
        write_admin_address(&dir.path().join("run"), addr).unwrap();
        assert_eq!(read_admin_address(&dir.path().join("run")), Some(addr));
    }
}
