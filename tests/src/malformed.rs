//! Malformed P2P messages, and a driver that sends them to a node.
//!
//! Bitcoin Core's `PeerManagerImpl::ProcessMessage` deserializes a payload
//! from a `DataStream`, which throws `std::ios_base::failure` when a payload
//! is short, a CompactSize is not canonical or exceeds `MAX_SIZE`, a vector
//! claims more elements than the payload holds, and so on. The exception
//! leaves `ProcessMessage` and is caught in `ProcessMessages`: any peer can
//! make a node unwind through `ProcessMessage`'s frame at will, and a tracer
//! that put a return probe (uretprobe) there makes the unwinder meet the
//! probe's trampoline instead of a return address and call `std::terminate`.
//!
//! [`cases`] lists malformed messages for every message type
//! `ProcessMessage` deserializes with bitcoind's default options (no bloom
//! filters, no BIP157 filters and no Erlay: `filterload`, `filteradd`,
//! `filterclear` and `sendtxrcncl` are refused or ignored before their payload
//! is read, so they are not listed), built from a well-formed payload:
//! cut short at several points inside its fields, random bytes,
//! CompactSize counts and lengths that are too large (over `MAX_SIZE`, over
//! the payload, over a protocol limit) or not canonical, and type-specific
//! errors. A few are well-formed but over a protocol limit (the node calls
//! the peer misbehaving or disconnects it) or carry a payload their type
//! has none of (the node ignores it): they are named as such.
//!
//! [`run`] sends them to a node over any [`Wire`] (peerlog's v1 [`P2pClient`]
//! implements it), each as a correctly framed message so that the transport
//! hands it to `ProcessMessage`, and waits after each until the node has
//! processed it. A node may close the connection over some of them (Bitcoin
//! Core does over a `getcfilters` it does not serve, say); `run` then goes on
//! over a new connection, and reports what the node processed on each.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bitcoin::hashes::{sha256, Hash};
use peerlog::p2p::{P2pClient, P2pError};

/// Bitcoin Core's `MAX_SIZE`: the largest CompactSize a length may have.
pub const MAX_SIZE: u64 = 0x0200_0000;
/// Bitcoin Core's `MAX_INV_SZ`: entries an `inv` or `getdata` may carry.
pub const MAX_INV_SZ: u64 = 50_000;
/// Bitcoin Core's `MAX_ADDR_TO_SEND`: addresses an `addr`/`addrv2` may carry.
pub const MAX_ADDR_TO_SEND: u64 = 1_000;
/// Bitcoin Core's `MAX_HEADERS_RESULTS`: headers a `headers` may carry.
pub const MAX_HEADERS_RESULTS: u64 = 2_000;
/// Bitcoin Core's `MAX_LOCATOR_SZ`: hashes a block locator may carry.
pub const MAX_LOCATOR_SZ: u64 = 101;

/// When a malformed message reaches the code that deserializes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// As a connection's first message: `version` is only deserialized then
    /// (later ones are dropped as redundant). [`run`] sends each on a
    /// connection of its own, followed by a proper handshake.
    FirstMessage,
    /// After a completed version handshake.
    AfterHandshake,
}

/// One malformed message.
#[derive(Clone, Debug)]
pub struct Malformed {
    /// The message type in its header.
    pub msg_type: &'static str,
    /// What is wrong with it.
    pub what: String,
    /// The payload, byte for byte.
    pub payload: Vec<u8>,
    /// When to send it.
    pub stage: Stage,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({} bytes)",
            self.msg_type,
            self.what,
            self.payload.len()
        )
    }
}

/// The kind of a CompactSize field, which decides the attacks that apply.
#[derive(Clone, Copy)]
enum Field {
    /// A vector or string length, read with `MAX_SIZE` checked.
    Length,
    /// A value (an index, a transaction count) read with `MAX_SIZE` checked.
    Value,
    /// A value read without the `MAX_SIZE` check (`addrv2` services): only
    /// a non-canonical encoding is an error.
    Unchecked,
}

