//! Finding the bitcoind to trace: by pid (`--pid`), by its pid file
//! (`--datadir DIR [--chain NAME]`, `--pidfile PATH`), or, with none of
//! those, the only running process whose executable carries bitcoind's USDT
//! probes. Probes, not names: Bitcoin Core v30's multiprocess `bitcoin-node`
//! is a bitcoind too, and a renamed or copied binary is still one.
//!
//! A pid file is read anew every time (`--follow` waits on it for the next
//! bitcoind): missing, empty, or naming a process that is gone all mean
//! "not running now", which [`Locator::find`] says apart from an error.

use std::{
    collections::HashMap,
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::elf::{debuginfo::Mapped, usdt};
use crate::messages::{TargetError, UsageError};

/// The name of bitcoind's pid file in its data directory (`-pid`'s default).
pub const PID_FILE: &str = "bitcoind.pid";

/// A Bitcoin Core chain: where in the data directory its files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Chain {
    /// Mainnet: the data directory itself.
    Main,
    /// `testnet3/`.
    Testnet3,
    /// `testnet4/`.
    Testnet4,
    /// `signet/`.
    Signet,
    /// `regtest/`.
    Regtest,
}

impl Chain {
    /// Every chain, mainnet first.
    pub const ALL: [Chain; 5] = [
        Chain::Main,
        Chain::Testnet3,
        Chain::Testnet4,
        Chain::Signet,
        Chain::Regtest,
    ];

    /// The chain's directory in the data directory `datadir`.
    pub fn dir(self, datadir: &Path) -> PathBuf {
        match self {
            Chain::Main => datadir.to_path_buf(),
            Chain::Testnet3 => datadir.join("testnet3"),
            Chain::Testnet4 => datadir.join("testnet4"),
            Chain::Signet => datadir.join("signet"),
            Chain::Regtest => datadir.join("regtest"),
        }
    }

    /// The name `--chain` takes.
    pub fn name(self) -> &'static str {
        match self {
            Chain::Main => "main",
            Chain::Testnet3 => "testnet3",
            Chain::Testnet4 => "testnet4",
            Chain::Signet => "signet",
            Chain::Regtest => "regtest",
        }
    }
}

/// How the command line names the bitcoind to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// `--pid`: this process (or a thread of it), once.
    Pid(i32),
    /// `--pidfile`: the process this pid file names.
    PidFile(PathBuf),
    /// `--datadir [--chain]`: the process the pid file of this data
    /// directory names.
    Datadir {
        /// The data directory.
        dir: PathBuf,
        /// The chain, when `--chain` chose one.
        chain: Option<Chain>,
    },
    /// None of those: the only running process with bitcoind's probes.
    Auto,
}

/// What [`Locator::find`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// This process runs now.
    Process(Process),
    /// No process runs now; why, in words.
    NotRunning(String),
}

/// A process as it runs now: its pid and when it started, which tells a new
/// process apart from an old one whose pid it was given again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks after boot (`/proc/PID/stat`'s 22nd field).
    pub start: u64,
}

impl Process {
    /// Process `pid` as it runs now; None when there is none, or only its
    /// zombie (it exited and waits for its parent).
    pub fn running(pid: i32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold any byte.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        // Field 3, the state, is the first after the name.
        if matches!(fields.next()?, "Z" | "X") {
            return None;
        }
        // Field 22 is the 20th after the name.
        let start = fields.nth(18)?.parse().ok()?;
        Some(Self { pid, start })
    }
}

impl Locator {
    /// Whether the locator can find the next bitcoind after this one exits
    /// (`--follow` needs it): a pid file can, a bare pid cannot.
    pub fn can_follow(&self) -> bool {
        matches!(self, Locator::PidFile(_) | Locator::Datadir { .. })
    }

    /// Checks what can be checked before anything runs: a data directory
    /// must exist (a misspelled one would be waited on for ever).
    pub fn check(&self) -> Result<()> {
        if let Locator::Datadir { dir, .. } = self {
            if !dir.is_dir() {
                return Err(UsageError(format!(
                    "--datadir {}: no such directory (bitcoind's -datadir)",
                    dir.display()
                ))
                .into());
            }
        }
        Ok(())
    }

    /// The pid file this locator reads now, if it reads one.
    pub fn pid_file(&self) -> Result<Option<PathBuf>> {
        match self {
            Locator::PidFile(path) => Ok(Some(path.clone())),
            Locator::Datadir { dir, chain } => pid_file_in(dir, *chain).map(Some),
            Locator::Pid(_) | Locator::Auto => Ok(None),
        }
    }

    /// Finds the process to trace now. Errors are for what waiting does
    /// not fix: a pid file that holds no pid, several candidates.
    pub fn find(&self) -> Result<Found> {
        match self {
            Locator::Pid(pid) => Ok(Found::Process(Process::running(*pid).unwrap_or(Process {
                pid: *pid,
                start: 0,
            }))),
            Locator::Auto => {
                choose(candidates(Path::new("/proc"), std::process::id() as i32)).map(|c| {
                    eprintln!("peerlog: found {c}");
                    Found::Process(Process::running(c.pid).unwrap_or(Process {
                        pid: c.pid,
                        start: 0,
                    }))
                })
            }
            Locator::PidFile(_) | Locator::Datadir { .. } => {
                let path = self.pid_file()?.expect("a pid file locator");
                Ok(match read_pid_file(&path)? {
                    None => Found::NotRunning(format!("{} does not exist", path.display())),
                    Some(pid) => match Process::running(pid) {
                        Some(p) => Found::Process(p),
                        None => Found::NotRunning(format!(
                            "{} names pid {pid}, which is not running (a stale pid file: bitcoind \
                             did not shut down cleanly, or is starting)",
                            path.display()
                        )),
                    },
                })
            }
        }
    }
}

