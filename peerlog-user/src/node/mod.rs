//! The node to trace, a bitcoind process: finding it ([`find`]), its
//! executable, its USDT probes, and checking that peerlog has the
//! privileges to trace it.

pub mod find;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::elf::debuginfo::{self, DebugInfo};
use crate::elf::usdt::{self, UsdtProbe};
use crate::messages::{PrivilegeError, TargetError};

/// The `net:*` tracepoints peerlog attaches to, each with the eBPF program
/// that handles it (programs are named after their tracepoint).
pub const NET_TRACEPOINTS: [&str; 7] = [
    "inbound_message",
    "outbound_message",
    "inbound_connection",
    "outbound_connection",
    "evicted_inbound_connection",
    "closed_connection",
    "misbehaving_connection",
];

/// A running bitcoind, resolved.
#[derive(Debug)]
pub struct Target {
    /// Process id (thread group id).
    pub pid: i32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// What `/proc/PID/exe` points at, as the target sees it (inside its own
    /// mount namespace; may end in " (deleted)" after an upgrade).
    pub exe_display: PathBuf,
    /// A path to the very inode the process runs, usable from here whatever
    /// the target's mount namespace: `/proc/PID/exe`.
    pub exe: PathBuf,
    /// The USDT probes of the executable.
    pub probes: Vec<UsdtProbe>,
    /// Probes that could not be understood, with the reason.
    pub unusable: Vec<String>,
}

/// What a pid given on the command line stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The process (thread group id).
    pub pid: i32,
    /// When the given pid is a thread of that process other than its main
    /// one: the thread's id and name.
    pub thread: Option<(i32, String)>,
}

/// Resolves `pid`, which may be a thread id (`ps -L`, `top -H` and
/// /proc/PID/task list them; bitcoind's `b-msghand` is one), to its
/// process: the probes and the kernel's filter work per process, so a
/// thread id would trace nothing.
pub fn resolve_pid(pid: i32) -> Result<Resolved> {
    let no_process = || {
        anyhow::Error::new(TargetError(format!(
            "no process with pid {pid} (is bitcoind running? try `pidof bitcoind`)"
        )))
    };
    if pid <= 0 {
        return Err(no_process());
    }
    // /proc/TID exists for every thread, though only processes are listed.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| no_process())?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .with_context(|| format!("no Tgid in /proc/{pid}/status"))?;
    let thread = (tgid != pid).then(|| {
        let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        (pid, name.trim_end().to_string())
    });
    Ok(Resolved { pid: tgid, thread })
}

impl Target {
    /// Where the executable's debug information is, by the rules of
    /// [`debuginfo::find`]: `.gnu_debuglink` files are looked for in the
    /// executable's directory as the target sees it (through
    /// `/proc/PID/root`). Attaching needs it twice (the `CNode` layout and
    /// the flamegraph symbols), so it is found once and handed to both.
    pub fn debug_info(&self, debug_file: Option<&Path>) -> Result<DebugInfo> {
        let install_dir = self.exe_display.parent().map(|dir| {
            Path::new(&format!("/proc/{}/root", self.pid))
                .join(dir.strip_prefix("/").unwrap_or(dir))
        });
        debuginfo::find(&self.exe, install_dir.as_deref(), debug_file)
    }

