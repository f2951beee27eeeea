//! The live capture's writer, on a thread of its own.
//!
//! Opening capture files costs milliseconds when many peers connect at once
//! (125 connections open 250 files, each behind a directory walk), and a
//! full buffer's `write(2)` can wait on the disk. Done on the trace loop,
//! that time is latency for every event behind it. So the trace loop only
//! batches the writer's work and hands each batch over; this thread does
//! the file system work, in the same order.

use std::{
    path::{Path, PathBuf},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::formats::capture::{
    CaptureError, CaptureRecord, CaptureStats, RotatingWriter, RotationStats,
};

/// Batches in flight at most: past that the trace loop waits for the
/// writer, so a disk slower than the node holds memory to this bound and
/// lets the kernel count losses, rather than growing without end.
const MAX_PENDING_BATCHES: usize = 64;

/// How often the writer flushes its buffers when no batch says so: a capture
/// file lags the node by at most this much.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// One step of the writer's work, as [`RotatingWriter`]'s methods take it.
enum Work {
    Append {
        addr: Arc<str>,
        connection: (i64, u64),
        inbound: bool,
        record: CaptureRecord,
    },
    CloseConnection {
        addr: Arc<str>,
        connection: (i64, u64),
    },
}

/// A [`RotatingWriter`] running on its own thread.
///
/// Work is queued with [`append`](Self::append) and
/// [`close_connection`](Self::close_connection) and handed over by
/// [`send`](Self::send). The first error of the writer stops it; the next
/// `send` (or [`finish`](Self::finish)) returns it.
pub(crate) struct CaptureWorker {
    root: PathBuf,
    batch: Vec<Work>,
    sender: Option<SyncSender<Vec<Work>>>,
    thread: Option<JoinHandle<(Counters, Result<(), CaptureError>)>>,
    /// The writer's counters, once it ended.
    stats: Counters,
}

/// The writer's counters: of the records, and of rotation.
pub(crate) type Counters = (CaptureStats, RotationStats);

impl CaptureWorker {
    /// Starts the thread that owns `writer`.
    pub(crate) fn start(writer: RotatingWriter) -> std::io::Result<Self> {
        let root = writer.root().to_path_buf();
        let (sender, receiver) = mpsc::sync_channel(MAX_PENDING_BATCHES);
        let thread = thread::Builder::new()
            .name("peerlog-capture".into())
            .spawn(move || write_batches(writer, receiver))?;
        Ok(Self {
            root,
            batch: Vec::new(),
            sender: Some(sender),
            thread: Some(thread),
            stats: Counters::default(),
        })
    }

    /// The capture's root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Queues a record (see [`RotatingWriter::append`]).
    pub(crate) fn append(
        &mut self,
        addr: Arc<str>,
        connection: (i64, u64),
        inbound: bool,
        record: CaptureRecord,
    ) {
        self.batch.push(Work::Append {
            addr,
            connection,
            inbound,
            record,
        });
    }

    /// Queues the closing of a connection's files (see
    /// [`RotatingWriter::close_connection`]).
    pub(crate) fn close_connection(&mut self, addr: Arc<str>, connection: (i64, u64)) {
        self.batch.push(Work::CloseConnection { addr, connection });
    }

    /// Hands the queued work to the writer. Returns the writer's error once
    /// it stopped (it stops only on an error); the work is then dropped.
    pub(crate) fn send(&mut self) -> Result<(), CaptureError> {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            if let Some(sender) = &self.sender {
                if sender.send(batch).is_ok() {
                    return Ok(());
                }
            }
        } else if !self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            return Ok(());
        }
        self.sender = None;
        self.join()
    }

    /// Hands over the queued work, lets the writer write everything out and
    /// returns its counters, with its error if [`send`](Self::send) did not
    /// return it already.
    pub(crate) fn finish(mut self) -> (Counters, Result<(), CaptureError>) {
        let sent = self.send();
        self.sender = None;
        let written = self.join();
        (self.stats, sent.and(written))
    }

    /// Waits for the writer thread (once), keeps its counters and returns
    /// its result.
    fn join(&mut self) -> Result<(), CaptureError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok((stats, result))) => {
                self.stats = stats;
                result
            }
            // A panic of the writer is a bug: carry it on here, as if the
            // writer had run on this thread.
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(()),
        }
    }
}

/// The writer thread: does each batch's work in order, flushes every
/// [`FLUSH_INTERVAL`] and when the trace loop hangs up, and stops at the
/// first error.
fn write_batches(
    mut writer: RotatingWriter,
    batches: Receiver<Vec<Work>>,
) -> (Counters, Result<(), CaptureError>) {
    let mut flushed = Instant::now();
    let result = (|| loop {
        let wait = FLUSH_INTERVAL.saturating_sub(flushed.elapsed());
        match batches.recv_timeout(wait) {
            Ok(batch) => {
                for work in batch {
                    match work {
                        Work::Append {
                            addr,
                            connection,
                            inbound,
                            record,
                        } => writer.append(&addr, connection, inbound, &record)?,
                        Work::CloseConnection { addr, connection } => {
                            writer.close_connection(&addr, connection)?
                        }
                    }
                }
                if flushed.elapsed() >= FLUSH_INTERVAL {
                    writer.flush()?;
                    flushed = Instant::now();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                writer.flush()?;
                flushed = Instant::now();
            }
            Err(RecvTimeoutError::Disconnected) => return writer.flush(),
        }
    })();
    ((writer.stats(), writer.rotation_stats()), result)
}
