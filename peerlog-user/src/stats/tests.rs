//! Unit tests of the live accounting.

use super::*;
use crate::elf::layout::Member;
use crate::event::{IncompleteMessage, Misbehaving};
use crate::peers::{CLOSED_PEERS_KEPT, CLOSED_PEERS_MAX};
use bitcoin::consensus::serialize;
use peerlog_common::ConnectionEventKind;

const MS: u64 = 1_000_000;

fn full_coverage() -> Coverage {
    Coverage {
        slices: true,
        node_counters: true,
        send_queue: true,
        recv_queue: true,
        mempool: true,
        block_connected: true,
        notes: Vec::new(),
    }
}

fn collector() -> Collector {
    Collector::new(
        WallClock::sample(),
        full_coverage(),
        false,
        ReportSinks::default(),
    )
}

fn msg(
    tid: u32,
    ktime_ns: u64,
    peer_id: i64,
    direction: Direction,
    msg_type: &str,
    payload: Option<Vec<u8>>,
    size: u64,
) -> Event {
    Event::Message(Message {
        ktime_ns,
        tid,
        peer_id,
        cnode: None,
        addr: format!("127.0.0.1:{}", 5000 + peer_id).into(),
        conn_type: "inbound".into(),
        msg_type: msg_type.into(),
        direction,
        payload_size: payload.as_ref().map_or(size, |p| p.len() as u64),
        payload,
        addr_truncated: false,
    })
}

fn slice(
    kind: SliceKind,
    peer_id: i64,
    msg_type: &str,
    start: u64,
    end: u64,
    cpu: Option<u64>,
) -> Event {
    Event::CpuSlice(CpuSlice {
        start_ktime_ns: start,
        end_ktime_ns: end,
        tid: 7,
        peer_id,
        kind,
        slept_ns: 0,
        msg_type: msg_type.into(),
        oncpu_ns: cpu,
    })
}

fn connection(kind: ConnectionEventKind, peer_id: i64, value: u64) -> Event {
    Event::Connection(Connection {
        ktime_ns: 1,
        kind,
        peer_id,
        addr: format!("10.0.0.{peer_id}:8333"),
        conn_type: "outbound-full-relay".into(),
        network: 1,
        value,
        final_bytes: None,
    })
}

fn mempool(
    kind: MempoolEventKind,
    peer_id: Option<i64>,
    txid: u8,
    vsize: i64,
    reason: &str,
) -> Event {
    Event::Mempool(MempoolChange {
        ktime_ns: 1,
        kind,
        peer_id,
        txid: bitcoin::Txid::from_byte_array([txid; 32]),
        vsize,
        fee: 1000,
        reason: reason.into(),
        replacement: None,
        entry_time: 0,
    })
}

fn block(peer_id: Option<i64>) -> Event {
    Event::BlockConnected(BlockConnected {
        ktime_ns: 1,
        peer_id,
        hash: bitcoin::BlockHash::all_zeros(),
        height: 1,
        tx_count: 1,
        inputs: 0,
        sigops: 0,
        duration_ns: 10,
    })
}

fn inventory(items: Vec<bitcoin::p2p::message_blockdata::Inventory>) -> Vec<u8> {
    serialize(&items)
}

#[test]
fn messages_by_type_and_direction_unknown_types_as_other() {
    let mut c = collector();
    c.handle(&msg(
        1,
        10,
        1,
        Direction::Inbound,
        "ping",
        Some(vec![0; 8]),
        0,
    ));
    c.handle(&msg(
        1,
        11,
        1,
        Direction::Outbound,
        "pong",
        Some(vec![0; 8]),
        0,
    ));
    c.handle(&msg(1, 12, 1, Direction::Inbound, "twinburn", None, 4));
    c.handle(&msg(1, 13, 1, Direction::Inbound, "block", None, 1000));
    let p = &c.peer(1).unwrap().stats.figures;
    assert_eq!(
        p.recv,
        Traffic {
            msgs: 3,
            bytes: 1012
        }
    );
    assert_eq!(p.sent, Traffic { msgs: 1, bytes: 8 });
    assert_eq!(p.per_msg[OTHER].recv, Traffic { msgs: 1, bytes: 4 });
    assert!(
        p.per_msg["ping"].hists.is_none(),
        "no per-type histograms per peer"
    );
    let total = c.total();
    assert_eq!(
        total.per_msg["block"]
            .hists
            .as_ref()
            .unwrap()
            .payload_recv
            .count(),
        1
    );
    assert_eq!(total.payload_recv.count(), 3);
    // Block payloads are not needed; the twinburn one neither.
    assert_eq!(p.payloads_missing, 0);
    c.handle(&msg(1, 14, 1, Direction::Inbound, "inv", None, 37));
    assert_eq!(c.peer(1).unwrap().stats.figures.payloads_missing, 1);
    assert_eq!(c.peer(1).unwrap().peer.addr, "127.0.0.1:5001");
}

