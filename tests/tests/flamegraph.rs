//! End-to-end tests of `peerlog trace --flamegraph` and `peerlog flamegraph`:
//! CPU samples of the twin node (built without frame pointers), unwound from
//! `.eh_frame`, named from its symbols or its separate debug file, and split
//! by the peer the message handler was serving.
//!
//! One peer sends `twinburn` messages, whose handler burns CPU in
//! `TwinBurnCpu` inside `ProcessMessages` → `ProcessMessage`; another sends
//! `block` messages, which cost CPU in block deserialization instead. The
//! first peer's flamegraph must show the burn, the second's must not. A real
//! bitcoind (`BITCOIND`) under P2P and RPC load must unwind every thread,
//! `b-net` with its 64 KiB stack buffer included.
//!
//! Tests that need eBPF are reported as ignored, with the reason printed,
//! when this machine cannot load it (not root, no uprobes; a failure with
//! `PEERLOG_REQUIRE_EBPF=1`), and so are those that trace the twin when
//! `BITCOIND` is set: never as passed.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use libtest_mimic::Arguments;
use object::{Object, ObjectSymbol};
use peerlog::{
    flamegraph::{
        folded::FoldedStacks,
        symbolize::{executable_frame_names, INLINED_SUFFIX},
        INCOMPLETE_FRAME,
    },
    p2p::{self, P2pClient},
};
use peerlog_tests::{
    loadgen::{self, LoadConfig},
    *,
};

fn main() {
    let mut args = Arguments::from_args();
    // The tests measure where CPU time goes; on a 2-core machine, running
    // them side by side starves the very threads they sample.
    args.test_threads.get_or_insert(1);
    let ebpf = ebpf_skip();
    let twin = twin_only("the twinburn message and a stripped copy with its debug file");
    let real_node = bitcoind_only();
    let tests: [TestCase; 6] = [
        (
            "burning_peer_owns_the_burn",
            burning_peer_owns_the_burn,
            &[&ebpf, &twin],
        ),
        (
            "bitcoind_threads_unwind",
            bitcoind_threads_unwind,
            &[&ebpf, &real_node],
        ),
        (
            "stripped_binary_gets_names_from_debug_file",
            stripped_binary_gets_names_from_debug_file,
            &[&ebpf, &twin],
        ),
        (
            "stripped_binary_symbolizes_like_the_unstripped",
            stripped_binary_symbolizes_like_the_unstripped,
            &[],
        ),
        (
            "flamegraph_subcommand_merges_and_filters",
            flamegraph_subcommand_merges_and_filters,
            &[],
        ),
        (
            "bad_sample_rates_are_refused",
            bad_sample_rates_are_refused,
            &[],
        ),
    ];
    run_suite(&args, tests);
}

/// The function the twin burns CPU in for `twinburn` messages.
const HOT_FUNCTION: &str = "TwinBurnCpu";
/// Bitcoin Core's per-peer message processing, where the hot function runs.
const PROCESS_MESSAGES: &str = "PeerManagerImpl::ProcessMessages";
/// Samples per second per CPU in these tests: high, so that a few seconds
/// give thousands of samples.
const TEST_RATE: &str = "997";

/// What a traced burn left behind.
struct BurnRun {
    _tmp: tempfile::TempDir,
    /// The `--flamegraph` directory.
    dir: PathBuf,
    stderr: String,
    burner: SocketAddr,
    bystander: SocketAddr,
}

/// The collapsed stacks of the peer whose client end is `local`.
fn peer_stacks(dir: &Path, local: SocketAddr) -> Result<(PathBuf, FoldedStacks)> {
    let suffix = format!("-{}.folded", local.to_string().replace(':', "_"));
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("peer-") && name.ends_with(&suffix) {
            found.push(path);
        }
    }
    let [path] = &found[..] else {
        bail!(
            "expected one flamegraph for {local} in {}, found {found:?} among {:?}",
            dir.display(),
            fs::read_dir(dir)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Vec<_>>()
        );
    };
    ensure!(
        path.with_extension("svg").is_file(),
        "{} has no SVG next to it",
        path.display()
    );
    let stacks = FoldedStacks::parse(&fs::read_to_string(path)?, &path.display().to_string())?;
    Ok((path.clone(), stacks))
}

