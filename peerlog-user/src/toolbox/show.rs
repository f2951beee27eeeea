//! `peerlog show`: the messages of a capture, one per line or as JSON.

use std::io::{self, BufWriter, Write};

use anyhow::Result;
use serde_json::{json, Value};

use crate::formats::timeline::{format_time, CaptureMessage, SelectArgs, Timeline};
use crate::toolbox::decode::{self, Decoded};

/// Arguments of `peerlog show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The capture and which of its messages to show.
    #[command(flatten)]
    pub select: SelectArgs,

    /// Print a JSON array instead, one object per message: the fields
    /// Bitcoin Core's message-capture-parser.py prints (direction, time,
    /// size, msgtype, body, error) and peer, peer_id, conntime,
    /// connection_type, summary and decode_error (and, deprecated,
    /// connected_at and conn_type).
    #[arg(long)]
    pub json: bool,
}

/// Runs `peerlog show`.
pub fn run(args: ShowArgs) -> Result<()> {
    let timeline = args.select.load()?;
    let mut out = BufWriter::new(io::stdout().lock());
    let written = if args.json {
        write_json(&timeline, &mut out)
    } else {
        write_text(&timeline, &mut out)
    }
    .and_then(|()| out.flush());
    match written {
        // `peerlog show | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The JSON object of one message; `decoded` is its payload, decoded.
///
/// A superset of what message-capture-parser.py prints for it: its keys
/// `direction`, `time` (µs since the UNIX epoch), `size` (payload bytes),
/// `msgtype`, `body` (absent for an empty payload; the payload in hex when
/// not decoded) and `error` (the parser's strings), plus `peer` (`addr:port`),
/// `peer_id` and `conntime` (per-connection captures), `connection_type`
/// (when known), `summary` and `decode_error`; `getpeerinfo`'s names, with
/// the deprecated `connected_at` and `conn_type` beside them until 0.3.
pub fn message_json(timeline: &Timeline, message: &CaptureMessage, decoded: Decoded) -> Value {
    let peer = &timeline.peers[message.peer];
    let record = &message.record;
    let mut object = json!({
        "direction": message.direction.name(),
        "time": record.time_micros,
        "size": record.payload.len(),
        "msgtype": record.msg_type,
        "peer": peer.addr,
        "summary": decoded.summary,
    });
    let fields = object.as_object_mut().expect("an object");
    if let Some((id, connected_at)) = peer.connection {
        fields.insert("peer_id".into(), json!(id));
        fields.insert("conntime".into(), json!(connected_at));
        // The key before getpeerinfo's name, kept until 0.3 (README,
        // "Deprecated JSON keys").
        fields.insert("connected_at".into(), json!(connected_at));
    }
    if !peer.conn_type.is_empty() {
        fields.insert("connection_type".into(), json!(peer.conn_type));
        // Deprecated like `connected_at`.
        fields.insert("conn_type".into(), json!(peer.conn_type));
    }
    if let Some(body) = decoded.body {
        fields.insert("body".into(), body);
    }
    if let Some(error) = decoded.error {
        fields.insert("error".into(), json!(error));
    }
    if let Some(why) = decoded.decode_error {
        fields.insert("decode_error".into(), json!(why));
    }
    object
}

/// Writes the timeline as a JSON array, one message per line (so that the
/// output diffs well and stays valid JSON).
pub fn write_json<W: Write>(timeline: &Timeline, out: &mut W) -> io::Result<()> {
    out.write_all(b"[")?;
    for (i, message) in timeline.messages.iter().enumerate() {
        let decoded = decode::decode(&message.record.msg_type, &message.record.payload);
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut *out, &message_json(timeline, message, decoded))?;
    }
    out.write_all(b"\n]\n")
}

/// Writes one line per message: time, peer, direction, type, payload size
/// and the decoded summary, in aligned columns.
pub fn write_text<W: Write>(timeline: &Timeline, out: &mut W) -> io::Result<()> {
    let labels: Vec<String> = timeline.peers.iter().map(|p| p.label()).collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    for message in &timeline.messages {
        let record = &message.record;
        let decoded = decode::decode(&record.msg_type, &record.payload);
        let line = format!(
            "{}  {:<width$}  {}  {:<12} {:>8}  {}",
            format_time(record.time_micros),
            labels[message.peer],
            message.direction,
            record.msg_type,
            record.payload.len(),
            decoded.summary
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
