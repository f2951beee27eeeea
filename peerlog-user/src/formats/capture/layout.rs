//! Where capture files go: the two directory layouts ([`CaptureLayout`]),
//! the peer and connection directory names, and the file of each
//! [`Direction`].

use peerlog_common::Direction;

use super::CaptureError;

/// File of the messages bitcoind received from the peer.
pub(super) const RECV_FILE_NAME: &str = "msgs_recv.dat";
/// File of the messages bitcoind sent to the peer.
pub(super) const SENT_FILE_NAME: &str = "msgs_sent.dat";
/// The files of a peer, indexed by `usize::from(inbound)`.
pub(super) const FILE_NAMES: [&str; 2] = [SENT_FILE_NAME, RECV_FILE_NAME];

/// The capture file holding messages of this direction.
pub fn file_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => RECV_FILE_NAME,
        Direction::Outbound => SENT_FILE_NAME,
    }
}

/// The directory name bitcoind uses for a peer: its `addr:port` (as
/// `CService::ToStringAddrPort` prints it) with every `:` replaced by `_`.
///
/// `127.0.0.1:18444` → `127.0.0.1_18444`, `[::1]:8333` → `[__1]_8333`.
pub fn peer_dir_name(addr: &str) -> String {
    addr.replace(':', "_")
}

/// The `addr:port` a peer directory name stands for; the inverse of
/// [`peer_dir_name`] for the addresses bitcoind prints.
///
/// The replacement cannot be undone blindly, so this relies on the shapes of
/// `ToStringAddrPort`: a bracketed address (IPv6, CJDNS) had `:` only inside
/// the brackets and before the port (`[__1]_8333` → `[::1]:8333`); every
/// other address (IPv4, Tor, I2P) had exactly one `:`, before the port, so
/// only the last `_` is turned back. None when the name has no numeric port.
pub fn peer_addr_from_dir_name(name: &str) -> Option<String> {
    let is_port = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = name.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        let port = port.strip_prefix('_')?;
        if !is_port(port) || host.is_empty() {
            return None;
        }
        Some(format!("[{}]:{port}", host.replace('_', ":")))
    } else {
        let (host, port) = name.rsplit_once('_')?;
        if !is_port(port) || host.is_empty() {
            return None;
        }
        Some(format!("{host}:{port}"))
    }
}

/// The directory name of one connection in [`CaptureLayout::PerConnection`].
pub(super) fn connection_dir_name((peer_id, connected_at): (i64, u64)) -> String {
    format!("peer{peer_id}-{connected_at}")
}

/// Parses a [`connection_dir_name`] back into (peer id, connect time).
pub(super) fn parse_connection_dir_name(name: &str) -> Option<(i64, u64)> {
    let rest = name.strip_prefix("peer")?;
    // The peer id may in principle be negative ("peer-1-1700000000"), so the
    // separator is the last '-'.
    let (id, secs) = rest.rsplit_once('-')?;
    Some((id.parse().ok()?, secs.parse().ok()?))
}

/// Refuses addresses that would not name exactly one directory below the
/// capture root. bitcoind's addresses never contain these; the check keeps
/// a garbled string from the tracepoint from writing outside the root.
pub(super) fn check_peer_addr(addr: &str) -> Result<(), CaptureError> {
    let reason = if addr.is_empty() {
        Some("it is empty")
    } else if addr.contains('/') || addr.contains('\0') {
        Some("it contains '/' or NUL")
    } else if addr == "." || addr == ".." {
        Some("it is '.' or '..'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CaptureError::InvalidPeerAddr {
            addr: addr.escape_debug().to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// How [`CaptureWriter`](super::CaptureWriter) arranges files under its root directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureLayout {
    /// Exactly bitcoind's: `<root>/<addr_port>/msgs_{recv,sent}.dat`. A later
    /// connection from the same `addr:port` appends to the same files.
    #[value(name = "core")]
    Core,
    /// One directory per connection:
    /// `<root>/<addr_port>/peer<id>-<connect unix secs>/msgs_{recv,sent}.dat`,
    /// so reconnections from the same `addr:port` stay apart.
    #[value(name = "per-connection")]
    PerConnection,
}
