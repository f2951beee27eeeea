//! What a trace saw, printed when it ends.

use std::fmt;

use hdrhistogram::Histogram;
use peerlog_common::LossCause;

use crate::{
    clock::WallClock, flamegraph::ProfileReport, formats::capture::RotationStats, stats::Traffic,
};

/// What a trace saw, printed when it ends.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// bitcoind processes traced: 1, plus one per restart `--follow` followed.
    pub attaches: u64,
    /// Peers seen.
    pub peers: usize,
    /// Messages received by the node.
    pub recv: Traffic,
    /// Messages sent by the node.
    pub sent: Traffic,
    /// Capture records written.
    pub records_written: u64,
    /// Capture generations started and deleted (`--capture-rotate`).
    pub capture_rotation: RotationStats,
    /// Events lost in the kernel, by cause.
    pub kernel_losses: Vec<(LossCause, u64)>,
    /// Messages whose payload did not arrive whole.
    pub incomplete_messages: u64,
    /// Records that could not be decoded.
    pub undecodable_records: u64,
    /// Messages of selected peers and types that were in flight when
    /// `setcapture` switched the capture on: the kernel had not copied
    /// their payloads, so they are not in the capture.
    pub capture_started_in_flight: u64,
    /// How long messages took from their tracepoint to being handled here.
    pub event_latency: EventLatency,
    /// Why tracing stopped.
    pub stop_reason: String,
    /// What `--flamegraph` sampled and wrote.
    pub cpu_profile: Option<ProfileReport>,
}

/// Latency of message events from the kernel to userspace: CLOCK_MONOTONIC
/// when peerlog handles a message minus the kernel's timestamp of its
/// tracepoint. It includes the wait in the ring buffer and the decoding of
/// payload chunks, so it shows whether peerlog keeps up with the node.
#[derive(Debug, Clone)]
pub struct EventLatency {
    micros: Histogram<u64>,
}

impl Default for EventLatency {
    fn default() -> Self {
        // Two significant digits: percentiles to 1%, in a 20 KB histogram.
        // A minute is beyond any latency that is not a stall; longer ones
        // are recorded as a minute.
        let micros = Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds");
        Self { micros }
    }
}

impl EventLatency {
    /// Records an event stamped `ktime_ns` (CLOCK_MONOTONIC), handled now.
    pub fn record(&mut self, ktime_ns: u64) {
        let micros = WallClock::monotonic_now_ns().saturating_sub(ktime_ns) / 1000;
        self.micros.saturating_record(micros.max(1));
    }

    /// Events measured.
    pub fn count(&self) -> u64 {
        self.micros.len()
    }

    /// The latency at `quantile` (0.5 for the median), in microseconds.
    pub fn percentile_us(&self, quantile: f64) -> u64 {
        self.micros.value_at_quantile(quantile)
    }
}

impl Summary {
    /// Events the kernel lost for one cause.
    pub fn lost(&self, cause: LossCause) -> u64 {
        self.kernel_losses
            .iter()
            .filter(|(c, _)| *c == cause)
            .map(|(_, n)| n)
            .sum()
    }

    /// Events lost anywhere (kernel counters, incomplete or undecodable
    /// records, messages not captured), each loss once: a payload chunk the
    /// kernel could not write (`ring_full_chunk`, `payload_read_failed`)
    /// makes its message incomplete, and is counted as that message.
    pub fn events_lost(&self) -> u64 {
        self.kernel_losses
            .iter()
            .filter(|(cause, _)| !cause.makes_incomplete_message())
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.incomplete_messages
            + self.undecodable_records
            + self.capture_started_in_flight
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "peerlog: stopped ({})", self.stop_reason)?;
        if self.attaches > 1 {
            writeln!(
                f,
                "  processes traced: {} (--follow: {} restarts)",
                self.attaches,
                self.attaches - 1
            )?;
        }
        writeln!(f, "  peers seen:       {}", self.peers)?;
        writeln!(
            f,
            "  received:         {} messages, {} bytes",
            self.recv.msgs, self.recv.bytes
        )?;
        writeln!(
            f,
            "  sent:             {} messages, {} bytes",
            self.sent.msgs, self.sent.bytes
        )?;
        writeln!(f, "  capture records:  {}", self.records_written)?;
        let rotation = &self.capture_rotation;
        if rotation.generations > 0 {
            writeln!(
                f,
                "  capture generations: {} started, {} deleted by the size cap \
                 (with {} records of this trace)",
                rotation.generations, rotation.generations_deleted, rotation.records_deleted
            )?;
        }
        if self.event_latency.count() > 0 {
            writeln!(
                f,
                "  event latency:    p50 {} µs, p99 {} µs",
                self.event_latency.percentile_us(0.5),
                self.event_latency.percentile_us(0.99)
            )?;
        }
        write!(f, "  events lost:      {}", self.events_lost())?;
        let mut causes: Vec<String> = self
            .kernel_losses
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| format!("{}={n}", c.name()))
            .collect();
        if self.incomplete_messages > 0 {
            causes.push(format!("incomplete_messages={}", self.incomplete_messages));
        }
        if self.undecodable_records > 0 {
            causes.push(format!("undecodable_records={}", self.undecodable_records));
        }
        if self.capture_started_in_flight > 0 {
            causes.push(format!(
                "capture_started_in_flight={}",
                self.capture_started_in_flight
            ));
        }
        if !causes.is_empty() {
            write!(f, " ({})", causes.join(", "))?;
        }
        if let Some(profile) = &self.cpu_profile {
            write!(f, "\n{profile}")?;
        }
        Ok(())
    }
}
