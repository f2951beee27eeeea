//! CPU sampling of the target's threads, for per-peer flamegraphs.
//!
//! [`cpu_sample`] is attached by userspace to one software `cpu-clock` perf
//! event per CPU, for all processes: the only way to sample every thread of
//! bitcoind, including threads it starts after peerlog attached, without a
//! perf event per thread. It keeps the target's threads and walks each
//! sampled stack right here, the way the OpenTelemetry eBPF profiler and
//! Parca do: bitcoind is built without frame pointers, so the callers are
//! found with the unwind rows userspace compiled from the `.eh_frame` of
//! every module ([`UnwindRow`]). Each frame needs only a few stack words (its
//! return address, and the caller's rbp where the frame saved it); they are
//! read from a 1 KiB copy of the stack ([`StackWindow`]) taken with one
//! helper call, and a word outside the copy brings a new copy from there, so
//! frames above a big one (`b-net`'s 64 KiB receive buffer) are still
//! reached. A bitcoind stack spans some 14 KiB but its frames' words
//! cluster, so a walk takes two or three copies where it took a helper read
//! or two per frame (each helper call is dear where AMD's SRSO mitigation
//! makes every kernel return so). The sample is a
//! [`CpuSample`] followed by the program counters, with the peer the
//! thread's open CPU slice is charged to (`THREAD_CONTEXT`), assembled in
//! place in the CPU's [`CpuSampleBatch`], which goes into the ring buffer
//! once it holds a few samples (see there why). Not the
//! thread's name: reading it from the task cost an idle node's sample
//! 0.7 to 0.9 µs (a cold line of the task and a helper call), and userspace
//! reads it from `/proc` once a second per thread.
//!
//! At 99 Hz the caches have forgotten the program's data between two
//! samples, so a sample costs mostly the cache and TLB misses it takes, one
//! after another as each frame needs the one before. Hence one compact
//! scratch area per CPU ([`Scratch`]), a row cache that also serves the
//! innermost frame ([`RowCache`]) and is loaded whole before the walk so
//! that its misses overlap, copies of the last modules found there, and
//! buckets that hold their rows ([`UnwindBucket`]), so that a row the cache
//! misses costs one cache line of the bucket map. On a real bitcoind under
//! a ping flood at 99 Hz, in paired runs, the buckets took a sample from
//! 8.1 to 7.4 µs (one row-cache miss a sample, which had cost a chain of
//! module, index entry and rows).

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_MMAPABLE, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::{map, perf_event},
    maps::Array,
    programs::PerfEventContext,
};
use peerlog_common::{
    cfa, ConfigKey, CpuSample, CpuSampleBatch, CpuSampleBatchHeader, LossCause, PackedRow,
    RecordKind, SamplerCost, UnwindBucket, UnwindModule, UnwindRow, UnwindRowBlock, WalkStop,
    MAX_SAMPLE_FRAMES, MAX_UNWIND_MODULES, RBP_LOST, RBP_SAME, SAMPLE_BATCH_BYTES,
    SAMPLE_BATCH_MAX_AGE_NS, SAMPLE_BATCH_MAX_SAMPLES, SAMPLE_FLAG_COMPLETE, SAMPLE_FLAG_IN_KERNEL,
    SAMPLE_NO_CONTEXT, UNWIND_BUCKET_ROWS, UNWIND_BUCKET_SHIFT, UNWIND_ROWS_PER_BLOCK,
};

use crate::{
    accounting_attached, config, count_loss, count_losses, record_header, EVENTS, THREAD_CONTEXT,
};

/// Everything a CPU writes while it takes a sample, but the sample itself:
/// the copy of the stack, and the rows it found before.
#[repr(C)]
pub struct Scratch {
    window: StackWindow,
    rows: RowCache,
    walk: Walk,
}

/// Each CPU's [`Scratch`], at the index of the CPU; userspace sizes the map
/// to the possible CPUs. A plain array indexed by CPU, not a per-CPU map:
/// per-CPU map values sit in the per-CPU allocator's 4 KiB pages, each map
/// on pages of its own, so that a sample took a TLB miss on each (a
/// two-level page walk in a virtual machine); a plain array is one area. On
/// a real bitcoind at 99 Hz, in one set of paired runs, the one change took
/// a sample from about 9 to 7.5 µs. A perf event program never runs nested
/// on one CPU (the kernel skips it while another tracing program runs
/// there), so each entry has one writer at a time. Where the stack copy
/// starts and how much of it is valid is kept in [`Walk`], so a new sample
/// never trusts an old copy.
///
/// Mmapable, so that the area is vmalloc'd on any machine (peerlog never
/// maps it): the stack copies land here, and where they land decides what
/// the kernel checks. With `CONFIG_HARDENED_USERCOPY` (on in distribution
/// kernels) every `bpf_probe_read_user` checks its destination. Kernel
/// memory outside vmalloc space, where a small array map is kmalloc'd, is
/// checked against its page: `pfn_valid`'s memory section, the `struct
/// page` and the folio's size, lines that are cold at 99 Hz. A vmalloc'd
/// destination is let through at once while page faults are off, as they
/// are in a BPF program. On a real bitcoind, 125 idle peers, 99 Hz, paired
/// 15 s runs, a sample's own time: 4.95 µs against 5.33 with the accounting
/// (medians of 16 pairs), 5.09 against 5.62 without it (10 pairs). Only the
/// stack copy in a mmapable map of its own, the rows left where they were,
/// gained less (5.06 and 5.28 µs against 4.97 and 5.08 in the same runs):
/// its page costs a TLB miss of its own, where this area's pages are
/// loaded with the row cache.
#[map]
static SCRATCH: Array<Scratch> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Each CPU's [`CpuSampleBatch`], at the index of the CPU like [`SCRATCH`]:
/// a sample is assembled in its place there, header and frames, and goes
/// into the ring buffer with the batch. A map of its own so that userspace
/// reads what is left in it, as a type of the ABI, once sampling stopped.
#[map]
static SAMPLE_BATCHES: Array<CpuSampleBatch> = Array::with_max_entries(1, 0);

