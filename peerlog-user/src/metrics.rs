//! The Prometheus endpoint (`--metrics ADDR`): the figures in Prometheus'
//! text exposition format at `http://ADDR/metrics`, served by a minimal
//! HTTP/1.1 server (one request per connection).
//!
//! Per-peer series carry the labels `peer_id`, `addr`, `connection_type`
//! and `network`. Label sets stay bounded: at most [`MAX_PEERS`] peers are
//! exported (the oldest connections, by peer id; `peerlog_peers_omitted`
//! counts the others, which the node totals still include), message types
//! are Bitcoin Core's plus `*other*`, and a closed peer is exported in one
//! more scrape, with its final figures, then dropped.
//!
//! The scrape URL takes the peer filter language of `--peer` and message
//! types, e.g. `/metrics?peer=inbound&peer=10.0.0.0/8&msg_type=tx`;
//! without parameters the `--stats-peer`/`--stats-msg-type` filter applies.

use std::fmt::Write as _;

use peerlog_common::SliceKind;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{timeout, Duration},
};

use crate::{
    filter::PeerFilter,
    peer::Network,
    rpc::{self, Query, ReportQuery, Request, TraceStatus},
    stats::{self, Collector, Figures, Hist, PeerStats, Sink, Slices, StatsFilter},
};

/// Peers exported at most per scrape; Bitcoin Core allows 125 connections by default.
pub const MAX_PEERS: usize = 256;
/// Longest request head read.
const MAX_REQUEST_HEAD: usize = 8192;
/// Time a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The quantiles exported for distributions.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Accepts scrapes until aborted.
pub async fn serve(listener: TcpListener, sender: mpsc::Sender<Request>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, sender.clone()));
            }
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: TcpStream, sender: mpsc::Sender<Request>) {
    let mut head = Vec::new();
    let read = timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let response = respond(&head, &sender).await;
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// The whole HTTP response to a request head.
async fn respond(head: &[u8], sender: &mpsc::Sender<Request>) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", "only GET\n".to_string())
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", "metrics are at /metrics\n".to_string())
    } else {
        match scrape_filter(query) {
            Err(e) => ("400 Bad Request", format!("{e}\n")),
            Ok(filter) => match rpc::ask(sender, Query::Report(ReportQuery::Metrics(filter))).await
            {
                Ok(Value::String(text)) => ("200 OK", text),
                Ok(other) => ("500 Internal Server Error", format!("{other}\n")),
                Err(e) => ("503 Service Unavailable", format!("{}\n", e.message)),
            },
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The filter of a scrape URL's query string; None when it has none.
fn scrape_filter(query: &str) -> Result<Option<StatsFilter>, String> {
    let mut peers: Vec<PeerFilter> = Vec::new();
    let mut msg_types = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("bad escape in {pair:?}"))?;
        match key {
            "peer" => peers.push(value.parse().map_err(|e| format!("{e}"))?),
            "msg_type" => msg_types.push(value),
            _ => return Err(format!("unknown parameter {key:?} (peer, msg_type)")),
        }
    }
    stats::check_msg_types(&msg_types).map_err(|e| format!("{e:#}"))?;
    Ok((!peers.is_empty() || !msg_types.is_empty()).then(|| StatsFilter::new(peers, msg_types)))
}

