//! Tests of the capture toolbox: `peerlog show`, `stats`, `convert` and
//! `replay`, on the checked-in fixture capture (no eBPF needed) and on
//! captures of the twin node taken with `peerlog trace` (eBPF), plus the
//! bounded fuzzer of the capture and pcapng readers.
//!
//! Tests that cannot run here (no eBPF, no tshark; the twin's tests when
//! `BITCOIND` is set) are reported as ignored, with the reason printed,
//! never as passed; with `PEERLOG_REQUIRE_EBPF=1` missing eBPF fails them. `PEERLOG_BLESS=1` rewrites the
//! fixture and its expected outputs (review the diff!);
//! `PEERLOG_FUZZ_SECS=N` lets the fuzzer run for N seconds (default 10).

use std::{
    collections::BTreeMap,
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bitcoin::consensus::encode::serialize;
use bitcoin::p2p::message::NetworkMessage;
use libtest_mimic::Arguments;
use peerlog::{
    formats::capture::{
        CaptureLayout, CaptureReader, CaptureRecord, CaptureWriter, MESSAGE_TYPE_SIZE,
    },
    formats::pcapng::{read::parse_pcapng, write::write_pcapng},
    formats::timeline::{Selection, Timeline},
    toolbox::decode,
    toolbox::show,
};
use peerlog_common::Direction;
use peerlog_tests::{fixture, *};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn main() {
    let args = Arguments::from_args();
    if env::var_os("PEERLOG_BLESS").is_some() {
        if let Err(e) = bless() {
            eprintln!("PEERLOG_BLESS failed: {e:#}");
            std::process::exit(1);
        }
    }
    let ebpf = ebpf_skip();
    let tshark = tshark_unavailable().map(Skip::ignore);
    let twin =
        twin_only("it starts twins itself, for their 4,000,000-byte block and known answers");
    let tests: [TestCase; 14] = [
        ("fixture_is_reproducible", fixture_is_reproducible, &[]),
        (
            "show_json_matches_expected",
            show_json_matches_expected,
            &[],
        ),
        (
            "show_text_matches_expected",
            show_text_matches_expected,
            &[],
        ),
        ("show_selects_peers_types_and_times", show_selects, &[]),
        (
            "truncated_and_garbage_files",
            truncated_and_garbage_files,
            &[],
        ),
        ("stats_of_the_fixture", stats_of_the_fixture, &[]),
        (
            "pcapng_round_trip_of_the_fixture",
            pcapng_round_trip_of_the_fixture,
            &[],
        ),
        (
            "jsonl_is_show_json_by_line",
            jsonl_is_show_json_by_line,
            &[],
        ),
        (
            "tshark_decodes_the_fixture",
            tshark_decodes_the_fixture,
            &[&tshark],
        ),
        (
            "replay_reports_a_disconnection",
            replay_reports_a_disconnection,
            &[&twin],
        ),
        (
            "replay_refuses_remote_destinations",
            replay_refuses_remote,
            &[],
        ),
        (
            "twin_capture_through_pcapng_and_tshark",
            twin_capture_through_pcapng,
            &[&ebpf, &tshark, &twin],
        ),
        (
            "replay_into_the_twin_reproduces_responses",
            replay_reproduces_responses,
            &[&ebpf, &twin],
        ),
        ("fuzz_capture_and_pcapng_readers", fuzz_readers, &[]),
    ];
    run_suite(&args, tests);
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `tests/`, the directory the fixture paths are relative to.
fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The checked-in fixture capture, relative to [`crate_dir`] (so outputs
/// that name it do not depend on where the repository is).
const FIXTURE: &str = "fixtures/capture";
const EXPECTED_JSON: &str = "fixtures/show.json";
const EXPECTED_TEXT: &str = "fixtures/show.txt";

/// Runs `peerlog ARGS` in [`crate_dir`].
fn peerlog(args: &[&str]) -> Result<Output> {
    Command::new(peerlog_bin()?)
        .args(args)
        .current_dir(crate_dir())
        .output()
        .context("running peerlog")
}

/// Runs `peerlog ARGS`, which must succeed; returns its stdout.
fn peerlog_ok(args: &[&str]) -> Result<String> {
    let out = peerlog(args)?;
    ensure!(
        out.status.success(),
        "peerlog {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Why tshark cannot run here, if it cannot.
fn tshark_unavailable() -> Option<String> {
    match Command::new("tshark").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("tshark --version failed ({})", out.status)),
        Err(e) => Some(format!(
            "tshark is not installed ({e}); `cargo xtask setup` installs it"
        )),
    }
}

/// Checks with tshark that its Bitcoin dissector finds exactly the
/// messages of `timeline` in `pcapng`, in order, and that no packet has a
/// bad checksum or a TCP analysis warning (retransmission, lost segment,
/// ...). A message Wireshark calls malformed must be one it cannot dissect:
/// a payload that does not decode (peerlog says so too) or a transaction
/// in BIP 144 (segwit) serialization, which Wireshark's `tx` dissector
/// predates.
fn check_with_tshark(pcapng: &Path, timeline: &Timeline, decode_as: bool) -> Result<()> {
    // Signet's and testnet4's magics are unknown to Wireshark: decode the
    // node's port as Bitcoin, as the README says.
    let decode_as: &[&str] = if decode_as {
        &["-d", "tcp.port==8333,bitcoin"]
    } else {
        &[]
    };
    let out = Command::new("tshark")
        .args(["-n", "-r", path_str(pcapng)])
        .args(decode_as)
        .args(["-Y", "bitcoin", "-T", "fields"])
        .args([
            "-e",
            "frame.number",
            "-e",
            "bitcoin.command",
            "-e",
            "_ws.malformed",
        ])
        .output()
        .context("running tshark")?;
    ensure!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let dissected: Vec<(&str, &str, bool)> = stdout
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let frame = f.next().unwrap_or("");
            let command = f.next().unwrap_or("");
            (frame, command, f.next().is_some_and(|m| !m.is_empty()))
        })
        .collect();
    let types: Vec<&str> = timeline
        .messages
        .iter()
        .map(|m| m.record.msg_type.as_str())
        .collect();
    let commands: Vec<&str> = dissected.iter().map(|d| d.1).collect();
    ensure!(
        commands == types,
        "tshark decoded {commands:?}, the capture has {types:?}"
    );
    for ((frame, command, malformed), m) in dissected.iter().zip(&timeline.messages) {
        let payload = &m.record.payload;
        let segwit_tx = *command == "tx" && payload.get(4..6) == Some(&[0, 1]);
        let undecodable = decode::decode(command, payload).error.is_some();
        ensure!(
            !malformed || segwit_tx || undecodable,
            "tshark calls the {command} message in frame {frame} malformed"
        );
    }
    let flagged = Command::new("tshark")
        .args(["-n", "-r", path_str(pcapng)])
        .args(decode_as)
        .args([
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
        ])
        .args([
            "-Y",
            "tcp.analysis.flags || tcp.checksum.status == 0 || ip.checksum.status == 0",
        ])
        .output()
        .context("running tshark")?;
    let listed = String::from_utf8_lossy(&flagged.stdout);
    ensure!(
        flagged.status.success() && listed.trim().is_empty(),
        "tshark finds bad checksums or TCP analysis warnings:\n{listed}{}",
        String::from_utf8_lossy(&flagged.stderr)
    );
    Ok(())
}

fn load(path: &Path) -> Result<Timeline> {
    Timeline::load(path, &Selection::default())
}

/// (peer address, direction, time, type, payload) of every message, in order.
type Flat = Vec<(String, Direction, u64, String, Vec<u8>)>;

fn flatten(t: &Timeline) -> Flat {
    t.messages
        .iter()
        .map(|m| {
            (
                t.peers[m.peer].addr.clone(),
                m.direction,
                m.record.time_micros,
                m.record.msg_type.clone(),
                m.record.payload.clone(),
            )
        })
        .collect()
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.strip_prefix(dir)?.to_path_buf(), fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

/// Rewrites the fixture capture and the expected outputs.
fn bless() -> Result<()> {
    let dir = crate_dir().join(FIXTURE);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fixture::write_fixture_capture(&dir)?;
    let json = peerlog_ok(&["show", "--json", FIXTURE])?;
    fs::write(crate_dir().join(EXPECTED_JSON), json)?;
    let text = peerlog_ok(&["show", FIXTURE])?;
    fs::write(crate_dir().join(EXPECTED_TEXT), text)?;
    eprintln!("PEERLOG_BLESS: rewrote {FIXTURE}, {EXPECTED_JSON} and {EXPECTED_TEXT}");
    Ok(())
}

/// Compares two texts, naming the first line that differs.
fn ensure_same_text(what: &str, got: &str, expected: &str) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    for (i, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
        if g != e {
            bail!("{what} differs at line {}:\n  got:      {g}\n  expected: {e}\n(PEERLOG_BLESS=1 rewrites expectations after a deliberate change)", i + 1);
        }
    }
    bail!(
        "{what}: {} lines, expected {}",
        got.lines().count(),
        expected.lines().count()
    )
}

// ---------------------------------------------------------------------------
// Fixture tests (no eBPF)
// ---------------------------------------------------------------------------

/// The checked-in capture is exactly what the generator makes, so it can
/// be reviewed as code and regenerated.
fn fixture_is_reproducible() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    fixture::write_fixture_capture(tmp.path())?;
    let made = tree(tmp.path())?;
    let checked_in = tree(&crate_dir().join(FIXTURE))?;
    ensure!(
        made.keys().collect::<Vec<_>>() == checked_in.keys().collect::<Vec<_>>(),
        "fixture files differ: generated {:?}, checked in {:?}",
        made.keys(),
        checked_in.keys()
    );
    for (path, bytes) in &made {
        ensure!(
            checked_in[path] == *bytes,
            "{} differs from the generator's output",
            path.display()
        );
    }
    let total: usize = made.values().map(Vec::len).sum();
    ensure!(total < 16 * 1024, "the fixture grew to {total} bytes");
    Ok(())
}

