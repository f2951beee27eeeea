//! Per-peer resource accounting: turns events into figures, per peer and for
//! the whole node.
//!
//! Every event of a trace goes through [`Collector::handle`]. Figures come
//! from three sources:
//! - the message tracepoints: messages and payload bytes by message type and
//!   direction, and what the payloads say (`inv`/`getdata`/`notfound`
//!   transaction entries, `tx` ids, `ping`/`pong` nonces, `sendcmpct`,
//!   `addr`/`addrv2` entry counts), read with the `bitcoin` crate
//!   ([`payload`]), and the entries over Bitcoin Core's address rate limit,
//!   replayed per peer ([`addr`]);
//! - CPU slices of the message handler ([`CpuSlice`]): wall and on-CPU time
//!   per peer while processing its messages and while working for it
//!   otherwise (see [`peerlog_common::SliceKind`]), and per message type;
//! - bitcoind's own byte counters of each connection (`CNode::nRecvBytes`,
//!   `nSendBytes`), read from its memory ([`crate::elf::layout`]);
//! - the `mempool:*` and `validation:block_connected` tracepoints, which the
//!   kernel attributes to the peer whose message the thread took last; a
//!   transaction is attributed to the peer that sent it, by txid.
//!
//! The figures of a peer hang off its entry in the one peer table
//! ([`crate::peers`]), which owns who the peer is and its connection's
//! lifecycle, and keeps a closed peer until every periodic output has
//! reported it once more; totals keep counting what dropped peers did.
//!
//! What the attached probes cannot measure is said, not zeroed: the
//! [`Coverage`] names the missing figures, and they are `null` in the JSON.

mod addr;
pub mod card;
pub mod compact;
mod coverage;
mod figures;
mod hist;
mod json;
pub mod matcher;
mod output;
pub mod payload;
mod readings;
mod recent;
mod report;
mod series;

use std::collections::HashMap;

use bitcoin::hashes::Hash;
use peerlog_common::{Direction, MempoolEventKind, SliceKind};
use serde::Serialize;

pub use coverage::{Coverage, NOT_MEASURED};
pub use figures::{
    msg_type_key, AddrFigures, BlockFigures, Figures, MempoolFigures, MsgTypeFigures, MsgTypeHists,
    PingFigures, SliceTotals, Slices, Traffic, TxRelay, MSG_TYPES, OTHER,
};
pub use hist::{HdrLog, Hist, HistSummary};
pub use json::StatsFilter;
pub use readings::NodeReadings;
pub use report::{check_msg_types, find_thread, thread_cpu_ns, ReportOptions, Reporter};
pub use series::{PeerSeries, PeersBy, DEFAULT_CLOSED_GRACE_S, DEFAULT_MAX_PEERS};

use crate::{
    clock::WallClock,
    elf::layout::CounterReader,
    event::{BlockConnected, Connection, CpuSlice, Event, MempoolChange, Message},
    peers::{self, NodeBytes, PeerTable, ReportSink, ReportSinks},
};
use addr::AddrBucket;
use matcher::Pending;
use payload::{CompactMode, Facts, Parsed, TxHash};
use recent::Recent;

/// Distinct rejection reasons counted per peer; further reasons go to `*other*`.
const REJECT_REASONS_MAX: usize = 32;
/// Distinct rejection reasons counted for the whole node.
const NODE_REJECT_REASONS_MAX: usize = 128;
/// Our outstanding `getdata` transaction requests remembered per peer.
/// Bitcoin Core keeps at most 100 in flight per peer (MAX_PEER_TX_REQUEST_IN_FLIGHT).
const PENDING_GETDATA_MAX: usize = 5000;
/// A request older than this is forgotten when the table is full; Bitcoin
/// Core gives up on a peer's answer after 60 s (GETDATA_TX_INTERVAL).
const PENDING_GETDATA_EXPIRY_NS: u64 = 600 * 1_000_000_000;
/// Our unanswered pings remembered per peer (Bitcoin Core has one in flight).
const PENDING_PINGS_MAX: usize = 16;
/// Transactions remembered with the peer that sent them, to attribute the
/// mempool's verdict to the sender (the oldest are forgotten first).
const TX_SENDERS_MAX: usize = 100_000;
/// Transaction hashes remembered with who announced them first. A txid and
/// a wtxid each take an entry, so twice [`TX_SENDERS_MAX`].
const FIRST_SEEN_MAX: usize = 2 * TX_SENDERS_MAX;
/// A transaction hash as the bounded tables keep it: its first 16 bytes,
/// half the memory of the whole hash in tables of 300,000. As good a key:
/// two hashes of a double SHA-256 share 128 bits only by chance (one in
/// 2^128 a pair), and making two transactions that do takes some 2^64
/// hashes, for what would be one announcement counted wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TxKey(u128);

