//! Response bodies: a whole JSON document, or a watch's stream of
//! newline-delimited WatchEvents (chunked) that ends at `timeoutSeconds`,
//! when the server closes it, or breaks the connection on an abort.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::store::{WatchMsg, WatchRx};

/// Ready watch messages are sent together up to this size.
const BATCH: usize = 64 * 1024;

pub enum ApiBody {
    Full(Option<Bytes>),
    Watch(WatchBody),
}

pub struct WatchBody {
    rx: WatchRx,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
    /// An abort arrived behind data: break the connection after it.
    abort_next: bool,
}

impl WatchBody {
    pub fn new(rx: WatchRx, deadline: Option<Sleep>) -> WatchBody {
        WatchBody {
            rx,
            deadline: deadline.map(Box::pin),
            done: false,
            abort_next: false,
        }
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ApiBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Watch(w) => w.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ApiBody::Full(b) => b.is_none(),
            ApiBody::Watch(w) => w.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ApiBody::Watch(_) => SizeHint::default(),
        }
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "watch dropped by the test")
}

impl WatchBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.abort_next {
            self.done = true;
            return Poll::Ready(Some(Err(aborted())));
        }
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.done = true;
                return Poll::Ready(None);
            }
        }
        let mut batch: Option<BytesMut> = None;
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(WatchMsg::Data(b))) => {
                    let buf = batch.get_or_insert_with(|| BytesMut::with_capacity(b.len().max(4096)));
                    buf.extend_from_slice(&b);
                    if buf.len() >= BATCH {
                        break;
                    }
                }
                Poll::Ready(Some(WatchMsg::End) | None) => {
                    self.done = true;
                    break;
                }
                Poll::Ready(Some(WatchMsg::Abort)) => {
                    if batch.is_none() {
                        self.done = true;
                        return Poll::Ready(Some(Err(aborted())));
                    }
                    // The data first, then the break.
                    self.abort_next = true;
                    break;
                }
                Poll::Pending => {
                    if batch.is_none() {
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        match batch {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b.freeze())))),
            None => Poll::Ready(None),
        }
    }
}
