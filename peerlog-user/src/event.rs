//! Decoding ring-buffer records into events, and reassembling message
//! payloads from their chunks.
//!
//! The eBPF side writes a message as one [`MessageEvent`] followed by its
//! [`PayloadChunk`]s, all from the same thread in one program run, so chunks
//! of one thread never interleave with another message of that thread. A
//! message whose chunks stop short (the ring buffer was full) is surfaced as
//! [`Event::IncompleteMessage`], never as a shorter payload.

use std::{
    collections::{HashMap, VecDeque},
    mem::size_of,
    sync::Arc,
};

use bitcoin::hashes::Hash;

use peerlog_common::{
    BlockConnectedEvent, ConnectionEvent, ConnectionEventKind, CpuSliceEvent, Direction,
    MempoolEvent, MempoolEventKind, MessageEvent, MisbehavingEvent, PayloadChunk, PeerNameEvent,
    RecordHeader, RecordKind, SliceKind, WalkStop, ABI_VERSION, BYTES_UNKNOWN, FLAG_ADDR_TRUNCATED,
    FLAG_PAYLOAD_INLINE, FLAG_PAYLOAD_OVERSIZED, FLAG_PAYLOAD_SKIPPED, FLAG_PAYLOAD_UNREADABLE,
    ONCPU_UNKNOWN,
};

/// A P2P message seen at `net:inbound_message` or `net:outbound_message`.
#[derive(Debug, Clone)]
pub struct Message {
    /// CLOCK_MONOTONIC nanoseconds when the tracepoint handed the message
    /// over: when it fired, plus the payload copy for a copied payload (the
    /// point where bitcoind stamps its own capture record).
    pub ktime_ns: u64,
    /// Thread of bitcoind that hit the tracepoint.
    pub tid: u32,
    /// Bitcoin Core's peer id.
    pub peer_id: i64,
    /// The peer's `CNode*` in bitcoind, once the kernel found it.
    pub cnode: Option<u64>,
    /// `CNode::m_addr_name`; empty if the kernel's record naming the peer
    /// was lost. Shared by all of a peer's messages.
    pub addr: Arc<str>,
    /// Connection type (`inbound`, `outbound-full-relay`, ...).
    pub conn_type: Arc<str>,
    /// Message type (`version`, `inv`, ...).
    pub msg_type: String,
    /// Received from or sent to the peer.
    pub direction: Direction,
    /// Payload size as bitcoind reported it.
    pub payload_size: u64,
    /// The payload, or None when it was not copied (filtered out, capture off).
    pub payload: Option<Vec<u8>>,
    /// The address string was longer than peerlog's buffer and was cut.
    pub addr_truncated: bool,
}

/// A message whose payload did not arrive whole.
#[derive(Debug, Clone)]
pub struct IncompleteMessage {
    /// The message as announced, without payload.
    pub message: Message,
    /// Payload bytes that did arrive.
    pub received: u64,
    /// Why the rest is missing.
    pub reason: &'static str,
}

/// A connection opened, evicted or closed.
#[derive(Debug, Clone)]
pub struct Connection {
    /// CLOCK_MONOTONIC nanoseconds when the tracepoint fired.
    pub ktime_ns: u64,
    /// Which of the four tracepoints fired.
    pub kind: ConnectionEventKind,
    /// Bitcoin Core's peer id.
    pub peer_id: i64,
    /// Peer address.
    pub addr: String,
    /// Connection type.
    pub conn_type: String,
    /// Bitcoin Core's `Network` enum value.
    pub network: u32,
    /// Connection count (opened) or connect time in unix seconds (evicted, closed).
    pub value: u64,
    /// `closed`: the node's final byte counters of the connection
    /// (`getpeerinfo`'s `bytesrecv`, `bytessent`), when they could be read.
    pub final_bytes: Option<(u64, u64)>,
}

/// `net:misbehaving_connection`.
#[derive(Debug, Clone)]
pub struct Misbehaving {
    /// CLOCK_MONOTONIC nanoseconds when the tracepoint fired.
    pub ktime_ns: u64,
    /// Bitcoin Core's peer id.
    pub peer_id: i64,
    /// The reason bitcoind gives.
    pub reason: String,
}

/// A slice of a message-handling thread's time charged to one peer (see
/// [`SliceKind`]).
#[derive(Debug, Clone)]
pub struct CpuSlice {
    /// CLOCK_MONOTONIC nanoseconds when the slice opened.
    pub start_ktime_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds when it ended.
    pub end_ktime_ns: u64,
    /// The thread.
    pub tid: u32,
    /// The peer charged.
    pub peer_id: i64,
    /// What opened the slice.
    pub kind: SliceKind,
    /// Nanoseconds the thread slept during the slice.
    pub slept_ns: u64,
    /// `Processing`: the type of the message being processed.
    pub msg_type: String,
    /// Nanoseconds the thread ran on a CPU during the slice, when measured.
    pub oncpu_ns: Option<u64>,
}

