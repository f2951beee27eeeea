//! Loading peerlog's eBPF object and attaching its programs to a target
//! ([`attach`]), and the controls userspace keeps over the programs while
//! they run.

pub mod attach;

use std::{io, os::fd::AsFd, path::PathBuf};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{perf_event::PerfEvent, RawTracePoint, UProbe},
    Ebpf, EbpfLoader,
};
use peerlog_common::{
    ConfigKey, CpuSampleBatch, CpuSampleBatchHeader, LossCause, SamplerCost, UnwindRow,
    UnwindRowBlock, UsdtSpec, MSG_TYPE_CAPTURE, MSG_TYPE_LEN, MSG_TYPE_STATS,
    PEER_POLICY_SKIP_PAYLOAD, UNWIND_ROWS_PER_BLOCK,
};
use serde::Serialize;

use crate::{
    elf::btf,
    elf::debuginfo,
    elf::layout::CNodeLayout,
    flamegraph::unwind::UnwindTables,
    node::{Target, NET_TRACEPOINTS},
};
use attach::{ProbeLink, UprobePmu, UprobeTarget};

/// Tracepoints other than `net:*` that resource tracking uses, each with its
/// program: (provider, name, program). Optional: a bitcoind without them is
/// still traced, and the figures they feed are reported missing.
pub const ACCOUNTING_TRACEPOINTS: [(&str, &str, &str); 5] = [
    ("mempool", "added", "mempool_added"),
    ("mempool", "removed", "mempool_removed"),
    ("mempool", "replaced", "mempool_replaced"),
    ("mempool", "rejected", "mempool_rejected"),
    ("validation", "block_connected", "block_connected"),
];

/// The eBPF object built from `peerlog-ebpf` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PEERLOG_EBPF_OBJECT"));

/// What to load.
#[derive(Debug)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_size: u32,
    /// Attach the resource-tracking probes (mempool, validation, scheduler)
    /// and keep per-peer CPU slices, besides the `net:*` tracepoints.
    pub accounting: bool,
    /// Where bitcoind's DWARF is (its `--debug-file` or the one found for
    /// it), resolved once per attach.
    pub debug_info: debuginfo::DebugInfo,
    /// Sample every thread of the target (for flamegraphs); None: no
    /// sampling.
    pub sampling: Option<Sampling>,
}

/// CPU sampling for flamegraphs.
#[derive(Debug)]
pub struct Sampling {
    /// Samples a second per CPU.
    pub rate: u32,
    /// The unwind rows the kernel walks the sampled stacks with.
    pub unwind_tables: UnwindTables,
}

/// What could be attached, so that every figure that depends on a missing
/// probe can be reported as missing rather than as zero.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attached {
    /// `provider:name` of every tracepoint attached (all sites).
    pub tracepoints: Vec<String>,
    /// Accounting tracepoints the binary lacks.
    pub missing_tracepoints: Vec<String>,
    /// Whether the accounting is on: the kernel cuts the message-handling
    /// threads' time into per-peer slices.
    pub slices: bool,
    /// Why on-CPU time (and so the slices) is not measured; None when it is.
    pub oncpu_missing: Option<String>,
    /// Where bitcoind's `CNode` members are, from its DWARF.
    #[serde(skip)]
    pub cnode_layout: Option<CNodeLayout>,
    /// The file the layout came from.
    pub debug_info: Option<PathBuf>,
    /// Why the layout (and so `bytesrecv`/`bytessent`) is missing.
    pub cnode_layout_missing: Option<String>,
}

