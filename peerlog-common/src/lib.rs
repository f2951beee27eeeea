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
pub const ABI_VERSION: u16 = 10;

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
    /// A [`CpuSliceEvent`]: the message handler spent a slice of CPU on a peer.
    CpuSlice = 5,
    /// A [`MempoolEvent`]: `mempool:added`, `removed`, `replaced`, `rejected`.
    Mempool = 6,
    /// A [`BlockConnectedEvent`]: `validation:block_connected`.
    BlockConnected = 7,
    /// A [`CpuSample`]: a thread of the target was on a CPU, with its user
    /// stack. The kernel writes them inside a [`RecordKind::CpuSampleBatch`].
    CpuSample = 8,
    /// A [`PeerNameEvent`]: a peer's address and connection type, written
    /// before its first [`MessageEvent`].
    PeerName = 9,
    /// A [`CpuSampleBatchHeader`] and the [`CpuSample`] records one CPU
    /// gathered.
    CpuSampleBatch = 10,
}

impl RecordKind {
    /// The kind for a raw `kind` field, if it is one this ABI knows.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Message,
            2 => Self::PayloadChunk,
            3 => Self::Connection,
            4 => Self::Misbehaving,
            5 => Self::CpuSlice,
            6 => Self::Mempool,
            7 => Self::BlockConnected,
            8 => Self::CpuSample,
            9 => Self::PeerName,
            10 => Self::CpuSampleBatch,
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

impl Direction {
    /// `"recv"` or `"sent"`: how Bitcoin Core's capture files
    /// (`msgs_recv.dat`, `msgs_sent.dat`) and its message-capture-parser.py
    /// name the direction.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Inbound => "recv",
            Self::Outbound => "sent",
        }
    }
}

impl core::fmt::Display for Direction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The peer address string did not fit [`ADDR_LEN`] and was cut.
pub const FLAG_ADDR_TRUNCATED: u8 = 1 << 0;
/// The payload is not copied: the peer or message type is filtered out, or
/// capture is switched off. Only the header is delivered, for statistics.
pub const FLAG_PAYLOAD_SKIPPED: u8 = 1 << 1;
/// The probe reported more than [`MAX_PROTOCOL_MESSAGE_LENGTH`] bytes; only
/// that many are copied.
pub const FLAG_PAYLOAD_OVERSIZED: u8 = 1 << 2;
/// The whole payload (`payload_size` bytes) follows the [`MessageEvent`] in
/// the same record; no [`PayloadChunk`] follows.
pub const FLAG_PAYLOAD_INLINE: u8 = 1 << 3;
/// The payload was wanted but could not be read from the target's memory
/// (counted as [`LossCause::PayloadReadFailed`]); nothing follows.
pub const FLAG_PAYLOAD_UNREADABLE: u8 = 1 << 4;

/// Largest payload carried inline in its [`MessageEvent`] record
/// ([`FLAG_PAYLOAD_INLINE`]): one ring reservation instead of two for the
/// bulk of P2P traffic (`ping`, `inv`, `getdata`, most `tx`s); larger ones
/// travel as [`PayloadChunk`]s.
pub const INLINE_CLASSES: [usize; 2] = [256, 4096];

/// `net:inbound_message` / `net:outbound_message`.
///
/// The peer's address and connection type are not repeated on every
/// message: a [`PeerNameEvent`] carries them before the peer's first message
/// (and again if the kernel forgot the peer).
///
/// The payload, unless [`FLAG_PAYLOAD_SKIPPED`] or
/// [`FLAG_PAYLOAD_UNREADABLE`] is set, either follows inline
/// ([`FLAG_PAYLOAD_INLINE`]; the record is then `size_of::<MessageEvent>()`
/// plus the smallest of [`INLINE_CLASSES`] that holds it), or arrives in
/// `chunks` [`PayloadChunk`] records with the same `message_id`. A chunk that
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
    /// The peer's `CNode*` in bitcoind, or 0 while unknown (see
    /// [`ConfigKey::CNodeIdOffset`]); userspace reads the node's own
    /// per-peer counters there.
    pub cnode: u64,
    /// Number of [`PayloadChunk`] records that follow.
    pub chunks: u32,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Padding; zero.
    pub _pad: [u8; 2],
    /// The message type (command), NUL-terminated.
    pub msg_type: [u8; MSG_TYPE_LEN],
}

