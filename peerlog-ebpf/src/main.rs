//! peerlog's kernel side: eBPF programs on bitcoind's USDT tracepoints, the
//! scheduler and (for flamegraphs) a CPU clock.
//!
//! No program is attached to bitcoind's own functions: the tracepoints fire
//! once per message or event, while a probe on `ProcessMessages` or
//! `SendMessages` would fire for every peer on every message-handler loop
//! iteration, and a return probe (uretprobe) replaces return addresses with a
//! trampoline that a C++ exception cannot unwind through (`ProcessMessage`
//! throws on malformed payloads: bitcoind would call `std::terminate`).
//!
//! Every program is attached by userspace once per probe site, with the site's
//! index in [`USDT_SPECS`] as BPF cookie: the argument locations differ from
//! build to build (registers, stack slots), so they are read at run time from
//! the spec the userspace USDT parser wrote, the way libbpf's `usdt.bpf.h`
//! does. Records go to one ring buffer, in the layouts of `peerlog-common`.
//! Nothing is dropped silently: every failure increments a loss counter.
#![no_std]
#![feature(asm_experimental_arch)]
#![no_main]

mod profile;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, raw_tracepoint, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext},
    EbpfContext,
};
use peerlog_common::{
    BlockConnectedEvent, ConfigKey, ConnectionEvent, ConnectionEventKind, CpuSliceEvent, Direction,
    LossCause, MempoolEvent, MempoolEventKind, MessageEvent, MisbehavingEvent, PayloadChunk,
    PeerNameEvent, RecordHeader, RecordKind, SliceKind, ThreadContext, ThreadCpu, UsdtArgKind,
    UsdtSpec, ABI_VERSION, BYTES_UNKNOWN, CHUNK_CLASSES, CONFIG_ENTRIES, FLAG_ADDR_TRUNCATED,
    FLAG_PAYLOAD_INLINE, FLAG_PAYLOAD_OVERSIZED, FLAG_PAYLOAD_SKIPPED, FLAG_PAYLOAD_UNREADABLE,
    INLINE_CLASSES, LOSS_CAUSES, MAX_CHUNKS, MAX_MSG_TYPE_FILTER, MAX_PEERS,
    MAX_PROTOCOL_MESSAGE_LENGTH, MAX_USDT_SPECS, MSG_TYPE_CAPTURE, MSG_TYPE_LEN, MSG_TYPE_STATS,
    ONCPU_UNKNOWN, PEER_POLICY_SKIP_PAYLOAD,
};

/// The one ring buffer every record goes to, so userspace sees them in the
/// order they were written. Userspace resizes it at load time (`--ring-size`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(64 << 20, 0);

/// Argument specifications, indexed by the BPF cookie of the attachment.
#[map]
static USDT_SPECS: Array<UsdtSpec> = Array::with_max_entries(MAX_USDT_SPECS, 0);

/// Global switches, indexed by [`ConfigKey`].
#[map]
static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_ENTRIES, 0);

/// Per-peer capture policy (`PEER_POLICY_*`), keyed by peer id.
#[map]
static PEER_POLICY: HashMap<i64, u8> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Message types whose payloads are copied while the message type filter is
/// active; keyed by the NUL-padded type.
#[map]
static MSG_TYPE_FILTER: HashMap<[u8; MSG_TYPE_LEN], u8> =
    HashMap::with_max_entries(MAX_MSG_TYPE_FILTER, 0);

/// What each message-handling thread of the target is doing for which peer,
/// by thread id; see [`ThreadContext`]. Created by the thread's first
/// `net:inbound_message`, so only the threads that take peers' messages
/// (`b-msghand`) have one.
#[map]
pub static THREAD_CONTEXT: HashMap<u32, ThreadContext> = HashMap::with_max_entries(1024, 0);

/// On-CPU time of the target's threads, by thread id, kept by `sched_switch`.
/// LRU: threads that exit are forgotten without userspace's help.
#[map]
static THREAD_CPU: LruHashMap<u32, ThreadCpu> = LruHashMap::with_max_entries(4096, 0);

/// What the message tracepoints know of a peer, in slot `peer id mod
/// MAX_PEERS`: an array, because the verifier inlines an array lookup while
/// a hash map costs a helper call and a hash on every message. bitcoind
/// numbers peers from 0 up, so two peers share a slot only if they are
/// MAX_PEERS connections apart; then they take it in turn, each named again
/// when it takes it back. A zeroed slot is "not named, `CNode*` unknown".
#[map]
static PEERS: Array<KnownPeer> = Array::with_max_entries(MAX_PEERS, 0);

/// The [`PEERS`] slot of a peer.
#[inline(always)]
fn peer_slot(peer_id: i64) -> u32 {
    (peer_id as u64 & u64::from(MAX_PEERS - 1)) as u32
}

/// Loss counters, indexed by [`LossCause`]; per CPU so counting never contends.
#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_CAUSES, 0);

#[inline(always)]
pub(crate) fn count_loss(cause: LossCause) {
    count_losses(cause, 1);
}

/// Counts `n` losses of one cause at once (a batch of samples).
#[inline(always)]
pub(crate) fn count_losses(cause: LossCause, n: u64) {
    if let Some(counter) = LOSSES.get_ptr_mut(cause as u32) {
        // An atomic add (BPF_ATOMIC | BPF_ADD): uprobe programs are
        // preemptible, and two runs on one CPU must not lose an increment to
        // a read-modify-write race. core has no atomics for this target.
        // SAFETY: `counter` is a valid, aligned per-CPU slot of the map.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({ptr} + 0) += {n}",
                ptr = in(reg) counter,
                n = in(reg) n,
            )
        };
    }
}

