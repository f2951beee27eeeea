//! `peerlog replay`: send a captured peer's messages to a node again, as a
//! new peer, and record and summarize what the node answers.
//!
//! The replay is a new connection made with peerlog's P2P client
//! ([`P2pClient`]): it does its own version handshake, announcing what the
//! captured peer announced (protocol version, services, start height, relay,
//! and `wtxidrelay`/`sendaddrv2` if the peer sent them before its `verack`),
//! so the node treats it like that peer. Then it sends the messages the node
//! received from the captured peer (`msgs_recv.dat`) in their order, at
//! their original relative times divided by `--speed`, except:
//! - the peer's handshake (`version`, `verack`, and `wtxidrelay`,
//!   `sendaddrv2`, `sendtxrcncl` before its `verack`), which the replay's own
//!   handshake replaces;
//! - `pong`s, which answered the node's pings of back then: the client
//!   answers the node's pings of now instead.
//!
//! Afterwards a ping waits until the node has processed everything (a node
//! handles a peer's messages in order), and the replay listens until the
//! node has been quiet for `--wait` seconds. Everything sent and received is
//! written into a new capture in Bitcoin Core's format, from the node's
//! point of view like any capture, so `show`, `stats` and `convert` read it.
//!
//! Replaying to anything but a loopback or private address needs
//! `--allow-remote`: a replay sends someone else's traffic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::p2p::message::NetworkMessage;
use serde::Serialize;

use crate::formats::capture::{CaptureLayout, CaptureWriter};
use crate::formats::timeline::{CaptureMessage, NetworkArg, SelectArgs};
use crate::p2p::{self, HandshakeOptions, P2pClient, P2pError};
use peerlog_common::Direction;

/// How long to listen after each message at `--speed max`, so that the
/// node's answers are read while they come and neither side's buffers fill.
const POLL: Duration = Duration::from_millis(1);
/// Messages that only the version handshake may carry, before `verack`.
const PRE_VERACK: [&str; 3] = ["wtxidrelay", "sendaddrv2", "sendtxrcncl"];

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// The original gaps between messages, divided by this factor.
    Factor(f64),
    /// No waiting between messages.
    Max,
}

/// Slowest `--speed`: a thousand times slower than captured.
const MIN_SPEED: f64 = 0.001;
/// Fastest `--speed` factor; `max` is faster still.
const MAX_SPEED: f64 = 1_000_000.0;

/// Parses `--speed`: a number from 0.001 to 1000000, or `max`.
pub fn parse_speed(text: &str) -> Result<Speed, String> {
    if text == "max" {
        return Ok(Speed::Max);
    }
    crate::args::number_in(MIN_SPEED, MAX_SPEED, " (or `max`)")(text).map(Speed::Factor)
}

/// Arguments of `peerlog replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The capture, and the peer whose messages to replay (--peer must
    /// select exactly one peer connection; --msg-type, --since and --until
    /// narrow the messages).
    #[command(flatten)]
    pub select: SelectArgs,

    /// The node to connect to, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,

    /// The node's network (the magic of v1 frames).
    #[arg(long, value_enum, default_value = "regtest", value_name = "NETWORK")]
    pub network: NetworkArg,

    /// Replay N times faster than captured (0.5 is half as fast), or `max`
    /// for no waiting between messages.
    #[arg(long, default_value = "1", value_parser = parse_speed, value_name = "N|max")]
    pub speed: Speed,

    /// Allow a destination that is not a loopback or private address.
    #[arg(long)]
    pub allow_remote: bool,

    /// Where to write the capture of the replay (default:
    /// peerlog-replay-<UNIX time> in the current directory).
    #[arg(long = "capture", value_name = "DIR")]
    pub capture_dir: Option<PathBuf>,

    /// After the last message, listen until the node has been quiet this
    /// long, 0 to 3600 (bitcoind may take 2 s to request announced
    /// transactions).
    #[arg(long, default_value = "3", value_name = "SECS", value_parser = crate::args::seconds_in(0.0, 3600.0))]
    pub wait: Duration,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a replay did and what the node answered.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The captured peer.
    pub peer: String,
    /// The node.
    pub node: SocketAddr,
    /// The replay's end of the connection, as the node names it.
    pub local_addr: SocketAddr,
    /// Messages of the peer selected for the replay.
    pub selected: usize,
    /// Messages sent, of those.
    pub replayed: usize,
    /// Messages not sent, by type (the handshake, pongs).
    pub skipped: BTreeMap<String, u64>,
    /// Messages the node sent during the replay, by type.
    pub responses: BTreeMap<String, u64>,
    /// Messages bitcoind sent the captured peer, by type (the same
    /// selection), to compare with `responses`.
    pub original_responses: BTreeMap<String, u64>,
    /// How the connection ended.
    pub outcome: Outcome,
    /// Nonce of the final ping that waits until the node processed
    /// everything; its pong is in the capture but not in `responses`.
    pub barrier_nonce: u64,
    /// Seconds the replay took, handshake to last answer.
    pub duration_secs: f64,
    /// The capture of the replay.
    pub capture: PathBuf,
}

