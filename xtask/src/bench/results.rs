//! Everything one bench saves as JSON, the machine it ran on included.

use std::{fs, thread};

use serde::Serialize;

use super::{one_run::Run, rows::Row, targets::TargetCheck, tools::Tools};

/// The machine the bench ran on.
#[derive(Debug, Serialize)]
pub(super) struct Machine {
    pub(super) cpus: usize,
    pub(super) cpu_model: String,
    pub(super) kernel: String,
    pub(super) memory_gib: f64,
    /// 1, 5 and 15 minute load averages when the bench started and when it
    /// ended: other work on the machine shows here.
    pub(super) load_average_at_start: String,
    pub(super) load_average_at_end: String,
}

impl Machine {
    /// This machine, with its load average now as the one at the start.
    pub(super) fn describe() -> Machine {
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
pub(super) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Everything saved as JSON.
#[derive(Serialize)]
pub(super) struct Results<'a> {
    pub(super) mode: &'static str,
    /// "twin" or "bitcoind".
    pub(super) node_kind: &'static str,
    /// The node in words (a bitcoind's version and path).
    pub(super) node: String,
    pub(super) date: String,
    pub(super) commit: String,
    pub(super) machine: Machine,
    pub(super) rounds: usize,
    pub(super) duration_secs: f64,
    pub(super) total_secs: f64,
    pub(super) tools: &'a Tools,
    pub(super) rows: Vec<Row>,
    /// Scenarios this node cannot run, with why.
    pub(super) skipped: Vec<SkippedScenario>,
    pub(super) targets: Vec<TargetCheck>,
    pub(super) failures: Vec<String>,
    pub(super) runs: Vec<Run>,
}

/// A scenario not run against this node.
#[derive(Debug, Serialize)]
pub(super) struct SkippedScenario {
    pub(super) scenario: String,
    pub(super) title: String,
    pub(super) reason: String,
}
