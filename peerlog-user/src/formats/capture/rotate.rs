//! [`RotatingWriter`]: a [`CaptureWriter`] that starts a new capture
//! generation (a subdirectory named by its UTC start time) every interval
//! and deletes the oldest whole generations to stay under a size cap
//! ([`crate::rotation`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{CaptureError, CaptureLayout, CaptureRecord, CaptureStats, CaptureWriter};
use crate::rotation::{generation_name, size_on_disk, Retention, Rotation};

/// What [`RotatingWriter`] did besides writing, for the summary and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RotationStats {
    /// Generations this writer started (0 without rotation).
    pub generations: u64,
    /// Generations deleted to stay under the cap (also ones from earlier runs).
    pub generations_deleted: u64,
    /// Records this writer wrote into generations that were deleted since.
    pub records_deleted: u64,
}

/// The capture writer with rotation and retention.
///
/// Without rotation ([`Rotation::NONE`]) it is the plain [`CaptureWriter`]
/// at the root. With it, each record goes to the generation of the slot its
/// time falls in (`<root>/<UTC slot start>/`, each a complete capture in
/// the writer's layout); a record whose time lies in a later slot than the
/// current generation's finishes that generation (all its buffers written)
/// and starts the next, so generations change only between records and a
/// record is never split. A record stamped earlier than the current slot
/// (the wall clock stepped back) stays in the current generation. A slot
/// without messages has no directory.
///
/// With a cap, the oldest generations (also those left by earlier runs) are
/// deleted whole when a generation starts and at every [`flush`](Self::flush),
/// never the one being written ([`Retention`]).
#[derive(Debug)]
pub struct RotatingWriter {
    root: PathBuf,
    layout: CaptureLayout,
    rotation: Rotation,
    current: CaptureWriter,
    /// Start of the current generation; None without rotation.
    current_start: Option<u64>,
    /// Bytes the current generation held when this writer opened it.
    current_bytes_before: u64,
    retention: Option<Retention>,
    /// Counters of the generations finished so far.
    finished: CaptureStats,
    /// Records this writer wrote into each finished generation.
    records_in: HashMap<PathBuf, u64>,
    rotation_stats: RotationStats,
}

impl RotatingWriter {
    /// A writer under `root`; with rotation, its first generation is the
    /// slot of `now_secs` (UNIX seconds). Fails like [`CaptureWriter::new`],
    /// or when the generations already under `root` cannot be measured.
    pub fn new(
        root: &Path,
        layout: CaptureLayout,
        rotation: Rotation,
        now_secs: u64,
    ) -> Result<Self, CaptureError> {
        let current_start = rotation.slot_start(now_secs);
        let dir = generation_dir(root, current_start);
        let current = CaptureWriter::new(&dir, layout)?;
        let mut writer = Self {
            root: root.to_path_buf(),
            layout,
            rotation,
            current,
            current_start,
            current_bytes_before: 0,
            retention: None,
            finished: CaptureStats::default(),
            records_in: HashMap::new(),
            rotation_stats: RotationStats {
                generations: u64::from(current_start.is_some()),
                ..RotationStats::default()
            },
        };
        if let (Some(start), Some(max_bytes)) = (current_start, rotation.max_bytes) {
            writer.current_bytes_before = size_on_disk(&dir).map_err(|e| root_error(root, e))?;
            writer.retention = Some(
                Retention::scan(root, "", start, max_bytes, "capture")
                    .map_err(|e| root_error(root, e))?,
            );
            writer.enforce()?;
        }
        Ok(writer)
    }

    /// The root directory (the parent of the generations when rotating).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the generation being written (the root without rotation).
    pub fn current_dir(&self) -> &Path {
        self.current.root()
    }

    /// Appends a record, first starting a new generation if its time is in
    /// a later slot (see [`CaptureWriter::append`]).
    pub fn append(
        &mut self,
        addr: &str,
        connection: (i64, u64),
        inbound: bool,
        record: &CaptureRecord,
    ) -> Result<(), CaptureError> {
        let secs = record.time_micros / 1_000_000;
        if let (Some(current), Some(slot)) = (self.current_start, self.rotation.slot_start(secs)) {
            if slot > current {
                self.rotate(slot)?;
            }
        }
        self.current.append(addr, connection, inbound, record)
    }

    /// See [`CaptureWriter::close_connection`]: a connection's files are in
    /// the current generation.
    pub fn close_connection(
        &mut self,
        addr: &str,
        connection: (i64, u64),
    ) -> Result<(), CaptureError> {
        self.current.close_connection(addr, connection)
    }

