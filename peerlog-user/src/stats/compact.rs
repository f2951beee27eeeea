//! The compact stats log (`--stats-log-compact`): each line after a file's
//! first says only what changed since the line before it, and
//! [`Expander`] rebuilds the full lines from it.
//!
//! The rule (also in docs/stats.md):
//!
//! - A line without `"delta": true` is a full line, as `--stats-log` writes
//!   without `--stats-log-compact`. The first line of every file is one.
//! - A delta line has `"delta": true`, `"peer_ids"` (the ids of every peer
//!   the full line would list, in its order) and `"peers"` (for each of
//!   those peers whose figures changed, an object with its `"id"` and the
//!   changes). Every other member is a change to the full line's member of
//!   the same name.
//! - A change to an object lists only the members whose values changed: a
//!   member whose previous and new values are both objects is itself such a
//!   change, any other member is its new value (numbers, strings, null,
//!   arrays, and an object that replaces a non-object). Members that are
//!   gone are named in `"~removed"`. A peer not in the previous line comes
//!   whole.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// The member of a change that names the members gone.
const REMOVED: &str = "~removed";

/// Turns full stats log lines into compact ones; [`reset`](Self::reset) at
/// the start of every file so that its first line is full.
#[derive(Debug, Default)]
pub struct Compactor {
    /// The previous full line without its peers, and its peers by id.
    previous: Option<(Map<String, Value>, HashMap<i64, Value>)>,
}

impl Compactor {
    /// The next line is written full.
    pub fn reset(&mut self) {
        self.previous = None;
    }

    /// The line to write for `full`, a stats log line.
    pub fn compact(&mut self, full: Value) -> Value {
        let Value::Object(mut line) = full else {
            return full;
        };
        let peers = match line.remove("peers") {
            Some(Value::Array(peers)) => peers,
            Some(other) => {
                line.insert("peers".into(), other);
                Vec::new()
            }
            None => Vec::new(),
        };
        let by_id: Vec<(i64, Value)> = peers
            .into_iter()
            .map(|p| (p.get("id").and_then(Value::as_i64).unwrap_or(i64::MIN), p))
            .collect();
        let out = match &self.previous {
            None => {
                let mut out = line.clone();
                out.insert(
                    "peers".into(),
                    Value::Array(by_id.iter().map(|(_, p)| p.clone()).collect()),
                );
                out
            }
            Some((prev_line, prev_peers)) => {
                let mut out = diff_objects(prev_line, &line);
                out.insert("delta".into(), Value::Bool(true));
                out.insert(
                    "peer_ids".into(),
                    Value::Array(by_id.iter().map(|(id, _)| Value::from(*id)).collect()),
                );
                let changed = by_id
                    .iter()
                    .filter_map(|(id, peer)| match prev_peers.get(id) {
                        Some(prev) => diff(prev, peer).map(|mut change| {
                            if let Value::Object(members) = &mut change {
                                members.insert("id".into(), Value::from(*id));
                            }
                            change
                        }),
                        None => Some(peer.clone()),
                    })
                    .collect();
                out.insert("peers".into(), Value::Array(changed));
                out
            }
        };
        self.previous = Some((line, by_id.into_iter().collect()));
        Value::Object(out)
    }
}

/// The change from `prev` to `cur`; None when equal. Objects give objects
/// of the changed members; anything else is `cur` itself.
fn diff(prev: &Value, cur: &Value) -> Option<Value> {
    if prev == cur {
        return None;
    }
    match (prev, cur) {
        (Value::Object(p), Value::Object(c)) => Some(Value::Object(diff_objects(p, c))),
        _ => Some(cur.clone()),
    }
}

