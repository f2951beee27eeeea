//! `docs/benchmarks.md`: the page's text, and this node's section written
//! into it with the other node's section kept as it was.

use super::{plan::Config, results::Results, table::table, targets::targets_text};

/// The text of `docs/benchmarks.md`; `{twin}` and `{bitcoind}` are each
/// node's section, [`section`]'s text between its markers.
const DOC_TEMPLATE: &str = r#"# Benchmarks

What tracing a node with peerlog costs it, side by side with the floor (empty
probes on the same tracepoints) and the bpftrace reference, measured by
`cargo xtask bench` against the twin node, and by
`BITCOIND=/path/to/bitcoind cargo xtask bench` against a real bitcoind:
at most about 13 minutes per node on two cores, plus the release build
(three rounds of 5 s windows, as before the floor and the defaults were
added). `cargo xtask bench --smoke`, a second per run, is the version CI
runs. Each node's run writes its own section below and leaves the other's as
it was.

## Twin node

{twin}

## Real bitcoind

{bitcoind}

## What is measured

**Nodes.** The twin node (`tests/twin/twin.cpp`), started fresh for every run.
It has bitcoind's tracepoints, semaphores and `b-net`/`b-msghand` threads; its
message handling is far cheaper than bitcoind's, so tracing overhead relative
to its work is larger than bitcoind would see. With
`BITCOIND=/path/to/bitcoind`, a real bitcoind instead, also fresh for every
run: regtest, loopback only, its own data directory,
`-whitelist=noban,relay@127.0.0.1` (its inbound peers are then preferred for
transaction download, so it asks for what they announce without its 2 s
delay, and their announcements are not capped), `-maxconnections=300` (room
for 125 inbound peers), and one block mined with `bitcoin-cli
generatetodescriptor` so that it leaves initial block download and relays
transactions. A fresh regtest node has no ~1 MB block to serve, so the block
scenario is skipped on it. The node's CPU time counts all its threads.

