//! The results table, in Markdown (readable as text too), and how a time in
//! microseconds reads in it.

use super::rows::Row;

/// A time in microseconds, in milliseconds from 10 ms up.
pub(super) fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// The table, in Markdown (readable as text too).
pub(super) fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| scenario | configuration | answered/s | vs untraced, median (min–max) | vs floor, median (min–max) | node CPU per msg | beyond floor | answer p99 | CPU: node / load / tracer | tracer peak RSS (heap) | events lost | event latency p50 / p99 |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut last = "";
    for r in rows {
        let scenario = if r.scenario == last {
            ""
        } else {
            r.scenario_title.as_str()
        };
        last = &r.scenario;
        if let Some(why) = &r.unavailable {
            t += &format!("| {scenario} | {} | {why} | | | | | | | | | |\n", r.label);
            continue;
        }
        if r.runs == 0 {
            t += &format!(
                "| {scenario} | {} | no successful run | | | | | | | | | |\n",
                r.label
            );
            continue;
        }
        let dash = || "–".to_string();
        let ratio = |spread: Option<(f64, f64, f64)>| {
            spread.map_or_else(dash, |(m, lo, hi)| format!("{m:.3} ({lo:.2}–{hi:.2})"))
        };
        let (ratio, floor_ratio) = (ratio(r.throughput_ratio), ratio(r.floor_ratio));
        let beyond_floor = r
            .cpu_us_per_msg_beyond_floor
            .map_or_else(dash, |us| format!("{us:+.1} µs"));
        let mut answered = format!("{:.0}", r.answered_per_sec);
        if r.load_errors > 0 {
            answered += &format!(" ({} errors)", r.load_errors);
        }
        let mut lost = r.events_lost.map_or_else(dash, |l| l.to_string());
        if r.runs_missing_events > 0 {
            lost += &format!(" (saw too few messages in {} runs)", r.runs_missing_events);
        }
        let cpu = format!(
            "{:.0} / {:.0} / {} %",
            r.target_cpu_percent,
            r.loadgen_cpu_percent,
            r.tracer_cpu_percent
                .map_or_else(dash, |c| format!("{c:.0}"))
        );
        let latency = match (r.latency_p50_us, r.latency_p99_us) {
            (Some(p50), Some(p99)) => format!("{} / {}", micros(p50), micros(p99)),
            _ if r.tracer_cpu_percent.is_some() => "not measured".into(),
            _ => dash(),
        };
        let rss = match (r.tracer_peak_rss_mib, r.tracer_rss_anon_mib) {
            (Some(peak), Some(anon)) => format!("{peak:.1} MiB ({anon:.1})"),
            _ => dash(),
        };
        let (label, cpu_per_msg, answer_p99) =
            (&r.label, r.target_cpu_us_per_msg, micros(r.answer_p99_us));
        t += &format!(
            "| {scenario} | {label} | {answered} | {ratio} | {floor_ratio} | {cpu_per_msg:.1} µs \
             | {beyond_floor} | {answer_p99} | {cpu} | {rss} | {lost} | {latency} |\n"
        );
    }
    t
}
