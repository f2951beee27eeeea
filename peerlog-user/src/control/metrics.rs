//! The figures in Prometheus' text exposition format, as the endpoint of
//! [`super::http`] serves them.
//!
//! Per-peer series carry the labels `peer_id`, `addr`, `conn_type` and
//! `network` (`getpeerinfo`'s names of the connection type and network).
//! Label sets stay bounded: at most `--metrics-max-peers` peers are exported
//! per scrape, chosen by the rule of [`crate::stats::PeerSeries`];
//! `peerlog_peers_omitted` counts the others, which the node's series (the
//! same families without peer labels) still include. Message types are
//! Bitcoin Core's plus `*other*`. A closed peer is exported with its final
//! figures until the first scrape `--metrics-closed-grace` seconds after it
//! closed, then dropped.
//!
//! The peer report card's flags ([`card::FLAG_RULES`]) are exported as
//! `peerlog_peer_flag`, one series per flag of the card for each exported
//! peer, 1 when the peer raises it and 0 when not (so an alert resolves,
//! and a missing series means a missing peer, not a clean one), and as
//! `peerlog_peers_flagged`, counted over every peer the card lists, those
//! left out by the cap too. One scrape computes each peer's flags once.

use std::{collections::BTreeMap, fmt::Write as _};

use peerlog_common::SliceKind;
use serde_json::Value;

use super::protocol::TraceStatus;
use crate::{
    elf::layout::QueueBytes,
    peers::{Network, NodeBytes},
    stats::{
        card::{self, NodeFigures, PeerFigures},
        Collector, Figures, Hist, NodeReadings, PeerEntry, PeerSeries, SliceTotals, Slices,
        StatsFilter, Traffic,
    },
};

/// The quantiles exported for distributions.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Escapes a label value: backslash, double quote and newline.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the text exposition format.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// A summary of a histogram of nanoseconds, in seconds.
    fn summary_seconds(&mut self, name: &str, labels: &str, h: &Hist) {
        let total = h.total();
        let sep = if labels.is_empty() { "" } else { "," };
        for q in QUANTILES {
            let v = if total.is_empty() {
                f64::NAN
            } else {
                total.value_at_quantile(q) as f64 / 1e9
            };
            self.sample(name, &format!("{labels}{sep}quantile=\"{q}\""), v);
        }
        let sum = total.mean() * total.len() as f64 / 1e9;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, total.len() as f64);
    }
}

/// The message handler's slices of one kind: `processing` or `sending`.
fn slices(f: &Figures, kind: SliceKind) -> &Slices {
    match kind {
        SliceKind::Processing => &f.processing,
        SliceKind::Sending => &f.sending,
    }
}

fn peer_labels(e: &PeerEntry) -> String {
    let p = &e.peer;
    format!(
        "peer_id=\"{}\",addr=\"{}\",conn_type=\"{}\",network=\"{}\"",
        p.id,
        label_value(&p.addr),
        label_value(&p.conn_type),
        p.identity().network().map_or("", Network::name)
    )
}

/// What one scrape asks for.
pub struct ScrapeRequest<'a> {
    /// The trace's status: its losses.
    pub trace: &'a TraceStatus,
    /// The b-msghand thread's figures, as the stats log shows them.
    pub msghand: &'a Value,
    /// The peers and message types shown.
    pub filter: &'a StatsFilter,
    /// Which peers get series of their own.
    pub series: &'a PeerSeries,
    /// The time of the scrape, unix seconds: closed peers whose grace has
    /// passed by then are exported for the last time.
    pub now_unix: u64,
}

/// Renders every metric; notes the scrape, so closed peers whose grace has
/// passed are not exported again.
pub fn render(collector: &mut Collector, req: &ScrapeRequest) -> String {
    let readings = collector.read_node();
    let text = render_text(collector, req, &readings);
    collector.scraped(req.series, req.now_unix);
    text
}

