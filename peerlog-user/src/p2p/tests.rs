//! The framing against hand-checked bytes, and the client against a fake
//! peer on a local socket.

use std::io::Cursor;
use std::net::TcpListener;
use std::thread;

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::Magic;
use bitcoin::{Network, Transaction};
use peerlog_common::MAX_PROTOCOL_MESSAGE_LENGTH;

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    bitcoin::hex::FromHex::from_hex(s).unwrap()
}

#[test]
fn verack_frame_matches_hand_checked_bytes() {
    // Magic fabfb5da (regtest), "verack" NUL-padded to 12 bytes,
    // length 0, checksum = first 4 bytes of sha256d("") = 5df6e0e2.
    let expected = unhex("fabfb5da76657261636b000000000000000000005df6e0e2");
    let frame = encode_frame(Magic::REGTEST, "verack", &[]).unwrap();
    assert_eq!(frame, expected);
    // The bitcoin crate agrees with our hand framing.
    let theirs = serialize(&RawNetworkMessage::new(
        Magic::REGTEST,
        NetworkMessage::Verack,
    ));
    assert_eq!(frame, theirs);
}

#[test]
fn typed_frames_match_the_bitcoin_crate() {
    let msg = NetworkMessage::Ping(0x0102_0304_0506_0708);
    let frame = encode_frame(Magic::REGTEST, "ping", &serialize(&msg)).unwrap();
    assert_eq!(
        frame,
        serialize(&RawNetworkMessage::new(Magic::REGTEST, msg))
    );
}

#[test]
fn reads_a_frame_from_bytes_and_decodes_it() {
    let mut bytes = encode_frame(Magic::REGTEST, "ping", &42u64.to_le_bytes()).unwrap();
    // A following frame must not be swallowed by the first read.
    bytes.extend(encode_frame(Magic::REGTEST, "verack", &[]).unwrap());
    let mut r = Cursor::new(bytes);
    let ping = read_frame(&mut r, Magic::REGTEST).unwrap();
    assert_eq!(ping.msg_type(), "ping");
    assert_eq!(ping.payload(), 42u64.to_le_bytes());
    assert_eq!(ping.decode().unwrap(), NetworkMessage::Ping(42));
    let verack = read_frame(&mut r, Magic::REGTEST).unwrap();
    assert_eq!(verack.decode().unwrap(), NetworkMessage::Verack);
    assert!(matches!(
        read_frame(&mut r, Magic::REGTEST),
        Err(P2pError::Disconnected)
    ));
}

#[test]
fn unknown_types_and_max_size_payloads_round_trip() {
    let payload: Vec<u8> = (0..MAX_PROTOCOL_MESSAGE_LENGTH as usize)
        .map(|i| i as u8)
        .collect();
    let mut w = Vec::new();
    write_frame(&mut w, Magic::REGTEST, "peerlogbig", &payload).unwrap();
    let msg = read_frame(&mut Cursor::new(w), Magic::REGTEST).unwrap();
    assert_eq!(msg.msg_type(), "peerlogbig");
    assert!(msg.payload() == payload.as_slice());
    match msg.decode().unwrap() {
        NetworkMessage::Unknown {
            command,
            payload: p,
        } => {
            assert_eq!(command.as_ref(), "peerlogbig");
            assert!(p == payload);
        }
        other => panic!("expected Unknown, got {}", other.cmd()),
    }
    // Twelve bytes is the limit.
    assert!(encode_frame(Magic::REGTEST, "thirteenchars", &[]).is_err());
}

#[test]
fn checksum_failure_is_reported_and_stream_stays_in_sync() {
    let mut bad = encode_frame(Magic::REGTEST, "ping", &7u64.to_le_bytes()).unwrap();
    bad[HEADER_LEN] ^= 0xff; // corrupt the payload
    bad.extend(encode_frame(Magic::REGTEST, "verack", &[]).unwrap());
    let mut r = Cursor::new(bad);
    match read_frame(&mut r, Magic::REGTEST) {
        Err(P2pError::BadChecksum { msg_type, .. }) => assert_eq!(msg_type, "ping"),
        other => panic!("expected BadChecksum, got {other:?}"),
    }
    assert_eq!(
        read_frame(&mut r, Magic::REGTEST).unwrap().msg_type(),
        "verack"
    );
}

#[test]
fn wrong_magic_and_bad_msg_type_are_refused() {
    let mainnet = encode_frame(Magic::BITCOIN, "verack", &[]).unwrap();
    assert!(matches!(
        read_frame(&mut Cursor::new(mainnet), Magic::REGTEST),
        Err(P2pError::BadMagic {
            found: [0xf9, 0xbe, 0xb4, 0xd9],
            ..
        })
    ));
    let mut garbage = encode_frame(Magic::REGTEST, "ver", &[]).unwrap();
    garbage[4 + 5] = b'x'; // non-NUL after the NUL padding started
    assert!(matches!(
        read_frame(&mut Cursor::new(garbage), Magic::REGTEST),
        Err(P2pError::BadMsgType { .. })
    ));
}

