//! The tracer of a run: `peerlog trace` in one of its configurations, or
//! bpftrace with the floor's or the reference script; started once the node
//! runs, stopped after the load, and what it reported on exit.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{
    node::NodeKind,
    plan::Config,
    process::{path_arg, Proc, Stream},
    sample::{memory_mib, SamplerTime},
    tools::{Binaries, Tools},
};
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

/// A running tracer.
pub(super) struct Tracer {
    proc: Proc,
    /// bpftrace's output file; None for peerlog.
    bpftrace_output: Option<BpftraceOutput>,
    /// How it was started, for the results.
    command: String,
    /// What it said when it attached (peerlog: how many probe sites).
    attached: String,
    /// The stats log it writes, when its readings of bitcoind's memory are
    /// counted.
    stats_log: Option<PathBuf>,
}

/// Where a bpftrace run writes, and whether its script logs a line per
/// message (the reference) or nothing (the floor).
struct BpftraceOutput {
    path: PathBuf,
    logs_messages: bool,
}

/// What a tracer reported, over its whole run.
#[derive(Clone, Debug, Serialize)]
pub(super) struct TracerRun {
    /// How it was started.
    pub(super) command: String,
    /// Its attach message.
    attached: String,
    /// CPU time over the load window, in seconds.
    cpu_secs: f64,
    /// The same as a percentage of one core.
    pub(super) cpu_percent: f64,
    /// Peak resident set size, MiB. For peerlog this counts the kernel ring
    /// buffer it maps (twice: its data pages are mapped two times in a row so
    /// that records never wrap), 32 MiB with the default 16 MiB ring.
    pub(super) peak_rss_mib: f64,
    /// Anonymous (heap) RSS at the end of the load, MiB: the tracer's own
    /// memory, without mapped files and rings.
    pub(super) rss_anon_mib: f64,
    /// P2P messages the tracer saw (both directions); None for the floor,
    /// which has no output.
    pub(super) events_seen: Option<u64>,
    /// Events the tracer reported lost.
    pub(super) events_lost: u64,
    /// Kernel-to-userspace event latency percentiles, µs (peerlog only).
    pub(super) latency_p50_us: Option<u64>,
    pub(super) latency_p99_us: Option<u64>,
    /// How many times, over its whole run, it read a peer's queues out of
    /// bitcoind's memory: the peers whose stats log entries carry a
    /// measured `memory.send_queue_bytes` (memory-read runs only).
    pub(super) queue_readings: Option<u64>,
    /// Samples of the node the CPU sampler took over the tracer's life
    /// (peerlog with `--flamegraph`).
    pub(super) cpu_samples: Option<u64>,
    /// What those samples took in the program, past its entry.
    pub(super) sampler_time: Option<SamplerTime>,
}

impl Tracer {
    /// Starts the tracer of `config` on the node `pid` and waits until it
    /// has attached; None when `config` is untraced.
    pub(super) fn start(
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
        // The sampling configurations' flamegraph directory.
        let flamegraph = || -> Result<[String; 2]> {
            Ok(["--flamegraph".into(), path_arg(&dir.join("flamegraph"))?])
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
            Config::Sampling => net_only().chain(flamegraph()?).collect(),
            Config::PeerFlamegraphs => flamegraph()?.into(),
            Config::Capture => net_only()
                .chain(["--capture".into(), path_arg(&dir.join("capture"))?])
                .collect(),
            Config::MemoryReads => vec![
                "--stats-log".into(),
                path_arg(&dir.join("stats-log"))?,
                "--stats-interval".into(),
                "1".into(),
            ],
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
            stats_log: (config == Config::MemoryReads).then(|| dir.join("stats-log")),
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
        let proc = start_bpftrace("bpftrace", cmd, &output)?;
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
            stats_log: None,
        })
    }

    /// Its process id.
    pub(super) fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Stops the tracer (SIGINT, as a user would) and reads what it reports.
    pub(super) fn stop(mut self, cpu_secs: f64, window_secs: f64) -> Result<TracerRun> {
        let (peak_rss_mib, rss_anon_mib) = memory_mib(self.pid())?;
        self.proc.signal(libc::SIGINT);
        let status = self.proc.wait(Duration::from_secs(120))?;
        let stderr = self.proc.text();
        if !status.success() {
            bail!("{} failed ({status}):\n{stderr}", self.proc.what);
        }
        let (events_seen, events_lost, latency, cpu_samples, sampler_time) =
            match &self.bpftrace_output {
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
                    (
                        seen,
                        bpftrace_lost(&log) + bpftrace_lost(&stderr),
                        None,
                        None,
                        None,
                    )
                }
                None => {
                    let summary = PeerlogSummary::parse(&stderr)?;
                    (
                        Some(summary.received + summary.sent),
                        summary.events_lost,
                        summary.latency_us,
                        summary.cpu_samples,
                        summary.sampler_time,
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
            queue_readings: self.stats_log.as_deref().map(queue_readings).transpose()?,
            cpu_samples,
            sampler_time,
        })
    }
}

