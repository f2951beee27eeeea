//! The peer report card: for each peer what it brings the node (value),
//! what it costs the node (cost), and what it did wrong (flags, each with
//! its rule and the figures that raised it), ranked best first by a rule
//! anyone can redo from the row; and the same summed by connection type and
//! network, to weigh the mix of connections.
//!
//! A card is computed from the figures as `getpeerstats` and
//! `getnodestats` give them, which are also what a stats log line holds
//! (`peers` and `node`): the live `getpeerreport` and `peerlog report` over
//! a stats log give the same card for the same figures by construction.
//! The metrics endpoint reads the same figures straight from the collector
//! ([`PeerFigures::of`], [`flags_of`]): a scrape costs no JSON per peer.
//!
//! peerlog only reports. Nothing here acts on the node: a rule that
//! disconnected peers would be a rule an attacker could learn to pass while
//! it pushed honest peers out (see the README).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Collector, NodeReadings, PeerEntry};

/// A peer is `cpu-hog` when its share of the message handler's on-CPU time
/// is at least this…
pub const CPU_HOG_MIN_SHARE: f64 = 0.10;
/// …and at least this many times its share of the messages received.
pub const CPU_HOG_RATIO: f64 = 3.0;
/// A peer is `unresponsive` when this many of our pings are unanswered:
/// Bitcoin Core keeps one ping in flight, so one may be on its way.
pub const UNRESPONSIVE_PINGS: u64 = 2;
/// …or this many of our `getdata` transaction requests wait for their
/// `tx` or `notfound`: Bitcoin Core itself never has more in flight to a
/// peer (`MAX_PEER_TX_REQUEST_IN_FLIGHT`).
pub const UNRESPONSIVE_GETDATA: u64 = 100;
/// A peer is `stalling` when bitcoind holds this many bytes of messages for
/// it that its socket has not taken: Bitcoin Core's default
/// `-maxsendbuffer` (1000 kB), at which it stops serving the peer
/// (`fPauseSend`).
pub const STALLING_SEND_QUEUE_BYTES: u64 = 1_000_000;
/// …in every reading of bitcoind's memory over at least this many seconds:
/// a queue full at one moment may be a large block on its way.
pub const STALLING_MIN_SECS: u64 = 30;

/// A peer is `addr-flood` when this many of its address entries went over
/// Bitcoin Core's rate limit (`addr_relay.rate_limited`): one
/// whole `MAX_ADDR_TO_SEND` message past the bucket. Honest peers go over
/// it a little, as `getpeerinfo`'s `addr_rate_limited` shows on mainnet.
pub const ADDR_FLOOD_RATE_LIMITED: u64 = super::addr::MAX_ADDR_TO_SEND;

/// Rejection reasons of transactions that are only already known: bytes
/// that brought nothing new, not misbehaviour.
const DUPLICATE_REASONS: [&str; 3] = [
    "txn-already-in-mempool",
    "txn-already-known",
    "txn-same-nonwitness-data-in-mempool",
];

/// The ranking rule, in words; [`rank`] applies it.
pub const RANKING_RULE: &str = "fewer flags first (peers without flags before any flagged one); \
    then more blocks served first \
    (value.new_blocks), more transactions announced first and accepted \
    (value.txs_announced_first_accepted), more transactions accepted into the mempool \
    (value.txs_accepted), \
    more of our getdata answered with the transaction (value.getdata_answered), \
    less on-CPU time in the message handler (cost.cpu_ns, unknown last); then the lower peer id";

