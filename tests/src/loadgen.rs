//! A P2P load generator: `peers` connections to a node, one blocking thread
//! each, all made with peerlog's own P2P client ([`P2pClient`]), sending a mix of
//! requests at a fixed rate or as fast as a bounded number of requests in
//! flight allows, and measuring how many the node answered and how fast.
//!
//! Every request is one a node answers, so the answer both proves the node
//! handled it and times it:
//!
//! - `ping` → the `pong` echoing its nonce;
//! - `getheaders` (locator: the genesis block) → `headers`;
//! - `getdata` for a block → `block` (the twin answers an unknown hash with
//!   `notfound`, counted as an error);
//! - `inv` announcing, by wtxid, a transaction the node has never seen → the
//!   node's `getdata` for it, which is answered with the transaction (the
//!   relay of a new transaction).
//!
//! It needs nothing but the node's P2P port, so it runs unchanged against the
//! twin and against a real bitcoind on regtest. A fresh regtest bitcoind
//! differs in ways that show in the report, not as failures: it ignores
//! transaction announcements while in initial block download (mine a block
//! first), delays its `getdata` to inbound peers by 2 s, serves only the
//! blocks it has (by default the genesis block is requested, which it has),
//! and accepts about 114 inbound peers at its default `-maxconnections`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    net::SocketAddr,
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bitcoin::{
    consensus::encode::serialize,
    hashes::{sha256d, Hash},
    p2p::{
        message::NetworkMessage, message_blockdata::GetHeadersMessage, message_blockdata::Inventory,
    },
    BlockHash, Network, Transaction, Wtxid,
};
use hdrhistogram::Histogram;
use peerlog::p2p::{self, HandshakeOptions, P2pClient, P2pError, RawMessage};
use serde::Serialize;

/// The kinds of request a load generator peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    /// `ping`, answered by `pong`.
    Ping,
    /// `inv` of a new transaction, answered by `getdata` (then sent `tx`).
    Relay,
    /// `getheaders`, answered by `headers`.
    Getheaders,
    /// `getdata` for a block, answered by `block`.
    Block,
}

impl RequestKind {
    /// Every kind, in the order of [`Mix`]'s weights.
    pub const ALL: [RequestKind; 4] = [
        RequestKind::Ping,
        RequestKind::Relay,
        RequestKind::Getheaders,
        RequestKind::Block,
    ];

    /// The name used in `--mix` weights and in the report.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Ping => "ping",
            RequestKind::Relay => "relay",
            RequestKind::Getheaders => "getheaders",
            RequestKind::Block => "block",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which requests a peer sends, as relative weights per [`RequestKind`].
///
/// Parsed from a preset name (`ping-flood`, `relay`, `getheaders`, `blocks`,
/// `idle`) or from weights such as `ping=1,relay=4,block=1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    name: String,
    weights: [u32; 4],
}

impl Mix {
    /// The weight of `kind`.
    pub fn weight(&self, kind: RequestKind) -> u32 {
        self.weights[kind.index()]
    }

    /// The rate per peer that suits this mix when none is given: `idle`
    /// peers ping once a second (keep-alive traffic), every other mix runs
    /// as fast as the in-flight bound allows (0).
    pub fn default_rate(&self) -> f64 {
        if self.name == "idle" {
            1.0
        } else {
            0.0
        }
    }

    fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    // `roll` is uniform in 0..total().
    fn pick(&self, roll: u32) -> RequestKind {
        let mut left = roll;
        for kind in RequestKind::ALL {
            let w = self.weight(kind);
            if left < w {
                return kind;
            }
            left -= w;
        }
        unreachable!("roll {roll} beyond the total weight {}", self.total())
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Mix> {
        let preset = |kind: RequestKind| {
            let mut weights = [0; 4];
            weights[kind.index()] = 1;
            Mix {
                name: s.to_owned(),
                weights,
            }
        };
        let mix = match s {
            "ping-flood" | "idle" => preset(RequestKind::Ping),
            "relay" => preset(RequestKind::Relay),
            "getheaders" => preset(RequestKind::Getheaders),
            "blocks" => preset(RequestKind::Block),
            _ => {
                let mut weights = [0; 4];
                for part in s.split(',') {
                    let (name, weight) = part.split_once('=').with_context(|| {
                        format!("bad mix {s:?}: expected a preset (ping-flood, relay, getheaders, blocks, idle) or weights like ping=1,relay=4")
                    })?;
                    let kind = RequestKind::ALL
                        .into_iter()
                        .find(|k| k.name() == name.trim())
                        .with_context(|| {
                            format!("bad mix {s:?}: unknown request kind {name:?} (ping, relay, getheaders, block)")
                        })?;
                    weights[kind.index()] = weight
                        .trim()
                        .parse()
                        .with_context(|| format!("bad mix {s:?}: weight of {name}"))?;
                }
                Mix {
                    name: s.to_owned(),
                    weights,
                }
            }
        };
        if mix.total() == 0 {
            bail!("bad mix {s:?}: every weight is zero");
        }
        Ok(mix)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The node's P2P address.
    pub target: SocketAddr,
    /// Network whose magic the frames carry (regtest for the twin).
    pub network: Network,
    /// Number of concurrent peers (connections, threads).
    pub peers: usize,
    /// Which requests each peer sends.
    pub mix: Mix,
    /// Requests per second per peer; 0 sends a new request whenever one is
    /// answered, keeping `max_in_flight` outstanding.
    pub rate: f64,
    /// Most requests a peer has unanswered at any time. Bounds the load
    /// generator's memory and the node's queues, and makes "as fast as
    /// possible" a closed loop.
    pub max_in_flight: usize,
    /// How long to send for, after every peer has finished its handshake.
    pub duration: Duration,
    /// A request unanswered for this long counts as an error and stops
    /// counting against the in-flight bound.
    pub answer_timeout: Duration,
    /// Blocks to request, in turn (display hex order hashes, as `Node::blocks`).
    /// Empty means the network's genesis block.
    pub blocks: Vec<BlockHash>,
}

/// Answer latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Number of answers measured.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest answer.
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

/// Counts and latency of one request kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KindReport {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered within the run.
    pub answered: u64,
    /// Answer latency.
    pub latency: Latency,
}

/// What went wrong, by kind, with a few messages as examples.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Errors {
    /// Peers that could not connect or finish the handshake.
    pub connect: u64,
    /// Requests not answered within the answer timeout.
    pub unanswered: u64,
    /// Block requests answered with `notfound`.
    pub notfound: u64,
    /// Peers disconnected by the node during the run.
    pub disconnected: u64,
    /// Malformed frames from the node, or failed sends.
    pub protocol: u64,
    /// The first few error messages.
    pub samples: Vec<String>,
}

impl Errors {
    const MAX_SAMPLES: usize = 10;

    fn sample(&mut self, message: String) {
        if self.samples.len() < Self::MAX_SAMPLES {
            self.samples.push(message);
        }
    }

    fn merge(&mut self, other: Errors) {
        self.connect += other.connect;
        self.unanswered += other.unanswered;
        self.notfound += other.notfound;
        self.disconnected += other.disconnected;
        self.protocol += other.protocol;
        for s in other.samples {
            self.sample(s);
        }
    }

    /// All errors but the examples, summed.
    pub fn total(&self) -> u64 {
        self.connect + self.unanswered + self.notfound + self.disconnected + self.protocol
    }
}

/// The result of a run; serialized as the load generator's JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The node's address.
    pub target: String,
    /// Peers asked for.
    pub peers: usize,
    /// Peers that completed the handshake.
    pub connected: usize,
    /// The mix, as given.
    pub mix: String,
    /// Requests per second per peer asked for (0: as fast as possible).
    pub rate_per_peer: f64,
    /// The in-flight bound per peer.
    pub max_in_flight: usize,
    /// Length of the measured window, in seconds.
    pub duration_secs: f64,
    /// Requests sent in the window.
    pub requests_sent: u64,
    /// Requests answered in the window.
    pub requests_answered: u64,
    /// `requests_sent` per second.
    pub sent_per_sec: f64,
    /// `requests_answered` per second: the node's throughput.
    pub answered_per_sec: f64,
    /// Requests still unanswered when the window closed.
    pub in_flight_at_end: u64,
    /// Every P2P message sent in the window (requests, transactions, pongs).
    pub messages_sent: u64,
    /// Every P2P message received in the window (answers and unsolicited).
    pub messages_received: u64,
    /// Payload bytes received in the window.
    pub bytes_received: u64,
    /// Answer latency over all kinds.
    pub latency: Latency,
    /// Per request kind (only the kinds in the mix).
    pub kinds: BTreeMap<String, KindReport>,
    /// Errors.
    pub errors: Errors,
}