/// One row of a family: a peer's series, or the node's.
struct Row<'a> {
    /// The peer's labels; empty for the node.
    labels: String,
    /// The peer, or None for the node.
    peer: Option<&'a PeerEntry>,
    /// Its figures.
    figures: &'a Figures,
    /// bitcoind's byte counters, when known.
    bytes: Option<NodeBytes>,
    /// bitcoind's queues, when read.
    queues: Option<QueueBytes>,
}

/// What one scrape exports: the figures, and the rows cut from them.
struct Scrape<'a> {
    req: &'a ScrapeRequest<'a>,
    c: &'a Collector,
    /// bitcoind's resident set size, read with the rows.
    rss_bytes: Option<u64>,
    /// Peers selected beyond the cap.
    omitted: usize,
    /// Per-peer and node series of the same figure share a family: one row
    /// per exported peer with its labels, then the node's without labels;
    /// bitcoind's own figures come from one reading of its memory.
    rows: Vec<Row<'a>>,
    /// The card's flags of every peer the collector keeps, by peer id.
    flags: BTreeMap<i64, Vec<&'static str>>,
}

impl<'a> Scrape<'a> {
    fn new(c: &'a Collector, req: &'a ScrapeRequest<'a>, readings: &NodeReadings) -> Self {
        let (peers, omitted) = c.series_peers(req.series, req.filter);
        // From the figures as the card reads them, typed: no JSON per peer.
        let node = NodeFigures::of(c);
        let flags = c
            .peers()
            .iter()
            .map(|e| {
                let figures = PeerFigures::of(c, e, readings);
                let hits = card::flags_of(&figures, &node);
                (e.peer.id, hits.into_iter().map(|h| h.flag).collect())
            })
            .collect();
        let rows = peers
            .into_iter()
            .map(|p| Row {
                labels: peer_labels(p),
                peer: Some(p),
                figures: &p.stats.figures,
                bytes: readings.bytes(p.peer.id),
                queues: readings.queues(p.peer.id),
            })
            .chain(std::iter::once(Row {
                labels: String::new(),
                peer: None,
                figures: c.total(),
                bytes: Some(readings.bytes_total),
                queues: Some(readings.queues_total),
            }))
            .collect();
        Self {
            req,
            c,
            rss_bytes: readings.rss_bytes,
            omitted,
            rows,
            flags,
        }
    }

    /// The rows of exported peers.
    fn peer_rows(&self) -> impl Iterator<Item = (&Row<'a>, &'a PeerEntry)> {
        self.rows.iter().filter_map(|r| Some((r, r.peer?)))
    }
}

/// When a family is exported: always, or when its figures are measured.
#[derive(Clone, Copy)]
enum When {
    Always,
    /// The message handler's CPU slices (`Coverage::slices`).
    Slices,
    /// bitcoind's own byte counters (`Coverage::node_counters`).
    NodeCounters,
    /// `CNode::m_send_memusage` (`Coverage::send_queue`).
    SendQueue,
    /// `CNode::m_msg_process_queue_size` (`Coverage::recv_queue`).
    RecvQueue,
    /// Mempool effects (`Coverage::mempool`).
    Mempool,
    /// Blocks connected (`Coverage::block_connected`).
    Blocks,
    /// The message handler thread's CPU time, read from /proc.
    MsghandThread,
}

/// How a family's samples are taken.
#[derive(Clone, Copy)]
enum Samples {
    /// One sample a row: the figure's value.
    PerRow(fn(&Figures) -> f64),
    /// One summary a row, of a histogram of nanoseconds, in seconds.
    SummaryPerRow(fn(&Figures) -> &Hist),
    /// A row's messages of each shown type and direction, where there were
    /// any: a figure of their traffic.
    PerMsgType(fn(&Traffic) -> u64),
    /// A row's slice sums, processing then sending.
    PerSliceKind(fn(&SliceTotals) -> f64),
    /// Samples with labels of their own.
    Own(fn(&Scrape, &mut Exposition, &str)),
}

