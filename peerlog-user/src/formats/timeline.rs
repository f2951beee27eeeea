//! A capture as one time-ordered list of messages, each with its peer: what
//! `peerlog show`, `stats`, `convert` and `replay` work on.
//!
//! A capture is whatever [`read_capture_tree`] reads (a bitcoind
//! `message_capture` directory, a peerlog capture of either layout, one
//! peer's directory or one file) or a pcapng file (as `peerlog convert
//! --to pcapng` writes, see [`crate::formats::pcapng`]). A peer is known by the
//! `addr:port` of its directory name and, in peerlog's per-connection
//! layout, by its peer id and connect time, which is what `--peer` filters
//! match on (the same [`PeerFilter`] language as `peerlog trace`).
//!
//! A rotated capture (`peerlog trace --capture-rotate`) is read whole from
//! its root, every generation in time order, or one generation from its
//! directory: each generation is a complete capture.

use peerlog_common::Direction;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::Read;
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::vec;

use anyhow::{Context, Result};
use jiff::civil;

use crate::filter::{PeerFilter, PeerSelector};
use crate::formats::capture::{read_capture_tree, CaptureFile, CaptureRecord, TruncatedRecord};
use crate::formats::pcapng;
use crate::peers::PeerIdentity;

/// The peer id a filter sees for a peer whose id the capture does not
/// record (bitcoind's layout). Bitcoin Core's ids count up from 0, so no
/// `--peer ID` term selects it.
const UNKNOWN_PEER_ID: i64 = i64::MIN;

/// What a capture tells about one peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturePeer {
    /// The peer's `addr:port` from its directory name; when the directory
    /// is not named like an address, the path of its first file.
    pub addr: String,
    /// (peer id, connect time in UNIX seconds), known in peerlog's
    /// per-connection layout only.
    pub connection: Option<(i64, u64)>,
    /// `inbound` when the peer sent the first `version` (Bitcoin Core answers
    /// an inbound peer's version, and speaks first on its own outbound
    /// connections), `outbound` when bitcoind did; empty when the capture
    /// holds no `version` (it began after the handshake). The outbound kind
    /// (full-relay, block-relay-only, ...) is not recorded in captures.
    pub conn_type: &'static str,
}

impl CapturePeer {
    /// `addr:port`, followed by ` peer=ID` when the id is known (Bitcoin
    /// Core's log style).
    pub fn label(&self) -> String {
        match self.connection {
            Some((id, _)) => format!("{} peer={id}", self.addr),
            None => self.addr.clone(),
        }
    }

    fn identity(&self) -> PeerIdentity<'_> {
        PeerIdentity {
            id: self.connection.map_or(UNKNOWN_PEER_ID, |(id, _)| id),
            addr: &self.addr,
            conn_type: self.conn_type,
            network: None,
        }
    }
}

/// One message of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureMessage {
    /// Index of its peer in [`Timeline::peers`].
    pub peer: usize,
    /// Received (`recv`) or sent (`sent`) by bitcoind.
    pub direction: Direction,
    /// Time, message type and payload, as in the capture file.
    pub record: CaptureRecord,
}

/// A capture file whose last record is cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedFile {
    /// The file.
    pub path: PathBuf,
    /// Where and by how much it is cut short.
    pub record: TruncatedRecord,
    /// Complete records before it, all of which are used.
    pub records_before: usize,
}

/// Which messages of a capture to use.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these peers.
    pub peers: PeerSelector,
    /// Only these message types (all when empty).
    pub msg_types: Vec<String>,
    /// Only messages at or after this time (µs since the UNIX epoch).
    pub since: Option<u64>,
    /// Only messages before this time (µs since the UNIX epoch).
    pub until: Option<u64>,
}

/// The command-line options that choose a capture and its messages, shared
/// by `show`, `stats`, `convert` and `replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// The capture: a directory (bitcoind's message_capture, a peerlog
    /// capture of either layout, one peer's directory), one msgs_*.dat
    /// file, or a pcapng file written by `peerlog convert --to pcapng`.
    #[arg(value_name = "CAPTURE")]
    pub capture: PathBuf,

    /// Only these peers (repeatable, any may match), in the filter language
    /// of `peerlog trace`: an address (`10.0.0.1`, `[::1]:8333`), a CIDR
    /// range, a network (`ipv4`, `onion`, ...), `inbound`/`outbound`
    /// (inferred from who sent the first `version`), or a peer id (known in
    /// per-connection captures only).
    #[arg(long = "peer", value_name = "FILTER")]
    pub peers: Vec<PeerFilter>,

    /// Only these message types (repeatable).
    #[arg(long = "msg-type", value_name = "TYPE")]
    pub msg_types: Vec<String>,

    /// Only messages at or after TIME: UNIX seconds (`1700000000.5`), or
    /// an RFC 3339 time (`2023-11-14T22:13:20Z`, `2023-11-14`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<u64>,

    /// Only messages before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<u64>,
}

