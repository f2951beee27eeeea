//! The figures kept per peer and for the whole node, and the message-type
//! keys they are counted under.

use std::collections::BTreeMap;

use peerlog_common::{Direction, SliceKind};
use serde::Serialize;

use super::Hist;
use crate::event::CpuSlice;

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

/// Message and byte counts of one direction.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    /// Messages.
    pub msgs: u64,
    /// Payload bytes (without the 24-byte v1 header, which BIP324 doesn't have).
    pub bytes: u64,
}

impl Traffic {
    /// Accounts one message of `bytes` payload bytes.
    pub fn add(&mut self, bytes: u64) {
        self.msgs += 1;
        self.bytes += bytes;
    }
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
    /// Transactions the peer announced before any other peer and before
    /// we did, since peerlog attached: by txid or wtxid in its `inv`, or
    /// by sending a `tx` no one had announced. A transaction announced by
    /// txid by one peer and by wtxid by another is credited to the earlier
    /// once its `tx` shows the two hashes are one transaction.
    pub announced_first: u64,
    /// Of those, the transactions the mempool accepted.
    pub announced_first_accepted: u64,
    /// The peer's `tx` messages whose transaction peerlog had seen arrive
    /// before (from any peer) or in the mempool: bytes that brought
    /// nothing new.
    pub tx_recv_duplicate: u64,
    /// Their payload bytes.
    pub tx_recv_duplicate_bytes: u64,
    /// The peer's `tx` messages that answered no `getdata` of ours to it
    /// (Bitcoin Core only sends a transaction that was asked for).
    pub tx_recv_unsolicited: u64,
    /// Their payload bytes.
    pub tx_recv_unsolicited_bytes: u64,
}

impl TxRelay {
    pub(super) fn add(&mut self, o: &TxRelay) {
        self.inv_recv += o.inv_recv;
        self.getdata_sent += o.getdata_sent;
        self.tx_recv += o.tx_recv;
        self.notfound_recv += o.notfound_recv;
        self.inv_sent += o.inv_sent;
        self.getdata_recv += o.getdata_recv;
        self.tx_sent += o.tx_sent;
        self.notfound_sent += o.notfound_sent;
        self.announced_first += o.announced_first;
        self.announced_first_accepted += o.announced_first_accepted;
        self.tx_recv_duplicate += o.tx_recv_duplicate;
        self.tx_recv_duplicate_bytes += o.tx_recv_duplicate_bytes;
        self.tx_recv_unsolicited += o.tx_recv_unsolicited;
        self.tx_recv_unsolicited_bytes += o.tx_recv_unsolicited_bytes;
    }
}

/// Address relay: the entries of the peer's `addr` and `addrv2` messages,
/// and how many of them went over Bitcoin Core's rate limit (replayed by
/// peerlog, see `stats::addr`; `getpeerinfo` names Core's own count
/// `addr_rate_limited`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AddrFigures {
    /// `addr` and `addrv2` messages received whose entries were counted.
    pub msgs_recv: u64,
    /// Address entries in them, as each message's count says.
    pub entries_recv: u64,
    /// Entries over Bitcoin Core's token bucket: ones it drops unprocessed,
    /// unless the peer has the `addr` permission, which peerlog cannot see.
    pub rate_limited: u64,
}

impl AddrFigures {
    pub(super) fn add(&mut self, o: &AddrFigures) {
        self.msgs_recv += o.msgs_recv;
        self.entries_recv += o.entries_recv;
        self.rate_limited += o.rate_limited;
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

    pub(super) fn matched(&mut self, rtt_ns: u64) {
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
    /// Address relay.
    pub addr_relay: AddrFigures,
    /// `net:misbehaving_connection` reports.
    pub misbehaving: u64,
    /// Messages whose payload statistics read but which was not copied out
    /// of bitcoind or did not arrive whole: their facts are not counted.
    pub payloads_missing: u64,
    /// Payloads that did not decode as their message type.
    pub payloads_undecodable: u64,
}

impl Figures {
    /// Empty figures; `intervals` keeps interval histograms for `--hdr-log`.
    pub(super) fn new(intervals: bool) -> Self {
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
            addr_relay: AddrFigures::default(),
            misbehaving: 0,
            payloads_missing: 0,
            payloads_undecodable: 0,
        }
    }

    /// On-CPU time the message handler spent for the peer, ns.
    pub fn msghand_cpu_ns(&self) -> u64 {
        self.processing.totals.cpu_ns + self.sending.totals.cpu_ns
    }

    pub(super) fn count_slice(&mut self, s: &CpuSlice, key: Option<&'static str>, node: bool) {
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

    pub(super) fn count_message(
        &mut self,
        direction: Direction,
        key: &'static str,
        size: u64,
        node: bool,
    ) {
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

    pub(super) fn count_rejection(&mut self, reason: &str, max_reasons: usize) {
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

    pub(super) fn mempool_left(&mut self, vsize: u64) {
        self.mempool.in_mempool_txs = self.mempool.in_mempool_txs.saturating_sub(1);
        self.mempool.in_mempool_vsize = self.mempool.in_mempool_vsize.saturating_sub(vsize);
    }

    /// Every histogram with the name of its interval log (`--hdr-log`), and
    /// the per-message-type figures, borrowed apart.
    #[allow(clippy::type_complexity)]
    pub(super) fn hists_mut(
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

    pub(super) fn hists_mut(&mut self) -> [(&'static str, &mut Hist); 4] {
        [
            ("payload_recv_bytes", &mut self.payload_recv),
            ("payload_sent_bytes", &mut self.payload_sent),
            ("processing_wall_ns", &mut self.wall),
            ("processing_cpu_ns", &mut self.cpu),
        ]
    }
}