fn diff_objects(prev: &Map<String, Value>, cur: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in cur {
        match prev.get(key) {
            Some(old) => {
                if let Some(change) = diff(old, value) {
                    out.insert(key.clone(), change);
                }
            }
            None => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let removed: Vec<Value> = prev
        .keys()
        .filter(|k| !cur.contains_key(*k))
        .map(|k| Value::from(k.as_str()))
        .collect();
    if !removed.is_empty() {
        out.insert(REMOVED.into(), Value::Array(removed));
    }
    out
}

/// Applies a change made by [`diff`] to `target`.
fn apply(target: &mut Value, change: Value) {
    match (target, change) {
        (Value::Object(t), Value::Object(c)) => apply_object(t, c),
        (target, change) => *target = change,
    }
}

fn apply_object(target: &mut Map<String, Value>, change: Map<String, Value>) {
    for (key, value) in change {
        if key == REMOVED {
            for name in value.as_array().into_iter().flatten() {
                if let Some(name) = name.as_str() {
                    target.remove(name);
                }
            }
            continue;
        }
        match target.get_mut(&key) {
            Some(old) if old.is_object() && value.is_object() => apply(old, value),
            _ => {
                target.insert(key, value);
            }
        }
    }
}

/// Rebuilds full stats log lines from the lines of a stats log, compact or
/// not, read in order (for a rotated log: its files in name order, which is
/// time order).
#[derive(Debug, Default)]
pub struct Expander {
    previous: Option<(Map<String, Value>, HashMap<i64, Value>)>,
}

impl Expander {
    /// The full line for the next `line` of the log.
    pub fn expand(&mut self, line: Value) -> Result<Value> {
        let Value::Object(mut line) = line else {
            bail!("a stats log line is not a JSON object");
        };
        let is_delta = line.remove("delta") == Some(Value::Bool(true));
        let (mut top, mut peers) = match (is_delta, self.previous.take()) {
            (false, _) => (Map::new(), HashMap::new()),
            (true, Some(previous)) => previous,
            (true, None) => bail!(
                "a compact stats log line that says only what changed comes before any \
                 full line: read the file from its first line"
            ),
        };
        let ids = line.remove("peer_ids");
        let listed = match line.remove("peers") {
            Some(Value::Array(listed)) => listed,
            _ => Vec::new(),
        };
        if is_delta {
            apply_object(&mut top, line);
        } else {
            top = line;
        }
        let mut order = Vec::new();
        for peer in listed {
            let id = peer
                .get("id")
                .and_then(Value::as_i64)
                .context("a peer of a stats log line has no id")?;
            match peers.get_mut(&id) {
                Some(old) if is_delta => apply(old, peer),
                _ => {
                    peers.insert(id, peer);
                }
            }
            order.push(id);
        }
        if is_delta {
            order = ids
                .as_ref()
                .and_then(Value::as_array)
                .context("a compact stats log line has no peer_ids")?
                .iter()
                .map(|id| id.as_i64().context("a peer id in peer_ids is not a number"))
                .collect::<Result<_>>()?;
        }
        peers.retain(|id, _| order.contains(id));
        let mut full = top.clone();
        let listed: Vec<Value> = order
            .iter()
            .map(|id| {
                peers
                    .get(id)
                    .cloned()
                    .with_context(|| format!("peer {id} of peer_ids was never written whole"))
            })
            .collect::<Result<_>>()?;
        full.insert("peers".into(), Value::Array(listed));
        self.previous = Some((top, peers));
        Ok(Value::Object(full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines() -> Vec<Value> {
        let peer = |id: i64, recv: u64, types: Value, share: Value| {
            json!({"id": id, "addr": format!("10.0.0.{id}:8333"), "closed": false,
                   "recv": {"msgs": recv, "bytes": recv * 100}, "per_msg_type": types,
                   "msghand_cpu_share": share})
        };
        vec![
            json!({"time_us": 1, "node": {"recv": {"msgs": 1}}, "missing_figures": [],
                   "peers": [peer(1, 1, json!({"ping": 1}), json!(null)),
                             peer(2, 0, json!({}), json!(0.5))]}),
            // Peer 2 unchanged, peer 1 counts, a new peer 3.
            json!({"time_us": 2, "node": {"recv": {"msgs": 5}}, "missing_figures": [],
                   "peers": [peer(1, 4, json!({"ping": 2, "inv": 1}), json!(0.25)),
                             peer(2, 0, json!({}), json!(0.5)),
                             peer(3, 1, json!({"version": 1}), json!(null))]}),
            // Peer 1 gone, a member gone from peer 3, a figure turns null,
            // another turns from a number into an object.
            json!({"time_us": 3, "node": {"recv": null}, "missing_figures": ["cpu"],
                   "peers": [json!({"id": 3, "addr": "10.0.0.3:8333", "closed": true,
                                    "recv": {"msgs": 2, "bytes": 7}, "per_msg_type": 5}),
                             peer(2, 0, json!({}), json!(null))]}),
            json!({"time_us": 4, "node": {"recv": null}, "missing_figures": ["cpu"],
                   "peers": [peer(2, 0, json!({}), json!(null))]}),
            json!({"time_us": 5, "node": {}, "missing_figures": [], "peers": []}),
        ]
    }

    #[test]
    fn compact_lines_rebuild_the_full_lines() {
        let mut compactor = Compactor::default();
        let mut expander = Expander::default();
        for (i, full) in lines().into_iter().enumerate() {
            let compact = compactor.compact(full.clone());
            assert_eq!(compact.get("delta").is_some(), i > 0, "line {i}: {compact}");
            assert_eq!(expander.expand(compact).unwrap(), full, "line {i}");
        }
    }

    #[test]
    fn a_delta_line_says_only_what_changed() {
        let mut compactor = Compactor::default();
        let lines = lines();
        compactor.compact(lines[0].clone());
        let delta = compactor.compact(lines[1].clone());
        // Peer 2 did not change: listed by id only.
        assert_eq!(delta["peer_ids"], json!([1, 2, 3]));
        let ids: Vec<i64> = delta["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(
            delta["peers"][0]["per_msg_type"],
            json!({"ping": 2, "inv": 1})
        );
        assert!(delta["peers"][0].get("addr").is_none());
        assert!(delta.get("missing_figures").is_none());
        // After a reset the next line is full again.
        compactor.reset();
        assert_eq!(compactor.compact(lines[2].clone()), lines[2]);
    }

    #[test]
    fn full_logs_read_unchanged_and_a_delta_first_is_refused() {
        let mut expander = Expander::default();
        for full in lines() {
            assert_eq!(expander.expand(full.clone()).unwrap(), full);
        }
        let mut compactor = Compactor::default();
        compactor.compact(lines()[0].clone());
        let delta = compactor.compact(lines()[1].clone());
        assert!(Expander::default().expand(delta).is_err());
    }
}
