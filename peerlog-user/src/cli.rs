//! The `peerlog` command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use crate::{
    args::{byte_size, number_in, rotate_interval, seconds_in},
    control::{protocol::RpcSocket, ControlOptions},
    filter::{PeerFilter, PeerSelector},
    formats::capture::CaptureLayout,
    messages::UsageError,
    node::find::{Chain, Locator},
    rotation::Rotation,
    stats::{
        PeerSeries, PeersBy, ReportOptions, StatsFilter, DEFAULT_CLOSED_GRACE_S, DEFAULT_MAX_PEERS,
    },
    trace::{self, TraceOptions},
};

/// Per-peer P2P message capture and resource tracking for a running Bitcoin
/// Core bitcoind, through its USDT tracepoints and eBPF. Needs root (or
/// CAP_SYS_ADMIN, which the kernel asks for to open uprobes).
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
    Trace(Box<TraceArgs>),
    /// Show the messages of a capture (bitcoind's -capturemessages or
    /// peerlog's), one line each with a decoded summary, or as JSON.
    Show(crate::toolbox::show::ShowArgs),
    /// Statistics of a capture: per peer and message type, inv/getdata
    /// ratios, getdata→tx and ping→pong latencies, messages per second.
    Stats(crate::toolbox::analysis::CaptureAnalysisArgs),
    /// Convert a capture to pcapng (Wireshark), JSON lines, or Bitcoin
    /// Core's capture format.
    Convert(crate::toolbox::convert::ConvertArgs),
    /// Replay a captured peer's messages into a node as a new peer, and
    /// record what the node answers.
    Replay(crate::toolbox::replay::ReplayArgs),
    /// The peer report card of a stats log (`peerlog trace --stats-log`):
    /// which peers are worth their cost and which misbehave, best first,
    /// and the value and cost of each connection type and network.
    Report(crate::toolbox::report::ReportArgs),
    /// Ask a running `peerlog trace` over its control RPC: per-peer figures
    /// (getpeerstats), node figures (getnodestats), the peer report card
    /// (getpeerreport), status (getstatus), or switch the capture on and
    /// off (setcapture).
    Ctl(crate::control::client::CtlArgs),
    /// Re-render, merge or filter the collapsed stacks (`*.folded`) of
    /// `peerlog trace --flamegraph` into a flamegraph SVG, without tracing
    /// again: by peer, thread, or function.
    Flamegraph(crate::flamegraph::FlamegraphArgs),
}

/// Arguments of `peerlog trace`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Process id of bitcoind, e.g. `--pid $(pidof bitcoind)`; the id of
    /// one of its threads stands for the process. Without --pid, --datadir
    /// or --pidfile: the only running process whose executable has
    /// bitcoind's USDT probes (bitcoind, or v30's bitcoin-node).
    #[arg(long, value_parser = number_in(1, i32::MAX, ""), conflicts_with_all = ["datadir", "pidfile"])]
    pub pid: Option<i32>,

    /// bitcoind's data directory (its -datadir): trace the process its
    /// bitcoind.pid names, found in DIR or in DIR's chain directory
    /// (testnet3, testnet4, signet, regtest).
    #[arg(long, value_name = "DIR", conflicts_with = "pidfile")]
    pub datadir: Option<PathBuf>,

    /// With --datadir: the chain whose pid file to read, when DIR has
    /// several.
    #[arg(long, value_enum, value_name = "NAME", requires = "datadir")]
    pub chain: Option<Chain>,

    /// Trace the process this pid file names (bitcoind's -pid).
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// Keep running when bitcoind exits: wait until its pid file (--datadir
    /// or --pidfile) names a new process, and attach to it; the capture,
    /// the figures and the control plane carry on.
    #[arg(long)]
    pub follow: bool,

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

    /// Rotation and size caps of the capture and the stats outputs.
    #[command(flatten)]
    pub rotation: Box<RotationArgs>,

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

    /// Stop after SECS seconds (0.001 to 31536000, a year).
    #[arg(long, value_name = "SECS", value_parser = seconds_in(0.001, MAX_DURATION_SECS))]
    pub duration: Option<Duration>,

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

    /// Size of the kernel ring buffer in MiB (a power of two, 4 to 1024).
    /// Larger rides out longer bursts; a 4,000,000-byte message needs 4.
    /// peerlog's resident memory includes twice this (the kernel maps the
    /// ring's pages twice so records never wrap).
    #[arg(long, default_value_t = 16, value_name = "MIB", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Write CPU flamegraphs to DIR: all.svg (every thread), one
    /// peer-<id>-<addr>.svg per peer served by the message handler, and the
    /// collapsed stacks of each (*.folded) for `peerlog flamegraph`.
    #[arg(long, value_name = "DIR")]
    pub flamegraph: Option<PathBuf>,

    /// CPU samples per second per CPU for --flamegraph (1 to 1000).
    #[arg(
        long,
        default_value_t = crate::flamegraph::DEFAULT_SAMPLE_RATE,
        value_name = "HZ",
        requires = "flamegraph",
        value_parser = number_in(1, crate::flamegraph::MAX_SAMPLE_RATE, " Hz")
    )]
    pub sample_rate: u32,

    /// Statistics outputs and the control RPC.
    #[command(flatten)]
    pub stats: StatsArgs,
}