fn show_json_matches_expected() -> Result<()> {
    let got = peerlog_ok(&["show", "--json", FIXTURE])?;
    let expected = fs::read_to_string(crate_dir().join(EXPECTED_JSON))?;
    ensure_same_text("show --json", &got, &expected)?;

    // What message-capture-parser.py prints is all there, with its rules.
    let messages: Vec<serde_json::Value> = serde_json::from_str(&got)?;
    ensure!(messages.len() > 40, "only {} messages", messages.len());
    let mut last_time = 0;
    for m in &messages {
        for key in ["direction", "time", "size", "msgtype"] {
            ensure!(m.get(key).is_some(), "no {key} in {m}");
        }
        let time = m["time"].as_u64().context("time")?;
        ensure!(time >= last_time, "not sorted by time at {m}");
        last_time = time;
        let size = m["size"].as_u64().context("size")?;
        ensure!(
            (size == 0) == m.get("body").is_none(),
            "body present iff the payload is not empty: {m}"
        );
    }
    let unknown = messages
        .iter()
        .find(|m| m["msgtype"] == "peerlogtest")
        .context("no unknown type")?;
    ensure!(
        unknown["error"] == decode::UNRECOGNIZED && unknown["body"] == "deadbeef",
        "{unknown}"
    );
    let broken = messages
        .iter()
        .find(|m| m["msgtype"] == "ping" && m["size"] == 3)
        .context("no undecodable ping")?;
    ensure!(
        broken["error"] == decode::UNDECODABLE && broken["body"] == "010203",
        "{broken}"
    );
    let v6 = messages
        .iter()
        .find(|m| m["peer"] == fixture::PEER_V6)
        .context("no v6 peer")?;
    ensure!(v6["peer_id"] == 7 && v6["conn_type"] == "outbound", "{v6}");
    Ok(())
}

