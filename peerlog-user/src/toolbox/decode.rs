//! Decoded views of P2P message payloads: a one-line summary for people
//! (`peerlog show`) and a JSON body for programs (`show --json`,
//! `convert --to jsonl`).
//!
//! Payloads are decoded with the `bitcoin` crate's P2P types, through the
//! same [`RawMessage::decode`] the P2P client uses, so there is one notion of
//! "decodes" in peerlog. The JSON follows Bitcoin Core's
//! `contrib/message-capture/message-capture-parser.py` where it has a
//! convention: no `body` for an empty payload, and for a message type it does
//! not know, or a payload that does not decode, the payload in hex as `body`
//! with the parser's own `error` string. Field names follow Bitcoin Core's
//! RPC vocabulary (`txid`, `vsize`, `servicesnames`, `blockhash`, ...);
//! hashes are in Core's display byte order.

use std::fmt::Write as _;
use std::net::Ipv6Addr;

use bitcoin::block::Header;
use bitcoin::consensus::encode::{self, serialize};
use bitcoin::hashes::Hash;
use bitcoin::hex::DisplayHex;
use bitcoin::io;
use bitcoin::p2p::address::{AddrV2, AddrV2Message, Address};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetBlocksMessage, GetHeadersMessage, Inventory};
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use bitcoin::{Block, BlockHash, Transaction};
use serde_json::{json, Value};
use sha3::{Digest, Sha3_256};

use crate::p2p::{P2pError, RawMessage};

/// message-capture-parser.py's `error` for a message type it does not know.
pub const UNRECOGNIZED: &str = "Unrecognized message type.";
/// message-capture-parser.py's `error` for a payload that does not decode.
pub const UNDECODABLE: &str = "Unable to deserialize message.";

/// How many list entries (inventory items, addresses, hashes) a summary
/// line names before it says how many more there are: enough to identify a
/// typical `inv`, short enough to stay one line.
const SUMMARY_ITEMS: usize = 4;
/// Payload bytes shown in hex in the summary of a message that is not decoded.
const SUMMARY_RAW_BYTES: usize = 32;

/// A message payload, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// One line describing the payload (empty for messages without one,
    /// such as `verack`); the raw bytes in hex when it is not decoded.
    pub summary: String,
    /// The payload as JSON: the decoded fields, or the payload in hex when
    /// it is not decoded. None for an empty payload, as the parser does.
    pub body: Option<Value>,
    /// [`UNRECOGNIZED`] or [`UNDECODABLE`] when the payload was not decoded.
    pub error: Option<&'static str>,
    /// Why a payload of a known type does not decode (the `bitcoin` crate's
    /// error), for [`UNDECODABLE`].
    pub decode_error: Option<String>,
}

impl Decoded {
    fn with_fields(summary: String, body: Value, payload: &[u8]) -> Self {
        Self {
            summary,
            body: (!payload.is_empty()).then_some(body),
            error: None,
            decode_error: None,
        }
    }

    fn raw(payload: &[u8], error: &'static str, decode_error: Option<String>) -> Self {
        let shown = &payload[..payload.len().min(SUMMARY_RAW_BYTES)];
        let more = if payload.len() > shown.len() {
            "…"
        } else {
            ""
        };
        let summary = match &decode_error {
            Some(why) => format!("undecodable ({why}): {}{more}", shown.to_lower_hex_string()),
            None => format!("raw {}{more}", shown.to_lower_hex_string()),
        };
        Self {
            summary,
            body: Some(Value::String(payload.to_lower_hex_string())),
            error: Some(error),
            decode_error,
        }
    }
}

