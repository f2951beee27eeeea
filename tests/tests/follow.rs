//! `peerlog trace` as a long-lived service: finding the node without `--pid` (by its
//! pid file with `--datadir`, or by its USDT probes), and `--follow`, which
//! keeps one trace, one capture and one control socket across restarts of
//! the node.
//!
//! Tests that cannot run here are reported as ignored, with the reason.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use libtest_mimic::Arguments;
use peerlog::p2p::{HandshakeOptions, P2pClient, Transcript};
use peerlog_common::Direction;
use peerlog_tests::*;
use serde_json::Value;

fn main() {
    let args = Arguments::from_args();
    let ebpf = ebpf_skip();
    let twin = twin_only("copies the twin as bitcoin-node");
    let tests: [TestCase; 3] = [
        (
            "follow_keeps_one_capture_across_restarts",
            follow_keeps_one_capture_across_restarts,
            &[&ebpf],
        ),
        (
            "several_nodes_found_by_their_probes_are_named",
            several_nodes_found_by_their_probes_are_named,
            &[&ebpf, &twin],
        ),
        ("follow_needs_a_pid_file", follow_needs_a_pid_file, &[]),
    ];
    run_suite(&args, tests);
}

/// Waits (at most a minute: a hang is a failure, not a slow pass) until
/// `ready` says yes; `what` names the wait in the error.
fn wait_for(what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn ctl(socket: &Path, method: &str) -> Result<Value> {
    let out = Command::new(peerlog_bin()?)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .arg(method)
        .output()?;
    ensure!(
        out.status.success(),
        "peerlog ctl {method} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("peerlog ctl {method}: not JSON"))
}

/// A v1 connection with the test suite's timeouts, not handshaken yet.
fn connect_v1(node: SocketAddr) -> Result<P2pClient> {
    let opts = HandshakeOptions {
        read_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    P2pClient::connect(node, NETWORK, opts).map_err(|e| anyhow!("connecting to {node}: {e}"))
}

/// A few malformed messages of each stage: enough to show the node and
/// peerlog take them in every run (tests/robustness.rs sends them all).
fn some_malformed() -> Vec<malformed::Malformed> {
    let all = malformed::cases();
    let first: Vec<_> = all
        .iter()
        .filter(|c| c.stage == malformed::Stage::FirstMessage)
        .take(2)
        .cloned()
        .collect();
    let after = all
        .iter()
        .filter(|c| c.stage == malformed::Stage::AfterHandshake)
        .step_by(25)
        .cloned();
    first.into_iter().chain(after).collect()
}

/// What one run of the node exchanged with the test's peers.
struct Run {
    /// The standard traffic's connection and its transcript.
    peer: (SocketAddr, Transcript),
    /// The connections of the malformed messages.
    malformed: Vec<malformed::Connection>,
}

/// One node run: the standard traffic from one peer, malformed messages
/// from others, and the node still answers a new peer.
fn drive(node: &Node) -> Result<Run> {
    let mut a = connect(node)?;
    standard_traffic(node, &mut a)?;
    let peer = (a.local_addr(), a.take_transcript());
    let addr = node.p2p_addr;
    let malformed = malformed::run(&some_malformed(), || connect_v1(addr))?;
    let mut fresh = connect(node)?;
    fresh.ping(0x666f_6c6c_6f77).map_err(|e| {
        anyhow!("the node did not answer a new peer after the malformed messages: {e}")
    })?;
    // The fresh peer's messages are not compared: its transcript is dropped
    // with it, so its capture files are not checked (others are).
    drop(fresh);
    drop(a);
    Ok(Run { peer, malformed })
}

fn attaches(stderr: &str) -> usize {
    stderr.matches("peerlog: attached to").count()
}

/// The node restarts twice under one `peerlog trace --datadir DIR --follow`:
/// every message of the three runs is in the one capture, byte for byte;
/// the control socket answers throughout, `waiting` between runs and
/// `attached` during them; peers of a process are never mixed with those
/// of the next, though both number theirs from 0.
fn follow_keeps_one_capture_across_restarts() -> Result<()> {
    let mut node = Node::start_with_datadir()?;
    let datadir = node
        .datadir()
        .context("a node with a data directory")?
        .to_path_buf();
    let dir = tempfile::tempdir()?;
    let capture = dir.path().join("capture");
    let socket = dir.path().join("ctl.sock");
    let path = |p: &Path| p.to_str().map(str::to_owned).context("temp path not UTF-8");
    let tracer = Tracer::start_finding(&[
        "--datadir",
        &path(&datadir)?,
        "--follow",
        "--capture",
        &path(&capture)?,
        "--rpc-socket",
        &path(&socket)?,
    ])?;
    let mut runs: Vec<Run> = Vec::new();
    for run in 0..3 {
        if run > 0 {
            node.shut_down()?;
            wait_for("getstatus to say waiting", || {
                Ok(ctl(&socket, "getstatus")?["state"] == "waiting")
            })?;
            let status = ctl(&socket, "getstatus")?;
            ensure!(status["pid"].is_null(), "waiting, yet a pid: {status:#}");
            node.start_again()?;
            wait_for("peerlog to attach to the new node", || {
                Ok(attaches(&tracer.stderr_so_far()) > run)
            })?;
        }
        let status = ctl(&socket, "getstatus")?;
        ensure!(
            status["state"] == "attached"
                && status["pid"] == node.pid()
                && status["attaches"] == run + 1,
            "run {run}: getstatus {status:#}"
        );
        let this = drive(&node)?;
        // The new process's peers only: those of earlier runs are gone,
        // not mixed in under the same ids.
        let peers = ctl(&socket, "getpeerstats")?;
        let addrs: Vec<&str> = peers
            .as_array()
            .context("getpeerstats is a list")?
            .iter()
            .filter_map(|p| p["addr"].as_str())
            .collect();
        let ours = this.peer.0.to_string();
        ensure!(
            addrs.contains(&ours.as_str()),
            "run {run}: {ours} not in {addrs:?}"
        );
        for earlier in &runs {
            let old = earlier.peer.0.to_string();
            ensure!(
                !addrs.contains(&old.as_str()),
                "run {run}: getpeerstats still lists {old} of an earlier process: {addrs:?}"
            );
        }
        let node_stats = ctl(&socket, "getnodestats")?;
        ensure!(
            node_stats["attaches"] == run + 1 && node_stats["pid"] == node.pid(),
            "run {run}: getnodestats {node_stats:#}"
        );
        runs.push(this);
    }
    // Let peerlog see the last connections close before it stops.
    thread::sleep(Duration::from_millis(500));
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    ensure!(
        out.stderr
            .contains("processes traced: 3 (--follow: 2 restarts)"),
        "the summary does not count the restarts:\n{}",
        out.stderr
    );
    ensure!(
        out.stderr
            .lines()
            .any(|l| l.trim() == "events lost:      0"),
        "peerlog lost events:\n{}",
        out.stderr
    );

    let files = read_capture(&capture)?;
    for (i, run) in runs.iter().enumerate() {
        let (local, transcript) = &run.peer;
        assert_capture_matches(&files, *local, transcript, Duration::from_secs(2))
            .with_context(|| format!("run {i}"))?;
        for c in &run.malformed {
            let records: Vec<_> = capture_of(&files, c.local)
                .into_iter()
                .filter(|f| f.direction == Direction::Inbound)
                .flat_map(|f| &f.records)
                .collect();
            ensure!(
                records.len() == c.processed.len(),
                "run {i}, {}: the capture has {} messages from the client, which sent {} the node processed",
                c.local,
                records.len(),
                c.processed.len()
            );
            for (j, (r, (msg_type, payload))) in records.iter().zip(&c.processed).enumerate() {
                ensure!(
                    &r.msg_type == msg_type && &r.payload == payload,
                    "run {i}, {} message {j}: capture {} ({} bytes), client {msg_type} ({} bytes)",
                    c.local,
                    r.msg_type,
                    r.payload.len(),
                    payload.len()
                );
            }
        }
    }
    if let Some(core_dir) = node.core_capture_dir() {
        same_as_bitcoind_capture(&files, &read_capture(&core_dir)?, &runs)?;
    }
    node.stop()?;
    Ok(())
}

/// bitcoind's own `-capturemessages` of the test's connections (it appends
/// across restarts too) holds what peerlog's does.
fn same_as_bitcoind_capture(
    ours: &[peerlog::formats::capture::CaptureFile],
    theirs: &[peerlog::formats::capture::CaptureFile],
    runs: &[Run],
) -> Result<()> {
    let locals = runs
        .iter()
        .flat_map(|r| std::iter::once(r.peer.0).chain(r.malformed.iter().map(|c| c.local)));
    for local in locals {
        for direction in [Direction::Inbound, Direction::Outbound] {
            let records =
                |files: &[peerlog::formats::capture::CaptureFile]| -> Vec<(String, Vec<u8>)> {
                    capture_of(files, local)
                        .into_iter()
                        .filter(|f| f.direction == direction)
                        .flat_map(|f| &f.records)
                        .map(|r| (r.msg_type.clone(), r.payload.clone()))
                        .collect()
                };
            let (o, t) = (records(ours), records(theirs));
            ensure!(
                o == t,
                "{local} {direction}: peerlog captured {} messages, bitcoind {} ({:?} vs {:?})",
                o.len(),
                t.len(),
                o.iter().map(|r| &r.0).collect::<Vec<_>>(),
                t.iter().map(|r| &r.0).collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

/// Without --pid, --datadir or --pidfile, peerlog looks for processes by
/// their USDT probes, not their name: two `bitcoin-node`s are both found,
/// and peerlog asks which one, naming each with its pid, executable and
/// data directory.
///
/// The case of a single candidate, which peerlog then traces, is the suite
/// `autodetect`'s: the other tests of this one run nodes at the same time.
fn several_nodes_found_by_their_probes_are_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Node::start_as_bitcoin_node(dir.path(), &dir.path().join("a"))?;
    let b = Node::start_as_bitcoin_node(dir.path(), &dir.path().join("b"))?;
    let out = Command::new(peerlog_bin()?)
        .args(["trace", "--duration", "1"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "expected a usage error (2), got {}: {stderr}",
        out.status
    );
    ensure!(stderr.contains("several bitcoind processes"), "{stderr}");
    for (node, datadir) in [(&a, "a"), (&b, "b")] {
        let named = format!(
            "pid {} ({}, -datadir={})",
            node.pid(),
            dir.path().join("bitcoin-node").display(),
            dir.path().join(datadir).display()
        );
        ensure!(stderr.contains(&named), "{named} is not named: {stderr}");
    }
    ensure!(stderr.contains("--pid PID or --datadir DIR"), "{stderr}");

    // Either is traced by its data directory, pid file and all.
    let datadir = dir.path().join("b");
    let tracer = Tracer::start_finding(&["--datadir", datadir.to_str().context("UTF-8")?])?;
    let attached = tracer.stderr_so_far();
    ensure!(
        attached.contains(&format!("attached to pid {} (bitcoin-node", b.pid())),
        "{attached}"
    );
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    a.stop()?;
    b.stop()?;
    Ok(())
}

/// `--follow` with a bare `--pid` cannot find the next process: a usage
/// error that says what to pass instead; so are --chain without --datadir
/// and a data directory that does not exist.
fn follow_needs_a_pid_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing: PathBuf = dir.path().join("nonexistent");
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec!["--pid", "1", "--follow"],
            "--follow needs a pid file to find the next bitcoind",
        ),
        (vec!["--chain", "regtest"], "--datadir"),
        (
            vec!["--datadir", missing.to_str().context("UTF-8")?],
            "no such directory",
        ),
    ];
    for (args, wanted) in cases {
        let out = Command::new(peerlog_bin()?)
            .arg("trace")
            .args(&args)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2) && stderr.contains(wanted),
            "{args:?}: expected a usage error saying {wanted:?}, got {}: {stderr}",
            out.status
        );
    }
    Ok(())
}