/// Words of a [`CpuSampleBatch`] one sample may take: its header and the
/// most frames.
const SAMPLE_WORDS: usize = (size_of::<CpuSample>() + MAX_SAMPLE_FRAMES * 8) / 8;
/// Words of samples a batch may hold before the next sample: that one must
/// fit whole behind them.
const BATCH_ROOM_WORDS: usize = SAMPLE_BATCH_BYTES / 8 - SAMPLE_WORDS;
/// Words of a [`CpuSample`] without its frames.
const SAMPLE_HEADER_WORDS: usize = size_of::<CpuSample>() / 8;

/// Each CPU's [`SamplerCost`], at the index of the CPU like [`SCRATCH`]:
/// what the target's samples cost, for the bench and the trace summary.
/// Apart from the scratch so that userspace reads it as a type of the ABI;
/// it costs a sample one line more, written last, when nothing waits on it.
#[map]
static SAMPLER_COST: Array<SamplerCost> = Array::with_max_entries(1, 0);

/// The modules with unwind rows, sorted by address; userspace fills the
/// first [`ConfigKey::UnwindModules`] entries.
#[map]
static UNWIND_MODULES: Array<UnwindModule> = Array::with_max_entries(MAX_UNWIND_MODULES, 0);

/// The unwind rows of all modules, [`UNWIND_ROWS_PER_BLOCK`] to an entry;
/// userspace sizes the map to the rows it compiled.
#[map]
static UNWIND_ROWS: Array<UnwindRowBlock> = Array::with_max_entries(1, 0);

/// Each module's buckets of 256 code bytes ([`UnwindBucket`]); userspace
/// sizes the map. Mmapable only for where its entries start: an array map's
/// values follow the map's header, 312 bytes into the allocation on Linux
/// 6.18, so each 64-byte bucket straddled two cache lines; a mmapable
/// array's values start on a page of their own, so each bucket is the one
/// line a row-cache miss was meant to cost. The map is vmalloc'd either way
/// (megabytes), and peerlog never maps it. On a real bitcoind, idle, 99 Hz,
/// four runs each: a miss cost 0.77 to 0.87 µs against 0.83 to 0.90.
///
/// Most of a bucket's cost is the TLB miss of its 4 KiB page, not its line:
/// timed inside the sampler on a real bitcoind, idle, the bucket's load took
/// 460 to 530 ns, and a load of another line of the same page after it 150
/// to 160 ns. Buckets in maps of at most 32 KiB, which the kernel kmallocs
/// into its linear map, behind an array of maps, cost as much (480 to 590
/// ns): the bucket's load then waits on a second cold line, the outer entry.
#[map]
static UNWIND_BUCKETS: Array<UnwindBucket> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Rows a CPU keeps from its last lookups (a power of two): 256 slots of 16
/// bytes, 4 KiB, which [`warm_row_cache`] loads whole before each walk. On a
/// real bitcoind under a ping flood at 99 Hz, 256 slots with that load cost
/// a sample less than 512 with or without it: a miss costs more there
/// (0.8 a sample against 0.7), but loading twice the lines costs more still.
const ROW_CACHE_LEN: usize = 256;
/// Slots in a 64-byte cache line.
const ROW_CACHE_SLOTS_PER_LINE: usize = 64 / size_of::<CachedRow>();
/// Slots a block of code may take: a set of 64 bytes, so a lookup reads
/// one cache line, or two where the map's values do not start on a line
/// (see [`UNWIND_BUCKETS`]); [`warm_row_cache`] has loaded both.
const ROW_CACHE_WAYS: usize = ROW_CACHE_SLOTS_PER_LINE;
/// Sets of [`ROW_CACHE_WAYS`] slots; a block's set is a hash of its address.
const ROW_CACHE_SETS: usize = ROW_CACHE_LEN / ROW_CACHE_WAYS;
/// A slot holds a row for at most one aligned block of 2^6 code bytes.
const ROW_CACHE_BLOCK_SHIFT: u32 = 6;

