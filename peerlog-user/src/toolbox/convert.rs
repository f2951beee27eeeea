//! `peerlog convert`: a capture into pcapng (for Wireshark), JSON lines, or
//! Bitcoin Core's own capture format.
//!
//! The input is anything [`Timeline::load`] reads, pcapng included, so
//! `convert --to core` also turns a pcapng file back into capture files, and
//! merges a per-connection capture into bitcoind's layout.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::formats::capture::{CaptureLayout, CaptureWriter};
use crate::formats::pcapng;
use crate::formats::timeline::{NetworkArg, SelectArgs, Timeline};
use crate::toolbox::decode;
use crate::toolbox::show::message_json;
use peerlog_common::Direction;

/// Output formats of `peerlog convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// pcapng with one synthesized TCP stream per peer connection and the
    /// messages in v1 wire framing, for Wireshark and tshark.
    Pcapng,
    /// One JSON object per line and message, as `show --json` prints them.
    Jsonl,
    /// Bitcoin Core's -capturemessages files under the directory OUT.
    Core,
}

/// Arguments of `peerlog convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The capture and which of its messages to convert.
    #[command(flatten)]
    pub select: SelectArgs,

    /// The output format.
    #[arg(long = "to", value_enum, value_name = "FORMAT")]
    pub to: Format,

    /// Where to write: a file for pcapng and jsonl (`-` for stdout), a new
    /// or empty directory for core.
    #[arg(value_name = "OUT")]
    pub out: PathBuf,

    /// The network whose magic starts every v1 frame in pcapng. Wireshark's
    /// dissector recognizes main's, testnet's and regtest's by itself; for
    /// signet and testnet4 open the file with `-d tcp.port==8333,bitcoin`.
    #[arg(long, value_enum, default_value = "main", value_name = "NETWORK")]
    pub network: NetworkArg,

    /// Directory layout for `--to core`: `core` like bitcoind, or
    /// `per-connection` (needs a capture that records peer ids).
    #[arg(long, value_enum, default_value = "core", value_name = "LAYOUT")]
    pub capture_layout: CaptureLayout,
}

/// Runs `peerlog convert`.
pub fn run(args: ConvertArgs) -> Result<()> {
    let timeline = args.select.load()?;
    let what = match convert(&args, &timeline) {
        // `peerlog convert ... -  | head` is not an error.
        Err(e) if is_broken_pipe(&e) => return Ok(()),
        other => other?,
    };
    eprintln!("peerlog: wrote {what} to {}", args.out.display());
    if args.to == Format::Pcapng
        && matches!(args.network, NetworkArg::Signet | NetworkArg::Testnet4)
    {
        eprintln!(
            "peerlog: Wireshark does not know this network's magic: open the file with \
             `-d tcp.port==8333,bitcoin` (Decode As)"
        );
    }
    Ok(())
}

/// Whether `error` comes from writing to a pipe whose reader is gone.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes the output; returns what was written, for the closing message.
fn convert(args: &ConvertArgs, timeline: &Timeline) -> Result<String> {
    Ok(match args.to {
        Format::Pcapng => {
            let summary = with_output(&args.out, |out| {
                pcapng::write::write_pcapng(timeline, args.network.into(), out)
            })?;
            format!(
                "{} messages of {} connections as {} packets",
                summary.messages, summary.connections, summary.packets
            )
        }
        Format::Jsonl => {
            with_output(&args.out, |out| {
                write_jsonl(timeline, out).map_err(Into::into)
            })?;
            format!("{} messages as JSON lines", timeline.messages.len())
        }
        Format::Core => {
            write_core(timeline, &args.out, args.capture_layout)?;
            format!(
                "{} messages of {} peers as capture files",
                timeline.messages.len(),
                timeline.peers.len()
            )
        }
    })
}

/// Runs `write` on a buffered OUT: stdout for `-`, else the file (created or
/// replaced).
fn with_output<T>(out: &Path, write: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
    if out == Path::new("-") {
        let mut stdout = BufWriter::new(io::stdout().lock());
        let result = write(&mut stdout)?;
        stdout.flush()?;
        return Ok(result);
    }
    let file = crate::private_fs::create_file(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut file = BufWriter::new(file);
    let result = write(&mut file).with_context(|| format!("writing {}", out.display()))?;
    file.flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(result)
}

/// Writes one JSON object per line and message (see [`message_json`]).
pub fn write_jsonl(timeline: &Timeline, out: &mut dyn Write) -> io::Result<()> {
    for message in &timeline.messages {
        let decoded = decode::decode(&message.record.msg_type, &message.record.payload);
        serde_json::to_writer(&mut *out, &message_json(timeline, message, decoded))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes the timeline as capture files under `dir`, which must be new or
/// empty: capture files are appended to, and appending to an old capture
/// would mix the two.
pub fn write_core(timeline: &Timeline, dir: &Path, layout: CaptureLayout) -> Result<()> {
    if dir.exists() {
        let mut entries =
            fs::read_dir(dir).with_context(|| format!("{} is not a directory", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty; convert --to core writes into a new or empty directory",
                dir.display()
            );
        }
    }
    if layout == CaptureLayout::PerConnection {
        if let Some(peer) = timeline.peers.iter().find(|p| p.connection.is_none()) {
            bail!(
                "--capture-layout per-connection needs peer ids, and this capture does not \
                 record the one of {}",
                peer.addr
            );
        }
    }
    let mut writer = CaptureWriter::new(dir, layout)?;
    for message in &timeline.messages {
        let peer = &timeline.peers[message.peer];
        // In the core layout the connection is not used.
        let connection = peer.connection.unwrap_or((0, 0));
        let inbound = message.direction == Direction::Inbound;
        writer.append(&peer.addr, connection, inbound, &message.record)?;
    }
    writer.flush()?;
    Ok(())
}
