//! What both sides of the relay do alike on one HTTP/2 connection: split the
//! byte stream into frames, answer SETTINGS and PING, keep the
//! connection-level windows, assemble header blocks, and end the connection
//! with GOAWAY on a connection error.

use balancer_relay::{
    frame::{self, flags, Head as FrameHead, HeaderBlock, Kind, Reason, Scope},
    hpack,
};
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::{budget::Budget, flow::Outflow, head::Head, out::Out, recent::Recent};

/// Largest frame we accept (our SETTINGS_MAX_FRAME_SIZE: the default).
pub(crate) const MAX_FRAME: u32 = frame::DEFAULT_MAX_FRAME_SIZE;
/// DATA payloads at least this long go on as slices of the bytes read
/// (shorter ones are copied). A slice keeps its whole read buffer alive, so
/// this bounds what a stream's window of held DATA can pin to a few times
/// that window.
const SHARE_MIN: usize = 8 * 1024;
/// Largest encoded header block, and CONTINUATION frames per block.
const MAX_BLOCK: usize = 64 * 1024;
const MAX_CONTINUATIONS: u32 = 16;
/// Largest decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE).
pub(crate) const MAX_HEADER_LIST: usize = 16 * 1024;
/// The largest head kept for [`Conn::repeated_head`]: a usual gRPC head is a
/// few hundred bytes, and a small block may decode to a large head, which
/// would otherwise outlive its call.
const MAX_KEPT_HEAD: usize = 1024;
/// Control frames (SETTINGS, PING) a peer may send (a budget refilled every
/// second) before the connection is ended with ENHANCE_YOUR_CALM.
const CONTROL_BUDGET: u16 = 10_000;
const CONTROL_REFILL: u16 = 1_000;

/// A connection-level event the side-specific code acts on.
pub(crate) enum Event<'a> {
    /// A complete header block.
    Headers {
        stream: u32,
        end: bool,
        block: &'a [u8],
    },
    /// DATA: the payload after padding; `flow` counts against the windows.
    Data {
        stream: u32,
        data: Bytes,
        end: bool,
    },
    Reset {
        stream: u32,
        reason: Reason,
    },
    /// A stream's send window grew.
    Window {
        stream: u32,
        increment: u32,
    },
    /// Every stream's send window changed by `delta` (new
    /// SETTINGS_INITIAL_WINDOW_SIZE), or the connection window grew (0).
    Windows {
        delta: i64,
    },
    GoAway {
        last: u32,
        reason: Reason,
    },
    /// Stream-level protocol error: the side resets the stream.
    StreamError {
        stream: u32,
        reason: Reason,
    },
}

/// The frame-level state of one connection.
pub(crate) struct Conn {
    pub dec: hpack::Decoder,
    pub enc: hpack::Encoder,
    block: HeaderBlock,
    /// The peer's SETTINGS.
    pub peer_max_frame: u32,
    pub peer_initial_window: u32,
    pub peer_max_streams: u32,
    /// What we may still send on the connection.
    pub send_window: i64,
    /// What we announced for the connection, and what came in since the
    /// last WINDOW_UPDATE.
    recv_window: u32,
    recv_unacked: u32,
    /// Stream ids announced by the peer (for GOAWAY).
    pub last_peer_stream: u32,
    /// The connection is over (after a GOAWAY for a connection error).
    pub finished: bool,
    /// The peer's first SETTINGS arrived (the handshake is done).
    pub peer_settings: bool,
    /// The payload of the last PING of ours answered since the side last
    /// looked.
    pub pong: Option<[u8; 8]>,
    control: Budget,
    /// The header blocks sent last, by head, and the heads received last,
    /// by block (made at the first block that may repeat; kept, like the
    /// HPACK tables, for the connection's life).
    sent: Option<Box<Recent<Vec<u8>>>>,
    received: Option<Box<Recent<Head>>>,
}

