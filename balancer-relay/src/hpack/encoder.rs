//! The HPACK encoder (RFC 7541 §6), tuned for a proxy re-encoding every
//! header block towards a peer: fields that repeat are indexed, volatile and
//! sensitive ones are not, and string literals are sent raw (no Huffman).

use std::collections::HashMap;
use std::hash::{BuildHasher as _, BuildHasherDefault, Hasher};

use bytes::BytesMut;
use foldhash::fast::FixedState;

use super::integer;
use super::table::{static_find, DynamicTable, Entry, ENTRY_OVERHEAD, STATIC_LEN};

/// The largest dynamic table the encoder uses, whatever the peer allows
/// (the RFC default).
const MAX_TABLE_SIZE: u32 = 4096;

/// First-octet patterns (RFC 7541 §6).
const INDEXED: u8 = 0x80;
const LITERAL_INDEXED: u8 = 0x40;
const LITERAL_NOT_INDEXED: u8 = 0x00;
const LITERAL_NEVER_INDEXED: u8 = 0x10;
const SIZE_UPDATE: u8 = 0x20;

/// An HPACK encoder: one per connection direction, used for every header
/// block sent to the peer, in order.
#[derive(Debug)]
pub struct Encoder {
    table: DynamicTable,
    /// Made at the first insert: an encoder that never indexes anything
    /// (an idle connection's) keeps its size small.
    index: Option<Box<Indexes>>,
    /// Size updates owed at the start of the next block: (smallest, final).
    pending: Option<(u32, u32)>,
    /// Counts the changes of the table's state (inserts, size changes).
    generation: u64,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::new()
    }
}

/// How the encoder treats a field name.
enum Class {
    /// Indexed when small enough.
    Normal,
    /// Changes with every message: inserted only while no table holds its
    /// name (so that later fields can refer to the name), otherwise sent as a
    /// literal without indexing.
    Volatile,
    /// Credentials: never inserted (a shared table would be an oracle).
    Sensitive,
}

fn classify(name: &[u8]) -> Class {
    match name {
        b"grpc-timeout"
        | b"grpc-message"
        | b"content-length"
        | b"date"
        | b"grpc-status-details-bin"
        | b"traceparent"
        | b"tracestate"
        | b"grpc-trace-bin"
        | b"x-request-id"
        | b"x-b3-traceid"
        | b"x-b3-spanid"
        | b"x-b3-parentspanid"
        | b"x-b3-sampled"
        | b"x-cloud-trace-context" => Class::Volatile,
        b"authorization" | b"cookie" | b"set-cookie" | b"proxy-authorization" => Class::Sensitive,
        _ => Class::Normal,
    }
}