/// One metric family: its name, type, help, and where its samples come from.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    when: When,
    samples: Samples,
}

/// Every family, in the order of the exposition.
const FAMILIES: &[Family] = &[
    Family {
        name: "peerlog_figures_measured",
        kind: "gauge",
        help: "1 when this group of figures is measured, 0 when its figures are missing",
        when: When::Always,
        samples: Samples::Own(figures_measured),
    },
    Family {
        name: "peerlog_events_lost_total",
        kind: "counter",
        help: "Events lost, by cause",
        when: When::Always,
        samples: Samples::Own(events_lost),
    },
    Family {
        name: "peerlog_msghand_thread_cpu_seconds_total",
        kind: "counter",
        help: "On-CPU time of bitcoind's b-msghand thread since peerlog attached, from /proc",
        when: When::MsghandThread,
        samples: Samples::Own(msghand_thread_cpu),
    },
    Family {
        name: "peerlog_peers",
        kind: "gauge",
        help: "Connected peers",
        when: When::Always,
        samples: Samples::Own(|s, e, name| {
            e.sample(name, "", s.c.peers().connected() as f64)
        }),
    },
    Family {
        name: "peerlog_peers_omitted",
        kind: "gauge",
        help: "Peers not exported, beyond the cap on label sets",
        when: When::Always,
        samples: Samples::Own(|s, e, name| e.sample(name, "", s.omitted as f64)),
    },
    Family {
        name: "peerlog_peer_closed",
        kind: "gauge",
        help: "1 for a peer that disconnected: its final figures, exported until its grace has passed",
        when: When::Always,
        samples: Samples::Own(|s, e, name| {
            for (row, p) in s.peer_rows() {
                e.sample(name, &row.labels, if p.peer.closed { 1.0 } else { 0.0 });
            }
        }),
    },
    Family {
        name: "peerlog_messages_total",
        kind: "counter",
        help: "P2P messages by direction and message type",
        when: When::Always,
        samples: Samples::PerMsgType(|t| t.msgs),
    },
    Family {
        name: "peerlog_payload_bytes_total",
        kind: "counter",
        help: "P2P payload bytes (without transport framing) by direction and message type",
        when: When::Always,
        samples: Samples::PerMsgType(|t| t.bytes),
    },
    Family {
        name: "peerlog_msghand_slices_total",
        kind: "counter",
        help: "Slices of b-msghand's time charged to the peer: processing its messages, or sending to it",
        when: When::Slices,
        samples: Samples::PerSliceKind(|t| t.slices as f64),
    },
    Family {
        name: "peerlog_msghand_wall_seconds_total",
        kind: "counter",
        help: "Wall time of b-msghand's slices charged to the peer",
        when: When::Slices,
        samples: Samples::PerSliceKind(|t| t.wall_ns as f64 / 1e9),
    },
    Family {
        name: "peerlog_msghand_cpu_seconds_total",
        kind: "counter",
        help: "On-CPU time of b-msghand's slices charged to the peer",
        when: When::Slices,
        samples: Samples::PerSliceKind(|t| t.cpu_ns as f64 / 1e9),
    },
    Family {
        name: "peerlog_processing_slice_cpu_seconds",
        kind: "summary",
        help: "On-CPU time per processing slice",
        when: When::Slices,
        samples: Samples::SummaryPerRow(|f| &f.processing.cpu_ns_per_slice),
    },
    Family {
        name: "peerlog_sending_slice_cpu_seconds",
        kind: "summary",
        help: "On-CPU time per sending slice",
        when: When::Slices,
        samples: Samples::SummaryPerRow(|f| &f.sending.cpu_ns_per_slice),
    },
    Family {
        name: "peerlog_net_bytes_total",
        kind: "counter",
        help: "bitcoind's own byte counters of the connection (getpeerinfo's bytesrecv, bytessent), transport framing included",
        when: When::NodeCounters,
        samples: Samples::Own(net_bytes),
    },
    Family {
        name: "peerlog_send_queue_bytes",
        kind: "gauge",
        help: "Memory bitcoind holds in messages queued for the peer that its socket has not taken (CNode::m_send_memusage); the node's is the sum over connected peers",
        when: When::SendQueue,
        samples: Samples::Own(|s, e, name| queue_bytes(s, e, name, |q| q.send)),
    },
    Family {
        name: "peerlog_recv_queue_bytes",
        kind: "gauge",
        help: "Memory bitcoind holds in the peer's received messages waiting for ProcessMessages (CNode::m_msg_process_queue_size); the node's is the sum over connected peers",
        when: When::RecvQueue,
        samples: Samples::Own(|s, e, name| queue_bytes(s, e, name, |q| q.recv)),
    },
    Family {
        name: "peerlog_node_rss_bytes",
        kind: "gauge",
        help: "bitcoind's resident set size (VmRSS in /proc/PID/status)",
        when: When::Always,
        samples: Samples::Own(|s, e, name| {
            if let Some(rss) = s.rss_bytes {
                e.sample(name, "", rss as f64);
            }
        }),
    },
    Family {
        name: "peerlog_ping_rtt_seconds",
        kind: "summary",
        help: "Round trip of our pings to the peer, by nonce",
        when: When::Always,
        samples: Samples::SummaryPerRow(|f| &f.ping.rtt_ns),
    },
    Family {
        name: "peerlog_getdata_tx_latency_seconds",
        kind: "summary",
        help: "From our getdata for a transaction to the peer's tx",
        when: When::Always,
        samples: Samples::SummaryPerRow(|f| &f.getdata_tx_latency_ns),
    },
    Family {
        name: "peerlog_tx_inventory_total",
        kind: "counter",
        help: "Transaction entries in inv, getdata, notfound, and tx messages, by direction",
        when: When::Always,
        samples: Samples::Own(tx_inventory),
    },
    Family {
        name: "peerlog_txs_accepted_total",
        kind: "counter",
        help: "Transactions accepted to the mempool while processing the peer's messages",
        when: When::Mempool,
        samples: Samples::PerRow(|f| f.mempool.accepted as f64),
    },
    Family {
        name: "peerlog_txs_rejected_total",
        kind: "counter",
        help: "Transactions rejected while processing the peer's messages",
        when: When::Mempool,
        samples: Samples::PerRow(|f| f.mempool.rejected as f64),
    },
    Family {
        name: "peerlog_node_txs_rejected_by_reason_total",
        kind: "counter",
        help: "Transactions rejected, by Bitcoin Core's reason (whole node)",
        when: When::Mempool,
        samples: Samples::Own(|s, e, name| {
            for (reason, n) in &s.c.total().mempool.rejected_by_reason {
                e.sample(name, &format!("reason=\"{}\"", label_value(reason)), *n as f64);
            }
        }),
    },
    Family {
        name: "peerlog_txs_replacements_total",
        kind: "counter",
        help: "Mempool transactions the peer's transactions replaced",
        when: When::Mempool,
        samples: Samples::PerRow(|f| f.mempool.replacements as f64),
    },
    Family {
        name: "peerlog_mempool_vsize_vbytes",
        kind: "gauge",
        help: "Virtual size of the peer's transactions still in the mempool",
        when: When::Mempool,
        samples: Samples::PerRow(|f| f.mempool.in_mempool_vsize as f64),
    },
    Family {
        name: "peerlog_mempool_txs",
        kind: "gauge",
        help: "The peer's transactions still in the mempool",
        when: When::Mempool,
        samples: Samples::PerRow(|f| f.mempool.in_mempool_txs as f64),
    },
    Family {
        name: "peerlog_new_blocks_total",
        kind: "counter",
        help: "New blocks the peer served first (connected while processing its block, cmpctblock or blocktxn)",
        when: When::Blocks,
        samples: Samples::PerRow(|f| f.blocks.new_blocks as f64),
    },
    Family {
        name: "peerlog_msghand_cpu_share",
        kind: "gauge",
        help: "The peer's share of the b-msghand CPU time charged to peers",
        when: When::Slices,
        samples: Samples::Own(msghand_cpu_share),
    },
    Family {
        name: "peerlog_misbehaving_total",
        kind: "counter",
        help: "net:misbehaving_connection reports",
        when: When::Always,
        samples: Samples::PerRow(|f| f.misbehaving as f64),
    },
    Family {
        name: "peerlog_peer_flag",
        kind: "gauge",
        help: "1 when the peer raises the report card's flag (getpeerreport's flag_rules), 0 when not; every flag for every exported peer",
        when: When::Always,
        samples: Samples::Own(peer_flag),
    },
    Family {
        name: "peerlog_peers_flagged",
        kind: "gauge",
        help: "Peers of the report card (connected, and closed ones still kept) that raise the flag, those without series of their own included",
        when: When::Always,
        samples: Samples::Own(peers_flagged),
    },
];

