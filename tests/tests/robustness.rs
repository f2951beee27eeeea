//! Robustness of a traced node: peers send malformed messages of every type
//! the node deserializes ([`peerlog_tests::malformed`]) while `peerlog
//! trace` runs with every feature on (function accounting, stats log,
//! flamegraphs, capture, control RPC). The node must survive and still
//! answer a new peer, peerlog must survive and exit cleanly, and what
//! peerlog recorded must be exactly what the peers sent.
//!
//! Bitcoin Core throws out of `ProcessMessage` on a malformed payload and
//! catches the exception in `ProcessMessages`; a tracer's return probe on
//! `ProcessMessage` turns that into `std::terminate`. The twin throws where
//! bitcoind does, so this test catches that on the twin as well as on a real
//! bitcoind (`BITCOIND=/path/to/bitcoind`), which is sent the messages over
//! BIP324 v2 connections too.
//!
//! A node may close a connection over a message (Bitcoin Core does over a
//! `getcfilters` it does not serve); the peer then goes on over a new one,
//! and every check is per connection, of what the node processed on it. A
//! real bitcoind is started with `-whitelist=noban@127.0.0.1`, so it calls
//! peers misbehaving without disconnecting them, as the twin does.
//!
//! Tests that cannot run here (no root, no uprobes) are reported as ignored,
//! with the reason printed.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufReader},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::Arc,
    thread,
    time::Duration,
};

use anyhow::{anyhow, ensure, Context, Result};
use bip324::{
    io::{Payload, Protocol, ProtocolError},
    PacketType, Role,
};
use bitcoin::{
    consensus::serialize,
    p2p::{message_network::VersionMessage, Address, ServiceFlags},
};
use libtest_mimic::Arguments;
use peerlog::p2p::{self, HandshakeOptions, P2pClient};
use peerlog_tests::{
    bitcoind_only, connect, ebpf_skip,
    malformed::{self, Reply},
    peerlog_bin, read_capture, trial, Node, Tracer, NETWORK,
};
use serde_json::Value;

/// Peers sending the malformed messages at the same time.
const PEERS: usize = 3;