impl CpuSlice {
    /// Wall-clock nanoseconds from start to end that the thread was awake
    /// (running, or ready to run): its sleeps left out.
    pub fn wall_ns(&self) -> u64 {
        self.end_ktime_ns
            .saturating_sub(self.start_ktime_ns)
            .saturating_sub(self.slept_ns)
    }
}

/// A mempool tracepoint, attributed to the peer being processed.
#[derive(Debug, Clone)]
pub struct MempoolChange {
    /// CLOCK_MONOTONIC nanoseconds when the tracepoint fired.
    pub ktime_ns: u64,
    /// Which tracepoint.
    pub kind: MempoolEventKind,
    /// Peer whose message the thread was processing, if any.
    pub peer_id: Option<i64>,
    /// The transaction (`replaced`: the replaced one).
    pub txid: bitcoin::Txid,
    /// Virtual size (vbytes).
    pub vsize: i64,
    /// Fee (satoshis).
    pub fee: i64,
    /// `removed`/`rejected`: the reason.
    pub reason: String,
    /// `replaced`: the replacement (txid or package hash), its vsize and fee.
    pub replacement: Option<([u8; 32], i64, i64)>,
    /// `removed`/`replaced`: when the transaction entered the mempool (unix seconds).
    pub entry_time: u64,
}

/// `validation:block_connected`, attributed to the peer being processed.
#[derive(Debug, Clone)]
pub struct BlockConnected {
    /// CLOCK_MONOTONIC nanoseconds when the tracepoint fired.
    pub ktime_ns: u64,
    /// Peer whose message the thread was processing, if any.
    pub peer_id: Option<i64>,
    /// Block hash.
    pub hash: bitcoin::BlockHash,
    /// Height.
    pub height: i64,
    /// Transactions.
    pub tx_count: u64,
    /// Inputs.
    pub inputs: i64,
    /// Signature operations.
    pub sigops: u64,
    /// Nanoseconds bitcoind took to connect it.
    pub duration_ns: u64,
}

/// A CPU sample of one of the target's threads, its stack walked by the
/// kernel.
#[derive(Debug, Clone)]
pub struct CpuSample {
    /// CLOCK_MONOTONIC nanoseconds of the sample.
    pub ktime_ns: u64,
    /// The sampled thread (its name is the target's to ask, in
    /// `/proc/PID/task/TID/comm`).
    pub tid: u32,
    /// The thread was in the kernel (a system call); the stack is the user
    /// stack that made the call.
    pub in_kernel: bool,
    /// Code addresses to name, innermost first: the instruction pointer,
    /// then each return address minus one (see [`peerlog_common::CpuSample`]).
    pub frames: Vec<u64>,
    /// Why the walk ended; [`WalkStop::ThreadEntry`] when the frames are
    /// the whole stack. None for a reason this build does not know.
    pub stop: Option<WalkStop>,
    /// The peer the thread's open CPU slice was charged to, if one was open.
    pub context: Option<PeerContext>,
}

/// Which peer a thread was working for when it was sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerContext {
    /// What opened the slice.
    pub kind: SliceKind,
    /// The peer id.
    pub peer_id: i64,
}

/// One decoded event.
#[derive(Debug, Clone)]
pub enum Event {
    /// A whole message (payload complete, or deliberately not copied).
    Message(Message),
    /// A message that lost payload chunks.
    IncompleteMessage(IncompleteMessage),
    /// A connection event.
    Connection(Connection),
    /// A misbehaviour report.
    Misbehaving(Misbehaving),
    /// A slice of the message handler's time, charged to a peer.
    CpuSlice(CpuSlice),
    /// A mempool change.
    Mempool(MempoolChange),
    /// A block was connected.
    BlockConnected(BlockConnected),
    /// A CPU sample.
    CpuSample(CpuSample),
}