    /// Writes out the buffers, then deletes old generations if over the cap.
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        self.current.flush()?;
        self.enforce()
    }

    /// Counters over every generation this writer wrote.
    pub fn stats(&self) -> CaptureStats {
        add(self.finished, self.current.stats())
    }

    /// What rotation and retention did.
    pub fn rotation_stats(&self) -> RotationStats {
        self.rotation_stats
    }

    /// Finishes the current generation and starts the one of `slot`.
    fn rotate(&mut self, slot: u64) -> Result<(), CaptureError> {
        self.current.flush()?;
        let dir = generation_dir(&self.root, Some(slot));
        let next = CaptureWriter::new(&dir, self.layout)?;
        let before = size_on_disk(&dir).map_err(|e| root_error(&self.root, e))?;
        let old = std::mem::replace(&mut self.current, next);
        let old_start = self.current_start.replace(slot).expect("rotating");
        let old_stats = old.stats();
        let old_dir = old.root().to_path_buf();
        // Dropping flushes nothing more: the flush above emptied the buffers.
        drop(old);
        self.finished = add(self.finished, old_stats);
        *self.records_in.entry(old_dir.clone()).or_default() += old_stats.records_written;
        self.current_bytes_before = before;
        self.rotation_stats.generations += 1;
        if let Some(retention) = &mut self.retention {
            retention
                .close(old_start, old_dir)
                .map_err(|e| root_error(&self.root, e))?;
        }
        self.enforce()
    }

    /// Deletes the oldest generations while over the cap.
    fn enforce(&mut self) -> Result<(), CaptureError> {
        let Some(retention) = &mut self.retention else {
            return Ok(());
        };
        let current = self.current_bytes_before + self.current.stats().bytes_written;
        // A generation that cannot be deleted (its permissions changed under
        // us) is no reason to stop capturing: say so, and try again later.
        let done = match retention.enforce(current) {
            Ok(done) => done,
            Err(e) => {
                log::warn!("capture: {e}; trying again at the next flush");
                return Ok(());
            }
        };
        for (path, _) in done.deleted {
            self.rotation_stats.generations_deleted += 1;
            self.rotation_stats.records_deleted += self.records_in.remove(&path).unwrap_or(0);
        }
        Ok(())
    }
}

/// The directory of the generation starting at `start` (the root itself
/// without rotation).
fn generation_dir(root: &Path, start: Option<u64>) -> PathBuf {
    match start {
        Some(start) => root.join(generation_name(start)),
        None => root.to_path_buf(),
    }
}

fn root_error(root: &Path, source: std::io::Error) -> CaptureError {
    CaptureError::Root {
        path: root.to_path_buf(),
        what: "cannot be rotated",
        source,
    }
}

