//! RFC 7541 Appendix C examples, encoder/decoder round trips and error cases.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;

use super::{huffman, DecodeError, Decoder, Encoder, Field};

type Owned = (Vec<u8>, Vec<u8>, bool);

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<Owned>, DecodeError> {
    let mut out = Vec::new();
    d.decode(block, usize::MAX, |f| {
        out.push((f.name.to_vec(), f.value.to_vec(), f.never_index));
        true
    })?;
    Ok(out)
}

fn fields(list: &[(&str, &str)]) -> Vec<Owned> {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec(), false))
        .collect()
}

/// The dynamic table, newest first, and its size.
fn table(d: &Decoder) -> (Vec<(String, String)>, usize) {
    let t = d.table();
    let entries = t
        .iter()
        .map(|e| {
            (
                String::from_utf8(e.name().to_vec()).unwrap(),
                String::from_utf8(e.value().to_vec()).unwrap(),
            )
        })
        .collect();
    (entries, t.size())
}

fn entries(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

// ---------------------------------------------------------------- C.2

#[test]
fn c2_1_literal_with_indexing() {
    let mut d = Decoder::new(4096);
    let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
    assert_eq!(
        decode(&mut d, &block).unwrap(),
        fields(&[("custom-key", "custom-header")])
    );
    assert_eq!(table(&d), (entries(&[("custom-key", "custom-header")]), 55));
}

#[test]
fn c2_2_literal_without_indexing() {
    let mut d = Decoder::new(4096);
    let block = hex("040c 2f73 616d 706c 652f 7061 7468");
    assert_eq!(decode(&mut d, &block).unwrap(), fields(&[(":path", "/sample/path")]));
    assert_eq!(table(&d), (vec![], 0));
}

#[test]
fn c2_3_literal_never_indexed() {
    let mut d = Decoder::new(4096);
    let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
    assert_eq!(
        decode(&mut d, &block).unwrap(),
        vec![(b"password".to_vec(), b"secret".to_vec(), true)]
    );
    assert_eq!(table(&d), (vec![], 0));
}

#[test]
fn c2_4_indexed() {
    let mut d = Decoder::new(4096);
    assert_eq!(decode(&mut d, &[0x82]).unwrap(), fields(&[(":method", "GET")]));
    assert_eq!(table(&d), (vec![], 0));
}

// ---------------------------------------------------------------- C.3 / C.4

fn requests(blocks: [&str; 3]) {
    let mut d = Decoder::new(4096);
    assert_eq!(
        decode(&mut d, &hex(blocks[0])).unwrap(),
        fields(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com")
        ])
    );
    assert_eq!(table(&d), (entries(&[(":authority", "www.example.com")]), 57));

    assert_eq!(
        decode(&mut d, &hex(blocks[1])).unwrap(),
        fields(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ])
    );
    assert_eq!(
        table(&d),
        (
            entries(&[("cache-control", "no-cache"), (":authority", "www.example.com")]),
            110
        )
    );

    assert_eq!(
        decode(&mut d, &hex(blocks[2])).unwrap(),
        fields(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ])
    );
    assert_eq!(
        table(&d),
        (
            entries(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ]),
            164
        )
    );
}

#[test]
fn c3_requests_without_huffman() {
    requests([
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ]);
}

#[test]
fn c4_requests_with_huffman() {
    requests([
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ]);
}

// ---------------------------------------------------------------- C.5 / C.6

const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
const LOCATION: &str = "https://www.example.com";
const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

fn responses(blocks: [&str; 3]) {
    let mut d = Decoder::new(256);
    assert_eq!(
        decode(&mut d, &hex(blocks[0])).unwrap(),
        fields(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOCATION)
        ])
    );
    assert_eq!(
        table(&d),
        (
            entries(&[
                ("location", LOCATION),
                ("date", DATE1),
                ("cache-control", "private"),
                (":status", "302"),
            ]),
            222
        )
    );

    assert_eq!(
        decode(&mut d, &hex(blocks[1])).unwrap(),
        fields(&[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOCATION)
        ])
    );
    assert_eq!(
        table(&d),
        (
            entries(&[
                (":status", "307"),
                ("location", LOCATION),
                ("date", DATE1),
                ("cache-control", "private"),
            ]),
            222
        )
    );

    assert_eq!(
        decode(&mut d, &hex(blocks[2])).unwrap(),
        fields(&[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", DATE2),
            ("location", LOCATION),
            ("content-encoding", "gzip"),
            ("set-cookie", COOKIE),
        ])
    );
    assert_eq!(
        table(&d),
        (
            entries(&[("set-cookie", COOKIE), ("content-encoding", "gzip"), ("date", DATE2)]),
            215
        )
    );
}

