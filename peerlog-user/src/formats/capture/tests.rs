//! Unit tests of the capture format: the codec and the names, the writer
//! (round trips, open-file cap, private files, injected write failures, a
//! real full disk) and the readers (truncated, corrupt, arbitrary input).

use peerlog_common::Direction;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::layout::{
    connection_dir_name, parse_connection_dir_name, peer_dir_name, RECV_FILE_NAME,
};
use super::write::{DatFile, MAX_TOTAL_BUFFERED};
use super::*;
use crate::private_fs::Dir;

fn record(time_micros: u64, msg_type: &str, payload: &[u8]) -> CaptureRecord {
    CaptureRecord {
        time_micros,
        msg_type: msg_type.to_string(),
        payload: payload.to_vec(),
    }
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn encode(records: &[CaptureRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode_into(&mut out);
    }
    out
}

fn read_all(bytes: &[u8]) -> (Vec<CaptureRecord>, Option<CaptureError>) {
    let mut records = Vec::new();
    for item in CaptureReader::new(bytes) {
        match item {
            Ok(r) => records.push(r),
            Err(e) => return (records, Some(e)),
        }
    }
    (records, None)
}

/// A `ping` with nonce 0x8877665544332211 at 2023-11-14T22:13:20Z:
/// 1_700_000_000_000_000 µs = 0x0006_0A24_181E_4000.
const PING_HEX: &str = "00401e18240a0600 70696e670000000000000000 08000000 1122334455667788";
/// A `verack` (empty payload) at time 0x0102030405060708.
const VERACK_HEX: &str = "0807060504030201 76657261636b000000000000 00000000";

fn ping() -> CaptureRecord {
    record(
        1_700_000_000_000_000,
        "ping",
        &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
    )
}

fn verack() -> CaptureRecord {
    record(0x0102_0304_0506_0708, "verack", &[])
}

#[test]
fn encodes_known_bytes() {
    let mut out = Vec::new();
    ping().encode_into(&mut out);
    assert_eq!(out, unhex(PING_HEX));
    assert_eq!(ping().encoded_len(), out.len());
    assert_eq!(out.len(), 24 + 8);

    let mut out = Vec::new();
    verack().encode_into(&mut out);
    assert_eq!(out, unhex(VERACK_HEX));
    assert_eq!(verack().encoded_len(), 24);

    // A 12-character type fills the field with no NUL, as in bitcoind.
    let mut out = Vec::new();
    record(0, "sendaddrv2xx", &[]).encode_into(&mut out);
    assert_eq!(&out[8..20], b"sendaddrv2xx");
}

#[test]
fn decodes_hand_written_fixture() {
    let bytes = unhex(&format!("{PING_HEX}{VERACK_HEX}"));
    let (records, error) = read_all(&bytes);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(records, vec![ping(), verack()]);
}

#[test]
fn validate_refuses_what_the_reader_would() {
    assert!(ping().validate().is_ok());
    assert!(record(0, "", &[]).validate().is_ok());
    assert!(record(0, "abcdefghijklm", &[]).validate().is_err());
    assert!(record(0, "pi\0g", &[]).validate().is_err());
    assert!(record(0, "pïng", &[]).validate().is_err());
    let big = record(0, "block", &vec![0; MAX_PROTOCOL_MESSAGE_LENGTH + 1]);
    let err = big.validate().unwrap_err();
    assert!(err.to_string().contains("4000001 bytes"), "{err}");
    assert!(record(0, "block", &vec![0; MAX_PROTOCOL_MESSAGE_LENGTH])
        .validate()
        .is_ok());
}

#[test]
fn dir_names_both_ways() {
    let cases = [
        ("127.0.0.1:18444", "127.0.0.1_18444"),
        ("[::1]:8333", "[__1]_8333"),
        (
            "[2001:db8::ff00:42:8329]:8333",
            "[2001_db8__ff00_42_8329]_8333",
        ),
        ("[fc00::1]:8333", "[fc00__1]_8333"),
        (
            "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333",
            "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion_8333",
        ),
        (
            "ukeu3k5oycgaauneqgtnvselmt4yemvoilkln7jpvamvfx7dnkdq.b32.i2p:0",
            "ukeu3k5oycgaauneqgtnvselmt4yemvoilkln7jpvamvfx7dnkdq.b32.i2p_0",
        ),
    ];
    for (addr, dir) in cases {
        assert_eq!(peer_dir_name(addr), dir);
        assert_eq!(peer_addr_from_dir_name(dir).as_deref(), Some(addr), "{dir}");
    }
    for not_a_peer in [
        "",
        "_",
        "foo",
        "1.2.3.4_",
        "1.2.3.4_x",
        "[__1]",
        "[__1]8333",
        "[]_1",
    ] {
        assert_eq!(peer_addr_from_dir_name(not_a_peer), None, "{not_a_peer}");
    }
    assert_eq!(
        parse_connection_dir_name("peer7-1700000000"),
        Some((7, 1_700_000_000))
    );
    assert_eq!(parse_connection_dir_name("peer-1-5"), Some((-1, 5)));
    assert_eq!(
        parse_connection_dir_name(&connection_dir_name((42, 9))),
        Some((42, 9))
    );
    assert_eq!(parse_connection_dir_name("peerx-5"), None);
    assert_eq!(parse_connection_dir_name("127.0.0.1_8333"), None);
}

const PEERS: [&str; 4] = [
    "127.0.0.1:18444",
    "[::1]:8333",
    "[2001:db8::1]:18333",
    "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion:8333",
];

/// Writes a deterministic mix of messages for PEERS, two connections
/// each, and returns what each (addr, connection, inbound) should hold.
fn write_mix(
    writer: &mut CaptureWriter,
) -> HashMap<(String, (i64, u64), bool), Vec<CaptureRecord>> {
    let mut expected: HashMap<_, Vec<_>> = HashMap::new();
    let types = [
        "version", "verack", "inv", "getdata", "tx", "headers", "ping", "pong",
    ];
    for i in 0..400u64 {
        let peer = (i % PEERS.len() as u64) as usize;
        let addr = PEERS[peer];
        let connection = (peer as i64 + 10 * (i as i64 % 2), 1_700_000_000 + (i % 2));
        let inbound = (i / 3) % 2 == 0;
        let payload: Vec<u8> = (0..(i * 37 % 300)).map(|b| (b ^ i) as u8).collect();
        let r = record(
            1_700_000_000_000_000 + i,
            types[i as usize % types.len()],
            &payload,
        );
        writer.append(addr, connection, inbound, &r).unwrap();
        expected
            .entry((addr.to_string(), connection, inbound))
            .or_default()
            .push(r);
    }
    expected
}

#[test]
fn round_trip_both_layouts() {
    for layout in [CaptureLayout::Core, CaptureLayout::PerConnection] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("capture");
        let mut writer = CaptureWriter::new(&root, layout).unwrap();
        let expected = write_mix(&mut writer);
        writer.flush().unwrap();
        let stats = writer.stats();
        assert_eq!(stats.records_written, 400);
        assert_eq!(stats.records_dropped, 0);
        let files = read_capture_tree(&root).unwrap();
        let total_bytes: u64 = files
            .iter()
            .map(|f| fs::metadata(&f.path).unwrap().len())
            .sum();
        assert_eq!(stats.bytes_written, total_bytes);
        assert_eq!(stats.files, files.len() as u64);

        match layout {
            CaptureLayout::Core => {
                // Both connections of an address share its two files.
                assert_eq!(files.len(), PEERS.len() * 2, "{layout:?}");
                for file in &files {
                    assert_eq!(file.connection, None);
                    let addr = file.peer_addr.clone().unwrap();
                    let inbound = file.direction == Direction::Inbound;
                    let mut want: Vec<CaptureRecord> = expected
                        .iter()
                        .filter(|((a, _, d), _)| *a == addr && *d == inbound)
                        .flat_map(|(_, rs)| rs.clone())
                        .collect();
                    want.sort_by_key(|r| r.time_micros);
                    assert_eq!(file.records, want, "{}", file.path.display());
                    let dir_name = file.path.parent().unwrap().file_name().unwrap();
                    assert_eq!(dir_name.to_str().unwrap(), peer_dir_name(&addr));
                }
            }
            CaptureLayout::PerConnection => {
                assert_eq!(files.len(), expected.len(), "{layout:?}");
                for file in &files {
                    let key = (
                        file.peer_addr.clone().unwrap(),
                        file.connection.unwrap(),
                        file.direction == Direction::Inbound,
                    );
                    assert_eq!(file.records, expected[&key], "{}", file.path.display());
                    assert!(file.truncated.is_none());
                }
            }
        }
        for file in &files {
            let name = file.path.file_name().unwrap().to_str().unwrap();
            assert_eq!(name, file_name(file.direction));
        }
        assert!(
            root.join("[__1]_8333").join("msgs_recv.dat").exists()
                || layout == CaptureLayout::PerConnection
        );
        drop(writer);
    }
}

