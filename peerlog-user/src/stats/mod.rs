//! Per-peer resource accounting: turns events into figures, per peer and for
//! the whole node.
//!
//! Every event of a trace goes through [`Collector::handle`]. Figures come
//! from three sources:
//! - the message tracepoints: messages and payload bytes by message type and
//!   direction, and what the payloads say (`inv`/`getdata`/`notfound`
//!   transaction entries, `tx` ids, `ping`/`pong` nonces, `sendcmpct`), read
//!   with the `bitcoin` crate ([`payload`]);
//! - CPU slices of the message handler ([`CpuSlice`]): wall and on-CPU time
//!   per peer while processing its messages and while working for it
//!   otherwise (see [`peerlog_common::SliceKind`]), and per message type;
//! - bitcoind's own byte counters of each connection (`CNode::nRecvBytes`,
//!   `nSendBytes`), read from its memory ([`crate::elf::layout`]);
//! - the `mempool:*` and `validation:block_connected` tracepoints, which the
//!   kernel attributes to the peer whose message the thread took last; a
//!   transaction is attributed to the peer that sent it, by txid.
//!
//! A peer's figures are kept after it disconnects until every periodic
//! output (stats log, metrics) has reported it once more, closed
//! ([`Sinks`]); totals keep counting what the dropped peers did.
//!
//! What the attached probes cannot measure is said, not zeroed: the
//! [`Coverage`] names the missing figures, and they are `null` in the JSON.

mod hist;
mod json;
pub mod payload;
mod report;

use std::collections::{BTreeMap, HashMap, VecDeque};

use peerlog_common::{ConnectionEventKind, Direction, MempoolEventKind, SliceKind};
use serde::Serialize;

pub use hist::{HdrLog, Hist, HistSummary};
pub use json::StatsFilter;
pub use report::{check_msg_types, find_thread, thread_cpu_ns, Reporter, StatsArgs, StatsOptions};

use crate::{
    clock::WallClock,
    elf::layout::CounterReader,
    event::{BlockConnected, Connection, CpuSlice, Event, MempoolChange, Message},
    peer::{Network, PeerIdentity, Traffic},
};
use payload::{CompactMode, Facts, Parsed, TxHash};

/// What the attached probes can measure beyond the `net:*` tracepoints,
/// which are always attached (derived from [`crate::probes::Coverage`]);
/// figures of what is not covered are reported as missing, never as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Whether the message handler's time is cut into per-peer CPU slices
    /// (the accounting is on and the `sched_switch` hook is attached).
    pub slices: bool,
    /// Whether bitcoind's per-connection byte counters are read (its `CNode`
    /// layout is known from DWARF).
    pub node_counters: bool,
    /// Whether the `mempool:*` tracepoints are attached.
    pub mempool: bool,
    /// Whether `validation:block_connected` is attached.
    pub block_connected: bool,
    /// Why something is not measured, in words (e.g. "bytesrecv: no DWARF:
    /// the binary is stripped ...; give one with --debug-file").
    pub notes: Vec<String>,
}

impl From<&crate::probes::Coverage> for Coverage {
    /// What the statistics can measure, from what the probes attached.
    fn from(probes: &crate::probes::Coverage) -> Self {
        let attached = |tracepoint: &str| probes.tracepoints.iter().any(|t| t == tracepoint);
        let mut notes = Vec::new();
        if let Some(why) = &probes.oncpu_missing {
            notes.push(format!("per-peer CPU: {why}"));
        }
        if let Some(why) = &probes.cnode_layout_missing {
            notes.push(format!("bytesrecv, bytessent: {why}"));
        }
        notes.extend(
            probes
                .missing_tracepoints
                .iter()
                .map(|t| format!("{t}: not in this bitcoind")),
        );
        Self {
            slices: probes.slices && probes.oncpu_missing.is_none(),
            node_counters: probes.cnode_layout.is_some(),
            mempool: ["added", "removed", "replaced", "rejected"]
                .iter()
                .all(|name| attached(&format!("mempool:{name}"))),
            block_connected: attached("validation:block_connected"),
            notes,
        }
    }
}

/// Figures peerlog gives up by design, each with the reason: measuring them
/// would cost the node a probe hit per socket call or per message.
pub const NOT_MEASURED: [&str; 2] = [
    "queueing delay per message type: needs a probe on ProcessMessage, one more probe hit in bitcoind per message",
    "b-net CPU per peer (receiving, BIP324 decryption, sending): needs probes on CNode::ReceiveMsgBytes and CConnman::SocketSendData, two more probe hits per message",
];

impl Coverage {
    /// The figures the attached probes cannot give, each with the reason.
    pub fn missing_figures(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let mut need = |ok: bool, what: &str, why: &str| {
            if !ok {
                missing.push(format!("{what}: {why}"));
            }
        };
        let note = |prefix: &str| {
            self.notes
                .iter()
                .find_map(|n| n.strip_prefix(prefix))
                .unwrap_or("not attached (--no-accounting)")
                .to_string()
        };
        need(
            self.slices,
            "processing, sending, cpu_ns, msghand_cpu_share, processing_per_msg",
            &note("per-peer CPU: "),
        );
        need(
            self.node_counters,
            "bytesrecv, bytessent",
            &note("bytesrecv, bytessent: "),
        );
        need(
            self.mempool,
            "mempool",
            "the mempool:* tracepoints are not attached",
        );
        need(
            self.block_connected,
            "blocks",
            "validation:block_connected is not attached",
        );
        missing.extend(NOT_MEASURED.iter().map(|s| s.to_string()));
        missing
    }
}

/// Outputs that report every closed peer once more, as bits of
/// [`Sinks`]. A closed peer is kept until each of them has reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The periodic stats log (`--stats-log`).
    StatsLog = 1,
    /// The Prometheus endpoint (`--metrics`).
    Metrics = 2,
}

/// A set of [`Sink`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sinks(u8);

impl Sinks {
    /// The set with `sink` added.
    pub fn with(self, sink: Sink) -> Self {
        Self(self.0 | sink as u8)
    }

    fn contains(self, sink: Sink) -> bool {
        self.0 & sink as u8 != 0
    }

    fn without(self, sink: Sink) -> Self {
        Self(self.0 & !(sink as u8))
    }
}

/// Closed peers kept for `getpeerstats` after every sink reported them,
/// most recently closed first: enough to look at a peer that just left.
const CLOSED_PEERS_KEPT: usize = 64;
/// Closed peers kept at most, reported or not, so that a sink nobody reads
/// (a metrics endpoint never scraped) cannot make memory grow without bound.
const CLOSED_PEERS_MAX: usize = 1024;
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

/// Bitcoin Core's message types (`ALL_NET_MESSAGE_TYPES` in protocol.h).
/// Every other type is counted as [`OTHER`], as `getpeerinfo` does, which
/// keeps the per-type tables bounded whatever peers send.
pub const MSG_TYPES: [&str; 35] = [
    "version",
    "verack",
    "addr",
    "addrv2",
    "sendaddrv2",
    "inv",
    "getdata",
    "merkleblock",
    "getblocks",
    "getheaders",
    "tx",
    "headers",
    "block",
    "getaddr",
    "mempool",
    "ping",
    "pong",
    "notfound",
    "filterload",
    "filteradd",
    "filterclear",
    "sendheaders",
    "feefilter",
    "sendcmpct",
    "cmpctblock",
    "getblocktxn",
    "blocktxn",
    "getcfilters",
    "cfilter",
    "getcfheaders",
    "cfheaders",
    "getcfcheckpt",
    "cfcheckpt",
    "wtxidrelay",
    "sendtxrcncl",
];
/// The key of message types Bitcoin Core does not know (`NET_MESSAGE_TYPE_OTHER`).
pub const OTHER: &str = "*other*";

