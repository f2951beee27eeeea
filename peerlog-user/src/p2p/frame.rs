//! v1 framing: the 24-byte header (magic, message type, length, checksum)
//! and frames read and written over any [`Read`]/[`Write`].

use std::fmt;
use std::io::{self, Read, Write};

use bitcoin::consensus::encode::{self, deserialize};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::Magic;
use peerlog_common::MAX_PROTOCOL_MESSAGE_LENGTH;

/// Size of the message type field of a v1 header, and of a capture
/// record (Bitcoin Core's `CMessageHeader::MESSAGE_TYPE_SIZE`).
pub const MESSAGE_TYPE_SIZE: usize = 12;

/// Size of a v1 message header: magic (4), message type (12), payload
/// length (4), checksum (4).
pub const HEADER_LEN: usize = 24;

// The largest payload [`read_frame`]/[`P2pClient::recv_raw`] accept is
// Bitcoin Core's `MAX_PROTOCOL_MESSAGE_LENGTH`: Core disconnects a peer
// that announces a longer payload, so a longer one on our side means
// either a broken peer or a desynchronized stream.

/// The v1 checksum of a payload: the first four bytes of its double SHA-256.
pub fn checksum(payload: &[u8]) -> [u8; 4] {
    let hash = sha256d::Hash::hash(payload);
    let bytes = hash.as_byte_array();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// Everything that can go wrong while talking to a peer.
///
/// Whatever the error, messages that had already been received stay in the
/// [`P2pClient`]'s inbox and transcript: an error never loses traffic.
#[derive(Debug)]
#[non_exhaustive]
pub enum P2pError {
    /// The socket failed (including a connection reset, or the connection
    /// closing in the middle of a frame).
    Io(io::Error),
    /// The peer closed the connection cleanly, between two frames.
    Disconnected,
    /// Nothing suitable arrived before the deadline.
    Timeout {
        /// What we were waiting for, for the error message.
        waiting_for: String,
    },
    /// A header did not start with our network's magic. The stream is
    /// desynchronized from then on: drop the connection.
    BadMagic {
        /// The magic of the network we are on.
        expected: [u8; 4],
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// The header's message type field is not printable ASCII followed by NUL
    /// padding (Bitcoin Core's `CMessageHeader::IsMessageTypeValid`). The payload
    /// was consumed, so the stream stays in sync.
    BadMsgType {
        /// The raw 12-byte field.
        raw: [u8; MESSAGE_TYPE_SIZE],
    },
    /// A header announced a payload longer than
    /// [`MAX_PROTOCOL_MESSAGE_LENGTH`]. The payload was not read, so the
    /// stream is desynchronized: drop the connection.
    Oversized {
        /// The message type from the header.
        msg_type: String,
        /// The announced payload length.
        length: u32,
    },
    /// The payload does not match the header's checksum. The payload was
    /// consumed, so the stream stays in sync.
    BadChecksum {
        /// The message type from the header.
        msg_type: String,
        /// The checksum in the header.
        expected: [u8; 4],
        /// The checksum of the payload actually received.
        found: [u8; 4],
    },
    /// The payload could not be decoded by the `bitcoin` crate as its message
    /// type says.
    Decode {
        /// The message type of the payload.
        msg_type: String,
        /// The `bitcoin` crate's error.
        error: encode::Error,
    },
}

impl P2pError {
    /// Whether this error means the connection is gone (closed cleanly, reset
    /// or cut mid-frame): what a test expects after the node disconnects us.
    pub fn is_disconnect(&self) -> bool {
        match self {
            P2pError::Disconnected => true,
            P2pError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::NotConnected
            ),
            _ => false,
        }
    }

    /// Whether this error is a deadline expiring.
    pub fn is_timeout(&self) -> bool {
        matches!(self, P2pError::Timeout { .. })
    }
}

impl fmt::Display for P2pError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P2pError::Io(e) => write!(f, "p2p socket error: {e}"),
            P2pError::Disconnected => f.write_str("peer closed the connection"),
            P2pError::Timeout { waiting_for } => write!(f, "timed out waiting for {waiting_for}"),
            P2pError::BadMagic { expected, found } => write!(
                f,
                "bad network magic: expected {}, found {}",
                expected.to_lower_hex_string(),
                found.to_lower_hex_string()
            ),
            P2pError::BadMsgType { raw } => {
                write!(
                    f,
                    "malformed message type field {}",
                    raw.to_lower_hex_string()
                )
            }
            P2pError::Oversized { msg_type, length } => write!(
                f,
                "{msg_type} payload of {length} bytes exceeds {MAX_PROTOCOL_MESSAGE_LENGTH}"
            ),
            P2pError::BadChecksum {
                msg_type,
                expected,
                found,
            } => write!(
                f,
                "{msg_type} checksum mismatch: header says {}, payload hashes to {}",
                expected.to_lower_hex_string(),
                found.to_lower_hex_string()
            ),
            P2pError::Decode { msg_type, error } => {
                write!(f, "cannot decode {msg_type} payload: {error}")
            }
        }
    }
}

