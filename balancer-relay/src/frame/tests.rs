//! Tests across the codec: `next`, the preface, header block splitting and
//! reassembly, and seeded pseudo-random round trips of every writer through
//! `next` and the parsers.

#![allow(clippy::unwrap_used)]

use bytes::{BufMut, BytesMut};

use super::*;

// ---- next ----

#[test]
fn complete_counts_whole_frames_only() {
    let one = [0, 0, 3, 0x0, 0x1, 0, 0, 0, 1, b'a', b'b', b'c'];
    let mut two = one.to_vec();
    two.extend_from_slice(&one);
    for n in 0..two.len() {
        let want = if n < one.len() {
            0
        } else if n < two.len() {
            one.len()
        } else {
            two.len()
        };
        assert_eq!(complete(&two[..n], DEFAULT_MAX_FRAME_SIZE), want, "{n} bytes");
    }
    assert_eq!(complete(&two, DEFAULT_MAX_FRAME_SIZE), two.len());
    // What `complete` gives, `next` walks to the end.
    let mut pos = 0;
    while let Some(h) = next(&two[pos..], DEFAULT_MAX_FRAME_SIZE).unwrap() {
        pos += HEADER_LEN + h.len as usize;
    }
    assert_eq!(pos, complete(&two, DEFAULT_MAX_FRAME_SIZE));
}

#[test]
fn complete_hands_over_an_oversized_header_for_next_to_refuse() {
    let mut buf = vec![0, 0, 0, 0x4, 0x1, 0, 0, 0, 0];
    buf.extend_from_slice(&[0, 0x40, 0x01, 0x0, 0, 0, 0, 0, 1]);
    assert_eq!(complete(&buf, DEFAULT_MAX_FRAME_SIZE), 2 * HEADER_LEN);
    assert!(next(&buf[HEADER_LEN..], DEFAULT_MAX_FRAME_SIZE).is_err());
}

#[test]
fn next_needs_a_whole_header() {
    let frame = [0, 0, 0, 0x4, 0x1, 0, 0, 0, 0];
    for n in 0..HEADER_LEN {
        assert_eq!(next(&frame[..n], DEFAULT_MAX_FRAME_SIZE).unwrap(), None, "{n} bytes");
    }
    let head = next(&frame, DEFAULT_MAX_FRAME_SIZE).unwrap().unwrap();
    assert_eq!(
        head,
        Head {
            len: 0,
            kind: Kind::Settings,
            flags: flags::ACK,
            stream: 0
        }
    );
}

#[test]
fn next_needs_the_whole_payload() {
    let frame = [0, 0, 3, 0x0, 0x1, 0, 0, 0, 1, b'a', b'b', b'c', 0xff, 0xff];
    for n in HEADER_LEN..HEADER_LEN + 3 {
        assert_eq!(next(&frame[..n], DEFAULT_MAX_FRAME_SIZE).unwrap(), None, "{n} bytes");
    }
    // exactly one frame, and one frame followed by more bytes.
    for n in [HEADER_LEN + 3, frame.len()] {
        let head = next(&frame[..n], DEFAULT_MAX_FRAME_SIZE).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                len: 3,
                kind: Kind::Data,
                flags: flags::END_STREAM,
                stream: 1
            }
        );
    }
}

#[test]
fn next_enforces_our_max_frame_size() {
    // 16384 is accepted (once complete), 16385 is refused from the header alone.
    let mut frame = vec![0, 0x40, 0x00, 0x0, 0, 0, 0, 0, 1];
    assert_eq!(next(&frame, DEFAULT_MAX_FRAME_SIZE).unwrap(), None);
    frame.resize(HEADER_LEN + 16_384, 0);
    assert_eq!(next(&frame, DEFAULT_MAX_FRAME_SIZE).unwrap().unwrap().len, 16_384);
    let too_big = [0, 0x40, 0x01, 0x0, 0, 0, 0, 0, 1];
    let e = next(&too_big, DEFAULT_MAX_FRAME_SIZE).unwrap_err();
    assert_eq!((e.reason, e.scope), (Reason::FRAME_SIZE_ERROR, Scope::Connection));
    // a larger announced maximum lets it through; the 24-bit maximum too.
    assert_eq!(next(&too_big, 1 << 20).unwrap(), None);
    let huge = [0xff, 0xff, 0xff, 0x0, 0, 0, 0, 0, 1];
    assert_eq!(next(&huge, MAX_MAX_FRAME_SIZE).unwrap(), None);
    assert!(next(&huge, MAX_MAX_FRAME_SIZE - 1).is_err());
}