/// Statistics options of `peerlog trace`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// Write every peer's figures (and the node's) as one JSON line to PATH
    /// (`-` for stdout) every --stats-interval seconds and when tracing
    /// stops. A peer that disconnected appears once more, `closed`, with its
    /// final figures. Schema: docs/stats.md.
    #[arg(long, value_name = "PATH")]
    pub stats_log: Option<PathBuf>,

    /// Seconds between stats log lines and between HdrHistogram log
    /// intervals (0.1 to 86400).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds_in(0.1, 86_400.0))]
    pub stats_interval: Duration,

    /// Write HdrHistogram interval logs to DIR, one file per figure
    /// (`payload_recv_bytes.hlog`, `processmessages_cpu_ns.hlog`, ...), each
    /// interval holding the node's histogram and one per peer and message type.
    #[arg(long, value_name = "DIR")]
    pub hdr_log: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9435),
    /// labelled by peer id, address, connection type and network.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Give at most N peers series of their own in the metrics (1 to
    /// 100000); the others count in the node's series and in
    /// `peerlog_peers_omitted`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PEERS,
          value_parser = number_in(1_usize, 100_000, " peers"))]
    pub metrics_max_peers: usize,

    /// Which peers get series of their own: those that moved the most
    /// payload bytes both ways (`traffic`), or that cost the message handler
    /// the most on-CPU time (`cpu`; by traffic when CPU accounting is off).
    #[arg(long, value_name = "RANK", value_enum, default_value_t = PeersBy::Traffic)]
    pub metrics_peers_by: PeersBy,

    /// Keep a closed peer's series, with its final figures, until the first
    /// scrape this many seconds after it closed (0 to 86400; 0: the next
    /// scrape only).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CLOSED_GRACE_S,
          value_parser = number_in(0_u64, 86_400, " seconds"))]
    pub metrics_closed_grace: u64,

    /// Only these peers in the stats log and the metrics (repeatable; the
    /// terms of --peer). Totals always cover every peer.
    #[arg(long = "stats-peer", value_name = "FILTER")]
    pub stats_peers: Vec<PeerFilter>,

    /// Only these message types in the per-message-type figures of the stats
    /// log and the metrics (repeatable; `*other*` is every type Bitcoin Core
    /// does not know).
    #[arg(long = "stats-msg-type", value_name = "TYPE")]
    pub stats_msg_types: Vec<String>,

    /// Listen for control RPC (JSON-RPC 2.0, `peerlog ctl`) on this Unix
    /// socket instead of /run/peerlog/<PID>.sock.
    #[arg(long, value_name = "PATH")]
    pub rpc_socket: Option<PathBuf>,

    /// Do not listen for control RPC.
    #[arg(long, conflicts_with = "rpc_socket")]
    pub no_rpc: bool,
}

