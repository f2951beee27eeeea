//! Per-peer resource accounting: turns events into figures, per peer and for
//! the whole node.
//!
//! Every event of a trace goes through [`Collector::handle`]. Figures come
//! from three sources:
//! - the message tracepoints: messages and payload bytes by message type and
//!   direction, and what the payloads say (`inv`/`getdata`/`notfound`
//!   transaction entries, `tx` ids, `ping`/`pong` nonces, `sendcmpct`), read
//!   with the `bitcoin` crate ([`payload`]);
//! - returned calls of the [`TracedFunction`]s: calls, wall and on-CPU time
//!   per peer in `ProcessMessages`/`SendMessages` (`b-msghand`), in
//!   `ReceiveMsgBytes`/`SocketSendData` (`b-net`), and per message type in
//!   `ProcessMessage`, whose message type is the one of the
//!   `net:inbound_message` that fired just before on the same thread;
//! - the `mempool:*` and `validation:block_connected` tracepoints, which the
//!   kernel attributes to the peer whose message the thread was processing.
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use peerlog_common::{ConnectionEventKind, Direction, MempoolEventKind, TracedFunction};
use serde::Serialize;

pub use hist::{HdrLog, Hist, HistSummary};
pub use json::StatsFilter;
pub use report::{check_msg_types, find_thread, thread_cpu_ns, Reporter, StatsArgs, StatsOptions};

use crate::{
    clock::WallClock,
    event::{BlockConnected, Call, Connection, Event, MempoolChange, Message},
    peer::{Network, PeerIdentity, Traffic},
};
use payload::{CompactMode, Facts, Parsed, TxHash};

/// What the attached probes can measure beyond the `net:*` tracepoints,
/// which are always attached (derived from [`crate::probes::Coverage`]);
/// figures of what is not covered are reported as missing, never as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Functions whose entry and return probes are attached.
    pub functions: BTreeSet<TracedFunction>,
    /// Whether on-CPU time is measured (the `sched_switch` hook is attached);
    /// without it calls have wall time only.
    pub oncpu: bool,
    /// Whether the `mempool:*` tracepoints are attached.
    pub mempool: bool,
    /// Whether `validation:block_connected` is attached.
    pub block_connected: bool,
    /// Why something is not attached, in words (e.g. "no symbols for
    /// ProcessMessages: bitcoind is stripped; pass --debug-file").
    pub notes: Vec<String>,
}

impl From<&crate::probes::Coverage> for Coverage {
    /// What the statistics can measure, from what the probes attached.
    fn from(probes: &crate::probes::Coverage) -> Self {
        let attached = |tracepoint: &str| probes.tracepoints.iter().any(|t| t == tracepoint);
        let mut notes: Vec<String> = probes
            .missing_functions
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        if let Some(why) = &probes.oncpu_missing {
            notes.push(format!("on-CPU time: {why}"));
        }
        notes.extend(
            probes
                .missing_tracepoints
                .iter()
                .map(|t| format!("{t}: not in this bitcoind")),
        );
        Self {
            functions: TracedFunction::ALL
                .into_iter()
                .filter(|f| probes.has_function(*f))
                .collect(),
            oncpu: probes.oncpu_missing.is_none() && !probes.functions.is_empty(),
            mempool: ["added", "removed", "replaced", "rejected"]
                .iter()
                .all(|name| attached(&format!("mempool:{name}"))),
            block_connected: attached("validation:block_connected"),
            notes,
        }
    }
}

impl Coverage {
    /// Whether the probes of `function` are attached.
    pub fn has(&self, function: TracedFunction) -> bool {
        self.functions.contains(&function)
    }

