//! A map that keeps only its newest keys: what the collector remembers per
//! transaction (who sent it, who announced it first) must stay bounded on a
//! node that relays transactions for months.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// At most `capacity` keys; inserting a new key beyond it forgets the one
/// inserted longest ago (updating a key does not make it newer).
#[derive(Debug, Clone)]
pub(super) struct Recent<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy, V> Recent<K, V> {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub(super) fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Sets `key` to `value`; returns the value it had.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.map.insert(key, value);
        if old.is_none() {
            self.order.push_back(key);
            if self.order.len() > self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.map.remove(&oldest);
                }
            }
        }
        old
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn forgets_the_oldest_key_beyond_its_capacity() {
        let mut r = Recent::new(2);
        assert_eq!(r.insert(1, 'a'), None);
        assert_eq!(r.insert(2, 'b'), None);
        // An update keeps the key's age.
        assert_eq!(r.insert(1, 'c'), Some('a'));
        assert_eq!(r.insert(3, 'd'), None);
        assert!(!r.contains(&1));
        assert_eq!((r.get(&2), r.get(&3)), (Some(&'b'), Some(&'d')));
    }
}
