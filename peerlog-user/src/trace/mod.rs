//! `peerlog trace`: load the eBPF programs, attach them to a running
//! bitcoind, and run events through the peer table into the sinks until told
//! to stop, the duration is over, or the target exits.

mod capture_worker;
mod summary;

use std::{
    io::{self, BufWriter},
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use peerlog_common::{ConnectionEventKind, Direction, LossCause};
use tokio::io::unix::AsyncFd;

use capture_worker::CaptureWorker;
pub use summary::{EventLatency, Summary};

use crate::{
    clock::WallClock,
    control::{self, protocol, server::Servers, ControlOptions},
    elf::{debuginfo::DebugInfo, layout::CounterReader},
    event::{Decoder, Event, Message},
    filter::PeerSelector,
    flamegraph::CpuProfile,
    formats::capture::{CaptureLayout, CaptureRecord, RotatingWriter},
    formats::jsonl::JsonlSink,
    kernel::{KernelControl, LossCounters, ProbeOptions, Probes, Sampling},
    stats,
    target::{Capabilities, Target},
};

/// Everything `peerlog trace` can be asked to do.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Process id of bitcoind.
    pub pid: i32,
    /// Root directory of the capture, if capturing.
    pub capture: Option<PathBuf>,
    /// Directory layout of the capture.
    pub capture_layout: CaptureLayout,
    /// Rotation and size cap of the capture.
    pub capture_rotation: crate::rotation::Rotation,
    /// JSON-lines output; `-` is stdout.
    pub jsonl: Option<PathBuf>,
    /// Put payloads (hex) into the JSON lines.
    pub payload_in_jsonl: bool,
    /// Peers to capture and report.
    pub peers: PeerSelector,
    /// Message types to capture and report; empty means all.
    pub msg_types: Vec<String>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_size: u32,
    /// Attach the resource-tracking probes (function timing, mempool and
    /// block tracepoints, on-CPU time).
    pub accounting: bool,
    /// Separate debug file with bitcoind's symbols.
    pub debug_file: Option<PathBuf>,
    /// The reports of the figures: stats log, HdrHistogram logs.
    pub report: stats::ReportOptions,
    /// The control RPC and the metrics endpoint.
    pub control: ControlOptions,
    /// Write CPU flamegraphs (every thread, and per peer) to this directory.
    pub flamegraph: Option<PathBuf>,
    /// CPU samples per second per CPU for the flamegraphs.
    pub sample_rate: u32,
}

/// Runs a trace to its end and returns what it saw.
pub fn run(opts: TraceOptions) -> Result<Summary> {
    yield_to_the_node();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(opts))
}

/// Makes peerlog (this thread and every thread it starts) a `SCHED_BATCH`
/// task: the scheduler then never lets its wake-ups preempt a running
/// thread. Without it, the ring buffer's wake-up after a large message lets
/// peerlog preempt the bitcoind thread that just hit the tracepoint, for as
/// long as peerlog takes to handle the message (milliseconds for 4 MB), on a
/// machine with few free cores. peerlog is a throughput consumer, not a
/// latency-critical one.
fn yield_to_the_node() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on this thread with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        log::debug!(
            "could not switch to SCHED_BATCH: {}",
            io::Error::last_os_error()
        );
    }
}

/// Where a captured message is filed, as the trace loop worked it out.
struct CaptureTarget {
    /// (peer id, connect time in UNIX seconds).
    connection: (i64, u64),
    /// The message's time in UNIX microseconds.
    time_micros: u64,
}

/// Where events go after the peer table.
struct Sinks {
    capture: Option<CaptureWorker>,
    jsonl: Option<JsonlSink>,
    flamegraph: Option<CpuProfile>,
}

