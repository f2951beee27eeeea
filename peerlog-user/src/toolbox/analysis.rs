//! `peerlog stats`: what a capture says about its peers, taken together.
//!
//! Per peer and per message type: messages, bytes and rates; peers ordered
//! by bytes (top talkers first); how much of what each side announced
//! (`inv` items) the other side asked for (`getdata` items), both ways;
//! how long a `getdata` for a transaction waited for its `tx`, and a `ping`
//! for its `pong`, both ways, as HdrHistogram percentiles; and messages per
//! second over time, as a terminal sparkline and optionally an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::formats::timeline::{format_time, SelectArgs, Timeline};
use crate::p2p::RawMessage;
use crate::stats::{matcher::Pending, Traffic};
use peerlog_common::Direction;

/// Buckets of the terminal sparkline: one line of a terminal.
const SPARKLINE_BUCKETS: usize = 60;
/// Points per series of the SVG chart.
const CHART_BUCKETS: usize = 300;
/// The sparkline's levels, lowest first; a bucket without messages is blank.
const SPARK_LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Arguments of `peerlog stats`.
#[derive(Debug, clap::Args)]
pub struct CaptureAnalysisArgs {
    /// The capture and which of its messages to count.
    #[command(flatten)]
    pub select: SelectArgs,

    /// Also draw messages per second over time (received and sent) as an
    /// SVG chart into PATH.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,

    /// Print the statistics as one JSON object instead.
    #[arg(long)]
    pub json: bool,

    /// Peers listed in the text output (the top talkers, 0 to 1000000); all
    /// are in --json.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = crate::args::number_in(0usize, 1_000_000, ""))]
    pub top: usize,
}

/// Runs `peerlog stats`.
pub fn run(args: CaptureAnalysisArgs) -> Result<()> {
    let timeline = args.select.load()?;
    let stats = CaptureAnalysis::compute(&timeline);
    if let Some(path) = &args.svg {
        let series = RateSeries::compute(&timeline, CHART_BUCKETS);
        draw_chart(&series, path).with_context(|| format!("drawing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", stats.to_text(args.top));
        if let Some(path) = &args.svg {
            println!("chart: {}", path.display());
        }
    }
    Ok(())
}

/// Everything `peerlog stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureAnalysis {
    /// The capture.
    pub capture: PathBuf,
    /// Messages bitcoind received, in all.
    pub recv: Traffic,
    /// Messages bitcoind sent, in all.
    pub sent: Traffic,
    /// Time of the first message (µs since the UNIX epoch).
    pub first_time: Option<u64>,
    /// Time of the last message.
    pub last_time: Option<u64>,
    /// Seconds from the first to the last message.
    pub duration_secs: f64,
    /// Per peer, most bytes (both directions) first: the top talkers.
    pub peers: Vec<PeerStats>,
    /// Per message type, most bytes first; rates over the whole capture.
    pub msg_types: Vec<TypeStats>,
    /// Response latencies.
    pub latency: Latencies,
    /// Messages per second over time, in [`SPARKLINE_BUCKETS`] buckets.
    pub rate: RateSeries,
}

/// One peer's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStats {
    /// `addr:port`, and ` peer=ID` when known.
    pub peer: String,
    /// `inbound`, `outbound`, or empty when unknown.
    pub conn_type: &'static str,
    /// What bitcoind received from the peer.
    pub recv: Traffic,
    /// What bitcoind sent to the peer.
    pub sent: Traffic,
    /// Seconds from the peer's first to its last message.
    pub duration_secs: f64,
    /// Messages per second (both directions) over the peer's duration.
    pub msgs_per_sec: f64,
    /// Payload bytes per second (both directions) over the peer's duration.
    pub bytes_per_sec: f64,
    /// Per message type: (received, sent).
    pub msg_types: BTreeMap<String, (Traffic, Traffic)>,
    /// Announcements and requests between the peer and bitcoind.
    pub inv_getdata: InvGetdata,
}

/// `inv` items announced and `getdata` items requested, both ways.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct InvGetdata {
    /// Items the peer announced to bitcoind.
    pub peer_announced: u64,
    /// Items bitcoind requested from the peer.
    pub node_requested: u64,
    /// `node_requested / peer_announced`: how much of what the peer
    /// announced was new to bitcoind.
    pub node_request_ratio: Option<f64>,
    /// Items bitcoind announced to the peer.
    pub node_announced: u64,
    /// Items the peer requested from bitcoind.
    pub peer_requested: u64,
    /// `peer_requested / node_announced`.
    pub peer_request_ratio: Option<f64>,
}

