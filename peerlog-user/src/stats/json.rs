//! The JSON form of the figures, shared by the control RPC
//! (`getpeerstats`, `getnodestats`) and the stats log; documented field by
//! field in `docs/stats.md`.
//!
//! Figures the attached probes cannot give are `null`, never `0`.

use serde_json::{json, Map, Value};

use super::{Collector, Coverage, Figures, MsgTypeFigures, NodeReadings, PeerEntry, Traffic};
use crate::{
    elf::layout::QueueBytes,
    filter::{PeerFilter, PeerSelector},
    peers::{Network, NodeBytes, Peer},
};

/// Which peers and message types a report shows: the peer filter language
/// of `--peer`, and message types (Bitcoin Core's, or `*other*`).
#[derive(Debug, Clone, Default)]
pub struct StatsFilter {
    /// Peers shown; empty selects every peer.
    pub peers: PeerSelector,
    /// Message types shown in the per-message-type figures; empty shows all.
    pub msg_types: Vec<String>,
}

impl StatsFilter {
    /// A filter of these terms and message types.
    pub fn new(peers: Vec<PeerFilter>, msg_types: Vec<String>) -> Self {
        Self {
            peers: PeerSelector::new(peers),
            msg_types,
        }
    }

    /// Whether the figures of message type `key` are shown.
    pub fn shows_msg_type(&self, key: &str) -> bool {
        self.msg_types.is_empty() || self.msg_types.iter().any(|t| t == key)
    }

    /// Whether the peer is shown.
    pub fn shows_peer(&self, p: &Peer) -> bool {
        self.peers.matches(&p.identity())
    }
}

impl Coverage {
    /// `{"cpu_slices": true, "node_counters": ..., ...}`.
    pub fn to_json(&self) -> Value {
        json!({
            "cpu_slices": self.slices,
            "node_counters": self.node_counters,
            "send_queue": self.send_queue,
            "recv_queue": self.recv_queue,
            "mempool": self.mempool,
            "block_connected": self.block_connected,
            "notes": self.notes,
        })
    }
}

impl Collector {
    /// The peers `filter` selects, as `getpeerstats` returns them, from
    /// one reading of bitcoind's memory.
    pub fn peers_json(&mut self, filter: &StatsFilter) -> Vec<Value> {
        let readings = self.read_node();
        self.peers()
            .iter()
            .filter(|e| filter.shows_peer(&e.peer))
            .map(|e| self.peer_json(e, filter, &readings))
            .collect()
    }

    /// One peer: who it is (named as in `getpeerinfo`) and its figures,
    /// bitcoind's own taken from `readings`.
    pub fn peer_json(&self, e: &PeerEntry, filter: &StatsFilter, readings: &NodeReadings) -> Value {
        let (p, stats) = (&e.peer, &e.stats);
        let mut out = Map::new();
        out.insert("id".into(), json!(p.id));
        out.insert("addr".into(), json!(p.addr));
        out.insert("network".into(), json!(p.network.map(Network::name)));
        out.insert("connection_type".into(), json!(p.conn_type));
        out.insert("conntime".into(), json!(p.conntime));
        out.insert("conntime_known".into(), json!(p.conntime_known));
        out.insert("closed".into(), json!(p.closed));
        out.insert("evicted".into(), json!(p.evicted));
        let f = &stats.figures;
        let cov = &self.coverage;
        out.insert("msghand_cpu_share".into(), json!(self.msghand_cpu_share(f)));
        let bytes = cov.node_counters.then(|| readings.bytes(p.id)).flatten();
        self.figures_json(f, bytes, filter, &mut out);
        let queues = readings.queues(p.id).unwrap_or_default();
        let mut memory = memory_json(queues);
        memory["send_queue_full_secs"] = json!(readings.send_queue_full_secs(p.id));
        out.insert("memory".into(), memory);
        let per_msg = |key: &str| f.per_msg.get(key).cloned().unwrap_or_default();
        let (cmpct, getblocktxn, blocktxn) = (
            per_msg("cmpctblock"),
            per_msg("getblocktxn"),
            per_msg("blocktxn"),
        );
        out.insert(
            "compact_blocks".into(),
            json!({
                "sendcmpct_recv": stats.sendcmpct_recv,
                "sendcmpct_sent": stats.sendcmpct_sent,
                "cmpctblock_recv": cmpct.recv.msgs,
                "cmpctblock_sent": cmpct.sent.msgs,
                "getblocktxn_recv": getblocktxn.recv.msgs,
                "getblocktxn_sent": getblocktxn.sent.msgs,
                "blocktxn_recv": blocktxn.recv.msgs,
                "blocktxn_sent": blocktxn.sent.msgs,
            }),
        );
        out.insert(
            "getdata_tx_pending".into(),
            json!(stats.getdata_tx_pending()),
        );
        Value::Object(out)
    }

    /// A peer's share of the message handler's on-CPU time charged to
    /// peers; None when the slices are not measured or none was charged.
    pub(super) fn msghand_cpu_share(&self, f: &Figures) -> Option<f64> {
        let all = self.total.msghand_cpu_ns();
        (self.coverage.slices && all > 0).then(|| f.msghand_cpu_ns() as f64 / all as f64)
    }

