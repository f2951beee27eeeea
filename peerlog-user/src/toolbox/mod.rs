//! The offline commands, which work on captures rather than on a running
//! node: `peerlog show` ([`show`], decoding with [`decode`]), `peerlog
//! stats` ([`analysis`]; the live accounting of a trace is
//! [`crate::stats`]), `peerlog convert` ([`convert`]) and `peerlog replay`
//! ([`replay`]).

pub mod analysis;
pub mod convert;
pub mod decode;
pub mod replay;
pub mod show;
