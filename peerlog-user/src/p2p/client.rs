//! A blocking P2P client: connects, shakes hands like a modern peer, and
//! sends and receives messages, keeping a transcript.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, Magic, ServiceFlags};
use bitcoin::Network;

use super::frame::{encode_frame, FrameReader, P2pError, RawMessage};
use super::transcript::{now_micros, Transcript, TranscriptDirection, TranscriptEntry};

/// Protocol version announced in our `version` message.
///
/// 70016 is the version that introduced `wtxidrelay` (BIP 339); it is what
/// Bitcoin Core announces, so the node treats us like any modern peer.
pub const PROTOCOL_VERSION: u32 = 70016;

/// Lowest protocol version of the other side for which we send `wtxidrelay`
/// and `sendaddrv2`, mirroring Bitcoin Core (`WTXID_RELAY_VERSION`).
pub const WTXID_RELAY_VERSION: u32 = 70016;

/// The user agent we announce: `/peerlog:VERSION/` (BIP 14 format), so the
/// node's `getpeerinfo` and logs identify us.
pub fn user_agent() -> String {
    format!("/peerlog:{}/", env!("CARGO_PKG_VERSION"))
}

/// How to connect and what to announce in the handshake.
///
/// Build with struct update syntax: `HandshakeOptions { relay: false,
/// ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct HandshakeOptions {
    /// User agent in our `version`; default [`user_agent()`].
    pub user_agent: String,
    /// Protocol version in our `version`; default [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Services we announce. Default `NETWORK | WITNESS`, what Bitcoin Core's
    /// functional test framework announces, so nodes treat us as a normal
    /// full peer.
    pub services: ServiceFlags,
    /// Best height we claim; default 0 (we have no chain).
    pub start_height: i32,
    /// `relay` flag of our `version` (BIP 37): whether the node should
    /// announce transactions to us. Default true.
    pub relay: bool,
    /// Send `wtxidrelay` (BIP 339) before our `verack`, if their protocol
    /// version allows it, as Bitcoin Core does. Default true.
    pub send_wtxidrelay: bool,
    /// Send `sendaddrv2` (BIP 155) before our `verack`, if their protocol
    /// version allows it, as Bitcoin Core does. Default true.
    pub send_sendaddrv2: bool,
    /// How long the TCP connect may take; default 10 s.
    pub connect_timeout: Duration,
    /// How long a single receive ([`P2pClient::recv_raw`], [`P2pClient::recv`],
    /// [`P2pClient::ping`], [`P2pClient::handshake`]) waits; default 30 s.
    pub read_timeout: Duration,
    /// How long a send may block on a peer that does not read; default 30 s.
    pub write_timeout: Duration,
    /// Record every message in the [`Transcript`]; default true. Turn it off
    /// for long-running load, where it would grow without bound.
    pub record_transcript: bool,
    /// Answer the peer's `ping`s with a `pong` while waiting in the
    /// higher-level receives (all but [`P2pClient::recv_raw`]); default true.
    pub answer_pings: bool,
}

impl Default for HandshakeOptions {
    fn default() -> Self {
        HandshakeOptions {
            user_agent: user_agent(),
            protocol_version: PROTOCOL_VERSION,
            services: ServiceFlags::NETWORK | ServiceFlags::WITNESS,
            start_height: 0,
            relay: true,
            send_wtxidrelay: true,
            send_sendaddrv2: true,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            record_transcript: true,
            answer_pings: true,
        }
    }
}

/// A connection to a node speaking the v1 P2P protocol.
///
/// Received messages that no call was waiting for go to an inbox, in arrival
/// order, and are returned by later receives ([`P2pClient::recv`],
/// [`P2pClient::recv_until`], [`P2pClient::drain`]); only [`P2pClient::recv_raw`] bypasses
/// it. `P2pClient` is `Send`, so a load generator can run one per thread.
pub struct P2pClient {
    network: Network,
    magic: Magic,
    opts: HandshakeOptions,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    // Buffered so that small messages cost one syscall per batch; a
    // BufReader keeps its buffer across read errors, and `frames` keeps the
    // partial frame, so timeouts never desynchronize the stream.
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    frames: FrameReader,
    inbox: VecDeque<RawMessage>,
    transcript: Transcript,
    their_version: Option<VersionMessage>,
}

impl fmt::Debug for P2pClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P2pClient")
            .field("network", &self.network)
            .field("peer_addr", &self.peer_addr)
            .field("local_addr", &self.local_addr)
            .field("inbox", &self.inbox.len())
            .field("transcript", &self.transcript.len())
            .finish_non_exhaustive()
    }
}