/// Flags for every ring-buffer submit. A wake-up of peerlog costs the
/// bitcoind thread that hit the tracepoint an irq_work and a task wake-up
/// (microseconds, as much as the probe itself); peerlog reads the ring every
/// few milliseconds anyway. So records go in silently, unless the ring is an
/// eighth full: then peerlog is woken at once, so a burst (a 4 MB block)
/// never waits for the next poll to make room.
#[inline(always)]
pub(crate) fn submit_flags() -> u64 {
    let threshold = config(ConfigKey::RingWakeBytes);
    if threshold == 0 || EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) > threshold {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

#[inline(always)]
pub(crate) fn config(key: ConfigKey) -> u64 {
    CONFIG.get(key as u32).copied().unwrap_or(0)
}

/// Whether the accounting is attached: it sets [`ConfigKey::TaskPidOffset`]
/// last when it attaches. Without it (`--no-accounting`) no slice is kept,
/// so no thread has a [`THREAD_CONTEXT`].
#[inline(always)]
pub(crate) fn accounting_attached() -> bool {
    config(ConfigKey::TaskPidOffset) != 0
}

/// Reads USDT argument `index` as described by `spec`, sign- or
/// zero-extended to 64 bits.
#[inline(always)]
fn read_arg(ctx: &ProbeContext, spec: &UsdtSpec, index: usize) -> Result<u64, ()> {
    if index as u32 >= spec.arg_count {
        return Err(());
    }
    let arg = &spec.args[index];
    let raw = if arg.kind == UsdtArgKind::Constant as u8 {
        arg.val_off as u64
    } else {
        let reg = register(ctx, arg.reg_off).ok_or(())?;
        if arg.kind == UsdtArgKind::Register as u8 {
            reg
        } else {
            let addr = reg.wrapping_add(arg.val_off as u64);
            unsafe { bpf_probe_read_user(addr as *const u64) }.map_err(|_| ())?
        }
    };
    // Keep only the argument's own bytes: a 4-byte argument in %eax or in a
    // stack slot comes with 4 unrelated upper bytes.
    let shift = 64u32.wrapping_sub(u32::from(arg.size) * 8) & 63;
    Ok(if arg.signed != 0 {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    })
}

/// Loads the `u64` at constant byte offset `$off` of the context, as one
/// instruction: written as assembly because LLVM would otherwise merge the
/// arms of [`register`] into one load from a computed context pointer, which
/// the verifier refuses.
macro_rules! context_load {
    ($ctx:expr, $off:literal) => {{
        let value: u64;
        // SAFETY: a read of the program's context at a constant offset
        // inside `pt_regs`, which the verifier checks.
        unsafe {
            core::arch::asm!(
                concat!("{value} = *(u64 *)({ctx} + ", stringify!($off), ")"),
                ctx = in(reg) $ctx,
                value = out(reg) value,
                options(readonly, nostack, preserves_flags),
            )
        };
        value
    }};
}

/// The register at byte offset `off` of the saved `pt_regs` (the offsets
/// userspace's USDT parser writes). The offset comes from a map, and the
/// verifier allows only constant offsets into the context, so each register
/// is its own constant load: no helper call, unlike a kernel read of the
/// context memory (libbpf's way), and this runs several times per message.
#[inline(always)]
fn register(ctx: &ProbeContext, off: u16) -> Option<u64> {
    let regs = ctx.as_ptr();
    Some(match off {
        0 => context_load!(regs, 0),
        8 => context_load!(regs, 8),
        16 => context_load!(regs, 16),
        24 => context_load!(regs, 24),
        32 => context_load!(regs, 32),
        40 => context_load!(regs, 40),
        48 => context_load!(regs, 48),
        56 => context_load!(regs, 56),
        64 => context_load!(regs, 64),
        72 => context_load!(regs, 72),
        80 => context_load!(regs, 80),
        88 => context_load!(regs, 88),
        96 => context_load!(regs, 96),
        104 => context_load!(regs, 104),
        112 => context_load!(regs, 112),
        128 => context_load!(regs, 128),
        152 => context_load!(regs, 152),
        _ => return None,
    })
}

/// The spec of the probe site this run was attached to.
#[inline(always)]
fn spec_for(ctx: &ProbeContext) -> Option<&'static UsdtSpec> {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let spec = USDT_SPECS.get(cookie);
    if spec.is_none() {
        count_loss(LossCause::MissingSpec);
    }
    spec
}

/// The calling thread's id, or None when it belongs to another process.
///
/// The perf event is already scoped to the target; this keeps a second
/// process that maps the same binary out even if that scoping is lost.
#[inline(always)]
fn target_thread() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let target = config(ConfigKey::TargetTgid) as u32;
    if target != 0 && tgid != target {
        return None;
    }
    Some(pid_tgid as u32)
}

#[inline(always)]
pub(crate) fn record_header(kind: RecordKind, tid: u32, ktime_ns: u64) -> RecordHeader {
    RecordHeader {
        abi: ABI_VERSION,
        kind: kind as u16,
        tid,
        ktime_ns,
    }
}

/// Copies a C string argument into `dst` (zero-filled first, so the bytes
/// after the terminator are defined). Returns true when it filled `dst`
/// entirely, i.e. may have been cut.
#[inline(always)]
fn read_str(ptr: u64, dst: &mut [u8]) -> Result<bool, ()> {
    for b in dst.iter_mut() {
        *b = 0;
    }
    let len = unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, dst) }
        .map_err(|_| ())?
        .len();
    Ok(len + 1 >= dst.len())
}

#[uprobe]
pub fn inbound_message(ctx: ProbeContext) -> u32 {
    handle_message(&ctx, Direction::Inbound);
    0
}

#[uprobe]
pub fn outbound_message(ctx: ProbeContext) -> u32 {
    handle_message(&ctx, Direction::Outbound);
    0
}