/// The `n` stacks with the most samples, one per line, for failure messages.
fn top_stacks(stacks: &FoldedStacks, n: usize) -> String {
    let mut text = Vec::new();
    stacks.write_to(&mut text).expect("writing to memory");
    let mut lines: Vec<(u64, String)> = String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let (stack, count) = l.rsplit_once(' ')?;
            Some((count.parse().ok()?, stack.to_string()))
        })
        .collect();
    lines.sort_by_key(|l| std::cmp::Reverse(l.0));
    lines
        .iter()
        .take(n)
        .map(|(count, stack)| format!("  {count} {stack}\n"))
        .collect()
}

/// True when `frames` holds `outer` and, further in, `inner`.
fn calls(frames: &[&str], outer: &str, inner: &str) -> bool {
    frames
        .iter()
        .position(|f| f.contains(outer))
        .is_some_and(|i| frames[i + 1..].iter().any(|f| f.contains(inner)))
}

/// Sends `block` messages (the twin's medium block, fetched from it first)
/// for `how_long`: CPU on the message handler that is not the burn.
fn send_blocks(node: &Node, peer: &mut P2pClient, how_long: Duration) -> Result<()> {
    let (hash, _) = node
        .blocks
        .iter()
        .min_by_key(|(_, size)| *size)
        .context("the node serves no block")?;
    let hash: bitcoin::BlockHash = hash.parse()?;
    peer.send(&p2p::getdata_block(&[hash]))?;
    let block = peer
        .recv_msg_type("block", Duration::from_secs(30))
        .map_err(|e| anyhow!("waiting for block {hash}: {e}"))?
        .into_payload();
    let start = Instant::now();
    let mut nonce = 1000;
    while start.elapsed() < how_long {
        for _ in 0..4 {
            peer.send_raw("block", &block)?;
        }
        nonce += 1;
        sync(peer, nonce)?;
    }
    Ok(())
}

/// Sends `twinburn` messages of about 50 ms of CPU each for `how_long`,
/// waiting for each to be handled.
fn send_burns(peer: &mut P2pClient, how_long: Duration) -> Result<()> {
    let start = Instant::now();
    let mut nonce = 1;
    while start.elapsed() < how_long {
        peer.send_raw("twinburn", &200_000u32.to_le_bytes())?;
        nonce += 1;
        sync(peer, nonce)?;
    }
    Ok(())
}

/// Traces `binary` (started as a twin) with `--flamegraph` while one peer
/// burns CPU and another sends blocks.
fn burn_run(binary: &Path, extra_args: &[&str]) -> Result<BurnRun> {
    let node = Node::start_twin(binary, &[])?;
    let dir = tempfile::tempdir()?;
    let flame = dir.path().join("flame");
    let mut args = vec![
        "--flamegraph",
        flame.to_str().unwrap(),
        "--sample-rate",
        TEST_RATE,
    ];
    args.extend_from_slice(extra_args);
    let tracer = Tracer::start(node.pid(), &args)?;
    let mut burner = connect(&node)?;
    let mut bystander = connect(&node)?;
    burner.set_recording(false);
    bystander.set_recording(false);
    let (burner_addr, bystander_addr) = (burner.local_addr(), bystander.local_addr());
    // Both peers must have exchanged a message under the probes, so the
    // kernel knows their ids before the work starts.
    sync(&mut burner, 1)?;
    sync(&mut bystander, 1)?;
    let work = Duration::from_secs(3);
    thread::scope(|s| -> Result<()> {
        let blocks = s.spawn(|| send_blocks(&node, &mut bystander, work));
        send_burns(&mut burner, work)?;
        blocks
            .join()
            .map_err(|_| anyhow!("block sender panicked"))?
    })?;
    drop(burner);
    drop(bystander);
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed:\n{}", out.stderr);
    node.stop()?;
    Ok(BurnRun {
        _tmp: dir,
        dir: flame,
        stderr: out.stderr,
        burner: burner_addr,
        bystander: bystander_addr,
    })
}

