//! The answers of the report queries (`getpeerstats`, `getnodestats`,
//! `getstatus`, a metrics scrape), from the figures of the running trace.

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
            let filter = filter.unwrap_or_else(|| report.options().filter.clone());
            let msghand = report.msghand_json();
            Value::String(metrics::render(
                trace,
                &mut report.collector,
                &msghand,
                &filter,
            ))
        }
    })
}
