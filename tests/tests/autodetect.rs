//! `peerlog trace` without `--pid`, `--datadir` or `--pidfile` traces the
//! only running process that has bitcoind's USDT probes, found by its
//! probes and not its name: here a copy of the twin named `bitcoin-node`,
//! as Bitcoin Core v30's multiprocess binary is.
//!
//! A suite of its own: cargo runs one test binary at a time, so no other
//! suite's node runs meanwhile; a machine that runs bitcoind (or another
//! test's node) anyway cannot give the test a node of its own to find, and
//! the test is then ignored, naming those processes.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use libtest_mimic::Arguments;
use peerlog::node::find::candidates;
use peerlog_tests::{
    connect, ebpf_skip, run_suite, send_malformed, sync, twin_only, Node, Skip, TestCase, Tracer,
};

fn main() {
    let args = Arguments::from_args();
    let ebpf = ebpf_skip();
    let twin = twin_only("copies the twin as bitcoin-node");
    let alone = others_running();
    let tests: [TestCase; 1] = [(
        "the_only_node_is_found_by_its_probes",
        the_only_node_is_found_by_its_probes,
        &[&ebpf, &twin, &alone],
    )];
    run_suite(&args, tests);
}

/// Why the test's node could not be the only one: the processes with
/// bitcoind's probes that run already.
fn others_running() -> Option<Skip> {
    let found = candidates(Path::new("/proc"), std::process::id() as i32);
    (!found.is_empty()).then(|| {
        let named: Vec<String> = found.iter().map(ToString::to_string).collect();
        Skip::ignore(format!(
            "processes with bitcoind's probes run here already ({}): the test's node \
             cannot be the only one",
            named.join(", ")
        ))
    })
}

fn the_only_node_is_found_by_its_probes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::start_as_bitcoin_node(dir.path(), &dir.path().join("data"))?;
    let tracer = Tracer::start_finding(&[])?;
    let attached = tracer.stderr_so_far();
    ensure!(
        attached.contains(&format!("attached to pid {} (bitcoin-node", node.pid())),
        "peerlog did not attach to the only node, pid {}: {attached}",
        node.pid()
    );
    let mut peer = connect(&node)?;
    sync(&mut peer, 1)?;
    // Every feature must keep the node alive under malformed input.
    send_malformed(&node)?;
    sync(&mut peer, 2)?;
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed: {}", out.stderr);
    let received: u64 = out
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("received:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no received count in the summary: {}", out.stderr))?;
    ensure!(
        received > 0,
        "peerlog saw none of the node's messages: {}",
        out.stderr
    );
    node.stop()?;
    Ok(())
}