/// The edges of the measured window, reported while the load runs so that a
/// caller can sample the node (its CPU time, say) over exactly that window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Every peer has finished its handshake (or failed to); requests start now.
    Started {
        /// Peers that completed the handshake.
        connected: usize,
    },
    /// The window is over; peers stop sending and disconnect.
    Ended,
}

/// Runs the load: connects every peer (in parallel), starts them together
/// once all handshakes are done, stops them after `config.duration`.
/// `on_window` is called at the start and at the end of the window.
pub fn run(config: &LoadConfig, mut on_window: impl FnMut(Window)) -> Result<Report> {
    if config.peers == 0 {
        bail!("at least one peer is needed");
    }
    if config.max_in_flight == 0 {
        bail!("the in-flight bound must be at least 1");
    }
    if !(config.rate.is_finite() && config.rate >= 0.0) {
        bail!(
            "the rate must be a non-negative number, not {}",
            config.rate
        );
    }
    let blocks = if config.blocks.is_empty() {
        vec![bitcoin::constants::genesis_block(config.network).block_hash()]
    } else {
        config.blocks.clone()
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        getheaders_payload: serialize(&NetworkMessage::GetHeaders(GetHeadersMessage::new(
            vec![bitcoin::constants::genesis_block(config.network).block_hash()],
            BlockHash::all_zeros(),
        ))),
        block_payloads: blocks
            .iter()
            .map(|h| serialize(&p2p::getdata_block(&[*h])))
            .collect(),
        // Every peer, connected or not, and this thread meet here, so that
        // the window starts when all handshakes are over.
        start: Barrier::new(config.peers + 1),
        connected: AtomicUsize::new(0),
        salt: p2p::now_micros() ^ (u64::from(std::process::id()) << 40),
    });
    let handles: Vec<_> = (0..config.peers)
        .map(|index| {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("loadgen-{index}"))
                .spawn(move || run_peer(&shared, index as u32))
                .context("spawning a load generator thread")
        })
        .collect::<Result<_>>()?;
    shared.start.wait();
    on_window(Window::Started {
        connected: shared.connected.load(Ordering::SeqCst),
    });
    // The peers time the window themselves from the same barrier.
    thread::sleep(config.duration);
    on_window(Window::Ended);
    let mut total = PeerOutcome::new(config);
    for handle in handles {
        let outcome = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a load generator thread panicked"))?;
        total.merge(outcome);
    }
    Ok(total.report(config))
}

/// What every peer thread reads.
struct Shared {
    config: LoadConfig,
    // Requests of a fixed content, serialized once.
    getheaders_payload: Vec<u8>,
    block_payloads: Vec<Vec<u8>>,
    start: Barrier,
    // Peers that completed the handshake, counted before the barrier.
    connected: AtomicUsize,
    // Makes this run's transactions differ from any earlier run's against
    // the same node, which would already have them and not ask for them.
    salt: u64,
}

// splitmix64: a fast, seedable source for picking request kinds; the load
// does not need to be unpredictable, only spread by the weights.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Counts of one peer, merged into the report at the end.
struct PeerOutcome {
    connected: usize,
    sent: [u64; 4],
    answered: [u64; 4],
    latency: [Histogram<u64>; 4],
    in_flight_at_end: u64,
    messages_sent: u64,
    messages_received: u64,
    bytes_received: u64,
    errors: Errors,
}

impl PeerOutcome {
    fn new(config: &LoadConfig) -> PeerOutcome {
        // Two significant digits (1% resolution) keep a histogram at ~20 KB,
        // which matters with 125 peers × 4 kinds. Answers arrive within the
        // answer timeout, so that bounds the range.
        let highest = config.answer_timeout.as_micros().max(1_000_000) as u64;
        let histogram =
            || Histogram::new_with_bounds(1, highest, 2).expect("valid histogram bounds");
        PeerOutcome {
            connected: 0,
            sent: [0; 4],
            answered: [0; 4],
            latency: [histogram(), histogram(), histogram(), histogram()],
            in_flight_at_end: 0,
            messages_sent: 0,
            messages_received: 0,
            bytes_received: 0,
            errors: Errors::default(),
        }
    }