#[test]
fn slices_by_peer_kind_and_message_type() {
    use SliceKind::{Processing, Sending};
    let mut c = collector();
    c.handle(&slice(Processing, 3, "tx", MS, 3 * MS, Some(MS)));
    c.handle(&slice(Processing, 3, "tx", 4 * MS, 5 * MS, None));
    c.handle(&slice(Sending, 3, "", 5 * MS, 6 * MS, Some(MS / 2)));
    // A peer first seen in a slice (connected before peerlog attached).
    c.handle(&slice(Processing, 4, "ping", 6 * MS, 7 * MS, Some(100)));
    let three = &c.peer(3).unwrap().stats.figures;
    assert_eq!(
        three.processing.totals,
        SliceTotals {
            slices: 2,
            wall_ns: 3 * MS,
            cpu_ns: MS,
            slices_without_cpu: 1
        }
    );
    assert_eq!(three.sending.totals.cpu_ns, MS / 2);
    assert_eq!(three.msghand_cpu_ns(), MS + MS / 2);
    assert_eq!(three.per_msg["tx"].processing.slices, 2);
    // Sending slices have no message type.
    assert!(three.per_msg.values().all(|m| m.processing.slices <= 2));
    assert_eq!(c.peer(4).unwrap().stats.figures.msghand_cpu_ns(), 100);
    assert_eq!(c.total().msghand_cpu_ns(), MS + MS / 2 + 100);
    let hists = c.total().per_msg["tx"].hists.as_ref().unwrap();
    assert_eq!(hists.wall.count(), 2);
    assert_eq!(hists.cpu.count(), 1);
    assert_eq!(c.events().slices, 4);
}

#[test]
fn final_bytes_of_closed_peers_stay_in_the_totals() {
    let mut c = collector();
    for id in 0..(CLOSED_PEERS_KEPT as i64 + 2) {
        c.handle(&connection(ConnectionEventKind::Inbound, id, 1));
        c.handle(&Event::Connection(Connection {
            final_bytes: Some((100, 10)),
            ..match connection(ConnectionEventKind::Closed, id, 1) {
                Event::Connection(conn) => conn,
                _ => unreachable!(),
            }
        }));
    }
    c.reported(ReportSink::StatsLog);
    c.reported(ReportSink::Metrics);
    // The oldest closed peers were dropped; their bytes were not.
    assert!(c.peers().iter().count() < CLOSED_PEERS_KEPT + 2);
    let n = CLOSED_PEERS_KEPT as u64 + 2;
    assert_eq!(
        c.read_node().bytes_total,
        NodeBytes {
            recv: 100 * n,
            sent: 10 * n
        }
    );
    let readings = c.read_node();
    let kept = c.peers().iter().next().unwrap();
    assert_eq!(
        readings.bytes(kept.peer.id),
        Some(NodeBytes {
            recv: 100,
            sent: 10
        })
    );
}

#[test]
fn tx_relay_and_getdata_latency() {
    use bitcoin::p2p::message_blockdata::Inventory;
    let mut c = collector();
    let tx = crate::p2p::test_transaction(1, 2);
    let other = crate::p2p::test_transaction(2, 2);
    let inv = inventory(vec![
        Inventory::WTx(tx.compute_wtxid()),
        Inventory::WTx(other.compute_wtxid()),
        Inventory::Block(bitcoin::BlockHash::all_zeros()),
    ]);
    c.handle(&msg(
        1,
        0,
        2,
        Direction::Inbound,
        "inv",
        Some(inv.clone()),
        0,
    ));
    let getdata = inventory(vec![
        Inventory::WTx(tx.compute_wtxid()),
        Inventory::WTx(other.compute_wtxid()),
    ]);
    c.handle(&msg(
        1,
        10 * MS,
        2,
        Direction::Outbound,
        "getdata",
        Some(getdata),
        0,
    ));
    let notfound = inventory(vec![Inventory::WTx(other.compute_wtxid())]);
    c.handle(&msg(
        1,
        12 * MS,
        2,
        Direction::Inbound,
        "notfound",
        Some(notfound),
        0,
    ));
    assert_eq!(c.peer(2).unwrap().stats.getdata_tx_pending(), 1);
    c.handle(&msg(
        1,
        15 * MS,
        2,
        Direction::Inbound,
        "tx",
        Some(serialize(&tx)),
        0,
    ));
    // The same tx again: no request open any more.
    c.handle(&msg(
        1,
        16 * MS,
        2,
        Direction::Inbound,
        "tx",
        Some(serialize(&tx)),
        0,
    ));
    c.handle(&msg(
        1,
        20 * MS,
        2,
        Direction::Outbound,
        "inv",
        Some(inv),
        0,
    ));
    let f = &c.peer(2).unwrap().stats.figures;
    assert_eq!(
        f.tx_relay,
        TxRelay {
            inv_recv: 2,
            getdata_sent: 2,
            tx_recv: 2,
            notfound_recv: 1,
            inv_sent: 2,
            // First to announce both; our own inv of them came later.
            announced_first: 2,
            // The second copy was neither new nor asked for.
            tx_recv_duplicate: 1,
            tx_recv_duplicate_bytes: serialize(&tx).len() as u64,
            tx_recv_unsolicited: 1,
            tx_recv_unsolicited_bytes: serialize(&tx).len() as u64,
            ..Default::default()
        }
    );
    let latency = f.getdata_tx_latency_ns.summary();
    assert_eq!(latency.count, 1);
    assert!(latency.max.abs_diff(5 * MS) <= 5 * MS / 100, "{latency:?}");
    assert_eq!(c.total().tx_relay.inv_recv, 2);
}

