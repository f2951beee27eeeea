//! `cargo xtask bench`: what tracing costs the node, measured side by side in
//! one session.
//!
//! For each scenario (a load shape driven by `peerlog-loadgen`), and in
//! several rounds, each configuration runs against a fresh node: the twin
//! node, or with `BITCOIND=/path/to/bitcoind` a real bitcoind on regtest,
//! loopback only, in its own data directory:
//!
//! 1. untraced;
//! 2. the floor: bpftrace with empty actions on the two message tracepoints
//!    (`xtask/bench/empty_probe.bt`), what merely probing every message costs;
//! 3. `peerlog trace --no-accounting`, counting only (no payload leaves the
//!    node);
//! 4. `peerlog trace` with its defaults (per-peer accounting on);
//! 5. `peerlog trace --no-accounting --capture DIR`, every payload written to
//!    disk;
//! 6. capture plus accounting, the statistics log and 99 Hz sampling, when
//!    this `peerlog` has them (`--stats-log`, `--flamegraph`: found in
//!    `peerlog trace --help` at run time, reported as not available otherwise);
//! 7. the reference: Debian's bpftrace running `xtask/bench/log_p2p_traffic.bt`
//!    (the equivalent of Bitcoin Core's `contrib/tracing/log_p2p_traffic.bt`)
//!    with its output in a file;
//! 8. counting plus 99 Hz sampling, for what sampling alone costs;
//! 9. the defaults plus 99 Hz sampling: per-peer flamegraphs, the sampler
//!    with the accounting that splits its samples by peer;
//! 10. the defaults plus a stats log line every second, each of which reads
//!     every peer's queues out of bitcoind's memory: next to 4, what those
//!     reads cost the node.
//!
//! The configurations are interleaved (their order rotates every round) so
//! that drift on the machine (other builds, thermal state) spreads over all
//! of them instead of biasing one. Each run samples, over exactly the load
//! generator's window: the node's throughput (answered requests per second),
//! its CPU time per P2P message (`/proc/PID/stat`), the tracer's CPU time, and
//! then the tracer's peak RSS (`VmHWM`), lost events and kernel-to-userspace
//! event latency from its summary. Every figure is set against the untraced
//! run and the floor of the same round.
//!
//! The results are printed as a table, saved as JSON in `target/bench/`, and
//! (except with `--smoke`) written to the node's own section of
//! `docs/benchmarks.md` with the machine they ran on, leaving the other
//! node's section as it was. `--smoke` runs everything once for a second per
//! configuration, so CI keeps the harness working; it asserts nothing about
//! timings.
//!
//! The steps, a module each: [`plan`] (scenarios and configurations),
//! [`tools`] (binaries and optional tools), [`one_run`] (one run, with its
//! [`node`], [`tracer`] and load generator, each a [`process`], measured
//! through [`sample`]), [`rows`](mod@rows) (the runs summed up),
//! [`targets`] (the verdicts), [`table`](mod@table), [`results`] (the JSON)
//! and [`doc`] (`docs/benchmarks.md`).

mod doc;
mod lock_watch;
mod node;
mod one_run;
mod plan;
mod process;
mod results;
mod rows;
mod sample;
mod table;
mod targets;
#[cfg(test)]
mod tests;
mod tools;
mod tracer;

use std::{fs, process::Command, time::Instant};

use anyhow::{anyhow, bail, Context, Result};

use self::{
    doc::document,
    node::NodeKind,
    one_run::run_one,
    plan::{Config, Plan},
    results::{load_average, Machine, Results, SkippedScenario},
    rows::rows,
    table::table,
    targets::{check_targets, targets_text},
    tools::{build, mount_tracefs, Tools},
};
use crate::workspace_root;

