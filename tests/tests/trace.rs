//! End-to-end tests of `peerlog trace`: real eBPF programs attached to a
//! running node (the twin, or `BITCOIND=/path/to/bitcoind`), real P2P traffic
//! on loopback, captures compared byte for byte with what the client sent and
//! received.
//!
//! Tests that cannot run here are reported as ignored, with the reason
//! printed, never as passed: those that need eBPF when this machine cannot
//! load it (not root, no uprobes; a failure instead with
//! `PEERLOG_REQUIRE_EBPF=1`), those that need the twin node when `BITCOIND`
//! is set, the comparison with bitcoind's own capture when it is not.

use std::{fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::Arguments;
use peerlog_tests::*;

fn main() {
    let args = Arguments::from_args();
    let ebpf = ebpf_skip();
    let bitcoind = bitcoind_only();
    let twin_mempool = twin_only("its mempool accepts unsigned test transactions");
    let twin_stripped = twin_only("a stripped copy with its debug file beside it");
    let twin_no_semaphores = twin_only("a build without USDT semaphores");
    let tests: [TestCase; 13] = [
        (
            "ring_overflow_is_counted_never_silent",
            ring_overflow_is_counted_never_silent,
            &[&ebpf],
        ),
        (
            "mempool_events_are_attributed_to_the_relaying_peer",
            mempool_events_are_attributed_to_the_relaying_peer,
            &[&ebpf, &twin_mempool],
        ),
        (
            "stripped_binary_uses_its_debug_file",
            stripped_binary_uses_its_debug_file,
            &[&ebpf, &twin_stripped],
        ),
        ("capture_is_byte_exact", capture_is_byte_exact, &[&ebpf]),
        (
            "capture_matches_bitcoind_own_capture",
            capture_matches_bitcoind_own_capture,
            &[&ebpf, &bitcoind],
        ),
        (
            "peer_and_msg_type_filters",
            peer_and_msg_type_filters,
            &[&ebpf],
        ),
        ("per_connection_layout", per_connection_layout, &[&ebpf]),
        ("target_exit_stops_trace", target_exit_stops_trace, &[&ebpf]),
        (
            "disk_full_keeps_records_intact",
            disk_full_keeps_records_intact,
            &[&ebpf],
        ),
        (
            "probes_without_semaphores",
            probes_without_semaphores,
            &[&ebpf, &twin_no_semaphores],
        ),
        (
            "missing_privileges_are_named",
            missing_privileges_are_named,
            &[&ebpf],
        ),
        (
            "bad_targets_get_clear_errors",
            bad_targets_get_clear_errors,
            &[&ebpf],
        ),
        (
            "bad_arguments_get_clear_errors",
            bad_arguments_get_clear_errors,
            &[],
        ),
    ];
    run_suite(&args, tests);
}

/// Starts `peerlog trace --capture <tempdir>/capture EXTRA...` on `node`;
/// the temporary directory lives as long as the returned guard.
fn trace_to_capture(
    node: &Node,
    extra: &[&str],
) -> Result<(tempfile::TempDir, std::path::PathBuf, Tracer)> {
    let dir = tempfile::tempdir()?;
    let capture = dir.path().join("capture");
    let mut args = vec![
        "--capture",
        capture.to_str().context("temp dir path is not UTF-8")?,
    ];
    args.extend_from_slice(extra);
    let tracer = Tracer::start(node.pid(), &args)?;
    Ok((dir, capture, tracer))
}

/// Connects to `node`, makes two ping round trips and closes: returns the
/// client's address and its transcript, all of which the node has processed
/// (a pong we sent during the first round trip, to the node's own ping, is
/// processed once the second round trip is back).
fn ping_and_close(node: &Node) -> Result<(std::net::SocketAddr, peerlog::p2p::Transcript)> {
    let mut a = connect(node)?;
    sync(&mut a, 1)?;
    sync(&mut a, 2)?;
    Ok((a.local_addr(), a.take_transcript()))
}

/// Zero events lost, as the summary reports it.
fn assert_no_loss(stderr: &str) -> Result<()> {
    ensure!(
        stderr.lines().any(|l| l.trim() == "events lost:      0"),
        "peerlog lost events or printed no summary:\n{stderr}"
    );
    Ok(())
}

fn capture_is_byte_exact() -> Result<()> {
    let node = Node::start()?;
    let dir = tempfile::tempdir()?;
    let capture = dir.path().join("capture");
    let jsonl = dir.path().join("events.jsonl");
    let tracer = Tracer::start(
        node.pid(),
        &[
            "--capture",
            capture.to_str().unwrap(),
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    )?;

    let mut a = connect(&node)?;
    let mut b = connect(&node)?;
    sync(&mut b, 1)?;
    standard_traffic(&node, &mut a)?;
    sync(&mut b, 2)?;
    b.drain(Duration::from_millis(300))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (a_local, b_local) = (a.local_addr(), b.local_addr());
    let (ta, tb) = (a.take_transcript(), b.take_transcript());
    drop(a);
    drop(b);
    thread::sleep(Duration::from_millis(500));
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    assert_no_loss(&out.stderr)?;

    let files = read_capture(&capture)?;
    // Clocks: the client stamps when it wrote or finished reading; bitcoind
    // stamps when it processed. On loopback the two are close; a 4 MB message
    // takes a while to copy, hence the margin.
    let skew = Duration::from_secs(2);
    assert_capture_matches(&files, a_local, &ta, skew)?;
    assert_capture_matches(&files, b_local, &tb, skew)?;
    let big = files
        .iter()
        .flat_map(|f| &f.records)
        .filter(|r| r.payload.len() == MAX_MESSAGE)
        .count();
    ensure!(big >= 1, "no 4,000,000-byte message in the capture");

    // The JSON lines tell the same story: every captured message once, and
    // the connections.
    let text = fs::read_to_string(&jsonl)?;
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let messages = events.iter().filter(|e| e["event"] == "message").count();
    let records: usize = files.iter().map(|f| f.records.len()).sum();
    ensure!(
        messages == records,
        "{messages} JSON messages, {records} capture records"
    );
    if !node.is_bitcoind() {
        let opened = events
            .iter()
            .filter(|e| e["event"] == "connection" && e["kind"] == "inbound")
            .count();
        let closed = events
            .iter()
            .filter(|e| e["event"] == "connection" && e["kind"] == "closed")
            .count();
        ensure!(
            opened == 2 && closed == 2,
            "connections: {opened} opened, {closed} closed"
        );
    }
    node.stop()?;
    Ok(())
}

/// With a real bitcoind, peerlog's capture must equal bitcoind's own
/// `-capturemessages` output, message for message, byte for byte, with
/// timestamps within a millisecond: every file bitcoind wrote has its
/// counterpart in peerlog's capture, and the other way round.
fn capture_matches_bitcoind_own_capture() -> Result<()> {
    let node = Node::start()?;
    let core_dir = node
        .core_capture_dir()
        .context("BITCOIND is not a real bitcoind")?;
    let offset_before = wall_clock_offset_micros();
    let (_dir, capture, tracer) = trace_to_capture(&node, &[])?;
    let mut a = connect(&node)?;
    let local = a.local_addr().to_string();
    standard_traffic(&node, &mut a)?;
    drop(a);
    thread::sleep(Duration::from_millis(500));
    let out = tracer.stop()?;
    let clock_step = wall_clock_offset_micros() - offset_before;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    assert_no_loss(&out.stderr)?;
    let ours = read_capture(&capture)?;
    let theirs = read_capture(&core_dir)?;
    ensure!(
        theirs
            .iter()
            .any(|t| t.peer_addr.as_deref() == Some(local.as_str())),
        "bitcoind captured nothing of our connection from {local}: {:?}",
        theirs.iter().map(|t| &t.path).collect::<Vec<_>>()
    );
    for o in &ours {
        ensure!(
            theirs
                .iter()
                .any(|t| t.peer_addr == o.peer_addr && t.direction == o.direction),
            "peerlog wrote {}, bitcoind has no capture of {:?} {}",
            o.path.display(),
            o.peer_addr,
            o.direction
        );
    }
    // Every connection was made after peerlog attached: bitcoind's files
    // and peerlog's hold the same messages from the first on.
    for t in &theirs {
        let o = ours
            .iter()
            .find(|o| o.peer_addr == t.peer_addr && o.direction == t.direction)
            .with_context(|| {
                format!(
                    "bitcoind wrote {} ({} messages), peerlog has no capture of {:?} {}",
                    t.path.display(),
                    t.records.len(),
                    t.peer_addr,
                    t.direction
                )
            })?;
        ensure!(
            o.records.len() == t.records.len(),
            "{}: {} messages, bitcoind's {}: {} ({:?} vs {:?})",
            o.path.display(),
            o.records.len(),
            t.path.display(),
            t.records.len(),
            o.records.iter().map(|r| &r.msg_type).collect::<Vec<_>>(),
            t.records.iter().map(|r| &r.msg_type).collect::<Vec<_>>()
        );
        for (i, (o_rec, t_rec)) in o.records.iter().zip(&t.records).enumerate() {
            ensure!(
                o_rec.msg_type == t_rec.msg_type && o_rec.payload == t_rec.payload,
                "{} record {i} ({}, {} bytes) differs from bitcoind's ({}, {} bytes)",
                o.path.display(),
                o_rec.msg_type,
                o_rec.payload.len(),
                t_rec.msg_type,
                t_rec.payload.len()
            );
            // peerlog stamps a message when its tracepoint fires. bitcoind
            // stamps a received message right after `net:inbound_message`
            // (ProcessMessages), but a sent one just before
            // `net:outbound_message` (PushMessage captures, then traces).
            // So peerlog's time of a received record lies between
            // bitcoind's stamps of the record before and of this one, and
            // of a sent record between bitcoind's stamps of this one and of
            // the next (one thread writes a file's records in turn; a sent
            // record's stamp comes before bitcoind writes it to the file,
            // which on a loaded machine can take a millisecond). The slack
            // is for the monotonic-to-wall clock conversion.
            const SLACK_MICROS: u64 = 1000;
            let stamp = |j: usize| t.records.get(j).map(|r| r.time_micros);
            let (earliest, latest) = match t.direction {
                peerlog_common::Direction::Inbound => (
                    i.checked_sub(1).and_then(stamp).unwrap_or(0),
                    Some(t_rec.time_micros),
                ),
                peerlog_common::Direction::Outbound => (t_rec.time_micros, stamp(i + 1)),
            };
            ensure!(
                o_rec.time_micros + SLACK_MICROS >= earliest
                    && latest.is_none_or(|l| o_rec.time_micros <= l + SLACK_MICROS),
                "{} record {i} ({}, {} bytes, {}): peerlog's time {} is not between bitcoind's \
                 times {earliest} and {latest:?} (the wall clock moved {clock_step} µs against \
                 the monotonic clock during the test)",
                o.path.display(),
                o_rec.msg_type,
                o_rec.payload.len(),
                t.direction,
                o_rec.time_micros,
            );
        }
    }
    node.stop()?;
    Ok(())
}

/// The wall-clock time, in UNIX microseconds, of CLOCK_MONOTONIC's zero, as
/// peerlog samples it (a bracketed read, which a preemption between two
/// reads cannot fool): it moves only when the wall clock is stepped, which a
/// failure of the timestamps above should tell apart from peerlog's error.
fn wall_clock_offset_micros() -> i64 {
    peerlog::clock::WallClock::sample().unix_micros(0) as i64
}

fn peer_and_msg_type_filters() -> Result<()> {
    let node = Node::start()?;
    let mut a = connect(&node)?;
    let mut b = connect(&node)?;
    let dir = tempfile::tempdir()?;
    let capture = dir.path().join("capture");
    let a_addr = a.local_addr().to_string();
    let tracer = Tracer::start(
        node.pid(),
        &[
            "--capture",
            capture.to_str().unwrap(),
            "--peer",
            &a_addr,
            "--msg-type",
            "ping",
            "--msg-type",
            "pong",
        ],
    )?;
    for nonce in 100..105 {
        sync(&mut a, nonce)?;
        sync(&mut b, nonce)?;
    }
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    let files = read_capture(&capture)?;
    ensure!(
        capture_of(&files, b.local_addr()).is_empty(),
        "peer B was captured despite --peer {a_addr}"
    );
    let ours = capture_of(&files, a.local_addr());
    let types = |dir: peerlog_common::Direction, t: &str| -> usize {
        ours.iter()
            .filter(|f| f.direction == dir)
            .flat_map(|f| &f.records)
            .filter(|r| r.msg_type == t)
            .count()
    };
    use peerlog_common::Direction::{Inbound as Recv, Outbound as Sent};
    // Our five pings and the node's five answers; the node may also ping us.
    ensure!(
        types(Recv, "ping") == 5,
        "pings received: {}",
        types(Recv, "ping")
    );
    ensure!(
        types(Sent, "pong") == 5,
        "pongs sent: {}",
        types(Sent, "pong")
    );
    let all: Vec<&str> = ours
        .iter()
        .flat_map(|f| f.records.iter().map(|r| r.msg_type.as_str()))
        .collect();
    ensure!(
        all.iter().all(|t| *t == "ping" || *t == "pong"),
        "other types captured: {all:?}"
    );
    node.stop()?;
    Ok(())
}

fn per_connection_layout() -> Result<()> {
    let node = Node::start()?;
    let (_dir, capture, tracer) = trace_to_capture(&node, &["--capture-layout", "per-connection"])?;
    let (local, transcript) = ping_and_close(&node)?;
    thread::sleep(Duration::from_millis(300));
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    let files = read_capture(&capture)?;
    let ours = capture_of(&files, local);
    ensure!(!ours.is_empty(), "no capture for {local}");
    for f in &ours {
        let Some((_id, connected)) = f.connection else {
            bail!("{} is not in a peer<id>-<time> directory", f.path.display());
        };
        ensure!(connected > 1_600_000_000, "connect time {connected}");
    }
    assert_capture_matches(&files, local, &transcript, Duration::from_secs(2))?;
    node.stop()?;
    Ok(())
}

fn target_exit_stops_trace() -> Result<()> {
    let node = Node::start()?;
    let (_dir, capture, mut tracer) = trace_to_capture(&node, &[])?;
    let (local, transcript) = ping_and_close(&node)?;
    node.stop()?;
    let out = tracer.wait()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    ensure!(
        out.stderr.contains("exited"),
        "no word of the target's exit:\n{}",
        out.stderr
    );
    let files = read_capture(&capture)?;
    assert_capture_matches(&files, local, &transcript, Duration::from_secs(2))?;
    Ok(())
}

fn disk_full_keeps_records_intact() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mount = dir.path().join("small");
    fs::create_dir(&mount)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount)
        .status()?;
    if !status.success() {
        bail!("cannot mount a 1 MiB tmpfs to fill up (mount failed: {status})");
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);
    let node = Node::start()?;
    let capture = mount.join("capture");
    let mut tracer = Tracer::start(node.pid(), &["--capture", capture.to_str().unwrap()])?;
    let mut a = connect(&node)?;
    sync(&mut a, 1)?;
    // More than the file system holds: the capture must stop cleanly.
    a.send_raw("peerlogbig", &vec![0x55; MAX_MESSAGE])?;
    let _ = sync(&mut a, 2);
    let out = tracer.wait()?;
    ensure!(
        !out.status.success(),
        "peerlog did not report the full disk:\n{}",
        out.stderr
    );
    ensure!(
        out.stderr.contains("capture stopped"),
        "unclear error:\n{}",
        out.stderr
    );
    let files = read_capture(&capture)?;
    for f in &files {
        ensure!(
            f.truncated.is_none(),
            "{} ends in a cut record",
            f.path.display()
        );
    }
    let records: usize = files.iter().map(|f| f.records.len()).sum();
    ensure!(
        records > 0,
        "the records written before the disk filled up are gone"
    );
    node.stop()?;
    Ok(())
}

