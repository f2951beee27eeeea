//! The plan: the scenarios (load shapes), the configurations (what traces
//! the node), how many rounds and how long each run's window.

use std::time::Duration;

/// What is run, how often and how long.
pub(super) struct Plan {
    pub(super) rounds: usize,
    pub(super) duration: Duration,
    pub(super) scenarios: Vec<Scenario>,
}

impl Plan {
    /// The full plan, or with `smoke` one short round of it.
    pub(super) fn new(smoke: bool) -> Plan {
        let scenarios = vec![
            Scenario {
                name: "ping-flood",
                title: "8 peers, ping flood",
                peers: 8,
                mix: "ping-flood",
                in_flight: 8,
                block_size: None,
            },
            Scenario {
                name: "relay",
                title: "32 peers, tx relay (inv → getdata → tx)",
                peers: 32,
                mix: "relay",
                in_flight: 4,
                block_size: None,
            },
            Scenario {
                name: "blocks",
                title: "4 peers, ~1 MB block serving",
                peers: 4,
                mix: "blocks",
                in_flight: 2,
                block_size: Some(1_000_000),
            },
            Scenario {
                name: "idle",
                title: "125 idle peers, a ping a second each",
                peers: 125,
                mix: "idle",
                in_flight: 8,
                block_size: None,
            },
        ];
        // The full plan: 4 scenarios × 10 configurations × 3 rounds × (5 s
        // + ~1.7 s of set-up) ≈ 13 minutes on two cores, the most a node
        // kind's bench may take; against a bitcoind the block scenario is
        // skipped, ≈ 10 minutes. Fewer rounds would leave
        // no median worth the name, shorter windows too few ticks of CPU
        // time (10 ms each) for the idle scenario's 1-point target.
        let (rounds, duration) = if smoke {
            (1, Duration::from_secs(1))
        } else {
            (3, Duration::from_secs(5))
        };
        Plan {
            rounds,
            duration,
            scenarios,
        }
    }
}

/// One load shape.
pub(super) struct Scenario {
    pub(super) name: &'static str,
    pub(super) title: &'static str,
    pub(super) peers: usize,
    pub(super) mix: &'static str,
    pub(super) in_flight: usize,
    /// Serve blocks of about this size (the twin's `-blocksize`) and request
    /// only those.
    pub(super) block_size: Option<usize>,
}

impl Scenario {
    /// Closed-loop scenarios run as fast as the node answers, so their
    /// throughput shows what tracing costs; the idle one runs at a fixed rate.
    pub(super) fn saturating(&self) -> bool {
        self.mix != "idle"
    }
}

/// The configurations, in the order of the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Config {
    Untraced,
    /// bpftrace with empty actions on the two message tracepoints: the cost
    /// of a uprobe on every message and nothing else, which no tracer of
    /// those tracepoints can go below (issue 12).
    Floor,
    /// `--no-accounting`: the net:* tracepoints only, what the bpftrace
    /// reference traces.
    Counting,
    /// `peerlog trace --pid PID` and nothing else: what a user running it
    /// plainly costs the node, per-peer accounting included (issue 10).
    Defaults,
    Capture,
    CaptureStats,
    Bpftrace,
    /// Counting plus 99 Hz CPU sampling: what sampling alone costs the node
    /// (issue 4), next to `Counting`.
    Sampling,
    /// The defaults plus 99 Hz CPU sampling: per-peer flamegraphs, which need
    /// the accounting to split samples by peer. What the sampler costs the
    /// node in the configuration it is used in (issue 10: the bench states
    /// what a feature the user opts into costs).
    PeerFlamegraphs,
    /// Defaults plus a stats log line every second: each line reads every
    /// peer's byte counters and queues out of bitcoind's memory, from
    /// peerlog's process. Next to `Defaults`, what those reads cost the node
    /// (issue 14).
    MemoryReads,
}

impl Config {
    /// Every configuration, in order.
    pub(super) const ALL: [Config; 10] = [
        Config::Untraced,
        Config::Floor,
        Config::Counting,
        Config::Defaults,
        Config::Capture,
        Config::CaptureStats,
        Config::Bpftrace,
        Config::Sampling,
        Config::PeerFlamegraphs,
        Config::MemoryReads,
    ];

    /// Its name in the results and the runs' directories.
    pub(super) fn name(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Floor => "floor",
            Config::Counting => "peerlog-count",
            Config::Defaults => "peerlog-defaults",
            Config::Capture => "peerlog-capture",
            Config::CaptureStats => "peerlog-capture-stats",
            Config::Bpftrace => "bpftrace",
            Config::Sampling => "peerlog-count-sampling",
            Config::PeerFlamegraphs => "peerlog-defaults-sampling",
            Config::MemoryReads => "peerlog-stats-1s",
        }
    }

    /// Configurations run by `peerlog trace`.
    pub(super) fn is_peerlog(self) -> bool {
        matches!(
            self,
            Config::Counting
                | Config::Defaults
                | Config::Capture
                | Config::CaptureStats
                | Config::Sampling
                | Config::PeerFlamegraphs
                | Config::MemoryReads
        )
    }

    /// Configurations that sample CPUs, whose runs switch the kernel's BPF
    /// statistics on to time the sampling program.
    pub(super) fn samples_cpus(self) -> bool {
        matches!(self, Config::Sampling | Config::PeerFlamegraphs)
    }

    /// Configurations whose runs watch the node's mm lock: the memory
    /// reads, and the defaults they are compared with.
    pub(super) fn watches_mm_lock(self) -> bool {
        matches!(self, Config::Defaults | Config::MemoryReads)
    }

    /// Configurations run by bpftrace, which the smoke run tolerates failing.
    pub(super) fn is_bpftrace(self) -> bool {
        matches!(self, Config::Floor | Config::Bpftrace)
    }
}