#[test]
fn reads_a_bitcoind_style_tree_and_single_files() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("message_capture");
    let peer = capture.join("[__1]_8333");
    fs::create_dir_all(&peer).unwrap();
    fs::write(
        peer.join("msgs_recv.dat"),
        unhex(&format!("{PING_HEX}{VERACK_HEX}")),
    )
    .unwrap();
    fs::write(peer.join("msgs_sent.dat"), unhex(VERACK_HEX)).unwrap();
    fs::write(peer.join("notes.txt"), b"ignored").unwrap();

    for path in [&capture, &peer] {
        let files = read_capture_tree(path).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].direction, Direction::Inbound);
        assert_eq!(files[0].peer_addr.as_deref(), Some("[::1]:8333"));
        assert_eq!(files[0].records, vec![ping(), verack()]);
        assert_eq!(files[1].direction, Direction::Outbound);
        assert_eq!(files[1].records, vec![verack()]);
    }
    let single = read_capture_tree(&peer.join("msgs_sent.dat")).unwrap();
    assert_eq!(single.len(), 1);
    assert_eq!(single[0].peer_addr.as_deref(), Some("[::1]:8333"));
    // Like message-capture-parser.py: "recv" anywhere in the stem.
    let renamed = dir.path().join("old_recv_copy.dat");
    fs::copy(peer.join("msgs_recv.dat"), &renamed).unwrap();
    let file = read_capture_file(&renamed).unwrap();
    assert_eq!((file.direction, file.peer_addr), (Direction::Inbound, None));

    let err = read_capture_tree(&dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn two_writers_append_to_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let addr = "[::1]:8333";
    let mut first = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
    first.append(addr, (1, 100), true, &ping()).unwrap();
    first.append(addr, (1, 100), false, &verack()).unwrap();
    drop(first); // flushes
    let mut second = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
    second.append(addr, (2, 200), true, &verack()).unwrap();
    second.flush().unwrap();
    drop(second);

    let recv = dir.path().join("[__1]_8333").join("msgs_recv.dat");
    assert_eq!(
        fs::read(&recv).unwrap(),
        unhex(&format!("{PING_HEX}{VERACK_HEX}"))
    );
    let files = read_capture_tree(dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].records, vec![ping(), verack()]);
    assert_eq!(files[1].records, vec![verack()]);
}

