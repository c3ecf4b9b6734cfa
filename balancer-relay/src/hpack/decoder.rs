//! The HPACK decoder (RFC 7541 §3, §6).

use super::table::{DynamicTable, Entry, ENTRY_OVERHEAD, STATIC, STATIC_LEN};
use super::{huffman, integer, Field};

/// Why a header block could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The block ends inside a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer does not fit in 32 bits or has too many continuation octets.
    #[error("HPACK integer too large")]
    IntegerOverflow,
    /// A representation refers to index 0.
    #[error("HPACK index 0")]
    IndexZero,
    /// A representation refers to an index past the end of the dynamic table.
    #[error("HPACK index {0} is not in the table")]
    IndexOutOfRange(u64),
    /// A Huffman-coded string is malformed (EOS symbol, bad padding).
    #[error("invalid Huffman-coded string")]
    BadHuffman,
    /// A dynamic table size update exceeds the size we announced.
    #[error("dynamic table size update to {size} exceeds the limit {max}")]
    SizeUpdateTooLarge {
        /// The size asked for.
        size: u64,
        /// Our SETTINGS_HEADER_TABLE_SIZE.
        max: u32,
    },
    /// A dynamic table size update follows a header field in the block.
    #[error("dynamic table size update after a header field")]
    SizeUpdateNotFirst,
    /// The decoded header list exceeds `max_list_size`; the rest of the block
    /// was still processed, so the decoder remains usable.
    #[error("header list larger than {max} bytes")]
    ListTooLarge {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The `emit` callback asked to stop; the rest of the block was still
    /// processed, so the decoder remains usable.
    #[error("header block decoding stopped by the caller")]
    Stopped,
}

impl DecodeError {
    /// True for errors after which the decoder's state is unknown (a
    /// connection error of type COMPRESSION_ERROR); false for
    /// [`DecodeError::ListTooLarge`] and [`DecodeError::Stopped`], after which
    /// the decoder is still in sync with the peer's encoder.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, DecodeError::ListTooLarge { .. } | DecodeError::Stopped)
    }
}

/// A decoded string: where its bytes are.
#[derive(Clone, Copy)]
enum Str {
    /// Raw bytes of the block.
    Block(usize, usize),
    /// Huffman-decoded into the scratch buffer.
    Scratch(usize, usize),
}

impl Str {
    fn get<'a>(self, block: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        match self {
            Str::Block(start, end) => &block[start..end],
            Str::Scratch(start, end) => &scratch[start..end],
        }
    }
}

/// An HPACK decoder: one per connection direction, fed every header block
/// the peer sends, in order.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The SETTINGS_HEADER_TABLE_SIZE in force.
    max_table_size: u32,
    /// Huffman-decoded strings of the current field.
    scratch: Vec<u8>,
    /// The last Huffman-coded value of a field sent without indexing, coded
    /// and decoded. A peer that never indexes a field sends the same coded
    /// bytes every time (nghttp2's clients send `:path` so, for every call):
    /// those are decoded once.
    memo: Option<Box<Memo>>,
    /// Counts the changes of the table (inserts, size updates).
    generation: u64,
}

#[derive(Debug, Default)]
struct Memo {
    coded: Vec<u8>,
    decoded: Vec<u8>,
}

/// The longest coded value kept in [`Decoder::memo`].
const MEMO_MAX: usize = 256;

fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we announce to the
    /// peer (the bound a size update may raise the table to); the table starts
    /// at that size. Allocates nothing until the first entry is inserted.
    pub fn new(max_table_size: u32) -> Decoder {
        Decoder {
            table: DynamicTable::new(to_usize(max_table_size)),
            max_table_size,
            scratch: Vec::new(),
            memo: None,
            generation: 0,
        }
    }

    /// The peer acknowledged a new SETTINGS_HEADER_TABLE_SIZE of ours.
    ///
    /// The table takes that size at once: if it shrinks, the peer's encoder
    /// must evict down to it too (with a size update at the start of its next
    /// block); if it grows, a table larger than the encoder's is harmless
    /// (indices count from the newest entry, so the encoder only ever refers
    /// to entries both tables hold).
    pub fn set_max_table_size(&mut self, max: u32) {
        self.generation += 1;
        self.max_table_size = max;
        self.table.set_max_size(to_usize(max), |_, _| {});
    }

    /// Decodes one complete header block, calling `emit` for every field in
    /// order.
    ///
    /// `max_list_size` bounds the decoded header list (the sum of name +
    /// value + 32 per field, as SETTINGS_MAX_HEADER_LIST_SIZE). Once it is
    /// exceeded, or once `emit` returns false, no more fields are emitted or
    /// materialised, but the rest of the block is still processed so that the
    /// dynamic table stays in sync; [`DecodeError::ListTooLarge`] or
    /// [`DecodeError::Stopped`] is returned at the end (unless a fatal error
    /// comes up first). After any other error the decoder is unusable.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list_size: usize,
        mut emit: impl FnMut(Field<'_>) -> bool,
    ) -> Result<(), DecodeError> {
        let mut pos = 0;
        let mut list_size = 0usize;
        // Set once emitting has stopped (ListTooLarge or Stopped).
        let mut stopped: Option<DecodeError> = None;
        let mut first_field = true;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                first_field = false;
                let index = integer::decode(block, &mut pos, 7)?;
                let (name, value) = lookup(&self.table, index)?;
                if stopped.is_none() {
                    let field = Field {
                        name,
                        value,
                        never_index: false,
                    };
                    stopped = deliver(&mut list_size, max_list_size, &mut emit, field);
                }
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3).
                if !first_field {
                    return Err(DecodeError::SizeUpdateNotFirst);
                }
                let size = integer::decode(block, &mut pos, 5)?;
                if size > u64::from(self.max_table_size) {
                    return Err(DecodeError::SizeUpdateTooLarge {
                        size,
                        max: self.max_table_size,
                    });
                }
                // size <= max_table_size, a u32.
                self.generation += 1;
                self.table
                    .set_max_size(usize::try_from(size).unwrap_or(usize::MAX), |_, _| {});
            } else {
                // Literal header field (§6.2): with incremental indexing
                // (01), without indexing (0000) or never indexed (0001).
                first_field = false;
                let (prefix_bits, indexing, never_index) = if first & 0x40 != 0 {
                    (6, true, false)
                } else {
                    (4, false, first & 0x10 != 0)
                };
                // A field that is neither emitted nor inserted is only skipped.
                let materialise = indexing || stopped.is_none();
                self.scratch.clear();
                let name_index = integer::decode(block, &mut pos, prefix_bits)?;
                let name = if name_index == 0 {
                    Some(read_string(block, &mut pos, &mut self.scratch, materialise)?)
                } else {
                    lookup(&self.table, name_index)?;
                    None
                };
                let value = if materialise && !indexing {
                    self.read_value(block, &mut pos)?
                } else {
                    read_string(block, &mut pos, &mut self.scratch, materialise)?
                };
                if !materialise {
                    continue;
                }
                let name = match name {
                    Some(s) => s.get(block, &self.scratch),
                    None => lookup(&self.table, name_index)?.0,
                };
                let value = value.get(block, &self.scratch);
                if stopped.is_none() {
                    let field = Field {
                        name,
                        value,
                        never_index,
                    };
                    stopped = deliver(&mut list_size, max_list_size, &mut emit, field);
                }
                if indexing {
                    self.generation += 1;
                    if self.table.fits(name, value) {
                        // Copied before inserting: the name may be that of an
                        // entry the insertion evicts.
                        let entry = Entry::new(name, value);
                        self.table.insert(entry, |_, _| {});
                    } else {
                        self.table.clear(|_, _| {});
                    }
                }
            }
        }
        match stopped {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Reads the value of a field sent without indexing into the scratch
    /// buffer, decoding a Huffman-coded one unless it is the memo's.
    fn read_value(&mut self, block: &[u8], pos: &mut usize) -> Result<Str, DecodeError> {
        let (huffman, start, end) = locate_string(block, pos)?;
        if !huffman {
            return Ok(Str::Block(start, end));
        }
        let coded = &block[start..end];
        let from = self.scratch.len();
        match &mut self.memo {
            Some(m) if m.coded == coded => self.scratch.extend_from_slice(&m.decoded),
            memo => {
                huffman::decode(coded, &mut self.scratch)?;
                if coded.len() <= MEMO_MAX {
                    let m = memo.get_or_insert_with(Box::default);
                    m.coded.clear();
                    m.coded.extend_from_slice(coded);
                    m.decoded.clear();
                    m.decoded.extend_from_slice(&self.scratch[from..]);
                }
            }
        }
        Ok(Str::Scratch(from, self.scratch.len()))
    }

    /// Changes whenever the table changes: a block whose decoding left the
    /// generation as it was decodes to the same fields again, for as long
    /// as the generation stays the same.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Heap bytes held (table + scratch + memo), for memory accounting.
    pub fn heap_size(&self) -> usize {
        self.table.heap_size()
            + self.scratch.capacity()
            + self.memo.as_ref().map_or(0, |m| {
                std::mem::size_of::<Memo>() + m.coded.capacity() + m.decoded.capacity()
            })
    }

    /// Drops scratch buffers and the memo (for a connection going idle); the
    /// table is kept.
    pub fn shrink(&mut self) {
        self.scratch = Vec::new();
        self.memo = None;
    }

    #[cfg(test)]
    pub(crate) fn table(&self) -> &DynamicTable {
        &self.table
    }
}