/// Decodes the payload of a message of type `msg_type`. Never fails: what
/// cannot be decoded comes back raw, with [`Decoded::error`] set.
pub fn decode(msg_type: &str, payload: &[u8]) -> Decoded {
    // BIP 330's sendtxrcncl is in Bitcoin Core (and known to the parser)
    // but not in the `bitcoin` crate: decoded here.
    if msg_type == "sendtxrcncl" {
        return decode_sendtxrcncl(payload);
    }
    let message = match RawMessage::new(msg_type, payload.to_vec()).decode() {
        Ok(NetworkMessage::Unknown { .. }) => return Decoded::raw(payload, UNRECOGNIZED, None),
        Ok(message) => message,
        Err(error) => {
            let why = match error {
                // The crate's own words for a short payload are "IO error".
                P2pError::Decode {
                    error: encode::Error::Io(e),
                    ..
                } if e.kind() == io::ErrorKind::UnexpectedEof => {
                    format!("the payload ends before the {msg_type} message does")
                }
                P2pError::Decode { error, .. } => error.to_string(),
                other => other.to_string(),
            };
            return Decoded::raw(payload, UNDECODABLE, Some(why));
        }
    };
    let (summary, body) = describe(&message);
    Decoded::with_fields(summary, body, payload)
}

/// Summary and JSON body of a decoded message.
fn describe(message: &NetworkMessage) -> (String, Value) {
    match message {
        NetworkMessage::Version(v) => describe_version(v),
        NetworkMessage::Addr(entries) => {
            let addrs: Vec<Value> = entries
                .iter()
                .map(|(time, a)| json!({"time": time, "services": services_hex(a.services), "addr": format_address(a)}))
                .collect();
            let names = entries.iter().map(|(_, a)| format_address(a));
            (
                list_summary(("address", "addresses"), entries.len(), names),
                json!({ "addrs": addrs }),
            )
        }
        NetworkMessage::AddrV2(entries) => describe_addrv2(entries),
        NetworkMessage::Inv(items)
        | NetworkMessage::GetData(items)
        | NetworkMessage::NotFound(items) => describe_inventory(items),
        NetworkMessage::GetBlocks(GetBlocksMessage {
            version,
            locator_hashes,
            stop_hash,
        })
        | NetworkMessage::GetHeaders(GetHeadersMessage {
            version,
            locator_hashes,
            stop_hash,
        }) => describe_locator(*version, locator_hashes, stop_hash),
        NetworkMessage::Tx(tx) => describe_tx(tx),
        NetworkMessage::Block(block) => describe_block(block),
        NetworkMessage::Headers(headers) => describe_headers(headers),
        NetworkMessage::Ping(nonce) | NetworkMessage::Pong(nonce) => {
            (format!("nonce={nonce:#018x}"), json!({ "nonce": nonce }))
        }
        NetworkMessage::FeeFilter(feerate) => (
            format!("feerate={feerate} sat/kvB"),
            json!({ "feerate": feerate }),
        ),
        NetworkMessage::SendCmpct(s) => (
            format!("announce={} version={}", s.send_compact, s.version),
            json!({ "announce": s.send_compact, "version": s.version }),
        ),
        NetworkMessage::CmpctBlock(c) => {
            let block = &c.compact_block;
            let hash = block.header.block_hash();
            (
                format!(
                    "hash={hash} shortids={} prefilled={}",
                    block.short_ids.len(),
                    block.prefilled_txs.len()
                ),
                json!({
                    "header": header_json(&block.header),
                    "nonce": block.nonce,
                    "shortids": block.short_ids.len(),
                    "prefilled": block.prefilled_txs.iter().map(|p| json!({
                        "index": p.idx,
                        "txid": p.tx.compute_txid().to_string(),
                    })).collect::<Vec<_>>(),
                }),
            )
        }
        NetworkMessage::GetBlockTxn(g) => {
            let request = &g.txs_request;
            (
                format!(
                    "blockhash={} indexes={}",
                    request.block_hash,
                    request.indexes.len()
                ),
                json!({ "blockhash": request.block_hash.to_string(), "indexes": request.indexes }),
            )
        }
        NetworkMessage::BlockTxn(b) => {
            let txs = &b.transactions;
            (
                format!(
                    "blockhash={} txs={}",
                    txs.block_hash,
                    txs.transactions.len()
                ),
                json!({
                    "blockhash": txs.block_hash.to_string(),
                    "txids": txs.transactions.iter().map(|t| t.compute_txid().to_string()).collect::<Vec<_>>(),
                }),
            )
        }
        NetworkMessage::MerkleBlock(m) => (
            format!(
                "hash={} txs={}",
                m.header.block_hash(),
                m.txn.num_transactions()
            ),
            json!({ "header": header_json(&m.header), "tx_count": m.txn.num_transactions() }),
        ),
        NetworkMessage::FilterLoad(f) => (
            format!(
                "filter={} bytes hash_funcs={} tweak={:#x} flags={:?}",
                f.filter.len(),
                f.hash_funcs,
                f.tweak,
                f.flags
            ),
            json!({
                "filter": f.filter.to_lower_hex_string(),
                "hash_funcs": f.hash_funcs,
                "tweak": f.tweak,
                "flags": format!("{:?}", f.flags),
            }),
        ),
        NetworkMessage::FilterAdd(f) => (
            format!("data={}", f.data.to_lower_hex_string()),
            json!({ "data": f.data.to_lower_hex_string() }),
        ),
        NetworkMessage::GetCFilters(g) => filter_range(g.filter_type, g.start_height, &g.stop_hash),
        NetworkMessage::CFilter(c) => (
            format!(
                "filter_type={} blockhash={} filter={} bytes",
                c.filter_type,
                c.block_hash,
                c.filter.len()
            ),
            json!({ "filter_type": c.filter_type, "blockhash": c.block_hash.to_string(), "filter": c.filter.to_lower_hex_string() }),
        ),
        NetworkMessage::GetCFHeaders(g) => {
            filter_range(g.filter_type, g.start_height, &g.stop_hash)
        }
        NetworkMessage::CFHeaders(c) => (
            format!(
                "filter_type={} stop_hash={} filter_hashes={}",
                c.filter_type,
                c.stop_hash,
                c.filter_hashes.len()
            ),
            json!({
                "filter_type": c.filter_type,
                "stop_hash": c.stop_hash.to_string(),
                "previous_filter_header": c.previous_filter_header.to_string(),
                "filter_hashes": c.filter_hashes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        NetworkMessage::GetCFCheckpt(g) => (
            format!("filter_type={} stop_hash={}", g.filter_type, g.stop_hash),
            json!({ "filter_type": g.filter_type, "stop_hash": g.stop_hash.to_string() }),
        ),
        NetworkMessage::CFCheckpt(c) => (
            format!(
                "filter_type={} stop_hash={} filter_headers={}",
                c.filter_type,
                c.stop_hash,
                c.filter_headers.len()
            ),
            json!({
                "filter_type": c.filter_type,
                "stop_hash": c.stop_hash.to_string(),
                "filter_headers": c.filter_headers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        NetworkMessage::Alert(bytes) => (
            format!("{} bytes", bytes.len()),
            json!({ "alert": bytes.to_lower_hex_string() }),
        ),
        NetworkMessage::Reject(r) => (
            format!(
                "message={} code={:?} reason={:?} hash={}",
                r.message, r.ccode, r.reason, r.hash
            ),
            json!({
                "message": r.message,
                "code": format!("{:?}", r.ccode),
                "reason": r.reason,
                "hash": r.hash.to_string(),
            }),
        ),
        // Messages without fields.
        NetworkMessage::Verack
        | NetworkMessage::SendHeaders
        | NetworkMessage::GetAddr
        | NetworkMessage::MemPool
        | NetworkMessage::FilterClear
        | NetworkMessage::WtxidRelay
        | NetworkMessage::SendAddrV2 => (String::new(), json!({})),
        // Handled by `decode` before it gets here.
        NetworkMessage::Unknown { payload, .. } => (
            payload.to_lower_hex_string(),
            json!(payload.to_lower_hex_string()),
        ),
    }
}

fn describe_version(v: &VersionMessage) -> (String, Value) {
    let summary = format!(
        "version={} ua={:?} services={} blocks={} relay={} addr_recv={} addr_from={} nonce={:#018x}",
        v.version,
        v.user_agent,
        services_names(v.services).join("|"),
        v.start_height,
        v.relay,
        format_address(&v.receiver),
        format_address(&v.sender),
        v.nonce
    );
    let body = json!({
        "version": v.version,
        "services": services_hex(v.services),
        "servicesnames": services_names(v.services),
        "timestamp": v.timestamp,
        "addr_recv": { "services": services_hex(v.receiver.services), "addr": format_address(&v.receiver) },
        "addr_from": { "services": services_hex(v.sender.services), "addr": format_address(&v.sender) },
        "nonce": v.nonce,
        "user_agent": v.user_agent,
        "start_height": v.start_height,
        "relay": v.relay,
    });
    (summary, body)
}

fn describe_addrv2(entries: &[AddrV2Message]) -> (String, Value) {
    let addrs: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "time": e.time,
                "services": services_hex(e.services),
                "network": addrv2_network(&e.addr),
                "addr": format_addrv2(&e.addr, e.port),
            })
        })
        .collect();
    let names = entries.iter().map(|e| format_addrv2(&e.addr, e.port));
    (
        list_summary(("address", "addresses"), entries.len(), names),
        json!({ "addrs": addrs }),
    )
}

fn describe_inventory(items: &[Inventory]) -> (String, Value) {
    let entries: Vec<Value> = items
        .iter()
        .map(|item| {
            let (kind, hash) = inventory_parts(item);
            json!({ "type": inventory_type_name(item), "kind": kind, "hash": hash })
        })
        .collect();
    let names = items.iter().map(|item| {
        let (kind, hash) = inventory_parts(item);
        format!("{kind} {hash}")
    });
    (
        list_summary(("item", "items"), items.len(), names),
        json!({ "inventory": entries }),
    )
}

fn describe_locator(version: u32, locator: &[BlockHash], stop: &BlockHash) -> (String, Value) {
    let first = locator.first().map(|h| format!(" {h}")).unwrap_or_default();
    (
        format!(
            "version={version} locator={}{first} stop_hash={stop}",
            locator.len()
        ),
        json!({
            "version": version,
            "locator": locator.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "stop_hash": stop.to_string(),
        }),
    )
}

/// `getcfilters` and `getcfheaders` ask for the same range (BIP 157).
fn filter_range(filter_type: u8, start_height: u32, stop_hash: &BlockHash) -> (String, Value) {
    (
        format!("filter_type={filter_type} start_height={start_height} stop_hash={stop_hash}"),
        json!({ "filter_type": filter_type, "start_height": start_height, "stop_hash": stop_hash.to_string() }),
    )
}

fn describe_tx(tx: &Transaction) -> (String, Value) {
    let txid = tx.compute_txid();
    let wtxid = tx.compute_wtxid();
    let summary = format!(
        "txid={txid} wtxid={wtxid} vin={} vout={} vsize={}",
        tx.input.len(),
        tx.output.len(),
        tx.vsize()
    );
    let body = json!({
        "txid": txid.to_string(),
        "wtxid": wtxid.to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": tx.input.iter().map(|i| json!({
            "txid": i.previous_output.txid.to_string(),
            "vout": i.previous_output.vout,
            "scriptSig": i.script_sig.as_bytes().to_lower_hex_string(),
            "txinwitness": i.witness.iter().map(|w| w.to_lower_hex_string()).collect::<Vec<_>>(),
            "sequence": i.sequence.0,
        })).collect::<Vec<_>>(),
        "vout": tx.output.iter().enumerate().map(|(n, o)| json!({
            "n": n,
            "value": o.value.to_sat(),
            "scriptPubKey": o.script_pubkey.as_bytes().to_lower_hex_string(),
        })).collect::<Vec<_>>(),
    });
    (summary, body)
}