**Load.** `peerlog-loadgen` (`tests/src/loadgen.rs`, on peerlog's P2P client):
ping flood (8 peers × 8 pings in flight), transaction relay (32 peers × 4
`inv` in flight, each answered by the node's `getdata`, then sent the `tx`),
block serving (4 peers × 2 `getdata` in flight for the twin's block closest
to 1,000,000 bytes, `-blocksize=1000000`), and 125 idle peers pinging once a
second. The first three are closed loops: they run as fast as the node
answers, so tracing overhead shows as lost throughput.

**Configurations**, interleaved in each round (their order rotates; the
exact commands are in each section):

- *untraced*;
- *floor*: bpftrace running `xtask/bench/empty_probe.bt`, empty actions on
  net:inbound_message and net:outbound_message: a uprobe on every message
  and nothing else, which no tracer of those tracepoints can go below;
- *peerlog --no-accounting*: the net:* tracepoints only, counting, nothing
  written;
- *peerlog, defaults*: `peerlog trace --pid PID` and nothing else: per-peer
  accounting on, which puts no uprobe on the node's functions (per-peer CPU
  from slices cut by the message tracepoints and a sched_switch raw
  tracepoint, bytes read from the node's CNodes through its DWARF);
- *peerlog --no-accounting --capture*: every payload written to disk;
- *peerlog, capture + stats + 99 Hz sampling*: everything on (accounting,
  capture, `--stats-log`, `--flamegraph`);
- *bpftrace log_p2p_traffic.bt*: the equivalent of Bitcoin Core's
  `contrib/tracing/log_p2p_traffic.bt` (one text line per message, no
  payload), run by Debian's bpftrace with its output in a file; every run
  checks that it saw at least the messages of the window;
- *peerlog --no-accounting, 99 Hz sampling*: what sampling alone costs the
  node is the sampling program's own run time, from the kernel's BPF
  statistics (`kernel.bpf_stats_enabled`, on for those runs only), over the
  node's CPU time without it, which counts the program's early returns
  in other processes against the node, so it is an upper bound. Per
  sample of the node: the time the program itself counts on the node's
  samples, from knowing the thread is the node's to returning (peerlog's
  summary, `sampler time:`), per sample, plus the entry every run pays in
  any process: the kernel's run time of all runs less the node's part,
  over all runs;
- *peerlog, defaults + 99 Hz sampling*: per-peer flamegraphs, the sampler
  next to the accounting that splits its samples by peer, the way an
  operator runs `--flamegraph`; its cost per sample of the node is
  measured as above. The accounting's programs run at every context switch
  and keep what they share with the sampler cached, so the sampler's
  entry costs less there than with `--no-accounting`, and its own time
  includes looking up which peer the thread works for;
- *peerlog, defaults + stats log every second*: each line reads every
  peer's byte counters and queues out of the node's memory
  (`process_vm_readv`, in peerlog's process). Next to the defaults, what
  those reads cost the node. The reads take the node's mm lock for reading
  while they pin its pages, so the node can only pay by waiting for that
  lock: in this configuration and the defaults, bpftrace also runs
  `xtask/bench/mm_lock_wait.bt`, which sums how long the node's threads
  waited for their mm lock, and which of those waits fell while another
  process held it or let it go, and counts how often and how long other
  processes took it (the reads among them). The waits behind another
  process are the direct measure: all the node's waits, mostly its threads
  waiting for each other, differ by hundreds of µs/s between rounds of one
  configuration, and a difference of node CPU time of a few tenths of a
  point is below what these rounds resolve.
  The watch's probes fire on every mm lock taken on the machine, a cost the
  defaults then carry too (their comparisons with the untraced run err
  against peerlog).

bpftrace raises the node's USDT semaphores itself (with `-p PID`), and is
given the node's binary as `$1`.

**Columns.** *answered/s*: requests the node answered per second over the
window. *vs untraced*, *vs floor*: that throughput over the untraced run's,
and over the floor run's, of the same round. *node CPU per msg*: the node's
user+system CPU time (`/proc/PID/stat`) over the window, divided by the P2P
messages exchanged in it; *beyond floor*: that minus the floor's of the same
round, what the configuration adds to merely probing each message. *answer
p99*: the load generator's answer latency. *CPU*: the node's, the load
generator's and the tracer's CPU time over the window, in percent of one
core; where they add up to the machine's cores (200 % here), every cycle a
tracer takes is taken from the node or its load, which is most of what the
closed-loop ratios show. *tracer peak RSS*: `VmHWM` before it stops, and in
parentheses its heap (`RssAnon` at the end of the load); peerlog's peak RSS
includes its kernel ring buffer, whose data pages are mapped twice (so that
records never wrap): 32 MiB of RSS for the default `--ring-size 16`. *events
lost*: as the tracer reports them (peerlog's summary, bpftrace's `Lost N
events`). *event latency*: peerlog's kernel-to-userspace latency per message
(CLOCK_MONOTONIC when peerlog handles it minus the tracepoint's timestamp);
bpftrace has no equivalent.

**Reading it.** The twin handles messages on one thread, like bitcoind's
`b-msghand`: in the closed loops it runs at about 100 % of a core (the CPU
column), so its throughput is the inverse of its CPU time per message, and a
tracer's cost shows as the time its probes add to each message (node CPU per
msg), paid in the node's thread whatever the tracer does with the event
afterwards. The floor is that cost for an empty probe; *beyond floor* is
what a tracer's own programs add to it.

Figures are medians over the rounds (the ratios with their range), except
peak RSS (the largest), events lost (the sum) and event latency (the median
p50, the worst p99). Targets are reported, never asserted. Every run's
figures: `target/bench/results.json` (twin) and
`target/bench/results-bitcoind.json`.
"#;

/// One node's section of the doc; `{name}` marks what [`section`] fills in.
const SECTION_TEMPLATE: &str = r#"{date}, commit {commit}, node: {node}. {rounds} rounds of {duration} s per
configuration and scenario, {total} s in all.

Machine: {machine}; load average {load} when the bench started, {load_end}
when it ended. The machine was shared with other builds, and the node, the
tracer and the load generator share its cores, so absolute figures move
between runs; compare ratios within a round.

{table}{skipped}
Targets:

{targets}{failures}
Commands:

{commands}"#;

/// What stands in a node's section until it has been run.
pub(super) fn not_run_yet(node_kind: &str) -> String {
    let command = match node_kind {
        "bitcoind" => "BITCOIND=/path/to/bitcoind cargo xtask bench",
        _ => "cargo xtask bench",
    };
    format!("Not run yet: `{command}`.")
}

/// The text between a node's markers in `doc`, if it has them.
pub(super) fn marked_section<'a>(doc: &'a str, node_kind: &str) -> Option<&'a str> {
    let (begin, end) = markers(node_kind);
    let start = doc.find(&begin)? + begin.len();
    let len = doc[start..].find(&end)?;
    Some(doc[start..start + len].trim_matches('\n'))
}