fn render_text(c: &Collector, req: &ScrapeRequest, readings: &NodeReadings) -> String {
    let scrape = Scrape::new(c, req, readings);
    let cov = c.coverage();
    let mut e = Exposition { out: String::new() };
    for family in FAMILIES {
        let exported = match family.when {
            When::Always => true,
            When::Slices => cov.slices,
            When::NodeCounters => cov.node_counters,
            When::SendQueue => cov.send_queue,
            When::RecvQueue => cov.recv_queue,
            When::Mempool => cov.mempool,
            When::Blocks => cov.block_connected,
            When::MsghandThread => req.msghand["thread_cpu_ns"].as_u64().is_some(),
        };
        if !exported {
            continue;
        }
        e.family(family.name, family.kind, family.help);
        match family.samples {
            Samples::PerRow(value) => {
                for row in &scrape.rows {
                    e.sample(family.name, &row.labels, value(row.figures));
                }
            }
            Samples::SummaryPerRow(hist) => {
                for row in &scrape.rows {
                    e.summary_seconds(family.name, &row.labels, hist(row.figures));
                }
            }
            Samples::PerMsgType(value) => per_msg_type(&scrape, &mut e, family.name, value),
            Samples::PerSliceKind(value) => per_slice_kind(&scrape, &mut e, family.name, value),
            Samples::Own(samples) => samples(&scrape, &mut e, family.name),
        }
    }
    e.out
}

