//! `cargo xtask bench`: what tracing costs the node, measured side by side in
//! one session.
//!
//! For each scenario (a load shape driven by `peerlog-loadgen`), and in
//! several rounds, each configuration runs against a fresh node: the twin
//! node, or with `BITCOIND=/path/to/bitcoind` a real bitcoind on regtest,
//! loopback only, in its own data directory:
//!
//! 1. untraced;
//! 2. the floor: bpftrace with empty actions on the two message tracepoints
//!    (`xtask/bench/empty_probe.bt`), what merely probing every message costs;
//! 3. `peerlog trace --no-accounting`, counting only (no payload leaves the
//!    node);
//! 4. `peerlog trace` with its defaults (per-peer accounting on);
//! 5. `peerlog trace --no-accounting --capture DIR`, every payload written to
//!    disk;
//! 6. capture plus accounting, the statistics log and 99 Hz sampling, when
//!    this `peerlog` has them (`--stats-log`, `--flamegraph`: found in
//!    `peerlog trace --help` at run time, reported as not available otherwise);
//! 7. the reference: Debian's bpftrace running `xtask/bench/log_p2p_traffic.bt`
//!    (the equivalent of Bitcoin Core's `contrib/tracing/log_p2p_traffic.bt`)
//!    with its output in a file;
//! 8. counting plus 99 Hz sampling, for what sampling alone costs.
//!
//! The configurations are interleaved (their order rotates every round) so
//! that drift on the machine (other builds, thermal state) spreads over all
//! of them instead of biasing one. Each run samples, over exactly the load
//! generator's window: the node's throughput (answered requests per second),
//! its CPU time per P2P message (`/proc/PID/stat`), the tracer's CPU time, and
//! then the tracer's peak RSS (`VmHWM`), lost events and kernel-to-userspace
//! event latency from its summary. Every figure is set against the untraced
//! run and the floor of the same round.
//!
//! The results are printed as a table, saved as JSON in `target/bench/`, and
//! (except with `--smoke`) written to the node's own section of
//! `docs/benchmarks.md` with the machine they ran on, leaving the other
//! node's section as it was. `--smoke` runs everything once for a second per
//! configuration, so CI keeps the harness working; it asserts nothing about
//! timings.

use std::{
    env, fs,
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::workspace_root;

/// How long a tracer may take to attach (loading eBPF, compiling a bpftrace
/// script) on a busy two-core machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);

/// bpftrace prints "Attaching N probes..." before it attaches, and its
/// output file is block-buffered, so nothing later shows when the probes are
/// live. Attaching two probes takes milliseconds; this leaves ample margin,
/// and each run checks afterwards that bpftrace saw every message of the
/// window.
const BPFTRACE_ATTACH_GRACE: Duration = Duration::from_secs(1);

/// What is run, how often and how long.
struct Plan {
    rounds: usize,
    duration: Duration,
    scenarios: Vec<Scenario>,
}

impl Plan {
    fn new(smoke: bool) -> Plan {
        let scenarios = vec![
            Scenario {
                name: "ping-flood",
                title: "8 peers, ping flood",
                peers: 8,
                mix: "ping-flood",
                in_flight: 8,
                block_size: None,
            },
            Scenario {
                name: "relay",
                title: "32 peers, tx relay (inv → getdata → tx)",
                peers: 32,
                mix: "relay",
                in_flight: 4,
                block_size: None,
            },
            Scenario {
                name: "blocks",
                title: "4 peers, ~1 MB block serving",
                peers: 4,
                mix: "blocks",
                in_flight: 2,
                block_size: Some(1_000_000),
            },
            Scenario {
                name: "idle",
                title: "125 idle peers, a ping a second each",
                peers: 125,
                mix: "idle",
                in_flight: 8,
                block_size: None,
            },
        ];
        // The full plan: 4 scenarios × 8 configurations × 3 rounds × (5 s
        // + ~1.7 s of set-up) ≈ 11 minutes on two cores, within the ~12
        // minutes per node kind the bench may take; against a bitcoind the
        // block scenario is skipped, ≈ 8 minutes. Fewer rounds would leave
        // no median worth the name, shorter windows too few ticks of CPU
        // time (10 ms each) for the idle scenario's 1-point target.
        let (rounds, duration) = if smoke {
            (1, Duration::from_secs(1))
        } else {
            (3, Duration::from_secs(5))
        };
        Plan {
            rounds,
            duration,
            scenarios,
        }
    }
}

/// One load shape.
struct Scenario {
    name: &'static str,
    title: &'static str,
    peers: usize,
    mix: &'static str,
    in_flight: usize,
    /// Serve blocks of about this size (the twin's `-blocksize`) and request
    /// only those.
    block_size: Option<usize>,
}

impl Scenario {
    /// Closed-loop scenarios run as fast as the node answers, so their
    /// throughput shows what tracing costs; the idle one runs at a fixed rate.
    fn saturating(&self) -> bool {
        self.mix != "idle"
    }

    /// Why this scenario cannot run against `node`, if it cannot.
    fn skipped_on(&self, node: &NodeKind) -> Option<String> {
        match (node, self.block_size) {
            (NodeKind::Bitcoind { .. }, Some(size)) => Some(format!(
                "a fresh regtest bitcoind has no block of ~{size} bytes to serve \
                 (it has the genesis block and the one mined to leave initial \
                 block download, a few hundred bytes each)"
            )),
            _ => None,
        }
    }
}

/// The configurations, in the order of the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    Untraced,
    /// bpftrace with empty actions on the two message tracepoints: the cost
    /// of a uprobe on every message and nothing else, which no tracer of
    /// those tracepoints can go below (issue 12).
    Floor,
    /// `--no-accounting`: the net:* tracepoints only, what the bpftrace
    /// reference traces.
    Counting,
    /// `peerlog trace --pid PID` and nothing else: what a user running it
    /// plainly costs the node, per-peer accounting included (issue 10).
    Defaults,
    Capture,
    CaptureStats,
    Bpftrace,
    /// Counting plus 99 Hz CPU sampling: what sampling alone costs the node
    /// (issue 4), next to `Counting`.
    Sampling,
}

impl Config {
    const ALL: [Config; 8] = [
        Config::Untraced,
        Config::Floor,
        Config::Counting,
        Config::Defaults,
        Config::Capture,
        Config::CaptureStats,
        Config::Bpftrace,
        Config::Sampling,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Floor => "floor",
            Config::Counting => "peerlog-count",
            Config::Defaults => "peerlog-defaults",
            Config::Capture => "peerlog-capture",
            Config::CaptureStats => "peerlog-capture-stats",
            Config::Bpftrace => "bpftrace",
            Config::Sampling => "peerlog-count-sampling",
        }
    }

    fn is_peerlog(self) -> bool {
        matches!(
            self,
            Config::Counting
                | Config::Defaults
                | Config::Capture
                | Config::CaptureStats
                | Config::Sampling
        )
    }

    /// Configurations run by bpftrace, which the smoke run tolerates failing.
    fn is_bpftrace(self) -> bool {
        matches!(self, Config::Floor | Config::Bpftrace)
    }
}

/// The binaries under test.
struct Binaries {
    peerlog: PathBuf,
    loadgen: PathBuf,
    twin: PathBuf,
}

/// Builds the release binaries and finds them (and the twin, which the
/// tests crate's build script makes) in cargo's own report of the build.
fn build() -> Result<Binaries> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "peerlog",
            "-p",
            "peerlog-tests",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !output.status.success() {
        bail!("cargo build --release failed ({})", output.status);
    }
    let (mut peerlog, mut loadgen, mut twin) = (None, None, None);
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") => {
                let exe = msg["executable"].as_str().map(PathBuf::from);
                match msg["target"]["name"].as_str() {
                    Some("peerlog") => peerlog = exe.or(peerlog),
                    Some("peerlog-loadgen") => loadgen = exe.or(loadgen),
                    _ => {}
                }
            }
            Some("build-script-executed")
                if msg["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("peerlog-tests")) =>
            {
                twin = msg["out_dir"]
                    .as_str()
                    .map(|dir| Path::new(dir).join("twin"));
            }
            _ => {}
        }
    }
    let built = [
        peerlog.context("cargo did not report the peerlog binary")?,
        loadgen.context("cargo did not report the peerlog-loadgen binary")?,
        twin.context("cargo did not report the tests crate's build script (the twin)")?,
    ];
    // Copies, so that a build running meanwhile (the tests build the twin
    // too) cannot swap a binary under a run: uprobes are placed by file.
    let dir = workspace_root().join("target/bench/bin");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let [peerlog, loadgen, twin] = built.map(|path| {
        let copy = dir.join(path.file_name().expect("a binary has a file name"));
        // Unlinked first: a binary still running from an earlier bench keeps
        // its (unlinked) file instead of failing the copy with "text busy".
        let _ = fs::remove_file(&copy);
        fs::copy(&path, &copy)
            .map(|_| copy)
            .with_context(|| format!("copying {}", path.display()))
    });
    Ok(Binaries {
        peerlog: peerlog?,
        loadgen: loadgen?,
        twin: twin?,
    })
}

/// The node the scenarios run against.
enum NodeKind {
    /// The twin node (the bench's copy of it).
    Twin(PathBuf),
    /// A real bitcoind named by `BITCOIND`, started fresh for every run.
    Bitcoind {
        path: PathBuf,
        /// `bitcoin-cli`, beside it: mines the block that takes a fresh
        /// regtest node out of initial block download.
        cli: PathBuf,
        /// The first line of `bitcoind -version`.
        version: String,
    },
}

impl NodeKind {
    /// `BITCOIND` if it is set and not empty, else the twin.
    fn from_env(bins: &Binaries) -> Result<NodeKind> {
        let Some(path) = env::var_os("BITCOIND").filter(|p| !p.is_empty()) else {
            return Ok(NodeKind::Twin(bins.twin.clone()));
        };
        let path = PathBuf::from(path);
        let output = Command::new(&path)
            .arg("-version")
            .output()
            .with_context(|| format!("BITCOIND={}: cannot run it", path.display()))?;
        let version = String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if !output.status.success() || !version.contains("version") {
            bail!(
                "BITCOIND={}: `-version` did not print a Bitcoin Core version ({}); \
                 set BITCOIND to a bitcoind binary",
                path.display(),
                output.status
            );
        }
        let cli = path.with_file_name("bitcoin-cli");
        if !cli.is_file() {
            bail!(
                "BITCOIND={}: no {} beside it; the bench needs it to mine the block \
                 that takes a fresh regtest node out of initial block download",
                path.display(),
                cli.display()
            );
        }
        Ok(NodeKind::Bitcoind { path, cli, version })
    }