    /// The figures the attached probes cannot give, each with the reason.
    pub fn missing_figures(&self) -> Vec<String> {
        use TracedFunction::*;
        let mut missing = Vec::new();
        let mut need = |ok: bool, what: &str, why: String| {
            if !ok {
                missing.push(format!("{what}: {why}"));
            }
        };
        let not_attached =
            |f: TracedFunction| format!("no uprobe on {} ({})", f.name(), f.symbol());
        need(
            self.has(ProcessMessages),
            "processmessages, msghand_cpu_share",
            not_attached(ProcessMessages),
        );
        need(
            self.has(SendMessages),
            "sendmessages, msghand_cpu_share",
            not_attached(SendMessages),
        );
        need(
            self.has(ProcessMessage),
            "processmessage_per_msg (time and queueing delay per message type)",
            not_attached(ProcessMessage),
        );
        need(
            self.has(ReceiveMsgBytes),
            "receivemsgbytes, bytesrecv",
            not_attached(ReceiveMsgBytes),
        );
        need(
            self.has(SocketSendData),
            "socketsenddata, bytessent",
            not_attached(SocketSendData),
        );
        need(
            self.oncpu || self.functions.is_empty(),
            "every cpu_ns (wall time only)",
            "the sched_switch hook is not attached".into(),
        );
        need(
            self.mempool,
            "mempool",
            "the mempool:* tracepoints are not attached".into(),
        );
        need(
            self.block_connected,
            "blocks",
            "validation:block_connected is not attached".into(),
        );
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
/// A queueing delay longer than this is not believed: the receive time
/// comes from bitcoind's clock, which `setmocktime` can move.
const QUEUE_DELAY_MAX_US: u64 = 3600 * 1_000_000;

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

/// Calls, wall time and on-CPU time of one function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CallTotals {
    /// Returned calls.
    pub calls: u64,
    /// Nanoseconds from entry to return, summed.
    pub wall_ns: u64,
    /// Nanoseconds on a CPU, summed over the calls where it was measured.
    pub cpu_ns: u64,
    /// Calls whose on-CPU time was not measured.
    pub calls_without_cpu: u64,
}

impl CallTotals {
    fn add(&mut self, wall_ns: u64, cpu_ns: Option<u64>) {
        self.calls += 1;
        self.wall_ns += wall_ns;
        match cpu_ns {
            Some(ns) => self.cpu_ns += ns,
            None => self.calls_without_cpu += 1,
        }
    }
}

/// Calls of `ProcessMessages` or `SendMessages`, with the distribution of
/// the time per call.
#[derive(Debug, Clone, Serialize)]
pub struct TimedCalls {
    /// Sums.
    #[serde(flatten)]
    pub totals: CallTotals,
    /// Wall time per call, ns.
    pub wall_ns_per_call: Hist,
    /// On-CPU time per call, ns.
    pub cpu_ns_per_call: Hist,
}

impl TimedCalls {
    fn new(intervals: bool) -> Self {
        Self {
            totals: CallTotals::default(),
            wall_ns_per_call: Hist::new(intervals),
            cpu_ns_per_call: Hist::new(intervals),
        }
    }

    fn add(&mut self, wall_ns: u64, cpu_ns: Option<u64>) {
        self.totals.add(wall_ns, cpu_ns);
        self.wall_ns_per_call.record(wall_ns);
        if let Some(ns) = cpu_ns {
            self.cpu_ns_per_call.record(ns);
        }
    }
}

/// Calls of `ReceiveMsgBytes` or `SocketSendData`, with the bytes they moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NetCalls {
    /// Sums.
    #[serde(flatten)]
    pub totals: CallTotals,
    /// Bytes handed in (`ReceiveMsgBytes`) or sent (`SocketSendData`),
    /// transport framing included, as `getpeerinfo`'s `bytesrecv`/`bytessent`.
    pub bytes: u64,
}

impl NetCalls {
    fn add(&mut self, wall_ns: u64, cpu_ns: Option<u64>, bytes: u64) {
        self.totals.add(wall_ns, cpu_ns);
        self.bytes += bytes;
    }
}

/// `ProcessMessage` calls of one message type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MsgTypeCalls {
    /// Sums.
    #[serde(flatten)]
    pub totals: CallTotals,
    /// Time the messages waited between arriving and being processed, ns, summed.
    pub queue_ns: u64,
}