#[test]
fn first_announcements_across_peers() {
    use bitcoin::p2p::message_blockdata::Inventory;
    let mut c = collector();
    // A segwit transaction: its txid and wtxid differ.
    let tx = crate::p2p::test_transaction(1, 2);
    let (txid, wtxid) = (tx.compute_txid(), tx.compute_wtxid());
    assert_ne!(txid.to_byte_array(), wtxid.to_byte_array());
    let ours = crate::p2p::test_transaction(2, 2);
    let pushed = crate::p2p::test_transaction(3, 2);
    let inv = |item| Some(inventory(vec![item]));
    // We announce `ours` before any peer: nobody's first.
    c.handle(&msg(
        1,
        MS,
        9,
        Direction::Outbound,
        "inv",
        inv(Inventory::WTx(ours.compute_wtxid())),
        0,
    ));
    // Peer 1 announces `tx` by txid, then peer 2 by wtxid, and peer 3 by
    // wtxid after it: until the transaction arrives, the two hashes look
    // like two transactions.
    c.handle(&msg(
        1,
        2 * MS,
        1,
        Direction::Inbound,
        "inv",
        inv(Inventory::Transaction(txid)),
        0,
    ));
    c.handle(&msg(
        1,
        3 * MS,
        2,
        Direction::Inbound,
        "inv",
        inv(Inventory::WTx(wtxid)),
        0,
    ));
    c.handle(&msg(
        1,
        4 * MS,
        3,
        Direction::Inbound,
        "inv",
        inv(Inventory::WTx(wtxid)),
        0,
    ));
    c.handle(&msg(
        1,
        5 * MS,
        2,
        Direction::Inbound,
        "inv",
        inv(Inventory::WTx(ours.compute_wtxid())),
        0,
    ));
    let first = |c: &Collector, id| c.peer(id).unwrap().stats.figures.tx_relay.announced_first;
    assert_eq!((first(&c, 1), first(&c, 2), first(&c, 3)), (1, 1, 0));
    // Peer 2 sends it: the txid was announced earlier, by peer 1.
    c.handle(&msg(
        1,
        6 * MS,
        2,
        Direction::Inbound,
        "tx",
        Some(serialize(&tx)),
        0,
    ));
    assert_eq!((first(&c, 1), first(&c, 2)), (1, 0));
    // Peer 3 pushes a transaction nobody announced: its first.
    c.handle(&msg(
        1,
        7 * MS,
        3,
        Direction::Inbound,
        "tx",
        Some(serialize(&pushed)),
        0,
    ));
    assert_eq!(first(&c, 3), 1);
    // Both are accepted, each crediting its first announcer.
    for (t, sender) in [(&tx, 2), (&pushed, 3)] {
        let Event::Mempool(mut added) = mempool(MempoolEventKind::Added, Some(sender), 0, 100, "")
        else {
            unreachable!()
        };
        added.txid = t.compute_txid();
        c.handle(&Event::Mempool(added));
    }
    let accepted = |c: &Collector, id| {
        c.peer(id)
            .unwrap()
            .stats
            .figures
            .tx_relay
            .announced_first_accepted
    };
    assert_eq!(
        (accepted(&c, 1), accepted(&c, 2), accepted(&c, 3)),
        (1, 0, 1)
    );
    // The node's sums: two transactions announced first, both accepted.
    let total = c.total().tx_relay;
    assert_eq!(
        (total.announced_first, total.announced_first_accepted),
        (2, 2)
    );
    // The pushed one answered no request of ours.
    let three = c.peer(3).unwrap().stats.figures.tx_relay;
    assert_eq!((three.tx_recv_unsolicited, three.tx_recv_duplicate), (1, 0));
}

#[test]
fn ping_round_trip_by_nonce_and_compact_modes() {
    let mut c = collector();
    c.handle(&msg(
        1,
        100 * MS,
        4,
        Direction::Outbound,
        "ping",
        Some(42u64.to_le_bytes().to_vec()),
        0,
    ));
    c.handle(&msg(
        1,
        101 * MS,
        4,
        Direction::Inbound,
        "pong",
        Some(7u64.to_le_bytes().to_vec()),
        0,
    ));
    c.handle(&msg(
        1,
        103 * MS,
        4,
        Direction::Inbound,
        "pong",
        Some(42u64.to_le_bytes().to_vec()),
        0,
    ));
    c.handle(&msg(
        1,
        104 * MS,
        4,
        Direction::Inbound,
        "ping",
        Some(9u64.to_le_bytes().to_vec()),
        0,
    ));
    let mut cmpct = vec![1u8];
    cmpct.extend_from_slice(&2u64.to_le_bytes());
    c.handle(&msg(
        1,
        105 * MS,
        4,
        Direction::Inbound,
        "sendcmpct",
        Some(cmpct),
        0,
    ));
    c.handle(&msg(
        1,
        106 * MS,
        4,
        Direction::Inbound,
        "ping",
        Some(vec![1, 2]),
        0,
    ));
    let p = c.peer(4).unwrap();
    let ping = &p.stats.figures.ping;
    assert_eq!(
        (ping.pings_sent, ping.pings_recv, ping.pongs_matched),
        (1, 1, 1)
    );
    assert_eq!(ping.last_rtt_ns, Some(3 * MS));
    assert_eq!(
        p.stats.sendcmpct_recv,
        Some(CompactMode {
            high_bandwidth: true,
            version: 2
        })
    );
    assert_eq!(p.stats.figures.payloads_undecodable, 1);
}

