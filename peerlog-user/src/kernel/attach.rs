//! Attaching loaded eBPF programs to probe sites of the target binary.
//!
//! aya 0.14 can attach a uprobe but cannot pass the USDT semaphore
//! (reference counter) offset, and Bitcoin Core's tracepoints only fire while
//! their semaphore is raised. So this module opens the uprobe perf event
//! itself, with the semaphore's file offset in `config[63:32]`, and links the
//! aya-loaded program to it with `BPF_LINK_CREATE`, which also carries the BPF
//! cookie that tells the program which argument spec to use. The kernel then
//! raises the semaphore in the target while the event exists and lowers it
//! when the event is closed: peerlog never writes into bitcoind's memory.
//!
//! The CPU sampler's `cpu-clock` events are opened here too ([`sample_cpu`]),
//! for a flag aya does not set: `exclude_idle`.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `BPF_LINK_CREATE` command of the `bpf(2)` syscall.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_PERF_EVENT` attach type.
const BPF_PERF_EVENT: u32 = 41;
/// `PERF_EVENT_IOC_ENABLE` = `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `PERF_FLAG_FD_CLOEXEC` flag of `perf_event_open(2)`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `PERF_ATTR_SIZE_VER5`: covers every field a uprobe or `cpu-clock` event
/// needs.
const PERF_ATTR_SIZE: u32 = 112;
/// `PERF_TYPE_SOFTWARE`, and its `PERF_COUNT_SW_CPU_CLOCK` event.
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
/// Bits of `perf_event_attr`'s flags word: `exclude_idle` and `freq`.
const PERF_ATTR_EXCLUDE_IDLE: u64 = 1 << 7;
const PERF_ATTR_FREQ: u64 = 1 << 10;

/// A live attachment: a perf event (a uprobe, or the sampler's `cpu-clock`)
/// and the BPF link on it. Dropping it detaches the program (and lowers a
/// uprobe's semaphore).
#[derive(Debug)]
pub struct ProbeLink {
    // Field order is drop order: the link goes before the event.
    _link: OwnedFd,
    _event: OwnedFd,
}

/// Where and how to attach one program.
#[derive(Debug, Clone, Copy)]
pub struct UprobeTarget<'a> {
    /// The binary, by a path the kernel can resolve to its inode
    /// (`/proc/PID/exe` works across mount namespaces).
    pub binary: &'a Path,
    /// File offset of the instruction to probe.
    pub file_offset: u64,
    /// File offset of the USDT semaphore, if the probe has one.
    pub semaphore_file_offset: Option<u64>,
    /// Process to trace (all of its threads).
    pub pid: i32,
    /// Value `bpf_get_attach_cookie()` returns in the program.
    pub cookie: u64,
    /// Fire on function return (uretprobe) instead of at the offset.
    pub retprobe: bool,
}

/// The kernel's `uprobe` perf PMU: its type id and the bit of `config` that
/// asks for a return probe.
#[derive(Debug, Clone, Copy)]
pub struct UprobePmu {
    pmu_type: u32,
    retprobe_bit: u32,
}

impl UprobePmu {
    /// Reads the PMU description from sysfs.
    pub fn discover() -> io::Result<Self> {
        let dir = Path::new("/sys/bus/event_source/devices/uprobe");
        let pmu_type = fs::read_to_string(dir.join("type"))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot read {}: {e} (is this kernel built with CONFIG_UPROBE_EVENTS?)",
                        dir.join("type").display()
                    ),
                )
            })?
            .trim()
            .parse()
            .map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("uprobe PMU type: {e}"))
            })?;
        // "config:0" on every kernel seen; read it rather than assume.
        let retprobe_bit = fs::read_to_string(dir.join("format/retprobe"))
            .ok()
            .and_then(|s| {
                s.trim()
                    .strip_prefix("config:")
                    .and_then(|b| b.parse().ok())
            })
            .unwrap_or(0);
        if !dir.join("format/ref_ctr_offset").exists() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's uprobe PMU has no ref_ctr_offset (Linux >= 4.20 needed): \
                 USDT semaphores cannot be raised by the kernel",
            ));
        }
        Ok(Self {
            pmu_type,
            retprobe_bit,
        })
    }

    /// Opens the uprobe event and links `program` to it.
    pub fn attach(
        &self,
        program: BorrowedFd<'_>,
        target: &UprobeTarget<'_>,
    ) -> io::Result<ProbeLink> {
        let path = CString::new(target.binary.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in binary path"))?;
        let mut config = target.semaphore_file_offset.unwrap_or(0) << 32;
        if target.retprobe {
            config |= 1 << self.retprobe_bit;
        }
        let mut attr = [0u8; PERF_ATTR_SIZE as usize];
        put_u32(&mut attr, 0, self.pmu_type);
        put_u32(&mut attr, 4, PERF_ATTR_SIZE);
        put_u64(&mut attr, 8, config);
        put_u64(&mut attr, 56, path.as_ptr() as u64); // config1: uprobe_path
        put_u64(&mut attr, 64, target.file_offset); // config2: probe_offset

        // `path`, which attr points to, lives until the event is open.
        let event = open_event(&attr, target.pid, -1, "perf_event_open (uprobe)")?;
        link(program, event, target.cookie)
    }
}

