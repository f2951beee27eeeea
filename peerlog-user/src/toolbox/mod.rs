//! The offline commands, which work on captures rather than on a running
//! node: `peerlog show` ([`show`], decoding with [`decode`]), `peerlog
//! stats` ([`analysis`]; the live accounting of a trace is
//! [`crate::stats`]), `peerlog convert` ([`convert`]), `peerlog replay`
//! ([`replay`]), and `peerlog report` ([`report`]), the peer report card of
//! a stats log.

pub mod analysis;
pub mod convert;
pub mod decode;
pub mod replay;
pub mod report;
pub mod show;
