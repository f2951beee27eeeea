//! A map that keeps only its newest keys: what the collector remembers per
//! transaction (who sent it, who announced it first) must stay bounded on a
//! node that relays transactions for months.
//!
//! The tables fill up: on mainnet in hours, under a relay flood in seconds,
//! and then stay full for as long as peerlog runs. A `HashMap` beside a
//! queue of its keys held each 32-byte hash twice, in tables that double as
//! they grow; at their bounds (300,000 hashes) the two tables took some 60
//! MiB of peerlog's memory on a real bitcoind. Here each entry is stored
//! once, in a ring in insertion order, and found through a table of its
//! positions: about 16 MiB at the same bounds, and 11 MiB with the 16-byte
//! keys the collector gives it.

use std::hash::{BuildHasher, Hash, RandomState};

use hashbrown::HashTable;

/// At most `capacity` keys; inserting a new key beyond it forgets the one
/// inserted longest ago (updating a key does not make it newer).
#[derive(Debug, Clone)]
pub(super) struct Recent<K, V> {
    /// The entries in the order their keys came; once there are `capacity`,
    /// a ring whose oldest entry is at `oldest`.
    entries: Vec<(K, V)>,
    /// Each key's position in `entries`, found by the key's hash.
    positions: HashTable<u32>,
    oldest: usize,
    capacity: usize,
    /// Randomly keyed: peers choose the hashes (a transaction is cheap to
    /// grind), so they must not choose where they land in the table.
    hasher: RandomState,
}

impl<K: Hash + Eq + Copy, V> Recent<K, V> {
    /// An empty map of at most `capacity` keys (at most `u32::MAX`).
    ///
    /// Both tables are sized for `capacity` now. Growing, the table of
    /// positions rehashed every key, each a cache miss in the ring: a pause
    /// of milliseconds in the trace loop at every doubling, which put the
    /// events' p99 latency at 17 to 30 ms under the bench's relay flood
    /// (against 7 to 8). Memory still comes as keys do: pages of the ring
    /// and of the positions are touched only when used, all but the
    /// table's control bytes (one a position). Full, the table still places
    /// every key again to clear the tombstones of removed keys, about once
    /// in 5 million insertions: 24 ms for 200,000 keys, once in minutes of a
    /// relay flood and of days on mainnet. Keeping each key's hash beside
    /// its position made that 3 ms, for 2 MiB more at the bench's bounds,
    /// and peerlog's memory is the scarcer.
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.min(u32::MAX as usize);
        Self {
            entries: Vec::with_capacity(capacity),
            positions: HashTable::with_capacity(capacity),
            oldest: 0,
            capacity,
            hasher: RandomState::new(),
        }
    }

    /// Where `key`, whose hash is `hash`, is in `entries`.
    fn position(&self, hash: u64, key: &K) -> Option<usize> {
        let entries = &self.entries;
        self.positions
            .find(hash, |&at| entries[at as usize].0 == *key)
            .map(|&at| at as usize)
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        let at = self.position(self.hasher.hash_one(key), key)?;
        Some(&self.entries[at].1)
    }

    pub(super) fn contains(&self, key: &K) -> bool {
        self.position(self.hasher.hash_one(key), key).is_some()
    }

    /// Sets `key` to `value`; returns the value it had.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        if let Some(at) = self.position(hash, &key) {
            return Some(std::mem::replace(&mut self.entries[at].1, value));
        }
        if self.capacity == 0 {
            return None;
        }
        let at = if self.entries.len() < self.capacity {
            self.entries.push((key, value));
            self.entries.len() - 1
        } else {
            // Full: the oldest entry gives up its place.
            let at = self.oldest;
            let gone = self.hasher.hash_one(self.entries[at].0);
            if let Ok(entry) = self.positions.find_entry(gone, |&p| p as usize == at) {
                entry.remove();
            }
            self.entries[at] = (key, value);
            self.oldest = (at + 1) % self.capacity;
            at
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.positions
            .insert_unique(hash, at as u32, |&p| hasher.hash_one(entries[p as usize].0));
        None
    }

    /// Forgets every key; the tables keep their size.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.positions.clear();
        self.oldest = 0;
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

    #[test]
    fn keeps_exactly_the_newest_keys_round_after_round() {
        let mut r = Recent::new(5);
        for key in 0..23u32 {
            assert_eq!(r.insert(key, key * 10), None);
            // An update in between moves nothing.
            assert_eq!(r.insert(key, key * 100), Some(key * 10));
        }
        for key in 0..23u32 {
            let kept = key >= 18;
            assert_eq!(r.contains(&key), kept, "key {key}");
            assert_eq!(r.get(&key), kept.then_some(&(key * 100)), "key {key}");
        }
        r.clear();
        assert!(!r.contains(&22));
        for key in 100..107u32 {
            r.insert(key, 0);
        }
        assert!(!r.contains(&101) && r.contains(&102) && r.contains(&106));
    }

    #[test]
    fn a_map_of_no_keys_keeps_none() {
        let mut r = Recent::new(0);
        assert_eq!(r.insert(1, 1), None);
        assert!(!r.contains(&1));
    }
}