#[test]
fn next_applies_to_every_frame_type() {
    // The limit is ours, so it holds for SETTINGS and unknown types too.
    for kind in [0x4, 0x1, 0x9, 0xfe] {
        let frame = [0, 0, 17, kind, 0, 0, 0, 0, 0];
        assert!(next(&frame, 16).is_err());
    }
}

// ---- preface ----

#[test]
fn preface_complete_partial_and_wrong() {
    assert!(preface(PREFACE).unwrap());
    let mut more = PREFACE.to_vec();
    more.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert!(preface(&more).unwrap());
    for n in 0..PREFACE.len() {
        assert!(!preface(&PREFACE[..n]).unwrap(), "{n} bytes");
    }
    // a prefix of the preface is not an error; anything diverging is.
    assert!(!preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r").unwrap());
    for bad in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"x",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\n\r",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r",
    ] {
        let e = preface(bad).unwrap_err();
        assert_eq!((e.reason, e.scope), (Reason::PROTOCOL_ERROR, Scope::Connection));
    }
}

#[test]
fn error_display() {
    let e = Error::stream(3, Reason::PROTOCOL_ERROR, "stream depends on itself");
    assert_eq!(e.to_string(), "stream depends on itself (PROTOCOL_ERROR)");
    let e = Error::conn(Reason(0x42), "odd");
    assert_eq!(e.to_string(), "odd (unknown error code 0x42)");
}

// ---- header blocks split and reassembled ----