fn show_text_matches_expected() -> Result<()> {
    let got = peerlog_ok(&["show", FIXTURE])?;
    let expected = fs::read_to_string(crate_dir().join(EXPECTED_TEXT))?;
    ensure_same_text("show", &got, &expected)?;
    // Unknown types are shown raw.
    ensure!(
        got.lines()
            .any(|l| l.contains("peerlogtest") && l.ends_with("raw deadbeef")),
        "{got}"
    );
    Ok(())
}

fn show_selects() -> Result<()> {
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&peerlog_ok(&["show", "--json", FIXTURE])?)?;
    let count = |args: &[&str]| -> Result<usize> {
        let mut full = vec!["show", FIXTURE];
        full.extend_from_slice(args);
        Ok(peerlog_ok(&full)?.lines().count())
    };
    let of_peer = |addr: &str| all.iter().filter(|m| m["peer"] == addr).count();
    ensure!(count(&["--peer", "127.0.0.1"])? == of_peer(fixture::PEER_V4));
    ensure!(count(&["--peer", "onion"])? == of_peer(fixture::PEER_ONION));
    ensure!(count(&["--peer", "7"])? == of_peer(fixture::PEER_V6));
    ensure!(count(&["--peer", "2001:db8::/32"])? == of_peer(fixture::PEER_V6));
    ensure!(count(&["--peer", "inbound"])? == of_peer(fixture::PEER_V4));
    ensure!(
        count(&["--peer", "outbound", "--peer", "onion"])?
            == of_peer(fixture::PEER_V6) + of_peer(fixture::PEER_ONION)
    );
    let pings = all
        .iter()
        .filter(|m| m["msgtype"] == "ping" || m["msgtype"] == "pong")
        .count();
    ensure!(count(&["--msg-type", "ping", "--msg-type", "pong"])? == pings);
    // [100 ms, 500 ms) after the start: the v6 peer's messages exactly.
    ensure!(
        count(&[
            "--since",
            "2023-11-14T22:13:20.100Z",
            "--until",
            "1700000000.5"
        ])? == of_peer(fixture::PEER_V6)
    );
    // A bad filter is a usage error naming the term.
    let out = peerlog(&["show", FIXTURE, "--peer", "sideways=1"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("sideways"));
    Ok(())
}

