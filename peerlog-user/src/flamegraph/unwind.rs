//! Walking the user stacks of CPU samples without frame pointers.
//!
//! bitcoind is built without frame pointers, so a sample's callers are
//! found the way a debugger finds them: from the DWARF call frame
//! information (`.eh_frame`, or `.debug_frame` where a module has no
//! `.eh_frame`) of the module each address is in, applied to the registers
//! and the stack bytes the kernel copied. The modules are the target's
//! executable, its shared libraries (libc, libstdc++, libevent, ...) and
//! the vDSO, read from `/proc/PID/maps`. framehop does the unwinding and
//! falls back to frame pointers in code that has no unwind information.

use std::{
    fs::File,
    io,
    ops::Range,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
};
use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};

use crate::event::CpuSample;

/// Frames followed at most; deeper stacks are reported as truncated.
const MAX_FRAMES: usize = 512;

/// How often the module list may be re-read when an address falls outside
/// every known module (a library loaded after peerlog attached). Short,
/// because every sample until then walks into a dead end.
const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// `PF_X` of an ELF program header.
const PF_X: u32 = 1;

/// One file (or the vDSO) mapped into the target.
#[derive(Debug, Clone)]
pub struct LoadedModule {
    /// Short name for frames without a symbol: the file name, or `[vdso]`.
    pub name: String,
    /// The path as the target sees it (in its mount namespace).
    pub path: PathBuf,
    /// Where peerlog can read this very file: `/proc/PID/root/PATH` when
    /// that is the mapped inode (it keeps the directory, where debug links
    /// point), else `/proc/PID/map_files/...` (also after the file was
    /// replaced or deleted). None for the vDSO, which is read from memory.
    pub readable: Option<PathBuf>,
    /// Addresses its mappings cover, lowest to highest.
    pub avma: Range<u64>,
    /// Load bias: address in the process = address in the file + bias.
    pub bias: u64,
    /// True for the target's executable (`/proc/PID/exe`).
    pub is_executable: bool,
}

impl LoadedModule {
    /// The address in the file (as in `readelf`, the symbol tables and DWARF)
    /// of an address in the process.
    pub fn file_address(&self, avma: u64) -> u64 {
        avma.wrapping_sub(self.bias)
    }
}

/// The module of `modules` (sorted by address) that `avma` is in.
pub fn module_at(modules: &[LoadedModule], avma: u64) -> Option<&LoadedModule> {
    let i = modules.partition_point(|m| m.avma.start <= avma);
    modules[..i].last().filter(|m| m.avma.contains(&avma))
}

/// A walked stack: code addresses from the sampled instruction outwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkedStack {
    /// Addresses to symbolize, innermost first: the instruction pointer,
    /// then each return address minus one (inside the call instruction, so
    /// that a call at the very end of a function is attributed to it).
    pub frames: Vec<u64>,
    /// The walk ended where the call frame information says the stack ends
    /// (`clone3` for threads, `_start` for the main thread), inside a known
    /// module: the whole stack is there. False when it stopped early: stack
    /// copy too short, no unwind information, a corrupt frame.
    pub reached_thread_entry: bool,
}

/// The target's modules and an unwinder over them.
pub struct StackWalker {
    pid: i32,
    /// `(st_dev, st_ino)` of `/proc/PID/exe`, to tell the executable apart.
    executable: Option<(u64, u64)>,
    /// `--debug-file`: its `.debug_frame` serves an executable without
    /// `.eh_frame`.
    debug_file: Option<PathBuf>,
    modules: Vec<LoadedModule>,
    unwinder: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    last_refresh: Instant,
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    range: Range<u64>,
    executable: bool,
    offset: u64,
    device: (u32, u32),
    inode: u64,
    path: String,
}

fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (range, perms, offset, device, inode) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            let path = fields.next().unwrap_or("").trim_start().to_string();
            let (start, end) = range.split_once('-')?;
            let (major, minor) = device.split_once(':')?;
            Some(Mapping {
                range: u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?,
                executable: perms.as_bytes().get(2) == Some(&b'x'),
                offset: u64::from_str_radix(offset, 16).ok()?,
                device: (
                    u32::from_str_radix(major, 16).ok()?,
                    u32::from_str_radix(minor, 16).ok()?,
                ),
                inode: inode.parse().ok()?,
                path,
            })
        })
        .collect()
}

