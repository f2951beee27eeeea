//! The target's modules, and the unwind tables the kernel walks its stacks
//! with.
//!
//! bitcoind is built without frame pointers, so a sample's callers are
//! found the way a debugger finds them: from the DWARF call frame
//! information (`.eh_frame`, or `.debug_frame` where a module has no
//! `.eh_frame`) of the module each address is in. The modules are the
//! target's executable, its shared libraries (libc, libstdc++, libevent,
//! ...) and the vDSO, read from `/proc/PID/maps`. At attach, the call frame
//! information of each is compiled into compact rows sorted by address
//! ([`UnwindTables`]): per address range, how to find the caller's stack
//! pointer (the CFA: rsp or rbp plus an offset), its return address (at
//! CFA - 8 on x86-64) and its rbp. The kernel looks rows up by binary
//! search and walks each sampled stack itself, reading a few words per
//! frame (see `peerlog-ebpf/src/profile.rs`); here the walked addresses
//! are only named.

use std::{
    borrow::Cow,
    fs::File,
    io,
    ops::Range,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};
use peerlog_common::{
    cfa, PackedRow, UnwindBucket, UnwindModule, UnwindRow, MAX_UNWIND_MODULES, RBP_LOST, RBP_SAME,
    UNWIND_BUCKET_ROWS, UNWIND_BUCKET_SHIFT,
};

use crate::elf::debuginfo::Mapped;

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

/// The unwind rows of the target's modules, as the kernel's maps hold them.
#[derive(Debug, Default)]
pub struct UnwindTables {
    /// The modules with rows, by address; `first_row`/`rows` index `rows`.
    pub modules: Vec<UnwindModule>,
    /// The rows of all modules, each module's sorted by address.
    pub rows: Vec<UnwindRow>,
    /// The buckets of all modules (see [`UnwindBucket`]).
    pub buckets: Vec<UnwindBucket>,
}

/// The buckets of one module's `rows` (sorted, not empty), whose first row
/// is row `first_row` of the whole table, and the file address of the first
/// bucket. The buckets run up to the one the last row starts in; past it,
/// the last row applies.
fn bucket_index(rows: &[UnwindRow], first_row: u32) -> (u32, Vec<UnwindBucket>) {
    let size = 1u32 << UNWIND_BUCKET_SHIFT;
    let base = rows[0].pc >> UNWIND_BUCKET_SHIFT << UNWIND_BUCKET_SHIFT;
    let last = rows[rows.len() - 1].pc;
    let count = ((last - base) >> UNWIND_BUCKET_SHIFT) + 1;
    // The row that covers `address`, or the first row.
    let covering = |address: u32| rows.partition_point(|r| r.pc <= address).saturating_sub(1);
    let buckets = (0..count)
        .map(|bucket| {
            let start = base + bucket * size;
            let first = covering(start);
            let last = covering(start + (size - 1));
            let own = &rows[first..=last];
            let packed: Option<Vec<u32>> = own
                .iter()
                .map(|r| PackedRow::pack(r.pc.saturating_sub(start), r))
                .collect();
            let mut bucket = UnwindBucket {
                first_row: first_row + first as u32,
                table_rows: own.len() as u16,
                ..UnwindBucket::default()
            };
            if let Some(packed) = packed.filter(|p| p.len() <= UNWIND_BUCKET_ROWS) {
                bucket.packed = packed.len() as u16;
                bucket.rows[..packed.len()].copy_from_slice(&packed);
            }
            bucket
        })
        .collect();
    (base, buckets)
}

/// The target's modules, for unwinding and naming.
pub struct TargetModules {
    pid: i32,
    /// `(st_dev, st_ino)` of `/proc/PID/exe`, to tell the executable apart.
    executable: Option<(u64, u64)>,
    /// `--debug-file`: its `.debug_frame` serves an executable without
    /// `.eh_frame`.
    debug_file: Option<PathBuf>,
    modules: Vec<LoadedModule>,
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

/// The ELF image of a module: a file mapped into memory, or the vDSO copied
/// out of the target.
enum Image {
    Mapped(Mapped),
    Memory(Vec<u8>),
}

impl Image {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m.bytes(),
            Self::Memory(v) => v,
        }
    }
}