impl From<&TxHash> for TxKey {
    fn from(hash: &TxHash) -> Self {
        let (first, _) = hash.split_at(16);
        Self(u128::from_le_bytes(first.try_into().expect("16 bytes")))
    }
}

/// Who announced a transaction first: us, for a transaction bitcoind
/// announced before any peer did (one from RPC or the wallet).
const OURSELVES: i64 = -1;

/// The first announcement of a transaction hash: by whom, when (ktime ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FirstSeen {
    peer: i64,
    ktime_ns: u64,
}
/// A peer unanswered pings are forgotten after, when the table is full:
/// Bitcoin Core disconnects a peer whose `pong` is 20 minutes late
/// (TIMEOUT_INTERVAL).
const PENDING_PINGS_EXPIRY_NS: u64 = 20 * 60 * 1_000_000_000;

/// What peerlog measured of one peer: its figures, and what the payloads
/// told that later messages are matched against. Who the peer is lives in
/// its [`peers::Peer`].
#[derive(Debug, Clone)]
pub struct PeerStats {
    /// What the peer did.
    pub figures: Figures,
    /// The compact block mode the peer asked us for (its last `sendcmpct`).
    pub sendcmpct_recv: Option<CompactMode>,
    /// The compact block mode we asked the peer for.
    pub sendcmpct_sent: Option<CompactMode>,
    /// Message type of the peer's message most recently taken for
    /// processing: what a block connected for the peer came in.
    last_inbound: Option<&'static str>,
    /// Our `getdata` transaction requests, by hash (ktime ns).
    getdata: Pending<TxHash>,
    /// Our pings, by nonce (ktime ns).
    pings: Pending<u64>,
    /// Unix seconds of the first of the consecutive readings of bitcoind's
    /// memory that found the peer's send queue full; None when the last
    /// reading found it below, or could not read it.
    send_queue_full_since: Option<u64>,
    /// Bitcoin Core's address rate limit for the peer, replayed.
    addr_bucket: AddrBucket,
}

impl PeerStats {
    fn new(intervals: bool) -> Self {
        Self {
            figures: Figures::new(intervals),
            sendcmpct_recv: None,
            sendcmpct_sent: None,
            last_inbound: None,
            getdata: Pending::new(PENDING_GETDATA_MAX, PENDING_GETDATA_EXPIRY_NS),
            pings: Pending::new(PENDING_PINGS_MAX, PENDING_PINGS_EXPIRY_NS),
            send_queue_full_since: None,
            addr_bucket: AddrBucket::default(),
        }
    }

    /// Our `getdata` transaction requests still waiting for their `tx`.
    pub fn getdata_tx_pending(&self) -> usize {
        self.getdata.len()
    }
}

/// A peer of the table with its figures.
pub type PeerEntry = peers::Entry<PeerStats>;

/// Node-wide figures that belong to no peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Unattributed {
    /// Mempool events outside any peer's processing (RPC, reorgs, expiry).
    pub mempool_events: u64,
    /// Blocks connected outside any peer's processing (e.g. `submitblock`).
    pub blocks_connected: u64,
}

/// Events seen, by kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EventCounts {
    /// Messages (complete or not).
    pub messages: u64,
    /// Connection events.
    pub connections: u64,
    /// Misbehaviour reports.
    pub misbehaving: u64,
    /// CPU slices.
    pub slices: u64,
    /// Mempool events.
    pub mempool: u64,
    /// Blocks connected.
    pub blocks: u64,
}