impl Attached {
    /// One line for the operator: what is measured and what is missing, and why.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.oncpu_missing {
            None if self.slices => {
                parts.push("per-peer CPU from the message tracepoints, on-CPU time measured".into())
            }
            None => {}
            Some(why) => parts.push(format!("per-peer CPU NOT measured: {why}")),
        }
        match (&self.debug_info, &self.cnode_layout_missing) {
            (Some(from), None) => parts.push(format!(
                "bitcoind's byte counters read from its CNodes (layout from {})",
                from.display()
            )),
            (_, Some(why)) => parts.push(format!("bytesrecv/bytessent NOT measured: {why}")),
            (None, None) => {}
        }
        if !self.missing_tracepoints.is_empty() {
            parts.push(format!(
                "tracepoints absent: {}",
                self.missing_tracepoints.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// The loaded object and its attachments. Dropping it (or [`Probes::detach`])
/// detaches every program.
pub struct Probes {
    ebpf: Ebpf,
    links: Vec<ProbeLink>,
    /// The CPU sampling perf events, one per CPU.
    sampling: Vec<ProbeLink>,
    /// Number of probe sites attached.
    pub sites: usize,
    /// What is attached.
    pub attached: Attached,
}

fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        // Kernels since 5.11 charge BPF memory to the memory cgroup instead,
        // so this is only fatal on old kernels, where loading will say so.
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

fn privilege_hint(e: &aya::EbpfError) -> &'static str {
    let text = e.to_string();
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        " (loading eBPF needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN, which attaching uprobes needs anyway: run as root)"
    } else {
        ""
    }
}

impl Probes {
    /// Loads the object and attaches the `net:*` programs to every probe site
    /// of `target`. Payload copying starts switched off: see [`KernelControl`].
    pub fn attach(target: &Target, opts: &ProbeOptions) -> Result<Self> {
        raise_memlock_limit();
        // The unwind row and bucket maps hold exactly what was compiled;
        // without sampling, one unused entry each.
        let row_blocks = opts.sampling.as_ref().map_or(1, |s| {
            s.unwind_tables
                .rows
                .len()
                .div_ceil(UNWIND_ROWS_PER_BLOCK)
                .max(1) as u32
        });
        let buckets = opts
            .sampling
            .as_ref()
            .map_or(1, |s| s.unwind_tables.buckets.len().max(1) as u32);
        // The sampler's scratch and cost entries of a CPU are at the CPU's
        // number; without sampling, one unused entry each.
        let per_cpu_entries = match opts.sampling {
            Some(_) => aya::util::nr_cpus()
                .map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?
                as u32,
            None => 1,
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ring_size)
            .map_max_entries("UNWIND_ROWS", row_blocks)
            .map_max_entries("UNWIND_BUCKETS", buckets)
            .map_max_entries("SCRATCH", per_cpu_entries)
            .map_max_entries("SAMPLER_COST", per_cpu_entries)
            .map_max_entries("SAMPLE_BATCHES", per_cpu_entries)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                anyhow::anyhow!("loading the eBPF object failed: {e}{}", privilege_hint(&e))
            })?;
        let mut config: Array<_, u64> =
            Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map")?)?;
        config.set(ConfigKey::TargetTgid as u32, target.pid as u64, 0)?;
        // Records wake peerlog only once the ring is an eighth full; until
        // then it reads the ring on its own clock (trace's poll interval).
        config.set(
            ConfigKey::RingWakeBytes as u32,
            u64::from(opts.ring_size / 8),
            0,
        )?;

        let pmu = UprobePmu::discover()?;
        let mut probes = Self {
            ebpf,
            links: Vec::new(),
            sampling: Vec::new(),
            sites: 0,
            attached: Attached::default(),
        };
        let mut cookie: u32 = 0;
        for name in NET_TRACEPOINTS {
            probes.attach_usdt(&pmu, target, "net", name, name, &mut cookie)?;
        }
        if opts.accounting {
            for (provider, name, program) in ACCOUNTING_TRACEPOINTS {
                if target.sites(provider, name).next().is_some() {
                    probes.attach_usdt(&pmu, target, provider, name, program, &mut cookie)?;
                } else {
                    probes
                        .attached
                        .missing_tracepoints
                        .push(format!("{provider}:{name}"));
                }
            }
            probes.read_cnode_layout(&opts.debug_info)?;
            match probes.attach_scheduler() {
                Ok(()) => probes.attached.slices = true,
                Err(e) => {
                    log::warn!("on-CPU time is not measured: {e:#}");
                    probes.attached.oncpu_missing = Some(format!("{e:#}"));
                }
            }
        }
        probes.sites = probes.links.len();
        if let Some(sampling) = &opts.sampling {
            probes.load_unwind_tables(&sampling.unwind_tables)?;
            probes.sample_cpus(sampling.rate)?;
        }
        Ok(probes)
    }

    /// Samples whatever runs on each CPU `hz` times a second (software
    /// `cpu-clock` events for all processes but the idle task); the program
    /// keeps the target's threads. One event per CPU rather than per thread,
    /// so threads that bitcoind starts later are sampled too, and no thread
    /// switch pays for starting and stopping an event.
    fn sample_cpus(&mut self, hz: u32) -> Result<()> {
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut("cpu_sample")
            .context("eBPF program cpu_sample missing from the object")?
            .try_into()?;
        program
            .load()
            .map_err(|e| anyhow::anyhow!("the kernel refused eBPF program cpu_sample: {e}"))?;
        let cpus = aya::util::online_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let fd = program.fd()?.as_fd();
        for cpu in cpus {
            let link = attach::sample_cpu(fd, cpu, hz)
                .with_context(|| format!("starting CPU sampling on CPU {cpu}"))?;
            self.sampling.push(link);
        }
        Ok(())
    }

    /// Fills the unwind maps the sampler walks stacks with: the rows, a
    /// block of [`UNWIND_ROWS_PER_BLOCK`] per update, their buckets,
    /// then the modules, and last their count, which switches them on.
    fn load_unwind_tables(&mut self, tables: &UnwindTables) -> Result<()> {
        let blocks = tables.rows.chunks(UNWIND_ROWS_PER_BLOCK).map(|chunk| {
            let mut block = UnwindRowBlock {
                rows: [UnwindRow::default(); UNWIND_ROWS_PER_BLOCK],
            };
            block.rows[..chunk.len()].copy_from_slice(chunk);
            block
        });
        self.fill_array("UNWIND_ROWS", blocks)?;
        self.fill_array("UNWIND_BUCKETS", tables.buckets.iter().copied())?;
        self.fill_array("UNWIND_MODULES", tables.modules.iter().copied())?;
        let mut config: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut("CONFIG").context("CONFIG map")?)?;
        config.set(
            ConfigKey::UnwindModules as u32,
            tables.modules.len() as u64,
            0,
        )?;
        Ok(())
    }

    /// Writes `items` into the array map `name`, from its first entry.
    fn fill_array<T: aya::Pod>(
        &mut self,
        name: &str,
        items: impl Iterator<Item = T>,
    ) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("{name} map"))?;
        let mut array: Array<_, T> = Array::try_from(map)?;
        for (i, item) in items.enumerate() {
            array
                .set(i as u32, item, 0)
                .with_context(|| format!("filling the {name} map"))?;
        }
        Ok(())
    }

    /// Number of CPUs being sampled.
    pub fn sampled_cpus(&self) -> usize {
        self.sampling.len()
    }

    /// Loads `program` and attaches it to every site of `provider:name`,
    /// each with its argument spec under the next cookie.
    fn attach_usdt(
        &mut self,
        pmu: &UprobePmu,
        target: &Target,
        provider: &str,
        name: &str,
        program: &str,
        cookie: &mut u32,
    ) -> Result<()> {
        let program_fd = self.load_uprobe(program)?;
        for site in target.sites(provider, name) {
            let spec: UsdtSpec = site
                .to_spec()
                .map_err(|e| anyhow::anyhow!("{provider}:{name} at {:#x}: {e}", site.address))?;
            let mut specs: Array<_, UsdtSpec> =
                Array::try_from(self.ebpf.map_mut("USDT_SPECS").context("USDT_SPECS map")?)?;
            specs.set(*cookie, spec, 0)?;
            let link = pmu
                .attach(
                    program_fd.as_fd(),
                    &UprobeTarget {
                        binary: &target.exe,
                        file_offset: site.file_offset,
                        semaphore_file_offset: site.semaphore_file_offset,
                        pid: target.pid,
                        cookie: u64::from(*cookie),
                        retprobe: false,
                    },
                )
                .with_context(|| {
                    format!(
                        "attaching to {provider}:{name} at file offset {:#x} of {target}",
                        site.file_offset
                    )
                })?;
            self.links.push(link);
            *cookie += 1;
        }
        self.attached.tracepoints.push(format!("{provider}:{name}"));
        Ok(())
    }

    /// Loads a uprobe program (once) and returns its descriptor.
    fn load_uprobe(&mut self, name: &str) -> Result<std::os::fd::OwnedFd> {
        let program: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("eBPF program {name} missing from the object"))?
            .try_into()?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|e| anyhow::anyhow!("the kernel refused eBPF program {name}: {e}"))?;
        }
        Ok(program.fd()?.as_fd().try_clone_to_owned()?)
    }

    /// Finds bitcoind's `CNode` layout in its DWARF and hands the offsets
    /// to the kernel, which then finds each peer's `CNode` and reads its
    /// final byte counters. Only a `--debug-file` that does not fit is an
    /// error; otherwise what is missing is noted in the coverage.
    fn read_cnode_layout(&mut self, found: &debuginfo::DebugInfo) -> Result<()> {
        let Some(source) = found.source.clone() else {
            self.attached.cnode_layout_missing = Some(found.missing_reason());
            return Ok(());
        };
        self.attached.debug_info = Some(source.clone());
        let layout = match CNodeLayout::from_dwarf(&source) {
            Ok(layout) => layout,
            Err(e) => {
                self.attached.cnode_layout_missing = Some(format!("{e:#}"));
                return Ok(());
            }
        };
        let mut config: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut("CONFIG").context("CONFIG map")?)?;
        for (key, offset) in [
            (ConfigKey::CNodeRecvBytesOffset, layout.recv_bytes),
            (ConfigKey::CNodeSendBytesOffset, layout.send_bytes),
            (ConfigKey::CNodeAddrNameOffset, layout.addr_name),
            // Last: a non-zero id offset switches the CNode search on.
            (ConfigKey::CNodeIdOffset, layout.id),
        ] {
            config.set(key as u32, offset, 0)?;
        }
        self.attached.cnode_layout = Some(layout);
        Ok(())
    }

    /// The `sched_switch` hook that measures on-CPU time.
    fn attach_scheduler(&mut self) -> Result<()> {
        let offsets = btf::task_offsets()?;
        let program: &mut RawTracePoint = self
            .ebpf
            .program_mut("sched_switch")
            .context("eBPF program sched_switch missing from the object")?
            .try_into()?;
        program
            .load()
            .context("the kernel refused the sched_switch program")?;
        program
            .attach("sched_switch")
            .context("attaching to the sched_switch raw tracepoint")?;
        let mut config: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut("CONFIG").context("CONFIG map")?)?;
        config.set(ConfigKey::TaskTgidOffset as u32, u64::from(offsets.tgid), 0)?;
        config.set(
            ConfigKey::TaskSumExecOffset as u32,
            u64::from(offsets.sum_exec_runtime),
            0,
        )?;
        // Last: a non-zero pid offset switches the accounting on.
        config.set(ConfigKey::TaskPidOffset as u32, u64::from(offsets.pid), 0)?;
        Ok(())
    }

    /// The ring buffer the programs write to; can be taken once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(
            self.ebpf
                .take_map("EVENTS")
                .context("EVENTS map taken already")?,
        )?)
    }

    /// The loss counters; can be taken once.
    pub fn take_losses(&mut self) -> Result<LossCounters> {
        Ok(LossCounters(PerCpuArray::try_from(
            self.ebpf
                .take_map("LOSSES")
                .context("LOSSES map taken already")?,
        )?))
    }

    /// What the CPU sampler's samples of the target have cost so far,
    /// summed over CPUs; zero without sampling.
    pub fn sampler_cost(&self) -> Result<SamplerCost> {
        let map = self.ebpf.map("SAMPLER_COST").context("SAMPLER_COST map")?;
        let costs: Array<_, SamplerCost> = Array::try_from(map)?;
        let mut sum = SamplerCost::default();
        for cost in costs.iter() {
            sum += cost?;
        }
        Ok(sum)
    }

    /// The records of the CPU samples each CPU gathered and has not yet
    /// written to the ring buffer ([`CpuSampleBatch`]). Read after
    /// [`Self::detach`], when no sample is still running.
    pub fn sample_batches(&self) -> Result<Vec<Vec<u8>>> {
        let map = self
            .ebpf
            .map("SAMPLE_BATCHES")
            .context("SAMPLE_BATCHES map")?;
        let batches: Array<_, CpuSampleBatch> = Array::try_from(map)?;
        let mut records = Vec::new();
        for batch in batches.iter() {
            let batch = batch?;
            if batch.head.count == 0 {
                continue;
            }
            let len = size_of::<CpuSampleBatchHeader>() + batch.head.len as usize;
            // SAFETY: a `CpuSampleBatch` is plain old data without padding
            // (`aya::Pod`): every byte of it is initialized.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&batch as *const CpuSampleBatch).cast::<u8>(),
                    size_of::<CpuSampleBatch>(),
                )
            };
            records.push(bytes.get(..len).unwrap_or(bytes).to_vec());
        }
        Ok(records)
    }

    /// The controls over the running programs; can be taken once.
    pub fn take_control(&mut self) -> Result<KernelControl> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .with_context(|| format!("{name} map taken already"))
        };
        Ok(KernelControl {
            config: Array::try_from(take("CONFIG")?)?,
            peer_policy: HashMap::try_from(take("PEER_POLICY")?)?,
            msg_type_filter: HashMap::try_from(take("MSG_TYPE_FILTER")?)?,
            capture_types: Vec::new(),
            stats_types: Vec::new(),
        })
    }

    /// Detaches every program; records already in the ring stay readable.
    pub fn detach(&mut self) {
        self.links.clear();
        self.sampling.clear();
    }
}