/// The load bias of a module from one of its mappings: the mapping at
/// `start` holds the file from `offset`, which lies in the PT_LOAD segment
/// `(p_vaddr, p_offset)`; the ELF rule `p_vaddr ≡ p_offset (mod page)` makes
/// the page rounding of the mapping cancel out.
fn load_bias(start: u64, offset: u64, segments: &[(u64, u64, u64)]) -> Option<u64> {
    segments
        .iter()
        .find(|&&(_, p_offset, p_filesz)| {
            p_offset & !0xfff <= offset && offset < p_offset + p_filesz.max(1)
        })
        .map(|&(p_vaddr, p_offset, _)| {
            start
                .wrapping_sub(offset)
                .wrapping_sub(p_vaddr.wrapping_sub(p_offset))
        })
}

/// What framehop needs of one ELF image, and the module's bias.
struct UnwindSections {
    bias: u64,
    info: ExplicitModuleSectionInfo<Vec<u8>>,
}

fn unwind_sections<'a, R: object::ReadRef<'a>>(
    elf: &object::File<'a, R>,
    first_exec: (u64, u64),
    debug_frame_source: Option<&object::File<'a, R>>,
) -> Option<UnwindSections> {
    let segments: Vec<(u64, u64, u64)> = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (s.address(), offset, size)
        })
        .collect();
    let exec_segments: Vec<(u64, u64, u64)> = elf
        .segments()
        .filter(|s| matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0))
        .map(|s| {
            let (offset, size) = s.file_range();
            (s.address(), offset, size)
        })
        .collect();
    let (start, offset) = first_exec;
    let bias =
        load_bias(start, offset, &exec_segments).or_else(|| load_bias(start, offset, &segments))?;
    let range = |name: &str| {
        elf.section_by_name(name)
            .map(|s| s.address()..s.address() + s.size())
    };
    let data = |elf: &object::File<'a, R>, name: &str| {
        elf.section_by_name(name)
            .and_then(|s| s.data().ok())
            .filter(|d| !d.is_empty())
            .map(<[u8]>::to_vec)
    };
    let eh_frame = data(elf, ".eh_frame");
    let debug_frame = if eh_frame.is_some() {
        None
    } else {
        data(elf, ".debug_frame")
            .or_else(|| debug_frame_source.and_then(|d| data(d, ".debug_frame")))
    };
    Some(UnwindSections {
        bias,
        info: ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: range(".text"),
            got_svma: range(".got"),
            eh_frame_svma: range(".eh_frame"),
            eh_frame,
            eh_frame_hdr_svma: range(".eh_frame_hdr"),
            eh_frame_hdr: data(elf, ".eh_frame_hdr"),
            debug_frame,
            ..Default::default()
        },
    })
}

impl StackWalker {
    /// Reads the modules of process `pid`. `debug_file` is the executable's
    /// separate debug file, if the user named one.
    pub fn new(pid: i32, debug_file: Option<&Path>) -> Result<Self> {
        let executable = std::fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let mut walker = Self {
            pid,
            executable,
            debug_file: debug_file.map(Path::to_path_buf),
            modules: Vec::new(),
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            last_refresh: Instant::now(),
        };
        walker
            .refresh()
            .with_context(|| format!("reading the modules of pid {pid}"))?;
        Ok(walker)
    }

    /// The modules known so far, by address.
    pub fn modules(&self) -> &[LoadedModule] {
        &self.modules
    }

    /// The module an address is in.
    pub fn module_of(&self, avma: u64) -> Option<&LoadedModule> {
        module_at(&self.modules, avma)
    }

