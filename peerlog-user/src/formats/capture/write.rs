//! The writer: [`CaptureWriter`] buffers records per file, keeps at most
//! 256 files open (closing the least recently used), and after a failed
//! write cuts the file back to its last whole record ([`WriteFailure`]).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::error::describe_write_error;
use super::layout::{check_peer_addr, connection_dir_name, peer_dir_name, FILE_NAMES};
use super::{CaptureError, CaptureLayout, CaptureRecord};
use crate::private_fs::{self, Dir};

/// A file's buffer is written out once it holds this much: large enough that
/// thousands of small messages (`inv`, `ping`) share one `write(2)`.
const FLUSH_THRESHOLD: usize = 256 * 1024;
/// All buffers are written out once together they hold this much, so that
/// many quiet peers cannot pin `FLUSH_THRESHOLD` each in memory. A written
/// buffer gives its memory back, so this bounds the buffers' memory too
/// (twice this, as a `Vec` grows by doubling). Under the bench's relay
/// flood (32 peers, 6 MB/s of capture) 16 MiB held about 10 MiB, and 2 MiB
/// took 3 MiB off peerlog's peak RSS against 4; the writes it brings are
/// still few there (a flush of all 64 files three times a second).
pub(super) const MAX_TOTAL_BUFFERED: usize = 2 * 1024 * 1024;
/// Open capture files kept at most; well under the usual 1024 descriptor
/// limit, and above the two files of each of bitcoind's default 125 peers.
const DEFAULT_MAX_OPEN_FILES: usize = 256;

/// Counters of a [`CaptureWriter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    /// Records written to their file (handed to the kernel; not fsynced).
    pub records_written: u64,
    /// Bytes of those records.
    pub bytes_written: u64,
    /// Records not written: refused (invalid, unopenable file, writer
    /// stopped) or lost from a buffer whose write failed.
    pub records_dropped: u64,
    /// Capture files this writer has started writing to; a file closed by
    /// [`CaptureWriter::close_connection`] and written again counts again.
    pub files: u64,
    /// Capture files open right now.
    pub open_files: u64,
}

/// The operations the writer needs from an open capture file. A trait so
/// that tests can inject write failures at any byte.
pub(super) trait DatFile: Send {
    /// Writes all of `buf` at the end of the file.
    fn append_bytes(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn cut_to(&self, len: u64) -> io::Result<()>;
}

impl DatFile for File {
    fn append_bytes(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf)
    }

    fn cut_to(&self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

/// Opens (creating) the capture file of this name in this directory for
/// appending; returns it and its length.
pub(super) type OpenDatFile =
    dyn Fn(&Dir, &str) -> io::Result<(Box<dyn DatFile>, u64)> + Send + Sync;

/// Opens a real capture file in append mode, like bitcoind's `fopen(path,
/// "ab")`, but mode 0600 when created and never through a symlink.
fn open_dat_file(dir: &Dir, name: &str) -> io::Result<(Box<dyn DatFile>, u64)> {
    let file = dir.append_file(name)?;
    let len = file.metadata()?.len();
    Ok((Box::new(file), len))
}

/// One capture file being written.
struct DatFileState {
    path: PathBuf,
    /// None when not open (never yet, or closed to respect the open-file cap).
    /// Invariant: `buf` is empty whenever this is None.
    handle: Option<Box<dyn DatFile>>,
    /// The file's length after our last successful write: what a failed
    /// write is cut back to.
    durable_len: u64,
    /// Complete encoded records not yet written.
    buf: Vec<u8>,
    /// Number of records in `buf`.
    buffered_records: u64,
    /// Tick of the last append, for closing the least recently used file.
    last_used: u64,
    /// Whether this file was ever opened (for [`CaptureStats::files`]).
    opened_before: bool,
}

impl DatFileState {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            handle: None,
            durable_len: 0,
            buf: Vec::new(),
            buffered_records: 0,
            last_used: 0,
            opened_before: false,
        }
    }
}

/// The two files of one peer directory (Core) or connection (PerConnection).
struct PeerFiles {
    /// The directory, relative to the root.
    dir: PathBuf,
    /// Indexed by `usize::from(inbound)`: 0 = sent, 1 = recv.
    files: [DatFileState; 2],
}

/// Key of [`PeerFiles`]: the peer address, plus the connection in
/// [`CaptureLayout::PerConnection`].
type PeerKey = (String, Option<(i64, u64)>);

/// The first write failure, kept to refuse everything after it with the same error.
struct WriteFailure {
    path: PathBuf,
    raw_os_error: Option<i32>,
    kind: io::ErrorKind,
    message: String,
    truncate_error: Option<String>,
}

