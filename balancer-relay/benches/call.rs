//! One unary gRPC call through the relay's core, without sockets: the
//! client's HEADERS + DATA parsed and the header block decoded, re-encoded
//! towards the endpoint and the DATA forwarded under a new frame header;
//! then the endpoint's response HEADERS, DATA and trailers the same way
//! back. Prints nanoseconds per call (`cargo bench -p balancer-relay`, or
//! `cargo xtask bench`, which reports it).

use std::{hint::black_box, time::Instant};

use balancer_relay::{
    frame::{self, Kind},
    hpack::{Decoder, Encoder},
};
use bytes::BytesMut;

const CALLS: u32 = 200_000;

/// What a peer sends: header blocks encoded by a peer-side encoder, as a
/// real client or endpoint would, with DATA in between.
fn peer_bytes(enc: &mut Encoder, stream: u32, blocks: &[(&[(&str, &str)], bool)], data: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    for (i, (fields, end)) in blocks.iter().enumerate() {
        let at = out.len();
        out.extend_from_slice(&[0; frame::HEADER_LEN]);
        enc.begin(&mut out);
        for (n, v) in *fields {
            enc.field(n.as_bytes(), v.as_bytes(), false, &mut out);
        }
        frame::finish_headers(&mut out, at, stream, *end, frame::DEFAULT_MAX_FRAME_SIZE);
        if i == 0 {
            frame::put_data_head(&mut out, stream, data.len() as u32, blocks.len() == 1);
            out.extend_from_slice(data);
        }
    }
    out
}

/// The relay's work on `bytes` from one peer: parse every frame, re-encode
/// header blocks with `enc`, forward DATA.
fn relay(bytes: &[u8], dec: &mut Decoder, enc: &mut Encoder, stream: u32, out: &mut BytesMut) {
    let mut pos = 0;
    while let Ok(Some(head)) = frame::next(&bytes[pos..], frame::DEFAULT_MAX_FRAME_SIZE) {
        let payload = &bytes[pos + frame::HEADER_LEN..pos + frame::HEADER_LEN + head.len as usize];
        pos += frame::HEADER_LEN + head.len as usize;
        match head.kind {
            Kind::Headers => {
                let Ok(h) = frame::headers(&head, payload) else { return };
                let at = out.len();
                out.extend_from_slice(&[0; frame::HEADER_LEN]);
                enc.begin(out);
                let _ = dec.decode(&payload[h.fragment], 16 * 1024, |f| {
                    enc.field(f.name, f.value, f.never_index, out);
                    true
                });
                frame::finish_headers(out, at, stream, h.end_stream, frame::DEFAULT_MAX_FRAME_SIZE);
            }
            Kind::Data => {
                let Ok(r) = frame::data(&head, payload) else { return };
                frame::put_data_head(out, stream, r.len() as u32, head.has(frame::flags::END_STREAM));
                out.extend_from_slice(&payload[r]);
            }
            _ => {}
        }
    }
}

fn main() {
    let request: &[(&str, &str)] = &[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/helloworld.Greeter/SayHello"),
        (":authority", "greeter.default.svc:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpc-go/1.70.0"),
        ("grpc-timeout", "9997m"),
    ];
    let response: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/grpc")];
    let trailers: &[(&str, &str)] = &[("grpc-status", "0"), ("grpc-message", "")];
    let (mut client_enc, mut endpoint_enc) = (Encoder::new(), Encoder::new());
    let (mut from_client, mut to_endpoint) = (Decoder::new(4096), Encoder::new());
    let (mut from_endpoint, mut to_client) = (Decoder::new(4096), Encoder::new());
    let mut out = BytesMut::with_capacity(64 * 1024);
    let body = [0u8, 0, 0, 0, 7, 10, 5, b'w', b'o', b'r', b'l', b'd'];
    let reply = [
        0u8, 0, 0, 0, 13, 10, 11, b'H', b'e', b'l', b'l', b'o', b' ', b'w', b'o', b'r', b'l', b'd',
    ];
    // Each peer's bytes for a steady call: the first call fills the tables
    // on every side.
    let first = peer_bytes(&mut client_enc, 1, &[(request, true)], &body);
    relay(&first, &mut from_client, &mut to_endpoint, 1, &mut out);
    let first = peer_bytes(&mut endpoint_enc, 1, &[(response, false), (trailers, true)], &reply);
    relay(&first, &mut from_endpoint, &mut to_client, 1, &mut out);
    let req = peer_bytes(&mut client_enc, 3, &[(request, true)], &body);
    let resp = peer_bytes(&mut endpoint_enc, 3, &[(response, false), (trailers, true)], &reply);

    let mut forwarded = 0usize;
    let started = Instant::now();
    for i in 0..CALLS {
        out.clear();
        let up = 2 * i + 1;
        relay(black_box(&req), &mut from_client, &mut to_endpoint, up, &mut out);
        relay(black_box(&resp), &mut from_endpoint, &mut to_client, up, &mut out);
        forwarded += out.len();
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(CALLS);
    black_box(forwarded);
    println!(
        "relay core: {ns:.0} ns per unary call ({} request + {} response bytes in, {} out)",
        req.len(),
        resp.len(),
        forwarded / CALLS as usize
    );
}