impl SelectArgs {
    /// Loads the capture, keeping the selected messages; warns on stderr
    /// about filter terms that cannot match in a capture and about files
    /// that end in a cut-short record.
    pub fn load(&self) -> Result<Timeline> {
        warn_about_filters(&self.peers);
        let selection = Selection {
            peers: PeerSelector::new(self.peers.clone()),
            msg_types: self.msg_types.clone(),
            since: self.since,
            until: self.until,
        };
        let timeline = Timeline::load(&self.capture, &selection)?;
        timeline.print_warnings();
        if self.peers.iter().any(|f| matches!(f, PeerFilter::Id(_)))
            && timeline.peers.is_empty()
            && !timeline.had_connection_ids
        {
            crate::warning!(
                "this capture does not record peer ids (only peerlog's \
                 per-connection layout does); select peers by address instead"
            );
        }
        Ok(timeline)
    }
}

/// A Bitcoin network, as `--network` names it; it decides the magic of v1
/// frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkArg {
    /// Mainnet.
    Main,
    /// Testnet3.
    Testnet,
    /// Testnet4.
    Testnet4,
    /// Signet (the default signet).
    Signet,
    /// Regtest.
    Regtest,
}

impl From<NetworkArg> for bitcoin::Network {
    fn from(n: NetworkArg) -> Self {
        match n {
            NetworkArg::Main => Self::Bitcoin,
            NetworkArg::Testnet => Self::Testnet,
            NetworkArg::Testnet4 => Self::Testnet4,
            NetworkArg::Signet => Self::Signet,
            NetworkArg::Regtest => Self::Regtest,
        }
    }
}

/// Warns about terms that no peer of a capture can match, so an empty
/// result is not a mystery.
fn warn_about_filters(terms: &[PeerFilter]) {
    for term in terms {
        if let PeerFilter::ConnType(t) = term {
            if t != "inbound" {
                crate::warning!(
                    "captures do not record the kind of outbound connection, \
                     so --peer {t} selects nothing; use --peer outbound"
                );
            }
        }
    }
}

/// The selected messages of a capture, in time order.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The capture that was read.
    pub source: PathBuf,
    /// The peers with at least one selected message, in order of their
    /// first message.
    pub peers: Vec<CapturePeer>,
    /// The selected messages, by time; each file's messages in file order,
    /// and at equal times the file that sorts first (`msgs_recv.dat`) first.
    pub messages: Vec<CaptureMessage>,
    /// Files whose last record is cut short (everything before it is in
    /// `messages`, if selected).
    pub truncated: Vec<TruncatedFile>,
    /// Whether any file of the capture recorded its connection's peer id.
    pub had_connection_ids: bool,
    /// What could not be used, from reading a pcapng file.
    pub warnings: Vec<String>,
}

impl Timeline {
    /// Reads the capture at `path` and keeps the messages `selection` selects.
    pub fn load(path: &Path, selection: &Selection) -> Result<Self> {
        let (files, warnings) = if is_pcapng(path)? {
            let capture = pcapng::read::read_pcapng(path)?;
            if capture.files.is_empty() {
                anyhow::bail!("{} holds no Bitcoin P2P messages", path.display());
            }
            (capture.files, capture.warnings)
        } else {
            let files = read_capture_tree(path).map_err(anyhow::Error::new)?;
            if files.is_empty() {
                anyhow::bail!(
                    "{} holds no capture files (msgs_recv.dat, msgs_sent.dat)",
                    path.display()
                );
            }
            (files, Vec::new())
        };
        Ok(Self {
            warnings,
            ..Self::from_files(path, files, selection)
        })
    }

