//! Which peers get Prometheus series of their own, and for how long a
//! closed peer keeps them: the rule that bounds the metrics' label sets.
//!
//! At most `max_peers` peers are exported per scrape: those that moved the
//! most payload bytes both ways, or, with `--metrics-peers-by cpu` and the
//! message handler's CPU slices measured, those that cost the most on-CPU
//! time; ties go to the lower peer id (the older connection). The others
//! are counted in the node's series all the same. A closed peer keeps its
//! series, with its final figures, until the first scrape at least
//! `closed_grace_s` seconds after it closed, so a scraper sees its final
//! values; with a grace of 0 that is the next scrape.

use super::{Collector, PeerEntry, StatsFilter};
use crate::peers::ReportSink;

/// Peers exported with series of their own by default: Bitcoin Core
/// allows 125 connections by default, 200 leaves room for churn.
pub const DEFAULT_MAX_PEERS: usize = 200;
/// Seconds a closed peer's series stay by default: several scrape
/// intervals of a usual 15 s to 60 s.
pub const DEFAULT_CLOSED_GRACE_S: u64 = 300;

/// What ranks the peers for series of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PeersBy {
    /// Payload bytes received and sent.
    #[default]
    Traffic,
    /// On-CPU time of the message handler's slices charged to the peer;
    /// traffic when the slices are not measured.
    Cpu,
}

/// How many peers get series of their own, which, and how long a closed
/// peer keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSeries {
    /// Peers exported at most per scrape.
    pub max_peers: usize,
    /// What ranks them.
    pub by: PeersBy,
    /// Seconds a closed peer's series stay after it closed.
    pub closed_grace_s: u64,
}

impl Default for PeerSeries {
    fn default() -> Self {
        Self {
            max_peers: DEFAULT_MAX_PEERS,
            by: PeersBy::default(),
            closed_grace_s: DEFAULT_CLOSED_GRACE_S,
        }
    }
}

impl Collector {
    /// The peers a scrape exports, by peer id, and how many more `filter`
    /// selects that it leaves to the node's series.
    pub fn series_peers(
        &self,
        rule: &PeerSeries,
        filter: &StatsFilter,
    ) -> (Vec<&PeerEntry>, usize) {
        let mut due: Vec<&PeerEntry> = self
            .peers
            .iter()
            .filter(|e| e.peer.due(ReportSink::Metrics) && filter.shows_peer(&e.peer))
            .collect();
        let by_cpu = rule.by == PeersBy::Cpu && self.coverage.slices;
        let weight = |e: &PeerEntry| {
            let f = &e.stats.figures;
            if by_cpu {
                f.msghand_cpu_ns()
            } else {
                f.recv.bytes + f.sent.bytes
            }
        };
        due.sort_by(|a, b| weight(b).cmp(&weight(a)).then(a.peer.id.cmp(&b.peer.id)));
        let omitted = due.len().saturating_sub(rule.max_peers);
        due.truncate(rule.max_peers);
        due.sort_by_key(|e| e.peer.id);
        (due, omitted)
    }

    /// Notes a scrape at `now_unix` (seconds): the closed peers whose grace
    /// has passed had their last one.
    pub fn scraped(&mut self, rule: &PeerSeries, now_unix: u64) {
        let cutoff = now_unix.saturating_sub(rule.closed_grace_s);
        let dropped = self.peers.reported_closed_by(ReportSink::Metrics, cutoff);
        self.forget(dropped);
    }
}
