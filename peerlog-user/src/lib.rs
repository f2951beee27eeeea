//! peerlog: per-peer P2P message capture and resource tracking for a running,
//! unmodified Bitcoin Core `bitcoind`, through its USDT tracepoints and eBPF.
//!
//! Data flows one way: the kernel programs (crate `peerlog-ebpf`) write
//! records into a ring buffer; [`event`] decodes them; [`peer`] keeps the
//! state of every peer; the sinks ([`formats::capture`], [`formats::jsonl`]) write them out.
//! [`trace`] runs that pipeline; [`target`], [`elf::usdt`] and [`attach`] find and
//! attach to the probes of the target; [`cli`] is the command line.

pub mod address;
pub mod args;
pub mod attach;
pub mod cli;
pub mod clock;
pub mod control;
pub mod elf;
pub mod event;
pub mod filter;
pub mod flamegraph;
pub mod formats;
pub mod messages;
pub mod p2p;
pub mod peers;
pub mod private_fs;
pub mod probes;
pub mod stats;
pub mod target;
pub mod toolbox;
pub mod trace;
