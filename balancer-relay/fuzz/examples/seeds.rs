//! Writes the seed corpora: `corpus/frame/seed-*` and `corpus/hpack/seed-*`
//! (valid gRPC traffic in each target's input format), and runs every seed
//! through its target once.
//!
//!   cargo run --example seeds [-- OUT_DIR]    # default: corpus/ next to Cargo.toml
#![expect(clippy::unwrap_used, reason = "a generator: any error stops it loudly")]

use std::path::PathBuf;

use balancer_relay::{
    frame::{self, flags, Head, Kind, Reason, PREFACE},
    hpack::{Decoder, Encoder},
};
use balancer_relay_fuzz::{frame::ENGINE_WITH_PREFACE, hpack::SIZES};
use bytes::{BufMut, BytesMut};

/// Named seeds of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

/// (name, value, never_index)
type Fields = &'static [(&'static str, &'static str, bool)];

const REQUEST: Fields = &[
    (":method", "POST", false),
    (":scheme", "http", false),
    (":path", "/helloworld.Greeter/SayHello", false),
    (":authority", "127.0.0.1:50051", false),
    ("content-type", "application/grpc", false),
    ("te", "trailers", false),
    ("user-agent", "grpc-rust/0.14", false),
    ("grpc-timeout", "1S", false),
    ("grpc-accept-encoding", "identity,deflate,gzip", false),
    ("authorization", "Bearer t0ken", true),
    ("x-blob-bin", "AAEC/w", false),
];

const RESPONSE: Fields = &[
    (":status", "200", false),
    ("content-type", "application/grpc", false),
    ("grpc-accept-encoding", "identity,deflate,gzip", false),
];

const TRAILERS: Fields = &[("grpc-status", "0", false), ("grpc-message", "", false)];

fn block(enc: &mut Encoder, fields: Fields) -> Vec<u8> {
    let mut out = BytesMut::new();
    enc.begin(&mut out);
    for (n, v, never) in fields {
        enc.field(n.as_bytes(), v.as_bytes(), *never, &mut out);
    }
    out.to_vec()
}

