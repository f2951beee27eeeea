//! Bitcoin Core's `-capturemessages` file format: writing and reading.
//!
//! With `-capturemessages`, bitcoind's `CaptureMessageToFile` (src/net.cpp)
//! appends every P2P message it processes to
//! `<datadir>/<chain>/message_capture/<addr_port>/msgs_{recv,sent}.dat`,
//! where `<addr_port>` is the peer's `addr:port` with every `:` replaced by
//! `_` (Windows forbids `:` in file names). Each file is a plain sequence of
//! records:
//!
//! | field | bytes |
//! |---|---|
//! | time, microseconds since the UNIX epoch, u64 little-endian | 8 |
//! | message type, ASCII, NUL-padded | [`MESSAGE_TYPE_SIZE`] |
//! | payload length, u32 little-endian | 4 |
//! | payload | length |
//!
//! peerlog writes the same files from the `net:inbound_message` /
//! `net:outbound_message` tracepoints, which fire at the same points, so
//! Bitcoin Core's `contrib/message-capture/message-capture-parser.py` reads
//! peerlog's output unchanged. [`CaptureLayout::PerConnection`] adds one
//! directory level per connection; the parser only looks at file contents
//! and whether `recv` is in the file name, so it reads that layout too.
//!
//! Unlike bitcoind, which `fopen`s the file for every message and can leave
//! a half-written record behind when the disk fills, [`CaptureWriter`] only
//! ever leaves whole records on disk (see its documentation), and the reader
//! ([`CaptureReader`], [`read_capture_file`], [`read_capture_tree`]) reports
//! a cut-short last record instead of failing on it.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::private_fs::{self, Dir};

/// Size of the message type field (Bitcoin Core's `CMessageHeader::MESSAGE_TYPE_SIZE`).
pub const MESSAGE_TYPE_SIZE: usize = 12;

/// Size of the time field.
const TIME_SIZE: usize = 8;
/// Size of the payload length field.
const LENGTH_SIZE: usize = 4;
/// Bytes of a record before its payload.
pub const RECORD_HEADER_SIZE: usize = TIME_SIZE + MESSAGE_TYPE_SIZE + LENGTH_SIZE;

/// Bitcoin Core's `MAX_PROTOCOL_MESSAGE_LENGTH`: no message bitcoind
/// processes or sends has a larger payload, so a larger length in a capture
/// file means the file is not a capture file or is corrupt.
const MAX_PROTOCOL_MESSAGE_LENGTH: usize = peerlog_common::MAX_PROTOCOL_MESSAGE_LENGTH as usize;

/// File of the messages bitcoind received from the peer.
const RECV_FILE_NAME: &str = "msgs_recv.dat";
/// File of the messages bitcoind sent to the peer.
const SENT_FILE_NAME: &str = "msgs_sent.dat";
/// The files of a peer, indexed by `usize::from(inbound)`.
const FILE_NAMES: [&str; 2] = [SENT_FILE_NAME, RECV_FILE_NAME];

/// A file's buffer is written out once it holds this much: large enough that
/// thousands of small messages (`inv`, `ping`) share one `write(2)`.
const FLUSH_THRESHOLD: usize = 256 * 1024;
/// All buffers are written out once together they hold this much, so that
/// many quiet peers cannot pin `FLUSH_THRESHOLD` each in memory.
const MAX_TOTAL_BUFFERED: usize = 16 * 1024 * 1024;
/// Open capture files kept at most; well under the usual 1024 descriptor
/// limit, and above the two files of each of bitcoind's default 125 peers.
const DEFAULT_MAX_OPEN_FILES: usize = 256;

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// One record of a capture file: one P2P message as bitcoind processed or
/// sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    /// When the message was captured, in microseconds since the UNIX epoch
    /// (bitcoind's `GetTime<std::chrono::microseconds>()`).
    pub time_micros: u64,
    /// The message type (`version`, `inv`, ...): printable ASCII, at most
    /// [`MESSAGE_TYPE_SIZE`] bytes.
    pub msg_type: String,
    /// The message payload, without the P2P message header.
    pub payload: Vec<u8>,
}

impl CaptureRecord {
    /// Number of bytes [`encode_into`](Self::encode_into) appends.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_SIZE + self.payload.len().min(u32::MAX as usize)
    }

    /// Appends the record in the on-disk format to `out`.
    ///
    /// Meant for valid records ([`validate`](Self::validate)); for others the
    /// output is still one self-consistent record, so a stream never loses
    /// its framing: a message type longer than [`MESSAGE_TYPE_SIZE`] is cut,
    /// and a payload beyond `u32::MAX` bytes is cut to what the length field
    /// can say.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let msg_type = self.msg_type.as_bytes();
        let msg_type = &msg_type[..msg_type.len().min(MESSAGE_TYPE_SIZE)];
        let length = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        let mut type_field = [0u8; MESSAGE_TYPE_SIZE];
        type_field[..msg_type.len()].copy_from_slice(msg_type);

        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.time_micros.to_le_bytes());
        out.extend_from_slice(&type_field);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&self.payload[..length as usize]);
    }

    /// Checks what [`CaptureReader`] will insist on when reading the record
    /// back: a message type of at most [`MESSAGE_TYPE_SIZE`] printable ASCII
    /// bytes and a payload of at most 4,000,000 bytes (Bitcoin Core's
    /// `MAX_PROTOCOL_MESSAGE_LENGTH`).
    pub fn validate(&self) -> Result<(), CaptureError> {
        let invalid = |reason: String| {
            Err(CaptureError::InvalidRecord {
                msg_type: self.msg_type.escape_debug().to_string(),
                reason,
            })
        };
        if self.msg_type.len() > MESSAGE_TYPE_SIZE {
            return invalid(format!(
                "message type is {} bytes long, more than {MESSAGE_TYPE_SIZE}",
                self.msg_type.len()
            ));
        }
        if let Some(b) = self.msg_type.bytes().find(|b| !is_msg_type_char(*b)) {
            return invalid(format!(
                "message type contains byte 0x{b:02x}, which is not printable ASCII"
            ));
        }
        if self.payload.len() > MAX_PROTOCOL_MESSAGE_LENGTH {
            return invalid(format!(
                "payload is {} bytes, more than Bitcoin Core's MAX_PROTOCOL_MESSAGE_LENGTH ({MAX_PROTOCOL_MESSAGE_LENGTH})",
                self.payload.len()
            ));
        }
        Ok(())
    }
}

/// Whether `b` may appear in a message type: Bitcoin Core's
/// `CMessageHeader::IsMessageTypeValid` accepts 0x20..=0x7E.
fn is_msg_type_char(b: u8) -> bool {
    (b' '..=b'~').contains(&b)
}