/// The part of a row's range that lies in one block of code, and the row's
/// rules (its `pc` is not needed again); `len` 0 is an empty slot.
#[repr(C)]
#[derive(Clone, Copy)]
struct CachedRow {
    start: u64,
    len: u8,
    cfa: u8,
    rbp_offset: i16,
    cfa_offset: i32,
}

/// A CPU's cache of rows by block of code, four ways to a set, the newest
/// first and the oldest out. Direct-mapped, its blocks evicted each other:
/// on a real bitcoind, idle, a sample missed it 3.3 to 3.6 times (each a
/// bucket read, about 1 µs), and 1.2 to 1.4 times with four ways; the rows
/// of one block (a prologue's) also share its set now. Samples return
/// through the same few hundred call sites again and again, and land in the
/// same hot code: a hit reads one slot instead of the module list, a bucket
/// and rows scattered over megabytes of map, each access a likely cache and
/// TLB miss, since samples are too rare to keep them warm. Keyed by block
/// and not by address, so that the innermost frame, which may be at any
/// instruction of a hot loop, hits too. The rows never change after attach,
/// so the cache is never stale.
///
/// One per CPU, not one for all. An idle node's misses are mostly the
/// first lookup of a call site, and a cache shared by two CPUs missed
/// less: 1.2 times a sample against 1.6 (a real bitcoind, 125 idle peers,
/// 99 Hz, 15 s runs on two CPUs). But CPUs then write slots that others
/// read, and a slot read half-written would be a wrong row, so each slot
/// and module copy needs a check of its words. With a multiplicative hash
/// as that check, a sample cost about what it costs here (own time 5.0 µs
/// against 4.9, medians of six runs each). Keyed by 256-byte block instead
/// of 64, the cache missed as often as this one.
///
/// Slots of 16 bytes, the block's address whole. Slots of 8 (the row
/// packed as in a bucket, the block named by its module's index and file
/// address) halve the lines [`warm_row_cache`] loads, but each lookup then
/// first finds its module, and a sample cost more: own time 6.3 µs against
/// 5.8 (medians of 18 runs each, paired, 15 s, a real bitcoind, 125 idle
/// peers, 99 Hz; the 18 of two variants, module copies kept by index or
/// newest first, 6.34 and 6.24 µs apart).
#[repr(C)]
pub struct RowCache {
    slots: [CachedRow; ROW_CACHE_LEN],
    /// Copies of the modules [`find_module`] found last, in slot `index mod
    /// MODULE_CACHE_LEN`, tried before the module map: one line of this
    /// area, loaded with the slots, where the map costs a miss at least
    /// (`rows` 0: an empty slot).
    modules: [UnwindModule; MODULE_CACHE_LEN],
}

/// Modules a CPU keeps copies of: a walk crosses bitcoind, libc and
/// libstdc++, and seldom more.
const MODULE_CACHE_LEN: usize = 4;

/// Halving steps that find a module among [`MAX_UNWIND_MODULES`].
const MODULE_SEARCH_STEPS: usize = 7;
/// Halving steps that find a row among those of one bucket: a bucket holds
/// a handful; 2^16 would be a single function with thousands of rules in
/// 256 bytes.
const ROW_SEARCH_STEPS: usize = 16;

/// Bytes of the target's stack one helper call copies into a [`StackWindow`].
/// Measured on a real bitcoind: 1 KiB copies (about 2.4 per sample) cost
/// less than a read per word, and 4 KiB copies (1.75 per sample) more, as
/// copying stack lines that are no longer in the cache is not free.
const WINDOW_BYTES: usize = 1024;
const WINDOW_WORDS: usize = WINDOW_BYTES / 8;
/// Size of a page: a copy that stops at the end of the page of its first
/// byte never runs into unmapped memory.
const PAGE_BYTES: u64 = 4096;

/// A copy of part of the sampled thread's stack.
#[repr(C)]
pub struct StackWindow {
    words: [u64; WINDOW_WORDS],
}

/// The registers of the frame being unwound, kept in this CPU's
/// [`Scratch`] and not on the program's stack. The verifier tracks what a
/// program keeps on its stack, value by value, and checks a `bpf_loop`
/// callback once for every different state it starts from: with the walk
/// on the stack, each way through a frame (cached row or not, a new copy of
/// the stack or not, rbp known or not) brought the next frame a state of its
/// own, and on one kernel the program exceeded the verifier's million
/// instructions. What a program reads from a map is just a number to the
/// verifier, so every frame starts from the same state, and every bound is
/// checked where it is used anyway.
#[repr(C)]
struct Walk {
    /// Instruction pointer: where the frame is executing (the innermost
    /// frame) or returns to (every other frame).
    pc: u64,
    rsp: u64,
    rbp: u64,
    /// Modules in [`UNWIND_MODULES`].
    modules: u32,
    /// Frames recorded so far.
    frames: u32,
    /// Where this CPU's [`StackWindow`] starts in the target's stack, and
    /// how many of its bytes hold that stack (0: none yet).
    window_base: u64,
    window_len: u32,
    /// Non-zero once a full window could not be read: the stack ends less
    /// than a window above, and later copies stop at page ends.
    window_short: u8,
    /// Non-zero while `rbp` holds the frame's real rbp.
    rbp_known: u8,
    /// A [`WalkStop`].
    stop: u8,
    /// Where in this CPU's [`CpuSampleBatch`] (its word) the first frame
    /// goes; at most [`BATCH_ROOM_WORDS`] plus the sample's header.
    frames_at: u32,
}