/// `net:inbound_message` / `net:outbound_message`: (peer id, addr, conn
/// type, msg type, size, data). Writes a [`MessageEvent`] (after a
/// [`PeerNameEvent`] for a peer not named yet) with the payload inline when
/// it is small, else followed by [`PayloadChunk`]s; nothing of the payload
/// when it is filtered out.
///
/// This runs in bitcoind's thread on every message, so it does the least it
/// can: one ring reservation for most messages, one string read (the
/// message type), one hash lookup (the peer) unless a filter is active.
#[inline(always)]
fn handle_message(ctx: &ProbeContext, direction: Direction) {
    let Some(tid) = target_thread() else { return };
    let Some(spec) = spec_for(ctx) else { return };
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    // The address and connection type (arguments 1 and 2) are read only
    // when the peer is named: on most messages they are not needed.
    let args = (|| {
        Ok::<_, ()>((
            read_arg(ctx, spec, 0)? as i64,
            read_arg(ctx, spec, 3)?,
            read_arg(ctx, spec, 4)?,
            read_arg(ctx, spec, 5)?,
        ))
    })();
    let Ok((peer_id, msg_type_ptr, size, data)) = args else {
        count_loss(LossCause::ArgReadFailed);
        return;
    };
    let mut msg_type = [0u8; MSG_TYPE_LEN];
    if read_str(msg_type_ptr, &mut msg_type).is_err() {
        count_loss(LossCause::ArgReadFailed);
        return;
    }
    // Small records never wake peerlog: it reads the ring every few
    // milliseconds, and the ring holds over a hundred thousand of them.
    // Only payload chunks, which can fill it in a burst, ask whether to.
    let wake = u64::from(BPF_RB_NO_WAKEUP);
    let cnode = known_peer(ctx, spec, tid, ktime_ns, peer_id, direction, wake);

    let mut flags = 0u8;
    let mut copy_len = size;
    if copy_len > MAX_PROTOCOL_MESSAGE_LENGTH {
        // Bitcoin Core never hands over more; if a build ever does, copy the
        // protocol maximum and say so rather than loop without bound.
        copy_len = MAX_PROTOCOL_MESSAGE_LENGTH;
        flags |= FLAG_PAYLOAD_OVERSIZED;
    }
    if !payload_wanted(peer_id, &msg_type) {
        flags |= FLAG_PAYLOAD_SKIPPED;
        copy_len = 0;
    }
    let mut message = MessageEvent {
        header: record_header(RecordKind::Message, tid, ktime_ns),
        message_id: ktime_ns,
        peer_id,
        payload_size: size,
        cnode,
        chunks: 0,
        direction: direction as u8,
        flags,
        _pad: [0; 2],
        msg_type,
    };
    if flags & FLAG_PAYLOAD_SKIPPED != 0 {
        // No payload: one copy from the stack, one helper call instead of
        // a reservation and a submit.
        if EVENTS.output::<MessageEvent>(&message, wake).is_err() {
            count_loss(LossCause::RingFullMessage);
        }
    } else if copy_len <= INLINE_CLASSES[0] as u64 {
        // One reservation for header and payload.
        emit_inline::<{ INLINE_CLASSES[0] }>(message, data, copy_len as u32, wake);
    } else if copy_len <= INLINE_CLASSES[1] as u64 {
        emit_inline::<{ INLINE_CLASSES[1] }>(message, data, copy_len as u32, wake);
    } else {
        message.chunks = copy_len.div_ceil(CHUNK_CLASSES[2] as u64) as u32;
        if EVENTS
            .output::<MessageEvent>(&message, submit_flags())
            .is_err()
        {
            count_loss(LossCause::RingFullMessage);
            return;
        }
        emit_payload(tid, ktime_ns, data, copy_len as u32);
    }
    next_slice(tid, ktime_ns, peer_id, direction, &msg_type);
}

/// A [`MessageEvent`] with room for `CAP` payload bytes after it.
#[repr(C)]
struct InlineMessage<const CAP: usize> {
    message: MessageEvent,
    data: [u8; CAP],
}

/// Writes `message` with its `len`-byte payload at user address `data` in
/// one record. A payload that cannot be read is flagged, never sent short.
#[inline(always)]
fn emit_inline<const CAP: usize>(message: MessageEvent, data: u64, len: u32, wake: u64) {
    let Some(mut entry) = EVENTS.reserve::<InlineMessage<CAP>>(0) else {
        count_loss(LossCause::RingFullMessage);
        return;
    };
    // SAFETY: the reserved record is exclusively ours until submit/discard.
    let record = unsafe { &mut *entry.as_mut_ptr() };
    record.message = message;
    let mut flags = message.flags | FLAG_PAYLOAD_INLINE;
    // Re-bound `len` where the verifier can see it next to the copy.
    let n = (len as usize) & (CAP * 2 - 1);
    if n > CAP {
        entry.discard(0);
        return;
    }
    if n > 0
        && unsafe { bpf_probe_read_user_buf(data as *const u8, &mut record.data[..n]) }.is_err()
    {
        count_loss(LossCause::PayloadReadFailed);
        flags = message.flags | FLAG_PAYLOAD_UNREADABLE;
    }
    record.message.flags = flags;
    entry.submit(wake);
}

/// What the kernel remembers of a peer between its messages.
#[repr(C)]
#[derive(Clone, Copy)]
struct KnownPeer {
    /// The peer the slot holds.
    peer_id: i64,
    /// The peer's `CNode*`, or 0 while not found.
    cnode: u64,
    /// Non-zero once its [`PeerNameEvent`] went into the ring.
    named: u64,
}

