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
//! bitcoind (`BITCOIND=/path/to/bitcoind`).
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
    collections::BTreeMap, fs, net::SocketAddr, path::Path, process::Command, sync::Arc, thread,
    time::Duration,
};

use anyhow::{anyhow, ensure, Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use peerlog::p2p::{HandshakeOptions, Peer};
use peerlog_tests::{
    connect, ebpf_unavailable, malformed, peerlog_bin, read_capture, Node, Tracer, NETWORK,
};
use serde_json::Value;

/// Peers sending the malformed messages at the same time.
const PEERS: usize = 3;

fn main() {
    let args = Arguments::from_args();
    let skip = ebpf_unavailable();
    if let Some(why) = &skip {
        eprintln!("robustness tests that load eBPF are IGNORED: {why}");
    }
    let trials = vec![Trial::test("malformed_messages_v1", || {
        malformed_messages_v1().map_err(|e| Failed::from(format!("{e:#}")))
    })
    .with_ignored_flag(skip.is_some())];
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
fn connect_v1(node: SocketAddr) -> Result<Peer> {
    let opts = HandshakeOptions {
        read_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    Peer::connect(node, NETWORK, opts).map_err(|e| anyhow!("connecting to {node}: {e}"))
}

fn malformed_messages_v1() -> Result<()> {
    let node = Node::start()?;
    let addr = node.p2p_addr;
    malformed_messages(node, move || connect_v1(addr))
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
            .filter(|f| f.direction == peerlog::capture::Direction::Recv)
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
