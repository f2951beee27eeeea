//! `peerlog report`: the peer report card ([`crate::stats::card`]) of a
//! moment of a stats log (`peerlog trace --stats-log`), the same card the
//! live `getpeerreport` gave for the same figures; or of a capture, whose
//! messages go through the same statistics a trace's do.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    clock::WallClock,
    event::{Event, Message},
    formats::timeline::{format_time, parse_time, Selection, Timeline},
    peers::ReportSinks,
    stats::{
        card::{self, Card, Rule},
        compact::Expander,
        Collector, Coverage, StatsFilter,
    },
};

/// What a card of a capture cannot tell, which a trace's can: captures hold
/// the messages and nothing of what bitcoind did with them.
const NOT_IN_CAPTURES: [(&str, &str); 5] = [
    (
        "cost.cpu_ns",
        "a capture holds no CPU time: the cpu-hog flag is not evaluated",
    ),
    (
        "value.new_blocks",
        "a capture does not say which blocks bitcoind connected",
    ),
    (
        "value.txs_accepted",
        "a capture does not hold the mempool's verdicts: txs_accepted, \
         txs_announced_first_accepted, rejections and the invalid-txs flag are not evaluated",
    ),
    (
        "misbehaving",
        "a capture does not hold bitcoind's misbehaviour reports",
    ),
    (
        "cost.send_queue_bytes",
        "a capture does not hold bitcoind's queues: the stalling flag is not evaluated",
    ),
];

/// Arguments of `peerlog report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A stats log written by `peerlog trace --stats-log`, full or compact
    /// (`--stats-log-compact`; with `--stats-rotate`, one of its files); or
    /// a capture: a directory of `msgs_recv.dat`/`msgs_sent.dat` files
    /// (bitcoind's `-capturemessages`, `peerlog trace --capture`) or a
    /// pcapng file.
    #[arg(value_name = "STATS_LOG|CAPTURE")]
    pub stats_log: PathBuf,

    /// The moment: the last line written at or before TIME (UNIX seconds,
    /// or an RFC 3339 time such as `2023-11-14T22:13:20Z`), or a capture's
    /// messages up to TIME; by default all of it.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<u64>,

    /// Print the card as JSON, as `peerlog ctl getpeerreport` does.
    #[arg(long)]
    pub json: bool,
}

/// Runs `peerlog report`.
pub fn run(args: ReportArgs) -> Result<()> {
    let (time_us, card) = if is_stats_log(&args.stats_log)? {
        let (time_us, line) = find_line(&args)?;
        let peers = line["peers"]
            .as_array()
            .with_context(|| format!("{}: the line has no peers", args.stats_log.display()))?;
        let card = card::card(peers, &line["node"])
            .with_context(|| format!("reading {}", args.stats_log.display()))?;
        (time_us, card)
    } else {
        capture_card(&args.stats_log, args.at)?
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &card)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_text(&card, time_us, &mut out)
    }
    .and_then(|()| out.flush());
    match written {
        // `peerlog report | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Whether `path` is a stats log (JSON lines) rather than a capture: a
/// directory, a pcapng file or a capture file start otherwise.
fn is_stats_log(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    let mut first = [0u8; 1];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut first))
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(n == 1 && first[0] == b'{')
}

/// The card of a capture's messages up to `at` (all of them by default),
/// with the time of the last one: each message goes through the statistics
/// as a traced one would. Peers are numbered as the capture records them
/// (peerlog's layout), else in the order of their first message.
fn capture_card(path: &Path, at: Option<u64>) -> Result<(u64, Card)> {
    let timeline = Timeline::load(path, &Selection::default())?;
    timeline.print_warnings();
    let mut ids: Vec<i64> = timeline
        .peers
        .iter()
        .filter_map(|p| p.connection.map(|(id, _)| id))
        .collect();
    let recorded = ids.len() == timeline.peers.len() && {
        ids.sort_unstable();
        ids.windows(2).all(|w| w[0] != w[1])
    };
    let peers: Vec<(i64, Arc<str>, Arc<str>)> = timeline
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = match p.connection {
                Some((id, _)) if recorded => id,
                _ => i as i64,
            };
            (id, p.addr.as_str().into(), p.conn_type.into())
        })
        .collect();
    let mut c = Collector::new(
        WallClock::unix(),
        Coverage::default(),
        false,
        ReportSinks::default(),
    );
    let mut last = None;
    // The messages are handed over, not copied: a capture may hold gigabytes.
    for m in timeline.messages {
        let time = m.record.time_micros;
        if at.is_some_and(|at| time > at) {
            break;
        }
        let (id, addr, conn_type) = &peers[m.peer];
        c.handle(&Event::Message(Message {
            ktime_ns: time.saturating_mul(1000),
            tid: 0,
            peer_id: *id,
            cnode: None,
            addr: addr.clone(),
            conn_type: conn_type.clone(),
            msg_type: m.record.msg_type,
            direction: m.direction,
            payload_size: m.record.payload.len() as u64,
            payload: Some(m.record.payload),
            addr_truncated: false,
        }));
        last = Some(time);
    }
    let last = last.with_context(|| match at {
        Some(at) => format!(
            "{} has no message at or before {}",
            path.display(),
            format_time(at)
        ),
        None => format!("{} holds no messages", path.display()),
    })?;
    let all = StatsFilter::default();
    let readings = c.read_node();
    let rows = c.peers_json(&all);
    let mut card = card::card(&rows, &c.node_json(&all, &readings))
        .with_context(|| format!("reading {}", path.display()))?;
    card.not_measured.extend(
        NOT_IN_CAPTURES
            .iter()
            .map(|&(name, rule)| Rule { name, rule }),
    );
    Ok((last, card))
}