/// A peer's strings, written once before the peer's first [`MessageEvent`]
/// since peerlog attached: reading two strings from bitcoind's memory on
/// every message would cost more than the rest of the message's record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerNameEvent {
    /// Common header; `kind` is [`RecordKind::PeerName`].
    pub header: RecordHeader,
    /// `CNode::GetId()`.
    pub peer_id: i64,
    /// [`FLAG_ADDR_TRUNCATED`] or 0.
    pub flags: u8,
    /// Padding; zero.
    pub _pad: [u8; 7],
    /// `CNode::m_addr_name`, NUL-terminated.
    pub addr: [u8; ADDR_LEN],
    /// `CNode::ConnectionTypeAsString()`, NUL-terminated.
    pub conn_type: [u8; CONN_TYPE_LEN],
}

/// A slice of a message payload: this header, then `len` payload bytes.
/// Its `header.ktime_ns` is when the slice was copied; the last chunk's is
/// the moment the tracepoint handed the message over.
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
    /// `closed`: the node's final `CNode::nRecvBytes` (`getpeerinfo`'s
    /// `bytesrecv`), or [`BYTES_UNKNOWN`].
    pub bytes_recv: u64,
    /// `closed`: the node's final `CNode::nSendBytes` (`bytessent`), or
    /// [`BYTES_UNKNOWN`].
    pub bytes_sent: u64,
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

/// [`ConnectionEvent::bytes_recv`]/`bytes_sent` when the counters could not
/// be read (no `CNode` layout, or the `CNode` was not found).
pub const BYTES_UNKNOWN: u64 = u64::MAX;

/// What opened a [`CpuSliceEvent`].
///
/// peerlog puts no probe on bitcoind's functions by default: a probe on
/// `ProcessMessages`/`SendMessages` would fire for every peer on every
/// message-handler loop iteration, and a return probe would make bitcoind
/// call `std::terminate` when an exception unwinds through it. The message
/// tracepoints, which fire once per message, cut the handler thread's time
/// into slices instead, each charged to the peer of the event that opened it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SliceKind {
    /// Opened by `net:inbound_message`: the handler took one of the peer's
    /// messages and processes it (`ProcessMessage` and what follows, its
    /// answers included, up to the next message of another peer).
    Processing = 0,
    /// Opened by `net:outbound_message` to a peer other than the one being
    /// processed: the handler works for that peer (`SendMessages`: pings,
    /// announcements, requests; queued `getdata` answers).
    Sending = 1,
}

impl SliceKind {
    /// The kind for a raw byte, if it is one this ABI knows.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Processing,
            1 => Self::Sending,
            _ => return None,
        })
    }

    /// The kind's name in figures and flamegraph frames.
    pub fn name(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Sending => "sending",
        }
    }
}

/// A slice of a message-handling thread's time, charged to one peer: from a
/// message tracepoint to the next one on the same thread.
///
/// A slice stays open while the thread sleeps: a lock wait inside the
/// processing of a message must not cut it short. The work the handler does
/// after waking up from its idle wait, before the next message event (its
/// loop over peers without work), is so charged to the peer of the open
/// slice: bitcoind offers no cheaper boundary.
///
/// `header.ktime_ns` is the end of the slice. On-CPU time comes from the
/// scheduler's `se.sum_exec_runtime`: the time the thread actually ran,
/// without sleeps and preemption.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSliceEvent {
    /// Common header; `kind` is [`RecordKind::CpuSlice`].
    pub header: RecordHeader,
    /// `bpf_ktime_get_ns()` when the slice opened.
    pub start_ktime_ns: u64,
    /// Nanoseconds the thread was on a CPU during the slice; [`ONCPU_UNKNOWN`]
    /// when the scheduler's counter could not be read.
    pub oncpu_ns: u64,
    /// The peer the slice is charged to.
    pub peer_id: i64,
    /// Nanoseconds the thread slept (blocked: lock waits, the handler's
    /// idle wait) during the slice.
    pub slept_ns: u64,
    /// A [`SliceKind`] as `u8`.
    pub slice: u8,
    /// Padding; zero.
    pub _pad: [u8; 7],
    /// `Processing`: the message type being processed, NUL-padded.
    pub msg_type: [u8; MSG_TYPE_LEN],
}

