//! Unit tests of the bench: the parsing of tracer output, the comparisons
//! within a round, the doc's sections, and the `/proc` readings.

use super::{
    doc::{document, marked_section, not_run_yet},
    one_run::Run,
    plan::{Config, Plan, Scenario},
    process::thread_waits,
    results::{Machine, Results, SkippedScenario},
    rows::rows,
    sample::{cpu_seconds, memory_mib, SamplerRuns, SamplerTime},
    targets::{check_targets, find, TargetCheck},
    tools::Tools,
    tracer::{bpftrace_lost, queue_readings, PeerlogSummary},
};

#[test]
fn counts_the_queue_readings_of_a_stats_log() {
    let dir = std::env::temp_dir().join(format!("peerlog-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("stats-log");
    // Two lines: two peers read, then one read and one whose queues were
    // not (a closed peer's figures are null).
    std::fs::write(
        &log,
        "{\"peers\":[{\"memory\":{\"send_queue_bytes\":0}},{\"memory\":{\"send_queue_bytes\":24}}]}\n\
         {\"peers\":[{\"memory\":{\"send_queue_bytes\":7}},{\"memory\":{\"send_queue_bytes\":null}}]}\n",
    )
    .unwrap();
    assert_eq!(queue_readings(&log).unwrap(), 3);
    std::fs::write(&log, "not json\n").unwrap();
    assert!(queue_readings(&log).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parses_peerlog_summary() {
    let stderr = "peerlog: attached to pid 1 (twin, /x): 7 probe sites of 7 tracepoints (semaphores raised by the kernel)\n\
                  peerlog: stopped (interrupted)\n  peers seen:       2\n  received:         21 messages, 4406219 bytes\n\
                  \x20 sent:             18 messages, 4420153 bytes\n  capture records:  39\n\
                  \x20 event latency:    p50 120 µs, p99 9100 µs\n  events lost:      3 (ring_full_chunk=3)\n\
                  \x20 cpu samples:      902 at 99 Hz over 11.4 s, 100.0% unwound to the thread entry, 4 lost\n\
                  \x20 sampler time:     4.50 µs per sample in the node past the program's entry (4077 µs over 906 samples)\n";
    assert_eq!(
        PeerlogSummary::parse(stderr).unwrap(),
        PeerlogSummary {
            received: 21,
            sent: 18,
            events_lost: 3,
            latency_us: Some((120, 9100)),
            cpu_samples: Some(906),
            sampler_time: Some(SamplerTime {
                ns: 4_077_000,
                samples: 906,
            }),
        }
    );
    let without_latency = stderr.replace("  event latency:    p50 120 µs, p99 9100 µs\n", "");
    assert_eq!(
        PeerlogSummary::parse(&without_latency).unwrap().latency_us,
        None
    );
    assert!(PeerlogSummary::parse("peerlog: error: boom").is_err());
}

#[test]
fn sampler_cost_per_node_sample_adds_the_entry_every_run_pays() {
    let time = SamplerTime {
        ns: 4_000_000,
        samples: 1000,
    };
    // 3000 runs took 4.9 ms: the node's 1000 samples 4 ms past the entry,
    // so every run's entry 0.3 µs; a sample of the node 4.3 µs.
    let runs = SamplerRuns {
        ns: 4_900_000,
        count: 3000,
    };
    assert_eq!(time.ns_per_sample(runs), Some(4300.0));
    assert_eq!(time.ns_per_sample(SamplerRuns::default()), None);
    let none = SamplerTime { ns: 0, samples: 0 };
    assert_eq!(none.ns_per_sample(runs), None);
}

fn results<'a>(tools: &'a Tools, node_kind: &'static str, runs: Vec<Run>) -> Results<'a> {
    let plan = Plan::new(false);
    let scenarios: Vec<&Scenario> = plan.scenarios.iter().collect();
    Results {
        mode: "full",
        node_kind,
        node: format!("the {node_kind} node"),
        date: "2026-01-01 00:00 UTC".into(),
        commit: "0000000".into(),
        machine: Machine::describe(),
        rounds: 3,
        duration_secs: 6.0,
        total_secs: 500.0,
        tools,
        rows: rows(&scenarios, tools, &runs),
        skipped: vec![SkippedScenario {
            scenario: "blocks".into(),
            title: "4 peers, ~1 MB block serving".into(),
            reason: "no such block".into(),
        }],
        targets: check_targets(&scenarios, &[], &runs),
        failures: vec!["relay · bpftrace · round 1: boom\nmore".into()],
        runs,
    }
}

fn tools() -> Tools {
    Tools {
        bpftrace: Ok("bpftrace v0.17.0".into()),
        stats_options: vec![],
        no_accounting: true,
    }
}

#[test]
fn fills_every_placeholder_of_the_doc() {
    let tools = tools();
    let doc = document("", &results(&tools, "twin", vec![]));
    assert!(!doc.contains('{'), "{doc}");
    assert!(doc.contains("not available yet"));
    assert!(doc.contains("- relay · bpftrace · round 1: boom more"));
    assert!(doc.contains("Not run: 4 peers, ~1 MB block serving: no such block."));
    assert!(doc.contains("node: the twin node."));
    assert!(doc.contains(&not_run_yet("bitcoind")), "{doc}");
}

#[test]
fn keeps_the_other_nodes_section() {
    let tools = tools();
    let twin = document("", &results(&tools, "twin", vec![]));
    let twin_section = marked_section(&twin, "twin").unwrap().to_string();
    assert!(twin_section.contains("node: the twin node."));
    // The twin's section survives a bitcoind run, and the bitcoind's the
    // next twin run.
    let both = document(&twin, &results(&tools, "bitcoind", vec![]));
    assert_eq!(marked_section(&both, "twin").unwrap(), twin_section);
    let bitcoind_section = marked_section(&both, "bitcoind").unwrap().to_string();
    assert!(bitcoind_section.contains("node: the bitcoind node."));
    let again = document(&both, &results(&tools, "twin", vec![]));
    assert_eq!(
        marked_section(&again, "bitcoind").unwrap(),
        bitcoind_section
    );
    assert_eq!(again.matches("<!-- bench:twin:begin -->").count(), 1);
    assert_eq!(again.matches("<!-- bench:bitcoind:end -->").count(), 1);
}

/// The first of `targets` whose wording has `words`.
fn target<'a>(targets: &'a [TargetCheck], words: &str) -> &'a TargetCheck {
    targets
        .iter()
        .find(|t| t.target.contains(words))
        .unwrap_or_else(|| panic!("no target says {words:?}"))
}

/// A run with the figures the comparisons read.
fn run(scenario: &str, config: Config, round: usize, per_sec: f64, cpu_us: f64) -> Run {
    Run {
        scenario: scenario.into(),
        config: config.name().into(),
        round,
        window_secs: 5.0,
        answered_per_sec: per_sec,
        messages: 1000,
        answer_p99_us: 0,
        load_errors: 0,
        target_cpu_secs: 0.0,
        target_cpu_us_per_msg: cpu_us,
        target_cpu_percent: cpu_us / 10.0,
        loadgen_cpu_percent: 0.0,
        tracer: None,
        sampler_cpu_secs: None,
        sampler_ns_per_sample: None,
        node_mm_lock: None,
        block_size: None,
        load: serde_json::Value::Null,
    }
}

#[test]
fn compares_with_the_floor_of_the_same_round() {
    let runs = vec![
        run("ping-flood", Config::Untraced, 0, 1000.0, 10.0),
        run("ping-flood", Config::Floor, 0, 800.0, 12.0),
        run("ping-flood", Config::Counting, 0, 760.0, 13.0),
        run("ping-flood", Config::Defaults, 0, 700.0, 14.0),
        // Another round, on a slower machine: compared within it.
        run("ping-flood", Config::Untraced, 1, 500.0, 20.0),
        run("ping-flood", Config::Floor, 1, 400.0, 24.0),
        run("ping-flood", Config::Counting, 1, 400.0, 25.0),
        run("ping-flood", Config::Defaults, 1, 380.0, 27.0),
    ];
    let plan = Plan::new(false);
    let scenarios: Vec<&Scenario> = plan.scenarios.iter().take(1).collect();
    let rows = rows(&scenarios, &tools(), &runs);
    let counting = find(&rows, "ping-flood", Config::Counting).unwrap();
    assert_eq!(counting.throughput_ratio, Some((0.78, 0.76, 0.8)));
    assert_eq!(counting.floor_ratio, Some((0.975, 0.95, 1.0)));
    assert_eq!(counting.cpu_us_per_msg_beyond_floor, Some(1.0));
    let floor = find(&rows, "ping-flood", Config::Floor).unwrap();
    assert_eq!(floor.floor_ratio, Some((1.0, 1.0, 1.0)));

    let targets = check_targets(&scenarios, &rows, &runs);
    let flood = target(&targets, "defaults ≥ 0.90");
    // 700/760 = 0.921 and 380/400 = 0.95: median 0.9355.
    assert_eq!(flood.met, Some(true), "{}", flood.detail);
    assert!(flood.detail.contains("0.936"), "{}", flood.detail);
    // No idle scenario ran: that target is not measured, not missed.
    let idle = target(&targets, "idle");
    assert_eq!(idle.met, None);
}

/// The targets of the idle scenario alone, over `runs`.
fn idle_targets(runs: &[Run]) -> Vec<TargetCheck> {
    let plan = Plan::new(false);
    let idle: Vec<&Scenario> = plan.scenarios.iter().filter(|s| s.name == "idle").collect();
    let rows = rows(&idle, &tools(), runs);
    check_targets(&idle, &rows, runs)
}

#[test]
fn shows_each_rounds_cost_per_sample() {
    let sampled = |round, ns| Run {
        sampler_ns_per_sample: Some(ns),
        ..run("idle", Config::Sampling, round, 125.0, 170.0)
    };
    let targets = idle_targets(&[sampled(0, 4800.0), sampled(1, 6350.0), sampled(2, 5100.0)]);
    let cost = target(&targets, "(sampling alone");
    assert_eq!(cost.met, Some(false), "{}", cost.detail);
    assert_eq!(
        cost.detail,
        "idle: 5.10 µs per sample (rounds: 4.80, 6.35, 5.10)"
    );
    // The per-peer flamegraphs did not run: not measured, not missed.
    let per_peer = target(&targets, "(per-peer flamegraphs");
    assert_eq!(per_peer.met, None, "{}", per_peer.detail);
    assert_eq!(per_peer.detail, "idle: n/a");
}

#[test]
fn judges_the_cost_per_sample_with_the_accounting_apart() {
    let sampled = |config, round, ns| Run {
        sampler_ns_per_sample: Some(ns),
        ..run("idle", config, round, 125.0, 170.0)
    };
    let targets = idle_targets(&[
        sampled(Config::Sampling, 0, 6100.0),
        sampled(Config::PeerFlamegraphs, 0, 4700.0),
    ]);
    let alone = target(&targets, "(sampling alone");
    assert_eq!(alone.met, Some(false), "{}", alone.detail);
    let per_peer = target(&targets, "(per-peer flamegraphs");
    assert_eq!(per_peer.met, Some(true), "{}", per_peer.detail);
    assert_eq!(per_peer.detail, "idle: 4.70 µs per sample (rounds: 4.70)");
}

#[test]
fn counts_bpftrace_losses() {
    assert_eq!(
        bpftrace_lost("recv ping\nLost 12 events\nsent pong\nLost 3 events\n"),
        15
    );
    assert_eq!(bpftrace_lost("recv ping\n"), 0);
}

#[test]
fn reads_own_cpu_and_rss() {
    let pid = std::process::id() as i32;
    assert!(cpu_seconds(pid).unwrap() >= 0.0);
    let (peak, anon) = memory_mib(pid).unwrap();
    assert!(peak >= anon && anon > 0.0);
    assert!(thread_waits(pid).contains(':'));
}

#[test]
fn memory_reads_are_judged_by_the_nodes_mm_lock_wait() {
    use super::lock_watch::MmLockRun;
    let plan = Plan::new(false);
    let idle: Vec<&Scenario> = plan.scenarios.iter().filter(|s| s.name == "idle").collect();
    let watched = |config, round, behind: f64, foreign: f64| Run {
        node_mm_lock: Some(MmLockRun {
            // The node's own contention, which varies and is not judged.
            node_wait_us_per_sec: 500.0 + 300.0 * f64::from(round as u32),
            node_locks_per_sec: 20.0,
            foreign_locks_per_sec: foreign,
            foreign_hold_us_per_sec: foreign * 2.0,
            node_wait_behind_foreign_us_per_sec: behind,
        }),
        ..run("idle", config, round, 125.0, 10.0)
    };
    let verdict = |reads_wait: f64, reads_foreign: f64| {
        let runs = vec![
            watched(Config::Defaults, 0, 0.0, 0.5),
            watched(Config::MemoryReads, 1, reads_wait, reads_foreign),
        ];
        check_targets(&idle, &[], &runs)
            .into_iter()
            .find(|c| c.target.contains("mm lock"))
            .expect("the mm lock target")
            .met
    };
    assert_eq!(verdict(45.0, 125.0), Some(true));
    assert_eq!(verdict(200.0, 125.0), Some(false));
    // No reads seen taking the lock: nothing was measured.
    assert_eq!(verdict(0.0, 0.5), Some(false));
}