impl StatsArgs {
    /// Checks the arguments: the options of the reports, and of the
    /// control plane.
    fn into_options(self) -> anyhow::Result<(ReportOptions, ControlOptions)> {
        crate::stats::check_msg_types(&self.stats_msg_types)?;
        let report = ReportOptions {
            stats_log: self.stats_log,
            interval: self.stats_interval,
            hdr_log: self.hdr_log,
            metrics: self.metrics.is_some(),
            series: PeerSeries {
                max_peers: self.metrics_max_peers,
                by: self.metrics_peers_by,
                closed_grace_s: self.metrics_closed_grace,
            },
            filter: StatsFilter::new(self.stats_peers, self.stats_msg_types),
            rotation: Rotation::NONE,
            compact: false,
        };
        let control = ControlOptions {
            rpc: match (self.no_rpc, self.rpc_socket) {
                (true, _) => RpcSocket::Off,
                (false, Some(path)) => RpcSocket::Path(path),
                (false, None) => RpcSocket::Default,
            },
            metrics: self.metrics,
        };
        Ok((report, control))
    }
}

/// Rotation and size caps of `peerlog trace`'s long-running outputs
/// (README, "Rotation and size caps").
#[derive(Debug, Clone, clap::Args)]
pub struct RotationArgs {
    /// Start a new capture generation every DURATION (`30s`, `15m`, `1h`,
    /// `1d`; whole seconds): a subdirectory of the --capture DIR named by its
    /// UTC start time (DIR/20261202T031500Z/), each a complete capture in the
    /// --capture-layout. Generations start at multiples of DURATION since
    /// the UNIX epoch. `peerlog show`, `stats` and `convert` read DIR whole
    /// (in time order) or one generation.
    #[arg(long, value_name = "DURATION", requires = "capture", value_parser = rotate_interval)]
    pub capture_rotate: Option<Duration>,

    /// Delete the oldest whole capture generations to keep DIR's generations
    /// under SIZE (`500M`, `10G`, `512MiB`; M and G are decimal). The
    /// generation being written is never deleted; when it alone is over SIZE
    /// that is said once on stderr and writing goes on.
    #[arg(long, value_name = "SIZE", requires = "capture_rotate", value_parser = byte_size)]
    pub capture_max_bytes: Option<u64>,

    /// Start a new generation of the stats log and of the HdrHistogram logs
    /// every DURATION (same forms as --capture-rotate): the stats log goes
    /// to PATH.<UTC start> (stats.jsonl.20261202T031500Z), the HdrHistogram
    /// logs to DIR/<UTC start>/, each file complete with its own header.
    #[arg(long, value_name = "DURATION", value_parser = rotate_interval)]
    pub stats_rotate: Option<Duration>,

    /// Delete the oldest stats log generations to keep them under SIZE, and
    /// likewise, separately, the oldest HdrHistogram log generations (same
    /// rules as --capture-max-bytes).
    #[arg(long, value_name = "SIZE", requires = "stats_rotate", value_parser = byte_size)]
    pub stats_max_bytes: Option<u64>,

    /// Write the stats log compactly: the first line of each file is full,
    /// every later line only what changed since the line before it (rules in
    /// docs/stats.md; `peerlog::stats::compact::Expander` rebuilds full lines).
    #[arg(long)]
    pub stats_log_compact: bool,
}

impl RotationArgs {
    /// Checks the flags against the outputs they apply to, and sets them
    /// on the report options; returns the capture's rotation.
    fn apply(self, stats: &StatsArgs, report: &mut ReportOptions) -> anyhow::Result<Rotation> {
        let is_stdout = stats
            .stats_log
            .as_ref()
            .is_some_and(|p| p.as_os_str() == "-");
        if self.stats_rotate.is_some() && stats.stats_log.is_none() && stats.hdr_log.is_none() {
            return Err(UsageError(
                "--stats-rotate needs --stats-log PATH or --hdr-log DIR to rotate".into(),
            )
            .into());
        }
        if self.stats_rotate.is_some() && is_stdout {
            return Err(
                UsageError("--stats-rotate cannot rotate a stats log on stdout".into()).into(),
            );
        }
        if self.stats_log_compact && stats.stats_log.is_none() {
            return Err(UsageError("--stats-log-compact needs --stats-log PATH".into()).into());
        }
        report.rotation = Rotation {
            interval: self.stats_rotate,
            max_bytes: self.stats_max_bytes,
        };
        report.compact = self.stats_log_compact;
        Ok(Rotation {
            interval: self.capture_rotate,
            max_bytes: self.capture_max_bytes,
        })
    }
}