/// The share (percent) of samples unwound to the thread entry, as the
/// summary reports it.
fn unwound_percent(stderr: &str) -> Result<f64> {
    let line = stderr
        .lines()
        .find(|l| l.contains("cpu samples:"))
        .with_context(|| format!("no cpu samples line in the summary:\n{stderr}"))?;
    let pct = line
        .split(", ")
        .find_map(|part| part.strip_suffix("% unwound to the thread entry"))
        .with_context(|| format!("no unwinding share in {line:?}"))?;
    Ok(pct.trim().parse()?)
}

/// The peer that sends `twinburn` gets ≥ 90% of its message-handler samples
/// under `ProcessMessages` → `TwinBurnCpu`; the peer that sends blocks gets
/// none there; ≥ 99% of each thread's samples unwind to the thread entry,
/// although the twin has no frame pointers, `b-net` included, which
/// receives into a 64 KiB buffer on its stack as bitcoind does.
fn burning_peer_owns_the_burn() -> Result<()> {
    let run = burn_run(Path::new(TWIN), &[])?;
    let dir = &run.dir;
    let unwound = unwound_percent(&run.stderr)?;
    let all = FoldedStacks::parse(&fs::read_to_string(dir.join("all.folded"))?, "all.folded")?;
    ensure!(dir.join("all.svg").is_file(), "no all.svg");
    let share = |pick: &dyn Fn(&str) -> bool| {
        let total = all.count_where(|f| pick(f[0]));
        let incomplete = all.count_where(|f| pick(f[0]) && f.contains(&INCOMPLETE_FRAME));
        (incomplete, total)
    };
    let (msghand_incomplete, msghand_total) = share(&|t| t == "b-msghand");
    ensure!(
        msghand_total >= 100,
        "only {msghand_total} b-msghand samples:\n{}",
        run.stderr
    );
    let (net_incomplete, net_total) = share(&|t| t == "b-net");
    ensure!(net_total >= 10, "only {net_total} b-net samples");
    check_unwound_per_thread(&all, &run.stderr)?;
    check_sampler_time(&run.stderr)?;
    let (path, burner) = peer_stacks(dir, run.burner)?;
    let msghand = burner.count_where(|f| f[0] == "b-msghand");
    let burning =
        burner.count_where(|f| f[0] == "b-msghand" && calls(f, PROCESS_MESSAGES, HOT_FUNCTION));
    ensure!(
        msghand >= 100,
        "{}: only {msghand} b-msghand samples",
        path.display()
    );
    ensure!(
        burning * 100 >= msghand * 90,
        "{}: {burning} of {msghand} b-msghand samples under {PROCESS_MESSAGES} → {HOT_FUNCTION}; top stacks:\n{}",
        path.display(),
        top_stacks(&burner, 5)
    );
    // Whole stacks, named: from the thread entry to the hot function.
    let named = burner.count_where(|f| {
        calls(f, "start_thread", "CConnman::ThreadMessageHandler")
            && calls(f, "CConnman::ThreadMessageHandler", PROCESS_MESSAGES)
            && calls(f, "PeerManagerImpl::ProcessMessage", HOT_FUNCTION)
    });
    ensure!(
        named * 100 >= burning * 90,
        "{}: only {named} of {burning} burning stacks run start_thread → ThreadMessageHandler → ProcessMessages → ProcessMessage → {HOT_FUNCTION}",
        path.display()
    );

    let (path, bystander) = peer_stacks(dir, run.bystander)?;
    let total = bystander.total();
    let hot = bystander.count_where(|f| f.iter().any(|x| x.contains(HOT_FUNCTION)));
    ensure!(total >= 5, "{}: only {total} samples", path.display());
    ensure!(
        hot == 0,
        "{}: {hot} of {total} samples in {HOT_FUNCTION}, which only the other peer triggers",
        path.display()
    );
    ensure!(
        bystander.count_where(|f| calls(f, PROCESS_MESSAGES, "DeserializeBlock")) > 0,
        "{}: no sample in block deserialization; top stacks:\n{}",
        path.display(),
        top_stacks(&bystander, 5)
    );
    eprintln!(
        "burning_peer_owns_the_burn: {unwound}% of {} samples unwound to the thread entry \
         (b-msghand: {msghand_incomplete} of {msghand_total} incomplete; b-net: \
         {net_incomplete} of {net_total} incomplete); \
         burning peer: {burning} of {msghand} b-msghand samples under {PROCESS_MESSAGES} → {HOT_FUNCTION}; \
         block peer: {hot} of {total} samples there\n{}",
        all.total(),
        run.stderr
            .lines()
            .filter(|l| l.contains("cpu samples:"))
            .collect::<String>()
    );
    Ok(())
}

