//! Telling HTTP/2 (prior knowledge) from anything else by the first bytes,
//! and handing the bytes read so far back to whoever speaks next.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The connection started with the HTTP/2 preface.
    Http2,
    /// Anything else (TLS, HTTP/1.1, a server-first protocol that sent
    /// nothing within the sniff timeout): proxied as plain TCP.
    Other,
    /// Closed before saying anything.
    Closed,
}

/// Reads until the bytes either are the whole preface or differ from it
/// (at most 24 bytes), or until `wait` passes.
pub async fn sniff(stream: &mut TcpStream, wait: Duration) -> io::Result<(Protocol, Vec<u8>)> {
    let mut buf = vec![0u8; PREFACE.len()];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while n < PREFACE.len() {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf[n..])).await;
        match read {
            Err(_) => {
                buf.truncate(n);
                return Ok((Protocol::Other, buf));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                buf.truncate(n);
                let p = if n == 0 { Protocol::Closed } else { Protocol::Other };
                return Ok((p, buf));
            }
            Ok(Ok(k)) => {
                n += k;
                if buf[..n] != PREFACE[..n] {
                    buf.truncate(n);
                    return Ok((Protocol::Other, buf));
                }
            }
        }
    }
    Ok((Protocol::Http2, buf))
}

/// An IO whose reads first return `prefix`, then the inner stream's bytes.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let k = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..k]);
            this.pos += k;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
