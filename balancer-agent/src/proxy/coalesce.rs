//! Fewer, larger writes on HTTP/2 connections.
//!
//! Every call task that sends a frame wakes its connection's task, and the
//! runtime runs a task woken that way right after the current one. Left
//! alone, a connection therefore writes to its socket once per call: one
//! `writev` (on loopback: delivery to the peer and its wake-up) for a few
//! dozen bytes. [`Coalesce`] makes the first write of a burst wait one turn
//! of the scheduler — the connection task yields and runs again after the
//! tasks already queued, which meanwhile queue their frames too — so that
//! one write carries the frames of every call that was ready. The data is
//! not copied: the frames wait in the HTTP/2 codec's own buffer.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a connection is in its current burst of writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Burst {
    /// Nothing written since the last flush: the next write yields first.
    Idle,
    /// Yielded once; the next write goes to the socket.
    Yielded,
    /// Writing; until the flush that ends the burst, writes go straight on.
    Writing,
}

/// An I/O object whose writes are held back for one scheduler turn at the
/// start of each burst (see the module documentation). Reads pass through.
#[derive(Debug)]
pub(crate) struct Coalesce<T> {
    inner: T,
    burst: Burst,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Coalesce {
            inner,
            burst: Burst::Idle,
        }
    }

    /// Whether this write may go now; if not, the task is woken to try again
    /// after the tasks already waiting to run.
    fn ready_to_write(&mut self, cx: &mut Context<'_>) -> bool {
        match self.burst {
            Burst::Idle => {
                self.burst = Burst::Yielded;
                cx.waker().wake_by_ref();
                false
            }
            Burst::Yielded | Burst::Writing => {
                self.burst = Burst::Writing;
                true
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if !self.ready_to_write(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.ready_to_write(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.burst = Burst::Idle;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::Wake,
    };

    use super::*;

    /// Records every write it gets and counts wake-ups of its task.
    #[derive(Default)]
    struct Sink {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Sink {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn first_write_of_a_burst_yields_once_and_wakes_the_task() {
        let wakes = Arc::new(Wakes::default());
        let waker = Arc::clone(&wakes).into();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesce::new(Sink::default());

        // The first write waits a turn, and asks to be polled again.
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"one").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(io.inner.writes.is_empty());

        // On the next turn it goes out, and so does the rest of the burst.
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"one"),
            Poll::Ready(Ok(3))
        ));
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"two"),
            Poll::Ready(Ok(3))
        ));
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(io.inner.writes, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(io.inner.flushes, 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);

        // A flush ended the burst: the next write yields again.
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"three").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"three"),
            Poll::Ready(Ok(5))
        ));
        assert_eq!(io.inner.writes.len(), 3);
    }

    /// Frames call tasks hand to the connection task, as in h2: a call
    /// queues its frame and wakes the connection, which takes every queued
    /// frame each time it runs and then writes.
    #[derive(Default)]
    struct Queued {
        frames: Vec<u8>,
        waker: Option<std::task::Waker>,
    }

    // A multi-thread runtime, as the agent's: there a task woken by the
    // running one runs right after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn frames_of_tasks_ready_together_leave_in_one_write() {
        let (sink_w, mut sink_r) = tokio::io::duplex(1024);
        let queued = Arc::new(std::sync::Mutex::new(Queued::default()));
        let writes = tokio::spawn(async move {
            let conn = {
                let queued = Arc::clone(&queued);
                tokio::spawn(async move {
                    let mut io = Coalesce::new(CountingWrites {
                        inner: sink_w,
                        writes: 0,
                    });
                    let (mut buf, mut sent) = (Vec::new(), 0);
                    std::future::poll_fn(move |cx| loop {
                        {
                            let mut q = queued.lock().unwrap();
                            buf.append(&mut q.frames);
                            if buf.is_empty() {
                                if sent == 2 {
                                    return Poll::Ready(io.inner.writes);
                                }
                                q.waker = Some(cx.waker().clone());
                                return Poll::Pending;
                            }
                        }
                        let n = match Pin::new(&mut io).poll_write(cx, &buf) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(r) => r.unwrap(),
                        };
                        buf.drain(..n);
                        sent += n;
                        assert!(Pin::new(&mut io).poll_flush(cx).is_ready());
                    })
                    .await
                })
            };
            tokio::task::yield_now().await;
            for frame in [b'a', b'b'] {
                let queued = Arc::clone(&queued);
                tokio::spawn(async move {
                    let mut q = queued.lock().unwrap();
                    q.frames.push(frame);
                    if let Some(w) = q.waker.take() {
                        w.wake();
                    }
                });
            }
            conn.await.unwrap()
        })
        .await
        .unwrap();
        let mut got = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut sink_r, &mut got)
            .await
            .unwrap();
        got.sort();
        assert_eq!(&got, b"ab");
        assert_eq!(writes, 1, "both frames should leave in one write");
    }

    struct CountingWrites<W> {
        inner: W,
        writes: usize,
    }

    impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWrites<W> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if r.is_ready() {
                self.writes += 1;
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }
}
