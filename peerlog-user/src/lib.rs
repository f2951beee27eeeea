//! peerlog: per-peer P2P message capture and resource tracking for a running,
//! unmodified Bitcoin Core `bitcoind`, through its USDT tracepoints and eBPF.
//!
//! Data flows one way: the kernel programs (crate `peerlog-ebpf`, loaded
//! and attached by [`kernel`]) write records into a ring buffer; [`event`]
//! decodes them; [`peers`] keeps the state of every peer, with the figures
//! of [`stats`] hanging off it; the sinks ([`formats::capture`],
//! [`formats::jsonl`], [`flamegraph`], [`control`]) write them out or answer
//! for them. [`trace`] runs that pipeline; [`node`] and [`elf`] find the
//! traced bitcoind and read its executable; [`cli`] is the command line. See
//! ARCHITECTURE.md.

pub mod address;
pub mod args;
pub mod cli;
pub mod clock;
pub mod control;
pub mod elf;
pub mod event;
pub mod filter;
pub mod flamegraph;
pub mod formats;
pub mod kernel;
pub mod messages;
pub mod node;
pub mod p2p;
pub mod peers;
pub mod private_fs;
pub mod rotation;
pub mod stats;
pub mod toolbox;
pub mod trace;