/// A real bitcoind (stripped, no frame pointers, its debug file next to it)
/// under P2P pings from 8 peers and a stream of RPC calls: ≥ 99% of each
/// thread's samples unwind to the thread entry, `b-net` included, whose
/// `CConnman::SocketHandlerConnected` keeps a 64 KiB buffer on its stack,
/// and `b-msghand` with the default probes attached.
fn bitcoind_threads_unwind() -> Result<()> {
    let binary = bitcoind().context("BITCOIND is not set")?;
    let node = Node::start_bitcoind(&binary, &[])?;
    let dir = tempfile::tempdir()?;
    let flame = dir.path().join("flame");
    let tracer = Tracer::start(
        node.pid(),
        &[
            "--flamegraph",
            flame.to_str().unwrap(),
            "--sample-rate",
            TEST_RATE,
        ],
    )?;
    let load = LoadConfig {
        target: node.p2p_addr,
        network: NETWORK,
        peers: 8,
        mix: "ping-flood".parse()?,
        rate: 0.0,
        max_in_flight: 8,
        duration: Duration::from_secs(4),
        answer_timeout: Duration::from_secs(10),
        blocks: Vec::new(),
    };
    thread::scope(|s| -> Result<()> {
        let rpc = s.spawn(|| -> Result<()> {
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                node.bitcoin_cli(&["getblockchaininfo"])?;
            }
            Ok(())
        });
        loadgen::run(&load, |_| {})?;
        rpc.join().map_err(|_| anyhow!("RPC caller panicked"))?
    })?;
    let out = tracer.stop()?;
    ensure!(out.status.success(), "peerlog failed:\n{}", out.stderr);
    node.stop()?;
    let all = FoldedStacks::parse(&fs::read_to_string(flame.join("all.folded"))?, "all.folded")?;
    for thread in ["b-net", "b-msghand"] {
        let samples = all.count_where(|f| f[0] == thread);
        ensure!(
            samples >= 100,
            "only {samples} {thread} samples:\n{}",
            out.stderr
        );
    }
    // Whole stacks through the frame with the 64 KiB buffer.
    let deep = all.count_where(|f| {
        f[0] == "b-net"
            && !f.contains(&INCOMPLETE_FRAME)
            && f.iter()
                .any(|x| x.contains("CConnman::SocketHandlerConnected"))
    });
    ensure!(
        deep > 0,
        "no whole b-net stack through CConnman::SocketHandlerConnected; top stacks:\n{}",
        top_stacks(&all.filter(|f| f[0] == "b-net"), 5)
    );
    check_unwound_per_thread(&all, &out.stderr)?;
    check_sampler_time(&out.stderr)?;
    eprintln!(
        "bitcoind_threads_unwind: {}",
        out.stderr
            .lines()
            .filter(|l| l.contains("cpu samples:"))
            .collect::<String>()
    );
    Ok(())
}

