//! Huffman decoding of HPACK string literals (RFC 7541 §5.2).
//!
//! The decoder walks a 4-bit state machine: a state is an internal node of
//! the code tree (there are exactly 256), and for every state and input
//! nibble a precomputed transition gives the next state, the symbol emitted
//! on the way (a code is at least 5 bits long, so a nibble completes at most
//! one) and whether the input may end there. The table is built once from
//! [`CODES`] on first use.

use std::sync::OnceLock;

use super::huffman_table::CODES;
use super::DecodeError;

const EOS: u16 = 256;

/// A symbol completed during this transition.
const EMIT: u8 = 1;
/// The input may end after this transition: the bits since the last symbol
/// are at most 7 ones (valid padding).
const ACCEPT: u8 = 2;
/// The transition decodes EOS, which must not appear in a string.
const FAIL: u8 = 4;

#[derive(Clone, Copy, Default)]
struct Transition {
    next: u8,
    sym: u8,
    flags: u8,
}

type Table = [[Transition; 16]; 256];

fn table() -> &'static Table {
    static TABLE: OnceLock<Box<Table>> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// A child in the code tree under construction.
#[derive(Clone, Copy)]
enum Child {
    Missing,
    Node(u16),
    Leaf(u16),
}

fn build() -> Box<Table> {
    // The code tree: node 0 is the root; node ids are assigned in insertion
    // order. A complete prefix code over 257 symbols has 256 internal nodes.
    let mut nodes: Vec<[Child; 2]> = vec![[Child::Missing; 2]];
    for (sym, &(code, len)) in (0u16..).zip(CODES.iter()) {
        let mut node = 0usize;
        for bit in (0..len).rev() {
            let b = ((code >> bit) & 1) as usize;
            if bit == 0 {
                nodes[node][b] = Child::Leaf(sym);
            } else {
                node = match nodes[node][b] {
                    Child::Node(n) => usize::from(n),
                    _ => {
                        let n = nodes.len();
                        nodes.push([Child::Missing; 2]);
                        nodes[node][b] = Child::Node(n as u16);
                        n
                    }
                };
            }
        }
    }
    assert_eq!(nodes.len(), 256, "the HPACK Huffman code is complete");

    // The nodes reached from the root by at most 7 ones: the states where
    // the input may end (valid padding).
    let mut accepting = [false; 256];
    accepting[0] = true;
    let mut node = 0usize;
    for _ in 0..7 {
        match nodes[node][1] {
            Child::Node(n) => node = usize::from(n),
            _ => break,
        }
        accepting[node] = true;
    }

    let mut table = Box::new([[Transition::default(); 16]; 256]);
    for (state, row) in table.iter_mut().enumerate() {
        for (nibble, slot) in row.iter_mut().enumerate() {
            let mut node = state;
            let mut t = Transition::default();
            for bit in (0..4).rev() {
                match nodes[node][(nibble >> bit) & 1] {
                    Child::Node(n) => node = usize::from(n),
                    Child::Leaf(EOS) | Child::Missing => {
                        t.flags |= FAIL;
                        break;
                    }
                    Child::Leaf(sym) => {
                        t.flags |= EMIT;
                        t.sym = sym as u8;
                        node = 0;
                    }
                }
            }
            if t.flags & FAIL == 0 {
                t.next = node as u8;
                if accepting[node] {
                    t.flags |= ACCEPT;
                }
            }
            *slot = t;
        }
    }
    table
}

/// Decodes the Huffman-coded `src` and appends the result to `dst`.
pub(crate) fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), DecodeError> {
    let table = table();
    // Every symbol takes at least 5 bits.
    dst.reserve(src.len() * 8 / 5);
    let mut state = 0usize;
    let mut accept = true;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let t = table[state][usize::from(nibble)];
            if t.flags & FAIL != 0 {
                return Err(DecodeError::BadHuffman);
            }
            if t.flags & EMIT != 0 {
                dst.push(t.sym);
            }
            state = usize::from(t.next);
            accept = t.flags & ACCEPT != 0;
        }
    }
    if accept {
        Ok(())
    } else {
        Err(DecodeError::BadHuffman)
    }
}

/// Huffman-encodes `src` into `dst` (the relay's encoder sends raw literals;
/// this is for tests of the decoder).
#[cfg(test)]
pub(crate) fn encode(src: &[u8], dst: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        let (code, len) = CODES[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            dst.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        // Pad with the most significant bits of EOS (all ones).
        dst.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The typed table is a canonical prefix code whose Kraft sum is exactly
    /// one, as RFC 7541 Appendix B's is: codes of one length are consecutive
    /// in symbol order and each length starts where the previous one ended.
    #[test]
    fn canonical() {
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (CODES[s].1, s));
        let mut code: u64 = 0;
        let mut len = CODES[order[0]].1;
        for &s in &order {
            let (c, l) = CODES[s];
            code <<= l - len;
            len = l;
            assert_eq!(u64::from(c), code, "symbol {s}");
            code += 1;
        }
        assert_eq!(code, 1 << 30, "Kraft sum is one");
        assert_eq!(CODES[usize::from(EOS)], (0x3fff_ffff, 30));
    }

    #[test]
    fn round_trip_all_bytes() {
        let src: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for end in 0..src.len() {
            let mut enc = Vec::new();
            encode(&src[..end], &mut enc);
            let mut dec = Vec::new();
            decode(&enc, &mut dec).unwrap();
            assert_eq!(dec, &src[..end]);
        }
    }

    #[test]
    fn rfc_examples() {
        let mut out = Vec::new();
        decode(
            &[0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"www.example.com");
        let mut enc = Vec::new();
        encode(b"no-cache", &mut enc);
        assert_eq!(enc, [0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]);
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        let mut out = Vec::new();
        // 'a' (00011) padded with zeros.
        assert_eq!(decode(&[0b0001_1000], &mut out), Err(DecodeError::BadHuffman));
        // 'a' then a whole byte of ones: 11 bits of padding.
        assert_eq!(decode(&[0b0001_1111, 0xff], &mut out), Err(DecodeError::BadHuffman));
        // Eight bits of ones alone.
        assert_eq!(decode(&[0xff], &mut out), Err(DecodeError::BadHuffman));
        // EOS (30 ones) padded with two ones.
        assert_eq!(decode(&[0xff; 4], &mut out), Err(DecodeError::BadHuffman));
        // EOS after a symbol: 'a' (5 bits) + 30 ones + 5 ones of padding.
        assert_eq!(
            decode(&[0b0001_1111, 0xff, 0xff, 0xff, 0xff], &mut out),
            Err(DecodeError::BadHuffman)
        );
        // Valid: 'a' with 3 bits of padding; empty input.
        out.clear();
        decode(&[0b0001_1111], &mut out).unwrap();
        decode(&[], &mut out).unwrap();
        assert_eq!(out, b"a");
    }
}
