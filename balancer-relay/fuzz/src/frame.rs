//! The `frame` target: a peer's byte stream through the frame codec the way
//! the relay engine reads it (`balancer-agent/src/relay/conn.rs`): frames
//! found with [`frame::next`], every payload handed to its parser, header
//! blocks assembled by [`HeaderBlock`] and decoded with one HPACK decoder per
//! connection, until the first connection error. On the way, everything that
//! parsed is written back with the frame writers (and the header blocks
//! re-encoded as the engine forwards them) and must read back the same.

use balancer_relay::{
    frame::{self, flags, Error, Head, HeaderBlock, Kind, Reason, Scope, HEADER_LEN, MAX_WINDOW, PREFACE},
    hpack,
};
use bytes::BytesMut;

use crate::OwnedField;

/// The limits of one run, from the configuration byte (0: the engine's).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Our SETTINGS_MAX_FRAME_SIZE (bit 0: 16384 or 64).
    pub max_frame: u32,
    /// [`HeaderBlock`]'s limits (bit 1: 64 KiB or 256 bytes; bit 2: 16
    /// CONTINUATION frames or 1).
    pub max_block: usize,
    pub max_frames: u32,
    /// Our SETTINGS_HEADER_TABLE_SIZE (bit 3: 4096 or 64).
    pub table_size: u32,
    /// Our SETTINGS_MAX_HEADER_LIST_SIZE (bits 4-5: 16 KiB, 1024, 128, 0).
    pub max_list: usize,
    /// The stream starts with the client preface (bit 6).
    pub preface: bool,
    /// The field callback stops the decoding after the first field (bit 7).
    pub stop_early: bool,
}

/// The configuration byte of the engine's limits, with the client preface.
pub const ENGINE_WITH_PREFACE: u8 = 0x40;

impl Config {
    pub fn from_byte(b: u8) -> Config {
        let bit = |n: u8| b & (1 << n) != 0;
        Config {
            max_frame: if bit(0) { 64 } else { frame::DEFAULT_MAX_FRAME_SIZE },
            max_block: if bit(1) { 256 } else { 64 * 1024 },
            max_frames: if bit(2) { 1 } else { 16 },
            table_size: if bit(3) { 64 } else { 4096 },
            max_list: [16 * 1024, 1024, 128, 0][usize::from((b >> 4) & 3)],
            preface: bit(6),
            stop_early: bit(7),
        }
    }
}

/// Runs one input: a configuration byte, then what a peer sends.
pub fn run(data: &[u8]) {
    let Some((&cfg, mut buf)) = data.split_first() else {
        return;
    };
    let cfg = Config::from_byte(cfg);
    let preface = frame::preface(buf);
    let n = buf.len().min(PREFACE.len());
    match preface {
        Ok(true) => assert!(buf.starts_with(PREFACE)),
        Ok(false) => assert!(n < PREFACE.len() && buf == &PREFACE[..n]),
        Err(e) => {
            assert_ne!(buf[..n], PREFACE[..n]);
            assert_eq!((e.reason, e.scope), (Reason::PROTOCOL_ERROR, Scope::Connection));
        }
    }
    if cfg.preface {
        match preface {
            Ok(true) => buf = &buf[PREFACE.len()..],
            _ => return,
        }
    }
    let mut conn = Conn::new(cfg);
    let mut pos = 0;
    while !conn.finished {
        let rest = &buf[pos..];
        let head = match frame::next(rest, cfg.max_frame) {
            Ok(Some(head)) => head,
            Ok(None) => {
                // Only ever for an incomplete frame.
                if let Some(raw) = rest.first_chunk::<HEADER_LEN>() {
                    assert!(rest.len() - HEADER_LEN < Head::parse(raw).len as usize);
                }
                break;
            }
            Err(e) => {
                let raw = rest.first_chunk::<HEADER_LEN>().expect("an error needs a header");
                assert!(Head::parse(raw).len > cfg.max_frame);
                assert_eq!((e.reason, e.scope), (Reason::FRAME_SIZE_ERROR, Scope::Connection));
                break;
            }
        };
        let len = head.len as usize;
        assert!(head.len <= cfg.max_frame);
        // One byte short is not a frame yet.
        assert_eq!(frame::next(&rest[..HEADER_LEN + len - 1], cfg.max_frame), Ok(None));
        // The header reads back as it came, the reserved bit dropped.
        assert_eq!(head.kind.as_u8(), rest[3]);
        assert_eq!(Kind::from_u8(rest[3]), head.kind);
        let mut raw = [0; HEADER_LEN];
        head.write_to(&mut raw);
        assert_eq!(raw[..5], rest[..5]);
        assert_eq!(raw[5], rest[5] & 0x7f);
        assert_eq!(raw[6..], rest[6..HEADER_LEN]);
        assert_eq!(Head::parse(&raw), head);

        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        pos += HEADER_LEN + len;
        if let Err(e) = conn.frame(&head, payload) {
            match e.scope {
                // GOAWAY: the connection is over.
                Scope::Connection => conn.finished = true,
                // RST_STREAM: the connection lives on.
                Scope::Stream(stream) => {
                    assert_ne!(stream, 0);
                    assert_eq!(stream, head.stream);
                }
            }
        }
    }
}

