//! The peer table: the one record of who each peer of the traced node is,
//! where its connection stands, and whether the peer filter selects it.
//!
//! Every event that names a peer goes through the table first
//! ([`PeerTable::observe`], [`PeerTable::connection`]); the connection
//! lifecycle (connect time, eviction, closing, bitcoind's final byte
//! counters) is written here and nowhere else. What peerlog measures of a
//! peer hangs off its entry, by peer id ([`Entry::stats`], the figures of
//! [`crate::stats`]), and goes when the entry goes: a closed peer is kept
//! until every periodic output has reported it once more ([`ReportSinks`]),
//! then dropped, so that a trace that runs for weeks does not grow without
//! bound.

mod network;

use std::collections::{BTreeMap, VecDeque};

pub use network::Network;

use crate::event::Connection;
use peerlog_common::ConnectionEventKind;

/// The facts a peer filter looks at.
#[derive(Debug, Clone, Copy)]
pub struct PeerIdentity<'a> {
    /// Peer id.
    pub id: i64,
    /// `addr:port` as bitcoind names the peer.
    pub addr: &'a str,
    /// Connection type.
    pub conn_type: &'a str,
    /// Network, when a connection event told it.
    pub network: Option<Network>,
}

impl PeerIdentity<'_> {
    /// The network, told or inferred from the address.
    pub fn network(&self) -> Option<Network> {
        self.network.or_else(|| Network::from_addr(self.addr))
    }
}

/// bitcoind's own byte counters of a connection (`CNode::nRecvBytes`,
/// `nSendBytes`; `getpeerinfo`'s `bytesrecv`, `bytessent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeBytes {
    /// Bytes received, headers and transport overhead included.
    pub recv: u64,
    /// Bytes sent.
    pub sent: u64,
}

/// Outputs that report every closed peer once more, as bits of
/// [`ReportSinks`]. A closed peer is kept until each of them has reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportSink {
    /// The periodic stats log (`--stats-log`).
    StatsLog = 1,
    /// The Prometheus endpoint (`--metrics`).
    Metrics = 2,
}

/// A set of [`ReportSink`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportSinks(u8);

impl ReportSinks {
    /// The set with `sink` added.
    pub fn with(self, sink: ReportSink) -> Self {
        Self(self.0 | sink as u8)
    }

    fn contains(self, sink: ReportSink) -> bool {
        self.0 & sink as u8 != 0
    }

    fn without(self, sink: ReportSink) -> Self {
        Self(self.0 & !(sink as u8))
    }
}

/// Closed peers kept after every sink reported them, most recently closed
/// first: enough for `getpeerstats` to show a peer that just left.
pub const CLOSED_PEERS_KEPT: usize = 64;
/// Closed peers kept at most, reported or not, so that a sink nobody reads
/// (a metrics endpoint never scraped) cannot make memory grow without bound.
pub const CLOSED_PEERS_MAX: usize = 1024;

/// One peer of the traced node: identity, lifecycle and selection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Bitcoin Core's peer id.
    pub id: i64,
    /// Address as bitcoind names it (`m_addr_name`); empty until an event names it.
    pub addr: String,
    /// Connection type (`getpeerinfo`'s `connection_type`); empty until an
    /// event names it.
    pub conn_type: String,
    /// Network, from the connection tracepoints or the address.
    pub network: Option<Network>,
    /// Connect time, unix seconds (`getpeerinfo`'s `conntime`): from the
    /// connection tracepoints, or when peerlog first saw a peer that was
    /// connected before it attached, until a closing event tells.
    pub conntime: u64,
    /// Whether `conntime` is the real connect time.
    pub conntime_known: bool,
    /// Whether the connection closed.
    pub closed: bool,
    /// When the connection closed, unix seconds (the closing event's time).
    pub closed_unix: Option<u64>,
    /// Whether bitcoind evicted the peer (`net:evicted_inbound_connection`).
    pub evicted: bool,
    /// Whether the peer filter selects the peer for capture and reports. A
    /// peer starts selected, as the kernel treats it, until it is named.
    pub selected: bool,
    /// The peer's `CNode*` in bitcoind, once the kernel found it (cleared
    /// when the connection closes: bitcoind frees it, and the next
    /// connection may reuse its address).
    pub cnode: Option<u64>,
    /// bitcoind's final byte counters, from `net:closed_connection`.
    pub final_bytes: Option<NodeBytes>,
    /// Sinks that still owe a report of this closed peer.
    unreported: ReportSinks,
}

