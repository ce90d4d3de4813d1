//! A small shared memo: a map that holds at most a fixed number of entries
//! and is emptied whole when full. For caches of values that never change
//! once known (a tree hash, a verified signature, a durable artifact): a
//! miss only costs the lookup it saves, so no eviction order is kept.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// At most `max` entries, shared between threads; a poisoned lock reads as
/// empty and keeps nothing (a cache never decides anything).
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    map: Mutex<HashMap<K, V>>,
    max: usize,
}

impl<K: Eq + Hash, V: Clone> BoundedMap<K, V> {
    pub fn new(max: usize) -> Self {
        Self { map: Mutex::new(HashMap::new()), max }
    }

    pub fn get(&self, k: &K) -> Option<V> {
        self.map.lock().ok()?.get(k).cloned()
    }

    pub fn contains(&self, k: &K) -> bool {
        self.map.lock().is_ok_and(|m| m.contains_key(k))
    }

    pub fn insert(&self, k: K, v: V) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= self.max {
                m.clear();
            }
            m.insert(k, v);
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget everything (what it vouched for no longer holds).
    pub fn clear(&mut self) {
        if let Ok(m) = self.map.get_mut() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_max_and_empties_when_full() {
        let m = BoundedMap::new(2);
        m.insert(1, "a");
        m.insert(2, "b");
        assert_eq!((m.get(&1), m.len()), (Some("a"), 2));
        m.insert(3, "c");
        assert_eq!((m.get(&1), m.get(&3), m.len()), (None, Some("c"), 1));
        assert!(m.contains(&3) && !m.contains(&2));
    }
}
