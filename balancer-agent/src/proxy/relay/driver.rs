//! Drives one relay connection: a single task reads what the peer sent,
//! takes what other connections left in its mailbox, and writes everything
//! that resulted in one send. Buffers exist while bytes are in flight and
//! are released when the connection goes idle, so an idle connection holds
//! its socket and a small struct.

use std::{
    future::{poll_fn, Future},
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::Poll,
};

use bytes::BytesMut;
use tokio::{
    io::AsyncWrite,
    net::TcpStream,
    time::{Instant, Sleep},
};

use super::{
    mailbox::Mailbox,
    out::{Out, MAX_SLICES},
};

/// Room made for each `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// A read buffer's size: several reads go into one buffer, so that the
/// partial frame at the end of a read is seldom copied (it is when the
/// buffer is full and large DATA payloads read into it are still held).
/// Released buffers (this size and smaller) go back to the allocator's
/// per-thread cache — jemalloc keeps freed blocks up to 32 KiB per thread —
/// and the next connection with bytes to read takes one from there.
const READ_BUFFER: usize = 32 * 1024;
/// Rounds of read/message/write per poll before yielding to other tasks.
const ROUNDS: usize = 8;
/// Bytes waiting to be written beyond which the connection stops reading:
/// a peer that never reads cannot make its replies (PING and SETTINGS
/// acknowledgements, WINDOW_UPDATEs) pile up.
const OUT_LIMIT: usize = 1 << 20;

/// One side of the relay: turns bytes and messages into bytes to send.
pub(crate) trait Machine {
    type Msg;

    /// Bytes from the peer: takes what it can use from the front of `buf`
    /// (a partial frame is left for the next read).
    fn on_bytes(&mut self, buf: &mut BytesMut, out: &mut Out);
    /// Messages from other connections; leaves `msgs` empty.
    fn on_msgs(&mut self, msgs: &mut Vec<Self::Msg>, out: &mut Out);
    /// The peer closed its side, or the socket failed.
    fn on_closed(&mut self, error: Option<&io::Error>);
    /// Whether the connection is over once `out` is written.
    fn finished(&self) -> bool;
    /// Whether no stream is open (buffers may be released).
    fn idle(&self) -> bool;
    /// When [`Machine::on_timer`] is next due, if ever.
    fn next_timer(&self) -> Option<Instant> {
        None
    }
    fn on_timer(&mut self, _now: Instant, _out: &mut Out) {}
}