/// The flags and their rules, in words, as the card states them.
pub const FLAG_RULES: [(&str, &str); 6] = [
    (
        "misbehaving",
        "bitcoind reported the peer misbehaving (net:misbehaving) at least once",
    ),
    (
        "invalid-txs",
        "at least one transaction rejected for breaking consensus rules: a reason \
         `bad-txns-*` (but `bad-txns-inputs-missingorspent`, which orphans get) or \
         `mandatory-script-verify-flag-failed*`",
    ),
    (
        "cpu-hog",
        "message handler on-CPU share ≥ 10% and ≥ 3 × the peer's share of the messages received",
    ),
    (
        "unresponsive",
        "≥ 2 of our pings without pong, or ≥ 100 of our getdata transaction requests \
         without tx or notfound",
    ),
    (
        "stalling",
        "bitcoind held ≥ 1,000,000 bytes of messages for the peer that its socket had \
         not taken (send_queue_bytes; Bitcoin Core's default -maxsendbuffer) in every \
         reading over ≥ 30 s (send_queue_full_secs)",
    ),
    (
        "addr-flood",
        "≥ 1000 (MAX_ADDR_TO_SEND) of the peer's addr/addrv2 entries over Bitcoin Core's \
         rate limit (addr_relay.rate_limited), replayed from net_processing.cpp: a token bucket \
         starting at 1, filling at 0.1 a second (MAX_ADDR_RATE_PER_SECOND) up to 1000 \
         (MAX_ADDR_PROCESSING_TOKEN_BUCKET), plus 1000 for our getaddr; peers with the \
         addr permission, which Core does not limit, cannot be told apart",
    ),
];

/// Figures a card lacks, with why.
pub const NOT_MEASURED: [(&str, &str); 1] = [(
    "cost.orphanage_bytes",
    "the orphanage's per-peer usage is not read (see missing_figures in getnodestats)",
)];

