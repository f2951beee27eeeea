//! What a client sent and received, in order, with wall-clock times.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Wall-clock time in microseconds since the Unix epoch.
///
/// Wall clock rather than a monotonic clock because transcripts are compared
/// with captures taken by another process (peerlog), and the epoch is the only
/// time base the two share.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Which way a message went, seen from this client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptDirection {
    /// We sent it to the peer (the node received it: peerlog's "inbound").
    Sent,
    /// The peer sent it to us (peerlog's "outbound" for the node).
    Received,
}

/// One message in a [`Transcript`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    /// Wall-clock time in µs since the Unix epoch: just before the frame was
    /// written for a sent message, just after its last byte was read for a
    /// received one.
    pub time_micros: u64,
    /// Which way it went.
    pub direction: TranscriptDirection,
    /// The message type, NUL padding removed.
    pub msg_type: String,
    /// The exact payload bytes.
    pub payload: Vec<u8>,
}

/// Every message sent and received on a connection, in order: the reference
/// a test compares peerlog's capture with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    entries: Vec<TranscriptEntry>,
}

impl Transcript {
    /// An empty transcript.
    pub fn new() -> Transcript {
        Transcript::default()
    }

    /// Appends an entry (for code that builds transcripts from elsewhere,
    /// e.g. a replay).
    pub fn push(&mut self, entry: TranscriptEntry) {
        self.entries.push(entry);
    }

    /// All entries, in the order the messages were sent or received.
    pub fn entries(&self) -> &[TranscriptEntry] {
        &self.entries
    }

    /// The messages we sent, in order.
    pub fn sent(&self) -> impl Iterator<Item = &TranscriptEntry> {
        self.entries
            .iter()
            .filter(|e| e.direction == TranscriptDirection::Sent)
    }

    /// The messages we received, in order.
    pub fn received(&self) -> impl Iterator<Item = &TranscriptEntry> {
        self.entries
            .iter()
            .filter(|e| e.direction == TranscriptDirection::Received)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets all entries (e.g. to keep only the traffic of one test step).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}