/// The state of a running trace: data flows kernel → decoder → peer table →
/// sinks, in [`Tracer::handle`].
struct Tracer {
    clock: WallClock,
    decoder: Decoder,
    selector: PeerSelector,
    msg_types: Vec<String>,
    sinks: Sinks,
    control: KernelControl,
    summary: Summary,
    /// The peer table with the figures of each peer, and their outputs.
    report: stats::Reporter,
    /// Whether the capture is on (`setcapture` switches it).
    capture_enabled: bool,
    /// Whether `--payload` asked for payloads in the JSON lines.
    payload_in_jsonl: bool,
    /// What `getstatus` says of the trace; losses and capture are refreshed per request.
    status: protocol::TraceStatus,
}

impl Tracer {
    fn handle_record(&mut self, record: &[u8], events: &mut Vec<Event>) -> Result<()> {
        if let Err(e) = self.decoder.push(record, events) {
            self.summary.undecodable_records += 1;
            log::warn!("{e}");
        }
        for event in events.drain(..) {
            self.handle(event)?;
        }
        Ok(())
    }

    /// Whether an event attributed to `peer_id` (None: to no peer) is reported.
    fn attributed_selected(&self, peer_id: Option<i64>) -> bool {
        match peer_id {
            Some(id) => self.peer_selected(id),
            None => self.selector.selects_all(),
        }
    }

    /// Whether the peer filter selects the peer; one not seen yet is, as
    /// the kernel treats it.
    fn peer_selected(&self, id: i64) -> bool {
        self.report
            .collector
            .peer(id)
            .is_none_or(|e| e.peer.selected)
    }

    fn msg_type_selected(&self, t: &str) -> bool {
        self.msg_types.is_empty() || self.msg_types.iter().any(|m| m == t)
    }

    /// Applies the peer filter to a peer just named, and tells the kernel to
    /// stop copying the payloads of a peer that is not selected.
    fn select_peer(&mut self, id: i64) {
        let collector = &mut self.report.collector;
        let Some(entry) = collector.peer(id) else {
            return;
        };
        let selected = self.selector.matches(&entry.peer.identity());
        // A new peer starts selected, as the kernel treats it; `setcapture`
        // may select one it had not.
        if collector.set_selected(id, selected) {
            if let Err(e) = self.control.set_peer_payloads(id, selected) {
                // Payloads of this peer keep being copied (or not) as
                // before; what is written still follows the selection.
                log::warn!("could not set the kernel capture policy of peer {id}: {e}");
            }
        }
    }

    /// Answers a control RPC or metrics request.
    fn answer(&mut self, request: protocol::Request, losses: &LossCounters) {
        let result = match request.query {
            protocol::Query::SetCapture(change) => self.set_capture(change),
            protocol::Query::Report(query) => {
                self.status.losses = losses
                    .read()
                    .into_iter()
                    .map(|(cause, n)| (cause.name().to_string(), n))
                    .chain([
                        (
                            "incomplete_messages".into(),
                            self.summary.incomplete_messages,
                        ),
                        (
                            "undecodable_records".into(),
                            self.summary.undecodable_records,
                        ),
                        (
                            "capture_started_in_flight".into(),
                            self.summary.capture_started_in_flight,
                        ),
                    ])
                    .collect();
                self.status.capture = self.capture_state();
                control::answer::answer(&mut self.report, query, &self.status)
            }
        };
        // The client may have gone meanwhile; nobody to tell then.
        let _ = request.reply.send(result);
    }

    fn capture_state(&self) -> protocol::CaptureState {
        protocol::CaptureState {
            enabled: self.capture_enabled,
            directory: self.sinks.capture.as_ref().map(|c| c.root().to_path_buf()),
            jsonl_payloads: self.payload_in_jsonl,
            peers: self
                .selector
                .terms()
                .iter()
                .map(ToString::to_string)
                .collect(),
            msg_types: self.msg_types.clone(),
        }
    }

