//! What goes wrong writing or reading capture files: [`CaptureError`], and
//! [`TruncatedRecord`] for a file that ends inside a record.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::RECORD_HEADER_SIZE;

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
pub(super) fn describe_write_error(error: &io::Error) -> String {
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