/// On-CPU bookkeeping of one thread of the target, kept by `sched_switch`.
///
/// The scheduler's own `se.sum_exec_runtime` is exact at every switch and,
/// unlike a wall clock, leaves out time the hypervisor stole from the vCPU;
/// only the slice running now is measured with `bpf_ktime_get_ns()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadCpu {
    /// The thread's `se.sum_exec_runtime` at its last switch.
    pub total_ns: u64,
    /// `bpf_ktime_get_ns()` at the last switch-in.
    pub since_ns: u64,
    /// 1 while the thread is on a CPU.
    pub running: u64,
}

/// [`CpuSliceEvent::oncpu_ns`] when on-CPU time could not be measured.
pub const ONCPU_UNKNOWN: u64 = u64::MAX;

/// What a message-handling thread of bitcoind is doing for which peer, kept
/// by the message tracepoints (created by the thread's first
/// `net:inbound_message`), read by every program that attributes work to a
/// peer (mempool and block events, CPU samples).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadContext {
    /// The peer the open slice is charged to.
    pub peer_id: i64,
    /// The peer whose message the thread took last (its last
    /// `net:inbound_message`): mempool and block events are attributed to it.
    pub processing_peer: i64,
    /// `bpf_ktime_get_ns()` when the open slice started.
    pub start_ktime_ns: u64,
    /// The thread's on-CPU nanoseconds then ([`ONCPU_UNKNOWN`] if unmeasured).
    pub start_oncpu_ns: u64,
    /// Nanoseconds the thread slept since the slice started, up to its last
    /// wake-up.
    pub slept_ns: u64,
    /// `bpf_ktime_get_ns()` when the thread went to sleep, 0 while awake.
    pub sleep_start_ns: u64,
    /// The open slice's [`SliceKind`] as `u8`.
    pub slice: u8,
    /// Padding; zero.
    pub _pad: [u8; 7],
    /// The message type of the open `Processing` slice.
    pub msg_type: [u8; MSG_TYPE_LEN],
}

/// Which mempool tracepoint produced a [`MempoolEvent`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MempoolEventKind {
    /// `mempool:added` (txid, vsize, fee).
    Added = 0,
    /// `mempool:removed` (txid, reason, vsize, fee, entry time).
    Removed = 1,
    /// `mempool:replaced` (replaced txid, vsize, fee, entry time; replacement
    /// txid, vsize, fee, is-txid).
    Replaced = 2,
    /// `mempool:rejected` (txid, reason).
    Rejected = 3,
}

impl MempoolEventKind {
    /// The kind for a raw byte, if it is one this ABI knows.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Added,
            1 => Self::Removed,
            2 => Self::Replaced,
            3 => Self::Rejected,
            _ => return None,
        })
    }
}

/// Bytes reserved for a mempool reason (Bitcoin Core: at most 118 for
/// `rejected`, 9 for `removed`).
pub const MEMPOOL_REASON_LEN: usize = 120;

/// The four mempool tracepoints, with the peer the thread was processing.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MempoolEvent {
    /// Common header; `kind` is [`RecordKind::Mempool`].
    pub header: RecordHeader,
    /// The peer whose message the thread was processing (`ProcessMessages`
    /// context), or -1 outside of one (RPC, block connection, expiry).
    pub peer_id: i64,
    /// The transaction (for `replaced`: the replaced one), internal byte order.
    pub txid: [u8; 32],
    /// `replaced`: the replacement's txid, or package hash if not `other_is_txid`.
    pub other_txid: [u8; 32],
    /// Virtual size in vbytes.
    pub vsize: i64,
    /// Fee in satoshis.
    pub fee: i64,
    /// `replaced`: the replacement's vsize.
    pub other_vsize: i64,
    /// `replaced`: the replacement's fee.
    pub other_fee: i64,
    /// `removed`/`replaced`: when the transaction entered the mempool (unix seconds).
    pub entry_time: u64,
    /// A [`MempoolEventKind`] as `u8`.
    pub event: u8,
    /// `replaced`: 1 when `other_txid` is a txid (not a package hash).
    pub other_is_txid: u8,
    /// Padding; zero.
    pub _pad: [u8; 6],
    /// `removed`/`rejected`: the reason, NUL-terminated.
    pub reason: [u8; MEMPOOL_REASON_LEN],
}

