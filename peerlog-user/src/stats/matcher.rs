//! Requests waiting for their answers: a `getdata` for a transaction until
//! its `tx`, a `ping` until its `pong`. The live statistics and
//! `peerlog stats` over captures match with this one table.

use std::{collections::HashMap, hash::Hash};

/// Requests by what identifies their answer (a transaction hash, a ping
/// nonce), with the time each was made; bounded, because a peer chooses
/// what it never answers.
#[derive(Debug, Clone)]
pub struct Pending<K> {
    asked: HashMap<K, u64>,
    capacity: usize,
    expiry: u64,
}

impl<K: Eq + Hash + Copy> Pending<K> {
    /// A table of at most `capacity` requests; when it is full, requests
    /// older than `expiry` (in the unit of the times given) are forgotten.
    pub fn new(capacity: usize, expiry: u64) -> Self {
        Self {
            asked: HashMap::new(),
            capacity,
            expiry,
        }
    }

    /// Notes a request at `time`. A repeated request keeps its first time:
    /// the answer is late by then. A request that finds the table full of
    /// unexpired ones is not remembered.
    pub fn ask(&mut self, key: K, time: u64) {
        if self.asked.len() >= self.capacity && !self.asked.contains_key(&key) {
            let cutoff = time.saturating_sub(self.expiry);
            self.asked.retain(|_, asked| *asked >= cutoff);
            if self.asked.len() >= self.capacity {
                return;
            }
        }
        self.asked.entry(key).or_insert(time);
    }

    /// An answer that carries any of `keys` came at `time`: the wait of the
    /// first request it answers, which is then forgotten.
    pub fn answer(&mut self, keys: &[K], time: u64) -> Option<u64> {
        keys.iter()
            .find_map(|key| self.asked.remove(key))
            .map(|asked| time.saturating_sub(asked))
    }

    /// Forgets a request that will not be answered (a `notfound`).
    pub fn forget(&mut self, key: &K) {
        self.asked.remove(key);
    }

    /// Forgets every request: the connection closed.
    pub fn clear(&mut self) {
        self.asked = HashMap::new();
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.asked.len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.asked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn answers_match_the_first_request() {
        let mut p = Pending::new(4, 100);
        p.ask(1u64, 10);
        p.ask(1, 20);
        assert_eq!(p.answer(&[9, 1], 50), Some(40), "the first time counts");
        assert_eq!(p.answer(&[1], 60), None, "answered once");
        p.ask(2, 70);
        p.forget(&2);
        assert!(p.is_empty());
    }

    #[test]
    fn a_full_table_forgets_expired_requests() {
        let mut p = Pending::new(2, 100);
        p.ask(1u64, 0);
        p.ask(2, 150);
        p.ask(3, 160);
        assert_eq!(p.len(), 2, "request 1 expired and made room");
        p.ask(4, 170);
        assert_eq!(p.answer(&[4], 180), None, "no room for an unexpired table");
        assert_eq!(p.answer(&[3], 180), Some(20));
    }
}