/// Every thread's samples in `all` (the threads' collapsed stacks) unwind
/// to the thread entry: ≥ 99% of them, or all but one of a thread with
/// fewer than 100 samples (one in a hundred would round to none).
/// `stderr` is peerlog's, for the failure message.
fn check_unwound_per_thread(all: &FoldedStacks, stderr: &str) -> Result<()> {
    let mut text = Vec::new();
    all.write_to(&mut text)?;
    let text = String::from_utf8_lossy(&text);
    let mut threads: Vec<&str> = text.lines().filter_map(|l| l.split(';').next()).collect();
    threads.sort_unstable();
    threads.dedup();
    for thread in threads {
        let total = all.count_where(|f| f[0] == thread);
        let incomplete = all.count_where(|f| f[0] == thread && f.contains(&INCOMPLETE_FRAME));
        ensure!(
            incomplete * 100 <= total || incomplete <= 1,
            "{incomplete} of {total} {thread} stacks are incomplete; top incomplete stacks:\n{}\n{stderr}",
            top_stacks(
                &all.filter(|f| f[0] == thread && f.contains(&INCOMPLETE_FRAME)),
                5
            )
        );
    }
    Ok(())
}

/// The summary says what the samples cost in the kernel, over as many
/// samples as it reports sent and lost: the program counts every sample of
/// the node it takes. At most one per CPU may have still been running when
/// the count was read, after the detach.
fn check_sampler_time(stderr: &str) -> Result<()> {
    let after = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("no `{name}` line in the summary:\n{stderr}"))
    };
    let samples = after("cpu samples:")?;
    let sent: u64 = samples.split_whitespace().next().unwrap_or("").parse()?;
    let lost: u64 = samples
        .rsplit(", ")
        .next()
        .and_then(|l| l.strip_suffix(" lost"))
        .with_context(|| format!("no loss count in {samples:?}"))?
        .parse()?;
    let time = after("sampler time:")?;
    let counted: u64 = time
        .rsplit_once(" over ")
        .and_then(|(_, n)| n.strip_suffix(" samples)"))
        .with_context(|| format!("no sample count in {time:?}"))?
        .parse()?;
    let cpus = std::thread::available_parallelism()?.get() as u64;
    ensure!(
        counted <= sent + lost && sent + lost <= counted + cpus,
        "the program counted {counted} samples, the summary {sent} sent and {lost} lost:\n{stderr}"
    );
    Ok(())
}

/// True when some stack of the burning peer runs, named, from the thread
/// entry to the hot function: start_thread → ThreadMessageHandler →
/// ProcessMessages → ProcessMessage → TwinBurnCpu.
fn burn_is_named(run: &BurnRun) -> Result<bool> {
    let (_, burner) = peer_stacks(&run.dir, run.burner)?;
    Ok(burner.count_where(|f| {
        calls(f, "start_thread", "CConnman::ThreadMessageHandler")
            && calls(f, "CConnman::ThreadMessageHandler", PROCESS_MESSAGES)
            && calls(f, "PeerManagerImpl::ProcessMessage", HOT_FUNCTION)
    }) > 0)
}

/// A trace of the stripped twin (like a Bitcoin Core release binary) names
/// its frames from the debug file: found through its `.gnu_debuglink` (the
/// debug file next to it), and given with `--debug-file` when the link
/// leads nowhere. That the names equal the unstripped twin's, address by
/// address, is `stripped_binary_symbolizes_like_the_unstripped`.
fn stripped_binary_gets_names_from_debug_file() -> Result<()> {
    let linked = burn_run(Path::new(TWIN_STRIPPED), &[])?;
    ensure!(
        burn_is_named(&linked)?,
        "the stripped twin's burn is not named through .gnu_debuglink; top stacks:\n{}",
        top_stacks(&peer_stacks(&linked.dir, linked.burner)?.1, 5)
    );
    // A copy of the stripped twin alone in a directory: its debug link finds
    // nothing, so only --debug-file can name it.
    let alone = tempfile::tempdir()?;
    let binary = alone.path().join("bitcoind");
    fs::copy(TWIN_STRIPPED, &binary)?;
    let explicit = burn_run(&binary, &["--debug-file", TWIN_DEBUG])?;
    ensure!(
        burn_is_named(&explicit)?,
        "the stripped twin's burn is not named with --debug-file; top stacks:\n{}",
        top_stacks(&peer_stacks(&explicit.dir, explicit.burner)?.1, 5)
    );
    Ok(())
}