/// The peer's `CNode*` (0 while unknown), naming the peer first if this is
/// its first message since peerlog attached. One lookup in [`PEERS`]; on an
/// outbound message of a peer whose `CNode*` is not known yet, a search of
/// the registers ([`find_cnode`]).
#[inline(always)]
fn known_peer(
    ctx: &ProbeContext,
    spec: &UsdtSpec,
    tid: u32,
    ktime_ns: u64,
    peer_id: i64,
    direction: Direction,
    wake: u64,
) -> u64 {
    let mut entry = match PEERS.get(peer_slot(peer_id)) {
        // Plain values; a racing writer (another thread on the same peer)
        // writes the same values.
        Some(p) if p.peer_id == peer_id => *p,
        _ => KnownPeer {
            peer_id,
            cnode: 0,
            named: 0,
        },
    };
    let before = entry;
    let wants_cnode = entry.cnode == 0 && direction == Direction::Outbound && cnode_known();
    if entry.named == 0 || wants_cnode {
        let (Ok(addr), Ok(conn_type)) = (read_arg(ctx, spec, 1), read_arg(ctx, spec, 2)) else {
            count_loss(LossCause::ArgReadFailed);
            return entry.cnode;
        };
        if wants_cnode {
            // The sending side (`CConnman::PushMessage`) keeps the `CNode*`
            // in a register; the receiving side has usually spilled it.
            entry.cnode = find_cnode(ctx, peer_id, addr);
        }
        if entry.named == 0 && name_peer(tid, ktime_ns, peer_id, addr, conn_type, wake) {
            entry.named = 1;
        }
    }
    if entry.cnode != before.cnode || entry.named != before.named {
        if let Some(p) = PEERS.get_ptr_mut(peer_slot(peer_id)) {
            // SAFETY: the slot is a map value; see above for concurrency.
            unsafe { *p = entry };
        }
    }
    entry.cnode
}

/// Writes the [`PeerNameEvent`] of a peer; false when it could not.
#[inline(always)]
fn name_peer(tid: u32, ktime_ns: u64, peer_id: i64, addr: u64, conn_type: u64, wake: u64) -> bool {
    let Some(mut entry) = EVENTS.reserve::<PeerNameEvent>(0) else {
        count_loss(LossCause::RingFullMessage);
        return false;
    };
    // SAFETY: the reserved record is exclusively ours until submit/discard.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = record_header(RecordKind::PeerName, tid, ktime_ns);
    ev.peer_id = peer_id;
    ev._pad = [0; 7];
    let cut = match read_str(addr, &mut ev.addr) {
        Ok(cut) if read_str(conn_type, &mut ev.conn_type).is_ok() => cut,
        _ => {
            count_loss(LossCause::ArgReadFailed);
            entry.discard(0);
            return false;
        }
    };
    ev.flags = if cut { FLAG_ADDR_TRUNCATED } else { 0 };
    entry.submit(wake);
    true
}

/// Whether the payload of this message should be copied. Lookups only where
/// a switch says they can matter: counting alone does none.
#[inline(always)]
fn payload_wanted(peer_id: i64, msg_type: &[u8; MSG_TYPE_LEN]) -> bool {
    let capture = config(ConfigKey::CapturePayloads) != 0;
    let stats = config(ConfigKey::StatsPayloads) != 0;
    let type_filter = config(ConfigKey::MsgTypeFilterActive) != 0;
    let mut type_bits = 0;
    if stats || (capture && type_filter) {
        // SAFETY: values are plain bytes written by userspace.
        type_bits = unsafe { MSG_TYPE_FILTER.get(msg_type) }
            .copied()
            .unwrap_or(0);
    }
    if stats && type_bits & MSG_TYPE_STATS != 0 {
        return true;
    }
    if !capture || (type_filter && type_bits & MSG_TYPE_CAPTURE == 0) {
        return false;
    }
    if config(ConfigKey::PeerPolicyActive) != 0 {
        // SAFETY: as above.
        if let Some(policy) = unsafe { PEER_POLICY.get(peer_id) } {
            return *policy != PEER_POLICY_SKIP_PAYLOAD;
        }
    }
    true
}

/// Writes `len` bytes at user address `data` as chunk records.
#[inline(always)]
fn emit_payload(tid: u32, message_id: u64, data: u64, len: u32) {
    let header = record_header(RecordKind::PayloadChunk, tid, message_id);
    let mut offset: u32 = 0;
    for _ in 0..MAX_CHUNKS {
        if offset >= len {
            return;
        }
        let remaining = len - offset;
        let src = data.wrapping_add(u64::from(offset));
        // One constant-size reservation per class: the verifier only accepts
        // constant reservation sizes.
        let sent = if remaining <= CHUNK_CLASSES[0] as u32 {
            emit_chunk::<{ CHUNK_CLASSES[0] }>(header, message_id, offset, src, remaining)
        } else if remaining <= CHUNK_CLASSES[1] as u32 {
            emit_chunk::<{ CHUNK_CLASSES[1] }>(header, message_id, offset, src, remaining)
        } else {
            emit_chunk::<{ CHUNK_CLASSES[2] }>(header, message_id, offset, src, remaining)
        };
        if !sent {
            // Stop at the first gap: userspace sees fewer chunks than the
            // message announced and reports the message as incomplete.
            return;
        }
        offset += CHUNK_CLASSES[2] as u32;
    }
}

/// A chunk record with room for `CAP` payload bytes.
#[repr(C)]
struct ChunkRecord<const CAP: usize> {
    chunk: PayloadChunk,
    data: [u8; CAP],
}

