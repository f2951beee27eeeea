//! The readers: [`CaptureReader`] over one file or stream, record by
//! record; [`read_capture_file`] and [`read_capture_tree`] read whole files
//! and directory trees, with what their paths say about them.

use peerlog_common::Direction;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::layout::{
    parse_connection_dir_name, peer_addr_from_dir_name, RECV_FILE_NAME, SENT_FILE_NAME,
};
use super::{
    check_msg_type_field, CaptureError, CaptureRecord, TruncatedRecord, LENGTH_SIZE,
    MAX_PROTOCOL_MESSAGE_LENGTH, MESSAGE_TYPE_SIZE, RECORD_HEADER_SIZE, TIME_SIZE,
};

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
    ///
    /// [`CaptureLayout::PerConnection`]: super::CaptureLayout::PerConnection
    pub connection: Option<(i64, u64)>,
    /// From the file name: [`Direction::Inbound`] when it contains `recv`, as
    /// message-capture-parser.py decides, else [`Direction::Outbound`].
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
        Some(stem) if stem.contains("recv") => Direction::Inbound,
        _ => Direction::Outbound,
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
/// Files come sorted by path, so the generations of a rotated capture
/// (`<root>/<UTC start>/...`) come in time order. Files and directories that
/// vanish during the walk (old generations deleted by the size cap of a
/// running trace) are skipped; a generation being written reads up to its
/// last whole record. The first corrupt or unreadable file ends the
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
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A generation deleted by a rotating writer's cap while we walk.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir != path => continue,
            Err(e) => return Err(read_error(&dir, e)),
        };
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
    let mut files = Vec::with_capacity(found.len());
    for file in &found {
        match read_capture_file(file) {
            Ok(file) => files.push(file),
            // Deleted since the walk found it: an old generation of a
            // rotated capture that the writer's size cap removed meanwhile.
            Err(CaptureError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(files)
}
