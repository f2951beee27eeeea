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
    /// Show the messages of a capture (bitcoind's -capturemessages or
    /// peerlog's), one line each with a decoded summary, or as JSON.
    Show(crate::show::ShowArgs),
    /// Statistics of a capture: per peer and message type, inv/getdata
    /// ratios, getdata→tx and ping→pong latencies, messages per second.
    Stats(crate::analysis::StatsArgs),
    /// Convert a capture to pcapng (Wireshark), JSON lines, or Bitcoin
    /// Core's capture format.
    Convert(crate::convert::ConvertArgs),
    /// Replay a captured peer's messages into a node as a new peer, and
    /// record what the node answers.
    Replay(crate::replay::ReplayArgs),
    /// Ask a running `peerlog trace` over its control RPC: per-peer figures
    /// (getpeerstats), node figures (getnodestats), status (getstatus), or
    /// switch the capture on and off (setcapture).
    Ctl(crate::rpc::CtlArgs),
    /// Re-render, merge or filter the collapsed stacks (`*.folded`) of
    /// `peerlog trace --flamegraph` into a flamegraph SVG, without tracing
    /// again: by peer, thread, or function.
    Flamegraph(crate::flamegraph::FlamegraphArgs),
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

    /// Trace only the net:* tracepoints: no function timing, mempool, block
    /// or on-CPU accounting (their uprobes cost bitcoind a little CPU).
    #[arg(long)]
    pub no_accounting: bool,

    /// Separate debug file with bitcoind's symbols, for a stripped bitcoind
    /// (Bitcoin Core's release binaries are; the debug file is in the
    /// `*-debug` tarball). Without it peerlog looks under
    /// /usr/lib/debug/.build-id/ and follows .gnu_debuglink.
    #[arg(long, value_name = "PATH")]
    pub debug_file: Option<PathBuf>,

    /// Size of the kernel ring buffer in MiB (a power of two). Larger rides
    /// out longer bursts; a 4,000,000-byte message needs 4. peerlog's
    /// resident memory includes twice this (the kernel maps the ring's pages
    /// twice so records never wrap).
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub ring_size: u32,

    /// Write CPU flamegraphs to DIR: all.svg (every thread), one
    /// peer-<id>-<addr>.svg per peer served by the message handler, and the
    /// collapsed stacks of each (*.folded) for `peerlog flamegraph`.
    #[arg(long, value_name = "DIR")]
    pub flamegraph: Option<PathBuf>,

    /// CPU samples per second per CPU for --flamegraph (1 to 1000).
    #[arg(long, default_value_t = crate::flamegraph::DEFAULT_SAMPLE_RATE, value_name = "HZ", requires = "flamegraph")]
    pub sample_rate: u32,

    /// Statistics outputs and the control RPC.
    #[command(flatten)]
    pub stats: crate::stats::StatsArgs,
}

impl TraceArgs {
    fn into_options(self) -> anyhow::Result<TraceOptions> {
        let stdout = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str() == "-");
        if stdout(&self.jsonl) && stdout(&self.stats.stats_log) {
            // Two writers would interleave their lines.
            anyhow::bail!("--jsonl and --stats-log cannot both write to stdout");
        }
        if !self.ring_size.is_power_of_two() || !(4..=1024).contains(&self.ring_size) {
            anyhow::bail!("--ring-size must be a power of two between 4 and 1024 MiB");
        }
        let duration = match self.duration {
            Some(d) if d.is_finite() && d > 0.0 => Some(Duration::from_secs_f64(d)),
            Some(d) => anyhow::bail!("--duration must be a positive number of seconds, not {d}"),
            None => None,
        };
        if !(1..=crate::flamegraph::MAX_SAMPLE_RATE).contains(&self.sample_rate) {
            anyhow::bail!(
                "--sample-rate must be between 1 and {} Hz, not {}",
                crate::flamegraph::MAX_SAMPLE_RATE,
                self.sample_rate
            );
        }
        if self.flamegraph.is_some() && self.no_accounting {
            log::warn!(
                "--no-accounting: without the ProcessMessages/SendMessages probes the samples \
                 cannot be told apart by peer; only all.svg is written"
            );
        }
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
            accounting: !self.no_accounting,
            debug_file: self.debug_file,
            stats: self.stats.into_options()?,
            flamegraph: self.flamegraph,
            sample_rate: self.sample_rate,
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
        Command::Show(args) => crate::show::run(args),
        Command::Stats(args) => crate::analysis::run(args),
        Command::Convert(args) => crate::convert::run(args),
        Command::Replay(args) => crate::replay::run(args),
        Command::Ctl(args) => crate::rpc::ctl(args),
        Command::Flamegraph(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerlog: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