/// The load bias of the module whose first executable mapping starts at
/// `first_exec.0` and maps file offset `first_exec.1`.
fn module_bias<'a, R: object::ReadRef<'a>>(
    elf: &object::File<'a, R>,
    first_exec: (u64, u64),
) -> Option<u64> {
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
    load_bias(start, offset, &exec_segments).or_else(|| load_bias(start, offset, &segments))
}

/// `DW_OP_breg7 (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and`:
/// the start of the CFA expression linkers write for PLT entries...
const PLT_EXPRESSION_HEAD: [u8; 6] = [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a];
/// ...then `DW_OP_litN` (N: where in the entry the relocation index has been
/// pushed), and `DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`: rsp + 8,
/// plus 8 from byte N of the 16-byte entry on.
const PLT_EXPRESSION_TAIL: [u8; 4] = [0x2a, 0x33, 0x24, 0x22];

/// The byte of a 16-byte PLT entry from which its CFA is rsp + 16, if
/// `expression` is the PLT's CFA expression.
fn plt_threshold(expression: &[u8]) -> Option<i32> {
    let (head, rest) = expression.split_at_checked(PLT_EXPRESSION_HEAD.len())?;
    let (&lit, tail) = rest.split_first()?;
    (head == PLT_EXPRESSION_HEAD && tail == PLT_EXPRESSION_TAIL && (0x30..=0x4f).contains(&lit))
        .then(|| i32::from(lit - 0x30))
}

/// Compiles one row of gimli's unwind table into an [`UnwindRow`].
fn compile_row<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    pc: u32,
    row: &gimli::UnwindTableRow<usize>,
) -> UnwindRow {
    let unsupported = UnwindRow {
        pc,
        cfa: cfa::UNSUPPORTED,
        ..UnwindRow::default()
    };
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            return UnwindRow {
                pc,
                cfa: cfa::END,
                ..UnwindRow::default()
            }
        }
        Some(RegisterRule::Offset(-8)) | None => {}
        // Signal frames (`__restore_rt`) and hand-written oddities.
        Some(_) => return unsupported,
    }
    let (rule, offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i32::try_from(*offset) else {
                return unsupported;
            };
            match *register {
                X86_64::RSP => (cfa::RSP, offset),
                X86_64::RBP => (cfa::RBP, offset),
                _ => return unsupported,
            }
        }
        CfaRule::Expression(expression) => {
            match expression
                .get(section)
                .ok()
                .and_then(|e| plt_threshold(e.0.slice()))
            {
                Some(threshold) => (cfa::PLT, threshold),
                None => return unsupported,
            }
        }
    };
    let rbp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => RBP_SAME,
        Some(RegisterRule::Offset(offset)) => i16::try_from(offset)
            .ok()
            .filter(|&o| o != RBP_SAME && o != RBP_LOST)
            .unwrap_or(RBP_LOST),
        Some(_) => RBP_LOST,
    };
    UnwindRow {
        pc,
        cfa_offset: offset,
        cfa: rule,
        _pad: 0,
        rbp_offset,
    }
}

/// The rows of every FDE of `section`, sorted by address, with a
/// [`cfa::NONE`] row where an FDE ends and no other begins, and without
/// rows that repeat the one before.
fn compile_section<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
) -> Result<Vec<UnwindRow>> {
    let file_pc = |address: u64| {
        u32::try_from(address).with_context(|| {
            format!("address {address:#x} beyond 4 GiB: no unwind rows for this module")
        })
    };
    // Rows, then the FDE ends: (pc, is_end, row), so that a row that starts
    // where another FDE ends wins over that end.
    let mut rows: Vec<(u32, bool, UnwindRow)> = Vec::new();
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(S::cie_from_offset)?;
        if fde.len() == 0 {
            continue;
        }
        let mut table = fde.rows(section, bases, &mut ctx)?;
        while let Some(row) = table.next_row()? {
            let pc = file_pc(row.start_address())?;
            rows.push((pc, false, compile_row(section, pc, row)));
        }
        let end = file_pc(fde.end_address())?;
        rows.push((
            end,
            true,
            UnwindRow {
                pc: end,
                cfa: cfa::NONE,
                ..UnwindRow::default()
            },
        ));
    }
    rows.sort_unstable_by_key(|&(pc, is_end, _)| (pc, is_end));
    rows.dedup_by_key(|&mut (pc, _, _)| pc);
    let mut compiled: Vec<UnwindRow> = Vec::with_capacity(rows.len());
    for (_, _, row) in rows {
        let repeats = compiled.last().is_some_and(|last| {
            (last.cfa, last.cfa_offset, last.rbp_offset)
                == (row.cfa, row.cfa_offset, row.rbp_offset)
        });
        if !repeats {
            compiled.push(row);
        }
    }
    compiled.shrink_to_fit();
    Ok(compiled)
}

