//! The static table (RFC 7541 Appendix A) and the dynamic table (§2.3.2, §4).

use std::collections::VecDeque;

/// The static table; HPACK index `i` (1..=61) is `STATIC[i - 1]`.
pub(crate) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Number of static entries; dynamic indices start after it.
pub(crate) const STATIC_LEN: usize = STATIC.len();

/// The static indices (first, last) of the entries named `name`.
fn static_name_range(name: &[u8]) -> Option<(usize, usize)> {
    let i = match name {
        b":authority" => 1,
        b":method" => return Some((2, 3)),
        b":path" => return Some((4, 5)),
        b":scheme" => return Some((6, 7)),
        b":status" => return Some((8, 14)),
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    };
    Some((i, i))
}

/// Looks `name: value` up in the static table: the index of an exact match,
/// if any, and the index of an entry with this name, if any.
pub(crate) fn static_find(name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
    match static_name_range(name) {
        None => (None, None),
        Some((first, last)) => {
            let exact = (first..=last).find(|&i| STATIC[i - 1].1 == value);
            (exact, Some(first))
        }
    }
}

/// The size RFC 7541 §4.1 counts for an entry, beyond its name and value.
pub(crate) const ENTRY_OVERHEAD: usize = 32;

/// A dynamic table entry: name and value in one allocation.
#[derive(Debug)]
pub(crate) struct Entry {
    buf: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    pub(crate) fn new(name: &[u8], value: &[u8]) -> Entry {
        let mut buf = Vec::with_capacity(name.len() + value.len());
        buf.extend_from_slice(name);
        buf.extend_from_slice(value);
        Entry {
            buf: buf.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    pub(crate) fn name(&self) -> &[u8] {
        &self.buf[..self.name_len]
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.buf[self.name_len..]
    }

    /// The entry's size per RFC 7541 §4.1.
    pub(crate) fn size(&self) -> usize {
        self.buf.len() + ENTRY_OVERHEAD
    }
}

/// The dynamic table. Entries are numbered by insertion (a sequence number,
/// starting at 0 for the first entry ever inserted) so that the encoder's
/// index can refer to them stably while they move down the table.
#[derive(Debug)]
pub(crate) struct DynamicTable {
    /// Newest first: `entries[0]` has HPACK index 62.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    max_size: usize,
    /// Number of entries ever inserted: the sequence number of the next.
    inserted: u64,
}

impl DynamicTable {
    /// An empty table; allocates nothing.
    pub(crate) fn new(max_size: usize) -> DynamicTable {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size,
            inserted: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn max_size(&self) -> usize {
        self.max_size
    }

    /// The entry at position `i` (0 = newest, HPACK index `62 + i`).
    pub(crate) fn get(&self, i: usize) -> Option<&Entry> {
        self.entries.get(i)
    }

    /// The position and entry of the entry with sequence number `seq`, if it
    /// is still in the table.
    pub(crate) fn get_by_seq(&self, seq: u64) -> Option<(usize, &Entry)> {
        let back = self.inserted.checked_sub(seq)?.checked_sub(1)?;
        let i = usize::try_from(back).ok()?;
        self.entries.get(i).map(|e| (i, e))
    }

    /// Number of entries ever inserted.
    #[cfg(test)]
    pub(crate) fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Iterates newest first.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Changes the maximum size, evicting as needed; `on_evict` sees the
    /// sequence number and the entry of each evicted entry.
    pub(crate) fn set_max_size(&mut self, max_size: usize, on_evict: impl FnMut(u64, &Entry)) {
        self.max_size = max_size;
        self.evict_to(max_size, on_evict);
        if max_size == 0 {
            // Don't keep the ring's memory for a table that can't hold anything.
            self.entries = VecDeque::new();
        }
    }

    /// The sequence number of the newest entry, if any.
    pub(crate) fn newest_seq(&self) -> Option<u64> {
        if self.entries.is_empty() {
            None
        } else {
            Some(self.inserted - 1)
        }
    }

    /// Whether an entry `name: value` fits in the table at all.
    pub(crate) fn fits(&self, name: &[u8], value: &[u8]) -> bool {
        name.len() + value.len() + ENTRY_OVERHEAD <= self.max_size
    }

    /// Inserts `entry` as the newest entry after evicting what is needed to
    /// make room (RFC 7541 §4.4). An entry larger than the table empties it
    /// and is not inserted (callers check [`Self::fits`] first and call
    /// [`Self::clear`] instead, so as not to allocate such an entry); returns
    /// whether it was inserted.
    pub(crate) fn insert(&mut self, entry: Entry, mut on_evict: impl FnMut(u64, &Entry)) -> bool {
        let Some(room) = self.max_size.checked_sub(entry.size()) else {
            self.evict_to(0, &mut on_evict);
            return false;
        };
        self.evict_to(room, &mut on_evict);
        self.size += entry.size();
        self.entries.push_front(entry);
        self.inserted += 1;
        true
    }

    /// Evicts every entry (what inserting an entry larger than the table does).
    pub(crate) fn clear(&mut self, on_evict: impl FnMut(u64, &Entry)) {
        self.evict_to(0, on_evict);
    }

    fn evict_to(&mut self, target: usize, mut on_evict: impl FnMut(u64, &Entry)) {
        while self.size > target {
            let seq = self.inserted - self.entries.len() as u64;
            let Some(entry) = self.entries.pop_back() else {
                break;
            };
            self.size -= entry.size();
            on_evict(seq, &entry);
        }
    }

    /// Heap bytes held.
    pub(crate) fn heap_size(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.entries.iter().map(|e| e.buf.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_lookup_matches_table() {
        for (i, (name, value)) in STATIC.iter().enumerate() {
            let (exact, by_name) = static_find(name, value);
            assert_eq!(exact, Some(i + 1), "{}", String::from_utf8_lossy(name));
            let first = by_name.expect("name found");
            assert_eq!(STATIC[first - 1].0, *name);
            assert!(first <= i + 1);
        }
        assert_eq!(static_find(b":status", b"201"), (None, Some(8)));
        assert_eq!(static_find(b"content-type", b"application/grpc"), (None, Some(31)));
        assert_eq!(static_find(b"grpc-status", b"0"), (None, None));
    }

    #[test]
    fn eviction_and_sequence_numbers() {
        let mut t = DynamicTable::new(100);
        let mut evicted = Vec::new();
        assert!(t.insert(Entry::new(b"a", b"1"), |s, _| evicted.push(s))); // 34
        assert!(t.insert(Entry::new(b"b", b"2"), |s, _| evicted.push(s))); // 68
        assert!(t.insert(Entry::new(b"c", b"3"), |s, _| evicted.push(s))); // 102 > 100: evicts "a"
        assert_eq!(t.newest_seq(), Some(2));
        assert_eq!(evicted, [0]);
        assert_eq!(t.size(), 68);
        assert!(t.get_by_seq(0).is_none());
        assert_eq!(t.get_by_seq(1).map(|(i, e)| (i, e.name())), Some((1, &b"b"[..])));
        assert_eq!(t.get_by_seq(2).map(|(i, e)| (i, e.value())), Some((0, &b"3"[..])));
        assert!(t.get_by_seq(3).is_none());
        // Too large: empties the table.
        assert!(!t.fits(b"big", &[0; 80]));
        assert!(!t.insert(Entry::new(b"big", &[0; 80]), |s, _| evicted.push(s)));
        assert_eq!(evicted, [0, 1, 2]);
        assert_eq!((t.len(), t.size(), t.newest_seq()), (0, 0, None));
        t.set_max_size(0, |_, _| {});
        assert_eq!(t.heap_size(), 0);
    }
}
