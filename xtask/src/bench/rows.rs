//! The runs summed up: a row per scenario and configuration, medians over
//! the rounds, each run set against the untraced run and the floor of its
//! own round.

use serde::Serialize;

use super::{
    one_run::Run,
    plan::{Config, Scenario},
    tools::Tools,
    tracer::TracerRun,
};

/// One line of the table: a configuration in a scenario, over its rounds.
#[derive(Debug, Serialize)]
pub(super) struct Row {
    pub(super) scenario: String,
    pub(super) scenario_title: String,
    pub(super) config: String,
    pub(super) label: String,
    /// Why there are no figures, when there are none.
    pub(super) unavailable: Option<String>,
    pub(super) runs: usize,
    pub(super) answered_per_sec: f64,
    /// Throughput relative to untraced in the same round: median, min, max.
    pub(super) throughput_ratio: Option<(f64, f64, f64)>,
    /// Throughput relative to the floor in the same round: median, min, max.
    pub(super) floor_ratio: Option<(f64, f64, f64)>,
    pub(super) target_cpu_us_per_msg: f64,
    /// The node's CPU time per message minus the floor's in the same round,
    /// µs, median over the rounds: what this configuration costs the node on
    /// top of merely probing every message.
    pub(super) cpu_us_per_msg_beyond_floor: Option<f64>,
    pub(super) answer_p99_us: u64,
    pub(super) load_errors: u64,
    pub(super) target_cpu_percent: f64,
    pub(super) loadgen_cpu_percent: f64,
    pub(super) tracer_cpu_percent: Option<f64>,
    pub(super) tracer_peak_rss_mib: Option<f64>,
    pub(super) tracer_rss_anon_mib: Option<f64>,
    pub(super) events_lost: Option<u64>,
    /// Runs in which the tracer saw fewer messages than the load generator
    /// exchanged in the window alone (it should see more: handshakes too).
    pub(super) runs_missing_events: usize,
    /// Median over the rounds of the p50, and the worst p99.
    pub(super) latency_p50_us: Option<u64>,
    pub(super) latency_p99_us: Option<u64>,
    /// Sampling runs: the sampler's run time over the node's CPU time
    /// without it (median over the rounds).
    pub(super) sampler_cost: Option<f64>,
    /// Sampling runs: nanoseconds per sample of the node (see
    /// [`Run::sampler_ns_per_sample`]; median over the rounds).
    pub(super) sampler_ns_per_sample: Option<f64>,
}

/// The median: with a few rounds on a shared machine, one disturbed round
/// moves a mean but not the median.
pub(super) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median, min and max, if there are any values.
pub(super) fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    (!values.is_empty()).then(|| {
        (
            median(values.iter().copied()),
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    })
}

/// The runs of `config` in `scenario`, round after round.
pub(super) fn runs_of<'a>(
    runs: &'a [Run],
    scenario: &'a str,
    config: Config,
) -> impl Iterator<Item = &'a Run> {
    runs.iter()
        .filter(move |r| r.scenario == scenario && r.config == config.name())
}

/// `f(run of config, run of base)` for each round of `scenario` in which
/// both ran: comparisons within a round, where the machine was in the same
/// state.
pub(super) fn per_round(
    runs: &[Run],
    scenario: &str,
    config: Config,
    base: Config,
    f: impl Fn(&Run, &Run) -> Option<f64>,
) -> Vec<f64> {
    runs_of(runs, scenario, config)
        .filter_map(|r| {
            f(
                r,
                runs_of(runs, scenario, base).find(|b| b.round == r.round)?,
            )
        })
        .collect()
}

/// Throughput of a run over its base's.
pub(super) fn throughput_ratio(run: &Run, base: &Run) -> Option<f64> {
    (base.answered_per_sec > 0.0).then(|| run.answered_per_sec / base.answered_per_sec)
}

/// A row per scenario that ran and per configuration, in the plan's order.
pub(super) fn rows(scenarios: &[&Scenario], tools: &Tools, runs: &[Run]) -> Vec<Row> {
    let mut rows = Vec::new();
    for scenario in scenarios {
        for config in Config::ALL {
            let these: Vec<&Run> = runs_of(runs, scenario.name, config).collect();
            let versus = |base: Config, f: fn(&Run, &Run) -> Option<f64>| {
                per_round(runs, scenario.name, config, base, f)
            };
            let beyond_floor = versus(Config::Floor, |r, floor| {
                Some(r.target_cpu_us_per_msg - floor.target_cpu_us_per_msg)
            });
            let tracers: Vec<&TracerRun> = these.iter().filter_map(|r| r.tracer.as_ref()).collect();
            let traced = !tracers.is_empty();
            let mut p50s: Vec<u64> = tracers.iter().filter_map(|t| t.latency_p50_us).collect();
            p50s.sort_unstable();
            rows.push(Row {
                scenario: scenario.name.into(),
                scenario_title: scenario.title.into(),
                config: config.name().into(),
                label: tools.label(config),
                unavailable: tools.unavailable(config),
                runs: these.len(),
                answered_per_sec: median(these.iter().map(|r| r.answered_per_sec)),
                throughput_ratio: spread(&versus(Config::Untraced, throughput_ratio)),
                floor_ratio: spread(&versus(Config::Floor, throughput_ratio)),
                target_cpu_us_per_msg: median(these.iter().map(|r| r.target_cpu_us_per_msg)),
                cpu_us_per_msg_beyond_floor: (!beyond_floor.is_empty())
                    .then(|| median(beyond_floor)),
                answer_p99_us: median(these.iter().map(|r| r.answer_p99_us as f64)) as u64,
                load_errors: these.iter().map(|r| r.load_errors).sum(),
                target_cpu_percent: median(these.iter().map(|r| r.target_cpu_percent)),
                loadgen_cpu_percent: median(these.iter().map(|r| r.loadgen_cpu_percent)),
                tracer_cpu_percent: traced.then(|| median(tracers.iter().map(|t| t.cpu_percent))),
                tracer_peak_rss_mib: traced
                    .then(|| tracers.iter().map(|t| t.peak_rss_mib).fold(0.0, f64::max)),
                tracer_rss_anon_mib: traced
                    .then(|| tracers.iter().map(|t| t.rss_anon_mib).fold(0.0, f64::max)),
                events_lost: traced.then(|| tracers.iter().map(|t| t.events_lost).sum()),
                runs_missing_events: these
                    .iter()
                    .filter(|r| {
                        r.tracer.as_ref().is_some_and(|t| {
                            t.events_seen
                                .is_some_and(|seen| seen + t.events_lost < r.messages)
                        })
                    })
                    .count(),
                latency_p50_us: p50s.get(p50s.len() / 2).copied(),
                sampler_cost: {
                    let costs: Vec<f64> = these
                        .iter()
                        .filter_map(|r| {
                            let sampler = r.sampler_cpu_secs?;
                            let node = r.target_cpu_secs - sampler;
                            (node > 0.0).then(|| sampler / node)
                        })
                        .collect();
                    (!costs.is_empty()).then(|| median(costs))
                },
                latency_p99_us: tracers.iter().filter_map(|t| t.latency_p99_us).max(),
                sampler_ns_per_sample: {
                    let costs: Vec<f64> = these
                        .iter()
                        .filter_map(|r| r.sampler_ns_per_sample)
                        .collect();
                    (!costs.is_empty()).then(|| median(costs))
                },
            });
        }
    }
    rows
}
