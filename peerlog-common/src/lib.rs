//! The event ABI between peerlog's eBPF programs and its userspace daemon.
//!
//! Everything that crosses the kernel boundary is defined here, once, as
//! `#[repr(C)]` plain old data: the records the eBPF programs write into the
//! ring buffer, the per-probe argument specifications userspace writes into a
//! map for the eBPF side to interpret, and the indices of the loss counters.
//!
//! Every ring-buffer record starts with a [`RecordHeader`] whose `abi` field
//! carries [`ABI_VERSION`]; userspace refuses records of another version
//! rather than misreading them. Bump the version on any layout change.
#![no_std]

/// Version of the layouts in this crate. Bump it on any change.
pub const ABI_VERSION: u16 = 1;

/// Largest P2P payload Bitcoin Core accepts (`MAX_PROTOCOL_MESSAGE_LENGTH`).
pub const MAX_PROTOCOL_MESSAGE_LENGTH: u64 = 4_000_000;

/// Most payload bytes one [`PayloadChunk`] record carries.
///
/// The verifier needs a constant upper bound for every copy, so payloads
/// travel as a sequence of chunks of at most this many bytes.
pub const CHUNK_DATA_LEN: usize = 16 * 1024;

/// Data capacities of the chunk records, smallest first.
///
/// A ring-buffer reservation must have a constant size, and most P2P
/// messages are tiny (a `ping` is 8 bytes), so a chunk is reserved in the
/// smallest class that fits instead of always taking [`CHUNK_DATA_LEN`].
/// Writing straight into the reservation (rather than through a per-CPU
/// scratch buffer) keeps the copy correct on preemptible kernels, where a
/// uprobe program can be preempted by another run of itself on the same CPU.
pub const CHUNK_CLASSES: [usize; 3] = [256, 4096, CHUNK_DATA_LEN];

/// Chunks needed for the largest payload; the eBPF loop bound.
pub const MAX_CHUNKS: u32 =
    ((MAX_PROTOCOL_MESSAGE_LENGTH as usize).div_ceil(CHUNK_DATA_LEN)) as u32;

/// Bytes reserved for a peer's address string (`CNode::m_addr_name`).
///
/// Usually at most 68 (an onion v3 address and port), but `-addnode`/`-connect`
/// names can be longer; a longer one is cut and flagged [`FLAG_ADDR_TRUNCATED`].
pub const ADDR_LEN: usize = 128;
/// Bytes reserved for a connection type string (`inbound`, `outbound-full-relay`, ...).
pub const CONN_TYPE_LEN: usize = 24;
/// Bytes reserved for a message type; on the wire it is at most 12 bytes.
pub const MSG_TYPE_LEN: usize = 16;
/// Bytes reserved for a misbehaviour reason (Bitcoin Core caps it at 128 chars).
pub const REASON_LEN: usize = 136;

/// Most USDT arguments a probe can have that peerlog interprets.
pub const MAX_USDT_ARGS: usize = 12;
/// Entries in the USDT argument specification map (one per attached probe site).
pub const MAX_USDT_SPECS: u32 = 256;

/// What a ring-buffer record is; the `kind` field of [`RecordHeader`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A [`MessageEvent`]: `net:inbound_message` or `net:outbound_message`.
    Message = 1,
    /// A [`PayloadChunk`] of a message announced by a [`MessageEvent`].
    PayloadChunk = 2,
    /// A [`ConnectionEvent`]: opened, evicted or closed connection.
    Connection = 3,
    /// A [`MisbehavingEvent`]: `net:misbehaving_connection`.
    Misbehaving = 4,
}

impl RecordKind {
    /// The kind for a raw `kind` field, if it is one this ABI knows.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Message,
            2 => Self::PayloadChunk,
            3 => Self::Connection,
            4 => Self::Misbehaving,
            _ => return None,
        })
    }
}

/// First field of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    /// [`ABI_VERSION`] of the eBPF object that wrote the record.
    pub abi: u16,
    /// A [`RecordKind`] as `u16`.
    pub kind: u16,
    /// Thread id (kernel pid) of the target thread that hit the probe.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the probe fired.
    pub ktime_ns: u64,
}

/// Direction of a P2P message, as seen from the traced node.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// `net:inbound_message`: the peer sent it to us.
    Inbound = 0,
    /// `net:outbound_message`: we sent it to the peer.
    Outbound = 1,
}

