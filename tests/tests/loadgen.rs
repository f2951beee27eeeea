//! The load generator against the twin node (no eBPF, no root needed): every
//! request kind is answered, the report adds up, the rate limit holds, and
//! what goes unanswered is counted as an error rather than hidden.
//!
//! The answers they count are the twin's: when `BITCOIND` is set (the real
//! node's pass of the suite) they are reported as ignored, with the reason.

use std::{path::Path, time::Duration};

use anyhow::Result;
use libtest_mimic::Arguments;
use peerlog_tests::{
    loadgen::{self, LoadConfig, Report, Window},
    run_suite, twin_only, Node, TestCase, NETWORK, TWIN,
};

fn main() {
    let args = Arguments::from_args();
    let twin = twin_only("the answers counted are the twin's (its blocks, its prompt getdata)");
    let tests: [TestCase; 3] = [
        (
            "every_request_kind_is_answered",
            every_request_kind_is_answered,
            &[&twin],
        ),
        (
            "a_rate_limited_peer_keeps_its_rate",
            a_rate_limited_peer_keeps_its_rate,
            &[&twin],
        ),
        (
            "unknown_blocks_are_counted_as_errors",
            unknown_blocks_are_counted_as_errors,
            &[&twin],
        ),
    ];
    run_suite(&args, tests);
}

fn config(node: &Node, mix: &str, peers: usize, duration: Duration) -> LoadConfig {
    LoadConfig {
        target: node.p2p_addr,
        network: NETWORK,
        peers,
        mix: mix.parse().unwrap(),
        rate: 0.0,
        max_in_flight: 4,
        duration,
        answer_timeout: Duration::from_secs(10),
        blocks: node
            .blocks
            .iter()
            .map(|(h, _)| h.parse().unwrap())
            .collect(),
    }
}

fn run(config: &LoadConfig) -> Report {
    let mut windows = Vec::new();
    let report = loadgen::run(config, |w| windows.push(w)).unwrap();
    assert_eq!(
        windows,
        [
            Window::Started {
                connected: config.peers
            },
            Window::Ended
        ]
    );
    report
}

fn every_request_kind_is_answered() -> Result<()> {
    let node = Node::start_twin(Path::new(TWIN), &[]).unwrap();
    for mix in [
        "ping-flood",
        "relay",
        "getheaders",
        "blocks",
        "ping=1,relay=1,getheaders=1,block=1",
    ] {
        let report = run(&config(&node, mix, 4, Duration::from_millis(700)));
        assert_eq!(report.connected, 4, "{mix}");
        assert_eq!(report.errors.total(), 0, "{mix}: {:?}", report.errors);
        assert_eq!(report.kinds.len(), if mix.contains(',') { 4 } else { 1 });
        for (kind, k) in &report.kinds {
            assert!(k.answered > 0, "{mix}: no {kind} answered");
            assert!(k.answered <= k.sent, "{mix}: {kind}");
            assert_eq!(k.latency.count, k.answered, "{mix}: {kind}");
        }
        assert_eq!(
            report.requests_answered,
            report.kinds.values().map(|k| k.answered).sum::<u64>()
        );
        // Whatever was not answered in the window was still in flight.
        assert_eq!(
            report.requests_sent - report.requests_answered,
            report.in_flight_at_end,
            "{mix}"
        );
        assert!(report.messages_received >= report.requests_answered);
        let l = &report.latency;
        assert!(l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.max_us);
    }
    node.stop()?;
    Ok(())
}

fn a_rate_limited_peer_keeps_its_rate() -> Result<()> {
    let node = Node::start_twin(Path::new(TWIN), &[]).unwrap();
    // 10 peers × 5 requests/s for 2 s, staggered: 10 requests each.
    let mut c = config(&node, "idle", 10, Duration::from_secs(2));
    c.rate = 5.0;
    let report = run(&c);
    assert!(
        (95..=105).contains(&report.requests_sent),
        "{} pings sent",
        report.requests_sent
    );
    assert_eq!(report.errors.total(), 0, "{:?}", report.errors);
    node.stop()?;
    Ok(())
}

fn unknown_blocks_are_counted_as_errors() -> Result<()> {
    let node = Node::start_twin(Path::new(TWIN), &[]).unwrap();
    let mut c = config(&node, "blocks", 1, Duration::from_millis(500));
    c.blocks = vec![
        "00000000000000000000000000000000000000000000000000000000deadbeef"
            .parse()
            .unwrap(),
    ];
    let report = run(&c);
    assert_eq!(report.requests_answered, 0);
    assert!(report.errors.notfound > 0, "{:?}", report.errors);
    node.stop()?;
    Ok(())
}