fn describe_block(block: &Block) -> (String, Value) {
    let hash = block.block_hash();
    let size = serialize(block).len();
    let summary = format!(
        "hash={hash} prev={} txs={} size={size}",
        block.header.prev_blockhash,
        block.txdata.len()
    );
    let mut body = header_json(&block.header);
    body["size"] = json!(size);
    body["weight"] = json!(block.weight().to_wu());
    body["nTx"] = json!(block.txdata.len());
    body["tx"] = json!(block
        .txdata
        .iter()
        .map(|t| t.compute_txid().to_string())
        .collect::<Vec<_>>());
    (summary, body)
}

fn describe_headers(headers: &[Header]) -> (String, Value) {
    let summary = match (headers.first(), headers.last()) {
        (Some(first), Some(last)) if headers.len() > 1 => format!(
            "{} headers: {} … {}",
            headers.len(),
            first.block_hash(),
            last.block_hash()
        ),
        (Some(only), _) => format!("1 header: {}", only.block_hash()),
        _ => "0 headers".to_string(),
    };
    (
        summary,
        json!({ "headers": headers.iter().map(header_json).collect::<Vec<_>>() }),
    )
}

fn decode_sendtxrcncl(payload: &[u8]) -> Decoded {
    // BIP 330: version (u32) and salt (u64), little-endian, nothing else.
    let Ok(fields) = <[u8; 12]>::try_from(payload) else {
        return Decoded::raw(
            payload,
            UNDECODABLE,
            Some(format!(
                "sendtxrcncl payload is {} bytes, not 12",
                payload.len()
            )),
        );
    };
    let version = u32::from_le_bytes(fields[..4].try_into().expect("4 bytes"));
    let salt = u64::from_le_bytes(fields[4..].try_into().expect("8 bytes"));
    Decoded::with_fields(
        format!("version={version} salt={salt:#018x}"),
        json!({ "version": version, "salt": salt }),
        payload,
    )
}

