//! `peerlog-loadgen`: drive P2P load into a node (the twin, or a real
//! bitcoind on regtest) and report its throughput and answer latency as JSON.
//! See [`peerlog_tests::loadgen`] for what is sent and how it is answered.

use std::{
    fs,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use bitcoin::{BlockHash, Network};
use clap::Parser;
use peerlog::args::{number_in, seconds_in};
use peerlog_tests::loadgen::{self, LoadConfig, Mix, Report, Window};

/// Drive P2P load into a node: N peers, each sending a mix of requests the
/// node answers, at a fixed rate or as fast as the in-flight bound allows.
/// Prints a JSON report (requests sent and answered per second, answer
/// latency percentiles, errors) on stdout and a short summary on stderr.
#[derive(Debug, Parser)]
#[command(name = "peerlog-loadgen", version)]
struct Args {
    /// The node's P2P address.
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    /// Concurrent peers (one connection and one thread each), 1 to 10000.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = number_in(1usize, 10_000, ""))]
    peers: usize,
    /// `ping-flood`, `relay` (inv → getdata → tx), `getheaders`, `blocks`
    /// (getdata block), `idle` (a ping a second), or weights such as
    /// `ping=1,relay=4,getheaders=1,block=1`.
    #[arg(long, default_value = "ping-flood")]
    mix: Mix,
    /// Requests per second per peer, 0.001 to 1000000; 0 keeps --in-flight
    /// requests outstanding at all times. Default: 1 for `idle`, 0 otherwise.
    #[arg(long, value_name = "MSGS_PER_SEC_PER_PEER", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Most unanswered requests per peer, 1 to 100000.
    #[arg(long, default_value_t = 8, value_name = "K", value_parser = number_in(1usize, 100_000, ""))]
    in_flight: usize,
    /// How long to send, once every peer is connected (0.001 to 86400).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = seconds_in(0.001, 86_400.0))]
    duration: Duration,
    /// A request unanswered for this long is an error (0.001 to 3600).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = seconds_in(0.001, 3600.0))]
    timeout: Duration,
    /// A block to request (hash in the usual display hex), repeatable; they
    /// are requested in turn. Default: the genesis block.
    #[arg(long = "block", value_name = "HASH")]
    blocks: Vec<BlockHash>,
    /// The P2P network (its magic): regtest, testnet, signet or bitcoin.
    #[arg(long, default_value = "regtest")]
    network: Network,
    /// Write the JSON report here instead of stdout.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerlog-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `--rate`: 0, or a rate slow or fast enough to make sense (a
/// rate near zero would wait for ever between requests).
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => number_in(0.001, 1_000_000.0, " (or 0)")(text),
    }
}

fn run(args: Args) -> Result<()> {
    let target: SocketAddr = args
        .target
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.target))?
        .next()
        .with_context(|| format!("{} has no address", args.target))?;
    let config = LoadConfig {
        target,
        network: args.network,
        peers: args.peers,
        rate: args.rate.unwrap_or_else(|| args.mix.default_rate()),
        mix: args.mix,
        max_in_flight: args.in_flight,
        duration: args.duration,
        answer_timeout: args.timeout,
        blocks: args.blocks,
    };
    // Announced on stderr so that a harness (`cargo xtask bench`) can sample
    // the node over exactly the measured window.
    let report = loadgen::run(&config, |window| match window {
        Window::Started { connected } => eprintln!(
            "peerlog-loadgen: window started: {connected} of {} peers connected",
            config.peers
        ),
        Window::Ended => eprintln!("peerlog-loadgen: window ended"),
    })?;
    eprintln!("{}", summary(&report));
    let json = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(path) => {
            fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?
        }
        None => println!("{json}"),
    }
    if report.connected == 0 {
        anyhow::bail!("no peer could connect to {}", report.target);
    }
    Ok(())
}

fn summary(r: &Report) -> String {
    let mut s = format!(
        "peerlog-loadgen: {} peers ({} connected) × {} for {:.1} s against {}: \
         {:.0} requests/s sent, {:.0}/s answered; latency p50 {} µs, p90 {} µs, p99 {} µs",
        r.peers,
        r.connected,
        r.mix,
        r.duration_secs,
        r.target,
        r.sent_per_sec,
        r.answered_per_sec,
        r.latency.p50_us,
        r.latency.p90_us,
        r.latency.p99_us
    );
    if r.errors.total() > 0 {
        s += &format!(
            "\n  errors: {} connect, {} unanswered, {} notfound, {} disconnected, {} protocol",
            r.errors.connect,
            r.errors.unanswered,
            r.errors.notfound,
            r.errors.disconnected,
            r.errors.protocol
        );
        for sample in &r.errors.samples {
            s += &format!("\n    {sample}");
        }
    }
    s
}
