//! The `hpack` target: header blocks a peer sends, decoded by one
//! [`Decoder`] (its table lives from block to block, as on a connection),
//! with a small header list limit and table size changes between blocks.
//! Every decoded field is re-encoded with an [`Encoder`] and decoded again by
//! the decoder at the other end: the same fields must come back, the
//! never-indexed flag included.
//!
//! Input: a configuration byte (the list limit: 32 + 16 × byte), then
//! blocks, each as a control byte, a 16-bit big-endian length (cut to what
//! is left) and the block. Control byte: bit 7 sets our decoder's table size
//! to `SIZES[bits 3-5]` before the block; bit 6 also sets it on the
//! re-encoding side (the next hop announced it); bits 0-2, when not 0, stop
//! the decoding after that many fields (the field callback returns false).

use balancer_relay::hpack::{DecodeError, Decoder, Encoder, Field};
use bytes::BytesMut;

use crate::OwnedField;

/// Table sizes a control byte picks from.
pub const SIZES: [u32; 8] = [0, 33, 64, 256, 1024, 4096, 8192, 1 << 20];

/// HPACK's per-field overhead in the header list size (RFC 7541 §4.1).
const OVERHEAD: usize = 32;

fn owned(f: Field<'_>) -> OwnedField {
    (f.name.to_vec(), f.value.to_vec(), f.never_index)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let max_list = 32 + usize::from(cfg) * 16;
    let mut dec = Decoder::new(4096);
    // The other direction: our encoder and the next hop's decoder.
    let mut enc = Encoder::new();
    let mut next_hop = Decoder::new(4096);
    while let Some((&ctl, tail)) = rest.split_first() {
        let (len, tail) = match tail {
            [a, b, tail @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), tail),
            _ => (tail.len(), tail),
        };
        let (block, next) = tail.split_at(len.min(tail.len()));
        rest = next;

        if ctl & 0x80 != 0 {
            let size = SIZES[usize::from((ctl >> 3) & 7)];
            dec.set_max_table_size(size);
            if ctl & 0x40 != 0 {
                enc.set_peer_max_table_size(size);
                next_hop.set_max_table_size(size);
            }
        }
        let stop_after = usize::from(ctl & 7);

        let mut fields: Vec<OwnedField> = Vec::new();
        let decoded = dec.decode(block, max_list, |f| {
            fields.push(owned(f));
            fields.len() != stop_after
        });
        match decoded {
            Ok(()) => {}
            Err(DecodeError::ListTooLarge { max }) => assert_eq!(max, max_list),
            Err(DecodeError::Stopped) => assert_eq!(fields.len(), stop_after),
            // A COMPRESSION_ERROR: the connection is over.
            Err(_) => return,
        }
        let list: usize = fields.iter().map(|(n, v, _)| n.len() + v.len() + OVERHEAD).sum();
        assert!(list <= max_list, "{list} bytes of fields past the limit {max_list}");
        dec.shrink();

        // Forwarded on the connection's encoder...
        let mut out = BytesMut::new();
        enc.begin(&mut out);
        for (name, value, never_index) in &fields {
            enc.field(name, value, *never_index, &mut out);
        }
        assert_eq!(
            decode_all(&mut next_hop, &out),
            fields,
            "the next hop reads other fields"
        );

        // ...and on a new connection.
        let mut fresh_enc = Encoder::new();
        let mut out = BytesMut::new();
        fresh_enc.begin(&mut out);
        for (name, value, never_index) in &fields {
            fresh_enc.field(name, value, *never_index, &mut out);
        }
        assert_eq!(
            decode_all(&mut Decoder::new(4096), &out),
            fields,
            "a fresh decoder reads other fields"
        );
    }
}

/// Decodes a block we encoded: every field, or a panic.
fn decode_all(dec: &mut Decoder, block: &[u8]) -> Vec<OwnedField> {
    let mut back = Vec::new();
    dec.decode(block, usize::MAX, |f| {
        back.push(owned(f));
        true
    })
    .unwrap_or_else(|e| panic!("a block we encoded does not decode: {e}"));
    back
}