#[test]
fn oversize_payload_is_refused_before_reading_it() {
    let mut header = encode_header(Magic::REGTEST, "block", &[]).unwrap();
    header[16..20].copy_from_slice(&(MAX_PROTOCOL_MESSAGE_LENGTH as u32 + 1).to_le_bytes());
    // Only the header is there: refusing must not need the payload.
    match read_frame(&mut Cursor::new(header.to_vec()), Magic::REGTEST) {
        Err(P2pError::Oversized { msg_type, length }) => {
            assert_eq!(msg_type, "block");
            assert_eq!(u64::from(length), MAX_PROTOCOL_MESSAGE_LENGTH + 1);
        }
        other => panic!("expected Oversized, got {other:?}"),
    }
}

// A reader that fails with a timeout every other call and hands out one
// byte at a time, like a slow socket with a short read timeout.
struct Stuttering {
    bytes: Cursor<Vec<u8>>,
    // Toggled on every call: the next call times out when set.
    stall: bool,
}

impl Read for Stuttering {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stall = !self.stall;
        if !self.stall {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(1);
        self.bytes.read(&mut buf[..n])
    }
}

#[test]
fn frame_reader_survives_timeouts_mid_frame() {
    let bytes = encode_frame(Magic::REGTEST, "pong", &9u64.to_le_bytes()).unwrap();
    let mut r = Stuttering {
        bytes: Cursor::new(bytes),
        stall: false,
    };
    let mut frames = FrameReader::new(Magic::REGTEST);
    let msg = loop {
        match frames.read_frame(&mut r) {
            Ok(msg) => break msg,
            Err(P2pError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(frames.has_partial_frame());
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(msg.decode().unwrap(), NetworkMessage::Pong(9));
    assert!(!frames.has_partial_frame());
}

#[test]
fn test_transactions_are_deterministic_and_parse() {
    let tx = test_transaction(7, 3);
    assert_eq!(serialize(&tx), serialize(&test_transaction(7, 3)));
    assert_ne!(tx.compute_txid(), test_transaction(8, 3).compute_txid());
    assert_ne!(
        tx.compute_txid().to_byte_array(),
        tx.compute_wtxid().to_byte_array()
    );
    assert_eq!(tx.output.len(), 3);
    assert!(tx.output.iter().all(|o| o.script_pubkey.is_p2wpkh()));
    let back: Transaction = deserialize(&serialize(&tx)).unwrap();
    assert_eq!(back, tx);

    let bad = invalid_test_transaction(7);
    assert!(bad.output.is_empty());
    let bytes = serialize(&bad);
    let back: Transaction = deserialize(&bytes).unwrap();
    assert_eq!(back, bad);
    // Why not "no inputs": the crate writes that with the segwit marker,
    // right after the version, where Core expects the input count.
    let no_inputs = Transaction {
        input: vec![],
        ..test_transaction(7, 1)
    };
    assert_eq!(&serialize(&no_inputs)[4..6], &[0x00, 0x01]);
}

#[test]
fn builders_make_the_expected_messages() {
    let tx = test_transaction(1, 1);
    let inv = serialize(&inv_tx(&[tx.compute_txid()]));
    assert_eq!(inv.len(), 1 + 36);
    assert_eq!(inv[0], 1); // count
    assert_eq!(&inv[1..5], &1u32.to_le_bytes()); // MSG_TX
    let wtx = serialize(&getdata_wtx(&[tx.compute_wtxid()]));
    assert_eq!(&wtx[1..5], &5u32.to_le_bytes()); // MSG_WTX
    let witness_tx = serialize(&getdata_tx(&[tx.compute_txid()]));
    assert_eq!(&witness_tx[1..5], &0x4000_0001u32.to_le_bytes()); // MSG_WITNESS_TX
}

/// What the fake node saw, in order: (message type, payload).
type Seen = Vec<(String, Vec<u8>)>;

// A tiny node on a loopback listener: answers the handshake the way
// Bitcoin Core does (with a ping in the middle to check that the client
// answers it), then pings the client, sends an unknown message, answers
// the client's ping, and records everything it receives until EOF.
fn fake_node(listener: TcpListener) -> Seen {
    let (mut s, _) = listener.accept().unwrap();
    let magic = Magic::REGTEST;
    let mut seen: Seen = Vec::new();
    let read = |s: &mut TcpStream, seen: &mut Seen| match read_frame(s, magic) {
        Ok(m) => {
            seen.push((m.msg_type().to_owned(), m.payload().to_vec()));
            Some(m)
        }
        Err(P2pError::Disconnected) => None,
        Err(e) => panic!("fake node: {e}"),
    };
    let send = |s: &mut TcpStream, msg: NetworkMessage| {
        write_frame(s, magic, msg.command().as_ref(), &serialize(&msg)).unwrap()
    };

    let version = read(&mut s, &mut seen).unwrap();
    let NetworkMessage::Version(theirs) = version.decode().unwrap() else {
        panic!("expected version first");
    };
    assert_eq!(theirs.user_agent, user_agent());
    assert_eq!(theirs.version, PROTOCOL_VERSION);
    assert!(theirs.relay);
    let ours = VersionMessage {
        version: 70016,
        user_agent: "/twin-test:0.1/".into(),
        nonce: 1,
        ..theirs
    };
    send(&mut s, NetworkMessage::Version(ours));
    send(&mut s, NetworkMessage::WtxidRelay);
    send(&mut s, NetworkMessage::SendAddrV2);
    send(&mut s, NetworkMessage::Ping(5));
    send(&mut s, NetworkMessage::Verack);
    // wtxidrelay, sendaddrv2, verack, pong(5)
    for _ in 0..4 {
        read(&mut s, &mut seen).unwrap();
    }
    send(&mut s, NetworkMessage::Ping(7));
    write_frame(&mut s, magic, "peerlogtest", &[1, 2, 3]).unwrap();
    while let Some(m) = read(&mut s, &mut seen) {
        if let NetworkMessage::Ping(n) = m.decode().unwrap() {
            send(&mut s, NetworkMessage::Pong(n));
        }
    }
    seen
}

#[test]
fn loopback_handshake_ping_and_transcript() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let node = thread::spawn(move || fake_node(listener));

    let opts = HandshakeOptions {
        read_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut peer = P2pClient::connect_and_handshake(addr, Network::Regtest, opts).unwrap();
    assert_eq!(peer.their_version().unwrap().user_agent, "/twin-test:0.1/");
    let rtt = peer.ping(42).unwrap();
    assert!(rtt < Duration::from_secs(10));
    let unknown = peer
        .recv_msg_type("peerlogtest", Duration::from_secs(5))
        .unwrap();
    assert_eq!(unknown.payload(), [1, 2, 3]);
    assert_eq!(unknown.decode().unwrap().command().as_ref(), "peerlogtest");
    // Everything else not consumed is still queued, in arrival order.
    let rest: Vec<String> = peer
        .drain(Duration::from_millis(100))
        .unwrap()
        .iter()
        .map(|m| m.msg_type().to_owned())
        .collect();
    assert_eq!(rest, ["wtxidrelay", "sendaddrv2", "ping", "ping"]);
    // Nothing more arrives: a short wait times out.
    let err = peer
        .recv_until(|_| true, Duration::from_millis(50))
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");

    let transcript = peer.take_transcript();
    let types = |dir: TranscriptDirection| -> Vec<String> {
        transcript
            .entries()
            .iter()
            .filter(|e| e.direction == dir)
            .map(|e| e.msg_type.clone())
            .collect()
    };
    assert_eq!(
        types(TranscriptDirection::Sent),
        [
            "version",
            "wtxidrelay",
            "sendaddrv2",
            "verack",
            "pong",
            "ping",
            "pong"
        ]
    );
    assert_eq!(
        types(TranscriptDirection::Received),
        [
            "version",
            "wtxidrelay",
            "sendaddrv2",
            "ping",
            "verack",
            "ping",
            "peerlogtest",
            "pong"
        ]
    );
    assert!(transcript
        .entries()
        .windows(2)
        .all(|w| w[0].time_micros <= w[1].time_micros));

    peer.shutdown().unwrap();
    drop(peer);
    let seen = node.join().unwrap();
    // What the node received is, byte for byte, what the transcript says
    // we sent: the comparison the integration tests make with peerlog.
    let sent: Seen = transcript
        .sent()
        .map(|e| (e.msg_type.clone(), e.payload.clone()))
        .collect();
    assert_eq!(seen, sent);
    assert_eq!(sent[4].1, 5u64.to_le_bytes());
    assert_eq!(sent[6].1, 7u64.to_le_bytes());
}

#[test]
fn transcript_records_only_when_enabled() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let node = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let m = read_frame(&mut s, Magic::REGTEST).unwrap();
        write_frame(&mut s, Magic::REGTEST, m.msg_type(), m.payload()).unwrap();
        let _ = read_frame(&mut s, Magic::REGTEST);
    });
    let mut peer = P2pClient::connect(addr, Network::Regtest, HandshakeOptions::default()).unwrap();
    let before = now_micros();
    peer.send_raw("echo", b"hello").unwrap();
    let echo = peer.recv_raw().unwrap();
    assert_eq!(echo, RawMessage::new("echo", b"hello".to_vec()));
    peer.set_recording(false);
    peer.send(&NetworkMessage::Verack).unwrap();

    let t = peer.transcript();
    assert_eq!(t.len(), 2);
    let e = &t.entries()[0];
    assert_eq!(
        (e.direction, e.msg_type.as_str(), e.payload.as_slice()),
        (TranscriptDirection::Sent, "echo", &b"hello"[..])
    );
    assert!(e.time_micros >= before && e.time_micros <= now_micros());
    assert_eq!(t.entries()[1].direction, TranscriptDirection::Received);
    assert_eq!(t.received().count(), 1);
    drop(peer);
    node.join().unwrap();
}

#[test]
fn errors_are_send_sync_for_anyhow() {
    fn check<T: Send + Sync + 'static>() {}
    check::<P2pError>();
    check::<P2pClient>();
}