/// What `cpu_sample` hands each [`step`]: this CPU's entries, as pointers
/// the verifier knows, where a lookup would cost each frame a map access.
#[repr(C)]
#[derive(Clone, Copy)]
struct StepEntries {
    scratch: *mut Scratch,
    batch: *mut CpuSampleBatch,
}

/// `cpu-clock` fired on some CPU: if one of the target's threads was running
/// there, send its sample.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // From the config map. The link's BPF cookie, a helper call in place of
    // the map's cold line, measured no cheaper on an idle node: 6.78 µs a
    // sample against 6.61 (medians of six paired 15 s runs).
    let target = config(ConfigKey::TargetTgid) as u32;
    // The event samples every process; never read another process's stack,
    // not even while the target is not configured yet.
    if target == 0 || (pid_tgid >> 32) as u32 != target {
        return 0;
    }
    let tid = pid_tgid as u32;
    // The sample's time, and the start of what it costs past the entry.
    // SAFETY: helpers without arguments.
    let start = unsafe { bpf_ktime_get_ns() };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let (Some(scratch), Some(batch)) = (SCRATCH.get_ptr_mut(cpu), SAMPLE_BATCHES.get_ptr_mut(cpu))
    else {
        count_loss(LossCause::RingFullSample);
        return 0;
    };
    // Where this sample goes in the batch. A batch is written out as soon
    // as the next sample might not fit, so this only finds a full batch if
    // the map was written otherwise; it is then written out first.
    // SAFETY: this CPU's entry, written only by this program on this CPU.
    let mut at = unsafe { (*batch).head.len } as usize / 8;
    if at > BATCH_ROOM_WORDS {
        flush_batch(batch);
        at = 0;
    }
    // SAFETY: this CPU's entry, written only by this program on this CPU.
    warm_row_cache(unsafe { &raw const (*scratch).rows });

    // SAFETY: the context of a perf event program is `bpf_perf_event_data`,
    // whose registers the program may read.
    let interrupted = unsafe { &(*ctx.ctx).regs };
    let mut flags = 0u8;
    let (rip, rsp, rbp) = if interrupted.cs & 3 == 0 {
        // Kernel code was interrupted: take the user registers the thread
        // entered the kernel with, so the stack still shows who made the
        // system call.
        flags |= SAMPLE_FLAG_IN_KERNEL;
        user_regs().unwrap_or((0, 0, 0))
    } else {
        (interrupted.rip, interrupted.rsp, interrupted.rbp)
    };

    // SAFETY: this CPU's entry, as above; a raw pointer, since `step`
    // writes the walk through the same entry while `bpf_loop` runs.
    let walk = unsafe { &raw mut (*scratch).walk };
    // SAFETY: as above.
    unsafe {
        *walk = Walk {
            pc: rip,
            rsp,
            rbp,
            modules: config(ConfigKey::UnwindModules) as u32,
            frames: 0,
            window_base: 0,
            window_len: 0,
            window_short: 0,
            rbp_known: 1,
            stop: WalkStop::TooDeep as u8,
            frames_at: (at + SAMPLE_HEADER_WORDS) as u32,
        }
    };
    if rip == 0 || rsp == 0 {
        // SAFETY: as above.
        unsafe { (*walk).stop = WalkStop::ReadFailed as u8 };
    } else {
        let mut entries = StepEntries { scratch, batch };
        // SAFETY: `step` is a static function of this program with the
        // signature bpf_loop expects; `entries` outlives the call.
        unsafe {
            bpf_loop(
                MAX_SAMPLE_FRAMES as u32,
                step as *const () as *mut c_void,
                &mut entries as *mut StepEntries as *mut c_void,
                0,
            )
        };
    }
    // SAFETY: as above; `step` is done with the walk.
    let walk = unsafe { &*walk };
    if walk.stop == WalkStop::ThreadEntry as u8 {
        flags |= SAMPLE_FLAG_COMPLETE;
    }
    let frames = (walk.frames as usize).min(MAX_SAMPLE_FRAMES);

    // The sample's header goes in front of its frames. Where, is read back
    // from the walk and checked here, where it is used: the verifier must
    // see the bound on the very register that indexes the batch.
    let at = (walk.frames_at as usize).wrapping_sub(SAMPLE_HEADER_WORDS);
    if at > BATCH_ROOM_WORDS {
        return 0;
    }
    let Some(slot) = (unsafe { (*batch).words.get_mut(at..at + SAMPLE_HEADER_WORDS) }) else {
        return 0;
    };
    // SAFETY: the slot's words are 8-byte aligned and as long as a
    // `CpuSample`, plain data; `step` is done with the batch.
    let sample = unsafe { &mut *(slot.as_mut_ptr() as *mut CpuSample) };
    sample.header = record_header(RecordKind::CpuSample, tid, start);
    // Without the accounting no thread has a context, and looking for one
    // cost an idle node's sample about 1 µs (a hash and a chain of cold
    // lines of the map) to find nothing.
    let context = if accounting_attached() {
        // SAFETY: plain data written by the message tracepoints.
        unsafe { THREAD_CONTEXT.get(tid) }
    } else {
        None
    };
    match context {
        Some(context) => {
            sample.peer_id = context.peer_id;
            sample.slice = context.slice;
        }
        _ => {
            sample.peer_id = -1;
            sample.slice = SAMPLE_NO_CONTEXT;
        }
    }
    sample.frame_count = frames as u32;
    sample.flags = flags;
    sample.stop = walk.stop;
    sample._pad = 0;

    // SAFETY: this CPU's entry, as above.
    let head = unsafe { &mut (*batch).head };
    if head.count == 0 {
        head.header = record_header(RecordKind::CpuSampleBatch, 0, start);
    }
    head.count += 1;
    let words = at + SAMPLE_HEADER_WORDS + frames;
    head.len = (words * 8) as u32;
    if head.count >= SAMPLE_BATCH_MAX_SAMPLES
        || words > BATCH_ROOM_WORDS
        || start.wrapping_sub(head.header.ktime_ns) >= SAMPLE_BATCH_MAX_AGE_NS
    {
        flush_batch(batch);
    }
    if let Some(cost) = SAMPLER_COST.get_ptr_mut(cpu) {
        // SAFETY: this CPU's entry; the program never runs nested on a CPU,
        // so a plain add loses nothing.
        unsafe {
            (*cost).ns += bpf_ktime_get_ns().wrapping_sub(start);
            (*cost).samples += 1;
        }
    }
    0
}