    fn merge(&mut self, other: PeerOutcome) {
        self.connected += other.connected;
        for i in 0..4 {
            self.sent[i] += other.sent[i];
            self.answered[i] += other.answered[i];
            self.latency[i]
                .add(&other.latency[i])
                .expect("histograms of equal bounds");
        }
        self.in_flight_at_end += other.in_flight_at_end;
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.bytes_received += other.bytes_received;
        self.errors.merge(other.errors);
    }

    fn report(self, config: &LoadConfig) -> Report {
        let secs = config.duration.as_secs_f64();
        let mut all = self.latency[0].clone();
        for h in &self.latency[1..] {
            all.add(h).expect("histograms of equal bounds");
        }
        let kinds = RequestKind::ALL
            .into_iter()
            .filter(|&k| config.mix.weight(k) > 0)
            .map(|k| {
                let i = k.index();
                (
                    k.name().to_owned(),
                    KindReport {
                        sent: self.sent[i],
                        answered: self.answered[i],
                        latency: Latency::of(&self.latency[i]),
                    },
                )
            })
            .collect();
        let requests_sent = self.sent.iter().sum();
        let requests_answered = self.answered.iter().sum();
        Report {
            target: config.target.to_string(),
            peers: config.peers,
            connected: self.connected,
            mix: config.mix.to_string(),
            rate_per_peer: config.rate,
            max_in_flight: config.max_in_flight,
            duration_secs: secs,
            requests_sent,
            requests_answered,
            sent_per_sec: requests_sent as f64 / secs,
            answered_per_sec: requests_answered as f64 / secs,
            in_flight_at_end: self.in_flight_at_end,
            messages_sent: self.messages_sent,
            messages_received: self.messages_received,
            bytes_received: self.bytes_received,
            latency: Latency::of(&all),
            kinds,
            errors: self.errors,
        }
    }
}

/// Requests sent and not yet answered, by kind, with their send times.
#[derive(Default)]
struct Pending {
    // By nonce.
    pings: HashMap<u64, Instant>,
    // A node answers one peer's getheaders, and its block requests, in
    // order, so first in, first answered.
    getheaders: VecDeque<Instant>,
    blocks: VecDeque<Instant>,
    // By wtxid, with the transaction to send when the node asks for it.
    relays: HashMap<Wtxid, (Instant, Transaction)>,
}

impl Pending {
    fn len(&self) -> usize {
        self.pings.len() + self.getheaders.len() + self.blocks.len() + self.relays.len()
    }

    /// Forgets requests sent before `cutoff`; returns how many.
    fn expire(&mut self, cutoff: Instant) -> u64 {
        let before = self.len();
        self.pings.retain(|_, sent| *sent >= cutoff);
        self.relays.retain(|_, (sent, _)| *sent >= cutoff);
        for queue in [&mut self.getheaders, &mut self.blocks] {
            while queue.front().is_some_and(|sent| *sent < cutoff) {
                queue.pop_front();
            }
        }
        (before - self.len()) as u64
    }
}

/// How often unanswered requests are checked for the timeout.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);

fn run_peer(shared: &Shared, index: u32) -> PeerOutcome {
    let config = &shared.config;
    let mut outcome = PeerOutcome::new(config);
    let opts = HandshakeOptions {
        // The load runs for as long as asked: a transcript would keep every
        // message in memory.
        record_transcript: false,
        read_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let peer = P2pClient::connect_and_handshake(config.target, config.network, opts);
    if peer.is_ok() {
        shared.connected.fetch_add(1, Ordering::SeqCst);
    }
    shared.start.wait();
    let peer = match peer {
        Ok(peer) => peer,
        Err(e) => {
            outcome.errors.connect += 1;
            outcome.errors.sample(format!(
                "peer {index}: connecting to {}: {e}",
                config.target
            ));
            return outcome;
        }
    };
    outcome.connected = 1;
    let seed =
        sha256d::Hash::hash(&[shared.salt.to_le_bytes(), u64::from(index).to_le_bytes()].concat());
    let seed = u64::from_le_bytes(seed.as_byte_array()[..8].try_into().expect("8 bytes"));
    let mut worker = Worker {
        shared,
        index,
        peer,
        rng: SplitMix(seed),
        tx_seed: seed as u32,
        sequence: 0,
        pending: Pending::default(),
        outcome,
    };
    worker.run();
    worker.outcome.in_flight_at_end = worker.pending.len() as u64;
    // Leave now rather than when the thread's P2pClient is dropped, so the node
    // sees every peer go at the end of the window.
    let _ = worker.peer.shutdown();
    worker.outcome
}

struct Worker<'a> {
    shared: &'a Shared,
    index: u32,
    peer: P2pClient,
    rng: SplitMix,
    tx_seed: u32,
    // Numbers this peer's requests: ping nonces, transaction variants,
    // which block to ask for.
    sequence: u32,
    pending: Pending,
    outcome: PeerOutcome,
}