/// Starts `cmd`, a bpftrace writing to `output` (`-o`), and returns once
/// its probes are in place.
pub(super) fn start_bpftrace(what: &str, cmd: Command, output: &Path) -> Result<Proc> {
    let mut proc = Proc::spawn(what, cmd, Stream::Stderr)?;
    proc.wait_until(
        || fs::read_to_string(output).is_ok_and(|t| t.contains("Attaching")),
        ATTACH_TIMEOUT,
        Duration::from_millis(20),
        "before attaching",
        &format!("attach within {ATTACH_TIMEOUT:?}"),
    )?;
    thread::sleep(BPFTRACE_ATTACH_GRACE);
    Ok(proc)
}

/// The peers, summed over a stats log's lines, whose send queue was read
/// from bitcoind's memory (a figure that could not be read is `null`).
pub(super) fn queue_readings(stats_log: &Path) -> Result<u64> {
    let text = fs::read_to_string(stats_log)
        .with_context(|| format!("reading {}", stats_log.display()))?;
    let mut readings = 0;
    for line in text.lines() {
        let line: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("a line of {} is not JSON", stats_log.display()))?;
        readings += line["peers"].as_array().map_or(0, |peers| {
            peers
                .iter()
                .filter(|p| p["memory"]["send_queue_bytes"].is_u64())
                .count() as u64
        });
    }
    Ok(readings)
}

/// bpftrace reports perf buffer overflows as "Lost N events".
pub(super) fn bpftrace_lost(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Lost ")?.strip_suffix(" events"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

/// The figures of `peerlog trace`'s exit summary that the bench uses.
#[derive(Debug, PartialEq)]
pub(super) struct PeerlogSummary {
    pub(super) received: u64,
    pub(super) sent: u64,
    pub(super) events_lost: u64,
    pub(super) latency_us: Option<(u64, u64)>,
    /// Samples of the node the CPU sampler took, sent and lost, from
    /// attach to exit (runs with `--flamegraph`).
    pub(super) cpu_samples: Option<u64>,
    /// What the program counted of those samples' time past its entry.
    pub(super) sampler_time: Option<SamplerTime>,
}

impl PeerlogSummary {
    /// Reads the summary from peerlog's standard error.
    pub(super) fn parse(stderr: &str) -> Result<PeerlogSummary> {
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
        // "902 at 99 Hz over 11.4 s, 100.0% unwound to the thread entry, 3 lost"
        let cpu_samples = field("cpu samples:").and_then(|v| {
            let sent: u64 = v.split_whitespace().next()?.parse().ok()?;
            let lost: u64 = v.rsplit(", ").next()?.strip_suffix(" lost")?.parse().ok()?;
            Some(sent + lost)
        });
        // "6.15 µs per sample in the node past the program's entry (5407 µs
        // over 879 samples)"
        let sampler_time = field("sampler time:").and_then(|v| {
            let inner = v.rsplit_once('(')?.1.strip_suffix(')')?;
            let (micros, samples) = inner.split_once(" µs over ")?;
            Some(SamplerTime {
                ns: micros.parse::<u64>().ok()? * 1000,
                samples: samples.strip_suffix(" samples")?.parse().ok()?,
            })
        });
        Ok(PeerlogSummary {
            received: first_number("received:")?,
            sent: first_number("sent:")?,
            events_lost: first_number("events lost:")?,
            latency_us,
            cpu_samples,
            sampler_time,
        })
    }
}