#[test]
fn mempool_accounting_per_peer() {
    let mut c = collector();
    c.handle(&mempool(MempoolEventKind::Added, Some(1), 1, 100, ""));
    c.handle(&mempool(MempoolEventKind::Added, Some(1), 2, 50, ""));
    c.handle(&mempool(
        MempoolEventKind::Rejected,
        Some(1),
        3,
        0,
        "bad-txns-vout-empty",
    ));
    c.handle(&mempool(
        MempoolEventKind::Rejected,
        Some(1),
        4,
        0,
        "bad-txns-vout-empty",
    ));
    // Peer 2's transaction replaces peer 1's first; bitcoind fires
    // `removed` for it too.
    c.handle(&mempool(MempoolEventKind::Replaced, Some(2), 1, 100, ""));
    c.handle(&mempool(
        MempoolEventKind::Removed,
        None,
        1,
        100,
        "replaced",
    ));
    c.handle(&mempool(MempoolEventKind::Added, Some(2), 5, 120, ""));
    // A block confirms peer 1's second.
    c.handle(&mempool(MempoolEventKind::Removed, None, 2, 50, "block"));
    // RPC: no peer.
    c.handle(&mempool(MempoolEventKind::Added, None, 6, 70, ""));
    let one = &c.peer(1).unwrap().stats.figures.mempool;
    assert_eq!((one.accepted, one.rejected, one.replaced), (2, 2, 1));
    assert_eq!(one.rejected_by_reason["bad-txns-vout-empty"], 2);
    assert_eq!((one.in_mempool_txs, one.in_mempool_vsize), (0, 0));
    let two = &c.peer(2).unwrap().stats.figures.mempool;
    assert_eq!(
        (two.accepted, two.replacements, two.in_mempool_vsize),
        (1, 1, 120)
    );
    let total = &c.total().mempool;
    assert_eq!(
        (total.accepted, total.in_mempool_txs, total.in_mempool_vsize),
        (4, 2, 190)
    );
    assert_eq!(c.unattributed().mempool_events, 3);
}

#[test]
fn new_blocks_by_the_message_that_brought_them() {
    let mut c = collector();
    c.handle(&msg(1, 1, 5, Direction::Inbound, "block", None, 300));
    c.handle(&block(Some(5)));
    c.handle(&msg(1, 2, 5, Direction::Inbound, "headers", None, 81));
    c.handle(&block(Some(5)));
    c.handle(&block(None));
    assert_eq!(
        c.peer(5).unwrap().stats.figures.blocks,
        BlockFigures {
            new_blocks: 1,
            connected_other: 1
        }
    );
    assert_eq!(c.unattributed().blocks_connected, 1);
    assert_eq!(c.total().blocks.new_blocks, 1);
}

#[test]
fn closed_peers_reported_once_then_dropped() {
    let sinks = ReportSinks::default()
        .with(ReportSink::StatsLog)
        .with(ReportSink::Metrics);
    let mut c = Collector::new(WallClock::sample(), full_coverage(), false, sinks);
    c.handle(&connection(ConnectionEventKind::Outbound, 1, 1));
    c.handle(&connection(ConnectionEventKind::Closed, 1, 1_700_000_000));
    let p = c.peer(1).unwrap();
    assert!(p.peer.closed && p.peer.conntime_known && p.peer.conntime == 1_700_000_000);
    assert!(p.peer.due(ReportSink::StatsLog) && p.peer.due(ReportSink::Metrics));
    c.reported(ReportSink::StatsLog);
    let p = c.peer(1).unwrap();
    assert!(!p.peer.due(ReportSink::StatsLog) && p.peer.due(ReportSink::Metrics));
    c.reported(ReportSink::Metrics);
    assert!(!c.peer(1).unwrap().peer.due(ReportSink::Metrics));
    // Kept for getpeerstats among the most recently closed, then dropped.
    for id in 2..=(CLOSED_PEERS_KEPT as i64 + 1) {
        c.handle(&connection(ConnectionEventKind::Closed, id, 1));
    }
    c.reported(ReportSink::StatsLog);
    c.reported(ReportSink::Metrics);
    assert!(c.peer(1).is_none());
    assert_eq!(c.peers().iter().count(), CLOSED_PEERS_KEPT);
    // A sink nobody reads cannot keep closed peers forever.
    for id in 100..(100 + CLOSED_PEERS_MAX as i64 + 10) {
        c.handle(&connection(ConnectionEventKind::Closed, id, 1));
    }
    assert_eq!(c.peers().iter().count(), CLOSED_PEERS_MAX);
    // Totals keep what dropped peers did.
    c.handle(&Event::Misbehaving(Misbehaving {
        ktime_ns: 1,
        peer_id: 100,
        reason: "x".into(),
    }));
    assert_eq!(c.total().misbehaving, 1);
}