/// Checks the message type bytes present so far (`bytes` may be a prefix of
/// the field when the file ends inside it): printable ASCII up to the first
/// NUL, only NULs after it. Returns the length before the first NUL, or the
/// index and value of the first bad byte with what is wrong with it.
fn check_msg_type_field(bytes: &[u8]) -> Result<usize, (usize, u8, &'static str)> {
    let mut end = None;
    for (i, &b) in bytes.iter().enumerate() {
        match end {
            None if b == 0 => end = Some(i),
            None if !is_msg_type_char(b) => return Err((i, b, "is not printable ASCII")),
            None => {}
            Some(_) if b != 0 => return Err((i, b, "follows the NUL that ends the message type")),
            Some(_) => {}
        }
    }
    Ok(end.unwrap_or(bytes.len()))
}

/// Which way a message went, seen from bitcoind; selects the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received from the peer (`net:inbound_message`), in `msgs_recv.dat`.
    Recv,
    /// Sent to the peer (`net:outbound_message`), in `msgs_sent.dat`.
    Sent,
}

impl Direction {
    /// The capture file holding messages of this direction.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Recv => RECV_FILE_NAME,
            Self::Sent => SENT_FILE_NAME,
        }
    }

    /// `"recv"` or `"sent"`, as message-capture-parser.py's `direction` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recv => "recv",
            Self::Sent => "sent",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Directory names
// ---------------------------------------------------------------------------

/// The directory name bitcoind uses for a peer: its `addr:port` (as
/// `CService::ToStringAddrPort` prints it) with every `:` replaced by `_`.
///
/// `127.0.0.1:18444` → `127.0.0.1_18444`, `[::1]:8333` → `[__1]_8333`.
pub fn peer_dir_name(addr: &str) -> String {
    addr.replace(':', "_")
}

/// The `addr:port` a peer directory name stands for; the inverse of
/// [`peer_dir_name`] for the addresses bitcoind prints.
///
/// The replacement cannot be undone blindly, so this relies on the shapes of
/// `ToStringAddrPort`: a bracketed address (IPv6, CJDNS) had `:` only inside
/// the brackets and before the port (`[__1]_8333` → `[::1]:8333`); every
/// other address (IPv4, Tor, I2P) had exactly one `:`, before the port, so
/// only the last `_` is turned back. None when the name has no numeric port.
pub fn peer_addr_from_dir_name(name: &str) -> Option<String> {
    let is_port = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = name.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        let port = port.strip_prefix('_')?;
        if !is_port(port) || host.is_empty() {
            return None;
        }
        Some(format!("[{}]:{port}", host.replace('_', ":")))
    } else {
        let (host, port) = name.rsplit_once('_')?;
        if !is_port(port) || host.is_empty() {
            return None;
        }
        Some(format!("{host}:{port}"))
    }
}

/// The directory name of one connection in [`CaptureLayout::PerConnection`].
fn connection_dir_name((peer_id, connected_at): (i64, u64)) -> String {
    format!("peer{peer_id}-{connected_at}")
}

/// Parses a [`connection_dir_name`] back into (peer id, connect time).
fn parse_connection_dir_name(name: &str) -> Option<(i64, u64)> {
    let rest = name.strip_prefix("peer")?;
    // The peer id may in principle be negative ("peer-1-1700000000"), so the
    // separator is the last '-'.
    let (id, secs) = rest.rsplit_once('-')?;
    Some((id.parse().ok()?, secs.parse().ok()?))
}

/// Refuses addresses that would not name exactly one directory below the
/// capture root. bitcoind's addresses never contain these; the check keeps
/// a garbled string from the tracepoint from writing outside the root.
fn check_peer_addr(addr: &str) -> Result<(), CaptureError> {
    let reason = if addr.is_empty() {
        Some("it is empty")
    } else if addr.contains('/') || addr.contains('\0') {
        Some("it contains '/' or NUL")
    } else if addr == "." || addr == ".." {
        Some("it is '.' or '..'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CaptureError::InvalidPeerAddr {
            addr: addr.escape_debug().to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What went wrong writing or reading capture files.
///
/// The messages are complete on their own (they include the underlying OS
/// error), so `source()` returns None rather than repeating it.
#[derive(Debug)]
#[non_exhaustive]
pub enum CaptureError {
    /// The capture root directory cannot be created or written to.
    Root {
        /// The root directory.
        path: PathBuf,
        /// What failed ("cannot be created", "is not writable", ...).
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A peer directory or capture file cannot be created or opened. The
    /// record is dropped; the writer keeps going (the next append retries).
    Open {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing a capture file failed (disk full, I/O error, ...). The file
    /// was cut back to its last complete record; the writer refuses every
    /// further append and flush with this error, so capture stops cleanly.
    WriteFailed {
        /// The file whose write failed first.
        path: PathBuf,
        /// The OS error of that write.
        source: io::Error,
        /// Records written by this writer that are on disk, intact.
        records_intact: u64,
        /// Records accepted or offered but not on disk.
        records_dropped: u64,
        /// Set when cutting the file back failed too: the OS error, as text.
        /// The file may then end in a partial record.
        truncate_error: Option<String>,
    },
    /// The peer address cannot name a directory (empty, `/`, NUL, `..`).
    InvalidPeerAddr {
        /// The address, escaped for printing.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record that the format cannot hold or the reader would refuse.
    InvalidRecord {
        /// The message type, escaped for printing.
        msg_type: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading a capture file or directory failed.
    Read {
        /// The file or directory, when known.
        path: Option<PathBuf>,
        /// The OS error.
        source: io::Error,
    },
    /// The bytes are not a capture file, or are damaged, at `offset`.
    Corrupt {
        /// The file, when known.
        path: Option<PathBuf>,
        /// Byte offset of the record that cannot be read.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The last record is cut short (the writer was killed mid-write, or is
    /// writing it right now). Every record before it is intact.
    Truncated {
        /// The file, when known.
        path: Option<PathBuf>,
        /// The cut-short record.
        record: TruncatedRecord,
    },
}

/// Where a capture file's last record is cut short, and by how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncatedRecord {
    /// Byte offset where the record starts.
    pub offset: u64,
    /// Bytes of it present in the file.
    pub present: u64,
    /// Bytes missing. Exact when the record header is complete
    /// (`present >= RECORD_HEADER_SIZE`); otherwise the payload length is
    /// unknown and this is only the missing part of the header, a lower bound.
    pub missing: u64,
}

impl fmt::Display for TruncatedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at_least = if self.present < RECORD_HEADER_SIZE as u64 {
            "at least "
        } else {
            ""
        };
        write!(
            f,
            "the last record, at byte offset {}, is cut short: {} bytes present, {at_least}{} missing",
            self.offset, self.present, self.missing
        )
    }
}

/// "capture file <path>" or "capture stream" for messages.
fn describe_source(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!("capture file {}", path.display()),
        None => "capture stream".to_string(),
    }
}

/// Names a write error the way a user thinks of it.
fn describe_write_error(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOSPC) => "disk full".to_string(),
        Some(libc::EDQUOT) => "disk quota exceeded".to_string(),
        _ if error.kind() == io::ErrorKind::StorageFull => "disk full".to_string(),
        _ => format!("write error ({error})"),
    }
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root { path, what, source } => {
                write!(f, "capture directory {} {what}: {source}", path.display())
            }
            Self::Open { path, source } => {
                write!(f, "cannot create or open {}: {source}", path.display())
            }
            Self::WriteFailed {
                path,
                source,
                records_intact,
                records_dropped,
                truncate_error,
            } => {
                write!(
                    f,
                    "{} while writing {}: capture stopped; {records_intact} records already written are intact, {records_dropped} records dropped",
                    describe_write_error(source),
                    path.display()
                )?;
                if let Some(error) = truncate_error {
                    write!(
                        f,
                        "; cutting the file back to its last complete record failed too ({error}), so it may end in a partial record"
                    )?;
                }
                Ok(())
            }
            Self::InvalidPeerAddr { addr, reason } => {
                write!(
                    f,
                    "peer address \"{addr}\" cannot name a capture directory: {reason}"
                )
            }
            Self::InvalidRecord { msg_type, reason } => {
                write!(f, "message \"{msg_type}\" cannot be captured: {reason}")
            }
            Self::Read { path, source } => match path {
                Some(path) => write!(f, "cannot read {}: {source}", path.display()),
                None => write!(f, "cannot read capture stream: {source}"),
            },
            Self::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{} is not a capture file or is corrupt at byte offset {offset}: {reason}",
                describe_source(path)
            ),
            Self::Truncated { path, record } => {
                write!(f, "{}: {record}", describe_source(path))
            }
        }
    }
}

