//! peerlog: per-peer P2P message capture and resource tracking for a running,
//! unmodified Bitcoin Core `bitcoind`, through its USDT tracepoints and eBPF.
//!
//! Data flows one way: the kernel programs (crate `peerlog-ebpf`) write
//! records into a ring buffer; [`event`] decodes them; [`peer`] keeps the
//! state of every peer; the sinks ([`capture`], [`jsonl`]) write them out.

pub mod capture;
pub mod p2p;
pub mod usdt;
