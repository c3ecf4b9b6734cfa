//! The protocol `balancer-test-agent` and `balancer-test-pod` speak over a
//! redirected connection, and blocking I/O helpers that tolerate the
//! spurious `EAGAIN` sockets in the fast path can return.
//!
//! 1. On accept the agent asks the kernel for the original destination. None:
//!    it closes the connection at once (reset), writing nothing. Otherwise it
//!    writes `ORIG <ip:port>\n`.
//! 2. The client writes a 24-byte [`Header`] (the "small first write"), then
//!    its payload.
//! 3. [`Cmd::Echo`]: the agent echoes every byte until EOF.
//!    [`Cmd::Verify`]: the payload is `len` bytes of [`PayloadStream`] from
//!    `seed`; the agent checks every byte and answers `OK <len>\n` or
//!    `BAD <offset> <what>\n`.
//!    [`Cmd::Stall`]: the agent reads `len` bytes, takes the connection out
//!    of the fast path, answers `LEFT\n` and stops reading.
//!    [`Cmd::Hold`]: the same without leaving the fast path (`HELD\n`): the
//!    kernel hazard the agent must avoid, kept testable.

use std::{
    io::{self, Read, Write},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// Size of the header.
pub const HEADER_LEN: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Cmd {
    Echo = 1,
    Verify = 2,
    Stall = 3,
    Hold = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub cmd: Cmd,
    pub seed: u64,
    pub len: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&(self.cmd as u32).to_le_bytes());
        out[8..16].copy_from_slice(&self.seed.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Option<Header> {
        let word = |r: std::ops::Range<usize>| -> u64 {
            let mut a = [0u8; 8];
            a[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(a)
        };
        let cmd = match word(0..4) {
            1 => Cmd::Echo,
            2 => Cmd::Verify,
            3 => Cmd::Stall,
            4 => Cmd::Hold,
            _ => return None,
        };
        Some(Header {
            cmd,
            seed: word(8..16),
            len: word(16..24),
        })
    }
}

/// A deterministic byte stream (xorshift64*) that does not depend on how
/// it is chunked: both ends can generate and compare it piecewise.
pub struct PayloadStream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl PayloadStream {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: distinct seeds give distinct, non-zero states.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        PayloadStream {
            state: if z == 0 { 1 } else { z },
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            if self.used == 8 {
                if out.len() - i >= 8 {
                    let w = self.next_word().to_le_bytes();
                    out[i..i + 8].copy_from_slice(&w);
                    i += 8;
                    continue;
                }
                self.word = self.next_word().to_le_bytes();
                self.used = 0;
            }
            out[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
    }

    /// A value in `1..=max`, log-uniformly distributed (many small, some
    /// near `max`).
    pub fn size(&mut self, max: u64) -> u64 {
        let bits = 64 - max.leading_zeros() as u64;
        let b = 1 + self.next_word() % bits;
        let v = 1 + self.next_word() % (1u64 << b);
        v.min(max)
    }
}

fn wait_fd(fd: i32, events: i16, timeout: Duration) {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

fn retryable(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// `read` that retries `EAGAIN`/`EINTR` until `deadline`.
pub fn read_some<S: Read + AsRawFd>(s: &mut S, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if retryable(&e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
                }
                wait_fd(
                    s.as_raw_fd(),
                    libc::POLLIN,
                    (deadline - now).min(Duration::from_millis(100)),
                );
            }
            other => return other,
        }
    }
}

/// Reads exactly `buf.len()` bytes (EOF before that is an error).
pub fn read_exact<S: Read + AsRawFd>(s: &mut S, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match read_some(s, &mut buf[at..], deadline)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {at} bytes"),
                ))
            }
            n => at += n,
        }
    }
    Ok(())
}

/// Writes all of `buf`, retrying `EAGAIN`/`EINTR` until `deadline`.
pub fn write_all<S: Write + AsRawFd>(s: &mut S, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => buf = &buf[n..],
            Err(e) if retryable(&e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"));
                }
                wait_fd(
                    s.as_raw_fd(),
                    libc::POLLOUT,
                    (deadline - now).min(Duration::from_millis(100)),
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one `\n`-terminated line (without the newline); `None` on EOF
/// before any byte.
pub fn read_line<S: Read + AsRawFd>(s: &mut S, deadline: Instant) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match read_some(s, &mut b, deadline)? {
            0 if line.is_empty() => return Ok(None),
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside a line")),
            _ if b[0] == b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into_owned())),
            _ => {
                line.push(b[0]);
                if line.len() > 512 {
                    return Err(io::Error::other("line too long"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_independent_of_chunking() {
        let mut whole = vec![0u8; 1000];
        PayloadStream::new(42).fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut s = PayloadStream::new(42);
        let mut at = 0;
        for step in [1usize, 3, 8, 13, 100, 7, 868] {
            s.fill(&mut pieces[at..at + step]);
            at += step;
        }
        assert_eq!(at, 1000);
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        PayloadStream::new(43).fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn header_round_trips_and_rejects_unknown_commands() {
        let h = Header {
            cmd: Cmd::Verify,
            seed: 7,
            len: 1 << 20,
        };
        assert_eq!(Header::decode(&h.encode()), Some(h));
        let mut bad = h.encode();
        bad[0] = 9;
        assert_eq!(Header::decode(&bad), None);
    }

    #[test]
    fn sizes_stay_in_range_and_spread() {
        let mut s = PayloadStream::new(1);
        let sizes: Vec<u64> = (0..2000).map(|_| s.size(1 << 20)).collect();
        assert!(sizes.iter().all(|&v| (1..=1 << 20).contains(&v)));
        assert!(sizes.iter().any(|&v| v < 1024));
        assert!(sizes.iter().any(|&v| v > 512 * 1024));
    }
}