impl Conn {
    pub fn new(recv_window: u32) -> Conn {
        Conn {
            dec: hpack::Decoder::new(4096),
            enc: hpack::Encoder::new(),
            block: HeaderBlock::new(MAX_BLOCK, MAX_CONTINUATIONS),
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            peer_initial_window: 65_535,
            peer_max_streams: 100,
            send_window: 65_535,
            recv_window: recv_window.max(65_535),
            recv_unacked: 0,
            last_peer_stream: 0,
            finished: false,
            pong: None,
            peer_settings: false,
            control: Budget::new(CONTROL_BUDGET, CONTROL_REFILL, tokio::time::Instant::now()),
            sent: None,
            received: None,
        }
    }

    /// Our SETTINGS and the connection window, the first thing we send.
    pub fn start(&self, out: &mut BytesMut, settings: &[(u16, u32)]) {
        frame::put_settings(out, settings);
        if self.recv_window > 65_535 {
            frame::put_window_update(out, 0, self.recv_window - 65_535);
        }
    }

    /// Ends the connection: GOAWAY with `reason`.
    pub fn fail(&mut self, reason: Reason, what: &str, out: &mut Out) {
        if !self.finished {
            tracing::debug!(%reason, what, "HTTP/2 connection error: GOAWAY");
            frame::put_goaway(out, self.last_peer_stream, reason, what.as_bytes());
            self.finished = true;
        }
    }

