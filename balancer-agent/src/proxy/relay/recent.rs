//! The header blocks a connection sent and received last, to reuse.
//!
//! An HPACK block depends on the fields and on the table of the side that
//! codes it. When the fields (or, received, the block's bytes) repeat byte
//! for byte and that table has not changed since, the result is the same: a
//! gRPC client calling one method sends the same request head call after
//! call, an endpoint the same response head and trailers. Two blocks are
//! kept each way, so a response's head and its trailers, which alternate on
//! a connection, both repeat.

/// Keys larger than this are not kept, which bounds what a connection
/// keeps here to a few KiB.
const MAX_KEY: usize = 512;

/// The last two `V`s made from a key, each valid while the coder's table
/// is at the generation it was made at.
#[derive(Debug)]
pub(crate) struct Recent<V> {
    slots: [Slot<V>; 2],
    /// The slot the next new value replaces.
    next: usize,
}

#[derive(Debug, Default)]
struct Slot<V> {
    key: Vec<u8>,
    value: V,
    /// `None`: an empty slot.
    generation: Option<u64>,
}

impl<V: Default> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            slots: Default::default(),
            next: 0,
        }
    }
}

impl<V> Recent<V> {
    /// The value made from `key` while the table was at `generation`.
    pub fn get(&self, key: &[u8], generation: u64) -> Option<&V> {
        self.slots
            .iter()
            .find(|s| s.generation == Some(generation) && s.key == key)
            .map(|s| &s.value)
    }

    /// Where to put the value made from `key`, which left the table at
    /// `generation` (unchanged by the making): the older slot, whose
    /// buffers are reused, so a connection whose blocks never repeat (a
    /// `grpc-timeout` that differs per call) copies bytes per call but
    /// allocates nothing. `None`: the key is too large to keep.
    pub fn put(&mut self, key: &[u8], generation: u64) -> Option<&mut V> {
        if key.len() > MAX_KEY {
            return None;
        }
        let i = self.next;
        self.next = (i + 1) % self.slots.len();
        let slot = &mut self.slots[i];
        slot.key.clear();
        slot.key.extend_from_slice(key);
        slot.generation = Some(generation);
        Some(&mut slot.value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn two_values_kept_for_their_generation() {
        let mut r = Recent::default();
        assert_eq!(r.get(b"a", 0), None);
        *r.put(b"head", 7).unwrap() = "H";
        *r.put(b"trailers", 7).unwrap() = "T";
        assert_eq!(r.get(b"head", 7), Some(&"H"));
        assert_eq!(r.get(b"trailers", 7), Some(&"T"));
        assert_eq!(r.get(b"head", 8), None, "the table changed since");
        assert_eq!(r.get(b"heae", 7), None);
        *r.put(b"other", 7).unwrap() = "O";
        assert_eq!(r.get(b"head", 7), None, "the older value made room");
        assert_eq!(r.get(b"trailers", 7), Some(&"T"));
        assert!(r.put(&[0; MAX_KEY + 1], 7).is_none());
        assert_eq!(r.get(&[0; MAX_KEY + 1], 7), None, "a large key is not kept");
    }
}