fn put(out: &mut BytesMut, kind: Kind, flags: u8, stream: u32, payload: &[u8]) {
    Head {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .write(out);
    out.put_slice(payload);
}

/// A gRPC message: not compressed, 32-bit length, a small protobuf.
fn grpc_message() -> Vec<u8> {
    let proto = b"\x0a\x05world";
    let mut m = vec![0];
    m.extend_from_slice(&(proto.len() as u32).to_be_bytes());
    m.extend_from_slice(proto);
    m
}

fn frame_seeds() -> Seeds {
    let mut seeds = Vec::new();

    // A client: preface, SETTINGS, two unary calls (the second one mostly
    // indexed), ACK and PING.
    let mut enc = Encoder::new();
    let mut out = BytesMut::new();
    out.put_u8(ENGINE_WITH_PREFACE);
    out.put_slice(PREFACE);
    frame::put_settings(
        &mut out,
        &[
            (frame::SETTINGS_ENABLE_PUSH, 0),
            (frame::SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20),
            (frame::SETTINGS_MAX_HEADER_LIST_SIZE, 16 << 10),
            (frame::SETTINGS_HEADER_TABLE_SIZE, 4096),
        ],
    );
    frame::put_window_update(&mut out, 0, (4 << 20) - 65_535);
    for stream in [1, 3] {
        frame::put_headers(&mut out, stream, &block(&mut enc, REQUEST), false, 16_384);
        put(&mut out, Kind::Data, flags::END_STREAM, stream, &grpc_message());
        if stream == 1 {
            frame::put_settings_ack(&mut out);
            frame::put_ping(&mut out, false, *b"12345678");
        }
    }
    seeds.push(("grpc-client", out.to_vec()));

    // A server: SETTINGS, response headers, DATA, trailers; the headers
    // padded and with a priority block.
    let mut enc = Encoder::new();
    let mut out = BytesMut::new();
    out.put_u8(0);
    frame::put_settings(&mut out, &[(frame::SETTINGS_MAX_CONCURRENT_STREAMS, 100)]);
    let response = block(&mut enc, RESPONSE);
    let mut payload = vec![2, 0x80, 0, 0, 0, 15];
    payload.extend_from_slice(&response);
    payload.extend_from_slice(&[0, 0]);
    put(
        &mut out,
        Kind::Headers,
        flags::END_HEADERS | flags::PADDED | flags::PRIORITY,
        1,
        &payload,
    );
    let mut data = vec![3];
    data.extend_from_slice(&grpc_message());
    data.extend_from_slice(&[0, 0, 0]);
    put(&mut out, Kind::Data, flags::PADDED, 1, &data);
    frame::put_headers(&mut out, 1, &block(&mut enc, TRAILERS), true, 16_384);
    seeds.push(("grpc-server", out.to_vec()));

    // A header block over HEADERS and CONTINUATION frames.
    let mut enc = Encoder::new();
    let mut out = BytesMut::new();
    out.put_u8(0);
    let request = block(&mut enc, REQUEST);
    frame::put_headers(&mut out, 1, &request, true, (request.len() / 4 + 1) as u32);
    seeds.push(("continuation", out.to_vec()));

    // Every control frame, and an unknown frame type.
    let mut out = BytesMut::new();
    out.put_u8(0);
    frame::put_settings(
        &mut out,
        &[
            (frame::SETTINGS_MAX_FRAME_SIZE, 32_768),
            (frame::SETTINGS_NO_RFC7540_PRIORITIES, 1),
            (frame::SETTINGS_ENABLE_CONNECT_PROTOCOL, 0),
            (frame::SETTINGS_HEADER_TABLE_SIZE, 256),
        ],
    );
    frame::put_ping(&mut out, true, *b"balancer");
    put(&mut out, Kind::Priority, 0, 3, &[0, 0, 0, 1, 16]);
    frame::put_rst_stream(&mut out, 1, Reason::CANCEL);
    frame::put_window_update(&mut out, 1, 1024);
    put(&mut out, Kind::Unknown(0xa0), 0xff, 5, b"ignored");
    frame::put_goaway(&mut out, 3, Reason::NO_ERROR, b"bye");
    seeds.push(("control", out.to_vec()));
    seeds
}

/// One block in the `hpack` target's format.
fn hpack_block(out: &mut Vec<u8>, ctl: u8, block: &[u8]) {
    out.push(ctl);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(block);
}

fn size_index(size: u32) -> u8 {
    SIZES.iter().position(|&s| s == size).unwrap() as u8
}

fn hpack_seeds() -> Seeds {
    let mut seeds = Vec::new();

    // A connection's requests: the second one indexed, then a smaller table
    // (with the size update) on both sides.
    let mut enc = Encoder::new();
    let mut out = vec![0xff];
    hpack_block(&mut out, 0, &block(&mut enc, REQUEST));
    hpack_block(&mut out, 0, &block(&mut enc, REQUEST));
    enc.set_peer_max_table_size(256);
    hpack_block(&mut out, 0xc0 | (size_index(256) << 3), &block(&mut enc, REQUEST));
    seeds.push(("grpc-request", out));

    // Responses and trailers, with a list limit that stops the second block.
    let mut enc = Encoder::new();
    let mut out = vec![4];
    hpack_block(&mut out, 0, &block(&mut enc, RESPONSE));
    hpack_block(&mut out, 0, &block(&mut enc, TRAILERS));
    hpack_block(&mut out, 2, &block(&mut enc, REQUEST));
    seeds.push(("grpc-response", out));

    // Huffman-coded strings: the requests of RFC 7541 appendix C.4.
    let mut out = vec![0x40];
    for hex in [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ] {
        hpack_block(&mut out, 0, &unhex(hex));
    }
    seeds.push(("huffman", out));

    // Literals never indexed and without indexing, new names, a table size
    // update to 0 and back.
    let mut raw = vec![0x20, 0x3f, 0xe1, 0x1f];
    for (first, name, value) in [(0x10u8, "x-secret", "s3cr3t"), (0x00, "x-plain", "v")] {
        raw.push(first);
        raw.push(name.len() as u8);
        raw.extend_from_slice(name.as_bytes());
        raw.push(value.len() as u8);
        raw.extend_from_slice(value.as_bytes());
    }
    let mut out = vec![0x40];
    hpack_block(&mut out, 0, &raw);
    seeds.push(("literals", out));
    seeds
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    // The Huffman seed is what the RFC says it is.
    let mut dec = Decoder::new(4096);
    let mut authority = Vec::new();
    dec.decode(&unhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"), usize::MAX, |f| {
        if f.name == b":authority" {
            authority = f.value.to_vec();
        }
        true
    })
    .unwrap();
    assert_eq!(authority, b"www.example.com");

    write(&dir.join("frame"), frame_seeds(), balancer_relay_fuzz::frame::run);
    write(&dir.join("hpack"), hpack_seeds(), balancer_relay_fuzz::hpack::run);
}

/// Runs every seed through its target, then writes it to `dir`.
fn write(dir: &std::path::Path, seeds: Seeds, run: fn(&[u8])) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in seeds {
        run(&bytes);
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, &bytes).unwrap();
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
}
