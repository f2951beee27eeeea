//! The `peerlog` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use crate::{
    capture::CaptureLayout,
    filter::{PeerFilter, PeerSelector},
    trace::{self, TraceOptions},
};

/// Per-peer P2P message capture and resource tracking for a running Bitcoin
/// Core bitcoind, through its USDT tracepoints and eBPF. Needs root (or
/// CAP_BPF and CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(name = "peerlog", version, about, long_about = None)]
pub struct Cli {
    /// Log more (repeat for debug output); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running bitcoind and trace its P2P traffic, peer by peer.
    ///
    /// Prints a line containing "attached" on stderr once every probe is live,
    /// and a summary when it stops (SIGINT/SIGTERM, --duration, or when the
    /// target exits).
    Trace(TraceArgs),
}

/// Arguments of `peerlog trace`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Process id of bitcoind, e.g. `--pid $(pidof bitcoind)`.
    #[arg(long)]
    pub pid: i32,

    /// Write every message of the selected peers, full payload, to DIR in
    /// Bitcoin Core's -capturemessages format (DIR/<addr>_<port>/msgs_recv.dat
    /// and msgs_sent.dat).
    #[arg(long, value_name = "DIR")]
    pub capture: Option<PathBuf>,

    /// Directory layout of the capture: `core` appends later connections from
    /// the same addr:port to the same files, like bitcoind; `per-connection`
    /// gives each connection its own directory
    /// (DIR/<addr>_<port>/peer<ID>-<connect time>/).
    #[arg(long, value_enum, default_value = "core", value_name = "LAYOUT")]
    pub capture_layout: CaptureLayout,

    /// Stream one JSON object per event to PATH (`-` for stdout): messages,
    /// connections opened/closed/evicted, misbehaviour.
    #[arg(long, value_name = "PATH")]
    pub jsonl: Option<PathBuf>,

    /// Include message payloads (hex) in the JSON lines.
    #[arg(long, requires = "jsonl")]
    pub payload: bool,

    /// Only these peers (repeatable; a peer matching any filter is selected):
    /// a peer id (`5`), an address (`10.0.0.1`, `[::1]:8333`), a CIDR range
    /// (`10.0.0.0/8`), a network (`ipv4`, `ipv6`, `onion`, `i2p`, `cjdns`) or
    /// a connection type (`inbound`, `outbound`, `outbound-full-relay`,
    /// `block-relay-only`, `manual`, `feeler`, `addr-fetch`). Payloads of
    /// other peers are not copied out of bitcoind.
    #[arg(long = "peer", value_name = "FILTER")]
    pub peers: Vec<PeerFilter>,

    /// Only these message types (repeatable), e.g. `--msg-type tx --msg-type inv`.
    /// Payloads of other types are not copied out of bitcoind.
    #[arg(long = "msg-type", value_name = "TYPE")]
    pub msg_types: Vec<String>,

    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Size of the kernel ring buffer in MiB (a power of two). Larger rides
    /// out longer bursts; a 4,000,000-byte message needs 4.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub ring_size: u32,
}

impl TraceArgs {
    fn into_options(self) -> anyhow::Result<TraceOptions> {
        if !self.ring_size.is_power_of_two() || !(4..=1024).contains(&self.ring_size) {
            anyhow::bail!("--ring-size must be a power of two between 4 and 1024 MiB");
        }
        let duration = match self.duration {
            Some(d) if d.is_finite() && d > 0.0 => Some(Duration::from_secs_f64(d)),
            Some(d) => anyhow::bail!("--duration must be a positive number of seconds, not {d}"),
            None => None,
        };
        if self.capture.is_none() && self.jsonl.is_none() {
            log::info!("neither --capture nor --jsonl given: only the summary will be printed");
        }
        Ok(TraceOptions {
            pid: self.pid,
            capture: self.capture,
            capture_layout: self.capture_layout,
            jsonl: self.jsonl,
            payload_in_jsonl: self.payload,
            peers: PeerSelector::new(self.peers),
            msg_types: self.msg_types,
            duration,
            ring_size: self.ring_size << 20,
        })
    }
}

/// Runs the command line; the exit code is 0 on success, 1 on error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let result = match cli.command {
        Command::Trace(args) => args.into_options().and_then(trace::run).map(|summary| {
            eprintln!("{summary}");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerlog: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