/// `labels` with `more` after them.
fn with(labels: &str, more: &str) -> String {
    if labels.is_empty() {
        more.to_string()
    } else {
        format!("{labels},{more}")
    }
}

fn figures_measured(s: &Scrape, e: &mut Exposition, name: &str) {
    let cov = s.c.coverage();
    for (figures, on) in [
        ("cpu_slices", cov.slices),
        ("node_counters", cov.node_counters),
        ("send_queue", cov.send_queue),
        ("recv_queue", cov.recv_queue),
        ("mempool", cov.mempool),
        ("blocks", cov.block_connected),
    ] {
        let labels = format!("figures=\"{figures}\"");
        e.sample(name, &labels, if on { 1.0 } else { 0.0 });
    }
}

fn events_lost(s: &Scrape, e: &mut Exposition, name: &str) {
    for (cause, n) in &s.req.trace.losses {
        e.sample(name, &format!("cause=\"{cause}\""), *n as f64);
    }
}

fn msghand_thread_cpu(s: &Scrape, e: &mut Exposition, name: &str) {
    if let Some(ns) = s.req.msghand["thread_cpu_ns"].as_u64() {
        e.sample(name, "", ns as f64 / 1e9);
    }
}

fn per_msg_type(s: &Scrape, e: &mut Exposition, name: &str, value: fn(&Traffic) -> u64) {
    for row in &s.rows {
        let shown = |(k, _): &(&&str, _)| s.req.filter.shows_msg_type(k);
        for (key, m) in row.figures.per_msg.iter().filter(shown) {
            for (dir, t) in [("recv", m.recv), ("sent", m.sent)] {
                if t.msgs > 0 {
                    let l = with(
                        &row.labels,
                        &format!("direction=\"{dir}\",msg_type=\"{key}\""),
                    );
                    e.sample(name, &l, value(&t) as f64);
                }
            }
        }
    }
}