/// How a replay's connection ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Still connected after every message was processed.
    Connected,
    /// The connection ended early: the node closed it (`disconnected`;
    /// Bitcoin Core does that to a peer it considers misbehaving, among
    /// other reasons), or it stopped answering or answered garbage.
    Stopped {
        /// Messages sent before the replay noticed (the node may have
        /// acted on an earlier one).
        after_messages: usize,
        /// The last of them.
        last_msg_type: Option<String>,
        /// Whether the node closed the connection.
        disconnected: bool,
        /// What happened, in the P2P client's words.
        error: String,
    },
}

impl Outcome {
    /// The outcome of an error after `sent` of the messages were sent.
    fn stopped(sent: &[&CaptureMessage], error: &P2pError) -> Self {
        Self::Stopped {
            after_messages: sent.len(),
            last_msg_type: sent.last().map(|m| m.record.msg_type.clone()),
            disconnected: error.is_disconnect(),
            error: error.to_string(),
        }
    }
}

/// Runs `peerlog replay`.
pub fn run(args: ReplayArgs) -> Result<()> {
    let report = replay(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// Whether a replay may go to `ip` without `--allow-remote`.
fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        // fc00::/7: unique local addresses, IPv6's private range.
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Resolves `--to` and checks it is allowed.
fn destination(to: &str, allow_remote: bool) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = to
        .to_socket_addrs()
        .with_context(|| format!("--to {to}: expected HOST:PORT"))?
        .collect();
    let addr = *addrs
        .first()
        .with_context(|| format!("--to {to} resolves to no address"))?;
    if !allow_remote {
        if let Some(remote) = addrs.iter().find(|a| !is_local(a.ip())) {
            bail!(
                "--to {to} is {remote}, neither loopback nor a private address; \
                 replaying to it needs --allow-remote"
            );
        }
    }
    Ok(addr)
}

/// The handshake the captured peer made, as far as the capture shows it.
fn handshake_options(messages: &[&CaptureMessage]) -> HandshakeOptions {
    let mut opts = HandshakeOptions {
        send_wtxidrelay: false,
        send_sendaddrv2: false,
        ..Default::default()
    };
    let mut saw_version = false;
    for m in messages {
        match m.record.msg_type.as_str() {
            "version" if !saw_version => {
                saw_version = true;
                let raw = p2p::RawMessage::new("version", m.record.payload.clone());
                if let Ok(NetworkMessage::Version(v)) = raw.decode() {
                    opts.protocol_version = v.version;
                    opts.services = v.services;
                    opts.start_height = v.start_height;
                    opts.relay = v.relay;
                }
            }
            "wtxidrelay" => opts.send_wtxidrelay = true,
            "sendaddrv2" => opts.send_sendaddrv2 = true,
            "verack" => break,
            _ => {}
        }
    }
    if !saw_version {
        // Nothing to mirror: announce what Bitcoin Core would.
        opts.send_wtxidrelay = true;
        opts.send_sendaddrv2 = true;
    }
    opts
}

/// Which of the peer's messages the replay sends, and what it skips.
fn plan<'a>(received: &[&'a CaptureMessage]) -> (Vec<&'a CaptureMessage>, BTreeMap<String, u64>) {
    let mut send = Vec::new();
    let mut skipped = BTreeMap::new();
    let mut after_verack = false;
    for m in received {
        let t = m.record.msg_type.as_str();
        let handshake = match t {
            "version" => true,
            "verack" if !after_verack => {
                after_verack = true;
                true
            }
            _ => !after_verack && PRE_VERACK.contains(&t),
        };
        if handshake || t == "pong" {
            *skipped.entry(t.to_string()).or_default() += 1;
        } else {
            send.push(*m);
        }
    }
    (send, skipped)
}

/// Listens until `deadline`, answering pings; returns an error only if the
/// connection is gone or broken.
/// When each message is due, from `start`: its time after the first
/// message's, divided by `factor`. Fails, naming the message, when that is
/// further ahead than the clock can count.
fn schedule(start: Instant, times_micros: &[u64], factor: f64) -> Result<Vec<Instant>> {
    let first = times_micros.first().copied().unwrap_or(0);
    times_micros
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let offset = t.saturating_sub(first) as f64 / 1e6 / factor;
            Duration::try_from_secs_f64(offset)
                .ok()
                .and_then(|d| start.checked_add(d))
                .with_context(|| {
                    format!(
                        "message {} of the replay is due {offset:e} s after the first at \
                         --speed {factor}: too far ahead to wait for",
                        i + 1
                    )
                })
        })
        .collect()
}

