//! The facts statistics read out of message payloads, decoded with the
//! `bitcoin` crate's P2P types (`bitcoin::consensus::deserialize` of the
//! payload's own type: no hand-written decoders, and no checksum to compute
//! as a whole-frame decode would need); of `addr`/`addrv2` only the leading
//! entry count is decoded.

use bitcoin::{
    consensus::{
        deserialize, deserialize_partial,
        encode::{self, VarInt},
    },
    hashes::Hash,
    p2p::{message_blockdata::Inventory, message_compact_blocks::SendCmpct},
    Transaction,
};

/// A transaction id or wtxid, internal byte order. `getdata` names a
/// transaction by either, and a `tx` answers both, so requests are keyed by
/// the bare hash (a txid and a wtxid never collide in practice).
pub type TxHash = [u8; 32];

/// What statistics need from one payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facts {
    /// `inv`, `getdata`, `notfound`: the transaction entries (`MSG_TX`,
    /// `MSG_WITNESS_TX` by txid, `MSG_WTX` by wtxid).
    Inventory {
        /// Hashes of the transaction entries, in order.
        tx_hashes: Vec<TxHash>,
    },
    /// `tx`: the transaction's ids.
    Tx {
        /// Txid.
        txid: TxHash,
        /// Wtxid (equal to the txid without witness data).
        wtxid: TxHash,
    },
    /// `ping` with its nonce.
    Ping(u64),
    /// `pong` with its nonce.
    Pong(u64),
    /// `sendcmpct` (BIP152).
    SendCmpct(CompactMode),
    /// `addr`, `addrv2`: how many address entries the message says it
    /// holds (its leading CompactSize). The entries themselves are only
    /// measured: statistics count them, as Bitcoin Core's rate limit does
    /// (see [`super::addr`]).
    Addr {
        /// Entries, as the message's count says.
        entries: u64,
    },
}

/// A `sendcmpct` announcement: which compact block relay mode one side asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompactMode {
    /// High-bandwidth mode: new blocks are pushed as `cmpctblock` before
    /// validation, instead of announced.
    pub high_bandwidth: bool,
    /// Compact block protocol version (2: with witnesses).
    pub version: u64,
}

/// The outcome of looking at one payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A payload statistics read, decoded.
    Facts(Facts),
    /// A message type statistics do not read the payload of.
    NotNeeded,
    /// Statistics read this type, but the payload was not copied out of
    /// bitcoind (or did not arrive whole).
    Missing,
    /// The payload does not decode as its type.
    Undecodable,
}

/// The message types whose payloads statistics read.
pub const PAYLOAD_TYPES: [&str; 9] = [
    "inv",
    "getdata",
    "notfound",
    "tx",
    "ping",
    "pong",
    "sendcmpct",
    "addr",
    "addrv2",
];

/// Reads the facts statistics need from a payload of type `msg_type`.
pub fn parse(msg_type: &str, payload: Option<&[u8]>) -> Parsed {
    if !PAYLOAD_TYPES.contains(&msg_type) {
        return Parsed::NotNeeded;
    }
    let Some(payload) = payload else {
        return Parsed::Missing;
    };
    let facts = match msg_type {
        "inv" | "getdata" | "notfound" => {
            deserialize::<Vec<Inventory>>(payload).map(|items| Facts::Inventory {
                tx_hashes: items.iter().filter_map(tx_hash).collect(),
            })
        }
        "tx" => deserialize::<Transaction>(payload).map(|tx| Facts::Tx {
            txid: tx.compute_txid().to_byte_array(),
            wtxid: tx.compute_wtxid().to_byte_array(),
        }),
        // Bitcoin Core reads a nonce's 8 bytes and ignores anything after them.
        "ping" => deserialize_partial::<u64>(payload).map(|(nonce, _)| Facts::Ping(nonce)),
        "pong" => deserialize_partial::<u64>(payload).map(|(nonce, _)| Facts::Pong(nonce)),
        "sendcmpct" => deserialize::<SendCmpct>(payload).map(|s| {
            Facts::SendCmpct(CompactMode {
                high_bandwidth: s.send_compact,
                version: s.version,
            })
        }),
        "addr" => addr_entries(payload, ADDR_ENTRY_LEN),
        "addrv2" => addr_entries(payload, ADDRV2_ENTRY_MIN_LEN),
        _ => unreachable!("PAYLOAD_TYPES lists every type handled here"),
    };
    facts.map_or(Parsed::Undecodable, Parsed::Facts)
}