fn per_slice_kind(s: &Scrape, e: &mut Exposition, name: &str, value: fn(&SliceTotals) -> f64) {
    for row in &s.rows {
        for kind in [SliceKind::Processing, SliceKind::Sending] {
            let l = with(&row.labels, &format!("slice=\"{}\"", kind.name()));
            e.sample(name, &l, value(&slices(row.figures, kind).totals));
        }
    }
}

fn net_bytes(s: &Scrape, e: &mut Exposition, name: &str) {
    for row in &s.rows {
        let Some(b) = row.bytes else { continue };
        for (dir, n) in [("recv", b.recv), ("sent", b.sent)] {
            let l = with(&row.labels, &format!("direction=\"{dir}\""));
            e.sample(name, &l, n as f64);
        }
    }
}

/// One queue's bytes of every exported peer that could be read, and the
/// node's sum.
fn queue_bytes(s: &Scrape, e: &mut Exposition, name: &str, pick: fn(QueueBytes) -> Option<u64>) {
    for row in &s.rows {
        if let Some(n) = row.queues.and_then(pick) {
            e.sample(name, &row.labels, n as f64);
        }
    }
}

fn tx_inventory(s: &Scrape, e: &mut Exposition, name: &str) {
    for row in &s.rows {
        let r = &row.figures.tx_relay;
        for (msg, recv, sent) in [
            ("inv", r.inv_recv, r.inv_sent),
            ("getdata", r.getdata_recv, r.getdata_sent),
            ("notfound", r.notfound_recv, r.notfound_sent),
            ("tx", r.tx_recv, r.tx_sent),
        ] {
            for (dir, n) in [("recv", recv), ("sent", sent)] {
                let l = with(
                    &row.labels,
                    &format!("direction=\"{dir}\",msg_type=\"{msg}\""),
                );
                e.sample(name, &l, n as f64);
            }
        }
    }
}

fn msghand_cpu_share(s: &Scrape, e: &mut Exposition, name: &str) {
    let all = s.c.total().msghand_cpu_ns();
    for (row, p) in s.peer_rows() {
        let share = if all > 0 {
            p.stats.figures.msghand_cpu_ns() as f64 / all as f64
        } else {
            0.0
        };
        e.sample(name, &row.labels, share);
    }
}

fn peer_flag(s: &Scrape, e: &mut Exposition, name: &str) {
    for (row, p) in s.peer_rows() {
        let raised = s.flags.get(&p.peer.id).map_or(&[][..], Vec::as_slice);
        for (flag, _) in card::FLAG_RULES {
            let l = with(&row.labels, &format!("flag=\"{flag}\""));
            e.sample(name, &l, if raised.contains(&flag) { 1.0 } else { 0.0 });
        }
    }
}

fn peers_flagged(s: &Scrape, e: &mut Exposition, name: &str) {
    for (flag, _) in card::FLAG_RULES {
        let n = s.flags.values().filter(|f| f.contains(&flag)).count();
        e.sample(name, &format!("flag=\"{flag}\""), n as f64);
    }
}

#[cfg(test)]
mod tests {
    use peerlog_common::{ConnectionEventKind, Direction};

    use super::*;
    use crate::{
        clock::WallClock,
        event::{Connection, Event, Message},
        peers::{ReportSink, ReportSinks},
        stats::{Coverage, PeersBy},
    };