impl std::error::Error for CaptureError {}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// How [`CaptureWriter`] arranges files under its root directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureLayout {
    /// Exactly bitcoind's: `<root>/<addr_port>/msgs_{recv,sent}.dat`. A later
    /// connection from the same `addr:port` appends to the same files.
    #[value(name = "core")]
    Core,
    /// One directory per connection:
    /// `<root>/<addr_port>/peer<id>-<connect unix secs>/msgs_{recv,sent}.dat`,
    /// so reconnections from the same `addr:port` stay apart.
    #[value(name = "per-connection")]
    PerConnection,
}

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
trait DatFile: Send {
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
type OpenDatFile = dyn Fn(&Dir, &str) -> io::Result<(Box<dyn DatFile>, u64)> + Send + Sync;

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
    max_open_files: usize,
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

    fn with_opener(
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
    file.buf.clear();
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

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

/// Reads `buf.len()` bytes unless the input ends first; returns how many it got.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The records of one capture file or stream, in order.
///
/// Yields `Err` at most once, then ends: [`CaptureError::Truncated`] when the
/// input ends inside a record (every record before it was yielded),
/// [`CaptureError::Corrupt`] when a record header cannot be one (message
/// type bytes that are not printable ASCII, or not NUL after the first NUL;
/// a payload length above 4,000,000), or [`CaptureError::Read`]. The message
/// type is the field's bytes up to the first NUL, as in Bitcoin Core's
/// message-capture-parser.py. Never panics, whatever the input.
#[derive(Debug)]
pub struct CaptureReader<R> {
    inner: R,
    path: Option<PathBuf>,
    offset: u64,
    done: bool,
}

impl CaptureReader<io::BufReader<File>> {
    /// Opens a capture file; errors name it.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Read {
            path: Some(path.to_path_buf()),
            source,
        })?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            ..Self::new(io::BufReader::new(file))
        })
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads records from `inner`, which starts at a record boundary.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            path: None,
            offset: 0,
            done: false,
        }
    }

    /// Byte offset of the next record (after the last one yielded).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn read_record(&mut self) -> Result<Option<CaptureRecord>, CaptureError> {
        let offset = self.offset;
        let mut header = [0u8; RECORD_HEADER_SIZE];
        let got = read_up_to(&mut self.inner, &mut header).map_err(|e| self.read_error(e))?;
        if got == 0 {
            return Ok(None);
        }
        // Check the message type as far as it is present, so that a file of
        // garbage shorter than one header is called corrupt, not truncated.
        let type_end = got.min(TIME_SIZE + MESSAGE_TYPE_SIZE);
        let type_bytes = header.get(TIME_SIZE..type_end).unwrap_or(&[]);
        let type_len = match check_msg_type_field(type_bytes) {
            Ok(len) => len,
            Err((i, b, what)) => {
                return Err(self.corrupt(
                    offset,
                    format!(
                        "message type byte {i} (byte offset {}) is 0x{b:02x}, which {what}",
                        offset + (TIME_SIZE + i) as u64
                    ),
                ))
            }
        };
        if got < RECORD_HEADER_SIZE {
            return Err(self.truncated(offset, got as u64, (RECORD_HEADER_SIZE - got) as u64));
        }

        let mut time = [0u8; TIME_SIZE];
        time.copy_from_slice(&header[..TIME_SIZE]);
        let mut length = [0u8; LENGTH_SIZE];
        length.copy_from_slice(&header[TIME_SIZE + MESSAGE_TYPE_SIZE..]);
        let length = u32::from_le_bytes(length) as usize;
        if length > MAX_PROTOCOL_MESSAGE_LENGTH {
            return Err(self.corrupt(
                offset,
                format!(
                    "payload length {length} is more than Bitcoin Core's MAX_PROTOCOL_MESSAGE_LENGTH ({MAX_PROTOCOL_MESSAGE_LENGTH})"
                ),
            ));
        }

        let mut payload = Vec::new();
        (&mut self.inner)
            .take(length as u64)
            .read_to_end(&mut payload)
            .map_err(|e| self.read_error(e))?;
        if payload.len() < length {
            return Err(self.truncated(
                offset,
                (RECORD_HEADER_SIZE + payload.len()) as u64,
                (length - payload.len()) as u64,
            ));
        }
        self.offset += (RECORD_HEADER_SIZE + length) as u64;
        let msg_type = &header[TIME_SIZE..TIME_SIZE + type_len];
        Ok(Some(CaptureRecord {
            time_micros: u64::from_le_bytes(time),
            // Checked above to be printable ASCII, so this never replaces anything.
            msg_type: String::from_utf8_lossy(msg_type).into_owned(),
            payload,
        }))
    }

    fn read_error(&self, source: io::Error) -> CaptureError {
        CaptureError::Read {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, offset: u64, reason: String) -> CaptureError {
        CaptureError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    fn truncated(&self, offset: u64, present: u64, missing: u64) -> CaptureError {
        CaptureError::Truncated {
            path: self.path.clone(),
            record: TruncatedRecord {
                offset,
                present,
                missing,
            },
        }
    }
}

impl<R: Read> Iterator for CaptureReader<R> {
    type Item = Result<CaptureRecord, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.read_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

impl<R: Read> std::iter::FusedIterator for CaptureReader<R> {}

/// One capture file read in full, with what its path says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureFile {
    /// The file.
    pub path: PathBuf,
    /// The peer's `addr:port`, from the peer directory name
    /// ([`peer_addr_from_dir_name`]); None if the directory is not named
    /// like one.
    pub peer_addr: Option<String>,
    /// (peer id, connect time in UNIX seconds) when the file is in a
    /// `peer<id>-<secs>` directory ([`CaptureLayout::PerConnection`]).
    pub connection: Option<(i64, u64)>,
    /// From the file name: [`Direction::Recv`] when it contains `recv`, as
    /// message-capture-parser.py decides, else [`Direction::Sent`].
    pub direction: Direction,
    /// Every complete record, in file order.
    pub records: Vec<CaptureRecord>,
    /// The cut-short last record, if the file ends inside one.
    pub truncated: Option<TruncatedRecord>,
}

/// Reads one capture file. A cut-short last record is reported in
/// [`CaptureFile::truncated`], not as an error; anything else that is not a
/// record is a [`CaptureError::Corrupt`] naming the byte offset.
pub fn read_capture_file(path: &Path) -> Result<CaptureFile, CaptureError> {
    let direction = match path.file_stem().map(|s| s.to_string_lossy()) {
        Some(stem) if stem.contains("recv") => Direction::Recv,
        _ => Direction::Sent,
    };
    let dir_name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
    };
    let parent = path.parent();
    let connection = dir_name(parent).and_then(|n| parse_connection_dir_name(&n));
    let peer_dir = match connection {
        Some(_) => dir_name(parent.and_then(Path::parent)),
        None => dir_name(parent),
    };
    let peer_addr = peer_dir.and_then(|n| peer_addr_from_dir_name(&n));

    let mut records = Vec::new();
    let mut truncated = None;
    for record in CaptureReader::open(path)? {
        match record {
            Ok(record) => records.push(record),
            Err(CaptureError::Truncated { record, .. }) => truncated = Some(record),
            Err(error) => return Err(error),
        }
    }
    Ok(CaptureFile {
        path: path.to_path_buf(),
        peer_addr,
        connection,
        direction,
        records,
        truncated,
    })
}

