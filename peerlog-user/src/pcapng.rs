//! Captures as pcapng files that Wireshark and tshark dissect, and back.
//!
//! A capture holds P2P messages, not packets: [`write_pcapng`] synthesizes
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
//!   [`CapturePeer::conn_type`]); the connection is never closed, since
//!   the capture does not say whether it was.
//! - Messages larger than one segment (65,495 bytes, the most an IPv4
//!   packet carries) are split; window scaling is negotiated so that a
//!   4,000,000-byte message fits the window.
//! - Every packet carries the pcapng direction flag, seen from the node:
//!   inbound for what bitcoind received, outbound for what it sent.
//!
//! [`read_pcapng`] reads such files back (and pcapng files of real v1
//! traffic): it reassembles the TCP streams, splits them into v1 frames and
//! returns them as capture files, so that every capture command reads
//! pcapng too and `convert --to core` turns it back into Bitcoin Core's
//! format.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::p2p::Magic;
use bitcoin::Network;

use crate::capture::{CaptureFile, CaptureRecord, Direction, TruncatedRecord, MESSAGE_TYPE_SIZE};
use crate::filter::split_host_port;
use crate::p2p::{checksum, encode_frame, HEADER_LEN, MAX_PROTOCOL_MESSAGE_LENGTH};
use crate::timeline::{CaptureMessage, CapturePeer, Timeline};

/// The first four bytes of a pcapng file: the Section Header Block type.
pub const SECTION_HEADER_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

const BLOCK_SECTION_HEADER: u32 = 0x0a0d_0d0a;
const BLOCK_INTERFACE_DESCRIPTION: u32 = 1;
const BLOCK_ENHANCED_PACKET: u32 = 6;
/// Byte-order magic of the Section Header Block.
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
/// `epb_flags` direction bits: received by, or sent from, the node.
const EPB_INBOUND: u32 = 1;
const EPB_OUTBOUND: u32 = 2;

/// Link types read and written (tcpdump.org's LINKTYPE_* values).
const LINKTYPE_NULL: u16 = 0;
const LINKTYPE_ETHERNET: u16 = 1;
const LINKTYPE_RAW: u16 = 101;
const LINKTYPE_LINUX_SLL: u16 = 113;
const LINKTYPE_IPV4: u16 = 228;
const LINKTYPE_IPV6: u16 = 229;

/// The node's TCP port in synthesized streams: Bitcoin's, and the same for
/// every stream so that one "Decode As" rule covers them all.
const NODE_PORT: u16 = 8333;
/// Largest TCP payload per segment: an IPv4 packet (65,535 bytes) less the
/// IPv4 and TCP headers.
const MAX_SEGMENT: usize = 65_535 - 20 - 20;
/// Window scale shift negotiated in the handshake: 65,535 << 7 ≈ 8 MiB,
/// room for the largest message.
const WINDOW_SHIFT: u8 = 7;
/// A receiver acknowledges once this much of the other side's data is
/// unacknowledged (half the scaled window), as a real TCP would long before
/// the window fills.
const ACK_EVERY: u32 = (65_535 << WINDOW_SHIFT) / 2;

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// What [`write_pcapng`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PcapngSummary {
    /// Synthesized TCP connections (one per peer connection).
    pub connections: u64,
    /// P2P messages written.
    pub messages: u64,
    /// Packets written (handshakes, acknowledgements, data segments).
    pub packets: u64,
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Appends one pcapng option, padded to 32 bits.
fn put_option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Writes one block: type, total length, body padded to 32 bits, total length.
fn write_block<W: Write>(out: &mut W, block_type: u32, body: &[u8]) -> io::Result<()> {
    let padded = body.len().next_multiple_of(4);
    let total = u32::try_from(12 + padded)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pcapng block too large"))?;
    out.write_all(&block_type.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&[0u8; 3][..padded - body.len()])?;
    out.write_all(&total.to_le_bytes())
}

/// The address a peer had in its directory name, or a stable stand-in in
/// fd87:d87e:eb43::/48 for names that are not IP addresses.
fn peer_endpoint(addr: &str) -> SocketAddr {
    let (host, port) = split_host_port(addr);
    let digest = sha256::Hash::hash(addr.as_bytes()).to_byte_array();
    // An address without a port (a directory not named like bitcoind's)
    // still needs one; derive an ephemeral one from the name.
    let port = port.unwrap_or(49_152 + u16::from_le_bytes([digest[0], digest[1]]) % 16_384);
    let ip = host.parse::<IpAddr>().unwrap_or_else(|_| {
        let mut octets = [0u8; 16];
        octets[..6].copy_from_slice(&[0xfd, 0x87, 0xd8, 0x7e, 0xeb, 0x43]);
        octets[6..].copy_from_slice(&digest[2..12]);
        IpAddr::V6(Ipv6Addr::from(octets))
    });
    SocketAddr::new(ip, port)
}

/// The node's end of a connection with `peer`: see the module documentation.
fn node_endpoint(peer: SocketAddr) -> SocketAddr {
    let ip = match peer.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    };
    // A loopback peer on port 8333 itself: keep the two ends apart.
    let port = if ip == peer.ip() && peer.port() == NODE_PORT {
        NODE_PORT + 1
    } else {
        NODE_PORT
    };
    SocketAddr::new(ip, port)
}