impl P2pClient {
    /// Opens a TCP connection to `addr` (within `opts.connect_timeout`),
    /// without sending anything: tests may want to misbehave before or
    /// instead of the handshake. Call [`P2pClient::handshake`] next.
    pub fn connect(
        addr: SocketAddr,
        network: Network,
        opts: HandshakeOptions,
    ) -> Result<P2pClient, P2pError> {
        let stream = TcpStream::connect_timeout(&addr, opts.connect_timeout)?;
        P2pClient::from_stream(stream, network, opts)
    }

    /// [`P2pClient::connect`] followed by [`P2pClient::handshake`].
    pub fn connect_and_handshake(
        addr: SocketAddr,
        network: Network,
        opts: HandshakeOptions,
    ) -> Result<P2pClient, P2pError> {
        let mut peer = P2pClient::connect(addr, network, opts)?;
        peer.handshake()?;
        Ok(peer)
    }

    /// Wraps an already connected stream (e.g. one accepted from a
    /// listener).
    pub fn from_stream(
        stream: TcpStream,
        network: Network,
        opts: HandshakeOptions,
    ) -> Result<P2pClient, P2pError> {
        // Nagle would delay small messages and distort ping round trips.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(nonzero(opts.read_timeout)))?;
        stream.set_write_timeout(Some(nonzero(opts.write_timeout)))?;
        let peer_addr = stream.peer_addr()?;
        let local_addr = stream.local_addr()?;
        let writer = stream.try_clone()?;
        Ok(P2pClient {
            network,
            magic: Magic::from(network),
            opts,
            peer_addr,
            local_addr,
            reader: BufReader::with_capacity(64 * 1024, stream),
            writer,
            frames: FrameReader::new(Magic::from(network)),
            inbox: VecDeque::new(),
            transcript: Transcript::new(),
            their_version: None,
        })
    }

    /// The network whose magic frames carry.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The magic of [`P2pClient::network`].
    pub fn magic(&self) -> Magic {
        self.magic
    }

    /// The node's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Our end of the connection: the address the node (and peerlog) sees
    /// for us.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The options this connection was opened with.
    pub fn options(&self) -> &HandshakeOptions {
        &self.opts
    }

    /// The node's `version` message, once [`P2pClient::handshake`] has seen it.
    pub fn their_version(&self) -> Option<&VersionMessage> {
        self.their_version.as_ref()
    }

    /// How long a single receive waits.
    pub fn read_timeout(&self) -> Duration {
        self.opts.read_timeout
    }