/// The figures of one peer a card reads: a subset of a `getpeerstats` row,
/// read from the row ([`card`]) or from the collector ([`PeerFigures::of`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerFigures {
    id: i64,
    addr: String,
    network: Option<String>,
    connection_type: String,
    closed: bool,
    misbehaving: u64,
    bytesrecv: Option<u64>,
    bytessent: Option<u64>,
    payloadrecv: u64,
    payloadsent: u64,
    msgsrecv: u64,
    cpu_ns: Option<u64>,
    msghand_cpu_share: Option<f64>,
    mempool: Option<MempoolFigures>,
    blocks: Option<BlockFigures>,
    tx_relay: TxRelayFigures,
    getdata_tx_latency_ns: Counted,
    getdata_tx_pending: u64,
    ping: PingFigures,
    memory: MemoryFigures,
    addr_relay: AddrFigures,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct MempoolFigures {
    accepted: u64,
    rejected_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct BlockFigures {
    new_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct TxRelayFigures {
    notfound_recv: u64,
    announced_first: u64,
    announced_first_accepted: u64,
    tx_recv_duplicate_bytes: u64,
    tx_recv_unsolicited_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Counted {
    count: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct PingFigures {
    pings_sent: u64,
    pongs_matched: u64,
    min_rtt_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct AddrFigures {
    msgs_recv: u64,
    entries_recv: u64,
    rate_limited: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct MemoryFigures {
    send_queue_bytes: Option<u64>,
    send_queue_full_secs: Option<u64>,
    recv_queue_bytes: Option<u64>,
}

/// The node figures a card reads: a subset of `getnodestats`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NodeFigures {
    msgsrecv: u64,
}

impl PeerFigures {
    /// The figures of a peer `c` keeps, as its `getpeerstats` row holds
    /// them (`Collector::peer_json`), bitcoind's own taken from `readings`.
    pub fn of(c: &Collector, e: &PeerEntry, readings: &NodeReadings) -> Self {
        let (p, f) = (&e.peer, &e.stats.figures);
        let cov = c.coverage();
        let bytes = cov.node_counters.then(|| readings.bytes(p.id)).flatten();
        let queues = readings.queues(p.id).unwrap_or_default();
        Self {
            id: p.id,
            addr: p.addr.to_string(),
            network: p.network.map(|n| n.name().to_string()),
            connection_type: p.conn_type.to_string(),
            closed: p.closed,
            misbehaving: f.misbehaving,
            bytesrecv: bytes.map(|b| b.recv),
            bytessent: bytes.map(|b| b.sent),
            payloadrecv: f.recv.bytes,
            payloadsent: f.sent.bytes,
            msgsrecv: f.recv.msgs,
            cpu_ns: cov.slices.then(|| f.msghand_cpu_ns()),
            msghand_cpu_share: c.msghand_cpu_share(f),
            mempool: cov.mempool.then(|| MempoolFigures {
                accepted: f.mempool.accepted,
                rejected_by_reason: f.mempool.rejected_by_reason.clone(),
            }),
            blocks: cov.block_connected.then_some(BlockFigures {
                new_blocks: f.blocks.new_blocks,
            }),
            tx_relay: TxRelayFigures {
                notfound_recv: f.tx_relay.notfound_recv,
                announced_first: f.tx_relay.announced_first,
                announced_first_accepted: f.tx_relay.announced_first_accepted,
                tx_recv_duplicate_bytes: f.tx_relay.tx_recv_duplicate_bytes,
                tx_recv_unsolicited_bytes: f.tx_relay.tx_recv_unsolicited_bytes,
            },
            getdata_tx_latency_ns: Counted {
                count: f.getdata_tx_latency_ns.count(),
            },
            getdata_tx_pending: e.stats.getdata_tx_pending() as u64,
            ping: PingFigures {
                pings_sent: f.ping.pings_sent,
                pongs_matched: f.ping.pongs_matched,
                min_rtt_ns: f.ping.min_rtt_ns,
            },
            memory: MemoryFigures {
                send_queue_bytes: queues.send,
                send_queue_full_secs: readings.send_queue_full_secs(p.id),
                recv_queue_bytes: queues.recv,
            },
            addr_relay: AddrFigures {
                msgs_recv: f.addr_relay.msgs_recv,
                entries_recv: f.addr_relay.entries_recv,
                rate_limited: f.addr_relay.rate_limited,
            },
        }
    }
}

impl NodeFigures {
    /// The node's figures in `c`, as `getnodestats` holds them.
    pub fn of(c: &Collector) -> Self {
        Self {
            msgsrecv: c.total().recv.msgs,
        }
    }
}

/// What a peer brings the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerValue {
    /// Blocks that became the tip when the peer's `block`, `cmpctblock` or
    /// `blocktxn` was processed: served first.
    pub new_blocks: Option<u64>,
    /// Transactions the peer announced before any other peer and before
    /// we did (by txid or wtxid), since peerlog attached.
    pub txs_announced_first: u64,
    /// Of those, the transactions the mempool accepted.
    pub txs_announced_first_accepted: u64,
    /// The peer's transactions the mempool accepted.
    pub txs_accepted: Option<u64>,
    /// Our `getdata` transaction requests the peer answered with the
    /// transaction.
    pub getdata_answered: u64,
    /// The lowest ping round trip, milliseconds.
    pub ping_min_ms: Option<f64>,
}

/// What a peer costs the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerCost {
    /// On-CPU time of bitcoind's message handler for the peer, ns.
    pub cpu_ns: Option<u64>,
    /// Its share of the message handler's on-CPU time.
    pub cpu_share: Option<f64>,
    /// The peer's share of the messages the node received.
    pub msgs_recv_share: f64,
    /// Bytes received from and sent to the peer: bitcoind's own counters
    /// (`bytesrecv`, `bytessent`) where read, else the payload bytes.
    pub bytes_recv: u64,
    /// See `bytes_recv`.
    pub bytes_sent: u64,
    /// Transactions rejected for breaking consensus rules.
    pub txs_invalid: u64,
    /// Transactions rejected as already known: bytes that brought nothing.
    pub txs_duplicate: u64,
    /// Payload bytes of the peer's `tx` messages whose transaction peerlog
    /// had seen arrive before or in the mempool.
    pub tx_bytes_duplicate: u64,
    /// Payload bytes of the peer's `tx` messages that answered no
    /// `getdata` of ours.
    pub tx_bytes_unsolicited: u64,
    /// Transactions rejected by policy (fees, standardness, limits).
    pub txs_rejected_policy: u64,
    /// Every rejection by its reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// `notfound` entries the peer answered our requests with.
    pub notfound: u64,
    /// Bytes bitcoind holds for the peer, not yet taken by its socket.
    pub send_queue_bytes: Option<u64>,
    /// For how many seconds every reading found the send queue full.
    pub send_queue_full_secs: Option<u64>,
    /// Bytes of the peer's messages waiting to be processed.
    pub recv_queue_bytes: Option<u64>,
}

/// A flag a peer raised: which, by what rule, on which figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagHit {
    /// The flag's name (see [`FLAG_RULES`]).
    pub flag: &'static str,
    /// The figures that raised it.
    pub because: String,
}

/// One peer's row of the card.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerCard {
    /// 1 for the best peer.
    pub rank: usize,
    /// Peer id, as in `getpeerinfo`.
    pub id: i64,
    /// Address, as in `getpeerinfo`.
    pub addr: String,
    /// Network, as in `getpeerinfo`.
    pub network: Option<String>,
    /// Connection type, as in `getpeerinfo`.
    pub connection_type: String,
    /// The connection is closed; the figures are final.
    pub closed: bool,
    /// What it brings.
    pub value: PeerValue,
    /// What it costs.
    pub cost: PeerCost,
    /// What it did wrong.
    pub flags: Vec<FlagHit>,
}

/// Value and cost summed over the peers of one connection type and network.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MixRow {
    /// Connection type, as in `getpeerinfo`.
    pub connection_type: String,
    /// Network, as in `getpeerinfo`.
    pub network: Option<String>,
    /// Peers in the group (closed ones included).
    pub peers: u64,
    /// Peers with at least one flag.
    pub flagged: u64,
    /// Blocks served first.
    pub new_blocks: u64,
    /// Transactions announced first.
    pub txs_announced_first: u64,
    /// Transactions accepted.
    pub txs_accepted: u64,
    /// getdata answered.
    pub getdata_answered: u64,
    /// On-CPU time, ns (peers whose time is known).
    pub cpu_ns: u64,
    /// Bytes both ways.
    pub bytes: u64,
    /// The same per peer: blocks, transactions, CPU ns, bytes.
    pub per_peer: MixPerPeer,
}

