//! What bitcoind's memory says at one moment: every kept peer's byte
//! counters and queue sizes, read once per report or scrape, so that the
//! peers' figures and the node's sums come from the same reads (and a
//! report costs one `process_vm_readv` pass over the peers, not one per
//! figure).

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{card::STALLING_SEND_QUEUE_BYTES, Collector};
use crate::{elf::layout::QueueBytes, peers::NodeBytes};

/// bitcoind's own figures of the node and its peers, as read at one moment.
#[derive(Debug, Clone, Default)]
pub struct NodeReadings {
    /// Byte counters by peer id: read for a connected peer, the final ones
    /// of a closed peer; absent when unknown.
    bytes: BTreeMap<i64, NodeBytes>,
    /// Queue sizes by peer id, of connected peers whose `CNode` was read.
    queues: BTreeMap<i64, QueueBytes>,
    /// By peer id: for how many seconds every reading found the peer's
    /// send queue at or above [`STALLING_SEND_QUEUE_BYTES`] (0: this one
    /// found it below), of peers whose send queue was read.
    send_queue_full_secs: BTreeMap<i64, u64>,
    /// The byte counters of every connection seen, summed: the closed ones
    /// with their final figures, the open ones as read.
    pub bytes_total: NodeBytes,
    /// The queues of every connected peer read, summed; a figure this
    /// bitcoind does not give is None.
    pub queues_total: QueueBytes,
    /// bitcoind's resident set size in bytes; None when it cannot be read.
    pub rss_bytes: Option<u64>,
}

impl NodeReadings {
    /// The peer's byte counters, as `getpeerinfo` would show them; None
    /// when unknown.
    pub fn bytes(&self, id: i64) -> Option<NodeBytes> {
        self.bytes.get(&id).copied()
    }

    /// What the peer makes bitcoind hold in its connection's queues; None
    /// for a closed peer (its queues are being freed), an unknown `CNode`,
    /// or a read that found another peer there.
    pub fn queues(&self, id: i64) -> Option<QueueBytes> {
        self.queues.get(&id).copied()
    }

    /// For how many seconds every reading has found the peer's send queue
    /// full (at or above bitcoind's default `-maxsendbuffer`): from the
    /// first reading of the run that found it so to this one. None when
    /// the queue was not read.
    pub fn send_queue_full_secs(&self, id: i64) -> Option<u64> {
        self.send_queue_full_secs.get(&id).copied()
    }
}

impl Collector {
    /// Reads bitcoind's figures of every kept peer once, and sums them; and
    /// remembers since when each peer's send queue has been found full, so
    /// that a queue that stays full is told from one that was full at one
    /// reading (every report, stats line and scrape is a reading).
    pub fn read_node(&mut self) -> NodeReadings {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let cov = &self.coverage;
        let mut r = NodeReadings {
            bytes_total: self.dropped_bytes,
            queues_total: QueueBytes {
                send: cov.send_queue.then_some(0),
                recv: cov.recv_queue.then_some(0),
            },
            rss_bytes: self.node_rss_bytes(),
            ..NodeReadings::default()
        };
        for e in self.peers.iter_mut() {
            let p = &e.peer;
            let live = |reader: &crate::elf::layout::CounterReader| {
                reader.read(p.cnode.filter(|_| !p.closed)?, p.id)
            };
            let (bytes, queues) = match (p.final_bytes, self.counters.as_ref().and_then(live)) {
                (Some(b), _) => (Some(b), None),
                (None, Some(read)) => {
                    let (recv, sent) = read.bytes;
                    (Some(NodeBytes { recv, sent }), Some(read.queues))
                }
                (None, None) => (None, None),
            };
            if let Some(b) = bytes {
                r.bytes_total.recv += b.recv;
                r.bytes_total.sent += b.sent;
                r.bytes.insert(p.id, b);
            }
            let full_since = &mut e.stats.send_queue_full_since;
            match queues.and_then(|q| q.send) {
                Some(bytes) if bytes >= STALLING_SEND_QUEUE_BYTES => {
                    let since = *full_since.get_or_insert(now);
                    r.send_queue_full_secs
                        .insert(p.id, now.saturating_sub(since));
                }
                Some(_) => {
                    *full_since = None;
                    r.send_queue_full_secs.insert(p.id, 0);
                }
                None => *full_since = None,
            }
            if let Some(q) = queues {
                let sums = [
                    (&mut r.queues_total.send, q.send),
                    (&mut r.queues_total.recv, q.recv),
                ];
                for (sum, part) in sums {
                    if let (Some(sum), Some(part)) = (sum.as_mut(), part) {
                        *sum += part;
                    }
                }
                r.queues.insert(p.id, q);
            }
        }
        r
    }
}