impl InvGetdata {
    fn finish(&mut self) {
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        self.node_request_ratio = ratio(self.node_requested, self.peer_announced);
        self.peer_request_ratio = ratio(self.peer_requested, self.node_announced);
    }
}

/// One message type's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct TypeStats {
    /// The message type.
    pub msg_type: String,
    /// Received by bitcoind.
    pub recv: Traffic,
    /// Sent by bitcoind.
    pub sent: Traffic,
    /// Messages per second over the capture's duration.
    pub msgs_per_sec: f64,
    /// Payload bytes per second over the capture's duration.
    pub bytes_per_sec: f64,
}

/// Percentiles of one latency, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencySummary {
    /// Requests that got their answer.
    pub count: u64,
    /// Fastest answer.
    pub min_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest answer.
    pub max_us: u64,
}

impl LatencySummary {
    fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            min_us: histogram.min(),
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }
}

/// Request → answer latencies, both ways.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latencies {
    /// bitcoind sent `getdata` for a transaction, the peer answered with `tx`.
    pub getdata_tx_node_asked: LatencySummary,
    /// The peer sent `getdata` for a transaction, bitcoind answered with `tx`.
    pub getdata_tx_peer_asked: LatencySummary,
    /// bitcoind sent `ping`, the peer answered with `pong` (the peer's round trip).
    pub ping_pong_node_pinged: LatencySummary,
    /// The peer sent `ping`, bitcoind answered with `pong`.
    pub ping_pong_peer_pinged: LatencySummary,
}

/// Messages per time bucket, received and sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RateSeries {
    /// Width of a bucket, in microseconds.
    pub bucket_micros: u64,
    /// Messages bitcoind received, per bucket.
    pub recv: Vec<u64>,
    /// Messages bitcoind sent, per bucket.
    pub sent: Vec<u64>,
}

impl RateSeries {
    /// Counts the timeline's messages in `buckets` equal buckets spanning it.
    pub fn compute(timeline: &Timeline, buckets: usize) -> Self {
        let Some((first, last)) = timeline.span() else {
            return Self::default();
        };
        let span = last - first + 1;
        let bucket_micros = span.div_ceil(buckets as u64).max(1);
        let n = span.div_ceil(bucket_micros) as usize;
        let mut series = Self {
            bucket_micros,
            recv: vec![0; n],
            sent: vec![0; n],
        };
        for m in &timeline.messages {
            let i = ((m.record.time_micros - first) / bucket_micros) as usize;
            match m.direction {
                Direction::Inbound => series.recv[i] += 1,
                Direction::Outbound => series.sent[i] += 1,
            }
        }
        series
    }

    /// Messages per second in bucket `i`, both directions.
    fn rate(&self, counts: &[u64], i: usize) -> f64 {
        counts[i] as f64 * 1e6 / self.bucket_micros as f64
    }

    /// The sparkline of both directions together, and its peak rate.
    pub fn sparkline(&self) -> (String, f64) {
        let totals: Vec<u64> = self
            .recv
            .iter()
            .zip(&self.sent)
            .map(|(r, s)| r + s)
            .collect();
        let max = totals.iter().copied().max().unwrap_or(0);
        let line = totals
            .iter()
            .map(|&c| match c {
                0 => ' ',
                c => {
                    let level = (c * SPARK_LEVELS.len() as u64).div_ceil(max) as usize;
                    SPARK_LEVELS[level.clamp(1, SPARK_LEVELS.len()) - 1]
                }
            })
            .collect();
        let peak = (0..totals.len())
            .map(|i| self.rate(&totals, i))
            .fold(0.0, f64::max);
        (line, peak)
    }
}

/// Requests remembered per peer and direction: more than any well-behaved
/// peer leaves unanswered, few enough that a capture of a peer that never
/// answers stays cheap to read.
const PENDING_MAX: usize = 100_000;
/// A request older than this is forgotten when the table is full, in
/// capture time (µs): Bitcoin Core disconnects a peer whose `pong` is 20
/// minutes late, and stops waiting for a `tx` after a minute.
const PENDING_EXPIRY_US: u64 = 20 * 60 * 1_000_000;

fn pending() -> Pending<[u8; 32]> {
    Pending::new(PENDING_MAX, PENDING_EXPIRY_US)
}

