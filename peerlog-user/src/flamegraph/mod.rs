//! Per-peer CPU flamegraphs of a running bitcoind: "which peer makes my node
//! burn CPU, and in which code?"
//!
//! The kernel samples every thread of the target at a fixed rate, walks
//! each sample's user stack with the unwind tables compiled here from the
//! target's `.eh_frame` ([`unwind`]), and sends its program counters and
//! the peer its thread was serving (`ProcessMessages`/`SendMessages`
//! context). Here each stack is named ([`symbolize`]) and counted as a
//! collapsed stack ([`folded`]) under its thread and peer. At the end of
//! the trace, `peerlog trace --flamegraph DIR` writes `all.folded`/`all.svg`
//! and one `peer-<id>-<addr>` pair per peer; `peerlog flamegraph`
//! re-renders, merges and filters those files.

pub mod folded;
pub mod symbolize;
mod thread_names;
pub mod unwind;

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::mpsc::{self, SyncSender},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use peerlog_common::{SamplerCost, WalkStop};

use crate::{
    event::CpuSample,
    node::Target,
    peers::Peer,
    private_fs::{self, Dir},
};
use folded::{peer_frame, peer_of_frame, FoldedStacks};
use symbolize::Symbols;
use thread_names::ThreadNames;
use unwind::{TargetModules, UnwindTables};

/// Samples per second per CPU unless told otherwise: 99, not 100, so the
/// sampling does not run in lockstep with timers of the target.
pub const DEFAULT_SAMPLE_RATE: u32 = 99;

/// Highest sampling rate accepted: beyond that the samples cost the target
/// noticeable CPU and the ring buffer noticeable bandwidth.
pub const MAX_SAMPLE_RATE: u32 = 1000;

/// Root frame of a stack whose walk stopped before the thread entry, so
/// that partial stacks stand apart instead of posing as roots.
pub const INCOMPLETE_FRAME: &str = "[incomplete stack]";

/// Leaf frame of a sample taken while the thread ran kernel code (a system
/// call): its user stack shows who called into the kernel.
pub const KERNEL_FRAME: &str = "[kernel]";

/// Whom a sampled thread was working for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Served {
    /// No open CPU slice: not the message handler, or it slept since its
    /// last message event.
    Nobody,
    /// Peer with this id: the one the thread's open slice is charged to.
    Peer(i64),
}

/// The samples of one thread name for one [`Served`].
#[derive(Debug, Default)]
struct Tally {
    stacks: FoldedStacks,
    samples: u64,
    complete: u64,
}

/// Counts of samples, and how many of them unwound to the thread entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleCounts {
    /// Samples taken.
    pub samples: u64,
    /// Samples whose stack was walked all the way to the thread entry.
    pub complete: u64,
}

impl SampleCounts {
    /// Share of samples walked to the thread entry, in percent.
    pub fn complete_percent(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            100.0 * self.complete as f64 / self.samples as f64
        }
    }

    fn add(&mut self, other: SampleCounts) {
        self.samples += other.samples;
        self.complete += other.complete;
    }
}

/// The CPU profile of a running trace: a sink for [`CpuSample`] events.
///
/// Counting stacks happens on a thread of its own: the trace loop only
/// queues samples and never falls behind the ring buffer because of them.
/// Naming them waits for the end of the trace (see [`Profiler`]).
pub struct CpuProfile {
    dir: Dir,
    pid: i32,
    comm: String,
    binary: PathBuf,
    sample_rate: u32,
    started: Instant,
    stopped: Option<Instant>,
    queue: SyncSender<CpuSample>,
    worker: JoinHandle<Counted>,
    /// Samples dropped because the worker was [`SAMPLE_QUEUE`] behind.
    dropped: u64,
    /// What the samples cost the node in the kernel, over every process
    /// traced.
    cost: SamplerCost,
    /// The unwind tables, until the kernel's maps take them.
    unwind_tables: Option<UnwindTables>,
    /// The address and connection type of each peer sampled, taken when its
    /// first sample came: the peer table may have dropped a closed peer by
    /// the time the flamegraphs are written.
    names: BTreeMap<i64, (String, String)>,
}