    /// The binary, as bpftrace's `$1`.
    fn binary(&self) -> &Path {
        match self {
            NodeKind::Twin(path) | NodeKind::Bitcoind { path, .. } => path,
        }
    }

    /// Its short name: in file names and the doc's section markers.
    fn key(&self) -> &'static str {
        match self {
            NodeKind::Twin(_) => "twin",
            NodeKind::Bitcoind { .. } => "bitcoind",
        }
    }

    /// What stands for the binary in the commands the results show.
    fn placeholder(&self) -> &'static str {
        match self {
            NodeKind::Twin(_) => "TWIN",
            NodeKind::Bitcoind { .. } => "BITCOIND",
        }
    }

    /// The node in words, for the results.
    fn describe(&self) -> String {
        match self {
            NodeKind::Twin(_) => "the twin node (`tests/twin/twin.cpp`)".into(),
            NodeKind::Bitcoind { path, version, .. } => {
                format!("{version} (`{}`)", path.display())
            }
        }
    }
}

/// Optional parts, found at run time.
#[derive(Serialize)]
struct Tools {
    /// `bpftrace --version`, or why there is none.
    bpftrace: std::result::Result<String, String>,
    /// The extra `peerlog trace` options of configuration 4, each with
    /// whether it takes a value, as `peerlog trace --help` lists them.
    stats_options: Vec<(String, bool)>,
    /// Whether `peerlog trace` has `--no-accounting`: configurations 2 and 3
    /// then trace the net:* tracepoints only, what the bpftrace reference
    /// traces, and leave the accounting to configuration 4.
    no_accounting: bool,
}

impl Tools {
    fn detect(bins: &Binaries) -> Result<Tools> {
        let bpftrace = match Command::new("bpftrace").arg("--version").output() {
            Ok(o) if o.status.success() => {
                Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
            }
            Ok(o) => Err(format!("bpftrace --version failed ({})", o.status)),
            Err(e) => Err(format!("bpftrace cannot run: {e}")),
        };
        let help = Command::new(&bins.peerlog)
            .args(["trace", "--help"])
            .output()
            .context("running peerlog trace --help")?;
        let help = String::from_utf8_lossy(&help.stdout);
        // An option's line in the help, e.g. "      --stats-log <PATH>".
        let option_line = |flag: &str| {
            help.lines().map(str::trim_start).find(|l| {
                l.strip_prefix(flag)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=']))
            })
        };
        let stats_options = ["--stats-log", "--flamegraph"]
            .iter()
            .filter_map(|flag| {
                let line = option_line(flag)?;
                Some((
                    flag.to_string(),
                    line[flag.len()..].trim_start().starts_with('<'),
                ))
            })
            .collect();
        Ok(Tools {
            bpftrace,
            stats_options,
            no_accounting: option_line("--no-accounting").is_some(),
        })
    }

    /// Why `config` cannot run here, if it cannot.
    fn unavailable(&self, config: Config) -> Option<String> {
        match config {
            Config::CaptureStats if self.stats_options.is_empty() => Some(
                "not available yet: `peerlog trace --help` lists neither --stats-log nor --flamegraph"
                    .into(),
            ),
            Config::Floor | Config::Bpftrace => self.bpftrace.as_ref().err().cloned(),
            Config::Sampling if !self.stats_options.iter().any(|(f, _)| f == "--flamegraph") => {
                Some("not available yet: `peerlog trace --help` lists no --flamegraph".into())
            }
            _ => None,
        }
    }

    /// What configuration 4 adds to the capture, in words.
    fn stats_label(&self) -> String {
        let has = |flag: &str| self.stats_options.iter().any(|(f, _)| f == flag);
        match (has("--stats-log"), has("--flamegraph")) {
            (true, true) => "peerlog, capture + stats + 99 Hz sampling".into(),
            (true, false) => "peerlog, capture + stats (sampling not available yet)".into(),
            (false, true) => "peerlog, capture + 99 Hz sampling (stats not available yet)".into(),
            (false, false) => "peerlog, capture + stats + sampling".into(),
        }
    }

    fn label(&self, config: Config) -> String {
        match config {
            Config::Untraced => "untraced".into(),
            Config::Floor => "floor: bpftrace, empty probes".into(),
            Config::Counting => "peerlog --no-accounting (counting only)".into(),
            Config::Defaults => "peerlog, defaults (accounting on)".into(),
            Config::Capture => "peerlog --no-accounting --capture".into(),
            Config::CaptureStats => self.stats_label(),
            Config::Bpftrace => "bpftrace log_p2p_traffic.bt".into(),
            Config::Sampling => "peerlog --no-accounting, 99 Hz sampling".into(),
        }
    }
}