/// A record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind's layout.
    Short {
        /// Record kind.
        kind: u16,
        /// Bytes received.
        len: usize,
    },
    /// Written by an eBPF object of another ABI version.
    AbiMismatch(u16),
    /// A kind this ABI does not know.
    UnknownKind(u16),
    /// A batch of CPU samples that holds another number of samples than it
    /// announces.
    BatchCount {
        /// Samples announced.
        count: u32,
        /// Samples found in its bytes.
        found: usize,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short { kind, len } => write!(f, "record of kind {kind} too short ({len} bytes)"),
            Self::AbiMismatch(v) => write!(
                f,
                "record of event ABI version {v}, this peerlog speaks {ABI_VERSION}"
            ),
            Self::UnknownKind(k) => write!(f, "record of unknown kind {k}"),
            Self::BatchCount { count, found } => write!(
                f,
                "batch of CPU samples announces {count} samples but holds {found}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

struct Partial {
    message: Message,
    message_id: u64,
    expected_len: u64,
    data: Vec<u8>,
    /// bitcoind handed over more than the protocol's maximum, of which only
    /// the maximum was copied: never a whole payload.
    oversized: bool,
}

/// A peer's strings, as its [`PeerNameEvent`] or a connection event gave
/// them.
#[derive(Clone)]
struct PeerName {
    addr: Arc<str>,
    conn_type: Arc<str>,
    addr_truncated: bool,
}

/// Turns ring-buffer records into [`Event`]s.
#[derive(Default)]
pub struct Decoder {
    /// The message each thread is in the middle of delivering.
    partial: HashMap<u32, Partial>,
    /// The peers' strings, which the kernel sends once per peer: those of
    /// the connected peers and of the last [`CLOSED_NAMES_KEPT`] closed.
    names: HashMap<i64, PeerName>,
    /// The closed peers whose names are still kept, oldest first.
    closed: VecDeque<i64>,
}

/// Closed peers whose names the decoder keeps. A message can follow its
/// peer's close in the ring: a message handler that read the kernel's peer
/// slot (named) just before the thread closing the peer cleared it writes
/// its record unnamed, after the close (seen on a real bitcoind, whose
/// `b-net` closes peers while `b-msghand` handles their last messages).
/// bitcoind never reuses a peer id, so a kept name is never wrong; the
/// bound keeps a trace of weeks from holding every peer it ever saw.
const CLOSED_NAMES_KEPT: usize = 1024;

fn read<T: Copy>(record: &[u8], kind: u16) -> Result<T, DecodeError> {
    if record.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: record.len(),
        });
    }
    // SAFETY: length checked; T is plain old data valid for any bytes.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