/// Why a peer stops before the end of the window.
struct Stop;

impl Worker<'_> {
    fn run(&mut self) {
        let config = &self.shared.config;
        let start = Instant::now();
        let deadline = start + config.duration;
        let interval = (config.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / config.rate));
        // Rate-limited peers start spread over one interval, so that many
        // slow peers do not all send at the same instant.
        let mut next_send = match interval {
            Some(interval) => start + interval.mul_f64(f64::from(self.index) / config.peers as f64),
            None => start,
        };
        let mut next_expiry = start + EXPIRY_CHECK;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            while self.pending.len() < config.max_in_flight
                && interval.is_none_or(|_| next_send <= now)
            {
                if self.send_request(now).is_err() {
                    return;
                }
                if let Some(interval) = interval {
                    next_send += interval;
                }
            }
            // A peer held back by the in-flight bound does not burst to catch
            // up with its schedule later.
            if self.pending.len() >= config.max_in_flight && next_send < now {
                next_send = now;
            }

            let mut wake = deadline.min(next_expiry);
            if interval.is_some() && self.pending.len() < config.max_in_flight {
                wake = wake.min(next_send);
            }
            let wait = wake.saturating_duration_since(now);
            if !wait.is_zero() {
                self.peer.set_read_timeout(wait);
                match self.peer.recv_raw() {
                    Ok(msg) => {
                        if self.handle(msg, Instant::now()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) if e.is_disconnect() => {
                        self.outcome.errors.disconnected += 1;
                        self.error(format!("disconnected: {e}"));
                        return;
                    }
                    // The frame was consumed whole: the stream is still in
                    // step, carry on.
                    Err(e @ (P2pError::BadChecksum { .. } | P2pError::BadMsgType { .. })) => {
                        self.outcome.errors.protocol += 1;
                        self.error(e.to_string());
                    }
                    Err(e) => {
                        self.outcome.errors.protocol += 1;
                        self.error(e.to_string());
                        return;
                    }
                }
            }
            let now = Instant::now();
            if now >= next_expiry {
                if let Some(cutoff) = now.checked_sub(config.answer_timeout) {
                    self.outcome.errors.unanswered += self.pending.expire(cutoff);
                }
                next_expiry = now + EXPIRY_CHECK;
            }
        }
    }

    fn error(&mut self, message: String) {
        let message = format!(
            "peer {} ({}): {message}",
            self.index,
            self.peer.local_addr()
        );
        self.outcome.errors.sample(message);
    }

    fn send(&mut self, msg_type: &str, payload: &[u8]) -> Result<(), Stop> {
        match self.peer.send_raw(msg_type, payload) {
            Ok(()) => {
                self.outcome.messages_sent += 1;
                Ok(())
            }
            Err(e) => {
                self.outcome.errors.protocol += 1;
                self.error(format!("sending {msg_type}: {e}"));
                Err(Stop)
            }
        }
    }

    fn send_request(&mut self, now: Instant) -> Result<(), Stop> {
        let mix = &self.shared.config.mix;
        let kind = mix.pick((self.rng.next() % u64::from(mix.total())) as u32);
        self.sequence = self.sequence.wrapping_add(1);
        match kind {
            RequestKind::Ping => {
                let nonce = (u64::from(self.index) << 32) | u64::from(self.sequence);
                self.send("ping", &nonce.to_le_bytes())?;
                self.pending.pings.insert(nonce, now);
            }
            RequestKind::Getheaders => {
                let shared = self.shared;
                self.send("getheaders", &shared.getheaders_payload)?;
                self.pending.getheaders.push_back(now);
            }
            RequestKind::Block => {
                let shared = self.shared;
                let payloads = &shared.block_payloads;
                let payload = &payloads[self.sequence as usize % payloads.len()];
                self.send("getdata", payload)?;
                self.pending.blocks.push_back(now);
            }
            RequestKind::Relay => {
                // A transaction no node has seen: this peer's test
                // transaction, spending a different output each time.
                let mut tx = p2p::test_transaction(self.tx_seed, 2);
                tx.input[0].previous_output.vout = self.sequence;
                let wtxid = tx.compute_wtxid();
                self.send("inv", &serialize(&p2p::inv_wtx(&[wtxid])))?;
                self.pending.relays.insert(wtxid, (now, tx));
            }
        }
        self.outcome.sent[kind.index()] += 1;
        Ok(())
    }

    fn answered(&mut self, kind: RequestKind, sent: Instant, now: Instant) {
        self.outcome.answered[kind.index()] += 1;
        let micros = now.saturating_duration_since(sent).as_micros() as u64;
        self.outcome.latency[kind.index()].saturating_record(micros.max(1));
    }

    fn handle(&mut self, msg: RawMessage, now: Instant) -> Result<(), Stop> {
        self.outcome.messages_received += 1;
        self.outcome.bytes_received += msg.payload().len() as u64;
        match msg.msg_type() {
            "pong" => {
                let nonce = msg.payload().try_into().map(u64::from_le_bytes);
                if let Some(sent) = nonce.ok().and_then(|n| self.pending.pings.remove(&n)) {
                    self.answered(RequestKind::Ping, sent, now);
                }
            }
            "headers" => {
                if let Some(sent) = self.pending.getheaders.pop_front() {
                    self.answered(RequestKind::Getheaders, sent, now);
                }
            }
            "block" => {
                if let Some(sent) = self.pending.blocks.pop_front() {
                    self.answered(RequestKind::Block, sent, now);
                }
            }
            "notfound" => {
                if let Ok(NetworkMessage::NotFound(items)) = msg.decode() {
                    for item in items {
                        if matches!(item, Inventory::Block(_) | Inventory::WitnessBlock(_))
                            && self.pending.blocks.pop_front().is_some()
                        {
                            self.outcome.errors.notfound += 1;
                        }
                    }
                }
            }
            "getdata" => {
                let items = match msg.decode() {
                    Ok(NetworkMessage::GetData(items)) => items,
                    _ => {
                        self.outcome.errors.protocol += 1;
                        self.error("undecodable getdata".into());
                        return Ok(());
                    }
                };
                for item in items {
                    // Requests for anything else (bitcoind asking for the
                    // parents of what it took for an orphan) are not ours.
                    let Inventory::WTx(wtxid) = item else {
                        continue;
                    };
                    if let Some((sent, tx)) = self.pending.relays.remove(&wtxid) {
                        self.answered(RequestKind::Relay, sent, now);
                        self.send("tx", &serialize(&tx))?;
                    }
                }
            }
            // BIP 31: a node disconnects peers that do not answer its pings.
            "ping" if msg.payload().len() == 8 => {
                self.send("pong", msg.payload())?;
            }
            // Unsolicited: other peers' transactions relayed to us (inv),
            // feefilter, addr, ...
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_from_presets_and_weights() {
        let m: Mix = "ping-flood".parse().unwrap();
        assert_eq!(m.weight(RequestKind::Ping), 1);
        assert_eq!(m.total(), 1);
        assert_eq!(m.default_rate(), 0.0);
        let idle: Mix = "idle".parse().unwrap();
        assert_eq!(idle.default_rate(), 1.0);
        let m: Mix = "ping=1, relay=3,block=2".parse().unwrap();
        assert_eq!(m.weights, [1, 3, 0, 2]);
        assert_eq!(m.pick(0), RequestKind::Ping);
        assert_eq!(m.pick(1), RequestKind::Relay);
        assert_eq!(m.pick(3), RequestKind::Relay);
        assert_eq!(m.pick(4), RequestKind::Block);
        assert_eq!(m.pick(5), RequestKind::Block);
        assert!("ping=0".parse::<Mix>().is_err());
        assert!("pong=1".parse::<Mix>().is_err());
        assert!("flood".parse::<Mix>().is_err());
    }

    #[test]
    fn pending_requests_expire_by_send_time() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut p = Pending::default();
        p.pings.insert(1, t0);
        p.pings.insert(2, t1);
        p.getheaders.extend([t0, t1]);
        p.blocks.push_back(t1);
        assert_eq!(p.len(), 5);
        assert_eq!(p.expire(t0 + Duration::from_millis(500)), 2);
        assert_eq!(p.len(), 3);
        assert_eq!(p.getheaders.front(), Some(&t1));
    }
}
