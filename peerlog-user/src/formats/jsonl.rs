//! The JSON-lines sink: one JSON object per event (`--jsonl PATH|-`).
//!
//! Key names follow Bitcoin Core's `getpeerinfo` (`connection_type`,
//! `conntime`); the older `conn_type` and `connected_at` are emitted too
//! until 0.3 (README, "Deprecated JSON keys").
//!
//! Schema (one object per line, `event` says which):
//! - `message`: `time_us`, `peer_id`, `addr`, `connection_type`, `direction`
//!   (`recv`|`sent`), `msg_type`, `size`, `payload_copied`, and `payload`
//!   (hex) with `--payload` when it was copied;
//! - `message_incomplete`: the same without payload, plus `received` and `reason`;
//! - `connection`: `time_us`, `kind` (`inbound`|`outbound`|`evicted`|`closed`),
//!   `peer_id`, `addr`, `connection_type`, `network`, and `count` (opened)
//!   or `conntime` (evicted, closed; unix seconds);
//! - `misbehaving`: `time_us`, `peer_id`, `reason`;
//! - `mempool`: `time_us`, `kind` (`added`|`removed`|`replaced`|`rejected`),
//!   `peer_id` (the peer being processed, or null), `txid`, `vsize`, `fee`,
//!   `reason` (removed, rejected), `replacement` {`hash`, `vsize`, `fee`};
//! - `block_connected`: `time_us`, `peer_id`, `hash`, `height`, `tx_count`,
//!   `inputs`, `sigops`, `duration_ns`.

use std::io::{self, Write};

use bitcoin::hex::DisplayHex;
use peerlog_common::{ConnectionEventKind, MempoolEventKind};
use serde_json::{json, Value};

use crate::{
    clock::WallClock,
    event::{BlockConnected, Connection, Event, MempoolChange, Message, Misbehaving},
    peers::Network,
};

/// Writes events as JSON lines.
pub struct JsonlSink {
    out: Box<dyn Write + Send>,
    with_payload: bool,
}

impl JsonlSink {
    /// A sink writing to `out`; `with_payload` adds payloads as hex.
    pub fn new(out: Box<dyn Write + Send>, with_payload: bool) -> Self {
        Self { out, with_payload }
    }

    /// Whether payloads go into the lines from now on (`setcapture` switches
    /// them off with the capture).
    pub fn set_payloads(&mut self, on: bool) {
        self.with_payload = on;
    }

    /// Writes one event. Function calls and CPU samples are not written:
    /// they come by the thousand per second and are summarised in the
    /// statistics and the flamegraphs instead.
    pub fn write(&mut self, event: &Event, clock: &WallClock) -> io::Result<()> {
        let value = match event {
            Event::CpuSlice(_) | Event::CpuSample(_) => return Ok(()),
            Event::Mempool(m) => mempool(m, clock),
            Event::BlockConnected(b) => block_connected(b, clock),
            Event::Message(m) => self.message(m, clock),
            Event::IncompleteMessage(i) => {
                let mut v = self.message(&i.message, clock);
                v["event"] = json!("message_incomplete");
                v["received"] = json!(i.received);
                v["reason"] = json!(i.reason);
                v
            }
            Event::Connection(c) => connection(c, clock),
            Event::Misbehaving(m) => misbehaving(m, clock),
        };
        serde_json::to_writer(&mut self.out, &value)?;
        self.out.write_all(b"\n")
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn message(&self, m: &Message, clock: &WallClock) -> Value {
        let mut v = json!({
            "event": "message",
            "time_us": clock.unix_micros(m.ktime_ns),
            "peer_id": m.peer_id,
            "addr": &*m.addr,
            "connection_type": &*m.conn_type,
            "conn_type": &*m.conn_type,
            "direction": m.direction.name(),
            "msg_type": m.msg_type,
            "size": m.payload_size,
            "payload_copied": m.payload.is_some(),
        });
        if let (true, Some(p)) = (self.with_payload, &m.payload) {
            v["payload"] = json!(p.to_lower_hex_string());
        }
        v
    }
}

fn connection(c: &Connection, clock: &WallClock) -> Value {
    let (kind, value_key) = match c.kind {
        ConnectionEventKind::Inbound => ("inbound", "count"),
        ConnectionEventKind::Outbound => ("outbound", "count"),
        ConnectionEventKind::Evicted => ("evicted", "conntime"),
        ConnectionEventKind::Closed => ("closed", "conntime"),
    };
    let mut v = json!({
        "event": "connection",
        "time_us": clock.unix_micros(c.ktime_ns),
        "kind": kind,
        "peer_id": c.peer_id,
        "addr": c.addr,
        "connection_type": c.conn_type,
        "conn_type": c.conn_type,
        "network": Network::from_core(c.network).map(Network::name),
    });
    v[value_key] = json!(c.value);
    if value_key == "conntime" {
        // The key before getpeerinfo's name, kept until 0.3 (README,
        // "Deprecated JSON keys").
        v["connected_at"] = json!(c.value);
    }
    v
}

fn mempool(m: &MempoolChange, clock: &WallClock) -> Value {
    let kind = match m.kind {
        MempoolEventKind::Added => "added",
        MempoolEventKind::Removed => "removed",
        MempoolEventKind::Replaced => "replaced",
        MempoolEventKind::Rejected => "rejected",
    };
    let mut v = json!({
        "event": "mempool",
        "time_us": clock.unix_micros(m.ktime_ns),
        "kind": kind,
        "peer_id": m.peer_id,
        "txid": m.txid.to_string(),
        "vsize": m.vsize,
        "fee": m.fee,
    });
    if !m.reason.is_empty() {
        v["reason"] = json!(m.reason);
    }
    if let Some((hash, vsize, fee)) = &m.replacement {
        let mut display = *hash;
        display.reverse();
        v["replacement"] =
            json!({ "hash": display.to_lower_hex_string(), "vsize": vsize, "fee": fee });
    }
    v
}

fn block_connected(b: &BlockConnected, clock: &WallClock) -> Value {
    json!({
        "event": "block_connected",
        "time_us": clock.unix_micros(b.ktime_ns),
        "peer_id": b.peer_id,
        "hash": b.hash.to_string(),
        "height": b.height,
        "tx_count": b.tx_count,
        "inputs": b.inputs,
        "sigops": b.sigops,
        "duration_ns": b.duration_ns,
    })
}

fn misbehaving(m: &Misbehaving, clock: &WallClock) -> Value {
    json!({
        "event": "misbehaving",
        "time_us": clock.unix_micros(m.ktime_ns),
        "peer_id": m.peer_id,
        "reason": m.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerlog_common::Direction;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_one_object_per_line() {
        let buf = Shared::default();
        let mut sink = JsonlSink::new(Box::new(buf.clone()), true);
        let clock = WallClock::sample();
        let m = Message {
            ktime_ns: 1,
            tid: 1,
            peer_id: 3,
            cnode: None,
            addr: "127.0.0.1:1".into(),
            conn_type: "inbound".into(),
            msg_type: "ping".into(),
            direction: Direction::Inbound,
            payload_size: 2,
            payload: Some(vec![0xab, 0x01]),
            addr_truncated: false,
        };
        sink.write(&Event::Message(m), &clock).unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["payload"], "ab01");
        assert_eq!(v["direction"], "recv");
        assert_eq!(v["peer_id"], 3);
        assert!(text.ends_with('\n'));
    }
}
