//! peerlog's kernel side: eBPF programs on bitcoind's `net:*` USDT tracepoints.
//!
//! Every program is attached by userspace once per probe site, with the site's
//! index in [`USDT_SPECS`] as BPF cookie: the argument locations differ from
//! build to build (registers, stack slots), so they are read at run time from
//! the spec the userspace USDT parser wrote, the way libbpf's `usdt.bpf.h`
//! does. Records go to one ring buffer, in the layouts of `peerlog-common`.
//! Nothing is dropped silently: every failure increments a loss counter.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes, generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
    EbpfContext,
};
use peerlog_common::{
    ConfigKey, ConnectionEvent, ConnectionEventKind, Direction, LossCause, MessageEvent,
    MisbehavingEvent, PayloadChunk, RecordHeader, RecordKind, UsdtArgKind, UsdtSpec, ABI_VERSION,
    CHUNK_CLASSES, CONFIG_ENTRIES, FLAG_ADDR_TRUNCATED, FLAG_PAYLOAD_OVERSIZED,
    FLAG_PAYLOAD_SKIPPED, LOSS_CAUSES, MAX_CHUNKS, MAX_MSG_TYPE_FILTER, MAX_PEERS,
    MAX_PROTOCOL_MESSAGE_LENGTH, MAX_USDT_SPECS, MSG_TYPE_LEN, PEER_POLICY_SKIP_PAYLOAD,
};

/// The one ring buffer every record goes to, so userspace sees them in the
/// order they were written. Userspace resizes it at load time (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(64 << 20, 0);

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

/// Loss counters, indexed by [`LossCause`]; per CPU so counting never contends.
#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_CAUSES, 0);

#[inline(always)]
fn count_loss(cause: LossCause) {
    if let Some(counter) = LOSSES.get_ptr_mut(cause as u32) {
        // SAFETY: a per-CPU slot; a preempting run on this CPU can at worst
        // make the count one short, never corrupt memory.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn config(key: ConfigKey) -> u64 {
    CONFIG.get(key as u32).copied().unwrap_or(0)
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
        // The register's offset in pt_regs comes from the map, so it is not a
        // constant the verifier would allow for a direct context access; a
        // kernel read of the context memory is (libbpf does the same).
        let reg_ptr = (ctx.as_ptr() as *const u8).wrapping_add(arg.reg_off as usize);
        let reg = unsafe { bpf_probe_read_kernel(reg_ptr as *const u64) }.map_err(|_| ())?;
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
fn record_header(kind: RecordKind, tid: u32, ktime_ns: u64) -> RecordHeader {
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
/// type, msg type, size, data). Writes a [`MessageEvent`] and, unless the
/// payload is filtered out, the payload as [`PayloadChunk`]s.
#[inline(always)]
fn handle_message(ctx: &ProbeContext, direction: Direction) {
    let Some(tid) = target_thread() else { return };
    let Some(spec) = spec_for(ctx) else { return };
    let ktime_ns = unsafe { bpf_ktime_get_ns() };

    let Some(mut entry) = EVENTS.reserve::<MessageEvent>(0) else {
        count_loss(LossCause::RingFullMessage);
        return;
    };
    let event = entry.as_mut_ptr();
    let mut args = [0u64; 6];
    for (i, slot) in args.iter_mut().enumerate() {
        match read_arg(ctx, spec, i) {
            Ok(v) => *slot = v,
            Err(()) => {
                count_loss(LossCause::ArgReadFailed);
                entry.discard(0);
                return;
            }
        }
    }
    let [peer_id, addr, conn_type, msg_type, size, data] = args;

    // SAFETY: `event` points to the reserved, exclusively owned record.
    let ev = unsafe { &mut *event };
    ev.header = record_header(RecordKind::Message, tid, ktime_ns);
    ev.message_id = ktime_ns;
    ev.peer_id = peer_id as i64;
    ev.payload_size = size;
    ev.direction = direction as u8;
    ev._pad = [0; 2];
    let mut flags = 0u8;
    let strings_ok = match read_str(addr, &mut ev.addr) {
        Ok(cut) => {
            if cut {
                flags |= FLAG_ADDR_TRUNCATED;
            }
            read_str(conn_type, &mut ev.conn_type).is_ok()
                && read_str(msg_type, &mut ev.msg_type).is_ok()
        }
        Err(()) => false,
    };
    if !strings_ok {
        count_loss(LossCause::ArgReadFailed);
        entry.discard(0);
        return;
    }

    let mut copy_len = size;
    if copy_len > MAX_PROTOCOL_MESSAGE_LENGTH {
        // Bitcoin Core never hands over more; if a build ever does, copy the
        // protocol maximum and say so rather than loop without bound.
        copy_len = MAX_PROTOCOL_MESSAGE_LENGTH;
        flags |= FLAG_PAYLOAD_OVERSIZED;
    }
    if !payload_wanted(ev.peer_id, &ev.msg_type) {
        flags |= FLAG_PAYLOAD_SKIPPED;
        copy_len = 0;
    }
    let chunks = copy_len.div_ceil(CHUNK_CLASSES[2] as u64) as u32;
    ev.flags = flags;
    ev.chunks = chunks;
    entry.submit(0);

    emit_payload(tid, ktime_ns, data, copy_len as u32);
}

/// Whether the payload of this message should be copied.
#[inline(always)]
fn payload_wanted(peer_id: i64, msg_type: &[u8; MSG_TYPE_LEN]) -> bool {
    if config(ConfigKey::CapturePayloads) == 0 {
        return false;
    }
    // SAFETY: values are plain bytes written by userspace.
    if let Some(policy) = unsafe { PEER_POLICY.get(&peer_id) } {
        if *policy == PEER_POLICY_SKIP_PAYLOAD {
            return false;
        }
    }
    if config(ConfigKey::MsgTypeFilterActive) != 0 {
        return unsafe { MSG_TYPE_FILTER.get(msg_type) }.is_some();
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
    entry.submit(0);
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
    let mut args = [0u64; 5];
    for (i, slot) in args.iter_mut().enumerate() {
        match read_arg(ctx, spec, i) {
            Ok(v) => *slot = v,
            Err(()) => {
                count_loss(LossCause::ArgReadFailed);
                entry.discard(0);
                return;
            }
        }
    }
    let [peer_id, addr, conn_type, network, value] = args;
    // SAFETY: the reserved record is exclusively ours until submit/discard.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = record_header(RecordKind::Connection, tid, ktime_ns);
    ev.peer_id = peer_id as i64;
    ev.value = value;
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
    entry.submit(0);
    if matches!(kind, ConnectionEventKind::Closed) {
        // The id is never reused by bitcoind; free the slot.
        let _ = PEER_POLICY.remove(&(peer_id as i64));
    }
}

/// `net:misbehaving_connection`: (peer id, reason).
#[uprobe]
pub fn misbehaving_connection(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    let Some(spec) = spec_for(&ctx) else { return 0 };
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let (Ok(peer_id), Ok(reason)) = (read_arg(&ctx, spec, 0), read_arg(&ctx, spec, 1)) else {
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
    entry.submit(0);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