#[inline(always)]
fn emit_chunk<const CAP: usize>(
    header: RecordHeader,
    message_id: u64,
    offset: u32,
    src: u64,
    remaining: u32,
) -> bool {
    let len = if remaining > CAP as u32 {
        CAP as u32
    } else {
        remaining
    };
    let Some(mut entry) = EVENTS.reserve::<ChunkRecord<CAP>>(0) else {
        count_loss(LossCause::RingFullChunk);
        return false;
    };
    // SAFETY: the reserved record is exclusively ours until submit/discard.
    let record = unsafe { &mut *entry.as_mut_ptr() };
    record.chunk = PayloadChunk {
        header,
        message_id,
        offset,
        len,
    };
    // Re-bound `len` where the verifier can see it next to the copy.
    let n = (len as usize) & (CAP * 2 - 1);
    if n > CAP || n == 0 {
        entry.discard(0);
        return false;
    }
    if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut record.data[..n]) }.is_err() {
        count_loss(LossCause::PayloadReadFailed);
        entry.discard(0);
        return false;
    }
    // Stamped when the copy is done: bitcoind stamps its own capture record
    // right after the tracepoint returns, i.e. after this copy, which for a
    // 4,000,000-byte payload takes milliseconds.
    record.chunk.header.ktime_ns = unsafe { bpf_ktime_get_ns() };
    entry.submit(submit_flags());
    true
}

#[uprobe]
pub fn inbound_connection(ctx: ProbeContext) -> u32 {
    handle_connection(&ctx, ConnectionEventKind::Inbound);
    0
}

#[uprobe]
pub fn outbound_connection(ctx: ProbeContext) -> u32 {
    handle_connection(&ctx, ConnectionEventKind::Outbound);
    0
}

#[uprobe]
pub fn evicted_inbound_connection(ctx: ProbeContext) -> u32 {
    handle_connection(&ctx, ConnectionEventKind::Evicted);
    0
}

#[uprobe]
pub fn closed_connection(ctx: ProbeContext) -> u32 {
    handle_connection(&ctx, ConnectionEventKind::Closed);
    0
}

/// The four connection tracepoints share their arguments: (peer id, addr,
/// conn type, network, count or connect time).
#[inline(always)]
fn handle_connection(ctx: &ProbeContext, kind: ConnectionEventKind) {
    let Some(tid) = target_thread() else { return };
    let Some(spec) = spec_for(ctx) else { return };
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let Some(mut entry) = EVENTS.reserve::<ConnectionEvent>(0) else {
        count_loss(LossCause::RingFullOther);
        return;
    };
    let Some([peer_id, addr, conn_type, network, value]) = read_args::<5>(ctx, spec) else {
        count_loss(LossCause::ArgReadFailed);
        entry.discard(0);
        return;
    };
    // SAFETY: the reserved record is exclusively ours until submit/discard.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = record_header(RecordKind::Connection, tid, ktime_ns);
    ev.peer_id = peer_id as i64;
    ev.value = value;
    ev.bytes_recv = BYTES_UNKNOWN;
    ev.bytes_sent = BYTES_UNKNOWN;
    if matches!(kind, ConnectionEventKind::Closed) {
        // `CNode::CloseSocketDisconnect`: the socket is gone, so the node's
        // byte counters are final; the `CNode` itself lives on a while.
        // SAFETY: plain value read.
        let cnode = match PEERS.get(peer_slot(peer_id as i64)) {
            Some(p) if p.peer_id == peer_id as i64 && p.cnode != 0 => p.cnode,
            _ => find_cnode(ctx, peer_id as i64, addr),
        };
        if cnode != 0 {
            ev.bytes_recv = read_counter(cnode, ConfigKey::CNodeRecvBytesOffset);
            ev.bytes_sent = read_counter(cnode, ConfigKey::CNodeSendBytesOffset);
        }
    }
    ev.network = network as u32;
    ev.event = kind as u8;
    ev._pad = [0; 2];
    let mut flags = 0;
    match read_str(addr, &mut ev.addr) {
        Ok(true) => flags |= FLAG_ADDR_TRUNCATED,
        Ok(false) => {}
        Err(()) => {
            count_loss(LossCause::ArgReadFailed);
            entry.discard(0);
            return;
        }
    }
    ev.flags = flags;
    if read_str(conn_type, &mut ev.conn_type).is_err() {
        count_loss(LossCause::ArgReadFailed);
        entry.discard(0);
        return;
    }
    entry.submit(submit_flags());
    if matches!(kind, ConnectionEventKind::Closed) {
        // The id is never reused by bitcoind; free its slots.
        let peer_id = peer_id as i64;
        let _ = PEER_POLICY.remove(peer_id);
        if let Some(p) = PEERS.get_ptr_mut(peer_slot(peer_id)) {
            // SAFETY: a map value; only this peer's entry is cleared.
            unsafe {
                if (*p).peer_id == peer_id {
                    *p = KnownPeer {
                        peer_id: 0,
                        cnode: 0,
                        named: 0,
                    };
                }
            }
        }
    }
}

