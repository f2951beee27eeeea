//! Watching the node's mm lock while peerlog reads its memory (issue 14):
//! `xtask/bench/mm_lock_wait.bt` in bpftrace, next to the run's tracer.
//! peerlog's reads take that lock in peerlog's process; the node pays only
//! if its own threads wait for it, which this measures directly instead of
//! hoping a CPU-time difference rises above the noise.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{process::Proc, tracer::start_bpftrace};
use crate::workspace_root;

/// A running watch of one node's mm lock.
pub(super) struct LockWatch {
    proc: Proc,
    output: PathBuf,
    started: Instant,
}

/// What a watch saw, per second of the watch.
#[derive(Clone, Debug, Serialize)]
pub(super) struct MmLockRun {
    /// Microseconds the node's threads waited for their mm lock, per second.
    pub(super) node_wait_us_per_sec: f64,
    /// Times the node's threads took it, per second.
    pub(super) node_locks_per_sec: f64,
    /// Times other processes took the node's mm lock, per second: peerlog's
    /// reads among them.
    pub(super) foreign_locks_per_sec: f64,
    /// Microseconds other processes held the node's mm lock, per second.
    pub(super) foreign_hold_us_per_sec: f64,
    /// Microseconds of the node's waits, per second, during which another
    /// process held the lock or let it go: what those holds can have cost
    /// the node, apart from its threads waiting for each other.
    pub(super) node_wait_behind_foreign_us_per_sec: f64,
}

impl LockWatch {
    /// Starts watching the mm lock of node `pid`, writing to `dir`.
    pub(super) fn start(pid: i32, dir: &std::path::Path) -> Result<LockWatch> {
        let output = dir.join("mm_lock_wait.log");
        let mut cmd = Command::new("bpftrace");
        cmd.arg("-o")
            .arg(&output)
            .arg(workspace_root().join("xtask/bench/mm_lock_wait.bt"))
            .arg(pid.to_string());
        let proc = start_bpftrace("bpftrace (mm lock watch)", cmd, &output)?;
        Ok(LockWatch {
            proc,
            output,
            started: Instant::now(),
        })
    }

    /// Stops the watch (SIGINT: bpftrace prints its maps) and reads them.
    pub(super) fn stop(mut self) -> Result<MmLockRun> {
        let secs = self.started.elapsed().as_secs_f64();
        self.proc.signal(libc::SIGINT);
        // bpftrace once sat a minute in epoll_wait after the signal, as if
        // it had not seen it (one run of a full bench): ask again.
        let status = match self.proc.exited_within(Duration::from_secs(10))? {
            Some(status) => status,
            None => {
                self.proc.signal(libc::SIGINT);
                self.proc.wait(Duration::from_secs(50))?
            }
        };
        if !status.success() {
            bail!(
                "{} failed ({status}):\n{}",
                self.proc.what,
                self.proc.text()
            );
        }
        let log = fs::read_to_string(&self.output)
            .with_context(|| format!("reading {}", self.output.display()))?;
        let per_sec = |name: &str| counter(&log, name) as f64 / secs;
        Ok(MmLockRun {
            node_wait_us_per_sec: per_sec("@wait_ns") / 1e3,
            node_locks_per_sec: per_sec("@node_locks"),
            foreign_locks_per_sec: per_sec("@foreign_locks"),
            foreign_hold_us_per_sec: per_sec("@foreign_hold_ns") / 1e3,
            node_wait_behind_foreign_us_per_sec: per_sec("@wait_behind_foreign_ns") / 1e3,
        })
    }
}

/// The value bpftrace printed for map `name` (`@name: N`); 0 when it never
/// counted, as bpftrace prints nothing for an empty map.
fn counter(log: &str, name: &str) -> u64 {
    log.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_bpftraces_maps_and_takes_an_empty_one_as_zero() {
        let log = "Attaching 4 probes...\n\n\n@foreign_locks: 12\n\n@node_locks: 430\n\n@wait_ns: 1086083\n";
        assert_eq!(super::counter(log, "@wait_ns"), 1_086_083);
        assert_eq!(super::counter(log, "@node_locks"), 430);
        assert_eq!(super::counter(log, "@foreign_locks"), 12);
        assert_eq!(super::counter("Attaching 4 probes...\n", "@wait_ns"), 0);
    }
}
