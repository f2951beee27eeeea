//! A pure-Rust reader for USDT (SystemTap SDT) probes in x86-64 ELF binaries.
//!
//! Bitcoin Core's tracepoints (`TRACEPOINT(net, inbound_message, ...)` in
//! `util/trace.h`) expand to `sys/sdt.h` probes: a `nop` in the code plus an
//! ELF note in the non-allocated section `.note.stapsdt` that says where the
//! `nop` is, where its semaphore is, and where each argument lives at that
//! instruction (`-8@%r13`, `8@-936(%rbp)`, `-4@$5`, ...).
//!
//! This module turns those notes into what a uprobe needs: the file offset to
//! attach at, the file offset of the semaphore (the uprobe reference counter,
//! which the kernel raises so that Bitcoin Core v29+ actually reaches its
//! probes), and, per argument, a [`peerlog_common::UsdtArgSpec`] the eBPF side
//! interprets. The behaviour follows libbpf's `usdt.c`, which is what
//! `bpftrace` and BCC users get, so a binary that works with those works here.
//!
//! Only x86-64 little-endian ELF64 is supported: the argument syntax and the
//! `struct pt_regs` layout are architecture specific, and peerlog's eBPF side
//! knows only x86-64's.
//!
//! The rooms: [`probe`] (what a probe and its arguments are, and the
//! argument syntax), [`notes`] (finding the notes in the ELF file and
//! turning addresses into file offsets).

pub mod notes;
pub mod probe;
#[cfg(test)]
mod tests;

pub use notes::{read_probes, read_probes_lenient};
pub use probe::{UsdtError, UsdtProbe};