/// Decodes `%XX` escapes and `+` (a space in query strings).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

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

    /// A family with one sample per row (peer, or the node without labels).
    fn per_row(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: &[(String, &Figures)],
        value: impl Fn(&Figures) -> f64,
    ) {
        self.family(name, kind, help);
        for (labels, f) in rows {
            self.sample(name, labels, value(f));
        }
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

fn peer_labels(p: &PeerStats) -> String {
    format!(
        "peer_id=\"{}\",addr=\"{}\",connection_type=\"{}\",network=\"{}\"",
        p.id,
        label_value(&p.addr),
        label_value(&p.conn_type),
        p.network.map_or("", Network::name)
    )
}

/// Renders every metric; marks closed peers reported.
pub fn render(
    trace: &TraceStatus,
    collector: &mut Collector,
    msghand: &Value,
    filter: &StatsFilter,
) -> String {
    let text = render_text(trace, collector, msghand, filter);
    collector.reported(Sink::Metrics);
    text
}

fn render_text(
    trace: &TraceStatus,
    c: &Collector,
    msghand: &Value,
    filter: &StatsFilter,
) -> String {
    let mut e = Exposition { out: String::new() };
    let cov = c.coverage();

    e.family(
        "peerlog_figures_measured",
        "gauge",
        "1 when this group of figures is measured, 0 when its figures are missing",
    );
    for (figures, on) in [
        ("cpu_slices", cov.slices),
        ("node_counters", cov.node_counters),
        ("mempool", cov.mempool),
        ("blocks", cov.block_connected),
    ] {
        e.sample(
            "peerlog_figures_measured",
            &format!("figures=\"{figures}\""),
            if on { 1.0 } else { 0.0 },
        );
    }
    e.family(
        "peerlog_events_lost_total",
        "counter",
        "Events lost, by cause",
    );
    for (cause, n) in &trace.losses {
        e.sample(
            "peerlog_events_lost_total",
            &format!("cause=\"{cause}\""),
            *n as f64,
        );
    }
    if let Some(ns) = msghand["thread_cpu_ns"].as_u64() {
        e.family(
            "peerlog_msghand_thread_cpu_seconds_total",
            "counter",
            "On-CPU time of bitcoind's b-msghand thread since peerlog attached, from /proc",
        );
        e.sample(
            "peerlog_msghand_thread_cpu_seconds_total",
            "",
            ns as f64 / 1e9,
        );
    }

    let shown: Vec<&PeerStats> = c
        .peers()
        .filter(|p| c.due(p, Sink::Metrics) && filter.shows_peer(p))
        .collect();
    let omitted = shown.len().saturating_sub(MAX_PEERS);
    let peers = &shown[..shown.len() - omitted];
    e.family("peerlog_peers", "gauge", "Connected peers");
    e.sample(
        "peerlog_peers",
        "",
        c.peers().filter(|p| !p.closed).count() as f64,
    );
    e.family(
        "peerlog_peers_omitted",
        "gauge",
        "Peers not exported, beyond the cap on label sets",
    );
    e.sample("peerlog_peers_omitted", "", omitted as f64);
    e.family(
        "peerlog_peer_closed",
        "gauge",
        "1 for a peer that disconnected: its final figures, exported once",
    );
    for p in peers {
        e.sample(
            "peerlog_peer_closed",
            &peer_labels(p),
            if p.closed { 1.0 } else { 0.0 },
        );
    }

    // Per-peer and node series of the same figure share a family; the node's
    // carry no peer labels.
    let rows: Vec<(String, &Figures)> = peers
        .iter()
        .map(|p| (peer_labels(p), &p.figures))
        .chain(std::iter::once((String::new(), c.total())))
        .collect();
    let with = |labels: &str, more: &str| {
        if labels.is_empty() {
            more.to_string()
        } else {
            format!("{labels},{more}")
        }
    };

    e.family(
        "peerlog_messages_total",
        "counter",
        "P2P messages by direction and message type",
    );
    for (labels, f) in &rows {
        for (key, m) in f.per_msg.iter().filter(|(k, _)| filter.shows_msg_type(k)) {
            for (dir, t) in [("recv", m.recv), ("sent", m.sent)] {
                if t.msgs > 0 {
                    let l = with(labels, &format!("direction=\"{dir}\",msg_type=\"{key}\""));
                    e.sample("peerlog_messages_total", &l, t.msgs as f64);
                }
            }
        }
    }
    e.family(
        "peerlog_payload_bytes_total",
        "counter",
        "P2P payload bytes (without transport framing) by direction and message type",
    );
    for (labels, f) in &rows {
        for (key, m) in f.per_msg.iter().filter(|(k, _)| filter.shows_msg_type(k)) {
            for (dir, t) in [("recv", m.recv), ("sent", m.sent)] {
                if t.msgs > 0 {
                    let l = with(labels, &format!("direction=\"{dir}\",msg_type=\"{key}\""));
                    e.sample("peerlog_payload_bytes_total", &l, t.bytes as f64);
                }
            }
        }
    }

    if cov.slices {
        let kinds = [SliceKind::Processing, SliceKind::Sending];
        e.family(
            "peerlog_msghand_slices_total",
            "counter",
            "Slices of b-msghand's time charged to the peer: processing its messages, or sending to it",
        );
        for (labels, f) in &rows {
            for kind in kinds {
                let l = with(labels, &format!("slice=\"{}\"", kind.name()));
                e.sample(
                    "peerlog_msghand_slices_total",
                    &l,
                    slices(f, kind).totals.slices as f64,
                );
            }
        }
        e.family(
            "peerlog_msghand_wall_seconds_total",
            "counter",
            "Wall time of b-msghand's slices charged to the peer",
        );
        for (labels, f) in &rows {
            for kind in kinds {
                let l = with(labels, &format!("slice=\"{}\"", kind.name()));
                let ns = slices(f, kind).totals.wall_ns;
                e.sample("peerlog_msghand_wall_seconds_total", &l, ns as f64 / 1e9);
            }
        }
        e.family(
            "peerlog_msghand_cpu_seconds_total",
            "counter",
            "On-CPU time of b-msghand's slices charged to the peer",
        );
        for (labels, f) in &rows {
            for kind in kinds {
                let l = with(labels, &format!("slice=\"{}\"", kind.name()));
                let ns = slices(f, kind).totals.cpu_ns;
                e.sample("peerlog_msghand_cpu_seconds_total", &l, ns as f64 / 1e9);
            }
        }
        for kind in kinds {
            let name = format!("peerlog_{}_slice_cpu_seconds", kind.name());
            e.family(
                &name,
                "summary",
                &format!("On-CPU time per {} slice", kind.name()),
            );
            for (labels, f) in &rows {
                e.summary_seconds(&name, labels, &slices(f, kind).cpu_ns_per_slice);
            }
        }
    }
    if cov.node_counters {
        e.family(
            "peerlog_net_bytes_total",
            "counter",
            "bitcoind's own byte counters of the connection (getpeerinfo's bytesrecv, bytessent), transport framing included",
        );
        let bytes = peers
            .iter()
            .map(|p| (peer_labels(p), c.node_bytes(p)))
            .chain(std::iter::once((String::new(), Some(c.node_bytes_total()))));
        for (labels, b) in bytes {
            let Some(b) = b else { continue };
            for (dir, n) in [("recv", b.recv), ("sent", b.sent)] {
                let l = with(&labels, &format!("direction=\"{dir}\""));
                e.sample("peerlog_net_bytes_total", &l, n as f64);
            }
        }
    }
    e.family(
        "peerlog_ping_rtt_seconds",
        "summary",
        "Round trip of our pings to the peer, by nonce",
    );
    for (labels, f) in &rows {
        e.summary_seconds("peerlog_ping_rtt_seconds", labels, &f.ping.rtt_ns);
    }
    e.family(
        "peerlog_getdata_tx_latency_seconds",
        "summary",
        "From our getdata for a transaction to the peer's tx",
    );
    for (labels, f) in &rows {
        e.summary_seconds(
            "peerlog_getdata_tx_latency_seconds",
            labels,
            &f.getdata_tx_latency_ns,
        );
    }
    e.family(
        "peerlog_tx_inventory_total",
        "counter",
        "Transaction entries in inv, getdata, notfound, and tx messages, by direction",
    );
    for (labels, f) in &rows {
        let r = &f.tx_relay;
        for (msg, recv, sent) in [
            ("inv", r.inv_recv, r.inv_sent),
            ("getdata", r.getdata_recv, r.getdata_sent),
            ("notfound", r.notfound_recv, r.notfound_sent),
            ("tx", r.tx_recv, r.tx_sent),
        ] {
            for (dir, n) in [("recv", recv), ("sent", sent)] {
                let l = with(labels, &format!("direction=\"{dir}\",msg_type=\"{msg}\""));
                e.sample("peerlog_tx_inventory_total", &l, n as f64);
            }
        }
    }
    if cov.mempool {
        e.per_row(
            "peerlog_txs_accepted_total",
            "counter",
            "Transactions accepted to the mempool while processing the peer's messages",
            &rows,
            |f| f.mempool.accepted as f64,
        );
        e.per_row(
            "peerlog_txs_rejected_total",
            "counter",
            "Transactions rejected while processing the peer's messages",
            &rows,
            |f| f.mempool.rejected as f64,
        );
        e.family(
            "peerlog_node_txs_rejected_by_reason_total",
            "counter",
            "Transactions rejected, by Bitcoin Core's reason (whole node)",
        );
        for (reason, n) in &c.total().mempool.rejected_by_reason {
            let l = format!("reason=\"{}\"", label_value(reason));
            e.sample("peerlog_node_txs_rejected_by_reason_total", &l, *n as f64);
        }
        e.per_row(
            "peerlog_txs_replacements_total",
            "counter",
            "Mempool transactions the peer's transactions replaced",
            &rows,
            |f| f.mempool.replacements as f64,
        );
        e.per_row(
            "peerlog_mempool_vsize_vbytes",
            "gauge",
            "Virtual size of the peer's transactions still in the mempool",
            &rows,
            |f| f.mempool.in_mempool_vsize as f64,
        );
        e.per_row(
            "peerlog_mempool_txs",
            "gauge",
            "The peer's transactions still in the mempool",
            &rows,
            |f| f.mempool.in_mempool_txs as f64,
        );
    }
    if cov.block_connected {
        e.per_row("peerlog_new_blocks_total", "counter", "New blocks the peer served first (connected while processing its block, cmpctblock or blocktxn)", &rows, |f| f.blocks.new_blocks as f64);
    }
    if cov.slices {
        let all = c.total().msghand_cpu_ns();
        e.family(
            "peerlog_msghand_cpu_share",
            "gauge",
            "The peer's share of the b-msghand CPU time charged to peers",
        );
        for p in peers {
            let share = if all > 0 {
                p.figures.msghand_cpu_ns() as f64 / all as f64
            } else {
                0.0
            };
            e.sample("peerlog_msghand_cpu_share", &peer_labels(p), share);
        }
    }
    e.per_row(
        "peerlog_misbehaving_total",
        "counter",
        "net:misbehaving_connection reports",
        &rows,
        |f| f.misbehaving as f64,
    );
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_filters_decode() {
        assert!(scrape_filter("").unwrap().is_none());
        let f = scrape_filter("peer=%5B%3A%3A1%5D&msg_type=tx")
            .unwrap()
            .unwrap();
        assert_eq!(f.msg_types, vec!["tx"]);
        assert!(!f.peers.selects_all());
        assert!(scrape_filter("peer=net%3Dmars").is_err());
        assert!(scrape_filter("msg_type=twinburn").is_err());
        assert!(scrape_filter("colour=red").is_err());
        assert_eq!(percent_decode("a+b%2c").as_deref(), Some("a b,"));
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