/// The string before the first NUL, lossily decoded.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Decoder {
    /// Creates a decoder with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one record, appending the events it completes to `out` (a
    /// chunk completes at most one message; a message header may also
    /// surface the thread's previous, incomplete message).
    pub fn push(&mut self, record: &[u8], out: &mut Vec<Event>) -> Result<(), DecodeError> {
        let header: RecordHeader = read(record, 0)?;
        if header.abi != ABI_VERSION {
            return Err(DecodeError::AbiMismatch(header.abi));
        }
        match RecordKind::from_u16(header.kind) {
            Some(RecordKind::PeerName) => {
                let ev: PeerNameEvent = read(record, header.kind)?;
                self.names.insert(
                    ev.peer_id,
                    PeerName {
                        addr: c_string(&ev.addr).into(),
                        conn_type: c_string(&ev.conn_type).into(),
                        addr_truncated: ev.flags & FLAG_ADDR_TRUNCATED != 0,
                    },
                );
            }
            Some(RecordKind::Message) => {
                let ev: MessageEvent = read(record, header.kind)?;
                if let Some(old) = self.partial.remove(&header.tid) {
                    out.push(incomplete(
                        old,
                        "the ring buffer was full; later chunks were dropped",
                    ));
                }
                let name = self.names.get(&ev.peer_id).cloned().unwrap_or(PeerName {
                    addr: "".into(),
                    conn_type: "".into(),
                    addr_truncated: false,
                });
                let message = Message {
                    ktime_ns: header.ktime_ns,
                    tid: header.tid,
                    peer_id: ev.peer_id,
                    cnode: (ev.cnode != 0).then_some(ev.cnode),
                    addr: name.addr,
                    conn_type: name.conn_type,
                    msg_type: c_string(&ev.msg_type),
                    direction: if ev.direction == Direction::Outbound as u8 {
                        Direction::Outbound
                    } else {
                        Direction::Inbound
                    },
                    payload_size: ev.payload_size,
                    payload: None,
                    addr_truncated: name.addr_truncated,
                };
                if ev.flags & FLAG_PAYLOAD_SKIPPED != 0 {
                    out.push(Event::Message(message));
                } else if ev.flags & FLAG_PAYLOAD_UNREADABLE != 0 {
                    out.push(Event::IncompleteMessage(IncompleteMessage {
                        message,
                        received: 0,
                        reason: "the payload could not be read from the node's memory",
                    }));
                } else if ev.flags & FLAG_PAYLOAD_INLINE != 0 {
                    let body = &record[size_of::<MessageEvent>()..];
                    let payload =
                        body.get(..ev.payload_size as usize)
                            .ok_or(DecodeError::Short {
                                kind: header.kind,
                                len: record.len(),
                            })?;
                    out.push(Event::Message(Message {
                        payload: Some(payload.to_vec()),
                        ..message
                    }));
                } else if ev.chunks == 0 {
                    out.push(Event::Message(Message {
                        payload: Some(Vec::new()),
                        ..message
                    }));
                } else {
                    let expected_len = if ev.flags & FLAG_PAYLOAD_OVERSIZED != 0 {
                        peerlog_common::MAX_PROTOCOL_MESSAGE_LENGTH
                    } else {
                        ev.payload_size
                    };
                    self.partial.insert(
                        header.tid,
                        Partial {
                            message,
                            message_id: ev.message_id,
                            expected_len,
                            data: Vec::with_capacity(expected_len as usize),
                            oversized: ev.flags & FLAG_PAYLOAD_OVERSIZED != 0,
                        },
                    );
                }
            }
            Some(RecordKind::PayloadChunk) => {
                let chunk: PayloadChunk = read(record, header.kind)?;
                let body = &record[size_of::<PayloadChunk>()..];
                let Some(mut partial) = self.partial.remove(&header.tid) else {
                    // The header was lost (ring full); its loss is counted in
                    // the kernel, nothing to attach this chunk to.
                    return Ok(());
                };
                let len = chunk.len as usize;
                if partial.message_id != chunk.message_id
                    || chunk.offset as usize != partial.data.len()
                    || len > body.len()
                {
                    out.push(incomplete(
                        partial,
                        "payload chunks arrived out of sequence",
                    ));
                    return Ok(());
                }
                partial.data.extend_from_slice(&body[..len]);
                if partial.data.len() as u64 >= partial.expected_len && partial.oversized {
                    out.push(incomplete(
                        partial,
                        "the payload is larger than the protocol's 4,000,000 bytes; only those were copied",
                    ));
                } else if partial.data.len() as u64 >= partial.expected_len {
                    let Partial { message, data, .. } = partial;
                    // The time the whole payload was handed over, as
                    // bitcoind's own capture stamps it (see PayloadChunk).
                    out.push(Event::Message(Message {
                        payload: Some(data),
                        ktime_ns: header.ktime_ns,
                        ..message
                    }));
                } else {
                    self.partial.insert(header.tid, partial);
                }
            }
            Some(RecordKind::Connection) => {
                let ev: ConnectionEvent = read(record, header.kind)?;
                let Some(kind) = ConnectionEventKind::from_u8(ev.event) else {
                    return Err(DecodeError::UnknownKind(header.kind));
                };
                let addr = c_string(&ev.addr);
                let conn_type = c_string(&ev.conn_type);
                if kind == ConnectionEventKind::Closed {
                    // Its messages are nearly over (see CLOSED_NAMES_KEPT).
                    self.closed.push_back(ev.peer_id);
                    if self.closed.len() > CLOSED_NAMES_KEPT {
                        if let Some(oldest) = self.closed.pop_front() {
                            self.names.remove(&oldest);
                        }
                    }
                } else {
                    // Names the peer should its own naming record be lost.
                    self.names.insert(
                        ev.peer_id,
                        PeerName {
                            addr: addr.as_str().into(),
                            conn_type: conn_type.as_str().into(),
                            addr_truncated: ev.flags & FLAG_ADDR_TRUNCATED != 0,
                        },
                    );
                }
                out.push(Event::Connection(Connection {
                    ktime_ns: header.ktime_ns,
                    kind,
                    peer_id: ev.peer_id,
                    addr,
                    conn_type,
                    network: ev.network,
                    value: ev.value,
                    final_bytes: (ev.bytes_recv != BYTES_UNKNOWN && ev.bytes_sent != BYTES_UNKNOWN)
                        .then_some((ev.bytes_recv, ev.bytes_sent)),
                }));
            }
            Some(RecordKind::Misbehaving) => {
                let ev: MisbehavingEvent = read(record, header.kind)?;
                out.push(Event::Misbehaving(Misbehaving {
                    ktime_ns: header.ktime_ns,
                    peer_id: ev.peer_id,
                    reason: c_string(&ev.reason),
                }));
            }
            Some(RecordKind::CpuSlice) => {
                let ev: CpuSliceEvent = read(record, header.kind)?;
                let kind =
                    SliceKind::from_u8(ev.slice).ok_or(DecodeError::UnknownKind(header.kind))?;
                out.push(Event::CpuSlice(CpuSlice {
                    start_ktime_ns: ev.start_ktime_ns,
                    end_ktime_ns: header.ktime_ns,
                    tid: header.tid,
                    peer_id: ev.peer_id,
                    kind,
                    slept_ns: ev.slept_ns,
                    msg_type: c_string(&ev.msg_type),
                    oncpu_ns: (ev.oncpu_ns != ONCPU_UNKNOWN).then_some(ev.oncpu_ns),
                }));
            }
            Some(RecordKind::Mempool) => {
                let ev: MempoolEvent = read(record, header.kind)?;
                let kind = MempoolEventKind::from_u8(ev.event)
                    .ok_or(DecodeError::UnknownKind(header.kind))?;
                out.push(Event::Mempool(MempoolChange {
                    ktime_ns: header.ktime_ns,
                    kind,
                    peer_id: known_peer(ev.peer_id),
                    txid: bitcoin::Txid::from_byte_array(ev.txid),
                    vsize: ev.vsize,
                    fee: ev.fee,
                    reason: c_string(&ev.reason),
                    replacement: (kind == MempoolEventKind::Replaced).then_some((
                        ev.other_txid,
                        ev.other_vsize,
                        ev.other_fee,
                    )),
                    entry_time: ev.entry_time,
                }));
            }
            Some(RecordKind::BlockConnected) => {
                let ev: BlockConnectedEvent = read(record, header.kind)?;
                out.push(Event::BlockConnected(BlockConnected {
                    ktime_ns: header.ktime_ns,
                    peer_id: known_peer(ev.peer_id),
                    hash: bitcoin::BlockHash::from_byte_array(ev.hash),
                    height: ev.height,
                    tx_count: ev.tx_count,
                    inputs: ev.inputs,
                    sigops: ev.sigops,
                    duration_ns: ev.duration_ns,
                }));
            }
            Some(RecordKind::CpuSample) => {
                out.push(Event::CpuSample(decode_cpu_sample(header, record)?));
            }
            Some(RecordKind::CpuSampleBatch) => self.push_cpu_sample_batch(record, out)?,
            None => return Err(DecodeError::UnknownKind(header.kind)),
        }
        Ok(())
    }

    /// A [`RecordKind::CpuSampleBatch`] record: each of its samples, in the
    /// order taken, each decoded as a record of its own. A batch whose
    /// samples do not add up to its length is refused whole: its bytes
    /// cannot be trusted.
    fn push_cpu_sample_batch(
        &mut self,
        record: &[u8],
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let kind = RecordKind::CpuSampleBatch as u16;
        let batch: peerlog_common::CpuSampleBatchHeader = read(record, kind)?;
        let short = || DecodeError::Short {
            kind,
            len: record.len(),
        };
        let mut rest = record[size_of::<peerlog_common::CpuSampleBatchHeader>()..]
            .get(..batch.len as usize)
            .ok_or_else(short)?;
        let mut samples = Vec::with_capacity(batch.count as usize);
        while !rest.is_empty() {
            let sample: peerlog_common::CpuSample = read(rest, kind)?;
            // Only samples: any other kind inside would be misread here.
            if sample.header.kind != RecordKind::CpuSample as u16 {
                return Err(DecodeError::UnknownKind(sample.header.kind));
            }
            let len = size_of::<peerlog_common::CpuSample>() + sample.frame_count as usize * 8;
            self.push(rest.get(..len).ok_or_else(short)?, &mut samples)?;
            rest = &rest[len..];
        }
        if samples.len() != batch.count as usize {
            return Err(DecodeError::BatchCount {
                count: batch.count,
                found: samples.len(),
            });
        }
        out.append(&mut samples);
        Ok(())
    }

    /// Surfaces every message still waiting for chunks; called when no more
    /// records will come.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        for (_, partial) in self.partial.drain() {
            out.push(incomplete(
                partial,
                "tracing stopped before the payload was complete",
            ));
        }
    }
}