/// Records the wait of an answer, if it answered a request.
fn answered(wait: Option<u64>, histogram: &mut Histogram<u64>) {
    if let Some(us) = wait {
        histogram.saturating_record(us);
    }
}

fn nonce_key(nonce: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&nonce.to_le_bytes());
    key
}

/// Transaction hashes asked for by an inventory item.
fn tx_request_key(item: &Inventory) -> Option<[u8; 32]> {
    match item {
        Inventory::Transaction(txid) | Inventory::WitnessTransaction(txid) => {
            Some(txid.to_byte_array())
        }
        Inventory::WTx(wtxid) => Some(wtxid.to_byte_array()),
        _ => None,
    }
}

/// Per peer: traffic by type, and the requests waiting for answers, per
/// asking direction.
struct PeerAccumulator {
    msg_types: BTreeMap<String, (Traffic, Traffic)>,
    inv_getdata: InvGetdata,
    /// Index 0: asked by bitcoind (sent), 1: asked by the peer (received).
    getdata: [Pending<[u8; 32]>; 2],
    pings: [Pending<[u8; 32]>; 2],
    first: u64,
    last: u64,
}

fn histogram() -> Histogram<u64> {
    // Microseconds up to an hour, three significant digits; a slower answer
    // is counted as an hour.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl CaptureAnalysis {
    /// Computes the statistics of a timeline.
    pub fn compute(timeline: &Timeline) -> Self {
        let mut peers: Vec<PeerAccumulator> = timeline
            .peers
            .iter()
            .map(|_| PeerAccumulator {
                msg_types: BTreeMap::new(),
                inv_getdata: InvGetdata::default(),
                getdata: [pending(), pending()],
                pings: [pending(), pending()],
                first: u64::MAX,
                last: 0,
            })
            .collect();
        let mut types: BTreeMap<&str, (Traffic, Traffic)> = BTreeMap::new();
        let (mut recv, mut sent) = (Traffic::default(), Traffic::default());
        // [asked by bitcoind, asked by the peer]
        let mut getdata_tx = [histogram(), histogram()];
        let mut ping_pong = [histogram(), histogram()];

        for m in &timeline.messages {
            let record = &m.record;
            let bytes = record.payload.len() as u64;
            let by_node = m.direction == Direction::Outbound;
            let peer = &mut peers[m.peer];
            peer.first = peer.first.min(record.time_micros);
            peer.last = peer.last.max(record.time_micros);
            let per_type = peer.msg_types.entry(record.msg_type.clone()).or_default();
            let total = types.entry(&record.msg_type).or_default();
            if by_node {
                sent.add(bytes);
                per_type.1.add(bytes);
                total.1.add(bytes);
            } else {
                recv.add(bytes);
                per_type.0.add(bytes);
                total.0.add(bytes);
            }
            // The side that asks, and the side that answers.
            let asker = usize::from(!by_node);
            let answerer = usize::from(by_node);
            let time = record.time_micros;
            let decoded = match record.msg_type.as_str() {
                "inv" | "getdata" | "tx" | "ping" | "pong" => {
                    RawMessage::new(record.msg_type.clone(), record.payload.clone()).decode()
                }
                _ => continue,
            };
            match decoded {
                Ok(NetworkMessage::Inv(items)) => {
                    let n = items.len() as u64;
                    if by_node {
                        peer.inv_getdata.node_announced += n;
                    } else {
                        peer.inv_getdata.peer_announced += n;
                    }
                }
                Ok(NetworkMessage::GetData(items)) => {
                    let n = items.len() as u64;
                    if by_node {
                        peer.inv_getdata.node_requested += n;
                    } else {
                        peer.inv_getdata.peer_requested += n;
                    }
                    for key in items.iter().filter_map(tx_request_key) {
                        peer.getdata[asker].ask(key, time);
                    }
                }
                Ok(NetworkMessage::Tx(tx)) => {
                    let keys = [
                        tx.compute_txid().to_byte_array(),
                        tx.compute_wtxid().to_byte_array(),
                    ];
                    // A tx answers a getdata of the other side.
                    answered(
                        peer.getdata[answerer].answer(&keys, time),
                        &mut getdata_tx[answerer],
                    );
                }
                Ok(NetworkMessage::Ping(nonce)) => peer.pings[asker].ask(nonce_key(nonce), time),
                Ok(NetworkMessage::Pong(nonce)) => {
                    answered(
                        peer.pings[answerer].answer(&[nonce_key(nonce)], time),
                        &mut ping_pong[answerer],
                    );
                }
                // Undecodable payloads are counted above and otherwise ignored.
                _ => {}
            }
        }

        let (first_time, last_time) = timeline.span().unzip();
        let duration_secs = timeline.span().map_or(0.0, |(a, b)| (b - a) as f64 / 1e6);
        let per_sec = |amount: u64, secs: f64| {
            if secs > 0.0 {
                amount as f64 / secs
            } else {
                0.0
            }
        };

        let mut peer_stats: Vec<PeerStats> = peers
            .into_iter()
            .zip(&timeline.peers)
            .map(|(acc, peer)| {
                let (r, s) = acc.msg_types.values().fold(
                    (Traffic::default(), Traffic::default()),
                    |(mut r, mut s), (tr, ts)| {
                        r.msgs += tr.msgs;
                        r.bytes += tr.bytes;
                        s.msgs += ts.msgs;
                        s.bytes += ts.bytes;
                        (r, s)
                    },
                );
                let secs = acc.last.saturating_sub(acc.first) as f64 / 1e6;
                let mut inv_getdata = acc.inv_getdata;
                inv_getdata.finish();
                PeerStats {
                    peer: peer.label(),
                    conn_type: peer.conn_type,
                    recv: r,
                    sent: s,
                    duration_secs: secs,
                    msgs_per_sec: per_sec(r.msgs + s.msgs, secs),
                    bytes_per_sec: per_sec(r.bytes + s.bytes, secs),
                    msg_types: acc.msg_types,
                    inv_getdata,
                }
            })
            .collect();
        peer_stats.sort_by_key(|p| std::cmp::Reverse(p.recv.bytes + p.sent.bytes));

        let mut msg_types: Vec<TypeStats> = types
            .into_iter()
            .map(|(t, (r, s))| TypeStats {
                msg_type: t.to_string(),
                recv: r,
                sent: s,
                msgs_per_sec: per_sec(r.msgs + s.msgs, duration_secs),
                bytes_per_sec: per_sec(r.bytes + s.bytes, duration_secs),
            })
            .collect();
        msg_types.sort_by_key(|t| std::cmp::Reverse(t.recv.bytes + t.sent.bytes));

        Self {
            capture: timeline.source.clone(),
            recv,
            sent,
            first_time,
            last_time,
            duration_secs,
            peers: peer_stats,
            msg_types,
            latency: Latencies {
                getdata_tx_node_asked: LatencySummary::of(&getdata_tx[0]),
                getdata_tx_peer_asked: LatencySummary::of(&getdata_tx[1]),
                ping_pong_node_pinged: LatencySummary::of(&ping_pong[0]),
                ping_pong_peer_pinged: LatencySummary::of(&ping_pong[1]),
            },
            rate: RateSeries::compute(timeline, SPARKLINE_BUCKETS),
        }
    }

    /// The report for a terminal, listing at most `top` peers.
    pub fn to_text(&self, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "capture {}: {} peer{}, {} messages ({} recv, {} sent), {} payload bytes",
            self.capture.display(),
            self.peers.len(),
            if self.peers.len() == 1 { "" } else { "s" },
            self.recv.msgs + self.sent.msgs,
            self.recv.msgs,
            self.sent.msgs,
            self.recv.bytes + self.sent.bytes
        );
        if let (Some(first), Some(last)) = (self.first_time, self.last_time) {
            let _ = writeln!(
                out,
                "from {} to {} ({:.3} s)",
                format_time(first),
                format_time(last),
                self.duration_secs
            );
        }

        let width = self
            .peers
            .iter()
            .take(top)
            .map(|p| p.peer.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            out,
            "\npeers, top talkers first (rates over each peer's own span):"
        );
        let _ = writeln!(
            out,
            "  {:<width$}  {:<8}  {:>9} {:>12}  {:>9} {:>12}  {:>9} {:>12}",
            "peer",
            "conn",
            "recv msgs",
            "recv bytes",
            "sent msgs",
            "sent bytes",
            "msgs/s",
            "bytes/s"
        );
        for p in self.peers.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:<width$}  {:<8}  {:>9} {:>12}  {:>9} {:>12}  {:>9.1} {:>12.0}",
                p.peer,
                if p.conn_type.is_empty() {
                    "?"
                } else {
                    p.conn_type
                },
                p.recv.msgs,
                p.recv.bytes,
                p.sent.msgs,
                p.sent.bytes,
                p.msgs_per_sec,
                p.bytes_per_sec
            );
        }
        if self.peers.len() > top {
            let more = self.peers.len() - top;
            let noun = if more == 1 { "peer" } else { "peers" };
            let _ = writeln!(out, "  … and {more} more {noun} (--top, --json)");
        }

        let _ = writeln!(out, "\nmessage types (rates over the whole capture):");
        let _ = writeln!(
            out,
            "  {:<12}  {:>9} {:>12}  {:>9} {:>12}  {:>9} {:>12}",
            "type", "recv msgs", "recv bytes", "sent msgs", "sent bytes", "msgs/s", "bytes/s"
        );
        for t in &self.msg_types {
            let _ = writeln!(
                out,
                "  {:<12}  {:>9} {:>12}  {:>9} {:>12}  {:>9.1} {:>12.0}",
                t.msg_type,
                t.recv.msgs,
                t.recv.bytes,
                t.sent.msgs,
                t.sent.bytes,
                t.msgs_per_sec,
                t.bytes_per_sec
            );
        }

        let _ = writeln!(
            out,
            "\ninv → getdata, items (how much of what one side announced the other asked for):"
        );
        let _ = writeln!(
            out,
            "  {:<width$}  {:>9} {:>12} {:>6}  {:>9} {:>12} {:>6}",
            "peer", "peer inv", "node getdata", "ratio", "node inv", "peer getdata", "ratio"
        );
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        for p in self.peers.iter().take(top) {
            let g = &p.inv_getdata;
            let _ = writeln!(
                out,
                "  {:<width$}  {:>9} {:>12} {:>6}  {:>9} {:>12} {:>6}",
                p.peer,
                g.peer_announced,
                g.node_requested,
                ratio(g.node_request_ratio),
                g.node_announced,
                g.peer_requested,
                ratio(g.peer_request_ratio)
            );
        }

        let _ = writeln!(out, "\nlatency, µs (HdrHistogram):");
        let l = &self.latency;
        for (name, s) in [
            (
                "getdata→tx, bitcoind asked, peer answered",
                &l.getdata_tx_node_asked,
            ),
            (
                "getdata→tx, peer asked, bitcoind answered",
                &l.getdata_tx_peer_asked,
            ),
            (
                "ping→pong, bitcoind pinged, peer answered",
                &l.ping_pong_node_pinged,
            ),
            (
                "ping→pong, peer pinged, bitcoind answered",
                &l.ping_pong_peer_pinged,
            ),
        ] {
            if s.count == 0 {
                let _ = writeln!(out, "  {name}: none");
            } else {
                let _ = writeln!(
                    out,
                    "  {name}: n={} min={} p50={} p90={} p99={} max={}",
                    s.count, s.min_us, s.p50_us, s.p90_us, s.p99_us, s.max_us
                );
            }
        }

        let (line, peak) = self.rate.sparkline();
        let _ = writeln!(
            out,
            "\nmessages per second ({} buckets of {:.3} s, peak {:.1}/s):\n  |{line}|",
            self.rate.recv.len(),
            self.rate.bucket_micros as f64 / 1e6,
            peak
        );
        out
    }
}