/// Bytes of one `addr` entry: time (4), services (8), IPv6 or IPv4-mapped
/// address (16), port (2); Bitcoin Core's `CAddress` in `V1_NETWORK` format.
const ADDR_ENTRY_LEN: usize = 30;
/// Bytes of the shortest `addrv2` entry (BIP155): time (4), services
/// (CompactSize, ≥ 1), network id (1), address length (CompactSize, ≥ 1),
/// an empty address, port (2).
const ADDRV2_ENTRY_MIN_LEN: usize = 9;

/// The `addr`/`addrv2` facts: the entry count the payload leads with. The
/// entries are not decoded, only measured: their content is for Bitcoin
/// Core's address manager, and one entry the `bitcoin` crate reads more
/// strictly than Core (an IPv4-mapped address under BIP155's IPv6 network
/// id, which Core keeps as an invalid address and the crate refuses) would
/// turn a flood into an undecodable message that counts nothing. A payload too short for the entries it announces is
/// undecodable, as Bitcoin Core fails to read it (and its rate limit never
/// sees it).
fn addr_entries(payload: &[u8], entry_min_len: usize) -> Result<Facts, encode::Error> {
    let (count, used) = deserialize_partial::<VarInt>(payload)?;
    let room = (payload.len() - used) / entry_min_len;
    if count.0 > room as u64 {
        return Err(encode::Error::ParseFailed(
            "fewer bytes than the entries announced",
        ));
    }
    Ok(Facts::Addr { entries: count.0 })
}