/// The kernel's per-cause loss counters.
pub struct LossCounters(PerCpuArray<MapData, u64>);

impl LossCounters {
    /// Every cause with its count, summed over CPUs.
    pub fn read(&self) -> Vec<(LossCause, u64)> {
        LossCause::ALL
            .iter()
            .map(|&cause| {
                let n = self
                    .0
                    .get(&(cause as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (cause, n)
            })
            .collect()
    }
}

/// Switches over what the programs copy, changeable while they run.
pub struct KernelControl {
    config: Array<MapData, u64>,
    peer_policy: HashMap<MapData, i64, u8>,
    msg_type_filter: HashMap<MapData, [u8; MSG_TYPE_LEN], u8>,
    capture_types: Vec<[u8; MSG_TYPE_LEN]>,
    stats_types: Vec<[u8; MSG_TYPE_LEN]>,
}

/// The NUL-padded key of the message type filter map; errors on a type that
/// cannot be a P2P message type.
pub fn msg_type_key(t: &str) -> Result<[u8; MSG_TYPE_LEN]> {
    if t.is_empty() || t.len() > 12 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("bad message type {t:?}: message types are 1 to 12 printable ASCII characters");
    }
    let mut key = [0u8; MSG_TYPE_LEN];
    key[..t.len()].copy_from_slice(t.as_bytes());
    Ok(key)
}

impl KernelControl {
    /// Whether message payloads are copied at all.
    pub fn set_copy_payloads(&mut self, on: bool) -> Result<()> {
        self.config
            .set(ConfigKey::CapturePayloads as u32, u64::from(on), 0)?;
        Ok(())
    }

