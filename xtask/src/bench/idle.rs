//! A proxy's memory with many idle HTTP/2 client connections: open them on
//! loopback (each sends the connection preface and its SETTINGS, then
//! nothing), measure the proxy's resident memory, check they are still open.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use super::procs;

/// The client connection preface followed by an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[derive(Clone, Debug, Default)]
pub struct IdleResult {
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub opened: usize,
    /// Connections the proxy still held open when memory was measured.
    pub alive: usize,
}

/// Opens up to `n` connections to `target` within `limit`, waits for the
/// proxy (`pid`) to settle, and measures it.
pub fn measure(pid: u32, target: SocketAddr, n: usize, limit: Duration) -> IdleResult {
    // Let the proxy finish starting before the baseline.
    thread::sleep(Duration::from_millis(500));
    let rss_before_kb = procs::tree_rss_kb(pid);
    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut failures = 0;
    while conns.len() < n && start.elapsed() < limit && failures < 100 {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(mut s) => {
                if s.write_all(PREFACE).is_ok() {
                    conns.push(s);
                } else {
                    failures += 1;
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    eprintln!("bench: idle connection to {target} failed: {e}");
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let opened = conns.len();
    thread::sleep(Duration::from_secs(2));
    let rss_after_kb = procs::tree_rss_kb(pid);
    let alive = conns.iter_mut().map(still_open).filter(|open| *open).count();
    IdleResult {
        rss_before_kb,
        rss_after_kb,
        opened,
        alive,
    }
}

/// Reads whatever the proxy sent (its SETTINGS); open if reading would block.
fn still_open(conn: &mut TcpStream) -> bool {
    if conn.set_nonblocking(true).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preface_is_the_http2_preface_and_an_empty_settings_frame() {
        assert_eq!(&PREFACE[..24], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        // length 0, type 4 (SETTINGS), flags 0, stream 0
        assert_eq!(&PREFACE[24..], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn counts_connections_the_peer_keeps_open() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = thread::spawn(move || {
            // Keep the first two, close the third.
            let mut kept = Vec::new();
            for i in 0..3 {
                let (s, _) = listener.accept().expect("accept");
                if i < 2 {
                    kept.push(s);
                }
            }
            thread::sleep(Duration::from_secs(4));
            drop(kept);
        });
        let r = measure(std::process::id(), addr, 3, Duration::from_secs(10));
        assert_eq!((r.opened, r.alive), (3, 2));
        assert!(r.rss_after_kb > 0);
        server.join().expect("server thread");
    }
}
