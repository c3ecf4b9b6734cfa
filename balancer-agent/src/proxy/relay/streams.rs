//! The per-stream state of one connection (its calls, or its streams to an
//! endpoint): the values live in a slab, whose slots are reused, so a busy
//! connection stops allocating for them and never moves them when it grows
//! its index; a small map finds them by stream id.

use slab::Slab;

use super::Map;

pub(crate) struct Streams<V> {
    slab: Slab<(u32, V)>,
    ids: Map<u32, usize>,
}

impl<V> Default for Streams<V> {
    fn default() -> Self {
        Streams {
            slab: Slab::new(),
            ids: Map::default(),
        }
    }
}

impl<V> Streams<V> {
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn contains_key(&self, id: &u32) -> bool {
        self.ids.contains_key(id)
    }

    pub fn get(&self, id: &u32) -> Option<&V> {
        let at = *self.ids.get(id)?;
        self.slab.get(at).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, id: &u32) -> Option<&mut V> {
        let at = *self.ids.get(id)?;
        self.slab.get_mut(at).map(|(_, v)| v)
    }

    /// Adds or replaces the state of stream `id`; returns what it replaced.
    pub fn insert(&mut self, id: u32, value: V) -> Option<V> {
        if let Some(&at) = self.ids.get(&id) {
            if let Some((_, v)) = self.slab.get_mut(at) {
                return Some(std::mem::replace(v, value));
            }
        }
        let at = self.slab.insert((id, value));
        self.ids.insert(id, at);
        None
    }

    pub fn remove(&mut self, id: &u32) -> Option<V> {
        let at = self.ids.remove(id)?;
        self.slab.try_remove(at).map(|(_, v)| v)
    }

    /// The stream ids, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &u32> + '_ {
        self.slab.iter().map(|(_, (id, _))| id)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.slab.iter_mut().map(|(_, (_, v))| v)
    }

    /// Takes every stream out.
    pub fn drain(&mut self) -> impl Iterator<Item = (u32, V)> + '_ {
        self.ids.clear();
        self.slab.drain()
    }
}

impl<V> IntoIterator for Streams<V> {
    type Item = (u32, V);
    type IntoIter = std::iter::Map<slab::IntoIter<(u32, V)>, fn((usize, (u32, V))) -> (u32, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.slab.into_iter().map(|(_, entry)| entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_found_by_id_and_their_slots_reused() {
        let mut s = Streams::default();
        assert_eq!(s.insert(1, "a"), None);
        assert_eq!(s.insert(3, "b"), None);
        assert_eq!(s.insert(3, "c"), Some("b"), "a second insert replaces");
        assert_eq!(
            (s.len(), s.get(&1), s.get(&3), s.get(&5)),
            (2, Some(&"a"), Some(&"c"), None)
        );
        let slot = s.ids[&1];
        assert_eq!(s.remove(&1), Some("a"));
        assert_eq!(s.remove(&1), None);
        assert!(!s.contains_key(&1));
        s.insert(5, "d");
        assert_eq!(s.ids[&5], slot, "the freed slot is reused");
        if let Some(v) = s.get_mut(&5) {
            *v = "e";
        }
        let mut ids: Vec<u32> = s.keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, [3, 5]);
        let mut all: Vec<(u32, &str)> = s.drain().collect();
        all.sort_unstable();
        assert_eq!(all, [(3, "c"), (5, "e")]);
        assert!(s.is_empty() && s.get(&3).is_none());
    }
}