impl Encoder {
    /// An encoder towards a peer whose table size is the RFC default 4096.
    /// Allocates nothing until the first insert.
    pub fn new() -> Encoder {
        Encoder {
            table: DynamicTable::new(MAX_TABLE_SIZE as usize),
            index: None,
            pending: None,
            generation: 0,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed. The encoder uses
    /// min(size, 4096) from now on, evicting at once, and writes the size
    /// update(s) at the start of the next block (the smallest size reached
    /// since the last block, then the final one, RFC 7541 §4.2).
    pub fn set_peer_max_table_size(&mut self, size: u32) {
        let size = size.min(MAX_TABLE_SIZE);
        let current = u32::try_from(self.table.max_size()).unwrap_or(MAX_TABLE_SIZE);
        if self.pending.is_none() && size == current {
            return;
        }
        let smallest = self.pending.map_or(size, |(smallest, _)| smallest.min(size));
        self.pending = Some((smallest, size));
        self.generation += 1;
        let Encoder { table, index, .. } = self;
        table.set_max_size(size as usize, |seq, e| forget(index, seq, e));
    }

    /// Starts a header block: writes any pending table size update.
    pub fn begin(&mut self, dst: &mut BytesMut) {
        if let Some((smallest, size)) = self.pending.take() {
            self.generation += 1;
            if smallest < size {
                integer::encode(dst, SIZE_UPDATE, 5, smallest.into());
            }
            integer::encode(dst, SIZE_UPDATE, 5, size.into());
        }
    }

    /// Encodes one field into `dst`.
    ///
    /// A `never_index` field is always sent as "literal never indexed" (the
    /// flag survives the next hop, RFC 7541 §6.2.3), even when a table holds
    /// it. Otherwise: an exact match in the static or dynamic table is sent
    /// as its index; a field worth keeping is sent as a literal with
    /// incremental indexing and inserted; anything else as a literal without
    /// indexing. Names are sent by index whenever a table holds them.
    pub fn field(&mut self, name: &[u8], value: &[u8], never_index: bool, dst: &mut BytesMut) {
        let (static_exact, static_name) = static_find(name, value);
        if never_index {
            let name_index = static_name.or_else(|| self.find_name(name));
            literal(dst, LITERAL_NEVER_INDEXED, 4, name_index, name, value);
            return;
        }
        if let Some(index) = static_exact {
            integer::encode(dst, INDEXED, 7, index as u64);
            return;
        }
        let pair_key = pair_hash(name, value);
        if let Some(index) = self.find_pair(pair_key, name, value) {
            integer::encode(dst, INDEXED, 7, index as u64);
            return;
        }
        let name_index = static_name.or_else(|| self.find_name(name));
        let small = name.len() + value.len() + ENTRY_OVERHEAD <= self.table.max_size() / 2;
        let insert = small
            && match classify(name) {
                Class::Normal => true,
                Class::Volatile => name_index.is_none(),
                Class::Sensitive => false,
            };
        if insert {
            literal(dst, LITERAL_INDEXED, 6, name_index, name, value);
            self.insert(name, value, pair_key);
        } else {
            literal(dst, LITERAL_NOT_INDEXED, 4, name_index, name, value);
        }
    }

    /// Changes whenever the encoder's state changes: a block encoded twice
    /// with no change in between is the same bytes, and a block whose
    /// encoding changed nothing may be sent again as it is, for as long as
    /// the generation stays the same.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Heap bytes held (table + index), for memory accounting.
    pub fn heap_size(&self) -> usize {
        let slot = std::mem::size_of::<(u64, u64)>() + 1;
        self.table.heap_size()
            + self.index.as_ref().map_or(0, |i| {
                std::mem::size_of::<Indexes>() + (i.pairs.capacity() + i.names.capacity()) * slot
            })
    }

    #[cfg(test)]
    pub(crate) fn table(&self) -> &DynamicTable {
        &self.table
    }

    /// The HPACK index of the entry `name: value` in the dynamic table.
    fn find_pair(&self, key: u64, name: &[u8], value: &[u8]) -> Option<usize> {
        let seq = *self.index.as_ref()?.pairs.get(&key)?;
        let (i, e) = self.table.get_by_seq(seq)?;
        (e.name() == name && e.value() == value).then_some(STATIC_LEN + 1 + i)
    }

    /// The HPACK index of an entry named `name` in the dynamic table.
    fn find_name(&self, name: &[u8]) -> Option<usize> {
        if self.table.len() == 0 {
            return None;
        }
        let seq = *self.index.as_ref()?.names.get(&name_hash(name))?;
        let (i, e) = self.table.get_by_seq(seq)?;
        (e.name() == name).then_some(STATIC_LEN + 1 + i)
    }

    fn insert(&mut self, name: &[u8], value: &[u8], pair_key: u64) {
        self.generation += 1;
        let Encoder { table, index, .. } = self;
        if !table.fits(name, value) {
            table.clear(|seq, e| forget(index, seq, e));
            return;
        }
        table.insert(Entry::new(name, value), |seq, e| forget(index, seq, e));
        if let Some(seq) = table.newest_seq() {
            let i = index.get_or_insert_with(Box::default);
            i.pairs.insert(pair_key, seq);
            i.names.insert(name_hash(name), seq);
        }
    }
}

/// Removes the index entries of the evicted entry `seq`, unless they already
/// point to a newer entry.
fn forget(index: &mut Option<Box<Indexes>>, seq: u64, e: &Entry) {
    let Some(Indexes { pairs, names }) = index.as_deref_mut() else {
        return;
    };
    let key = pair_hash(e.name(), e.value());
    if pairs.get(&key) == Some(&seq) {
        pairs.remove(&key);
    }
    let key = name_hash(e.name());
    if names.get(&key) == Some(&seq) {
        names.remove(&key);
    }
}

/// Writes a literal representation: `flags` and the name index (0 for a
/// literal name) in a `prefix_bits`-bit prefix, then the strings, raw.
fn literal(dst: &mut BytesMut, flags: u8, prefix_bits: u32, name_index: Option<usize>, name: &[u8], value: &[u8]) {
    dst.reserve(name.len() + value.len() + 12);
    match name_index {
        Some(index) => integer::encode(dst, flags, prefix_bits, index as u64),
        None => {
            integer::encode(dst, flags, prefix_bits, 0);
            string(dst, name);
        }
    }
    string(dst, value);
}

fn string(dst: &mut BytesMut, s: &[u8]) {
    integer::encode(dst, 0, 7, s.len() as u64);
    dst.extend_from_slice(s);
}

/// The encoder's lookups into its dynamic table.
#[derive(Debug, Default)]
struct Indexes {
    /// Hash of (name, value) → sequence number of the newest entry with it.
    pairs: Index,
    /// Hash of name → sequence number of the newest entry with that name.
    names: Index,
}

/// A map keyed by a precomputed hash.
type Index = HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

/// Passes a precomputed `u64` hash through.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = FIELD_HASH.hash_one(bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The hash of names and fields. The index maps hold at most a table's
/// worth of entries and every hit is compared in full, so a fixed seed
/// serves: a peer that made keys collide would only miss the index.
const FIELD_HASH: FixedState = FixedState::with_seed(0x9e37_79b9_7f4a_7c15);

fn name_hash(name: &[u8]) -> u64 {
    FIELD_HASH.hash_one(name)
}

fn pair_hash(name: &[u8], value: &[u8]) -> u64 {
    FIELD_HASH.hash_one((name, value))
}
