//! The fixture capture of `tests/fixtures/capture`: a few KB of P2P traffic
//! of three peers, made deterministically from the `bitcoin` crate's message
//! types, so that the capture toolbox can be tested without eBPF and its
//! output compared with checked-in expectations.
//!
//! It covers both directory layouts (bitcoind's, and peerlog's
//! per-connection one), IPv4, IPv6 and Tor peers, inbound and outbound
//! connections, every message kind the toolbox decodes specially (version,
//! inv/getdata/notfound with transactions, tx, block, headers, cmpctblock,
//! addr, addrv2 with every network, ping/pong, feefilter, sendcmpct,
//! sendtxrcncl), a message type no node knows, and a payload that does not
//! decode. `PEERLOG_BLESS=1 cargo test -p peerlog-tests --test toolbox`
//! rewrites it and the expected outputs.

use std::path::Path;

use anyhow::Result;
use bitcoin::bip152::HeaderAndShortIds;
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::Hash;
use bitcoin::p2p::address::{AddrV2, AddrV2Message, Address};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::p2p::message_compact_blocks::{CmpctBlock, SendCmpct};
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use bitcoin::{BlockHash, Network};
use peerlog::formats::capture::{CaptureLayout, CaptureRecord, CaptureWriter};
use peerlog::p2p;

/// Time of the fixture's first message: 2023-11-14T22:13:20Z, in µs.
pub const START: u64 = 1_700_000_000_000_000;

/// The inbound IPv4 peer (bitcoind's layout).
pub const PEER_V4: &str = "127.0.0.1:50001";
/// The outbound IPv6 peer (per-connection layout, peer id 7).
pub const PEER_V6: &str = "[2001:db8::7]:8333";
/// Its connection: (peer id, connect time in UNIX seconds).
pub const PEER_V6_CONNECTION: (i64, u64) = (7, 1_700_000_000);
/// The Tor peer (bitcoind's layout).
pub const PEER_ONION: &str = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333";

/// One message of the fixture: milliseconds after [`START`], received by
/// the node (true) or sent, and the message.
struct Msg(u64, bool, Message);

