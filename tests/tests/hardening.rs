//! peerlog run as root next to files and processes others control (issue
//! #11): it never deletes or writes through what it did not create, keeps
//! what it writes private, resolves a thread id to its process, and refuses
//! absurd numbers with an error instead of a panic.
//!
//! Tests that need eBPF are reported as ignored, with the reason printed,
//! when this machine cannot load it (not root, no uprobes): never as passed.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::{Arguments, Trial};
use peerlog_tests::*;

fn main() {
    let args = Arguments::from_args();
    let ebpf_skip = ebpf_skip();
    // A umask that lets others read: what peerlog creates must be private
    // regardless. Set once, before any test thread starts.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    type Test = fn() -> Result<()>;
    // (name, test, needs eBPF)
    let tests: [(&str, Test, bool); 8] = [
        (
            "absurd_numbers_are_refused_before_anything_runs",
            absurd_numbers_are_refused_before_anything_runs,
            false,
        ),
        (
            "toolbox_outputs_are_private",
            toolbox_outputs_are_private,
            false,
        ),
        ("trace_outputs_are_private", trace_outputs_are_private, true),
        (
            "planted_symlink_in_the_capture_is_refused",
            planted_symlink_in_the_capture_is_refused,
            true,
        ),
        (
            "rpc_socket_path_that_is_not_a_socket_is_left_alone",
            rpc_socket_path_that_is_not_a_socket_is_left_alone,
            true,
        ),
        (
            "stale_rpc_socket_is_replaced",
            stale_rpc_socket_is_replaced,
            true,
        ),
        (
            "thread_id_traces_its_process",
            thread_id_traces_its_process,
            true,
        ),
        (
            "every_program_verifies_with_room_to_spare",
            every_program_verifies_with_room_to_spare,
            true,
        ),
    ];
    let trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, f, ebpf)| {
            let skips: &[&Option<Skip>] = if ebpf { &[&ebpf_skip] } else { &[] };
            trial(name, f, skips)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn run(program: &Path, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {} {args:?}", program.display()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Permission bits of `path` itself (a symlink is not followed).
fn mode(path: &Path) -> Result<u32> {
    Ok(fs::symlink_metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

/// Checks that `path` and everything below it are private: directories
/// 0700, files 0600. Returns how many files there are.
fn assert_private(path: &Path) -> Result<usize> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        ensure!(
            mode(path)? == 0o700,
            "{} is a directory of mode {:o}, not 0700",
            path.display(),
            mode(path)?
        );
        let mut files = 0;
        for entry in fs::read_dir(path)? {
            files += assert_private(&entry?.path())?;
        }
        Ok(files)
    } else {
        ensure!(
            meta.is_file(),
            "{} is neither a file nor a directory",
            path.display()
        );
        ensure!(
            mode(path)? == 0o600,
            "{} is a file of mode {:o}, not 0600",
            path.display(),
            mode(path)?
        );
        Ok(1)
    }
}

fn absurd_numbers_are_refused_before_anything_runs() -> Result<()> {
    let peerlog = peerlog_bin()?;
    let capture = fixture("capture");
    let capture = capture.to_str().context("fixture path is not UTF-8")?;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["trace", "--pid", "1", "--duration", "1e30"],
            "--duration",
        ),
        (
            vec!["trace", "--pid", "1", "--stats-interval", "1e30"],
            "--stats-interval",
        ),
        (vec!["trace", "--pid=-1"], "--pid"),
        (
            vec!["replay", capture, "--to", "127.0.0.1:1", "--wait", "1e30"],
            "--wait",
        ),
        (
            vec![
                "replay",
                capture,
                "--to",
                "127.0.0.1:1",
                "--speed",
                "1e-300",
            ],
            "--speed",
        ),
        (vec!["show", capture, "--since", "1e30"], "--since"),
    ];
    for (args, flag) in cases {
        let out = run(&peerlog, &args)?;
        let text = stderr(&out);
        ensure!(
            out.status.code() == Some(2),
            "peerlog {args:?} did not fail as a usage error ({}):\n{text}",
            out.status
        );
        ensure!(
            text.contains(flag) && text.contains(" to ") && !text.contains("panicked"),
            "peerlog {args:?} does not state the accepted range:\n{text}"
        );
    }
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_peerlog-loadgen"));
    for args in [
        ["--target", "127.0.0.1:1", "--rate", "1e-300"],
        ["--target", "127.0.0.1:1", "--duration", "1e30"],
        ["--target", "127.0.0.1:1", "--peers", "0"],
        ["--target", "127.0.0.1:1", "--in-flight", "0"],
    ] {
        let out = run(&loadgen, &args)?;
        let text = stderr(&out);
        ensure!(
            out.status.code() == Some(2) && text.contains(" to ") && !text.contains("panicked"),
            "peerlog-loadgen {args:?} ({}):\n{text}",
            out.status
        );
    }
    // Values in range are taken (nobody listens on port 1: a plain error).
    let args = [
        "--target",
        "127.0.0.1:1",
        "--peers",
        "1",
        "--in-flight",
        "1",
        "--rate",
        "0",
        "--duration",
        "0.1",
        "--timeout",
        "0.1",
    ];
    let out = run(&loadgen, &args)?;
    let text = stderr(&out);
    ensure!(
        out.status.code() == Some(1) && text.contains("no peer could connect"),
        "peerlog-loadgen {args:?} ({}):\n{text}",
        out.status
    );
    Ok(())
}

