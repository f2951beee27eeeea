//! The periodic outputs of the figures: the stats log (`--stats-log`) and
//! the HdrHistogram interval logs (`--hdr-log`), their options, and the
//! `b-msghand` thread's own CPU time.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::output::{HdrLogOut, StatsLogOut};
use super::{msg_type_key, Collector, Coverage, StatsFilter, OTHER};
use crate::{
    clock::WallClock,
    elf::layout::CounterReader,
    event::Event,
    peers::{ReportSink, ReportSinks},
    rotation::Rotation,
};

/// What the reports of the figures were asked to do.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Stats log path (`-`: stdout).
    pub stats_log: Option<PathBuf>,
    /// Between stats log lines and HdrHistogram intervals.
    pub interval: Duration,
    /// HdrHistogram interval log directory.
    pub hdr_log: Option<PathBuf>,
    /// Whether a Prometheus endpoint is scraped: closed peers then wait
    /// for one more scrape.
    pub metrics: bool,
    /// Which peers get series of their own in the metrics.
    pub series: super::PeerSeries,
    /// Peers and message types the stats log and metrics show.
    pub filter: StatsFilter,
    /// Rotation and size cap of the stats log and of the HdrHistogram
    /// logs (each capped on its own).
    pub rotation: Rotation,
    /// Write the stats log compactly ([`super::compact`]).
    pub compact: bool,
}

/// Checks message types given to a statistics filter: Bitcoin Core's, or `*other*`.
pub fn check_msg_types(types: &[String]) -> Result<()> {
    for t in types {
        if msg_type_key(t) == OTHER && t != OTHER {
            bail!(
                "{t:?} is not one of Bitcoin Core's message types; statistics count every \
                 other type as {OTHER:?}"
            );
        }
    }
    Ok(())
}

/// The `b-msghand` thread's on-CPU time as the kernel counts it
/// (`/proc/PID/task/TID/schedstat`), to check the per-peer figures against.
#[derive(Debug, Clone, Copy)]
struct ThreadBaseline {
    tid: u32,
    cpu_ns_at_start: u64,
    /// CPU time attributed to peers before this process was traced (the
    /// processes `--follow` traced before).
    attributed_at_start: u64,
}

/// The thread of `pid` named `name` (`/proc/PID/task/*/comm`), if exactly one.
pub fn find_thread(pid: i32, name: &str) -> Option<u32> {
    let mut found = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let entry = entry.ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            if found.is_some() {
                return None;
            }
            found = entry.file_name().to_str()?.parse().ok();
        }
    }
    found
}