/// The peer state of a trace: the peer table, and the figures that hang off
/// it; turns events into figures.
pub struct Collector {
    clock: WallClock,
    coverage: Coverage,
    peers: PeerTable<PeerStats>,
    total: Figures,
    unattributed: Unattributed,
    events: EventCounts,
    /// Transactions peers relayed into the mempool: txid → (peer, vsize).
    relayed: HashMap<bitcoin::Txid, (i64, u64)>,
    /// Transactions received: txid → the peer that sent it last.
    tx_senders: Recent<TxKey, i64>,
    /// Transaction hashes (txids and wtxids) → their first announcement,
    /// by a peer (`inv`, or a `tx` nobody announced) or by us.
    first_seen: Recent<TxKey, FirstSeen>,
    /// Reads bitcoind's per-connection byte counters, when its `CNode`
    /// layout is known.
    counters: Option<CounterReader>,
    /// Final byte counters of the closed peers no longer kept.
    dropped_bytes: NodeBytes,
    /// bitcoind's process id, for its resident set size; None while no
    /// process is traced.
    pid: Option<u32>,
    /// bitcoind processes traced so far (`--follow` traces one after the other).
    attaches: u64,
}

impl Collector {
    /// A collector for a trace with this coverage. `intervals` keeps
    /// interval histograms for `--hdr-log`; `sinks` are the outputs that
    /// report closed peers once more.
    pub fn new(clock: WallClock, coverage: Coverage, intervals: bool, sinks: ReportSinks) -> Self {
        Self {
            clock,
            coverage,
            peers: PeerTable::new(sinks, PeerStats::new(intervals)),
            total: Figures::new(intervals),
            unattributed: Unattributed::default(),
            events: EventCounts::default(),
            relayed: HashMap::new(),
            tx_senders: Recent::new(TX_SENDERS_MAX),
            first_seen: Recent::new(FIRST_SEEN_MAX),
            counters: None,
            dropped_bytes: NodeBytes::default(),
            pid: None,
            attaches: 0,
        }
    }

    /// Converts the times of the events that come next with `clock`: the
    /// trace samples the wall clock's offset anew as it reads them.
    pub fn set_clock(&mut self, clock: WallClock) {
        self.clock = clock;
    }

    /// The clock that converts the trace's times to wall-clock time: the
    /// one of the trace, for its other outputs too.
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// Starts on bitcoind process `pid`, with the coverage of its probes and
    /// a reader of its byte counters: the trace's first process, or the next
    /// one `--follow` found. The peers of the previous process (closed by
    /// [`Collector::detach_process`]) go, their figures staying in the
    /// totals: the new process numbers its peers from 0 again.
    pub fn attach_process(
        &mut self,
        pid: u32,
        coverage: Coverage,
        counters: Option<CounterReader>,
    ) {
        let dropped = self.peers.drain();
        self.forget(dropped);
        self.pid = Some(pid);
        self.coverage = coverage;
        self.counters = counters;
        self.attaches += 1;
    }

    /// The traced process exited: every peer of it is closed with its final
    /// figures, and what was matched by peer id (transactions and their
    /// senders, pending requests) is forgotten. The transactions peers
    /// relayed left that process's mempool with it.
    pub fn detach_process(&mut self) {
        for id in self.peers.close_all() {
            if let Some(e) = self.peers.get_mut(id) {
                e.stats.getdata.clear();
                e.stats.pings.clear();
            }
        }
        let relayed: Vec<bitcoin::Txid> = self.relayed.keys().copied().collect();
        for txid in relayed {
            self.mempool_left(&txid);
        }
        self.tx_senders.clear();
        self.first_seen.clear();
        self.pid = None;
        self.counters = None;
    }

    /// The process traced now, if any.
    pub fn process(&self) -> Option<u32> {
        self.pid
    }

    /// bitcoind processes traced so far, the current one included.
    pub fn attaches(&self) -> u64 {
        self.attaches
    }