#[test]
fn c5_responses_without_huffman() {
    responses([
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
         6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
         3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    responses([
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
         9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ]);
}

// ---------------------------------------------------------------- decoder details

#[test]
fn literal_naming_an_entry_it_evicts() {
    // Room for one 40-byte entry only: inserting "aaaa: cccc" by the name of
    // "aaaa: bbbb" evicts it; the name must survive.
    let mut d = Decoder::new(60);
    decode(&mut d, &hex("4004 6161 6161 0462 6262 62")).unwrap();
    assert_eq!(table(&d), (entries(&[("aaaa", "bbbb")]), 40));
    assert_eq!(
        decode(&mut d, &hex("7e04 6363 6363")).unwrap(),
        fields(&[("aaaa", "cccc")])
    );
    assert_eq!(table(&d), (entries(&[("aaaa", "cccc")]), 40));
}

#[test]
fn entry_larger_than_table_empties_it() {
    let mut d = Decoder::new(60);
    decode(&mut d, &hex("4004 6161 6161 0462 6262 62")).unwrap();
    let mut block = hex("4001 78 20"); // x: 32 bytes, size 65 > 60
    block.extend_from_slice(&[b'y'; 32]);
    let out = decode(&mut d, &block).unwrap();
    assert_eq!(out, vec![(b"x".to_vec(), vec![b'y'; 32], false)]);
    assert_eq!(table(&d), (vec![], 0));
}

#[test]
fn size_updates() {
    let mut d = Decoder::new(4096);
    decode(&mut d, &hex("4004 6161 6161 0462 6262 62")).unwrap();
    // Two updates at the start (0 then 4096): the table is emptied.
    assert_eq!(
        decode(&mut d, &hex("20 3fe11f 82")).unwrap(),
        fields(&[(":method", "GET")])
    );
    assert_eq!(table(&d), (vec![], 0));
    assert_eq!(d.table().max_size(), 4096);
    // Shrinking evicts.
    decode(&mut d, &hex("4004 6161 6161 0462 6262 62 4004 6363 6363 0464 6464 64")).unwrap();
    assert_eq!(d.table().len(), 2);
    decode(&mut d, &hex("3f0a")).unwrap(); // 41
    assert_eq!(table(&d), (entries(&[("cccc", "dddd")]), 40));
    // Our setting lowered: the table follows at once; updates above it fail.
    d.set_max_table_size(39);
    assert_eq!(table(&d), (vec![], 0));
    assert_eq!(
        decode(&mut d, &hex("3f09")),
        Err(DecodeError::SizeUpdateTooLarge { size: 40, max: 39 })
    );
}

#[test]
fn stopped_keeps_decoding_the_table() {
    let mut d = Decoder::new(4096);
    let block = hex("82 4004 6161 6161 0462 6262 62 0004 6565 6565 0466 6666 66 1004 6767 6767 8466 6666 66");
    let mut seen = Vec::new();
    let r = d.decode(&block, usize::MAX, |f| {
        seen.push(f.name.to_vec());
        false
    });
    assert_eq!(r, Err(DecodeError::Stopped));
    assert!(!DecodeError::Stopped.is_fatal());
    assert_eq!(seen, [b":method".to_vec()]);
    assert_eq!(table(&d), (entries(&[("aaaa", "bbbb")]), 40));
    assert_eq!(decode(&mut d, &[0xbe]).unwrap(), fields(&[("aaaa", "bbbb")]));
}

#[test]
fn list_too_large_keeps_the_table_in_sync() {
    let mut d = Decoder::new(4096);
    // :method GET (42), then aaaa: bbbb (40) inserted, then a Huffman literal.
    let block = hex("82 4004 6161 6161 0462 6262 62 0084 25a8 49e9 8125");
    let mut seen = 0;
    let r = d.decode(&block, 60, |_| {
        seen += 1;
        true
    });
    assert_eq!(r, Err(DecodeError::ListTooLarge { max: 60 }));
    assert!(!r.unwrap_err().is_fatal());
    assert_eq!(seen, 1);
    assert_eq!(table(&d), (entries(&[("aaaa", "bbbb")]), 40));
    assert_eq!(decode(&mut d, &[0xbe]).unwrap(), fields(&[("aaaa", "bbbb")]));
    // Exactly at the limit is fine.
    let mut d = Decoder::new(4096);
    assert_eq!(d.decode(&[0x82], 42, |_| true), Ok(()));
    assert_eq!(
        d.decode(&[0x82], 41, |_| true),
        Err(DecodeError::ListTooLarge { max: 41 })
    );
}

#[test]
fn hpack_bomb_is_cut_short() {
    let mut d = Decoder::new(4096);
    // One 4000-byte value inserted, then referenced 100 000 times.
    let mut block = hex("4001 78 7f a11e"); // x: 4000 bytes (127 + 3873)
    block.extend_from_slice(&[b'v'; 4000]);
    block.extend(std::iter::repeat_n(0xbe, 100_000));
    let mut emitted = 0usize;
    let r = d.decode(&block, 16 * 1024, |f| {
        emitted += f.value.len();
        true
    });
    assert_eq!(r, Err(DecodeError::ListTooLarge { max: 16 * 1024 }));
    assert_eq!(emitted, 4 * 4000);
    // No allocation for the list: only the entry.
    assert!(d.heap_size() < 8 * 1024, "{}", d.heap_size());
    assert_eq!(decode(&mut d, &[0xbe]).unwrap().len(), 1);
}

#[test]
fn errors() {
    let err = |block: &str| {
        Decoder::new(4096)
            .decode(&hex(block), usize::MAX, |_| true)
            .unwrap_err()
    };
    assert_eq!(err("4005 61"), DecodeError::Truncated);
    assert_eq!(err("40"), DecodeError::Truncated);
    assert_eq!(err("ff"), DecodeError::Truncated);
    assert_eq!(err("0001 61"), DecodeError::Truncated);
    assert_eq!(err("00ff ffff ff0f"), DecodeError::Truncated);
    assert_eq!(err("ff80 8080 8080 01"), DecodeError::IntegerOverflow);
    assert_eq!(err("ffff ffff ff7f"), DecodeError::IntegerOverflow);
    assert_eq!(err("80"), DecodeError::IndexZero);
    assert_eq!(err("be"), DecodeError::IndexOutOfRange(62));
    assert_eq!(err("7f0f 0161"), DecodeError::IndexOutOfRange(78));
    assert_eq!(err("0081 1800"), DecodeError::BadHuffman); // padding of zeros
    assert_eq!(err("0082 1fff 00"), DecodeError::BadHuffman); // 11 bits of padding
    assert_eq!(err("0001 6184 ffff ffff"), DecodeError::BadHuffman); // EOS
    assert_eq!(
        err("3fe2 1f"),
        DecodeError::SizeUpdateTooLarge { size: 4097, max: 4096 }
    );
    assert_eq!(err("8220"), DecodeError::SizeUpdateNotFirst);
    for e in [
        DecodeError::Truncated,
        DecodeError::IntegerOverflow,
        DecodeError::IndexZero,
        DecodeError::IndexOutOfRange(62),
        DecodeError::BadHuffman,
        DecodeError::SizeUpdateTooLarge { size: 1, max: 0 },
        DecodeError::SizeUpdateNotFirst,
    ] {
        assert!(e.is_fatal(), "{e}");
    }
    // A bad index is caught even after emitting stopped.
    let r = Decoder::new(4096).decode(&hex("82 be"), usize::MAX, |_| false);
    assert_eq!(r, Err(DecodeError::IndexOutOfRange(62)));
}

/// A block of one field sent without indexing: `:path` (static name 4)
/// with a Huffman-coded value.
fn path_block(path: &str) -> Vec<u8> {
    let mut coded = Vec::new();
    huffman::encode(path.as_bytes(), &mut coded);
    assert!(coded.len() < 127);
    let mut block = vec![0x04, 0x80 | coded.len() as u8];
    block.extend_from_slice(&coded);
    block
}

#[test]
fn repeated_huffman_values_decode_alike() {
    let mut d = Decoder::new(4096);
    let path = |p: &str| fields(&[(":path", p)]);
    let a = path_block("/helloworld.Greeter/SayHello");
    let b = path_block("/helloworld.Greeter/SayHellp");
    assert_eq!(a.len(), b.len());
    for block in [&a, &a, &b, &b, &a] {
        let want = if block == &a {
            "/helloworld.Greeter/SayHello"
        } else {
            "/helloworld.Greeter/SayHellp"
        };
        assert_eq!(decode(&mut d, block).unwrap(), path(want));
    }
    // Next to a plain literal, and after the decoder went idle.
    let mut two = a.clone();
    two.extend_from_slice(&hex("0404 2f61 6263"));
    assert_eq!(
        decode(&mut d, &two).unwrap(),
        fields(&[(":path", "/helloworld.Greeter/SayHello"), (":path", "/abc")])
    );
    d.shrink();
    assert_eq!(decode(&mut d, &a).unwrap(), path("/helloworld.Greeter/SayHello"));
    // A malformed coding is refused, whatever was decoded before.
    assert_eq!(decode(&mut d, &hex("0481 1800")), Err(DecodeError::BadHuffman));
}

#[test]
fn encoder_generation_follows_the_table() {
    let mut e = Encoder::new();
    let mut dst = BytesMut::new();
    let g0 = e.generation();
    e.field(b":path", b"/s.S/M", false, &mut dst);
    e.field(b"grpc-timeout", b"1S", false, &mut dst);
    let g1 = e.generation();
    assert_ne!(g0, g1, "inserts");
    e.field(b":path", b"/s.S/M", false, &mut dst);
    e.field(b":method", b"POST", false, &mut dst);
    e.field(b"grpc-timeout", b"2S", false, &mut dst);
    e.field(b"authorization", b"secret", false, &mut dst);
    assert_eq!(
        e.generation(),
        g1,
        "indexed, static and unindexed fields change nothing"
    );
    e.set_peer_max_table_size(256);
    let g2 = e.generation();
    assert_ne!(g2, g1, "a size change");
    e.begin(&mut dst);
    assert_ne!(e.generation(), g2, "the size update written");
}

#[test]
fn decoder_generation_follows_the_table() {
    let mut d = Decoder::new(4096);
    let g0 = d.generation();
    // C.3.1: three static fields and one literal with indexing.
    decode(&mut d, &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d")).unwrap();
    let g1 = d.generation();
    assert_ne!(g0, g1, "an insert");
    // Indexed fields, static and dynamic, and a literal without indexing.
    decode(&mut d, &hex("8286 84be 0404 2f61 6263")).unwrap();
    assert_eq!(d.generation(), g1, "nothing inserted");
    decode(&mut d, &hex("3f61 82")).unwrap();
    assert_ne!(d.generation(), g1, "a size update");
    let g2 = d.generation();
    d.set_max_table_size(1024);
    assert_ne!(d.generation(), g2, "a new limit");
}

#[test]
fn heap_accounting() {
    let d = Decoder::new(4096);
    assert_eq!(d.heap_size(), 0);
    let e = Encoder::new();
    assert_eq!(e.heap_size(), 0);
    assert_eq!(Encoder::default().heap_size(), 0);

    let mut d = Decoder::new(4096);
    decode(&mut d, &hex("4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")).unwrap();
    let used = d.heap_size();
    assert!(used > 0);
    d.shrink();
    assert!(d.heap_size() < used);
    assert_eq!(
        decode(&mut d, &[0xbe]).unwrap(),
        fields(&[("custom-key", "custom-value")])
    );
}

// ---------------------------------------------------------------- encoder

fn encode(e: &mut Encoder, list: &[(&[u8], &[u8], bool)]) -> BytesMut {
    let mut dst = BytesMut::new();
    e.begin(&mut dst);
    for &(n, v, never) in list {
        e.field(n, v, never, &mut dst);
    }
    dst
}

fn owned(list: &[(&[u8], &[u8], bool)]) -> Vec<Owned> {
    list.iter()
        .map(|&(n, v, never)| (n.to_vec(), v.to_vec(), never))
        .collect()
}

const GRPC_HEAD: [(&[u8], &[u8], bool); 8] = [
    (b":method", b"POST", false),
    (b":scheme", b"http", false),
    (b":path", b"/helloworld.Greeter/SayHello", false),
    (b":authority", b"x:50051", false),
    (b"content-type", b"application/grpc", false),
    (b"te", b"trailers", false),
    (b"user-agent", b"grpc-rust/0.1", false),
    (b"grpc-timeout", b"1S", false),
];

#[test]
fn round_trip() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let list: [(&[u8], &[u8], bool); 12] = [
        (b":method", b"GET", false),
        (b":method", b"GET", true),
        (b":status", b"200", false),
        (b":status", b"201", false),
        (b"authorization", b"Bearer abc", false),
        (b"authorization", b"Bearer abc", true),
        (b"cookie", b"a=b", false),
        (b"x-secret", b"hunter2", true),
        (b"x-custom", b"", false),
        (b"", b"", false),
        (b"grpc-message", b"oops", false),
        (b"grpc-message", b"again", false),
    ];
    for _ in 0..3 {
        let block = encode(&mut e, &list);
        assert_eq!(decode(&mut d, &block).unwrap(), owned(&list));
    }
    // Only the indexable ones went into the table: never-indexed fields and
    // credentials did not; grpc-message did once (for its name).
    let names: Vec<String> = table(&d).0.into_iter().map(|(n, v)| format!("{n}: {v}")).collect();
    assert_eq!(
        names,
        ["grpc-message: oops", ": ", "x-custom: ", ":status: 201"].map(String::from)
    );
}

#[test]
fn repeated_grpc_request_is_cheap() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let first = encode(&mut e, &GRPC_HEAD);
    assert_eq!(decode(&mut d, &first).unwrap(), owned(&GRPC_HEAD));
    // Every field is a one-byte index the second time.
    let second = encode(&mut e, &GRPC_HEAD);
    assert_eq!(second.len(), 8, "{second:02x?}");
    assert_eq!(decode(&mut d, &second).unwrap(), owned(&GRPC_HEAD));
    // With another timeout: the name comes from the table, the value is a
    // literal that is not inserted (2 + 1 + 7 bytes).
    let mut head = GRPC_HEAD;
    head[7].1 = b"999761u";
    let third = encode(&mut e, &head);
    assert_eq!(third.len(), 7 + 10, "{third:02x?}");
    assert_eq!(decode(&mut d, &third).unwrap(), owned(&head));
    assert_eq!(e.table().len(), 6);
    let fourth = encode(&mut e, &GRPC_HEAD);
    assert_eq!(fourth.len(), 8);
    assert_eq!(decode(&mut d, &fourth).unwrap(), owned(&GRPC_HEAD));
    // Trailers.
    let trailers: [(&[u8], &[u8], bool); 2] = [(b"grpc-status", b"0", false), (b"grpc-message", b"", false)];
    let first = encode(&mut e, &trailers);
    assert_eq!(decode(&mut d, &first).unwrap(), owned(&trailers));
    let second = encode(&mut e, &trailers);
    assert_eq!(second.len(), 2);
    assert_eq!(decode(&mut d, &second).unwrap(), owned(&trailers));
}

#[test]
fn table_size_updates() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let block = encode(&mut e, &GRPC_HEAD);
    decode(&mut d, &block).unwrap();

    // Peer allows more than 4096: nothing changes.
    e.set_peer_max_table_size(65536);
    assert_eq!(&encode(&mut e, &[])[..], &[] as &[u8]);

    // Down to 0: one update, then nothing is indexed.
    e.set_peer_max_table_size(0);
    d.set_max_table_size(0);
    let block = encode(&mut e, &GRPC_HEAD);
    assert_eq!(block[0], 0x20);
    assert_eq!(decode(&mut d, &block).unwrap(), owned(&GRPC_HEAD));
    assert_eq!((e.table().len(), d.table().len()), (0, 0));
    let again = encode(&mut e, &GRPC_HEAD);
    assert_eq!(again.len(), block.len() - 1);
    assert_eq!(decode(&mut d, &again).unwrap(), owned(&GRPC_HEAD));
    assert_eq!((e.table().len(), d.table().len()), (0, 0));

    // Back up to 4096: one update (31 + 4065).
    e.set_peer_max_table_size(4096);
    d.set_max_table_size(4096);
    let block = encode(&mut e, &GRPC_HEAD);
    assert_eq!(&block[..3], &[0x3f, 0xe1, 0x1f]);
    assert_eq!(decode(&mut d, &block).unwrap(), owned(&GRPC_HEAD));
    assert_eq!(encode(&mut e, &GRPC_HEAD).len(), 8);

    // Shrunk then grown between two blocks: the smallest, then the final.
    e.set_peer_max_table_size(100);
    e.set_peer_max_table_size(50);
    e.set_peer_max_table_size(4096);
    d.set_max_table_size(4096);
    let block = encode(&mut e, &GRPC_HEAD);
    assert_eq!(&block[..4], &[0x3f, 0x13, 0x3f, 0xe1]);
    assert_eq!(decode(&mut d, &block).unwrap(), owned(&GRPC_HEAD));
    assert_eq!(d.table().len(), e.table().len());

    // Set and restored before a block: still signalled (smallest, final).
    e.set_peer_max_table_size(1000);
    e.set_peer_max_table_size(4096);
    let block = encode(&mut e, &[]);
    assert_eq!(&block[..], &[0x3f, 0xc9, 0x07, 0x3f, 0xe1, 0x1f]);
    decode(&mut d, &block).unwrap();
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn encoder_and_decoder_stay_in_sync() {
    const NAMES: [&[u8]; 12] = [
        b":path",
        b":authority",
        b"content-type",
        b"x-a",
        b"x-b",
        b"x-long-name-for-a-header",
        b"grpc-timeout",
        b"x-request-id",
        b"cookie",
        b"te",
        b"user-agent",
        b":status",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let mut values: Vec<Vec<u8>> = Vec::new();
    for _ in 0..64 {
        let len = [0, 1, 3, 10, 40, 200, 1500, 3000][rng.below(8)];
        values.push((0..len).map(|_| b'a' + rng.below(26) as u8).collect());
    }
    for round in 0..3000 {
        if rng.below(20) == 0 {
            let size = [0u32, 40, 64, 100, 256, 1000, 2048, 4096, 8192][rng.below(9)];
            e.set_peer_max_table_size(size);
            d.set_max_table_size(size);
        }
        let n = rng.below(12);
        let list: Vec<(&[u8], &[u8], bool)> = (0..n)
            .map(|_| {
                (
                    NAMES[rng.below(NAMES.len())],
                    &values[rng.below(values.len())][..],
                    rng.below(10) == 0,
                )
            })
            .collect();
        let block = encode(&mut e, &list);
        assert_eq!(decode(&mut d, &block).unwrap(), owned(&list), "round {round}");
        // The encoder's table is the newest part of the decoder's (the
        // decoder's may be larger when the peer allows more than 4096).
        let enc: Vec<(&[u8], &[u8])> = e.table().iter().map(|x| (x.name(), x.value())).collect();
        let dec: Vec<(&[u8], &[u8])> = d
            .table()
            .iter()
            .map(|x| (x.name(), x.value()))
            .take(enc.len())
            .collect();
        assert_eq!(enc, dec, "round {round}");
        assert!(e.table().size() <= e.table().max_size());
    }
    // Thousands of insertions went through a table holding a few dozen.
    assert!(e.table().inserted() > 2000, "{}", e.table().inserted());
}

#[test]
fn huffman_literals_decode() {
    // Literal names and values Huffman-coded by a test encoder, including
    // every octet value.
    let mut d = Decoder::new(4096);
    let value: Vec<u8> = (0..=255u8).collect();
    let mut block = vec![0x40, 0x80];
    let mut name = Vec::new();
    huffman::encode(b"x-bin", &mut name);
    block[1] |= name.len() as u8;
    block.extend_from_slice(&name);
    let mut v = Vec::new();
    huffman::encode(&value, &mut v);
    let mut len = BytesMut::new();
    super::integer::encode(&mut len, 0x80, 7, v.len() as u64);
    block.extend_from_slice(&len);
    block.extend_from_slice(&v);
    let mut out = Vec::new();
    d.decode(&block, usize::MAX, |f: Field<'_>| {
        out.push((f.name.to_vec(), f.value.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(out, vec![(b"x-bin".to_vec(), value.clone())]);
    assert_eq!(d.table().size(), 5 + 256 + 32);
}