/// Samples waiting for the worker at most; beyond, samples are dropped and
/// counted as lost rather than hold up the trace loop or grow without bound.
const SAMPLE_QUEUE: usize = 1024;

/// The worker's state: the target's modules, and the walked stacks by
/// thread name and peer, as addresses. They are named once, when the trace
/// ends: naming inlined frames parses the DWARF of bitcoind (or its debug
/// file), hundreds of megabytes that peerlog should not hold while it
/// traces.
struct Profiler {
    modules: TargetModules,
    threads: ThreadNames,
    walked: HashMap<(String, Served), WalkedTally>,
    /// Why walks ended early, by thread name: logged at the end, to tell
    /// what an `[incomplete stack]` lacked.
    stops: BTreeMap<(String, &'static str), u64>,
}

/// The walked stacks of one thread name for one [`Served`], not named yet.
#[derive(Debug, Default)]
struct WalkedTally {
    /// Distinct stacks and how many samples had each.
    stacks: HashMap<RawStack, u64>,
    samples: u64,
    complete: u64,
}

/// A walked stack: its frames' addresses, innermost first, and how its
/// walk ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RawStack {
    frames: Vec<u64>,
    /// The walk reached the thread entry.
    complete: bool,
    /// The sample was taken in the kernel.
    in_kernel: bool,
}

/// The samples counted, by thread name and peer.
#[derive(Default)]
struct Counted {
    tallies: HashMap<(String, Served), Tally>,
}

/// What a profile wrote, for the trace summary.
#[derive(Debug, Clone)]
pub struct ProfileReport {
    /// The output directory.
    pub dir: PathBuf,
    /// Sampling rate per CPU.
    pub sample_rate: u32,
    /// How long sampling ran.
    pub duration: Duration,
    /// All samples.
    pub counts: SampleCounts,
    /// Samples lost: the ring buffer was full, or peerlog fell behind.
    pub lost: u64,
    /// What the kernel program spent on the samples, past its entry.
    pub cost: SamplerCost,
    /// Samples by peer id, for the peers that have a flamegraph.
    pub peers: BTreeMap<i64, SampleCounts>,
}

impl std::fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  cpu samples:      {} at {} Hz over {:.1} s, {:.1}% unwound to the thread entry, {} lost",
            self.counts.samples,
            self.sample_rate,
            self.duration.as_secs_f64(),
            self.counts.complete_percent(),
            self.lost
        )?;
        if self.cost.samples > 0 {
            // Past the entry: the part of the program's run that every run
            // pays, in any process, is the kernel's to count.
            write!(
                f,
                "\n  sampler time:     {:.2} µs per sample in the node past the program's entry ({} µs over {} samples)",
                self.cost.ns as f64 / self.cost.samples as f64 / 1e3,
                self.cost.ns / 1000,
                self.cost.samples
            )?;
        }
        write!(
            f,
            "\n  flamegraphs:      {}: all.svg and {} peer{}",
            self.dir.display(),
            self.peers.len(),
            if self.peers.len() == 1 { "" } else { "s" }
        )
    }
}

/// Characters of a peer address kept in file names (`[::1]:8333` becomes
/// `[__1]_8333`, as in the capture directories).
fn file_safe(addr: &str) -> String {
    addr.chars()
        .map(|c| match c {
            ':' => '_',
            c if c.is_ascii_alphanumeric() || "[].-_".contains(c) => c,
            _ => '_',
        })
        .collect()
}