impl TraceArgs {
    fn into_options(self) -> anyhow::Result<TraceOptions> {
        let stdout = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str() == "-");
        if stdout(&self.jsonl) && stdout(&self.stats.stats_log) {
            // Two writers would interleave their lines.
            return Err(
                UsageError("--jsonl and --stats-log cannot both write to stdout".into()).into(),
            );
        }
        if self.flamegraph.is_some() && self.no_accounting {
            log::warn!(
                "--no-accounting: without the ProcessMessages/SendMessages probes the samples \
                 cannot be told apart by peer; only all.svg is written"
            );
        }
        let (mut report, control) = self.stats.clone().into_options()?;
        if self.capture.is_none() && self.jsonl.is_none() {
            log::info!("neither --capture nor --jsonl given: only the summary will be printed");
        }
        let capture_rotation = (*self.rotation).clone().apply(&self.stats, &mut report)?;
        let locator = match (self.pid, self.datadir, self.pidfile) {
            (Some(pid), _, _) => Locator::Pid(pid),
            (None, Some(dir), _) => Locator::Datadir {
                dir,
                chain: self.chain,
            },
            (None, None, Some(path)) => Locator::PidFile(path),
            (None, None, None) => Locator::Auto,
        };
        if self.follow && !locator.can_follow() {
            return Err(UsageError(
                "--follow needs a pid file to find the next bitcoind: pass --datadir DIR or \
                 --pidfile PATH instead of --pid"
                    .into(),
            )
            .into());
        }
        if self.follow && self.flamegraph.is_some() {
            // The profile's unwind tables and symbols are those of one executable.
            return Err(UsageError(
                "--flamegraph profiles one bitcoind process; it cannot be combined with --follow"
                    .into(),
            )
            .into());
        }
        locator.check()?;
        Ok(TraceOptions {
            locator,
            follow: self.follow,
            capture: self.capture,
            capture_layout: self.capture_layout,
            capture_rotation,
            jsonl: self.jsonl,
            payload_in_jsonl: self.payload,
            peers: PeerSelector::new(self.peers),
            msg_types: self.msg_types,
            duration: self.duration,
            ring_size: self.ring_size << 20,
            accounting: !self.no_accounting,
            debug_file: self.debug_file,
            report,
            control,
            flamegraph: self.flamegraph,
            sample_rate: self.sample_rate,
        })
    }
}

/// Longest `--duration`: a year (longer traces are stopped by hand).
pub const MAX_DURATION_SECS: f64 = 31_536_000.0;

/// Parses `--ring-size`: MiB, a power of two from 4 to 1024.
fn parse_ring_size(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if n.is_power_of_two() && (4..=1024).contains(&n) => Ok(n),
        _ => Err("expected a power of two from 4 to 1024 (MiB)".into()),
    }
}