fn truncated_and_garbage_files() -> Result<()> {
    // A record cut short at the end: reported, and everything before it used.
    let tmp = tempfile::tempdir()?;
    let capture = tmp.path().join("capture");
    fixture::write_fixture_capture(&capture)?;
    let file = capture.join("127.0.0.1_50001").join("msgs_recv.dat");
    let mut bytes = fs::read(&file)?;
    let whole = bytes.len();
    bytes.extend_from_slice(&[0x40, 0x42, 0x0f, 0, 0, 0, 0, 0, b'i', b'n', b'v', 0, 0, 0]);
    fs::write(&file, &bytes)?;
    let out = peerlog(&["show", "--json", path_str(&capture)])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{stderr}");
    ensure!(
        stderr.contains(&file.display().to_string())
            && stderr.contains(&format!("at byte offset {whole}, is cut short"))
            && stderr.contains("records before it are used"),
        "{stderr}"
    );
    let expected = fs::read_to_string(crate_dir().join(EXPECTED_JSON))?;
    ensure_same_text(
        "show --json of a truncated capture",
        &String::from_utf8(out.stdout)?,
        &expected,
    )?;

    // Garbage: a clear error naming the file and the offset.
    let garbage = tmp.path().join("garbage").join("10.0.0.1_8333");
    fs::create_dir_all(&garbage)?;
    let mut bad = fs::read(capture.join("127.0.0.1_50001").join("msgs_sent.dat"))?;
    bad.truncate(bad.len().min(200));
    let first_record_len = 24 + u32::from_le_bytes(bad[20..24].try_into()?) as usize;
    bad[first_record_len + 8] = 0x07; // a control character in the second record's type
    fs::write(garbage.join("msgs_sent.dat"), &bad)?;
    let garbage_root = tmp.path().join("garbage");
    for args in [&["show"][..], &["stats"], &["convert", "--to", "jsonl"]] {
        let mut full: Vec<&str> = args.to_vec();
        full.push(path_str(&garbage_root));
        if args[0] == "convert" {
            full.push("-");
        }
        let out = peerlog(&full)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{full:?} succeeded on garbage");
        ensure!(
            stderr.contains("msgs_sent.dat")
                && stderr.contains(&format!("corrupt at byte offset {first_record_len}")),
            "{full:?}: {stderr}"
        );
    }
    Ok(())
}