    fn coverage() -> Coverage {
        Coverage {
            slices: true,
            node_counters: false,
            send_queue: false,
            recv_queue: false,
            mempool: true,
            block_connected: true,
            notes: Vec::new(),
        }
    }

    /// A `tx` of `bytes` bytes from peer `id`, an inbound IPv4 peer.
    fn tx_from(id: i64, bytes: u64) -> Event {
        Event::Message(Message {
            ktime_ns: 1,
            tid: 1,
            peer_id: id,
            cnode: None,
            addr: format!("10.0.0.{id}:8333").into(),
            conn_type: "inbound".into(),
            msg_type: "tx".into(),
            direction: Direction::Inbound,
            payload_size: bytes,
            payload: None,
            addr_truncated: false,
        })
    }

    /// `ns` of the message handler's time processing a message of peer `id`.
    fn burn(id: i64, ns: u64) -> Event {
        Event::CpuSlice(crate::event::CpuSlice {
            start_ktime_ns: 0,
            end_ktime_ns: ns,
            tid: 1,
            peer_id: id,
            kind: SliceKind::Processing,
            slept_ns: 0,
            msg_type: "tx".into(),
            oncpu_ns: Some(ns),
        })
    }

    fn closed(id: i64) -> Event {
        Event::Connection(Connection {
            ktime_ns: 1,
            kind: ConnectionEventKind::Closed,
            peer_id: id,
            addr: format!("10.0.0.{id}:8333"),
            conn_type: "inbound".into(),
            network: 1,
            value: 1_700_000_000,
            final_bytes: None,
        })
    }

    fn scrape(c: &mut Collector, series: &PeerSeries, now_unix: u64) -> String {
        let trace = TraceStatus {
            attached: Some(crate::control::protocol::AttachedStatus {
                pid: 1,
                exe: "bitcoind".into(),
                probe_sites: 0,
            }),
            losses: vec![("ring_full".into(), 3)],
            capture: Default::default(),
            rpc_socket: None,
            metrics: None,
        };
        let req = ScrapeRequest {
            trace: &trace,
            msghand: &Value::Null,
            filter: &StatsFilter::default(),
            series,
            now_unix,
        };
        render(c, &req)
    }