/// One `bpf_loop` iteration: records the frame the [`Walk`] of `ctx` (a
/// pointer to this CPU's [`Scratch`]) is at and moves it to the caller.
/// Returns 1 to end the walk.
#[inline(never)]
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `cpu_sample` passed, to its
    // pointers to this CPU's entries, used by this program only, never
    // nested.
    let StepEntries { scratch, batch } = unsafe { *(ctx as *const StepEntries) };
    // SAFETY: as above.
    let walk = unsafe { &mut (*scratch).walk };
    // A return address is the instruction after the call; the call itself,
    // one byte earlier, is in the caller's function and under its row, even
    // when the call is the last instruction of the function.
    let lookup = if walk.frames == 0 {
        walk.pc
    } else {
        walk.pc.wrapping_sub(1)
    };
    let n = walk.frames as usize;
    if n >= MAX_SAMPLE_FRAMES {
        return 1;
    }
    // SAFETY: this CPU's entry; the index is checked.
    let Some(frame) = (unsafe { (*batch).words.get_mut(walk.frames_at as usize + n) }) else {
        return 1;
    };
    *frame = lookup;
    walk.frames += 1;
    match unwind(walk, scratch, lookup) {
        Ok(()) => 0,
        Err(stop) => {
            walk.stop = stop as u8;
            1
        }
    }
}