    /// Takes the whole frames at the start of `buf` (a partial one stays)
    /// and parses them, calling `on` for each stream-level event.
    pub fn read(&mut self, buf: &mut BytesMut, out: &mut Out, mut on: impl FnMut(&mut Conn, Event<'_>, &mut Out)) {
        let n = frame::complete(buf, MAX_FRAME);
        if n == 0 {
            return;
        }
        // Frozen, so that large DATA payloads go on as slices of it.
        let chunk = buf.split_to(n).freeze();
        let mut pos = 0;
        while !self.finished {
            let head = match frame::next(&chunk[pos..], MAX_FRAME) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.fail(e.reason, e.what, out);
                    break;
                }
            };
            let start = pos + frame::HEADER_LEN;
            let end = start + head.len as usize;
            pos = end;
            if let Err(e) = self.frame(&head, &chunk, start..end, out, &mut on) {
                match e.scope {
                    Scope::Connection => self.fail(e.reason, e.what, out),
                    Scope::Stream(stream) => on(
                        self,
                        Event::StreamError {
                            stream,
                            reason: e.reason,
                        },
                        out,
                    ),
                }
            }
        }
        self.credit(out);
    }

    /// Returns connection-level credit once half the window was used.
    fn credit(&mut self, out: &mut Out) {
        if self.recv_unacked >= self.recv_window / 2 {
            frame::put_window_update(out, 0, self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// One frame: `head`, with its payload at `at` in `chunk`.
    fn frame(
        &mut self,
        head: &FrameHead,
        chunk: &Bytes,
        at: Range<usize>,
        out: &mut Out,
        on: &mut impl FnMut(&mut Conn, Event<'_>, &mut Out),
    ) -> Result<(), frame::Error> {
        let payload = &chunk[at.clone()];
        if let Some(open) = self.block.stream() {
            if head.kind != Kind::Continuation || head.stream != open {
                return Err(conn_error(Reason::PROTOCOL_ERROR, "a frame inside a header block"));
            }
        }
        match head.kind {
            Kind::Data => {
                let range = frame::data(head, payload)?;
                self.take_recv(head.len)?;
                let data = if range.len() >= SHARE_MIN {
                    chunk.slice(at.start + range.start..at.start + range.end)
                } else {
                    Bytes::copy_from_slice(&payload[range])
                };
                on(
                    self,
                    Event::Data {
                        stream: head.stream,
                        data,
                        end: head.has(flags::END_STREAM),
                    },
                    out,
                );
            }
            Kind::Headers => {
                let h = frame::headers(head, payload)?;
                let fragment = &payload[h.fragment];
                if h.end_headers {
                    on(
                        self,
                        Event::Headers {
                            stream: head.stream,
                            end: h.end_stream,
                            block: fragment,
                        },
                        out,
                    );
                } else {
                    self.block.start(head.stream, h.end_stream, fragment)?;
                }
            }
            Kind::Continuation => {
                frame::continuation(head, payload)?;
                let mut block = std::mem::replace(&mut self.block, HeaderBlock::new(MAX_BLOCK, MAX_CONTINUATIONS));
                let done = block.push(head, payload);
                let r = match done {
                    Ok(Some((end, bytes))) => {
                        on(
                            self,
                            Event::Headers {
                                stream: head.stream,
                                end,
                                block: bytes,
                            },
                            out,
                        );
                        block.clear();
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                self.block = block;
                r?;
            }
            Kind::Priority => frame::priority(head, payload)?,
            Kind::RstStream => {
                let reason = frame::rst_stream(head, payload)?;
                on(
                    self,
                    Event::Reset {
                        stream: head.stream,
                        reason,
                    },
                    out,
                );
            }
            Kind::Settings => {
                self.flood()?;
                if let Some(s) = frame::settings(head, payload)? {
                    self.peer_settings = true;
                    let delta = self.apply(&s);
                    frame::put_settings_ack(out);
                    if delta != 0 {
                        on(self, Event::Windows { delta }, out);
                    }
                }
            }
            Kind::Ping => {
                self.flood()?;
                let data = frame::ping(head, payload)?;
                if head.has(flags::ACK) {
                    self.pong = Some(data);
                } else {
                    frame::put_ping(out, true, data);
                }
            }
            Kind::GoAway => {
                let g = frame::goaway(head, payload)?;
                on(
                    self,
                    Event::GoAway {
                        last: g.last_stream,
                        reason: g.reason,
                    },
                    out,
                );
            }
            Kind::WindowUpdate => {
                let increment = frame::window_update(head, payload)?;
                if head.stream == 0 {
                    self.send_window += i64::from(increment);
                    if self.send_window > i64::from(frame::MAX_WINDOW) {
                        return Err(conn_error(Reason::FLOW_CONTROL_ERROR, "connection window over 2^31-1"));
                    }
                    on(self, Event::Windows { delta: 0 }, out);
                } else {
                    on(
                        self,
                        Event::Window {
                            stream: head.stream,
                            increment,
                        },
                        out,
                    );
                }
            }
            Kind::PushPromise => return Err(conn_error(Reason::PROTOCOL_ERROR, "PUSH_PROMISE")),
            Kind::Unknown(_) => {}
        }
        Ok(())
    }

    fn flood(&mut self) -> Result<(), frame::Error> {
        if !self.control.spend(tokio::time::Instant::now()) {
            return Err(conn_error(Reason::ENHANCE_YOUR_CALM, "SETTINGS or PING flood"));
        }
        Ok(())
    }

    /// Counts received DATA against the connection window.
    fn take_recv(&mut self, len: u32) -> Result<(), frame::Error> {
        let used = self.recv_unacked.saturating_add(len);
        if used > self.recv_window {
            return Err(conn_error(
                Reason::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        self.recv_unacked = used;
        Ok(())
    }

    /// Applies the peer's SETTINGS; returns the change of every stream's
    /// send window.
    fn apply(&mut self, s: &frame::Settings) -> i64 {
        if let Some(v) = s.header_table_size {
            self.enc.set_peer_max_table_size(v);
        }
        if let Some(v) = s.max_frame_size {
            self.peer_max_frame = v;
        }
        if let Some(v) = s.max_concurrent_streams {
            self.peer_max_streams = v;
        }
        match s.initial_window_size {
            Some(v) => {
                let delta = i64::from(v) - i64::from(self.peer_initial_window);
                self.peer_initial_window = v;
                delta
            }
            None => 0,
        }
    }

    /// Decodes a header block; `field` sees each field. Ok(false) when the
    /// list was too large or `field` stopped it (the block was still
    /// decoded, so the table stays in sync); Err after a compression error
    /// (the connection has failed).
    pub fn decode(&mut self, block: &[u8], out: &mut Out, mut field: impl FnMut(&[u8], &[u8], bool) -> bool) -> bool {
        match self
            .dec
            .decode(block, MAX_HEADER_LIST, |f| field(f.name, f.value, f.never_index))
        {
            Ok(()) => true,
            Err(e) if e.is_fatal() => {
                self.fail(Reason::COMPRESSION_ERROR, "header block does not decode", out);
                false
            }
            Err(_) => false,
        }
    }

    /// The head decoded last from these same block bytes, if the decoder's
    /// table is as that decoding left it, and that decoding changed nothing
    /// in it: decoding again would give the same fields. Only heads their
    /// side accepted are kept ([`Conn::keep_head`]).
    pub fn repeated_head(&self, block: &[u8]) -> Option<Head> {
        self.received.as_deref()?.get(block, self.dec.generation()).cloned()
    }

    /// `head`, decoded from `block` while the decoder was at `generation`,
    /// was accepted: kept for [`Conn::repeated_head`] if decoding it changed
    /// nothing in the decoder's table.
    pub fn keep_head(&mut self, block: &[u8], head: &Head, generation: u64) {
        if self.dec.generation() == generation && head.len_bytes() <= MAX_KEPT_HEAD {
            let kept = self.received.get_or_insert_with(Box::default).put(block, generation);
            if let Some(h) = kept {
                h.clone_from(head);
            }
        }
    }

    /// Writes `head` as a header block on `stream`: the block sent last for
    /// the same fields if the encoder's table has not changed since.
    pub fn put_head(&mut self, out: &mut Out, stream: u32, head: &Head, end: bool) {
        out.reserve(frame::HEADER_LEN + head.len_bytes());
        let at = out.len();
        out.extend_from_slice(&[0; frame::HEADER_LEN]);
        let generation = self.enc.generation();
        match self.sent.as_deref().and_then(|s| s.get(head.as_bytes(), generation)) {
            Some(block) => out.extend_from_slice(block),
            None => {
                self.enc.begin(out);
                for f in head.iter() {
                    self.enc.field(f.name, f.value, f.never_index, out);
                }
                if self.enc.generation() == generation {
                    let kept = self
                        .sent
                        .get_or_insert_with(Box::default)
                        .put(head.as_bytes(), generation);
                    if let Some(b) = kept {
                        b.clear();
                        b.extend_from_slice(&out[at + frame::HEADER_LEN..]);
                    }
                }
            }
        }
        frame::finish_headers(out, at, stream, end, self.peer_max_frame);
    }

    /// Writes what `flow` may send on `stream` now; returns the DATA bytes
    /// written.
    pub fn flush(&mut self, out: &mut Out, stream: u32, flow: &mut Outflow) -> usize {
        let n = flow.write(out, stream, &mut self.send_window, self.peer_max_frame);
        if flow.trailers_due() {
            if let Some(t) = flow.take_trailers() {
                self.put_head(out, stream, &t, true);
            }
        }
        n
    }
}

fn conn_error(reason: Reason, what: &'static str) -> frame::Error {
    frame::Error {
        reason,
        scope: Scope::Connection,
        what,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::proxy::relay::head::Builder;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn head(fields: &[(&str, &str)]) -> Head {
        let mut b = Builder::with_capacity(256);
        for (n, v) in fields {
            b.push(n.as_bytes(), v.as_bytes(), false);
        }
        b.finish()
    }

    fn fields(h: &Head) -> Fields {
        h.iter().map(|f| (f.name.to_vec(), f.value.to_vec())).collect()
    }

    /// Sends `h` as one HEADERS frame; returns its block and what the peer
    /// decodes from it.
    fn send(c: &mut Conn, peer: &mut hpack::Decoder, h: &Head) -> (Vec<u8>, Fields) {
        let mut out = Out::new(BytesMut::new());
        c.put_head(&mut out, 1, h, true);
        let block = out[frame::HEADER_LEN..].to_vec();
        let mut got = Vec::new();
        peer.decode(&block, usize::MAX, |f| {
            got.push((f.name.to_vec(), f.value.to_vec()));
            true
        })
        .unwrap();
        (block, got)
    }

    /// Receives `block` as a side does: the head kept for the same bytes,
    /// or decoded (and kept). Returns the head and whether it was kept.
    fn receive(c: &mut Conn, block: &[u8]) -> (Fields, bool) {
        if let Some(h) = c.repeated_head(block) {
            return (fields(&h), true);
        }
        let generation = c.dec.generation();
        let mut b = Builder::with_capacity(256);
        let mut out = Out::new(BytesMut::new());
        assert!(c.decode(block, &mut out, |n, v, never| {
            b.push(n, v, never);
            true
        }));
        let h = b.finish();
        c.keep_head(block, &h, generation);
        (fields(&h), false)
    }

    #[test]
    fn repeated_blocks_decode_as_the_peer_coded_them() {
        // The peer's encoder: literals with indexing, then indexes; a
        // literal without indexing keeps the table as it is.
        let mut peer = hpack::Encoder::new();
        let a = head(&[(":method", "POST"), (":path", "/s.S/M"), ("x-a", "1")]);
        let b = head(&[(":method", "POST"), (":path", "/s.S/N"), ("grpc-timeout", "1S")]);
        let b2 = head(&[(":method", "POST"), (":path", "/s.S/N"), ("grpc-timeout", "2S")]);
        let mut c = Conn::new(65_535);
        let mut hits = Vec::new();
        let mut first = None;
        for h in [&a, &a, &b, &a, &b2, &b2, &a] {
            let mut block = BytesMut::new();
            for f in h.iter() {
                peer.field(f.name, f.value, f.never_index, &mut block);
            }
            let (got, hit) = receive(&mut c, &block);
            assert_eq!(got, fields(h));
            hits.push(hit);
            first.get_or_insert(block);
        }
        assert_eq!(hits, [false, false, false, false, false, true, true]);
        // The first block of `a` inserted its fields: sent again now, it
        // inserts them again, and is decoded, not taken from before.
        let first = first.unwrap();
        assert_eq!(receive(&mut c, &first), (fields(&a), false));
        // `a` sent again names its fields by index; once newer entries come
        // in before them, the same bytes name other fields.
        let mut e = hpack::Encoder::new();
        let mut c = Conn::new(65_535);
        let encode = |e: &mut hpack::Encoder, h: &Head| {
            let mut block = BytesMut::new();
            for f in h.iter() {
                e.field(f.name, f.value, f.never_index, &mut block);
            }
            block
        };
        let first_a = encode(&mut e, &a);
        let again = encode(&mut e, &a);
        assert_eq!(receive(&mut c, &first_a), (fields(&a), false));
        assert_eq!(receive(&mut c, &again), (fields(&a), false));
        assert_eq!(receive(&mut c, &again), (fields(&a), true));
        let mut other = BytesMut::new();
        e.field(b"x-b", b"2", false, &mut other);
        e.field(b"x-c", b"3", false, &mut other);
        let _ = receive(&mut c, &other);
        let (got, hit) = receive(&mut c, &again);
        assert!(!hit, "the table changed since");
        assert_ne!(got, fields(&a), "the same indexes now name the newer entries");
        // A large head is decoded every time, not kept past its call.
        let value = "v".repeat(MAX_KEPT_HEAD);
        let large = head(&[(":path", "/s.S/M"), ("x-large", &value)]);
        let mut e = hpack::Encoder::new();
        let mut c = Conn::new(65_535);
        let first = encode(&mut e, &large);
        let block = encode(&mut e, &large);
        assert!(block.len() < 8, "the large field is indexed: {block:?}");
        assert_eq!(receive(&mut c, &first), (fields(&large), false));
        assert_eq!(receive(&mut c, &block), (fields(&large), false));
        assert_eq!(receive(&mut c, &block), (fields(&large), false));
    }

    #[test]
    fn repeated_heads_keep_the_peer_table_in_step() {
        let mut c = Conn::new(65_535);
        let mut peer = hpack::Decoder::new(4096);
        let a = head(&[(":method", "POST"), (":path", "/s.S/M"), ("x-a", "1")]);
        let b = head(&[(":method", "POST"), (":path", "/s.S/N"), ("x-b", "2")]);
        let mut blocks = Vec::new();
        for h in [&a, &a, &b, &a, &b, &b, &a, &a] {
            let (block, got) = send(&mut c, &mut peer, h);
            assert_eq!(got, fields(h));
            blocks.push(block);
        }
        assert_eq!(blocks[6], blocks[7], "a repeated head is the same block");
        assert!(blocks[7].len() <= 3, "every field indexed: {:?}", blocks[7]);
        // The peer shrinks its table: the next block starts with the size
        // update, not with the block sent last.
        c.enc.set_peer_max_table_size(0);
        let (block, got) = send(&mut c, &mut peer, &a);
        assert_eq!(got, fields(&a));
        assert_eq!(block[0] & 0xe0, 0x20, "a size update first: {block:?}");
    }
}