    /// The peer ids with series of their own in `text`.
    fn exported(text: &str) -> Vec<i64> {
        text.lines()
            .filter(|l| l.starts_with("peerlog_peer_closed{"))
            .map(|l| {
                let id = l.split("peer_id=\"").nth(1).unwrap();
                id[..id.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    fn value(text: &str, series: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap();
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_busiest_peers_get_series_and_the_node_keeps_every_one() {
        let sinks = ReportSinks::default().with(ReportSink::Metrics);
        let mut c = Collector::new(WallClock::sample(), coverage(), false, sinks);
        // Peer id i sent i * 100 bytes: 5 and 4 are the busiest.
        for id in 1..=5 {
            c.handle(&tx_from(id, id as u64 * 100));
        }
        let series = PeerSeries {
            max_peers: 2,
            by: PeersBy::Traffic,
            closed_grace_s: 60,
        };
        let text = scrape(&mut c, &series, 0);
        assert_eq!(exported(&text), vec![4, 5]);
        assert_eq!(value(&text, "peerlog_peers_omitted "), 3.0);
        let node = "peerlog_payload_bytes_total{direction=\"recv\",msg_type=\"tx\"} ";
        assert_eq!(value(&text, node), 1500.0, "the node counts every peer");
        assert!(text.contains(
            "peerlog_payload_bytes_total{peer_id=\"5\",addr=\"10.0.0.5:8333\",\
             conn_type=\"inbound\",network=\"ipv4\",direction=\"recv\",msg_type=\"tx\"} 500"
        ));
        assert!(text.contains("peerlog_events_lost_total{cause=\"ring_full\"} 3"));
    }

    #[test]
    fn flags_are_exported_per_peer_and_counted_over_every_peer() {
        let sinks = ReportSinks::default().with(ReportSink::Metrics);
        let mut c = Collector::new(WallClock::sample(), coverage(), false, sinks);
        // Peer 1 sends little and costs the handler most of its time; 2
        // to 4 send more for little.
        c.handle(&tx_from(1, 10));
        c.handle(&burn(1, 90_000_000));
        for id in 2..=4 {
            for _ in 0..10 {
                c.handle(&tx_from(id, 1000));
            }
            c.handle(&burn(id, 1_000_000));
        }
        let flag = |text: &str, id: i64, flag: &str| {
            value(
                text,
                &format!(
                    "peerlog_peer_flag{{peer_id=\"{id}\",addr=\"10.0.0.{id}:8333\",\
                     conn_type=\"inbound\",network=\"ipv4\",flag=\"{flag}\"}} "
                ),
            )
        };
        let mut series = PeerSeries {
            max_peers: 10,
            by: PeersBy::Traffic,
            closed_grace_s: 60,
        };
        let text = scrape(&mut c, &series, 0);
        assert_eq!(flag(&text, 1, "cpu-hog"), 1.0);
        for id in 2..=4 {
            assert_eq!(flag(&text, id, "cpu-hog"), 0.0, "peer {id}");
        }
        // Every flag of the card, 0 or 1, for every exported peer.
        let flags = text
            .lines()
            .filter(|l| l.starts_with("peerlog_peer_flag{"))
            .count();
        assert_eq!(flags, 4 * card::FLAG_RULES.len());
        assert_eq!(
            value(&text, "peerlog_peers_flagged{flag=\"cpu-hog\"} "),
            1.0
        );
        assert_eq!(
            value(&text, "peerlog_peers_flagged{flag=\"stalling\"} "),
            0.0
        );
        // The hog moved the fewest bytes (ties go to the lower id): left out
        // by the cap, still counted.
        series.max_peers = 2;
        let text = scrape(&mut c, &series, 0);
        assert_eq!(exported(&text), vec![2, 3]);
        assert!(!text.contains("peer_id=\"1\""));
        assert_eq!(
            value(&text, "peerlog_peers_flagged{flag=\"cpu-hog\"} "),
            1.0
        );
    }

    #[test]
    fn closed_peers_stay_for_their_grace_then_go() {
        let sinks = ReportSinks::default().with(ReportSink::Metrics);
        let mut c = Collector::new(WallClock::sample(), coverage(), false, sinks);
        c.handle(&tx_from(1, 10));
        c.handle(&tx_from(2, 10));
        c.handle(&closed(1));
        let at = c.peer(1).unwrap().peer.closed_unix.unwrap();
        let series = PeerSeries {
            max_peers: 10,
            by: PeersBy::Traffic,
            closed_grace_s: 300,
        };
        let closed_1 = "peerlog_peer_closed{peer_id=\"1\"";
        // Scrapes within the grace show the final figures.
        for now in [at, at + 100, at + 299] {
            let text = scrape(&mut c, &series, now);
            assert_eq!(exported(&text), vec![1, 2], "at +{}", now - at);
            assert_eq!(value(&text, closed_1), 1.0);
        }
        // The first scrape past the grace shows them for the last time.
        assert_eq!(exported(&scrape(&mut c, &series, at + 301)), vec![1, 2]);
        assert_eq!(exported(&scrape(&mut c, &series, at + 302)), vec![2]);
        // A grace of 0: the next scrape after the close, only.
        let series = PeerSeries {
            closed_grace_s: 0,
            ..series
        };
        c.handle(&closed(2));
        let at = c.peer(2).unwrap().peer.closed_unix.unwrap();
        assert_eq!(exported(&scrape(&mut c, &series, at)), vec![2]);
        assert!(exported(&scrape(&mut c, &series, at)).is_empty());
    }
}