/// `net:misbehaving_connection`: (peer id, reason).
#[uprobe]
pub fn misbehaving_connection(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    let Some(spec) = spec_for(&ctx) else { return 0 };
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let Some([peer_id, reason]) = read_args::<2>(&ctx, spec) else {
        count_loss(LossCause::ArgReadFailed);
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve::<MisbehavingEvent>(0) else {
        count_loss(LossCause::RingFullOther);
        return 0;
    };
    // SAFETY: the reserved record is exclusively ours until submit/discard.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = record_header(RecordKind::Misbehaving, tid, ktime_ns);
    ev.peer_id = peer_id as i64;
    if read_str(reason, &mut ev.reason).is_err() {
        count_loss(LossCause::ArgReadFailed);
        entry.discard(0);
        return 0;
    }
    entry.submit(submit_flags());
    0
}

/// Whether userspace gave the `CNode` offsets [`find_cnode`] needs.
#[inline(always)]
fn cnode_known() -> bool {
    config(ConfigKey::CNodeIdOffset) != 0 && config(ConfigKey::CNodeAddrNameOffset) != 0
}

/// The peer's `CNode*` found among the registers at this tracepoint, or 0. A register holds it if the peer id and the address
/// string's data pointer that the tracepoint passed are found in bitcoind's
/// memory at `CNode::id` and `CNode::m_addr_name` from that register: two
/// 8-byte matches, which chance does not produce. Needs the offsets from
/// bitcoind's DWARF ([`ConfigKey::CNodeIdOffset`]).
#[inline(always)]
fn find_cnode(ctx: &ProbeContext, peer_id: i64, addr_ptr: u64) -> u64 {
    if !cnode_known() {
        return 0;
    }
    let id_off = config(ConfigKey::CNodeIdOffset);
    let name_off = config(ConfigKey::CNodeAddrNameOffset);
    // SAFETY: the context is the probed thread's saved registers.
    let regs = unsafe { &*ctx.regs };
    // Callee-saved registers first: a pointer the caller still needs after
    // the tracepoint is kept there.
    let candidates = [
        regs.rbx, regs.rbp, regs.r12, regs.r13, regs.r14, regs.r15, regs.rax, regs.rcx, regs.rdx,
        regs.rsi, regs.rdi, regs.r8, regs.r9, regs.r10, regs.r11,
    ];
    for r in candidates {
        if r < 4096 {
            continue;
        }
        let id = unsafe { bpf_probe_read_user(r.wrapping_add(id_off) as *const i64) };
        if id != Ok(peer_id) {
            continue;
        }
        let name = unsafe { bpf_probe_read_user(r.wrapping_add(name_off) as *const u64) };
        if name == Ok(addr_ptr) {
            return r;
        }
    }
    0
}

/// A `uint64_t` member of the `CNode` at `cnode`, at the offset under `key`;
/// [`BYTES_UNKNOWN`] when the offset is unknown or the read fails.
#[inline(always)]
fn read_counter(cnode: u64, key: ConfigKey) -> u64 {
    let off = config(key);
    if off == 0 {
        return BYTES_UNKNOWN;
    }
    // SAFETY: a read of bitcoind's memory through the checked helper.
    unsafe { bpf_probe_read_user(cnode.wrapping_add(off) as *const u64) }.unwrap_or(BYTES_UNKNOWN)
}

/// `net:*_message` on thread `tid`: closes the thread's open CPU slice and
/// opens the next one, charged to `peer_id`.
///
/// - An inbound message opens a `Processing` slice for its peer, on any
///   thread (the first one makes the thread a message-handling thread).
/// - An outbound message matters only on a message-handling thread. To the
///   peer of the open slice it changes nothing (an answer, or
///   `SendMessages` right after that peer's `ProcessMessages`). To another
///   peer it opens a `Sending` slice (`SendMessages` for that peer), except
///   for `cmpctblock` and `sendcmpct`, which bitcoind pushes to other peers
///   from inside the processing of a block (`NewPoWValidBlock`, choosing
///   high-bandwidth peers), whose work goes on after the push.
#[inline(always)]
fn next_slice(
    tid: u32,
    now: u64,
    peer_id: i64,
    direction: Direction,
    msg_type: &[u8; MSG_TYPE_LEN],
) {
    if !accounting_attached() {
        return;
    }
    let context = THREAD_CONTEXT.get_ptr_mut(tid);
    let kind = match direction {
        Direction::Inbound => SliceKind::Processing,
        Direction::Outbound => {
            let Some(context) = context else { return };
            // SAFETY: a map value of this thread, written only by this thread
            // (and by sched_switch while it is switched out).
            let c = unsafe { &*context };
            if c.peer_id == peer_id
                || (c.slice == SliceKind::Processing as u8 && is_block_relay(msg_type))
            {
                return;
            }
            SliceKind::Sending
        }
    };
    let oncpu = oncpu_now(tid, now);
    match context {
        Some(context) => {
            // SAFETY: as above.
            let c = unsafe { &mut *context };
            emit_slice(tid, c, now, oncpu);
            c.peer_id = peer_id;
            if kind == SliceKind::Processing {
                c.processing_peer = peer_id;
            }
            c.start_ktime_ns = now;
            c.start_oncpu_ns = oncpu;
            c.slept_ns = 0;
            c.sleep_start_ns = 0;
            c.slice = kind as u8;
            c.msg_type = if kind == SliceKind::Processing {
                *msg_type
            } else {
                [0; MSG_TYPE_LEN]
            };
        }
        None => {
            let c = ThreadContext {
                peer_id,
                processing_peer: peer_id,
                start_ktime_ns: now,
                start_oncpu_ns: oncpu,
                slept_ns: 0,
                sleep_start_ns: 0,
                slice: kind as u8,
                _pad: [0; 7],
                msg_type: *msg_type,
            };
            if THREAD_CONTEXT.insert(tid, c, 0).is_err() {
                count_loss(LossCause::MapFull);
            }
        }
    }
}

/// `cmpctblock` or `sendcmpct`, NUL-padded.
#[inline(always)]
fn is_block_relay(msg_type: &[u8; MSG_TYPE_LEN]) -> bool {
    const CMPCTBLOCK: &[u8] = b"cmpctblock\0";
    const SENDCMPCT: &[u8] = b"sendcmpct\0";
    msg_type[..CMPCTBLOCK.len()] == *CMPCTBLOCK || msg_type[..SENDCMPCT.len()] == *SENDCMPCT
}

/// Writes the [`CpuSliceEvent`] of the open slice of `c`, ending at `now`
/// with the thread's on-CPU total `oncpu`.
#[inline(always)]
fn emit_slice(tid: u32, c: &ThreadContext, now: u64, oncpu: u64) {
    let Some(mut entry) = EVENTS.reserve::<CpuSliceEvent>(0) else {
        count_loss(LossCause::RingFullAccounting);
        return;
    };
    let oncpu_ns = if oncpu == ONCPU_UNKNOWN || c.start_oncpu_ns == ONCPU_UNKNOWN {
        ONCPU_UNKNOWN
    } else {
        oncpu.saturating_sub(c.start_oncpu_ns)
    };
    entry.write(CpuSliceEvent {
        header: record_header(RecordKind::CpuSlice, tid, now),
        start_ktime_ns: c.start_ktime_ns,
        oncpu_ns,
        slept_ns: c.slept_ns,
        peer_id: c.peer_id,
        slice: c.slice,
        _pad: [0; 7],
        msg_type: c.msg_type,
    });
    entry.submit(submit_flags());
}

/// The peer whose message the thread took last, or -1 outside a
/// message-handling thread.
#[inline(always)]
fn processing_peer(tid: u32) -> i64 {
    // SAFETY: plain value read.
    match unsafe { THREAD_CONTEXT.get(tid) } {
        Some(c) => c.processing_peer,
        None => -1,
    }
}

/// The thread's on-CPU nanoseconds so far, or [`ONCPU_UNKNOWN`]. Called from
/// the thread itself, so it is on a CPU right now.
#[inline(always)]
fn oncpu_now(tid: u32, now: u64) -> u64 {
    let sum_off = config(ConfigKey::TaskSumExecOffset);
    if sum_off == 0 {
        return ONCPU_UNKNOWN;
    }
    match THREAD_CPU.get_ptr(tid) {
        Some(cpu) => {
            // SAFETY: plain value read.
            let cpu = unsafe { &*cpu };
            cpu.total_ns + now.saturating_sub(cpu.since_ns)
        }
        None => {
            // Not seen switching in since peerlog attached: start from the
            // scheduler's count (stale by at most the time since its last
            // update; every later switch makes it exact).
            let task = unsafe { bpf_get_current_task() };
            // SAFETY: kernel memory at an offset from the kernel's own BTF.
            let Ok(total_ns) = (unsafe { bpf_probe_read_kernel((task + sum_off) as *const u64) })
            else {
                return ONCPU_UNKNOWN;
            };
            let cpu = ThreadCpu {
                total_ns,
                since_ns: now,
                running: 1,
            };
            let _ = THREAD_CPU.insert(tid, cpu, 0);
            total_ns
        }
    }
}

/// Keeps [`THREAD_CPU`] for the target's threads: `sched_switch(preempt,
/// prev, next)` runs on the CPU that switches, in `prev`'s context, after the
/// scheduler brought `prev`'s `sum_exec_runtime` up to date.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let target = config(ConfigKey::TargetTgid) as u32;
    let pid_off = config(ConfigKey::TaskPidOffset);
    let tgid_off = config(ConfigKey::TaskTgidOffset);
    let sum_off = config(ConfigKey::TaskSumExecOffset);
    if target == 0 || pid_off == 0 || sum_off == 0 {
        return 0;
    }
    // Most switches on the machine involve neither thread of the target:
    // they are let go before the clock is read.
    let pid_tgid = bpf_get_current_pid_tgid();
    let prev_is_target = (pid_tgid >> 32) as u32 == target;
    let next: u64 = ctx.arg(2);
    // SAFETY: kernel memory at an offset from the kernel's own BTF.
    let next_tgid = unsafe { bpf_probe_read_kernel((next + tgid_off) as *const i32) };
    let next_is_target = next_tgid == Ok(target as i32);
    if !prev_is_target && !next_is_target {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if prev_is_target {
        let tid = pid_tgid as u32;
        let prev: u64 = ctx.arg(1);
        // SAFETY: as above.
        if let Ok(total_ns) = unsafe { bpf_probe_read_kernel((prev + sum_off) as *const u64) } {
            set_thread_cpu(tid, total_ns, now, 0);
        }
        // `preempt` false: the thread gives up its CPU itself, i.e. it goes
        // to sleep (the message handler waiting for work, or for a lock).
        // Its open slice stays open; the sleep is left out of its wall time.
        let preempt: u64 = ctx.arg(0);
        if preempt & 0xff == 0 {
            if let Some(context) = THREAD_CONTEXT.get_ptr_mut(tid) {
                // SAFETY: the thread's own context; it is switching out, so
                // its probes cannot run now.
                unsafe { (*context).sleep_start_ns = now };
            }
        }
    }
    if !next_is_target {
        return 0;
    }
    // SAFETY: as above.
    let next_tid = unsafe { bpf_probe_read_kernel((next + pid_off) as *const i32) };
    let total_ns = unsafe { bpf_probe_read_kernel((next + sum_off) as *const u64) };
    let (Ok(next_tid), Ok(total_ns)) = (next_tid, total_ns) else {
        return 0;
    };
    set_thread_cpu(next_tid as u32, total_ns, now, 1);
    if let Some(context) = THREAD_CONTEXT.get_ptr_mut(next_tid as u32) {
        // SAFETY: the context of a thread that is not running (it is being
        // switched in), so none of its probes can touch it now.
        let c = unsafe { &mut *context };
        if c.sleep_start_ns != 0 {
            c.slept_ns += now.saturating_sub(c.sleep_start_ns);
            c.sleep_start_ns = 0;
        }
    }
    0
}

/// Records a thread's on-CPU total at a switch: in place when the thread is
/// known (an LRU insert costs a lock and list updates, twice per switch),
/// else as a new entry.
#[inline(always)]
fn set_thread_cpu(tid: u32, total_ns: u64, now: u64, running: u64) {
    let cpu = ThreadCpu {
        total_ns,
        since_ns: now,
        running,
    };
    match THREAD_CPU.get_ptr_mut(tid) {
        // SAFETY: the value of a thread being switched, written only here
        // (its own probes cannot run during the switch).
        Some(slot) => unsafe { *slot = cpu },
        None => {
            if THREAD_CPU.insert(tid, cpu, 0).is_err() {
                count_loss(LossCause::MapFull);
            }
        }
    }
}

/// Reads the 32-byte hash at user address `ptr` into `dst`.
#[inline(always)]
fn read_hash(ptr: u64, dst: &mut [u8; 32]) -> Result<(), ()> {
    unsafe { bpf_probe_read_user_buf(ptr as *const u8, dst) }.map_err(|_| ())
}

/// Reads the first `N` USDT arguments; the caller counts a failure.
#[inline(always)]
fn read_args<const N: usize>(ctx: &ProbeContext, spec: &UsdtSpec) -> Option<[u64; N]> {
    let mut args = [0u64; N];
    for (i, slot) in args.iter_mut().enumerate() {
        *slot = read_arg(ctx, spec, i).ok()?;
    }
    Some(args)
}

#[uprobe]
pub fn mempool_added(ctx: ProbeContext) -> u32 {
    handle_mempool(&ctx, MempoolEventKind::Added);
    0
}

#[uprobe]
pub fn mempool_removed(ctx: ProbeContext) -> u32 {
    handle_mempool(&ctx, MempoolEventKind::Removed);
    0
}

#[uprobe]
pub fn mempool_replaced(ctx: ProbeContext) -> u32 {
    handle_mempool(&ctx, MempoolEventKind::Replaced);
    0
}

#[uprobe]
pub fn mempool_rejected(ctx: ProbeContext) -> u32 {
    handle_mempool(&ctx, MempoolEventKind::Rejected);
    0
}

/// The four mempool tracepoints. Argument order per Bitcoin Core's
/// doc/tracing.md: added (txid, vsize, fee); removed (txid, reason, vsize,
/// fee, entry time); replaced (txid, vsize, fee, entry time, replacement,
/// vsize, fee, is-txid); rejected (txid, reason).
#[inline(always)]
fn handle_mempool(ctx: &ProbeContext, kind: MempoolEventKind) {
    let Some(tid) = target_thread() else { return };
    let Some(spec) = spec_for(ctx) else { return };
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let Some(mut entry) = EVENTS.reserve::<MempoolEvent>(0) else {
        count_loss(LossCause::RingFullAccounting);
        return;
    };
    // SAFETY: the reserved record is exclusively ours until submit/discard.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = record_header(RecordKind::Mempool, tid, ktime_ns);
    ev.peer_id = processing_peer(tid);
    ev.event = kind as u8;
    ev.other_is_txid = 0;
    ev._pad = [0; 6];
    ev.vsize = 0;
    ev.fee = 0;
    ev.other_vsize = 0;
    ev.other_fee = 0;
    ev.entry_time = 0;
    ev.other_txid = [0; 32];
    ev.reason[0] = 0;
    let ok = match kind {
        MempoolEventKind::Added => read_args::<3>(ctx, spec).is_some_and(|[txid, vsize, fee]| {
            ev.vsize = vsize as i64;
            ev.fee = fee as i64;
            read_hash(txid, &mut ev.txid).is_ok()
        }),
        MempoolEventKind::Removed => {
            read_args::<5>(ctx, spec).is_some_and(|[txid, reason, vsize, fee, entry_time]| {
                ev.vsize = vsize as i64;
                ev.fee = fee as i64;
                ev.entry_time = entry_time;
                read_hash(txid, &mut ev.txid).is_ok() && read_str(reason, &mut ev.reason).is_ok()
            })
        }
        MempoolEventKind::Replaced => read_args::<8>(ctx, spec).is_some_and(
            |[txid, vsize, fee, entry_time, other, other_vsize, other_fee, is_txid]| {
                ev.vsize = vsize as i64;
                ev.fee = fee as i64;
                ev.entry_time = entry_time;
                ev.other_vsize = other_vsize as i64;
                ev.other_fee = other_fee as i64;
                ev.other_is_txid = is_txid as u8;
                read_hash(txid, &mut ev.txid).is_ok()
                    && read_hash(other, &mut ev.other_txid).is_ok()
            },
        ),
        MempoolEventKind::Rejected => read_args::<2>(ctx, spec).is_some_and(|[txid, reason]| {
            read_hash(txid, &mut ev.txid).is_ok() && read_str(reason, &mut ev.reason).is_ok()
        }),
    };
    if ok {
        entry.submit(submit_flags());
    } else {
        count_loss(LossCause::ArgReadFailed);
        entry.discard(0);
    }
}

/// `validation:block_connected` (hash, height, tx count, inputs, sigops,
/// connect time in ns).
#[uprobe]
pub fn block_connected(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    let Some(spec) = spec_for(&ctx) else { return 0 };
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let Some([hash, height, tx_count, inputs, sigops, duration]) = read_args::<6>(&ctx, spec)
    else {
        count_loss(LossCause::ArgReadFailed);
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve::<BlockConnectedEvent>(0) else {
        count_loss(LossCause::RingFullAccounting);
        return 0;
    };
    // SAFETY: the reserved record is exclusively ours until submit/discard.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = record_header(RecordKind::BlockConnected, tid, ktime_ns);
    ev.peer_id = processing_peer(tid);
    ev.height = height as i64;
    ev.tx_count = tx_count;
    ev.inputs = inputs as i64;
    ev.sigops = sigops;
    ev.duration_ns = duration;
    if read_hash(hash, &mut ev.hash).is_err() {
        count_loss(LossCause::ArgReadFailed);
        entry.discard(0);
        return 0;
    }
    entry.submit(submit_flags());
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