/// The Internet checksum (RFC 1071) of `parts`, concatenated.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u64;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One TCP segment in an IP packet, checksums filled in.
struct Segment<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    options: &'a [u8],
    payload: &'a [u8],
}

impl Segment<'_> {
    fn packet(&self) -> Vec<u8> {
        let tcp_len = 20 + self.options.len() + self.payload.len();
        let mut tcp = Vec::with_capacity(tcp_len);
        tcp.extend_from_slice(&self.src.port().to_be_bytes());
        tcp.extend_from_slice(&self.dst.port().to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push((((20 + self.options.len()) / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&u16::MAX.to_be_bytes()); // window
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(self.options);
        tcp.extend_from_slice(self.payload);
        let (pseudo, mut packet) = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut pseudo = Vec::with_capacity(12);
                pseudo.extend_from_slice(&src.octets());
                pseudo.extend_from_slice(&dst.octets());
                pseudo.extend_from_slice(&[0, 6]);
                pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                let mut ip = Vec::with_capacity(20 + tcp_len);
                ip.push(0x45); // version 4, 5 words of header
                ip.push(0);
                ip.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
                ip.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
                ip.extend_from_slice(&[64, 6, 0, 0]); // ttl, TCP, checksum
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                let sum = internet_checksum(&[&ip]);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                (pseudo, ip)
            }
            (src, dst) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V6(v6) => v6.octets(),
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                };
                let (src, dst) = (v6(src), v6(dst));
                let mut pseudo = Vec::with_capacity(40);
                pseudo.extend_from_slice(&src);
                pseudo.extend_from_slice(&dst);
                pseudo.extend_from_slice(&(tcp_len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 6]);
                let mut ip = Vec::with_capacity(40 + tcp_len);
                ip.extend_from_slice(&[0x60, 0, 0, 0]); // version 6
                ip.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                ip.extend_from_slice(&[6, 64]); // next header TCP, hop limit
                ip.extend_from_slice(&src);
                ip.extend_from_slice(&dst);
                (pseudo, ip)
            }
        };
        let sum = internet_checksum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        packet.extend_from_slice(&tcp);
        packet
    }
}

/// One synthesized TCP connection.
struct Stream {
    peer: SocketAddr,
    node: SocketAddr,
    /// Next sequence number the peer and the node send.
    peer_seq: u32,
    node_seq: u32,
    /// Bytes each side sent that the other has not acknowledged yet.
    peer_unacked: u32,
    node_unacked: u32,
}

/// Writes pcapng packets, counting them.
struct PacketWriter<W> {
    out: W,
    summary: PcapngSummary,
}