/// Accounts `field` against the list limit and emits it; returns why
/// emitting must stop, if it must.
fn deliver<F: FnMut(Field<'_>) -> bool>(
    list_size: &mut usize,
    max_list_size: usize,
    emit: &mut F,
    field: Field<'_>,
) -> Option<DecodeError> {
    *list_size = list_size
        .saturating_add(field.name.len())
        .saturating_add(field.value.len())
        .saturating_add(ENTRY_OVERHEAD);
    if *list_size > max_list_size {
        Some(DecodeError::ListTooLarge { max: max_list_size })
    } else if emit(field) {
        None
    } else {
        Some(DecodeError::Stopped)
    }
}

/// The name and value at HPACK `index` (static, then dynamic).
fn lookup(table: &DynamicTable, index: u64) -> Result<(&[u8], &[u8]), DecodeError> {
    let i = usize::try_from(index).map_err(|_| DecodeError::IndexOutOfRange(index))?;
    match i {
        0 => Err(DecodeError::IndexZero),
        1..=STATIC_LEN => Ok(STATIC[i - 1]),
        _ => table
            .get(i - STATIC_LEN - 1)
            .map(|e| (e.name(), e.value()))
            .ok_or(DecodeError::IndexOutOfRange(index)),
    }
}

/// Finds the string literal (§5.2) at `pos` and moves `pos` past it:
/// whether it is Huffman-coded, and where its bytes are in `block`.
fn locate_string(block: &[u8], pos: &mut usize) -> Result<(bool, usize, usize), DecodeError> {
    let huffman = *block.get(*pos).ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = integer::decode(block, pos, 7)?;
    let start = *pos;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= block.len())
        .ok_or(DecodeError::Truncated)?;
    *pos = end;
    Ok((huffman, start, end))
}

/// Reads a string literal (§5.2) at `pos`. Huffman-coded strings are decoded
/// into `scratch` when `materialise` is set; otherwise they are only skipped
/// (and the returned bytes are meaningless).
fn read_string(block: &[u8], pos: &mut usize, scratch: &mut Vec<u8>, materialise: bool) -> Result<Str, DecodeError> {
    let (huffman, start, end) = locate_string(block, pos)?;
    if huffman && materialise {
        let from = scratch.len();
        huffman::decode(&block[start..end], scratch)?;
        Ok(Str::Scratch(from, scratch.len()))
    } else {
        Ok(Str::Block(start, end))
    }
}