    /// Restricts capture to these message types (empty: all types).
    pub fn set_msg_types(&mut self, types: &[String]) -> Result<()> {
        self.capture_types = types
            .iter()
            .map(|t| msg_type_key(t))
            .collect::<Result<_>>()?;
        self.write_type_filter()
    }

    /// Copies the payloads of these message types whether or not capture
    /// wants them, for statistics that parse them (empty: none).
    pub fn set_stats_types(&mut self, types: &[&str]) -> Result<()> {
        self.stats_types = types
            .iter()
            .map(|t| msg_type_key(t))
            .collect::<Result<_>>()?;
        self.write_type_filter()?;
        self.config.set(
            ConfigKey::StatsPayloads as u32,
            u64::from(!self.stats_types.is_empty()),
            0,
        )?;
        Ok(())
    }

    /// Rewrites the message type map from both sets.
    fn write_type_filter(&mut self) -> Result<()> {
        // Switch capture filtering off while entries change, so no message
        // sees a half-written set (it errs towards copying, never losing).
        self.config
            .set(ConfigKey::MsgTypeFilterActive as u32, 0, 0)?;
        let old: Vec<_> = self.msg_type_filter.keys().filter_map(|k| k.ok()).collect();
        for key in old {
            self.msg_type_filter.remove(&key)?;
        }
        let mut entries: std::collections::BTreeMap<[u8; MSG_TYPE_LEN], u8> = Default::default();
        for key in &self.capture_types {
            *entries.entry(*key).or_default() |= MSG_TYPE_CAPTURE;
        }
        for key in &self.stats_types {
            *entries.entry(*key).or_default() |= MSG_TYPE_STATS;
        }
        for (key, bits) in entries {
            self.msg_type_filter.insert(key, bits, 0)?;
        }
        self.config.set(
            ConfigKey::MsgTypeFilterActive as u32,
            u64::from(!self.capture_types.is_empty()),
            0,
        )?;
        Ok(())
    }

    /// Whether the payloads of peer `id` are copied.
    pub fn set_peer_payloads(&mut self, id: i64, copy: bool) -> Result<()> {
        if copy {
            match self.peer_policy.remove(&id) {
                Ok(()) => {}
                // aya reports a missing key as the syscall's ENOENT.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            self.peer_policy.insert(id, PEER_POLICY_SKIP_PAYLOAD, 0)?;
            // Set after the entry, so the kernel never skips a lookup that
            // would find it; never cleared, as a policy may be set again.
            self.config.set(ConfigKey::PeerPolicyActive as u32, 1, 0)?;
        }
        Ok(())
    }
}
