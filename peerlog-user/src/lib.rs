//! peerlog: per-peer P2P message capture and resource tracking for a running,
//! unmodified Bitcoin Core `bitcoind`, through its USDT tracepoints and eBPF.
//!
//! Data flows one way: the kernel programs (crate `peerlog-ebpf`) write
//! records into a ring buffer; [`event`] decodes them; [`peer`] keeps the
//! state of every peer; the sinks ([`capture`], [`jsonl`]) write them out.
//! [`trace`] runs that pipeline; [`target`], [`usdt`] and [`attach`] find and
//! attach to the probes of the target; [`cli`] is the command line.

pub mod attach;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod event;
pub mod filter;
pub mod jsonl;
pub mod p2p;
pub mod peer;
pub mod probes;
pub mod target;
pub mod trace;
pub mod usdt;