fn header_json(header: &Header) -> Value {
    json!({
        "hash": header.block_hash().to_string(),
        "version": header.version.to_consensus(),
        "previousblockhash": header.prev_blockhash.to_string(),
        "merkleroot": header.merkle_root.to_string(),
        "time": header.time,
        "bits": format!("{:08x}", header.bits.to_consensus()),
        "nonce": header.nonce,
    })
}

/// "3 items: a, b, c" or "12 items: a, b, c, d, +8 more"; `noun` is
/// (singular, plural).
fn list_summary(noun: (&str, &str), count: usize, names: impl Iterator<Item = String>) -> String {
    let noun = if count == 1 { noun.0 } else { noun.1 };
    let mut out = format!("{count} {noun}");
    for (i, name) in names.take(SUMMARY_ITEMS).enumerate() {
        out.push_str(if i == 0 { ": " } else { ", " });
        out.push_str(&name);
    }
    if count > SUMMARY_ITEMS {
        let _ = write!(out, ", +{} more", count - SUMMARY_ITEMS);
    }
    out
}

/// The inventory kind as Bitcoin Core's `CInv::GetMessageType` names it, and
/// the hash in display order.
fn inventory_parts(item: &Inventory) -> (String, String) {
    match item {
        Inventory::Error => ("error".into(), BlockHash::all_zeros().to_string()),
        Inventory::Transaction(h) => ("tx".into(), h.to_string()),
        Inventory::Block(h) => ("block".into(), h.to_string()),
        Inventory::CompactBlock(h) => ("cmpctblock".into(), h.to_string()),
        Inventory::WTx(h) => ("wtx".into(), h.to_string()),
        Inventory::WitnessTransaction(h) => ("witness-tx".into(), h.to_string()),
        Inventory::WitnessBlock(h) => ("witness-block".into(), h.to_string()),
        Inventory::Unknown { inv_type, hash } => {
            let hash = BlockHash::from_byte_array(*hash).to_string();
            let kind = match inv_type {
                3 => "merkleblock".to_string(),
                0x4000_0003 => "witness-merkleblock".to_string(),
                other => format!("{other:#010x}"),
            };
            (kind, hash)
        }
    }
}