/// Writes this CPU's batch of samples into the ring buffer and empties it;
/// a full ring loses its samples, counted.
#[inline(always)]
fn flush_batch(batch: *mut CpuSampleBatch) {
    // SAFETY: this CPU's entry, written only by this program on this CPU.
    let head = unsafe { &mut (*batch).head };
    let len = size_of::<CpuSampleBatchHeader>() + (head.len as usize).min(SAMPLE_BATCH_BYTES);
    // SAFETY: `len` is at most the size of the entry, which stays valid for
    // the whole run of the program.
    let record = unsafe { core::slice::from_raw_parts(batch as *const u8, len) };
    if EVENTS
        .output::<[u8]>(record, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
    {
        count_losses(LossCause::RingFullSample, u64::from(head.count));
    }
    head.count = 0;
    head.len = 0;
}

/// Moves `walk` from the frame at `lookup` to its caller.
#[inline(always)]
fn unwind(walk: &mut Walk, scratch: *mut Scratch, lookup: u64) -> Result<(), WalkStop> {
    // SAFETY: this CPU's entry, used by this program only, never nested.
    let (window, cache) = unsafe { (&raw mut (*scratch).window, &raw mut (*scratch).rows) };
    let row = cached_row(cache, walk.modules, lookup).unwrap_or(UnwindRow {
        cfa: cfa::NONE,
        ..UnwindRow::default()
    });
    // Where the CFA is, from what. One call of `frame_at` for all rules,
    // so that its stack reads are in the program once: at 99 Hz its code,
    // too, has left the CPU's caches between two samples.
    let (base, offset) = match row.cfa {
        cfa::RSP => (walk.rsp, row.cfa_offset as i64 as u64),
        cfa::RBP => {
            if walk.rbp_known == 0 {
                return Err(WalkStop::RbpLost);
            }
            (walk.rbp, row.cfa_offset as i64 as u64)
        }
        cfa::PLT => {
            let pushed = if (walk.pc & 15) as i32 >= row.cfa_offset {
                8
            } else {
                0
            };
            (walk.rsp, 8 + pushed)
        }
        cfa::END => return Err(WalkStop::ThreadEntry),
        cfa::NONE => {
            // No call frame information: code built with frame pointers
            // (some libraries) is still walked (the frame's rbp points at
            // the caller's saved rbp, under the return address); in
            // bitcoind's own code rbp is an ordinary register and this
            // usually ends the walk, which is then marked incomplete, never
            // guessed complete.
            if walk.rbp_known == 0 || walk.rbp < walk.rsp {
                return Err(WalkStop::NoUnwindInfo);
            }
            (walk.rbp, 16)
        }
        _ => return Err(WalkStop::UnsupportedRule),
    };
    let frame_pointers = row.cfa == cfa::NONE;
    let rbp_offset = if frame_pointers { -16 } else { row.rbp_offset };
    let (cfa, ra, rbp) =
        frame_at(walk, window, base.wrapping_add(offset), rbp_offset).map_err(|stop| {
            if frame_pointers {
                WalkStop::NoUnwindInfo
            } else {
                stop
            }
        })?;
    // The caller's frame lies above its callee's, and a return address is
    // never 0: anything else means the rows do not fit this stack.
    if cfa <= walk.rsp || ra == 0 {
        return Err(WalkStop::BadFrame);
    }
    walk.pc = ra;
    walk.rsp = cfa;
    match rbp {
        Some(rbp) => {
            walk.rbp = rbp;
            walk.rbp_known = 1;
        }
        None if rbp_offset == RBP_LOST => walk.rbp_known = 0,
        None => {}
    }
    Ok(())
}

/// The CFA, return address and (if this frame saved it, `rbp_offset` from
/// the CFA) caller's rbp of a frame whose CFA is `cfa`.
#[inline(always)]
fn frame_at(
    walk: &mut Walk,
    window: *mut StackWindow,
    cfa: u64,
    rbp_offset: i16,
) -> Result<(u64, u64, Option<u64>), WalkStop> {
    if cfa <= walk.rsp {
        return Err(WalkStop::BadFrame);
    }
    let saves_rbp = rbp_offset != RBP_SAME && rbp_offset != RBP_LOST;
    let rbp_at = cfa.wrapping_add(rbp_offset as i64 as u64);
    // A new copy starts at the lower of the two words, so one copy serves
    // both.
    let from = if saves_rbp {
        rbp_at.min(cfa - 8)
    } else {
        cfa - 8
    };
    let ra = stack_word(walk, window, cfa - 8, from).ok_or(WalkStop::ReadFailed)?;
    let rbp = if saves_rbp {
        Some(stack_word(walk, window, rbp_at, from).ok_or(WalkStop::ReadFailed)?)
    } else {
        None
    };
    Ok((cfa, ra, rbp))
}

/// The stack word at `addr`, from this CPU's [`StackWindow`]; when the
/// window does not hold it, the window is first refilled from `from` (at or
/// below `addr`) up. What the helper cannot read is `None`, as before the
/// copy: the walk then ends incomplete.
#[inline(always)]
fn stack_word(walk: &mut Walk, window: *mut StackWindow, addr: u64, from: u64) -> Option<u64> {
    if addr & 7 != 0 {
        // Stack slots are 8-byte aligned; the window is read by words.
        return read_user(addr);
    }
    let offset = addr.wrapping_sub(walk.window_base);
    if offset >= u64::from(walk.window_len) {
        // Start the copy a little below when the frame asks for it, but
        // never so low that `addr` falls out of it.
        let from = if addr - from.min(addr) < (WINDOW_BYTES / 2) as u64 {
            from & !7
        } else {
            addr
        };
        refill(walk, window, from);
    }
    let offset = addr.wrapping_sub(walk.window_base);
    if offset >= u64::from(walk.window_len) {
        // `from` was at the end of its page and `addr` lies on the next one
        // of a stack that ends within a window: one word by itself.
        return read_user(addr);
    }
    let index = (offset >> 3) as usize;
    // SAFETY: this CPU's window, used by this program only, never nested.
    unsafe { (*window).words.get(index).copied() }
}

/// Copies a window of the stack from `from` up into this CPU's
/// [`StackWindow`]. Near the top of a thread's stack a whole window may run
/// past its end: then only the rest of the page of `from` is copied, and for
/// the rest of the walk windows stop at page ends, since each failed copy
/// costs a page fault.
#[inline(always)]
fn refill(walk: &mut Walk, window: *mut StackWindow, from: u64) {
    // SAFETY: the helper writes at most WINDOW_BYTES into this CPU's window
    // and validates `from`.
    let dst = unsafe { (*window).words.as_mut_ptr() } as *mut c_void;
    let to_page_end = PAGE_BYTES - (from & (PAGE_BYTES - 1));
    // Below a window's size, `to_page_end` is masked only to show the
    // verifier the bound it already has.
    let rest_of_page = to_page_end & (WINDOW_BYTES as u64 - 1);
    let mut len = if walk.window_short == 0 || to_page_end >= WINDOW_BYTES as u64 {
        WINDOW_BYTES as u64
    } else {
        rest_of_page
    };
    let mut rc = unsafe { bpf_probe_read_user(dst, len as u32, from as *const c_void) };
    if rc != 0 && len == WINDOW_BYTES as u64 && to_page_end < WINDOW_BYTES as u64 {
        walk.window_short = 1;
        len = rest_of_page;
        rc = unsafe { bpf_probe_read_user(dst, len as u32, from as *const c_void) };
    }
    walk.window_base = from;
    walk.window_len = if rc == 0 { len as u32 } else { 0 };
}

/// Loads every line of this CPU's [`RowCache`] and its module copies. At
/// 99 Hz the cache has left the CPU's caches between two samples, and the
/// walk then takes a miss at nearly every frame, one after the other, since
/// a frame's slot depends on the frame before. These loads depend on
/// nothing, so the CPU overlaps their misses. Measured on a real bitcoind
/// under a ping flood at 99 Hz, paired runs: a sample cost some 15% less
/// (5.0 to 6.7 µs against 5.8 to 8.3); on an idle node, 6.9 against 7.5 µs
/// (means of three pairs).
#[inline(always)]
fn warm_row_cache(cache: *const RowCache) {
    let mut slot = 0;
    while slot < ROW_CACHE_LEN {
        // SAFETY: `slot` is in bounds; volatile, so that the compiler keeps
        // a load whose value is not used.
        unsafe { core::ptr::read_volatile(&raw const (*cache).slots[slot].start) };
        slot += ROW_CACHE_SLOTS_PER_LINE;
    }
    let mut module = 0;
    while module < MODULE_CACHE_LEN {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&raw const (*cache).modules[module].rows) };
        module += 1;
    }
}

