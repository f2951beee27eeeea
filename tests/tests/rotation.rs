//! Rotation and size caps of a running `peerlog trace`: captures rotated
//! every second under a size cap, read back whole and per generation by the
//! capture reader and by `peerlog show`, `stats` and `convert`; the stats log
//! rotated and written compactly, rebuilt into full lines; the HdrHistogram
//! logs rotated. Malformed messages reach the node meanwhile, which must
//! stay alive.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use libtest_mimic::Arguments;
use peerlog::{
    formats::capture::read_capture_tree,
    p2p::{HandshakeOptions, P2pClient},
    rotation::{list_generations, size_on_disk},
    stats::compact::Expander,
};
use peerlog_tests::{
    connect, ebpf_skip, malformed, peerlog_bin, run_suite, sync, Node, TestCase, Tracer, NETWORK,
};
use serde_json::Value;

fn main() {
    let args = Arguments::from_args();
    let ebpf = ebpf_skip();
    let tests: [TestCase; 1] = [(
        "rotated_outputs_read_back_whole",
        rotated_outputs_read_back_whole,
        &[&ebpf],
    )];
    run_suite(&args, tests);
}

/// The size cap of the capture in the test: about one of its one-second
/// generations under the ping traffic below (one holding a large malformed
/// message is alone over it, and then the only one kept).
const CAPTURE_CAP: u64 = 40_000;

