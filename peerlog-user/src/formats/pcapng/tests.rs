//! Round trips through the writer and the reader.

use std::net::SocketAddr;
use std::path::Path;

use bitcoin::p2p::Magic;
use bitcoin::Network;

use super::block::*;
use super::read::parse_pcapng;
use super::write::{internet_checksum, write_pcapng, Segment};
use crate::formats::capture::CaptureFile;
use crate::formats::capture::CaptureRecord;
use crate::formats::timeline::Selection;
use crate::formats::timeline::Timeline;
use crate::p2p::encode_frame;
use peerlog_common::Direction;

fn timeline(records: &[(u64, bool, &str, Vec<u8>)]) -> Timeline {
    let file = |recv: bool| CaptureFile {
        path: "x".into(),
        peer_addr: Some("10.0.0.2:50000".into()),
        connection: None,
        direction: if recv {
            Direction::Inbound
        } else {
            Direction::Outbound
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
            (Direction::Inbound, 21, "ping"),
            (Direction::Inbound, 30, "verack"),
            (Direction::Outbound, 40, "pong")
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