/// A deterministic 40 KB "encoded" block.
fn block_40k() -> Vec<u8> {
    (0..40 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Reads every frame of `buf` as a header block sequence; returns the frame
/// heads seen and the reassembled block.
fn reassemble(mut buf: &[u8]) -> (Vec<Head>, bool, Vec<u8>) {
    let mut block = HeaderBlock::new(64 * 1024, 8);
    let mut heads = Vec::new();
    while let Some(head) = next(buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        let payload = &buf[HEADER_LEN..HEADER_LEN + head.len as usize];
        buf = &buf[HEADER_LEN + head.len as usize..];
        heads.push(head);
        block.expecting(&head).unwrap();
        if head.kind == Kind::Headers {
            let h = headers(&head, payload).unwrap();
            assert!(!h.end_headers);
            block.start(head.stream, h.end_stream, &payload[h.fragment]).unwrap();
            continue;
        }
        continuation(&head, payload).unwrap();
        if let Some((end_stream, bytes)) = block.push(&head, payload).unwrap() {
            assert!(buf.is_empty());
            return (heads, end_stream, bytes.to_vec());
        }
    }
    panic!("header block never completed");
}

fn check_40k_frames(heads: &[Head]) {
    let want = [
        Head {
            len: 16_384,
            kind: Kind::Headers,
            flags: flags::END_STREAM,
            stream: 11,
        },
        Head {
            len: 16_384,
            kind: Kind::Continuation,
            flags: 0,
            stream: 11,
        },
        Head {
            len: 8_192,
            kind: Kind::Continuation,
            flags: flags::END_HEADERS,
            stream: 11,
        },
    ];
    assert_eq!(heads, &want);
}

#[test]
fn put_headers_40k_split_and_reassembled() {
    let block = block_40k();
    let mut dst = BytesMut::new();
    put_headers(&mut dst, 11, &block, true, DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(dst.len(), block.len() + 3 * HEADER_LEN);
    let (heads, end_stream, got) = reassemble(&dst);
    check_40k_frames(&heads);
    assert!(end_stream);
    assert_eq!(got, block);
}

#[test]
fn finish_headers_40k_split_and_reassembled() {
    let block = block_40k();
    let mut dst = BytesMut::new();
    put_ping(&mut dst, false, [1; 8]); // something already queued
    let queued = dst.len();
    dst.put_slice(&[0; HEADER_LEN]);
    dst.put_slice(&block);
    finish_headers(&mut dst, queued, 11, true, DEFAULT_MAX_FRAME_SIZE);
    let head = next(&dst, DEFAULT_MAX_FRAME_SIZE).unwrap().unwrap();
    assert_eq!(ping(&head, &dst[HEADER_LEN..queued]).unwrap(), [1; 8]);
    let (heads, end_stream, got) = reassemble(&dst[queued..]);
    check_40k_frames(&heads);
    assert!(end_stream);
    assert_eq!(got, block);
}

#[test]
fn split_block_over_limits_is_refused() {
    let block = block_40k();
    let mut dst = BytesMut::new();
    put_headers(&mut dst, 1, &block, false, 4096); // 10 frames: 9 CONTINUATIONs
    let run = |max_block: usize, max_frames: u32| -> Result<(), Error> {
        let mut hb = HeaderBlock::new(max_block, max_frames);
        let mut buf = &dst[..];
        while let Some(head) = next(buf, DEFAULT_MAX_FRAME_SIZE)? {
            let payload = &buf[HEADER_LEN..HEADER_LEN + head.len as usize];
            buf = &buf[HEADER_LEN + head.len as usize..];
            match head.kind {
                Kind::Headers => hb.start(head.stream, false, &payload[headers(&head, payload)?.fragment])?,
                _ => {
                    hb.push(&head, payload)?;
                }
            }
        }
        Ok(())
    };
    run(40 * 1024, 9).unwrap();
    let e = run(40 * 1024, 8).unwrap_err();
    assert_eq!((e.reason, e.scope), (Reason::ENHANCE_YOUR_CALM, Scope::Connection));
    let e = run(40 * 1024 - 1, 9).unwrap_err();
    assert_eq!((e.reason, e.scope), (Reason::ENHANCE_YOUR_CALM, Scope::Connection));
}

// ---- seeded pseudo-random round trips ----

/// splitmix64: small, seeded, good enough to drive test cases.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }

    /// Uniform-ish in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }

    fn bool(&mut self) -> bool {
        self.u64() & 1 == 1
    }

    fn stream(&mut self) -> u32 {
        1 + self.below(u64::from(STREAM_ID_MASK)) as u32
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

/// What a frame (or header block) carries, as written and as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Settings(Option<Settings>),
    Ping(bool, [u8; 8]),
    Window(u32, u32),
    Rst(u32, Reason),
    GoAway(u32, Reason, Vec<u8>),
    Data(u32, Vec<u8>, bool),
    Headers(u32, Vec<u8>, bool),
}

/// A random valid setting, and its effect on the expected `Settings`.
fn random_setting(rng: &mut Rng, s: &mut Settings) -> (u16, u32) {
    let pick = rng.below(9);
    let v = rng.u32();
    match pick {
        0 => s.header_table_size = Some(v),
        1 => s.enable_push = Some(v & 1 == 1),
        2 => s.max_concurrent_streams = Some(v),
        3 => s.initial_window_size = Some(v & MAX_WINDOW),
        4 => s.max_frame_size = Some(DEFAULT_MAX_FRAME_SIZE + v % (MAX_MAX_FRAME_SIZE - DEFAULT_MAX_FRAME_SIZE + 1)),
        5 => s.max_header_list_size = Some(v),
        6 => s.enable_connect_protocol = Some(v & 1 == 1),
        7 => return (SETTINGS_NO_RFC7540_PRIORITIES, v & 1),
        _ => return (0x100 + (v >> 16) as u16 % 0xfe00, v), // unknown id
    }
    let (id, value) = match pick {
        0 => (SETTINGS_HEADER_TABLE_SIZE, s.header_table_size),
        1 => (SETTINGS_ENABLE_PUSH, s.enable_push.map(u32::from)),
        2 => (SETTINGS_MAX_CONCURRENT_STREAMS, s.max_concurrent_streams),
        3 => (SETTINGS_INITIAL_WINDOW_SIZE, s.initial_window_size),
        4 => (SETTINGS_MAX_FRAME_SIZE, s.max_frame_size),
        5 => (SETTINGS_MAX_HEADER_LIST_SIZE, s.max_header_list_size),
        _ => (
            SETTINGS_ENABLE_CONNECT_PROTOCOL,
            s.enable_connect_protocol.map(u32::from),
        ),
    };
    (id, value.unwrap_or_default())
}

/// Writes a padded DATA frame by hand (no writer produces padding).
fn put_padded_data(dst: &mut BytesMut, rng: &mut Rng, stream: u32, data: &[u8], end_stream: bool) {
    let pad = rng.below(256) as usize;
    let flags = flags::PADDED | if end_stream { flags::END_STREAM } else { 0 };
    Head {
        len: (1 + data.len() + pad) as u32,
        kind: Kind::Data,
        flags,
        stream,
    }
    .write(dst);
    dst.put_u8(pad as u8);
    dst.put_slice(data);
    dst.put_bytes(0, pad);
}

/// Writes a single HEADERS frame with padding and/or priority by hand.
fn put_fancy_headers(dst: &mut BytesMut, rng: &mut Rng, stream: u32, block: &[u8], end_stream: bool) {
    let padded = rng.bool();
    let prio = rng.bool();
    let pad = if padded { rng.below(256) as usize } else { 0 };
    let mut fl = flags::END_HEADERS;
    fl |= if end_stream { flags::END_STREAM } else { 0 };
    fl |= if padded { flags::PADDED } else { 0 };
    fl |= if prio { flags::PRIORITY } else { 0 };
    let len = usize::from(padded) + if prio { 5 } else { 0 } + block.len() + pad;
    Head {
        len: len as u32,
        kind: Kind::Headers,
        flags: fl,
        stream,
    }
    .write(dst);
    if padded {
        dst.put_u8(pad as u8);
    }
    if prio {
        dst.put_u32((stream + 1) & STREAM_ID_MASK | (rng.u32() & 0x8000_0000));
        dst.put_u8(rng.u64() as u8);
    }
    dst.put_slice(block);
    dst.put_bytes(0, pad);
}

/// Appends one random frame (or header block) to `dst`; returns what it carries.
fn random_frame(rng: &mut Rng, dst: &mut BytesMut) -> Ev {
    let stream = rng.stream();
    match rng.below(11) {
        0 => {
            let mut s = Settings::default();
            let values: Vec<_> = (0..rng.below(12)).map(|_| random_setting(rng, &mut s)).collect();
            put_settings(dst, &values);
            Ev::Settings(Some(s))
        }
        1 => {
            put_settings_ack(dst);
            Ev::Settings(None)
        }
        2 => {
            let (ack, data) = (rng.bool(), rng.u64().to_be_bytes());
            put_ping(dst, ack, data);
            Ev::Ping(ack, data)
        }
        3 => {
            let (stream, inc) = (if rng.bool() { 0 } else { stream }, 1 + rng.u32() % MAX_WINDOW);
            put_window_update(dst, stream, inc);
            Ev::Window(stream, inc)
        }
        4 => {
            let reason = Reason(rng.u32() % 16);
            put_rst_stream(dst, stream, reason);
            Ev::Rst(stream, reason)
        }
        5 => {
            let (last, reason, debug) = (rng.u32() & STREAM_ID_MASK, Reason(rng.u32()), rng.bytes(64));
            put_goaway(dst, last, reason, &debug);
            Ev::GoAway(last, reason, debug)
        }
        6 => {
            let (data, end) = (rng.bytes(2000), rng.bool());
            put_data_head(dst, stream, data.len() as u32, end);
            dst.put_slice(&data);
            Ev::Data(stream, data, end)
        }
        7 => {
            let (data, end) = (rng.bytes(2000), rng.bool());
            put_padded_data(dst, rng, stream, &data, end);
            Ev::Data(stream, data, end)
        }
        8 => {
            let (block, end) = (rng.bytes(1000), rng.bool());
            put_fancy_headers(dst, rng, stream, &block, end);
            Ev::Headers(stream, block, end)
        }
        n => {
            let block = if rng.below(4) == 0 {
                rng.bytes(40_000)
            } else {
                rng.bytes(300)
            };
            let end = rng.bool();
            let max = if rng.bool() {
                DEFAULT_MAX_FRAME_SIZE
            } else {
                1 + rng.below(400) as u32
            };
            if n == 9 {
                put_headers(dst, stream, &block, end, max);
            } else {
                let at = dst.len();
                dst.put_bytes(0xaa, HEADER_LEN);
                dst.put_slice(&block);
                finish_headers(dst, at, stream, end, max);
            }
            Ev::Headers(stream, block, end)
        }
    }
}

/// Parses one frame, as an engine would; pushes what it carries to `out`.
fn read_frame(head: &Head, payload: &[u8], block: &mut HeaderBlock, out: &mut Vec<Ev>) -> Result<(), Error> {
    block.expecting(head)?;
    let stream = head.stream;
    let ev = match head.kind {
        Kind::Settings => Ev::Settings(settings(head, payload)?),
        Kind::Ping => Ev::Ping(head.has(flags::ACK), ping(head, payload)?),
        Kind::WindowUpdate => Ev::Window(stream, window_update(head, payload)?),
        Kind::RstStream => Ev::Rst(stream, rst_stream(head, payload)?),
        Kind::GoAway => {
            let g = goaway(head, payload)?;
            Ev::GoAway(g.last_stream, g.reason, g.debug.to_vec())
        }
        Kind::Data => Ev::Data(
            stream,
            payload[data(head, payload)?].to_vec(),
            head.has(flags::END_STREAM),
        ),
        Kind::Headers => {
            let h = headers(head, payload)?;
            if !h.end_headers {
                return block.start(stream, h.end_stream, &payload[h.fragment]);
            }
            Ev::Headers(stream, payload[h.fragment].to_vec(), h.end_stream)
        }
        Kind::Continuation => {
            continuation(head, payload)?;
            let Some((end, bytes)) = block.push(head, payload)? else {
                return Ok(());
            };
            let ev = Ev::Headers(stream, bytes.to_vec(), end);
            block.clear();
            ev
        }
        other => panic!("unexpected frame type {other:?}"),
    };
    out.push(ev);
    Ok(())
}

/// Reads `wire` arriving in random-sized pieces; returns everything decoded.
fn read_all(rng: &mut Rng, wire: &[u8]) -> Vec<Ev> {
    let mut block = HeaderBlock::new(64 * 1024, 64 * 1024);
    let (mut input, mut fed, mut out) = (BytesMut::new(), 0, Vec::new());
    loop {
        match next(&input, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            Some(head) => {
                let frame = input.split_to(HEADER_LEN + head.len as usize);
                read_frame(&head, &frame[HEADER_LEN..], &mut block, &mut out).unwrap();
            }
            None if fed == wire.len() => break,
            None => {
                let n = (1 + rng.below(3000) as usize).min(wire.len() - fed);
                input.put_slice(&wire[fed..fed + n]);
                fed += n;
            }
        }
    }
    assert!(input.is_empty(), "trailing bytes");
    assert!(!block.is_open(), "unfinished header block");
    out
}

#[test]
fn random_round_trip_of_every_writer() {
    for seed in 0..64 {
        let mut rng = Rng(seed);
        let mut wire = BytesMut::new();
        let sent: Vec<Ev> = (0..150).map(|_| random_frame(&mut rng, &mut wire)).collect();
        let got = read_all(&mut rng, &wire);
        assert_eq!(got.len(), sent.len(), "seed {seed}");
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(g, s, "seed {seed}, frame {i}");
        }
    }
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x5eed);
    let mut block = HeaderBlock::new(4096, 4);
    for _ in 0..20_000 {
        let mut raw = [0u8; HEADER_LEN];
        raw.iter_mut().for_each(|b| *b = rng.u64() as u8);
        raw[0] = 0;
        raw[1] = 0;
        raw[2] %= 40;
        raw[3] %= 11;
        let head = Head::parse(&raw);
        let payload: Vec<u8> = (0..head.len).map(|_| rng.u64() as u8).collect();
        let mut wire = raw.to_vec();
        wire.extend_from_slice(&payload);
        assert_eq!(next(&wire, DEFAULT_MAX_FRAME_SIZE).unwrap(), Some(head));
        let p = &payload[..];
        if let Ok(r) = data(&head, p) {
            assert!(r.end <= p.len());
        }
        if let Ok(h) = headers(&head, p) {
            assert!(h.fragment.end <= p.len());
        }
        let _ = (
            priority(&head, p),
            rst_stream(&head, p),
            window_update(&head, p),
            ping(&head, p),
        );
        let _ = (goaway(&head, p), continuation(&head, p), settings(&head, p));
        if head.kind == Kind::Headers && !head.has(flags::END_HEADERS) && !block.is_open() {
            let _ = block.start(head.stream, false, p);
        } else if block.push(&head, p).is_err() {
            assert!(!block.is_open());
        }
    }
}