/// `convert`, `stats --svg` and `flamegraph` write private files.
fn toolbox_outputs_are_private() -> Result<()> {
    let peerlog = peerlog_bin()?;
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("out");
    let capture = fixture("capture");
    let folded = fixture("flamegraph/all.folded");
    let path = |name: &str| out.join(name).to_str().unwrap().to_string();
    let (capture, folded) = (capture.to_str().unwrap(), folded.to_str().unwrap());
    fs::create_dir(&out)?;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700))?;
    let runs: Vec<Vec<String>> = vec![
        vec![
            "convert".into(),
            capture.into(),
            "--to".into(),
            "core".into(),
            path("core/new"),
        ],
        vec![
            "convert".into(),
            capture.into(),
            "--to".into(),
            "pcapng".into(),
            path("x.pcapng"),
        ],
        vec![
            "convert".into(),
            capture.into(),
            "--to".into(),
            "jsonl".into(),
            path("x.jsonl"),
        ],
        vec![
            "stats".into(),
            capture.into(),
            "--svg".into(),
            path("rate.svg"),
        ],
        vec![
            "flamegraph".into(),
            folded.into(),
            "-o".into(),
            path("f.svg"),
            "--folded".into(),
            path("f.folded"),
        ],
    ];
    for args in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let done = run(&peerlog, &args)?;
        ensure!(done.status.success(), "peerlog {args:?}: {}", stderr(&done));
    }
    let files = assert_private(&out)?;
    ensure!(files >= 9, "only {files} files written");
    Ok(())
}