/// `validation:block_connected`, with the peer the thread was processing.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockConnectedEvent {
    /// Common header; `kind` is [`RecordKind::BlockConnected`].
    pub header: RecordHeader,
    /// The peer whose message (`block`, `cmpctblock`, `blocktxn`) was being
    /// processed, or -1.
    pub peer_id: i64,
    /// Block hash, internal byte order.
    pub hash: [u8; 32],
    /// Height.
    pub height: i64,
    /// Transactions in the block.
    pub tx_count: u64,
    /// Inputs spent.
    pub inputs: i64,
    /// Signature operations.
    pub sigops: u64,
    /// Time bitcoind took to connect it, in nanoseconds.
    pub duration_ns: u64,
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
    /// Non-zero: capture copies only message types marked [`MSG_TYPE_CAPTURE`]
    /// in the message type map.
    MsgTypeFilterActive = 2,
    /// Byte offset of `pid` (the thread id) in the kernel's `task_struct`,
    /// from its BTF; 0 disables on-CPU accounting.
    TaskPidOffset = 3,
    /// Byte offset of `tgid` (the process id) in `task_struct`.
    TaskTgidOffset = 4,
    /// Non-zero: copy the payloads of the message types marked
    /// [`MSG_TYPE_STATS`] whatever the capture settings (statistics parse them).
    StatsPayloads = 5,
    /// Entries of the unwind module map in use (see [`UnwindModule`]); 0:
    /// no unwind tables, stacks are walked with frame pointers only.
    UnwindModules = 6,
    /// Byte offset of `se.sum_exec_runtime` in `task_struct`; 0 disables
    /// on-CPU accounting.
    TaskSumExecOffset = 7,
    /// Byte offset of `CNode::id` in bitcoind's `CNode`, from its DWARF; 0
    /// when unknown, which leaves every `cnode` field 0. With
    /// [`ConfigKey::CNodeAddrNameOffset`] it lets the message tracepoints
    /// find the peer's `CNode*` among the registers: the one register `r`
    /// with `*(r + id offset)` equal to the peer id argument and the
    /// `std::string` data pointer at `r + m_addr_name offset` equal to the
    /// address argument.
    CNodeIdOffset = 8,
    /// Byte offset of `CNode::m_addr_name` (a `std::string`, data pointer first).
    CNodeAddrNameOffset = 9,
    /// Byte offset of `CNode::nRecvBytes` (`uint64_t`), read at `closed_connection`.
    CNodeRecvBytesOffset = 10,
    /// Byte offset of `CNode::nSendBytes` (`uint64_t`), read at `closed_connection`.
    CNodeSendBytesOffset = 11,
    /// Non-zero once userspace has put a [`PEER_POLICY_SKIP_PAYLOAD`] entry
    /// into the peer policy map: until then no message pays for a lookup
    /// there.
    PeerPolicyActive = 12,
    /// Bytes of unread records in the ring buffer above which a record
    /// wakes peerlog (an eighth of the ring); 0: every record wakes it.
    RingWakeBytes = 13,
}

/// Bit of a message type filter map value: capture selects this type.
pub const MSG_TYPE_CAPTURE: u8 = 1;
/// Bit of a message type filter map value: statistics parse this type.
pub const MSG_TYPE_STATS: u8 = 2;
/// Entries in the config array map.
pub const CONFIG_ENTRIES: u32 = 14;

/// Entries in the message type filter map.
pub const MAX_MSG_TYPE_FILTER: u32 = 64;

/// Entries in the peer policy map and slots of the kernel's table of known
/// peers (a power of two: a peer's slot is its id modulo this); more than
/// Bitcoin Core's default limit of 125 connections by a wide margin.
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
    /// The ring buffer was full for a CPU slice, mempool or block event.
    RingFullAccounting = 6,
    /// The ring buffer was full for a [`CpuSampleBatch`] (each of its
    /// samples counts), or a CPU's scratch or batch slot was missing.
    RingFullSample = 7,
    /// A map was full: a thread's context or a peer's `CNode*` could not be
    /// kept, so that thread's slices or that peer's counters are missing.
    MapFull = 8,
}
/// Entries in the loss counter array.
pub const LOSS_CAUSES: u32 = 9;

