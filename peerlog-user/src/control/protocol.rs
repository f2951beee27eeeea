//! The control protocol: what a client may ask a running trace (JSON-RPC
//! 2.0 methods and their parameters), the request the trace loop answers,
//! and where a trace listens.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::{
    filter::PeerFilter,
    stats::{self, StatsFilter},
};

/// Directory of the default sockets.
pub const SOCKET_DIR: &str = "/run/peerlog";

/// The default socket of a trace of bitcoind `pid`.
pub fn default_socket(pid: i32) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{pid}.sock"))
}

/// The default socket of a `--follow` trace, by peerlog's own `pid`: it
/// stays the same while the bitcoind pid changes with every restart.
pub fn follow_socket(pid: u32) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("follow-{pid}.sock"))
}

/// Where the control RPC listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcSocket {
    /// [`default_socket`]; if it cannot be created, peerlog warns and runs without RPC.
    Default,
    /// This path; if it cannot be created, `peerlog trace` fails.
    Path(PathBuf),
    /// No control RPC.
    Off,
}

/// The methods, for `help`.
pub(crate) const METHODS: [(&str, &str); 6] = [
    (
        "getpeerstats",
        "{\"peers\": [FILTER...], \"msg_types\": [TYPE...]} -> [peer figures]",
    ),
    (
        "getnodestats",
        "{\"msg_types\": [TYPE...]} -> the whole node's figures",
    ),
    (
        "getpeerreport",
        "-> the peer report card: value, cost and flags per peer, best first, and the connection mix",
    ),
    (
        "getstatus",
        "-> attached probes, missing figures, uptime, events, losses, capture",
    ),
    (
        "setcapture",
        "{\"enabled\": BOOL, \"peers\": [FILTER...], \"msg_types\": [TYPE...]} -> capture settings",
    ),
    ("help", "-> this list"),
];

/// A change of the capture settings; what is None stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureChange {
    /// Capture on or off.
    pub enabled: Option<bool>,
    /// The peers captured (empty: every peer).
    pub peers: Option<Vec<PeerFilter>>,
    /// The message types captured (empty: every type).
    pub msg_types: Option<Vec<String>>,
}

/// The capture settings, as `setcapture` and `getstatus` report them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CaptureState {
    /// Whether payloads are copied and capture records written.
    pub enabled: bool,
    /// The capture directory (`--capture`), if any.
    pub directory: Option<PathBuf>,
    /// Whether the JSON lines carry payloads (`--payload`).
    pub jsonl_payloads: bool,
    /// Peer filter terms (empty: every peer).
    pub peers: Vec<String>,
    /// Message types (empty: every type).
    pub msg_types: Vec<String>,
}

/// What a request asks the trace loop.
#[derive(Debug)]
pub enum Query {
    /// `setcapture`: answered by the trace loop, which owns the capture.
    SetCapture(CaptureChange),
    /// Figures and status: answered by the [`stats::Reporter`].
    Report(ReportQuery),
}

/// A question about the figures or the trace.
#[derive(Debug)]
pub enum ReportQuery {
    /// `getpeerstats`.
    PeerStats(StatsFilter),
    /// `getnodestats`.
    NodeStats(StatsFilter),
    /// `getpeerreport`.
    PeerReport,
    /// `getstatus`.
    Status,
    /// A scrape of the Prometheus endpoint, with its filter (None: the
    /// `--stats-peer`/`--stats-msg-type` default). The answer is the text,
    /// as a JSON string.
    Metrics(Option<StatsFilter>),
}

/// A request for the trace loop, with where to send the answer.
#[derive(Debug)]
pub struct Request {
    /// What is asked.
    pub query: Query,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Value, RpcError>>,
}

/// A JSON-RPC error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// What went wrong.
    pub message: String,
}

impl RpcError {
    /// Invalid method parameters (-32602).
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            code: -32602,
            message: message.into(),
        }
    }

    /// The request was valid but could not be carried out (-32603).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: -32603,
            message: message.into(),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

/// What `getstatus` and the metrics say about the trace itself, collected
/// by the trace loop.
#[derive(Debug, Clone)]
pub struct TraceStatus {
    /// The bitcoind process traced now: its pid, executable and the USDT
    /// probe sites attached; None while `--follow` waits for the next one.
    pub attached: Option<AttachedStatus>,
    /// Every loss counter by name, kernel and userspace, zeros included.
    pub losses: Vec<(String, u64)>,
    /// The capture settings.
    pub capture: CaptureState,
    /// The control RPC socket, if listening.
    pub rpc_socket: Option<PathBuf>,
    /// The Prometheus endpoint's address, if it is on.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The bitcoind process a trace is attached to.
#[derive(Debug, Clone)]
pub struct AttachedStatus {
    /// bitcoind's pid.
    pub pid: i32,
    /// bitcoind's executable.
    pub exe: PathBuf,
    /// USDT probe sites attached.
    pub probe_sites: usize,
}

/// A JSON-RPC error response to the request `id`.
pub(crate) fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()})
}