/// The bounded key a message type is counted under.
pub fn msg_type_key(msg_type: &str) -> &'static str {
    MSG_TYPES
        .iter()
        .find(|t| **t == msg_type)
        .copied()
        .unwrap_or(OTHER)
}

/// CPU slices: how many, their wall time and on-CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SliceTotals {
    /// Slices.
    pub slices: u64,
    /// Nanoseconds from start to end, summed.
    pub wall_ns: u64,
    /// Nanoseconds on a CPU, summed over the slices where it was measured.
    pub cpu_ns: u64,
    /// Slices whose on-CPU time was not measured.
    pub slices_without_cpu: u64,
}

impl SliceTotals {
    fn add(&mut self, wall_ns: u64, cpu_ns: Option<u64>) {
        self.slices += 1;
        self.wall_ns += wall_ns;
        match cpu_ns {
            Some(ns) => self.cpu_ns += ns,
            None => self.slices_without_cpu += 1,
        }
    }
}

/// The message handler's slices of one kind for a peer, with the
/// distribution of their times.
#[derive(Debug, Clone, Serialize)]
pub struct Slices {
    /// Sums.
    #[serde(flatten)]
    pub totals: SliceTotals,
    /// Wall time per slice, ns.
    pub wall_ns_per_slice: Hist,
    /// On-CPU time per slice, ns.
    pub cpu_ns_per_slice: Hist,
}

impl Slices {
    fn new(intervals: bool) -> Self {
        Self {
            totals: SliceTotals::default(),
            wall_ns_per_slice: Hist::new(intervals),
            cpu_ns_per_slice: Hist::new(intervals),
        }
    }

    fn add(&mut self, wall_ns: u64, cpu_ns: Option<u64>) {
        self.totals.add(wall_ns, cpu_ns);
        self.wall_ns_per_slice.record(wall_ns);
        if let Some(ns) = cpu_ns {
            self.cpu_ns_per_slice.record(ns);
        }
    }
}

/// bitcoind's own byte counters of a connection, as `getpeerinfo` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeBytes {
    /// `CNode::nRecvBytes`: `bytesrecv`.
    pub recv: u64,
    /// `CNode::nSendBytes`: `bytessent`.
    pub sent: u64,
}

/// Distributions kept per message type for the whole node.
#[derive(Debug, Clone)]
pub struct MsgTypeHists {
    /// Payload sizes received, bytes.
    pub payload_recv: Hist,
    /// Payload sizes sent, bytes.
    pub payload_sent: Hist,
    /// Wall time per processing slice, ns.
    pub wall: Hist,
    /// On-CPU time per processing slice, ns.
    pub cpu: Hist,
}

/// Figures of one message type.
#[derive(Debug, Clone, Default)]
pub struct MsgTypeFigures {
    /// Received.
    pub recv: Traffic,
    /// Sent.
    pub sent: Traffic,
    /// Processing slices of messages of this type.
    pub processing: SliceTotals,
    /// Distributions (node totals only; per peer they would cost too much memory).
    pub hists: Option<Box<MsgTypeHists>>,
}

/// Transaction inventory traffic, both directions: what the peer announced
/// and what we fetched from it, what we announced and what it fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TxRelay {
    /// Transaction entries (tx/wtx) in `inv` the peer sent: announced by them.
    pub inv_recv: u64,
    /// Transaction entries in our `getdata` to the peer: fetched from them.
    pub getdata_sent: u64,
    /// `tx` messages the peer sent.
    pub tx_recv: u64,
    /// Transaction entries in the peer's `notfound`: asked for, not served.
    pub notfound_recv: u64,
    /// Transaction entries in our `inv` to the peer: announced by us.
    pub inv_sent: u64,
    /// Transaction entries in the peer's `getdata`: fetched from us.
    pub getdata_recv: u64,
    /// `tx` messages we sent the peer.
    pub tx_sent: u64,
    /// Transaction entries in our `notfound` to the peer.
    pub notfound_sent: u64,
}

impl TxRelay {
    fn add(&mut self, o: &TxRelay) {
        self.inv_recv += o.inv_recv;
        self.getdata_sent += o.getdata_sent;
        self.tx_recv += o.tx_recv;
        self.notfound_recv += o.notfound_recv;
        self.inv_sent += o.inv_sent;
        self.getdata_recv += o.getdata_recv;
        self.tx_sent += o.tx_sent;
        self.notfound_sent += o.notfound_sent;
    }
}

/// What the peer's transactions did to our mempool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MempoolFigures {
    /// The peer's transactions accepted (`mempool:added`).
    pub accepted: u64,
    /// Transactions rejected (`mempool:rejected`).
    pub rejected: u64,
    /// Rejections by Bitcoin Core's reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Mempool transactions the peer's transactions replaced (`mempool:replaced`).
    pub replacements: u64,
    /// The peer's transactions that others replaced.
    pub replaced: u64,
    /// The peer's transactions still in the mempool.
    pub in_mempool_txs: u64,
    /// Their virtual size, vbytes: the mempool memory the peer accounts for.
    pub in_mempool_vsize: u64,
}

/// New blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BlockFigures {
    /// Blocks connected while processing the peer's `block`, `cmpctblock`
    /// or `blocktxn`: new blocks the peer served us first.
    pub new_blocks: u64,
    /// Blocks connected while processing another message of the peer (a
    /// block whose missing parent arrived later, for instance).
    pub connected_other: u64,
}

/// Pings we sent the peer and their round trips.
#[derive(Debug, Clone, Serialize)]
pub struct PingFigures {
    /// Our `ping`s to the peer.
    pub pings_sent: u64,
    /// The peer's `ping`s to us.
    pub pings_recv: u64,
    /// The peer's `pong`s that matched one of our pings by nonce.
    pub pongs_matched: u64,
    /// Round trip of the last matched ping, ns.
    pub last_rtt_ns: Option<u64>,
    /// Shortest round trip, ns.
    pub min_rtt_ns: Option<u64>,
    /// Round trips, ns.
    pub rtt_ns: Hist,
}

impl PingFigures {
    fn new(intervals: bool) -> Self {
        Self {
            pings_sent: 0,
            pings_recv: 0,
            pongs_matched: 0,
            last_rtt_ns: None,
            min_rtt_ns: None,
            rtt_ns: Hist::new(intervals),
        }
    }

    fn matched(&mut self, rtt_ns: u64) {
        self.pongs_matched += 1;
        self.last_rtt_ns = Some(rtt_ns);
        self.min_rtt_ns = Some(self.min_rtt_ns.map_or(rtt_ns, |m| m.min(rtt_ns)));
        self.rtt_ns.record(rtt_ns);
    }
}

