//! [`Redirects`] backed by the kernel programs' maps.

use std::{
    io,
    net::SocketAddr,
    os::fd::BorrowedFd,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, MapData, MapError, SockHash};
use balancer_common::{path, Connection, SockKey, CONN_LEFT_FAST_PATH, CONN_UPSTREAM};

use super::sockopt;
use crate::redirect::Redirects;

/// The kernel side of the agent's connections: `SO_ORIGINAL_DST` answered by
/// the getsockopt program, the connections map for leaving the fast path,
/// and the fast path of upstream connections to endpoints on this node.
pub struct KernelRedirects {
    connections: Arc<Mutex<HashMap<MapData, SockKey, Connection>>>,
    sockets: Mutex<SockHash<MapData, SockKey>>,
    offers: Mutex<HashMap<MapData, u64, u32>>,
    /// Cookie of the agent's network namespace.
    agent_netns: u64,
}

fn poisoned(what: &str) -> io::Error {
    io::Error::other(format!("{what} map lock poisoned"))
}

fn absent_is_ok(r: Result<(), MapError>) -> io::Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(io::Error::other(e)),
    }
}

impl KernelRedirects {
    pub(super) fn new(
        connections: Arc<Mutex<HashMap<MapData, SockKey, Connection>>>,
        sockets: SockHash<MapData, SockKey>,
        offers: HashMap<MapData, u64, u32>,
        agent_netns: u64,
    ) -> Self {
        KernelRedirects {
            connections,
            sockets: Mutex::new(sockets),
            offers: Mutex::new(offers),
            agent_netns,
        }
    }

    /// Sockets of redirected pods' connections in the fast-path map (both
    /// ends of each); the agent's upstream connections are not counted.
    pub fn fast_path_sockets(&self) -> usize {
        let (Ok(sockets), Ok(connections)) = (self.sockets.lock(), self.connections.lock()) else {
            return 0;
        };
        let upstream = |key: &SockKey| {
            connections
                .get(key, 0)
                .or_else(|_| connections.get(&key.peer(self.agent_netns), 0))
                .is_ok_and(|c| c.flags & CONN_UPSTREAM != 0)
        };
        sockets.keys().filter_map(Result::ok).filter(|k| !upstream(k)).count()
    }

    /// Offers a socket that is about to connect to an endpoint to the fast
    /// path (see [`Redirects::offer_upstream`]).
    pub fn try_offer_upstream(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        let cookie = sockopt::socket_cookie(socket)?;
        let mut offers = self.offers.lock().map_err(|_| poisoned("upstream offers"))?;
        offers.insert(cookie, 1, 0).map_err(io::Error::other)
    }

    /// Whether a connected upstream socket was paired with its endpoint's;
    /// if not, it leaves the maps (see [`Redirects::settle_upstream`]).
    pub fn try_settle_upstream(&self, socket: BorrowedFd<'_>) -> io::Result<bool> {
        let Some(key) = sockopt::sock_key(socket)? else {
            return Ok(false);
        };
        let mut connections = self.connections.lock().map_err(|_| poisoned("connections"))?;
        let conn = match connections.get(&key, 0) {
            Ok(conn) => conn,
            // Never offered, or not established under the programs.
            Err(MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(io::Error::other(e)),
        };
        if conn.flags & CONN_UPSTREAM != 0 && conn.agent_path == path::REDIRECT {
            return Ok(true);
        }
        // Not paired: its first message went by TCP, and so will every
        // other. Out of the map, sk_msg no longer runs on its sends.
        let mut sockets = self.sockets.lock().map_err(|_| poisoned("sockets"))?;
        absent_is_ok(sockets.remove(&key))?;
        absent_is_ok(connections.remove(&key))?;
        Ok(false)
    }

    /// Takes the connection out of the fast path; `false` if it was not a
    /// redirected connection.
    pub fn try_leave_fast_path(&self, accepted: BorrowedFd<'_>) -> io::Result<bool> {
        let Some(key) = sockopt::sock_key(accepted)? else {
            return Ok(false);
        };
        let mut map = self
            .connections
            .lock()
            .map_err(|_| io::Error::other("connections map lock poisoned"))?;
        let mut conn = match map.get(&key, 0) {
            Ok(conn) => conn,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(io::Error::other(e)),
        };
        // Both sides' sk_msg see the flag at their next message and send
        // through TCP from then on. Bytes already redirected stay queued
        // ahead of them, so nothing is reordered.
        conn.flags |= CONN_LEFT_FAST_PATH;
        map.insert(key, conn, 0).map_err(io::Error::other)?;
        Ok(true)
    }
}

impl Redirects for KernelRedirects {
    fn original_dst(&self, accepted: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
        sockopt::original_dst(accepted)
    }

    fn offer_upstream(&self, socket: BorrowedFd<'_>) {
        if let Err(error) = self.try_offer_upstream(socket) {
            tracing::warn!(%error, "could not offer an upstream connection to the fast path");
        }
    }

    fn settle_upstream(&self, socket: BorrowedFd<'_>) -> bool {
        match self.try_settle_upstream(socket) {
            Ok(paired) => paired,
            Err(error) => {
                tracing::warn!(%error, "could not settle an upstream connection's fast path");
                false
            }
        }
    }

    fn leave_fast_path(&self, accepted: BorrowedFd<'_>) {
        match self.try_leave_fast_path(accepted) {
            Ok(true) => tracing::debug!("connection left the fast path"),
            Ok(false) => tracing::debug!("connection was not in the fast path"),
            Err(error) => tracing::warn!(%error, "could not take a connection out of the fast path"),
        }
    }
}