    /// Builds a timeline from capture files already read.
    pub fn from_files(source: &Path, files: Vec<CaptureFile>, selection: &Selection) -> Self {
        let had_connection_ids = files.iter().any(|f| f.connection.is_some());
        let mut truncated = Vec::new();
        let mut peers: Vec<CapturePeer> = Vec::new();
        let mut index: HashMap<(String, Option<(i64, u64)>), usize> = HashMap::new();
        // (peer, direction, records) per file, in the order of the files;
        // the files of one peer and direction in several generations of a
        // rotated capture (`<root>/<UTC start>/...`, sorted by path, so in
        // time order) make one source, their records one after the other,
        // so that a clock step back at a generation boundary keeps them in
        // the order they were written, as within one file.
        let mut sources: Vec<(usize, Direction, Vec<CaptureRecord>)> =
            Vec::with_capacity(files.len());
        let mut source_of: HashMap<(usize, Direction), usize> = HashMap::new();
        for file in files {
            if let Some(record) = file.truncated {
                truncated.push(TruncatedFile {
                    path: file.path.clone(),
                    record,
                    records_before: file.records.len(),
                });
            }
            let addr = file
                .peer_addr
                .clone()
                .unwrap_or_else(|| file.path.display().to_string());
            let peer = *index
                .entry((addr.clone(), file.connection))
                .or_insert_with(|| {
                    peers.push(CapturePeer {
                        addr,
                        connection: file.connection,
                        conn_type: "",
                    });
                    peers.len() - 1
                });
            match source_of.get(&(peer, file.direction)) {
                Some(&i) => sources[i].2.extend(file.records),
                None => {
                    source_of.insert((peer, file.direction), sources.len());
                    sources.push((peer, file.direction, file.records));
                }
            }
        }
        let mut all = merge(
            sources
                .into_iter()
                .map(|(peer, direction, records)| (peer, direction, records.into_iter().peekable()))
                .collect(),
        );

        // Who spoke first decides the connection type; that is a property
        // of the whole connection, so it is settled before any filtering.
        for m in &all {
            let peer = &mut peers[m.peer];
            if peer.conn_type.is_empty() && m.record.msg_type == "version" {
                peer.conn_type = match m.direction {
                    Direction::Inbound => "inbound",
                    Direction::Outbound => "outbound",
                };
            }
        }

        let selected_peer: Vec<bool> = peers
            .iter()
            .map(|p| selection.peers.matches(&p.identity()))
            .collect();
        let keep = |m: &CaptureMessage| {
            selected_peer[m.peer]
                && (selection.msg_types.is_empty()
                    || selection.msg_types.contains(&m.record.msg_type))
                && selection.since.is_none_or(|t| m.record.time_micros >= t)
                && selection.until.is_none_or(|t| m.record.time_micros < t)
        };
        all.retain(keep);

        // Renumber the peers that kept messages, in order of appearance.
        let mut renumber: Vec<Option<usize>> = vec![None; peers.len()];
        let mut kept_peers = Vec::new();
        for m in &mut all {
            let new = *renumber[m.peer].get_or_insert_with(|| {
                kept_peers.push(peers[m.peer].clone());
                kept_peers.len() - 1
            });
            m.peer = new;
        }
        Self {
            source: source.to_path_buf(),
            peers: kept_peers,
            messages: all,
            truncated,
            had_connection_ids,
            warnings: Vec::new(),
        }
    }

    /// Prints the warnings and one warning per cut-short file on stderr.
    pub fn print_warnings(&self) {
        for w in &self.warnings {
            crate::warning!("{w}");
        }
        for t in &self.truncated {
            crate::warning!(
                "capture file {}: {}; the {} records before it are used",
                t.path.display(),
                t.record,
                t.records_before
            );
        }
    }

    /// Time of the first and the last message, if any.
    pub fn span(&self) -> Option<(u64, u64)> {
        Some((
            self.messages.first()?.record.time_micros,
            self.messages.last()?.record.time_micros,
        ))
    }
}

/// Merges the records of several files into one list by time. A k-way
/// merge rather than a sort: each file's records stay in file order even
/// where its clock stepped back (bitcoind stamps records with the
/// adjustable system clock), so writing the list back gives the same
/// files. Equal times take the earlier file first.
fn merge(
    mut sources: Vec<(usize, Direction, Peekable<vec::IntoIter<CaptureRecord>>)>,
) -> Vec<CaptureMessage> {
    let mut heads = BinaryHeap::new();
    for (i, (_, _, records)) in sources.iter_mut().enumerate() {
        if let Some(r) = records.peek() {
            heads.push(Reverse((r.time_micros, i)));
        }
    }
    let mut merged = Vec::new();
    while let Some(Reverse((_, i))) = heads.pop() {
        let (peer, direction, records) = &mut sources[i];
        let record = records.next().expect("a head was peeked");
        merged.push(CaptureMessage {
            peer: *peer,
            direction: *direction,
            record,
        });
        if let Some(next) = records.peek() {
            heads.push(Reverse((next.time_micros, i)));
        }
    }
    merged
}

/// Whether `path` is a pcapng file (starts with a Section Header Block).
fn is_pcapng(path: &Path) -> Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let got = file
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(got == 4 && magic == pcapng::block::SECTION_HEADER_MAGIC)
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

