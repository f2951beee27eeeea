//! Where the periodic outputs go: the stats log's file (or stdout) and the
//! HdrHistogram log directory, each rotated into generations and held under
//! a size cap when asked ([`crate::rotation`]), the stats log written full
//! or compact ([`super::compact`]).

use std::{
    fs::{self, File},
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
        let size = fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        // Failing to delete an old generation is no reason to stop the
        // stats log: said, and tried again at the next line.
        if let Err(e) = retention.enforce(size) {
            log::warn!("stats log: {e}");
        }
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
                // A generation in which nothing was recorded leaves no empty
                // directory behind (remove_dir removes only an empty one).
                let _ = fs::remove_dir(&old_dir);
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
            if let Err(e) = retention.enforce(size) {
                log::warn!("HdrHistogram logs: {e}");
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::list_generations;
    use crate::stats::compact::Expander;
    use serde_json::json;
    use std::time::Duration;

    const T0: u64 = 1_796_181_300;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn line(n: u64) -> Value {
        json!({"time_us": n, "node": {"msgs": n},
               "peers": [{"id": 1, "addr": "10.0.0.1:8333", "msgs": n, "padding": "x".repeat(200)},
                         {"id": 2, "addr": "10.0.0.2:8333", "msgs": 7}]})
    }

    #[test]
    fn stats_logs_rotate_start_full_and_stay_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.jsonl");
        let rotation = Rotation {
            interval: Some(Duration::from_secs(60)),
            max_bytes: Some(2500),
        };
        let mut log = StatsLogOut::open(&path, rotation, true, at(T0)).unwrap();
        // Six lines a minute for five minutes.
        let mut written = Vec::new();
        for i in 0..30 {
            let l = line(i);
            log.write_line(l.clone(), at(T0 + i * 10)).unwrap();
            written.push(l);
        }
        drop(log);
        assert!(!path.exists());
        let files = list_generations(dir.path(), "stats.jsonl.").unwrap();
        let starts: Vec<u64> = files.iter().map(|f| f.0).collect();
        // Some generations went, whole and oldest first; the cap holds.
        let first = starts[0];
        assert!(starts.len() >= 2 && first > T0, "{starts:?}");
        assert_eq!(starts, (first..=T0 + 240).step_by(60).collect::<Vec<_>>());
        let total: u64 = files
            .iter()
            .map(|f| fs::metadata(&f.1).unwrap().len())
            .sum();
        assert!(total <= 2500, "{total}");
        // Every file starts full; together they rebuild the lines written.
        let mut expander = Expander::default();
        let mut rebuilt = Vec::new();
        for (_, file) in &files {
            let text = fs::read_to_string(file).unwrap();
            for (i, l) in text.lines().enumerate() {
                let l: Value = serde_json::from_str(l).unwrap();
                assert_eq!(l.get("delta").is_none(), i == 0);
                rebuilt.push(expander.expand(l).unwrap());
            }
        }
        assert_eq!(rebuilt, written[(first - T0) as usize / 10..]);
    }

    #[test]
    fn hdr_logs_rotate_into_directories() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            interval: Some(Duration::from_secs(60)),
            max_bytes: None,
        };
        let mut out = HdrLogOut::open(dir.path(), rotation, at(T0)).unwrap();
        let mut h = hdrhistogram::Histogram::<u64>::new(2).unwrap();
        h.record(5).unwrap();
        for secs in [T0 + 10, T0 + 70, T0 + 75, T0 + 200] {
            out.at(at(secs))
                .unwrap()
                .write("x_ns", None, &h, at(secs - 5), Duration::from_secs(5))
                .unwrap();
            out.flush().unwrap();
        }
        let gens = list_generations(dir.path(), "").unwrap();
        let starts: Vec<u64> = gens.iter().map(|g| g.0).collect();
        assert_eq!(starts, [T0, T0 + 60, T0 + 180]);
        for (_, d) in gens {
            let text = fs::read_to_string(d.join("x_ns.hlog")).unwrap();
            assert!(text.starts_with("#peerlog"), "{text}");
        }
    }
}
