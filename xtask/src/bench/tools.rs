//! What the runs need before the first one: the release binaries, built and
//! copied aside, the optional tools and `peerlog trace` options found at run
//! time, and tracefs for bpftrace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::plan::Config;
use crate::workspace_root;

/// The binaries under test.
pub(super) struct Binaries {
    pub(super) peerlog: PathBuf,
    pub(super) loadgen: PathBuf,
    pub(super) twin: PathBuf,
}

/// Builds the release binaries and finds them (and the twin, which the
/// tests crate's build script makes) in cargo's own report of the build.
pub(super) fn build() -> Result<Binaries> {
    let output = crate::cargo_command()
        .args(crate::BUILD_RELEASE_BINS)
        .arg("--message-format=json-render-diagnostics")
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

/// Optional parts, found at run time.
#[derive(Serialize)]
pub(super) struct Tools {
    /// `bpftrace --version`, or why there is none.
    pub(super) bpftrace: std::result::Result<String, String>,
    /// The extra `peerlog trace` options of configuration 4, each with
    /// whether it takes a value, as `peerlog trace --help` lists them.
    pub(super) stats_options: Vec<(String, bool)>,
    /// Whether `peerlog trace` has `--no-accounting`: configurations 2 and 3
    /// then trace the net:* tracepoints only, what the bpftrace reference
    /// traces, and leave the accounting to configuration 4.
    pub(super) no_accounting: bool,
}

impl Tools {
    /// Finds bpftrace and asks `peerlog trace --help` for its options.
    pub(super) fn detect(bins: &Binaries) -> Result<Tools> {
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
    pub(super) fn unavailable(&self, config: Config) -> Option<String> {
        match config {
            Config::CaptureStats if self.stats_options.is_empty() => Some(
                "not available yet: `peerlog trace --help` lists neither --stats-log nor --flamegraph"
                    .into(),
            ),
            Config::Floor | Config::Bpftrace => self.bpftrace.as_ref().err().cloned(),
            Config::MemoryReads if !self.stats_options.iter().any(|(f, _)| f == "--stats-log") => {
                Some("not available yet: `peerlog trace --help` lists no --stats-log".into())
            }
            c if c.samples_cpus()
                && !self.stats_options.iter().any(|(f, _)| f == "--flamegraph") =>
            {
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

    /// `config` in words, for the table and the commands.
    pub(super) fn label(&self, config: Config) -> String {
        match config {
            Config::Untraced => "untraced".into(),
            Config::Floor => "floor: bpftrace, empty probes".into(),
            Config::Counting => "peerlog --no-accounting (counting only)".into(),
            Config::Defaults => "peerlog, defaults (accounting on)".into(),
            Config::Capture => "peerlog --no-accounting --capture".into(),
            Config::CaptureStats => self.stats_label(),
            Config::Bpftrace => "bpftrace log_p2p_traffic.bt".into(),
            Config::Sampling => "peerlog --no-accounting, 99 Hz sampling".into(),
            Config::PeerFlamegraphs => "peerlog, defaults + 99 Hz sampling".into(),
            Config::MemoryReads => "peerlog, defaults + stats log every second".into(),
        }
    }
}

/// bpftrace attaches uprobes through tracefs when it is mounted and fails to
/// detach them otherwise; peerlog does not need it.
pub(super) fn mount_tracefs() {
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
