//! Rotation and retention of the long-running outputs (captures, the stats
//! log, the HdrHistogram logs): a new *generation* every interval, named by
//! its UTC start time so that names sort in time order, and the oldest whole
//! generations deleted to stay under a size cap.
//!
//! A generation is one entry of a directory named `<prefix><UTC start>`:
//! a directory for captures and HdrHistogram logs (`20261202T031500Z/`), a
//! file for the stats log (`stats.jsonl.20261202T031500Z`). Generations
//! cover fixed slots of the interval counted from the UNIX epoch, so that
//! a 15-minute rotation starts generations at :00, :15, :30 and :45 and a
//! restarted trace continues the generation of the slot it restarts in.
//!
//! Below both sits the same retention rule ([`Retention`]): the generations
//! already on disk count, the generation being written is never deleted,
//! and when it alone is over the cap that is said once on stderr and
//! writing goes on (deleting it would lose the newest data, and stopping
//! would lose what comes next).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::{civil, Timestamp};

/// The `strftime` form of a generation's name: UTC, to the second, no
/// separators (valid in file names everywhere, sorts in time order).
const NAME_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Bytes of a generation's name.
const NAME_LEN: usize = "20261202T031500Z".len();

/// How an output rotates: every `interval`, keeping at most `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Length of a generation, a whole number of seconds (at least 1: names
    /// are to the second). None: one output, no generations.
    pub interval: Option<Duration>,
    /// Delete the oldest generations to keep the total under this many bytes.
    pub max_bytes: Option<u64>,
}

impl Rotation {
    /// No rotation, no cap: the default of every output.
    pub const NONE: Self = Self {
        interval: None,
        max_bytes: None,
    };

    /// Whether this rotates at all.
    pub fn is_on(&self) -> bool {
        self.interval.is_some()
    }

    /// The UNIX second at which the generation holding time `unix_secs`
    /// starts (the interval's slot), or None without rotation.
    pub fn slot_start(&self, unix_secs: u64) -> Option<u64> {
        let interval = self.interval?.as_secs().max(1);
        Some(unix_secs - unix_secs % interval)
    }
}

/// The wall clock now, in UNIX seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The name of the generation starting at `unix_secs`: `20261202T031500Z`.
pub fn generation_name(unix_secs: u64) -> String {
    let time = i64::try_from(unix_secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::MAX);
    time.strftime(NAME_FORMAT).to_string()
}