/// Samples whatever runs on `cpu`, `hz` times a second, with `program`: a
/// software `cpu-clock` event for all processes. It skips the idle task
/// (`exclude_idle`), so an idle CPU never runs the program, which would only
/// return at once; aya's attach cannot ask for that.
pub fn sample_cpu(program: BorrowedFd<'_>, cpu: u32, hz: u32) -> io::Result<ProbeLink> {
    let mut attr = [0u8; PERF_ATTR_SIZE as usize];
    put_u32(&mut attr, 0, PERF_TYPE_SOFTWARE);
    put_u32(&mut attr, 4, PERF_ATTR_SIZE);
    put_u64(&mut attr, 8, PERF_COUNT_SW_CPU_CLOCK);
    put_u64(&mut attr, 16, u64::from(hz)); // sample_freq
    put_u64(&mut attr, 40, PERF_ATTR_EXCLUDE_IDLE | PERF_ATTR_FREQ);
    let event = open_event(&attr, -1, cpu as i32, "perf_event_open (cpu-clock)")?;
    link(program, event, 0)
}

/// Opens the perf event `attr` describes, for process `pid` on `cpu` (-1:
/// any); `call` names it in errors.
fn open_event(
    attr: &[u8; PERF_ATTR_SIZE as usize],
    pid: i32,
    cpu: i32,
    call: &str,
) -> io::Result<OwnedFd> {
    // SAFETY: attr is a perf_event_attr of the size it declares; whatever
    // it points to is the caller's and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            pid,
            cpu,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(annotate(io::Error::last_os_error(), call));
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Links `program` to perf `event` with `BPF_LINK_CREATE`, passing `cookie`,
/// and enables the event.
fn link(program: BorrowedFd<'_>, event: OwnedFd, cookie: u64) -> io::Result<ProbeLink> {
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags,
    // then perf_event.bpf_cookie.
    let mut link_attr = [0u8; 64];
    put_u32(&mut link_attr, 0, program.as_raw_fd() as u32);
    put_u32(&mut link_attr, 4, event.as_raw_fd() as u32);
    put_u32(&mut link_attr, 8, BPF_PERF_EVENT);
    put_u64(&mut link_attr, 16, cookie);
    // SAFETY: a zero-padded bpf_attr of the size passed.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            link_attr.as_ptr(),
            link_attr.len() as u32,
        )
    };
    if link < 0 {
        return Err(annotate(io::Error::last_os_error(), "bpf(BPF_LINK_CREATE)"));
    }
    // SAFETY: as above.
    let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
    // SAFETY: ioctl on our own perf event descriptor.
    if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            "PERF_EVENT_IOC_ENABLE",
        ));
    }
    Ok(ProbeLink {
        _link: link,
        _event: event,
    })
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Adds the call and, for permission errors, the capabilities it needs.
fn annotate(err: io::Error, call: &str) -> io::Error {
    let hint = match err.raw_os_error() {
        // The kernel's uprobe PMU checks for CAP_SYS_ADMIN alone (EACCES
        // with CAP_BPF and CAP_PERFMON, measured on 6.18).
        Some(libc::EPERM) | Some(libc::EACCES) if call.contains("uprobe") => {
            " (the kernel opens uprobes only for CAP_SYS_ADMIN; run as root or grant it with setcap)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (needs CAP_PERFMON and CAP_BPF, or CAP_SYS_ADMIN; run as root or grant them with setcap)"
        }
        _ => "",
    };
    io::Error::new(err.kind(), format!("{call}: {err}{hint}"))
}