fn stats_of_the_fixture() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let svg = tmp.path().join("rate.svg");
    let json: serde_json::Value = serde_json::from_str(&peerlog_ok(&[
        "stats",
        "--json",
        FIXTURE,
        "--svg",
        path_str(&svg),
    ])?)?;
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&peerlog_ok(&["show", "--json", FIXTURE])?)?;
    let total = json["recv"]["msgs"].as_u64().unwrap() + json["sent"]["msgs"].as_u64().unwrap();
    ensure!(total == all.len() as u64, "{total} vs {}", all.len());
    let peers = json["peers"].as_array().context("peers")?;
    ensure!(peers.len() == 3);
    // Top talker first: the v4 peer carries the block.
    ensure!(peers[0]["peer"] == fixture::PEER_V4, "{}", peers[0]["peer"]);
    let g = &peers[0]["inv_getdata"];
    ensure!(
        g["peer_announced"] == 2 && g["node_requested"] == 2 && g["node_request_ratio"] == 1.0,
        "{g}"
    );
    ensure!(g["node_announced"] == 1 && g["peer_requested"] == 1, "{g}");
    let l = &json["latency"];
    // getdata at 22 ms → tx at 25 and 27 ms; getdata at 210 ms → tx at 260 ms.
    ensure!(l["getdata_tx_node_asked"]["count"] == 3, "{l}");
    ensure!(l["getdata_tx_node_asked"]["min_us"] == 3000, "{l}");
    ensure!(
        l["getdata_tx_node_asked"]["max_us"]
            .as_u64()
            .unwrap()
            .abs_diff(50_000)
            < 100,
        "{l}"
    );
    ensure!(
        l["ping_pong_node_pinged"]["count"] == 2 && l["ping_pong_peer_pinged"]["count"] == 2,
        "{l}"
    );
    let svg_text = fs::read_to_string(&svg)?;
    ensure!(svg_text.starts_with("<svg") && svg_text.contains("messages per second"));

    let text = peerlog_ok(&["stats", FIXTURE])?;
    for needle in [
        "top talkers",
        "inv → getdata",
        "ping→pong, bitcoind pinged, peer answered: n=2",
        "messages per second",
    ] {
        ensure!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    Ok(())
}

fn pcapng_round_trip_of_the_fixture() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pcapng = tmp.path().join("fixture.pcapng");
    peerlog_ok(&["convert", FIXTURE, "--to", "pcapng", path_str(&pcapng)])?;
    // Read back directly: the same messages, peers, connections, times.
    let got = peerlog_ok(&["show", "--json", path_str(&pcapng)])?;
    let expected = fs::read_to_string(crate_dir().join(EXPECTED_JSON))?;
    ensure_same_text("show --json of the pcapng", &got, &expected)?;
    // And back into Bitcoin Core's format.
    let core = tmp.path().join("core");
    peerlog_ok(&[
        "convert",
        path_str(&pcapng),
        "--to",
        "core",
        path_str(&core),
    ])?;
    let original = load(&crate_dir().join(FIXTURE))?;
    let back = load(&core)?;
    ensure!(
        flatten(&original) == flatten(&back),
        "core → pcapng → core changed the messages"
    );
    ensure!(back.truncated.is_empty() && back.warnings.is_empty());
    // Into a non-empty directory it refuses, rather than appending.
    let out = peerlog(&[
        "convert",
        path_str(&pcapng),
        "--to",
        "core",
        path_str(&core),
    ])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not empty"));
    // Every network's magic round-trips too.
    for network in ["regtest", "signet", "testnet4"] {
        let p = tmp.path().join(format!("{network}.pcapng"));
        peerlog_ok(&[
            "convert",
            FIXTURE,
            "--to",
            "pcapng",
            "--network",
            network,
            path_str(&p),
        ])?;
        ensure!(flatten(&load(&p)?) == flatten(&original), "{network}");
    }
    Ok(())
}

fn jsonl_is_show_json_by_line() -> Result<()> {
    let lines = peerlog_ok(&["convert", FIXTURE, "--to", "jsonl", "-"])?;
    let from_lines: Vec<serde_json::Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let array: Vec<serde_json::Value> =
        serde_json::from_str(&peerlog_ok(&["show", "--json", FIXTURE])?)?;
    ensure!(from_lines == array);
    Ok(())
}

fn tshark_decodes_the_fixture() -> Result<()> {
    let original = load(&crate_dir().join(FIXTURE))?;
    let tmp = tempfile::tempdir()?;
    // main's and regtest's magics are recognized by the dissector on its
    // own; signet's needs "Decode As" on the node's port.
    for network in ["main", "regtest", "signet"] {
        let pcapng = tmp.path().join(format!("{network}.pcapng"));
        peerlog_ok(&[
            "convert",
            FIXTURE,
            "--to",
            "pcapng",
            "--network",
            network,
            path_str(&pcapng),
        ])?;
        check_with_tshark(&pcapng, &original, network == "signet")
            .with_context(|| format!("--network {network}"))?;
    }
    Ok(())
}