impl Peer {
    /// The identity filters match against.
    pub fn identity(&self) -> PeerIdentity<'_> {
        PeerIdentity {
            id: self.id,
            addr: &self.addr,
            conn_type: &self.conn_type,
            network: self.network,
        }
    }

    /// Whether `sink` still owes this peer a report: it is connected, or
    /// closed and not yet reported closed.
    pub fn due(&self, sink: ReportSink) -> bool {
        !self.closed || self.unreported.contains(sink)
    }

    /// Takes the names an event gives, where still unknown. True when this
    /// named the peer (its address was unknown until now).
    fn learn_names(&mut self, addr: &str, conn_type: &str) -> bool {
        let named = self.addr.is_empty() && !addr.is_empty();
        if named {
            self.addr = addr.to_string();
            self.network = self.network.or_else(|| Network::from_addr(addr));
        }
        if self.conn_type.is_empty() && !conn_type.is_empty() {
            self.conn_type = conn_type.to_string();
        }
        named
    }
}

/// A peer and what peerlog measured of it.
#[derive(Debug, Clone)]
pub struct Entry<F> {
    /// Who the peer is and where its connection stands.
    pub peer: Peer,
    /// Its figures.
    pub stats: F,
}

/// What an event did to the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// The event named the peer: its address is known from now on, and the
    /// peer filter can be applied to it.
    pub named: bool,
    /// The event closed the connection.
    pub closed: bool,
}

/// Every peer connected, and those recently closed, by peer id, with their
/// figures `F`.
#[derive(Debug)]
pub struct PeerTable<F> {
    entries: BTreeMap<i64, Entry<F>>,
    /// Closed peers, oldest first.
    closed: VecDeque<i64>,
    /// The outputs a closed peer must be reported to before it is dropped.
    sinks: ReportSinks,
    /// The figures of a peer not seen before.
    blank: F,
    /// Peers seen since the trace started, dropped ones included.
    seen: usize,
}

impl<F: Clone> PeerTable<F> {
    /// An empty table whose closed peers are kept until `sinks` reported
    /// them; new peers start with the figures `blank`.
    pub fn new(sinks: ReportSinks, blank: F) -> Self {
        Self {
            entries: BTreeMap::new(),
            closed: VecDeque::new(),
            sinks,
            blank,
            seen: 0,
        }
    }

    /// The peer an event of `unix` (seconds) attributes to peer `id`,
    /// created if new, with the names the event gives (empty: none).
    pub fn observe(
        &mut self,
        id: i64,
        addr: &str,
        conn_type: &str,
        unix: u64,
    ) -> (&mut Entry<F>, Seen) {
        let seen = &mut self.seen;
        let blank = &self.blank;
        let entry = self.entries.entry(id).or_insert_with(|| {
            *seen += 1;
            Entry {
                peer: Peer {
                    id,
                    addr: String::new(),
                    conn_type: String::new(),
                    network: None,
                    conntime: unix,
                    conntime_known: false,
                    closed: false,
                    closed_unix: None,
                    evicted: false,
                    selected: true,
                    cnode: None,
                    final_bytes: None,
                    unreported: ReportSinks::default(),
                },
                stats: blank.clone(),
            }
        });
        let named = entry.peer.learn_names(addr, conn_type);
        (
            entry,
            Seen {
                named,
                closed: false,
            },
        )
    }

    /// Applies a connection event at `unix` (seconds): the connection's
    /// lifecycle. A closed peer may be dropped later ([`PeerTable::prune`]).
    pub fn connection(&mut self, c: &Connection, unix: u64) -> Seen {
        let sinks = self.sinks;
        let (entry, mut seen) = self.observe(c.peer_id, &c.addr, &c.conn_type, unix);
        let peer = &mut entry.peer;
        if let Some(net) = Network::from_core(c.network) {
            peer.network = Some(net);
        }
        match c.kind {
            ConnectionEventKind::Inbound | ConnectionEventKind::Outbound => {
                peer.conntime = unix;
                peer.conntime_known = true;
            }
            ConnectionEventKind::Evicted | ConnectionEventKind::Closed => {
                // Both tracepoints carry the connect time bitcoind knows.
                peer.conntime = c.value;
                peer.conntime_known = true;
                peer.evicted |= c.kind == ConnectionEventKind::Evicted;
                if c.kind == ConnectionEventKind::Closed && !peer.closed {
                    peer.closed = true;
                    peer.closed_unix = Some(unix);
                    peer.unreported = sinks;
                    peer.cnode = None;
                    peer.final_bytes = c.final_bytes.map(|(recv, sent)| NodeBytes { recv, sent });
                    seen.closed = true;
                }
            }
        }
        if seen.closed {
            self.closed.push_back(c.peer_id);
        }
        seen
    }