/// Runs the command line; the exit code is 0 on success, else the kind of
/// the error ([`crate::messages::ExitKind`]).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    crate::messages::init_logger(level);
    let result = match cli.command {
        Command::Trace(args) => args.into_options().and_then(trace::run).map(|summary| {
            eprintln!("{summary}");
        }),
        Command::Show(args) => crate::toolbox::show::run(args),
        Command::Stats(args) => crate::toolbox::analysis::run(args),
        Command::Convert(args) => crate::toolbox::convert::run(args),
        Command::Replay(args) => crate::toolbox::replay::run(args),
        Command::Report(args) => crate::toolbox::report::run(args),
        Command::Ctl(args) => crate::control::client::ctl(args),
        Command::Flamegraph(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::messages::error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("peerlog").chain(args.iter().copied()))
    }

    /// Every numeric flag of every subcommand refuses absurd values while
    /// parsing, saying which range it accepts, instead of panicking later.
    #[test]
    fn numbers_out_of_range_are_refused_naming_the_range() {
        let trace = ["trace", "--pid", "1"];
        let with = |base: &[&'static str], more: &[&'static str]| -> Vec<&'static str> {
            base.iter().chain(more).copied().collect()
        };
        let cap = ["show", "cap"];
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["trace", "--pid", "0"], "from 1 to 2147483647"),
            (vec!["trace", "--pid=-3"], "from 1 to 2147483647"),
            (
                with(&trace, &["--duration", "1e30"]),
                "from 0.001 to 31536000",
            ),
            (with(&trace, &["--duration", "0"]), "from 0.001 to 31536000"),
            (
                with(&trace, &["--duration", "NaN"]),
                "from 0.001 to 31536000",
            ),
            (
                with(&trace, &["--stats-interval", "1e30"]),
                "from 0.1 to 86400",
            ),
            (with(&trace, &["--stats-interval=-1"]), "from 0.1 to 86400"),
            (
                with(&trace, &["--ring-size", "3"]),
                "power of two from 4 to 1024",
            ),
            (
                with(&trace, &["--ring-size", "4096"]),
                "power of two from 4 to 1024",
            ),
            (
                with(&trace, &["--flamegraph", "d", "--sample-rate", "0"]),
                "from 1 to 1000",
            ),
            (with(&cap, &["--since", "1e30"]), "from 0 to 253402300799"),
            (with(&cap, &["--until=-1"]), "from 0 to 253402300799"),
            (
                vec!["stats", "cap", "--top", "99999999999"],
                "from 0 to 1000000",
            ),
            (
                vec!["replay", "cap", "--to", "127.0.0.1:1", "--wait", "1e30"],
                "from 0 to 3600",
            ),
            (
                vec!["replay", "cap", "--to", "127.0.0.1:1", "--wait=-1"],
                "from 0 to 3600",
            ),
            (
                vec!["replay", "cap", "--to", "127.0.0.1:1", "--speed", "1e-300"],
                "from 0.001 to 1000000",
            ),
            (
                vec!["ctl", "--pid", "0", "getstatus"],
                "from 1 to 2147483647",
            ),
            (vec!["flamegraph", "a.folded", "--peer=-1"], "from 0 to"),
        ];
        for (args, range) in cases {
            let err = match parse(&args) {
                Ok(cli) => panic!("{args:?} accepted: {cli:?}"),
                Err(e) => e,
            };
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}: {err}"
            );
            assert!(err.to_string().contains(range), "{args:?}: {err}");
        }
    }

    #[test]
    fn numbers_in_range_are_taken() {
        let cli = parse(&[
            "trace",
            "--pid",
            "2147483647",
            "--duration",
            "0.5",
            "--stats-interval",
            "0.1",
            "--ring-size",
            "1024",
        ])
        .unwrap();
        let Command::Trace(args) = cli.command else {
            panic!("{cli:?}")
        };
        let opts = args.into_options().unwrap();
        assert_eq!(opts.duration, Some(Duration::from_millis(500)));
        assert_eq!(opts.ring_size, 1024 << 20);
        assert_eq!(opts.report.interval, Duration::from_millis(100));

        // Every other numeric flag: the parsed value must have its field's
        // type (clap checks that only when the value is taken out).
        for args in [
            &[
                "trace",
                "--pid",
                "1",
                "--flamegraph",
                "d",
                "--sample-rate",
                "1000",
            ][..],
            &["stats", "cap", "--top", "1000000"],
            &["show", "cap", "--since", "253402300799", "--until", "0"],
            &["convert", "cap", "--to", "jsonl", "-", "--since", "1"],
            &[
                "replay", "cap", "--to", "h:1", "--wait", "0", "--speed", "0.001",
            ],
            &["ctl", "--pid", "2147483647", "getstatus"],
            &[
                "flamegraph",
                "a.folded",
                "--peer",
                "0",
                "--peer",
                "9223372036854775807",
            ],
        ] {
            if let Err(e) = parse(args) {
                panic!("{args:?}: {e}");
            }
        }
    }
}