impl std::error::Error for P2pError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            P2pError::Io(e) => Some(e),
            P2pError::Decode { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for P2pError {
    fn from(e: io::Error) -> Self {
        P2pError::Io(e)
    }
}

/// One v1 message as it travelled on the wire: its type and its exact
/// payload bytes (header stripped, checksum verified).
#[derive(Clone, PartialEq, Eq)]
pub struct RawMessage {
    msg_type: String,
    payload: Vec<u8>,
    // Kept from the header so that `decode` need not hash the payload again.
    checksum: [u8; 4],
}

impl RawMessage {
    /// A message of type `msg_type` carrying `payload`, e.g. to compare with
    /// what was received, or to build a frame for a fake peer.
    pub fn new(msg_type: impl Into<String>, payload: Vec<u8>) -> RawMessage {
        let checksum = checksum(&payload);
        RawMessage {
            msg_type: msg_type.into(),
            payload,
            checksum,
        }
    }

    /// The message type ("command"), NUL padding removed.
    pub fn msg_type(&self) -> &str {
        &self.msg_type
    }

    /// The payload bytes, exactly as on the wire.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload, consuming the message.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    /// The payload checksum (first four bytes of its sha256d).
    pub fn checksum(&self) -> [u8; 4] {
        self.checksum
    }

    /// Decodes the payload with the `bitcoin` crate according to the message
    /// type. Types the crate does not know come back as
    /// [`NetworkMessage::Unknown`]; known types with trailing or missing bytes
    /// are an error.
    pub fn decode(&self) -> Result<NetworkMessage, P2pError> {
        let decode_error = |error| P2pError::Decode {
            msg_type: self.msg_type.clone(),
            error,
        };
        // The crate only decodes payloads inside a whole frame, so rebuild
        // one. The magic is not checked by the crate; any value does.
        let header = encode_header_with_checksum(
            Magic::REGTEST,
            &self.msg_type,
            self.payload.len(),
            self.checksum,
        )
        .map_err(|e| decode_error(encode::Error::Io(e.into())))?;
        let mut frame = Vec::with_capacity(HEADER_LEN + self.payload.len());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&self.payload);
        let raw: RawNetworkMessage = deserialize(&frame).map_err(decode_error)?;
        Ok(raw.into_payload())
    }
}

impl fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads can be megabytes; show the start only.
        const SHOWN: usize = 64;
        let shown = &self.payload[..self.payload.len().min(SHOWN)];
        let ellipsis = if self.payload.len() > SHOWN {
            "…"
        } else {
            ""
        };
        f.debug_struct("RawMessage")
            .field("msg_type", &self.msg_type)
            .field("len", &self.payload.len())
            .field(
                "payload",
                &format_args!("{}{}", shown.to_lower_hex_string(), ellipsis),
            )
            .finish()
    }
}

fn encode_header_with_checksum(
    magic: Magic,
    msg_type: &str,
    payload_len: usize,
    checksum: [u8; 4],
) -> io::Result<[u8; HEADER_LEN]> {
    if msg_type.len() > MESSAGE_TYPE_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message type {msg_type:?} is longer than {MESSAGE_TYPE_SIZE} bytes"),
        ));
    }
    let length = u32::try_from(payload_len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("payload of {payload_len} bytes does not fit the u32 length field"),
        )
    })?;
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&magic.to_bytes());
    header[4..4 + msg_type.len()].copy_from_slice(msg_type.as_bytes());
    header[16..20].copy_from_slice(&length.to_le_bytes());
    header[20..24].copy_from_slice(&checksum);
    Ok(header)
}

/// The 24-byte v1 header for `payload`: magic, `msg_type` NUL-padded to 12
/// bytes, payload length as u32 little-endian, checksum.
///
/// Any `msg_type` of at most 12 bytes is accepted, even one a node would
/// refuse (non-printable, empty), because tests send exactly such frames.
pub fn encode_header(magic: Magic, msg_type: &str, payload: &[u8]) -> io::Result<[u8; HEADER_LEN]> {
    encode_header_with_checksum(magic, msg_type, payload.len(), checksum(payload))
}