/// [`find_row`] through this CPU's [`RowCache`].
#[inline(always)]
fn cached_row(cache: *mut RowCache, modules: u32, avma: u64) -> Option<UnwindRow> {
    let block = avma >> ROW_CACHE_BLOCK_SHIFT;
    let set = ((block ^ (block >> 9)) as usize) & (ROW_CACHE_SETS - 1);
    let first = set * ROW_CACHE_WAYS;
    // Every way is looked at, without an early return: the verifier then
    // walks one path on through a hit, whichever way it was in, instead of
    // one per way (the program then went past its million instructions).
    let mut hit = false;
    let mut row = UnwindRow::default();
    let mut way = 0;
    while way < ROW_CACHE_WAYS {
        // SAFETY: this CPU's cache, used by this program only, never
        // nested; `first + way` is below ROW_CACHE_LEN.
        let cached = unsafe { &(*cache).slots[first + way] };
        if avma.wrapping_sub(cached.start) < u64::from(cached.len) {
            hit = true;
            row.cfa = cached.cfa;
            row.rbp_offset = cached.rbp_offset;
            row.cfa_offset = cached.cfa_offset;
        }
        way += 1;
    }
    if hit {
        return Some(row);
    }
    let (row, start, end) = find_row(cache, modules, avma)?;
    // Only the block's part of the row's range: the set is found by block.
    let block_start = block << ROW_CACHE_BLOCK_SHIFT;
    let start = start.max(block_start);
    let end = end.min(block_start + (1 << ROW_CACHE_BLOCK_SHIFT));
    // The newest row goes first and the oldest of the set out.
    let mut way = ROW_CACHE_WAYS - 1;
    while way > 0 {
        // SAFETY: as above.
        unsafe { (*cache).slots[first + way] = (*cache).slots[first + way - 1] };
        way -= 1;
    }
    // SAFETY: as above.
    unsafe {
        (*cache).slots[first] = CachedRow {
            start,
            // At most the block's 64 bytes.
            len: end.saturating_sub(start) as u8,
            cfa: row.cfa,
            rbp_offset: row.rbp_offset,
            cfa_offset: row.cfa_offset,
        }
    };
    Some(row)
}