#[test]
fn missing_coverage_is_null_not_zero() {
    let mut c = Collector::new(
        WallClock::sample(),
        Coverage::default(),
        false,
        ReportSinks::default(),
    );
    c.handle(&msg(
        1,
        1,
        1,
        Direction::Inbound,
        "ping",
        Some(vec![0; 8]),
        0,
    ));
    let readings = c.read_node();
    let v = c.peer_json(c.peer(1).unwrap(), &StatsFilter::default(), &readings);
    for field in [
        "processing",
        "sending",
        "cpu_ns",
        "msghand_cpu_share",
        "mempool",
        "blocks",
        "bytesrecv",
        "bytessent",
        "processing_per_msg",
    ] {
        assert!(v[field].is_null(), "{field}: {}", v[field]);
    }
    assert_eq!(v["msgsrecv_per_msg"]["ping"], 1);
    let missing = c.coverage().missing_figures().join("\n");
    assert!(
        missing.contains("processing, sending")
            && missing.contains("bytesrecv")
            && missing.contains("mempool"),
        "{missing}"
    );
    // What is given up by design is always named.
    assert_eq!(full_coverage().missing_figures().len(), NOT_MEASURED.len());

    let mut c = collector();
    c.handle(&slice(SliceKind::Processing, 1, "ping", 0, 10, Some(6)));
    c.handle(&slice(SliceKind::Sending, 2, "", 10, 20, Some(2)));
    c.handle(&msg(
        1,
        1,
        1,
        Direction::Inbound,
        "ping",
        Some(vec![0; 8]),
        0,
    ));
    let readings = c.read_node();
    let v = c.peer_json(
        c.peer(1).unwrap(),
        &StatsFilter::new(vec![], vec!["pong".into()]),
        &readings,
    );
    assert_eq!(v["processing"]["cpu_ns"], 6);
    assert_eq!(v["processing"]["cpu_ns_per_slice"]["count"], 1);
    assert_eq!(v["msghand_cpu_share"], 0.75);
    // No CNode known and not closed: the node's counters are unknown.
    assert!(v["bytesrecv"].is_null());
    assert_eq!(
        v["msgsrecv_per_msg"],
        serde_json::json!({}),
        "filtered to pong"
    );
    let readings = c.read_node();
    let node = c.node_json(&StatsFilter::default(), &readings);
    assert_eq!(node["peers_connected"], 2);
    assert_eq!(node["msg_types"]["ping"]["recv"]["msgs"], 1);
    let only = c.peers_json(&StatsFilter::new(vec!["id=2".parse().unwrap()], vec![]));
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["id"], 2);
}

#[test]
fn incomplete_messages_count_without_payload() {
    let mut c = collector();
    let Event::Message(m) = msg(3, 1, 1, Direction::Inbound, "tx", None, 5000) else {
        unreachable!()
    };
    c.handle(&Event::IncompleteMessage(IncompleteMessage {
        message: m,
        received: 100,
        reason: "ring full",
    }));
    let f = &c.peer(1).unwrap().stats.figures;
    assert_eq!(
        (f.recv.msgs, f.recv.bytes, f.payloads_missing),
        (1, 5000, 1)
    );
}

#[test]
fn interval_histograms_tagged_and_reset() {
    let mut c = Collector::new(
        WallClock::sample(),
        full_coverage(),
        true,
        ReportSinks::default(),
    );
    c.handle(&msg(
        1,
        1,
        8,
        Direction::Inbound,
        "ping",
        Some(vec![0; 8]),
        0,
    ));
    let tags: Vec<(String, Option<String>)> = c
        .interval_hists()
        .into_iter()
        .filter(|(figure, _, _)| *figure == "payload_recv_bytes")
        .map(|(figure, tag, _)| (figure.to_string(), tag))
        .collect();
    assert_eq!(
        tags,
        vec![
            ("payload_recv_bytes".into(), None),
            ("payload_recv_bytes".into(), Some("msg_type=ping".into())),
            ("payload_recv_bytes".into(), Some("peer=8".into())),
        ]
    );
    for (_, _, h) in c.interval_hists() {
        h.reset_interval();
    }
    // Empty intervals of peers and message types are skipped; the node's stays.
    assert!(c.interval_hists().iter().all(|(_, tag, _)| tag.is_none()));
    assert_eq!(c.total().payload_recv.count(), 1, "totals are not reset");
}

#[test]
fn coverage_from_the_probes() {
    let probes = crate::kernel::Attached {
        tracepoints: [
            "net:inbound_message",
            "mempool:added",
            "mempool:removed",
            "mempool:replaced",
            "mempool:rejected",
        ]
        .map(String::from)
        .to_vec(),
        missing_tracepoints: vec!["validation:block_connected".into()],
        slices: true,
        oncpu_missing: None,
        cnode_layout: None,
        debug_info: None,
        cnode_layout_missing: Some("no DWARF".into()),
    };
    let c = Coverage::from(&probes);
    assert!(c.slices && !c.node_counters && c.mempool && !c.block_connected);
    let missing = c.missing_figures().join("\n");
    assert!(
        missing.contains("bytesrecv, bytessent: no DWARF")
            && missing.contains("memory.send_queue_bytes: no DWARF")
            && missing.contains("memory.recv_queue_bytes: no DWARF"),
        "{missing}"
    );
    assert!(!c.send_queue && !c.recv_queue);

    // A bitcoind whose CNode has the counters but not the receive queue's
    // size: only that figure is missing, with its reason.
    let layout = crate::elf::layout::CNodeLayout {
        id: 0,
        addr_name: 8,
        recv_bytes: 40,
        send_bytes: 48,
        send_memusage: Member::At(56),
        msg_process_queue_size: Member::Absent,
    };
    let c = Coverage::from(&crate::kernel::Attached {
        cnode_layout: Some(layout),
        cnode_layout_missing: None,
        ..probes
    });
    assert!(c.node_counters && c.send_queue && !c.recv_queue);
    let missing = c.missing_figures().join("\n");
    assert!(
        missing.contains(
            "memory.recv_queue_bytes: bitcoind's CNode has no member m_msg_process_queue_size"
        ) && !missing.contains("memory.send_queue_bytes")
            && missing.contains("memory.orphanage_bytes"),
        "{missing}"
    );
}