    /// Resolves `pid` (a process, or one of its threads: see
    /// [`resolve_pid`], said on stderr) and reads the probes of its
    /// executable.
    pub fn open(pid: i32) -> Result<Self> {
        let resolved = resolve_pid(pid)?;
        if let Some((tid, name)) = &resolved.thread {
            eprintln!(
                "peerlog: pid {tid} is thread '{name}' of process {0}; tracing {0}",
                resolved.pid
            );
        }
        let pid = resolved.pid;
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let comm = fs::read_to_string(proc_dir.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let exe = proc_dir.join("exe");
        let exe_display = fs::read_link(&exe).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow::Error::new(PrivilegeError(format!(
                    "cannot read {}: permission denied. Tracing another user's process needs \
                     CAP_SYS_PTRACE (run peerlog as root)",
                    exe.display()
                )))
            } else if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::Error::new(TargetError(format!(
                    "process {pid} ({comm}) has no executable (a kernel thread?) or just exited"
                )))
            } else {
                anyhow::anyhow!("cannot read {}: {e}", exe.display())
            }
        })?;
        // Mapped, not read: a bitcoind built with debug info is over 200 MB,
        // of which the probe notes are a few pages.
        let mapped = crate::elf::debuginfo::Mapped::open(&exe).with_context(|| {
            format!(
                "cannot read the executable of pid {pid} ({})",
                exe_display.display()
            )
        })?;
        // One unusable probe (say, an operand form a compiler invents) must
        // not stop tracing of the others; it is reported if peerlog needs it.
        let (probes, unusable) = usdt::read_probes_lenient(mapped.bytes()).map_err(|e| {
            anyhow::Error::new(TargetError(format!(
                "pid {pid} ({comm}, {}) cannot be traced: {e}",
                exe_display.display()
            )))
        })?;
        let unusable = unusable.iter().map(ToString::to_string).collect();
        Ok(Self {
            pid,
            comm,
            exe_display,
            exe,
            probes,
            unusable,
        })
    }

    /// The probe sites of `provider:name`; a probe inlined at several places
    /// has several sites, each needing its own attachment.
    pub fn sites<'a>(
        &'a self,
        provider: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a UsdtProbe> + 'a {
        self.probes
            .iter()
            .filter(move |p| p.provider == provider && p.name == name)
    }

    /// Fails, naming them, when `net:*` tracepoints peerlog needs are absent.
    pub fn require_net_tracepoints(&self) -> Result<()> {
        let missing: Vec<_> = NET_TRACEPOINTS
            .iter()
            .filter(|name| self.sites("net", name).next().is_none())
            .map(|name| format!("net:{name}"))
            .collect();
        if missing.len() == NET_TRACEPOINTS.len() {
            return Err(TargetError(format!(
                "pid {} ({}, {}) has USDT probes but none of bitcoind's net:* tracepoints; is it bitcoind?",
                self.pid,
                self.comm,
                self.exe_display.display()
            ))
            .into());
        }
        if !missing.is_empty() {
            let reasons = if self.unusable.is_empty() {
                String::new()
            } else {
                format!("; unusable probes: {}", self.unusable.join("; "))
            };
            return Err(TargetError(format!(
                "pid {} ({}) lacks the tracepoints {}; this bitcoind is too old (net:* tracepoints \
                 are complete since v23) or not Bitcoin Core{reasons}",
                self.pid,
                self.comm,
                missing.join(", ")
            ))
            .into());
        }
        Ok(())
    }

    /// True when the net tracepoints have semaphores (Bitcoin Core >= v29).
    pub fn has_semaphores(&self) -> bool {
        self.sites("net", "inbound_message")
            .any(|p| p.semaphore.is_some())
    }

    /// True while the process still exists.
    pub fn is_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// Linux capabilities peerlog relies on.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities(u64);

const CAP_SYS_ADMIN: u32 = 21;

impl Capabilities {
    /// The effective capabilities of this process.
    pub fn current() -> Result<Self> {
        let status =
            fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .context("no CapEff in /proc/self/status")?;
        Ok(Self(u64::from_str_radix(hex.trim(), 16)?))
    }

    fn has(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }

    /// Fails, naming what is missing, unless this process may load eBPF and
    /// attach it to bitcoind's probes.
    pub fn require_tracing(self) -> Result<()> {
        // The kernel opens a uprobe through perf_event_open for
        // CAP_SYS_ADMIN alone (CAP_BPF with CAP_PERFMON gets EACCES,
        // measured on 6.18); CAP_SYS_ADMIN also covers loading eBPF.
        if !self.has(CAP_SYS_ADMIN) {
            return Err(PrivilegeError(
                "missing privilege: CAP_SYS_ADMIN (the kernel opens the uprobes on bitcoind's \
                 tracepoints only for CAP_SYS_ADMIN, which also covers loading eBPF; CAP_BPF and \
                 CAP_PERFMON are not enough). Run as root (`sudo peerlog trace ...`) or grant it: \
                 `setcap cap_sys_admin,cap_sys_ptrace,cap_dac_read_search+ep $(which peerlog)`"
                    .into(),
            )
            .into());
        }
        Ok(())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} ({}, {})",
            self.pid,
            self.comm,
            self.exe_display.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_id_resolves_to_its_process() {
        let me = std::process::id() as i32;
        assert_eq!(
            resolve_pid(me).unwrap(),
            Resolved {
                pid: me,
                thread: None
            }
        );
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("peerlog-probe".into())
            .spawn(move || {
                // SAFETY: gettid cannot fail.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        let tid = tid_rx.recv().unwrap();
        let resolved = resolve_pid(tid);
        drop(done_tx);
        thread.join().unwrap();
        assert_eq!(
            resolved.unwrap(),
            Resolved {
                pid: me,
                thread: Some((tid, "peerlog-probe".into()))
            }
        );
        for bad in [0, -1, i32::MAX] {
            let e = resolve_pid(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("no process with pid {bad}")), "{e}");
        }
    }
}
