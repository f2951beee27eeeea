//! Reading pcapng files of v1 Bitcoin P2P traffic back into capture files:
//! TCP reassembly and v1 framing (see the [module documentation](super)).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result};
use bitcoin::hex::DisplayHex;
use bitcoin::p2p::Magic;
use bitcoin::Network;
use peerlog_common::{Direction, MAX_PROTOCOL_MESSAGE_LENGTH};

use super::block::*;
use crate::formats::capture::{CaptureFile, CaptureRecord, TruncatedRecord, MESSAGE_TYPE_SIZE};
use crate::p2p::{checksum, HEADER_LEN};

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

/// Parses a comment written by [`connection_comment`](super::write::connection_comment).
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
        if !magic_ok || !type_ok || length as u64 > MAX_PROTOCOL_MESSAGE_LENGTH {
            frames.warnings.push(format!(
                "{what}: no v1 message header at stream byte {offset} ({}); the {} bytes from there on are skipped",
                rest[..HEADER_LEN].to_lower_hex_string(),
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
/// (as [`write_pcapng`](super::write::write_pcapng) sets them), else taken to be the side that accepted
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
                Direction::Outbound
            } else {
                Direction::Inbound
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