/// Sends a query to the trace loop and waits for its answer.
pub async fn ask(sender: &mpsc::Sender<Request>, query: Query) -> Result<Value, RpcError> {
    let (reply, answer) = oneshot::channel();
    let stopped = || RpcError::internal("peerlog is stopping");
    sender
        .send(Request { query, reply })
        .await
        .map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// The query of `method`; None for `help`, which the server answers itself.
pub(crate) fn parse_query(method: &str, params: Value) -> Result<Option<Query>, RpcError> {
    let names: &[&str] = match method {
        "getpeerstats" => &["peers", "msg_types"],
        "getnodestats" => &["msg_types"],
        "setcapture" => &["enabled", "peers", "msg_types"],
        "getpeerreport" | "getstatus" | "help" => &[],
        _ => {
            return Err(RpcError {
                code: -32601,
                message: format!("method not found: {method} (try help)"),
            })
        }
    };
    let params = named_params(params, names)?;
    let peers = || -> Result<Option<Vec<PeerFilter>>, RpcError> {
        strings(&params, "peers")?
            .map(|terms| {
                terms
                    .iter()
                    .map(|t| {
                        t.parse().map_err(|e: crate::filter::FilterError| {
                            RpcError::invalid_params(e.to_string())
                        })
                    })
                    .collect()
            })
            .transpose()
    };
    let msg_types = |for_stats: bool| -> Result<Option<Vec<String>>, RpcError> {
        let types = strings(&params, "msg_types")?;
        if let Some(types) = &types {
            let checked = if for_stats {
                stats::check_msg_types(types)
            } else {
                types
                    .iter()
                    .try_for_each(|t| crate::kernel::msg_type_key(t).map(|_| ()))
            };
            checked.map_err(|e| RpcError::invalid_params(format!("{e:#}")))?;
        }
        Ok(types)
    };
    Ok(Some(match method {
        "getpeerstats" => Query::Report(ReportQuery::PeerStats(StatsFilter::new(
            peers()?.unwrap_or_default(),
            msg_types(true)?.unwrap_or_default(),
        ))),
        "getnodestats" => Query::Report(ReportQuery::NodeStats(StatsFilter::new(
            Vec::new(),
            msg_types(true)?.unwrap_or_default(),
        ))),
        "getpeerreport" => Query::Report(ReportQuery::PeerReport),
        "getstatus" => Query::Report(ReportQuery::Status),
        "setcapture" => {
            let enabled = match params.get("enabled") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(RpcError::invalid_params(
                        "\"enabled\" must be true or false",
                    ))
                }
            };
            let change = CaptureChange {
                enabled,
                peers: peers()?,
                msg_types: msg_types(false)?,
            };
            if change == CaptureChange::default() {
                return Err(RpcError::invalid_params(
                    "setcapture needs \"enabled\", \"peers\" or \"msg_types\"",
                ));
            }
            Query::SetCapture(change)
        }
        _ => return Ok(None),
    }))
}

/// Parameters by name, from an object, an array (by position) or nothing.
fn named_params(params: Value, names: &[&str]) -> Result<Map<String, Value>, RpcError> {
    let map = match params {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        Value::Array(list) => {
            if list.len() > names.len() {
                return Err(RpcError::invalid_params(format!(
                    "at most {} parameters: {}",
                    names.len(),
                    names.join(", ")
                )));
            }
            names
                .iter()
                .zip(list)
                .map(|(n, v)| (n.to_string(), v))
                .collect()
        }
        _ => {
            return Err(RpcError::invalid_params(
                "params must be an object or an array",
            ))
        }
    };
    if let Some(unknown) = map.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(RpcError::invalid_params(format!(
            "unknown parameter {unknown:?} (known: {})",
            names.join(", ")
        )));
    }
    Ok(map)
}

/// A parameter that is a string or a list of strings; None when absent or null.
fn strings(params: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    RpcError::invalid_params(format!("\"{name}\" must be a list of strings"))
                })
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(RpcError::invalid_params(format!(
            "\"{name}\" must be a string or a list of strings"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_from_named_and_positional_params() {
        let q = parse_query(
            "getpeerstats",
            json!({"peers": ["inbound", "5"], "msg_types": "tx"}),
        )
        .unwrap()
        .unwrap();
        let Query::Report(ReportQuery::PeerStats(f)) = q else {
            panic!("{q:?}")
        };
        assert_eq!(f.msg_types, vec!["tx"]);
        assert!(!f.peers.selects_all());

        let q = parse_query("setcapture", json!([false])).unwrap().unwrap();
        let Query::SetCapture(c) = q else {
            panic!("{q:?}")
        };
        assert_eq!(c.enabled, Some(false));
        assert_eq!(c.peers, None);

        assert!(parse_query("help", Value::Null).unwrap().is_none());
        assert!(matches!(
            parse_query("getstatus", Value::Null),
            Ok(Some(Query::Report(ReportQuery::Status)))
        ));
    }

    #[test]
    fn bad_requests_say_why() {
        let code = |m: &str, p: Value| parse_query(m, p).unwrap_err().code;
        assert_eq!(code("getpeerinfo", Value::Null), -32601);
        assert_eq!(code("getpeerstats", json!({"peers": ["net=mars"]})), -32602);
        assert_eq!(
            code("getpeerstats", json!({"msg_types": ["twinburn"]})),
            -32602
        );
        assert_eq!(code("getpeerstats", json!({"peer": "5"})), -32602);
        assert_eq!(code("setcapture", json!({})), -32602);
        assert_eq!(code("setcapture", json!({"enabled": "yes"})), -32602);
        assert_eq!(code("getnodestats", json!([[], []])), -32602);
        // Capture takes any message type a peer can send, not only Core's.
        assert!(parse_query("setcapture", json!({"msg_types": ["twinburn"]})).is_ok());
    }
}
