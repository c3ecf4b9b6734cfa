//! [`Redirects`] backed by the kernel programs' maps.

use std::{
    io,
    net::SocketAddr,
    os::fd::BorrowedFd,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, MapData};
use balancer_common::{Connection, SockKey, CONN_LEFT_FAST_PATH};

use super::sockopt;
use crate::redirect::Redirects;

/// The kernel side of accepted connections: `SO_ORIGINAL_DST` answered by
/// the getsockopt program, and the connections map for leaving the fast path.
pub struct KernelRedirects {
    connections: Arc<Mutex<HashMap<MapData, SockKey, Connection>>>,
}

impl KernelRedirects {
    pub(super) fn new(connections: Arc<Mutex<HashMap<MapData, SockKey, Connection>>>) -> Self {
        KernelRedirects { connections }
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

    fn leave_fast_path(&self, accepted: BorrowedFd<'_>) {
        match self.try_leave_fast_path(accepted) {
            Ok(true) => tracing::debug!("connection left the fast path"),
            Ok(false) => tracing::debug!("connection was not in the fast path"),
            Err(error) => tracing::warn!(%error, "could not take a connection out of the fast path"),
        }
    }
}