/// Code addresses all over the twin's functions get the same frame names
/// (function and inlined functions) from the stripped twin with its debug
/// file, found through `.gnu_debuglink` or given as `--debug-file`, as
/// from the unstripped twin; without its debug file the stripped twin's
/// addresses stay unnamed.
fn stripped_binary_symbolizes_like_the_unstripped() -> Result<()> {
    let twin = fs::read(TWIN)?;
    let elf = object::File::parse(&*twin)?;
    // Each function's entry and every 97th byte of its code: a prime
    // stride, so the addresses fall at every offset of 16-byte-aligned code
    // and into the inlined code all over the functions. (Every byte would
    // take minutes: a lookup with inlined functions costs about a
    // millisecond.)
    let mut addresses = Vec::new();
    for symbol in elf.symbols() {
        if symbol.kind() == object::SymbolKind::Text && symbol.size() > 0 {
            let code = symbol.address()..symbol.address() + symbol.size();
            addresses.extend(code.step_by(97));
        }
    }
    addresses.sort_unstable();
    addresses.dedup();
    ensure!(
        addresses.len() > 1000,
        "only {} addresses in the twin's functions",
        addresses.len()
    );
    let names = |binary: &Path, debug_file: Option<&str>| {
        executable_frame_names(binary, debug_file.map(Path::new), &addresses)
    };
    let unstripped = names(Path::new(TWIN), None)?;
    let frames = |names: &[Vec<String>]| -> Vec<String> {
        let mut all: Vec<String> = names.iter().flatten().cloned().collect();
        all.sort();
        all.dedup();
        all
    };
    let known = frames(&unstripped);
    for want in [
        HOT_FUNCTION,
        "(anonymous namespace)::PeerManagerImpl::ProcessMessages",
        INLINED_SUFFIX,
    ] {
        ensure!(
            known.iter().any(|f| f.contains(want)),
            "no frame named {want} in the twin: {known:?}"
        );
    }
    let differences = |other: &[Vec<String>]| -> Vec<String> {
        addresses
            .iter()
            .zip(unstripped.iter().zip(other))
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(addr, (a, b))| format!("{addr:#x}: {a:?} vs {b:?}"))
            .collect()
    };

    let linked = names(Path::new(TWIN_STRIPPED), None)?;
    let diff = differences(&linked);
    ensure!(
        diff.is_empty(),
        "the stripped twin via .gnu_debuglink names addresses differently from the twin (first {}):\n{}",
        diff.len(),
        diff.join("\n")
    );

    // A copy alone in a directory: its debug link leads nowhere.
    let alone = tempfile::tempdir()?;
    let binary = alone.path().join("bitcoind");
    fs::copy(TWIN_STRIPPED, &binary)?;
    let explicit = names(&binary, Some(TWIN_DEBUG))?;
    let diff = differences(&explicit);
    ensure!(
        diff.is_empty(),
        "the stripped twin with --debug-file names addresses differently from the twin (first {}):\n{}",
        diff.len(),
        diff.join("\n")
    );
    // Without it, only the few functions the binary exports have names.
    let bare = frames(&names(&binary, None)?);
    ensure!(
        bare.iter().any(|f| f == "[bitcoind]")
            && !bare.iter().any(|f| {
                f.contains(HOT_FUNCTION)
                    || f.contains("PeerManagerImpl")
                    || f.ends_with(INLINED_SUFFIX)
            }),
        "the stripped twin without its debug file has names from somewhere: {bare:?}"
    );
    Ok(())
}

fn peerlog(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(peerlog_bin()?).args(args).output()?)
}

