//! Captures as pcapng files that Wireshark and tshark dissect, and back.
//!
//! A capture holds P2P messages, not packets: [`write::write_pcapng`] synthesizes
//! for every peer connection a TCP stream between the peer and the node
//! (handshake, then each message in v1 wire framing — magic, message type,
//! length, checksum — as data segments with consistent sequence and
//! acknowledgement numbers and valid IP and TCP checksums), with the
//! capture's own timestamps. Wireshark's Bitcoin dissector then decodes
//! every message, including those that travelled BIP324-encrypted and that
//! no packet capture could have read.
//!
//! Choices, each so that Wireshark needs no configuration:
//! - Link type `LINKTYPE_RAW` (IPv4 and IPv6 packets without a link layer).
//! - The node's side of every connection is port 8333, Bitcoin's port, and
//!   its address is the documentation address of the peer's family
//!   (192.0.2.1, 2001:db8::1), or the loopback address for a loopback peer:
//!   the capture does not record the node's own address. Wireshark's
//!   dissector finds the streams by their magic (it knows main's, testnet3's
//!   and regtest's); for signet and testnet4, `-d tcp.port==8333,bitcoin`
//!   ("Decode As") covers every stream because of the common port.
//! - A peer without an IP address (Tor, I2P, a host name) gets a stable
//!   address in the OnionCat range fd87:d87e:eb43::/48; its real address is
//!   in the comment of its first packet (`peerlog peer=ADDR`).
//! - Whoever sent the first `version` opened the connection (see
//!   [`crate::formats::timeline::CapturePeer::conn_type`]); the connection is never closed, since
//!   the capture does not say whether it was.
//! - Messages larger than one segment (65,495 bytes, the most an IPv4
//!   packet carries) are split; window scaling is negotiated so that a
//!   4,000,000-byte message fits the window.
//! - Every packet carries the pcapng direction flag, seen from the node:
//!   inbound for what bitcoind received, outbound for what it sent.
//!
//! [`read::read_pcapng`] reads such files back (and pcapng files of real v1
//! traffic): it reassembles the TCP streams, splits them into v1 frames and
//! returns them as capture files, so that every capture command reads
//! pcapng too and `convert --to core` turns it back into Bitcoin Core's
//! format.
//!
//! The rooms: [`block`] holds the pcapng block and option layout both
//! directions share; [`write`] synthesizes the IP/TCP packets; [`read`]
//! reassembles TCP streams into v1 frames. The timeline reader depends on
//! [`read`] and [`write`] on the timeline, so the two stay apart.

pub mod block;
pub mod read;
#[cfg(test)]
mod tests;
pub mod write;