/// Reads every capture file under `path`: a bitcoind `message_capture`
/// directory, a peerlog capture root of either layout, one peer's
/// directory, or a single file.
///
/// In a directory tree only files named `msgs_recv.dat` and `msgs_sent.dat`
/// are read; symbolic links to directories are not followed (no loops).
/// Files come sorted by path. The first corrupt or unreadable file ends the
/// walk with its error; use [`read_capture_file`] per file to go on past it.
pub fn read_capture_tree(path: &Path) -> Result<Vec<CaptureFile>, CaptureError> {
    let read_error = |path: &Path, source| CaptureError::Read {
        path: Some(path.to_path_buf()),
        source,
    };
    let metadata = fs::metadata(path).map_err(|e| read_error(path, e))?;
    if !metadata.is_dir() {
        return Ok(vec![read_capture_file(path)?]);
    }
    let mut found = Vec::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| read_error(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| read_error(&dir, e))?;
            let entry_path = entry.path();
            let file_type = entry.file_type().map_err(|e| read_error(&entry_path, e))?;
            if file_type.is_dir() {
                pending.push(entry_path);
            } else if entry.file_name() == RECV_FILE_NAME || entry.file_name() == SENT_FILE_NAME {
                // Follows a symlink to a file, but not to a directory.
                if fs::metadata(&entry_path).is_ok_and(|m| m.is_file()) {
                    found.push(entry_path);
                }
            }
        }
    }
    found.sort();
    found.iter().map(|file| read_capture_file(file)).collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    fn record(time_micros: u64, msg_type: &str, payload: &[u8]) -> CaptureRecord {
        CaptureRecord {
            time_micros,
            msg_type: msg_type.to_string(),
            payload: payload.to_vec(),
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn encode(records: &[CaptureRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            r.encode_into(&mut out);
        }
        out
    }

    fn read_all(bytes: &[u8]) -> (Vec<CaptureRecord>, Option<CaptureError>) {
        let mut records = Vec::new();
        for item in CaptureReader::new(bytes) {
            match item {
                Ok(r) => records.push(r),
                Err(e) => return (records, Some(e)),
            }
        }
        (records, None)
    }

    /// A `ping` with nonce 0x8877665544332211 at 2023-11-14T22:13:20Z:
    /// 1_700_000_000_000_000 µs = 0x0006_0A24_181E_4000.
    const PING_HEX: &str = "00401e18240a0600 70696e670000000000000000 08000000 1122334455667788";
    /// A `verack` (empty payload) at time 0x0102030405060708.
    const VERACK_HEX: &str = "0807060504030201 76657261636b000000000000 00000000";

    fn ping() -> CaptureRecord {
        record(
            1_700_000_000_000_000,
            "ping",
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
        )
    }

    fn verack() -> CaptureRecord {
        record(0x0102_0304_0506_0708, "verack", &[])
    }

    #[test]
    fn encodes_known_bytes() {
        let mut out = Vec::new();
        ping().encode_into(&mut out);
        assert_eq!(out, unhex(PING_HEX));
        assert_eq!(ping().encoded_len(), out.len());
        assert_eq!(out.len(), 24 + 8);

        let mut out = Vec::new();
        verack().encode_into(&mut out);
        assert_eq!(out, unhex(VERACK_HEX));
        assert_eq!(verack().encoded_len(), 24);

        // A 12-character type fills the field with no NUL, as in bitcoind.
        let mut out = Vec::new();
        record(0, "sendaddrv2xx", &[]).encode_into(&mut out);
        assert_eq!(&out[8..20], b"sendaddrv2xx");
    }

    #[test]
    fn decodes_hand_written_fixture() {
        let bytes = unhex(&format!("{PING_HEX}{VERACK_HEX}"));
        let (records, error) = read_all(&bytes);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(records, vec![ping(), verack()]);
    }

    #[test]
    fn validate_refuses_what_the_reader_would() {
        assert!(ping().validate().is_ok());
        assert!(record(0, "", &[]).validate().is_ok());
        assert!(record(0, "abcdefghijklm", &[]).validate().is_err());
        assert!(record(0, "pi\0g", &[]).validate().is_err());
        assert!(record(0, "pïng", &[]).validate().is_err());
        let big = record(0, "block", &vec![0; MAX_PROTOCOL_MESSAGE_LENGTH + 1]);
        let err = big.validate().unwrap_err();
        assert!(err.to_string().contains("4000001 bytes"), "{err}");
        assert!(record(0, "block", &vec![0; MAX_PROTOCOL_MESSAGE_LENGTH])
            .validate()
            .is_ok());
    }

    #[test]
    fn dir_names_both_ways() {
        let cases = [
            ("127.0.0.1:18444", "127.0.0.1_18444"),
            ("[::1]:8333", "[__1]_8333"),
            (
                "[2001:db8::ff00:42:8329]:8333",
                "[2001_db8__ff00_42_8329]_8333",
            ),
            ("[fc00::1]:8333", "[fc00__1]_8333"),
            (
                "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333",
                "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion_8333",
            ),
            (
                "ukeu3k5oycgaauneqgtnvselmt4yemvoilkln7jpvamvfx7dnkdq.b32.i2p:0",
                "ukeu3k5oycgaauneqgtnvselmt4yemvoilkln7jpvamvfx7dnkdq.b32.i2p_0",
            ),
        ];
        for (addr, dir) in cases {
            assert_eq!(peer_dir_name(addr), dir);
            assert_eq!(peer_addr_from_dir_name(dir).as_deref(), Some(addr), "{dir}");
        }
        for not_a_peer in [
            "",
            "_",
            "foo",
            "1.2.3.4_",
            "1.2.3.4_x",
            "[__1]",
            "[__1]8333",
            "[]_1",
        ] {
            assert_eq!(peer_addr_from_dir_name(not_a_peer), None, "{not_a_peer}");
        }
        assert_eq!(
            parse_connection_dir_name("peer7-1700000000"),
            Some((7, 1_700_000_000))
        );
        assert_eq!(parse_connection_dir_name("peer-1-5"), Some((-1, 5)));
        assert_eq!(
            parse_connection_dir_name(&connection_dir_name((42, 9))),
            Some((42, 9))
        );
        assert_eq!(parse_connection_dir_name("peerx-5"), None);
        assert_eq!(parse_connection_dir_name("127.0.0.1_8333"), None);
    }

    const PEERS: [&str; 4] = [
        "127.0.0.1:18444",
        "[::1]:8333",
        "[2001:db8::1]:18333",
        "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion:8333",
    ];

    /// Writes a deterministic mix of messages for PEERS, two connections
    /// each, and returns what each (addr, connection, inbound) should hold.
    fn write_mix(
        writer: &mut CaptureWriter,
    ) -> HashMap<(String, (i64, u64), bool), Vec<CaptureRecord>> {
        let mut expected: HashMap<_, Vec<_>> = HashMap::new();
        let types = [
            "version", "verack", "inv", "getdata", "tx", "headers", "ping", "pong",
        ];
        for i in 0..400u64 {
            let peer = (i % PEERS.len() as u64) as usize;
            let addr = PEERS[peer];
            let connection = (peer as i64 + 10 * (i as i64 % 2), 1_700_000_000 + (i % 2));
            let inbound = (i / 3) % 2 == 0;
            let payload: Vec<u8> = (0..(i * 37 % 300)).map(|b| (b ^ i) as u8).collect();
            let r = record(
                1_700_000_000_000_000 + i,
                types[i as usize % types.len()],
                &payload,
            );
            writer.append(addr, connection, inbound, &r).unwrap();
            expected
                .entry((addr.to_string(), connection, inbound))
                .or_default()
                .push(r);
        }
        expected
    }

    #[test]
    fn round_trip_both_layouts() {
        for layout in [CaptureLayout::Core, CaptureLayout::PerConnection] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("capture");
            let mut writer = CaptureWriter::new(&root, layout).unwrap();
            let expected = write_mix(&mut writer);
            writer.flush().unwrap();
            let stats = writer.stats();
            assert_eq!(stats.records_written, 400);
            assert_eq!(stats.records_dropped, 0);
            let files = read_capture_tree(&root).unwrap();
            let total_bytes: u64 = files
                .iter()
                .map(|f| fs::metadata(&f.path).unwrap().len())
                .sum();
            assert_eq!(stats.bytes_written, total_bytes);
            assert_eq!(stats.files, files.len() as u64);

            match layout {
                CaptureLayout::Core => {
                    // Both connections of an address share its two files.
                    assert_eq!(files.len(), PEERS.len() * 2, "{layout:?}");
                    for file in &files {
                        assert_eq!(file.connection, None);
                        let addr = file.peer_addr.clone().unwrap();
                        let inbound = file.direction == Direction::Recv;
                        let mut want: Vec<CaptureRecord> = expected
                            .iter()
                            .filter(|((a, _, d), _)| *a == addr && *d == inbound)
                            .flat_map(|(_, rs)| rs.clone())
                            .collect();
                        want.sort_by_key(|r| r.time_micros);
                        assert_eq!(file.records, want, "{}", file.path.display());
                        let dir_name = file.path.parent().unwrap().file_name().unwrap();
                        assert_eq!(dir_name.to_str().unwrap(), peer_dir_name(&addr));
                    }
                }
                CaptureLayout::PerConnection => {
                    assert_eq!(files.len(), expected.len(), "{layout:?}");
                    for file in &files {
                        let key = (
                            file.peer_addr.clone().unwrap(),
                            file.connection.unwrap(),
                            file.direction == Direction::Recv,
                        );
                        assert_eq!(file.records, expected[&key], "{}", file.path.display());
                        assert!(file.truncated.is_none());
                    }
                }
            }
            for file in &files {
                let name = file.path.file_name().unwrap().to_str().unwrap();
                assert_eq!(name, file.direction.file_name());
            }
            assert!(
                root.join("[__1]_8333").join("msgs_recv.dat").exists()
                    || layout == CaptureLayout::PerConnection
            );
            drop(writer);
        }
    }

    #[test]
    fn reads_a_bitcoind_style_tree_and_single_files() {
        let dir = tempfile::tempdir().unwrap();
        let capture = dir.path().join("message_capture");
        let peer = capture.join("[__1]_8333");
        fs::create_dir_all(&peer).unwrap();
        fs::write(
            peer.join("msgs_recv.dat"),
            unhex(&format!("{PING_HEX}{VERACK_HEX}")),
        )
        .unwrap();
        fs::write(peer.join("msgs_sent.dat"), unhex(VERACK_HEX)).unwrap();
        fs::write(peer.join("notes.txt"), b"ignored").unwrap();

        for path in [&capture, &peer] {
            let files = read_capture_tree(path).unwrap();
            assert_eq!(files.len(), 2);
            assert_eq!(files[0].direction, Direction::Recv);
            assert_eq!(files[0].peer_addr.as_deref(), Some("[::1]:8333"));
            assert_eq!(files[0].records, vec![ping(), verack()]);
            assert_eq!(files[1].direction, Direction::Sent);
            assert_eq!(files[1].records, vec![verack()]);
        }
        let single = read_capture_tree(&peer.join("msgs_sent.dat")).unwrap();
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].peer_addr.as_deref(), Some("[::1]:8333"));
        // Like message-capture-parser.py: "recv" anywhere in the stem.
        let renamed = dir.path().join("old_recv_copy.dat");
        fs::copy(peer.join("msgs_recv.dat"), &renamed).unwrap();
        let file = read_capture_file(&renamed).unwrap();
        assert_eq!((file.direction, file.peer_addr), (Direction::Recv, None));

        let err = read_capture_tree(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn two_writers_append_to_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let addr = "[::1]:8333";
        let mut first = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
        first.append(addr, (1, 100), true, &ping()).unwrap();
        first.append(addr, (1, 100), false, &verack()).unwrap();
        drop(first); // flushes
        let mut second = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
        second.append(addr, (2, 200), true, &verack()).unwrap();
        second.flush().unwrap();
        drop(second);

        let recv = dir.path().join("[__1]_8333").join("msgs_recv.dat");
        assert_eq!(
            fs::read(&recv).unwrap(),
            unhex(&format!("{PING_HEX}{VERACK_HEX}"))
        );
        let files = read_capture_tree(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].records, vec![ping(), verack()]);
        assert_eq!(files[1].records, vec![verack()]);
    }

    #[test]
    fn truncated_last_record_is_reported() {
        let records = [ping(), verack(), record(5, "tx", &[7; 100])];
        let full = encode(&records);
        let last = (32 + 24) as u64;

        // Cut inside the payload: exact count missing.
        let (got, err) = read_all(&full[..full.len() - 30]);
        assert_eq!(got, records[..2]);
        match err {
            Some(CaptureError::Truncated { record, .. }) => {
                assert_eq!(
                    record,
                    TruncatedRecord {
                        offset: last,
                        present: 94,
                        missing: 30
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // Cut inside the header: a lower bound.
        let (got, err) = read_all(&full[..last as usize + 10]);
        assert_eq!(got, records[..2]);
        let err = err.unwrap();
        assert!(
            matches!(
                err,
                CaptureError::Truncated {
                    record: TruncatedRecord {
                        present: 10,
                        missing: 14,
                        ..
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("at least 14 missing"), "{err}");

        // Through a file: records kept, truncation in the result, not an error.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("127.0.0.1_8333").join("msgs_sent.dat");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &full[..full.len() - 1]).unwrap();
        let file = read_capture_file(&path).unwrap();
        assert_eq!(file.records, records[..2]);
        assert_eq!(
            file.truncated,
            Some(TruncatedRecord {
                offset: last,
                present: 123,
                missing: 1
            })
        );
        assert_eq!(file.peer_addr.as_deref(), Some("127.0.0.1:8333"));

        // A writer appending after the damage leaves it where it is.
        let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
        writer
            .append("127.0.0.1:8333", (0, 0), false, &ping())
            .unwrap();
        drop(writer);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..full.len() - 1], &full[..full.len() - 1]);
        assert_eq!(bytes.len(), full.len() - 1 + 32);
    }

    #[test]
    fn garbage_names_the_offset() {
        let good = encode(&[ping(), verack()]);
        let second = 32usize;

        // Non-printable byte in the second record's message type.
        let mut bad = good.clone();
        bad[second + 8 + 2] = 0x01;
        let (got, err) = read_all(&bad);
        assert_eq!(got, vec![ping()]);
        let err = err.unwrap();
        assert!(
            matches!(err, CaptureError::Corrupt { offset: 32, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("byte offset 32") && msg.contains("0x01"),
            "{msg}"
        );

        // Something after the NUL that ends the type.
        let mut bad = good.clone();
        bad[second + 8 + 10] = b'x';
        let err = read_all(&bad).1.unwrap();
        assert!(
            matches!(err, CaptureError::Corrupt { offset: 32, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("follows the NUL"), "{err}");

        // An absurd length.
        let mut bad = good.clone();
        bad[second + 20..second + 24].copy_from_slice(&4_000_001u32.to_le_bytes());
        let err = read_all(&bad).1.unwrap();
        assert!(
            matches!(err, CaptureError::Corrupt { offset: 32, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("4000001"), "{err}");

        // Not a capture file at all, even shorter than one header.
        let err = read_all(b"hello world\n\x00\xff").1.unwrap();
        assert!(
            matches!(err, CaptureError::Corrupt { offset: 0, .. }),
            "{err:?}"
        );
        let err = read_all(&[0, 0, 0, 0, 0, 0, 0, 0, 0xfe]).1.unwrap();
        assert!(
            matches!(err, CaptureError::Corrupt { offset: 0, .. }),
            "{err:?}"
        );

        // Through the file functions, the path is named.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msgs_recv.dat");
        fs::write(&path, &bad).unwrap();
        let err = read_capture_tree(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("byte offset 32"),
            "{msg}"
        );
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        // xorshift: deterministic, no dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = encode(&[ping(), verack(), record(9, "inv", &[1; 37]), ping()]);
        for round in 0..5000 {
            let mut bytes = if round % 2 == 0 {
                let len = (next() % 200) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                let mut b = valid.clone();
                for _ in 0..(next() % 4) {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
                b
            };
            if round % 3 == 0 {
                bytes.truncate((next() as usize) % (bytes.len() + 1));
            }
            let mut reader = CaptureReader::new(&bytes[..]);
            let mut count = 0;
            for item in reader.by_ref() {
                count += 1;
                match item {
                    Ok(r) => assert!(r.msg_type.len() <= MESSAGE_TYPE_SIZE),
                    Err(CaptureError::Corrupt { offset, .. })
                    | Err(CaptureError::Truncated {
                        record: TruncatedRecord { offset, .. },
                        ..
                    }) => {
                        assert!(offset <= bytes.len() as u64)
                    }
                    Err(e) => panic!("{e}"),
                }
                assert!(count <= bytes.len() / RECORD_HEADER_SIZE + 1);
            }
            assert!(reader.offset() <= bytes.len() as u64);
            assert!(reader.next().is_none());
        }
    }

    #[test]
    fn refuses_bad_addresses_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
        for addr in ["", "..", ".", "../etc:1", "a/b:1", "x\0:1"] {
            let err = writer.append(addr, (0, 0), true, &ping()).unwrap_err();
            assert!(
                matches!(err, CaptureError::InvalidPeerAddr { .. }),
                "{addr:?}: {err:?}"
            );
        }
        let err = writer
            .append("1.2.3.4:1", (0, 0), true, &record(0, "waytoolongtype", &[]))
            .unwrap_err();
        assert!(matches!(err, CaptureError::InvalidRecord { .. }), "{err:?}");
        assert_eq!(writer.stats().records_dropped, 7);
        // Not sticky: the next good record goes through.
        writer.append("1.2.3.4:1", (0, 0), true, &ping()).unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.stats().records_written, 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn root_must_be_a_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        for root in [file.clone(), file.join("below")] {
            let err = CaptureWriter::new(&root, CaptureLayout::Core).unwrap_err();
            assert!(matches!(err, CaptureError::Root { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&root.display().to_string()),
                "{err}"
            );
        }
        // The probe file does not stay behind.
        let root = dir.path().join("new").join("capture");
        CaptureWriter::new(&root, CaptureLayout::Core).unwrap();
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
    }

    /// Modes of everything under `root`, by path relative to it.
    fn modes_below(root: &Path) -> Vec<(PathBuf, bool, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    todo.push(path.clone());
                }
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.push((rel, meta.is_dir(), meta.permissions().mode() & 0o7777));
            }
        }
        out
    }

    #[test]
    fn capture_files_and_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        for layout in [CaptureLayout::Core, CaptureLayout::PerConnection] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("new").join("capture");
            crate::private_fs::tests::with_umask(0o002, || {
                let mut writer = CaptureWriter::new(&root, layout).unwrap();
                writer
                    .append("192.0.2.1:8333", (3, 1_700_000_000), true, &ping())
                    .unwrap();
                writer
                    .append("192.0.2.1:8333", (3, 1_700_000_000), false, &verack())
                    .unwrap();
                writer.flush().unwrap();
            });
            for dir in [root.parent().unwrap(), &root] {
                let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
                assert_eq!(mode, 0o700, "{}", dir.display());
            }
            let modes = modes_below(&root);
            assert_eq!(modes.iter().filter(|(_, dir, _)| !dir).count(), 2);
            for (path, dir, mode) in modes {
                let want = if dir { 0o700 } else { 0o600 };
                assert_eq!(mode, want, "{layout:?} {}", path.display());
            }
        }
    }

    #[test]
    fn planted_symlinks_are_refused_never_written_through() {
        for layout in [CaptureLayout::Core, CaptureLayout::PerConnection] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("capture");
            let victim_dir = tmp.path().join("victim-dir");
            let victim = tmp.path().join("victim");
            fs::create_dir_all(root.join("192.0.2.2_8333")).unwrap();
            fs::create_dir(&victim_dir).unwrap();
            fs::write(&victim, b"precious").unwrap();
            // In place of a peer's directory, and of a capture file (in the
            // per-connection layout, of the connection's directory).
            let planted_dir = root.join("192.0.2.1_8333");
            std::os::unix::fs::symlink(&victim_dir, &planted_dir).unwrap();
            let planted_file = match layout {
                CaptureLayout::Core => root.join("192.0.2.2_8333").join(RECV_FILE_NAME),
                CaptureLayout::PerConnection => root.join("192.0.2.2_8333").join("peer3-50"),
            };
            std::os::unix::fs::symlink(&victim, &planted_file).unwrap();

            let mut writer = CaptureWriter::new(&root, layout).unwrap();
            for (addr, planted) in [
                ("192.0.2.1:8333", &planted_dir),
                ("192.0.2.2:8333", &planted_file),
            ] {
                let err = writer.append(addr, (3, 50), true, &ping()).unwrap_err();
                assert!(matches!(err, CaptureError::Open { .. }), "{err:?}");
                let msg = err.to_string();
                assert!(
                    msg.contains(&format!(
                        "refusing {}: it is a symbolic link",
                        planted.display()
                    )),
                    "{layout:?}: {msg}"
                );
            }
            writer.flush().unwrap();
            drop(writer);
            assert_eq!(fs::read(&victim).unwrap(), b"precious");
            assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 0);
            assert!(fs::symlink_metadata(&planted_dir).unwrap().is_symlink());
            assert!(fs::symlink_metadata(&planted_file).unwrap().is_symlink());
        }
    }

    #[test]
    fn write_probe_does_not_follow_a_planted_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("capture");
        fs::create_dir(&root).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // The name the probe used to have: predictable from peerlog's pid.
        let planted = root.join(format!(".peerlog-write-test-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        CaptureWriter::new(&root, CaptureLayout::Core).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&planted).unwrap().is_symlink());
        assert_eq!(
            fs::read_dir(&root).unwrap().count(),
            1,
            "the probe stays behind"
        );
    }

    #[test]
    fn open_files_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::PerConnection).unwrap();
        writer.max_open_files = 3;
        let mut expected: HashMap<(String, bool), Vec<CaptureRecord>> = HashMap::new();
        for i in 0..200u64 {
            let addr = format!("10.0.0.{}:8333", i % 7);
            let inbound = i % 3 == 0;
            let r = record(i, "inv", &i.to_le_bytes());
            writer.append(&addr, (1, 2), inbound, &r).unwrap();
            assert!(writer.stats().open_files <= 3);
            expected.entry((addr, inbound)).or_default().push(r);
        }
        drop(writer);
        let files = read_capture_tree(dir.path()).unwrap();
        assert_eq!(files.len(), expected.len());
        for file in files {
            let key = (file.peer_addr.unwrap(), file.direction == Direction::Recv);
            assert_eq!(file.records, expected[&key]);
            assert_eq!(file.connection, Some((1, 2)));
        }
    }

    #[test]
    fn close_connection_releases_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::PerConnection).unwrap();
        writer
            .append("1.1.1.1:8333", (3, 50), true, &ping())
            .unwrap();
        writer
            .append("1.1.1.1:8333", (3, 50), false, &verack())
            .unwrap();
        writer
            .append("1.1.1.1:8333", (4, 60), true, &ping())
            .unwrap();
        assert_eq!(writer.stats().open_files, 3);
        writer.close_connection("1.1.1.1:8333", (3, 50)).unwrap();
        writer.close_connection("9.9.9.9:1", (0, 0)).unwrap();
        let stats = writer.stats();
        assert_eq!((stats.open_files, stats.records_written), (1, 2));
        let conn = dir.path().join("1.1.1.1_8333").join("peer3-50");
        assert_eq!(
            fs::read(conn.join("msgs_recv.dat")).unwrap(),
            unhex(PING_HEX)
        );
        assert_eq!(
            fs::read(conn.join("msgs_sent.dat")).unwrap(),
            unhex(VERACK_HEX)
        );
    }

    /// A capture file that accepts `budget` more bytes, then fails like a
    /// full disk, after writing what fits (as a real short write does).
    struct FailingFile {
        file: File,
        budget: Arc<AtomicU64>,
        fail_set_len: Arc<AtomicBool>,
    }

    impl DatFile for FailingFile {
        fn append_bytes(&mut self, buf: &[u8]) -> io::Result<()> {
            let budget = self.budget.load(Ordering::SeqCst);
            let fits = buf.len().min(budget as usize);
            self.file.write_all(&buf[..fits])?;
            self.budget.store(budget - fits as u64, Ordering::SeqCst);
            if fits < buf.len() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(())
        }

        fn cut_to(&self, len: u64) -> io::Result<()> {
            if self.fail_set_len.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.file.set_len(len)
        }
    }

    fn failing_writer(root: &Path, budget: u64, fail_set_len: bool) -> CaptureWriter {
        let budget = Arc::new(AtomicU64::new(budget));
        let fail_set_len = Arc::new(AtomicBool::new(fail_set_len));
        let opener = move |dir: &Dir, name: &str| -> io::Result<(Box<dyn DatFile>, u64)> {
            let file = dir.append_file(name)?;
            let len = file.metadata()?.len();
            Ok((
                Box::new(FailingFile {
                    file,
                    budget: budget.clone(),
                    fail_set_len: fail_set_len.clone(),
                }),
                len,
            ))
        };
        CaptureWriter::with_opener(root, CaptureLayout::Core, Box::new(opener)).unwrap()
    }

    #[test]
    fn failed_write_leaves_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        // Room for 3 pings (32 bytes each) and a half.
        let mut writer = failing_writer(dir.path(), 3 * 32 + 16, false);
        let addr = "192.0.2.1:8333";
        let path = dir.path().join("192.0.2.1_8333").join("msgs_recv.dat");
        for _ in 0..2 {
            writer.append(addr, (0, 0), true, &ping()).unwrap();
        }
        writer.flush().unwrap();
        for _ in 0..3 {
            writer.append(addr, (0, 0), true, &ping()).unwrap();
        }
        let err = writer.flush().unwrap_err();
        assert!(matches!(err, CaptureError::WriteFailed { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "disk full while writing {}: capture stopped; 2 records already written are intact, 3 records dropped",
                path.display()
            )
        );
        // The 1.5 records that reached the file were cut off again.
        assert_eq!(
            fs::read(&path).unwrap(),
            unhex(&format!("{PING_HEX}{PING_HEX}"))
        );
        let file = read_capture_file(&path).unwrap();
        assert_eq!((file.records.len(), file.truncated), (2, None));

        // Stopped: further appends and flushes get the same error kind.
        let err = writer.append(addr, (0, 0), false, &verack()).unwrap_err();
        assert!(matches!(err, CaptureError::WriteFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("4 records dropped"), "{err}");
        assert!(matches!(
            writer.flush(),
            Err(CaptureError::WriteFailed { .. })
        ));
        let stats = writer.stats();
        assert_eq!((stats.records_written, stats.records_dropped), (2, 4));
        assert_eq!(stats.bytes_written, 64);
        drop(writer);
        assert_eq!(fs::read(&path).unwrap().len(), 64);
    }

    #[test]
    fn failed_truncation_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = failing_writer(dir.path(), 10, true);
        writer
            .append("192.0.2.1:8333", (0, 0), false, &ping())
            .unwrap();
        let err = writer.flush().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("disk full while writing")
                && msg.contains("0 records already written are intact")
                && msg.contains("may end in a partial record"),
            "{msg}"
        );
    }

    /// Unmounts a tmpfs when the test ends, however it ends.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn real_full_disk_on_tmpfs_or_skip() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("small");
        fs::create_dir(&mount).unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mount)
            .output();
        match output {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!(
                    "skipping real_full_disk_on_tmpfs_or_skip: mount failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return;
            }
            Err(e) => {
                eprintln!("skipping real_full_disk_on_tmpfs_or_skip: cannot run mount: {e}");
                return;
            }
        }
        let _unmount = Unmount(mount.clone());

        let mut writer = CaptureWriter::new(&mount, CaptureLayout::PerConnection).unwrap();
        let mut error = None;
        for i in 0..1000u64 {
            let r = record(i, "block", &vec![i as u8; 3000]);
            let addr = format!("10.0.0.{}:8333", i % 3);
            let appended = writer.append(&addr, (i as i64 % 3, 0), i % 2 == 0, &r);
            // Several records per write: a failure lands mid-buffer.
            let result = if i % 4 == 3 {
                appended.and_then(|()| writer.flush())
            } else {
                appended
            };
            if let Err(e) = result {
                error = Some(e);
                break;
            }
        }
        let error = error.expect("a 64 KiB tmpfs fills up");
        let msg = error.to_string();
        assert!(
            matches!(error, CaptureError::WriteFailed { .. }),
            "{error:?}"
        );
        assert!(msg.starts_with("disk full while writing "), "{msg}");
        assert!(msg.contains("records already written are intact"), "{msg}");
        assert!(writer
            .append("10.0.0.1:8333", (1, 0), true, &ping())
            .is_err());
        // Stopping cleanly: write what the other files still buffer, then count.
        assert!(writer.flush().is_err());
        let stats = writer.stats();
        assert!(
            stats.records_written > 0 && stats.records_dropped > 0,
            "{stats:?}"
        );
        drop(writer);

        let files = read_capture_tree(&mount).unwrap();
        let on_disk: usize = files.iter().map(|f| f.records.len()).sum();
        assert!(files.iter().all(|f| f.truncated.is_none()), "{files:?}");
        assert_eq!(on_disk as u64, stats.records_written);
    }

    #[test]
    fn writer_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<CaptureWriter>();
    }
}
