//! Synthesizing pcapng packets from a timeline: one TCP stream per peer
//! connection, v1 framing, valid IP and TCP checksums (see the
//! [module documentation](super)).

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::p2p::Magic;
use bitcoin::Network;

use super::block::*;
use crate::address::split_host_port;
use crate::formats::timeline::{CaptureMessage, CapturePeer, Timeline};
use crate::p2p::encode_frame;
use peerlog_common::Direction;

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
pub(super) fn internet_checksum(parts: &[&[u8]]) -> u16 {
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
pub(super) struct Segment<'a> {
    pub(super) src: SocketAddr,
    pub(super) dst: SocketAddr,
    pub(super) seq: u32,
    pub(super) ack: u32,
    pub(super) flags: u8,
    pub(super) options: &'a [u8],
    pub(super) payload: &'a [u8],
}

impl Segment<'_> {
    /// A segment without options or payload.
    fn empty(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, flags: u8) -> Self {
        Segment {
            src,
            dst,
            seq,
            ack,
            flags,
            options: &[],
            payload: &[],
        }
    }

    pub(super) fn packet(&self) -> Vec<u8> {
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

/// The comment on a connection's first packet, which [`read_pcapng`](super::read::read_pcapng) reads
/// to restore what IP addresses cannot say.
pub(super) fn connection_comment(peer: &CapturePeer) -> String {
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
            options: if flags & TCP_SYN != 0 { &options } else { &[] },
            ..Segment::empty(src, dst, seq, ack, flags)
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
    let inbound = message.direction == Direction::Inbound;
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
            payload: chunk,
            ..Segment::empty(src, dst, seq, ack, flags)
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
            let ack = Segment::empty(dst, src, ack, seq.wrapping_add(len), TCP_ACK);
            writer.packet(time, !inbound, &ack.packet(), None)?;
        }
    }
    Ok(())
}