/// A whole v1 frame (header followed by payload) in one buffer.
///
/// The payload length is deliberately not limited here: tests send oversized
/// frames to see the node refuse them.
pub fn encode_frame(magic: Magic, msg_type: &str, payload: &[u8]) -> io::Result<Vec<u8>> {
    let header = encode_header(magic, msg_type, payload)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Writes one v1 frame to `w` in a single `write_all`, so that a socket sees
/// the message as one unit rather than a header and a payload write.
pub fn write_frame<W: Write + ?Sized>(
    w: &mut W,
    magic: Magic,
    msg_type: &str,
    payload: &[u8],
) -> io::Result<()> {
    w.write_all(&encode_frame(magic, msg_type, payload)?)?;
    w.flush()
}

/// Reads exactly one v1 frame from `r` (never more bytes than the frame).
///
/// Checks the magic, refuses payloads longer than
/// [`MAX_PROTOCOL_MESSAGE_LENGTH`] before reading them, and verifies the
/// checksum. If `r` times out midway the partial frame is lost; use a
/// [`FrameReader`] to survive timeouts.
pub fn read_frame<R: Read + ?Sized>(r: &mut R, magic: Magic) -> Result<RawMessage, P2pError> {
    FrameReader::new(magic).read_frame(r)
}

/// Incremental v1 frame reader that keeps a partial frame across read
/// errors.
///
/// A read timeout on a socket can strike in the middle of a frame; throwing
/// the bytes already read away would desynchronize the stream for good. This
/// reader keeps them, so the next call resumes where the last one stopped. It
/// reads only the bytes of the current frame, so nothing following it is
/// swallowed.
#[derive(Debug)]
pub struct FrameReader {
    magic: Magic,
    header: [u8; HEADER_LEN],
    // Bytes of `header` filled so far.
    header_filled: usize,
    // Allocated to the announced length once the header is complete.
    payload: Vec<u8>,
    payload_filled: usize,
}

impl FrameReader {
    /// A reader for frames of the network identified by `magic`.
    pub fn new(magic: Magic) -> FrameReader {
        FrameReader {
            magic,
            header: [0; HEADER_LEN],
            header_filled: 0,
            payload: Vec::new(),
            payload_filled: 0,
        }
    }

    /// Whether part of a frame has been read but not the whole of it.
    pub fn has_partial_frame(&self) -> bool {
        self.header_filled > 0
    }

    fn reset(&mut self) {
        self.header_filled = 0;
        self.payload = Vec::new();
        self.payload_filled = 0;
    }

    /// Reads from `r` until one whole frame is in, then returns it.
    ///
    /// An I/O error (a timeout included) is returned as is and keeps the
    /// partial frame for the next call. End of stream between frames is
    /// [`P2pError::Disconnected`]; inside a frame it is an
    /// [`io::ErrorKind::UnexpectedEof`] error.
    pub fn read_frame<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<RawMessage, P2pError> {
        while self.header_filled < HEADER_LEN {
            let n = read_some(r, &mut self.header[self.header_filled..])?;
            if n == 0 {
                let partial = self.header_filled > 0;
                self.reset();
                return Err(if partial {
                    P2pError::Io(io::ErrorKind::UnexpectedEof.into())
                } else {
                    P2pError::Disconnected
                });
            }
            self.header_filled += n;
            if self.header_filled == HEADER_LEN {
                self.check_header()?;
            }
        }
        while self.payload_filled < self.payload.len() {
            let n = read_some(r, &mut self.payload[self.payload_filled..])?;
            if n == 0 {
                self.reset();
                return Err(P2pError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.payload_filled += n;
        }
        let frame = self.finish_frame();
        self.reset();
        frame
    }

    // Validates what can be validated before reading the payload, and sizes
    // the payload buffer.
    fn check_header(&mut self) -> Result<(), P2pError> {
        let found: [u8; 4] = self.header[0..4].try_into().expect("4 bytes");
        if found != self.magic.to_bytes() {
            self.reset();
            return Err(P2pError::BadMagic {
                expected: self.magic.to_bytes(),
                found,
            });
        }
        let length = u32::from_le_bytes(self.header[16..20].try_into().expect("4 bytes"));
        if u64::from(length) > MAX_PROTOCOL_MESSAGE_LENGTH {
            let msg_type = msg_type_lossy(&self.header[4..16]);
            self.reset();
            return Err(P2pError::Oversized { msg_type, length });
        }
        self.payload = vec![0; length as usize];
        self.payload_filled = 0;
        Ok(())
    }

    fn finish_frame(&mut self) -> Result<RawMessage, P2pError> {
        let raw: [u8; MESSAGE_TYPE_SIZE] = self.header[4..16].try_into().expect("12 bytes");
        let expected: [u8; 4] = self.header[20..24].try_into().expect("4 bytes");
        // Checked after the payload is consumed so the stream stays in sync.
        let Some(msg_type) = parse_msg_type(&raw) else {
            return Err(P2pError::BadMsgType { raw });
        };
        let payload = std::mem::take(&mut self.payload);
        let found = checksum(&payload);
        if found != expected {
            return Err(P2pError::BadChecksum {
                msg_type,
                expected,
                found,
            });
        }
        Ok(RawMessage {
            msg_type,
            payload,
            checksum: found,
        })
    }
}

fn read_some<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The message type in a header field, if it is well formed the way Bitcoin
/// Core requires: printable ASCII, then only NUL bytes.
fn parse_msg_type(raw: &[u8; MESSAGE_TYPE_SIZE]) -> Option<String> {
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(MESSAGE_TYPE_SIZE);
    let (name, padding) = raw.split_at(end);
    if !name.iter().all(|b| (b' '..=b'~').contains(b)) || padding.iter().any(|&b| b != 0) {
        return None;
    }
    Some(String::from_utf8(name.to_vec()).expect("printable ASCII"))
}

fn msg_type_lossy(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}