fn probes_without_semaphores() -> Result<()> {
    let node = Node::start_twin(Path::new(TWIN_NO_SEMAPHORES), &[])?;
    let (_dir, capture, tracer) = trace_to_capture(&node, &[])?;
    let (local, transcript) = ping_and_close(&node)?;
    thread::sleep(Duration::from_millis(300));
    let out = tracer.stop()?;
    ensure!(out.stderr.contains("no semaphores"), "{}", out.stderr);
    assert_capture_matches(
        &read_capture(&capture)?,
        local,
        &transcript,
        Duration::from_secs(2),
    )?;
    node.stop()?;
    Ok(())
}

/// The peer id bitcoind gave the connection whose client end is `local`,
/// from the JSON lines' connection events.
fn peer_id_of(events: &[serde_json::Value], local: std::net::SocketAddr) -> Result<i64> {
    events
        .iter()
        .find(|e| e["event"] == "connection" && e["addr"] == local.to_string().as_str())
        .and_then(|e| e["peer_id"].as_i64())
        .with_context(|| format!("no connection event for {local}"))
}

fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// `mempool:added`/`rejected` fire on b-msghand inside
/// `ProcessMessages(pfrom)`; the kernel attributes them to pfrom's peer id
/// through the `CNode*` it learned from pfrom's own messages.
fn mempool_events_are_attributed_to_the_relaying_peer() -> Result<()> {
    // The twin's mempool takes any well-formed transaction; bitcoind's would
    // need real, signed spends of mature coins.
    let node = Node::start_twin(Path::new(TWIN), &[])?;
    let dir = tempfile::tempdir()?;
    let jsonl = dir.path().join("events.jsonl");
    let tracer = Tracer::start(node.pid(), &["--jsonl", jsonl.to_str().unwrap()])?;
    let mut quiet = connect(&node)?;
    let mut relay = connect(&node)?;
    sync(&mut quiet, 1)?;
    let txs: Vec<_> = (100..104)
        .map(|i| peerlog::p2p::test_transaction(i, 1))
        .collect();
    for tx in &txs {
        relay.send(&bitcoin::p2p::message::NetworkMessage::Tx(tx.clone()))?;
    }
    relay.send(&bitcoin::p2p::message::NetworkMessage::Tx(
        peerlog::p2p::invalid_test_transaction(9),
    ))?;
    sync(&mut relay, 2)?;
    sync(&mut quiet, 2)?;
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    let events = read_jsonl(&jsonl)?;
    let relay_id = peer_id_of(&events, relay.local_addr())?;
    let mempool: Vec<_> = events.iter().filter(|e| e["event"] == "mempool").collect();
    let added: Vec<_> = mempool.iter().filter(|e| e["kind"] == "added").collect();
    let rejected: Vec<_> = mempool.iter().filter(|e| e["kind"] == "rejected").collect();
    ensure!(
        added.len() == txs.len(),
        "{} added events for {} txs: {mempool:?}",
        added.len(),
        txs.len()
    );
    ensure!(rejected.len() == 1, "rejected: {rejected:?}");
    for e in added.iter().chain(&rejected) {
        ensure!(
            e["peer_id"] == relay_id,
            "attributed to {} instead of peer {relay_id}: {e}",
            e["peer_id"]
        );
    }
    ensure!(
        rejected[0]["reason"] == "bad-txns-vout-empty",
        "{}",
        rejected[0]
    );
    let txids: Vec<String> = txs.iter().map(|t| t.compute_txid().to_string()).collect();
    for e in &added {
        ensure!(
            txids.iter().any(|t| e["txid"] == t.as_str()),
            "unknown txid in {e}"
        );
    }
    node.stop()?;
    Ok(())
}