const MICROS_PER_SECOND: u64 = 1_000_000;
const SECONDS_PER_DAY: u64 = 86_400;

/// Day 0 of capture times.
const UNIX_EPOCH_DATE: civil::Date = civil::date(1970, 1, 1);

/// A capture time (µs since the UNIX epoch) in RFC 3339, UTC, to the
/// microsecond: `2023-11-14T22:13:20.000000Z`.
pub fn format_time(micros: u64) -> String {
    let epoch = UNIX_EPOCH_DATE.to_datetime(civil::Time::midnight());
    match epoch.checked_add(std::time::Duration::from_micros(micros)) {
        Ok(time) => time.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string(),
        // Past 9999-12-31, which RFC 3339 cannot write (a damaged record):
        // the count itself.
        Err(_) => format!("{micros}us"),
    }
}

/// The last second RFC 3339 can write, 9999-12-31T23:59:59Z: the latest
/// `--since`/`--until` in UNIX seconds too.
const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

/// Parses a `--since`/`--until` time into µs since the UNIX epoch: UNIX
/// seconds (0 to 253402300799) with an optional fraction, an RFC 3339
/// date-time with `Z` or an offset (fractional seconds allowed), or a date
/// (midnight UTC).
pub fn parse_time(text: &str) -> Result<u64, String> {
    let err = || {
        format!(
            "bad time {text:?}: expected UNIX seconds from 0 to {MAX_UNIX_SECONDS} \
             (1700000000.5), an RFC 3339 time (2023-11-14T22:13:20Z) or a date (2023-11-14)"
        )
    };
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        // NaN fails the range test too.
        if !(0.0..=MAX_UNIX_SECONDS as f64).contains(&secs) {
            return Err(err());
        }
        return Ok((secs * MICROS_PER_SECOND as f64).round() as u64);
    }
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let mut field = |len: usize| -> Option<u32> {
        let s = parts.next()?;
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let (year, month, day) = (
        field(4).ok_or_else(err)?,
        field(2).ok_or_else(err)?,
        field(2).ok_or_else(err)?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return Err(err());
    }
    // Refuses days a month does not have (2023-02-30).
    let date = civil::Date::new(year as i16, month as i8, day as i8).map_err(|_| err())?;
    let days = i64::from((date - UNIX_EPOCH_DATE).get_days());
    let mut micros = days as i128 * (SECONDS_PER_DAY * MICROS_PER_SECOND) as i128;
    if let Some(time) = time {
        // Split off the zone: Z, or +hh:mm / -hh:mm.
        let (clock, offset_secs) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
            (clock, 0i64)
        } else if let Some(pos) = time.rfind(['+', '-']) {
            let (clock, zone) = time.split_at(pos);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':').ok_or_else(err)?;
            let (h, m): (i64, i64) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
            if !(0..=23).contains(&h) || !(0..=59).contains(&m) {
                return Err(err());
            }
            (clock, sign * (h * 3600 + m * 60))
        } else {
            return Err(err());
        };
        let (hms, fraction) = match clock.split_once('.') {
            Some((hms, f)) => (hms, Some(f)),
            None => (clock, None),
        };
        let mut hms = hms.split(':').map(|s| s.parse::<u32>().map_err(|_| err()));
        let (h, m, s) = (
            hms.next().ok_or_else(err)??,
            hms.next().ok_or_else(err)??,
            hms.next().ok_or_else(err)??,
        );
        if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
            return Err(err());
        }
        let mut sub_micros = 0u64;
        if let Some(f) = fraction {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            // Up to microseconds; finer digits are dropped.
            let digits: String = f.chars().chain(std::iter::repeat('0')).take(6).collect();
            sub_micros = digits.parse().map_err(|_| err())?;
        }
        let secs = i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s) - offset_secs;
        micros += secs as i128 * MICROS_PER_SECOND as i128 + sub_micros as i128;
    }
    u64::try_from(micros).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &str, direction: Direction, records: &[(u64, &str)]) -> CaptureFile {
        let addr = crate::formats::capture::peer_addr_from_dir_name(dir);
        CaptureFile {
            path: PathBuf::from(format!(
                "{dir}/{}",
                crate::formats::capture::file_name(direction)
            )),
            peer_addr: addr,
            connection: None,
            direction,
            records: records
                .iter()
                .map(|(t, ty)| CaptureRecord {
                    time_micros: *t,
                    msg_type: ty.to_string(),
                    payload: vec![],
                })
                .collect(),
            truncated: None,
        }
    }

    fn sample() -> Vec<CaptureFile> {
        vec![
            file(
                "10.0.0.1_8333",
                Direction::Inbound,
                &[(10, "version"), (30, "verack"), (50, "ping")],
            ),
            file(
                "10.0.0.1_8333",
                Direction::Outbound,
                &[(20, "version"), (30, "verack"), (60, "pong")],
            ),
            file(
                "[2001_db8__1]_8333",
                Direction::Outbound,
                &[(5, "version"), (40, "ping")],
            ),
            file(
                "[2001_db8__1]_8333",
                Direction::Inbound,
                &[(15, "version"), (45, "pong")],
            ),
        ]
    }

    #[test]
    fn merges_in_time_order_and_infers_direction() {
        let t = Timeline::from_files(Path::new("x"), sample(), &Selection::default());
        let times: Vec<u64> = t.messages.iter().map(|m| m.record.time_micros).collect();
        assert_eq!(times, [5, 10, 15, 20, 30, 30, 40, 45, 50, 60]);
        // Equal times: the recv file of the directory came first.
        assert_eq!(t.messages[4].direction, Direction::Inbound);
        assert_eq!(t.peers.len(), 2);
        assert_eq!(t.peers[0].addr, "[2001:db8::1]:8333");
        assert_eq!(t.peers[0].conn_type, "outbound");
        assert_eq!(t.peers[1].conn_type, "inbound");
    }

    #[test]
    fn selects_by_peer_type_and_time() {
        let sel = |peers: &[&str], types: &[&str], since, until| Selection {
            peers: PeerSelector::new(peers.iter().map(|p| p.parse().unwrap()).collect()),
            msg_types: types.iter().map(|t| t.to_string()).collect(),
            since,
            until,
        };
        let count = |s: &Selection| {
            Timeline::from_files(Path::new("x"), sample(), s)
                .messages
                .len()
        };
        assert_eq!(count(&sel(&["ipv6"], &[], None, None)), 4);
        assert_eq!(
            count(&sel(&["10.0.0.0/8"], &["ping", "pong"], None, None)),
            2
        );
        assert_eq!(count(&sel(&["inbound"], &[], None, None)), 6);
        assert_eq!(count(&sel(&["outbound"], &[], Some(15), Some(45))), 2);
        assert_eq!(count(&sel(&["0"], &[], None, None)), 0);
        let t = Timeline::from_files(Path::new("x"), sample(), &sel(&["ipv4"], &[], None, None));
        assert_eq!(t.peers.len(), 1);
        assert!(t.messages.iter().all(|m| m.peer == 0));
    }

    #[test]
    fn file_order_survives_a_clock_step_back() {
        let files = vec![
            file(
                "10.0.0.1_8333",
                Direction::Inbound,
                &[(10, "a"), (50, "b"), (20, "c"), (60, "d")],
            ),
            file(
                "10.0.0.1_8333",
                Direction::Outbound,
                &[(30, "x"), (55, "y")],
            ),
        ];
        let t = Timeline::from_files(Path::new("x"), files, &Selection::default());
        let types: Vec<&str> = t
            .messages
            .iter()
            .map(|m| m.record.msg_type.as_str())
            .collect();
        assert_eq!(types, ["a", "x", "b", "c", "y", "d"]);
    }

    #[test]
    fn times_format_and_parse() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_time(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            format_time(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        for (text, micros) in [
            ("1700000000", 1_700_000_000_000_000),
            ("1700000000.5", 1_700_000_000_500_000),
            ("2023-11-14T22:13:20Z", 1_700_000_000_000_000),
            ("2023-11-14T22:13:20.123456Z", 1_700_000_000_123_456),
            ("2023-11-14T23:13:20+01:00", 1_700_000_000_000_000),
            ("2023-11-14 21:13:20.5-01:00", 1_700_000_000_500_000),
            ("2023-11-14", 1_699_920_000_000_000),
            ("2000-02-29", 951_782_400_000_000),
            ("253402300799", 253_402_300_799_000_000),
            ("9999-12-31T23:59:59Z", 253_402_300_799_000_000),
        ] {
            assert_eq!(parse_time(text), Ok(micros), "{text}");
        }
        for bad in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-11-14T25:00:00Z",
            "2023-11-14T10:00",
            "-5",
            "1e30",
            "NaN",
            "253402300800",
            "2023-11-14T10:00:00+99999999999999999:00",
            "2023-11-14T10:00:00-24:00",
            "2023-02-30",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(format_time(u64::MAX), "18446744073709551615us");
        // Round trip over a range of days, leap years included.
        for day in (0..40_000u64).step_by(37) {
            let micros = day * SECONDS_PER_DAY * MICROS_PER_SECOND + 12_345_678;
            assert_eq!(parse_time(&format_time(micros)), Ok(micros));
        }
    }
}
