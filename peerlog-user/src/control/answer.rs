//! The answers of the report queries (`getpeerstats`, `getnodestats`,
//! `getpeerreport`, `getstatus`, a metrics scrape), from the figures of the
//! running trace.

use serde_json::Value;

use super::{
    metrics,
    protocol::{ReportQuery, RpcError, TraceStatus},
    status,
};
use crate::stats::{card, Reporter, StatsFilter};

/// Answers a question of the control RPC or the metrics endpoint.
pub fn answer(
    report: &mut Reporter,
    query: ReportQuery,
    trace: &TraceStatus,
) -> Result<Value, RpcError> {
    Ok(match query {
        ReportQuery::PeerStats(filter) => Value::Array(report.collector.peers_json(&filter)),
        ReportQuery::NodeStats(filter) => report.collector.node_json(&filter),
        ReportQuery::PeerReport => {
            // From the same rows `getpeerstats` and a stats log line hold, so
            // `peerlog report` over a stats log gives the same card.
            let all = StatsFilter::new(Vec::new(), Vec::new());
            let peers = report.collector.peers_json(&all);
            let node = report.collector.node_json(&all);
            let card =
                card::card(&peers, &node).map_err(|e| RpcError::internal(format!("{e:#}")))?;
            serde_json::to_value(card).map_err(|e| RpcError::internal(e.to_string()))?
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