/// The pid file of the data directory `dir`: in the chain's directory when
/// `chain` is given; else the one of `dir` and its chain directories that
/// exists. None existing names the mainnet one (waited for); several are an
/// error that lists them.
pub fn pid_file_in(dir: &Path, chain: Option<Chain>) -> Result<PathBuf> {
    if let Some(chain) = chain {
        return Ok(chain.dir(dir).join(PID_FILE));
    }
    let existing: Vec<(Chain, PathBuf)> = Chain::ALL
        .iter()
        .map(|c| (*c, c.dir(dir).join(PID_FILE)))
        .filter(|(_, p)| p.exists())
        .collect();
    match &existing[..] {
        [] => Ok(dir.join(PID_FILE)),
        [(_, one)] => Ok(one.clone()),
        several => Err(UsageError(format!(
            "--datadir {} has the pid files of several chains ({}); choose one with --chain {}",
            dir.display(),
            several
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            several
                .iter()
                .map(|(c, _)| c.name())
                .collect::<Vec<_>>()
                .join("|")
        ))
        .into()),
    }
}

/// Reads the pid a pid file holds. None when there is no file, or an empty
/// one (bitcoind creates it, then writes it). Anything but a positive number
/// is an error naming the file and what it holds.
pub fn read_pid_file(path: &Path) -> Result<Option<i32>> {
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(
                TargetError(format!("cannot read the pid file {}: {e}", path.display())).into(),
            )
        }
    };
    let text = String::from_utf8_lossy(&text);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    match trimmed.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Some(pid)),
        _ => {
            let shown: String = trimmed.chars().take(40).collect();
            Err(TargetError(format!(
                "{} is not a pid file: it holds {shown:?}, not a process id (is it bitcoind's \
                 -pid file?)",
                path.display()
            ))
            .into())
        }
    }
}

/// A running process whose executable has bitcoind's probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Process id.
    pub pid: i32,
    /// Its executable, as `/proc/PID/exe` names it.
    pub exe: PathBuf,
    /// Its `-datadir`, when the command line gives one.
    pub datadir: Option<String>,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({}", self.pid, self.exe.display())?;
        if let Some(dir) = &self.datadir {
            write!(f, ", -datadir={dir}")?;
        }
        write!(f, ")")
    }
}

/// The `-datadir` of a bitcoind command line (`-datadir=DIR` or
/// `--datadir=DIR`; the last one wins, as in bitcoind).
pub fn datadir_from_cmdline(args: &[String]) -> Option<String> {
    args.iter()
        .skip(1)
        .filter_map(|a| {
            a.strip_prefix("--datadir=")
                .or_else(|| a.strip_prefix("-datadir="))
        })
        .next_back()
        .map(str::to_string)
}

/// Every process under the proc file system `proc` (but `myself`) whose
/// executable has the `net:inbound_message` tracepoint. Each executable is
/// read once, however many processes run it; processes that cannot be
/// examined (gone, kernel threads, another user's) are skipped.
pub fn candidates(proc: &Path, myself: i32) -> Vec<Candidate> {
    let Ok(dir) = fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != myself)
        .collect();
    pids.sort_unstable();
    let mut checked: HashMap<(u64, u64), bool> = HashMap::new();
    let mut found = Vec::new();
    for pid in pids {
        let exe_link = proc.join(pid.to_string()).join("exe");
        let (Ok(exe), Ok(meta)) = (fs::read_link(&exe_link), fs::metadata(&exe_link)) else {
            continue;
        };
        let has_probes = *checked
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| has_net_probes(&exe_link));
        if !has_probes {
            continue;
        }
        let cmdline = fs::read(proc.join(pid.to_string()).join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push(Candidate {
            pid,
            exe,
            datadir: datadir_from_cmdline(&args),
        });
    }
    found
}

/// Whether the executable at `path` has bitcoind's `net:inbound_message`
/// tracepoint in its `.note.stapsdt`.
fn has_net_probes(path: &Path) -> bool {
    let Ok(mapped) = Mapped::open(path) else {
        return false;
    };
    usdt::read_probes_lenient(mapped.bytes()).is_ok_and(|(probes, _)| {
        probes
            .iter()
            .any(|p| p.provider == "net" && p.name == "inbound_message")
    })
}

/// The one candidate; none or several are errors that say what to do.
pub fn choose(candidates: Vec<Candidate>) -> Result<Candidate> {
    let mut candidates = candidates;
    match candidates.len() {
        0 => Err(TargetError(
            "no running bitcoind found (no process runs an executable with bitcoind's \
             net:inbound_message tracepoint); start bitcoind, or name it with --pid, --datadir \
             or --pidfile"
                .into(),
        )
        .into()),
        1 => Ok(candidates.remove(0)),
        _ => Err(UsageError(format!(
            "several bitcoind processes are running: {}; choose one with --pid PID or --datadir DIR",
            candidates
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests;