/// The hash of a transaction inventory entry; None for other entries.
fn tx_hash(item: &Inventory) -> Option<TxHash> {
    match item {
        Inventory::Transaction(txid) | Inventory::WitnessTransaction(txid) => {
            Some(txid.to_byte_array())
        }
        Inventory::WTx(wtxid) => Some(wtxid.to_byte_array()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::{getdata_tx, inv_block, inv_wtx, test_transaction};
    use bitcoin::{consensus::serialize, p2p::message::NetworkMessage};

    fn payload(msg: &NetworkMessage) -> Vec<u8> {
        match msg {
            NetworkMessage::Inv(items) | NetworkMessage::GetData(items) => serialize(items),
            other => panic!("not an inventory message: {other:?}"),
        }
    }

    #[test]
    fn inventory_entries_of_transactions_only() {
        let txs: Vec<_> = (0..3).map(|i| test_transaction(i, 1)).collect();
        let wtxids: Vec<_> = txs.iter().map(|t| t.compute_wtxid()).collect();
        let inv = payload(&inv_wtx(&wtxids));
        let Parsed::Facts(Facts::Inventory { tx_hashes }) = parse("inv", Some(&inv)) else {
            panic!("inv did not parse");
        };
        assert_eq!(tx_hashes[1], wtxids[1].to_byte_array());
        assert_eq!(tx_hashes.len(), 3);

        let blocks = payload(&inv_block(&[bitcoin::BlockHash::all_zeros()]));
        assert_eq!(
            parse("inv", Some(&blocks)),
            Parsed::Facts(Facts::Inventory { tx_hashes: vec![] })
        );
        let txids: Vec<_> = txs.iter().map(|t| t.compute_txid()).collect();
        let getdata = payload(&getdata_tx(&txids));
        assert!(matches!(
            parse("getdata", Some(&getdata)),
            Parsed::Facts(Facts::Inventory { tx_hashes }) if tx_hashes.len() == 3
        ));
    }

    #[test]
    fn tx_ids_ping_pong_sendcmpct() {
        let tx = test_transaction(9, 2);
        assert_eq!(
            parse("tx", Some(&serialize(&tx))),
            Parsed::Facts(Facts::Tx {
                txid: tx.compute_txid().to_byte_array(),
                wtxid: tx.compute_wtxid().to_byte_array(),
            })
        );
        assert_eq!(
            parse("ping", Some(&7u64.to_le_bytes())),
            Parsed::Facts(Facts::Ping(7))
        );
        assert_eq!(
            parse("pong", Some(&7u64.to_le_bytes())),
            Parsed::Facts(Facts::Pong(7))
        );
        let mut cmpct = vec![1u8];
        cmpct.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(
            parse("sendcmpct", Some(&cmpct)),
            Parsed::Facts(Facts::SendCmpct(CompactMode {
                high_bandwidth: true,
                version: 2
            }))
        );
    }

    #[test]
    fn missing_undecodable_and_unneeded() {
        assert_eq!(parse("block", None), Parsed::NotNeeded);
        assert_eq!(parse("tx", None), Parsed::Missing);
        assert_eq!(parse("ping", Some(&[1, 2, 3])), Parsed::Undecodable);
        // Bytes after a nonce are ignored, as in Bitcoin Core; after an inventory they are not.
        assert_eq!(parse("pong", Some(&[0; 9])), Parsed::Facts(Facts::Pong(0)));
        assert_eq!(parse("inv", Some(&[0, 0])), Parsed::Undecodable);
    }

    #[test]
    fn addr_entries_counted_by_the_leading_compact_size() {
        use bitcoin::p2p::{
            address::{AddrV2, AddrV2Message, Address},
            ServiceFlags,
        };
        let entry = Address::new(&"10.0.0.1:8333".parse().unwrap(), ServiceFlags::NETWORK);
        let addr: Vec<(u32, Address)> = vec![(1, entry); 1000];
        let bytes = serialize(&addr);
        // 1000 takes a three-byte CompactSize.
        assert_eq!(bytes.len(), 3 + 1000 * ADDR_ENTRY_LEN);
        assert_eq!(
            parse("addr", Some(&bytes)),
            Parsed::Facts(Facts::Addr { entries: 1000 })
        );
        let v2 = vec![
            AddrV2Message {
                time: 1,
                services: ServiceFlags::NETWORK,
                addr: AddrV2::Ipv4("10.0.0.2".parse().unwrap()),
                port: 8333,
            };
            3
        ];
        assert_eq!(
            parse("addrv2", Some(&serialize(&v2))),
            Parsed::Facts(Facts::Addr { entries: 3 })
        );
        // An empty message counts no entry.
        assert_eq!(
            parse("addrv2", Some(&[0])),
            Parsed::Facts(Facts::Addr { entries: 0 })
        );
    }

    #[test]
    fn addr_without_a_count_or_its_entries_is_undecodable() {
        assert_eq!(parse("addr", Some(&[])), Parsed::Undecodable);
        // A CompactSize announcing a 2-byte count, cut short.
        assert_eq!(parse("addrv2", Some(&[0xfd, 0xe8])), Parsed::Undecodable);
        // 1000 entries announced, one sent.
        let mut short = vec![0xfd, 0xe8, 0x03];
        short.extend_from_slice(&[0; ADDR_ENTRY_LEN]);
        assert_eq!(parse("addr", Some(&short)), Parsed::Undecodable);
        // Nine bytes are the smallest addrv2 entry, 29 too few for addr.
        assert_eq!(
            parse("addrv2", Some(&[1, 0, 0, 0, 0, 0, 9, 0, 0, 0])),
            Parsed::Facts(Facts::Addr { entries: 1 })
        );
        assert_eq!(parse("addr", Some(&[1; 30])), Parsed::Undecodable);
        assert_eq!(parse("addr", None), Parsed::Missing);
    }
}