/// `peerlog flamegraph` adds up the stacks of several files and keeps those
/// of a peer, a thread or a function.
fn flamegraph_subcommand_merges_and_filters() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = dir.path().join("a.folded");
    let b = dir.path().join("b.folded");
    fs::write(
        &a,
        "b-msghand;peer=3 127.0.0.1:5000;clone3;ProcessMessages;TwinBurnCpu 90\n\
         b-net;clone3;CConnman::SocketHandler;poll 10\n",
    )?;
    fs::write(
        &b,
        "b-msghand;peer=4 127.0.0.1:5001;clone3;ProcessMessages;DeserializeBlock 7\n\
         b-msghand;peer=3 127.0.0.1:5000;clone3;ProcessMessages;TwinBurnCpu 10\n\
         b-scriptch.1;clone3;CheckInputScripts 5\n",
    )?;
    let svg = dir.path().join("out.svg");
    let merged = dir.path().join("out.folded");
    let (a_s, b_s, svg_s, merged_s) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        svg.to_str().unwrap(),
        merged.to_str().unwrap(),
    );

    let out = peerlog(&[
        "flamegraph",
        a_s,
        b_s,
        "-o",
        svg_s,
        "--folded",
        merged_s,
        "--peer",
        "3",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        fs::read_to_string(&merged)?
            == "b-msghand;peer=3 127.0.0.1:5000;clone3;ProcessMessages;TwinBurnCpu 100\n",
        "merged: {:?}",
        fs::read_to_string(&merged)?
    );
    let text = fs::read_to_string(&svg)?;
    ensure!(text.contains("TwinBurnCpu") && !text.contains("DeserializeBlock"));
    ensure!(text.contains("100 of 122 samples"), "subtitle missing");

    let out = peerlog(&[
        "flamegraph",
        a_s,
        b_s,
        "--folded",
        merged_s,
        "-o",
        svg_s,
        "--thread",
        "b-scriptch",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(fs::read_to_string(&merged)? == "b-scriptch.1;clone3;CheckInputScripts 5\n");

    let out = peerlog(&[
        "flamegraph",
        a_s,
        b_s,
        "--folded",
        merged_s,
        "-o",
        svg_s,
        "--function",
        "Deserialize",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(fs::read_to_string(&merged)?.lines().count() == 1);

    // The README's example, on the stacks this repository carries.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/flamegraph/all.folded"
    );
    let out = peerlog(&[
        "flamegraph",
        fixture,
        "--peer",
        "1",
        "-o",
        svg_s,
        "--folded",
        merged_s,
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer1 = FoldedStacks::parse(&fs::read_to_string(&merged)?, "peer 1")?;
    ensure!(
        peer1.total() > 0 && peer1.count_where(|f| f[1].starts_with("peer=1 ")) == peer1.total()
    );
    ensure!(fs::read_to_string(&svg)?.contains("DeserializeBlock"));

    // SVG on standard output.
    let out = peerlog(&["flamegraph", a_s])?;
    ensure!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("<svg"));

    // Nothing left after filtering, or not a collapsed stack: errors that say so.
    let out = peerlog(&["flamegraph", a_s, "--peer", "99"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("peer 99"), "{err}");
    fs::write(&b, "not a stack\n")?;
    let out = peerlog(&["flamegraph", b_s])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("b.folded:1"), "{err}");
    Ok(())
}

/// `--sample-rate` outside 1..=1000 Hz, or without `--flamegraph`, is refused
/// before anything is attached.
fn bad_sample_rates_are_refused() -> Result<()> {
    for rate in ["0", "1001"] {
        let out = peerlog(&[
            "trace",
            "--pid",
            "1",
            "--flamegraph",
            "/nonexistent",
            "--sample-rate",
            rate,
        ])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("--sample-rate"),
            "rate {rate}: {err}"
        );
    }
    let out = peerlog(&["trace", "--pid", "1", "--sample-rate", "99"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("--flamegraph"),
        "{err}"
    );
    Ok(())
}
