//! What the bench reads of a running process in `/proc`: its CPU time, its
//! memory, and the runs of its CPU-sampling BPF program.

use std::fs;

use anyhow::{Context, Result};
use serde::Serialize;

/// `BPF_PROG_TYPE_PERF_EVENT`: peerlog's only program of that type is its
/// CPU sampler.
const BPF_PROG_TYPE_PERF_EVENT: u64 = 7;

/// The kernel's BPF statistics (`kernel.bpf_stats_enabled`) of a CPU-sampling
/// program: its runs on every process but the idle task, in the node's
/// threads (its samples) and in others' (where it returns at once).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct SamplerRuns {
    /// Nanoseconds run.
    pub(super) ns: u64,
    /// Times run.
    pub(super) count: u64,
}

/// What peerlog's summary says its samples of the node took in the
/// sampling program past its entry (`sampler time:`), as the program counted
/// them itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct SamplerTime {
    pub(super) ns: u64,
    pub(super) samples: u64,
}

impl SamplerTime {
    /// What a sample of the node costs in the program: its own time past
    /// the entry, per sample, plus the entry, which every run pays, in any
    /// process. The entry is the kernel's count of all runs less the node's
    /// part, over all runs; `runs` covers the same life as `self`. The
    /// kernel's whole count over the node's samples would charge the node
    /// for the early returns in other processes, as many as its samples
    /// under load and most runs on an idle node.
    pub(super) fn ns_per_sample(self, runs: SamplerRuns) -> Option<f64> {
        if self.samples == 0 || runs.count == 0 {
            return None;
        }
        let entry = runs.ns.saturating_sub(self.ns) as f64 / runs.count as f64;
        Some(entry + self.ns as f64 / self.samples as f64)
    }
}

/// What the CPU-sampling program of process `pid` has run so far, from the
/// fdinfo of its program descriptors.
pub(super) fn sampler_runs(pid: i32) -> Result<SamplerRuns> {
    let mut total = SamplerRuns::default();
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
            total.ns += field("run_time_ns:").unwrap_or(0);
            total.count += field("run_cnt:").unwrap_or(0);
        }
    }
    Ok(total)
}

/// Switches the kernel's per-program run-time statistics on for as long as
/// it lives (they cost every BPF program a little, so only sampling runs
/// have them).
pub(super) struct BpfStats;

impl BpfStats {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    /// Switches the statistics on until the value is dropped.
    pub(super) fn enable() -> Result<Self> {
        fs::write(Self::SYSCTL, "1").with_context(|| format!("writing {}", Self::SYSCTL))?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(Self::SYSCTL, "0");
    }
}

/// CPU time (user + system, all threads) a process has used so far.
pub(super) fn cpu_seconds(pid: i32) -> Result<f64> {
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
pub(super) fn memory_mib(pid: i32) -> Result<(f64, f64)> {
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