    /// bitcoind's resident set size in bytes (`VmRSS` of
    /// `/proc/PID/status`); None when it cannot be read.
    fn node_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        vm_rss_bytes(&status)
    }

    /// What the probes cover.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// Node-wide figures.
    pub fn total(&self) -> &Figures {
        &self.total
    }

    /// Figures that belong to no peer.
    pub fn unattributed(&self) -> &Unattributed {
        &self.unattributed
    }

    /// Events seen.
    pub fn events(&self) -> EventCounts {
        self.events
    }

    /// The peer with this id, if kept.
    pub fn peer(&self, id: i64) -> Option<&PeerEntry> {
        self.peers.get(id)
    }

    /// The peer table.
    pub fn peers(&self) -> &PeerTable<PeerStats> {
        &self.peers
    }

    /// Applies the peer filter's verdict to a peer; true when it changed.
    pub fn set_selected(&mut self, id: i64, selected: bool) -> bool {
        self.peers.set_selected(id, selected)
    }

    /// Accounts one event. Returns the peer the event named, if it did:
    /// from now on the peer filter can be applied to it.
    pub fn handle(&mut self, event: &Event) -> Option<i64> {
        match event {
            Event::Message(m) => return self.on_message(m),
            Event::IncompleteMessage(i) => return self.on_message(&i.message),
            Event::Connection(c) => return self.on_connection(c),
            Event::Misbehaving(m) => {
                self.events.misbehaving += 1;
                self.observe(m.peer_id, m.ktime_ns).figures.misbehaving += 1;
                self.total.misbehaving += 1;
            }
            Event::CpuSlice(s) => self.on_slice(s),
            Event::Mempool(m) => self.on_mempool(m),
            Event::BlockConnected(b) => self.on_block(b),
            // Stack samples are for flamegraphs; CPU time comes from the slices.
            Event::CpuSample(_) => {}
        }
        None
    }

    /// The figures of the peer an event at `ktime_ns` that does not name it
    /// attributes to it: it may be the first thing seen of a peer connected
    /// before peerlog attached.
    fn observe(&mut self, id: i64, ktime_ns: u64) -> &mut PeerStats {
        let unix = self.clock.unix_micros(ktime_ns) / 1_000_000;
        &mut self.peers.observe(id, "", "", unix).0.stats
    }

    /// Runs `f` on the figures of `peer` (if it is known) and on the totals.
    fn both(&mut self, peer: Option<i64>, mut f: impl FnMut(&mut Figures)) {
        if let Some(e) = peer.and_then(|id| self.peers.get_mut(id)) {
            f(&mut e.stats.figures);
        }
        f(&mut self.total);
    }

    fn on_message(&mut self, m: &Message) -> Option<i64> {
        self.events.messages += 1;
        let key = msg_type_key(&m.msg_type);
        let unix = self.clock.unix_micros(m.ktime_ns) / 1_000_000;
        let (entry, seen) = self.peers.observe(m.peer_id, &m.addr, &m.conn_type, unix);
        let peer = &mut entry.stats;
        peer.figures
            .count_message(m.direction, key, m.payload_size, false);
        if m.direction == Direction::Inbound {
            peer.last_inbound = Some(key);
        }
        peer.addr_bucket.first_message(key, m.ktime_ns);
        match (m.direction, key) {
            (Direction::Inbound, "verack") => peer.addr_bucket.verack(),
            (Direction::Outbound, "getaddr") => peer.addr_bucket.getaddr_sent(),
            _ => {}
        }
        self.peers.learn_cnode(m.peer_id, m.cnode);
        self.total
            .count_message(m.direction, key, m.payload_size, true);
        match payload::parse(&m.msg_type, m.payload.as_deref()) {
            Parsed::NotNeeded => {}
            Parsed::Missing => self.both(Some(m.peer_id), |f| f.payloads_missing += 1),
            Parsed::Undecodable => self.both(Some(m.peer_id), |f| f.payloads_undecodable += 1),
            Parsed::Facts(facts) => self.on_facts(m, key, facts),
        }
        seen.named.then_some(m.peer_id)
    }

    fn on_facts(&mut self, m: &Message, key: &'static str, facts: Facts) {
        use Direction::{Inbound, Outbound};
        let (id, direction, ktime_ns) = (m.peer_id, m.direction, m.ktime_ns);
        if self.peers.get_mut(id).is_none() {
            return;
        }
        match (&facts, direction) {
            (Facts::Inventory { tx_hashes }, Inbound) if key == "inv" => {
                self.announced(id, tx_hashes, ktime_ns);
            }
            (Facts::Inventory { tx_hashes }, Outbound) if key == "inv" => {
                self.announced(OURSELVES, tx_hashes, ktime_ns);
            }
            (Facts::Tx { txid, wtxid }, Inbound) => self.tx_arrived(id, *txid, *wtxid, ktime_ns),
            _ => {}
        }
        let Some(entry) = self.peers.get_mut(id) else {
            return;
        };
        // Bitcoin Core does not relay addresses with block-relay-only peers.
        let addr_relay = entry.peer.conn_type != "block-relay-only";
        let peer = &mut entry.stats;
        let mut relay = TxRelay::default();
        let mut addr = AddrFigures::default();
        let (mut pings_sent, mut pings_recv, mut rtt, mut latency) = (0, 0, None, None);
        match facts {
            Facts::Inventory { tx_hashes } => {
                let n = tx_hashes.len() as u64;
                match (key, direction) {
                    ("inv", Inbound) => relay.inv_recv = n,
                    ("inv", Outbound) => relay.inv_sent = n,
                    ("getdata", Inbound) => relay.getdata_recv = n,
                    ("getdata", Outbound) => {
                        relay.getdata_sent = n;
                        for hash in &tx_hashes {
                            peer.getdata.ask(*hash, ktime_ns);
                        }
                    }
                    ("notfound", Inbound) => {
                        relay.notfound_recv = n;
                        for hash in &tx_hashes {
                            peer.getdata.forget(hash);
                        }
                    }
                    ("notfound", Outbound) => relay.notfound_sent = n,
                    _ => {}
                }
            }
            Facts::Tx { txid, wtxid } => match direction {
                Inbound => {
                    relay.tx_recv = 1;
                    let bytes = m.payload_size;
                    // Seen arrive before, or in the mempool from elsewhere.
                    let arrived_before = self.tx_senders.insert(TxKey::from(&txid), id);
                    let known = arrived_before.is_some()
                        || self
                            .relayed
                            .contains_key(&bitcoin::Txid::from_byte_array(txid));
                    if known {
                        relay.tx_recv_duplicate = 1;
                        relay.tx_recv_duplicate_bytes = bytes;
                    }
                    latency = peer.getdata.answer(&[txid, wtxid], ktime_ns);
                    if latency.is_none() {
                        relay.tx_recv_unsolicited = 1;
                        relay.tx_recv_unsolicited_bytes = bytes;
                    }
                }
                Outbound => relay.tx_sent = 1,
            },
            Facts::Ping(nonce) => match direction {
                Outbound => {
                    pings_sent = 1;
                    peer.pings.ask(nonce, ktime_ns);
                }
                Inbound => pings_recv = 1,
            },
            Facts::Pong(nonce) => {
                if direction == Inbound {
                    rtt = peer.pings.answer(&[nonce], ktime_ns);
                }
            }
            Facts::SendCmpct(mode) => match direction {
                Inbound => peer.sendcmpct_recv = Some(mode),
                Outbound => peer.sendcmpct_sent = Some(mode),
            },
            Facts::Addr { entries } => {
                if direction == Inbound {
                    addr = AddrFigures {
                        msgs_recv: 1,
                        entries_recv: entries,
                        rate_limited: peer.addr_bucket.addr(entries, ktime_ns, addr_relay),
                    };
                }
            }
        }
        self.both(Some(id), |f| {
            f.tx_relay.add(&relay);
            f.addr_relay.add(&addr);
            f.ping.pings_sent += pings_sent;
            f.ping.pings_recv += pings_recv;
            if let Some(ns) = rtt {
                f.ping.matched(ns);
            }
            if let Some(ns) = latency {
                f.getdata_tx_latency_ns.record(ns);
            }
        });
    }

    /// `who` (a peer, or [`OURSELVES`]) announced `tx_hashes`: a hash no
    /// one announced before is the announcer's first announcement.
    fn announced(&mut self, who: i64, tx_hashes: &[TxHash], ktime_ns: u64) {
        let mut first = 0;
        for hash in tx_hashes {
            if !self.first_seen.contains(&TxKey::from(hash)) {
                let seen = FirstSeen {
                    peer: who,
                    ktime_ns,
                };
                self.first_seen.insert(TxKey::from(hash), seen);
                first += 1;
            }
        }
        if who != OURSELVES && first > 0 {
            self.both(Some(who), |f| f.tx_relay.announced_first += first);
        }
    }

    /// Peer `id` sent transaction `txid`/`wtxid`. One peer may have
    /// announced it by txid and another by wtxid; now that both hashes are
    /// known to be one transaction, only the earlier announcement is first.
    /// A transaction nobody announced is the sender's first announcement.
    fn tx_arrived(&mut self, id: i64, txid: TxHash, wtxid: TxHash, ktime_ns: u64) {
        let by_txid = self.first_seen.get(&TxKey::from(&txid)).copied();
        let by_wtxid = self.first_seen.get(&TxKey::from(&wtxid)).copied();
        let first = match (by_txid, by_wtxid) {
            (None, None) => {
                self.both(Some(id), |f| f.tx_relay.announced_first += 1);
                FirstSeen { peer: id, ktime_ns }
            }
            (Some(seen), None) | (None, Some(seen)) => seen,
            (Some(a), Some(b)) => {
                let (first, later) = if (b.ktime_ns, b.peer) < (a.ktime_ns, a.peer) {
                    (b, a)
                } else {
                    (a, b)
                };
                if later.peer != first.peer && later.peer != OURSELVES {
                    self.both(Some(later.peer), |f| {
                        f.tx_relay.announced_first = f.tx_relay.announced_first.saturating_sub(1);
                    });
                }
                first
            }
        };
        self.first_seen.insert(TxKey::from(&txid), first);
        self.first_seen.insert(TxKey::from(&wtxid), first);
    }

    fn on_connection(&mut self, c: &Connection) -> Option<i64> {
        self.events.connections += 1;
        let unix = self.clock.unix_micros(c.ktime_ns) / 1_000_000;
        let seen = self.peers.connection(c, unix);
        if seen.closed {
            if let Some(e) = self.peers.get_mut(c.peer_id) {
                // Answers that can no longer come.
                e.stats.getdata.clear();
                e.stats.pings.clear();
            }
            let dropped = self.peers.prune();
            self.forget(dropped);
        }
        seen.named.then_some(c.peer_id)
    }

    /// Keeps the final byte counters of peers the table dropped.
    fn forget(&mut self, dropped: Vec<PeerEntry>) {
        for e in dropped {
            if let Some(b) = e.peer.final_bytes {
                self.dropped_bytes.recv += b.recv;
                self.dropped_bytes.sent += b.sent;
            }
        }
    }

    fn on_slice(&mut self, s: &CpuSlice) {
        self.events.slices += 1;
        let key = (s.kind == SliceKind::Processing).then(|| msg_type_key(&s.msg_type));
        self.observe(s.peer_id, s.start_ktime_ns)
            .figures
            .count_slice(s, key, false);
        self.total.count_slice(s, key, true);
    }

    fn on_mempool(&mut self, m: &MempoolChange) {
        self.events.mempool += 1;
        // The kernel names the peer whose message the handler took last; a
        // transaction accepted or rejected belongs to the peer that sent it,
        // which differs for an orphan accepted once its parent came in from
        // another peer.
        let sender = match m.kind {
            MempoolEventKind::Added | MempoolEventKind::Rejected => self
                .tx_senders
                .get(&TxKey::from(&m.txid.to_byte_array()))
                .copied(),
            _ => None,
        };
        let m = &MempoolChange {
            peer_id: sender.or(m.peer_id),
            ..m.clone()
        };
        if m.peer_id.is_none() {
            self.unattributed.mempool_events += 1;
        }
        if let Some(id) = m.peer_id {
            self.observe(id, m.ktime_ns);
        }
        let vsize = u64::try_from(m.vsize).unwrap_or(0);
        match m.kind {
            MempoolEventKind::Added => {
                self.both(m.peer_id, |f| {
                    f.mempool.accepted += 1;
                    f.mempool.in_mempool_txs += 1;
                    f.mempool.in_mempool_vsize += vsize;
                });
                let first = self
                    .first_seen
                    .get(&TxKey::from(&m.txid.to_byte_array()))
                    .map(|seen| seen.peer)
                    .filter(|&peer| peer != OURSELVES);
                if first.is_some() {
                    self.both(first, |f| f.tx_relay.announced_first_accepted += 1);
                }
                if let Some(id) = m.peer_id {
                    self.relayed.insert(m.txid, (id, vsize));
                } else {
                    // Counted in the totals: remember it to take it out again.
                    self.relayed.insert(m.txid, (-1, vsize));
                }
            }
            MempoolEventKind::Rejected => {
                if let Some(e) = m.peer_id.and_then(|id| self.peers.get_mut(id)) {
                    e.stats
                        .figures
                        .count_rejection(&m.reason, REJECT_REASONS_MAX);
                }
                self.total
                    .count_rejection(&m.reason, NODE_REJECT_REASONS_MAX);
            }
            MempoolEventKind::Replaced => {
                self.both(m.peer_id, |f| f.mempool.replacements += 1);
                if let Some(owner) = self.mempool_left(&m.txid) {
                    if let Some(e) = self.peers.get_mut(owner) {
                        e.stats.figures.mempool.replaced += 1;
                    }
                    self.total.mempool.replaced += 1;
                }
            }
            // Bitcoin Core fires `removed` for replaced transactions too,
            // after `replaced`: each leaves once.
            MempoolEventKind::Removed => {
                self.mempool_left(&m.txid);
            }
        }
    }

    /// Takes a transaction some peer relayed out of the mempool figures;
    /// returns that peer, if the transaction was one peerlog saw come in.
    fn mempool_left(&mut self, txid: &bitcoin::Txid) -> Option<i64> {
        let (owner, vsize) = self.relayed.remove(txid)?;
        let owner = (owner >= 0).then_some(owner);
        self.both(owner, |f| f.mempool_left(vsize));
        owner
    }

    fn on_block(&mut self, b: &BlockConnected) {
        self.events.blocks += 1;
        let Some(id) = b.peer_id else {
            self.unattributed.blocks_connected += 1;
            return;
        };
        let via = self.observe(id, b.ktime_ns).last_inbound;
        let served = matches!(via, Some("block" | "cmpctblock" | "blocktxn"));
        self.both(Some(id), |f| {
            if served {
                f.blocks.new_blocks += 1;
            } else {
                f.blocks.connected_other += 1;
            }
        });
    }

    /// Notes that `sink` reported every closed peer (it ran past them, shown
    /// or filtered out), and drops the closed peers nobody owes a report.
    pub fn reported(&mut self, sink: ReportSink) {
        let dropped = self.peers.reported(sink);
        self.forget(dropped);
    }

    /// Every interval histogram (`--hdr-log`), with its figure name and tag:
    /// none for the whole node, `peer=<id>`, `msg_type=<type>`. Empty ones
    /// are skipped, except the node's.
    pub fn interval_hists(&mut self) -> Vec<(&'static str, Option<String>, &mut Hist)> {
        let mut out = Vec::new();
        let (node, per_msg) = self.total.hists_mut();
        for (figure, h) in node {
            out.push((figure, None, h));
        }
        for (key, per_msg) in per_msg {
            if let Some(hists) = per_msg.hists.as_deref_mut() {
                for (figure, h) in hists.hists_mut() {
                    if h.interval().is_some_and(|i| !i.is_empty()) {
                        out.push((figure, Some(format!("msg_type={key}")), h));
                    }
                }
            }
        }
        for e in self.peers.iter_mut() {
            for (figure, h) in e.stats.figures.hists_mut().0 {
                if h.interval().is_some_and(|i| !i.is_empty()) {
                    out.push((figure, Some(format!("peer={}", e.peer.id)), h));
                }
            }
        }
        out
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes (the kernel gives kB).
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests;
