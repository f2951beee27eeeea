//! CPU sampling of the target's threads, for per-peer flamegraphs.
//!
//! [`cpu_sample`] is attached by userspace to one software `cpu-clock` perf
//! event per CPU, for all processes: the only way to sample every thread of
//! bitcoind, including threads it starts after peerlog attached, without a
//! perf event per thread. It keeps the target's threads and, for each sample,
//! copies what a userspace unwinder needs to walk a stack built without frame
//! pointers: the user registers and the user stack from the stack pointer
//! upwards. It adds the peer the thread's open CPU slice is charged to
//! (`THREAD_CONTEXT`) and the thread's name. The record is a [`CpuSample`] followed by the stack bytes.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs,
        },
    },
    macros::{map, perf_event},
    maps::Array,
    programs::PerfEventContext,
};
use peerlog_common::{
    ConfigKey, CpuSample, LossCause, RecordKind, SAMPLE_FLAG_IN_KERNEL, SAMPLE_NO_CONTEXT,
    SAMPLE_STACK_LEN,
};

use crate::{config, count_loss, record_header, submit_flags, EVENTS, THREAD_CONTEXT};

/// A sample as it is assembled before it goes into the ring buffer in one
/// piece, header and stack together.
#[repr(C)]
pub struct SampleBuffer {
    sample: CpuSample,
    stack: [u8; SAMPLE_STACK_LEN],
}

/// One [`SampleBuffer`] per CPU, indexed by CPU number; userspace sizes it to
/// the number of possible CPUs when sampling is on. A per-CPU array cannot
/// hold it (the kernel caps per-CPU values at 32 KiB), and the eBPF stack is
/// 512 bytes. A perf event program never runs nested on one CPU (the kernel
/// skips it while another tracing program runs there), so a CPU's slot has
/// one writer at a time.
#[map]
static SAMPLE_BUFFERS: Array<SampleBuffer> = Array::with_max_entries(1, 0);

/// Stack memory is copied page by page: a copy that crosses into an unmapped
/// page fails as a whole, and the stack's end is not known in advance.
const PAGE: usize = 4096;

/// `cpu-clock` fired on some CPU: if one of the target's threads was running
/// there, send its sample.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let target = config(ConfigKey::TargetTgid) as u32;
    // The event samples every process; never copy another process's stack,
    // not even while the target is not configured yet.
    if target == 0 || (pid_tgid >> 32) as u32 != target {
        return 0;
    }
    let tid = pid_tgid as u32;
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(buffer) = SAMPLE_BUFFERS.get_ptr_mut(cpu) else {
        count_loss(LossCause::RingFullSample);
        return 0;
    };
    // SAFETY: this CPU's slot, written only by this program on this CPU.
    let buffer = unsafe { &mut *buffer };

    // SAFETY: the context of a perf event program is `bpf_perf_event_data`,
    // whose registers the program may read.
    let interrupted = unsafe { &(*ctx.ctx).regs };
    let mut flags = 0u8;
    let (rip, rsp, rbp) = if interrupted.cs & 3 == 0 {
        // Kernel code was interrupted: take the user registers the thread
        // entered the kernel with, so the stack still shows who made the
        // system call.
        flags |= SAMPLE_FLAG_IN_KERNEL;
        match user_regs() {
            Some(regs) => regs,
            None => (0, 0, 0),
        }
    } else {
        (interrupted.rip, interrupted.rsp, interrupted.rbp)
    };

    let sample = &mut buffer.sample;
    sample.header = record_header(RecordKind::CpuSample, tid, unsafe { bpf_ktime_get_ns() });
    sample.rip = rip;
    sample.rsp = rsp;
    sample.rbp = rbp;
    // SAFETY: plain data written by the message tracepoints.
    match unsafe { THREAD_CONTEXT.get(&tid) } {
        Some(context) if context.peer_id >= 0 => {
            sample.peer_id = context.peer_id;
            sample.slice = context.slice;
        }
        _ => {
            sample.peer_id = -1;
            sample.slice = SAMPLE_NO_CONTEXT;
        }
    }
    sample.flags = flags;
    sample._pad = [0; 2];
    sample.thread_name = bpf_get_current_comm().unwrap_or([0; 16]);
    let stack_len = if rsp == 0 {
        0
    } else {
        copy_stack(rsp, stack_bound(rsp), &mut buffer.stack)
    };
    buffer.sample.stack_len = stack_len as u32;

    let len = size_of::<CpuSample>() + stack_len;
    // SAFETY: `len` is at most the size of the slot, which stays valid for
    // the whole run of the program.
    let record = unsafe { core::slice::from_raw_parts(buffer as *const _ as *const u8, len) };
    if EVENTS.output::<[u8]>(record, submit_flags()).is_err() {
        count_loss(LossCause::RingFullSample);
    }
    0
}