impl CpuProfile {
    /// A profile of `target` written to `dir` (created if missing; files
    /// 0600 and never through a symlink, see [`private_fs`]); `debug_file`
    /// is the executable's `--debug-file`, and `symtab` the file with its
    /// symbols when it is stripped (see [`Target::debug_info`]).
    pub fn new(
        target: &Target,
        dir: &Path,
        sample_rate: u32,
        debug_file: Option<&Path>,
        symtab: Option<PathBuf>,
    ) -> Result<Self> {
        let dir = private_fs::create_dir_all(dir)
            .and_then(|()| Dir::open(dir))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        if let Some(debug) = debug_file {
            symbolize::check_debug_file(&target.exe, debug)?;
        }
        let modules = TargetModules::new(target.pid, debug_file)?;
        let unwind_tables = modules.unwind_tables();
        log::info!(
            "unwind tables: {} rows of {} modules, {} KiB with their bucket index",
            unwind_tables.rows.len(),
            unwind_tables.modules.len(),
            (std::mem::size_of_val(&unwind_tables.rows[..])
                + std::mem::size_of_val(&unwind_tables.buckets[..]))
                / 1024
        );
        let debug_file = debug_file.map(Path::to_path_buf);
        let (queue, samples) = mpsc::sync_channel(SAMPLE_QUEUE);
        let pid = target.pid;
        let worker = thread::Builder::new()
            .name("peerlog-stacks".into())
            .spawn(move || {
                let mut profiler = Profiler {
                    modules,
                    threads: ThreadNames::new(pid),
                    walked: HashMap::new(),
                    stops: BTreeMap::new(),
                };
                for sample in samples {
                    profiler.add(&sample);
                }
                // blazesym's symbolizer stays on the thread that made it.
                let symbols = Symbols::new(debug_file.as_deref(), symtab);
                profiler.name(symbols)
            })
            .context("starting the stack counting thread")?;
        Ok(Self {
            dir,
            pid: target.pid,
            comm: target.comm.clone(),
            binary: target.exe_display.clone(),
            sample_rate,
            started: Instant::now(),
            stopped: None,
            queue,
            worker,
            dropped: 0,
            cost: SamplerCost::default(),
            unwind_tables: Some(unwind_tables),
            names: BTreeMap::new(),
        })
    }

    /// The unwind tables of the target's modules, for the kernel's maps
    /// (once; they are not kept afterwards).
    pub fn take_unwind_tables(&mut self) -> UnwindTables {
        self.unwind_tables.take().unwrap_or_default()
    }

    /// Marks the moment the sampling perf events were attached: the
    /// reported duration starts here.
    pub fn sampling_started(&mut self) {
        self.started = Instant::now();
        self.stopped = None;
    }

    /// Marks the moment sampling stopped (samples still in the ring buffer
    /// may follow): the reported duration ends here. `cost` is what the
    /// kernel counted of the samples of the process just traced.
    pub fn sampling_stopped(&mut self, cost: SamplerCost) {
        self.stopped = Some(Instant::now());
        self.cost += cost;
    }

    /// Hands one sample to the worker.
    pub fn add(&mut self, sample: CpuSample, peer: Option<&Peer>) {
        if let Some(p) = peer.filter(|p| !p.addr.is_empty()) {
            self.names
                .entry(p.id)
                .or_insert_with(|| (p.addr.clone(), p.conn_type.clone()));
        }
        if self.queue.try_send(sample).is_err() {
            self.dropped += 1;
        }
    }

    /// Writes the collapsed stacks and flamegraphs: `all.*` and one pair per
    /// peer, named with its address; `lost` is the kernel's count of samples
    /// it could not deliver.
    pub fn finish(self, lost: u64) -> Result<ProfileReport> {
        let duration = self
            .stopped
            .unwrap_or_else(Instant::now)
            .duration_since(self.started);
        drop(self.queue);
        if self.dropped > 0 {
            log::warn!(
                "{} CPU samples dropped: counting stacks fell {SAMPLE_QUEUE} samples behind",
                self.dropped
            );
        }
        let counted = self
            .worker
            .join()
            .map_err(|_| anyhow::anyhow!("the stack counting thread panicked"))?;
        let written = Written {
            dir: &self.dir,
            pid: self.pid,
            comm: &self.comm,
            binary: &self.binary,
            sample_rate: self.sample_rate,
            duration,
            lost: lost + self.dropped,
            cost: self.cost,
        };
        written.write(&counted, &self.names)
    }
}

