//! Moving DATA and trailers between two HTTP/2 streams with flow control end
//! to end: a chunk is read from one side only when the other side has given
//! window for the previous one, and the reading side's window is released
//! only once the bytes went out. A stream therefore holds at most about one
//! window of data, whatever its length.

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::HeaderMap;

/// Which side of a forwarded stream failed.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// The reading side reset or broke.
    Recv(h2::Error),
    /// The writing side reset, broke or closed.
    Send(Option<h2::Error>),
}

/// Waits until `send` has window for at least one byte.
async fn capacity(send: &mut SendStream<Bytes>, want: usize) -> Result<usize, Option<h2::Error>> {
    send.reserve_capacity(want);
    loop {
        let c = send.capacity();
        if c > 0 {
            return Ok(c);
        }
        match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Some(e)),
            None => return Err(None),
        }
    }
}

/// The request body of one call. It survives a retry: the first
/// `replay_limit` bytes are kept (as shared `Bytes`, not copies) and sent
/// again on the next attempt's stream.
pub(crate) struct ReqBody {
    recv: RecvStream,
    replay: Vec<Bytes>,
    replay_len: usize,
    replay_limit: usize,
    /// False once more than `replay_limit` bytes were read: no retry then.
    pub replayable: bool,
    /// Chunks of `replay` already sent on the current attempt.
    cursor: usize,
    /// What is left of the chunk being sent on the current attempt.
    partial: Option<Bytes>,
    /// Bytes read but not yet released to the client's window.
    unreleased: usize,
    /// The client finished its half (END_STREAM seen).
    received_end: bool,
    trailers: Option<HeaderMap>,
    /// END_STREAM (or trailers) went out on the current attempt.
    pub sent_end: bool,
    /// The client's HEADERS carried END_STREAM: no body at all.
    pub empty: bool,
}

impl ReqBody {
    pub fn new(recv: RecvStream, replay_limit: usize) -> Self {
        let empty = recv.is_end_stream();
        ReqBody {
            recv,
            replay: Vec::new(),
            replay_len: 0,
            replay_limit,
            replayable: true,
            cursor: 0,
            partial: None,
            unreleased: 0,
            received_end: empty,
            trailers: None,
            sent_end: empty,
            empty,
        }
    }

    /// No more retries: the replay buffer is released.
    pub fn forget_replay(&mut self) {
        self.replayable = false;
        self.replay = Vec::new();
        self.cursor = 0;
    }

    /// Prepares to send the body again on a new attempt's stream.
    pub fn restart(&mut self) {
        self.cursor = 0;
        self.partial = None;
        self.sent_end = self.empty;
    }

    /// Sends what is left of the body to `send`: replayed chunks first, then
    /// what the client sends next, then trailers or END_STREAM.
    /// Cancel-safe: dropping the future loses nothing, a later call goes on.
    pub async fn pump(&mut self, send: &mut SendStream<Bytes>) -> Result<(), PumpError> {
        loop {
            if let Some(p) = self.partial.as_mut() {
                while !p.is_empty() {
                    let cap = capacity(send, p.len()).await.map_err(PumpError::Send)?;
                    let piece = p.split_to(cap.min(p.len()));
                    send.send_data(piece, false).map_err(|e| PumpError::Send(Some(e)))?;
                }
                self.partial = None;
                if self.unreleased > 0 {
                    let _ = self.recv.flow_control().release_capacity(self.unreleased);
                    self.unreleased = 0;
                }
                continue;
            }
            if self.cursor < self.replay.len() {
                self.partial = Some(self.replay[self.cursor].clone());
                self.cursor += 1;
                continue;
            }
            if self.sent_end {
                return Ok(());
            }
            if self.received_end {
                let r = match &self.trailers {
                    Some(t) => send.send_trailers(t.clone()),
                    None => send.send_data(Bytes::new(), true),
                };
                r.map_err(|e| PumpError::Send(Some(e)))?;
                self.sent_end = true;
                return Ok(());
            }
            match self.recv.data().await {
                Some(Ok(chunk)) => {
                    let len = chunk.len();
                    self.unreleased += len;
                    if self.replayable {
                        if self.replay_len + len <= self.replay_limit {
                            self.replay.push(chunk.clone());
                            self.replay_len += len;
                            self.cursor += 1;
                        } else {
                            self.replayable = false;
                            self.replay = Vec::new();
                            self.cursor = 0;
                        }
                    }
                    self.partial = Some(chunk);
                }
                Some(Err(e)) => return Err(PumpError::Recv(e)),
                None => {
                    self.trailers = self.recv.trailers().await.map_err(PumpError::Recv)?;
                    self.received_end = true;
                }
            }
        }
    }
}

/// Forwards a response body and trailers from `recv` (endpoint) to `send`
/// (client); returns the `grpc-status` of the trailers (None without
/// trailers). Watches for the client resetting the stream while the endpoint
/// is quiet.
pub(crate) async fn pump_response(
    recv: &mut RecvStream,
    send: &mut SendStream<Bytes>,
    http: http::StatusCode,
) -> Result<Option<u16>, PumpError> {
    loop {
        let next = tokio::select! {
            biased;
            d = recv.data() => d,
            r = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                return Err(PumpError::Send(r.err()));
            }
        };
        match next {
            Some(Ok(mut chunk)) => {
                let len = chunk.len();
                while !chunk.is_empty() {
                    let cap = capacity(send, chunk.len()).await.map_err(PumpError::Send)?;
                    let piece = chunk.split_to(cap.min(chunk.len()));
                    send.send_data(piece, false).map_err(|e| PumpError::Send(Some(e)))?;
                }
                let _ = recv.flow_control().release_capacity(len);
            }
            Some(Err(e)) => return Err(PumpError::Recv(e)),
            None => break,
        }
    }
    let trailers = recv.trailers().await.map_err(PumpError::Recv)?;
    let status = trailers.as_ref().map(|t| super::grpc::status(Some(t), http));
    match trailers {
        Some(t) => send.send_trailers(t),
        None => send.send_data(Bytes::new(), true),
    }
    .map_err(|e| PumpError::Send(Some(e)))?;
    Ok(status)
}
