//! The header blocks a connection sent last, to send again as they are.
//!
//! An HPACK block depends on the fields and on the encoder's table. When the
//! fields repeat byte for byte and the table has not changed since, the
//! block is the same bytes: a gRPC client calling one method sends the same
//! request head call after call, an endpoint the same response head and
//! trailers. Two blocks are kept, so a response's head and its trailers,
//! which alternate on a connection, both repeat.

/// Heads larger than this are encoded every time (and not kept), which
/// bounds what a connection keeps here to about 1 KiB.
const MAX_HEAD: usize = 512;

#[derive(Debug, Default)]
pub(crate) struct SentBlocks {
    slots: [Slot; 2],
    /// The slot the next new block replaces.
    next: usize,
}

#[derive(Debug, Default)]
struct Slot {
    /// The head's bytes (its fields, as [`super::head::Head`] stores them).
    head: Vec<u8>,
    block: Vec<u8>,
    /// The encoder's generation the block is valid for; `None`: empty slot.
    generation: Option<u64>,
}

impl SentBlocks {
    /// The block sent for `head` while the encoder was at `generation`.
    pub fn get(&self, head: &[u8], generation: u64) -> Option<&[u8]> {
        self.slots
            .iter()
            .find(|s| s.generation == Some(generation) && s.head == head)
            .map(|s| s.block.as_slice())
    }

    /// `head` was encoded to `block`, which left the encoder at
    /// `generation` (unchanged by the encoding).
    pub fn put(&mut self, head: &[u8], block: &[u8], generation: u64) {
        if head.len() > MAX_HEAD {
            return;
        }
        let i = self.next;
        self.next = (i + 1) % self.slots.len();
        let slot = &mut self.slots[i];
        slot.head.clear();
        slot.head.extend_from_slice(head);
        slot.block.clear();
        slot.block.extend_from_slice(block);
        slot.generation = Some(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_blocks_kept_for_their_generation() {
        let mut s = SentBlocks::default();
        assert_eq!(s.get(b"a", 0), None);
        s.put(b"head", b"H", 7);
        s.put(b"trailers", b"T", 7);
        assert_eq!(s.get(b"head", 7), Some(&b"H"[..]));
        assert_eq!(s.get(b"trailers", 7), Some(&b"T"[..]));
        assert_eq!(s.get(b"head", 8), None, "the table changed since");
        assert_eq!(s.get(b"heae", 7), None);
        s.put(b"other", b"O", 7);
        assert_eq!(s.get(b"head", 7), None, "the older block made room");
        assert_eq!(s.get(b"trailers", 7), Some(&b"T"[..]));
        s.put(&[0; MAX_HEAD + 1], b"B", 7);
        assert_eq!(s.get(&[0; MAX_HEAD + 1], 7), None, "a large head is not kept");
    }
}