/// What the output files say about the trace.
struct Written<'a> {
    dir: &'a Dir,
    pid: i32,
    comm: &'a str,
    binary: &'a Path,
    sample_rate: u32,
    duration: Duration,
    lost: u64,
    cost: SamplerCost,
}

impl Profiler {
    /// Counts one sample.
    fn add(&mut self, sample: &CpuSample) {
        self.modules.learn_frames(&sample.frames);
        let complete = sample.stop == Some(WalkStop::ThreadEntry);
        let served = match sample.context {
            None => Served::Nobody,
            Some(c) => Served::Peer(c.peer_id),
        };
        let thread = self.threads.name(sample.tid);
        let tally = self.walked.entry((thread.clone(), served)).or_default();
        let stack = RawStack {
            frames: sample.frames.clone(),
            complete,
            in_kernel: sample.in_kernel,
        };
        *tally.stacks.entry(stack).or_default() += 1;
        tally.samples += 1;
        tally.complete += u64::from(complete);
        if !complete {
            let reason = sample.stop.map_or("unknown", WalkStop::name);
            *self.stops.entry((thread, reason)).or_default() += 1;
        }
    }

    /// Names every walked stack.
    fn name(self, mut symbols: Symbols) -> Counted {
        for ((thread, reason), count) in &self.stops {
            log::info!("{count} samples of {thread} not walked to the thread entry: {reason}");
        }
        let modules = self.modules.modules();
        symbols.learn_module_dirs(modules);
        let mut counted = Counted::default();
        for (key, walked) in self.walked {
            let tally = counted.tallies.entry(key).or_default();
            for (stack, count) in walked.stacks {
                let names = symbols.stack_names(&stack.frames, modules);
                let mut frames: Vec<&str> = Vec::with_capacity(names.len() + 2);
                if !stack.complete {
                    frames.push(INCOMPLETE_FRAME);
                }
                frames.extend(names.iter().flat_map(|n| n.iter().map(String::as_str)));
                if stack.in_kernel {
                    frames.push(KERNEL_FRAME);
                }
                tally.stacks.add(&frames, count);
            }
            tally.samples = walked.samples;
            tally.complete = walked.complete;
        }
        counted
    }
}

impl Written<'_> {
    /// `all.*` and one pair per peer, named with the address and connection
    /// type in `names`.
    fn write(
        &self,
        counted: &Counted,
        names: &BTreeMap<i64, (String, String)>,
    ) -> Result<ProfileReport> {
        let (duration, lost, cost) = (self.duration, self.lost, self.cost);
        let mut all = FoldedStacks::new();
        let mut all_counts = SampleCounts::default();
        let mut by_peer: BTreeMap<i64, (FoldedStacks, SampleCounts)> = BTreeMap::new();
        let mut keys: Vec<_> = counted.tallies.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let tally = &counted.tallies[&key];
            let (thread, served) = key;
            let counts = SampleCounts {
                samples: tally.samples,
                complete: tally.complete,
            };
            all_counts.add(counts);
            let label = match served {
                Served::Nobody => None,
                Served::Peer(id) => Some(peer_frame(
                    id,
                    names.get(&id).map_or("", |(addr, _)| addr.as_str()),
                )),
            };
            let mut root = vec![thread.as_str()];
            root.extend(label.as_deref());
            let rooted = tally.stacks.with_root(&root);
            all.merge(&rooted);
            if let Served::Peer(id) = served {
                let (stacks, peer_counts) = by_peer.entry(id).or_default();
                stacks.merge(&rooted);
                peer_counts.add(counts);
            }
        }

        let subtitle = |counts: SampleCounts| {
            format!(
                "{} · {:.1} s at {} Hz · {} samples · {:.1}% unwound to the thread entry · {} lost",
                self.binary.display(),
                duration.as_secs_f64(),
                self.sample_rate,
                counts.samples,
                counts.complete_percent(),
                lost
            )
        };
        self.write_pair(
            "all",
            &all,
            &format!("{} (pid {}): CPU of every thread", self.comm, self.pid),
            &subtitle(all_counts),
        )?;
        for (id, (stacks, counts)) in &by_peer {
            let (name, title) = match names.get(id) {
                Some((addr, conn_type)) => (
                    format!("peer-{id}-{}", file_safe(addr)),
                    format!(
                        "{} (pid {}): CPU for peer {id}, {addr} ({conn_type})",
                        self.comm, self.pid
                    ),
                ),
                _ => (
                    format!("peer-{id}"),
                    format!("{} (pid {}): CPU for peer {id}", self.comm, self.pid),
                ),
            };
            self.write_pair(&name, stacks, &title, &subtitle(*counts))?;
        }
        Ok(ProfileReport {
            dir: self.dir.path().to_path_buf(),
            sample_rate: self.sample_rate,
            duration,
            counts: all_counts,
            lost,
            cost,
            peers: by_peer.into_iter().map(|(id, (_, c))| (id, c)).collect(),
        })
    }

    /// `NAME.folded` and, when there is a sample to draw, `NAME.svg`.
    fn write_pair(
        &self,
        name: &str,
        stacks: &FoldedStacks,
        title: &str,
        subtitle: &str,
    ) -> Result<()> {
        let folded = format!("{name}.folded");
        write_file(
            &self.dir.path().join(&folded),
            self.dir.create_file(&folded),
            |w| Ok(stacks.write_to(w)?),
        )?;
        if !stacks.is_empty() {
            let svg = format!("{name}.svg");
            write_file(
                &self.dir.path().join(&svg),
                self.dir.create_file(&svg),
                |w| stacks.render_svg(title, subtitle, w),
            )?;
        }
        Ok(())
    }
}