/// A [`MixRow`]'s sums divided by its peers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MixPerPeer {
    /// Blocks served first per peer.
    pub new_blocks: f64,
    /// Transactions accepted per peer.
    pub txs_accepted: f64,
    /// On-CPU ns per peer.
    pub cpu_ns: f64,
    /// Bytes per peer.
    pub bytes: f64,
}

/// A named rule, as the card states it: a flag's, or why a figure is
/// missing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// The flag or figure.
    pub name: &'static str,
    /// Its rule, or why it is missing.
    pub rule: &'static str,
}

/// The report card of every peer of a moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Card {
    /// Best first.
    pub peers: Vec<PeerCard>,
    /// By connection type and network.
    pub connection_mix: Vec<MixRow>,
    /// How peers are ranked, in words.
    pub ranking_rule: &'static str,
    /// The flags' rules.
    pub flag_rules: Vec<Rule>,
    /// Figures a card lacks, and why.
    pub not_measured: Vec<Rule>,
}

/// The card of `peers` (rows as `getpeerstats` gives them) on a node whose
/// figures are `node` (as `getnodestats` gives them).
pub fn card(peers: &[Value], node: &Value) -> Result<Card> {
    let node: NodeFigures = serde_json::from_value(node.clone())
        .context("the node's figures are not those of this peerlog")?;
    let mut rows = Vec::with_capacity(peers.len());
    for p in peers {
        let figures: PeerFigures = serde_json::from_value(p.clone()).with_context(|| {
            format!(
                "the figures of peer {} are not those of this peerlog",
                p.get("id").map_or("without id".into(), Value::to_string)
            )
        })?;
        rows.push(peer_card(figures, &node));
    }
    rank(&mut rows);
    let rules = |list: &[(&'static str, &'static str)]| {
        list.iter()
            .map(|&(name, rule)| Rule { name, rule })
            .collect()
    };
    Ok(Card {
        connection_mix: connection_mix(&rows),
        peers: rows,
        ranking_rule: RANKING_RULE,
        flag_rules: rules(&FLAG_RULES),
        not_measured: rules(&NOT_MEASURED),
    })
}