/// Nanoseconds thread `tid` of `pid` has run on a CPU (schedstat's first field).
pub fn thread_cpu_ns(pid: i32, tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The collector and the outputs that report it periodically.
pub struct Reporter {
    /// The figures.
    pub collector: Collector,
    options: ReportOptions,
    /// The bitcoind process traced now; None while `--follow` waits.
    pid: Option<i32>,
    started: SystemTime,
    interval_started: SystemTime,
    stats_log: Option<StatsLogOut>,
    hdr_log: Option<HdrLogOut>,
    msghand: Option<ThreadBaseline>,
}

impl Reporter {
    /// Opens the outputs for a trace that starts now; its first process
    /// comes with [`Reporter::attach`].
    pub fn new(options: ReportOptions, clock: WallClock) -> Result<Self> {
        let started = SystemTime::now();
        let stats_log = options
            .stats_log
            .as_deref()
            .map(|path| StatsLogOut::open(path, options.rotation, options.compact, started))
            .transpose()?;
        let hdr_log = options
            .hdr_log
            .as_deref()
            .map(|dir| HdrLogOut::open(dir, options.rotation, started))
            .transpose()?;
        let mut sinks = ReportSinks::default();
        if stats_log.is_some() {
            sinks = sinks.with(ReportSink::StatsLog);
        }
        if options.metrics {
            sinks = sinks.with(ReportSink::Metrics);
        }
        Ok(Self {
            collector: Collector::new(clock, Coverage::default(), hdr_log.is_some(), sinks),
            options,
            pid: None,
            started,
            interval_started: started,
            stats_log,
            hdr_log,
            msghand: None,
        })
    }

    /// Starts on bitcoind process `pid` with the coverage of its probes;
    /// `counters` reads its per-connection byte counters, when its `CNode`
    /// layout is known (see [`Collector::attach_process`]).
    pub fn attach(&mut self, pid: i32, coverage: Coverage, counters: Option<CounterReader>) {
        self.collector
            .attach_process(pid as u32, coverage, counters);
        let attributed_at_start = self.collector.total().msghand_cpu_ns();
        self.msghand = find_thread(pid, "b-msghand").and_then(|tid| {
            Some(ThreadBaseline {
                tid,
                cpu_ns_at_start: thread_cpu_ns(pid, tid)?,
                attributed_at_start,
            })
        });
        self.pid = Some(pid);
    }

    /// The traced process exited (see [`Collector::detach_process`]).
    pub fn detach(&mut self) {
        self.collector.detach_process();
        self.msghand = None;
        self.pid = None;
    }

    /// Accounts one event; returns the peer it named, if any (see
    /// [`Collector::handle`]).
    pub fn handle(&mut self, event: &Event) -> Option<i64> {
        self.collector.handle(event)
    }

    /// How often [`Reporter::tick`] wants to run; None when no periodic output is on.
    pub fn interval(&self) -> Option<Duration> {
        (self.stats_log.is_some() || self.hdr_log.is_some()).then_some(self.options.interval)
    }

    /// The options.
    pub fn options(&self) -> &ReportOptions {
        &self.options
    }

    /// When tracing started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// The `b-msghand` thread's CPU time since tracing started next to what
    /// peerlog attributed to peers in CPU slices; null when the thread is not
    /// found by name.
    pub fn msghand_json(&self) -> Value {
        let (Some(base), Some(pid)) = (self.msghand, self.pid) else {
            return Value::Null;
        };
        let thread_ns =
            thread_cpu_ns(pid, base.tid).map(|now| now.saturating_sub(base.cpu_ns_at_start));
        let total = self.collector.total();
        let attributed = total
            .msghand_cpu_ns()
            .saturating_sub(base.attributed_at_start);
        json!({
            "tid": base.tid,
            "thread_cpu_ns": thread_ns,
            "attributed_cpu_ns": attributed,
            "covered_share": thread_ns.filter(|&t| t > 0).map(|t| attributed as f64 / t as f64),
        })
    }

    /// Writes the periodic outputs: a stats log line and an HdrHistogram interval.
    pub fn tick(&mut self) -> Result<()> {
        let now = SystemTime::now();
        if self.stats_log.is_some() {
            self.write_stats_line(now)?;
        }
        if let Some(out) = &mut self.hdr_log {
            let start = self.interval_started;
            let length = now.duration_since(start).unwrap_or_default();
            let log = out.at(now)?;
            for (figure, tag, hist) in self.collector.interval_hists() {
                if let Some(h) = hist.interval() {
                    log.write(figure, tag.as_deref(), h, start, length)?;
                }
                hist.reset_interval();
            }
            out.flush()?;
        }
        self.interval_started = now;
        Ok(())
    }

    /// Writes the last periodic outputs when tracing stops.
    pub fn finish(&mut self) -> Result<()> {
        if self.interval().is_some() {
            self.tick()?;
        }
        Ok(())
    }

    fn write_stats_line(&mut self, now: SystemTime) -> Result<()> {
        let readings = self.collector.read_node();
        let filter = &self.options.filter;
        let c = &self.collector;
        let peers: Vec<Value> = c
            .peers()
            .iter()
            .filter(|e| e.peer.due(ReportSink::StatsLog) && filter.shows_peer(&e.peer))
            .map(|e| c.peer_json(e, filter, &readings))
            .collect();
        let line = json!({
            "time_us": now.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64,
            "uptime_s": now.duration_since(self.started).unwrap_or_default().as_secs_f64(),
            "missing_figures": c.coverage().missing_figures(),
            "node": c.node_json(filter, &readings),
            "msghand_thread": self.msghand_json(),
            "peers": peers,
        });
        let out = self.stats_log.as_mut().expect("checked by the caller");
        out.write_line(line, now)?;
        self.collector.reported(ReportSink::StatsLog);
        Ok(())
    }
}
