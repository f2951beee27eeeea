//! peerlog: per-peer P2P message capture and resource tracking for a running,
//! unmodified Bitcoin Core `bitcoind`, through its USDT tracepoints and eBPF.
//!
//! Data flows one way: the kernel programs (crate `peerlog-ebpf`) write
//! records into a ring buffer; [`event`] decodes them; [`peer`] keeps the
//! state of every peer; the sinks ([`capture`], [`jsonl`]) write them out.
//! [`trace`] runs that pipeline; [`target`], [`usdt`] and [`attach`] find and
//! attach to the probes of the target; [`cli`] is the command line.

pub mod address;
pub mod analysis;
pub mod args;
pub mod attach;
pub mod btf;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod control;
pub mod convert;
pub mod debuginfo;
pub mod decode;
pub mod event;
pub mod filter;
pub mod flamegraph;
pub mod jsonl;
pub mod layout;
pub mod messages;
pub mod p2p;
pub mod pcapng;
pub mod peer;
pub mod private_fs;
pub mod probes;
pub mod replay;
pub mod show;
pub mod stats;
pub mod target;
pub mod timeline;
pub mod trace;
pub mod usdt;