    /// Notes the peer's `CNode*`, as a message event carries it, while the
    /// peer is connected.
    pub fn learn_cnode(&mut self, id: i64, cnode: Option<u64>) {
        if let Some(p) = self.entries.get_mut(&id) {
            if cnode.is_some() && !p.peer.closed {
                p.peer.cnode = cnode;
            }
        }
    }

    /// Sets whether the peer filter selects the peer; true when that changed.
    pub fn set_selected(&mut self, id: i64, selected: bool) -> bool {
        match self.entries.get_mut(&id) {
            Some(e) if e.peer.selected != selected => {
                e.peer.selected = selected;
                true
            }
            _ => false,
        }
    }

    /// Notes that `sink` reported every closed peer (it ran past them, shown
    /// or filtered out); returns the closed peers dropped since nobody owes
    /// them a report any more.
    pub fn reported(&mut self, sink: ReportSink) -> Vec<Entry<F>> {
        self.reported_closed_by(sink, u64::MAX)
    }

    /// Notes that `sink` reported the closed peers that closed at or before
    /// `cutoff` (unix seconds) for the last time; the others it owes more
    /// reports. Returns the closed peers dropped since nobody owes them a
    /// report any more.
    pub fn reported_closed_by(&mut self, sink: ReportSink, cutoff: u64) -> Vec<Entry<F>> {
        for id in &self.closed {
            if let Some(e) = self.entries.get_mut(id) {
                if e.peer.closed_unix.is_some_and(|t| t <= cutoff) {
                    e.peer.unreported = e.peer.unreported.without(sink);
                }
            }
        }
        self.prune()
    }

    /// Closes every connected peer: the process they were peers of exited
    /// (`--follow`), without a closing event for each. Their figures are
    /// final; bitcoind's final byte counters are unknown. Returns their ids.
    pub fn close_all(&mut self) -> Vec<i64> {
        let mut ids = Vec::new();
        for e in self.entries.values_mut().filter(|e| !e.peer.closed) {
            e.peer.closed = true;
            e.peer.unreported = self.sinks;
            e.peer.cnode = None;
            ids.push(e.peer.id);
        }
        self.closed.extend(&ids);
        ids
    }

    /// Drops every peer and returns them: a new process numbers its peers
    /// from 0 again, and must not meet the previous process's peers under
    /// their ids.
    pub fn drain(&mut self) -> Vec<Entry<F>> {
        self.closed.clear();
        std::mem::take(&mut self.entries).into_values().collect()
    }

    /// Drops the closed peers beyond what is kept, and returns them.
    pub fn prune(&mut self) -> Vec<Entry<F>> {
        let mut dropped = Vec::new();
        let mut kept = VecDeque::with_capacity(self.closed.len());
        let n = self.closed.len();
        for (i, id) in self.closed.drain(..).enumerate() {
            let newer = n - i - 1;
            let owed = self
                .entries
                .get(&id)
                .is_some_and(|e| e.peer.unreported != ReportSinks::default());
            if newer < CLOSED_PEERS_KEPT || (owed && newer < CLOSED_PEERS_MAX) {
                kept.push_back(id);
            } else if let Some(e) = self.entries.remove(&id) {
                dropped.push(e);
            }
        }
        self.closed = kept;
        dropped
    }
}

impl<F> PeerTable<F> {
    /// The peer with this id, if kept.
    pub fn get(&self, id: i64) -> Option<&Entry<F>> {
        self.entries.get(&id)
    }

    /// The peer with this id, to update its figures.
    pub fn get_mut(&mut self, id: i64) -> Option<&mut Entry<F>> {
        self.entries.get_mut(&id)
    }

    /// Every peer kept, by id: connected ones and recently closed ones.
    pub fn iter(&self) -> impl Iterator<Item = &Entry<F>> {
        self.entries.values()
    }