/// A release-style stripped bitcoind: the DWARF (its CNode layout) comes from the
/// debug file its `.gnu_debuglink` names, and tracing works as with symbols.
fn stripped_binary_uses_its_debug_file() -> Result<()> {
    // The twin is built stripped with a debug file beside it, as a release is.
    let node = Node::start_twin(Path::new(TWIN_STRIPPED), &[])?;
    let tracer = Tracer::start(node.pid(), &["-v"])?;
    let mut a = connect(&node)?;
    sync(&mut a, 1)?;
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    ensure!(
        out.stderr.contains("byte counters read from its CNodes")
            && out.stderr.contains("twin.debug"),
        "DWARF not found in the debug file:\n{}",
        out.stderr
    );
    // And with --debug-file naming it explicitly.
    let tracer = Tracer::start(node.pid(), &["-v", "--debug-file", TWIN_DEBUG])?;
    let out = tracer.stop()?;
    ensure!(
        out.stderr.contains("byte counters read from its CNodes"),
        "{}",
        out.stderr
    );
    // A debug file of another build is refused with a clear error.
    let e = Command::new(peerlog_bin()?)
        .args([
            "trace",
            "--pid",
            &node.pid().to_string(),
            "--debug-file",
            "/bin/sh",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&e.stderr);
    ensure!(
        !e.status.success() && stderr.contains("another build"),
        "{stderr}"
    );
    node.stop()?;
    Ok(())
}

/// With the consumer paused, a small ring buffer overflows: of three
/// 4,000,000-byte messages the first fits the 4 MiB ring and is captured
/// whole, the other two lose chunks and are reported as incomplete, not
/// written. Every message missing from the capture is counted in the
/// summary: an incomplete message (one lost chunk each, reported on
/// stderr) or a lost message event (the small ones that may come while
/// the ring is still full). Nothing else is lost, messages after the
/// overflow are captured again, and every record is whole.
fn ring_overflow_is_counted_never_silent() -> Result<()> {
    let node = Node::start()?;
    let (_dir, capture, tracer) =
        trace_to_capture(&node, &["--ring-size", "4", "--no-accounting"])?;
    let mut a = connect(&node)?;
    let local = a.local_addr();
    sync(&mut a, 1)?;
    // SAFETY: pausing our own child; resumed below.
    unsafe { libc::kill(tracer.pid(), libc::SIGSTOP) };
    let big = vec![0x42u8; MAX_MESSAGE];
    for _ in 0..3 {
        a.send_raw("peerlogbig", &big)?;
    }
    sync(&mut a, 2)?;
    unsafe { libc::kill(tracer.pid(), libc::SIGCONT) };
    // Once the first message is on disk, peerlog has emptied most of the
    // ring: what follows fits.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !read_capture(&capture)?
        .iter()
        .flat_map(|f| &f.records)
        .any(|r| r.msg_type == "peerlogbig")
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "the message that fits the ring was not captured within 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    sync(&mut a, 3)?;
    a.drain(Duration::from_millis(300))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let transcript = a.take_transcript();
    drop(a);
    thread::sleep(Duration::from_millis(300));
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);

    let files = read_capture(&capture)?;
    for f in &files {
        ensure!(
            f.truncated.is_none(),
            "{} ends in a cut record",
            f.path.display()
        );
    }
    let ours = capture_of(&files, local);
    let captured =
        |dir: peerlog_common::Direction| -> Vec<&peerlog::formats::capture::CaptureRecord> {
            ours.iter()
                .filter(|f| f.direction == dir)
                .flat_map(|f| &f.records)
                .collect()
        };
    let (received, sent) = (
        captured(peerlog_common::Direction::Inbound),
        captured(peerlog_common::Direction::Outbound),
    );
    let big_records: Vec<_> = received
        .iter()
        .filter(|r| r.msg_type == "peerlogbig")
        .collect();
    ensure!(
        big_records.len() == 1 && big_records[0].payload == big,
        "{} peerlogbig records captured ({:?} bytes); expected the one that fits the ring, whole",
        big_records.len(),
        big_records
            .iter()
            .map(|r| r.payload.len())
            .collect::<Vec<_>>()
    );
    let missing_received = missing_from(&received, transcript.sent())?;
    let missing_sent = missing_from(&sent, transcript.received())?;
    for (list, msg_type) in [(&received, "ping"), (&sent, "pong")] {
        ensure!(
            list.iter()
                .any(|r| r.msg_type == msg_type && r.payload == 3u64.to_le_bytes()),
            "the {msg_type} after the overflow is not captured"
        );
    }

    let losses = loss_causes(&out.stderr)?;
    let lost = |cause: &str| losses.get(cause).copied().unwrap_or(0);
    let reported = out
        .stderr
        .lines()
        .filter(|l| l.contains(" bytes: only ") && l.contains("not written"))
        .count() as u64;
    let big_reported = out
        .stderr
        .lines()
        .filter(|l| l.contains(" peerlogbig of 4000000 bytes: only "))
        .count() as u64;
    let missing = (missing_received + missing_sent) as u64;
    ensure!(
        big_reported >= 1
            && lost("incomplete_messages") == reported
            && lost("ring_full_chunk") == reported
            && lost("incomplete_messages") + lost("ring_full_message") == missing
            && losses.keys().all(|c| [
                "incomplete_messages",
                "ring_full_chunk",
                "ring_full_message"
            ]
            .contains(&c.as_str())),
        "{missing} messages missing from the capture ({missing_received} received, \
         {missing_sent} sent), {reported} reported incomplete ({big_reported} of them \
         peerlogbig); losses {losses:?}:\n{}",
        out.stderr
    );
    node.stop()?;
    Ok(())
}

