//! Test traffic: message builders and deterministic transactions, for the
//! unit tests and, through the `test-fixtures` feature, the integration
//! tests and the load generator.

use bitcoin::hashes::{sha256d, Hash};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::{
    absolute, transaction, Amount, BlockHash, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Txid, Witness, Wtxid,
};

/// An `inv` announcing transactions by txid (`MSG_TX`).
///
/// A node that negotiated `wtxidrelay` with us ignores `MSG_TX`
/// announcements; use [`inv_wtx`] on such connections.
pub fn inv_tx(txids: &[Txid]) -> NetworkMessage {
    NetworkMessage::Inv(txids.iter().copied().map(Inventory::Transaction).collect())
}

/// An `inv` announcing transactions by wtxid (`MSG_WTX`, BIP 339), the form
/// expected after `wtxidrelay`.
pub fn inv_wtx(wtxids: &[Wtxid]) -> NetworkMessage {
    NetworkMessage::Inv(wtxids.iter().copied().map(Inventory::WTx).collect())
}

/// An `inv` announcing blocks (`MSG_BLOCK`).
pub fn inv_block(hashes: &[BlockHash]) -> NetworkMessage {
    NetworkMessage::Inv(hashes.iter().copied().map(Inventory::Block).collect())
}

/// A `getdata` for arbitrary inventory items.
pub fn getdata(items: Vec<Inventory>) -> NetworkMessage {
    NetworkMessage::GetData(items)
}

/// A `getdata` for transactions by txid, asking for the witness
/// serialization (`MSG_WITNESS_TX`), as Bitcoin Core asks.
pub fn getdata_tx(txids: &[Txid]) -> NetworkMessage {
    getdata(
        txids
            .iter()
            .copied()
            .map(Inventory::WitnessTransaction)
            .collect(),
    )
}

/// A `getdata` for transactions by wtxid (`MSG_WTX`).
pub fn getdata_wtx(wtxids: &[Wtxid]) -> NetworkMessage {
    getdata(wtxids.iter().copied().map(Inventory::WTx).collect())
}

/// A `getdata` for blocks with their witnesses (`MSG_WITNESS_BLOCK`).
pub fn getdata_block(hashes: &[BlockHash]) -> NetworkMessage {
    getdata(
        hashes
            .iter()
            .copied()
            .map(Inventory::WitnessBlock)
            .collect(),
    )
}

// 32 deterministic, random-looking bytes for (seed, label, index).
fn derived_bytes(seed: u32, label: &str, index: u32) -> [u8; 32] {
    let mut data = Vec::with_capacity(label.len() + 8);
    data.extend_from_slice(label.as_bytes());
    data.extend_from_slice(&seed.to_le_bytes());
    data.extend_from_slice(&index.to_le_bytes());
    sha256d::Hash::hash(&data).to_byte_array()
}

fn test_input(seed: u32) -> TxIn {
    let prevout = derived_bytes(seed, "peerlog prevout", 0);
    let vout = u32::from(prevout[31] % 4);
    // A P2WPKH-shaped witness: a 71-byte DER-like signature with
    // SIGHASH_ALL and a 33-byte compressed public key. It does not verify
    // (the prevout does not exist anyway), but has realistic sizes and makes
    // the transaction use BIP 144 serialization, so txid and wtxid differ.
    let r = derived_bytes(seed, "peerlog sig r", 0);
    let s = derived_bytes(seed, "peerlog sig s", 0);
    let mut sig = Vec::with_capacity(71);
    sig.extend_from_slice(&[0x30, 0x44, 0x02, 0x20]);
    sig.push((r[0] & 0x7f) | 0x01); // positive, no padding byte needed
    sig.extend_from_slice(&r[1..]);
    sig.extend_from_slice(&[0x02, 0x20]);
    sig.push((s[0] & 0x3f) | 0x01); // low S
    sig.extend_from_slice(&s[1..]);
    sig.push(0x01); // SIGHASH_ALL
    let x = derived_bytes(seed, "peerlog pubkey", 0);
    let mut pubkey = Vec::with_capacity(33);
    pubkey.push(0x02 | (x[31] & 1));
    pubkey.extend_from_slice(&x);
    TxIn {
        previous_output: OutPoint {
            txid: Txid::from_byte_array(prevout),
            vout,
        },
        script_sig: ScriptBuf::new(),
        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
        witness: Witness::from_slice(&[sig, pubkey]),
    }
}

/// A deterministic transaction for test traffic: the same `seed` and
/// `outputs` always give the same bytes, different seeds give different,
/// random-looking transactions.
///
/// Version 2, lock time 0, one input spending a made-up prevout with a
/// P2WPKH-shaped witness (so it is BIP 144 serialized and its wtxid differs
/// from its txid), and `outputs` P2WPKH outputs (OP_0 and a 20-byte
/// program) of 10,000 to 1,009,999 sat each, above the dust limit. It
/// parses everywhere, but a node cannot validate it: the prevout is unknown,
/// so Bitcoin Core treats it as an orphan (and may ask us for the parent),
/// which is harmless test traffic. A node still in initial block download
/// (a fresh regtest) ignores transactions altogether.
///
/// With `outputs == 0` this is the invalid transaction of
/// [`invalid_test_transaction`].
pub fn test_transaction(seed: u32, outputs: usize) -> Transaction {
    let output = (0..outputs)
        .map(|i| {
            let i = u32::try_from(i).expect("fewer than 2^32 outputs");
            let h = derived_bytes(seed, "peerlog output", i);
            let value =
                10_000 + u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]])) % 1_000_000;
            let mut script = Vec::with_capacity(22);
            script.extend_from_slice(&[0x00, 0x14]); // OP_0, push 20 bytes
            script.extend_from_slice(&h[4..24]);
            TxOut {
                value: Amount::from_sat(value),
                script_pubkey: ScriptBuf::from_bytes(script),
            }
        })
        .collect();
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![test_input(seed)],
        output,
    }
}

/// A deterministic transaction that parses but is consensus-invalid: like
/// [`test_transaction`] but with no outputs, which Bitcoin Core rejects in
/// `CheckTransaction` with `bad-txns-vout-empty`.
///
/// Why no outputs rather than no inputs: a transaction without inputs cannot
/// be serialized unambiguously. The `bitcoin` crate writes it with the
/// segwit marker and flag (`00 01`) so it round-trips, but Bitcoin Core reads
/// that as a segwit transaction without witnesses and fails to deserialize it
/// ("Superfluous witness record"), so the node never gets to reject it as
/// invalid. With one input and no outputs there is no such ambiguity.
///
/// Expect the node to disconnect us for it (it treats consensus-invalid
/// transactions as misbehaviour) unless our connection has the `noban`
/// permission (`-whitelist=noban@127.0.0.1`).
pub fn invalid_test_transaction(seed: u32) -> Transaction {
    test_transaction(seed, 0)
}