    /// `setcapture`: switches the capture and changes which peers and
    /// message types it takes, in the kernel and here.
    fn set_capture(
        &mut self,
        change: protocol::CaptureChange,
    ) -> Result<serde_json::Value, protocol::RpcError> {
        let internal = |e: anyhow::Error| protocol::RpcError::internal(format!("{e:#}"));
        let writable = self.sinks.capture.is_some() || self.payload_in_jsonl;
        if change.enabled == Some(true) && !writable {
            return Err(protocol::RpcError::invalid_params(
                "nothing to capture into: start peerlog trace with --capture DIR (or --jsonl PATH --payload)",
            ));
        }
        if let Some(types) = change.msg_types {
            self.control.set_msg_types(&types).map_err(internal)?;
            self.msg_types = types;
        }
        if let Some(terms) = change.peers {
            self.selector = PeerSelector::new(terms);
            let open: Vec<i64> = self
                .report
                .collector
                .peers()
                .iter()
                .filter(|e| !e.peer.closed)
                .map(|e| e.peer.id)
                .collect();
            for id in open {
                self.select_peer(id);
            }
        }
        if let Some(on) = change.enabled {
            self.control.set_copy_payloads(on).map_err(internal)?;
            if let Some(jsonl) = &mut self.sinks.jsonl {
                jsonl.set_payloads(on && self.payload_in_jsonl);
            }
            self.capture_enabled = on;
        }
        serde_json::to_value(self.capture_state()).map_err(|e| internal(e.into()))
    }

    fn handle(&mut self, event: Event) -> Result<()> {
        // The peer table and the figures first: what follows reads them.
        if let Some(named) = self.report.handle(&event) {
            self.select_peer(named);
        }
        let mut report = true;
        let mut capture = None;
        match &event {
            Event::Message(m) => {
                (report, capture) = self.handle_message(m);
            }
            Event::IncompleteMessage(i) => {
                self.summary.incomplete_messages += 1;
                log::warn!(
                    "peer {} {} {} of {} bytes: only {} bytes arrived ({}); not written to the capture",
                    i.message.peer_id,
                    i.message.direction,
                    i.message.msg_type,
                    i.message.payload_size,
                    i.received,
                    i.reason
                );
            }
            Event::Connection(c) => {
                if c.kind == ConnectionEventKind::Closed {
                    let peer = self.report.collector.peer(c.peer_id).map(|e| &e.peer);
                    if let (Some(capture), Some(peer)) = (&mut self.sinks.capture, peer) {
                        capture.close_connection(
                            peer.addr.as_str().into(),
                            (c.peer_id, peer.conntime),
                        );
                    }
                }
                report = self.peer_selected(c.peer_id);
            }
            Event::Misbehaving(m) => report = self.peer_selected(m.peer_id),
            Event::CpuSlice(_) => report = false,
            Event::Mempool(m) => report = self.attributed_selected(m.peer_id),
            Event::BlockConnected(b) => report = self.attributed_selected(b.peer_id),
            Event::CpuSample(sample) => {
                if let Some(profile) = &mut self.sinks.flamegraph {
                    let peer = (sample.context.as_ref())
                        .and_then(|c| self.report.collector.peer(c.peer_id))
                        .map(|e| &e.peer);
                    profile.add(sample.clone(), peer);
                }
                report = false;
            }
        }
        if report {
            if let Some(jsonl) = &mut self.sinks.jsonl {
                jsonl
                    .write(&event, &self.clock)
                    .context("writing JSON lines")?;
            }
        }
        if let (Some(target), Event::Message(m)) = (capture, event) {
            self.capture(m, target);
        }
        Ok(())
    }

