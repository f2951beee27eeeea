//! Loading peerlog's eBPF object and attaching its programs to a target, and
//! the controls userspace keeps over the programs while they run.

use std::{io, os::fd::AsFd};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::UProbe,
    Ebpf, EbpfLoader,
};
use peerlog_common::{ConfigKey, LossCause, UsdtSpec, MSG_TYPE_LEN, PEER_POLICY_SKIP_PAYLOAD};

use crate::{
    attach::{ProbeLink, UprobePmu, UprobeTarget},
    target::{Target, NET_TRACEPOINTS},
};

/// The eBPF object built from `peerlog-ebpf` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PEERLOG_EBPF_OBJECT"));

/// What to load.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_size: u32,
}

/// The loaded object and its attachments. Dropping it (or [`Probes::detach`])
/// detaches every program.
pub struct Probes {
    ebpf: Ebpf,
    links: Vec<ProbeLink>,
    /// Number of probe sites attached.
    pub sites: usize,
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
        " (loading eBPF needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN: run as root)"
    } else {
        ""
    }
}

impl Probes {
    /// Loads the object and attaches the `net:*` programs to every probe site
    /// of `target`. Payload copying starts switched off: see [`KernelControl`].
    pub fn attach(target: &Target, opts: &ProbeOptions) -> Result<Self> {
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ring_size)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                anyhow::anyhow!("loading the eBPF object failed: {e}{}", privilege_hint(&e))
            })?;
        let mut config: Array<_, u64> =
            Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map")?)?;
        config.set(ConfigKey::TargetTgid as u32, target.pid as u64, 0)?;

        let pmu = UprobePmu::discover()?;
        let mut links = Vec::new();
        let mut cookie: u32 = 0;
        for name in NET_TRACEPOINTS {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("eBPF program {name} missing from the object"))?
                .try_into()?;
            program
                .load()
                .map_err(|e| anyhow::anyhow!("the kernel refused eBPF program {name}: {e}"))?;
            let program_fd = program.fd()?.as_fd().try_clone_to_owned()?;
            for site in target.sites("net", name) {
                let spec: UsdtSpec = site
                    .to_spec()
                    .map_err(|e| anyhow::anyhow!("net:{name} at {:#x}: {e}", site.address))?;
                let mut specs: Array<_, UsdtSpec> =
                    Array::try_from(ebpf.map_mut("USDT_SPECS").context("USDT_SPECS map")?)?;
                specs.set(cookie, spec, 0)?;
                let link = pmu
                    .attach(
                        program_fd.as_fd(),
                        &UprobeTarget {
                            binary: &target.exe,
                            file_offset: site.file_offset,
                            semaphore_file_offset: site.semaphore_file_offset,
                            pid: target.pid,
                            cookie: u64::from(cookie),
                            retprobe: false,
                        },
                    )
                    .with_context(|| {
                        format!(
                            "attaching to net:{name} at file offset {:#x} of {target}",
                            site.file_offset
                        )
                    })?;
                links.push(link);
                cookie += 1;
            }
        }
        let sites = links.len();
        Ok(Self { ebpf, links, sites })
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
        })
    }

    /// Detaches every program; records already in the ring stay readable.
    pub fn detach(&mut self) {
        self.links.clear();
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

    /// Restricts payload copying to these message types (empty: all types).
    pub fn set_msg_types(&mut self, types: &[String]) -> Result<()> {
        let keys = types
            .iter()
            .map(|t| msg_type_key(t))
            .collect::<Result<Vec<_>>>()?;
        // Switch the filter off while its entries change, so no message sees
        // a half-written set.
        self.config
            .set(ConfigKey::MsgTypeFilterActive as u32, 0, 0)?;
        let old: Vec<_> = self.msg_type_filter.keys().filter_map(|k| k.ok()).collect();
        for key in old {
            self.msg_type_filter.remove(&key)?;
        }
        for key in &keys {
            self.msg_type_filter.insert(key, 1, 0)?;
        }
        self.config.set(
            ConfigKey::MsgTypeFilterActive as u32,
            u64::from(!keys.is_empty()),
            0,
        )?;
        Ok(())
    }

    /// Whether the payloads of peer `id` are copied.
    pub fn set_peer_payloads(&mut self, id: i64, copy: bool) -> Result<()> {
        if copy {
            match self.peer_policy.remove(&id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            self.peer_policy.insert(id, PEER_POLICY_SKIP_PAYLOAD, 0)?;
        }
        Ok(())
    }
}