/// The module `avma` is in, from this CPU's copies or else the module map
/// (the last of its `modules` entries starting at or below `avma`).
#[inline(always)]
fn find_module(cache: *mut RowCache, modules: u32, avma: u64) -> Option<UnwindModule> {
    let mut i = 0;
    while i < MODULE_CACHE_LEN {
        // SAFETY: this CPU's cache, used by this program only, never nested.
        let m = unsafe { &(*cache).modules[i] };
        if m.rows != 0 && m.start <= avma && avma < m.end {
            return Some(*m);
        }
        i += 1;
    }
    let (mut lo, mut n) = (0u32, modules);
    for _ in 0..MODULE_SEARCH_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        if UNWIND_MODULES.get(lo + half)?.start <= avma {
            lo += half;
        }
        n -= half;
    }
    let module = *UNWIND_MODULES.get(lo)?;
    if lo >= modules || avma < module.start || avma >= module.end || module.rows == 0 {
        return None;
    }
    // SAFETY: as above; the index is masked into bounds.
    unsafe { (*cache).modules[lo as usize % MODULE_CACHE_LEN] = module };
    Some(module)
}

/// The unwind row that covers `avma`, an address in the target, and the
/// range of addresses it covers: from its module's bucket ([`UnwindBucket`])
/// when the bucket holds its rows; else the last row at or below `avma`
/// among those of the table the bucket points at, up to the next row, or
/// the module's end.
#[inline(always)]
fn find_row(cache: *mut RowCache, modules: u32, avma: u64) -> Option<(UnwindRow, u64, u64)> {
    let module = find_module(cache, modules, avma)?;
    let pc = avma.wrapping_sub(module.bias);
    if pc > u64::from(u32::MAX) {
        return None;
    }
    let pc = pc as u32;
    if pc < module.bucket_base {
        return None;
    }
    let bucket_size = 1u32 << UNWIND_BUCKET_SHIFT;
    let index = (pc - module.bucket_base) >> UNWIND_BUCKET_SHIFT;
    let (mut lo, mut n) = if index >= module.buckets {
        // Past the last row's bucket: the last row covers it.
        (module.first_row + module.rows - 1, 1)
    } else {
        let bucket = UNWIND_BUCKETS.get(module.first_bucket + index)?;
        if bucket.packed != 0 {
            let offset = (pc - module.bucket_base) & (bucket_size - 1);
            let bucket_start = avma - u64::from(offset);
            // The last row at or below `offset`, and where the next
            // starts: a loop without early exits, whose paths the
            // verifier can merge.
            let mut found = 0u32;
            let mut have = false;
            let mut end = bucket_size;
            for i in 0..UNWIND_BUCKET_ROWS {
                let bits = bucket.rows[i];
                let start = PackedRow::offset_of(bits);
                if i < usize::from(bucket.packed) {
                    if start <= offset {
                        found = bits;
                        have = true;
                    } else if start < end {
                        end = start;
                    }
                }
            }
            if !have {
                // Below the module's first row.
                return None;
            }
            let row = PackedRow::unpack(found);
            return Some((
                row.row,
                bucket_start + u64::from(row.offset),
                bucket_start + u64::from(end),
            ));
        }
        (bucket.first_row, u32::from(bucket.table_rows))
    };
    for _ in 0..ROW_SEARCH_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        if row_at(lo + half)?.pc <= pc {
            lo += half;
        }
        n -= half;
    }
    let row = row_at(lo)?;
    if row.pc > pc {
        return None;
    }
    let end = if lo + 1 < module.first_row + module.rows {
        // The bias brings a file address back into the target.
        u64::from(row_at(lo + 1)?.pc).wrapping_add(module.bias)
    } else {
        module.end
    };
    Some((row, u64::from(row.pc).wrapping_add(module.bias), end))
}

#[inline(always)]
fn row_at(index: u32) -> Option<UnwindRow> {
    let block = UNWIND_ROWS.get(index / UNWIND_ROWS_PER_BLOCK as u32)?;
    block
        .rows
        .get(index as usize % UNWIND_ROWS_PER_BLOCK)
        .copied()
}

/// The user-mode rip, rsp and rbp of the current thread, saved at the top of
/// its kernel stack when it entered the kernel.
#[inline(always)]
fn user_regs() -> Option<(u64, u64, u64)> {
    // SAFETY: helpers that take no user input.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return None;
    }
    // The helper returns a pointer the verifier knows the kernel type of
    // (BTF): it lets the program load the three fields directly, each load
    // guarded against faults, where a copy through bpf_probe_read_kernel
    // cost a helper call.
    // SAFETY: as above; the verifier checks each load against the type.
    // Volatile, so that the compiler never merges these loads with the
    // same loads from the program's context, which the verifier refuses
    // (one instruction, two kinds of pointer).
    unsafe {
        Some((
            core::ptr::read_volatile(&raw const (*regs).rip),
            core::ptr::read_volatile(&raw const (*regs).rsp),
            core::ptr::read_volatile(&raw const (*regs).rbp),
        ))
    }
}

/// One 8-byte word of the target's stack.
#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    let mut word = 0u64;
    // SAFETY: writes 8 bytes into `word`; the helper validates `addr`.
    let rc = unsafe {
        bpf_probe_read_user(
            &mut word as *mut u64 as *mut c_void,
            8,
            addr as *const c_void,
        )
    };
    (rc == 0).then_some(word)
}