/// The figures kept both per peer and for the whole node.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Messages and payload bytes received.
    pub recv: Traffic,
    /// Messages and payload bytes sent.
    pub sent: Traffic,
    /// By message type ([`msg_type_key`]).
    pub per_msg: BTreeMap<&'static str, MsgTypeFigures>,
    /// Payload sizes received, bytes.
    pub payload_recv: Hist,
    /// Payload sizes sent, bytes.
    pub payload_sent: Hist,
    /// The message handler's slices processing the peer's messages.
    pub processing: Slices,
    /// The message handler's slices working for the peer otherwise.
    pub sending: Slices,
    /// Mempool effects.
    pub mempool: MempoolFigures,
    /// New blocks.
    pub blocks: BlockFigures,
    /// Transaction inventory traffic.
    pub tx_relay: TxRelay,
    /// From our `getdata` for a transaction to the peer's `tx`, ns.
    pub getdata_tx_latency_ns: Hist,
    /// Pings.
    pub ping: PingFigures,
    /// `net:misbehaving_connection` reports.
    pub misbehaving: u64,
    /// Messages whose payload statistics read but which was not copied out
    /// of bitcoind or did not arrive whole: their facts are not counted.
    pub payloads_missing: u64,
    /// Payloads that did not decode as their message type.
    pub payloads_undecodable: u64,
}

impl Figures {
    fn new(intervals: bool) -> Self {
        Self {
            recv: Traffic::default(),
            sent: Traffic::default(),
            per_msg: BTreeMap::new(),
            payload_recv: Hist::new(intervals),
            payload_sent: Hist::new(intervals),
            processing: Slices::new(intervals),
            sending: Slices::new(intervals),
            mempool: MempoolFigures::default(),
            blocks: BlockFigures::default(),
            tx_relay: TxRelay::default(),
            getdata_tx_latency_ns: Hist::new(intervals),
            ping: PingFigures::new(intervals),
            misbehaving: 0,
            payloads_missing: 0,
            payloads_undecodable: 0,
        }
    }

    /// On-CPU time the message handler spent for the peer, ns.
    pub fn msghand_cpu_ns(&self) -> u64 {
        self.processing.totals.cpu_ns + self.sending.totals.cpu_ns
    }

    fn count_slice(&mut self, s: &CpuSlice, key: Option<&'static str>, node: bool) {
        let (wall, cpu) = (s.wall_ns(), s.oncpu_ns);
        match s.kind {
            SliceKind::Processing => self.processing.add(wall, cpu),
            SliceKind::Sending => self.sending.add(wall, cpu),
        }
        let Some(key) = key else { return };
        let intervals = self.payload_recv.interval().is_some();
        let per_msg = self.per_msg.entry(key).or_insert_with(|| MsgTypeFigures {
            hists: node.then(|| Box::new(MsgTypeHists::new(intervals))),
            ..Default::default()
        });
        per_msg.processing.add(wall, cpu);
        if let Some(h) = per_msg.hists.as_deref_mut() {
            h.wall.record(wall);
            if let Some(ns) = cpu {
                h.cpu.record(ns);
            }
        }
    }

    fn count_message(&mut self, direction: Direction, key: &'static str, size: u64, node: bool) {
        let intervals = self.payload_recv.interval().is_some();
        let per_msg = self.per_msg.entry(key).or_insert_with(|| MsgTypeFigures {
            hists: node.then(|| Box::new(MsgTypeHists::new(intervals))),
            ..Default::default()
        });
        let hists = per_msg.hists.as_deref_mut();
        match direction {
            Direction::Inbound => {
                self.recv.add(size);
                per_msg.recv.add(size);
                self.payload_recv.record(size);
                if let Some(h) = hists {
                    h.payload_recv.record(size);
                }
            }
            Direction::Outbound => {
                self.sent.add(size);
                per_msg.sent.add(size);
                self.payload_sent.record(size);
                if let Some(h) = hists {
                    h.payload_sent.record(size);
                }
            }
        }
    }

    fn count_rejection(&mut self, reason: &str, max_reasons: usize) {
        let m = &mut self.mempool;
        m.rejected += 1;
        let key = if m.rejected_by_reason.contains_key(reason)
            || m.rejected_by_reason.len() < max_reasons
        {
            reason
        } else {
            OTHER
        };
        *m.rejected_by_reason.entry(key.to_string()).or_default() += 1;
    }

    fn mempool_left(&mut self, vsize: u64) {
        self.mempool.in_mempool_txs = self.mempool.in_mempool_txs.saturating_sub(1);
        self.mempool.in_mempool_vsize = self.mempool.in_mempool_vsize.saturating_sub(vsize);
    }

