//! The control plane of a running `peerlog trace`: the JSON-RPC socket,
//! the Prometheus endpoint, and `peerlog ctl`, the command-line client.
//!
//! `peerlog trace` listens on a Unix socket, by default
//! `/run/peerlog/<PID>.sock` where PID is bitcoind's (so `peerlog ctl --pid
//! $(pidof bitcoind)` finds it), mode 0600 in a 0700 directory: only the
//! user that runs peerlog (root) can connect. `--rpc-socket PATH` puts it
//! elsewhere, `--no-rpc` turns it off. A socket already at the path is
//! replaced only if nobody listens on it (a killed peerlog's); anything else
//! there (a file, a directory, a symlink, a live socket) is an error and
//! left alone.
//!
//! The protocol is JSON-RPC 2.0, one request (or batch) per line, one
//! response per line. Methods (schema in docs/stats.md):
//! - `getpeerstats {peers?, msg_types?}`: per-peer figures, shaped like
//!   `getpeerinfo`;
//! - `getnodestats {msg_types?}`: the whole node's figures;
//! - `getstatus`: attached probes, missing figures, uptime, events, losses,
//!   capture settings;
//! - `setcapture {enabled?, peers?, msg_types?}`: turns the capture on or
//!   off and changes which peers and message types it takes;
//! - `help`: the methods.
//!
//! Parameters go by name (an object) or by position (an array, in the
//! order above). The server task only parses and validates; the trace loop
//! owns every figure and switch and answers each request in its `select!`
//! through a oneshot channel, so nothing is shared between threads.
//!
//! The rooms, each depending only on those listed before it:
//! - [`protocol`]: the requests, their parsing and answers, shared by all;
//! - [`metrics`]: the figures in Prometheus' text exposition format;
//! - [`status`]: the answer of `getstatus`;
//! - [`answer`]: the answers of the report queries, from the figures;
//! - [`server`]: the socket and the servers, run inside `peerlog trace`;
//! - [`http`]: the Prometheus endpoint, which only serves;
//! - [`client`]: `peerlog ctl`.

pub mod answer;
pub mod client;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod status;

use std::net::SocketAddr;

use protocol::RpcSocket;

/// Where the control plane of `peerlog trace` listens.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// The control RPC socket.
    pub rpc: RpcSocket,
    /// The Prometheus endpoint's address, if it is on.
    pub metrics: Option<SocketAddr>,
}