/// How many of the client's messages (`expected`, in order) are missing
/// from a capture, which must hold the others in the same order.
fn missing_from<'a>(
    captured: &[&peerlog::formats::capture::CaptureRecord],
    expected: impl Iterator<Item = &'a peerlog::p2p::TranscriptEntry>,
) -> Result<usize> {
    let expected: Vec<_> = expected.collect();
    let mut rest = expected.iter();
    for (i, r) in captured.iter().enumerate() {
        ensure!(
            rest.any(|e| e.msg_type == r.msg_type && e.payload == r.payload),
            "captured message {i} ({}, {} bytes) is not among the client's {:?}",
            r.msg_type,
            r.payload.len(),
            expected.iter().map(|e| &e.msg_type).collect::<Vec<_>>()
        );
    }
    Ok(expected.len() - captured.len())
}

/// The summary's losses by cause: `events lost: N (cause=n, ...)`; checks
/// that they add up to N.
fn loss_causes(stderr: &str) -> Result<std::collections::BTreeMap<String, u64>> {
    let line = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("events lost:"))
        .with_context(|| format!("no summary:\n{stderr}"))?
        .trim();
    let (total, causes) = match line.split_once(' ') {
        Some((total, causes)) => (total, causes.trim_matches(|c| c == '(' || c == ')')),
        None => (line, ""),
    };
    let mut by_cause = std::collections::BTreeMap::new();
    for cause in causes.split(", ").filter(|c| !c.is_empty()) {
        let (name, n) = cause
            .split_once('=')
            .with_context(|| format!("loss cause {cause:?} in {line:?}"))?;
        by_cause.insert(name.to_string(), n.parse()?);
    }
    let total: u64 = total.parse()?;
    // Every loss counted once: a lost payload chunk is counted as the
    // incomplete message it makes, so the chunk-level causes are listed but
    // not added.
    let counted: u64 = by_cause
        .iter()
        .filter(|(cause, _)| {
            !peerlog_common::LossCause::ALL
                .iter()
                .any(|c| c.makes_incomplete_message() && c.name() == cause.as_str())
        })
        .map(|(_, n)| n)
        .sum();
    ensure!(
        counted == total,
        "the causes do not add up to {total}, each loss once: {line:?}"
    );
    Ok(by_cause)
}