/// Runs `peerlog ARGS`, failing with its stderr; returns its stdout.
fn peerlog(args: &[&Path]) -> Result<String> {
    let out = Command::new(peerlog_bin()?).args(args).output()?;
    ensure!(
        out.status.success(),
        "peerlog {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number after `label` in the summary line that holds it.
fn summary_number(stderr: &str, label: &str) -> Result<u64> {
    let rest = stderr
        .split_once(label)
        .with_context(|| format!("no {label:?} in the summary:\n{stderr}"))?
        .1;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .with_context(|| format!("no number after {label:?}"))
}

/// Records in the capture files under `dir`, checking none ends cut short.
fn complete_records(dir: &Path) -> Result<usize> {
    let files = read_capture_tree(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    for f in &files {
        ensure!(
            f.truncated.is_none(),
            "{} ends in a partial record",
            f.path.display()
        );
    }
    Ok(files.iter().map(|f| f.records.len()).sum())
}

fn rotated_outputs_read_back_whole() -> Result<()> {
    let node = Node::start()?;
    let tmp = tempfile::Builder::new().prefix("rotate-").tempdir()?;
    let capture = tmp.path().join("capture");
    let stats_log = tmp.path().join("stats.jsonl");
    let hdr = tmp.path().join("hdr");
    let cap = CAPTURE_CAP.to_string();
    let t = Tracer::start(
        node.pid(),
        &[
            "--capture",
            capture.to_str().unwrap(),
            "--capture-rotate",
            "1s",
            "--capture-max-bytes",
            &cap,
            "--stats-log",
            stats_log.to_str().unwrap(),
            "--stats-interval",
            "0.3",
            "--stats-rotate",
            "1s",
            "--stats-max-bytes",
            "100M",
            "--stats-log-compact",
            "--hdr-log",
            hdr.to_str().unwrap(),
            "--no-rpc",
        ],
    )?;

    // Malformed messages from other peers while the pings go on.
    let addr = node.p2p_addr;
    let attacker = thread::spawn(move || {
        let opts = HandshakeOptions {
            read_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        malformed::run(&malformed::cases(), || {
            Ok(P2pClient::connect(addr, NETWORK, opts.clone())?)
        })
    });
    let mut pinger = connect(&node)?;
    let started = Instant::now();
    let mut pings = 0u64;
    let mut read_live = 0;
    // Over five seconds, so over several one-second generations.
    while started.elapsed() < Duration::from_secs(5) {
        pings += 1;
        sync(&mut pinger, pings)?;
        thread::sleep(Duration::from_millis(2));
        // Reading the tree while the trace writes and deletes in it.
        if started.elapsed() > Duration::from_secs(2 + read_live) && read_live < 3 {
            read_live += 1;
            peerlog(&[Path::new("stats"), &capture])
                .context("reading the capture while it is written")?;
        }
    }
    attacker
        .join()
        .map_err(|_| anyhow::anyhow!("the malformed-message thread panicked"))?
        .context("malformed messages")?;
    // Alive: it still answers.
    pings += 1;
    sync(&mut pinger, pings).context("the node stopped answering")?;
    // Let the last stats interval see the last pings.
    thread::sleep(Duration::from_millis(700));
    let out = t.stop()?;
    ensure!(out.status.success(), "peerlog failed:\n{}", out.stderr);

    // The capture: several generations, the cap held, every file whole,
    // and what was kept is what was written less what was deleted.
    let written = summary_number(&out.stderr, "capture records:")?;
    let started_gens = summary_number(&out.stderr, "capture generations:")?;
    let deleted_records = summary_number(&out.stderr, "(with")?;
    let generations = list_generations(&capture, "")?;
    ensure!(
        started_gens >= 4 && !generations.is_empty(),
        "{started_gens} generations started, {} kept:\n{}",
        generations.len(),
        out.stderr
    );
    ensure!(
        (generations.len() as u64) < started_gens,
        "the cap of {CAPTURE_CAP} bytes deleted nothing:\n{}",
        out.stderr
    );
    let total = size_on_disk(&capture)?;
    let newest = size_on_disk(&generations.last().unwrap().1)?;
    ensure!(
        total <= CAPTURE_CAP || total == newest,
        "the kept generations take {total} bytes, over the cap of {CAPTURE_CAP}"
    );
    let kept = complete_records(&capture)?;
    ensure!(
        kept as u64 == written - deleted_records,
        "{kept} records kept, {written} written, {deleted_records} deleted"
    );
    let per_generation: usize = generations
        .iter()
        .map(|(_, dir)| complete_records(dir))
        .sum::<Result<usize>>()?;
    ensure!(per_generation == kept);

    // The toolbox over the whole tree and over one generation.
    for (source, records) in [
        (capture.clone(), kept),
        (
            generations[0].1.clone(),
            complete_records(&generations[0].1)?,
        ),
    ] {
        let converted = tmp.path().join("converted");
        let _ = fs::remove_dir_all(&converted);
        let to = Path::new("--to");
        peerlog(&[
            Path::new("convert"),
            to,
            Path::new("core"),
            &source,
            &converted,
        ])?;
        ensure!(
            complete_records(&converted)? == records,
            "convert of {} lost records",
            source.display()
        );
        let shown = peerlog(&[Path::new("show"), &source])?;
        ensure!(
            shown.lines().count() >= records,
            "show {} printed {} lines for {records} messages",
            source.display(),
            shown.lines().count()
        );
        let stats = peerlog(&[Path::new("stats"), &source])?;
        ensure!(
            stats.contains("ping"),
            "stats of {}:\n{stats}",
            source.display()
        );
    }

    // The stats log: one file per generation, each starting full, and the
    // compact lines rebuild into full lines whose ping count grows to what
    // the pinger sent.
    let logs: Vec<PathBuf> = list_generations(tmp.path(), "stats.jsonl.")?
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    ensure!(logs.len() >= 3, "{} stats log generations", logs.len());
    let mut expander = Expander::default();
    let mut last_pings = 0;
    let pinger_addr = pinger.local_addr().to_string();
    let mut deltas = 0;
    for log in &logs {
        let text = fs::read_to_string(log)?;
        for (i, line) in text.lines().enumerate() {
            let line: Value = serde_json::from_str(line)?;
            let is_delta = line.get("delta").is_some();
            ensure!(
                i > 0 || !is_delta,
                "{} does not start with a full line",
                log.display()
            );
            deltas += usize::from(is_delta);
            let full = expander.expand(line)?;
            let peers = full["peers"].as_array().context("no peers")?;
            if let Some(p) = peers.iter().find(|p| p["addr"] == pinger_addr.as_str()) {
                // A line taken between the peer's connection and its first
                // ping has no ping count yet: none so far. An expansion that
                // lost a count later would show as the count going back.
                let n = match &p["msgsrecv_per_msg"]["ping"] {
                    Value::Null => 0,
                    v => v
                        .as_u64()
                        .with_context(|| format!("a ping count that is no number in {p}"))?,
                };
                ensure!(
                    n >= last_pings,
                    "the ping count went back from {last_pings} to {n}"
                );
                last_pings = n;
            }
        }
    }
    ensure!(deltas > 0, "no compact line");
    ensure!(
        last_pings == pings,
        "the rebuilt stats log counts {last_pings} pings, the pinger sent {pings}"
    );

    // The HdrHistogram logs: a directory per generation, each with its
    // files (but the newest, which the last interval may have left empty).
    let hdr_generations = list_generations(&hdr, "")?;
    ensure!(hdr_generations.len() >= 3, "{hdr_generations:?}");
    for (_, dir) in &hdr_generations[..hdr_generations.len() - 1] {
        let hlogs = fs::read_dir(dir)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "hlog"))
            })
            .count();
        ensure!(hlogs > 0, "no .hlog file in {}", dir.display());
    }
    node.stop()?;
    Ok(())
}