/// The frame-level state of one connection, as the engine keeps it.
struct Conn {
    cfg: Config,
    block: HeaderBlock,
    dec: hpack::Decoder,
    /// The engine's encoder towards the next hop, and that hop's decoder.
    enc: hpack::Encoder,
    next_hop: hpack::Decoder,
    /// The peer's SETTINGS_MAX_FRAME_SIZE (how the engine writes to it).
    peer_max_frame: u32,
    finished: bool,
}

impl Conn {
    fn new(cfg: Config) -> Conn {
        Conn {
            cfg,
            block: HeaderBlock::new(cfg.max_block, cfg.max_frames),
            dec: hpack::Decoder::new(cfg.table_size),
            enc: hpack::Encoder::new(),
            next_hop: hpack::Decoder::new(4096),
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            finished: false,
        }
    }

    fn frame(&mut self, head: &Head, payload: &[u8]) -> Result<(), Error> {
        let expecting = self.block.expecting(head);
        let out_of_sequence = match self.block.stream() {
            Some(open) => head.kind != Kind::Continuation || head.stream != open,
            None => head.kind == Kind::Continuation,
        };
        assert_eq!(expecting.is_err(), out_of_sequence, "{head:?} {:?}", self.block);
        if self.block.is_open() {
            // A frame inside a header block.
            expecting?;
        }
        match head.kind {
            Kind::Data => {
                let range = frame::data(head, payload)?;
                assert!(range.start <= range.end && range.end <= payload.len());
                if !head.has(flags::PADDED) {
                    assert_eq!(range, 0..payload.len());
                }
            }
            Kind::Headers => {
                let h = frame::headers(head, payload)?;
                assert_eq!(h.end_stream, head.has(flags::END_STREAM));
                assert_eq!(h.end_headers, head.has(flags::END_HEADERS));
                let fragment = &payload[h.fragment];
                if h.end_headers {
                    self.headers(head.stream, h.end_stream, fragment)?;
                } else {
                    self.block.start(head.stream, h.end_stream, fragment)?;
                    assert_eq!(self.block.stream(), Some(head.stream));
                }
            }
            Kind::Continuation => {
                frame::continuation(head, payload)?;
                match self.block.push(head, payload) {
                    Ok(Some((end, block))) => {
                        assert!(block.len() <= self.cfg.max_block);
                        let block = block.to_vec();
                        assert!(!self.block.is_open());
                        self.block.clear();
                        self.headers(head.stream, end, &block)?;
                    }
                    Ok(None) => assert_eq!(self.block.stream(), Some(head.stream)),
                    Err(e) => {
                        assert!(!self.block.is_open());
                        return Err(e);
                    }
                }
            }
            Kind::Priority => frame::priority(head, payload)?,
            Kind::RstStream => {
                let reason = frame::rst_stream(head, payload)?;
                let mut out = BytesMut::new();
                frame::put_rst_stream(&mut out, head.stream, reason);
                let (h, p) = one_frame(&out);
                assert_eq!(frame::rst_stream(&h, p), Ok(reason));
            }
            Kind::Settings => match frame::settings(head, payload)? {
                Some(s) => {
                    let pairs: Vec<_> = s.to_pairs().collect();
                    let mut out = BytesMut::new();
                    frame::put_settings(&mut out, &pairs);
                    let (h, p) = one_frame(&out);
                    assert_eq!(frame::settings(&h, p), Ok(Some(s)));
                    if let Some(v) = s.max_frame_size {
                        assert!((frame::DEFAULT_MAX_FRAME_SIZE..=frame::MAX_MAX_FRAME_SIZE).contains(&v));
                        self.peer_max_frame = v;
                    }
                    if let Some(v) = s.initial_window_size {
                        assert!(v <= MAX_WINDOW);
                    }
                    if let Some(v) = s.header_table_size {
                        // The engine's encoder follows the peer's table; the
                        // peer's decoder takes the size once we ACK.
                        self.enc.set_peer_max_table_size(v);
                        self.next_hop.set_max_table_size(v);
                    }
                }
                None => assert!(head.has(flags::ACK) && payload.is_empty()),
            },
            Kind::Ping => {
                let data = frame::ping(head, payload)?;
                let mut out = BytesMut::new();
                frame::put_ping(&mut out, !head.has(flags::ACK), data);
                let (h, p) = one_frame(&out);
                assert_eq!(frame::ping(&h, p), Ok(data));
                assert_eq!(h.has(flags::ACK), !head.has(flags::ACK));
            }
            Kind::GoAway => {
                let g = frame::goaway(head, payload)?;
                let mut out = BytesMut::new();
                frame::put_goaway(&mut out, g.last_stream, g.reason, g.debug);
                let (h, p) = one_frame(&out);
                let back = frame::goaway(&h, p).expect("a GOAWAY we wrote parses");
                assert_eq!((back.last_stream, back.reason), (g.last_stream, g.reason));
                assert!(g.debug.starts_with(back.debug));
            }
            Kind::WindowUpdate => {
                let increment = frame::window_update(head, payload)?;
                assert!((1..=MAX_WINDOW).contains(&increment));
                let mut out = BytesMut::new();
                frame::put_window_update(&mut out, head.stream, increment);
                let (h, p) = one_frame(&out);
                assert_eq!(frame::window_update(&h, p), Ok(increment));
            }
            // The engine refuses server push.
            Kind::PushPromise => return Err(Error::conn(Reason::PROTOCOL_ERROR, "PUSH_PROMISE")),
            Kind::Unknown(_) => {}
        }
        Ok(())
    }