fn missing_privileges_are_named() -> Result<()> {
    let node = Node::start()?;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(peerlog_bin()?)
        .args(["trace", "--pid", &node.pid().to_string()])
        .output()
        .context("running setpriv (util-linux)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(4),
        "peerlog without privileges: {} (expected exit code 4)",
        out.status
    );
    ensure!(
        stderr.contains("CAP_SYS_ADMIN") && stderr.contains("setcap cap_sys_admin"),
        "privileges not named:\n{stderr}"
    );
    node.stop()?;
    Ok(())
}

/// Bad targets are named in the error: a pid without a process, a process
/// without USDT, a capture directory that cannot be created. Finding out
/// needs the privileges of a trace (reading other processes' binaries).
fn bad_targets_get_clear_errors() -> Result<()> {
    let e = failing_peerlog(&["trace", "--pid", "999999999"], 3)?;
    ensure!(e.contains("no process with pid 999999999"), "{e}");
    // A process without USDT: ourselves.
    let e = failing_peerlog(&["trace", "--pid", &std::process::id().to_string()], 3)?;
    ensure!(e.contains("without USDT"), "{e}");
    // A capture directory that cannot be created: under a regular file.
    let node = Node::start()?;
    let file = tempfile::NamedTempFile::new()?;
    let bad = file.path().join("capture");
    let e = failing_peerlog(
        &[
            "trace",
            "--pid",
            &node.pid().to_string(),
            "--capture",
            bad.to_str().unwrap(),
        ],
        5,
    )?;
    ensure!(
        e.contains(bad.to_str().unwrap()),
        "error does not name the directory: {e}"
    );
    node.stop()?;
    Ok(())
}

/// Bad arguments are refused before anything is loaded: no privileges needed.
fn bad_arguments_get_clear_errors() -> Result<()> {
    let e = failing_peerlog(&["trace", "--pid", "1", "--ring-size", "3"], 2)?;
    ensure!(e.contains("power of two"), "{e}");
    let e = failing_peerlog(&["trace", "--pid", "1", "--peer", "net=mars"], 2)?;
    ensure!(e.contains("mars"), "{e}");
    Ok(())
}

/// Runs peerlog, which must fail with exit code `code` (README, "Exit
/// codes"): its stderr.
fn failing_peerlog(args: &[&str], code: i32) -> Result<String> {
    let out = Command::new(peerlog_bin()?).args(args).output()?;
    ensure!(
        out.status.code() == Some(code),
        "peerlog {args:?}: {} (expected exit code {code})",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}