/// The user-mode rip, rsp and rbp of the current thread, saved at the top of
/// its kernel stack when it entered the kernel.
#[inline(always)]
fn user_regs() -> Option<(u64, u64, u64)> {
    // SAFETY: helpers that take no user input; the result is only read
    // through bpf_probe_read_kernel, which copes with any address.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return None;
    }
    unsafe {
        Some((
            bpf_probe_read_kernel(&(*regs).rip).ok()?,
            bpf_probe_read_kernel(&(*regs).rsp).ok()?,
            bpf_probe_read_kernel(&(*regs).rbp).ok()?,
        ))
    }
}

/// How many stack bytes above `rsp` can hold frames: up to the thread
/// pointer, where glibc keeps the thread's control block at the top of its
/// stack. Memory above it belongs to something else (often a readable heap
/// mapping), so copying it would only cost time. The main thread's control
/// block is not on its stack; there the copy runs to the end of the stack
/// mapping, or the buffer.
#[inline(always)]
fn stack_bound(rsp: u64) -> usize {
    let offset = config(ConfigKey::TaskFsbaseOffset);
    if offset == 0 {
        return SAMPLE_STACK_LEN;
    }
    // SAFETY: a helper without arguments; the task is only read through
    // bpf_probe_read_kernel, which copes with any address.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let fsbase = task.wrapping_add(offset as usize) as *const u64;
    let Ok(fsbase) = (unsafe { bpf_probe_read_kernel(fsbase) }) else {
        return SAMPLE_STACK_LEN;
    };
    match fsbase.checked_sub(rsp) {
        Some(distance) if distance < SAMPLE_STACK_LEN as u64 => distance as usize,
        _ => SAMPLE_STACK_LEN,
    }
}

/// Copies the user stack from `rsp` upwards into `stack`, a page at a time,
/// until at least `bound` bytes are in, the buffer is full, or the next page
/// cannot be read (the end of the thread's stack mapping). Returns the bytes
/// copied.
#[inline(always)]
fn copy_stack(rsp: u64, bound: usize, stack: &mut [u8; SAMPLE_STACK_LEN]) -> usize {
    let dst = stack.as_mut_ptr();
    // Up to the first page boundary: 1 to PAGE bytes.
    let first = PAGE - (rsp as usize & (PAGE - 1));
    if !read_user(dst, first, rsp) {
        return 0;
    }
    let mut copied = first;
    for _ in 1..SAMPLE_STACK_LEN / PAGE {
        // The second test is for the verifier: `copied + PAGE` stays within
        // the buffer.
        if copied >= bound || copied > SAMPLE_STACK_LEN - PAGE {
            break;
        }
        if !read_user(dst.wrapping_add(copied), PAGE, rsp + copied as u64) {
            break;
        }
        copied += PAGE;
    }
    copied
}

#[inline(always)]
fn read_user(dst: *mut u8, len: usize, src: u64) -> bool {
    // SAFETY: `dst..dst + len` lies in this CPU's sample buffer (see
    // `copy_stack`); the helper validates `src`.
    unsafe { bpf_probe_read_user(dst as *mut c_void, len as u32, src as *const c_void) == 0 }
}