    /// Every peer kept, by id, to update their figures.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry<F>> {
        self.entries.values_mut()
    }

    /// Peers connected now.
    pub fn connected(&self) -> usize {
        self.entries.values().filter(|e| !e.peer.closed).count()
    }

    /// Peers seen since the trace started, dropped ones included.
    pub fn seen(&self) -> usize {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(id: i64) -> Connection {
        Connection {
            ktime_ns: 0,
            kind: ConnectionEventKind::Closed,
            peer_id: id,
            addr: format!("127.0.0.1:{}", 1000 + id),
            conn_type: "inbound".into(),
            network: 1,
            value: 1_700_000_000,
            final_bytes: Some((10, 20)),
        }
    }

    #[test]
    fn lifecycle_of_a_connection() {
        let mut table = PeerTable::new(ReportSinks::default(), ());
        let (_, seen) = table.observe(7, "", "", 5);
        assert!(!seen.named, "an event without names does not name the peer");
        let (e, seen) = table.observe(7, "1.2.3.4:8333", "outbound-full-relay", 6);
        assert!(seen.named);
        assert_eq!(
            e.peer.conntime, 5,
            "first seen, until a connection event tells"
        );
        assert_eq!(e.peer.network, Some(Network::Ipv4));
        table.learn_cnode(7, Some(0x1000));
        let seen = table.connection(&closed(7), 9);
        assert!(seen.closed);
        let p = &table.get(7).unwrap().peer;
        assert!(p.closed && p.conntime_known);
        assert_eq!(p.closed_unix, Some(9));
        assert_eq!(p.conntime, 1_700_000_000);
        assert_eq!(p.cnode, None, "bitcoind frees the CNode");
        assert_eq!(p.final_bytes, Some(NodeBytes { recv: 10, sent: 20 }));
        assert!(!table.connection(&closed(7), 9).closed, "closed once");
        assert_eq!((table.seen(), table.connected()), (1, 0));
    }

    #[test]
    fn a_new_process_meets_none_of_the_old_peers() {
        let mut table = PeerTable::new(ReportSinks::default().with(ReportSink::StatsLog), ());
        table.observe(0, "127.0.0.1:1000", "inbound", 1);
        table.observe(1, "127.0.0.1:1001", "inbound", 1);
        table.connection(&closed(1), 2);
        assert_eq!(table.close_all(), vec![0], "only the connected one");
        let p = &table.get(0).unwrap().peer;
        assert!(
            p.closed && p.due(ReportSink::StatsLog),
            "reported closed once more"
        );
        assert_eq!(table.connected(), 0);
        assert_eq!(table.drain().len(), 2);
        let (e, _) = table.observe(0, "127.0.0.1:2000", "inbound", 3);
        assert!(
            !e.peer.closed && e.peer.addr == "127.0.0.1:2000",
            "a new peer 0"
        );
        assert_eq!(table.seen(), 3, "every peer of every process");
    }

    #[test]
    fn closed_peers_wait_for_their_reports() {
        let sinks = ReportSinks::default().with(ReportSink::Metrics);
        let mut table = PeerTable::new(sinks, ());
        let n = CLOSED_PEERS_KEPT as i64 + 10;
        for id in 0..n {
            table.connection(&closed(id), 1);
            assert!(table.prune().is_empty(), "owed a report: kept");
        }
        assert!(table.get(0).unwrap().peer.due(ReportSink::Metrics));
        assert!(!table.get(0).unwrap().peer.due(ReportSink::StatsLog));
        table.connection(&closed(n), 5);
        assert!(
            table.reported_closed_by(ReportSink::Metrics, 0).is_empty(),
            "closed after the cutoff: still owed"
        );
        assert!(table.get(0).unwrap().peer.due(ReportSink::Metrics));
        let dropped = table.reported_closed_by(ReportSink::Metrics, 1);
        assert_eq!(dropped.len(), 11, "the oldest beyond those kept");
        assert!(table.get(n).unwrap().peer.due(ReportSink::Metrics));
        assert!(table.get(10).is_none() && table.get(11).is_some());
        assert_eq!(table.seen(), n as usize + 1);
        assert!(table.reported(ReportSink::Metrics).is_empty());
        assert!(!table.get(n).unwrap().peer.due(ReportSink::Metrics));
    }
}