/// A [`RecordKind::CpuSample`] record: the header, then the frames.
fn decode_cpu_sample(header: RecordHeader, record: &[u8]) -> Result<CpuSample, DecodeError> {
    let ev: peerlog_common::CpuSample = read(record, header.kind)?;
    let frames = record[size_of::<peerlog_common::CpuSample>()..]
        .get(..(ev.frame_count as usize).saturating_mul(8))
        .ok_or(DecodeError::Short {
            kind: header.kind,
            len: record.len(),
        })?;
    let complete = ev.flags & peerlog_common::SAMPLE_FLAG_COMPLETE != 0;
    Ok(CpuSample {
        ktime_ns: header.ktime_ns,
        tid: header.tid,
        in_kernel: ev.flags & peerlog_common::SAMPLE_FLAG_IN_KERNEL != 0,
        frames: frames
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect(),
        // The flag is the kernel's verdict; the reason only explains it.
        stop: WalkStop::from_u8(ev.stop).filter(|&s| (s == WalkStop::ThreadEntry) == complete),
        context: SliceKind::from_u8(ev.slice)
            .filter(|_| ev.peer_id >= 0)
            .map(|kind| PeerContext {
                kind,
                peer_id: ev.peer_id,
            }),
    })
}

/// Peer ids are non-negative in Bitcoin Core; the kernel writes -1 for "unknown".
fn known_peer(id: i64) -> Option<i64> {
    (id >= 0).then_some(id)
}

