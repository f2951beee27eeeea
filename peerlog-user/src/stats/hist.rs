//! HdrHistograms of measured figures, their percentiles, and HdrHistogram
//! interval logs (`--hdr-log DIR`).

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use hdrhistogram::{
    serialization::{
        interval_log::{IntervalLogWriterBuilder, Tag},
        V2DeflateSerializer,
    },
    Histogram,
};
use serde::Serialize;

use crate::private_fs::{self, Dir};

/// Significant decimal digits kept: values are exact to within 1%. Two
/// digits rather than the usual three because peerlog keeps several
/// histograms per peer, and three would take ten times the memory.
const SIGNIFICANT_FIGURES: u8 = 2;

/// A histogram of one measured figure since tracing started, plus, when
/// interval logs are written, the histogram of the current interval.
#[derive(Debug, Clone)]
pub struct Hist {
    total: Histogram<u64>,
    interval: Option<Histogram<u64>>,
}

impl Hist {
    /// An empty histogram; `with_interval` keeps the interval histogram too.
    pub fn new(with_interval: bool) -> Self {
        // Auto-resizing: memory grows with the largest value recorded, not
        // with a guessed bound.
        let total = Histogram::new(SIGNIFICANT_FIGURES).expect("valid significant figures");
        Self {
            interval: with_interval.then(|| total.clone()),
            total,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        record_into(&mut self.total, value);
        if let Some(interval) = &mut self.interval {
            record_into(interval, value);
        }
    }

    /// Values recorded since tracing started.
    pub fn count(&self) -> u64 {
        self.total.len()
    }

    /// The histogram since tracing started.
    pub fn total(&self) -> &Histogram<u64> {
        &self.total
    }

    /// The histogram since the last [`Hist::reset_interval`], if kept.
    pub fn interval(&self) -> Option<&Histogram<u64>> {
        self.interval.as_ref()
    }

    /// Starts a new interval.
    pub fn reset_interval(&mut self) {
        if let Some(interval) = &mut self.interval {
            interval.reset();
        }
    }

    /// Count, extremes, mean and percentiles since tracing started.
    pub fn summary(&self) -> HistSummary {
        let h = &self.total;
        if h.is_empty() {
            return HistSummary::default();
        }
        HistSummary {
            count: h.len(),
            min: h.min(),
            mean: h.mean().round() as u64,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// `record` grows an auto-resizing histogram (`saturating_record` would
/// clamp to its current range); only values beyond the largest it can ever
/// track (2^62) fail, and those are clamped.
fn record_into(h: &mut Histogram<u64>, value: u64) {
    if h.record(value).is_err() {
        h.saturating_record(value);
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.summary().serialize(s)
    }
}

/// What a histogram says, in the unit of its values. All zero when empty.
/// Values are exact to within 1% (two significant figures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HistSummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Mean, rounded.
    pub mean: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

/// HdrHistogram interval logs, one file per measured figure
/// (`DIR/<figure>.hlog`), in the format of the Java implementation's
/// `HistogramLogWriter` (V2 compressed histograms, base64), which
/// `HistogramLogProcessor` and the `hdrhistogram` crates read.
///
/// Each interval holds one untagged histogram for the whole node and one per
/// peer (`Tag=peer=<id>`) or message type (`Tag=msg_type=<type>`) that
/// recorded values in that interval. Timestamps are seconds since the
/// `BaseTime` in the header, the time tracing started.
pub struct HdrLog {
    dir: Dir,
    base: SystemTime,
    files: BTreeMap<&'static str, BufWriter<File>>,
    serializer: V2DeflateSerializer,
}

impl HdrLog {
    /// Creates `dir` if needed; files are created when first written
    /// ([`private_fs`](crate::private_fs): 0600, never through a symlink).
    pub fn create(dir: &Path, base: SystemTime) -> Result<Self> {
        let dir = private_fs::create_dir_all(dir)
            .and_then(|()| Dir::open(dir))
            .with_context(|| {
                format!(
                    "cannot create the HdrHistogram log directory {}",
                    dir.display()
                )
            })?;
        Ok(Self {
            dir,
            base,
            files: BTreeMap::new(),
            serializer: V2DeflateSerializer::new(),
        })
    }

    /// Writes one interval histogram of `figure` (a file name stem, e.g.
    /// `processing_cpu_ns`, whose suffix names the unit).
    pub fn write(
        &mut self,
        figure: &'static str,
        tag: Option<&str>,
        hist: &Histogram<u64>,
        start: SystemTime,
        length: Duration,
    ) -> Result<()> {
        let name = format!("{figure}.hlog");
        let path = self.dir.path().join(&name);
        let file = match self.files.entry(figure) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let mut out = BufWriter::new(
                    self.dir
                        .create_file(&name)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                );
                let base = self.base;
                IntervalLogWriterBuilder::new()
                    .add_comment(&format!(
                        "peerlog {}: {figure}; untagged: the whole node, Tag=peer=<id>: one peer, \
                         Tag=msg_type=<type>: one message type",
                        env!("CARGO_PKG_VERSION")
                    ))
                    .with_start_time(base)
                    .with_base_time(base)
                    .begin_log_with(&mut out, &mut self.serializer)
                    .with_context(|| format!("writing {}", path.display()))?;
                // The Java implementation's legend line, which its reader expects.
                out.write_all(
                    b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
                )?;
                e.insert(out)
            }
        };
        let tag = tag
            .map(|t| Tag::new(t).context("histogram tag with a space or comma"))
            .transpose()?;
        let since_base = start.duration_since(self.base).unwrap_or_default();
        // An empty builder writes no header lines: this only borrows the
        // file and serializer for one histogram.
        IntervalLogWriterBuilder::new()
            .begin_log_with(file, &mut self.serializer)
            .and_then(|mut w| {
                w.write_histogram(hist, since_base, length, tag)
                    .map_err(|e| io::Error::other(e.to_string()))
            })
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Flushes every file.
    pub fn flush(&mut self) -> Result<()> {
        for (figure, file) in &mut self.files {
            file.flush()
                .with_context(|| format!("writing {}/{figure}.hlog", self.dir.path().display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{interval_log::IntervalLogIterator, Deserializer};

    #[test]
    fn percentiles_within_one_percent() {
        let mut h = Hist::new(false);
        assert_eq!(h.summary(), HistSummary::default());
        h.record(u64::MAX);
        assert_eq!(h.count(), 1);
        let mut h = Hist::new(false);
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!(s.p50.abs_diff(500_000) <= 5_000, "{s:?}");
        assert!(s.p99.abs_diff(990_000) <= 9_900, "{s:?}");
        assert!(s.max.abs_diff(1_000_000) <= 10_000, "{s:?}");
        assert!(h.interval().is_none());
    }

    #[test]
    fn interval_logs_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = HdrLog::create(dir.path(), base).unwrap();
        let mut h = Hist::new(true);
        for v in [10, 20, 30] {
            h.record(v);
        }
        let start = base + Duration::from_secs(5);
        let len = Duration::from_secs(10);
        log.write("ping_rtt_ns", None, h.interval().unwrap(), start, len)
            .unwrap();
        h.reset_interval();
        h.record(40);
        log.write(
            "ping_rtt_ns",
            Some("peer=3"),
            h.interval().unwrap(),
            start + len,
            len,
        )
        .unwrap();
        log.flush().unwrap();
        assert_eq!(h.count(), 4);

        let text = std::fs::read(dir.path().join("ping_rtt_ns.hlog")).unwrap();
        let mut intervals = Vec::new();
        for item in IntervalLogIterator::new(&text) {
            if let hdrhistogram::serialization::interval_log::LogEntry::Interval(i) = item.unwrap()
            {
                intervals.push((
                    i.tag().map(|t| t.as_str().to_string()),
                    i.start_timestamp(),
                    i.encoded_histogram().to_string(),
                ));
            }
        }
        assert_eq!(intervals.len(), 2);
        assert_eq!(intervals[0].0, None);
        assert_eq!(intervals[1].0.as_deref(), Some("peer=3"));
        assert_eq!(intervals[1].1, Duration::from_secs(15));
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&intervals[1].2)
            .unwrap();
        let back: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back.max(), 40);
    }
}