    /// Changes how long a single receive waits.
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.opts.read_timeout = timeout;
    }

    /// The messages sent and received so far (empty if recording is off).
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Takes the transcript, leaving an empty one that keeps recording.
    pub fn take_transcript(&mut self) -> Transcript {
        std::mem::take(&mut self.transcript)
    }

    /// Turns transcript recording on or off from now on.
    pub fn set_recording(&mut self, on: bool) {
        self.opts.record_transcript = on;
    }

    /// Received messages not yet returned to a caller, oldest first.
    pub fn inbox(&self) -> &VecDeque<RawMessage> {
        &self.inbox
    }

    /// Takes every message of the inbox, oldest first.
    pub fn take_inbox(&mut self) -> Vec<RawMessage> {
        self.inbox.drain(..).collect()
    }

    /// Closes both directions of the connection, so the node sees us leave
    /// now rather than when the `P2pClient` is dropped.
    pub fn shutdown(&self) -> io::Result<()> {
        self.writer.shutdown(std::net::Shutdown::Both)
    }

    fn record(
        &mut self,
        direction: TranscriptDirection,
        time_micros: u64,
        msg_type: &str,
        payload: &[u8],
    ) {
        if self.opts.record_transcript {
            self.transcript.push(TranscriptEntry {
                time_micros,
                direction,
                msg_type: msg_type.to_owned(),
                payload: payload.to_vec(),
            });
        }
    }

    /// Sends one frame with any message type (at most 12 bytes) and any
    /// payload, byte for byte, and records it in the transcript.
    ///
    /// The payload length is not limited, so that oversized frames can be
    /// sent on purpose. The frame goes out in a single `write_all`; if that
    /// fails (write timeout, disconnection) part of it may be on the wire
    /// and the connection is unusable. A failed send is not recorded.
    pub fn send_raw(&mut self, msg_type: &str, payload: &[u8]) -> io::Result<()> {
        let frame = encode_frame(self.magic, msg_type, payload)?;
        let time_micros = now_micros();
        self.writer.write_all(&frame)?;
        self.record(TranscriptDirection::Sent, time_micros, msg_type, payload);
        Ok(())
    }

    /// Sends a typed message: its payload serialized by the `bitcoin` crate,
    /// its message type from [`NetworkMessage::command`] (so
    /// [`NetworkMessage::Unknown`] keeps its own type).
    pub fn send(&mut self, msg: &NetworkMessage) -> io::Result<()> {
        let payload = serialize(msg);
        let command = msg.command();
        self.send_raw(command.as_ref(), &payload)
    }

    /// Reads exactly one frame from the socket, waiting at most the read
    /// timeout, and records it in the transcript.
    ///
    /// This is the bare framing layer: it ignores the inbox and does not
    /// answer pings. Most callers want [`P2pClient::recv`].
    pub fn recv_raw(&mut self) -> Result<RawMessage, P2pError> {
        let deadline = deadline_after(self.opts.read_timeout);
        self.read_frame_before(deadline, "a message")
    }

    fn read_frame_before(
        &mut self,
        deadline: Instant,
        waiting_for: &str,
    ) -> Result<RawMessage, P2pError> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(P2pError::Timeout {
                    waiting_for: waiting_for.to_owned(),
                });
            }
            // Only needed when nothing is buffered, but cheap; the socket
            // option is shared with `writer`, which has its own write timeout.
            self.reader
                .get_ref()
                .set_read_timeout(Some(nonzero(remaining)))?;
            match self.frames.read_frame(&mut self.reader) {
                Ok(msg) => {
                    self.record(
                        TranscriptDirection::Received,
                        now_micros(),
                        msg.msg_type(),
                        msg.payload(),
                    );
                    return Ok(msg);
                }
                // The partial frame is kept by `frames`; loop to check the
                // deadline (the OS may wake us a little early).
                Err(P2pError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    // Reads one frame, answering it if it is a ping. The ping is still
    // returned, so that it reaches the inbox like any other message.
    fn receive_before(
        &mut self,
        deadline: Instant,
        waiting_for: &str,
    ) -> Result<RawMessage, P2pError> {
        let msg = self.read_frame_before(deadline, waiting_for)?;
        // BIP 31: the pong echoes the 8-byte nonce. A pre-BIP 31 ping has no
        // nonce and expects no answer.
        if self.opts.answer_pings && msg.msg_type() == "ping" && msg.payload().len() == 8 {
            if let Err(e) = self.send_raw("pong", msg.payload()) {
                // Keep the promise that an error loses no received message.
                self.inbox.push_back(msg);
                return Err(e.into());
            }
        }
        Ok(msg)
    }

    /// The next message: the oldest of the inbox if any, otherwise the next
    /// one from the socket (waiting at most the read timeout, answering
    /// pings).
    pub fn recv(&mut self) -> Result<RawMessage, P2pError> {
        if let Some(msg) = self.inbox.pop_front() {
            return Ok(msg);
        }
        let deadline = deadline_after(self.opts.read_timeout);
        self.receive_before(deadline, "a message")
    }

    /// The first message matching `pred`, looking at the inbox first, then
    /// at what arrives within `timeout`. Messages that do not match stay in
    /// the inbox, in order; pings are answered meanwhile.
    pub fn recv_until<F>(&mut self, mut pred: F, timeout: Duration) -> Result<RawMessage, P2pError>
    where
        F: FnMut(&RawMessage) -> bool,
    {
        if let Some(i) = self.inbox.iter().position(&mut pred) {
            return Ok(self.inbox.remove(i).expect("index from position"));
        }
        let deadline = deadline_after(timeout);
        loop {
            let msg = self.receive_before(deadline, "a matching message")?;
            if pred(&msg) {
                return Ok(msg);
            }
            self.inbox.push_back(msg);
        }
    }

    /// The first message of type `msg_type` (see [`P2pClient::recv_until`]).
    pub fn recv_msg_type(
        &mut self,
        msg_type: &str,
        timeout: Duration,
    ) -> Result<RawMessage, P2pError> {
        self.recv_until(|m| m.msg_type() == msg_type, timeout)
            .map_err(|e| match e {
                P2pError::Timeout { .. } => P2pError::Timeout {
                    waiting_for: msg_type.to_owned(),
                },
                e => e,
            })
    }

    /// Everything in the inbox plus everything that arrives until `quiet`
    /// passes without a message, answering pings meanwhile.
    ///
    /// On an error (the node disconnecting us, say) the messages received so
    /// far are left in the inbox, and the error is returned.
    pub fn drain(&mut self, quiet: Duration) -> Result<Vec<RawMessage>, P2pError> {
        loop {
            let deadline = deadline_after(quiet);
            match self.receive_before(deadline, "more messages") {
                Ok(msg) => self.inbox.push_back(msg),
                Err(P2pError::Timeout { .. }) => return Ok(self.take_inbox()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a `ping` with `nonce` and waits (at most the read timeout) for
    /// the `pong` echoing it; returns the round trip time.
    ///
    /// Since a node handles a peer's messages in order, the pong also means
    /// the node has processed everything we sent before the ping: tests use
    /// it as a barrier. Other messages arriving meanwhile go to the inbox.
    pub fn ping(&mut self, nonce: u64) -> Result<Duration, P2pError> {
        let nonce_bytes = nonce.to_le_bytes();
        let started = Instant::now();
        self.send_raw("ping", &nonce_bytes)?;
        let deadline = deadline_after(self.opts.read_timeout);
        loop {
            let msg = self.receive_before(deadline, &format!("pong {nonce}"))?;
            if msg.msg_type() == "pong" && msg.payload() == nonce_bytes {
                return Ok(started.elapsed());
            }
            self.inbox.push_back(msg);
        }
    }

    /// Our `version` message, as [`P2pClient::handshake`] sends it.
    pub fn version_message(&self) -> VersionMessage {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        VersionMessage {
            version: self.opts.protocol_version,
            services: self.opts.services,
            timestamp,
            // We do not know the node's services yet; Core ignores this field.
            receiver: Address::new(&self.peer_addr, ServiceFlags::NONE),
            sender: Address::new(&self.local_addr, self.opts.services),
            nonce: version_nonce(),
            user_agent: self.opts.user_agent.clone(),
            start_height: self.opts.start_height,
            relay: self.opts.relay,
        }
    }

    /// Performs the version handshake as Bitcoin Core does as the connecting
    /// side: sends `version`; on their `version`, sends `wtxidrelay` and
    /// `sendaddrv2` (if enabled and their protocol version is at least
    /// [`WTXID_RELAY_VERSION`]) and then `verack`; returns once their
    /// `verack` has arrived too. Their pings are answered meanwhile; their
    /// `version` is kept ([`P2pClient::their_version`]); anything else they send
    /// (their `wtxidrelay`, `sendaddrv2`, ...) goes to the inbox.
    ///
    /// The whole handshake must finish within the read timeout.
    pub fn handshake(&mut self) -> Result<(), P2pError> {
        let ours = self.version_message();
        self.send(&NetworkMessage::Version(ours))?;
        let deadline = deadline_after(self.opts.read_timeout);
        let mut got_verack = false;
        while self.their_version.is_none() || !got_verack {
            let waiting_for = if self.their_version.is_none() {
                "their version"
            } else {
                "their verack"
            };
            let msg = self.receive_before(deadline, waiting_for)?;
            match msg.msg_type() {
                "version" if self.their_version.is_none() => {
                    let theirs = match msg.decode() {
                        Ok(NetworkMessage::Version(theirs)) => theirs,
                        Ok(_) => unreachable!("a version payload decodes as Version"),
                        Err(e) => {
                            // Left for the caller to inspect.
                            self.inbox.push_back(msg);
                            return Err(e);
                        }
                    };
                    let negotiated = theirs.version.min(self.opts.protocol_version);
                    self.their_version = Some(theirs);
                    if negotiated >= WTXID_RELAY_VERSION {
                        // Core requires both before our verack, and
                        // disconnects a peer sending wtxidrelay after it.
                        if self.opts.send_wtxidrelay {
                            self.send(&NetworkMessage::WtxidRelay)?;
                        }
                        if self.opts.send_sendaddrv2 {
                            self.send(&NetworkMessage::SendAddrV2)?;
                        }
                    }
                    self.send(&NetworkMessage::Verack)?;
                }
                "verack" if !got_verack => got_verack = true,
                _ => self.inbox.push_back(msg),
            }
        }
        Ok(())
    }
}

// `now + d`, saturating, so that a caller can pass `Duration::MAX` to mean
// "no deadline".
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

// A zero timeout means "block forever" to the OS, which is the opposite of
// what an expired deadline wants.
fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

// Nodes use the version nonce to detect connections to themselves; it only
// has to differ between our connections and the node's own.
fn version_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut seed = Vec::with_capacity(24);
    seed.extend_from_slice(&now_micros().to_le_bytes());
    seed.extend_from_slice(&u64::from(std::process::id()).to_le_bytes());
    seed.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let hash = sha256d::Hash::hash(&seed);
    u64::from_le_bytes(hash.as_byte_array()[..8].try_into().expect("8 bytes"))
}