impl LossCause {
    /// Every cause, in index order.
    pub const ALL: [LossCause; LOSS_CAUSES as usize] = [
        Self::RingFullMessage,
        Self::RingFullChunk,
        Self::RingFullOther,
        Self::ArgReadFailed,
        Self::PayloadReadFailed,
        Self::MissingSpec,
        Self::RingFullAccounting,
        Self::RingFullSample,
        Self::MapFull,
    ];

    /// Whether a loss of this cause leaves a message without all of its
    /// payload: userspace then reports that message as incomplete, which
    /// is how such a loss is counted in totals (once, not twice).
    pub fn makes_incomplete_message(self) -> bool {
        matches!(self, Self::RingFullChunk | Self::PayloadReadFailed)
    }

    /// Short name used in summaries, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::RingFullMessage => "ring_full_message",
            Self::RingFullChunk => "ring_full_chunk",
            Self::RingFullOther => "ring_full_other",
            Self::ArgReadFailed => "arg_read_failed",
            Self::PayloadReadFailed => "payload_read_failed",
            Self::MissingSpec => "missing_spec",
            Self::RingFullAccounting => "ring_full_accounting",
            Self::RingFullSample => "ring_full_sample",
            Self::MapFull => "map_full",
        }
    }
}

/// Most frames one [`CpuSample`] carries; a deeper stack is cut there and
/// marked incomplete. bitcoind's deepest stacks (validation inside
/// `ProcessMessage`) have about 60 frames, inlined frames not counted.
pub const MAX_SAMPLE_FRAMES: usize = 128;

/// [`CpuSample::flags`]: the thread was running kernel code (a system call, a
/// page fault) when sampled; the registers are those it entered the kernel
/// with, so the stack shows the user code that made the call.
pub const SAMPLE_FLAG_IN_KERNEL: u8 = 1 << 0;
/// [`CpuSample::flags`]: the walk reached the outermost frame, where the call
/// frame information says the stack ends (`_start`, `clone3`): the frames
/// are the whole stack.
pub const SAMPLE_FLAG_COMPLETE: u8 = 1 << 1;

/// Why the kernel's stack walk of a [`CpuSample`] ended
/// ([`CpuSample::stop`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkStop {
    /// The outermost frame: the return address rule is "undefined".
    ThreadEntry = 0,
    /// The address is in no module with unwind rows, and frame pointers did
    /// not lead on (rbp zero, below the stack pointer, or unreadable).
    NoUnwindInfo = 1,
    /// The rule for the frame is one the kernel does not evaluate: a DWARF
    /// expression other than the PLT's, or a register other than rsp/rbp.
    UnsupportedRule = 2,
    /// The CFA needs rbp, whose value was lost in an inner frame.
    RbpLost = 3,
    /// A stack word could not be read.
    ReadFailed = 4,
    /// [`MAX_SAMPLE_FRAMES`] frames and the walk was not over.
    TooDeep = 5,
    /// The stack went the wrong way (a return address of zero, or a caller
    /// frame below its callee): corrupt or misread.
    BadFrame = 6,
}

impl WalkStop {
    /// The reason for a raw byte, if it is one this ABI knows.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::ThreadEntry,
            1 => Self::NoUnwindInfo,
            2 => Self::UnsupportedRule,
            3 => Self::RbpLost,
            4 => Self::ReadFailed,
            5 => Self::TooDeep,
            6 => Self::BadFrame,
            _ => return None,
        })
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::ThreadEntry => "thread_entry",
            Self::NoUnwindInfo => "no_unwind_info",
            Self::UnsupportedRule => "unsupported_rule",
            Self::RbpLost => "rbp_lost",
            Self::ReadFailed => "read_failed",
            Self::TooDeep => "too_deep",
            Self::BadFrame => "bad_frame",
        }
    }
}

/// [`CpuSample::slice`] when the thread has no open slice: it is not a
/// message-handling thread.
pub const SAMPLE_NO_CONTEXT: u8 = u8::MAX;

