//! `cargo xtask demo`: trace the twin node (or `BITCOIND=/path/to/bitcoind`
//! on regtest) with `peerlog trace --capture` while a P2P peer talks to it,
//! then show what was captured.

use std::{process::ExitCode, thread, time::Duration};

use anyhow::{Context, Result};
use peerlog_tests::{connect, read_capture, standard_traffic, sync, Node, Tracer};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    if let Some(why) = peerlog_tests::ebpf_unavailable() {
        anyhow::bail!("cannot trace here: {why}");
    }
    let node = Node::start()?;
    println!(
        "demo: node {} (pid {}) listening on {}",
        node.binary.display(),
        node.pid(),
        node.p2p_addr
    );
    let out_dir = std::env::temp_dir().join(format!("peerlog-demo-{}", std::process::id()));
    let capture = out_dir.join("capture");
    let capture_arg = capture.to_str().context("temp dir path is not UTF-8")?;
    println!(
        "demo: $ peerlog trace --pid {} --capture {capture_arg}",
        node.pid()
    );
    let tracer = Tracer::start(node.pid(), &["--capture", capture_arg])?;

    let mut peer = connect(&node)?;
    println!("demo: P2P peer {} connected; sending pings, txs, block requests and a 4,000,000-byte message", peer.local_addr());
    standard_traffic(&node, &mut peer)?;
    sync(&mut peer, 99)?;
    drop(peer);
    thread::sleep(Duration::from_millis(300));
    let out = tracer.stop()?;
    print!("{}", out.stderr);

    println!("\ndemo: the capture, in Bitcoin Core's -capturemessages format:");
    for file in read_capture(&capture)? {
        println!(
            "  {} ({} messages)",
            file.path.display(),
            file.records.len()
        );
        for r in file.records.iter().take(12) {
            println!(
                "    {:>16} µs  {:<12} {:>8} bytes",
                r.time_micros,
                r.msg_type,
                r.payload.len()
            );
        }
        if file.records.len() > 12 {
            println!("    ... {} more", file.records.len() - 12);
        }
    }
    node.stop()?;
    println!("\ndemo: capture kept in {}", capture.display());
    Ok(())
}
