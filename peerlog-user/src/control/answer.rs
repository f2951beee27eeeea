//! The answers of the report queries (`getpeerstats`, `getnodestats`,
//! `getstatus`, a metrics scrape), from the figures of the running trace.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{
    metrics,
    protocol::{ReportQuery, RpcError, TraceStatus},
    status,
};
use crate::stats::Reporter;

/// Answers a question of the control RPC or the metrics endpoint.
pub fn answer(
    report: &mut Reporter,
    query: ReportQuery,
    trace: &TraceStatus,
) -> Result<Value, RpcError> {
    Ok(match query {
        ReportQuery::PeerStats(filter) => Value::Array(report.collector.peers_json(&filter)),
        ReportQuery::NodeStats(filter) => {
            let readings = report.collector.read_node();
            report.collector.node_json(&filter, &readings)
        }
        ReportQuery::Status => status::status_json(trace, report),
        ReportQuery::Metrics(filter) => {
            let options = report.options();
            let filter = filter.unwrap_or_else(|| options.filter.clone());
            let series = options.series;
            let msghand = report.msghand_json();
            let now_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let req = metrics::ScrapeRequest {
                trace,
                msghand: &msghand,
                filter: &filter,
                series: &series,
                now_unix,
            };
            Value::String(metrics::render(&mut report.collector, &req))
        }
    })
}