/// The start (UNIX seconds) a generation name stands for; None when `name`
/// is not one.
pub fn parse_generation_name(name: &str) -> Option<u64> {
    if name.len() != NAME_LEN
        || !name.ends_with('Z')
        || name.as_bytes()[8] != b'T'
        || !name[..8]
            .bytes()
            .chain(name[9..15].bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let time = civil::DateTime::strptime("%Y%m%dT%H%M%S", &name[..15]).ok()?;
    let days = i64::from((time.date() - civil::date(1970, 1, 1)).get_days());
    let clock = time.time();
    let secs = days * 86_400
        + i64::from(clock.hour()) * 3600
        + i64::from(clock.minute()) * 60
        + i64::from(clock.second());
    u64::try_from(secs).ok()
}

/// The generations of one output in its directory, oldest first: the
/// entries named `<prefix><generation name>`, with their start times.
pub fn list_generations(dir: &Path, prefix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(parse_generation_name)
        else {
            continue;
        };
        found.push((start, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Bytes on disk of a generation: a file's length, or the total of the
/// files below a directory (symbolic links are not followed). Entries that
/// vanish while it walks count as nothing.
pub fn size_on_disk(path: &Path) -> io::Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        total += size_on_disk(&entry?.path())?;
    }
    Ok(total)
}

/// What [`Retention::enforce`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Enforced {
    /// The generations deleted, oldest first, with their sizes.
    pub deleted: Vec<(PathBuf, u64)>,
    /// Whether the generation being written is alone over the cap (said
    /// once per [`Retention`]).
    pub current_over_cap: bool,
}

/// The size cap of one rotated output: the closed generations (those on
/// disk when it started and those it finished) with their sizes, oldest
/// first.
#[derive(Debug)]
pub struct Retention {
    max_bytes: u64,
    closed: Vec<(u64, PathBuf, u64)>,
    warned: bool,
    what: &'static str,
}

impl Retention {
    /// Counts the generations of `<dir>/<prefix>*` already on disk, except
    /// the one starting at `current` (which is being written). `what` names
    /// the output in the warning ("capture", "stats log", ...).
    pub fn scan(
        dir: &Path,
        prefix: &str,
        current: u64,
        max_bytes: u64,
        what: &'static str,
    ) -> io::Result<Self> {
        let mut closed = Vec::new();
        for (start, path) in list_generations(dir, prefix)? {
            if start != current {
                let size = size_on_disk(&path)?;
                closed.push((start, path, size));
            }
        }
        Ok(Self {
            max_bytes,
            closed,
            warned: false,
            what,
        })
    }

    /// A generation was finished: it counts from now on with its size on disk.
    pub fn close(&mut self, start: u64, path: PathBuf) -> io::Result<()> {
        let size = size_on_disk(&path)?;
        self.closed.retain(|(s, _, _)| *s != start);
        self.closed.push((start, path, size));
        self.closed.sort();
        Ok(())
    }

    /// Deletes the oldest closed generations while the total with the
    /// current generation's `current_bytes` is over the cap. Never deletes
    /// the current generation; when it alone is over the cap, warns once on
    /// stderr and returns with the rest deleted.
    pub fn enforce(&mut self, current_bytes: u64) -> io::Result<Enforced> {
        let mut done = Enforced::default();
        let mut total: u64 = current_bytes + self.closed.iter().map(|c| c.2).sum::<u64>();
        while total > self.max_bytes && !self.closed.is_empty() {
            let (start, path, size) = self.closed.remove(0);
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                // Someone else removed it: it no longer takes room either.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.closed.insert(0, (start, path.clone(), size));
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot delete the old generation {}: {e}", path.display()),
                    ));
                }
            }
            total -= size;
            done.deleted.push((path, size));
        }
        if current_bytes > self.max_bytes {
            done.current_over_cap = true;
            if !self.warned {
                self.warned = true;
                crate::warning!(
                    "the {} generation being written alone is over the size cap ({} > {} bytes); \
                     it is kept and written on, and deleted once it is no longer the newest: \
                     raise the cap or rotate more often",
                    self.what,
                    current_bytes,
                    self.max_bytes
                );
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_time_order_and_parse_back() {
        assert_eq!(generation_name(0), "19700101T000000Z");
        assert_eq!(generation_name(1_796_181_300), "20261202T031500Z");
        for secs in [0, 59, 1_700_000_000, 1_796_181_300, 4_102_444_799] {
            assert_eq!(parse_generation_name(&generation_name(secs)), Some(secs));
        }
        assert!(generation_name(1_700_000_000) < generation_name(1_700_000_001));
        for bad in [
            "",
            "20261202T031500",
            "20261302T031500Z",
            "2026120xT031500Z",
            "x",
        ] {
            assert_eq!(parse_generation_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn slots_are_counted_from_the_epoch() {
        let r = Rotation {
            interval: Some(Duration::from_secs(900)),
            max_bytes: None,
        };
        assert_eq!(r.slot_start(1_795_936_500 + 899), Some(1_795_936_500));
        assert_eq!(r.slot_start(1_795_936_500 + 900), Some(1_795_937_400));
        assert_eq!(Rotation::NONE.slot_start(5), None);
    }

    #[test]
    fn retention_deletes_oldest_whole_generations_never_the_current() {
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in [(0u64, 100usize), (1, 200), (2, 300)] {
            let g = dir.path().join(generation_name(i * 60));
            fs::create_dir(&g).unwrap();
            fs::write(g.join("f"), vec![0u8; size]).unwrap();
        }
        fs::write(dir.path().join("not-a-generation"), vec![0u8; 5000]).unwrap();
        let mut r = Retention::scan(dir.path(), "", 180, 550, "test").unwrap();
        // 100 + 200 + 300 + 0 > 550: the oldest goes.
        let done = r.enforce(0).unwrap();
        assert_eq!(done.deleted.len(), 1);
        assert!(!dir.path().join(generation_name(0)).exists());
        // The current one grows: 200 + 300 + 100 > 550.
        let done = r.enforce(100).unwrap();
        assert_eq!(
            done.deleted,
            vec![(dir.path().join(generation_name(60)), 200)]
        );
        // Alone over the cap: everything else goes, it stays.
        let done = r.enforce(1000).unwrap();
        assert_eq!(done.deleted.len(), 1);
        assert!(done.current_over_cap);
        assert!(dir.path().join("not-a-generation").exists());
        assert_eq!(list_generations(dir.path(), "").unwrap(), vec![]);
    }
}