    /// Accounts a message. Returns whether it is reported and, if it is
    /// captured, the connection (peer id, connect time) to capture it under
    /// with the message's time in UNIX microseconds.
    fn handle_message(&mut self, m: &Message) -> (bool, Option<CaptureTarget>) {
        self.summary.event_latency.record(m.ktime_ns);
        let time_micros = self.clock.unix_micros(m.ktime_ns);
        let Some(peer) = self.report.collector.peer(m.peer_id).map(|e| &e.peer) else {
            // The collector enters every peer a message names.
            return (false, None);
        };
        if !peer.selected || !self.msg_type_selected(&m.msg_type) {
            return (false, None);
        }
        if !self.capture_enabled || self.sinks.capture.is_none() {
            return (true, None);
        }
        if m.payload.is_none() {
            // Copied (or not) by the kernel before setcapture switched the
            // capture on: say so rather than leave a silent gap.
            self.summary.capture_started_in_flight += 1;
            return (true, None);
        }
        if m.addr.is_empty() {
            // The kernel's record naming the peer was lost (counted there),
            // and no connection event named it: no directory to file it in.
            self.summary.incomplete_messages += 1;
            log::warn!(
                "peer {} {} {}: its address is unknown (the record naming the peer was lost); not written to the capture",
                m.peer_id,
                m.direction,
                m.msg_type
            );
            return (true, None);
        }
        (
            true,
            Some(CaptureTarget {
                connection: (peer.id, peer.conntime),
                time_micros,
            }),
        )
    }

    /// Hands a message to the capture writer; its payload moves, uncopied.
    fn capture(&mut self, m: Message, target: CaptureTarget) {
        let (Some(capture), Some(payload)) = (&mut self.sinks.capture, m.payload) else {
            return;
        };
        let record = CaptureRecord {
            time_micros: target.time_micros,
            msg_type: m.msg_type,
            payload,
        };
        capture.append(
            m.addr,
            target.connection,
            m.direction == Direction::Inbound,
            record,
        );
    }

