//! A minimal blocking HTTP/1.1 GET client for the admin API (loopback, one
//! request per connection): enough for `balancerctl`, no runtime needed.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

use serde::de::DeserializeOwned;

use super::CtlError;
use crate::api;

/// The admin API of one agent.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// As the user gave it (for error messages).
    pub addr: String,
    timeout: Duration,
}

/// Largest answer read (a dump of the biggest map fits comfortably).
const MAX_BODY: u64 = 256 << 20;

impl AdminClient {
    pub fn new(addr: &str) -> Self {
        let addr = addr.strip_prefix("http://").unwrap_or(addr).trim_end_matches('/');
        AdminClient {
            addr: addr.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    /// How long a request may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn resolve(&self) -> Result<Vec<SocketAddr>, CtlError> {
        let addrs: Vec<SocketAddr> = self
            .addr
            .to_socket_addrs()
            .map_err(|source| CtlError::BadAddress {
                addr: self.addr.clone(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(CtlError::NoAddress(self.addr.clone()));
        }
        Ok(addrs)
    }

    /// `GET path`: the status code and body.
    pub fn get_raw(&self, path: &str) -> Result<(u16, Vec<u8>), CtlError> {
        let not_running = |source: std::io::Error| CtlError::AgentNotRunning {
            addr: self.addr.clone(),
            source,
        };
        let mut last = None;
        let mut stream = None;
        for a in self.resolve()? {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match stream {
            Some(s) => s,
            None => return Err(not_running(last.unwrap_or_else(|| std::io::Error::other("no address")))),
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(not_running)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(not_running)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: balancerctl\r\n\r\n",
            self.addr
        );
        stream.write_all(req.as_bytes()).map_err(not_running)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_BODY)
            .read_to_end(&mut raw)
            .map_err(|source| CtlError::Read {
                addr: self.addr.clone(),
                source,
            })?;
        parse_response(&raw).map_err(|reason| CtlError::Malformed {
            addr: self.addr.clone(),
            reason,
        })
    }

    /// `GET path` as JSON; a non-2xx answer becomes its `error` message.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let (status, body) = self.get_raw(path)?;
        if !(200..300).contains(&status) {
            let msg = serde_json::from_slice::<api::ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(CtlError::Api { status, message: msg });
        }
        serde_json::from_slice(&body).map_err(|source| CtlError::Decode {
            path: path.to_owned(),
            addr: self.addr.clone(),
            source,
        })
    }
}

/// Splits an HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty answer")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let nl = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_str = std::str::from_utf8(&rest[..nl]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size `{size_str}`"))?;
        rest = &rest[nl + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

/// Percent-encodes a path segment (service names contain `/`).
pub fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The admin address of this pod's instance: `explicit`, else the one the
/// agent wrote into `run_dir`, else the default.
pub fn admin_address(explicit: Option<SocketAddr>, run_dir: Option<&std::path::Path>) -> String {
    explicit
        .or_else(|| run_dir.and_then(crate::app::bind::read_admin_address))
        .map(|a| a.to_string())
        .unwrap_or_else(|| crate::admin::DEFAULT_ADDR.to_owned())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]").unwrap();
        assert_eq!((s, b.as_slice()), (200, b"[]".as_slice()));
        let (s, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (404, b"abcde".as_slice()));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn segments_escape_slashes() {
        assert_eq!(segment("default/greeter"), "default%2Fgreeter");
    }
}