/// One CPU sample of a thread of the target: this header, then
/// `frame_count` code addresses (`u64`), innermost first.
///
/// Taken by a perf event (software `cpu-clock`, one per CPU, all processes)
/// filtered to the target's threads, so every thread is sampled, those
/// started after peerlog attached included, in proportion to its CPU time.
/// The kernel walks the stack itself with the unwind rows userspace
/// compiled from the target's `.eh_frame` ([`UnwindRow`]): the first
/// address is the instruction pointer, each further one a return address
/// minus one (inside the call instruction, so that a call at the very end
/// of a function is attributed to that function).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// Common header; `kind` is [`RecordKind::CpuSample`].
    pub header: RecordHeader,
    /// The peer the thread's open slice is charged to, or -1 outside a
    /// message-handling thread.
    pub peer_id: i64,
    /// Code addresses that follow this header.
    pub frame_count: u32,
    /// The open slice's [`SliceKind`] as `u8`, or [`SAMPLE_NO_CONTEXT`].
    pub slice: u8,
    /// `SAMPLE_FLAG_*` bits.
    pub flags: u8,
    /// Why the walk ended, a [`WalkStop`] as `u8`.
    pub stop: u8,
    /// Padding; zero.
    pub _pad: u8,
}

/// Bytes of [`CpuSample`] records a [`CpuSampleBatch`] holds.
pub const SAMPLE_BATCH_BYTES: usize = 2048 - core::mem::size_of::<CpuSampleBatchHeader>();
/// Samples after which a CPU writes its batch to the ring buffer.
pub const SAMPLE_BATCH_MAX_SAMPLES: u32 = 8;
/// Age of a batch's first sample after which the next sample on that CPU
/// writes the batch out, so that samples do not wait long on a CPU where
/// the target seldom runs (the rest are collected when sampling stops).
pub const SAMPLE_BATCH_MAX_AGE_NS: u64 = 1_000_000_000;

/// The first bytes of a [`RecordKind::CpuSampleBatch`] record: `len` bytes
/// of [`CpuSample`] records follow, each with its frames, `count` of them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSampleBatchHeader {
    /// Common header; `kind` is [`RecordKind::CpuSampleBatch`], `tid` is 0
    /// and `ktime_ns` the first sample's.
    pub header: RecordHeader,
    /// Samples in the batch.
    pub count: u32,
    /// Bytes of samples in the batch.
    pub len: u32,
}

/// The samples one CPU took and has not yet written to the ring buffer: an
/// entry of the sampler's batch map, at the CPU's number. A ring-buffer
/// record costs a sample about 1 µs at 99 Hz (the buffer's lock, its two
/// positions and its data lie on four pages, all cold by then), so a CPU
/// writes its samples in batches of up to [`SAMPLE_BATCH_MAX_SAMPLES`].
/// The record is the first `size_of::<CpuSampleBatchHeader>() + len` bytes.
/// Userspace reads the batches left in the map once sampling has stopped.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSampleBatch {
    /// What the batch holds.
    pub head: CpuSampleBatchHeader,
    /// The samples, 8-byte words (a [`CpuSample`] and each frame are whole
    /// words).
    pub words: [u64; SAMPLE_BATCH_BYTES / 8],
}

/// How the canonical frame address (CFA, the caller's stack pointer) of a
/// frame is found: [`UnwindRow::cfa`].
pub mod cfa {
    /// rsp + `cfa_offset`.
    pub const RSP: u8 = 0;
    /// rbp + `cfa_offset`.
    pub const RBP: u8 = 1;
    /// A PLT entry: rsp + 8, plus 8 once the entry has pushed its
    /// relocation index, at and after byte `cfa_offset` of the 16-byte entry
    /// (the DWARF expression every x86-64 linker writes for `.plt`).
    pub const PLT: u8 = 2;
    /// The outermost frame: the return address is undefined.
    pub const END: u8 = 3;
    /// No call frame information covers the address (a gap between
    /// functions): frame pointers are tried.
    pub const NONE: u8 = 4;
    /// A rule the kernel does not evaluate; the walk stops.
    pub const UNSUPPORTED: u8 = 5;
}

/// [`UnwindRow::rbp_offset`]: the caller's rbp is unchanged in this frame.
pub const RBP_SAME: i16 = 0;
/// [`UnwindRow::rbp_offset`]: the caller's rbp cannot be recovered here.
pub const RBP_LOST: i16 = i16::MIN;