/// The flags `p` raises on a node of figures `node`, by [`FLAG_RULES`]:
/// those of its card.
pub fn flags_of(p: &PeerFigures, node: &NodeFigures) -> Vec<FlagHit> {
    flags(p, &cost_of(p, node))
}

/// What a peer costs the node.
fn cost_of(p: &PeerFigures, node: &NodeFigures) -> PeerCost {
    let mut cost = PeerCost {
        cpu_ns: p.cpu_ns,
        cpu_share: p.msghand_cpu_share,
        msgs_recv_share: if node.msgsrecv > 0 {
            p.msgsrecv as f64 / node.msgsrecv as f64
        } else {
            0.0
        },
        bytes_recv: p.bytesrecv.unwrap_or(p.payloadrecv),
        bytes_sent: p.bytessent.unwrap_or(p.payloadsent),
        notfound: p.tx_relay.notfound_recv,
        tx_bytes_duplicate: p.tx_relay.tx_recv_duplicate_bytes,
        tx_bytes_unsolicited: p.tx_relay.tx_recv_unsolicited_bytes,
        send_queue_bytes: p.memory.send_queue_bytes,
        send_queue_full_secs: p.memory.send_queue_full_secs,
        recv_queue_bytes: p.memory.recv_queue_bytes,
        ..PeerCost::default()
    };
    if let Some(mempool) = &p.mempool {
        for (reason, &n) in &mempool.rejected_by_reason {
            match RejectionKind::of(reason) {
                RejectionKind::Invalid => cost.txs_invalid += n,
                RejectionKind::Duplicate => cost.txs_duplicate += n,
                RejectionKind::Policy => cost.txs_rejected_policy += n,
            }
        }
        cost.rejected_by_reason = mempool.rejected_by_reason.clone();
    }
    cost
}

fn peer_card(p: PeerFigures, node: &NodeFigures) -> PeerCard {
    let cost = cost_of(&p, node);
    let value = PeerValue {
        new_blocks: p.blocks.as_ref().map(|b| b.new_blocks),
        txs_announced_first: p.tx_relay.announced_first,
        txs_announced_first_accepted: p.tx_relay.announced_first_accepted,
        txs_accepted: p.mempool.as_ref().map(|m| m.accepted),
        getdata_answered: p.getdata_tx_latency_ns.count,
        ping_min_ms: p.ping.min_rtt_ns.map(|ns| ns as f64 / 1e6),
    };
    let flags = flags(&p, &cost);
    PeerCard {
        rank: 0,
        id: p.id,
        addr: p.addr,
        network: p.network,
        connection_type: p.connection_type,
        closed: p.closed,
        value,
        cost,
        flags,
    }
}

/// Why the mempool turned a transaction down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RejectionKind {
    /// It breaks consensus rules.
    Invalid,
    /// The node has it already.
    Duplicate,
    /// Policy: fees, standardness, package and mempool limits, missing inputs.
    Policy,
}

impl RejectionKind {
    /// The kind of Bitcoin Core's rejection `reason` (`mempool:rejected`).
    fn of(reason: &str) -> Self {
        if DUPLICATE_REASONS.contains(&reason) {
            RejectionKind::Duplicate
        } else if (reason.starts_with("bad-txns-") && reason != "bad-txns-inputs-missingorspent")
            || reason.starts_with("mandatory-script-verify-flag-failed")
        {
            RejectionKind::Invalid
        } else {
            RejectionKind::Policy
        }
    }
}

