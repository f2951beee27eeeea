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
//!
//! One job per file: this one is the record codec ([`CaptureRecord`] and
//! the field sizes); `layout.rs` is where files go (the directory layouts,
//! peer and connection directory names, [`Direction`] and its file);
//! `write.rs` is [`CaptureWriter`]; `rotate.rs` is [`RotatingWriter`],
//! which starts a new generation (a complete capture in a subdirectory
//! named by its UTC start time) every interval; `read.rs` is [`CaptureReader`],
//! [`read_capture_file`] and [`read_capture_tree`]; `error.rs` is
//! [`CaptureError`].

mod error;
mod layout;
mod read;
mod rotate;
#[cfg(test)]
mod tests;
mod write;

pub use error::{CaptureError, TruncatedRecord};
pub use layout::{file_name, peer_addr_from_dir_name, peer_dir_name, CaptureLayout};
pub use read::{read_capture_file, read_capture_tree, CaptureFile, CaptureReader};
pub use rotate::{RotatingWriter, RotationStats};
pub use write::{CaptureStats, CaptureWriter};

/// Size of the message type field: the wire's, as Bitcoin Core writes it.
pub use crate::p2p::frame::MESSAGE_TYPE_SIZE;

/// Size of the time field.
const TIME_SIZE: usize = 8;
/// Size of the payload length field.
const LENGTH_SIZE: usize = 4;
/// Bytes of a record before its payload.
const RECORD_HEADER_SIZE: usize = TIME_SIZE + MESSAGE_TYPE_SIZE + LENGTH_SIZE;

/// Bitcoin Core's `MAX_PROTOCOL_MESSAGE_LENGTH`: no message bitcoind
/// processes or sends has a larger payload, so a larger length in a capture
/// file means the file is not a capture file or is corrupt.
const MAX_PROTOCOL_MESSAGE_LENGTH: usize = peerlog_common::MAX_PROTOCOL_MESSAGE_LENGTH as usize;

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