/// Runs the bench against the twin, or the bitcoind `BITCOIND` names;
/// `smoke` runs it once, briefly, and leaves the docs alone.
pub(crate) fn run(smoke: bool) -> Result<()> {
    if !crate::is_root() {
        bail!("the bench loads eBPF programs (peerlog, bpftrace): run it as root");
    }
    let plan = Plan::new(smoke);
    mount_tracefs();
    let bins = build()?;
    let node = NodeKind::from_env(&bins)?;
    let tools = Tools::detect(&bins)?;
    let mut machine = Machine::describe();
    let started = Instant::now();
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|&c| match tools.unavailable(c) {
            Some(why) => {
                eprintln!("bench: {}: {why}", tools.label(c));
                false
            }
            None => true,
        })
        .collect();
    let mut scenarios = Vec::new();
    let mut skipped = Vec::new();
    for scenario in &plan.scenarios {
        match node.skips(scenario) {
            Some(reason) => {
                eprintln!("bench: not running {}: {reason}", scenario.title);
                skipped.push(SkippedScenario {
                    scenario: scenario.name.into(),
                    title: scenario.title.into(),
                    reason,
                });
            }
            None => scenarios.push(scenario),
        }
    }
    let total = scenarios.len() * plan.rounds * configs.len();
    eprintln!(
        "bench: {total} runs of {} s ({} scenarios × {} rounds × {} configurations) against {} on {} CPUs, load average {}",
        plan.duration.as_secs_f64(),
        scenarios.len(),
        plan.rounds,
        configs.len(),
        node.describe(),
        machine.cpus,
        machine.load_average_at_start
    );

    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for scenario in &scenarios {
        for round in 0..plan.rounds {
            // Rotating the order spreads drift over every configuration.
            let mut order = configs.clone();
            order.rotate_left(round % configs.len());
            for config in order {
                let n = runs.len() + failures.len() + 1;
                match run_one(&plan, scenario, config, round, &bins, &tools, &node) {
                    Ok(run) => {
                        let tracer = run.tracer.as_ref().map_or(String::new(), |t| {
                            format!(
                                ", tracer {:.1} % CPU, {:.1} MiB, {} events, {} lost",
                                t.cpu_percent,
                                t.peak_rss_mib,
                                t.events_seen.map_or("n/a".into(), |n| n.to_string()),
                                t.events_lost
                            )
                        });
                        eprintln!(
                            "bench: [{n}/{total}] {} · {} · round {}: {:.0} answered/s, node {:.1} µs CPU/msg, {:.1} % CPU{tracer}",
                            scenario.name,
                            config.name(),
                            round + 1,
                            run.answered_per_sec,
                            run.target_cpu_us_per_msg,
                            run.target_cpu_percent
                        );
                        runs.push(run);
                    }
                    Err(e) => {
                        let msg = format!(
                            "{} · {} · round {}: {e:#}",
                            scenario.name,
                            config.name(),
                            round + 1
                        );
                        eprintln!("bench: [{n}/{total}] FAILED {msg}");
                        if smoke && config.is_bpftrace() {
                            // The smoke run guards peerlog's harness; the
                            // reference tool failing now and then (it once
                            // hung on exit in 180 runs) is reported, not fatal.
                            eprintln!(
                                "bench: (smoke) a bpftrace configuration failed; not counted"
                            );
                        } else {
                            failures.push(msg);
                        }
                    }
                }
            }
        }
    }
    machine.load_average_at_end = load_average();

    let rows = rows(&scenarios, &tools, &runs);
    let targets = check_targets(&scenarios, &rows, &runs);
    let dirty =
        !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let results = Results {
        mode: if smoke { "smoke" } else { "full" },
        node_kind: node.key(),
        node: node.describe(),
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        commit: format!(
            "{}{}",
            command_output("git", &["rev-parse", "--short", "HEAD"]),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
        machine,
        rounds: plan.rounds,
        duration_secs: plan.duration.as_secs_f64(),
        total_secs: started.elapsed().as_secs_f64(),
        tools: &tools,
        rows,
        skipped,
        targets,
        failures,
        runs,
    };

    println!("\n{}", table(&results.rows));
    println!(
        "Targets{}:\n{}",
        if smoke {
            " (smoke run: 1 s per configuration, not meaningful)"
        } else {
            ""
        },
        targets_text(&results.targets)
    );
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let json_path = dir.join(match (smoke, &node) {
        (false, NodeKind::Twin(_)) => "results.json",
        (false, NodeKind::Bitcoind { .. }) => "results-bitcoind.json",
        (true, NodeKind::Twin(_)) => "smoke.json",
        (true, NodeKind::Bitcoind { .. }) => "smoke-bitcoind.json",
    });
    fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("bench: results in {}", json_path.display());
    if !smoke {
        let doc = workspace_root().join("docs/benchmarks.md");
        // The other node's section is kept from the doc as it is.
        let existing = match fs::read_to_string(&doc) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read.with_context(|| format!("reading {}", doc.display()))?,
        };
        fs::write(&doc, document(&existing, &results))
            .with_context(|| format!("writing {}", doc.display()))?;
        println!(
            "bench: table and machine written to the {} section of {}",
            results.node_kind,
            doc.display()
        );
    }
    println!("bench: {:.0} s in all", results.total_secs);
    if !results.failures.is_empty() {
        return Err(anyhow!(
            "{} of {total} runs failed:\n{}",
            results.failures.len(),
            results.failures.join("\n")
        ));
    }
    Ok(())
}

/// The trimmed output of a command run in the workspace, empty if it fails.
fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