impl<W: Write> PacketWriter<W> {
    fn packet(
        &mut self,
        time_micros: u64,
        inbound: bool,
        packet: &[u8],
        comment: Option<&str>,
    ) -> io::Result<()> {
        let len = packet.len() as u32;
        let mut body = Vec::with_capacity(20 + packet.len() + 32);
        body.extend_from_slice(&0u32.to_le_bytes()); // interface
        body.extend_from_slice(&((time_micros >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(time_micros as u32).to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(packet);
        body.resize(body.len().next_multiple_of(4), 0);
        if let Some(comment) = comment {
            put_option(&mut body, OPT_COMMENT, comment.as_bytes());
        }
        let flags = if inbound { EPB_INBOUND } else { EPB_OUTBOUND };
        put_option(&mut body, EPB_FLAGS, &flags.to_le_bytes());
        put_option(&mut body, OPT_END, &[]);
        self.summary.packets += 1;
        write_block(&mut self.out, BLOCK_ENHANCED_PACKET, &body)
    }
}

/// The comment on a connection's first packet, which [`read_pcapng`] reads
/// to restore what IP addresses cannot say.
fn connection_comment(peer: &CapturePeer) -> String {
    let mut comment = format!("peerlog peer={}", peer.addr);
    if let Some((id, connected_at)) = peer.connection {
        let _ = write!(comment, " connection=peer{id}-{connected_at}");
    }
    comment
}

/// Writes `timeline` as pcapng to `out`, in v1 framing with `network`'s
/// magic (see the module documentation). Returns what was written.
pub fn write_pcapng<W: Write>(
    timeline: &Timeline,
    network: Network,
    out: W,
) -> Result<PcapngSummary> {
    let magic = Magic::from(network);
    let mut writer = PacketWriter {
        out,
        summary: PcapngSummary::default(),
    };
    let mut shb = Vec::new();
    shb.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes()); // major version
    shb.extend_from_slice(&0u16.to_le_bytes()); // minor version
    shb.extend_from_slice(&(-1i64).to_le_bytes()); // section length: not given
    let app = format!("peerlog {}", env!("CARGO_PKG_VERSION"));
    put_option(&mut shb, SHB_USERAPPL, app.as_bytes());
    put_option(&mut shb, OPT_END, &[]);
    write_block(&mut writer.out, BLOCK_SECTION_HEADER, &shb)?;

    let mut idb = Vec::new();
    idb.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes()); // reserved
    idb.extend_from_slice(&0u32.to_le_bytes()); // snap length: unlimited
    put_option(&mut idb, IF_NAME, b"peerlog");
    put_option(&mut idb, IF_TSRESOL, &[6]); // microseconds, the capture's unit
    put_option(&mut idb, OPT_END, &[]);
    write_block(&mut writer.out, BLOCK_INTERFACE_DESCRIPTION, &idb)?;

    let mut streams: Vec<Option<Stream>> = (0..timeline.peers.len()).map(|_| None).collect();
    for message in &timeline.messages {
        let stream = match &mut streams[message.peer] {
            Some(stream) => stream,
            slot => {
                let peer = &timeline.peers[message.peer];
                let stream = open_stream(&mut writer, peer, message)?;
                writer.summary.connections += 1;
                slot.insert(stream)
            }
        };
        write_message(&mut writer, stream, magic, message)?;
        writer.summary.messages += 1;
    }
    writer.out.flush()?;
    Ok(writer.summary)
}

/// Writes the three-way handshake of a connection, opened by whoever sent
/// the first `version` (the peer when unknown), at the time of its first
/// message.
fn open_stream<W: Write>(
    writer: &mut PacketWriter<W>,
    peer: &CapturePeer,
    first: &CaptureMessage,
) -> Result<Stream> {
    let peer_addr = peer_endpoint(&peer.addr);
    let node_addr = node_endpoint(peer_addr);
    let comment = connection_comment(peer);
    // Stable initial sequence numbers, different per connection.
    let seed = sha256::Hash::hash(comment.as_bytes()).to_byte_array();
    let peer_isn = u32::from_le_bytes(seed[..4].try_into().expect("4 bytes"));
    let node_isn = u32::from_le_bytes(seed[4..8].try_into().expect("4 bytes"));
    let time = first.record.time_micros;

    // MSS, window scale, end of options.
    let mut options = vec![2, 4];
    options.extend_from_slice(&(MAX_SEGMENT as u16).to_be_bytes());
    options.extend_from_slice(&[3, 3, WINDOW_SHIFT, 0]);
    let peer_opens = peer.conn_type != "outbound";
    let (client, server, client_isn, server_isn) = if peer_opens {
        (peer_addr, node_addr, peer_isn, node_isn)
    } else {
        (node_addr, peer_addr, node_isn, peer_isn)
    };
    let handshake = [
        (client, server, client_isn, 0, TCP_SYN),
        (
            server,
            client,
            server_isn,
            client_isn.wrapping_add(1),
            TCP_SYN | TCP_ACK,
        ),
        (
            client,
            server,
            client_isn.wrapping_add(1),
            server_isn.wrapping_add(1),
            TCP_ACK,
        ),
    ];
    for (i, (src, dst, seq, ack, flags)) in handshake.into_iter().enumerate() {
        let segment = Segment {
            src,
            dst,
            seq,
            ack,
            flags,
            options: if flags & TCP_SYN != 0 { &options } else { &[] },
            payload: &[],
        };
        let inbound = src == peer_addr;
        writer.packet(
            time,
            inbound,
            &segment.packet(),
            (i == 0).then_some(comment.as_str()),
        )?;
    }
    Ok(Stream {
        peer: peer_addr,
        node: node_addr,
        peer_seq: peer_isn.wrapping_add(1),
        node_seq: node_isn.wrapping_add(1),
        peer_unacked: 0,
        node_unacked: 0,
    })
}

/// Writes one message as data segments, and an acknowledgement from the
/// other side when its unacknowledged data passes [`ACK_EVERY`].
fn write_message<W: Write>(
    writer: &mut PacketWriter<W>,
    stream: &mut Stream,
    magic: Magic,
    message: &CaptureMessage,
) -> Result<()> {
    let record = &message.record;
    let frame = encode_frame(magic, &record.msg_type, &record.payload)
        .with_context(|| format!("cannot frame a {} message", record.msg_type))?;
    let inbound = message.direction == Direction::Recv;
    let time = record.time_micros;
    let chunks: Vec<&[u8]> = frame.chunks(MAX_SEGMENT).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = TCP_ACK | if last { TCP_PSH } else { 0 };
        let (src, dst, seq, ack) = if inbound {
            (stream.peer, stream.node, stream.peer_seq, stream.node_seq)
        } else {
            (stream.node, stream.peer, stream.node_seq, stream.peer_seq)
        };
        let segment = Segment {
            src,
            dst,
            seq,
            ack,
            flags,
            options: &[],
            payload: chunk,
        };
        writer.packet(time, inbound, &segment.packet(), None)?;
        let len = chunk.len() as u32;
        // Sending carries an acknowledgement of all the other side sent.
        if inbound {
            stream.peer_seq = stream.peer_seq.wrapping_add(len);
            stream.peer_unacked += len;
            stream.node_unacked = 0;
        } else {
            stream.node_seq = stream.node_seq.wrapping_add(len);
            stream.node_unacked += len;
            stream.peer_unacked = 0;
        }
        let unacked = if inbound {
            &mut stream.peer_unacked
        } else {
            &mut stream.node_unacked
        };
        if *unacked >= ACK_EVERY {
            *unacked = 0;
            let ack = Segment {
                src: dst,
                dst: src,
                seq: ack,
                ack: seq.wrapping_add(len),
                flags: TCP_ACK,
                options: &[],
                payload: &[],
            };
            writer.packet(time, !inbound, &ack.packet(), None)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Little- or big-endian field reads, as the section's byte-order magic says.
#[derive(Clone, Copy)]
struct Endian {
    big: bool,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }
}

/// One interface of a section: how to read its packets and timestamps.
#[derive(Clone, Copy)]
struct Interface {
    link_type: u16,
    /// Timestamp units per second.
    units_per_second: u64,
}

/// A TCP segment taken out of a packet.
struct TcpSegment<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    flags: u8,
    payload: &'a [u8],
}

/// The IP packet inside a link-layer frame, if it carries one.
fn ip_payload(link_type: u16, data: &[u8]) -> Option<&[u8]> {
    match link_type {
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => Some(data),
        LINKTYPE_ETHERNET => {
            let mut ethertype = u16::from_be_bytes([*data.get(12)?, *data.get(13)?]);
            let mut offset = 14;
            // 802.1Q VLAN tags.
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                ethertype = u16::from_be_bytes([*data.get(offset + 2)?, *data.get(offset + 3)?]);
                offset += 4;
            }
            matches!(ethertype, 0x0800 | 0x86dd).then(|| data.get(offset..))?
        }
        LINKTYPE_LINUX_SLL => {
            let protocol = u16::from_be_bytes([*data.get(14)?, *data.get(15)?]);
            matches!(protocol, 0x0800 | 0x86dd).then(|| data.get(16..))?
        }
        // BSD loopback: a 4-byte address family in the capturing host's order.
        LINKTYPE_NULL => data.get(4..),
        _ => None,
    }
}