    /// Hands what this round of events queued to the capture writer.
    fn send_capture(&mut self) -> Result<()> {
        if let Some(capture) = &mut self.sinks.capture {
            capture.send().context("capture stopped")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.send_capture()?;
        if let Some(jsonl) = &mut self.sinks.jsonl {
            jsonl.flush().context("writing JSON lines")?;
        }
        Ok(())
    }
}

/// How often peerlog reads the ring buffer when the kernel does not wake it:
/// the bound on the event latency of a quiet node.
const RING_POLL_INTERVAL: Duration = Duration::from_millis(4);

/// Handles every record in the ring.
fn drain_ring(
    ring: &mut RingBuf<MapData>,
    tracer: &mut Tracer,
    events: &mut Vec<Event>,
) -> Result<()> {
    while let Some(item) = ring.next() {
        tracer.handle_record(&item, events)?;
    }
    tracer.send_capture()
}

/// A descriptor that becomes readable when the target exits.
fn pidfd(pid: i32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel returned this descriptor to us, and AsyncFd owns it
    // from here on, so it stays open while registered.
    unsafe { AsyncFd::register(OwnedFd::from_raw_fd(fd as i32)) }.ok()
}

fn open_sinks(opts: &TraceOptions, target: &Target, debug_info: &DebugInfo) -> Result<Sinks> {
    let capture = match &opts.capture {
        Some(dir) => Some(
            CaptureWorker::start(RotatingWriter::new(
                dir,
                opts.capture_layout,
                opts.capture_rotation,
                crate::rotation::now_secs(),
            )?)
            .context("starting the capture writer")?,
        ),
        None => None,
    };
    let jsonl = match &opts.jsonl {
        Some(path) if path.as_os_str() == "-" => Some(JsonlSink::new(
            Box::new(BufWriter::new(io::stdout())),
            opts.payload_in_jsonl,
        )),
        Some(path) => {
            let file = crate::private_fs::create_file(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            Some(JsonlSink::new(
                Box::new(BufWriter::new(file)),
                opts.payload_in_jsonl,
            ))
        }
        None => None,
    };
    let flamegraph = match &opts.flamegraph {
        Some(dir) => Some(CpuProfile::new(
            target,
            dir,
            opts.sample_rate,
            opts.debug_file.as_deref(),
            debug_info.source.clone(),
        )?),
        None => None,
    };
    Ok(Sinks {
        capture,
        jsonl,
        flamegraph,
    })
}

async fn run_async(opts: TraceOptions) -> Result<Summary> {
    // Handle SIGINT/SIGTERM from the start: whoever sees "attached" may stop
    // us at once, and must get a flushed capture and a summary, not a kill.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Capabilities::current()?.require_tracing()?;
    let target = Target::open(opts.pid)?;
    target.require_net_tracepoints()?;
    // Open the outputs before attaching: a capture directory that cannot be
    // written is an error before anything is traced.
    // Found once for both users: the accounting's CNode layout and the
    // flamegraph's symbols.
    let debug_info = if opts.accounting || opts.flamegraph.is_some() {
        target.debug_info(opts.debug_file.as_deref())?
    } else {
        DebugInfo::default()
    };
    let mut sinks = open_sinks(&opts, &target, &debug_info)?;
    let copy_payloads = opts.capture.is_some() || (opts.jsonl.is_some() && opts.payload_in_jsonl);
    let mut probes = Probes::attach(
        &target,
        &ProbeOptions {
            ring_size: opts.ring_size,
            accounting: opts.accounting,
            debug_info,
            sampling: sinks.flamegraph.as_mut().map(|profile| Sampling {
                rate: opts.sample_rate,
                unwind_tables: profile.take_unwind_tables(),
            }),
        },
    )?;
    let mut control = probes.take_control()?;
    control.set_msg_types(&opts.msg_types)?;
    control.set_copy_payloads(copy_payloads)?;
    if opts.accounting {
        // Statistics read these payloads whether or not the capture takes them.
        control.set_stats_types(&stats::payload::PAYLOAD_TYPES)?;
    }
    let clock = WallClock::sample();
    let ring = probes.take_ring()?;
    // SAFETY: the AsyncFd owns the ring buffer, so its descriptor stays open
    // for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let losses = probes.take_losses()?;
    let report = stats::Reporter::new(
        opts.report.clone(),
        target.pid,
        clock,
        (&probes.attached).into(),
        probes
            .attached
            .cnode_layout
            .map(|layout| CounterReader::new(target.pid as u32, layout)),
    )?;
    // Listening before saying "attached", so whoever waits for that can connect.
    let mut servers = Servers::start(&opts.control, target.pid)?;

    eprintln!(
        "peerlog: attached to {target}: {} probe sites of {} tracepoints ({})",
        probes.sites,
        probes.attached.tracepoints.len(),
        if target.has_semaphores() {
            "semaphores raised by the kernel"
        } else {
            "no semaphores: bitcoind before v29"
        }
    );
    if opts.accounting {
        eprintln!("peerlog: accounting: {}", probes.attached.describe());
    }
    if let (Some(dir), Some(profile)) = (&opts.flamegraph, &mut sinks.flamegraph) {
        profile.sampling_started();
        eprintln!(
            "peerlog: sampling every thread at {} Hz on {} CPUs for flamegraphs in {}",
            opts.sample_rate,
            probes.sampled_cpus(),
            dir.display()
        );
    }

    let mut tracer = Tracer {
        clock,
        decoder: Decoder::new(),
        selector: opts.peers.clone(),
        msg_types: opts.msg_types.clone(),
        sinks,
        control,
        summary: Summary::default(),
        report,
        capture_enabled: copy_payloads,
        payload_in_jsonl: opts.jsonl.is_some() && opts.payload_in_jsonl,
        status: protocol::TraceStatus {
            pid: target.pid,
            exe: target.exe_display.clone(),
            probe_sites: probes.sites,
            losses: Vec::new(),
            capture: protocol::CaptureState::default(),
            rpc_socket: servers.socket().map(PathBuf::from),
            metrics: opts.control.metrics,
        },
    };
    if let Some(socket) = servers.socket() {
        eprintln!("peerlog: control RPC on {}", socket.display());
    }

    let exited = pidfd(target.pid);
    let mut flush_tick = tokio::time::interval(Duration::from_secs(1));
    // The kernel side wakes peerlog only when the ring is filling up (a
    // wake-up per record would cost bitcoind's thread microseconds each):
    // the ring is read on this tick too.
    let mut ring_tick = tokio::time::interval(RING_POLL_INTERVAL);
    ring_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats_on = tracer.report.interval().is_some();
    let stats_period = tracer.report.interval().unwrap_or(Duration::from_secs(1));
    let first_stats = tokio::time::Instant::now()
        .checked_add(stats_period)
        .context("--stats-interval is too long")?;
    let mut stats_tick = tokio::time::interval_at(first_stats, stats_period);
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let target_exit = async {
        match &exited {
            Some(fd) => {
                let _ = fd.readable().await;
            }
            None => loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !target.is_alive() {
                    break;
                }
            },
        }
    };
    tokio::pin!(target_exit);

    let mut events = Vec::new();
    let outcome: Result<String> = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let drained = drain_ring(guard.get_inner_mut(), &mut tracer, &mut events);
                guard.clear_ready();
                if let Err(e) = drained {
                    break Err(e);
                }
            }
            _ = ring_tick.tick() => {
                if let Err(e) = drain_ring(ring.get_mut(), &mut tracer, &mut events) {
                    break Err(e);
                }
            }
            _ = flush_tick.tick() => {
                if let Err(e) = tracer.flush() {
                    break Err(e);
                }
            }
            request = servers.next() => tracer.answer(request, &losses),
            _ = stats_tick.tick(), if stats_on => {
                if let Err(e) = tracer.report.tick() {
                    break Err(e);
                }
            }
            _ = sigint.recv() => break Ok("interrupted".to_string()),
            _ = sigterm.recv() => break Ok("terminated".to_string()),
            _ = &mut deadline => break Ok("duration reached".to_string()),
            _ = &mut target_exit => break Ok(format!("pid {} exited", target.pid)),
        }
    };

    // Detach first so no new records arrive, then take what is still in the
    // ring: those events happened while tracing.
    probes.detach();
    if let Some(profile) = &mut tracer.sinks.flamegraph {
        profile.sampling_stopped();
    }
    let mut drain_result = Ok(());
    if outcome.is_ok() {
        drain_result = drain_ring(ring.get_mut(), &mut tracer, &mut events);
        tracer.decoder.finish(&mut events);
        for event in events.drain(..) {
            tracer.handle(event)?;
        }
    }
    let mut flush_result = tracer.flush();
    if let Some(capture) = tracer.sinks.capture.take() {
        let ((stats, rotation), written) = capture.finish();
        // What reached the files, not what was handed over.
        tracer.summary.records_written = stats.records_written;
        tracer.summary.capture_rotation = rotation;
        flush_result = flush_result.and(written.context("capture stopped"));
    }
    let report_result = tracer.report.finish();

    let collector = &tracer.report.collector;
    tracer.summary.peers = collector.peers().seen();
    (tracer.summary.recv, tracer.summary.sent) = (collector.total().recv, collector.total().sent);
    tracer.summary.kernel_losses = losses.read();
    let profile_result = match tracer.sinks.flamegraph.take() {
        Some(profile) => profile
            .finish(tracer.summary.lost(LossCause::RingFullSample))
            .map(|report| tracer.summary.cpu_profile = Some(report)),
        None => Ok(()),
    };
    match outcome {
        Ok(reason) => {
            drain_result?;
            flush_result?;
            report_result?;
            profile_result?;
            tracer.summary.stop_reason = reason;
            Ok(tracer.summary)
        }
        Err(e) => {
            tracer.summary.stop_reason = format!("error: {e:#}");
            eprintln!("{}", tracer.summary);
            Err(e)
        }
    }
}
