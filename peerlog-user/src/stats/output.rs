//! Where the periodic outputs go: the stats log's file (or stdout) and the
//! HdrHistogram log directory, each rotated into generations and held under
//! a size cap when asked ([`crate::rotation`]), the stats log written full
//! or compact ([`super::compact`]).

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{compact::Compactor, HdrLog};
use crate::rotation::{generation_name, Retention, Rotation};

/// UNIX seconds of `time`.
fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The stats log: stdout, one file, or one file per generation
/// (`PATH.<UTC start>`).
pub(super) struct StatsLogOut {
    path: PathBuf,
    rotation: Rotation,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The generation being written: its start and file.
    current: Option<(u64, PathBuf)>,
    retention: Option<Retention>,
    compactor: Option<Compactor>,
}

impl StatsLogOut {
    /// Opens the stats log at `path` (`-`: stdout) at time `now`.
    pub(super) fn open(
        path: &Path,
        rotation: Rotation,
        compact: bool,
        now: SystemTime,
    ) -> Result<Self> {
        let stdout = path.as_os_str() == "-";
        let current = rotation
            .slot_start(unix_secs(now))
            .filter(|_| !stdout)
            .map(|start| (start, generation_path(path, start)));
        let out: Box<dyn Write + Send> = match &current {
            _ if stdout => Box::new(io::stdout()),
            Some((_, file)) => Box::new(create(file)?),
            None => Box::new(create(path)?),
        };
        let mut log = Self {
            path: path.to_path_buf(),
            rotation,
            out: BufWriter::new(out),
            current,
            retention: None,
            compactor: compact.then(Compactor::default),
        };
        if let (Some((start, _)), Some(max_bytes)) = (&log.current, rotation.max_bytes) {
            let (dir, prefix) = generation_prefix(path);
            log.retention = Some(
                Retention::scan(&dir, &prefix, *start, max_bytes, "stats log")
                    .with_context(|| format!("measuring the stats logs in {}", dir.display()))?,
            );
        }
        Ok(log)
    }

    /// Writes one line at time `now`, first starting a new generation if
    /// `now` is in a later slot.
    pub(super) fn write_line(&mut self, line: Value, now: SystemTime) -> Result<()> {
        if let (Some((start, _)), Some(slot)) =
            (&self.current, self.rotation.slot_start(unix_secs(now)))
        {
            if slot > *start {
                self.rotate(slot)?;
            }
        }
        let line = match &mut self.compactor {
            Some(compactor) => compactor.compact(line),
            None => line,
        };
        let out = &mut self.out;
        let written = serde_json::to_writer(&mut *out, &line)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        written.with_context(|| format!("writing the stats log {}", self.name().display()))?;
        self.enforce()
    }

    /// The file being written.
    fn name(&self) -> &Path {
        self.current.as_ref().map_or(&self.path, |(_, file)| file)
    }

    fn rotate(&mut self, slot: u64) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("writing the stats log {}", self.name().display()))?;
        let file = generation_path(&self.path, slot);
        self.out = BufWriter::new(Box::new(create(&file)?));
        let (old_start, old_file) = self.current.replace((slot, file)).expect("rotating");
        if let Some(retention) = &mut self.retention {
            retention
                .close(old_start, old_file)
                .context("measuring the stats logs")?;
        }
        // Every file starts with a full line.
        if let Some(compactor) = &mut self.compactor {
            compactor.reset();
        }
        Ok(())
    }

    fn enforce(&mut self) -> Result<()> {
        let (Some(retention), Some((_, file))) = (&mut self.retention, &self.current) else {
            return Ok(());
        };
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        retention.enforce(size).context("deleting old stats logs")?;
        Ok(())
    }
}

/// The HdrHistogram interval logs: one directory, or one subdirectory per
/// generation (`DIR/<UTC start>/`), each file with its own header.
pub(super) struct HdrLogOut {
    dir: PathBuf,
    rotation: Rotation,
    log: HdrLog,
    current: Option<(u64, PathBuf)>,
    retention: Option<Retention>,
}

impl HdrLogOut {
    /// Opens the logs in `dir` at time `now`.
    pub(super) fn open(dir: &Path, rotation: Rotation, now: SystemTime) -> Result<Self> {
        let current = rotation
            .slot_start(unix_secs(now))
            .map(|start| (start, dir.join(generation_name(start))));
        let log = HdrLog::create(current.as_ref().map_or(dir, |(_, d)| d), now)?;
        let retention = match (&current, rotation.max_bytes) {
            (Some((start, _)), Some(max_bytes)) => Some(
                Retention::scan(dir, "", *start, max_bytes, "HdrHistogram log").with_context(
                    || format!("measuring the HdrHistogram logs in {}", dir.display()),
                )?,
            ),
            _ => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            rotation,
            log,
            current,
            retention,
        })
    }

    /// The logs to write the interval that ends at `now` into: a new
    /// generation's if `now` is in a later slot.
    pub(super) fn at(&mut self, now: SystemTime) -> Result<&mut HdrLog> {
        if let (Some((start, _)), Some(slot)) =
            (&self.current, self.rotation.slot_start(unix_secs(now)))
        {
            if slot > *start {
                self.log.flush()?;
                let dir = self.dir.join(generation_name(slot));
                self.log = HdrLog::create(&dir, now)?;
                let (old_start, old_dir) = self.current.replace((slot, dir)).expect("rotating");
                if let Some(retention) = &mut self.retention {
                    retention
                        .close(old_start, old_dir)
                        .context("measuring the HdrHistogram logs")?;
                }
            }
        }
        Ok(&mut self.log)
    }

    /// Flushes the files, then deletes old generations if over the cap.
    pub(super) fn flush(&mut self) -> Result<()> {
        self.log.flush()?;
        if let (Some(retention), Some((_, dir))) = (&mut self.retention, &self.current) {
            let size = crate::rotation::size_on_disk(dir).unwrap_or(0);
            retention
                .enforce(size)
                .context("deleting old HdrHistogram logs")?;
        }
        Ok(())
    }
}

/// The file of the stats log generation starting at `start`: `PATH.<UTC start>`.
fn generation_path(path: &Path, start: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(generation_name(start));
    PathBuf::from(name)
}

/// The directory of the stats log's generations and their name prefix
/// (`stats.jsonl.`).
fn generation_prefix(path: &Path) -> (PathBuf, String) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, format!("{name}."))
}

fn create(path: &Path) -> Result<File> {
    crate::private_fs::create_file(path)
        .with_context(|| format!("cannot create the stats log {}", path.display()))
}