impl WriteFailure {
    fn source(&self) -> io::Error {
        match self.raw_os_error {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

/// Writes P2P messages of many peers into capture files under one root
/// directory, in bitcoind's `-capturemessages` format.
///
/// **Buffering.** Each file has a buffer of complete encoded records; it is
/// written with one `write(2)` when it passes 256 KiB, when all buffers
/// together pass 16 MiB, on [`flush`](Self::flush) (call it periodically so
/// readers see recent messages), on [`close_connection`](Self::close_connection),
/// and on drop.
///
/// **Records are never split on disk.** The writer remembers each file's
/// length after its last successful write. If a write fails (disk full,
/// I/O error, ...), the file is cut back to that length, so every record in
/// it stays intact; the records of the lost buffer are counted as dropped
/// and a [`CaptureError::WriteFailed`] saying what happened and where is
/// returned. From then on every append and flush returns that same error
/// (buffers of other files are still written, each with the same
/// protection), so the caller stops capturing cleanly. The cut assumes this
/// writer is the only one appending to its files: do not point it at the
/// directory of a bitcoind running with `-capturemessages`.
///
/// **Existing files.** Files are opened in append mode, as bitcoind does,
/// so a second run continues the files of the first. A file whose length is
/// not on a record boundary (a writer killed mid-record) is appended to as
/// it is: its damaged record stays the last readable point for strict
/// readers, and nothing already in it is changed further.
///
/// **Private, never through a symlink.** Directories are created mode 0700
/// and files 0600 ([`private_fs`]). Below the root, which the caller names,
/// every directory and file is opened relative to its parent without
/// following symlinks: a symlink (or a FIFO, device, or hard link) planted
/// in the place of a peer's directory or capture file is refused with
/// [`CaptureError::Open`] naming it, and nothing is written through it.
///
/// **Open files.** At most 256 files are kept open; the least recently used
/// one is flushed and closed to make room, and reopened in append mode when
/// its peer speaks again.
pub struct CaptureWriter {
    root: PathBuf,
    layout: CaptureLayout,
    peers: HashMap<PeerKey, PeerFiles>,
    open_files: usize,
    pub(super) max_open_files: usize,
    /// Increases with every append; orders files by last use.
    tick: u64,
    /// Bytes in all buffers.
    total_buffered: usize,
    stats: CaptureStats,
    failure: Option<WriteFailure>,
    open_dat_file: Box<OpenDatFile>,
}

impl fmt::Debug for CaptureWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureWriter")
            .field("root", &self.root)
            .field("layout", &self.layout)
            .field("stats", &self.stats())
            .field("stopped", &self.failure.is_some())
            .finish_non_exhaustive()
    }
}

impl CaptureWriter {
    /// A writer for capture files under `root`, which is created if needed
    /// and checked to be a writable directory now, so that a bad path fails
    /// at start-up rather than at the first message.
    pub fn new(root: &Path, layout: CaptureLayout) -> Result<Self, CaptureError> {
        Self::with_opener(root, layout, Box::new(open_dat_file))
    }