    /// A complete header block: written back as frames, decoded, re-encoded
    /// and forwarded as the engine does, and read back by the next hop.
    fn headers(&mut self, stream: u32, end: bool, block: &[u8]) -> Result<(), Error> {
        let mut out = BytesMut::new();
        frame::put_headers(&mut out, stream, block, end, self.peer_max_frame);
        assert_eq!(reassemble(&out, self.peer_max_frame), (stream, end, block.to_vec()));

        let mut fields: Vec<OwnedField> = Vec::new();
        let stop_early = self.cfg.stop_early;
        let decoded = self.dec.decode(block, self.cfg.max_list, |f| {
            fields.push((f.name.to_vec(), f.value.to_vec(), f.never_index));
            !stop_early
        });
        match decoded {
            Ok(()) => {}
            Err(e) if e.is_fatal() => {
                return Err(Error::conn(Reason::COMPRESSION_ERROR, "header block does not decode"));
            }
            Err(_) => {}
        }
        assert!(fields.iter().map(|(n, v, _)| n.len() + v.len() + 32).sum::<usize>() <= self.cfg.max_list);

        // The engine's put_head, after something else already queued.
        let mut out = BytesMut::new();
        frame::put_ping(&mut out, false, [0; 8]);
        let at = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        self.enc.begin(&mut out);
        for (name, value, never_index) in &fields {
            self.enc.field(name, value, *never_index, &mut out);
        }
        frame::finish_headers(&mut out, at, stream, end, self.peer_max_frame);
        let (s, e, forwarded) = reassemble(&out[at..], self.peer_max_frame);
        assert_eq!((s, e), (stream, end));
        let mut back: Vec<OwnedField> = Vec::new();
        self.next_hop
            .decode(&forwarded, usize::MAX, |f| {
                back.push((f.name.to_vec(), f.value.to_vec(), f.never_index));
                true
            })
            .unwrap_or_else(|e| panic!("the forwarded header block does not decode: {e}"));
        assert_eq!(back, fields, "the next hop reads other fields");
        Ok(())
    }
}

/// The one frame that `buf` holds, as any peer reads it.
fn one_frame(buf: &[u8]) -> (Head, &[u8]) {
    let head = frame::next(buf, frame::MAX_MAX_FRAME_SIZE)
        .expect("a frame we wrote is valid")
        .expect("a frame we wrote is complete");
    assert_eq!(buf.len(), HEADER_LEN + head.len as usize, "one frame, nothing more");
    (head, &buf[HEADER_LEN..])
}

/// The header block that `buf` holds as HEADERS + CONTINUATION frames of at
/// most `max_frame` bytes each: (stream, END_STREAM, block).
fn reassemble(buf: &[u8], max_frame: u32) -> (u32, bool, Vec<u8>) {
    let mut block = HeaderBlock::new(usize::MAX, u32::MAX);
    let mut pos = 0;
    let mut first = true;
    loop {
        let head = frame::next(&buf[pos..], max_frame)
            .expect("frames we wrote fit the peer's frame size")
            .expect("frames we wrote are complete");
        let payload = &buf[pos + HEADER_LEN..pos + HEADER_LEN + head.len as usize];
        pos += HEADER_LEN + head.len as usize;
        if first {
            first = false;
            assert_eq!(head.kind, Kind::Headers);
            let h = frame::headers(&head, payload).expect("a HEADERS frame we wrote parses");
            if h.end_headers {
                assert_eq!(pos, buf.len());
                return (head.stream, h.end_stream, payload[h.fragment].to_vec());
            }
            block
                .start(head.stream, h.end_stream, &payload[h.fragment])
                .expect("a header block we wrote starts");
            continue;
        }
        assert_eq!(head.kind, Kind::Continuation);
        frame::continuation(&head, payload).expect("a CONTINUATION we wrote parses");
        if let Some((end, bytes)) = block.push(&head, payload).expect("a header block we wrote continues") {
            assert_eq!(pos, buf.len());
            return (head.stream, end, bytes.to_vec());
        }
    }
}