#[test]
fn truncated_last_record_is_reported() {
    let records = [ping(), verack(), record(5, "tx", &[7; 100])];
    let full = encode(&records);
    let last = (32 + 24) as u64;

    // Cut inside the payload: exact count missing.
    let (got, err) = read_all(&full[..full.len() - 30]);
    assert_eq!(got, records[..2]);
    match err {
        Some(CaptureError::Truncated { record, .. }) => {
            assert_eq!(
                record,
                TruncatedRecord {
                    offset: last,
                    present: 94,
                    missing: 30
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // Cut inside the header: a lower bound.
    let (got, err) = read_all(&full[..last as usize + 10]);
    assert_eq!(got, records[..2]);
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            CaptureError::Truncated {
                record: TruncatedRecord {
                    present: 10,
                    missing: 14,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at least 14 missing"), "{err}");

    // Through a file: records kept, truncation in the result, not an error.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("127.0.0.1_8333").join("msgs_sent.dat");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, &full[..full.len() - 1]).unwrap();
    let file = read_capture_file(&path).unwrap();
    assert_eq!(file.records, records[..2]);
    assert_eq!(
        file.truncated,
        Some(TruncatedRecord {
            offset: last,
            present: 123,
            missing: 1
        })
    );
    assert_eq!(file.peer_addr.as_deref(), Some("127.0.0.1:8333"));

    // A writer appending after the damage leaves it where it is.
    let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
    writer
        .append("127.0.0.1:8333", (0, 0), false, &ping())
        .unwrap();
    drop(writer);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(&bytes[..full.len() - 1], &full[..full.len() - 1]);
    assert_eq!(bytes.len(), full.len() - 1 + 32);
}

#[test]
fn garbage_names_the_offset() {
    let good = encode(&[ping(), verack()]);
    let second = 32usize;

    // Non-printable byte in the second record's message type.
    let mut bad = good.clone();
    bad[second + 8 + 2] = 0x01;
    let (got, err) = read_all(&bad);
    assert_eq!(got, vec![ping()]);
    let err = err.unwrap();
    assert!(
        matches!(err, CaptureError::Corrupt { offset: 32, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("byte offset 32") && msg.contains("0x01"),
        "{msg}"
    );

    // Something after the NUL that ends the type.
    let mut bad = good.clone();
    bad[second + 8 + 10] = b'x';
    let err = read_all(&bad).1.unwrap();
    assert!(
        matches!(err, CaptureError::Corrupt { offset: 32, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("follows the NUL"), "{err}");

    // An absurd length.
    let mut bad = good.clone();
    bad[second + 20..second + 24].copy_from_slice(&4_000_001u32.to_le_bytes());
    let err = read_all(&bad).1.unwrap();
    assert!(
        matches!(err, CaptureError::Corrupt { offset: 32, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("4000001"), "{err}");

    // Not a capture file at all, even shorter than one header.
    let err = read_all(b"hello world\n\x00\xff").1.unwrap();
    assert!(
        matches!(err, CaptureError::Corrupt { offset: 0, .. }),
        "{err:?}"
    );
    let err = read_all(&[0, 0, 0, 0, 0, 0, 0, 0, 0xfe]).1.unwrap();
    assert!(
        matches!(err, CaptureError::Corrupt { offset: 0, .. }),
        "{err:?}"
    );

    // Through the file functions, the path is named.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("msgs_recv.dat");
    fs::write(&path, &bad).unwrap();
    let err = read_capture_tree(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("byte offset 32"),
        "{msg}"
    );
}

#[test]
fn never_panics_on_arbitrary_input() {
    // xorshift: deterministic, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid = encode(&[ping(), verack(), record(9, "inv", &[1; 37]), ping()]);
    for round in 0..5000 {
        let mut bytes = if round % 2 == 0 {
            let len = (next() % 200) as usize;
            (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            let mut b = valid.clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            b
        };
        if round % 3 == 0 {
            bytes.truncate((next() as usize) % (bytes.len() + 1));
        }
        let mut reader = CaptureReader::new(&bytes[..]);
        let mut count = 0;
        for item in reader.by_ref() {
            count += 1;
            match item {
                Ok(r) => assert!(r.msg_type.len() <= MESSAGE_TYPE_SIZE),
                Err(CaptureError::Corrupt { offset, .. })
                | Err(CaptureError::Truncated {
                    record: TruncatedRecord { offset, .. },
                    ..
                }) => {
                    assert!(offset <= bytes.len() as u64)
                }
                Err(e) => panic!("{e}"),
            }
            assert!(count <= bytes.len() / RECORD_HEADER_SIZE + 1);
        }
        assert!(reader.offset() <= bytes.len() as u64);
        assert!(reader.next().is_none());
    }
}

#[test]
fn refuses_bad_addresses_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
    for addr in ["", "..", ".", "../etc:1", "a/b:1", "x\0:1"] {
        let err = writer.append(addr, (0, 0), true, &ping()).unwrap_err();
        assert!(
            matches!(err, CaptureError::InvalidPeerAddr { .. }),
            "{addr:?}: {err:?}"
        );
    }
    let err = writer
        .append("1.2.3.4:1", (0, 0), true, &record(0, "waytoolongtype", &[]))
        .unwrap_err();
    assert!(matches!(err, CaptureError::InvalidRecord { .. }), "{err:?}");
    assert_eq!(writer.stats().records_dropped, 7);
    // Not sticky: the next good record goes through.
    writer.append("1.2.3.4:1", (0, 0), true, &ping()).unwrap();
    writer.flush().unwrap();
    assert_eq!(writer.stats().records_written, 1);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn root_must_be_a_writable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    for root in [file.clone(), file.join("below")] {
        let err = CaptureWriter::new(&root, CaptureLayout::Core).unwrap_err();
        assert!(matches!(err, CaptureError::Root { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&root.display().to_string()),
            "{err}"
        );
    }
    // The probe file does not stay behind.
    let root = dir.path().join("new").join("capture");
    CaptureWriter::new(&root, CaptureLayout::Core).unwrap();
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
}

/// Modes of everything under `root`, by path relative to it.
fn modes_below(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path.clone());
            }
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            out.push((rel, meta.is_dir(), meta.permissions().mode() & 0o7777));
        }
    }
    out
}

#[test]
fn capture_files_and_directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    for layout in [CaptureLayout::Core, CaptureLayout::PerConnection] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("new").join("capture");
        crate::private_fs::tests::with_umask(0o002, || {
            let mut writer = CaptureWriter::new(&root, layout).unwrap();
            writer
                .append("192.0.2.1:8333", (3, 1_700_000_000), true, &ping())
                .unwrap();
            writer
                .append("192.0.2.1:8333", (3, 1_700_000_000), false, &verack())
                .unwrap();
            writer.flush().unwrap();
        });
        for dir in [root.parent().unwrap(), &root] {
            let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        let modes = modes_below(&root);
        assert_eq!(modes.iter().filter(|(_, dir, _)| !dir).count(), 2);
        for (path, dir, mode) in modes {
            let want = if dir { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{layout:?} {}", path.display());
        }
    }
}

#[test]
fn planted_symlinks_are_refused_never_written_through() {
    for layout in [CaptureLayout::Core, CaptureLayout::PerConnection] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("capture");
        let victim_dir = tmp.path().join("victim-dir");
        let victim = tmp.path().join("victim");
        fs::create_dir_all(root.join("192.0.2.2_8333")).unwrap();
        fs::create_dir(&victim_dir).unwrap();
        fs::write(&victim, b"precious").unwrap();
        // In place of a peer's directory, and of a capture file (in the
        // per-connection layout, of the connection's directory).
        let planted_dir = root.join("192.0.2.1_8333");
        std::os::unix::fs::symlink(&victim_dir, &planted_dir).unwrap();
        let planted_file = match layout {
            CaptureLayout::Core => root.join("192.0.2.2_8333").join(RECV_FILE_NAME),
            CaptureLayout::PerConnection => root.join("192.0.2.2_8333").join("peer3-50"),
        };
        std::os::unix::fs::symlink(&victim, &planted_file).unwrap();

        let mut writer = CaptureWriter::new(&root, layout).unwrap();
        for (addr, planted) in [
            ("192.0.2.1:8333", &planted_dir),
            ("192.0.2.2:8333", &planted_file),
        ] {
            let err = writer.append(addr, (3, 50), true, &ping()).unwrap_err();
            assert!(matches!(err, CaptureError::Open { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!(
                    "refusing {}: it is a symbolic link",
                    planted.display()
                )),
                "{layout:?}: {msg}"
            );
        }
        writer.flush().unwrap();
        drop(writer);
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 0);
        assert!(fs::symlink_metadata(&planted_dir).unwrap().is_symlink());
        assert!(fs::symlink_metadata(&planted_file).unwrap().is_symlink());
    }
}

#[test]
fn write_probe_does_not_follow_a_planted_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("capture");
    fs::create_dir(&root).unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    // The name the probe used to have: predictable from peerlog's pid.
    let planted = root.join(format!(".peerlog-write-test-{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    CaptureWriter::new(&root, CaptureLayout::Core).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(&planted).unwrap().is_symlink());
    assert_eq!(
        fs::read_dir(&root).unwrap().count(),
        1,
        "the probe stays behind"
    );
}

#[test]
fn open_files_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::PerConnection).unwrap();
    writer.max_open_files = 3;
    let mut expected: HashMap<(String, bool), Vec<CaptureRecord>> = HashMap::new();
    for i in 0..200u64 {
        let addr = format!("10.0.0.{}:8333", i % 7);
        let inbound = i % 3 == 0;
        let r = record(i, "inv", &i.to_le_bytes());
        writer.append(&addr, (1, 2), inbound, &r).unwrap();
        assert!(writer.stats().open_files <= 3);
        expected.entry((addr, inbound)).or_default().push(r);
    }
    drop(writer);
    let files = read_capture_tree(dir.path()).unwrap();
    assert_eq!(files.len(), expected.len());
    for file in files {
        let key = (
            file.peer_addr.unwrap(),
            file.direction == Direction::Inbound,
        );
        assert_eq!(file.records, expected[&key]);
        assert_eq!(file.connection, Some((1, 2)));
    }
}

#[test]
fn written_buffers_give_their_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::Core).unwrap();
    // A block sent to each of many peers: each record alone passes the
    // file's flush threshold and is written at once.
    let block = record(1, "block", &vec![0xab; 1_000_000]);
    for peer in 0..20 {
        let addr = format!("10.0.0.{peer}:8333");
        writer.append(&addr, (peer, 2), false, &block).unwrap();
    }
    assert_eq!(writer.stats().records_written, 20);
    assert_eq!(writer.buffer_capacity(), 0, "no block stays allocated");
    // Small records stay buffered, and the buffers of all files together
    // are bounded.
    for i in 0..200_000u64 {
        let addr = format!("10.0.1.{}:8333", i % 100);
        writer
            .append(&addr, (1, 2), i % 2 == 0, &record(i, "inv", &[7; 37]))
            .unwrap();
        if i % 1000 == 0 {
            assert!(writer.buffer_capacity() <= 2 * MAX_TOTAL_BUFFERED);
        }
    }
    drop(writer);
    let files = read_capture_tree(dir.path()).unwrap();
    let records: usize = files.iter().map(|f| f.records.len()).sum();
    assert_eq!(records, 200_020, "every record written");
}

#[test]
fn close_connection_releases_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = CaptureWriter::new(dir.path(), CaptureLayout::PerConnection).unwrap();
    writer
        .append("1.1.1.1:8333", (3, 50), true, &ping())
        .unwrap();
    writer
        .append("1.1.1.1:8333", (3, 50), false, &verack())
        .unwrap();
    writer
        .append("1.1.1.1:8333", (4, 60), true, &ping())
        .unwrap();
    assert_eq!(writer.stats().open_files, 3);
    writer.close_connection("1.1.1.1:8333", (3, 50)).unwrap();
    writer.close_connection("9.9.9.9:1", (0, 0)).unwrap();
    let stats = writer.stats();
    assert_eq!((stats.open_files, stats.records_written), (1, 2));
    let conn = dir.path().join("1.1.1.1_8333").join("peer3-50");
    assert_eq!(
        fs::read(conn.join("msgs_recv.dat")).unwrap(),
        unhex(PING_HEX)
    );
    assert_eq!(
        fs::read(conn.join("msgs_sent.dat")).unwrap(),
        unhex(VERACK_HEX)
    );
}

/// A capture file that accepts `budget` more bytes, then fails like a
/// full disk, after writing what fits (as a real short write does).
struct FailingFile {
    file: File,
    budget: Arc<AtomicU64>,
    fail_set_len: Arc<AtomicBool>,
}

impl DatFile for FailingFile {
    fn append_bytes(&mut self, buf: &[u8]) -> io::Result<()> {
        let budget = self.budget.load(Ordering::SeqCst);
        let fits = buf.len().min(budget as usize);
        self.file.write_all(&buf[..fits])?;
        self.budget.store(budget - fits as u64, Ordering::SeqCst);
        if fits < buf.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn cut_to(&self, len: u64) -> io::Result<()> {
        if self.fail_set_len.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.set_len(len)
    }
}

fn failing_writer(root: &Path, budget: u64, fail_set_len: bool) -> CaptureWriter {
    let budget = Arc::new(AtomicU64::new(budget));
    let fail_set_len = Arc::new(AtomicBool::new(fail_set_len));
    let opener = move |dir: &Dir, name: &str| -> io::Result<(Box<dyn DatFile>, u64)> {
        let file = dir.append_file(name)?;
        let len = file.metadata()?.len();
        Ok((
            Box::new(FailingFile {
                file,
                budget: budget.clone(),
                fail_set_len: fail_set_len.clone(),
            }),
            len,
        ))
    };
    CaptureWriter::with_opener(root, CaptureLayout::Core, Box::new(opener)).unwrap()
}

#[test]
fn failed_write_leaves_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    // Room for 3 pings (32 bytes each) and a half.
    let mut writer = failing_writer(dir.path(), 3 * 32 + 16, false);
    let addr = "192.0.2.1:8333";
    let path = dir.path().join("192.0.2.1_8333").join("msgs_recv.dat");
    for _ in 0..2 {
        writer.append(addr, (0, 0), true, &ping()).unwrap();
    }
    writer.flush().unwrap();
    for _ in 0..3 {
        writer.append(addr, (0, 0), true, &ping()).unwrap();
    }
    let err = writer.flush().unwrap_err();
    assert!(matches!(err, CaptureError::WriteFailed { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "disk full while writing {}: capture stopped; 2 records already written are intact, 3 records dropped",
            path.display()
        )
    );
    // The 1.5 records that reached the file were cut off again.
    assert_eq!(
        fs::read(&path).unwrap(),
        unhex(&format!("{PING_HEX}{PING_HEX}"))
    );
    let file = read_capture_file(&path).unwrap();
    assert_eq!((file.records.len(), file.truncated), (2, None));

    // Stopped: further appends and flushes get the same error kind.
    let err = writer.append(addr, (0, 0), false, &verack()).unwrap_err();
    assert!(matches!(err, CaptureError::WriteFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("4 records dropped"), "{err}");
    assert!(matches!(
        writer.flush(),
        Err(CaptureError::WriteFailed { .. })
    ));
    let stats = writer.stats();
    assert_eq!((stats.records_written, stats.records_dropped), (2, 4));
    assert_eq!(stats.bytes_written, 64);
    drop(writer);
    assert_eq!(fs::read(&path).unwrap().len(), 64);
}

#[test]
fn failed_truncation_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = failing_writer(dir.path(), 10, true);
    writer
        .append("192.0.2.1:8333", (0, 0), false, &ping())
        .unwrap();
    let err = writer.flush().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("disk full while writing")
            && msg.contains("0 records already written are intact")
            && msg.contains("may end in a partial record"),
        "{msg}"
    );
}

/// Unmounts a tmpfs when the test ends, however it ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn real_full_disk_on_tmpfs_or_skip() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    fs::create_dir(&mount).unwrap();
    let output = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mount)
        .output();
    match output {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "skipping real_full_disk_on_tmpfs_or_skip: mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipping real_full_disk_on_tmpfs_or_skip: cannot run mount: {e}");
            return;
        }
    }
    let _unmount = Unmount(mount.clone());

    let mut writer = CaptureWriter::new(&mount, CaptureLayout::PerConnection).unwrap();
    let mut error = None;
    for i in 0..1000u64 {
        let r = record(i, "block", &vec![i as u8; 3000]);
        let addr = format!("10.0.0.{}:8333", i % 3);
        let appended = writer.append(&addr, (i as i64 % 3, 0), i % 2 == 0, &r);
        // Several records per write: a failure lands mid-buffer.
        let result = if i % 4 == 3 {
            appended.and_then(|()| writer.flush())
        } else {
            appended
        };
        if let Err(e) = result {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("a 64 KiB tmpfs fills up");
    let msg = error.to_string();
    assert!(
        matches!(error, CaptureError::WriteFailed { .. }),
        "{error:?}"
    );
    assert!(msg.starts_with("disk full while writing "), "{msg}");
    assert!(msg.contains("records already written are intact"), "{msg}");
    assert!(writer
        .append("10.0.0.1:8333", (1, 0), true, &ping())
        .is_err());
    // Stopping cleanly: write what the other files still buffer, then count.
    assert!(writer.flush().is_err());
    let stats = writer.stats();
    assert!(
        stats.records_written > 0 && stats.records_dropped > 0,
        "{stats:?}"
    );
    drop(writer);

    let files = read_capture_tree(&mount).unwrap();
    let on_disk: usize = files.iter().map(|f| f.records.len()).sum();
    assert!(files.iter().all(|f| f.truncated.is_none()), "{files:?}");
    assert_eq!(on_disk as u64, stats.records_written);
}

#[test]
fn writer_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<CaptureWriter>();
}