/// One row of a module's unwind table: from `pc` (an address in the file, as
/// in `readelf`) up to the next row's `pc`, how to find the caller's
/// registers. Compiled by userspace from `.eh_frame`; on x86-64 the return
/// address is always at CFA - 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// First file address the row covers.
    pub pc: u32,
    /// Offset added to the CFA register (see [`cfa`]).
    pub cfa_offset: i32,
    /// A [`cfa`] constant.
    pub cfa: u8,
    /// Padding; zero.
    pub _pad: u8,
    /// Where the caller's rbp is saved, relative to the CFA in bytes;
    /// [`RBP_SAME`] or [`RBP_LOST`].
    pub rbp_offset: i16,
}

/// Rows per entry of the unwind row map: few, big map entries, so that
/// userspace fills the map in a few thousand updates.
pub const UNWIND_ROWS_PER_BLOCK: usize = 256;

/// An entry of the unwind row map: [`UNWIND_ROWS_PER_BLOCK`] consecutive rows
/// of the table of all modules.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindRowBlock {
    /// The rows; row `i` of the whole table is `rows[i % 256]` of block
    /// `i / 256`.
    pub rows: [UnwindRow; UNWIND_ROWS_PER_BLOCK],
}

/// A module (executable, shared library, vDSO) with unwind rows, as mapped
/// into the target. Entries of the module map are sorted by `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UnwindModule {
    /// Lowest address of its mappings.
    pub start: u64,
    /// End of its mappings (exclusive).
    pub end: u64,
    /// Load bias: address in the process = address in the file + bias.
    pub bias: u64,
    /// Index of its first row in the row table; its rows are sorted by pc.
    pub first_row: u32,
    /// Number of its rows.
    pub rows: u32,
    /// File address of its first bucket: its first row's pc rounded down to
    /// [`UNWIND_BUCKET_SHIFT`].
    pub bucket_base: u32,
    /// Index of its first entry in the bucket map.
    pub first_bucket: u32,
    /// Number of its buckets.
    pub buckets: u32,
    /// Padding; zero.
    pub _pad: u32,
}

/// The rows of a module are indexed by buckets of 2^8 = 256 bytes of code
/// ([`UnwindBucket`]), so that a lookup reads one bucket instead of
/// searching all the rows. A binary search over all rows of bitcoind
/// (1 MiB) misses the cache at nearly every step, and a sample is too rare
/// to keep them cached.
pub const UNWIND_BUCKET_SHIFT: u32 = 8;

/// Rows an [`UnwindBucket`] holds itself. With 256-byte buckets, 14 rows
/// (the one carried in from below, and 13 that start in the bucket) hold
/// those of more than four in five buckets of bitcoind that any row starts
/// in, and of eleven in twelve of all its buckets (counted from `readelf`'s
/// rows of master f0524cda39).
pub const UNWIND_BUCKET_ROWS: usize = 14;

/// One bucket of 2^[`UNWIND_BUCKET_SHIFT`] code bytes of a module: where its
/// rows are in the row table and, where they fit, the rows themselves,
/// packed ([`PackedRow`]) into the bucket's own 64-byte cache line (the
/// kernel's map starts its entries on a page). A lookup the CPU's row cache
/// misses then costs the kernel one cache line, where a search through the
/// row table costs a chain of three or four, each likely a cache and TLB
/// miss.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindBucket {
    /// Index in the row table of the row that covers the bucket's first
    /// byte (or of the module's first row, for the bucket it starts in).
    pub first_row: u32,
    /// Rows of the table from `first_row` up to the one that covers the
    /// bucket's last byte: the range a search of the table looks in.
    pub table_rows: u16,
    /// How many of `rows` are used: the rows from `first_row` on that start
    /// before the next bucket; 0 when they do not fit, and the table is
    /// searched.
    pub packed: u16,
    /// The rows, by offset, as [`PackedRow::pack`] writes them.
    pub rows: [u32; UNWIND_BUCKET_ROWS],
}