/// The inventory type's constant in Bitcoin Core (`MSG_WTX`, ...).
fn inventory_type_name(item: &Inventory) -> String {
    match item {
        Inventory::Error => "UNDEFINED".into(),
        Inventory::Transaction(_) => "MSG_TX".into(),
        Inventory::Block(_) => "MSG_BLOCK".into(),
        Inventory::CompactBlock(_) => "MSG_CMPCT_BLOCK".into(),
        Inventory::WTx(_) => "MSG_WTX".into(),
        Inventory::WitnessTransaction(_) => "MSG_WITNESS_TX".into(),
        Inventory::WitnessBlock(_) => "MSG_WITNESS_BLOCK".into(),
        Inventory::Unknown { inv_type: 3, .. } => "MSG_FILTERED_BLOCK".into(),
        Inventory::Unknown {
            inv_type: 0x4000_0003,
            ..
        } => "MSG_FILTERED_WITNESS_BLOCK".into(),
        Inventory::Unknown { inv_type, .. } => format!("{inv_type:#010x}"),
    }
}

/// Service bits as `getpeerinfo` prints them: 16 hex digits.
fn services_hex(services: ServiceFlags) -> String {
    format!("{:016x}", services.to_u64())
}

/// Service bit names as Bitcoin Core's `serviceFlagToStr` gives them.
fn services_names(services: ServiceFlags) -> Vec<String> {
    let bits = services.to_u64();
    (0..64)
        .filter(|bit| bits & (1 << bit) != 0)
        .map(|bit| match bit {
            0 => "NETWORK".to_string(),
            1 => "GETUTXO".to_string(),
            2 => "BLOOM".to_string(),
            3 => "WITNESS".to_string(),
            6 => "COMPACT_FILTERS".to_string(),
            10 => "NETWORK_LIMITED".to_string(),
            11 => "P2P_V2".to_string(),
            other => format!("UNKNOWN[2^{other}]"),
        })
        .collect()
}