fn main() {
    let args = Arguments::from_args();
    let ebpf = ebpf_skip();
    // The twin speaks v1 only.
    let real_node = bitcoind_only();
    let trials = vec![
        trial("malformed_messages_v1", malformed_messages_v1, &[&ebpf]),
        trial(
            "malformed_messages_v2",
            malformed_messages_v2,
            &[&ebpf, &real_node],
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// Whether `pid` is a live process: not gone, not a zombie waiting to be
/// reaped (the state after `)` in /proc/PID/stat).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s[s.rfind(')')? + 1..].trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// `peerlog ctl --socket SOCKET METHOD {}`, its stdout as JSON.
fn ctl(socket: &Path, method: &str) -> Result<Value> {
    let out = Command::new(peerlog_bin()?)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args([method, "{}"])
        .output()?;
    ensure!(
        out.status.success(),
        "peerlog ctl {method} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "peerlog ctl {method}: not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A v1 connection with the test suite's timeouts, not handshaken yet.
fn connect_v1(node: SocketAddr) -> Result<P2pClient> {
    let opts = HandshakeOptions {
        read_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    P2pClient::connect(node, NETWORK, opts).map_err(|e| anyhow!("connecting to {node}: {e}"))
}

fn malformed_messages_v1() -> Result<()> {
    let node = Node::start()?;
    let addr = node.p2p_addr;
    malformed_messages(node, move || connect_v1(addr))
}

/// The same over BIP324 v2 connections, which a real bitcoind accepts
/// (`-v2transport=1` is its default): the messages reach `ProcessMessage`
/// the same way, and peerlog's capture must not care about the transport.
fn malformed_messages_v2() -> Result<()> {
    let node = Node::start()?;
    ensure!(
        node.is_bitcoind(),
        "BITCOIND is not set: the twin speaks v1 only"
    );
    let addr = node.p2p_addr;
    malformed_messages(node, move || V2Peer::connect(addr))
}

/// A BIP324 (v2 transport) connection: just enough client to complete the
/// version handshake, send any message and ping.
struct V2Peer {
    protocol: Protocol<BufReader<TcpStream>, TcpStream>,
    node: SocketAddr,
    local: SocketAddr,
    sent: Vec<(String, Vec<u8>)>,
}

/// Whether an I/O error means the node closed the connection.
fn io_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Whether a v2 error means the node closed the connection.
fn v2_closed(e: &ProtocolError) -> bool {
    matches!(e, ProtocolError::Io(e, _) if io_closed(e))
}

impl V2Peer {
    /// Connects and completes the BIP324 key exchange (not the version
    /// handshake).
    fn connect(node: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&node, Duration::from_secs(10))
            .with_context(|| format!("connecting to {node}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let local = stream.local_addr()?;
        let reader = BufReader::new(stream.try_clone()?);
        let protocol = Protocol::new(
            NETWORK.magic().to_bytes(),
            Role::Initiator,
            None,
            None,
            reader,
            stream,
        )
        .map_err(|e| anyhow!("BIP324 handshake with {node}: {e}"))?;
        Ok(Self {
            protocol,
            node,
            local,
            sent: Vec::new(),
        })
    }

    /// The next message the node sent, (type, payload); None once it has
    /// closed the connection.
    fn recv(&mut self) -> Result<Option<(String, Vec<u8>)>> {
        loop {
            let packet = match self.protocol.read() {
                Ok(p) => p,
                Err(e) if v2_closed(&e) => return Ok(None),
                Err(e) => return Err(anyhow!("reading from {}: {e}", self.node)),
            };
            if packet.packet_type() == PacketType::Decoy {
                continue;
            }
            // BIP324: a short message id, or 0 and a NUL-padded 12-byte type.
            let contents = packet.contents();
            let (&id, rest) = contents.split_first().context("empty v2 message")?;
            let (msg_type, payload) = if id == 0 {
                ensure!(rest.len() >= 12, "v2 message type cut short");
                let name = &rest[..12];
                let end = name.iter().position(|&b| b == 0).unwrap_or(12);
                (
                    String::from_utf8_lossy(&name[..end]).into_owned(),
                    &rest[12..],
                )
            } else {
                let name = V2_MESSAGE_IDS
                    .get(usize::from(id))
                    .with_context(|| format!("unknown v2 message id {id}"))?;
                (name.to_string(), rest)
            };
            return Ok(Some((msg_type, payload.to_vec())));
        }
    }

    /// Answers the node's ping with its nonce (BIP 31), as any peer must.
    fn answer_ping(&mut self, ping: &[u8]) -> Result<Reply> {
        if ping.len() != 8 {
            return Ok(Reply::Answered);
        }
        self.send_or_closed("pong", ping)
    }

    /// Sends a message; [`Reply::Closed`] if the node has closed the
    /// connection.
    fn send_or_closed(&mut self, msg_type: &str, payload: &[u8]) -> Result<Reply> {
        match malformed::Wire::send_raw(self, msg_type, payload) {
            Ok(()) => Ok(Reply::Answered),
            Err(e) if io_closed(&e) => Ok(Reply::Closed),
            Err(e) => Err(anyhow::Error::new(e).context(format!("sending {msg_type}"))),
        }
    }
}

/// BIP324's short message ids (Bitcoin Core's `V2_MESSAGE_IDS`); 0 means the
/// type follows in full.
const V2_MESSAGE_IDS: [&str; 29] = [
    "",
    "addr",
    "block",
    "blocktxn",
    "cmpctblock",
    "feefilter",
    "filteradd",
    "filterclear",
    "filterload",
    "getblocks",
    "getblocktxn",
    "getdata",
    "getheaders",
    "headers",
    "inv",
    "mempool",
    "merkleblock",
    "notfound",
    "ping",
    "pong",
    "sendcmpct",
    "tx",
    "getcfilters",
    "cfilter",
    "getcfheaders",
    "cfheaders",
    "getcfcheckpt",
    "cfcheckpt",
    "addrv2",
];

impl malformed::Wire for V2Peer {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Always the long encoding, which bitcoind accepts for every type.
    fn send_raw(&mut self, msg_type: &str, payload: &[u8]) -> io::Result<()> {
        let mut contents = vec![0u8; 13];
        contents[1..1 + msg_type.len()].copy_from_slice(msg_type.as_bytes());
        contents.extend_from_slice(payload);
        self.protocol
            .write(&Payload::genuine(contents))
            .map_err(|e| match e {
                ProtocolError::Io(e, _) => e,
                other => io::Error::other(other.to_string()),
            })?;
        self.sent.push((msg_type.to_string(), payload.to_vec()));
        Ok(())
    }

    fn handshake(&mut self) -> Result<Reply> {
        let services = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
        let version = VersionMessage {
            version: p2p::PROTOCOL_VERSION,
            services,
            timestamp: (p2p::now_micros() / 1_000_000) as i64,
            receiver: Address::new(&self.node, ServiceFlags::NONE),
            sender: Address::new(&self.local, services),
            nonce: p2p::now_micros() ^ u64::from(self.local.port()),
            user_agent: p2p::user_agent(),
            start_height: 0,
            relay: true,
        };
        if self.send_or_closed("version", &serialize(&version))? == Reply::Closed {
            return Ok(Reply::Closed);
        }
        let (mut version_seen, mut verack_seen) = (false, false);
        while !(version_seen && verack_seen) {
            let Some((msg_type, payload)) = self.recv()? else {
                return Ok(Reply::Closed);
            };
            match msg_type.as_str() {
                "version" if !version_seen => {
                    version_seen = true;
                    for msg_type in ["wtxidrelay", "sendaddrv2", "verack"] {
                        if self.send_or_closed(msg_type, &[])? == Reply::Closed {
                            return Ok(Reply::Closed);
                        }
                    }
                }
                "verack" => verack_seen = true,
                "ping" => {
                    if let Reply::Closed = self.answer_ping(&payload)? {
                        return Ok(Reply::Closed);
                    }
                }
                _ => {}
            }
        }
        Ok(Reply::Answered)
    }

    fn ping(&mut self, nonce: u64) -> Result<Reply> {
        let nonce = nonce.to_le_bytes();
        if self.send_or_closed("ping", &nonce)? == Reply::Closed {
            return Ok(Reply::Closed);
        }
        loop {
            let Some((msg_type, payload)) = self.recv()? else {
                return Ok(Reply::Closed);
            };
            match msg_type.as_str() {
                "pong" if payload == nonce => return Ok(Reply::Answered),
                "ping" => {
                    if let Reply::Closed = self.answer_ping(&payload)? {
                        return Ok(Reply::Closed);
                    }
                }
                _ => {}
            }
        }
    }

    fn sent_count(&self) -> usize {
        self.sent.len()
    }

    fn into_sent(self) -> Vec<(String, Vec<u8>)> {
        self.sent
    }
}

/// Traces `node` with every feature on while [`PEERS`] peers, connected by
/// `connect`, send every malformed message at once; then checks the node,
/// peerlog and what peerlog recorded.
fn malformed_messages<W, F>(node: Node, connect_wire: F) -> Result<()>
where
    W: malformed::Wire,
    F: Fn() -> Result<W> + Send + Sync + 'static,
{
    let dir = tempfile::tempdir()?;
    let capture = dir.path().join("capture");
    let flamegraph = dir.path().join("flamegraph");
    let stats_log = dir.path().join("stats.jsonl");
    let socket = dir.path().join("ctl.sock");
    let path = |p: &Path| p.to_str().map(str::to_owned).context("temp path not UTF-8");
    let tracer = Tracer::start(
        node.pid(),
        &[
            "--capture",
            &path(&capture)?,
            "--flamegraph",
            &path(&flamegraph)?,
            "--stats-log",
            &path(&stats_log)?,
            "--stats-interval",
            "0.5",
            "--rpc-socket",
            &path(&socket)?,
        ],
    )?;

    let cases = Arc::new(malformed::cases());
    let connect_wire = Arc::new(connect_wire);
    let peers: Vec<_> = (0..PEERS)
        .map(|_| {
            let (cases, connect_wire) = (cases.clone(), connect_wire.clone());
            thread::spawn(move || malformed::run(&cases, &*connect_wire))
        })
        .collect();
    // Which of the two died, if one did: the first thing to say about any
    // error, since everything else fails after it.
    let death = |e: anyhow::Error| -> anyhow::Error {
        if !alive(node.pid()) {
            e.context("the node died")
        } else if !alive(tracer.pid()) {
            e.context("peerlog died")
        } else {
            e
        }
    };
    // The control RPC answers while the node is under attack. Its first
    // failure is reported after the peers', which name the message at fault.
    let mut rpc_calls = 0;
    let mut rpc_error = None;
    loop {
        match ctl(&socket, "getpeerstats") {
            Ok(list) if list.is_array() => rpc_calls += 1,
            Ok(other) => {
                rpc_error.get_or_insert(anyhow!("getpeerstats did not return a list: {other}"));
            }
            Err(e) => {
                rpc_error.get_or_insert(e);
            }
        }
        if peers.iter().all(|p| p.is_finished()) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let mut connections = Vec::new();
    for (i, p) in peers.into_iter().enumerate() {
        let result = p
            .join()
            .map_err(|_| anyhow!("peer {i}'s thread panicked"))?;
        connections.extend(result.map_err(|e| death(e.context(format!("peer {i}"))))?);
    }
    if let Some(e) = rpc_error {
        return Err(death(
            e.context("peerlog ctl getpeerstats while the peers sent"),
        ));
    }

    // The node is alive and answers a new peer's ping with the right pong.
    let mut fresh = connect(&node).map_err(death)?;
    fresh
        .ping(0x6d61_6c66_6f72_6d64)
        .map_err(|e| death(anyhow!("a new peer's ping: {e}")))?;
    ensure!(alive(node.pid()), "the node died");
    ensure!(alive(tracer.pid()), "peerlog died");
    let peers_json = ctl(&socket, "getpeerstats")?;
    let fresh_addr = fresh.local_addr().to_string();
    ensure!(
        peers_json
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["addr"] == fresh_addr.as_str())),
        "getpeerstats ({rpc_calls} calls) does not list the new peer {fresh_addr}: {peers_json:#}"
    );
    drop(fresh);
    // Let peerlog see the last connections close before it stops.
    thread::sleep(Duration::from_millis(500));
    let out = tracer.stop()?;
    ensure!(
        out.status.success(),
        "peerlog failed ({}): {}",
        out.status,
        out.stderr
    );

    // The capture holds every message each peer sent and the node
    // processed, byte for byte, in order.
    let files = read_capture(&capture)?;
    let closed_by_node = connections
        .iter()
        .filter(|c| c.closed_by_node_after.is_some())
        .count();
    for f in &files {
        ensure!(
            f.truncated.is_none(),
            "{} ends in a cut record",
            f.path.display()
        );
    }
    for c in &connections {
        let records: Vec<_> = peerlog_tests::capture_of(&files, c.local)
            .into_iter()
            .filter(|f| f.direction == peerlog_common::Direction::Inbound)
            .flat_map(|f| &f.records)
            .collect();
        ensure!(
            records.len() == c.processed.len(),
            "{}: the capture has {} messages from the client, which sent {} that the node processed{}",
            c.local,
            records.len(),
            c.processed.len(),
            c.closed_by_node_after
                .as_ref()
                .map(|m| format!(" (it closed the connection after {m})"))
                .unwrap_or_default()
        );
        for (i, (r, (msg_type, payload))) in records.iter().zip(&c.processed).enumerate() {
            ensure!(
                &r.msg_type == msg_type && &r.payload == payload,
                "{} message {i}: capture {} ({} bytes), client {msg_type} ({} bytes)",
                c.local,
                r.msg_type,
                r.payload.len(),
                payload.len()
            );
        }
    }

    // The stats log has every connection, with the messages it received
    // from it.
    let mut logged: BTreeMap<String, u64> = BTreeMap::new();
    for line in fs::read_to_string(&stats_log)?.lines() {
        let line: Value = serde_json::from_str(line)?;
        for p in line["peers"]
            .as_array()
            .context("stats line without peers")?
        {
            if let (Some(addr), Some(n)) = (p["addr"].as_str(), p["msgsrecv"].as_u64()) {
                logged.insert(addr.to_string(), n);
            }
        }
    }
    for c in &connections {
        let n = logged
            .get(&c.local.to_string())
            .with_context(|| format!("{} is not in the stats log", c.local))?;
        ensure!(
            *n == c.processed.len() as u64,
            "the stats log's last figures for {} count {n} messages received, the client sent {} that the node processed",
            c.local,
            c.processed.len()
        );
    }
    ensure!(
        flamegraph.join("all.svg").is_file(),
        "no flamegraph in {}",
        flamegraph.display()
    );
    eprintln!(
        "{PEERS} peers sent {} malformed messages each over {} connections ({closed_by_node} closed by the node)",
        cases.len(),
        connections.len()
    );
    node.stop()?;
    Ok(())
}