fn incomplete(partial: Partial, reason: &'static str) -> Event {
    Event::IncompleteMessage(IncompleteMessage {
        received: partial.data.len() as u64,
        message: partial.message,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerlog_common::{ADDR_LEN, CONN_TYPE_LEN, MSG_TYPE_LEN};

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over plain old data.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn fixed<const N: usize>(s: &str) -> [u8; N] {
        let mut a = [0u8; N];
        a[..s.len()].copy_from_slice(s.as_bytes());
        a
    }

    fn header(kind: RecordKind, tid: u32, ktime_ns: u64) -> RecordHeader {
        RecordHeader {
            abi: ABI_VERSION,
            kind: kind as u16,
            tid,
            ktime_ns,
        }
    }

    fn message(tid: u32, id: u64, size: u64, chunks: u32, flags: u8) -> Vec<u8> {
        bytes_of(&MessageEvent {
            header: header(RecordKind::Message, tid, id),
            message_id: id,
            peer_id: 7,
            payload_size: size,
            cnode: 0,
            chunks,
            direction: Direction::Inbound as u8,
            flags,
            _pad: [0; 2],
            msg_type: fixed::<MSG_TYPE_LEN>("block"),
        })
    }

    fn peer_name(peer_id: i64) -> Vec<u8> {
        bytes_of(&PeerNameEvent {
            header: header(RecordKind::PeerName, 1, 1),
            peer_id,
            flags: 0,
            _pad: [0; 7],
            addr: fixed::<ADDR_LEN>("127.0.0.1:18444"),
            conn_type: fixed::<CONN_TYPE_LEN>("inbound"),
        })
    }

    fn inline(tid: u32, id: u64, data: &[u8], class: usize, flags: u8) -> Vec<u8> {
        let mut v = message(tid, id, data.len() as u64, 0, FLAG_PAYLOAD_INLINE | flags);
        v.extend_from_slice(data);
        v.resize(size_of::<MessageEvent>() + class, 0xAA);
        v
    }

    fn chunk(tid: u32, id: u64, offset: u32, data: &[u8], class: usize) -> Vec<u8> {
        let mut v = bytes_of(&PayloadChunk {
            header: header(RecordKind::PayloadChunk, tid, id),
            message_id: id,
            offset,
            len: data.len() as u32,
        });
        v.extend_from_slice(data);
        v.resize(size_of::<PayloadChunk>() + class, 0xAA);
        v
    }

    #[test]
    fn reassembles_chunks_in_order() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.push(&peer_name(7), &mut out).unwrap();
        assert!(out.is_empty());
        d.push(&message(1, 99, 20_000, 2, 0), &mut out).unwrap();
        d.push(&chunk(1, 99, 0, &payload[..16384], 16384), &mut out)
            .unwrap();
        assert!(out.is_empty());
        d.push(&chunk(1, 99, 16384, &payload[16384..], 4096), &mut out)
            .unwrap();
        let [Event::Message(m)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(m.payload.as_deref(), Some(&payload[..]));
        assert_eq!(&*m.addr, "127.0.0.1:18444");
        assert_eq!(&*m.conn_type, "inbound");
        assert_eq!(m.msg_type, "block");
        assert_eq!(m.peer_id, 7);
    }

    fn closed(peer_id: i64) -> Vec<u8> {
        bytes_of(&ConnectionEvent {
            header: header(RecordKind::Connection, 2, 2),
            peer_id,
            value: 0,
            bytes_recv: BYTES_UNKNOWN,
            bytes_sent: BYTES_UNKNOWN,
            network: 1,
            event: ConnectionEventKind::Closed as u8,
            flags: 0,
            _pad: [0; 2],
            addr: fixed::<ADDR_LEN>("127.0.0.1:18444"),
            conn_type: fixed::<CONN_TYPE_LEN>("inbound"),
        })
    }

    #[test]
    fn a_message_after_its_peers_close_keeps_the_name() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.push(&peer_name(7), &mut out).unwrap();
        d.push(&closed(7), &mut out).unwrap();
        d.push(&inline(1, 3, b"pong", 256, 0), &mut out).unwrap();
        let [Event::Connection(_), Event::Message(m)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(&*m.addr, "127.0.0.1:18444");
        // Only the last CLOSED_NAMES_KEPT closed peers keep theirs.
        for id in 100..100 + CLOSED_NAMES_KEPT as i64 {
            d.push(&closed(id), &mut out).unwrap();
        }
        out.clear();
        d.push(&inline(1, 4, b"pong", 256, 0), &mut out).unwrap();
        let [Event::Message(m)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(&*m.addr, "");
    }

    #[test]
    fn inline_payloads_and_unreadable_ones() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.push(&inline(1, 3, b"pingpong", 256, 0), &mut out)
            .unwrap();
        d.push(&inline(1, 4, &[7; 300], 4096, 0), &mut out).unwrap();
        d.push(&message(1, 5, 80, 0, FLAG_PAYLOAD_UNREADABLE), &mut out)
            .unwrap();
        let [Event::Message(a), Event::Message(b), Event::IncompleteMessage(c)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(a.payload.as_deref(), Some(&b"pingpong"[..]));
        assert_eq!(b.payload.as_deref(), Some(&[7; 300][..]));
        assert_eq!((c.received, c.message.payload_size), (0, 80));
        // No naming record came: the strings are empty, not invented.
        assert_eq!(&*a.addr, "");
        // A record shorter than its announced payload is refused.
        let mut short = inline(1, 6, &[1; 200], 256, 0);
        short.truncate(size_of::<MessageEvent>() + 100);
        assert!(matches!(
            d.push(&short, &mut out),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn a_gap_is_reported_not_shortened() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.push(&message(1, 5, 40_000, 3, 0), &mut out).unwrap();
        d.push(&chunk(1, 5, 0, &[1; 16384], 16384), &mut out)
            .unwrap();
        // Next message of the same thread: the previous one lost its tail.
        d.push(&message(1, 6, 0, 0, 0), &mut out).unwrap();
        assert!(matches!(&out[0], Event::IncompleteMessage(i) if i.received == 16384));
        assert!(matches!(&out[1], Event::Message(m) if m.payload.as_deref() == Some(&[][..])));
    }

    #[test]
    fn an_oversized_payload_is_incomplete_never_short() {
        let max = peerlog_common::MAX_PROTOCOL_MESSAGE_LENGTH;
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let chunks = max.div_ceil(16384) as u32;
        d.push(
            &message(1, 7, max + 10, chunks, FLAG_PAYLOAD_OVERSIZED),
            &mut out,
        )
        .unwrap();
        let mut offset = 0u64;
        while offset < max {
            let n = (max - offset).min(16384) as usize;
            d.push(&chunk(1, 7, offset as u32, &vec![0; n], 16384), &mut out)
                .unwrap();
            offset += n as u64;
        }
        let [Event::IncompleteMessage(i)] = &out[..] else {
            panic!("{} events, expected one incomplete message", out.len())
        };
        assert_eq!((i.received, i.message.payload_size), (max, max + 10));
    }

    #[test]
    fn threads_interleave_independently() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.push(&message(1, 10, 300, 1, 0), &mut out).unwrap();
        d.push(&message(2, 11, 3, 1, 0), &mut out).unwrap();
        d.push(&chunk(2, 11, 0, b"abc", 256), &mut out).unwrap();
        d.push(&chunk(1, 10, 0, &[9; 300], 4096), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        d.finish(&mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn skipped_payload_and_abi_mismatch() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.push(&message(1, 1, 1000, 0, FLAG_PAYLOAD_SKIPPED), &mut out)
            .unwrap();
        assert!(
            matches!(&out[0], Event::Message(m) if m.payload.is_none() && m.payload_size == 1000)
        );
        let mut bad = message(1, 2, 0, 0, 0);
        bad[0] = 0xEE;
        assert!(matches!(
            d.push(&bad, &mut out),
            Err(DecodeError::AbiMismatch(_))
        ));
        assert!(matches!(
            d.push(&[0u8; 3], &mut out),
            Err(DecodeError::Short { .. })
        ));
    }

    fn cpu_sample(frames: &[u64], frame_count: u32, slice: u8) -> Vec<u8> {
        let mut v = bytes_of(&peerlog_common::CpuSample {
            header: header(RecordKind::CpuSample, 9, 555),
            peer_id: 4,
            frame_count,
            slice,
            flags: peerlog_common::SAMPLE_FLAG_IN_KERNEL | peerlog_common::SAMPLE_FLAG_COMPLETE,
            stop: WalkStop::ThreadEntry as u8,
            _pad: 0,
        });
        for frame in frames {
            v.extend_from_slice(&frame.to_le_bytes());
        }
        v
    }

    #[test]
    fn cpu_samples_carry_frames_and_context() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let frames = [0x401000u64, 0x402233, 0x400100];
        d.push(
            &cpu_sample(&frames, 3, SliceKind::Processing as u8),
            &mut out,
        )
        .unwrap();
        let [Event::CpuSample(s)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((s.tid, s.ktime_ns), (9, 555));
        assert!(s.in_kernel);
        assert_eq!(s.frames, frames);
        assert_eq!(s.stop, Some(WalkStop::ThreadEntry));
        assert_eq!(
            s.context,
            Some(PeerContext {
                kind: SliceKind::Processing,
                peer_id: 4,
            })
        );

        out.clear();
        d.push(
            &cpu_sample(&[], 0, peerlog_common::SAMPLE_NO_CONTEXT),
            &mut out,
        )
        .unwrap();
        assert!(
            matches!(&out[0], Event::CpuSample(s) if s.context.is_none() && s.frames.is_empty())
        );
        // A record that announces more frames than it carries is refused.
        assert!(matches!(
            d.push(&cpu_sample(&frames, 4, 0), &mut out),
            Err(DecodeError::Short { .. })
        ));
    }

    fn sample_batch(count: u32, samples: &[Vec<u8>]) -> Vec<u8> {
        let body = samples.concat();
        let mut v = bytes_of(&peerlog_common::CpuSampleBatchHeader {
            header: header(RecordKind::CpuSampleBatch, 0, 555),
            count,
            len: body.len() as u32,
        });
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn sample_batches_give_each_sample_in_order() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let first = cpu_sample(&[0x401000, 0x400100], 2, SliceKind::Processing as u8);
        let second = cpu_sample(&[], 0, peerlog_common::SAMPLE_NO_CONTEXT);
        let third = cpu_sample(&[0x402233], 1, SliceKind::Sending as u8);
        d.push(&sample_batch(3, &[first, second, third]), &mut out)
            .unwrap();
        let frames: Vec<_> = out
            .iter()
            .map(|e| match e {
                Event::CpuSample(s) => s.frames.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(frames, [vec![0x401000, 0x400100], vec![], vec![0x402233]]);

        // An empty batch is no error and no sample.
        out.clear();
        d.push(&sample_batch(0, &[]), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_sample_batches_are_refused_whole() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let good = cpu_sample(&[0x401000], 1, 0);
        // More samples announced than held, and fewer.
        assert!(matches!(
            d.push(&sample_batch(2, std::slice::from_ref(&good)), &mut out),
            Err(DecodeError::BatchCount { count: 2, found: 1 })
        ));
        assert!(matches!(
            d.push(&sample_batch(1, &[good.clone(), good.clone()]), &mut out),
            Err(DecodeError::BatchCount { count: 1, found: 2 })
        ));
        // A sample that runs past the batch's end, and a batch whose length
        // runs past the record's.
        assert!(matches!(
            d.push(
                &sample_batch(2, &[good.clone(), cpu_sample(&[1], 3, 0)]),
                &mut out
            ),
            Err(DecodeError::Short { .. })
        ));
        let mut cut = sample_batch(1, std::slice::from_ref(&good));
        cut.truncate(cut.len() - 1);
        assert!(matches!(
            d.push(&cut, &mut out),
            Err(DecodeError::Short { .. })
        ));
        // A record of another kind or ABI inside a batch.
        let mut other = good.clone();
        other[2] = RecordKind::CpuSlice as u8;
        assert!(matches!(
            d.push(&sample_batch(1, &[other]), &mut out),
            Err(DecodeError::UnknownKind(5))
        ));
        let mut old = good;
        old[0] = 0xEE;
        assert!(matches!(
            d.push(&sample_batch(1, &[old]), &mut out),
            Err(DecodeError::AbiMismatch(_))
        ));
        assert!(out.is_empty(), "{out:?}");
    }
}

#[cfg(test)]
mod slice_tests {
    use super::*;

    #[test]
    fn cpu_slices_decode_with_their_peer_and_type() {
        let mut msg_type = [0u8; peerlog_common::MSG_TYPE_LEN];
        msg_type[..4].copy_from_slice(b"ping");
        let ev = CpuSliceEvent {
            header: RecordHeader {
                abi: ABI_VERSION,
                kind: RecordKind::CpuSlice as u16,
                tid: 3,
                ktime_ns: 5_000,
            },
            start_ktime_ns: 1_000,
            oncpu_ns: 2_500,
            slept_ns: 1_000,
            peer_id: 8,
            slice: SliceKind::Processing as u8,
            _pad: [0; 7],
            msg_type,
        };
        // SAFETY: test helper over plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const CpuSliceEvent).cast::<u8>(),
                size_of::<CpuSliceEvent>(),
            )
        };
        let mut out = Vec::new();
        Decoder::new().push(bytes, &mut out).unwrap();
        let [Event::CpuSlice(s)] = &out[..] else {
            panic!("{out:?}")
        };
        // 4 µs from start to end, 1 µs of it asleep.
        assert_eq!(
            (s.peer_id, s.tid, s.wall_ns(), s.oncpu_ns),
            (8, 3, 3_000, Some(2_500))
        );
        assert_eq!(
            (s.kind, s.msg_type.as_str()),
            (SliceKind::Processing, "ping")
        );
    }
}