fn markers(node_kind: &str) -> (String, String) {
    (
        format!("<!-- bench:{node_kind}:begin -->"),
        format!("<!-- bench:{node_kind}:end -->"),
    )
}

/// The doc with `results` in their node's section and the other node's
/// section kept from `existing` (the doc as it was).
pub(super) fn document(existing: &str, results: &Results) -> String {
    ["twin", "bitcoind"]
        .iter()
        .fold(DOC_TEMPLATE.to_string(), |doc, &kind| {
            let text = if kind == results.node_kind {
                section(results)
            } else {
                marked_section(existing, kind).map_or_else(|| not_run_yet(kind), str::to_string)
            };
            let (begin, end) = markers(kind);
            doc.replace(&format!("{{{kind}}}"), &format!("{begin}\n{text}\n{end}"))
        })
}

/// This run's section of the doc.
fn section(results: &Results) -> String {
    let m = &results.machine;
    // The exact command of each tracer configuration, from the runs.
    let commands: String = Config::ALL
        .into_iter()
        .filter_map(|config| {
            let run = results.runs.iter().find(|r| r.config == config.name())?;
            let tracer = run.tracer.as_ref()?;
            Some(format!(
                "- {}: `{}`\n",
                results.tools.label(config),
                tracer.command
            ))
        })
        .collect();
    let failures = if results.failures.is_empty() {
        String::new()
    } else {
        let list: String = results
            .failures
            .iter()
            .map(|f| format!("- {}\n", f.replace('\n', " ")))
            .collect();
        format!("\nFailed runs:\n\n{list}")
    };
    let skipped: String = results
        .skipped
        .iter()
        .map(|s| format!("\nNot run: {}: {}.\n", s.title, s.reason))
        .collect();
    let machine = format!(
        "{} CPUs ({}), {:.1} GiB, Linux {}",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel
    );
    [
        ("{date}", results.date.clone()),
        ("{commit}", results.commit.clone()),
        ("{node}", results.node.clone()),
        ("{rounds}", results.rounds.to_string()),
        ("{duration}", results.duration_secs.to_string()),
        ("{total}", format!("{:.0}", results.total_secs)),
        ("{machine}", machine),
        ("{load}", m.load_average_at_start.clone()),
        ("{load_end}", m.load_average_at_end.clone()),
        ("{table}", table(&results.rows)),
        ("{skipped}", skipped),
        ("{targets}", targets_text(&results.targets)),
        ("{failures}", failures),
        ("{commands}", commands),
    ]
    .iter()
    .fold(SECTION_TEMPLATE.to_string(), |doc, (key, value)| {
        doc.replace(key, value)
    })
    .trim_end()
    .to_string()
}