/// The TCP segment of an IP packet; None for anything else (other
/// protocols, fragments, IPv6 extension headers, malformed packets).
fn tcp_segment(ip: &[u8]) -> Option<TcpSegment<'_>> {
    let (src_ip, dst_ip, tcp): (IpAddr, IpAddr, &[u8]) = match ip.first()? >> 4 {
        4 => {
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            // More-fragments flag or a fragment offset: not reassembled.
            if *ip.get(9)? != 6 || fragment & 0x3fff != 0 || header_len < 20 {
                return None;
            }
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                src.into(),
                dst.into(),
                ip.get(header_len..total.max(header_len).min(ip.len()))?,
            )
        }
        6 => {
            let payload_len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            if *ip.get(6)? != 6 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                src.into(),
                dst.into(),
                ip.get(40..(40 + payload_len).min(ip.len()))?,
            )
        }
        _ => return None,
    };
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    if data_offset < 20 {
        return None;
    }
    Some(TcpSegment {
        src: SocketAddr::new(src_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
        flags: *tcp.get(13)?,
        payload: tcp.get(data_offset..)?,
    })
}

/// One direction of a TCP connection, reassembled.
#[derive(Default)]
struct HalfStream {
    /// Sequence number of the next byte expected.
    next_seq: Option<u32>,
    /// The bytes in order.
    data: Vec<u8>,
    /// (end offset in `data`, time): when the bytes up to each offset had
    /// arrived.
    arrivals: Vec<(usize, u64)>,
    /// Segments that arrived before a gap was filled, by stream offset.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Whether the endpoint that sends this half is the node, as the
    /// packets' direction flags said.
    sent_by_node: Option<bool>,
}

impl HalfStream {
    fn add(&mut self, seq: u32, syn: bool, payload: &[u8], time: u64) {
        if syn {
            self.next_seq = Some(seq.wrapping_add(1));
        }
        if payload.is_empty() {
            return;
        }
        let next = *self.next_seq.get_or_insert(seq);
        // Position of this segment relative to the next expected byte;
        // sequence numbers wrap, so differences are taken modulo 2^32.
        let offset = seq.wrapping_sub(next) as i32 as i64;
        let position = self.data.len() as i64 + offset;
        if position < 0 {
            // Entirely or partly before the stream we know of.
            let skip = (-position) as usize;
            if skip < payload.len() {
                self.insert(0, &payload[skip..], time);
            }
        } else {
            self.insert(position as u64, payload, time);
        }
    }

    fn insert(&mut self, position: u64, payload: &[u8], time: u64) {
        self.pending.insert(position, payload.to_vec());
        // Move every segment that now connects to the data: its bytes are
        // in order from now (`time`), whenever the segment itself came.
        while let Some((&pos, _)) = self.pending.first_key_value() {
            let have = self.data.len() as u64;
            if pos > have {
                break;
            }
            let bytes = self.pending.pop_first().expect("peeked").1;
            let skip = (have - pos) as usize;
            if skip < bytes.len() {
                self.data.extend_from_slice(&bytes[skip..]);
                self.arrivals.push((self.data.len(), time));
                let added = (bytes.len() - skip) as u32;
                self.next_seq = self.next_seq.map(|s| s.wrapping_add(added));
            }
        }
    }

    /// When the byte at `offset` had arrived.
    fn time_of(&self, offset: usize) -> u64 {
        let i = self.arrivals.partition_point(|(end, _)| *end <= offset);
        self.arrivals
            .get(i)
            .or(self.arrivals.last())
            .map_or(0, |(_, t)| *t)
    }
}

/// A TCP connection: two endpoints and their half streams.
struct Connection {
    /// The endpoint that sent the first packet (the SYN, normally).
    first: SocketAddr,
    second: SocketAddr,
    /// Half streams sent by `first` and by `second`.
    halves: [HalfStream; 2],
    /// The endpoint that received the SYN: the listener.
    listener: Option<SocketAddr>,
    /// From a `peerlog peer=... connection=...` comment.
    peer_addr: Option<String>,
    connection: Option<(i64, u64)>,
}