/// The unwind rows of one ELF image: from `.eh_frame`, else from
/// `.debug_frame` (of the image or, for the executable, of its debug file).
fn compile_image(
    elf: &object::File<'_>,
    debug: Option<&object::File<'_>>,
) -> Result<Vec<UnwindRow>> {
    let address = |elf: &object::File<'_>, name: &str| {
        elf.section_by_name(name).map(|s| s.address()).unwrap_or(0)
    };
    let bases = BaseAddresses::default()
        .set_eh_frame(address(elf, ".eh_frame"))
        .set_eh_frame_hdr(address(elf, ".eh_frame_hdr"))
        .set_text(address(elf, ".text"))
        .set_got(address(elf, ".got"));
    if let Some(data) = elf
        .section_by_name(".eh_frame")
        .and_then(|s| s.data().ok())
        .filter(|d| !d.is_empty())
    {
        let mut eh_frame = EhFrame::new(data, LittleEndian);
        eh_frame.set_address_size(8);
        return compile_section(&eh_frame, &bases);
    }
    let debug_frame: Option<Cow<'_, [u8]>> = [Some(elf), debug]
        .into_iter()
        .flatten()
        .find_map(|f| f.section_by_name(".debug_frame")?.uncompressed_data().ok())
        .filter(|d| !d.is_empty());
    let Some(data) = debug_frame else {
        bail!("no .eh_frame and no .debug_frame");
    };
    let mut debug_frame = DebugFrame::new(&data, LittleEndian);
    debug_frame.set_address_size(8);
    compile_section(&debug_frame, &BaseAddresses::default())
}

impl TargetModules {
    /// Reads the modules of process `pid`. `debug_file` is the executable's
    /// separate debug file, if the user named one.
    pub fn new(pid: i32, debug_file: Option<&Path>) -> Result<Self> {
        let executable = std::fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let mut modules = Self {
            pid,
            executable,
            debug_file: debug_file.map(Path::to_path_buf),
            modules: Vec::new(),
            last_refresh: Instant::now(),
        };
        modules
            .refresh()
            .with_context(|| format!("reading the modules of pid {pid}"))?;
        Ok(modules)
    }

    /// The modules known so far, by address.
    pub fn modules(&self) -> &[LoadedModule] {
        &self.modules
    }

    /// The module an address is in.
    pub fn module_of(&self, avma: u64) -> Option<&LoadedModule> {
        module_at(&self.modules, avma)
    }