fn listen_until(peer: &mut P2pClient, deadline: Instant) -> Result<(), P2pError> {
    let wait = deadline.saturating_duration_since(Instant::now());
    if wait.is_zero() {
        return Ok(());
    }
    // Nothing matches: every message goes to the inbox (and transcript).
    let result = peer.recv_until(|_| false, wait);
    // The transcript keeps every message; the inbox need not.
    peer.take_inbox();
    match result {
        Err(e) if e.is_timeout() => Ok(()),
        Err(e) => Err(e),
        // Nothing matches, so this does not happen; nothing to do if it did.
        Ok(_) => Ok(()),
    }
}

/// Replays as `args` say; the report says what happened.
pub fn replay(args: &ReplayArgs) -> Result<ReplayReport> {
    let node = destination(&args.to, args.allow_remote)?;
    let timeline = args.select.load()?;
    match timeline.peers.len() {
        0 => bail!("no messages selected in {}", args.select.capture.display()),
        1 => {}
        n => bail!(
            "{n} peer connections are selected; choose one with --peer: {}",
            timeline
                .peers
                .iter()
                .map(|p| p.label())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    let captured = &timeline.peers[0];
    let received: Vec<&CaptureMessage> = timeline
        .messages
        .iter()
        .filter(|m| m.direction == Direction::Inbound)
        .collect();
    let mut original_responses = BTreeMap::new();
    for m in timeline
        .messages
        .iter()
        .filter(|m| m.direction == Direction::Outbound)
    {
        *original_responses
            .entry(m.record.msg_type.clone())
            .or_default() += 1;
    }
    let (to_send, skipped) = plan(&received);

    let network: bitcoin::Network = args.network.into();
    let started = Instant::now();
    let mut peer = P2pClient::connect_and_handshake(node, network, handshake_options(&received))
        .map_err(|e| anyhow::anyhow!("connecting to {node} and shaking hands: {e}"))?;
    let local_addr = peer.local_addr();

    let mut outcome = Outcome::Connected;
    let mut replayed = 0;
    let times: Vec<u64> = to_send.iter().map(|m| m.record.time_micros).collect();
    // Before the first message: a schedule that cannot be kept is refused
    // before anything is sent.
    let due = match args.speed {
        Speed::Factor(factor) => schedule(Instant::now(), &times, factor)?,
        Speed::Max => Vec::new(),
    };
    for (i, m) in to_send.iter().enumerate() {
        let record = &m.record;
        if let Some(&due) = due.get(i) {
            if let Err(e) = listen_until(&mut peer, due) {
                outcome = Outcome::stopped(&to_send[..replayed], &e);
                break;
            }
        }
        if let Err(e) = peer.send_raw(&record.msg_type, &record.payload) {
            outcome = Outcome::stopped(&to_send[..replayed], &P2pError::Io(e));
            break;
        }
        replayed += 1;
        if let Err(e) = listen_until(&mut peer, Instant::now() + POLL) {
            outcome = Outcome::stopped(&to_send[..replayed], &e);
            break;
        }
    }

    // A ping the node answers only after everything before it, then quiet.
    let barrier_nonce = p2p::now_micros();
    if matches!(outcome, Outcome::Connected) {
        let done = peer
            .ping(barrier_nonce)
            .and_then(|_| peer.drain(args.wait).map(drop));
        if let Err(e) = done {
            outcome = Outcome::stopped(&to_send[..replayed], &e);
        }
    }
    let duration_secs = started.elapsed().as_secs_f64();
    let transcript = peer.take_transcript();
    drop(peer);

    let barrier = barrier_nonce.to_le_bytes();
    let mut responses = BTreeMap::new();
    for e in transcript.received() {
        if !(e.msg_type == "pong" && e.payload == barrier) {
            *responses.entry(e.msg_type.clone()).or_default() += 1;
        }
    }

    let capture = args.capture_dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!("peerlog-replay-{}", p2p::now_micros() / 1_000_000))
    });
    let mut writer = CaptureWriter::new(&capture, CaptureLayout::Core)?;
    let addr = local_addr.to_string();
    for e in transcript.entries() {
        let record = crate::formats::capture::CaptureRecord {
            time_micros: e.time_micros,
            msg_type: e.msg_type.clone(),
            payload: e.payload.clone(),
        };
        // What the replay sent, the node received.
        let inbound = e.direction == p2p::TranscriptDirection::Sent;
        writer.append(&addr, (0, 0), inbound, &record)?;
    }
    writer.flush()?;

    Ok(ReplayReport {
        peer: captured.label(),
        node,
        local_addr,
        selected: received.len(),
        replayed,
        skipped,
        responses,
        original_responses,
        outcome,
        barrier_nonce,
        duration_secs,
        capture,
    })
}