fn trace_outputs_are_private() -> Result<()> {
    let node = Node::start()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("out");
    fs::create_dir(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (capture, jsonl, stats, hdr, flame) = (
        p("capture"),
        p("events.jsonl"),
        p("stats.jsonl"),
        p("hdr"),
        p("flame"),
    );
    let tracer = Tracer::start(
        node.pid(),
        &[
            "--capture",
            &capture,
            "--capture-layout",
            "per-connection",
            "--jsonl",
            &jsonl,
            "--stats-log",
            &stats,
            "--stats-interval",
            "0.2",
            "--hdr-log",
            &hdr,
            "--flamegraph",
            &flame,
            "--no-rpc",
        ],
    )?;
    let mut a = connect(&node)?;
    for nonce in 1..=3 {
        sync(&mut a, nonce)?;
    }
    // Two stats intervals, so that the interval logs have a line.
    thread::sleep(Duration::from_millis(600));
    drop(a);
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    for (path, at_least) in [(&capture, 2), (&hdr, 1), (&flame, 1)] {
        let files = assert_private(Path::new(path))?;
        ensure!(files >= at_least, "{path} has {files} files");
    }
    for file in [&jsonl, &stats] {
        assert_private(Path::new(file))?;
    }
    node.stop()?;
    Ok(())
}

fn ctl(socket: &Path, method: &str, params: &str) -> Result<String> {
    let out = run(
        &peerlog_bin()?,
        &["ctl", "--socket", socket.to_str().unwrap(), method, params],
    )?;
    ensure!(
        out.status.success(),
        "peerlog ctl {method}: {}",
        stderr(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Someone who can write to the capture directory plants a symlink where
/// the next peer's directory goes: peerlog refuses it, naming it, and
/// writes nothing through it.
fn planted_symlink_in_the_capture_is_refused() -> Result<()> {
    let node = Node::start()?;
    let tmp = tempfile::tempdir()?;
    let capture = tmp.path().join("capture");
    let socket = tmp.path().join("ctl.sock");
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim)?;
    let mut tracer = Tracer::start(
        node.pid(),
        &[
            "--capture",
            capture.to_str().unwrap(),
            "--rpc-socket",
            socket.to_str().unwrap(),
        ],
    )?;
    // Capture off while the client connects, so its directory does not
    // exist yet when its name (the client's port) is known.
    ctl(&socket, "setcapture", r#"{"enabled": false}"#)?;
    let mut a = connect(&node)?;
    sync(&mut a, 1)?;
    let local = a.local_addr();
    let planted = capture.join(format!("{}_{}", local.ip(), local.port()));
    symlink(&victim, &planted)?;
    ctl(&socket, "setcapture", r#"{"enabled": true}"#)?;
    // The node's answer is a message of this peer: its capture is refused.
    let _ = sync(&mut a, 2);
    let out = tracer.wait()?;
    ensure!(
        !out.status.success(),
        "peerlog kept going after a refused capture path:\n{}",
        out.stderr
    );
    ensure!(
        out.stderr.contains(&format!(
            "refusing {}: it is a symbolic link",
            planted.display()
        )),
        "the error does not name the planted symlink:\n{}",
        out.stderr
    );
    ensure!(
        fs::read_dir(&victim)?.next().is_none(),
        "peerlog wrote through the symlink into {}",
        victim.display()
    );
    ensure!(fs::symlink_metadata(&planted)?.is_symlink());
    node.stop()?;
    Ok(())
}

fn rpc_socket_path_that_is_not_a_socket_is_left_alone() -> Result<()> {
    let node = Node::start()?;
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("precious.txt");
    fs::write(&file, b"precious")?;
    let out = run(
        &peerlog_bin()?,
        &[
            "trace",
            "--pid",
            &node.pid().to_string(),
            "--rpc-socket",
            file.to_str().unwrap(),
            "--duration",
            "5",
        ],
    )?;
    let text = stderr(&out);
    ensure!(
        !out.status.success(),
        "peerlog took a regular file as its socket:\n{text}"
    );
    ensure!(
        text.contains(&file.display().to_string()) && text.contains("not a socket"),
        "the error does not name the file:\n{text}"
    );
    ensure!(
        fs::read(&file)? == b"precious",
        "{} was changed",
        file.display()
    );
    node.stop()?;
    Ok(())
}

fn stale_rpc_socket_is_replaced() -> Result<()> {
    let node = Node::start()?;
    let tmp = tempfile::tempdir()?;
    let socket = tmp.path().join("ctl.sock");
    // Left by a peerlog that was killed: a socket nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket)?);
    let tracer = Tracer::start(node.pid(), &["--rpc-socket", socket.to_str().unwrap()])?;
    ensure!(mode(&socket)? == 0o600, "socket mode {:o}", mode(&socket)?);
    let status = ctl(&socket, "getstatus", "")?;
    ensure!(status.contains("\"pid\""), "{status}");
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    ensure!(!socket.exists(), "the socket stays behind");
    node.stop()?;
    Ok(())
}

/// A thread id (`pidof` gives the process, but `ps -L`, `top -H` and
/// /proc/PID/task give threads) traces its whole process, and says so.
fn thread_id_traces_its_process() -> Result<()> {
    let node = Node::start()?;
    let pid = node.pid();
    // The message handler, once it has named itself (a thread starts with
    // its process's name and renames itself a moment later).
    let name = "b-msghand";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let tid = loop {
        if let Some(tid) = peerlog::stats::find_thread(pid, name) {
            break tid as i32;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the node has no {name} thread after 10 s"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let tmp = tempfile::tempdir()?;
    let jsonl = tmp.path().join("events.jsonl");
    let tracer = Tracer::start(tid, &["--jsonl", jsonl.to_str().unwrap(), "--no-rpc"])?;
    let mut a = connect(&node)?;
    sync(&mut a, 1)?;
    sync(&mut a, 2)?;
    let local = a.local_addr().to_string();
    drop(a);
    thread::sleep(Duration::from_millis(300));
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    let said = format!("pid {tid} is thread '{name}' of process {pid}; tracing {pid}");
    ensure!(
        out.stderr.contains(&said),
        "no {said:?} in:\n{}",
        out.stderr
    );
    let messages = fs::read_to_string(&jsonl)?
        .lines()
        .map(serde_json::from_str::<serde_json::Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|e| e["event"] == "message" && e["addr"] == local.as_str())
        .count();
    if messages == 0 {
        bail!("nothing traced for {local}:\n{}", out.stderr);
    }
    node.stop()?;
    Ok(())
}

/// The most instructions the kernel's verifier walks through for one
/// program before it refuses it.
const VERIFIER_LIMIT: u64 = 1_000_000;

/// Every program peerlog loads, with every feature on, verifies in at most
/// half of the verifier's budget. A program near the limit is refused the
/// day another compiler lays out its branches, or another kernel counts its
/// states, differently: the sampler passed on one machine and was refused
/// past a million instructions on another, the same kernel version built
/// anew. The node is sent malformed messages meanwhile, as in every test
/// that traces a feature.
fn every_program_verifies_with_room_to_spare() -> Result<()> {
    let node = Node::start()?;
    let tmp = tempfile::tempdir()?;
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let tracer = Tracer::start(
        node.pid(),
        &[
            "--capture",
            &p("capture"),
            "--stats-log",
            &p("stats.jsonl"),
            "--flamegraph",
            &p("flame"),
            "--no-rpc",
        ],
    )?;
    let programs = verified_programs(tracer.pid())?;
    send_malformed(&node)?;
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    node.stop()?;
    // The message probes (uprobes, type 2) and the sampler (perf event, 7).
    for prog_type in [2, 7] {
        ensure!(
            programs.iter().any(|p| p.prog_type == prog_type),
            "no program of type {prog_type} among those peerlog loaded: {programs:?}"
        );
    }
    let heavy: Vec<_> = programs
        .iter()
        .filter(|p| p.verified_insns > VERIFIER_LIMIT / 2)
        .collect();
    ensure!(
        heavy.is_empty(),
        "programs that took the verifier over half its {VERIFIER_LIMIT} instructions: {heavy:?}"
    );
    Ok(())
}

/// A BPF program a process holds, as its fdinfo shows it.
#[derive(Debug)]
struct VerifiedProgram {
    prog_id: u64,
    prog_type: u64,
    verified_insns: u64,
}

/// The BPF programs process `pid` holds (by its file descriptors).
fn verified_programs(pid: i32) -> Result<Vec<VerifiedProgram>> {
    let mut programs = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        // A descriptor closed since the listing has no fdinfo left.
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        // `key:\tvalue` lines; the numeric ones.
        let fields: HashMap<&str, u64> = info
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                Some((key, value.trim().parse().ok()?))
            })
            .collect();
        let (Some(&prog_id), Some(&prog_type)) = (fields.get("prog_id"), fields.get("prog_type"))
        else {
            continue;
        };
        // Linux 5.16 and later count them.
        let verified_insns = *fields
            .get("verified_insns")
            .context("the kernel's fdinfo has no verified_insns")?;
        programs.push(VerifiedProgram {
            prog_id,
            prog_type,
            verified_insns,
        });
    }
    programs.sort_by_key(|p| p.prog_id);
    programs.dedup_by_key(|p| p.prog_id);
    Ok(programs)
}