    pub(super) fn with_opener(
        root: &Path,
        layout: CaptureLayout,
        open_dat_file: Box<OpenDatFile>,
    ) -> Result<Self, CaptureError> {
        let root_error = |what, source| CaptureError::Root {
            path: root.to_path_buf(),
            what,
            source,
        };
        if root.exists() && !root.is_dir() {
            return Err(root_error(
                "is not a directory",
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a non-directory is in the way",
                ),
            ));
        }
        private_fs::create_dir_all(root).map_err(|e| root_error("cannot be created", e))?;
        // Permission bits do not tell the whole story (read-only mounts, root
        // bypassing modes, full disks): create, write and remove a file. Its
        // name is random and it is created exclusively (O_EXCL), so nothing
        // planted under a name guessed in advance is followed or truncated.
        let mut probe = tempfile::Builder::new()
            .prefix(".peerlog-write-test-")
            .tempfile_in(root)
            .map_err(|e| root_error("is not writable", e))?;
        probe
            .write_all(b"peerlog")
            .map_err(|e| root_error("is not writable", e))?;
        probe
            .close()
            .map_err(|e| root_error("is not writable (cannot remove a test file)", e))?;
        Ok(Self {
            root: root.to_path_buf(),
            layout,
            peers: HashMap::new(),
            open_files: 0,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            tick: 0,
            total_buffered: 0,
            stats: CaptureStats::default(),
            failure: None,
            open_dat_file,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes the buffers of all files have allocated.
    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        let files = self.peers.values().flat_map(|peer| &peer.files);
        files.map(|file| file.buf.capacity()).sum()
    }

    /// Appends one record to the file of peer `addr` (bitcoind's
    /// `addr:port`, e.g. `[::1]:8333`).
    ///
    /// `connection` is (peer id, connect time in UNIX seconds); it picks the
    /// directory in [`CaptureLayout::PerConnection`] and is ignored in
    /// [`CaptureLayout::Core`]. `inbound` is the message's direction as in
    /// the tracepoint names: true for a received message
    /// (`net:inbound_message`, `msgs_recv.dat`), false for a sent one.
    ///
    /// On error the record is not written and counted as dropped.
    pub fn append(
        &mut self,
        addr: &str,
        connection: (i64, u64),
        inbound: bool,
        record: &CaptureRecord,
    ) -> Result<(), CaptureError> {
        if self.failure.is_some() {
            self.stats.records_dropped += 1;
            return Err(self.failure_error());
        }
        if let Err(error) = check_peer_addr(addr).and_then(|()| record.validate()) {
            self.stats.records_dropped += 1;
            return Err(error);
        }
        let key = self.key(addr, connection);
        let slot = usize::from(inbound);
        self.tick += 1;

        let needs_open = self
            .peers
            .get(&key)
            .is_none_or(|peer| peer.files[slot].handle.is_none());
        if needs_open {
            if self.open_files >= self.max_open_files {
                // Fails only by stopping the writer; the record is lost with it.
                if let Err(error) = self.close_least_recently_used() {
                    self.stats.records_dropped += 1;
                    return Err(error);
                }
            }
            self.open(&key, addr, connection, slot)?;
        }

        let peer = self.peers.get_mut(&key).expect("opened above");
        let file = &mut peer.files[slot];
        file.last_used = self.tick;
        let before = file.buf.len();
        record.encode_into(&mut file.buf);
        file.buffered_records += 1;
        self.total_buffered += file.buf.len() - before;

        if file.buf.len() >= FLUSH_THRESHOLD {
            if let Err(failure) = write_buffer(file, &mut self.stats, &mut self.total_buffered) {
                return Err(self.fail(failure));
            }
        }
        if self.total_buffered > MAX_TOTAL_BUFFERED {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out the buffers of all files.
    ///
    /// After a write failure (now or earlier) returns that failure's
    /// [`CaptureError::WriteFailed`], having still written what it could.
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        let mut failures = Vec::new();
        for peer in self.peers.values_mut() {
            for file in &mut peer.files {
                if let Err(failure) = write_buffer(file, &mut self.stats, &mut self.total_buffered)
                {
                    failures.push(failure);
                }
            }
        }
        for failure in failures {
            self.fail(failure);
        }
        match self.failure {
            Some(_) => Err(self.failure_error()),
            None => Ok(()),
        }
    }

    /// Flushes and closes the files of one connection, so that open file
    /// handles and buffers do not grow with every peer ever seen. Call it on
    /// `net:closed_connection` / `net:evicted_inbound_connection`.
    ///
    /// In [`CaptureLayout::Core`] the files belong to the `addr:port`; they
    /// are reopened in append mode if that address connects again.
    pub fn close_connection(
        &mut self,
        addr: &str,
        connection: (i64, u64),
    ) -> Result<(), CaptureError> {
        let key = self.key(addr, connection);
        let Some(mut peer) = self.peers.remove(&key) else {
            return Ok(());
        };
        let mut result = Ok(());
        for file in &mut peer.files {
            if let Err(failure) = write_buffer(file, &mut self.stats, &mut self.total_buffered) {
                result = Err(self.fail(failure));
            }
            if file.handle.take().is_some() {
                self.open_files -= 1;
            }
        }
        result
    }

    /// Counters so far.
    pub fn stats(&self) -> CaptureStats {
        CaptureStats {
            open_files: self.open_files as u64,
            ..self.stats
        }
    }

    fn key(&self, addr: &str, connection: (i64, u64)) -> PeerKey {
        match self.layout {
            CaptureLayout::Core => (addr.to_owned(), None),
            CaptureLayout::PerConnection => (addr.to_owned(), Some(connection)),
        }
    }

    /// Opens file `slot` of `key`, creating its directory and entry as needed.
    fn open(
        &mut self,
        key: &PeerKey,
        addr: &str,
        connection: (i64, u64),
        slot: usize,
    ) -> Result<(), CaptureError> {
        let (root, layout) = (&self.root, self.layout);
        let peer = self.peers.entry(key.clone()).or_insert_with(|| {
            let mut dir = PathBuf::from(peer_dir_name(addr));
            if layout == CaptureLayout::PerConnection {
                dir.push(connection_dir_name(connection));
            }
            let files = FILE_NAMES.map(|name| DatFileState::new(root.join(&dir).join(name)));
            PeerFiles { dir, files }
        });
        // Every time, not once: the directory may have been removed while
        // the file was closed, and reopening is rare enough. The root is
        // the user's; below it nothing is followed through a symlink.
        let dir = private_fs::create_dir_all(root)
            .and_then(|()| Dir::open(root))
            .and_then(|root| root.subdirs(&peer.dir));
        let dir = match dir {
            Ok(dir) => dir,
            Err(source) => {
                self.stats.records_dropped += 1;
                return Err(CaptureError::Open {
                    path: root.join(&peer.dir),
                    source,
                });
            }
        };
        let file = &mut peer.files[slot];
        match (self.open_dat_file)(&dir, FILE_NAMES[slot]) {
            Ok((handle, len)) => {
                file.handle = Some(handle);
                file.durable_len = len;
                self.open_files += 1;
                if !file.opened_before {
                    file.opened_before = true;
                    self.stats.files += 1;
                }
                Ok(())
            }
            Err(source) => {
                self.stats.records_dropped += 1;
                Err(CaptureError::Open {
                    path: file.path.clone(),
                    source,
                })
            }
        }
    }

    /// Flushes and closes the open file used longest ago. A linear scan: it
    /// runs only when more than `max_open_files` files are active, and then
    /// next to an `open(2)` that costs far more.
    fn close_least_recently_used(&mut self) -> Result<(), CaptureError> {
        let Some(file) = self
            .peers
            .values_mut()
            .flat_map(|peer| peer.files.iter_mut())
            .filter(|file| file.handle.is_some())
            .min_by_key(|file| file.last_used)
        else {
            return Ok(());
        };
        let written = write_buffer(file, &mut self.stats, &mut self.total_buffered);
        file.handle = None;
        self.open_files -= 1;
        written.map_err(|failure| self.fail(failure))
    }

    /// Records a write failure (keeping the first one for the sticky error)
    /// and returns the error to report.
    fn fail(&mut self, failure: WriteFailure) -> CaptureError {
        match &self.failure {
            None => self.failure = Some(failure),
            Some(_) => log::warn!(
                "capture: another write failed after capture stopped: {} while writing {}{}",
                describe_write_error(&failure.source()),
                failure.path.display(),
                failure
                    .truncate_error
                    .as_deref()
                    .map(|e| format!("; cutting it back failed: {e}"))
                    .unwrap_or_default()
            ),
        }
        self.failure_error()
    }

    fn failure_error(&self) -> CaptureError {
        let failure = self.failure.as_ref().expect("called after a failure");
        CaptureError::WriteFailed {
            path: failure.path.clone(),
            source: failure.source(),
            records_intact: self.stats.records_written,
            records_dropped: self.stats.records_dropped,
            truncate_error: failure.truncate_error.clone(),
        }
    }
}

/// Writes `file`'s buffer with one `write_all`. On failure cuts the file
/// back to its last durable length, so that it ends on a record boundary,
/// and drops the buffer (counting its records as dropped). Either way the
/// buffer is empty afterwards.
fn write_buffer(
    file: &mut DatFileState,
    stats: &mut CaptureStats,
    total_buffered: &mut usize,
) -> Result<(), WriteFailure> {
    if file.buf.is_empty() {
        return Ok(());
    }
    let handle = file
        .handle
        .as_mut()
        .expect("a file with buffered records is open");
    let result = handle.append_bytes(&file.buf);
    let (len, records) = (file.buf.len() as u64, file.buffered_records);
    *total_buffered -= file.buf.len();
    // Not `clear`: the buffer would keep the largest size it ever had while
    // the file is open, a block's megabytes for each peer a block went to.
    file.buf = Vec::new();
    file.buffered_records = 0;
    match result {
        Ok(()) => {
            file.durable_len += len;
            stats.records_written += records;
            stats.bytes_written += len;
            Ok(())
        }
        Err(error) => {
            let truncate_error = handle.cut_to(file.durable_len).err().map(|e| e.to_string());
            stats.records_dropped += records;
            Err(WriteFailure {
                path: file.path.clone(),
                raw_os_error: error.raw_os_error(),
                kind: error.kind(),
                message: error.to_string(),
                truncate_error,
            })
        }
    }
}

impl Drop for CaptureWriter {
    /// Writes out what is buffered; a failure here has nobody to return to,
    /// so it is logged (unless it is the one already returned earlier).
    fn drop(&mut self) {
        let already_stopped = self.failure.is_some();
        if let Err(error) = self.flush() {
            if !already_stopped {
                log::error!("capture: {error}");
            }
        }
    }
}
