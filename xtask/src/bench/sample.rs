//! What the bench reads of a running process in `/proc`: its CPU time, its
//! memory, and the run time of its CPU-sampling BPF program.

use std::fs;

use anyhow::{Context, Result};

/// `BPF_PROG_TYPE_PERF_EVENT`: peerlog's only program of that type is its
/// CPU sampler.
const BPF_PROG_TYPE_PERF_EVENT: u64 = 7;

/// Nanoseconds the CPU-sampling program of process `pid` has run so far,
/// from the kernel's BPF statistics (`kernel.bpf_stats_enabled`) in the
/// fdinfo of its program descriptors: on every process but the idle task,
/// in the node's threads (its samples) and in others' (where it returns at
/// once).
pub(super) fn sampler_run_ns(pid: i32) -> Result<u64> {
    let mut total = 0;
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
            total += field("run_time_ns:").unwrap_or(0);
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
