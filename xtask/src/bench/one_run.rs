//! One run: a fresh node, the configuration's tracer, the load generator
//! over one window, and what that window measured.

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{
    lock_watch::{LockWatch, MmLockRun},
    node::{Node, NodeKind},
    plan::{Config, Plan, Scenario},
    process::{Proc, Stream},
    sample::{cpu_seconds, sampler_runs, BpfStats},
    tools::{Binaries, Tools},
    tracer::{Tracer, TracerRun},
};
use crate::workspace_root;

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Run {
    pub(super) scenario: String,
    pub(super) config: String,
    pub(super) round: usize,
    /// Length of the load window as timed here, seconds.
    pub(super) window_secs: f64,
    /// Requests the node answered per second.
    pub(super) answered_per_sec: f64,
    /// P2P messages exchanged with the node in the window (both directions).
    pub(super) messages: u64,
    /// The load generator's p99 answer latency, µs.
    pub(super) answer_p99_us: u64,
    /// Load generator errors (unanswered requests, disconnections, ...).
    pub(super) load_errors: u64,
    /// The node's CPU time in the window, seconds.
    pub(super) target_cpu_secs: f64,
    /// The node's CPU time per message, µs.
    pub(super) target_cpu_us_per_msg: f64,
    /// The node's and the load generator's CPU time in the window, as
    /// percentages of one core: with the tracer's, how busy the machine was.
    pub(super) target_cpu_percent: f64,
    pub(super) loadgen_cpu_percent: f64,
    /// The tracer's figures, if traced.
    pub(super) tracer: Option<TracerRun>,
    /// CPU time the sampling program ran in the window, seconds: in the
    /// node's threads, and its early returns in other processes (never on
    /// an idle CPU), so at most what it took from the node (sampling runs
    /// only).
    pub(super) sampler_cpu_secs: Option<f64>,
    /// Nanoseconds a sample of the node costs in the sampling program (see
    /// [`SamplerTime::ns_per_sample`]; sampling runs only).
    pub(super) sampler_ns_per_sample: Option<f64>,
    /// The node's mm lock while the run lasted (the configurations that
    /// watch it).
    pub(super) node_mm_lock: Option<MmLockRun>,
    /// Size of the blocks requested, bytes (block serving only).
    pub(super) block_size: Option<usize>,
    /// The load generator's full report.
    pub(super) load: serde_json::Value,
}

/// Runs `config` in `scenario` for round `round` against a fresh node.
pub(super) fn run_one(
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
    let bpf_stats = config.samples_cpus().then(BpfStats::enable).transpose()?;
    let tracer = Tracer::start(config, bins, tools, kind, node.proc.pid(), &dir)?;
    let watch = config
        .watches_mm_lock()
        .then(|| LockWatch::start(node.proc.pid(), &dir))
        .transpose()?;

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
        (Some(_), Some(t)) => sampler_runs(t.pid()).map(Some),
        _ => Ok(None),
    };
    let sampler_ns0 = sampler(&tracer)?;
    load.wait_for_line(
        |l| l.contains("window ended"),
        plan.duration + Duration::from_secs(60),
    )?;
    let window_secs = started.elapsed().as_secs_f64();
    let node_mm_lock = watch.map(LockWatch::stop).transpose()?;
    let target_cpu_secs = cpu_seconds(node.proc.pid())? - target_cpu0;
    let loadgen_cpu_secs = cpu_seconds(load.pid())? - loadgen_cpu0;
    let tracer_cpu_secs = match (&tracer, tracer_cpu0) {
        (Some(t), Some(before)) => Some(cpu_seconds(t.pid())? - before),
        _ => None,
    };
    let sampler_cpu_secs = match (sampler(&tracer)?, sampler_ns0) {
        (Some(after), Some(before)) => Some(after.ns.saturating_sub(before.ns) as f64 / 1e9),
        _ => None,
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

    // The program's runs over its whole life, read just before peerlog
    // exits and reports what its samples of the node took in that life.
    let sampler_total = sampler(&tracer)?;
    let tracer = match (tracer, tracer_cpu_secs) {
        (Some(t), Some(cpu)) => Some(t.stop(cpu, window_secs)?),
        _ => None,
    };
    let sampler_ns_per_sample = match (sampler_total, tracer.as_ref()) {
        (Some(runs), Some(t)) => t.sampler_time.and_then(|time| time.ns_per_sample(runs)),
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
        node_mm_lock,
        block_size: block.map(|(_, size)| size),
        load: report,
    })
}
