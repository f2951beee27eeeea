//! `peerlog trace`: load the eBPF programs, attach them to a running
//! bitcoind, and run events through the peer table into the sinks until told
//! to stop, the duration is over, or the target exits.
//!
//! What lives for the whole trace (the sinks, the figures and their
//! reports, the control servers, the summary) is the [`Tracer`]; what lives
//! for one bitcoind process (its executable's probes, the kernel programs
//! attached to them, their ring buffer, switches and loss counters) is an
//! [`Attachment`]. Without `--follow` a trace has one attachment; with it,
//! one after the other, the trace waiting in between for the pid file to
//! name the next process.

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
    messages::TargetError,
    node::{
        find::{Found, Locator, Process},
        Capabilities, Target,
    },
    stats,
};

/// Everything `peerlog trace` can be asked to do.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// How to find bitcoind.
    pub locator: Locator,
    /// When bitcoind exits, wait for the next one and attach to it.
    pub follow: bool,
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
    decoder: Decoder,
    selector: PeerSelector,
    msg_types: Vec<String>,
    sinks: Sinks,
    /// The kernel's switches of the process traced now; None while waiting
    /// for the next one (`setcapture` then only changes what the next
    /// attachment starts with).
    control: Option<KernelControl>,
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
    /// Samples the wall clock's offset anew, for the records read next, so
    /// that their times follow the wall clock as bitcoind's own stamps do.
    /// An offset sampled once at the start put every record after a step of
    /// the wall clock (NTP, a virtual machine resumed) off by the step; now
    /// only the records written before a step and read after it are, a few
    /// milliseconds' worth.
    fn sample_clock(&mut self) {
        self.report.collector.set_clock(WallClock::sample());
    }

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
            let Some(control) = &mut self.control else {
                return;
            };
            if let Err(e) = control.set_peer_payloads(id, selected) {
                // Payloads of this peer keep being copied (or not) as
                // before; what is written still follows the selection.
                log::warn!("could not set the kernel capture policy of peer {id}: {e}");
            }
        }
    }

    /// Answers a control RPC or metrics request; `losses` are the kernel's
    /// counters of the process traced now, if any.
    fn answer(&mut self, request: protocol::Request, losses: Option<&LossCounters>) {
        let result = match request.query {
            protocol::Query::SetCapture(change) => self.set_capture(change),
            protocol::Query::Report(query) => {
                let mut kernel = self.summary.kernel_losses.clone();
                if let Some(losses) = losses {
                    add_losses(&mut kernel, losses.read());
                }
                self.status.losses = kernel
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
            if let Some(control) = &mut self.control {
                control.set_msg_types(&types).map_err(internal)?;
            }
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
            if let Some(control) = &mut self.control {
                control.set_copy_payloads(on).map_err(internal)?;
            }
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
                    .write(&event, self.report.collector.clock())
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
        let time_micros = self.report.collector.clock().unix_micros(m.ktime_ns);
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

/// How often `--follow` reads the pid file while it waits for the next
/// bitcoind.
const PID_FILE_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Adds loss counts to `into`, cause by cause.
fn add_losses(into: &mut Vec<(LossCause, u64)>, more: Vec<(LossCause, u64)>) {
    for (cause, n) in more {
        match into.iter_mut().find(|(c, _)| *c == cause) {
            Some((_, sum)) => *sum += n,
            None => into.push((cause, n)),
        }
    }
}

/// Handles every record in the ring.
fn drain_ring(
    ring: &mut RingBuf<MapData>,
    tracer: &mut Tracer,
    events: &mut Vec<Event>,
) -> Result<()> {
    tracer.sample_clock();
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

/// Opens the outputs; `target` is the first process, when it is known
/// before the trace starts (always, but with `--follow`).
fn open_sinks(
    opts: &TraceOptions,
    target: Option<&Target>,
    debug_info: &DebugInfo,
) -> Result<Sinks> {
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
            // The command line refuses --flamegraph with --follow.
            target.context("--flamegraph profiles one process, found before tracing starts")?,
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

/// Reads the executable of process `pid`, its probes and, when the
/// options need it, its debug information: anew for every process, since
/// the binary may have been upgraded between two.
fn open_target(pid: i32, opts: &TraceOptions) -> Result<(Target, DebugInfo)> {
    let target = Target::open(pid)?;
    target.require_net_tracepoints()?;
    // Found once for both users: the accounting's CNode layout and the
    // flamegraph's symbols.
    let debug_info = if opts.accounting || opts.flamegraph.is_some() {
        target.debug_info(opts.debug_file.as_deref())?
    } else {
        DebugInfo::default()
    };
    Ok((target, debug_info))
}

/// The kernel side of one bitcoind process: the probes attached to its
/// executable and what peerlog reads from them.
struct Attachment {
    target: Target,
    probes: Probes,
    ring: AsyncFd<RingBuf<MapData>>,
    losses: LossCounters,
    /// Readable once the process exited; None where pidfd_open is missing.
    exited: Option<AsyncFd<OwnedFd>>,
}

impl Attachment {
    /// Attaches the kernel programs to `target`'s probes, switched as the
    /// tracer's settings are now, and points the figures at the process.
    fn attach(
        target: Target,
        debug_info: DebugInfo,
        opts: &TraceOptions,
        tracer: &mut Tracer,
    ) -> Result<Self> {
        let mut probes = Probes::attach(
            &target,
            &ProbeOptions {
                ring_size: opts.ring_size,
                accounting: opts.accounting,
                debug_info,
                sampling: tracer.sinks.flamegraph.as_mut().map(|profile| Sampling {
                    rate: opts.sample_rate,
                    unwind_tables: profile.take_unwind_tables(),
                }),
            },
        )?;
        let mut control = probes.take_control()?;
        control.set_msg_types(&tracer.msg_types)?;
        control.set_copy_payloads(tracer.capture_enabled)?;
        if opts.accounting {
            // Statistics read these payloads whether or not the capture takes them.
            control.set_stats_types(&stats::payload::PAYLOAD_TYPES)?;
        }
        let ring = probes.take_ring()?;
        // SAFETY: the AsyncFd owns the ring buffer, so its descriptor stays
        // open for as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
        let losses = probes.take_losses()?;
        tracer.report.attach(
            target.pid,
            (&probes.attached).into(),
            probes
                .attached
                .cnode_layout
                .map(|layout| CounterReader::new(target.pid as u32, layout)),
        );
        tracer.control = Some(control);
        tracer.decoder = Decoder::new();
        tracer.status.attached = Some(protocol::AttachedStatus {
            pid: target.pid,
            exe: target.exe_display.clone(),
            probe_sites: probes.sites,
        });
        let exited = pidfd(target.pid);
        Ok(Self {
            target,
            probes,
            ring,
            losses,
            exited,
        })
    }

    /// Says on stderr what is attached; whoever waits for "attached" may
    /// connect to the control socket from then on.
    fn announce(&mut self, opts: &TraceOptions, tracer: &mut Tracer) {
        eprintln!(
            "peerlog: attached to {}: {} probe sites of {} tracepoints ({})",
            self.target,
            self.probes.sites,
            self.probes.attached.tracepoints.len(),
            if self.target.has_semaphores() {
                "semaphores raised by the kernel"
            } else {
                "no semaphores: bitcoind before v29"
            }
        );
        if opts.accounting {
            eprintln!("peerlog: accounting: {}", self.probes.attached.describe());
        }
        if let (Some(dir), Some(profile)) = (&opts.flamegraph, &mut tracer.sinks.flamegraph) {
            profile.sampling_started();
            eprintln!(
                "peerlog: sampling every thread at {} Hz on {} CPUs for flamegraphs in {}",
                opts.sample_rate,
                self.probes.sampled_cpus(),
                dir.display()
            );
        }
    }

    /// Traces the process until it exits or the trace must stop.
    async fn run(&mut self, tracer: &mut Tracer, life: &mut Lifelong) -> Result<Stop> {
        let pid = self.target.pid;
        let (target, ring, losses) = (&self.target, &mut self.ring, &self.losses);
        // The kernel side wakes peerlog only when the ring is filling up (a
        // wake-up per record would cost bitcoind's thread microseconds each):
        // the ring is read on this tick too.
        let mut ring_tick = tokio::time::interval(RING_POLL_INTERVAL);
        ring_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let target_exit = async {
            match &self.exited {
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
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let drained = drain_ring(guard.get_inner_mut(), tracer, &mut events);
                    guard.clear_ready();
                    drained?;
                }
                _ = ring_tick.tick() => drain_ring(ring.get_mut(), tracer, &mut events)?,
                chore = life.next() => {
                    // The ring is read on a tick, so it may still hold what
                    // the node did before the chore came: take that first.
                    // Else a `setcapture` that switches the capture off
                    // drops messages sent while it was on, and an answer or
                    // a stats line misses what had already happened.
                    drain_ring(ring.get_mut(), tracer, &mut events)?;
                    if let Some(reason) = tracer.chore(chore, Some(losses))? {
                        return Ok(Stop::End(reason));
                    }
                }
                _ = &mut target_exit => return Ok(Stop::Exited(format!("pid {pid} exited"))),
            }
        }
    }

    /// Detaches the probes, then (when `drain`, not after an error) takes
    /// what is still in the ring: those events happened while tracing. The
    /// kernel's losses go into the summary.
    fn close(mut self, tracer: &mut Tracer, drain: bool) -> Result<()> {
        self.probes.detach();
        if let Some(profile) = &mut tracer.sinks.flamegraph {
            // Read after the detach, so that no sample is still running.
            let cost = self.probes.sampler_cost().unwrap_or_else(|e| {
                log::warn!("reading what the CPU samples cost: {e:#}");
                Default::default()
            });
            profile.sampling_stopped(cost);
        }
        let mut result = Ok(());
        if drain {
            let mut events = Vec::new();
            result = drain_ring(self.ring.get_mut(), tracer, &mut events);
            // The samples each CPU still held: taken while tracing, too.
            match self.probes.sample_batches() {
                Ok(batches) => {
                    for batch in batches {
                        result = result.and_then(|()| tracer.handle_record(&batch, &mut events));
                    }
                }
                Err(e) => log::warn!("reading the CPU samples not yet sent: {e:#}"),
            }
            tracer.decoder.finish(&mut events);
            for event in events.drain(..) {
                result = result.and_then(|()| tracer.handle(event));
            }
        }
        add_losses(&mut tracer.summary.kernel_losses, self.losses.read());
        tracer.control = None;
        tracer.status.attached = None;
        result
    }
}

/// Why tracing a process ended.
enum Stop {
    /// The trace ends, for this reason.
    End(String),
    /// The process exited; the reason, in words.
    Exited(String),
}

/// Work that comes whether or not a process is traced.
enum Chore {
    /// A control RPC or metrics request.
    Request(protocol::Request),
    /// Time to flush the outputs.
    Flush,
    /// Time for the periodic reports.
    Report,
    /// The trace must end, for this reason.
    End(&'static str),
}

/// What lives for the whole trace besides the tracer: the signals, the
/// control servers, the ticks of the periodic work, the deadline.
struct Lifelong {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    servers: Servers,
    flush_tick: tokio::time::Interval,
    stats_tick: Option<tokio::time::Interval>,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Lifelong {
    /// The next chore. Every branch is cancel-safe: it runs inside the
    /// `select!` of a process traced or waited for.
    async fn next(&mut self) -> Chore {
        let stats = async {
            match &mut self.stats_tick {
                Some(tick) => tick.tick().await,
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            match &mut self.deadline {
                Some(sleep) => sleep.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = self.servers.next() => Chore::Request(request),
            _ = self.flush_tick.tick() => Chore::Flush,
            _ = stats => Chore::Report,
            _ = self.sigint.recv() => Chore::End("interrupted"),
            _ = self.sigterm.recv() => Chore::End("terminated"),
            _ = deadline => Chore::End("duration reached"),
        }
    }
}

impl Tracer {
    /// Does a chore; returns the reason when the trace must end.
    fn chore(&mut self, chore: Chore, losses: Option<&LossCounters>) -> Result<Option<String>> {
        match chore {
            Chore::Request(request) => self.answer(request, losses),
            Chore::Flush => self.flush()?,
            Chore::Report => self.report.tick()?,
            Chore::End(reason) => return Ok(Some(reason.to_string())),
        }
        Ok(None)
    }

    /// The traced process exited and `--follow` waits for the next: the
    /// capture files of its connections are closed, its peers closed with
    /// their final figures, and the periodic outputs report them so.
    fn process_gone(&mut self) -> Result<()> {
        if let Some(capture) = &mut self.sinks.capture {
            for e in self.report.collector.peers().iter() {
                if !e.peer.closed && !e.peer.addr.is_empty() {
                    capture.close_connection(
                        e.peer.addr.as_str().into(),
                        (e.peer.id, e.peer.conntime),
                    );
                }
            }
        }
        self.report.detach();
        self.flush()?;
        if self.report.interval().is_some() {
            self.report.tick()?;
        }
        Ok(())
    }

    /// Waits, doing the chores, until `locator` finds a process other than
    /// `gone` (the one that exited). Ok(Err(reason)) when the trace must end.
    async fn wait_for_process(
        &mut self,
        life: &mut Lifelong,
        locator: &Locator,
        gone: Option<Process>,
    ) -> Result<Result<Process, String>> {
        let mut poll = tokio::time::interval(PID_FILE_POLL_INTERVAL);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if let Found::Process(p) = locator.find()? {
                        if Some(p) != gone {
                            return Ok(Ok(p));
                        }
                    }
                }
                chore = life.next() => {
                    if let Some(reason) = self.chore(chore, None)? {
                        return Ok(Err(reason));
                    }
                }
            }
        }
    }
}

/// Where `--follow` waits for the next bitcoind, in words.
fn waiting_for(locator: &Locator) -> String {
    match locator {
        // Which chain's pid file it will be is not known until one appears.
        Locator::Datadir { dir, chain: None } => format!(
            "a bitcoind.pid in {} or its chain directories to name a new bitcoind",
            dir.display()
        ),
        _ => match locator.pid_file() {
            Ok(Some(path)) => format!("{} to name a new bitcoind", path.display()),
            _ => "a new bitcoind".into(),
        },
    }
}

async fn run_async(opts: TraceOptions) -> Result<Summary> {
    // Handle SIGINT/SIGTERM from the start: whoever sees "attached" may stop
    // us at once, and must get a flushed capture and a summary, not a kill.
    let sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Capabilities::current()?.require_tracing()?;
    // Without --follow the process must run now; with it, the trace may
    // start by waiting for one.
    let mut next = match opts.locator.find()? {
        Found::Process(p) => Some(p),
        Found::NotRunning(why) if opts.follow => {
            eprintln!(
                "peerlog: no bitcoind yet ({why}); waiting for {}",
                waiting_for(&opts.locator)
            );
            None
        }
        Found::NotRunning(why) => {
            return Err(TargetError(format!("{why}; is bitcoind running?")).into())
        }
    };
    // The first process's probes are read before any output opens: a
    // target that cannot be traced is an error before anything is written.
    let mut first = match next {
        Some(p) => Some(open_target(p.pid, &opts)?),
        None => None,
    };
    // Open the outputs before attaching: a capture directory that cannot be
    // written is an error before anything is traced.
    let sinks = open_sinks(
        &opts,
        first.as_ref().map(|(target, _)| target),
        first
            .as_ref()
            .map_or(&DebugInfo::default(), |(_, debug_info)| debug_info),
    )?;
    let copy_payloads = opts.capture.is_some() || (opts.jsonl.is_some() && opts.payload_in_jsonl);
    let report = stats::Reporter::new(opts.report.clone(), WallClock::sample())?;
    // Listening before saying "attached", so whoever waits for that can
    // connect. With --follow the socket outlives every bitcoind pid.
    let default_socket = match (&first, opts.follow) {
        (Some((target, _)), false) => protocol::default_socket(target.pid),
        _ => protocol::follow_socket(std::process::id()),
    };
    let servers = Servers::start(&opts.control, default_socket)?;
    let mut tracer = Tracer {
        decoder: Decoder::new(),
        selector: opts.peers.clone(),
        msg_types: opts.msg_types.clone(),
        sinks,
        control: None,
        summary: Summary {
            // Every cause from the start, zeros included, even while no
            // process was attached yet; each attachment adds its counts.
            kernel_losses: LossCause::ALL.iter().map(|&cause| (cause, 0)).collect(),
            ..Summary::default()
        },
        report,
        capture_enabled: copy_payloads,
        payload_in_jsonl: opts.jsonl.is_some() && opts.payload_in_jsonl,
        status: protocol::TraceStatus {
            attached: None,
            losses: Vec::new(),
            capture: protocol::CaptureState::default(),
            rpc_socket: servers.socket().map(PathBuf::from),
            metrics: opts.control.metrics,
        },
    };
    let stats_tick = match tracer.report.interval() {
        Some(period) => {
            let first_tick = tokio::time::Instant::now()
                .checked_add(period)
                .context("--stats-interval is too long")?;
            let mut tick = tokio::time::interval_at(first_tick, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some(tick)
        }
        None => None,
    };
    let mut life = Lifelong {
        sigint,
        sigterm,
        servers,
        flush_tick: tokio::time::interval(Duration::from_secs(1)),
        stats_tick,
        deadline: opts.duration.map(|d| Box::pin(tokio::time::sleep(d))),
    };
    if let Some(socket) = life.servers.socket() {
        eprintln!("peerlog: control RPC on {}", socket.display());
    }

    let outcome: Result<String> = loop {
        let process = match next.take() {
            Some(p) => p,
            None => match tracer
                .wait_for_process(&mut life, &opts.locator, None)
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(reason)) => break Ok(reason),
                Err(e) => break Err(e),
            },
        };
        let opened = match first.take() {
            Some(opened) => Ok(opened),
            None => open_target(process.pid, &opts),
        };
        let attached = opened.and_then(|(target, debug_info)| {
            Attachment::attach(target, debug_info, &opts, &mut tracer)
        });
        let mut attachment = match attached {
            Ok(a) => a,
            // The process named went before peerlog could attach: wait for the next.
            Err(e) if opts.follow && Process::running(process.pid) != Some(process) => {
                eprintln!(
                    "peerlog: pid {} exited before attaching ({e:#}); waiting for {}",
                    process.pid,
                    waiting_for(&opts.locator)
                );
                next = None;
                continue;
            }
            // Nothing traced yet: the error alone says it, without a summary.
            Err(e) if tracer.report.collector.attaches() == 0 => return Err(e),
            Err(e) => break Err(e),
        };
        attachment.announce(&opts, &mut tracer);
        let stop = attachment.run(&mut tracer, &mut life).await;
        let closed = attachment.close(&mut tracer, stop.is_ok());
        match stop {
            Ok(Stop::Exited(why)) if opts.follow => {
                if let Err(e) = closed.and_then(|()| tracer.process_gone()) {
                    break Err(e);
                }
                eprintln!("peerlog: {why}; waiting for {}", waiting_for(&opts.locator));
                match tracer
                    .wait_for_process(&mut life, &opts.locator, Some(process))
                    .await
                {
                    Ok(Ok(p)) => next = Some(p),
                    Ok(Err(reason)) => break Ok(reason),
                    Err(e) => break Err(e),
                }
            }
            Ok(Stop::End(reason) | Stop::Exited(reason)) => break closed.map(|()| reason),
            Err(e) => break Err(e),
        }
    };
    finish(tracer, outcome)
}

/// Ends the trace: the last of the capture and the reports, the summary.
fn finish(mut tracer: Tracer, outcome: Result<String>) -> Result<Summary> {
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
    tracer.summary.attaches = collector.attaches();
    (tracer.summary.recv, tracer.summary.sent) = (collector.total().recv, collector.total().sent);
    let profile_result = match tracer.sinks.flamegraph.take() {
        Some(profile) => profile
            .finish(tracer.summary.lost(LossCause::RingFullSample))
            .map(|report| tracer.summary.cpu_profile = Some(report)),
        None => Ok(()),
    };
    match outcome {
        Ok(reason) => {
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