/// The byte stream under a connection: a plain socket (read and written
/// directly, as the kernel hands bytes over), or TLS on one.
pub(crate) trait Io {
    /// Reads once into `buf`, making room for up to [`READ_CHUNK`] bytes;
    /// `Ok(0)` at end of stream.
    fn poll_read_into(&mut self, cx: &mut std::task::Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;
    /// Writes some of `bufs`, in order.
    fn poll_write_from(&mut self, cx: &mut std::task::Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>>;
    /// Pushes out what the stream itself still holds (TLS records); a
    /// plain socket holds nothing.
    #[inline]
    fn poll_flush_out(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Room for a read: a new buffer of [`READ_BUFFER`], or [`READ_CHUNK`] more.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = BytesMut::with_capacity(READ_BUFFER);
    } else {
        buf.reserve(READ_CHUNK);
    }
}

impl Io for TcpStream {
    #[inline]
    fn poll_read_into(&mut self, cx: &mut std::task::Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        match self.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        // Room is made only once there is something to read: an idle
        // connection holds no read buffer. A read that leaves room shows the
        // socket drained, so the next one waits for readiness instead of
        // asking the kernel again.
        make_room(buf);
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }

    #[inline]
    fn poll_write_from(&mut self, cx: &mut std::task::Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            match self.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            match self.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// TLS terminated by the agent (gateway listeners).
impl<S: tokio::io::AsyncRead + AsyncWrite + Unpin> Io for tokio_rustls::server::TlsStream<S> {
    fn poll_read_into(&mut self, cx: &mut std::task::Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        make_room(buf);
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }

    fn poll_write_from(&mut self, cx: &mut std::task::Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write_vectored(cx, bufs)
    }

    fn poll_flush_out(&mut self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_flush(cx)
    }
}

pub(crate) struct Driver<M: Machine, I: Io = TcpStream> {
    pub io: I,
    pub m: M,
    pub mailbox: Arc<Mailbox<M::Msg>>,
    rbuf: BytesMut,
    out: Out,
    msgs: Vec<M::Msg>,
    eof: bool,
    /// Made at the first timer, dropped when the connection goes idle.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<M: Machine, I: Io> Driver<M, I> {
    /// `out` holds what must be sent first (the preface, SETTINGS).
    pub fn new(io: I, m: M, mailbox: Arc<Mailbox<M::Msg>>, out: BytesMut) -> Self {
        Driver {
            io,
            m,
            mailbox,
            rbuf: BytesMut::new(),
            out: Out::new(out),
            msgs: Vec::new(),
            eof: false,
            timer: None,
        }
    }

    /// Queues bytes to send (written at the next poll).
    pub fn push_out(&mut self, f: impl FnOnce(&mut Out)) {
        f(&mut self.out);
    }

    /// Bytes that arrived before the driver started (the sniffed preface).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.rbuf.extend_from_slice(bytes);
        self.m.on_bytes(&mut self.rbuf, &mut self.out);
    }

    /// Runs until the connection is over. Cancel-safe: all state is in
    /// `self`, so a caller may stop polling and call `run` again.
    pub async fn run(&mut self) -> io::Result<()> {
        let r = poll_fn(|cx| {
            for _ in 0..ROUNDS {
                let mut progress = false;
                // Read before taking messages: a peer that closed is seen
                // closed before calls queued for it are written to it, so
                // those go back unsent (and are retried elsewhere).
                if !self.eof && self.out.pending() < OUT_LIMIT && !self.m.finished() {
                    match self.read(cx) {
                        Poll::Ready(Ok(true)) => progress = true,
                        Poll::Ready(Ok(false)) => {
                            self.eof = true;
                            self.m.on_closed(None);
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => {
                            self.m.on_closed(Some(&e));
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {}
                    }
                }
                if self.mailbox.take(cx, &mut self.msgs) {
                    self.m.on_msgs(&mut self.msgs, &mut self.out);
                    progress = true;
                }
                if !self.out.is_drained() {
                    match self.write(cx) {
                        Poll::Ready(Ok(())) => progress = true,
                        Poll::Ready(Err(e)) => {
                            self.m.on_closed(Some(&e));
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {}
                    }
                }
                // Always ready on a plain socket.
                let flushed = self.out.is_drained()
                    && match self.io.poll_flush_out(cx) {
                        Poll::Ready(Ok(())) => true,
                        Poll::Ready(Err(e)) => {
                            self.m.on_closed(Some(&e));
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => false,
                    };
                if self.fire_timer(cx) {
                    progress = true;
                }
                if flushed && (self.m.finished() || (self.eof && self.m.idle())) {
                    return Poll::Ready(Ok(()));
                }
                if !progress {
                    self.release_if_idle();
                    return Poll::Pending;
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        self.release_if_idle();
        r
    }

    /// Runs the machine's timer if it is due; otherwise arms it.
    fn fire_timer(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let Some(at) = self.m.next_timer() else {
            self.timer = None;
            return false;
        };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.m.on_timer(Instant::now(), &mut self.out);
            return true;
        }
        false
    }

    /// Reads once; Ok(false) at end of stream.
    fn read(&mut self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<bool>> {
        match self.io.poll_read_into(cx, &mut self.rbuf) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => {
                self.m.on_bytes(&mut self.rbuf, &mut self.out);
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn write(&mut self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        let mut iov = [IoSlice::new(&[]); MAX_SLICES];
        let n = self.out.slices(&mut iov);
        match self.io.poll_write_from(cx, &iov[..n]) {
            Poll::Ready(Ok(n)) => {
                self.out.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn release_if_idle(&mut self) {
        if self.m.idle() {
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                self.rbuf = BytesMut::new();
            }
            if self.out.is_drained() && self.out.capacity() > 0 {
                self.out.release();
                self.msgs = Vec::new();
                self.mailbox.shrink();
            }
        }
    }
}