/// bpftrace attaches uprobes through tracefs when it is mounted and fails to
/// detach them otherwise; peerlog does not need it.
fn mount_tracefs() {
    if Path::new("/sys/kernel/tracing/uprobe_events").exists() {
        return;
    }
    eprintln!("bench: mounting tracefs on /sys/kernel/tracing (for bpftrace)");
    let ok = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("bench: warning: could not mount tracefs; bpftrace may fail to detach");
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A child process whose stdout or stderr is read line by line, both kept
/// (for errors and summaries) and handed over as they come (to wait for a
/// line). Killed when dropped, so an error leaves nothing running.
struct Proc {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    text: Arc<Mutex<String>>,
    reaped: bool,
}

/// Which output of a [`Proc`] to read.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Proc {
    fn spawn(what: &str, mut cmd: Command, stream: Stream) -> Result<Proc> {
        cmd.stdin(Stdio::null());
        match stream {
            Stream::Stdout => cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()),
            Stream::Stderr => cmd.stdout(Stdio::null()).stderr(Stdio::piped()),
        };
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let pipe: Box<dyn Read + Send> = match stream {
            Stream::Stdout => Box::new(child.stdout.take().expect("piped")),
            Stream::Stderr => Box::new(child.stderr.take().expect("piped")),
        };
        let (tx, lines) = mpsc::channel();
        let text = Arc::new(Mutex::new(String::new()));
        let kept = text.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
                // The receiver may be gone: the text is still kept.
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            what: what.to_string(),
            child,
            lines,
            text,
            reaped: false,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits for a line matching `pred` and returns it.
    fn wait_for_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait(Duration::from_secs(10))?;
                    bail!("{} exited ({status}):\n{}", self.what, self.text());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: nothing expected within {timeout:?}:\n{}",
                    self.what,
                    self.text()
                );
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a signal to our own, not yet reaped, child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for the process to exit, killing it after `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                // Let the reader thread take the last lines.
                thread::sleep(Duration::from_millis(50));
                return Ok(status);
            }
            if Instant::now() > deadline {
                // Where its threads wait, read before the kill, says why.
                let stuck = thread_waits(self.pid());
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.reaped = true;
                bail!(
                    "{} did not exit within {timeout:?} (threads waiting in: {stuck}):\n{}",
                    self.what,
                    self.text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Each thread of a process with the kernel function it sleeps in
/// (`/proc/PID/task/TID/wchan`), e.g. "bpftrace:do_epoll_wait".
fn thread_waits(pid: i32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return "unknown".into();
    };
    tasks
        .flatten()
        .map(|task| {
            let read = |f: &str| fs::read_to_string(task.path().join(f)).unwrap_or_default();
            format!("{}:{}", read("comm").trim(), read("wchan").trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU time (user + system, all threads) a process has used so far.
/// `BPF_PROG_TYPE_PERF_EVENT`: peerlog's only program of that type is its
/// CPU sampler.
const BPF_PROG_TYPE_PERF_EVENT: u64 = 7;

/// What the CPU-sampling program of process `pid` has cost so far, from the
/// kernel's BPF statistics (`kernel.bpf_stats_enabled`) in the fdinfo of its
/// program descriptors.
#[derive(Debug, Clone, Copy, Default)]
struct SamplerStats {
    /// Nanoseconds it ran. It runs in the context of the sampled thread, so
    /// this is CPU time the sampler takes from the node.
    run_ns: u64,
    /// Times it ran, on every process: it returns at once on those that are
    /// not the node.
    runs: u64,
}

fn sampler_stats(pid: i32) -> Result<SamplerStats> {
    let mut total = SamplerStats::default();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("prog_type:") == Some(BPF_PROG_TYPE_PERF_EVENT) {
            total.run_ns += field("run_time_ns:").unwrap_or(0);
            total.runs += field("run_cnt:").unwrap_or(0);
        }
    }
    Ok(total)
}

/// Switches the kernel's per-program run-time statistics on for as long as
/// it lives (they cost every BPF program a little, so only sampling runs
/// have them).
struct BpfStats;

impl BpfStats {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Result<Self> {
        fs::write(Self::SYSCTL, "1").with_context(|| format!("writing {}", Self::SYSCTL))?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(Self::SYSCTL, "0");
    }
}

fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain anything, spaces included; the fields
    // after it are plain. utime and stime are fields 14 and 15 of the line,
    // the 12th and 13th after the name.
    let after_name = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Peak resident set size (`VmHWM`) and current anonymous RSS (`RssAnon`)
/// of a running process, in MiB.
fn memory_mib(pid: i32) -> Result<(f64, f64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmHWM:")?, field("RssAnon:")?))
}

// ---------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------

/// A node started for one run.
struct Node {
    proc: Proc,
    addr: String,
    /// The blocks it serves, (hash, size): the twin's two built-in blocks.
    blocks: Vec<(String, usize)>,
    what: &'static str,
}

impl Node {
    /// Starts `kind` for `scenario`; a bitcoind keeps its data in `dir`.
    fn start(kind: &NodeKind, scenario: &Scenario, dir: &Path) -> Result<Node> {
        match kind {
            NodeKind::Twin(binary) => Node::twin(binary, scenario),
            NodeKind::Bitcoind { path, cli, .. } => Node::bitcoind(path, cli, dir),
        }
    }

    fn twin(binary: &Path, scenario: &Scenario) -> Result<Node> {
        let mut cmd = Command::new(binary);
        cmd.args(["-port=0", "-printport"]);
        if let Some(size) = scenario.block_size {
            cmd.arg(format!("-blocksize={size}"));
        }
        let mut proc = Proc::spawn("the twin node", cmd, Stream::Stdout)?;
        let mut addr = None;
        let mut blocks = Vec::new();
        // It prints its address, then its two built-in blocks.
        while addr.is_none() || blocks.len() < 2 {
            let line = proc.wait_for_line(|_| true, Duration::from_secs(30))?;
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("block ") {
                let (hash, size) = rest.split_once(' ').context("malformed block line")?;
                blocks.push((hash.to_string(), size.trim().parse()?));
            }
        }
        Ok(Node {
            proc,
            addr: addr.expect("loop ends with an address"),
            blocks,
            what: "the twin node",
        })
    }

    /// A fresh bitcoind on regtest, loopback only, its data in `dir`, which
    /// lets the load generator's 125 peers in and relays their transactions
    /// without delay, then mines a block to leave initial block download
    /// (until then it ignores transaction announcements).
    fn bitcoind(path: &Path, cli: &Path, dir: &Path) -> Result<Node> {
        let datadir = dir.join("bitcoind");
        fs::create_dir_all(&datadir).with_context(|| format!("creating {}", datadir.display()))?;
        let datadir_arg = format!("-datadir={}", path_arg(&datadir)?);
        let (port, rpc_port) = two_free_ports()?;
        let mut cmd = Command::new(path);
        cmd.args(["-regtest", &datadir_arg])
            .arg(format!("-bind=127.0.0.1:{port}"))
            .arg(format!("-port={port}"))
            .arg(format!("-rpcport={rpc_port}"))
            .args([
                "-listen=1",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
                // noban makes inbound peers (which advertise NODE_NETWORK)
                // preferred for transaction download: it asks for what they
                // announce without the 2 s delay of other inbound peers.
                // relay: no cap on their announcements in flight.
                "-whitelist=noban,relay@127.0.0.1",
                // 125 load generator peers exceed the ~114 inbound slots of
                // the default 125.
                "-maxconnections=300",
                "-dnsseed=0",
                "-fixedseeds=0",
                "-discover=0",
                "-listenonion=0",
                "-printtoconsole=0",
            ]);
        let mut proc = Proc::spawn("bitcoind", cmd, Stream::Stderr)?;
        let addr = format!("127.0.0.1:{port}");
        let sock: std::net::SocketAddr = addr.parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_err() {
            if let Some(status) = proc.child.try_wait()? {
                proc.reaped = true;
                thread::sleep(Duration::from_millis(50));
                bail!(
                    "bitcoind exited ({status}) before listening on {addr}:\n{}",
                    proc.text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "bitcoind did not listen on {addr} within 60 s:\n{}",
                    proc.text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        let mined = Command::new(cli)
            .args(["-regtest", &datadir_arg])
            .arg(format!("-rpcport={rpc_port}"))
            .args([
                "-rpcwait",
                "-rpcwaittimeout=60",
                "generatetodescriptor",
                "1",
                "raw(51)",
            ])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", cli.display()))?;
        if !mined.status.success() {
            bail!(
                "bitcoin-cli generatetodescriptor failed ({}): {}",
                mined.status,
                String::from_utf8_lossy(&mined.stderr).trim()
            );
        }
        Ok(Node {
            proc,
            addr,
            blocks: Vec::new(),
            what: "bitcoind",
        })
    }

    fn stop(mut self) -> Result<()> {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait(Duration::from_secs(60))?;
        if !status.success() {
            bail!("{} exited with {status}:\n{}", self.what, self.proc.text());
        }
        Ok(())
    }
}

/// Two TCP ports free on loopback, for a bitcoind's P2P and RPC: both
/// listeners are held until both ports are known, so they differ.
fn two_free_ports() -> Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    let b = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// A running tracer.
struct Tracer {
    proc: Proc,
    /// bpftrace's output file; None for peerlog.
    bpftrace_output: Option<BpftraceOutput>,
    /// How it was started, for the results.
    command: String,
    /// What it said when it attached (peerlog: how many probe sites).
    attached: String,
}

/// Where a bpftrace run writes, and whether its script logs a line per
/// message (the reference) or nothing (the floor).
struct BpftraceOutput {
    path: PathBuf,
    logs_messages: bool,
}

/// What a tracer reported, over its whole run.
#[derive(Clone, Debug, Serialize)]
struct TracerRun {
    /// How it was started.
    command: String,
    /// Its attach message.
    attached: String,
    /// CPU time over the load window, in seconds.
    cpu_secs: f64,
    /// The same as a percentage of one core.
    cpu_percent: f64,
    /// Peak resident set size, MiB. For peerlog this counts the kernel ring
    /// buffer it maps (twice: its data pages are mapped two times in a row so
    /// that records never wrap), 32 MiB with the default 16 MiB ring.
    peak_rss_mib: f64,
    /// Anonymous (heap) RSS at the end of the load, MiB: the tracer's own
    /// memory, without mapped files and rings.
    rss_anon_mib: f64,
    /// P2P messages the tracer saw (both directions); None for the floor,
    /// which has no output.
    events_seen: Option<u64>,
    /// Events the tracer reported lost.
    events_lost: u64,
    /// Kernel-to-userspace event latency percentiles, µs (peerlog only).
    latency_p50_us: Option<u64>,
    latency_p99_us: Option<u64>,
}

impl Tracer {
    fn start(
        config: Config,
        bins: &Binaries,
        tools: &Tools,
        node: &NodeKind,
        pid: i32,
        dir: &Path,
    ) -> Result<Option<Tracer>> {
        let net_only = || {
            tools
                .no_accounting
                .then(|| "--no-accounting".to_string())
                .into_iter()
        };
        let peerlog_args: Vec<String> = match config {
            Config::Untraced => return Ok(None),
            Config::Floor => {
                return Tracer::bpftrace("empty_probe.bt", node, pid, dir).map(Some);
            }
            Config::Bpftrace => {
                return Tracer::bpftrace("log_p2p_traffic.bt", node, pid, dir).map(Some);
            }
            Config::Counting => net_only().collect(),
            Config::Defaults => Vec::new(),
            Config::Sampling => net_only()
                .chain(["--flamegraph".into(), path_arg(&dir.join("flamegraph"))?])
                .collect(),
            Config::Capture => net_only()
                .chain(["--capture".into(), path_arg(&dir.join("capture"))?])
                .collect(),
            // peerlog as a user runs it with everything on: its accounting
            // (on by default), the stats log and the flamegraph sampler.
            Config::CaptureStats => {
                let mut args = vec!["--capture".into(), path_arg(&dir.join("capture"))?];
                for (flag, takes_value) in &tools.stats_options {
                    args.push(flag.clone());
                    if *takes_value {
                        let name = flag.trim_start_matches('-');
                        args.push(path_arg(&dir.join(name))?);
                    }
                }
                args
            }
        };
        let mut cmd = Command::new(&bins.peerlog);
        cmd.args(["trace", "--pid", &pid.to_string()])
            .args(&peerlog_args);
        let mut proc = Proc::spawn("peerlog trace", cmd, Stream::Stderr)?;
        let attached = proc.wait_for_line(|l| l.contains("attached"), ATTACH_TIMEOUT)?;
        Ok(Some(Tracer {
            proc,
            bpftrace_output: None,
            // The run's directory as DIR: the command as a reader would type it.
            command: format!("peerlog trace --pid PID {}", peerlog_args.join(" "))
                .replace(&path_arg(dir)?, "DIR")
                .trim_end()
                .to_string(),
            attached,
        }))
    }

    /// bpftrace running `xtask/bench/SCRIPT` with the node's binary as `$1`.
    fn bpftrace(script: &str, node: &NodeKind, pid: i32, dir: &Path) -> Result<Tracer> {
        let output = dir.join("bpftrace.log");
        let mut cmd = Command::new("bpftrace");
        cmd.arg("-p")
            .arg(pid.to_string())
            .arg("-o")
            .arg(&output)
            .arg(workspace_root().join("xtask/bench").join(script))
            .arg(node.binary());
        let mut proc = Proc::spawn("bpftrace", cmd, Stream::Stderr)?;
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        while !fs::read_to_string(&output).is_ok_and(|t| t.contains("Attaching")) {
            if let Some(status) = proc.child.try_wait()? {
                proc.reaped = true;
                bail!(
                    "bpftrace exited ({status}) before attaching:\n{}",
                    proc.text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "bpftrace did not attach within {ATTACH_TIMEOUT:?}:\n{}",
                    proc.text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(BPFTRACE_ATTACH_GRACE);
        Ok(Tracer {
            proc,
            bpftrace_output: Some(BpftraceOutput {
                path: output,
                // The floor's empty probes print nothing.
                logs_messages: script != "empty_probe.bt",
            }),
            command: format!(
                "bpftrace -p PID -o FILE xtask/bench/{script} {}",
                node.placeholder()
            ),
            attached: "Attaching 2 probes...".into(),
        })
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Stops the tracer (SIGINT, as a user would) and reads what it reports.
    fn stop(mut self, cpu_secs: f64, window_secs: f64) -> Result<TracerRun> {
        let (peak_rss_mib, rss_anon_mib) = memory_mib(self.pid())?;
        self.proc.signal(libc::SIGINT);
        let status = self.proc.wait(Duration::from_secs(120))?;
        let stderr = self.proc.text();
        if !status.success() {
            bail!("{} failed ({status}):\n{stderr}", self.proc.what);
        }
        let (events_seen, events_lost, latency) = match &self.bpftrace_output {
            Some(BpftraceOutput {
                path,
                logs_messages,
            }) => {
                let log = fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let seen = logs_messages.then(|| {
                    log.lines()
                        .filter(|l| l.starts_with("recv ") || l.starts_with("sent "))
                        .count() as u64
                });
                (seen, bpftrace_lost(&log) + bpftrace_lost(&stderr), None)
            }
            None => {
                let summary = PeerlogSummary::parse(&stderr)?;
                (
                    Some(summary.received + summary.sent),
                    summary.events_lost,
                    summary.latency_us,
                )
            }
        };
        Ok(TracerRun {
            command: self.command,
            attached: self.attached,
            cpu_secs,
            cpu_percent: 100.0 * cpu_secs / window_secs,
            peak_rss_mib,
            rss_anon_mib,
            events_seen,
            events_lost,
            latency_p50_us: latency.map(|l| l.0),
            latency_p99_us: latency.map(|l| l.1),
        })
    }
}

fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// bpftrace reports perf buffer overflows as "Lost N events".
fn bpftrace_lost(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Lost ")?.strip_suffix(" events"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

/// The figures of `peerlog trace`'s exit summary that the bench uses.
#[derive(Debug, PartialEq)]
struct PeerlogSummary {
    received: u64,
    sent: u64,
    events_lost: u64,
    latency_us: Option<(u64, u64)>,
}

impl PeerlogSummary {
    fn parse(stderr: &str) -> Result<PeerlogSummary> {
        let field = |name: &str| {
            stderr
                .lines()
                .find_map(|l| l.trim_start().strip_prefix(name))
                .map(str::trim)
        };
        // "12 messages, 3456 bytes" → 12; "0 (ring_full_chunk=3)" → 0.
        let first_number = |name: &str| -> Result<u64> {
            field(name)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("no `{name}` in peerlog's summary:\n{stderr}"))
        };
        // "p50 120 µs, p99 900 µs"
        let latency_us = field("event latency:").and_then(|v| {
            let numbers: Vec<u64> = v
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|s| s.parse().ok())
                .collect();
            match numbers[..] {
                [50, p50, 99, p99] => Some((p50, p99)),
                _ => None,
            }
        });
        Ok(PeerlogSummary {
            received: first_number("received:")?,
            sent: first_number("sent:")?,
            events_lost: first_number("events lost:")?,
            latency_us,
        })
    }
}

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
struct Run {
    scenario: String,
    config: String,
    round: usize,
    /// Length of the load window as timed here, seconds.
    window_secs: f64,
    /// Requests the node answered per second.
    answered_per_sec: f64,
    /// P2P messages exchanged with the node in the window (both directions).
    messages: u64,
    /// The load generator's p99 answer latency, µs.
    answer_p99_us: u64,
    /// Load generator errors (unanswered requests, disconnections, ...).
    load_errors: u64,
    /// The node's CPU time in the window, seconds.
    target_cpu_secs: f64,
    /// The node's CPU time per message, µs.
    target_cpu_us_per_msg: f64,
    /// The node's and the load generator's CPU time in the window, as
    /// percentages of one core: with the tracer's, how busy the machine was.
    target_cpu_percent: f64,
    loadgen_cpu_percent: f64,
    /// The tracer's figures, if traced.
    tracer: Option<TracerRun>,
    /// CPU time the sampling program ran in the node's threads in the
    /// window, seconds (sampling runs only).
    sampler_cpu_secs: Option<f64>,
    /// Nanoseconds per run of the sampling program in the window: the cost
    /// of one sample, averaged with the early returns on other processes,
    /// so at most the cost of a sample in the node (sampling runs only).
    sampler_ns_per_sample: Option<f64>,
    /// Size of the blocks requested, bytes (block serving only).
    block_size: Option<usize>,
    /// The load generator's full report.
    load: serde_json::Value,
}

fn run_one(
    plan: &Plan,
    scenario: &Scenario,
    config: Config,
    round: usize,
    bins: &Binaries,
    tools: &Tools,
    kind: &NodeKind,
) -> Result<Run> {
    let dir = workspace_root().join("target/bench/runs").join(format!(
        "{}-{}-{round}",
        scenario.name,
        config.name()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let node = Node::start(kind, scenario, &dir)?;
    let bpf_stats = (config == Config::Sampling)
        .then(BpfStats::enable)
        .transpose()?;
    let tracer = Tracer::start(config, bins, tools, kind, node.proc.pid(), &dir)?;

    let report_path = dir.join("load.json");
    let mut cmd = Command::new(&bins.loadgen);
    cmd.args(["--target", &node.addr])
        .args(["--peers", &scenario.peers.to_string()])
        .args(["--mix", scenario.mix])
        .args(["--in-flight", &scenario.in_flight.to_string()])
        .args(["--duration", &plan.duration.as_secs_f64().to_string()])
        .arg("--json")
        .arg(&report_path);
    // The block of the asked size, not the twin's 4,000,000-byte one.
    let block = scenario
        .block_size
        .map(|size| {
            node.blocks
                .iter()
                .min_by_key(|(_, s)| s.abs_diff(size))
                .cloned()
                .context("the node serves no block")
        })
        .transpose()?;
    if let Some((hash, _)) = &block {
        cmd.args(["--block", hash]);
    }
    let mut load = Proc::spawn("peerlog-loadgen", cmd, Stream::Stderr)?;
    load.wait_for_line(|l| l.contains("window started"), Duration::from_secs(120))?;
    let started = Instant::now();
    let target_cpu0 = cpu_seconds(node.proc.pid())?;
    let loadgen_cpu0 = cpu_seconds(load.pid())?;
    let tracer_cpu0 = tracer.as_ref().map(|t| cpu_seconds(t.pid())).transpose()?;
    let sampler = |t: &Option<Tracer>| match (&bpf_stats, t) {
        (Some(_), Some(t)) => sampler_stats(t.pid()).map(Some),
        _ => Ok(None),
    };
    let sampler_ns0 = sampler(&tracer)?;
    load.wait_for_line(
        |l| l.contains("window ended"),
        plan.duration + Duration::from_secs(60),
    )?;
    let window_secs = started.elapsed().as_secs_f64();
    let target_cpu_secs = cpu_seconds(node.proc.pid())? - target_cpu0;
    let loadgen_cpu_secs = cpu_seconds(load.pid())? - loadgen_cpu0;
    let tracer_cpu_secs = match (&tracer, tracer_cpu0) {
        (Some(t), Some(before)) => Some(cpu_seconds(t.pid())? - before),
        _ => None,
    };
    let (sampler_cpu_secs, sampler_ns_per_sample) = match (sampler(&tracer)?, sampler_ns0) {
        (Some(after), Some(before)) => {
            let ns = after.run_ns.saturating_sub(before.run_ns) as f64;
            let runs = after.runs.saturating_sub(before.runs);
            (Some(ns / 1e9), (runs > 0).then(|| ns / runs as f64))
        }
        _ => (None, None),
    };
    let status = load.wait(Duration::from_secs(60))?;
    if !status.success() {
        bail!("peerlog-loadgen failed ({status}):\n{}", load.text());
    }
    let report: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(&report_path)
            .with_context(|| format!("reading {}", report_path.display()))?,
    )?;
    let number = |key: &str| report[key].as_f64().unwrap_or(0.0);
    let messages = (number("messages_sent") + number("messages_received")) as u64;
    let errors = &report["errors"];
    let load_errors = [
        "connect",
        "unanswered",
        "notfound",
        "disconnected",
        "protocol",
    ]
    .iter()
    .map(|k| errors[k].as_u64().unwrap_or(0))
    .sum();

    let tracer = match (tracer, tracer_cpu_secs) {
        (Some(t), Some(cpu)) => Some(t.stop(cpu, window_secs)?),
        _ => None,
    };
    node.stop()?;
    drop(bpf_stats);
    // Captures of the block scenario run to gigabytes; the figures are kept
    // in the results. A bitcoind's data directory goes too.
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;

    Ok(Run {
        scenario: scenario.name.into(),
        config: config.name().into(),
        round,
        window_secs,
        answered_per_sec: number("answered_per_sec"),
        messages,
        answer_p99_us: report["latency"]["p99_us"].as_u64().unwrap_or(0),
        load_errors,
        target_cpu_secs,
        target_cpu_percent: 100.0 * target_cpu_secs / window_secs,
        loadgen_cpu_percent: 100.0 * loadgen_cpu_secs / window_secs,
        target_cpu_us_per_msg: if messages > 0 {
            1e6 * target_cpu_secs / messages as f64
        } else {
            0.0
        },
        tracer,
        sampler_cpu_secs,
        sampler_ns_per_sample,
        block_size: block.map(|(_, size)| size),
        load: report,
    })
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// One line of the table: a configuration in a scenario, over its rounds.
#[derive(Debug, Serialize)]
struct Row {
    scenario: String,
    scenario_title: String,
    config: String,
    label: String,
    /// Why there are no figures, when there are none.
    unavailable: Option<String>,
    runs: usize,
    answered_per_sec: f64,
    /// Throughput relative to untraced in the same round: median, min, max.
    throughput_ratio: Option<(f64, f64, f64)>,
    /// Throughput relative to the floor in the same round: median, min, max.
    floor_ratio: Option<(f64, f64, f64)>,
    target_cpu_us_per_msg: f64,
    /// The node's CPU time per message minus the floor's in the same round,
    /// µs, median over the rounds: what this configuration costs the node on
    /// top of merely probing every message.
    cpu_us_per_msg_beyond_floor: Option<f64>,
    answer_p99_us: u64,
    load_errors: u64,
    target_cpu_percent: f64,
    loadgen_cpu_percent: f64,
    tracer_cpu_percent: Option<f64>,
    tracer_peak_rss_mib: Option<f64>,
    tracer_rss_anon_mib: Option<f64>,
    events_lost: Option<u64>,
    /// Runs in which the tracer saw fewer messages than the load generator
    /// exchanged in the window alone (it should see more: handshakes too).
    runs_missing_events: usize,
    /// Median over the rounds of the p50, and the worst p99.
    latency_p50_us: Option<u64>,
    latency_p99_us: Option<u64>,
    /// Sampling runs: the sampler's run time over the node's CPU time
    /// without it (median over the rounds).
    sampler_cost: Option<f64>,
    /// Sampling runs: nanoseconds per run of the sampling program (median
    /// over the rounds).
    sampler_ns_per_sample: Option<f64>,
}

/// The median: with a few rounds on a shared machine, one disturbed round
/// moves a mean but not the median.
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median, min and max, if there are any values.
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    (!values.is_empty()).then(|| {
        (
            median(values.iter().copied()),
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    })
}

/// `f(run of config, run of base)` for each round of `scenario` in which
/// both ran: comparisons within a round, where the machine was in the same
/// state.
fn per_round(
    runs: &[Run],
    scenario: &str,
    config: Config,
    base: Config,
    f: impl Fn(&Run, &Run) -> Option<f64>,
) -> Vec<f64> {
    let of = |c: Config| {
        runs.iter()
            .filter(move |r| r.scenario == scenario && r.config == c.name())
    };
    of(config)
        .filter_map(|r| f(r, of(base).find(|b| b.round == r.round)?))
        .collect()
}

/// Throughput of a run over its base's.
fn throughput_ratio(run: &Run, base: &Run) -> Option<f64> {
    (base.answered_per_sec > 0.0).then(|| run.answered_per_sec / base.answered_per_sec)
}

fn rows(scenarios: &[&Scenario], tools: &Tools, runs: &[Run]) -> Vec<Row> {
    let mut rows = Vec::new();
    for scenario in scenarios {
        for config in Config::ALL {
            let these: Vec<&Run> = runs
                .iter()
                .filter(|r| r.scenario == scenario.name && r.config == config.name())
                .collect();
            let versus = |base: Config, f: fn(&Run, &Run) -> Option<f64>| {
                per_round(runs, scenario.name, config, base, f)
            };
            let beyond_floor = versus(Config::Floor, |r, floor| {
                Some(r.target_cpu_us_per_msg - floor.target_cpu_us_per_msg)
            });
            let tracers: Vec<&TracerRun> = these.iter().filter_map(|r| r.tracer.as_ref()).collect();
            let traced = !tracers.is_empty();
            let mut p50s: Vec<u64> = tracers.iter().filter_map(|t| t.latency_p50_us).collect();
            p50s.sort_unstable();
            rows.push(Row {
                scenario: scenario.name.into(),
                scenario_title: scenario.title.into(),
                config: config.name().into(),
                label: tools.label(config),
                unavailable: tools.unavailable(config),
                runs: these.len(),
                answered_per_sec: median(these.iter().map(|r| r.answered_per_sec)),
                throughput_ratio: spread(&versus(Config::Untraced, throughput_ratio)),
                floor_ratio: spread(&versus(Config::Floor, throughput_ratio)),
                target_cpu_us_per_msg: median(these.iter().map(|r| r.target_cpu_us_per_msg)),
                cpu_us_per_msg_beyond_floor: (!beyond_floor.is_empty())
                    .then(|| median(beyond_floor)),
                answer_p99_us: median(these.iter().map(|r| r.answer_p99_us as f64)) as u64,
                load_errors: these.iter().map(|r| r.load_errors).sum(),
                target_cpu_percent: median(these.iter().map(|r| r.target_cpu_percent)),
                loadgen_cpu_percent: median(these.iter().map(|r| r.loadgen_cpu_percent)),
                tracer_cpu_percent: traced.then(|| median(tracers.iter().map(|t| t.cpu_percent))),
                tracer_peak_rss_mib: traced
                    .then(|| tracers.iter().map(|t| t.peak_rss_mib).fold(0.0, f64::max)),
                tracer_rss_anon_mib: traced
                    .then(|| tracers.iter().map(|t| t.rss_anon_mib).fold(0.0, f64::max)),
                events_lost: traced.then(|| tracers.iter().map(|t| t.events_lost).sum()),
                runs_missing_events: these
                    .iter()
                    .filter(|r| {
                        r.tracer.as_ref().is_some_and(|t| {
                            t.events_seen
                                .is_some_and(|seen| seen + t.events_lost < r.messages)
                        })
                    })
                    .count(),
                latency_p50_us: p50s.get(p50s.len() / 2).copied(),
                sampler_cost: {
                    let costs: Vec<f64> = these
                        .iter()
                        .filter_map(|r| {
                            let sampler = r.sampler_cpu_secs?;
                            let node = r.target_cpu_secs - sampler;
                            (node > 0.0).then(|| sampler / node)
                        })
                        .collect();
                    (!costs.is_empty()).then(|| median(costs))
                },
                latency_p99_us: tracers.iter().filter_map(|t| t.latency_p99_us).max(),
                sampler_ns_per_sample: {
                    let costs: Vec<f64> = these
                        .iter()
                        .filter_map(|r| r.sampler_ns_per_sample)
                        .collect();
                    (!costs.is_empty()).then(|| median(costs))
                },
            });
        }
    }
    rows
}

/// One of the issue's targets, judged on this run.
#[derive(Debug, Serialize)]
struct TargetCheck {
    target: String,
    /// None when this run could not measure it.
    met: Option<bool>,
    detail: String,
}

fn find<'a>(rows: &'a [Row], scenario: &str, config: Config) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.scenario == scenario && r.config == config.name() && r.runs > 0)
}

/// `scenarios` are those that ran; `runs` are every run's figures, for
/// comparisons within a round.
fn check_targets(scenarios: &[&Scenario], rows: &[Row], runs: &[Run]) -> Vec<TargetCheck> {
    let saturating: Vec<&Scenario> = scenarios
        .iter()
        .copied()
        .filter(|s| s.saturating())
        .collect();
    let ratio = |s: &str, c: Config| {
        find(rows, s, c)
            .and_then(|r| r.throughput_ratio)
            .map(|r| r.0)
    };
    let all = |checks: &[Option<bool>]| -> Option<bool> {
        checks
            .iter()
            .copied()
            .collect::<Option<Vec<bool>>>()
            .map(|v| v.iter().all(|&b| b))
    };

    let mut checks = Vec::new();

    // What 99 Hz sampling costs the node: the sampling program's own run
    // time (kernel BPF statistics) over the node's CPU time without it. The
    // node's CPU per message moves by more than 1% between runs on this
    // shared machine, so a difference of two runs could not show it.
    let per: Vec<(&str, Option<f64>)> = scenarios
        .iter()
        .map(|s| {
            (
                s.name,
                find(rows, s.name, Config::Sampling).and_then(|r| r.sampler_cost),
            )
        })
        .collect();
    checks.push(in_every_scenario(
        "99 Hz sampling costs the node < 0.2% CPU",
        &per,
        |c| c < 0.002,
        |c| format!("{:.2}%", c * 100.0),
    ));

    let per: Vec<(&str, Option<f64>)> = scenarios
        .iter()
        .map(|s| {
            (
                s.name,
                find(rows, s.name, Config::Sampling).and_then(|r| r.sampler_ns_per_sample),
            )
        })
        .collect();
    checks.push(in_every_scenario(
        "a CPU sample costs the node ≤ 5 µs",
        &per,
        |c| c <= 5000.0,
        |c| format!("{:.2} µs per sample", c / 1000.0),
    ));

    let per: Vec<(&str, Option<f64>)> = saturating
        .iter()
        .map(|s| (s.name, ratio(s.name, Config::Capture)))
        .collect();
    checks.push(in_every_scenario(
        "full capture keeps ≥ 0.95 of untraced throughput",
        &per,
        |r| r >= 0.95,
        |r| format!("{r:.3}"),
    ));

    // Median, min, max of each: a win inside the other's range is noted, as
    // the machine's noise could have decided it.
    let range = |s: &str, c: Config| find(rows, s, c).and_then(|r| r.throughput_ratio);
    let per: Vec<_> = saturating
        .iter()
        .map(|s| {
            (
                s.name,
                range(s.name, Config::Capture),
                range(s.name, Config::Bpftrace),
            )
        })
        .collect();
    checks.push(TargetCheck {
        target: "full capture beats the bpftrace reference on throughput".into(),
        met: all(&per
            .iter()
            .map(|(_, c, b)| Some(c.as_ref()?.0 > b.as_ref()?.0))
            .collect::<Vec<_>>()),
        detail: per
            .iter()
            .map(|(s, c, b)| match (c, b) {
                (Some(c), Some(b)) => {
                    let overlap = c.1 <= b.2 && b.1 <= c.2;
                    format!(
                        "{s}: {:.3} ({:.2}–{:.2}) vs {:.3} ({:.2}–{:.2}){}",
                        c.0,
                        c.1,
                        c.2,
                        b.0,
                        b.1,
                        b.2,
                        if overlap { ", ranges overlap" } else { "" }
                    )
                }
                _ => format!("{s}: n/a"),
            })
            .collect::<Vec<_>>()
            .join("; "),
    });

    let peerlog_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.runs > 0
                && Config::ALL
                    .iter()
                    .any(|c| c.is_peerlog() && c.name() == r.config)
        })
        .collect();
    let lost: Vec<String> = peerlog_rows
        .iter()
        .filter(|r| r.events_lost.unwrap_or(0) > 0)
        .map(|r| {
            format!(
                "{} {}: {}",
                r.scenario,
                r.config,
                r.events_lost.unwrap_or(0)
            )
        })
        .collect();
    let flood: Vec<String> = peerlog_rows
        .iter()
        .filter(|r| r.scenario == "ping-flood")
        .map(|r| format!("{} at {:.0} answered/s", r.config, r.answered_per_sec))
        .collect();
    checks.push(TargetCheck {
        target: "zero events lost at the highest rate the node sustains".into(),
        met: (!peerlog_rows.is_empty()).then_some(lost.is_empty()),
        detail: if lost.is_empty() {
            format!(
                "none lost in any peerlog run; ping flood: {}",
                flood.join(", ")
            )
        } else {
            format!("lost: {}", lost.join(", "))
        },
    });

    let idle: Vec<&&Row> = peerlog_rows
        .iter()
        .filter(|r| r.scenario == "idle")
        .collect();
    let rss = idle
        .iter()
        .filter_map(|r| r.tracer_peak_rss_mib)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    checks.push(TargetCheck {
        target: "peerlog peak RSS < 64 MiB with 125 peers".into(),
        met: rss.map(|r| r < 64.0),
        detail: idle
            .iter()
            .map(|r| {
                format!(
                    "{}: {:.1} MiB, of which heap {:.1} MiB",
                    r.config,
                    r.tracer_peak_rss_mib.unwrap_or(0.0),
                    r.tracer_rss_anon_mib.unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    });

    let worst = peerlog_rows
        .iter()
        .filter_map(|r| Some((r.latency_p99_us?, *r)))
        .max_by_key(|(p99, _)| *p99);
    checks.push(TargetCheck {
        target: "p99 event latency < 10 ms".into(),
        met: worst.map(|(p99, _)| p99 < 10_000),
        detail: worst.map_or("not measured".into(), |(p99, r)| {
            format!("worst p99: {} ({} {})", micros(p99), r.scenario, r.config)
        }),
    });

    checks.extend(issue_10_targets(scenarios, rows, runs));
    checks.extend(issue_12_targets(scenarios, rows));
    checks
}

/// A target judged in each of `per` (scenario, value): met when every value
/// passes, not measured when any is missing.
fn in_every_scenario(
    target: &str,
    per: &[(&str, Option<f64>)],
    pass: impl Fn(f64) -> bool,
    show: impl Fn(f64) -> String,
) -> TargetCheck {
    TargetCheck {
        target: target.into(),
        met: per
            .iter()
            .map(|(_, v)| v.map(&pass))
            .collect::<Option<Vec<bool>>>()
            .map(|v| v.iter().all(|&b| b)),
        detail: per
            .iter()
            .map(|(s, v)| format!("{s}: {}", v.map_or("n/a".into(), &show)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Issue 10: peerlog with its defaults (per-peer accounting, no uprobe on
/// bitcoind's functions) costs an idle node next to nothing and a busy one
/// little more than `--no-accounting`.
fn issue_10_targets(scenarios: &[&Scenario], rows: &[Row], runs: &[Run]) -> Vec<TargetCheck> {
    let ran = |name: &str| scenarios.iter().any(|s| s.name == name);
    let mut checks = Vec::new();

    let idle_diffs = per_round(runs, "idle", Config::Defaults, Config::Untraced, |d, u| {
        Some(d.target_cpu_percent - u.target_cpu_percent)
    });
    let cpu = |c: Config| find(rows, "idle", c).map(|r| r.target_cpu_percent);
    checks.push(TargetCheck {
        target: "#10: with 125 idle peers, node CPU with defaults ≤ untraced + 1 percentage point"
            .into(),
        met: (ran("idle") && !idle_diffs.is_empty()).then(|| median(idle_diffs.clone()) <= 1.0),
        detail: match (cpu(Config::Defaults), cpu(Config::Untraced)) {
            (Some(d), Some(u)) if !idle_diffs.is_empty() => format!(
                "defaults {d:.1} % vs untraced {u:.1} % of a core (medians); \
                 defaults − untraced per round: {} pp, median {:+.2}",
                idle_diffs
                    .iter()
                    .map(|d| format!("{d:+.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                median(idle_diffs.clone())
            ),
            _ => "not measured".into(),
        },
    });

    let flood = spread(&per_round(
        runs,
        "ping-flood",
        Config::Defaults,
        Config::Counting,
        throughput_ratio,
    ));
    checks.push(TargetCheck {
        target: "#10: ping flood throughput with defaults ≥ 0.90 × --no-accounting's (same round)"
            .into(),
        met: flood.map(|(m, _, _)| m >= 0.90),
        detail: flood.map_or("not measured".into(), |(m, lo, hi)| {
            format!("defaults / --no-accounting: {m:.3} ({lo:.2}–{hi:.2})")
        }),
    });
    checks
}

/// Issue 12: `--no-accounting --capture` measured against the floor (empty
/// probes on the same tracepoints) and the bpftrace reference.
fn issue_12_targets(scenarios: &[&Scenario], rows: &[Row]) -> Vec<TargetCheck> {
    let floor_ratio =
        |s: &str, c: Config| find(rows, s, c).and_then(|r| r.floor_ratio).map(|r| r.0);
    let saturating: Vec<&str> = scenarios
        .iter()
        .filter(|s| s.saturating())
        .map(|s| s.name)
        .collect();
    let mut checks = Vec::new();

    let per: Vec<(&str, Option<f64>)> = saturating
        .iter()
        .map(|&s| (s, floor_ratio(s, Config::Capture)))
        .collect();
    checks.push(in_every_scenario(
        "#12: --no-accounting --capture keeps ≥ 0.93 of the floor's throughput",
        &per,
        |r| r >= 0.93,
        |r| format!("{r:.3}"),
    ));

    let per: Vec<(&str, Option<f64>)> = saturating
        .iter()
        .map(|&s| {
            let margin = floor_ratio(s, Config::Capture)
                .zip(floor_ratio(s, Config::Bpftrace))
                .map(|(capture, bpftrace)| capture - bpftrace);
            (s, margin)
        })
        .collect();
    checks.push(in_every_scenario(
        "#12: --no-accounting --capture's throughput vs the floor ≥ bpftrace's + 0.05",
        &per,
        |m| m >= 0.05,
        |m| format!("{m:+.3}"),
    ));

    let capture: Vec<&Row> = scenarios
        .iter()
        .filter_map(|s| find(rows, s.name, Config::Capture))
        .collect();
    let rss = capture
        .iter()
        .filter_map(|r| Some((r.tracer_peak_rss_mib?, r.scenario.as_str())))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    checks.push(TargetCheck {
        target: "#12: --no-accounting --capture peak RSS < 64 MiB".into(),
        met: rss.map(|(mib, _)| mib < 64.0),
        detail: rss.map_or("not measured".into(), |(mib, s)| {
            format!("largest: {mib:.1} MiB ({s})")
        }),
    });

    let p99 = capture
        .iter()
        .filter_map(|r| Some((r.latency_p99_us?, r.scenario.as_str())))
        .max_by_key(|(p99, _)| *p99);
    checks.push(TargetCheck {
        target: "#12: --no-accounting --capture p99 event latency < 10 ms".into(),
        met: p99.map(|(p99, _)| p99 < 10_000),
        detail: p99.map_or("not measured".into(), |(p99, s)| {
            format!("worst p99: {} ({s})", micros(p99))
        }),
    });
    checks
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// The table, in Markdown (readable as text too).
fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| scenario | configuration | answered/s | vs untraced, median (min–max) | vs floor, median (min–max) | node CPU per msg | beyond floor | answer p99 | CPU: node / load / tracer | tracer peak RSS (heap) | events lost | event latency p50 / p99 |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut last = "";
    for r in rows {
        let scenario = if r.scenario == last {
            ""
        } else {
            r.scenario_title.as_str()
        };
        last = &r.scenario;
        if let Some(why) = &r.unavailable {
            t += &format!("| {scenario} | {} | {why} | | | | | | | | | |\n", r.label);
            continue;
        }
        if r.runs == 0 {
            t += &format!(
                "| {scenario} | {} | no successful run | | | | | | | | | |\n",
                r.label
            );
            continue;
        }
        let dash = || "–".to_string();
        let ratio = |spread: Option<(f64, f64, f64)>| {
            spread.map_or_else(dash, |(m, lo, hi)| format!("{m:.3} ({lo:.2}–{hi:.2})"))
        };
        let (ratio, floor_ratio) = (ratio(r.throughput_ratio), ratio(r.floor_ratio));
        let beyond_floor = r
            .cpu_us_per_msg_beyond_floor
            .map_or_else(dash, |us| format!("{us:+.1} µs"));
        let mut answered = format!("{:.0}", r.answered_per_sec);
        if r.load_errors > 0 {
            answered += &format!(" ({} errors)", r.load_errors);
        }
        let mut lost = r.events_lost.map_or_else(dash, |l| l.to_string());
        if r.runs_missing_events > 0 {
            lost += &format!(" (saw too few messages in {} runs)", r.runs_missing_events);
        }
        let cpu = format!(
            "{:.0} / {:.0} / {} %",
            r.target_cpu_percent,
            r.loadgen_cpu_percent,
            r.tracer_cpu_percent
                .map_or_else(dash, |c| format!("{c:.0}"))
        );
        let latency = match (r.latency_p50_us, r.latency_p99_us) {
            (Some(p50), Some(p99)) => format!("{} / {}", micros(p50), micros(p99)),
            _ if r.tracer_cpu_percent.is_some() => "not measured".into(),
            _ => dash(),
        };
        let rss = match (r.tracer_peak_rss_mib, r.tracer_rss_anon_mib) {
            (Some(peak), Some(anon)) => format!("{peak:.1} MiB ({anon:.1})"),
            _ => dash(),
        };
        let (label, cpu_per_msg, answer_p99) =
            (&r.label, r.target_cpu_us_per_msg, micros(r.answer_p99_us));
        t += &format!(
            "| {scenario} | {label} | {answered} | {ratio} | {floor_ratio} | {cpu_per_msg:.1} µs \
             | {beyond_floor} | {answer_p99} | {cpu} | {rss} | {lost} | {latency} |\n"
        );
    }
    t
}

fn targets_text(checks: &[TargetCheck]) -> String {
    checks
        .iter()
        .map(|c| {
            let verdict = match c.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            };
            format!("- {}: {verdict} ({})\n", c.target, c.detail)
        })
        .collect()
}

/// The machine the bench ran on.
#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    memory_gib: f64,
    /// 1, 5 and 15 minute load averages when the bench started and when it
    /// ended: other work on the machine shows here.
    load_average_at_start: String,
    load_average_at_end: String,
}

impl Machine {
    fn describe() -> Machine {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_else(|| "unknown".into()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            load_average_at_start: load_average(),
            load_average_at_end: String::new(),
        }
    }
}

/// The 1, 5 and 15 minute load averages, e.g. "2.10 1.80 1.50".
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Everything saved as JSON.
#[derive(Serialize)]
struct Results<'a> {
    mode: &'static str,
    /// "twin" or "bitcoind".
    node_kind: &'static str,
    /// The node in words (a bitcoind's version and path).
    node: String,
    date: String,
    commit: String,
    machine: Machine,
    rounds: usize,
    duration_secs: f64,
    total_secs: f64,
    tools: &'a Tools,
    rows: Vec<Row>,
    /// Scenarios this node cannot run, with why.
    skipped: Vec<SkippedScenario>,
    targets: Vec<TargetCheck>,
    failures: Vec<String>,
    runs: Vec<Run>,
}

/// A scenario not run against this node.
#[derive(Debug, Serialize)]
struct SkippedScenario {
    scenario: String,
    title: String,
    reason: String,
}

/// The text of `docs/benchmarks.md`; `{twin}` and `{bitcoind}` are each
/// node's section, [`section`]'s text between its markers.
const DOC_TEMPLATE: &str = r#"# Benchmarks

What tracing a node with peerlog costs it, side by side with the floor (empty
probes on the same tracepoints) and the bpftrace reference, measured by
`cargo xtask bench` against the twin node, and by
`BITCOIND=/path/to/bitcoind cargo xtask bench` against a real bitcoind:
at most about 12 minutes per node on two cores, plus the release build
(three rounds of 5 s windows, as before the floor and the defaults were
added). `cargo xtask bench --smoke`, a second per run, is the version CI
runs. Each node's run writes its own section below and leaves the other's as
it was.

## Twin node

{twin}

## Real bitcoind

{bitcoind}

## What is measured

**Nodes.** The twin node (`tests/twin/twin.cpp`), started fresh for every run.
It has bitcoind's tracepoints, semaphores and `b-net`/`b-msghand` threads; its
message handling is far cheaper than bitcoind's, so tracing overhead relative
to its work is larger than bitcoind would see. With
`BITCOIND=/path/to/bitcoind`, a real bitcoind instead, also fresh for every
run: regtest, loopback only, its own data directory,
`-whitelist=noban,relay@127.0.0.1` (its inbound peers are then preferred for
transaction download, so it asks for what they announce without its 2 s
delay, and their announcements are not capped), `-maxconnections=300` (room
for 125 inbound peers), and one block mined with `bitcoin-cli
generatetodescriptor` so that it leaves initial block download and relays
transactions. A fresh regtest node has no ~1 MB block to serve, so the block
scenario is skipped on it. The node's CPU time counts all its threads.

**Load.** `peerlog-loadgen` (`tests/src/loadgen.rs`, on peerlog's P2P client):
ping flood (8 peers × 8 pings in flight), transaction relay (32 peers × 4
`inv` in flight, each answered by the node's `getdata`, then sent the `tx`),
block serving (4 peers × 2 `getdata` in flight for the twin's block closest
to 1,000,000 bytes, `-blocksize=1000000`), and 125 idle peers pinging once a
second. The first three are closed loops: they run as fast as the node
answers, so tracing overhead shows as lost throughput.

**Configurations**, interleaved in each round (their order rotates; the
exact commands are in each section):

- *untraced*;
- *floor*: bpftrace running `xtask/bench/empty_probe.bt`, empty actions on
  net:inbound_message and net:outbound_message: a uprobe on every message
  and nothing else, which no tracer of those tracepoints can go below;
- *peerlog --no-accounting*: the net:* tracepoints only, counting, nothing
  written;
- *peerlog, defaults*: `peerlog trace --pid PID` and nothing else: per-peer
  accounting on, which puts no uprobe on the node's functions (per-peer CPU
  from slices cut by the message tracepoints and a sched_switch raw
  tracepoint, bytes read from the node's CNodes through its DWARF);
- *peerlog --no-accounting --capture*: every payload written to disk;
- *peerlog, capture + stats + 99 Hz sampling*: everything on (accounting,
  capture, `--stats-log`, `--flamegraph`);
- *bpftrace log_p2p_traffic.bt*: the equivalent of Bitcoin Core's
  `contrib/tracing/log_p2p_traffic.bt` (one text line per message, no
  payload), run by Debian's bpftrace with its output in a file; every run
  checks that it saw at least the messages of the window;
- *peerlog --no-accounting, 99 Hz sampling*: what sampling alone costs the
  node is the sampling program's own run time in the node's threads, from the
  kernel's BPF statistics (`kernel.bpf_stats_enabled`, on for those runs
  only), over the node's CPU time without it.

bpftrace raises the node's USDT semaphores itself (with `-p PID`), and is
given the node's binary as `$1`.

**Columns.** *answered/s*: requests the node answered per second over the
window. *vs untraced*, *vs floor*: that throughput over the untraced run's,
and over the floor run's, of the same round. *node CPU per msg*: the node's
user+system CPU time (`/proc/PID/stat`) over the window, divided by the P2P
messages exchanged in it; *beyond floor*: that minus the floor's of the same
round, what the configuration adds to merely probing each message. *answer
p99*: the load generator's answer latency. *CPU*: the node's, the load
generator's and the tracer's CPU time over the window, in percent of one
core; where they add up to the machine's cores (200 % here), every cycle a
tracer takes is taken from the node or its load, which is most of what the
closed-loop ratios show. *tracer peak RSS*: `VmHWM` before it stops, and in
parentheses its heap (`RssAnon` at the end of the load); peerlog's peak RSS
includes its kernel ring buffer, whose data pages are mapped twice (so that
records never wrap): 32 MiB of RSS for the default `--ring-size 16`. *events
lost*: as the tracer reports them (peerlog's summary, bpftrace's `Lost N
events`). *event latency*: peerlog's kernel-to-userspace latency per message
(CLOCK_MONOTONIC when peerlog handles it minus the tracepoint's timestamp);
bpftrace has no equivalent.

**Reading it.** The twin handles messages on one thread, like bitcoind's
`b-msghand`: in the closed loops it runs at about 100 % of a core (the CPU
column), so its throughput is the inverse of its CPU time per message, and a
tracer's cost shows as the time its probes add to each message (node CPU per
msg), paid in the node's thread whatever the tracer does with the event
afterwards. The floor is that cost for an empty probe; *beyond floor* is
what a tracer's own programs add to it.

Figures are medians over the rounds (the ratios with their range), except
peak RSS (the largest), events lost (the sum) and event latency (the median
p50, the worst p99). Targets are reported, never asserted. Every run's
figures: `target/bench/results.json` (twin) and
`target/bench/results-bitcoind.json`.
"#;

/// One node's section of the doc; `{name}` marks what [`section`] fills in.
const SECTION_TEMPLATE: &str = r#"{date}, commit {commit}, node: {node}. {rounds} rounds of {duration} s per
configuration and scenario, {total} s in all.

Machine: {machine}; load average {load} when the bench started, {load_end}
when it ended. The machine was shared with other builds, and the node, the
tracer and the load generator share its cores, so absolute figures move
between runs; compare ratios within a round.

{table}{skipped}
Targets:

{targets}{failures}
Commands:

{commands}"#;

/// What stands in a node's section until it has been run.
fn not_run_yet(node_kind: &str) -> String {
    let command = match node_kind {
        "bitcoind" => "BITCOIND=/path/to/bitcoind cargo xtask bench",
        _ => "cargo xtask bench",
    };
    format!("Not run yet: `{command}`.")
}

/// The text between a node's markers in `doc`, if it has them.
fn marked_section<'a>(doc: &'a str, node_kind: &str) -> Option<&'a str> {
    let (begin, end) = markers(node_kind);
    let start = doc.find(&begin)? + begin.len();
    let len = doc[start..].find(&end)?;
    Some(doc[start..start + len].trim_matches('\n'))
}

fn markers(node_kind: &str) -> (String, String) {
    (
        format!("<!-- bench:{node_kind}:begin -->"),
        format!("<!-- bench:{node_kind}:end -->"),
    )
}

/// The doc with `results` in their node's section and the other node's
/// section kept from `existing` (the doc as it was).
fn document(existing: &str, results: &Results) -> String {
    ["twin", "bitcoind"]
        .iter()
        .fold(DOC_TEMPLATE.to_string(), |doc, &kind| {
            let text = if kind == results.node_kind {
                section(results)
            } else {
                marked_section(existing, kind).map_or_else(|| not_run_yet(kind), str::to_string)
            };
            let (begin, end) = markers(kind);
            doc.replace(&format!("{{{kind}}}"), &format!("{begin}\n{text}\n{end}"))
        })
}

/// This run's section of the doc.
fn section(results: &Results) -> String {
    let m = &results.machine;
    // The exact command of each tracer configuration, from the runs.
    let commands: String = Config::ALL
        .into_iter()
        .filter_map(|config| {
            let run = results.runs.iter().find(|r| r.config == config.name())?;
            let tracer = run.tracer.as_ref()?;
            Some(format!(
                "- {}: `{}`\n",
                results.tools.label(config),
                tracer.command
            ))
        })
        .collect();
    let failures = if results.failures.is_empty() {
        String::new()
    } else {
        let list: String = results
            .failures
            .iter()
            .map(|f| format!("- {}\n", f.replace('\n', " ")))
            .collect();
        format!("\nFailed runs:\n\n{list}")
    };
    let skipped: String = results
        .skipped
        .iter()
        .map(|s| format!("\nNot run: {}: {}.\n", s.title, s.reason))
        .collect();
    let machine = format!(
        "{} CPUs ({}), {:.1} GiB, Linux {}",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel
    );
    [
        ("{date}", results.date.clone()),
        ("{commit}", results.commit.clone()),
        ("{node}", results.node.clone()),
        ("{rounds}", results.rounds.to_string()),
        ("{duration}", results.duration_secs.to_string()),
        ("{total}", format!("{:.0}", results.total_secs)),
        ("{machine}", machine),
        ("{load}", m.load_average_at_start.clone()),
        ("{load_end}", m.load_average_at_end.clone()),
        ("{table}", table(&results.rows)),
        ("{skipped}", skipped),
        ("{targets}", targets_text(&results.targets)),
        ("{failures}", failures),
        ("{commands}", commands),
    ]
    .iter()
    .fold(SECTION_TEMPLATE.to_string(), |doc, (key, value)| {
        doc.replace(key, value)
    })
    .trim_end()
    .to_string()
}

/// Runs the bench against the twin, or the bitcoind `BITCOIND` names;
/// `smoke` runs it once, briefly, and leaves the docs alone.
pub fn run(smoke: bool) -> Result<()> {
    if !crate::is_root() {
        bail!("the bench loads eBPF programs (peerlog, bpftrace): run it as root");
    }
    let plan = Plan::new(smoke);
    mount_tracefs();
    let bins = build()?;
    let node = NodeKind::from_env(&bins)?;
    let tools = Tools::detect(&bins)?;
    let mut machine = Machine::describe();
    let started = Instant::now();
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|&c| match tools.unavailable(c) {
            Some(why) => {
                eprintln!("bench: {}: {why}", tools.label(c));
                false
            }
            None => true,
        })
        .collect();
    let mut scenarios = Vec::new();
    let mut skipped = Vec::new();
    for scenario in &plan.scenarios {
        match scenario.skipped_on(&node) {
            Some(reason) => {
                eprintln!("bench: not running {}: {reason}", scenario.title);
                skipped.push(SkippedScenario {
                    scenario: scenario.name.into(),
                    title: scenario.title.into(),
                    reason,
                });
            }
            None => scenarios.push(scenario),
        }
    }
    let total = scenarios.len() * plan.rounds * configs.len();
    eprintln!(
        "bench: {total} runs of {} s ({} scenarios × {} rounds × {} configurations) against {} on {} CPUs, load average {}",
        plan.duration.as_secs_f64(),
        scenarios.len(),
        plan.rounds,
        configs.len(),
        node.describe(),
        machine.cpus,
        machine.load_average_at_start
    );

    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for scenario in &scenarios {
        for round in 0..plan.rounds {
            // Rotating the order spreads drift over every configuration.
            let mut order = configs.clone();
            order.rotate_left(round % configs.len());
            for config in order {
                let n = runs.len() + failures.len() + 1;
                match run_one(&plan, scenario, config, round, &bins, &tools, &node) {
                    Ok(run) => {
                        let tracer = run.tracer.as_ref().map_or(String::new(), |t| {
                            format!(
                                ", tracer {:.1} % CPU, {:.1} MiB, {} events, {} lost",
                                t.cpu_percent,
                                t.peak_rss_mib,
                                t.events_seen.map_or("n/a".into(), |n| n.to_string()),
                                t.events_lost
                            )
                        });
                        eprintln!(
                            "bench: [{n}/{total}] {} · {} · round {}: {:.0} answered/s, node {:.1} µs CPU/msg, {:.1} % CPU{tracer}",
                            scenario.name,
                            config.name(),
                            round + 1,
                            run.answered_per_sec,
                            run.target_cpu_us_per_msg,
                            run.target_cpu_percent
                        );
                        runs.push(run);
                    }
                    Err(e) => {
                        let msg = format!(
                            "{} · {} · round {}: {e:#}",
                            scenario.name,
                            config.name(),
                            round + 1
                        );
                        eprintln!("bench: [{n}/{total}] FAILED {msg}");
                        if smoke && config.is_bpftrace() {
                            // The smoke run guards peerlog's harness; the
                            // reference tool failing now and then (it once
                            // hung on exit in 180 runs) is reported, not fatal.
                            eprintln!(
                                "bench: (smoke) a bpftrace configuration failed; not counted"
                            );
                        } else {
                            failures.push(msg);
                        }
                    }
                }
            }
        }
    }
    machine.load_average_at_end = load_average();

    let rows = rows(&scenarios, &tools, &runs);
    let targets = check_targets(&scenarios, &rows, &runs);
    let dirty =
        !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let results = Results {
        mode: if smoke { "smoke" } else { "full" },
        node_kind: node.key(),
        node: node.describe(),
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        commit: format!(
            "{}{}",
            command_output("git", &["rev-parse", "--short", "HEAD"]),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
        machine,
        rounds: plan.rounds,
        duration_secs: plan.duration.as_secs_f64(),
        total_secs: started.elapsed().as_secs_f64(),
        tools: &tools,
        rows,
        skipped,
        targets,
        failures,
        runs,
    };

    println!("\n{}", table(&results.rows));
    println!(
        "Targets{}:\n{}",
        if smoke {
            " (smoke run: 1 s per configuration, not meaningful)"
        } else {
            ""
        },
        targets_text(&results.targets)
    );
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let json_path = dir.join(match (smoke, &node) {
        (false, NodeKind::Twin(_)) => "results.json",
        (false, NodeKind::Bitcoind { .. }) => "results-bitcoind.json",
        (true, NodeKind::Twin(_)) => "smoke.json",
        (true, NodeKind::Bitcoind { .. }) => "smoke-bitcoind.json",
    });
    fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("bench: results in {}", json_path.display());
    if !smoke {
        let doc = workspace_root().join("docs/benchmarks.md");
        // The other node's section is kept from the doc as it is.
        let existing = match fs::read_to_string(&doc) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read.with_context(|| format!("reading {}", doc.display()))?,
        };
        fs::write(&doc, document(&existing, &results))
            .with_context(|| format!("writing {}", doc.display()))?;
        println!(
            "bench: table and machine written to the {} section of {}",
            results.node_kind,
            doc.display()
        );
    }
    println!("bench: {:.0} s in all", results.total_secs);
    if !results.failures.is_empty() {
        return Err(anyhow!(
            "{} of {total} runs failed:\n{}",
            results.failures.len(),
            results.failures.join("\n")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peerlog_summary() {
        let stderr = "peerlog: attached to pid 1 (twin, /x): 7 probe sites of 7 tracepoints (semaphores raised by the kernel)\n\
                      peerlog: stopped (interrupted)\n  peers seen:       2\n  received:         21 messages, 4406219 bytes\n\
                      \x20 sent:             18 messages, 4420153 bytes\n  capture records:  39\n\
                      \x20 event latency:    p50 120 µs, p99 9100 µs\n  events lost:      3 (ring_full_chunk=3)\n";
        assert_eq!(
            PeerlogSummary::parse(stderr).unwrap(),
            PeerlogSummary {
                received: 21,
                sent: 18,
                events_lost: 3,
                latency_us: Some((120, 9100)),
            }
        );
        let without_latency = stderr.replace("  event latency:    p50 120 µs, p99 9100 µs\n", "");
        assert_eq!(
            PeerlogSummary::parse(&without_latency).unwrap().latency_us,
            None
        );
        assert!(PeerlogSummary::parse("peerlog: error: boom").is_err());
    }

    fn results<'a>(tools: &'a Tools, node_kind: &'static str, runs: Vec<Run>) -> Results<'a> {
        let plan = Plan::new(false);
        let scenarios: Vec<&Scenario> = plan.scenarios.iter().collect();
        Results {
            mode: "full",
            node_kind,
            node: format!("the {node_kind} node"),
            date: "2026-01-01 00:00 UTC".into(),
            commit: "0000000".into(),
            machine: Machine::describe(),
            rounds: 3,
            duration_secs: 6.0,
            total_secs: 500.0,
            tools,
            rows: rows(&scenarios, tools, &runs),
            skipped: vec![SkippedScenario {
                scenario: "blocks".into(),
                title: "4 peers, ~1 MB block serving".into(),
                reason: "no such block".into(),
            }],
            targets: check_targets(&scenarios, &[], &runs),
            failures: vec!["relay · bpftrace · round 1: boom\nmore".into()],
            runs,
        }
    }

    fn tools() -> Tools {
        Tools {
            bpftrace: Ok("bpftrace v0.17.0".into()),
            stats_options: vec![],
            no_accounting: true,
        }
    }

    #[test]
    fn fills_every_placeholder_of_the_doc() {
        let tools = tools();
        let doc = document("", &results(&tools, "twin", vec![]));
        assert!(!doc.contains('{'), "{doc}");
        assert!(doc.contains("not available yet"));
        assert!(doc.contains("- relay · bpftrace · round 1: boom more"));
        assert!(doc.contains("Not run: 4 peers, ~1 MB block serving: no such block."));
        assert!(doc.contains("node: the twin node."));
        assert!(doc.contains(&not_run_yet("bitcoind")), "{doc}");
    }

    #[test]
    fn keeps_the_other_nodes_section() {
        let tools = tools();
        let twin = document("", &results(&tools, "twin", vec![]));
        let twin_section = marked_section(&twin, "twin").unwrap().to_string();
        assert!(twin_section.contains("node: the twin node."));
        // The twin's section survives a bitcoind run, and the bitcoind's the
        // next twin run.
        let both = document(&twin, &results(&tools, "bitcoind", vec![]));
        assert_eq!(marked_section(&both, "twin").unwrap(), twin_section);
        let bitcoind_section = marked_section(&both, "bitcoind").unwrap().to_string();
        assert!(bitcoind_section.contains("node: the bitcoind node."));
        let again = document(&both, &results(&tools, "twin", vec![]));
        assert_eq!(
            marked_section(&again, "bitcoind").unwrap(),
            bitcoind_section
        );
        assert_eq!(again.matches("<!-- bench:twin:begin -->").count(), 1);
        assert_eq!(again.matches("<!-- bench:bitcoind:end -->").count(), 1);
    }

    /// A run with the figures the comparisons read.
    fn run(scenario: &str, config: Config, round: usize, per_sec: f64, cpu_us: f64) -> Run {
        Run {
            scenario: scenario.into(),
            config: config.name().into(),
            round,
            window_secs: 5.0,
            answered_per_sec: per_sec,
            messages: 1000,
            answer_p99_us: 0,
            load_errors: 0,
            target_cpu_secs: 0.0,
            target_cpu_us_per_msg: cpu_us,
            target_cpu_percent: cpu_us / 10.0,
            loadgen_cpu_percent: 0.0,
            tracer: None,
            sampler_cpu_secs: None,
            sampler_ns_per_sample: None,
            block_size: None,
            load: serde_json::Value::Null,
        }
    }

    #[test]
    fn compares_with_the_floor_of_the_same_round() {
        let runs = vec![
            run("ping-flood", Config::Untraced, 0, 1000.0, 10.0),
            run("ping-flood", Config::Floor, 0, 800.0, 12.0),
            run("ping-flood", Config::Counting, 0, 760.0, 13.0),
            run("ping-flood", Config::Defaults, 0, 700.0, 14.0),
            // Another round, on a slower machine: compared within it.
            run("ping-flood", Config::Untraced, 1, 500.0, 20.0),
            run("ping-flood", Config::Floor, 1, 400.0, 24.0),
            run("ping-flood", Config::Counting, 1, 400.0, 25.0),
            run("ping-flood", Config::Defaults, 1, 380.0, 27.0),
        ];
        let plan = Plan::new(false);
        let scenarios: Vec<&Scenario> = plan.scenarios.iter().take(1).collect();
        let rows = rows(&scenarios, &tools(), &runs);
        let counting = find(&rows, "ping-flood", Config::Counting).unwrap();
        assert_eq!(counting.throughput_ratio, Some((0.78, 0.76, 0.8)));
        assert_eq!(counting.floor_ratio, Some((0.975, 0.95, 1.0)));
        assert_eq!(counting.cpu_us_per_msg_beyond_floor, Some(1.0));
        let floor = find(&rows, "ping-flood", Config::Floor).unwrap();
        assert_eq!(floor.floor_ratio, Some((1.0, 1.0, 1.0)));

        let targets = check_targets(&scenarios, &rows, &runs);
        let flood = targets
            .iter()
            .find(|t| t.target.contains("defaults ≥ 0.90"))
            .unwrap();
        // 700/760 = 0.921 and 380/400 = 0.95: median 0.9355.
        assert_eq!(flood.met, Some(true), "{}", flood.detail);
        assert!(flood.detail.contains("0.936"), "{}", flood.detail);
        // No idle scenario ran: that target is not measured, not missed.
        let idle = targets.iter().find(|t| t.target.contains("idle")).unwrap();
        assert_eq!(idle.met, None);
    }

    #[test]
    fn counts_bpftrace_losses() {
        assert_eq!(
            bpftrace_lost("recv ping\nLost 12 events\nsent pong\nLost 3 events\n"),
            15
        );
        assert_eq!(bpftrace_lost("recv ping\n"), 0);
    }

    #[test]
    fn reads_own_cpu_and_rss() {
        let pid = std::process::id() as i32;
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        let (peak, anon) = memory_mib(pid).unwrap();
        assert!(peak >= anon && anon > 0.0);
        assert!(thread_waits(pid).contains(':'));
    }
}