fn replay_refuses_remote() -> Result<()> {
    // Refused before anything is sent: no connection is attempted.
    let out = peerlog(&[
        "replay",
        FIXTURE,
        "--peer",
        "127.0.0.1",
        "--to",
        "192.0.2.1:8333",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("--allow-remote"),
        "{stderr}"
    );
    // Several peers selected: it asks to choose.
    let out = peerlog(&["replay", FIXTURE, "--to", "127.0.0.1:1"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("choose one with --peer"),
        "{stderr}"
    );
    Ok(())
}

/// A peer that sends `wtxidrelay` after `verack` is disconnected by Bitcoin
/// Core (and the twin); the replay reproduces that and says so.
fn replay_reports_a_disconnection() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let capture = tmp.path().join("capture");
    let mut writer = CaptureWriter::new(&capture, CaptureLayout::Core)?;
    let peer = "127.0.0.1:50002";
    let msgs = [
        NetworkMessage::Verack,
        NetworkMessage::Ping(1),
        NetworkMessage::WtxidRelay,
        NetworkMessage::Ping(2),
    ];
    for (i, msg) in msgs.iter().enumerate() {
        let record = CaptureRecord {
            time_micros: fixture::START + i as u64 * 1000,
            msg_type: msg.command().to_string(),
            payload: serialize(msg),
        };
        writer.append(peer, (0, 0), true, &record)?;
    }
    drop(writer);

    let node = Node::start_twin(Path::new(TWIN), &[])?;
    let out_dir = tmp.path().join("replay");
    let out = peerlog(&[
        "replay",
        path_str(&capture),
        "--to",
        &node.p2p_addr.to_string(),
        "--speed",
        "max",
        "--capture",
        path_str(&out_dir),
    ])?;
    node.stop()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("skipped: verack 1")
            && stdout.contains("connection: the node disconnected"),
        "{stdout}"
    );
    // The node answered the ping before the misbehaviour, not the one after.
    let replayed = load(&out_dir)?;
    let pongs: Vec<&[u8]> = replayed
        .messages
        .iter()
        .filter(|m| m.direction == Direction::Outbound && m.record.msg_type == "pong")
        .map(|m| m.record.payload.as_slice())
        .collect();
    ensure!(pongs == [&1u64.to_le_bytes()[..]], "{pongs:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Twin node tests (eBPF)
// ---------------------------------------------------------------------------

/// Traces one client connection to a fresh twin node through the standard
/// traffic; returns the capture (per-connection layout) and the client's
/// address.
fn twin_capture(dir: &Path) -> Result<(PathBuf, std::net::SocketAddr)> {
    let node = Node::start_twin(Path::new(TWIN), &[])?;
    let capture = dir.join("capture");
    let tracer = Tracer::start(
        node.pid(),
        &[
            "--capture",
            path_str(&capture),
            "--capture-layout",
            "per-connection",
        ],
    )?;
    let mut peer = connect(&node)?;
    standard_traffic(&node, &mut peer)?;
    let local = peer.local_addr();
    drop(peer);
    thread::sleep(Duration::from_millis(500));
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog trace failed: {}", out.stderr);
    node.stop()?;
    Ok((capture, local))
}

fn twin_capture_through_pcapng() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (capture, _) = twin_capture(tmp.path())?;
    let original = load(&capture)?;
    ensure!(
        original
            .messages
            .iter()
            .any(|m| m.record.payload.len() == MAX_MESSAGE),
        "no 4,000,000-byte message in the twin's capture"
    );
    let pcapng = tmp.path().join("twin.pcapng");
    peerlog_ok(&[
        "convert",
        path_str(&capture),
        "--to",
        "pcapng",
        path_str(&pcapng),
    ])?;

    // tshark's Bitcoin dissector decodes every message, the 4 MB ones too.
    check_with_tshark(&pcapng, &original, false)?;

    // core → pcapng → core: the same messages, in both layouts.
    let core = tmp.path().join("back");
    peerlog_ok(&[
        "convert",
        path_str(&pcapng),
        "--to",
        "core",
        "--capture-layout",
        "per-connection",
        path_str(&core),
    ])?;
    ensure!(
        tree(&core)? == tree(&capture)?,
        "the per-connection capture did not survive pcapng byte for byte"
    );
    Ok(())
}

fn replay_reproduces_responses() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (capture, client) = twin_capture(tmp.path())?;
    let original = load(&capture)?;

    // A fresh twin, so that its mempool is as empty as the first one's was.
    let node = Node::start_twin(Path::new(TWIN), &[])?;
    let out_dir = tmp.path().join("replay");
    let report: serde_json::Value = serde_json::from_str(&peerlog_ok(&[
        "replay",
        path_str(&capture),
        "--peer",
        &client.to_string(),
        "--to",
        &node.p2p_addr.to_string(),
        "--speed",
        "max",
        "--wait",
        "1",
        "--capture",
        path_str(&out_dir),
        "--json",
    ])?)?;
    node.stop()?;
    ensure!(report["outcome"]["kind"] == "connected", "{report}");
    ensure!(
        report["responses"] == report["original_responses"],
        "{report}"
    );

    // Message for message: what the node sent then and now. Its version
    // (time, nonce) and its pings (random nonces) differ by nature; the
    // replay's final ping is answered by one more pong.
    let replayed = load(&out_dir)?;
    let barrier = report["barrier_nonce"]
        .as_u64()
        .context("barrier_nonce")?
        .to_le_bytes();
    let from_node = |t: &Timeline| -> Vec<(String, Vec<u8>)> {
        t.messages
            .iter()
            .filter(|m| m.direction == Direction::Outbound)
            .filter(|m| !(m.record.msg_type == "pong" && m.record.payload == barrier))
            .map(|m| {
                let varies = ["version", "ping"].contains(&m.record.msg_type.as_str());
                (
                    m.record.msg_type.clone(),
                    if varies {
                        vec![]
                    } else {
                        m.record.payload.clone()
                    },
                )
            })
            .collect()
    };
    let (then, now) = (from_node(&original), from_node(&replayed));
    ensure!(
        then == now,
        "the node answered differently: then {:?}, now {:?}",
        then.iter().map(|m| &m.0).collect::<Vec<_>>(),
        now.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    ensure!(then.iter().any(|m| m.0 == "block") && then.iter().any(|m| m.0 == "getdata"));
    Ok(())
}

// ---------------------------------------------------------------------------
// The fuzzer
// ---------------------------------------------------------------------------

/// How long the fuzzer runs: `PEERLOG_FUZZ_SECS`, default 10 s (CI).
fn fuzz_budget() -> Duration {
    let secs = env::var("PEERLOG_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    Duration::from_secs_f64(secs)
}

/// One edit of a valid input.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let n = bytes.len().max(1);
        match edit {
            Edit::Flip(i, x) => {
                if let Some(b) = bytes.get_mut(i % n) {
                    *b ^= x | 1;
                }
            }
            Edit::Cut(i) => bytes.truncate(i % (n + 1)),
            Edit::Insert(i, more) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Edit::Remove(i, len) => {
                let at = i % n;
                let end = (at + len % 64).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            4 => (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Edit::Flip(i, x)),
            1 => any::<usize>().prop_map(Edit::Cut),
            2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40)).prop_map(|(i, v)| Edit::Insert(i, v)),
            2 => (any::<usize>(), any::<usize>()).prop_map(|(i, l)| Edit::Remove(i, l)),
        ],
        0..6,
    )
}