/// Parses a comment written by [`connection_comment`].
fn parse_comment(comment: &str) -> (Option<String>, Option<(i64, u64)>) {
    let Some(rest) = comment.strip_prefix("peerlog ") else {
        return (None, None);
    };
    let (mut addr, mut connection) = (None, None);
    for field in rest.split_whitespace() {
        if let Some(value) = field.strip_prefix("peer=") {
            addr = Some(value.to_string());
        } else if let Some(value) = field.strip_prefix("connection=peer") {
            if let Some((id, secs)) = value.rsplit_once('-') {
                connection = id.parse().ok().zip(secs.parse().ok());
            }
        }
    }
    (addr, connection)
}

/// The magics of the networks Bitcoin Core runs.
fn known_magic(bytes: &[u8]) -> bool {
    [
        Network::Bitcoin,
        Network::Testnet,
        Network::Testnet4,
        Network::Signet,
        Network::Regtest,
    ]
    .iter()
    .any(|n| Magic::from(*n).to_bytes() == bytes)
}

/// What splitting a half stream into frames gave.
struct Frames {
    records: Vec<CaptureRecord>,
    truncated: Option<TruncatedRecord>,
    warnings: Vec<String>,
}

/// Splits a reassembled half stream into v1 frames.
fn split_frames(half: &HalfStream, what: &str) -> Frames {
    let data = &half.data;
    let mut frames = Frames {
        records: Vec::new(),
        truncated: None,
        warnings: Vec::new(),
    };
    let mut offset = 0usize;
    let mut stream_magic: Option<&[u8]> = None;
    while offset < data.len() {
        let rest = &data[offset..];
        if rest.len() < HEADER_LEN {
            frames.truncated = Some(TruncatedRecord {
                offset: offset as u64,
                present: rest.len() as u64,
                missing: (HEADER_LEN - rest.len()) as u64,
            });
            break;
        }
        let magic = &rest[..4];
        let magic_ok = match stream_magic {
            Some(m) => m == magic,
            None => known_magic(magic),
        };
        let raw_type = &rest[4..4 + MESSAGE_TYPE_SIZE];
        let type_len = raw_type
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MESSAGE_TYPE_SIZE);
        let type_ok = raw_type[..type_len]
            .iter()
            .all(|b| (b' '..=b'~').contains(b))
            && raw_type[type_len..].iter().all(|&b| b == 0);
        let length = u32::from_le_bytes(rest[16..20].try_into().expect("4 bytes")) as usize;
        if !magic_ok || !type_ok || length > MAX_PROTOCOL_MESSAGE_LENGTH {
            frames.warnings.push(format!(
                "{what}: no v1 message header at stream byte {offset} ({}); the {} bytes from there on are skipped",
                crate::decode::hex(&rest[..HEADER_LEN]),
                rest.len()
            ));
            break;
        }
        stream_magic = Some(magic);
        let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + length) else {
            frames.truncated = Some(TruncatedRecord {
                offset: offset as u64,
                present: rest.len() as u64,
                missing: (HEADER_LEN + length - rest.len()) as u64,
            });
            break;
        };
        let msg_type = String::from_utf8_lossy(&raw_type[..type_len]).into_owned();
        if checksum(payload) != rest[20..24] {
            frames.warnings.push(format!(
                "{what}: the {msg_type} message at stream byte {offset} does not match its checksum; kept"
            ));
        }
        let end = offset + HEADER_LEN + length;
        frames.records.push(CaptureRecord {
            time_micros: half.time_of(end - 1),
            msg_type,
            payload: payload.to_vec(),
        });
        offset = end;
    }
    frames
}

/// The contents of a pcapng file as capture files.
#[derive(Debug, Default)]
pub struct PcapngCapture {
    /// One file per connection and direction that carried messages, in the
    /// order the connections began.
    pub files: Vec<CaptureFile>,
    /// What could not be used (packets that are not TCP/IP, streams that do
    /// not start with a v1 header, missing bytes, ...).
    pub warnings: Vec<String>,
}

/// Reads a pcapng file of v1 Bitcoin P2P traffic into capture files, one
/// per connection and direction.
///
/// The node's side of a connection is told by the packets' direction flags
/// (as [`write_pcapng`] sets them), else taken to be the side that accepted
/// the connection. The peer's address is the one in a `peerlog peer=`
/// comment, else the other side's `addr:port`. A message's time is that of
/// the packet that completed it. Structural damage (a block that does not
/// fit the file) is an error naming its byte offset; everything else that
/// cannot be used is skipped and named in [`PcapngCapture::warnings`].
pub fn read_pcapng(path: &Path) -> Result<PcapngCapture> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_pcapng(&bytes, path).with_context(|| format!("reading pcapng file {}", path.display()))
}