/// The flags a peer raises, by [`FLAG_RULES`].
fn flags(p: &PeerFigures, cost: &PeerCost) -> Vec<FlagHit> {
    let mut hits = Vec::new();
    let mut hit = |flag: &'static str, because: String| hits.push(FlagHit { flag, because });
    if p.misbehaving > 0 {
        hit("misbehaving", format!("misbehaving = {}", p.misbehaving));
    }
    if cost.txs_invalid > 0 {
        let reasons: Vec<String> = cost
            .rejected_by_reason
            .iter()
            .filter(|(r, _)| RejectionKind::of(r) == RejectionKind::Invalid)
            .map(|(r, n)| format!("{r} × {n}"))
            .collect();
        hit(
            "invalid-txs",
            format!(
                "{} invalid transactions: {}",
                cost.txs_invalid,
                reasons.join(", ")
            ),
        );
    }
    if let Some(share) = cost.cpu_share {
        if share >= CPU_HOG_MIN_SHARE && share >= CPU_HOG_RATIO * cost.msgs_recv_share {
            hit(
                "cpu-hog",
                format!(
                    "on-CPU share {:.1}% for {:.1}% of the messages received",
                    share * 100.0,
                    cost.msgs_recv_share * 100.0
                ),
            );
        }
    }
    let unanswered_pings = p.ping.pings_sent.saturating_sub(p.ping.pongs_matched);
    if unanswered_pings >= UNRESPONSIVE_PINGS || p.getdata_tx_pending >= UNRESPONSIVE_GETDATA {
        hit(
            "unresponsive",
            format!(
                "{unanswered_pings} of {} pings unanswered, {} getdata requests waiting",
                p.ping.pings_sent, p.getdata_tx_pending
            ),
        );
    }
    if let (Some(bytes), Some(secs)) = (cost.send_queue_bytes, cost.send_queue_full_secs) {
        if bytes >= STALLING_SEND_QUEUE_BYTES && secs >= STALLING_MIN_SECS {
            hit(
                "stalling",
                format!("send_queue_bytes = {bytes}, full in every reading for {secs} s"),
            );
        }
    }
    if p.addr_relay.rate_limited >= ADDR_FLOOD_RATE_LIMITED {
        hit(
            "addr-flood",
            format!(
                "{} of {} address entries in {} addr/addrv2 messages over the rate limit",
                p.addr_relay.rate_limited, p.addr_relay.entries_recv, p.addr_relay.msgs_recv
            ),
        );
    }
    hits
}

/// Sorts `rows` by [`RANKING_RULE`] and numbers them.
fn rank(rows: &mut [PeerCard]) {
    rows.sort_by(|a, b| {
        let key = |c: &PeerCard| {
            (
                c.flags.len(),
                std::cmp::Reverse(c.value.new_blocks.unwrap_or(0)),
                std::cmp::Reverse(c.value.txs_announced_first_accepted),
                std::cmp::Reverse(c.value.txs_accepted.unwrap_or(0)),
                std::cmp::Reverse(c.value.getdata_answered),
                c.cost.cpu_ns.unwrap_or(u64::MAX),
                c.id,
            )
        };
        key(a).cmp(&key(b))
    });
    for (i, row) in rows.iter_mut().enumerate() {
        row.rank = i + 1;
    }
}

/// The rows summed by connection type and network.
fn connection_mix(rows: &[PeerCard]) -> Vec<MixRow> {
    let mut groups: BTreeMap<(String, Option<String>), MixRow> = BTreeMap::new();
    for r in rows {
        let g = groups
            .entry((r.connection_type.clone(), r.network.clone()))
            .or_insert_with(|| MixRow {
                connection_type: r.connection_type.clone(),
                network: r.network.clone(),
                ..MixRow::default()
            });
        g.peers += 1;
        g.flagged += u64::from(!r.flags.is_empty());
        g.new_blocks += r.value.new_blocks.unwrap_or(0);
        g.txs_announced_first += r.value.txs_announced_first;
        g.txs_accepted += r.value.txs_accepted.unwrap_or(0);
        g.getdata_answered += r.value.getdata_answered;
        g.cpu_ns += r.cost.cpu_ns.unwrap_or(0);
        g.bytes += r.cost.bytes_recv + r.cost.bytes_sent;
    }
    groups
        .into_values()
        .map(|mut g| {
            let n = g.peers as f64;
            g.per_peer = MixPerPeer {
                new_blocks: g.new_blocks as f64 / n,
                txs_accepted: g.txs_accepted as f64 / n,
                cpu_ns: g.cpu_ns as f64 / n,
                bytes: g.bytes as f64 / n,
            };
            g
        })
        .collect()
}