/// A row of an [`UnwindBucket`] in 32 bits: bits 0..8 the offset in the
/// bucket where it starts to apply (0 for the row carried in from below),
/// 8..11 the [`cfa`] rule, 11..16 the rbp rule (0 [`RBP_SAME`], 31
/// [`RBP_LOST`], else saved at CFA - 8 × that), 16..32 the CFA offset
/// (divided by 8 for the rsp and rbp rules; as is for [`cfa::PLT`]). A row
/// that cannot be written so keeps its bucket to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedRow {
    /// Where in the bucket the row starts to apply.
    pub offset: u32,
    /// The row's rules (its `pc` is not packed: 0 here).
    pub row: UnwindRow,
}

/// [`PackedRow`]'s rbp rule for [`RBP_LOST`].
const PACKED_RBP_LOST: u32 = 31;

impl PackedRow {
    /// The 32 bits of `row`, starting `offset` bytes into its bucket, or
    /// `None` if a field does not fit.
    pub fn pack(offset: u32, row: &UnwindRow) -> Option<u32> {
        if offset >= 1 << UNWIND_BUCKET_SHIFT || row.cfa > 7 {
            return None;
        }
        let rbp = match row.rbp_offset {
            RBP_SAME => 0,
            RBP_LOST => PACKED_RBP_LOST,
            o if o < 0 && o % 8 == 0 && -o / 8 < PACKED_RBP_LOST as i16 => (-o / 8) as u32,
            _ => return None,
        };
        let cfa_offset = match row.cfa {
            cfa::RSP | cfa::RBP if row.cfa_offset >= 0 && row.cfa_offset % 8 == 0 => {
                row.cfa_offset / 8
            }
            cfa::RSP | cfa::RBP => return None,
            _ => row.cfa_offset,
        };
        let cfa_offset = u16::try_from(cfa_offset).ok()?;
        Some(offset | u32::from(row.cfa) << 8 | rbp << 11 | u32::from(cfa_offset) << 16)
    }

    /// Where in its bucket the row [`PackedRow::pack`] wrote into `bits`
    /// starts: all a bucket scan needs of the rows it passes over.
    #[inline(always)]
    pub fn offset_of(bits: u32) -> u32 {
        bits & ((1 << UNWIND_BUCKET_SHIFT) - 1)
    }

    /// The row [`PackedRow::pack`] wrote into `bits`.
    #[inline(always)]
    pub fn unpack(bits: u32) -> PackedRow {
        let rule = ((bits >> 8) & 7) as u8;
        let rbp = (bits >> 11) & 31;
        let raw_offset = (bits >> 16) as i32;
        PackedRow {
            offset: PackedRow::offset_of(bits),
            row: UnwindRow {
                pc: 0,
                cfa_offset: if rule == cfa::RSP || rule == cfa::RBP {
                    raw_offset * 8
                } else {
                    raw_offset
                },
                cfa: rule,
                _pad: 0,
                rbp_offset: match rbp {
                    0 => RBP_SAME,
                    PACKED_RBP_LOST => RBP_LOST,
                    r => -8 * r as i16,
                },
            },
        }
    }
}

/// Entries of the unwind module map: bitcoind maps about ten modules.
pub const MAX_UNWIND_MODULES: u32 = 64;

/// What the CPU sampler spent on the target's samples on one CPU: an entry
/// of the sampler's cost map, which userspace sums over the CPUs. The time
/// runs from just after the program knew the thread was the target's to
/// just before it returned, so it leaves out only the entry every run pays,
/// the target's or not; the kernel's BPF run-time statistics give that part
/// (see `docs/benchmarks.md`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerCost {
    /// Nanoseconds (`bpf_ktime_get_ns`) spent on the target's samples.
    pub ns: u64,
    /// Samples of the target taken, sent or lost.
    pub samples: u64,
}

impl core::ops::AddAssign for SamplerCost {
    /// Adds another CPU's, or another traced process's, cost.
    fn add_assign(&mut self, other: Self) {
        self.ns += other.ns;
        self.samples += other.samples;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte
    // arrays, and are valid for every bit pattern.
    unsafe impl aya::Pod for super::UsdtSpec {}
    unsafe impl aya::Pod for super::UsdtArgSpec {}
    unsafe impl aya::Pod for super::UnwindRowBlock {}
    unsafe impl aya::Pod for super::UnwindBucket {}
    unsafe impl aya::Pod for super::UnwindModule {}
    unsafe impl aya::Pod for super::SamplerCost {}
    unsafe impl aya::Pod for super::CpuSampleBatch {}
}