/// [`read_pcapng`] on bytes already read; `path` names the capture files.
pub fn parse_pcapng(bytes: &[u8], path: &Path) -> Result<PcapngCapture> {
    let mut connections: Vec<Connection> = Vec::new();
    // Open connection per unordered endpoint pair.
    let mut open: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut endian = Endian { big: false };
    let mut skipped_packets = 0u64;
    let mut offset = 0usize;
    let mut seen_section = false;

    while offset < bytes.len() {
        let corrupt = |why: String| {
            anyhow::anyhow!("not a pcapng file or corrupt at byte offset {offset}: {why}")
        };
        let header = bytes.get(offset..offset + 8).ok_or_else(|| {
            corrupt(format!(
                "{} bytes left, a block header needs 8",
                bytes.len() - offset
            ))
        })?;
        if header[..4] == SECTION_HEADER_MAGIC {
            let order = bytes
                .get(offset + 8..offset + 12)
                .ok_or_else(|| corrupt("section header cut short".into()))?;
            endian.big = match u32::from_le_bytes(order.try_into().expect("4 bytes")) {
                BYTE_ORDER_MAGIC => false,
                m if m.swap_bytes() == BYTE_ORDER_MAGIC => true,
                other => return Err(corrupt(format!("byte-order magic {other:#010x}"))),
            };
            interfaces.clear();
            seen_section = true;
        } else if !seen_section {
            return Err(corrupt(
                "the file does not start with a section header block".into(),
            ));
        }
        let block_type = endian.u32(&header[..4]);
        let total = endian.u32(&header[4..8]) as usize;
        if total < 12 || !total.is_multiple_of(4) || total > bytes.len() - offset {
            return Err(corrupt(format!(
                "block length {total} (type {block_type:#x}) does not fit the {} bytes left",
                bytes.len() - offset
            )));
        }
        let body = &bytes[offset + 8..offset + total - 4];
        match block_type {
            BLOCK_INTERFACE_DESCRIPTION => {
                if body.len() < 8 {
                    return Err(corrupt("interface description block too short".into()));
                }
                let mut units_per_second = 1_000_000;
                for (code, value) in options(&body[8..], endian) {
                    if code == IF_TSRESOL && !value.is_empty() {
                        let r = value[0];
                        units_per_second = if r & 0x80 == 0 {
                            10u64.checked_pow(u32::from(r)).unwrap_or(u64::MAX)
                        } else {
                            1u64.checked_shl(u32::from(r & 0x7f)).unwrap_or(u64::MAX)
                        };
                    }
                }
                interfaces.push(Interface {
                    link_type: endian.u16(&body[..2]),
                    units_per_second: units_per_second.max(1),
                });
            }
            BLOCK_ENHANCED_PACKET => {
                if body.len() < 20 {
                    return Err(corrupt("enhanced packet block too short".into()));
                }
                let interface = interfaces
                    .get(endian.u32(&body[..4]) as usize)
                    .copied()
                    .ok_or_else(|| corrupt("packet of an undeclared interface".into()))?;
                let ts = (u64::from(endian.u32(&body[4..8])) << 32)
                    | u64::from(endian.u32(&body[8..12]));
                let time =
                    (u128::from(ts) * 1_000_000 / u128::from(interface.units_per_second)) as u64;
                let captured = endian.u32(&body[12..16]) as usize;
                let data = body
                    .get(20..20usize.saturating_add(captured))
                    .ok_or_else(|| {
                        corrupt(format!("packet of {captured} bytes does not fit its block"))
                    })?;
                let mut comment = None;
                let mut direction = None;
                for (code, value) in options(
                    &body[(20 + captured).next_multiple_of(4).min(body.len())..],
                    endian,
                ) {
                    match code {
                        OPT_COMMENT => comment = Some(String::from_utf8_lossy(value).into_owned()),
                        EPB_FLAGS if value.len() == 4 => {
                            direction = match endian.u32(value) & 3 {
                                EPB_INBOUND => Some(true),
                                EPB_OUTBOUND => Some(false),
                                _ => None,
                            }
                        }
                        _ => {}
                    }
                }
                let Some(segment) = ip_payload(interface.link_type, data).and_then(tcp_segment)
                else {
                    skipped_packets += 1;
                    offset += total;
                    continue;
                };
                add_segment(
                    &mut connections,
                    &mut open,
                    &segment,
                    time,
                    comment,
                    direction,
                );
            }
            _ => {}
        }
        offset += total;
    }

    let mut capture = PcapngCapture::default();
    if skipped_packets > 0 {
        capture.warnings.push(format!(
            "{skipped_packets} packets are not TCP over IPv4/IPv6 (or are IP fragments) and were skipped"
        ));
    }
    for conn in connections {
        // Which side is the node: the direction flags, else the listener.
        let first_is_node = conn.halves[0]
            .sent_by_node
            .or(conn.halves[1].sent_by_node.map(|b| !b))
            .unwrap_or(conn.listener == Some(conn.first));
        let (node, peer) = if first_is_node {
            (conn.first, conn.second)
        } else {
            (conn.second, conn.first)
        };
        let peer_addr = conn.peer_addr.clone().unwrap_or_else(|| peer.to_string());
        for (half, from_node) in conn.halves.iter().zip([first_is_node, !first_is_node]) {
            let direction = if from_node {
                Direction::Sent
            } else {
                Direction::Recv
            };
            let what = format!(
                "{} → {}",
                if from_node { node } else { peer },
                if from_node { peer } else { node }
            );
            let frames = split_frames(half, &what);
            capture.warnings.extend(frames.warnings);
            if !half.pending.is_empty() {
                capture.warnings.push(format!(
                    "{what}: the stream has a gap after its byte {}; what follows the gap is skipped",
                    half.data.len()
                ));
            }
            // Reported here, where the connection can be named, rather
            // than as the file's cut-short record (the file is the pcapng).
            if let Some(t) = &frames.truncated {
                capture
                    .warnings
                    .push(format!("{what}: the stream ends inside a message: {t}"));
            }
            if frames.records.is_empty() {
                continue;
            }
            capture.files.push(CaptureFile {
                path: path.to_path_buf(),
                peer_addr: Some(peer_addr.clone()),
                connection: conn.connection,
                direction,
                records: frames.records,
                truncated: None,
            });
        }
    }
    Ok(capture)
}

