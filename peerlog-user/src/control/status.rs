//! The answer of `getstatus`: what the trace and its figures say about
//! themselves.

use serde_json::{json, Map, Value};

use super::protocol::TraceStatus;
use crate::stats;

/// The answer of `getstatus`.
pub fn status_json(trace: &TraceStatus, report: &stats::Reporter) -> Value {
    let c = &report.collector;
    let losses: Map<String, Value> = trace
        .losses
        .iter()
        .map(|(name, n)| (name.clone(), json!(n)))
        .collect();
    let opts = report.options();
    let uptime = report.started().elapsed().unwrap_or_default();
    json!({
        "state": if trace.attached.is_some() { "attached" } else { "waiting" },
        "pid": trace.attached.as_ref().map(|a| a.pid),
        "exe": trace.attached.as_ref().map(|a| &a.exe),
        "attaches": c.attaches(),
        "started_at": report.started().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
        "uptime_s": uptime.as_secs_f64(),
        "probe_sites": trace.attached.as_ref().map(|a| a.probe_sites),
        "coverage": c.coverage().to_json(),
        "missing_figures": c.coverage().missing_figures(),
        "events": c.events(),
        "losses": losses,
        "events_lost": trace.losses.iter().map(|(_, n)| n).sum::<u64>(),
        "peers_connected": c.peers().connected(),
        "msghand_thread": report.msghand_json(),
        "capture": trace.capture,
        "outputs": {
            "rpc_socket": trace.rpc_socket,
            "stats_log": opts.stats_log,
            "stats_interval_s": opts.interval.as_secs_f64(),
            "hdr_log": opts.hdr_log,
            "metrics": trace.metrics.map(|a| format!("http://{a}/metrics")),
        },
    })
}