/// A well-formed payload and where it can be broken.
struct Template {
    msg_type: &'static str,
    stage: Stage,
    payload: Vec<u8>,
    /// Lengths to cut the payload to. Each falls inside a field, never where
    /// the payload may legitimately end (`version` has optional trailing
    /// fields): for every other type a proper prefix of a well-formed
    /// payload always runs out of data.
    cuts: Vec<usize>,
    /// CompactSize fields, by offset; each holds a value below 253.
    fields: Vec<(usize, &'static str, Field)>,
    /// Whether random bytes are worth sending: not for fixed-size payloads,
    /// of which any bytes of the right length are well-formed.
    garbage: bool,
}

/// The CompactSize encoding of `n` (serialize.h `WriteCompactSize`).
pub fn compact_size(n: u64) -> Vec<u8> {
    match n {
        0..=252 => vec![n as u8],
        253..=0xffff => [&[0xfd][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0xfe][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[0xff][..], &n.to_le_bytes()].concat(),
    }
}

/// `len` deterministic bytes that look random, different for every `label`.
fn noise(label: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut seed = label.as_bytes().to_vec();
        seed.extend_from_slice(&counter.to_le_bytes());
        out.extend_from_slice(sha256::Hash::hash(&seed).as_byte_array());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// A 32-byte hash no node knows.
fn hash(label: &str) -> Vec<u8> {
    noise(label, 32)
}

/// An 80-byte block header (its content is never checked before the
/// payload has been read in full).
fn header(label: &str) -> Vec<u8> {
    let mut h = 0x2000_0000u32.to_le_bytes().to_vec();
    h.extend(hash(label)); // previous block
    h.extend(hash(&format!("{label} merkle")));
    h.extend(1_700_000_000u32.to_le_bytes());
    h.extend(0x207f_ffffu32.to_le_bytes());
    h.extend(0u32.to_le_bytes());
    h
}

/// A legacy transaction of 62 bytes: one input spending an unknown outpoint
/// with a one-byte scriptSig, one output with a one-byte script.
///
/// Offsets: version 0, input count 4, prevout 5, scriptSig length 41,
/// sequence 43, output count 47, value 48, scriptPubKey length 56,
/// lock time 58.
fn legacy_tx() -> Vec<u8> {
    let mut tx = 2u32.to_le_bytes().to_vec();
    tx.push(1);
    tx.extend(hash("malformed prevout"));
    tx.extend(0u32.to_le_bytes());
    tx.extend([1, 0x51]); // scriptSig: OP_TRUE
    tx.extend(0xffff_fffdu32.to_le_bytes());
    tx.push(1);
    tx.extend(50_000u64.to_le_bytes());
    tx.extend([1, 0x51]); // scriptPubKey: OP_TRUE
    tx.extend(0u32.to_le_bytes());
    tx
}

/// [`legacy_tx`] in the segwit serialization with marker 0 and `flag`,
/// and `witness` as the input's serialized witness stack.
fn segwit_tx(flag: u8, witness: &[u8]) -> Vec<u8> {
    let legacy = legacy_tx();
    let mut tx = legacy[..4].to_vec();
    tx.extend([0, flag]);
    tx.extend(&legacy[4..58]);
    tx.extend(witness);
    tx.extend(&legacy[58..]);
    tx
}

/// An `inv`-style vector of `n` entries of 36 bytes.
fn inventory(n: u64, label: &str) -> Vec<u8> {
    let mut p = compact_size(n);
    for i in 0..n {
        p.extend(5u32.to_le_bytes()); // MSG_WTX
        p.extend(hash(&format!("{label} {i}")));
    }
    p
}

/// A v1 `addr` entry: time, services, IPv4-mapped 192.0.2.1, port 18444.
fn addr_entry() -> Vec<u8> {
    let mut e = 1_700_000_000u32.to_le_bytes().to_vec();
    e.extend(9u64.to_le_bytes()); // NODE_NETWORK | NODE_WITNESS
    e.extend([0; 10]);
    e.extend([0xff, 0xff, 192, 0, 2, 1]);
    e.extend(18444u16.to_be_bytes());
    e
}

/// A BIP155 `addrv2` entry of network `net` with an address of `len` bytes.
fn addrv2_entry(net: u8, len: usize) -> Vec<u8> {
    let mut e = 1_700_000_000u32.to_le_bytes().to_vec();
    e.push(9); // services, CompactSize
    e.push(net);
    e.extend(compact_size(len as u64));
    e.extend(noise("addrv2 address", len));
    e.extend(18444u16.to_be_bytes());
    e
}

/// A block locator message (`getheaders`, `getblocks`) with `n` hashes.
fn locator(n: u64) -> Vec<u8> {
    let mut p = 70016u32.to_le_bytes().to_vec();
    p.extend(compact_size(n));
    for i in 0..n {
        p.extend(hash(&format!("locator {i}")));
    }
    p.extend([0; 32]); // hash_stop: none
    p
}

/// A `version` payload with the user agent `ua` (at most 252 bytes).
///
/// Offsets: version 0, services 4, time 12, addrMe 20, addrFrom 46, nonce
/// 72, user agent length 80, user agent 81, then start height and relay.
fn version(ua: &[u8]) -> Vec<u8> {
    let mut p = 70016u32.to_le_bytes().to_vec();
    p.extend(9u64.to_le_bytes());
    p.extend(1_700_000_000u64.to_le_bytes());
    for _ in 0..2 {
        p.extend(0u64.to_le_bytes());
        p.extend([0; 18]);
    }
    p.extend(noise("version nonce", 8));
    p.extend(compact_size(ua.len() as u64));
    p.extend(ua);
    p.extend(0i32.to_le_bytes());
    p.push(1);
    p
}

fn templates() -> Vec<Template> {
    let after = Stage::AfterHandshake;
    let fixed = |msg_type, payload: Vec<u8>, cuts: Vec<usize>| Template {
        msg_type,
        stage: after,
        payload,
        cuts,
        fields: vec![],
        garbage: false,
    };
    let ua = b"/peerlog-malformed:0.1/";
    let tx = legacy_tx();
    let mut block = header("block");
    block.push(1);
    block.extend(&tx);
    let mut headers = vec![1];
    headers.extend(header("headers"));
    headers.push(0);
    let mut cmpct = header("cmpctblock");
    cmpct.extend(noise("cmpctblock nonce", 8));
    cmpct.push(1);
    cmpct.extend(noise("short id", 6));
    cmpct.extend([1, 0]); // one prefilled transaction, index 0
    cmpct.extend(&tx);
    let mut blocktxn = hash("blocktxn");
    blocktxn.push(1);
    blocktxn.extend(&tx);
    let mut getblocktxn = hash("getblocktxn");
    getblocktxn.extend([2, 0, 0]); // indexes 0 and 1
    let mut cfilters = vec![0];
    cfilters.extend(0u32.to_le_bytes());
    cfilters.extend(hash("cfilters stop"));
    let mut cfcheckpt = vec![0];
    cfcheckpt.extend(hash("cfcheckpt stop"));
    let list = |msg_type, payload: Vec<u8>, cuts, fields| Template {
        msg_type,
        stage: after,
        payload,
        cuts,
        fields,
        garbage: true,
    };
    let count = |name| vec![(0, name, Field::Length)];
    vec![
        Template {
            msg_type: "version",
            stage: Stage::FirstMessage,
            payload: version(ua),
            // Not 46 (before addrFrom), 80 (before the user agent), nor
            // after the user agent or the start height: optional fields.
            cuts: vec![2, 8, 16, 30, 60, 76, 81 + ua.len() / 2, 81 + ua.len() + 2],
            fields: vec![(80, "user agent length", Field::Length)],
            garbage: false,
        },
        fixed("ping", 7u64.to_le_bytes().to_vec(), vec![1, 4, 7]),
        // bitcoind reads a short pong without throwing ("Short payload").
        fixed("pong", 7u64.to_le_bytes().to_vec(), vec![1, 4, 7]),
        fixed(
            "sendcmpct",
            [&[0][..], &2u64.to_le_bytes()].concat(),
            vec![1, 5, 8],
        ),
        fixed("feefilter", 1000i64.to_le_bytes().to_vec(), vec![1, 4, 7]),
        list(
            "inv",
            inventory(2, "inv"),
            vec![2, 5, 37, 40, 72],
            count("count"),
        ),
        list(
            "getdata",
            inventory(2, "getdata"),
            vec![2, 5, 37, 40, 72],
            count("count"),
        ),
        list(
            "notfound",
            inventory(2, "notfound"),
            vec![2, 5, 37, 40, 72],
            count("count"),
        ),
        list(
            "addr",
            [vec![1], addr_entry()].concat(),
            vec![1, 3, 10, 25, 30],
            count("count"),
        ),
        list(
            "addrv2",
            [vec![1], addrv2_entry(1, 4)].concat(),
            vec![1, 3, 5, 6, 7, 9, 12, 13],
            vec![
                (0, "count", Field::Length),
                (5, "services", Field::Unchecked),
                (7, "address length", Field::Length),
            ],
        ),
        list(
            "getheaders",
            locator(1),
            vec![2, 4, 5, 20, 37, 50, 68],
            vec![(4, "locator length", Field::Length)],
        ),
        list(
            "getblocks",
            locator(1),
            vec![2, 4, 5, 20, 37, 50, 68],
            vec![(4, "locator length", Field::Length)],
        ),
        list(
            "getblocktxn",
            getblocktxn,
            vec![16, 32, 33, 34],
            vec![
                (32, "index count", Field::Length),
                (33, "first index", Field::Value),
            ],
        ),
        list(
            "tx",
            tx.clone(),
            vec![3, 4, 5, 30, 41, 43, 47, 48, 56, 58, 61],
            vec![
                (4, "input count", Field::Length),
                (41, "scriptSig length", Field::Length),
                (47, "output count", Field::Length),
                (56, "scriptPubKey length", Field::Length),
            ],
        ),
        list(
            "block",
            block,
            vec![40, 80, 81, 100, 142],
            vec![
                (80, "transaction count", Field::Length),
                (85, "input count", Field::Length),
            ],
        ),
        list(
            "headers",
            headers,
            vec![1, 41, 81],
            vec![
                (0, "count", Field::Length),
                (81, "transaction count", Field::Value),
            ],
        ),
        list(
            "cmpctblock",
            cmpct,
            vec![40, 80, 88, 89, 92, 95, 96, 97, 120, 158],
            vec![
                (88, "short id count", Field::Length),
                (95, "prefilled count", Field::Length),
                (96, "prefilled index", Field::Value),
            ],
        ),
        list(
            "blocktxn",
            blocktxn,
            vec![16, 32, 33, 60, 94],
            vec![(32, "transaction count", Field::Length)],
        ),
        list(
            "getcfilters",
            cfilters.clone(),
            vec![1, 3, 5, 20, 36],
            vec![],
        ),
        list("getcfheaders", cfilters, vec![1, 3, 5, 20, 36], vec![]),
        list("getcfcheckpt", cfcheckpt, vec![1, 16, 32], vec![]),
    ]
}

/// Replaces the one-byte CompactSize at `at` with `encoding`.
fn splice(payload: &[u8], at: usize, encoding: &[u8]) -> Vec<u8> {
    [&payload[..at], encoding, &payload[at + 1..]].concat()
}

/// Every malformed message.
pub fn cases() -> Vec<Malformed> {
    let mut out = Vec::new();
    for t in templates() {
        let mut add = |what: String, payload: Vec<u8>| {
            out.push(Malformed {
                msg_type: t.msg_type,
                what,
                payload,
                stage: t.stage,
            })
        };
        add("empty".into(), vec![]);
        for &cut in &t.cuts {
            add(
                format!("cut to {cut} of {} bytes", t.payload.len()),
                t.payload[..cut].to_vec(),
            );
        }
        for &(at, name, kind) in &t.fields {
            let value = u64::from(t.payload[at]);
            assert!(
                value < 253,
                "{} {name} is not a one-byte CompactSize",
                t.msg_type
            );
            let mut encodings = vec![
                (
                    "as 3 bytes (non-canonical)",
                    [&[0xfd][..], &(value as u16).to_le_bytes()].concat(),
                ),
                (
                    "as 5 bytes (non-canonical)",
                    [&[0xfe][..], &(value as u32).to_le_bytes()].concat(),
                ),
                (
                    "as 9 bytes (non-canonical)",
                    [&[0xff][..], &value.to_le_bytes()].concat(),
                ),
            ];
            if !matches!(kind, Field::Unchecked) {
                encodings.extend([
                    ("= MAX_SIZE + 1", compact_size(MAX_SIZE + 1)),
                    ("= 2^32", compact_size(1 << 32)),
                    ("= 2^64 - 1", compact_size(u64::MAX)),
                ]);
            }
            if matches!(kind, Field::Length) {
                // Even elements of a single byte would not fit.
                assert!(t.payload.len() - at - 1 < 252, "{} {name}", t.msg_type);
                encodings.push(("252, more than the payload holds", compact_size(252)));
            }
            for (how, encoding) in encodings {
                add(format!("{name} {how}"), splice(&t.payload, at, &encoding));
            }
        }
        if t.garbage {
            for len in [5, 64, 1000] {
                add(
                    format!("{len} random bytes"),
                    noise(&format!("{} garbage", t.msg_type), len),
                );
            }
        }
    }
    out.extend(specials());
    out
}

/// Errors and limits particular to one message type.
fn specials() -> Vec<Malformed> {
    let mut v = version(b"")[..80].to_vec();
    v.extend(compact_size(257));
    v.extend([b'a'; 257]);
    v.extend([0, 0, 0, 0, 1]);
    let mut out = vec![Malformed {
        msg_type: "version",
        what: "user agent of 257 bytes (over MAX_SUBVERSION_LENGTH)".into(),
        payload: v,
        stage: Stage::FirstMessage,
    }];
    let mut add = |msg_type, what: &str, payload: Vec<u8>| {
        out.push(Malformed {
            msg_type,
            what: what.to_string(),
            payload,
            stage: Stage::AfterHandshake,
        })
    };

    for msg_type in ["inv", "getdata", "notfound"] {
        let mut p = compact_size(MAX_INV_SZ + 1);
        p.extend(&inventory(1, msg_type)[1..]);
        add(msg_type, "count MAX_INV_SZ + 1, one entry", p);
    }
    for msg_type in ["inv", "getdata"] {
        add(
            msg_type,
            "MAX_INV_SZ + 1 entries (well-formed, over the limit)",
            inventory(MAX_INV_SZ + 1, msg_type),
        );
    }
    for msg_type in ["addr", "addrv2"] {
        let entry = if msg_type == "addr" {
            addr_entry()
        } else {
            addrv2_entry(1, 4)
        };
        add(
            msg_type,
            "count MAX_ADDR_TO_SEND + 1, one address",
            [compact_size(MAX_ADDR_TO_SEND + 1), entry.clone()].concat(),
        );
        let mut p = compact_size(MAX_ADDR_TO_SEND + 1);
        for _ in 0..=MAX_ADDR_TO_SEND {
            p.extend(&entry);
        }
        add(
            msg_type,
            "MAX_ADDR_TO_SEND + 1 addresses (well-formed, over the limit)",
            p,
        );
    }
    for (net, len, what) in [
        (1, 16, "IPv4 address of 16 bytes"),
        (2, 4, "IPv6 address of 4 bytes"),
        (4, 31, "TORv3 address of 31 bytes"),
        (5, 33, "I2P address of 33 bytes"),
        (6, 0, "CJDNS address of 0 bytes"),
        (42, 513, "address of 513 bytes (unknown network)"),
        (42, 3, "unknown network 42 (well-formed, skipped)"),
    ] {
        add("addrv2", what, [vec![1], addrv2_entry(net, len)].concat());
    }
    for msg_type in ["getheaders", "getblocks"] {
        add(
            msg_type,
            "MAX_LOCATOR_SZ + 1 hashes (well-formed, over the limit)",
            locator(MAX_LOCATOR_SZ + 1),
        );
    }
    let mut p = hash("getblocktxn");
    p.extend([1, 0xfe, 0, 0, 1, 0]);
    add("getblocktxn", "index 65536 (over 16 bits)", p);
    let mut p = hash("getblocktxn");
    p.extend([2, 0xfd, 0xff, 0xff, 0]);
    add("getblocktxn", "indexes 65535 and 65536 (over 16 bits)", p);

    add(
        "tx",
        "segwit flag 2 (unknown optional data)",
        segwit_tx(2, &[]),
    );
    add(
        "tx",
        "segwit flag with an empty witness (superfluous witness record)",
        segwit_tx(1, &[0]),
    );
    add(
        "tx",
        "witness item count = 2^32",
        segwit_tx(1, &compact_size(1 << 32)),
    );
    add(
        "tx",
        "witness item longer than the payload",
        segwit_tx(1, &[1, 200, 0x51]),
    );

    let mut p = compact_size(MAX_HEADERS_RESULTS + 1);
    for i in 0..=MAX_HEADERS_RESULTS {
        p.extend(header(&format!("headers {i}")));
        p.push(0);
    }
    add(
        "headers",
        "MAX_HEADERS_RESULTS + 1 headers (well-formed, over the limit)",
        p,
    );

    let mut p = header("cmpctblock");
    p.extend(noise("cmpctblock nonce", 8));
    p.extend(compact_size(0xffff));
    p.extend(noise("short ids", 6 * 0xffff));
    p.extend([1, 0]);
    p.extend(legacy_tx());
    add(
        "cmpctblock",
        "65535 short ids and a prefilled transaction (indexes over 16 bits)",
        p,
    );
    let mut p = header("cmpctblock");
    p.extend(noise("cmpctblock nonce", 8));
    p.extend([0, 1]);
    p.extend(compact_size(0x1_0000));
    p.extend(legacy_tx());
    add("cmpctblock", "prefilled index 65536 (over 16 bits)", p);

    add(
        "feefilter",
        "-1 (well-formed, outside the money range)",
        (-1i64).to_le_bytes().to_vec(),
    );
    add(
        "feefilter",
        "21e14 + 1 (well-formed, outside the money range)",
        (21_000_000i64 * 100_000_000 + 1).to_le_bytes().to_vec(),
    );
    // Types without a payload: what they are sent is never read.
    for msg_type in ["verack", "sendheaders", "getaddr", "mempool"] {
        add(msg_type, "with a payload (ignored)", noise(msg_type, 5));
    }
    out
}

/// How a wait for the node ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The node answered.
    Answered,
    /// The node closed the connection first.
    Closed,
}

/// A connection [`run`] can drive: peerlog's v1 [`P2pClient`], or another
/// transport.
pub trait Wire {
    /// Our end of the connection, as the node (and peerlog) sees it.
    fn local_addr(&self) -> SocketAddr;
    /// Sends one message of any type with any payload, framed correctly.
    fn send_raw(&mut self, msg_type: &str, payload: &[u8]) -> io::Result<()>;
    /// Completes the version handshake.
    fn handshake(&mut self) -> Result<Reply>;
    /// Sends a `ping` and waits for its `pong`, answering the node's pings
    /// meanwhile: once answered, the node has processed everything sent
    /// before the ping.
    fn ping(&mut self, nonce: u64) -> Result<Reply>;
    /// How many messages were sent so far.
    fn sent_count(&self) -> usize;
    /// Every message sent, in order: (type, payload).
    fn into_sent(self) -> Vec<(String, Vec<u8>)>;
}

impl Wire for P2pClient {
    fn local_addr(&self) -> SocketAddr {
        P2pClient::local_addr(self)
    }

    fn send_raw(&mut self, msg_type: &str, payload: &[u8]) -> io::Result<()> {
        P2pClient::send_raw(self, msg_type, payload)
    }

    fn handshake(&mut self) -> Result<Reply> {
        reply(P2pClient::handshake(self)).context("version handshake")
    }

    fn ping(&mut self, nonce: u64) -> Result<Reply> {
        let r = reply(P2pClient::ping(self, nonce).map(drop));
        // What else the node sent (announcements, its own pings) is not
        // looked at; do not let it pile up.
        self.take_inbox();
        r.with_context(|| format!("ping {nonce}"))
    }

    fn sent_count(&self) -> usize {
        self.transcript().sent().count()
    }

    fn into_sent(mut self) -> Vec<(String, Vec<u8>)> {
        self.take_transcript()
            .sent()
            .map(|e| (e.msg_type.clone(), e.payload.clone()))
            .collect()
    }
}

fn reply(r: Result<(), P2pError>) -> Result<Reply> {
    match r {
        Ok(()) => Ok(Reply::Answered),
        Err(e) if e.is_disconnect() => Ok(Reply::Closed),
        Err(e) => Err(e.into()),
    }
}

/// What the node processed on one connection of [`run`].
#[derive(Debug)]
pub struct Connection {
    /// The client's end, as the node and peerlog see it.
    pub local: SocketAddr,
    /// The messages the client sent that the node processed, in order:
    /// (type, payload).
    pub processed: Vec<(String, Vec<u8>)>,
    /// The malformed message after which the node closed the connection,
    /// if it did.
    pub closed_by_node_after: Option<String>,
}

/// Sends every case to the node, over connections `connect` opens (TCP and
/// transport set up, no version handshake yet), and waits after each until
/// the node has processed it.
///
/// Each [`Stage::FirstMessage`] case opens a connection, followed by a
/// proper handshake and a ping. The [`Stage::AfterHandshake`] cases share
/// one handshaken connection, each followed by a ping; when the node closes
/// it, what it processed there ends with that case (the node handles a
/// peer's messages in order and none after deciding to disconnect it), and
/// the next case goes over a new connection. Every connection the node left
/// open is closed by us at the end, once the node has processed all of it.
///
/// An error (a connection refused, a ping unanswered within the transport's
/// timeout) names the case it happened at.
pub fn run<W: Wire>(
    cases: &[Malformed],
    connect: impl Fn() -> Result<W>,
) -> Result<Vec<Connection>> {
    let mut nonce = 0;
    let mut next_nonce = move || {
        nonce += 1;
        nonce
    };
    let mut done = Vec::new();
    // A node that stops accepting connections died of the last message sent.
    let mut last: Option<&Malformed> = None;
    let connecting = |case: &Malformed, last: Option<&Malformed>| match last {
        Some(last) => format!("connecting to send {case}, after {last}"),
        None => format!("connecting to send {case}"),
    };
    for case in cases.iter().filter(|c| c.stage == Stage::FirstMessage) {
        let mut wire = connect().with_context(|| connecting(case, last))?;
        last = Some(case);
        wire.send_raw(case.msg_type, &case.payload)
            .with_context(|| format!("sending {case}"))?;
        match wire.handshake().with_context(|| format!("after {case}"))? {
            Reply::Answered => done.push(settle(wire, &mut next_nonce, case)?),
            Reply::Closed => done.push(closed(wire, 1, case)),
        }
    }
    let mut open: Option<W> = None;
    for case in cases.iter().filter(|c| c.stage == Stage::AfterHandshake) {
        let mut wire = match open.take() {
            Some(wire) => wire,
            None => {
                let mut wire = connect().with_context(|| connecting(case, last))?;
                if wire.handshake()? == Reply::Closed {
                    bail!("the node closed a new connection during the handshake, before {case}");
                }
                wire
            }
        };
        wire.send_raw(case.msg_type, &case.payload)
            .with_context(|| format!("sending {case}"))?;
        last = Some(case);
        let processed = wire.sent_count();
        match wire
            .ping(next_nonce())
            .with_context(|| format!("waiting for the node to process {case}"))?
        {
            Reply::Answered => open = Some(wire),
            Reply::Closed => done.push(closed(wire, processed, case)),
        }
    }
    if let Some(wire) = open {
        let last = cases.last().context("no cases")?;
        done.push(settle(wire, &mut next_nonce, last)?);
    }
    Ok(done)
}

/// Pings until the node has processed everything we sent (a pong we sent
/// to the node's own ping while waiting is only known processed once a
/// later ping is answered), then hangs up.
fn settle<W: Wire>(
    mut wire: W,
    next_nonce: &mut impl FnMut() -> u64,
    after: &Malformed,
) -> Result<Connection> {
    loop {
        let before = wire.sent_count();
        if wire.ping(next_nonce())? == Reply::Closed {
            bail!("the node closed the connection after answering {after}");
        }
        if wire.sent_count() == before + 1 {
            break;
        }
    }
    Ok(Connection {
        local: wire.local_addr(),
        processed: wire.into_sent(),
        closed_by_node_after: None,
    })
}

/// A connection the node closed after processing its first `processed`
/// messages, the last of them `case`.
fn closed<W: Wire>(wire: W, processed: usize, case: &Malformed) -> Connection {
    let local = wire.local_addr();
    let mut sent = wire.into_sent();
    sent.truncate(processed);
    Connection {
        local,
        processed: sent,
        closed_by_node_after: Some(case.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_sizes_are_canonical() {
        assert_eq!(compact_size(252), [252]);
        assert_eq!(compact_size(253), [0xfd, 253, 0]);
        assert_eq!(compact_size(0x1_0000), [0xfe, 0, 0, 1, 0]);
        assert_eq!(compact_size(1 << 32), [0xff, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    /// The templates are well-formed, so that what is cut from or spliced
    /// into them is what makes a case malformed: the `bitcoin` crate reads
    /// each in full.
    #[test]
    fn templates_are_well_formed() {
        use bitcoin::consensus::deserialize_partial;
        use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
        use bitcoin::p2p::Magic;
        for t in templates() {
            let frame = peerlog::p2p::encode_frame(Magic::REGTEST, t.msg_type, &t.payload).unwrap();
            let (msg, used) = deserialize_partial::<RawNetworkMessage>(&frame)
                .unwrap_or_else(|e| panic!("{} template: {e}", t.msg_type));
            assert_eq!(used, frame.len(), "{} template", t.msg_type);
            assert!(
                !matches!(msg.payload(), NetworkMessage::Unknown { .. }),
                "{} template not decoded",
                t.msg_type
            );
            for &cut in &t.cuts {
                assert!(cut > 0 && cut < t.payload.len(), "{} cut {cut}", t.msg_type);
            }
        }
    }

    #[test]
    fn every_case_differs_from_its_template_and_the_others() {
        let all = cases();
        let mut seen = std::collections::HashSet::new();
        for c in &all {
            assert!(
                seen.insert((c.msg_type, c.payload.clone())),
                "duplicate {c}"
            );
            assert!(
                c.payload.len() as u64 <= peerlog_common::MAX_PROTOCOL_MESSAGE_LENGTH,
                "{c}"
            );
        }
        assert!(all.iter().any(|c| c.stage == Stage::FirstMessage));
    }
}
