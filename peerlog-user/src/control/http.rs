//! The Prometheus endpoint (`--metrics ADDR`): a minimal HTTP/1.1 server
//! (one request per connection) that hands each scrape of
//! `http://ADDR/metrics` to the trace loop and sends back its text
//! ([`super::metrics`] renders it).
//!
//! The scrape URL takes the peer filter language of `--peer` and message
//! types, e.g. `/metrics?peer=inbound&peer=10.0.0.0/8&msg_type=tx`;
//! without parameters the `--stats-peer`/`--stats-msg-type` filter applies.

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    time::{timeout, Duration},
};

use super::protocol::{ask, Query, ReportQuery, Request};
use crate::{
    filter::PeerFilter,
    stats::{self, StatsFilter},
};

/// Longest request head read.
const MAX_REQUEST_HEAD: usize = 8192;
/// Time a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one scrape on `stream`, asking the trace loop through `sender`.
pub(super) async fn serve_connection(mut stream: TcpStream, sender: mpsc::Sender<Request>) {
    let mut head = Vec::new();
    let read = timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let response = respond(&head, &sender).await;
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// The whole HTTP response to a request head.
async fn respond(head: &[u8], sender: &mpsc::Sender<Request>) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", "only GET\n".to_string())
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", "metrics are at /metrics\n".to_string())
    } else {
        match scrape_filter(query) {
            Err(e) => ("400 Bad Request", format!("{e}\n")),
            Ok(filter) => match ask(sender, Query::Report(ReportQuery::Metrics(filter))).await {
                Ok(Value::String(text)) => ("200 OK", text),
                Ok(other) => ("500 Internal Server Error", format!("{other}\n")),
                Err(e) => ("503 Service Unavailable", format!("{}\n", e.message)),
            },
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The filter of a scrape URL's query string; None when it has none.
fn scrape_filter(query: &str) -> Result<Option<StatsFilter>, String> {
    let mut peers: Vec<PeerFilter> = Vec::new();
    let mut msg_types = Vec::new();
    // WHATWG URL-encoded form parsing, as browsers and Prometheus write
    // queries: `+` is a space, a malformed escape stays as it is.
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "peer" => peers.push(value.parse().map_err(|e| format!("{e}"))?),
            "msg_type" => msg_types.push(value.into_owned()),
            _ => return Err(format!("unknown parameter {key:?} (peer, msg_type)")),
        }
    }
    stats::check_msg_types(&msg_types).map_err(|e| format!("{e:#}"))?;
    Ok((!peers.is_empty() || !msg_types.is_empty()).then(|| StatsFilter::new(peers, msg_types)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_filters_decode() {
        assert!(scrape_filter("").unwrap().is_none());
        let f = scrape_filter("peer=%5B%3A%3A1%5D&msg_type=tx")
            .unwrap()
            .unwrap();
        assert_eq!(f.msg_types, vec!["tx"]);
        assert!(!f.peers.selects_all());
        assert!(scrape_filter("peer=net%3Dmars").is_err());
        assert!(scrape_filter("msg_type=twinburn").is_err());
        assert!(scrape_filter("colour=red").is_err());
        // `+` is a space: a term with one is not a filter.
        assert!(scrape_filter("peer=type%3Dblock-relay-only").is_ok());
        assert!(scrape_filter("peer=type%3Dblock+relay").is_err());
    }
}