/// Distributions kept per message type for the whole node.
#[derive(Debug, Clone)]
pub struct MsgTypeHists {
    /// Payload sizes received, bytes.
    pub payload_recv: Hist,
    /// Payload sizes sent, bytes.
    pub payload_sent: Hist,
    /// `ProcessMessage` wall time per call, ns.
    pub wall: Hist,
    /// `ProcessMessage` on-CPU time per call, ns.
    pub cpu: Hist,
    /// Queueing delay (arrival to processing), ns.
    pub queue: Hist,
}

/// Figures of one message type.
#[derive(Debug, Clone, Default)]
pub struct MsgTypeFigures {
    /// Received.
    pub recv: Traffic,
    /// Sent.
    pub sent: Traffic,
    /// `ProcessMessage` calls handling this type.
    pub process_message: MsgTypeCalls,
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
    /// Transactions accepted (`mempool:added`) while processing the peer's messages.
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
    /// `ProcessMessages` calls.
    pub process_messages: TimedCalls,
    /// `SendMessages` calls.
    pub send_messages: TimedCalls,
    /// `ReceiveMsgBytes` calls.
    pub receive_msg_bytes: NetCalls,
    /// `SocketSendData` calls outside `b-msghand` (the `b-net` thread).
    pub socket_send_data: NetCalls,
    /// `SocketSendData` calls on `b-msghand`: Bitcoin Core's optimistic
    /// send right when a message is pushed, already inside the
    /// `ProcessMessages`/`SendMessages` figures.
    pub socket_send_data_msghand: NetCalls,
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
            process_messages: TimedCalls::new(intervals),
            send_messages: TimedCalls::new(intervals),
            receive_msg_bytes: NetCalls::default(),
            socket_send_data: NetCalls::default(),
            socket_send_data_msghand: NetCalls::default(),
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

    /// On-CPU time spent for the peer on `b-msghand`, ns.
    pub fn msghand_cpu_ns(&self) -> u64 {
        self.process_messages.totals.cpu_ns + self.send_messages.totals.cpu_ns
    }