/// Writes through `write` into `file`, just created at `path`.
fn write_file(
    path: &Path,
    file: io::Result<File>,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let mut out =
        BufWriter::new(file.with_context(|| format!("cannot create {}", path.display()))?);
    write(&mut out).with_context(|| format!("writing {}", path.display()))?;
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Arguments of `peerlog flamegraph`.
#[derive(Debug, clap::Args)]
pub struct FlamegraphArgs {
    /// Collapsed-stack files (`*.folded` of `peerlog trace --flamegraph`, or
    /// of any FlameGraph tool). Stacks found in several files are added up.
    #[arg(required = true, value_name = "FOLDED")]
    pub inputs: Vec<PathBuf>,

    /// Write the SVG here (`-`: standard output).
    #[arg(short, long, default_value = "-", value_name = "SVG")]
    pub output: PathBuf,

    /// Also write the merged, filtered collapsed stacks to PATH.
    #[arg(long, value_name = "PATH")]
    pub folded: Option<PathBuf>,

    /// Only samples taken while the message handler served this peer
    /// (repeatable).
    #[arg(long = "peer", value_name = "ID", value_parser = crate::args::number_in(0, i64::MAX, ""))]
    pub peers: Vec<i64>,

    /// Only samples of this thread (repeatable): a name such as `b-msghand`;
    /// `b-scriptch` also selects `b-scriptch.0`, `b-scriptch.1`, ...
    #[arg(long = "thread", value_name = "NAME")]
    pub threads: Vec<String>,

    /// Only stacks with a frame whose name contains NAME (repeatable), e.g.
    /// `--function ProcessMessage` or `--function CheckInputScripts`.
    #[arg(long = "function", value_name = "NAME")]
    pub functions: Vec<String>,

    /// Title of the graph.
    #[arg(long)]
    pub title: Option<String>,
}

impl FlamegraphArgs {
    /// Whether a stack (root first) passes every filter given.
    fn keeps(&self, frames: &[&str]) -> bool {
        let thread = frames.first().copied().unwrap_or("");
        let thread_ok = self.threads.is_empty()
            || self.threads.iter().any(|t| {
                thread == t
                    || thread
                        .strip_prefix(t.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            });
        let peer_ok = self.peers.is_empty()
            || frames
                .get(1)
                .and_then(|f| peer_of_frame(f))
                .is_some_and(|id| self.peers.contains(&id));
        let function_ok = self.functions.is_empty()
            || self.functions.iter().any(|name| {
                frames
                    .iter()
                    .skip(1)
                    .filter(|f| !f.starts_with(folded::PEER_FRAME_PREFIX))
                    .any(|f| f.contains(name.as_str()))
            });
        thread_ok && peer_ok && function_ok
    }

    fn filters(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.peers.iter().map(|p| format!("peer {p}")));
        parts.extend(self.threads.iter().map(|t| format!("thread {t}")));
        parts.extend(self.functions.iter().map(|f| format!("function {f}")));
        parts.join(", ")
    }

    /// Reads, merges, filters and renders.
    pub fn run(self) -> Result<()> {
        let mut merged = FoldedStacks::new();
        for path in &self.inputs {
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            merged.merge(&FoldedStacks::parse(&text, &path.display().to_string())?);
        }
        let kept = merged.filter(|frames| self.keeps(frames));
        if kept.is_empty() {
            bail!(
                "no stack of {} matches {}",
                self.inputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if self.filters().is_empty() {
                    "(the files are empty)".to_string()
                } else {
                    self.filters()
                }
            );
        }
        if let Some(path) = &self.folded {
            write_file(path, private_fs::create_file(path), |w| {
                Ok(kept.write_to(w)?)
            })?;
        }
        let title = self.title.clone().unwrap_or_else(|| {
            let names: Vec<String> = self
                .inputs
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or(p.as_os_str())
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            format!("peerlog flamegraph: {}", names.join(" + "))
        });
        let mut subtitle = format!("{} of {} samples", kept.total(), merged.total());
        if !self.filters().is_empty() {
            subtitle.push_str(&format!(" · {}", self.filters()));
        }
        if self.output.as_os_str() == "-" {
            let stdout = io::stdout();
            kept.render_svg(&title, &subtitle, BufWriter::new(stdout.lock()))
        } else {
            write_file(&self.output, private_fs::create_file(&self.output), |w| {
                kept.render_svg(&title, &subtitle, w)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(peers: &[i64], threads: &[&str], functions: &[&str]) -> FlamegraphArgs {
        FlamegraphArgs {
            inputs: vec![],
            output: "-".into(),
            folded: None,
            peers: peers.to_vec(),
            threads: threads.iter().map(|s| s.to_string()).collect(),
            functions: functions.iter().map(|s| s.to_string()).collect(),
            title: None,
        }
    }

    #[test]
    fn filters_select_peer_thread_and_function() {
        let burn = [
            "b-msghand",
            "peer=3 127.0.0.1:1",
            "clone3",
            "ProcessMessages",
            "TwinBurnCpu",
        ];
        let net = ["b-net", "clone3", "CConnman::SocketHandler", "poll"];
        let script = ["b-scriptch.2", "clone3", "CheckInputScripts"];
        assert!(args(&[], &[], &[]).keeps(&burn));
        assert!(args(&[3], &[], &[]).keeps(&burn));
        assert!(!args(&[4], &[], &[]).keeps(&burn));
        assert!(!args(&[3], &[], &[]).keeps(&net));
        assert!(args(&[], &["b-net"], &[]).keeps(&net));
        assert!(!args(&[], &["b-net"], &[]).keeps(&burn));
        assert!(args(&[], &["b-scriptch"], &[]).keeps(&script));
        assert!(!args(&[], &["b-script"], &[]).keeps(&script));
        assert!(args(&[], &[], &["TwinBurn"]).keeps(&burn));
        assert!(!args(&[], &[], &["TwinBurn"]).keeps(&net));
        // The thread frame is not a function.
        assert!(!args(&[], &[], &["b-net"]).keeps(&net));
        assert_eq!(
            args(&[3], &["b-msghand"], &["X"]).filters(),
            "peer 3, thread b-msghand, function X"
        );
    }

    #[test]
    fn file_names_of_addresses() {
        assert_eq!(file_safe("127.0.0.1:18444"), "127.0.0.1_18444");
        assert_eq!(file_safe("[::1]:8333"), "[__1]_8333");
        assert_eq!(file_safe("a/b c.onion:8333"), "a_b_c.onion_8333");
    }
}