/// Draws messages per second over time, received and sent, as an SVG chart.
pub fn draw_chart(series: &RateSeries, path: &Path) -> Result<()> {
    use plotters::prelude::*;

    let bucket_secs = series.bucket_micros as f64 / 1e6;
    let points = |counts: &[u64]| -> Vec<(f64, f64)> {
        (0..counts.len())
            .map(|i| (i as f64 * bucket_secs, series.rate(counts, i)))
            .collect()
    };
    let (recv, sent) = (points(&series.recv), points(&series.sent));
    let peak = recv
        .iter()
        .chain(&sent)
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0);
    let span = (series.recv.len() as f64 * bucket_secs).max(bucket_secs);

    // Drawn into memory, then written to a private file (plotters would
    // create the file with the umask's mode).
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("messages per second", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..span, 0f64..peak * 1.1)?;
        chart
            .configure_mesh()
            .x_desc(format!(
                "seconds since the first message (buckets of {bucket_secs:.3} s)"
            ))
            .y_desc("messages/s")
            .draw()?;
        chart
            .draw_series(LineSeries::new(recv, &BLUE))?
            .label("received by bitcoind")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(sent, &RED))?
            .label("sent by bitcoind")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    let mut file = crate::private_fs::create_file(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut file, svg.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::capture::{CaptureFile, CaptureRecord};
    use crate::formats::timeline::Selection;
    use crate::p2p;
    use bitcoin::consensus::encode::serialize;

    fn rec(t: u64, msg: &NetworkMessage) -> CaptureRecord {
        CaptureRecord {
            time_micros: t,
            msg_type: msg.command().to_string(),
            payload: serialize(msg),
        }
    }

    fn timeline() -> Timeline {
        let txs: Vec<_> = (0..3).map(|i| p2p::test_transaction(i, 1)).collect();
        let wtxids: Vec<_> = txs.iter().map(|t| t.compute_wtxid()).collect();
        let recv = vec![
            rec(1_000, &p2p::inv_wtx(&wtxids)),
            rec(2_500, &NetworkMessage::Tx(txs[0].clone())),
            rec(3_000, &NetworkMessage::Tx(txs[1].clone())),
            rec(4_000, &NetworkMessage::Ping(7)),
            rec(9_000, &NetworkMessage::Pong(99)),
        ];
        let sent = vec![
            rec(2_000, &p2p::getdata_wtx(&wtxids[..2])),
            rec(4_100, &NetworkMessage::Pong(7)),
            rec(5_000, &NetworkMessage::Ping(99)),
            rec(6_000, &p2p::inv_wtx(&wtxids)),
        ];
        let file = |direction, records| CaptureFile {
            path: PathBuf::from("10.0.0.1_8333/x"),
            peer_addr: Some("10.0.0.1:8333".into()),
            connection: None,
            direction,
            records,
            truncated: None,
        };
        Timeline::from_files(
            Path::new("capture"),
            vec![
                file(Direction::Inbound, recv),
                file(Direction::Outbound, sent),
            ],
            &Selection::default(),
        )
    }

    #[test]
    fn counts_ratios_and_latencies() {
        let stats = CaptureAnalysis::compute(&timeline());
        assert_eq!((stats.recv.msgs, stats.sent.msgs), (5, 4));
        let peer = &stats.peers[0];
        let g = &peer.inv_getdata;
        assert_eq!(
            (
                g.peer_announced,
                g.node_requested,
                g.node_announced,
                g.peer_requested
            ),
            (3, 2, 3, 0)
        );
        assert_eq!(g.node_request_ratio, Some(2.0 / 3.0));
        assert_eq!(g.peer_request_ratio, Some(0.0));
        let l = &stats.latency;
        // Two transactions asked at 2,000 arrived at 2,500 and 3,000.
        assert_eq!(l.getdata_tx_node_asked.count, 2);
        assert_eq!(l.getdata_tx_node_asked.min_us, 500);
        assert_eq!(l.getdata_tx_node_asked.max_us, 1000);
        assert_eq!(l.getdata_tx_peer_asked.count, 0);
        assert_eq!(
            (
                l.ping_pong_peer_pinged.count,
                l.ping_pong_peer_pinged.p50_us
            ),
            (1, 100)
        );
        // Above 2,048 µs values are kept to three significant digits.
        assert_eq!(l.ping_pong_node_pinged.count, 1);
        assert!(l.ping_pong_node_pinged.max_us.abs_diff(4000) <= 4);
        assert_eq!(stats.msg_types.len(), 5);
        assert_eq!(peer.msg_types["tx"].0.msgs, 2);
        let text = stats.to_text(10);
        assert!(
            text.contains(": 1 peer, 9 messages (5 recv, 4 sent)"),
            "{text}"
        );
        assert!(
            text.contains("getdata→tx, bitcoind asked, peer answered: n=2 min=500"),
            "{text}"
        );
    }

    #[test]
    fn rate_series_and_sparkline() {
        let t = timeline();
        let series = RateSeries::compute(&t, 8);
        assert_eq!(series.recv.iter().sum::<u64>(), 5);
        assert_eq!(series.sent.iter().sum::<u64>(), 4);
        assert_eq!(series.recv.len(), 8);
        let (line, peak) = series.sparkline();
        assert_eq!(line.chars().count(), 8);
        assert!(line.contains('█'), "{line}");
        assert!(peak > 0.0);
    }

    #[test]
    fn chart_is_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rate.svg");
        draw_chart(&RateSeries::compute(&timeline(), 50), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("messages per second"),
            "{svg:.200}"
        );
        assert!(svg.contains("<polyline"), "{svg:.200}");
    }
}