/// A typed message, or raw bytes of any type.
enum Message {
    Typed(NetworkMessage),
    Raw(&'static str, Vec<u8>),
}

fn version(sender: &str, receiver: &str, nonce: u64, user_agent: &str) -> NetworkMessage {
    let services = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
    NetworkMessage::Version(VersionMessage {
        version: 70016,
        services,
        timestamp: (START / 1_000_000) as i64,
        receiver: Address::new(&receiver.parse().expect("address"), ServiceFlags::NONE),
        sender: Address::new(&sender.parse().expect("address"), services),
        nonce,
        user_agent: user_agent.into(),
        start_height: 0,
        relay: true,
    })
}

fn typed(ms: u64, recv: bool, msg: NetworkMessage) -> Msg {
    Msg(ms, recv, Message::Typed(msg))
}

/// The inbound IPv4 peer's conversation with the node.
fn peer_v4() -> Vec<Msg> {
    let txs: Vec<_> = (0..3).map(|i| p2p::test_transaction(i, 2)).collect();
    let wtxids: Vec<_> = txs.iter().map(|t| t.compute_wtxid()).collect();
    let genesis = genesis_block(Network::Regtest);
    let mut sendtxrcncl = 1u32.to_le_bytes().to_vec();
    sendtxrcncl.extend_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    let addrv2 = |addr, port| AddrV2Message {
        time: (START / 1_000_000) as u32,
        services: ServiceFlags::NETWORK | ServiceFlags::WITNESS,
        addr,
        port,
    };
    vec![
        typed(
            0,
            true,
            version(PEER_V4, "127.0.0.1:18444", 0x1111, "/fixture-peer:0.1/"),
        ),
        typed(
            1,
            false,
            version("0.0.0.0:0", PEER_V4, 0x2222, "/fixture-node:0.1/"),
        ),
        typed(2, false, NetworkMessage::WtxidRelay),
        typed(2, false, NetworkMessage::SendAddrV2),
        typed(2, false, NetworkMessage::Verack),
        typed(3, true, NetworkMessage::WtxidRelay),
        typed(3, true, NetworkMessage::SendAddrV2),
        Msg(3, true, Message::Raw("sendtxrcncl", sendtxrcncl)),
        typed(4, true, NetworkMessage::Verack),
        typed(
            6,
            false,
            NetworkMessage::SendCmpct(SendCmpct {
                send_compact: false,
                version: 2,
            }),
        ),
        typed(7, false, NetworkMessage::Ping(0x2222_0000)),
        typed(8, false, NetworkMessage::FeeFilter(1000)),
        typed(10, true, NetworkMessage::Pong(0x2222_0000)),
        typed(12, true, NetworkMessage::Ping(0x3333)),
        typed(13, false, NetworkMessage::Pong(0x3333)),
        typed(20, true, p2p::inv_wtx(&wtxids[..2])),
        typed(22, false, p2p::getdata_wtx(&wtxids[..2])),
        typed(25, true, NetworkMessage::Tx(txs[0].clone())),
        typed(27, true, NetworkMessage::Tx(txs[1].clone())),
        typed(
            30,
            true,
            NetworkMessage::AddrV2(vec![
                addrv2(AddrV2::Ipv4([203, 0, 113, 5].into()), 8333),
                addrv2(AddrV2::Ipv6("2001:db8::5".parse().expect("ipv6")), 8333),
                addrv2(AddrV2::TorV3(onion_pubkey()), 8333),
                addrv2(AddrV2::I2p([7; 32]), 0),
                addrv2(AddrV2::Cjdns("fc00::5".parse().expect("ipv6")), 8333),
            ]),
        ),
        typed(
            35,
            false,
            NetworkMessage::Addr(vec![(
                (START / 1_000_000) as u32,
                Address::new(
                    &"198.51.100.7:8333".parse().expect("address"),
                    ServiceFlags::NETWORK,
                ),
            )]),
        ),
        typed(
            40,
            true,
            NetworkMessage::GetHeaders(GetHeadersMessage {
                version: 70016,
                locator_hashes: vec![genesis.block_hash()],
                stop_hash: BlockHash::all_zeros(),
            }),
        ),
        typed(41, false, NetworkMessage::Headers(vec![genesis.header])),
        typed(50, true, p2p::getdata_block(&[genesis.block_hash()])),
        typed(51, false, NetworkMessage::Block(genesis.clone())),
        Msg(
            60,
            true,
            Message::Raw("peerlogtest", vec![0xde, 0xad, 0xbe, 0xef]),
        ),
        // A ping whose nonce is cut short: a payload that does not decode.
        Msg(70, true, Message::Raw("ping", vec![1, 2, 3])),
        typed(80, true, NetworkMessage::FeeFilter(2000)),
        typed(90, false, p2p::inv_block(&[genesis.block_hash()])),
        typed(
            95,
            false,
            NetworkMessage::NotFound(vec![Inventory::WTx(wtxids[2])]),
        ),
    ]
}

/// The outbound IPv6 peer: the node speaks first.
fn peer_v6() -> Vec<Msg> {
    let tx = p2p::test_transaction(9, 1);
    let genesis = genesis_block(Network::Regtest);
    let compact = HeaderAndShortIds::from_block(&genesis, 42, 2, &[]).expect("a compact block");
    vec![
        typed(
            100,
            false,
            version("[::]:0", PEER_V6, 0x4444, "/fixture-node:0.1/"),
        ),
        typed(
            150,
            true,
            version(PEER_V6, "[::]:0", 0x5555, "/Satoshi:27.0.0/"),
        ),
        typed(151, true, NetworkMessage::Verack),
        typed(152, false, NetworkMessage::Verack),
        typed(200, true, p2p::inv_tx(&[tx.compute_txid()])),
        typed(210, false, p2p::getdata_tx(&[tx.compute_txid()])),
        typed(260, true, NetworkMessage::Tx(tx)),
        typed(300, false, NetworkMessage::Ping(0x4444)),
        typed(340, true, NetworkMessage::Pong(0x4444)),
        typed(
            400,
            true,
            NetworkMessage::CmpctBlock(CmpctBlock {
                compact_block: compact,
            }),
        ),
    ]
}

/// The Tor peer, seen only after its handshake.
fn peer_onion() -> Vec<Msg> {
    vec![
        typed(500, true, NetworkMessage::Ping(0x5555)),
        typed(501, false, NetworkMessage::Pong(0x5555)),
    ]
}

/// The public key of [`PEER_ONION`] (the first 32 bytes of its base32 name).
fn onion_pubkey() -> [u8; 32] {
    let name = PEER_ONION.split('.').next().expect("a name");
    let (mut buffer, mut bits, mut out) = (0u64, 0, Vec::new());
    for c in name.bytes() {
        let v = match c {
            b'a'..=b'z' => c - b'a',
            _ => c - b'2' + 26,
        };
        buffer = (buffer << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out[..32].try_into().expect("35 bytes decoded")
}

fn record(msg: &Msg) -> CaptureRecord {
    let (msg_type, payload) = match &msg.2 {
        Message::Typed(m) => (m.command().to_string(), serialize(m)),
        Message::Raw(t, p) => (t.to_string(), p.clone()),
    };
    CaptureRecord {
        time_micros: START + msg.0 * 1000,
        msg_type,
        payload,
    }
}

/// Writes the fixture capture under `dir` (which must not hold an older one:
/// capture files are appended to).
pub fn write_fixture_capture(dir: &Path) -> Result<()> {
    let mut core = CaptureWriter::new(dir, CaptureLayout::Core)?;
    for (addr, msgs) in [(PEER_V4, peer_v4()), (PEER_ONION, peer_onion())] {
        for m in &msgs {
            core.append(addr, (0, 0), m.1, &record(m))?;
        }
    }
    core.flush()?;
    let mut per_connection = CaptureWriter::new(dir, CaptureLayout::PerConnection)?;
    for m in &peer_v6() {
        per_connection.append(PEER_V6, PEER_V6_CONNECTION, m.1, &record(m))?;
    }
    per_connection.flush()?;
    Ok(())
}
