//! Peer addresses as bitcoind names them (`host:port`, `[v6]:port`).
//!
//! The peer table, the peer filter and the pcapng writer all read these
//! strings; this module is their one parser, below all three.

/// Splits `host:port`, `[v6]:port` or a bare host into host and port.
pub fn split_host_port(addr: &str) -> (&str, Option<u16>) {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (addr, None),
    }
}