/// The peer address string did not fit [`ADDR_LEN`] and was cut.
pub const FLAG_ADDR_TRUNCATED: u8 = 1 << 0;
/// The payload is not copied: the peer or message type is filtered out, or
/// capture is switched off. Only the header is delivered, for statistics.
pub const FLAG_PAYLOAD_SKIPPED: u8 = 1 << 1;
/// The probe reported more than [`MAX_PROTOCOL_MESSAGE_LENGTH`] bytes; only
/// that many are copied.
pub const FLAG_PAYLOAD_OVERSIZED: u8 = 1 << 2;

/// `net:inbound_message` / `net:outbound_message`.
///
/// Followed in the ring buffer by `chunks` [`PayloadChunk`] records with the
/// same `message_id`, unless [`FLAG_PAYLOAD_SKIPPED`] is set. A chunk that
/// could not be delivered is counted in the loss counters, and userspace
/// reports the message as incomplete instead of writing a short record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MessageEvent {
    /// Common header; `kind` is [`RecordKind::Message`].
    pub header: RecordHeader,
    /// Ties chunks to their message: unique for the thread `header.tid`
    /// (it is the message's `ktime_ns`, and one thread writes one message
    /// at a time).
    pub message_id: u64,
    /// `CNode::GetId()`.
    pub peer_id: i64,
    /// Payload size as the probe reported it.
    pub payload_size: u64,
    /// Number of [`PayloadChunk`] records that follow.
    pub chunks: u32,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Padding; zero.
    pub _pad: [u8; 2],
    /// `CNode::m_addr_name`, NUL-terminated.
    pub addr: [u8; ADDR_LEN],
    /// `CNode::ConnectionTypeAsString()`, NUL-terminated.
    pub conn_type: [u8; CONN_TYPE_LEN],
    /// The message type (command), NUL-terminated.
    pub msg_type: [u8; MSG_TYPE_LEN],
}

/// A slice of a message payload: this header, then `len` payload bytes.
///
/// The record is `size_of::<PayloadChunk>() + class` bytes long, `class`
/// being the smallest of [`CHUNK_CLASSES`] that holds `len`; bytes past
/// `len` are undefined.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PayloadChunk {
    /// Common header; `kind` is [`RecordKind::PayloadChunk`].
    pub header: RecordHeader,
    /// The [`MessageEvent::message_id`] this chunk belongs to.
    pub message_id: u64,
    /// Offset in the payload of the first byte after this header.
    pub offset: u32,
    /// Payload bytes after this header.
    pub len: u32,
}

/// Which connection tracepoint produced a [`ConnectionEvent`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEventKind {
    /// `net:inbound_connection`; `value` is the inbound count including this one.
    Inbound = 0,
    /// `net:outbound_connection`; `value` is the outbound count including this one.
    Outbound = 1,
    /// `net:evicted_inbound_connection`; `value` is the connect time (unix seconds).
    Evicted = 2,
    /// `net:closed_connection`; `value` is the connect time (unix seconds).
    Closed = 3,
}

impl ConnectionEventKind {
    /// The kind for a raw byte, if it is one this ABI knows.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Inbound,
            1 => Self::Outbound,
            2 => Self::Evicted,
            3 => Self::Closed,
            _ => return None,
        })
    }
}

/// The four `net:*_connection` tracepoints.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectionEvent {
    /// Common header; `kind` is [`RecordKind::Connection`].
    pub header: RecordHeader,
    /// `CNode::GetId()`.
    pub peer_id: i64,
    /// Connection count or connect time; see [`ConnectionEventKind`].
    pub value: u64,
    /// `Network` enum of the peer address (1 IPv4, 2 IPv6, 3 Onion, 4 I2P, 5 CJDNS).
    pub network: u32,
    /// A [`ConnectionEventKind`] as `u8`.
    pub event: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Padding; zero.
    pub _pad: [u8; 2],
    /// Peer address, NUL-terminated.
    pub addr: [u8; ADDR_LEN],
    /// Connection type, NUL-terminated.
    pub conn_type: [u8; CONN_TYPE_LEN],
}

/// `net:misbehaving_connection`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MisbehavingEvent {
    /// Common header; `kind` is [`RecordKind::Misbehaving`].
    pub header: RecordHeader,
    /// `CNode::GetId()`.
    pub peer_id: i64,
    /// The reason Bitcoin Core gives, NUL-terminated.
    pub reason: [u8; REASON_LEN],
}

