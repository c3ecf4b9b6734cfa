//! HPACK header compression (RFC 7541), sans-IO.
//!
//! [`Decoder`] decodes the header blocks a peer sends (all representations,
//! Huffman-coded strings, dynamic table size updates) with a bound on the
//! decoded list size; [`Encoder`] re-encodes header fields towards a peer,
//! indexing the fields that repeat (gRPC paths, content types, authorities...)
//! so that a steady stream of requests costs a byte or two per field.

mod decoder;
mod encoder;
mod huffman;
mod huffman_table;
mod integer;
mod table;
#[cfg(test)]
mod tests;

pub use decoder::{DecodeError, Decoder};
pub use encoder::Encoder;

/// One decoded header field. The slices borrow the block, the dynamic table
/// or the decoder's scratch space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field name.
    pub name: &'a [u8],
    /// The field value.
    pub value: &'a [u8],
    /// The field came as "literal never indexed" (RFC 7541 §6.2.3): it must
    /// be re-encoded the same way.
    pub never_index: bool,
}