/// Adds one TCP segment to its connection, starting a new connection on a
/// SYN (a reused port pair) or on the first packet seen of a pair.
fn add_segment(
    connections: &mut Vec<Connection>,
    open: &mut HashMap<(SocketAddr, SocketAddr), usize>,
    segment: &TcpSegment<'_>,
    time: u64,
    comment: Option<String>,
    inbound: Option<bool>,
) {
    let key = if segment.src <= segment.dst {
        (segment.src, segment.dst)
    } else {
        (segment.dst, segment.src)
    };
    let syn_only = segment.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let index = match open.get(&key) {
        Some(&i) if !syn_only => i,
        _ => {
            connections.push(Connection {
                first: segment.src,
                second: segment.dst,
                halves: Default::default(),
                listener: None,
                peer_addr: None,
                connection: None,
            });
            open.insert(key, connections.len() - 1);
            connections.len() - 1
        }
    };
    let conn = &mut connections[index];
    if syn_only {
        conn.listener = Some(segment.dst);
    }
    if let Some(comment) = comment {
        let (addr, connection) = parse_comment(&comment);
        conn.peer_addr = conn.peer_addr.take().or(addr);
        conn.connection = conn.connection.or(connection);
    }
    let half = &mut conn.halves[usize::from(segment.src != conn.first)];
    if let Some(inbound) = inbound {
        half.sent_by_node.get_or_insert(!inbound);
    }
    if segment.flags & TCP_RST == 0 {
        half.add(
            segment.seq,
            segment.flags & TCP_SYN != 0,
            segment.payload,
            time,
        );
    }
    if segment.flags & TCP_RST != 0 {
        // The connection is gone: whatever follows between these ports is
        // another one.
        open.remove(&key);
    }
}