impl ReplayReport {
    /// The report for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "peerlog: replayed {} of {} messages of {} to {} as {} in {:.3} s",
            self.replayed, self.selected, self.peer, self.node, self.local_addr, self.duration_secs
        );
        if !self.skipped.is_empty() {
            let list: Vec<String> = self
                .skipped
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "  skipped: {} (the replay's own handshake replaces the peer's; pings of now are answered instead of replaying pongs)",
                list.join(", ")
            );
        }
        let _ = writeln!(out, "  the node answered, by type (replay / original):");
        let mut types: Vec<&String> = self
            .responses
            .keys()
            .chain(self.original_responses.keys())
            .collect();
        types.sort();
        types.dedup();
        for t in types {
            let now = self.responses.get(t).copied().unwrap_or(0);
            let then = self.original_responses.get(t).copied().unwrap_or(0);
            let mark = if now == then { "" } else { "  (differs)" };
            let _ = writeln!(out, "    {t:<12} {now:>6} / {then:>6}{mark}");
        }
        match &self.outcome {
            Outcome::Connected => {
                let _ = writeln!(
                    out,
                    "  connection: open after the node processed every message (ping/pong barrier)"
                );
            }
            Outcome::Stopped {
                after_messages,
                last_msg_type,
                disconnected,
                error,
            } => {
                let last = last_msg_type
                    .as_ref()
                    .map(|t| format!(", the last a {t}"))
                    .unwrap_or_default();
                let why = if *disconnected {
                    "the node disconnected (Bitcoin Core disconnects peers that misbehave)"
                } else {
                    "the connection failed"
                };
                let _ = writeln!(
                    out,
                    "  connection: {why}, noticed after {after_messages} replayed messages{last}: {error}"
                );
            }
        }
        let _ = writeln!(out, "  capture: {}", self.capture.display());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::capture::CaptureRecord;

    fn msg(t: u64, ty: &str) -> CaptureMessage {
        CaptureMessage {
            peer: 0,
            direction: Direction::Inbound,
            record: CaptureRecord {
                time_micros: t,
                msg_type: ty.into(),
                payload: vec![],
            },
        }
    }

    #[test]
    fn handshake_and_pongs_are_skipped() {
        let msgs: Vec<CaptureMessage> = [
            "version",
            "wtxidrelay",
            "sendaddrv2",
            "verack",
            "pong",
            "inv",
            "wtxidrelay",
            "verack",
            "tx",
        ]
        .iter()
        .enumerate()
        .map(|(i, t)| msg(i as u64, t))
        .collect();
        let refs: Vec<&CaptureMessage> = msgs.iter().collect();
        let (send, skipped) = plan(&refs);
        let sent: Vec<&str> = send.iter().map(|m| m.record.msg_type.as_str()).collect();
        // After verack, handshake-only messages are misbehaviour worth replaying.
        assert_eq!(sent, ["inv", "wtxidrelay", "verack", "tx"]);
        assert_eq!(skipped.values().sum::<u64>(), 5);
        let opts = handshake_options(&refs);
        assert!(opts.send_wtxidrelay && opts.send_sendaddrv2);
    }

    #[test]
    fn destinations_must_be_local_unless_allowed() {
        assert!(destination("127.0.0.1:18444", false).is_ok());
        assert!(destination("[::1]:18444", false).is_ok());
        assert!(destination("10.1.2.3:8333", false).is_ok());
        assert!(destination("[fd00::1]:8333", false).is_ok());
        let err = destination("8.8.8.8:8333", false).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(destination("8.8.8.8:8333", true).is_ok());
        assert!(destination("nonsense", false).is_err());
    }

    #[test]
    fn speeds_parse() {
        assert_eq!(parse_speed("max"), Ok(Speed::Max));
        assert_eq!(parse_speed("2.5"), Ok(Speed::Factor(2.5)));
        assert!(
            parse_speed("0").is_err() && parse_speed("-1").is_err() && parse_speed("fast").is_err()
        );
        for absurd in ["1e-300", "1e300", "inf", "NaN"] {
            let e = parse_speed(absurd).unwrap_err();
            assert!(e.contains("from 0.001 to 1000000"), "{absurd}: {e}");
        }
    }

    #[test]
    fn schedule_never_overflows() {
        let start = Instant::now();
        let due = schedule(start, &[5_000_000, 6_000_000, 4_000_000], 2.0).unwrap();
        assert_eq!(due, [start, start + Duration::from_millis(500), start]);
        // Gaps beyond what an Instant can hold are an error, not a panic.
        for factor in [1e-300, MIN_SPEED * 1e-12] {
            let e = schedule(start, &[0, u64::MAX], factor)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("message 2 of the replay"), "{e}");
        }
        assert!(schedule(start, &[0, u64::MAX], MIN_SPEED).is_ok());
    }
}