    /// The whole node, as `getnodestats` returns it: the same figures as a
    /// peer, summed over every peer ever seen (dropped ones too), plus the
    /// distributions per message type and what belongs to no peer;
    /// bitcoind's own figures taken from `readings`.
    pub fn node_json(&self, filter: &StatsFilter, readings: &NodeReadings) -> Value {
        let mut out = Map::new();
        let connected = self.peers().connected();
        out.insert("peers_connected".into(), json!(connected));
        out.insert(
            "peers_closed_kept".into(),
            json!(self.peers().iter().count() - connected),
        );
        // `--follow` traces one bitcoind process after the other: the one
        // traced now (null while waiting for the next), and how many so far.
        out.insert("pid".into(), json!(self.process()));
        out.insert("attaches".into(), json!(self.attaches()));
        let bytes = self.coverage.node_counters.then_some(readings.bytes_total);
        self.figures_json(&self.total, bytes, filter, &mut out);
        let mut memory = memory_json(readings.queues_total);
        memory["rss_bytes"] = json!(readings.rss_bytes);
        out.insert("memory".into(), memory);
        let has_slices = self.coverage.slices;
        let msg_types: Map<String, Value> = self
            .total
            .per_msg
            .iter()
            .filter(|(key, _)| filter.shows_msg_type(key))
            .map(|(key, m)| {
                let hists = m.hists.as_deref();
                let direction = |t: &Traffic, h: Option<&super::Hist>| {
                    json!({"msgs": t.msgs, "bytes": t.bytes, "payload_size": h})
                };
                let processing = has_slices.then(|| {
                    json!({
                        "slices": m.processing.slices,
                        "wall_ns": m.processing.wall_ns,
                        "cpu_ns": m.processing.cpu_ns,
                        "slices_without_cpu": m.processing.slices_without_cpu,
                        "wall_ns_per_slice": hists.map(|h| &h.wall),
                        "cpu_ns_per_slice": hists.map(|h| &h.cpu),
                    })
                });
                (
                    key.to_string(),
                    json!({
                        "recv": direction(&m.recv, hists.map(|h| &h.payload_recv)),
                        "sent": direction(&m.sent, hists.map(|h| &h.payload_sent)),
                        "processing": processing,
                    }),
                )
            })
            .collect();
        out.insert("msg_types".into(), Value::Object(msg_types));
        out.insert("unattributed".into(), json!(self.unattributed));
        Value::Object(out)
    }

    /// The figures a peer and the node have in common.
    fn figures_json(
        &self,
        f: &Figures,
        bytes: Option<NodeBytes>,
        filter: &StatsFilter,
        out: &mut Map<String, Value>,
    ) {
        let cov = &self.coverage;
        // Types seen in that direction: `verack` has a count and zero bytes.
        let per_msg = |pick: &dyn Fn(&MsgTypeFigures) -> Traffic, bytes: bool| {
            f.per_msg
                .iter()
                .filter(|(key, m)| filter.shows_msg_type(key) && pick(m).msgs > 0)
                .map(|(key, m)| {
                    let t = pick(m);
                    (key.to_string(), json!(if bytes { t.bytes } else { t.msgs }))
                })
                .collect::<Map<String, Value>>()
        };
        let fields = [
            ("misbehaving", json!(f.misbehaving)),
            ("bytesrecv", json!(bytes.map(|b| b.recv))),
            ("bytessent", json!(bytes.map(|b| b.sent))),
            ("msgsrecv", json!(f.recv.msgs)),
            ("msgssent", json!(f.sent.msgs)),
            ("payloadrecv", json!(f.recv.bytes)),
            ("payloadsent", json!(f.sent.bytes)),
            (
                "msgsrecv_per_msg",
                Value::Object(per_msg(&|m| m.recv, false)),
            ),
            (
                "msgssent_per_msg",
                Value::Object(per_msg(&|m| m.sent, false)),
            ),
            (
                "payloadrecv_per_msg",
                Value::Object(per_msg(&|m| m.recv, true)),
            ),
            (
                "payloadsent_per_msg",
                Value::Object(per_msg(&|m| m.sent, true)),
            ),
            ("payload_recv_size", json!(f.payload_recv)),
            ("payload_sent_size", json!(f.payload_sent)),
            ("cpu_ns", json!(cov.slices.then(|| f.msghand_cpu_ns()))),
            ("processing", json!(cov.slices.then_some(&f.processing))),
            ("sending", json!(cov.slices.then_some(&f.sending))),
            (
                "processing_per_msg",
                json!(cov.slices.then(|| {
                    f.per_msg
                        .iter()
                        .filter(|(key, m)| filter.shows_msg_type(key) && m.processing.slices > 0)
                        .map(|(key, m)| (key.to_string(), json!(m.processing)))
                        .collect::<Map<String, Value>>()
                })),
            ),
            ("mempool", json!(cov.mempool.then_some(&f.mempool))),
            ("blocks", json!(cov.block_connected.then_some(f.blocks))),
            ("tx_relay", json!(f.tx_relay)),
            ("getdata_tx_latency_ns", json!(f.getdata_tx_latency_ns)),
            ("ping", json!(f.ping)),
            ("addr_relay", json!(f.addr_relay)),
            ("payloads_missing", json!(f.payloads_missing)),
            ("payloads_undecodable", json!(f.payloads_undecodable)),
        ];
        for (name, value) in fields {
            out.insert(name.to_string(), value);
        }
    }
}

/// The `memory` object of a peer or the node: what bitcoind holds in the
/// connections' queues; the orphanage share is never read (see
/// `NOT_MEASURED`), so it is always null.
fn memory_json(queues: QueueBytes) -> Value {
    json!({
        "send_queue_bytes": queues.send,
        "recv_queue_bytes": queues.recv,
        "orphanage_bytes": null,
    })
}