/// The options of a block, until `opt_endofopt` or the end of the bytes.
fn options(mut bytes: &[u8], endian: Endian) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while bytes.len() >= 4 {
        let code = endian.u16(&bytes[..2]);
        let len = usize::from(endian.u16(&bytes[2..4]));
        if code == OPT_END {
            break;
        }
        let Some(value) = bytes.get(4..4 + len) else {
            break;
        };
        found.push((code, value));
        bytes = bytes.get((4 + len).next_multiple_of(4)..).unwrap_or(&[]);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureRecord;
    use crate::timeline::Selection;

    fn timeline(records: &[(u64, bool, &str, Vec<u8>)]) -> Timeline {
        let file = |recv: bool| CaptureFile {
            path: "x".into(),
            peer_addr: Some("10.0.0.2:50000".into()),
            connection: None,
            direction: if recv {
                Direction::Recv
            } else {
                Direction::Sent
            },
            records: records
                .iter()
                .filter(|r| r.1 == recv)
                .map(|(t, _, ty, p)| CaptureRecord {
                    time_micros: *t,
                    msg_type: ty.to_string(),
                    payload: p.clone(),
                })
                .collect(),
            truncated: None,
        };
        Timeline::from_files(
            Path::new("x"),
            vec![file(true), file(false)],
            &Selection::default(),
        )
    }

    fn flat(t: &Timeline) -> Vec<(Direction, u64, String, Vec<u8>)> {
        t.messages
            .iter()
            .map(|m| {
                (
                    m.direction,
                    m.record.time_micros,
                    m.record.msg_type.clone(),
                    m.record.payload.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn internet_checksum_of_rfc_1071s_example() {
        // RFC 1071 §3: the sum of these bytes is 0xddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&[&bytes]), !0xddf2);
        // Split anywhere, odd lengths included, the sum is the same.
        assert_eq!(internet_checksum(&[&bytes[..3], &bytes[3..]]), !0xddf2);
        // A packet with its checksum filled in sums to zero.
        let packet = Segment {
            src: "10.0.0.1:1".parse().unwrap(),
            dst: "10.0.0.2:2".parse().unwrap(),
            seq: 7,
            ack: 9,
            flags: TCP_ACK,
            options: &[],
            payload: b"odd",
        }
        .packet();
        assert_eq!(internet_checksum(&[&packet[..20]]), 0);
    }

    #[test]
    fn big_messages_are_segmented_and_read_back() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let t = timeline(&[
            (1_000, true, "version", vec![1; 10]),
            (2_000, false, "version", vec![2; 10]),
            (3_000, true, "peerlogbig", big),
            (3_000, false, "ping", 5u64.to_le_bytes().to_vec()),
        ]);
        let mut out = Vec::new();
        let summary = write_pcapng(&t, Network::Regtest, &mut out).unwrap();
        // Handshake, 2 versions, 4 segments of the big one, the ping.
        assert_eq!(summary.connections, 1);
        assert_eq!(summary.messages, 4);
        assert_eq!(summary.packets, 3 + 2 + 4 + 1, "{summary:?}");
        let back = parse_pcapng(&out, Path::new("x.pcapng")).unwrap();
        assert!(back.warnings.is_empty(), "{:?}", back.warnings);
        let back = Timeline::from_files(Path::new("x"), back.files, &Selection::default());
        assert_eq!(back.peers[0].addr, "10.0.0.2:50000");
        assert_eq!(flat(&back), flat(&t));
    }

    /// An Ethernet frame around an IPv4 packet.
    fn ethernet(ip: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(ip);
        frame
    }

    /// A pcapng file of Ethernet packets without direction flags or
    /// comments, as dumpcap writes them: (time, packet).
    fn dumpcap_file(packets: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut shb = Vec::new();
        shb.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        write_block(&mut out, BLOCK_SECTION_HEADER, &shb).unwrap();
        let mut idb = Vec::new();
        idb.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        idb.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        put_option(&mut idb, IF_TSRESOL, &[9]); // nanoseconds
        put_option(&mut idb, OPT_END, &[]);
        write_block(&mut out, BLOCK_INTERFACE_DESCRIPTION, &idb).unwrap();
        for (time, packet) in packets {
            let nanos = time * 1000;
            let mut epb = Vec::new();
            epb.extend_from_slice(&0u32.to_le_bytes());
            epb.extend_from_slice(&((nanos >> 32) as u32).to_le_bytes());
            epb.extend_from_slice(&(nanos as u32).to_le_bytes());
            epb.extend_from_slice(&(packet.len() as u32).to_le_bytes());
            epb.extend_from_slice(&(packet.len() as u32).to_le_bytes());
            epb.extend_from_slice(packet);
            write_block(&mut out, BLOCK_ENHANCED_PACKET, &epb).unwrap();
        }
        out
    }

    #[test]
    fn real_traffic_is_reassembled_and_the_listener_is_the_node() {
        let node: SocketAddr = "192.168.1.10:8333".parse().unwrap();
        let peer: SocketAddr = "192.168.1.20:40000".parse().unwrap();
        let ping = encode_frame(Magic::BITCOIN, "ping", &1u64.to_le_bytes()).unwrap();
        let pong = encode_frame(Magic::BITCOIN, "pong", &1u64.to_le_bytes()).unwrap();
        let verack = encode_frame(Magic::BITCOIN, "verack", &[]).unwrap();
        let seg = |src, dst, seq, flags, payload: &[u8]| {
            ethernet(
                &Segment {
                    src,
                    dst,
                    seq,
                    ack: 0,
                    flags,
                    options: &[],
                    payload,
                }
                .packet(),
            )
        };
        // The peer connects; its ping arrives in two pieces, the second
        // before the first, then the first again (a retransmission),
        // then a verack; the node answers with a pong.
        let packets = vec![
            (10, seg(peer, node, 99, TCP_SYN, &[])),
            (11, seg(node, peer, 499, TCP_SYN | TCP_ACK, &[])),
            (20, seg(peer, node, 100 + 10, TCP_ACK, &ping[10..])),
            (21, seg(peer, node, 100, TCP_ACK, &ping[..10])),
            (22, seg(peer, node, 100, TCP_ACK, &ping[..10])),
            (30, seg(peer, node, 100 + 32, TCP_ACK | TCP_PSH, &verack)),
            (40, seg(node, peer, 500, TCP_ACK | TCP_PSH, &pong)),
            // Not TCP: skipped with a warning.
            (50, ethernet(&[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17])),
        ];
        let capture = parse_pcapng(&dumpcap_file(&packets), Path::new("real.pcapng")).unwrap();
        assert_eq!(capture.warnings.len(), 1, "{:?}", capture.warnings);
        let t = Timeline::from_files(Path::new("x"), capture.files, &Selection::default());
        assert_eq!(t.peers.len(), 1);
        assert_eq!(t.peers[0].addr, "192.168.1.20:40000");
        let got: Vec<(Direction, u64, &str)> = t
            .messages
            .iter()
            .map(|m| {
                (
                    m.direction,
                    m.record.time_micros,
                    m.record.msg_type.as_str(),
                )
            })
            .collect();
        // The ping was complete once its first piece came, at 21.
        assert_eq!(
            got,
            [
                (Direction::Recv, 21, "ping"),
                (Direction::Recv, 30, "verack"),
                (Direction::Sent, 40, "pong")
            ]
        );
    }

    #[test]
    fn damage_is_named_by_offset() {
        let t = timeline(&[(1, true, "verack", vec![])]);
        let mut out = Vec::new();
        write_pcapng(&t, Network::Bitcoin, &mut out).unwrap();
        // Cut inside the last block.
        let err = parse_pcapng(&out[..out.len() - 3], Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("corrupt at byte offset"), "{err}");
        // Not pcapng at all.
        let err = parse_pcapng(b"hello, world", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("byte offset 0"), "{err}");
        // A stream that is not Bitcoin: a warning, no messages.
        let mut garbage = out.clone();
        let at = garbage.len() - 40; // inside the verack's frame
        garbage[at] ^= 0xff;
        let capture = parse_pcapng(&garbage, Path::new("x")).unwrap();
        assert!(capture.files.is_empty());
        assert!(
            capture.warnings[0].contains("no v1 message header"),
            "{:?}",
            capture.warnings
        );
    }
}