/// How one USDT argument is located, as `sys/sdt.h` describes it
/// (`N@%reg`, `N@off(%reg)`, `N@$imm`). The `kind` of a [`UsdtArgSpec`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsdtArgKind {
    /// `N@$imm`: the value is `val_off`.
    Constant = 0,
    /// `N@%reg`: the value is in the register at `reg_off` of `pt_regs`.
    Register = 1,
    /// `N@off(%reg)`: the value is in user memory at `reg + val_off`.
    RegisterDeref = 2,
}

/// One USDT argument, resolved to what the eBPF side needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsdtArgSpec {
    /// Constant value, or memory offset from the register.
    pub val_off: i64,
    /// Byte offset of the register in the kernel's `struct pt_regs`.
    pub reg_off: u16,
    /// A [`UsdtArgKind`] as `u8`.
    pub kind: u8,
    /// Bytes the argument occupies (1, 2, 4 or 8).
    pub size: u8,
    /// 1 when the argument is signed (negative size in the spec).
    pub signed: u8,
    /// Padding; zero.
    pub _pad: [u8; 3],
}

/// All arguments of one attached probe site, stored in the spec map at the
/// index passed to the program as its BPF cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsdtSpec {
    /// Arguments in probe order; the first `arg_count` are valid.
    pub args: [UsdtArgSpec; MAX_USDT_ARGS],
    /// Number of valid entries in `args`.
    pub arg_count: u32,
    /// Padding; zero.
    pub _pad: u32,
}

/// Per-peer capture policy, the value of the peer policy map.
///
/// A peer absent from the map has its payloads copied: userspace has not seen
/// it yet (it was connected before peerlog attached) and decides on the first
/// message. That costs one copy per such peer, never a lost message.
pub const PEER_POLICY_SKIP_PAYLOAD: u8 = 1;
/// Per-peer capture policy: copy this peer's payloads.
pub const PEER_POLICY_CAPTURE: u8 = 0;

/// Index of the global switches in the config array map.
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum ConfigKey {
    /// Process id (tgid) of the traced process; events of other processes are dropped.
    TargetTgid = 0,
    /// Non-zero: copy payloads at all (capture is on).
    CapturePayloads = 1,
    /// Non-zero: only message types present in the message type map are copied.
    MsgTypeFilterActive = 2,
}
/// Entries in the config array map.
pub const CONFIG_ENTRIES: u32 = 4;

/// Entries in the message type filter map.
pub const MAX_MSG_TYPE_FILTER: u32 = 64;

/// Entries in the peer policy map; more than Bitcoin Core's default limit
/// of 125 connections by a wide margin.
pub const MAX_PEERS: u32 = 4096;

/// Why an event or part of one was lost; the index into the per-CPU loss
/// counter array. Userspace reports every non-zero counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCause {
    /// The ring buffer was full when a message header was written.
    RingFullMessage = 0,
    /// The ring buffer was full when a payload chunk was written.
    RingFullChunk = 1,
    /// The ring buffer was full for a connection or misbehaviour event.
    RingFullOther = 2,
    /// A USDT argument could not be read (bad spec or unreadable memory).
    ArgReadFailed = 3,
    /// Payload bytes could not be read from the target's memory.
    PayloadReadFailed = 4,
    /// The probe's BPF cookie had no argument specification.
    MissingSpec = 5,
}
/// Entries in the loss counter array.
pub const LOSS_CAUSES: u32 = 6;

impl LossCause {
    /// Every cause, in index order.
    pub const ALL: [LossCause; LOSS_CAUSES as usize] = [
        Self::RingFullMessage,
        Self::RingFullChunk,
        Self::RingFullOther,
        Self::ArgReadFailed,
        Self::PayloadReadFailed,
        Self::MissingSpec,
    ];

    /// Short name used in summaries, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::RingFullMessage => "ring_full_message",
            Self::RingFullChunk => "ring_full_chunk",
            Self::RingFullOther => "ring_full_other",
            Self::ArgReadFailed => "arg_read_failed",
            Self::PayloadReadFailed => "payload_read_failed",
            Self::MissingSpec => "missing_spec",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte
    // arrays, and are valid for every bit pattern.
    unsafe impl aya::Pod for super::UsdtSpec {}
    unsafe impl aya::Pod for super::UsdtArgSpec {}
}