    /// Re-reads `/proc/PID/maps`, adding modules that appeared and dropping
    /// those that went away.
    fn refresh(&mut self) -> io::Result<()> {
        self.last_refresh = Instant::now();
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))?;
        let mappings = parse_maps(&maps);

        // Group file mappings by inode; the vDSO is its own group.
        let mut groups: Vec<Vec<&Mapping>> = Vec::new();
        for m in &mappings {
            let is_file = m.path.starts_with('/') && m.inode != 0;
            if !is_file && m.path != "[vdso]" {
                continue;
            }
            match groups.iter_mut().find(|g| {
                let first = g[0];
                first.inode == m.inode && first.device == m.device && first.path == m.path
            }) {
                Some(g) => g.push(m),
                None => groups.push(vec![m]),
            }
        }

        let mut modules = Vec::new();
        for group in groups {
            let Some(first_exec) = group.iter().find(|m| m.executable) else {
                continue;
            };
            let avma = group.iter().map(|m| m.range.start).min().unwrap_or(0)
                ..group.iter().map(|m| m.range.end).max().unwrap_or(0);
            if let Some(known) = self
                .modules
                .iter()
                .find(|k| k.avma == avma && k.path.as_os_str() == first_exec.path.as_str())
            {
                modules.push(known.clone());
                continue;
            }
            match self.load_module(first_exec, avma) {
                Ok(Some((module, info))) => {
                    self.unwinder.add_module(Module::new(
                        module.name.clone(),
                        module.avma.clone(),
                        module.bias,
                        info,
                    ));
                    modules.push(module);
                }
                Ok(None) => {}
                Err(e) => log::debug!("not unwinding through {}: {e:#}", first_exec.path),
            }
        }
        for gone in self
            .modules
            .iter()
            .filter(|k| !modules.iter().any(|m| m.avma == k.avma))
        {
            self.unwinder.remove_module(gone.avma.start);
        }
        modules.sort_by_key(|m| m.avma.start);
        self.modules = modules;
        Ok(())
    }

    fn load_module(
        &self,
        first_exec: &Mapping,
        avma: Range<u64>,
    ) -> Result<Option<(LoadedModule, ExplicitModuleSectionInfo<Vec<u8>>)>> {
        if first_exec.path == "[vdso]" {
            // The vDSO exists only in memory; it is a complete ELF image.
            let mem = File::open(format!("/proc/{}/mem", self.pid))?;
            let mut image = vec![0u8; (first_exec.range.end - first_exec.range.start) as usize];
            mem.read_exact_at(&mut image, first_exec.range.start)?;
            let elf = object::File::parse(&*image)?;
            let Some(sections) = unwind_sections(&elf, (first_exec.range.start, 0), None) else {
                return Ok(None);
            };
            let module = LoadedModule {
                name: "[vdso]".into(),
                path: "[vdso]".into(),
                readable: None,
                avma,
                bias: sections.bias,
                is_executable: false,
            };
            return Ok(Some((module, sections.info)));
        }

        let path = PathBuf::from(first_exec.path.trim_end_matches(" (deleted)"));
        let through_root = PathBuf::from(format!("/proc/{}/root", self.pid))
            .join(path.strip_prefix("/").unwrap_or(&path));
        let same_file = std::fs::metadata(&through_root).is_ok_and(|m| {
            m.ino() == first_exec.inode
                && (libc::major(m.dev()), libc::minor(m.dev())) == first_exec.device
        });
        let readable = if same_file {
            through_root
        } else {
            PathBuf::from(format!(
                "/proc/{}/map_files/{:x}-{:x}",
                self.pid, first_exec.range.start, first_exec.range.end
            ))
        };
        let is_executable = std::fs::metadata(&readable)
            .ok()
            .map(|m| (m.dev(), m.ino()))
            .is_some_and(|id| Some(id) == self.executable);

        let file =
            File::open(&readable).with_context(|| format!("opening {}", readable.display()))?;
        let cache = object::ReadCache::new(file);
        let elf = object::File::parse(&cache)
            .with_context(|| format!("{} is not an ELF file", readable.display()))?;
        let debug_cache = match (&self.debug_file, is_executable) {
            (Some(debug), true) => File::open(debug).ok().map(object::ReadCache::new),
            _ => None,
        };
        let debug = debug_cache
            .as_ref()
            .and_then(|c| object::File::parse(c).ok());
        let Some(sections) = unwind_sections(
            &elf,
            (first_exec.range.start, first_exec.offset),
            debug.as_ref(),
        ) else {
            return Ok(None);
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| first_exec.path.clone());
        let module = LoadedModule {
            name,
            path,
            readable: Some(readable),
            avma,
            bias: sections.bias,
            is_executable,
        };
        Ok(Some((module, sections.info)))
    }

    /// Walks the stack of one sample.
    pub fn walk(&mut self, sample: &CpuSample) -> WalkedStack {
        let walked = self.walk_once(sample);
        // An address outside every module may be in a library loaded since
        // the last look at the maps: look again (not more often than
        // REFRESH_INTERVAL) and walk once more.
        let unknown = walked.frames.iter().any(|&a| self.module_of(a).is_none());
        if unknown && self.last_refresh.elapsed() >= REFRESH_INTERVAL {
            if let Err(e) = self.refresh() {
                log::debug!("re-reading /proc/{}/maps: {e}", self.pid);
            }
            return self.walk_once(sample);
        }
        walked
    }

    fn walk_once(&mut self, sample: &CpuSample) -> WalkedStack {
        let stack = &sample.stack;
        let base = sample.rsp;
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let offset = addr.checked_sub(base).ok_or(())? as usize;
            let bytes = stack
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut regs = UnwindRegsX86_64::new(sample.rip, sample.rsp, sample.rbp);
        let mut address = FrameAddress::from_instruction_pointer(sample.rip);
        let mut frames = Vec::new();
        let mut reached_thread_entry = false;
        while frames.len() < MAX_FRAMES {
            frames.push(address.address_for_lookup());
            match self
                .unwinder
                .unwind_frame(address, &mut regs, &mut self.cache, &mut read_stack)
            {
                Ok(Some(return_address)) => {
                    match FrameAddress::from_return_address(return_address) {
                        Some(next) => address = next,
                        None => break,
                    }
                }
                Ok(None) => {
                    // framehop also ends a walk when the frame-pointer
                    // fallback meets rbp = 0, which in code without frame
                    // pointers proves nothing: only an end inside a module
                    // (whose CFI marks its outermost frame) counts.
                    reached_thread_entry = self.module_of(address.address_for_lookup()).is_some();
                    break;
                }
                Err(_) => break,
            }
        }
        WalkedStack {
            frames,
            reached_thread_entry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_are_parsed() {
        let text = "\
55d0c8a00000-55d0c8a20000 r--p 00000000 08:01 1312 /usr/local/bin/bitcoind
55d0c8a20000-55d0c9000000 r-xp 00020000 08:01 1312 /usr/local/bin/bitcoind
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
7ffd1c3f2000-7ffd1c3f4000 r-xp 00000000 00:00 0                          [vdso]
7f1000000000-7f1000001000 r-xp 00001000 fd:02 77 /opt/my dir/lib x.so (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[1].range, 0x55d0c8a20000..0x55d0c9000000);
        assert!(maps[1].executable && !maps[0].executable);
        assert_eq!(maps[1].offset, 0x20000);
        assert_eq!(maps[1].device, (8, 1));
        assert_eq!(maps[1].inode, 1312);
        assert_eq!(maps[2].path, "");
        assert_eq!(maps[3].path, "[vdso]");
        assert_eq!(maps[4].path, "/opt/my dir/lib x.so (deleted)");
        assert_eq!(maps[4].device, (0xfd, 2));
    }

    #[test]
    fn load_bias_of_pie_and_fixed_executables() {
        // PIE: the text segment at vaddr 0x21000, file offset 0x20000,
        // mapped at 0x55d0c8a20000 from offset 0x20000.
        let segments = [(0, 0, 0x1f000), (0x21000, 0x20000, 0x5e0000)];
        assert_eq!(
            load_bias(0x55d0c8a21000, 0x20000, &segments),
            Some(0x55d0c8a00000)
        );
        // Non-PIE at 0x400000: bias 0.
        let segments = [(0x400000, 0, 0x1000), (0x401000, 0x1000, 0x5000)];
        assert_eq!(load_bias(0x401000, 0x1000, &segments), Some(0));
        assert_eq!(load_bias(0x401000, 0x90000, &segments), None);
    }
}