/// The line of the moment asked for, with its time.
fn find_line(args: &ReportArgs) -> Result<(u64, Value)> {
    let path = &args.stats_log;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut found = None;
    // A compact log's lines say what changed: each is rebuilt in full.
    let mut expander = Expander::default();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            // The last line of a log still being written may be cut short.
            Err(e) if e.is_eof() => break,
            Err(e) => bail!(
                "{}:{}: not a stats log line ({e}); is this a --stats-log file?",
                path.display(),
                n + 1
            ),
        };
        let Some(time_us) = value["time_us"].as_u64() else {
            bail!(
                "{}:{}: a line without time_us; is this a --stats-log file?",
                path.display(),
                n + 1
            );
        };
        if args.at.is_some_and(|at| time_us > at) {
            break;
        }
        let value = expander
            .expand(value)
            .with_context(|| format!("{}:{}: a compact line", path.display(), n + 1))?;
        found = Some((time_us, value));
    }
    found.with_context(|| match args.at {
        Some(at) => format!(
            "{} has no line at or before {}",
            path.display(),
            format_time(at)
        ),
        None => format!("{} has no stats line yet", path.display()),
    })
}

/// The card as two tables, then its rules.
fn write_text(card: &Card, time_us: u64, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "peer report card at {}", format_time(time_us))?;
    writeln!(
        out,
        "{:>4} {:>5} {:<20} {:<8} {:>6} {:>7} {:>7} {:>8} {:>9} {:>6} {:>6} {:>10} {:>10} {:>7} {:>5} {:>8} {:>10}  flags",
        "rank", "id", "connection_type", "network", "blocks", "txs", "getdata", "ping ms",
        "cpu ms", "cpu%", "msgs%", "bytes in", "bytes out", "invalid", "dup", "notfound", "send queue"
    )?;
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for p in &card.peers {
        let flags: Vec<&str> = p.flags.iter().map(|f| f.flag).collect();
        writeln!(
            out,
            "{:>4} {:>5} {:<20} {:<8} {:>6} {:>7} {:>7} {:>8} {:>9} {:>6} {:>6} {:>10} {:>10} {:>7} {:>5} {:>8} {:>10}  {}{}",
            p.rank,
            p.id,
            p.connection_type,
            p.network.as_deref().unwrap_or("-"),
            opt(p.value.new_blocks),
            opt(p.value.txs_accepted),
            p.value.getdata_answered,
            p.value.ping_min_ms.map_or("-".into(), |ms| format!("{ms:.2}")),
            p.cost.cpu_ns.map_or("-".into(), |ns| format!("{:.1}", ns as f64 / 1e6)),
            p.cost.cpu_share.map_or("-".into(), |s| format!("{:.1}", s * 100.0)),
            format!("{:.1}", p.cost.msgs_recv_share * 100.0),
            p.cost.bytes_recv,
            p.cost.bytes_sent,
            p.cost.txs_invalid,
            p.cost.txs_duplicate,
            p.cost.notfound,
            opt(p.cost.send_queue_bytes),
            flags.join(","),
            if p.closed { " (closed)" } else { "" },
        )?;
    }
    for p in card.peers.iter().filter(|p| !p.flags.is_empty()) {
        for f in &p.flags {
            writeln!(out, "  peer {} {}: {}", p.id, f.flag, f.because)?;
        }
    }
    writeln!(out, "\nconnection mix")?;
    writeln!(
        out,
        "{:<20} {:<8} {:>5} {:>7} {:>12} {:>12} {:>12} {:>14}",
        "connection_type",
        "network",
        "peers",
        "flagged",
        "blocks/peer",
        "txs/peer",
        "cpu ms/peer",
        "bytes/peer"
    )?;
    for m in &card.connection_mix {
        writeln!(
            out,
            "{:<20} {:<8} {:>5} {:>7} {:>12.2} {:>12.1} {:>12.1} {:>14.0}",
            m.connection_type,
            m.network.as_deref().unwrap_or("-"),
            m.peers,
            m.flagged,
            m.per_peer.new_blocks,
            m.per_peer.txs_accepted,
            m.per_peer.cpu_ns / 1e6,
            m.per_peer.bytes,
        )?;
    }
    writeln!(out, "\nranking: {}", card.ranking_rule)?;
    for r in &card.flag_rules {
        writeln!(out, "flag {}: {}", r.name, r.rule)?;
    }
    for r in &card.not_measured {
        writeln!(out, "not measured: {}: {}", r.name, r.rule)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats log line of `peers` rows at `time_us`, as the trace writes it.
    fn line(time_us: u64, peer_ids: &[i64]) -> String {
        let peers: Vec<Value> = peer_ids
            .iter()
            .map(|&id| {
                serde_json::json!({
                    "id": id, "addr": format!("127.0.0.1:{}", 5000 + id), "network": "ipv4",
                    "connection_type": "inbound", "closed": false, "misbehaving": 0,
                    "bytesrecv": 100, "bytessent": 200, "payloadrecv": 80, "payloadsent": 150,
                    "msgsrecv": 4, "cpu_ns": 1000, "msghand_cpu_share": 0.5,
                    "mempool": {"accepted": id as u64, "rejected_by_reason": {}},
                    "blocks": {"new_blocks": 0},
                    "tx_relay": {
                        "notfound_recv": 0, "announced_first": 0, "announced_first_accepted": 0,
                        "tx_recv_duplicate_bytes": 0, "tx_recv_unsolicited_bytes": 0,
                    },
                    "getdata_tx_latency_ns": {"count": 0},
                    "getdata_tx_pending": 0,
                    "ping": {"pings_sent": 1, "pongs_matched": 1, "min_rtt_ns": 250_000},
                    "memory": {
                        "send_queue_bytes": 0, "send_queue_full_secs": 0, "recv_queue_bytes": 0,
                    },
                    "addr_relay": {"msgs_recv": 1, "entries_recv": 2, "rate_limited": 1},
                })
            })
            .collect();
        serde_json::json!({"time_us": time_us, "node": {"msgsrecv": 8}, "peers": peers}).to_string()
    }

    fn args(path: PathBuf, at: Option<u64>) -> ReportArgs {
        ReportArgs {
            stats_log: path,
            at,
            json: false,
        }
    }

    #[test]
    fn picks_the_line_of_the_moment_and_ignores_a_cut_last_line() {
        let dir = std::env::temp_dir().join(format!("peerlog-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.log");
        let cut = &line(3_000_000, &[0])[..40];
        std::fs::write(
            &path,
            format!(
                "{}\n{}\n{cut}",
                line(1_000_000, &[0]),
                line(2_000_000, &[0, 1])
            ),
        )
        .unwrap();
        let (time, last) = find_line(&args(path.clone(), None)).unwrap();
        assert_eq!(
            (time, last["peers"].as_array().unwrap().len()),
            (2_000_000, 2)
        );
        let (time, _) = find_line(&args(path.clone(), Some(1_500_000))).unwrap();
        assert_eq!(time, 1_000_000);
        let err = find_line(&args(path.clone(), Some(10))).unwrap_err();
        assert!(err.to_string().contains("no line at or before"), "{err}");

        let card = card::card(last["peers"].as_array().unwrap(), &last["node"]).unwrap();
        assert_eq!(
            card.peers[0].id, 1,
            "more transactions accepted ranks first"
        );
        let mut text = Vec::new();
        write_text(&card, time, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("ranking: fewer flags first"), "{text}");

        // A compact log gives the same last line as the full one.
        let mut compactor = crate::stats::compact::Compactor::default();
        let compact: Vec<String> = [line(1_000_000, &[0]), line(2_000_000, &[0, 1])]
            .iter()
            .map(|l| {
                compactor
                    .compact(serde_json::from_str(l).unwrap())
                    .to_string()
            })
            .collect();
        assert!(compact[1].contains("\"delta\":true"), "{}", compact[1]);
        std::fs::write(&path, compact.join("\n")).unwrap();
        let (time, expanded) = find_line(&args(path.clone(), None)).unwrap();
        assert_eq!(time, 2_000_000);
        assert_eq!(
            expanded,
            serde_json::from_str::<Value>(&line(2_000_000, &[0, 1])).unwrap()
        );

        std::fs::write(&path, "{\"not\": \"a stats log\"}\n").unwrap();
        let err = find_line(&args(path.clone(), None)).unwrap_err();
        assert!(err.to_string().contains("without time_us"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
