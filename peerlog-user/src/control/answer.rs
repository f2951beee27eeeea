//! The answers of the report queries (`getpeerstats`, `getnodestats`,
//! `getpeerreport`, `getstatus`, a metrics scrape), from the figures of the
//! running trace.

use std::time::{SystemTime, UNIX_EPOCH};

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
        ReportQuery::NodeStats(filter) => {
            let readings = report.collector.read_node();
            report.collector.node_json(&filter, &readings)
        }
        ReportQuery::PeerReport => {
            // From the same rows `getpeerstats` and a stats log line hold, so
            // `peerlog report` over a stats log gives the same card.
            let all = StatsFilter::new(Vec::new(), Vec::new());
            let readings = report.collector.read_node();
            let c = &report.collector;
            let peers: Vec<Value> = c
                .peers()
                .iter()
                .map(|e| c.peer_json(e, &all, &readings))
                .collect();
            let node = c.node_json(&all, &readings);
            let card =
                card::card(&peers, &node).map_err(|e| RpcError::internal(format!("{e:#}")))?;
            serde_json::to_value(card).map_err(|e| RpcError::internal(e.to_string()))?
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