    /// Re-reads `/proc/PID/maps` if one of `frames` is in no known module
    /// (a library loaded after peerlog attached), so that it can be named;
    /// not more often than every [`REFRESH_INTERVAL`].
    pub fn learn_frames(&mut self, frames: &[u64]) {
        let unknown = frames.iter().any(|&a| self.module_of(a).is_none());
        if unknown && self.last_refresh.elapsed() >= REFRESH_INTERVAL {
            if let Err(e) = self.refresh() {
                log::debug!("re-reading /proc/{}/maps: {e}", self.pid);
            }
        }
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
                Ok(Some(module)) => modules.push(module),
                Ok(None) => {}
                Err(e) => log::debug!("not naming frames in {}: {e:#}", first_exec.path),
            }
        }
        modules.sort_by_key(|m| m.avma.start);
        self.modules = modules;
        Ok(())
    }

    /// The ELF image of `module`.
    fn image(&self, module: &LoadedModule) -> Result<Image> {
        match &module.readable {
            Some(path) => Ok(Image::Mapped(Mapped::open(path)?)),
            None => {
                // The vDSO exists only in memory; it is a complete ELF image
                // in its first mapping.
                let mem = File::open(format!("/proc/{}/mem", self.pid))?;
                let mut image = vec![0u8; (module.avma.end - module.avma.start) as usize];
                mem.read_exact_at(&mut image, module.avma.start)?;
                Ok(Image::Memory(image))
            }
        }
    }

    fn load_module(&self, first_exec: &Mapping, avma: Range<u64>) -> Result<Option<LoadedModule>> {
        if first_exec.path == "[vdso]" {
            let mut module = LoadedModule {
                name: "[vdso]".into(),
                path: "[vdso]".into(),
                readable: None,
                avma,
                bias: 0,
                is_executable: false,
            };
            let image = self.image(&module)?;
            let elf = object::File::parse(image.bytes())?;
            let Some(bias) = module_bias(&elf, (first_exec.range.start, 0)) else {
                return Ok(None);
            };
            module.bias = bias;
            return Ok(Some(module));
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
        let Some(bias) = module_bias(&elf, (first_exec.range.start, first_exec.offset)) else {
            return Ok(None);
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| first_exec.path.clone());
        Ok(Some(LoadedModule {
            name,
            path,
            readable: Some(readable),
            avma,
            bias,
            is_executable,
        }))
    }

    /// Compiles the call frame information of every module into the rows
    /// the kernel walks stacks with. A module whose information cannot be
    /// read is left out: frames in it end their walk (or are walked with
    /// frame pointers), and are marked incomplete.
    pub fn unwind_tables(&self) -> UnwindTables {
        let mut tables = UnwindTables::default();
        let debug = match &self.debug_file {
            Some(path) => match Mapped::open(path) {
                Ok(mapped) => Some(mapped),
                Err(e) => {
                    log::debug!("{e:#}");
                    None
                }
            },
            None => None,
        };
        let debug_elf = debug
            .as_ref()
            .and_then(|d| object::File::parse(d.bytes()).ok());
        for module in &self.modules {
            if tables.modules.len() == MAX_UNWIND_MODULES as usize {
                log::warn!(
                    "more than {MAX_UNWIND_MODULES} modules: no unwind rows for {} and later ones",
                    module.name
                );
                break;
            }
            let rows = self.image(module).and_then(|image| {
                let elf = object::File::parse(image.bytes())?;
                let debug = debug_elf.as_ref().filter(|_| module.is_executable);
                compile_image(&elf, debug)
            });
            let rows = match rows {
                Ok(rows) if !rows.is_empty() => rows,
                Ok(_) => continue,
                Err(e) => {
                    log::info!("no unwind rows for {}: {e:#}", module.name);
                    continue;
                }
            };
            let first_row = tables.rows.len() as u32;
            let (bucket_base, buckets) = bucket_index(&rows, first_row);
            tables.modules.push(UnwindModule {
                start: module.avma.start,
                end: module.avma.end,
                bias: module.bias,
                first_row,
                rows: rows.len() as u32,
                bucket_base,
                first_bucket: tables.buckets.len() as u32,
                buckets: buckets.len() as u32,
                _pad: 0,
            });
            tables.rows.extend_from_slice(&rows);
            tables.buckets.extend_from_slice(&buckets);
        }
        tables
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
    fn buckets_hold_the_rows_that_cover_them() {
        let row = |pc| UnwindRow {
            pc,
            cfa_offset: 8,
            ..UnwindRow::default()
        };
        // Rows at 0x1010, 0x1020, 0x1200 (bucket 2), 0x1480 (bucket 4).
        let rows = [row(0x1010), row(0x1020), row(0x1200), row(0x1480)];
        let (base, buckets) = bucket_index(&rows, 100);
        assert_eq!(base, 0x1000);
        let firsts: Vec<_> = buckets
            .iter()
            .map(|b| (b.first_row, b.table_rows))
            .collect();
        // Bucket 0 starts before the first row: its rows start there.
        assert_eq!(firsts, [(100, 2), (101, 1), (102, 1), (102, 1), (102, 2)]);
        let offsets = |b: &UnwindBucket| -> Vec<u32> {
            b.rows[..usize::from(b.packed)]
                .iter()
                .map(|&bits| PackedRow::unpack(bits).offset)
                .collect()
        };
        assert_eq!(offsets(&buckets[0]), [0x10, 0x20]);
        // A row carried in from below applies from the bucket's start.
        assert_eq!(offsets(&buckets[3]), [0]);
        assert_eq!(offsets(&buckets[4]), [0, 0x80]);
        assert_eq!(PackedRow::unpack(buckets[4].rows[1]).row.cfa_offset, 8);
    }

    #[test]
    fn buckets_whose_rows_do_not_fit_keep_to_the_table() {
        // One row more than a bucket holds (with none carried in).
        let rows: Vec<_> = (0..=UNWIND_BUCKET_ROWS as u32)
            .map(|i| UnwindRow {
                pc: 0x2000 + 4 * i,
                cfa_offset: 8 * (i as i32 + 1),
                ..UnwindRow::default()
            })
            .collect();
        let (_, buckets) = bucket_index(&rows, 0);
        assert_eq!(buckets.len(), 1);
        assert_eq!(buckets[0].packed, 0);
        assert_eq!(usize::from(buckets[0].table_rows), rows.len());
        // A CFA offset that is no multiple of 8 cannot be packed either.
        let odd = [UnwindRow {
            pc: 0x3000,
            cfa_offset: 12,
            ..UnwindRow::default()
        }];
        assert_eq!(bucket_index(&odd, 0).1[0].packed, 0);
    }

    #[test]
    fn packed_rows_read_back_as_written() {
        let rows = [
            // bitcoind's b-net receive path: a frame over 64 KiB.
            (cfa::RSP, 0x10068, RBP_SAME),
            (cfa::RBP, 16, -16),
            (cfa::RSP, 56, -48),
            (cfa::RSP, 8, RBP_LOST),
            (cfa::PLT, 11, RBP_SAME),
            (cfa::END, 0, RBP_SAME),
            (cfa::NONE, 0, RBP_SAME),
            (cfa::UNSUPPORTED, 0, RBP_SAME),
        ];
        for (i, (rule, cfa_offset, rbp_offset)) in rows.into_iter().enumerate() {
            let row = UnwindRow {
                pc: 0,
                cfa_offset,
                cfa: rule,
                _pad: 0,
                rbp_offset,
            };
            let offset = 31 * i as u32;
            let bits = PackedRow::pack(offset, &row).unwrap();
            assert_eq!(PackedRow::unpack(bits), PackedRow { offset, row });
        }
        let row = |cfa_offset, rbp_offset| UnwindRow {
            cfa_offset,
            rbp_offset,
            ..UnwindRow::default()
        };
        // Past the bucket, past 16 bits of CFA offset, an rbp saved above
        // the CFA or too far below it: the bucket keeps to the table.
        assert_eq!(PackedRow::pack(256, &row(8, RBP_SAME)), None);
        assert_eq!(PackedRow::pack(0, &row(8 << 16, RBP_SAME)), None);
        assert_eq!(PackedRow::pack(0, &row(-8, RBP_SAME)), None);
        assert_eq!(PackedRow::pack(0, &row(8, 8)), None);
        assert_eq!(PackedRow::pack(0, &row(8, -8 * 31)), None);
        assert_eq!(PackedRow::pack(0, &row(8, -12)), None);
    }

    #[test]
    fn plt_rule_is_recognised() {
        // ld's .plt CFA expression: rsp + 8 + ((rip & 15) >= 11) * 8.
        let plt = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(plt_threshold(&plt), Some(11));
        assert_eq!(plt_threshold(&plt[..10]), None);
        assert_eq!(plt_threshold(&[0x77, 0x08]), None);
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
