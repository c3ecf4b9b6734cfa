//! `GET` on the agent's admin API: plain HTTP/1.1 on a loopback address,
//! one request per connection. Enough for `/readyz`, `/metrics` and the
//! JSON API; `balancerctl`'s own client is what the agent's tests test.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// How long a GET may take to connect, and then to answer.
const CONNECT: Duration = Duration::from_secs(1);
const ANSWER: Duration = Duration::from_secs(5);

/// An answer: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Why a GET got no answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("GET http://{addr}{path}: {source}")]
    Io {
        addr: SocketAddr,
        path: String,
        source: io::Error,
    },
    #[error("GET http://{addr}{path}: not an HTTP answer: {head:?}")]
    NotHttp {
        addr: SocketAddr,
        path: String,
        head: String,
    },
}

/// `GET path` on `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response, GetError> {
    let io_err = |source| GetError::Io {
        addr,
        path: path.to_owned(),
        source,
    };
    let mut conn = TcpStream::connect_timeout(&addr, CONNECT).map_err(io_err)?;
    conn.set_read_timeout(Some(ANSWER)).map_err(io_err)?;
    write!(conn, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").map_err(io_err)?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).map_err(io_err)?;
    parse(&raw).ok_or_else(|| GetError::NotHttp {
        addr,
        path: path.to_owned(),
        head: String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned(),
    })
}

/// Whether `GET path` on `addr` answers 200 (an agent that does not
/// answer yet is not ready).
pub fn ok(addr: SocketAddr, path: &str) -> bool {
    get(addr, path).is_ok_and(|r| r.status == 200)
}

/// Status and body of a `connection: close` answer. The admin server sends
/// whole bodies with a `content-length`; a chunked answer is not read.
fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let mut parts = lines.next()?.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        }
    }
    let body = match length {
        Some(n) => body.get(..n)?,
        None => body,
    };
    Some(Response {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead as _, net::TcpListener, thread};

    use super::*;

    /// Serves one connection with `answer` and returns the request line.
    fn serve_once(answer: &'static str) -> (SocketAddr, thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = thread::spawn(move || {
            let (mut conn, _) = l.accept().expect("accept");
            // The whole head is read before answering, as a server does
            // (closing with unread bytes would reset the connection).
            let mut reader = io::BufReader::new(conn.try_clone().expect("clone"));
            let mut first = String::new();
            reader.read_line(&mut first).expect("request line");
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            conn.write_all(answer.as_bytes()).expect("answer");
            first
        });
        (addr, t)
    }

    #[test]
    fn reads_status_and_body() {
        let (addr, t) = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nnot ready");
        let r = get(addr, "/readyz").expect("answer");
        assert_eq!(
            r,
            Response {
                status: 503,
                body: "not ready".into()
            }
        );
        assert_eq!(t.join().expect("server").trim_end(), "GET /readyz HTTP/1.1");
    }

    #[test]
    fn a_short_or_chunked_body_is_not_an_answer() {
        let (addr, _t) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort");
        assert!(matches!(get(addr, "/metrics"), Err(GetError::NotHttp { .. })));
        let (addr, _t) = serve_once("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
        assert!(matches!(get(addr, "/metrics"), Err(GetError::NotHttp { .. })));
    }

    #[test]
    fn ok_only_on_200() {
        let (addr, _t) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert!(ok(addr, "/readyz"));
        let (addr, _t) = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        assert!(!ok(addr, "/readyz"));
    }

    #[test]
    fn no_server_and_no_http_are_errors_naming_the_url() {
        let addr = crate::port::free_port().expect("port");
        let err = get(addr, "/readyz").expect_err("nothing listens");
        assert!(
            err.to_string().starts_with(&format!("GET http://{addr}/readyz: ")),
            "{err}"
        );
        let (addr, _t) = serve_once("SSH-2.0-nope\r\n\r\n");
        assert!(matches!(get(addr, "/x"), Err(GetError::NotHttp { .. })));
    }
}