/// A version-1 (`addr`, `version`) address the way Bitcoin Core prints it:
/// `a.b.c.d:port` for IPv4-mapped addresses, `[v6]:port` otherwise.
fn format_address(address: &Address) -> String {
    let ip = Ipv6Addr::from(address.address);
    match ip.to_ipv4_mapped() {
        Some(v4) => format!("{v4}:{}", address.port),
        None => format!("[{ip}]:{}", address.port),
    }
}

/// BIP 155 network name of an address.
fn addrv2_network(addr: &AddrV2) -> &'static str {
    match addr {
        AddrV2::Ipv4(_) => "ipv4",
        AddrV2::Ipv6(_) => "ipv6",
        AddrV2::TorV2(_) | AddrV2::TorV3(_) => "onion",
        AddrV2::I2p(_) => "i2p",
        AddrV2::Cjdns(_) => "cjdns",
        AddrV2::Unknown(..) => "unknown",
    }
}

/// A BIP 155 address the way Bitcoin Core's `CService::ToStringAddrPort`
/// prints it: Tor v3 as its `.onion` name (with the checksum of rend-spec-v3),
/// I2P as its `.b32.i2p` name.
fn format_addrv2(addr: &AddrV2, port: u16) -> String {
    match addr {
        AddrV2::Ipv4(ip) => format!("{ip}:{port}"),
        AddrV2::Ipv6(ip) | AddrV2::Cjdns(ip) => format!("[{ip}]:{port}"),
        AddrV2::TorV2(key) => format!("{}.onion:{port}", base32(key)),
        AddrV2::TorV3(pubkey) => format!("{}:{port}", onion_v3_name(pubkey)),
        AddrV2::I2p(hash) => format!("{}.b32.i2p:{port}", base32(hash)),
        AddrV2::Unknown(network, bytes) => {
            format!(
                "unknown-network-{network}:{}:{port}",
                bytes.to_lower_hex_string()
            )
        }
    }
}

