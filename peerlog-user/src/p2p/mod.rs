//! A small, blocking Bitcoin P2P (v1 transport) client.
//!
//! It exists so that the integration tests can push traffic into a node while
//! peerlog traces it and then compare, byte for byte, what peerlog captured
//! with what this client sent and received. `peerlog replay` and the load
//! generator build on it too, and it must work against a real `bitcoind` on
//! regtest as well as against our twin node.
//!
//! Framing is done here by hand, on raw bytes, rather than through
//! [`RawNetworkMessage`](bitcoin::p2p::message::RawNetworkMessage): tests need to send payloads of any message type
//! (unknown ones included, and payloads of exactly
//! [`MAX_PROTOCOL_MESSAGE_LENGTH`](peerlog_common::MAX_PROTOCOL_MESSAGE_LENGTH) bytes) and compare them byte for byte,
//! which a typed round trip cannot guarantee. The typed layer
//! ([`P2pClient::send`], [`RawMessage::decode`]) sits on top and uses the `bitcoin`
//! crate for the payloads only.
//!
//! The framing functions ([`encode_frame`], [`write_frame`], [`read_frame`],
//! [`FrameReader`]) work over any [`Read`]/[`Write`], so they can be tested
//! with in-memory buffers and reused by a fake peer. [`P2pClient`] wraps a blocking
//! [`TcpStream`]: no async runtime, because a load generator with a hundred
//! threads of this is perfectly fine and much simpler to reason about.
//!
//! The rooms: [`frame`] (the header, checksums, frames read and written),
//! [`transcript`] (what a client sent and received, with times),
//! [`client`] (the connection, the handshake, typed messages) and, for
//! tests only (`cfg(test)` or the `test-fixtures` feature, which the
//! integration tests turn on), `fixtures`: message builders and
//! deterministic transactions. The names below are re-exported so that
//! callers need not know the rooms.

pub mod client;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
pub mod frame;
#[cfg(test)]
mod tests;
pub mod transcript;

pub use client::{user_agent, HandshakeOptions, P2pClient, PROTOCOL_VERSION, WTXID_RELAY_VERSION};
#[cfg(any(test, feature = "test-fixtures"))]
pub use fixtures::*;
pub use frame::{
    checksum, encode_frame, encode_header, read_frame, write_frame, FrameReader, P2pError,
    RawMessage, HEADER_LEN,
};
pub use transcript::{now_micros, Transcript, TranscriptDirection, TranscriptEntry};
