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
    slots: [Option<Slot<V>>; 2],
    /// The slot the next new value replaces.
    next: usize,
}

#[derive(Debug)]
struct Slot<V> {
    key: Vec<u8>,
    value: V,
    generation: u64,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            slots: [None, None],
            next: 0,
        }
    }
}

impl<V> Recent<V> {
    /// The value made from `key` while the table was at `generation`.
    pub fn get(&self, key: &[u8], generation: u64) -> Option<&V> {
        self.slots
            .iter()
            .flatten()
            .find(|s| s.generation == generation && s.key == key)
            .map(|s| &s.value)
    }

    /// `value` was made from `key`, which left the table at `generation`
    /// (unchanged by the making).
    pub fn put(&mut self, key: &[u8], value: V, generation: u64) {
        if key.len() > MAX_KEY {
            return;
        }
        let i = self.next;
        self.next = (i + 1) % self.slots.len();
        self.slots[i] = Some(Slot {
            key: key.to_vec(),
            value,
            generation,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_values_kept_for_their_generation() {
        let mut r = Recent::default();
        assert_eq!(r.get(b"a", 0), None);
        r.put(b"head", "H", 7);
        r.put(b"trailers", "T", 7);
        assert_eq!(r.get(b"head", 7), Some(&"H"));
        assert_eq!(r.get(b"trailers", 7), Some(&"T"));
        assert_eq!(r.get(b"head", 8), None, "the table changed since");
        assert_eq!(r.get(b"heae", 7), None);
        r.put(b"other", "O", 7);
        assert_eq!(r.get(b"head", 7), None, "the older value made room");
        assert_eq!(r.get(b"trailers", 7), Some(&"T"));
        r.put(&[0; MAX_KEY + 1], "B", 7);
        assert_eq!(r.get(&[0; MAX_KEY + 1], 7), None, "a large key is not kept");
    }
}