/// Reads capture bytes like the commands do: records until the first
/// error, which must point inside the input; then shows, decodes, and
/// round-trips the records through pcapng.
fn check_capture_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut reader = CaptureReader::new(bytes);
    let mut records = Vec::new();
    for item in reader.by_ref() {
        match item {
            Ok(r) => {
                prop_assert!(r.msg_type.len() <= MESSAGE_TYPE_SIZE);
                records.push(r);
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(
                    text.contains("byte offset"),
                    "error without an offset: {}",
                    text
                );
            }
        }
    }
    prop_assert!(reader.offset() <= bytes.len() as u64);
    let file = peerlog::formats::capture::CaptureFile {
        path: PathBuf::from("fuzz/10.0.0.1_8333/msgs_recv.dat"),
        peer_addr: Some("10.0.0.1:8333".into()),
        connection: None,
        direction: Direction::Inbound,
        records,
        truncated: None,
    };
    let timeline = Timeline::from_files(Path::new("fuzz"), vec![file], &Selection::default());
    let mut shown = Vec::new();
    show::write_json(&timeline, &mut shown).map_err(|e| TestCaseError::fail(e.to_string()))?;
    show::write_text(&timeline, &mut shown).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut pcapng = Vec::new();
    write_pcapng(&timeline, bitcoin::Network::Bitcoin, &mut pcapng)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back = parse_pcapng(&pcapng, Path::new("fuzz.pcapng"))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back = Timeline::from_files(Path::new("fuzz"), back.files, &Selection::default());
    prop_assert_eq!(
        flatten(&back),
        flatten(&timeline),
        "pcapng round trip changed the records"
    );
    Ok(())
}