/// The `.onion` name of a Tor v3 service: base32 of pubkey, checksum and
/// version, where the checksum is the first two bytes of
/// SHA3-256(".onion checksum" || pubkey || version) (rend-spec-v3 §6).
fn onion_v3_name(pubkey: &[u8; 32]) -> String {
    const VERSION: u8 = 3;
    let mut hasher = Sha3_256::new();
    hasher.update(b".onion checksum");
    hasher.update(pubkey);
    hasher.update([VERSION]);
    let checksum = hasher.finalize();
    let mut bytes = Vec::with_capacity(35);
    bytes.extend_from_slice(pubkey);
    bytes.extend_from_slice(&checksum[..2]);
    bytes.push(VERSION);
    format!("{}.onion", base32(&bytes))
}

/// RFC 4648 base32, lower case, without padding, as Tor and I2P names use.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p;
    use bitcoin::p2p::message_compact_blocks::SendCmpct;
    use std::net::Ipv4Addr;

    fn payload(msg: &NetworkMessage) -> Vec<u8> {
        serialize(msg)
    }

    #[test]
    fn version_fields_are_decoded() {
        let version = VersionMessage {
            version: 70016,
            services: ServiceFlags::NETWORK | ServiceFlags::WITNESS,
            timestamp: 1_700_000_000,
            receiver: Address::new(&"127.0.0.1:18444".parse().unwrap(), ServiceFlags::NONE),
            sender: Address::new(
                &"[2001:db8::1]:8333".parse().unwrap(),
                ServiceFlags::NETWORK,
            ),
            nonce: 0x0102_0304_0506_0708,
            user_agent: "/Satoshi:27.0.0/".into(),
            start_height: 840_000,
            relay: true,
        };
        let d = decode("version", &payload(&NetworkMessage::Version(version)));
        assert_eq!(d.error, None);
        assert_eq!(
            d.summary,
            "version=70016 ua=\"/Satoshi:27.0.0/\" services=NETWORK|WITNESS blocks=840000 relay=true \
             addr_recv=127.0.0.1:18444 addr_from=[2001:db8::1]:8333 nonce=0x0102030405060708"
        );
        let body = d.body.unwrap();
        assert_eq!(body["services"], "0000000000000009");
        assert_eq!(body["servicesnames"], json!(["NETWORK", "WITNESS"]));
        assert_eq!(body["addr_from"]["addr"], "[2001:db8::1]:8333");
    }

    #[test]
    fn inventory_names_follow_core() {
        let tx = p2p::test_transaction(1, 1);
        let msg = p2p::getdata(vec![
            Inventory::WTx(tx.compute_wtxid()),
            Inventory::WitnessTransaction(tx.compute_txid()),
            Inventory::Unknown {
                inv_type: 3,
                hash: [0; 32],
            },
        ]);
        let d = decode("getdata", &payload(&msg));
        assert!(
            d.summary.starts_with(&format!(
                "3 items: wtx {}, witness-tx {}, merkleblock 0000",
                tx.compute_wtxid(),
                tx.compute_txid()
            )),
            "{}",
            d.summary
        );
        let body = d.body.unwrap();
        assert_eq!(body["inventory"][0]["type"], "MSG_WTX");
        assert_eq!(body["inventory"][2]["type"], "MSG_FILTERED_BLOCK");

        let many = p2p::inv_wtx(&vec![tx.compute_wtxid(); 10]);
        assert!(decode("inv", &payload(&many))
            .summary
            .ends_with(", +6 more"));
    }

    #[test]
    fn tx_and_ping() {
        let tx = p2p::test_transaction(3, 2);
        let d = decode("tx", &payload(&NetworkMessage::Tx(tx.clone())));
        assert!(d.summary.starts_with(&format!(
            "txid={} wtxid={} vin=1 vout=2",
            tx.compute_txid(),
            tx.compute_wtxid()
        )));
        assert_eq!(d.body.unwrap()["vout"].as_array().unwrap().len(), 2);
        let d = decode("ping", &payload(&NetworkMessage::Ping(0xff)));
        assert_eq!(d.summary, "nonce=0x00000000000000ff");
        assert_eq!(d.body, Some(json!({"nonce": 255})));
    }

    #[test]
    fn empty_payloads_have_no_body() {
        let d = decode("verack", &[]);
        assert_eq!((d.summary.as_str(), d.body, d.error), ("", None, None));
        let d = decode(
            "sendcmpct",
            &payload(&NetworkMessage::SendCmpct(SendCmpct {
                send_compact: false,
                version: 2,
            })),
        );
        assert_eq!(d.summary, "announce=false version=2");
    }

    #[test]
    fn unknown_and_broken_payloads_come_back_raw() {
        let d = decode("peerlogtest", &[1, 2, 3]);
        assert_eq!(d.error, Some(UNRECOGNIZED));
        assert_eq!(d.body, Some(json!("010203")));
        assert_eq!(d.summary, "raw 010203");

        let d = decode("ping", &[1, 2, 3]);
        assert_eq!(d.error, Some(UNDECODABLE));
        assert_eq!(d.body, Some(json!("010203")));
        assert!(d.summary.starts_with("undecodable ("), "{}", d.summary);
        assert!(d.decode_error.is_some());

        let d = decode("block", &[0xff; 100]);
        assert_eq!(d.error, Some(UNDECODABLE));
        assert!(d.summary.ends_with('…'), "{}", d.summary);
    }

    #[test]
    fn sendtxrcncl_is_decoded_here() {
        let mut p = 1u32.to_le_bytes().to_vec();
        p.extend_from_slice(&7u64.to_le_bytes());
        let d = decode("sendtxrcncl", &p);
        assert_eq!(d.summary, "version=1 salt=0x0000000000000007");
        assert_eq!(decode("sendtxrcncl", &p[..5]).error, Some(UNDECODABLE));
    }

    /// RFC 4648 base32 decoding (lower case, no padding), the inverse of `base32`.
    fn unbase32(s: &str) -> Vec<u8> {
        let (mut buffer, mut bits, mut out) = (0u64, 0, Vec::new());
        for c in s.bytes() {
            let v = match c {
                b'a'..=b'z' => c - b'a',
                b'2'..=b'7' => c - b'2' + 26,
                _ => panic!("not base32: {c}"),
            };
            buffer = (buffer << 5) | u64::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push((buffer >> bits) as u8);
            }
        }
        out
    }

    #[test]
    fn addrv2_names_like_core() {
        // A real v3 service name (from Bitcoin Core's netbase tests): its
        // last three bytes are the checksum Tor computed and the version, so
        // rebuilding the name from the public key checks our checksum.
        let onion = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd";
        let bytes = unbase32(onion);
        assert_eq!(bytes.len(), 35);
        let pubkey: [u8; 32] = bytes[..32].try_into().unwrap();
        assert_eq!(
            format_addrv2(&AddrV2::TorV3(pubkey), 8333),
            format!("{onion}.onion:8333")
        );
        assert_eq!(
            format_addrv2(&AddrV2::Ipv4(Ipv4Addr::new(1, 2, 3, 4)), 1),
            "1.2.3.4:1"
        );
        assert_eq!(
            format_addrv2(&AddrV2::I2p([0; 32]), 0),
            format!("{}.b32.i2p:0", "a".repeat(52))
        );
        assert_eq!(base32(&[0xff; 5]), "77777777");
        assert_eq!(base32(b"f"), "my");
    }
}