    /// On-CPU time spent for the peer on every thread, ns, each nanosecond
    /// once (optimistic sends are inside `b-msghand`'s figures already).
    pub fn cpu_ns(&self) -> u64 {
        self.msghand_cpu_ns()
            + self.receive_msg_bytes.totals.cpu_ns
            + self.socket_send_data.totals.cpu_ns
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

    fn count_process_message(
        &mut self,
        key: &'static str,
        wall_ns: u64,
        cpu_ns: Option<u64>,
        queue_ns: Option<u64>,
        node: bool,
    ) {
        let intervals = self.payload_recv.interval().is_some();
        let per_msg = self.per_msg.entry(key).or_insert_with(|| MsgTypeFigures {
            hists: node.then(|| Box::new(MsgTypeHists::new(intervals))),
            ..Default::default()
        });
        per_msg.process_message.totals.add(wall_ns, cpu_ns);
        per_msg.process_message.queue_ns += queue_ns.unwrap_or(0);
        if let Some(h) = per_msg.hists.as_deref_mut() {
            h.wall.record(wall_ns);
            if let Some(ns) = cpu_ns {
                h.cpu.record(ns);
            }
            if let Some(ns) = queue_ns {
                h.queue.record(ns);
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
            process_messages,
            send_messages,
            getdata_tx_latency_ns,
            ping,
            ..
        } = self;
        (
            [
                ("payload_recv_bytes", payload_recv),
                ("payload_sent_bytes", payload_sent),
                (
                    "processmessages_wall_ns",
                    &mut process_messages.wall_ns_per_call,
                ),
                (
                    "processmessages_cpu_ns",
                    &mut process_messages.cpu_ns_per_call,
                ),
                ("sendmessages_wall_ns", &mut send_messages.wall_ns_per_call),
                ("sendmessages_cpu_ns", &mut send_messages.cpu_ns_per_call),
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
            queue: Hist::new(intervals),
        }
    }

    fn hists_mut(&mut self) -> [(&'static str, &mut Hist); 5] {
        [
            ("payload_recv_bytes", &mut self.payload_recv),
            ("payload_sent_bytes", &mut self.payload_sent),
            ("processmessage_wall_ns", &mut self.wall),
            ("processmessage_cpu_ns", &mut self.cpu),
            ("queueing_delay_ns", &mut self.queue),
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
    /// Message type of the peer's message most recently handed to
    /// `ProcessMessage`: what a block connected for the peer came in.
    last_inbound: Option<&'static str>,
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
    /// Calls whose `CNode*` peerlog could not tie to a peer, by function.
    pub calls: BTreeMap<&'static str, CallTotals>,
    /// `ProcessMessage` calls without a preceding `net:inbound_message` on
    /// their thread (it was lost): not in the per-message-type figures.
    pub process_message_untyped: u64,
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
    /// Returned calls.
    pub calls: u64,
    /// Mempool events.
    pub mempool: u64,
    /// Blocks connected.
    pub blocks: u64,
}

/// The message a thread is handling: its last `net:inbound_message`.
#[derive(Debug, Clone, Copy)]
struct ThreadMessage {
    peer_id: i64,
    key: &'static str,
    ktime_ns: u64,
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
    /// `CNode*` → peer id, learned from calls that carry both and from
    /// `ProcessMessage` calls matched to their message, for calls that
    /// arrive with the pointer only (the `b-net` thread's).
    cnodes: HashMap<u64, i64>,
    /// Per thread, the message `ProcessMessage` is about to handle.
    threads: HashMap<u32, ThreadMessage>,
    /// Threads that run `ProcessMessages`/`SendMessages`: `b-msghand`.
    msghand_threads: HashSet<u32>,
    /// Transactions peers relayed into the mempool: txid → (peer, vsize).
    relayed: HashMap<bitcoin::Txid, (i64, u64)>,
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
            cnodes: HashMap::new(),
            threads: HashMap::new(),
            msghand_threads: HashSet::new(),
            relayed: HashMap::new(),
        }
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
            Event::Call(c) => self.on_call(c),
            Event::Mempool(m) => self.on_mempool(m),
            Event::BlockConnected(b) => self.on_block(b),
            // Stack samples are for flamegraphs; CPU time comes from the calls.
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
        if m.direction == Direction::Inbound {
            peer.last_inbound = Some(key);
            self.threads.insert(
                m.tid,
                ThreadMessage {
                    peer_id: m.peer_id,
                    key,
                    ktime_ns: m.ktime_ns,
                },
            );
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
                    self.closed.push_back(c.peer_id);
                    // bitcoind frees the CNode; its address may be reused by
                    // the next connection.
                    self.cnodes.retain(|_, id| *id != c.peer_id);
                    self.prune();
                }
            }
        }
    }

    fn on_call(&mut self, c: &Call) {
        self.events.calls += 1;
        let peer = match c.peer_id {
            Some(id) => {
                self.cnodes.insert(c.cnode, id);
                Some(id)
            }
            None => self.cnodes.get(&c.cnode).copied(),
        };
        if let Some(id) = peer {
            // A call can be the first thing seen of a peer connected before
            // peerlog attached.
            let unix = self.clock.unix_micros(c.start_ktime_ns) / 1_000_000;
            self.peer_entry(id, "", "", unix);
        }
        let (wall, cpu) = (c.wall_ns(), c.oncpu_ns);
        match c.function {
            TracedFunction::ProcessMessages | TracedFunction::SendMessages => {
                self.msghand_threads.insert(c.tid);
                let send = c.function == TracedFunction::SendMessages;
                self.both(peer, |f| {
                    let calls = if send {
                        &mut f.send_messages
                    } else {
                        &mut f.process_messages
                    };
                    calls.add(wall, cpu);
                });
            }
            TracedFunction::ProcessMessage => return self.on_process_message(c, peer),
            TracedFunction::ReceiveMsgBytes => {
                self.both(peer, |f| f.receive_msg_bytes.add(wall, cpu, c.arg));
            }
            TracedFunction::SocketSendData => {
                let msghand = self.msghand_threads.contains(&c.tid);
                self.both(peer, |f| {
                    let calls = if msghand {
                        &mut f.socket_send_data_msghand
                    } else {
                        &mut f.socket_send_data
                    };
                    calls.add(wall, cpu, c.ret);
                });
            }
        }
        if peer.is_none() {
            self.unattributed
                .calls
                .entry(c.function.name())
                .or_default()
                .add(wall, cpu);
        }
    }

    /// `ProcessMessage` handles the message whose `net:inbound_message`
    /// fired just before on the same thread.
    fn on_process_message(&mut self, c: &Call, peer: Option<i64>) {
        let message = self
            .threads
            .remove(&c.tid)
            .filter(|m| m.ktime_ns <= c.start_ktime_ns && peer.is_none_or(|p| p == m.peer_id));
        let Some(message) = message else {
            self.unattributed.process_message_untyped += 1;
            return;
        };
        if peer.is_none() {
            self.cnodes.insert(c.cnode, message.peer_id);
        }
        // The receive time is bitcoind's wall clock in µs.
        let started_us = self.clock.unix_micros(c.start_ktime_ns);
        let queue_ns = started_us
            .checked_sub(c.arg)
            .filter(|&us| c.arg > 0 && us < QUEUE_DELAY_MAX_US)
            .map(|us| us * 1000);
        let (wall, cpu) = (c.wall_ns(), c.oncpu_ns);
        if let Some(p) = self.peers.get_mut(&message.peer_id) {
            p.figures
                .count_process_message(message.key, wall, cpu, queue_ns, false);
        }
        self.total
            .count_process_message(message.key, wall, cpu, queue_ns, true);
    }

    fn on_mempool(&mut self, m: &MempoolChange) {
        self.events.mempool += 1;
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
            } else {
                self.peers.remove(&id);
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
    use peerlog_common::TracedFunction::*;

    const MS: u64 = 1_000_000;

    fn full_coverage() -> Coverage {
        Coverage {
            functions: TracedFunction::ALL.into_iter().collect(),
            oncpu: true,
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
            addr: format!("127.0.0.1:{}", 5000 + peer_id),
            conn_type: "inbound".into(),
            msg_type: msg_type.into(),
            direction,
            payload_size: payload.as_ref().map_or(size, |p| p.len() as u64),
            payload,
            addr_truncated: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        function: TracedFunction,
        tid: u32,
        start: u64,
        end: u64,
        cnode: u64,
        peer_id: Option<i64>,
        cpu: Option<u64>,
        arg: u64,
        ret: u64,
    ) -> Event {
        Event::Call(Call {
            start_ktime_ns: start,
            end_ktime_ns: end,
            tid,
            function,
            cnode,
            peer_id,
            oncpu_ns: cpu,
            arg,
            ret,
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
    fn process_message_takes_the_type_of_the_threads_last_message() {
        let mut c = collector();
        let clock = c.clock;
        c.handle(&msg(7, 1000 * MS, 3, Direction::Inbound, "tx", None, 200));
        // Received 1.5 ms before ProcessMessage started.
        let received_us = clock.unix_micros(1001 * MS) - 1500;
        c.handle(&call(
            ProcessMessage,
            7,
            1001 * MS,
            1003 * MS,
            0xc0,
            Some(3),
            Some(MS),
            received_us,
            0,
        ));
        // A second call on the thread without a new message has no type.
        c.handle(&call(
            ProcessMessage,
            7,
            1004 * MS,
            1005 * MS,
            0xc0,
            Some(3),
            Some(MS),
            0,
            0,
        ));
        let tx = c.peer(3).unwrap().figures.per_msg["tx"].process_message;
        assert_eq!(
            tx.totals,
            CallTotals {
                calls: 1,
                wall_ns: 2 * MS,
                cpu_ns: MS,
                calls_without_cpu: 0
            }
        );
        assert_eq!(tx.queue_ns, 1_500_000);
        assert_eq!(c.unattributed().process_message_untyped, 1);
        let hists = c.total().per_msg["tx"].hists.as_ref().unwrap();
        assert_eq!(hists.queue.count(), 1);
        // The message taught the CNode* → peer mapping.
        c.handle(&call(
            ReceiveMsgBytes,
            9,
            0,
            10,
            0xd0,
            None,
            Some(5),
            100,
            0,
        ));
        c.handle(&msg(7, 2000 * MS, 4, Direction::Inbound, "ping", None, 8));
        c.handle(&call(
            ProcessMessage,
            7,
            2001 * MS,
            2002 * MS,
            0xd0,
            None,
            Some(1),
            0,
            0,
        ));
        c.handle(&call(
            ReceiveMsgBytes,
            9,
            0,
            10,
            0xd0,
            None,
            Some(5),
            100,
            0,
        ));
        let four = &c.peer(4).unwrap().figures;
        assert_eq!(four.receive_msg_bytes.bytes, 100);
        assert_eq!(c.unattributed().calls["ReceiveMsgBytes"].calls, 1);
    }

    #[test]
    fn cnode_map_learned_and_forgotten_on_close() {
        let mut c = collector();
        c.handle(&call(
            ProcessMessages,
            1,
            0,
            10,
            0xaa,
            Some(5),
            Some(7),
            0,
            0,
        ));
        c.handle(&call(ReceiveMsgBytes, 2, 0, 10, 0xaa, None, Some(3), 24, 0));
        c.handle(&call(SocketSendData, 2, 0, 10, 0xaa, None, Some(2), 0, 30));
        // An optimistic send on b-msghand is inside ProcessMessages already.
        c.handle(&call(SocketSendData, 1, 2, 4, 0xaa, None, Some(1), 0, 12));
        let f = &c.peer(5).unwrap().figures;
        assert_eq!(f.receive_msg_bytes.bytes, 24);
        assert_eq!(f.socket_send_data.bytes, 30);
        assert_eq!(f.socket_send_data_msghand.bytes, 12);
        assert_eq!(f.cpu_ns(), 7 + 3 + 2);
        assert_eq!(f.msghand_cpu_ns(), 7);
        c.handle(&connection(ConnectionEventKind::Closed, 5, 1_700_000_000));
        c.handle(&call(ReceiveMsgBytes, 2, 0, 10, 0xaa, None, Some(3), 24, 0));
        assert_eq!(c.peer(5).unwrap().figures.receive_msg_bytes.totals.calls, 1);
        assert_eq!(c.unattributed().calls["ReceiveMsgBytes"].calls, 1);
        assert_eq!(c.total().receive_msg_bytes.totals.calls, 2);
        // A call without on-CPU time counts, and says so.
        c.handle(&call(SendMessages, 1, 0, 10, 0xbb, Some(6), None, 0, 0));
        let six = &c.peer(6).unwrap().figures.send_messages.totals;
        assert_eq!((six.calls, six.cpu_ns, six.calls_without_cpu), (1, 0, 1));
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
            "processmessages",
            "cpu_ns",
            "msghand_cpu_share",
            "mempool",
            "blocks",
            "bytesrecv",
            "processmessage_per_msg",
        ] {
            assert!(v[field].is_null(), "{field}: {}", v[field]);
        }
        assert_eq!(v["msgsrecv_per_msg"]["ping"], 1);
        let missing = c.coverage().missing_figures().join("\n");
        assert!(
            missing.contains("ProcessMessages") && missing.contains("mempool"),
            "{missing}"
        );
        assert!(full_coverage().missing_figures().is_empty());

        let mut c = collector();
        c.handle(&call(
            ProcessMessages,
            1,
            0,
            10,
            0xaa,
            Some(1),
            Some(6),
            0,
            0,
        ));
        c.handle(&call(SendMessages, 1, 0, 10, 0xbb, Some(2), Some(2), 0, 0));
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
        assert_eq!(v["processmessages"]["cpu_ns"], 6);
        assert_eq!(v["processmessages"]["cpu_ns_per_call"]["count"], 1);
        assert_eq!(v["msghand_cpu_share"], 0.75);
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
            functions: vec!["ProcessMessages", "SendMessages"],
            missing_functions: vec![("ProcessMessage", "not in the symbol table".into())],
            symbols_from: None,
            oncpu_missing: None,
        };
        let c = Coverage::from(&probes);
        assert!(c.has(ProcessMessages) && c.has(SendMessages) && !c.has(ProcessMessage));
        assert!(c.oncpu && c.mempool && !c.block_connected);
        assert!(c
            .notes
            .iter()
            .any(|n| n.contains("ProcessMessage: not in the symbol table")));
    }
}