/// The fuzzer: arbitrary and mutated capture files, mutated pcapng files
/// and arbitrary payloads of every message type, for a bounded time. The
/// readers must never panic, errors must name offsets inside the input, and
/// whatever reads as records must survive a pcapng round trip unchanged.
fn fuzz_readers() -> Result<()> {
    let fixture_dir = crate_dir().join(FIXTURE);
    let seeds: Vec<Vec<u8>> = tree(&fixture_dir)?.into_values().collect();
    let fixture = load(&fixture_dir)?;
    let mut fixture_pcapng = Vec::new();
    write_pcapng(&fixture, bitcoin::Network::Regtest, &mut fixture_pcapng)?;
    let msg_types: Vec<String> = fixture
        .messages
        .iter()
        .map(|m| m.record.msg_type.clone())
        .chain(
            [
                "merkleblock",
                "blocktxn",
                "getblocktxn",
                "cfilter",
                "cfheaders",
                "filterload",
                "reject",
                "alert",
            ]
            .map(String::from),
        )
        .collect();

    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    // A runner counts its successes across runs: a fresh one per round,
    // each with its own random stream.
    let mut rngs = TestRunner::new(config.clone());
    let deadline = Instant::now() + fuzz_budget();
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        rounds += 1;
        let mut runner = TestRunner::new_with_rng(config.clone(), rngs.new_rng());
        // Arbitrary bytes as a capture file.
        runner
            .run(&prop::collection::vec(any::<u8>(), 0..400), |bytes| {
                check_capture_bytes(&bytes)
            })
            .map_err(|e| anyhow!("capture reader, arbitrary bytes: {e}"))?;
        // Valid capture files, edited.
        runner
            .run(&(0..seeds.len(), edits()), |(i, e)| {
                check_capture_bytes(&apply(seeds[i].clone(), &e))
            })
            .map_err(|e| anyhow!("capture reader, edited fixture: {e}"))?;
        // A valid pcapng file, edited: errors, never panics.
        runner
            .run(&edits(), |e| {
                let bytes = apply(fixture_pcapng.clone(), &e);
                if let Ok(capture) = parse_pcapng(&bytes, Path::new("fuzz.pcapng")) {
                    let t = Timeline::from_files(
                        Path::new("fuzz"),
                        capture.files,
                        &Selection::default(),
                    );
                    let mut out = Vec::new();
                    show::write_json(&t, &mut out)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                Ok(())
            })
            .map_err(|e| anyhow!("pcapng reader, edited file: {e}"))?;
        // Payloads of every known type, arbitrary or edited.
        runner
            .run(
                &(
                    0..msg_types.len(),
                    0..fixture.messages.len(),
                    edits(),
                    any::<bool>(),
                    prop::collection::vec(any::<u8>(), 0..200),
                ),
                |(t, m, e, edit, random)| {
                    let payload = if edit {
                        apply(fixture.messages[m].record.payload.clone(), &e)
                    } else {
                        random
                    };
                    let d = decode::decode(&msg_types[t], &payload);
                    prop_assert_eq!(d.body.is_none(), payload.is_empty() && d.error.is_none());
                    Ok(())
                },
            )
            .map_err(|e| anyhow!("payload decoder: {e}"))?;
    }
    eprintln!(
        "fuzz_capture_and_pcapng_readers: {rounds} rounds of 4 × 64 cases in {:?}",
        fuzz_budget()
    );
    Ok(())
}