/// The counters of two writers together (open files: the later one's).
fn add(a: CaptureStats, b: CaptureStats) -> CaptureStats {
    CaptureStats {
        records_written: a.records_written + b.records_written,
        bytes_written: a.bytes_written + b.bytes_written,
        records_dropped: a.records_dropped + b.records_dropped,
        files: a.files + b.files,
        open_files: b.open_files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::capture::read_capture_tree;
    use crate::formats::timeline::{Selection, Timeline};
    use crate::rotation::list_generations;
    use std::time::Duration;

    /// Start of a slot of 60 s.
    const T0: u64 = 1_795_936_500;

    fn record(secs: u64, n: u64, payload: usize) -> CaptureRecord {
        CaptureRecord {
            time_micros: secs * 1_000_000 + n,
            msg_type: "ping".into(),
            payload: vec![n as u8; payload],
        }
    }

    fn rotation(max_bytes: Option<u64>) -> Rotation {
        Rotation {
            interval: Some(Duration::from_secs(60)),
            max_bytes,
        }
    }

    /// Writes 10 records to each of two peers in each of `minutes` slots
    /// (the clock is the records' time), flushing after each slot.
    fn write_minutes(writer: &mut RotatingWriter, minutes: u64, payload: usize) -> u64 {
        let mut n = 0;
        for minute in 0..minutes {
            for i in 0..10 {
                for (peer, addr) in ["10.0.0.1:8333", "10.0.0.2:8333"].iter().enumerate() {
                    let r = record(T0 + minute * 60 + i, n, payload);
                    writer
                        .append(addr, (peer as i64, T0), i % 2 == 0, &r)
                        .unwrap();
                    n += 1;
                }
            }
            writer.flush().unwrap();
        }
        n
    }

    #[test]
    fn generations_follow_the_records_clock() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer =
            RotatingWriter::new(dir.path(), CaptureLayout::Core, rotation(None), T0 + 5).unwrap();
        let written = write_minutes(&mut writer, 3, 10);
        // A record stamped before the current slot stays in it.
        writer
            .append("10.0.0.1:8333", (0, T0), true, &record(T0, 999, 1))
            .unwrap();
        assert_eq!(
            writer.current_dir(),
            dir.path().join(generation_name(T0 + 120))
        );
        assert_eq!(writer.rotation_stats().generations, 3);
        writer.flush().unwrap();
        assert_eq!(writer.stats().records_written, written + 1);
        drop(writer);

        let generations = list_generations(dir.path(), "").unwrap();
        let starts: Vec<u64> = generations.iter().map(|g| g.0).collect();
        assert_eq!(starts, [T0, T0 + 60, T0 + 120]);
        for (i, (start, path)) in generations.iter().enumerate() {
            // Each generation is a complete capture of both peers.
            let files = read_capture_tree(path).unwrap();
            assert_eq!(files.len(), 4, "{}", path.display());
            assert!(files.iter().all(|f| f.truncated.is_none()));
            let records: Vec<&CaptureRecord> = files.iter().flat_map(|f| &f.records).collect();
            assert_eq!(records.len(), if i == 2 { 21 } else { 20 });
            assert!(records
                .iter()
                .filter(|r| r.time_micros != T0 * 1_000_000 + 999)
                .all(|r| r.time_micros / 60_000_000 == start / 60));
        }
        // The whole tree reads as one capture, in time order, with the
        // files of a peer in several generations as one peer.
        let whole = Timeline::load(dir.path(), &Selection::default()).unwrap();
        assert_eq!(whole.messages.len() as u64, written + 1);
        assert_eq!(whole.peers.len(), 2);
        let times: Vec<u64> = whole
            .messages
            .iter()
            .map(|m| m.record.time_micros)
            .collect();
        let late = times
            .iter()
            .position(|t| *t == T0 * 1_000_000 + 999)
            .unwrap();
        let mut others = times.clone();
        others.remove(late);
        assert!(others.windows(2).all(|w| w[0] <= w[1]));
        // The late record comes after what its file held before it.
        assert!(times[..late].iter().any(|t| *t >= (T0 + 120) * 1_000_000));
        // One generation alone.
        let one = Timeline::load(&generations[1].1, &Selection::default()).unwrap();
        assert_eq!(one.messages.len(), 20);
    }

    #[test]
    fn the_cap_deletes_whole_old_generations_never_the_current() {
        let dir = tempfile::tempdir().unwrap();
        // Each record is 24 + 100 bytes; a generation holds 20: 2480 bytes.
        let cap = 2480 * 3 + 100;
        let mut writer = RotatingWriter::new(
            dir.path(),
            CaptureLayout::PerConnection,
            rotation(Some(cap)),
            T0,
        )
        .unwrap();
        let written = write_minutes(&mut writer, 6, 100);
        let rotated = writer.rotation_stats();
        assert_eq!(rotated.generations, 6);
        assert_eq!(rotated.generations_deleted, 3);
        assert_eq!(rotated.records_deleted, 60);
        drop(writer);

        let generations = list_generations(dir.path(), "").unwrap();
        let starts: Vec<u64> = generations.iter().map(|g| g.0).collect();
        assert_eq!(starts, [T0 + 180, T0 + 240, T0 + 300]);
        assert!(crate::rotation::size_on_disk(dir.path()).unwrap() <= cap);
        let files = read_capture_tree(dir.path()).unwrap();
        assert!(files.iter().all(|f| f.truncated.is_none()));
        let kept: usize = files.iter().map(|f| f.records.len()).sum();
        assert_eq!(kept as u64, written - rotated.records_deleted);
        // A restart counts the generations already there.
        let mut writer = RotatingWriter::new(
            dir.path(),
            CaptureLayout::PerConnection,
            rotation(Some(2480)),
            T0 + 360,
        )
        .unwrap();
        assert_eq!(writer.rotation_stats().generations_deleted, 2);
        // The current generation alone over the cap is kept, with the
        // one before it deleted.
        write_minutes(&mut writer, 0, 0);
        for i in 0..30 {
            writer
                .append("10.0.0.1:8333", (0, T0), true, &record(T0 + 360, i, 100))
                .unwrap();
        }
        writer.flush().unwrap();
        let stats = writer.rotation_stats();
        assert_eq!(stats.generations_deleted, 3);
        drop(writer);
        let starts: Vec<u64> = list_generations(dir.path(), "")
            .unwrap()
            .iter()
            .map(|g| g.0)
            .collect();
        assert_eq!(starts, [T0 + 360]);
        let files = read_capture_tree(dir.path()).unwrap();
        assert_eq!(files.iter().map(|f| f.records.len()).sum::<usize>(), 30);
    }

    #[test]
    fn without_rotation_it_writes_at_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer =
            RotatingWriter::new(dir.path(), CaptureLayout::Core, Rotation::NONE, T0).unwrap();
        let written = write_minutes(&mut writer, 2, 1);
        assert_eq!(writer.current_dir(), dir.path());
        assert_eq!(writer.rotation_stats(), RotationStats::default());
        drop(writer);
        assert!(list_generations(dir.path(), "").unwrap().is_empty());
        let files = read_capture_tree(&dir.path().join("10.0.0.1_8333")).unwrap();
        assert_eq!(
            files.iter().map(|f| f.records.len()).sum::<usize>() as u64,
            written / 2
        );
    }
}