#[test]
fn memory_is_null_where_not_read() {
    let mut c = collector();
    c.attach_process(std::process::id(), full_coverage(), None);
    let readings = c.read_node();
    let node = c.node_json(&StatsFilter::default(), &readings);
    // Covered but no peer: the sums are zero; the orphanage is never read.
    assert_eq!(node["memory"]["send_queue_bytes"], 0);
    assert_eq!(node["memory"]["recv_queue_bytes"], 0);
    assert!(node["memory"]["orphanage_bytes"].is_null());
    assert!(node["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    let mut c = collector();
    c.handle(&msg(
        1,
        1,
        1,
        Direction::Inbound,
        "ping",
        Some(vec![0; 8]),
        0,
    ));
    // No CNode known: the peer's queues are unknown, not empty.
    let readings = c.read_node();
    let v = c.peer_json(c.peer(1).unwrap(), &StatsFilter::default(), &readings);
    assert!(v["memory"]["send_queue_bytes"].is_null(), "{v:#}");
    assert!(v["memory"]["recv_queue_bytes"].is_null(), "{v:#}");
    // Without a process, no RSS.
    let readings = c.read_node();
    assert!(c.node_json(&StatsFilter::default(), &readings)["memory"]["rss_bytes"].is_null());
}

#[test]
fn vm_rss_is_read_in_bytes() {
    let status = "Name:\tbitcoind\nVmHWM:\t  9000 kB\nVmRSS:\t  123456 kB\nRssAnon:\t 1 kB\n";
    assert_eq!(vm_rss_bytes(status), Some(123_456 * 1024));
    assert_eq!(vm_rss_bytes("Name:\tkthreadd\n"), None);
}

#[test]
fn report_card_flags_and_ranks_by_its_rules() {
    use Direction::{Inbound, Outbound};
    let mut c = collector();
    // Every peer says something, so each has a row.
    for id in 0..7 {
        c.handle(&msg(1, MS, id, Inbound, "verack", None, 0));
    }
    // Peer 0 serves a block first.
    c.handle(&msg(1, 2 * MS, 0, Inbound, "block", None, 300));
    c.handle(&block(Some(0)));
    // Peer 1 sends a consensus-invalid transaction, and bitcoind says so.
    c.handle(&mempool(
        MempoolEventKind::Rejected,
        Some(1),
        1,
        0,
        "bad-txns-vin-empty",
    ));
    c.handle(&Event::Misbehaving(Misbehaving {
        ktime_ns: 3 * MS,
        peer_id: 1,
        reason: "invalid tx".into(),
    }));
    // Peer 2 burns the message handler's CPU with few messages; the others
    // send many cheap ones.
    c.handle(&slice(
        SliceKind::Processing,
        2,
        "twinburn",
        0,
        90 * MS,
        Some(90 * MS),
    ));
    for id in [3, 4, 5] {
        for n in 0..20 {
            c.handle(&msg(1, 4 * MS + n, id, Inbound, "addr", None, 30));
        }
        c.handle(&slice(SliceKind::Processing, id, "addr", 0, MS, Some(MS)));
    }
    // Peer 4 relays two transactions the mempool accepts; peer 5 one it
    // has already: nothing new, but no misbehaviour.
    c.handle(&mempool(MempoolEventKind::Added, Some(4), 2, 100, ""));
    c.handle(&mempool(MempoolEventKind::Added, Some(4), 3, 100, ""));
    c.handle(&mempool(
        MempoolEventKind::Rejected,
        Some(5),
        2,
        0,
        "txn-already-in-mempool",
    ));
    // Peer 6 answers none of our three pings.
    for nonce in 1..=3u64 {
        c.handle(&msg(
            1,
            5 * MS,
            6,
            Outbound,
            "ping",
            Some(serialize(&nonce)),
            8,
        ));
    }

    let all = StatsFilter::new(Vec::new(), Vec::new());
    let readings = c.read_node();
    let peers = c.peers_json(&all);
    let card = card::card(&peers, &c.node_json(&all, &readings)).unwrap();
    let order: Vec<i64> = card.peers.iter().map(|p| p.id).collect();
    // Unflagged first: the block (0), the transactions (4), then by CPU
    // time (3 and 5 tie: lower id); then one flag (6 with no CPU time
    // before 2), then two (1).
    assert_eq!(order, vec![0, 4, 3, 5, 6, 2, 1], "{card:#?}");
    assert_eq!(
        card.peers.iter().map(|p| p.rank).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let flags = |id: i64| -> Vec<&str> {
        let p = card.peers.iter().find(|p| p.id == id).unwrap();
        p.flags.iter().map(|f| f.flag).collect()
    };
    assert_eq!(flags(1), vec!["misbehaving", "invalid-txs"]);
    assert_eq!(flags(2), vec!["cpu-hog"]);
    assert_eq!(flags(6), vec!["unresponsive"]);
    for id in [0, 3, 4, 5] {
        assert!(flags(id).is_empty(), "peer {id}: {:?}", flags(id));
    }
    let five = card.peers.iter().find(|p| p.id == 5).unwrap();
    assert_eq!((five.cost.txs_duplicate, five.cost.txs_invalid), (1, 0));
    let one = card.peers.iter().find(|p| p.id == 1).unwrap();
    assert!(one.flags[1].because.contains("bad-txns-vin-empty × 1"));
    let hog = card.peers.iter().find(|p| p.id == 2).unwrap();
    assert!(hog.cost.cpu_share.unwrap() > 0.9 && hog.cost.msgs_recv_share < 0.05);

    // The mix: every peer here is inbound over IPv4.
    assert_eq!(card.connection_mix.len(), 1);
    let mix = &card.connection_mix[0];
    assert_eq!(
        (mix.peers, mix.flagged, mix.new_blocks, mix.txs_accepted),
        (7, 3, 1, 2)
    );

    // The metrics read the card's figures typed, straight from the
    // collector: the same figures as the rows, so the same flags.
    let readings = c.read_node();
    let node = card::NodeFigures::of(&c);
    let node_row: card::NodeFigures = serde_json::from_value(c.node_json(&all, &readings)).unwrap();
    assert_eq!(node, node_row);
    for e in c.peers().iter() {
        let typed = card::PeerFigures::of(&c, e, &readings);
        let row: card::PeerFigures =
            serde_json::from_value(c.peer_json(e, &all, &readings)).unwrap();
        assert_eq!(typed, row, "peer {}", e.peer.id);
        let p = card.peers.iter().find(|p| p.id == e.peer.id).unwrap();
        assert_eq!(card::flags_of(&typed, &node), p.flags, "peer {}", p.id);
    }
}

#[test]
fn report_card_of_a_stalled_peer_and_of_rows_it_cannot_read() {
    let mut c = collector();
    c.handle(&msg(1, MS, 0, Direction::Inbound, "verack", None, 0));
    let all = StatsFilter::new(Vec::new(), Vec::new());
    let mut peers = c.peers_json(&all);
    // What bitcoind would hold for a peer that stopped reading.
    peers[0]["memory"]["send_queue_bytes"] = serde_json::json!(4_000_000);
    // Full in one reading only: a block may be on its way.
    peers[0]["memory"]["send_queue_full_secs"] = serde_json::json!(0);
    let readings = c.read_node();
    let card = card::card(&peers, &c.node_json(&all, &readings)).unwrap();
    assert!(card.peers[0].flags.is_empty(), "{:?}", card.peers[0].flags);
    // Full in every reading for longer than the rule's time.
    peers[0]["memory"]["send_queue_full_secs"] = serde_json::json!(card::STALLING_MIN_SECS);
    let card = card::card(&peers, &c.node_json(&all, &readings)).unwrap();
    assert_eq!(card.peers[0].flags[0].flag, "stalling");
    assert!(card.peers[0].flags[0].because.contains("4000000"));

    peers[0].as_object_mut().unwrap().remove("ping");
    let readings = c.read_node();
    let err = card::card(&peers, &c.node_json(&all, &readings)).unwrap_err();
    assert!(format!("{err:#}").contains("peer 0"), "{err:#}");
}

/// An `addr` payload of `n` entries.
fn addr_payload(n: usize) -> Vec<u8> {
    use bitcoin::p2p::{address::Address, ServiceFlags};
    let entry = Address::new(&"10.0.0.1:8333".parse().unwrap(), ServiceFlags::NETWORK);
    serialize(&vec![(1u32, entry); n])
}

#[test]
fn addr_entries_over_the_rate_limit_per_peer_and_node() {
    use Direction::{Inbound, Outbound};
    let mut c = collector();
    const S: u64 = 1000 * MS;
    // Peer 0 floods: three full messages 1000 s apart on a fresh
    // connection. Peer 1 answers our getaddr with a full message, then
    // sends ten entries. Peer 2 was connected before peerlog attached.
    for id in [0, 1] {
        c.handle(&msg(1, 0, id, Inbound, "version", None, 100));
        c.handle(&msg(1, 1, id, Inbound, "verack", None, 0));
    }
    for i in 0..3 {
        let p = addr_payload(1000);
        c.handle(&msg(1, (i + 1) * 1000 * S, 0, Inbound, "addr", Some(p), 0));
    }
    c.handle(&msg(1, 2, 1, Outbound, "getaddr", None, 0));
    let full = addr_payload(1000);
    c.handle(&msg(1, S, 1, Inbound, "addrv2", Some(full), 0));
    let ten = addr_payload(10);
    c.handle(&msg(1, 1001 * S, 1, Inbound, "addr", Some(ten), 0));
    c.handle(&msg(1, 5 * MS, 2, Inbound, "inv", None, 37));
    let ten = addr_payload(10);
    c.handle(&msg(1, 6 * MS, 2, Inbound, "addr", Some(ten), 0));
    // A count of 1000 without its entries: undecodable, counted nowhere.
    let mut short = vec![0xfd, 0xe8, 0x03];
    short.extend_from_slice(&[0; 30]);
    c.handle(&msg(1, 7 * MS, 2, Inbound, "addr", Some(short), 0));

    let addr = |id: i64| c.peer(id).unwrap().stats.figures.addr_relay;
    // 1 token, then 0.1 a second: 101 + 100 + 100 entries pass of 3000.
    assert_eq!(
        addr(0),
        AddrFigures {
            msgs_recv: 3,
            entries_recv: 3000,
            rate_limited: 2699
        }
    );
    // 1 + 1000 tokens for the getaddr answer, one left and 100 more after
    // 1000 s: the ten entries pass.
    assert_eq!(
        addr(1),
        AddrFigures {
            msgs_recv: 2,
            entries_recv: 1010,
            rate_limited: 0
        }
    );
    assert_eq!(
        addr(2),
        AddrFigures {
            msgs_recv: 1,
            entries_recv: 10,
            rate_limited: 0
        }
    );
    assert_eq!(c.peer(2).unwrap().stats.figures.payloads_undecodable, 1);
    assert_eq!(c.total().addr_relay.entries_recv, 4020);
    assert_eq!(c.total().addr_relay.rate_limited, 2699);

    let all = StatsFilter::new(Vec::new(), Vec::new());
    let peers = c.peers_json(&all);
    assert_eq!(peers[0]["addr_relay"]["rate_limited"], 2699);
    let readings = c.read_node();
    let node = c.node_json(&all, &readings);
    assert_eq!(node["addr_relay"]["entries_recv"], 4020);
    let card = card::card(&peers, &node).unwrap();
    let row = |id: i64| card.peers.iter().find(|p| p.id == id).unwrap();
    assert_eq!(row(0).flags.len(), 1, "{card:#?}");
    assert_eq!(row(0).flags[0].flag, "addr-flood");
    assert_eq!(
        row(0).flags[0].because,
        "2699 of 3000 address entries in 3 addr/addrv2 messages over the rate limit"
    );
    assert!(row(1).flags.is_empty() && row(2).flags.is_empty());
    assert!(card.flag_rules.iter().any(|r| r.name == "addr-flood"));
}

#[test]
fn addr_flood_flag_at_one_whole_message_over_the_limit() {
    let mut c = collector();
    c.handle(&msg(1, MS, 0, Direction::Inbound, "verack", None, 0));
    let all = StatsFilter::new(Vec::new(), Vec::new());
    let readings = c.read_node();
    let node = c.node_json(&all, &readings);
    let mut peers = c.peers_json(&all);
    let flags = |peers: &[serde_json::Value]| -> Vec<&'static str> {
        let card = card::card(peers, &node).unwrap();
        card.peers[0].flags.iter().map(|f| f.flag).collect()
    };
    peers[0]["addr_relay"]["rate_limited"] = serde_json::json!(card::ADDR_FLOOD_RATE_LIMITED - 1);
    assert!(flags(&peers).is_empty());
    peers[0]["addr_relay"]["rate_limited"] = serde_json::json!(card::ADDR_FLOOD_RATE_LIMITED);
    assert_eq!(flags(&peers), vec!["addr-flood"]);
}

#[test]
fn series_go_to_the_peers_that_cost_the_most_cpu() {
    let rule = PeerSeries {
        max_peers: 1,
        by: PeersBy::Cpu,
        closed_grace_s: 0,
    };
    let sinks = ReportSinks::default().with(ReportSink::Metrics);
    let mut c = Collector::new(WallClock::sample(), full_coverage(), false, sinks);
    // Peer 1 moves more bytes, peer 2 costs more CPU.
    c.handle(&msg(1, 1, 1, Direction::Inbound, "tx", None, 5000));
    c.handle(&msg(1, 1, 2, Direction::Inbound, "tx", None, 10));
    c.handle(&slice(
        SliceKind::Processing,
        2,
        "tx",
        0,
        10 * MS,
        Some(5 * MS),
    ));
    let ids = |c: &Collector, rule: &PeerSeries| {
        let (peers, omitted) = c.series_peers(rule, &StatsFilter::default());
        (peers.iter().map(|e| e.peer.id).collect::<Vec<_>>(), omitted)
    };
    assert_eq!(ids(&c, &rule), (vec![2], 1));
    let by_traffic = PeerSeries {
        by: PeersBy::Traffic,
        ..rule
    };
    assert_eq!(ids(&c, &by_traffic), (vec![1], 1));
    // Without CPU slices measured, CPU ranks by traffic; ties go to the
    // lower peer id.
    let mut c = Collector::new(
        WallClock::sample(),
        Coverage {
            slices: false,
            ..full_coverage()
        },
        false,
        sinks,
    );
    c.handle(&msg(1, 1, 3, Direction::Inbound, "tx", None, 10));
    c.handle(&msg(1, 1, 4, Direction::Inbound, "tx", None, 10));
    c.handle(&msg(1, 1, 5, Direction::Inbound, "tx", None, 5000));
    assert_eq!(ids(&c, &rule), (vec![5], 2));
    let two = PeerSeries {
        max_peers: 2,
        ..by_traffic
    };
    assert_eq!(ids(&c, &two), (vec![3, 5], 1));
}
