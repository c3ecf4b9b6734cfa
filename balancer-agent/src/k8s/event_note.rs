//! The note of an Event the agent posts, kept within the API's limit.

/// The API's limit on an Event's note, in bytes.
pub const NOTE_MAX: usize = 1024;

/// Shortens `note` to the limit, ending it with `...` (on a character
/// boundary) when it was longer.
pub fn fit(note: &mut String) {
    if note.len() > NOTE_MAX {
        let mut end = NOTE_MAX - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
}