    /// Every histogram with the name of its interval log (`--hdr-log`), and
    /// the per-message-type figures, borrowed apart.
    #[allow(clippy::type_complexity)]
    fn hists_mut(
        &mut self,
    ) -> (
        [(&'static str, &mut Hist); 8],
        &mut BTreeMap<&'static str, MsgTypeFigures>,
    ) {
        let Figures {
            per_msg,
            payload_recv,
            payload_sent,
            processing,
            sending,
            getdata_tx_latency_ns,
            ping,
            ..
        } = self;
        (
            [
                ("payload_recv_bytes", payload_recv),
                ("payload_sent_bytes", payload_sent),
                ("processing_wall_ns", &mut processing.wall_ns_per_slice),
                ("processing_cpu_ns", &mut processing.cpu_ns_per_slice),
                ("sending_wall_ns", &mut sending.wall_ns_per_slice),
                ("sending_cpu_ns", &mut sending.cpu_ns_per_slice),
                ("getdata_tx_latency_ns", getdata_tx_latency_ns),
                ("ping_rtt_ns", &mut ping.rtt_ns),
            ],
            per_msg,
        )
    }
}

impl MsgTypeHists {
    fn new(intervals: bool) -> Self {
        Self {
            payload_recv: Hist::new(intervals),
            payload_sent: Hist::new(intervals),
            wall: Hist::new(intervals),
            cpu: Hist::new(intervals),
        }
    }

    fn hists_mut(&mut self) -> [(&'static str, &mut Hist); 4] {
        [
            ("payload_recv_bytes", &mut self.payload_recv),
            ("payload_sent_bytes", &mut self.payload_sent),
            ("processing_wall_ns", &mut self.wall),
            ("processing_cpu_ns", &mut self.cpu),
        ]
    }
}

/// One peer: who it is and what it did.
#[derive(Debug, Clone)]
pub struct PeerStats {
    /// Bitcoin Core's peer id.
    pub id: i64,
    /// Address as bitcoind names it (`m_addr_name`); empty until an event names it.
    pub addr: String,
    /// Connection type; empty until an event names it.
    pub conn_type: String,
    /// Network, from the connection tracepoints or the address.
    pub network: Option<Network>,
    /// Connect time, unix seconds (first seen, for peers connected before
    /// peerlog attached, until a closing event tells).
    pub conntime: u64,
    /// Whether `conntime` is the real connect time.
    pub conntime_known: bool,
    /// Whether the connection closed.
    pub closed: bool,
    /// Whether bitcoind evicted the peer (`net:evicted_inbound_connection`).
    pub evicted: bool,
    /// What the peer did.
    pub figures: Figures,
    /// The compact block mode the peer asked us for (its last `sendcmpct`).
    pub sendcmpct_recv: Option<CompactMode>,
    /// The compact block mode we asked the peer for.
    pub sendcmpct_sent: Option<CompactMode>,
    /// Message type of the peer's message most recently taken for
    /// processing: what a block connected for the peer came in.
    last_inbound: Option<&'static str>,
    /// The peer's `CNode*` in bitcoind, once the kernel found it (cleared
    /// when the connection closes).
    cnode: Option<u64>,
    /// bitcoind's final byte counters, from `net:closed_connection`.
    final_bytes: Option<NodeBytes>,
    /// Our `getdata` transaction requests: hash → when sent (ktime ns).
    pending_getdata: HashMap<TxHash, u64>,
    /// Our pings: nonce → when sent (ktime ns).
    pending_pings: HashMap<u64, u64>,
    /// Sinks that still owe a report of this closed peer.
    unreported: Sinks,
}

impl PeerStats {
    /// The identity peer filters match against.
    pub fn identity(&self) -> PeerIdentity<'_> {
        PeerIdentity {
            id: self.id,
            addr: &self.addr,
            conn_type: &self.conn_type,
            network: self.network,
        }
    }

    /// Remembers our `getdata` for these transactions, to time the answers.
    fn requested(&mut self, hashes: &[TxHash], ktime_ns: u64) {
        if self.pending_getdata.len() + hashes.len() > PENDING_GETDATA_MAX {
            let cutoff = ktime_ns.saturating_sub(PENDING_GETDATA_EXPIRY_NS);
            self.pending_getdata.retain(|_, sent| *sent >= cutoff);
        }
        for hash in hashes {
            if self.pending_getdata.len() >= PENDING_GETDATA_MAX {
                break;
            }
            self.pending_getdata.insert(*hash, ktime_ns);
        }
    }
}

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

/// Turns events into figures.
pub struct Collector {
    clock: WallClock,
    coverage: Coverage,
    intervals: bool,
    sinks: Sinks,
    peers: BTreeMap<i64, PeerStats>,
    /// Closed peers, oldest first.
    closed: VecDeque<i64>,
    total: Figures,
    unattributed: Unattributed,
    events: EventCounts,
    /// Transactions peers relayed into the mempool: txid → (peer, vsize).
    relayed: HashMap<bitcoin::Txid, (i64, u64)>,
    /// Transactions received: txid → the peer that sent it last, and the
    /// order they came in (oldest first), to bound the table.
    tx_senders: HashMap<TxHash, i64>,
    tx_order: VecDeque<TxHash>,
    /// Reads bitcoind's per-connection byte counters, when its `CNode`
    /// layout is known.
    counters: Option<CounterReader>,
    /// Final byte counters of the closed peers no longer kept.
    dropped_bytes: NodeBytes,
}

impl Collector {
    /// A collector for a trace with this coverage. `intervals` keeps
    /// interval histograms for `--hdr-log`; `sinks` are the outputs that
    /// report closed peers once more.
    pub fn new(clock: WallClock, coverage: Coverage, intervals: bool, sinks: Sinks) -> Self {
        Self {
            clock,
            coverage,
            intervals,
            sinks,
            peers: BTreeMap::new(),
            closed: VecDeque::new(),
            total: Figures::new(intervals),
            unattributed: Unattributed::default(),
            events: EventCounts::default(),
            relayed: HashMap::new(),
            tx_senders: HashMap::new(),
            tx_order: VecDeque::new(),
            counters: None,
            dropped_bytes: NodeBytes::default(),
        }
    }

    /// Reads bitcoind's byte counters through `reader` from now on.
    pub fn with_counters(mut self, reader: CounterReader) -> Self {
        self.counters = Some(reader);
        self
    }

    /// bitcoind's byte counters of the peer's connection, as
    /// `getpeerinfo` would show them now: read from its `CNode` while it is
    /// connected, the final ones after it closed; None when unknown.
    pub fn node_bytes(&self, p: &PeerStats) -> Option<NodeBytes> {
        if let Some(bytes) = p.final_bytes {
            return Some(bytes);
        }
        let (cnode, reader) = (p.cnode?, self.counters.as_ref()?);
        reader
            .bytes(cnode, p.id)
            .map(|(recv, sent)| NodeBytes { recv, sent })
    }

    /// The byte counters of every connection seen, summed: the closed ones
    /// with their final figures, the open ones as of now.
    pub fn node_bytes_total(&self) -> NodeBytes {
        let mut total = self.dropped_bytes;
        for p in self.peers.values() {
            if let Some(b) = self.node_bytes(p) {
                total.recv += b.recv;
                total.sent += b.sent;
            }
        }
        total
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
    pub fn peer(&self, id: i64) -> Option<&PeerStats> {
        self.peers.get(&id)
    }

    /// Every peer kept, by id: connected ones and recently closed ones.
    pub fn peers(&self) -> impl Iterator<Item = &PeerStats> {
        self.peers.values()
    }

    /// Accounts one event.
    pub fn handle(&mut self, event: &Event) {
        match event {
            Event::Message(m) => self.on_message(m),
            Event::IncompleteMessage(i) => self.on_message(&i.message),
            Event::Connection(c) => self.on_connection(c),
            Event::Misbehaving(m) => {
                self.events.misbehaving += 1;
                let unix = self.clock.unix_micros(m.ktime_ns) / 1_000_000;
                self.peer_entry(m.peer_id, "", "", unix).figures.misbehaving += 1;
                self.total.misbehaving += 1;
            }
            Event::CpuSlice(s) => self.on_slice(s),
            Event::Mempool(m) => self.on_mempool(m),
            Event::BlockConnected(b) => self.on_block(b),
            // Stack samples are for flamegraphs; CPU time comes from the slices.
            Event::CpuSample(_) => {}
        }
    }

    fn peer_entry(&mut self, id: i64, addr: &str, conn_type: &str, unix: u64) -> &mut PeerStats {
        let intervals = self.intervals;
        let peer = self.peers.entry(id).or_insert_with(|| PeerStats {
            id,
            addr: String::new(),
            conn_type: String::new(),
            network: None,
            conntime: unix,
            conntime_known: false,
            closed: false,
            evicted: false,
            figures: Figures::new(intervals),
            sendcmpct_recv: None,
            sendcmpct_sent: None,
            last_inbound: None,
            cnode: None,
            final_bytes: None,
            pending_getdata: HashMap::new(),
            pending_pings: HashMap::new(),
            unreported: Sinks::default(),
        });
        if peer.addr.is_empty() && !addr.is_empty() {
            peer.addr = addr.to_string();
            peer.network = peer.network.or_else(|| Network::from_addr(addr));
        }
        if peer.conn_type.is_empty() && !conn_type.is_empty() {
            peer.conn_type = conn_type.to_string();
        }
        peer
    }

    /// Runs `f` on the figures of `peer` (if it is known) and on the totals.
    fn both(&mut self, peer: Option<i64>, mut f: impl FnMut(&mut Figures)) {
        if let Some(p) = peer.and_then(|id| self.peers.get_mut(&id)) {
            f(&mut p.figures);
        }
        f(&mut self.total);
    }

    fn on_message(&mut self, m: &Message) {
        self.events.messages += 1;
        let key = msg_type_key(&m.msg_type);
        let unix = self.clock.unix_micros(m.ktime_ns) / 1_000_000;
        let peer = self.peer_entry(m.peer_id, &m.addr, &m.conn_type, unix);
        peer.figures
            .count_message(m.direction, key, m.payload_size, false);
        if m.cnode.is_some() && !peer.closed {
            peer.cnode = m.cnode;
        }
        if m.direction == Direction::Inbound {
            peer.last_inbound = Some(key);
        }
        self.total
            .count_message(m.direction, key, m.payload_size, true);
        match payload::parse(&m.msg_type, m.payload.as_deref()) {
            Parsed::NotNeeded => {}
            Parsed::Missing => self.both(Some(m.peer_id), |f| f.payloads_missing += 1),
            Parsed::Undecodable => self.both(Some(m.peer_id), |f| f.payloads_undecodable += 1),
            Parsed::Facts(facts) => self.on_facts(m.peer_id, key, m.direction, m.ktime_ns, facts),
        }
    }

    fn on_facts(
        &mut self,
        id: i64,
        key: &'static str,
        direction: Direction,
        ktime_ns: u64,
        facts: Facts,
    ) {
        use Direction::{Inbound, Outbound};
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let mut relay = TxRelay::default();
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
                        peer.requested(&tx_hashes, ktime_ns);
                    }
                    ("notfound", Inbound) => {
                        relay.notfound_recv = n;
                        for hash in &tx_hashes {
                            peer.pending_getdata.remove(hash);
                        }
                    }
                    ("notfound", Outbound) => relay.notfound_sent = n,
                    _ => {}
                }
            }
            Facts::Tx { txid, wtxid } => match direction {
                Inbound => {
                    relay.tx_recv = 1;
                    if self.tx_senders.insert(txid, id).is_none() {
                        self.tx_order.push_back(txid);
                        if self.tx_order.len() > TX_SENDERS_MAX {
                            if let Some(old) = self.tx_order.pop_front() {
                                self.tx_senders.remove(&old);
                            }
                        }
                    }
                    latency = peer
                        .pending_getdata
                        .remove(&txid)
                        .or_else(|| peer.pending_getdata.remove(&wtxid))
                        .map(|sent| ktime_ns.saturating_sub(sent));
                }
                Outbound => relay.tx_sent = 1,
            },
            Facts::Ping(nonce) => match direction {
                Outbound => {
                    pings_sent = 1;
                    if peer.pending_pings.len() < PENDING_PINGS_MAX {
                        peer.pending_pings.insert(nonce, ktime_ns);
                    }
                }
                Inbound => pings_recv = 1,
            },
            Facts::Pong(nonce) => {
                if direction == Inbound {
                    rtt = peer
                        .pending_pings
                        .remove(&nonce)
                        .map(|sent| ktime_ns.saturating_sub(sent));
                }
            }
            Facts::SendCmpct(mode) => match direction {
                Inbound => peer.sendcmpct_recv = Some(mode),
                Outbound => peer.sendcmpct_sent = Some(mode),
            },
        }
        self.both(Some(id), |f| {
            f.tx_relay.add(&relay);
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

    fn on_connection(&mut self, c: &Connection) {
        self.events.connections += 1;
        let unix = self.clock.unix_micros(c.ktime_ns) / 1_000_000;
        let sinks = self.sinks;
        let peer = self.peer_entry(c.peer_id, &c.addr, &c.conn_type, unix);
        if let Some(net) = Network::from_core(c.network) {
            peer.network = Some(net);
        }
        match c.kind {
            ConnectionEventKind::Inbound | ConnectionEventKind::Outbound => {
                peer.conntime = unix;
                peer.conntime_known = true;
            }
            ConnectionEventKind::Evicted => {
                peer.evicted = true;
                peer.conntime = c.value;
                peer.conntime_known = true;
            }
            ConnectionEventKind::Closed => {
                peer.conntime = c.value;
                peer.conntime_known = true;
                if !peer.closed {
                    peer.closed = true;
                    peer.unreported = sinks;
                    // Answers that can no longer come.
                    peer.pending_getdata = HashMap::new();
                    peer.pending_pings = HashMap::new();
                    // bitcoind frees the CNode; its address may be reused by
                    // the next connection.
                    peer.cnode = None;
                    peer.final_bytes = c.final_bytes.map(|(recv, sent)| NodeBytes { recv, sent });
                    self.closed.push_back(c.peer_id);
                    self.prune();
                }
            }
        }
    }

    fn on_slice(&mut self, s: &CpuSlice) {
        self.events.slices += 1;
        // A slice can be the first thing seen of a peer connected before
        // peerlog attached.
        let unix = self.clock.unix_micros(s.start_ktime_ns) / 1_000_000;
        self.peer_entry(s.peer_id, "", "", unix);
        let key = (s.kind == SliceKind::Processing).then(|| msg_type_key(&s.msg_type));
        if let Some(p) = self.peers.get_mut(&s.peer_id) {
            p.figures.count_slice(s, key, false);
        }
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
                .get(&bitcoin::hashes::Hash::to_byte_array(m.txid))
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
            let unix = self.clock.unix_micros(m.ktime_ns) / 1_000_000;
            self.peer_entry(id, "", "", unix);
        }
        let vsize = u64::try_from(m.vsize).unwrap_or(0);
        match m.kind {
            MempoolEventKind::Added => {
                self.both(m.peer_id, |f| {
                    f.mempool.accepted += 1;
                    f.mempool.in_mempool_txs += 1;
                    f.mempool.in_mempool_vsize += vsize;
                });
                if let Some(id) = m.peer_id {
                    self.relayed.insert(m.txid, (id, vsize));
                } else {
                    // Counted in the totals: remember it to take it out again.
                    self.relayed.insert(m.txid, (-1, vsize));
                }
            }
            MempoolEventKind::Rejected => {
                if let Some(p) = m.peer_id.and_then(|id| self.peers.get_mut(&id)) {
                    p.figures.count_rejection(&m.reason, REJECT_REASONS_MAX);
                }
                self.total
                    .count_rejection(&m.reason, NODE_REJECT_REASONS_MAX);
            }
            MempoolEventKind::Replaced => {
                self.both(m.peer_id, |f| f.mempool.replacements += 1);
                if let Some(owner) = self.mempool_left(&m.txid) {
                    if let Some(p) = self.peers.get_mut(&owner) {
                        p.figures.mempool.replaced += 1;
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
        let unix = self.clock.unix_micros(b.ktime_ns) / 1_000_000;
        let via = self.peer_entry(id, "", "", unix).last_inbound;
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
    pub fn reported(&mut self, sink: Sink) {
        for id in &self.closed {
            if let Some(p) = self.peers.get_mut(id) {
                p.unreported = p.unreported.without(sink);
            }
        }
        self.prune();
    }

    /// Whether `sink` still owes the closed peer `p` its final report, or
    /// `p` is connected.
    pub fn due(&self, p: &PeerStats, sink: Sink) -> bool {
        !p.closed || p.unreported.contains(sink)
    }

    fn prune(&mut self) {
        let mut kept = VecDeque::with_capacity(self.closed.len());
        let n = self.closed.len();
        for (i, id) in self.closed.drain(..).enumerate() {
            let newer = n - i - 1;
            let owed = self
                .peers
                .get(&id)
                .is_some_and(|p| p.unreported != Sinks::default());
            if newer < CLOSED_PEERS_KEPT || (owed && newer < CLOSED_PEERS_MAX) {
                kept.push_back(id);
            } else if let Some(p) = self.peers.remove(&id) {
                if let Some(b) = p.final_bytes {
                    self.dropped_bytes.recv += b.recv;
                    self.dropped_bytes.sent += b.sent;
                }
            }
        }
        self.closed = kept;
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
        for p in self.peers.values_mut() {
            for (figure, h) in p.figures.hists_mut().0 {
                if h.interval().is_some_and(|i| !i.is_empty()) {
                    out.push((figure, Some(format!("peer={}", p.id)), h));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{IncompleteMessage, Misbehaving};
    use bitcoin::{consensus::serialize, hashes::Hash as _};

    const MS: u64 = 1_000_000;

    fn full_coverage() -> Coverage {
        Coverage {
            slices: true,
            node_counters: true,
            mempool: true,
            block_connected: true,
            notes: Vec::new(),
        }
    }

    fn collector() -> Collector {
        Collector::new(
            WallClock::sample(),
            full_coverage(),
            false,
            Sinks::default(),
        )
    }

    fn msg(
        tid: u32,
        ktime_ns: u64,
        peer_id: i64,
        direction: Direction,
        msg_type: &str,
        payload: Option<Vec<u8>>,
        size: u64,
    ) -> Event {
        Event::Message(Message {
            ktime_ns,
            tid,
            peer_id,
            cnode: None,
            addr: format!("127.0.0.1:{}", 5000 + peer_id).into(),
            conn_type: "inbound".into(),
            msg_type: msg_type.into(),
            direction,
            payload_size: payload.as_ref().map_or(size, |p| p.len() as u64),
            payload,
            addr_truncated: false,
        })
    }

    fn slice(
        kind: SliceKind,
        peer_id: i64,
        msg_type: &str,
        start: u64,
        end: u64,
        cpu: Option<u64>,
    ) -> Event {
        Event::CpuSlice(CpuSlice {
            start_ktime_ns: start,
            end_ktime_ns: end,
            tid: 7,
            peer_id,
            kind,
            slept_ns: 0,
            msg_type: msg_type.into(),
            oncpu_ns: cpu,
        })
    }

    fn connection(kind: ConnectionEventKind, peer_id: i64, value: u64) -> Event {
        Event::Connection(Connection {
            ktime_ns: 1,
            kind,
            peer_id,
            addr: format!("10.0.0.{peer_id}:8333"),
            conn_type: "outbound-full-relay".into(),
            network: 1,
            value,
            final_bytes: None,
        })
    }

    fn mempool(
        kind: MempoolEventKind,
        peer_id: Option<i64>,
        txid: u8,
        vsize: i64,
        reason: &str,
    ) -> Event {
        Event::Mempool(MempoolChange {
            ktime_ns: 1,
            kind,
            peer_id,
            txid: bitcoin::Txid::from_byte_array([txid; 32]),
            vsize,
            fee: 1000,
            reason: reason.into(),
            replacement: None,
            entry_time: 0,
        })
    }

    fn block(peer_id: Option<i64>) -> Event {
        Event::BlockConnected(BlockConnected {
            ktime_ns: 1,
            peer_id,
            hash: bitcoin::BlockHash::all_zeros(),
            height: 1,
            tx_count: 1,
            inputs: 0,
            sigops: 0,
            duration_ns: 10,
        })
    }

    fn inventory(items: Vec<bitcoin::p2p::message_blockdata::Inventory>) -> Vec<u8> {
        serialize(&items)
    }

    #[test]
    fn messages_by_type_and_direction_unknown_types_as_other() {
        let mut c = collector();
        c.handle(&msg(
            1,
            10,
            1,
            Direction::Inbound,
            "ping",
            Some(vec![0; 8]),
            0,
        ));
        c.handle(&msg(
            1,
            11,
            1,
            Direction::Outbound,
            "pong",
            Some(vec![0; 8]),
            0,
        ));
        c.handle(&msg(1, 12, 1, Direction::Inbound, "twinburn", None, 4));
        c.handle(&msg(1, 13, 1, Direction::Inbound, "block", None, 1000));
        let p = &c.peer(1).unwrap().figures;
        assert_eq!(
            p.recv,
            Traffic {
                msgs: 3,
                bytes: 1012
            }
        );
        assert_eq!(p.sent, Traffic { msgs: 1, bytes: 8 });
        assert_eq!(p.per_msg[OTHER].recv, Traffic { msgs: 1, bytes: 4 });
        assert!(
            p.per_msg["ping"].hists.is_none(),
            "no per-type histograms per peer"
        );
        let total = c.total();
        assert_eq!(
            total.per_msg["block"]
                .hists
                .as_ref()
                .unwrap()
                .payload_recv
                .count(),
            1
        );
        assert_eq!(total.payload_recv.count(), 3);
        // Block payloads are not needed; the twinburn one neither.
        assert_eq!(p.payloads_missing, 0);
        c.handle(&msg(1, 14, 1, Direction::Inbound, "inv", None, 37));
        assert_eq!(c.peer(1).unwrap().figures.payloads_missing, 1);
        assert_eq!(c.peer(1).unwrap().addr, "127.0.0.1:5001");
    }

    #[test]
    fn slices_by_peer_kind_and_message_type() {
        use SliceKind::{Processing, Sending};
        let mut c = collector();
        c.handle(&slice(Processing, 3, "tx", MS, 3 * MS, Some(MS)));
        c.handle(&slice(Processing, 3, "tx", 4 * MS, 5 * MS, None));
        c.handle(&slice(Sending, 3, "", 5 * MS, 6 * MS, Some(MS / 2)));
        // A peer first seen in a slice (connected before peerlog attached).
        c.handle(&slice(Processing, 4, "ping", 6 * MS, 7 * MS, Some(100)));
        let three = &c.peer(3).unwrap().figures;
        assert_eq!(
            three.processing.totals,
            SliceTotals {
                slices: 2,
                wall_ns: 3 * MS,
                cpu_ns: MS,
                slices_without_cpu: 1
            }
        );
        assert_eq!(three.sending.totals.cpu_ns, MS / 2);
        assert_eq!(three.msghand_cpu_ns(), MS + MS / 2);
        assert_eq!(three.per_msg["tx"].processing.slices, 2);
        // Sending slices have no message type.
        assert!(three.per_msg.values().all(|m| m.processing.slices <= 2));
        assert_eq!(c.peer(4).unwrap().figures.msghand_cpu_ns(), 100);
        assert_eq!(c.total().msghand_cpu_ns(), MS + MS / 2 + 100);
        let hists = c.total().per_msg["tx"].hists.as_ref().unwrap();
        assert_eq!(hists.wall.count(), 2);
        assert_eq!(hists.cpu.count(), 1);
        assert_eq!(c.events().slices, 4);
    }

    #[test]
    fn final_bytes_of_closed_peers_stay_in_the_totals() {
        let mut c = collector();
        for id in 0..(CLOSED_PEERS_KEPT as i64 + 2) {
            c.handle(&connection(ConnectionEventKind::Inbound, id, 1));
            c.handle(&Event::Connection(Connection {
                final_bytes: Some((100, 10)),
                ..match connection(ConnectionEventKind::Closed, id, 1) {
                    Event::Connection(conn) => conn,
                    _ => unreachable!(),
                }
            }));
        }
        c.reported(Sink::StatsLog);
        c.reported(Sink::Metrics);
        // The oldest closed peers were dropped; their bytes were not.
        assert!(c.peers().count() < CLOSED_PEERS_KEPT + 2);
        let n = CLOSED_PEERS_KEPT as u64 + 2;
        assert_eq!(
            c.node_bytes_total(),
            NodeBytes {
                recv: 100 * n,
                sent: 10 * n
            }
        );
        let kept = c.peers().next().unwrap();
        assert_eq!(
            c.node_bytes(kept),
            Some(NodeBytes {
                recv: 100,
                sent: 10
            })
        );
    }

    #[test]
    fn tx_relay_and_getdata_latency() {
        use bitcoin::p2p::message_blockdata::Inventory;
        let mut c = collector();
        let tx = crate::p2p::test_transaction(1, 2);
        let other = crate::p2p::test_transaction(2, 2);
        let inv = inventory(vec![
            Inventory::WTx(tx.compute_wtxid()),
            Inventory::WTx(other.compute_wtxid()),
            Inventory::Block(bitcoin::BlockHash::all_zeros()),
        ]);
        c.handle(&msg(
            1,
            0,
            2,
            Direction::Inbound,
            "inv",
            Some(inv.clone()),
            0,
        ));
        let getdata = inventory(vec![
            Inventory::WTx(tx.compute_wtxid()),
            Inventory::WTx(other.compute_wtxid()),
        ]);
        c.handle(&msg(
            1,
            10 * MS,
            2,
            Direction::Outbound,
            "getdata",
            Some(getdata),
            0,
        ));
        let notfound = inventory(vec![Inventory::WTx(other.compute_wtxid())]);
        c.handle(&msg(
            1,
            12 * MS,
            2,
            Direction::Inbound,
            "notfound",
            Some(notfound),
            0,
        ));
        assert_eq!(c.peer(2).unwrap().pending_getdata.len(), 1);
        c.handle(&msg(
            1,
            15 * MS,
            2,
            Direction::Inbound,
            "tx",
            Some(serialize(&tx)),
            0,
        ));
        // The same tx again: no request open any more.
        c.handle(&msg(
            1,
            16 * MS,
            2,
            Direction::Inbound,
            "tx",
            Some(serialize(&tx)),
            0,
        ));
        c.handle(&msg(
            1,
            20 * MS,
            2,
            Direction::Outbound,
            "inv",
            Some(inv),
            0,
        ));
        let f = &c.peer(2).unwrap().figures;
        assert_eq!(
            f.tx_relay,
            TxRelay {
                inv_recv: 2,
                getdata_sent: 2,
                tx_recv: 2,
                notfound_recv: 1,
                inv_sent: 2,
                ..Default::default()
            }
        );
        let latency = f.getdata_tx_latency_ns.summary();
        assert_eq!(latency.count, 1);
        assert!(latency.max.abs_diff(5 * MS) <= 5 * MS / 100, "{latency:?}");
        assert_eq!(c.total().tx_relay.inv_recv, 2);
    }

    #[test]
    fn ping_round_trip_by_nonce_and_compact_modes() {
        let mut c = collector();
        c.handle(&msg(
            1,
            100 * MS,
            4,
            Direction::Outbound,
            "ping",
            Some(42u64.to_le_bytes().to_vec()),
            0,
        ));
        c.handle(&msg(
            1,
            101 * MS,
            4,
            Direction::Inbound,
            "pong",
            Some(7u64.to_le_bytes().to_vec()),
            0,
        ));
        c.handle(&msg(
            1,
            103 * MS,
            4,
            Direction::Inbound,
            "pong",
            Some(42u64.to_le_bytes().to_vec()),
            0,
        ));
        c.handle(&msg(
            1,
            104 * MS,
            4,
            Direction::Inbound,
            "ping",
            Some(9u64.to_le_bytes().to_vec()),
            0,
        ));
        let mut cmpct = vec![1u8];
        cmpct.extend_from_slice(&2u64.to_le_bytes());
        c.handle(&msg(
            1,
            105 * MS,
            4,
            Direction::Inbound,
            "sendcmpct",
            Some(cmpct),
            0,
        ));
        c.handle(&msg(
            1,
            106 * MS,
            4,
            Direction::Inbound,
            "ping",
            Some(vec![1, 2]),
            0,
        ));
        let p = c.peer(4).unwrap();
        let ping = &p.figures.ping;
        assert_eq!(
            (ping.pings_sent, ping.pings_recv, ping.pongs_matched),
            (1, 1, 1)
        );
        assert_eq!(ping.last_rtt_ns, Some(3 * MS));
        assert_eq!(
            p.sendcmpct_recv,
            Some(CompactMode {
                high_bandwidth: true,
                version: 2
            })
        );
        assert_eq!(p.figures.payloads_undecodable, 1);
    }

    #[test]
    fn mempool_accounting_per_peer() {
        let mut c = collector();
        c.handle(&mempool(MempoolEventKind::Added, Some(1), 1, 100, ""));
        c.handle(&mempool(MempoolEventKind::Added, Some(1), 2, 50, ""));
        c.handle(&mempool(
            MempoolEventKind::Rejected,
            Some(1),
            3,
            0,
            "bad-txns-vout-empty",
        ));
        c.handle(&mempool(
            MempoolEventKind::Rejected,
            Some(1),
            4,
            0,
            "bad-txns-vout-empty",
        ));
        // Peer 2's transaction replaces peer 1's first; bitcoind fires
        // `removed` for it too.
        c.handle(&mempool(MempoolEventKind::Replaced, Some(2), 1, 100, ""));
        c.handle(&mempool(
            MempoolEventKind::Removed,
            None,
            1,
            100,
            "replaced",
        ));
        c.handle(&mempool(MempoolEventKind::Added, Some(2), 5, 120, ""));
        // A block confirms peer 1's second.
        c.handle(&mempool(MempoolEventKind::Removed, None, 2, 50, "block"));
        // RPC: no peer.
        c.handle(&mempool(MempoolEventKind::Added, None, 6, 70, ""));
        let one = &c.peer(1).unwrap().figures.mempool;
        assert_eq!((one.accepted, one.rejected, one.replaced), (2, 2, 1));
        assert_eq!(one.rejected_by_reason["bad-txns-vout-empty"], 2);
        assert_eq!((one.in_mempool_txs, one.in_mempool_vsize), (0, 0));
        let two = &c.peer(2).unwrap().figures.mempool;
        assert_eq!(
            (two.accepted, two.replacements, two.in_mempool_vsize),
            (1, 1, 120)
        );
        let total = &c.total().mempool;
        assert_eq!(
            (total.accepted, total.in_mempool_txs, total.in_mempool_vsize),
            (4, 2, 190)
        );
        assert_eq!(c.unattributed().mempool_events, 3);
    }

    #[test]
    fn new_blocks_by_the_message_that_brought_them() {
        let mut c = collector();
        c.handle(&msg(1, 1, 5, Direction::Inbound, "block", None, 300));
        c.handle(&block(Some(5)));
        c.handle(&msg(1, 2, 5, Direction::Inbound, "headers", None, 81));
        c.handle(&block(Some(5)));
        c.handle(&block(None));
        assert_eq!(
            c.peer(5).unwrap().figures.blocks,
            BlockFigures {
                new_blocks: 1,
                connected_other: 1
            }
        );
        assert_eq!(c.unattributed().blocks_connected, 1);
        assert_eq!(c.total().blocks.new_blocks, 1);
    }

    #[test]
    fn closed_peers_reported_once_then_dropped() {
        let sinks = Sinks::default().with(Sink::StatsLog).with(Sink::Metrics);
        let mut c = Collector::new(WallClock::sample(), full_coverage(), false, sinks);
        c.handle(&connection(ConnectionEventKind::Outbound, 1, 1));
        c.handle(&connection(ConnectionEventKind::Closed, 1, 1_700_000_000));
        let p = c.peer(1).unwrap();
        assert!(p.closed && p.conntime_known && p.conntime == 1_700_000_000);
        assert!(c.due(p, Sink::StatsLog) && c.due(p, Sink::Metrics));
        c.reported(Sink::StatsLog);
        let p = c.peer(1).unwrap();
        assert!(!c.due(p, Sink::StatsLog) && c.due(p, Sink::Metrics));
        c.reported(Sink::Metrics);
        assert!(!c.due(c.peer(1).unwrap(), Sink::Metrics));
        // Kept for getpeerstats among the most recently closed, then dropped.
        for id in 2..=(CLOSED_PEERS_KEPT as i64 + 1) {
            c.handle(&connection(ConnectionEventKind::Closed, id, 1));
        }
        c.reported(Sink::StatsLog);
        c.reported(Sink::Metrics);
        assert!(c.peer(1).is_none());
        assert_eq!(c.peers().count(), CLOSED_PEERS_KEPT);
        // A sink nobody reads cannot keep closed peers forever.
        for id in 100..(100 + CLOSED_PEERS_MAX as i64 + 10) {
            c.handle(&connection(ConnectionEventKind::Closed, id, 1));
        }
        assert_eq!(c.peers().count(), CLOSED_PEERS_MAX);
        // Totals keep what dropped peers did.
        c.handle(&Event::Misbehaving(Misbehaving {
            ktime_ns: 1,
            peer_id: 100,
            reason: "x".into(),
        }));
        assert_eq!(c.total().misbehaving, 1);
    }

    #[test]
    fn missing_coverage_is_null_not_zero() {
        let mut c = Collector::new(
            WallClock::sample(),
            Coverage::default(),
            false,
            Sinks::default(),
        );
        c.handle(&msg(
            1,
            1,
            1,
            Direction::Inbound,
            "ping",
            Some(vec![0; 8]),
            0,
        ));
        let v = c.peer_json(c.peer(1).unwrap(), &StatsFilter::default());
        for field in [
            "processing",
            "sending",
            "cpu_ns",
            "msghand_cpu_share",
            "mempool",
            "blocks",
            "bytesrecv",
            "bytessent",
            "processing_per_msg",
        ] {
            assert!(v[field].is_null(), "{field}: {}", v[field]);
        }
        assert_eq!(v["msgsrecv_per_msg"]["ping"], 1);
        let missing = c.coverage().missing_figures().join("\n");
        assert!(
            missing.contains("processing, sending")
                && missing.contains("bytesrecv")
                && missing.contains("mempool"),
            "{missing}"
        );
        // What is given up by design is always named.
        assert_eq!(full_coverage().missing_figures().len(), NOT_MEASURED.len());

        let mut c = collector();
        c.handle(&slice(SliceKind::Processing, 1, "ping", 0, 10, Some(6)));
        c.handle(&slice(SliceKind::Sending, 2, "", 10, 20, Some(2)));
        c.handle(&msg(
            1,
            1,
            1,
            Direction::Inbound,
            "ping",
            Some(vec![0; 8]),
            0,
        ));
        let v = c.peer_json(
            c.peer(1).unwrap(),
            &StatsFilter::new(vec![], vec!["pong".into()]),
        );
        assert_eq!(v["processing"]["cpu_ns"], 6);
        assert_eq!(v["processing"]["cpu_ns_per_slice"]["count"], 1);
        assert_eq!(v["msghand_cpu_share"], 0.75);
        // No CNode known and not closed: the node's counters are unknown.
        assert!(v["bytesrecv"].is_null());
        assert_eq!(
            v["msgsrecv_per_msg"],
            serde_json::json!({}),
            "filtered to pong"
        );
        let node = c.node_json(&StatsFilter::default());
        assert_eq!(node["peers_connected"], 2);
        assert_eq!(node["msg_types"]["ping"]["recv"]["msgs"], 1);
        let only = c.peers_json(&StatsFilter::new(vec!["id=2".parse().unwrap()], vec![]));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0]["id"], 2);
    }

    #[test]
    fn incomplete_messages_count_without_payload() {
        let mut c = collector();
        let Event::Message(m) = msg(3, 1, 1, Direction::Inbound, "tx", None, 5000) else {
            unreachable!()
        };
        c.handle(&Event::IncompleteMessage(IncompleteMessage {
            message: m,
            received: 100,
            reason: "ring full",
        }));
        let f = &c.peer(1).unwrap().figures;
        assert_eq!(
            (f.recv.msgs, f.recv.bytes, f.payloads_missing),
            (1, 5000, 1)
        );
    }

    #[test]
    fn interval_histograms_tagged_and_reset() {
        let mut c = Collector::new(WallClock::sample(), full_coverage(), true, Sinks::default());
        c.handle(&msg(
            1,
            1,
            8,
            Direction::Inbound,
            "ping",
            Some(vec![0; 8]),
            0,
        ));
        let tags: Vec<(String, Option<String>)> = c
            .interval_hists()
            .into_iter()
            .filter(|(figure, _, _)| *figure == "payload_recv_bytes")
            .map(|(figure, tag, _)| (figure.to_string(), tag))
            .collect();
        assert_eq!(
            tags,
            vec![
                ("payload_recv_bytes".into(), None),
                ("payload_recv_bytes".into(), Some("msg_type=ping".into())),
                ("payload_recv_bytes".into(), Some("peer=8".into())),
            ]
        );
        for (_, _, h) in c.interval_hists() {
            h.reset_interval();
        }
        // Empty intervals of peers and message types are skipped; the node's stays.
        assert!(c.interval_hists().iter().all(|(_, tag, _)| tag.is_none()));
        assert_eq!(c.total().payload_recv.count(), 1, "totals are not reset");
    }

    #[test]
    fn coverage_from_the_probes() {
        let probes = crate::probes::Coverage {
            tracepoints: [
                "net:inbound_message",
                "mempool:added",
                "mempool:removed",
                "mempool:replaced",
                "mempool:rejected",
            ]
            .map(String::from)
            .to_vec(),
            missing_tracepoints: vec!["validation:block_connected".into()],
            slices: true,
            oncpu_missing: None,
            cnode_layout: None,
            debug_info: None,
            cnode_layout_missing: Some("no DWARF".into()),
        };
        let c = Coverage::from(&probes);
        assert!(c.slices && !c.node_counters && c.mempool && !c.block_connected);
        let missing = c.missing_figures().join("\n");
        assert!(
            missing.contains("bytesrecv, bytessent: no DWARF"),
            "{missing}"
        );
    }
}
