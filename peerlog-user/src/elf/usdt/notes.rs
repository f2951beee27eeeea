//! Finding the `.note.stapsdt` notes of an x86-64 ELF64 binary and
//! turning probe and semaphore addresses into file offsets, as libbpf's
//! `usdt.c` does.

use object::elf::{FileHeader64, PF_W, PF_X, PT_LOAD, SHT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{Endian, Endianness, FileKind};

use super::probe::{parse_args, UsdtError, UsdtProbe};

/// Section holding one note per probe site.
pub(super) const NOTE_SECTION: &[u8] = b".note.stapsdt";
/// One-byte marker section whose link-time address every note records, so
/// that a binary relocated after linking (prelink) can be detected.
const BASE_SECTION: &[u8] = b".stapsdt.base";
/// Note owner of SDT probe notes.
const NOTE_OWNER: &[u8] = b"stapsdt";
/// `NT_STAPSDT`: the note type of a version-3 SDT probe descriptor.
const NOTE_TYPE: u32 = 3;

/// A `PT_LOAD` program header, reduced to what address translation needs.
#[derive(Clone, Copy, Debug)]
struct LoadSegment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    flags: u32,
}

impl LoadSegment {
    fn contains(&self, address: u64) -> bool {
        address >= self.vaddr && address - self.vaddr < self.memsz
    }

    fn file_offset(&self, address: u64) -> u64 {
        address - self.vaddr + self.offset
    }
}

/// The fields of one `.note.stapsdt` descriptor.
pub(super) struct RawNote {
    pub(super) location: u64,
    pub(super) base: u64,
    pub(super) semaphore: u64,
    pub(super) provider: String,
    pub(super) name: String,
    pub(super) args: String,
}

/// Reads every USDT probe of an x86-64 ELF64 binary (executable, PIE, or
/// shared library), in note order.
///
/// Strict: the first probe whose address cannot be translated or whose
/// arguments cannot be parsed fails the whole read, naming the probe. Use
/// [`read_probes_lenient`] to keep the good probes of such a binary.
///
/// # Errors
///
/// Everything [`read_probes_lenient`] fails on, and the first per-probe
/// error ([`UsdtError::ProbeAddress`], [`UsdtError::SemaphoreAddress`],
/// [`UsdtError::ProbeArgs`]).
pub fn read_probes(elf: &[u8]) -> Result<Vec<UsdtProbe>, UsdtError> {
    let (probes, errors) = read_probes_lenient(elf)?;
    match errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(probes),
    }
}

/// Like [`read_probes`], but a probe that cannot be used (unparseable
/// arguments, address outside every segment) is returned as an error next
/// to the good probes instead of failing the read.
///
/// Why: the probes of one binary come from many compiler decisions; one odd
/// operand in a probe peerlog never attaches to should not stop tracing the
/// others.
///
/// # Errors
///
/// Errors about the file as a whole still fail: [`UsdtError::Elf`] (not
/// ELF), [`UsdtError::Unsupported`] (not x86-64 ELF64),
/// [`UsdtError::NoProbes`], [`UsdtError::BadNote`].
pub fn read_probes_lenient(elf: &[u8]) -> Result<(Vec<UsdtProbe>, Vec<UsdtError>), UsdtError> {
    let header = elf64_x86_64_header(elf)?;
    let endian = header.endian().map_err(|e| UsdtError::Elf(e.to_string()))?;

    let segments: Vec<LoadSegment> = header
        .program_headers(endian, elf)
        .map_err(|e| UsdtError::Elf(e.to_string()))?
        .iter()
        .filter(|ph| ph.p_type(endian) == PT_LOAD)
        .map(|ph| LoadSegment {
            vaddr: ph.p_vaddr(endian),
            memsz: ph.p_memsz(endian),
            offset: ph.p_offset(endian),
            flags: ph.p_flags(endian),
        })
        .collect();

    let sections = header
        .sections(endian, elf)
        .map_err(|e| UsdtError::Elf(e.to_string()))?;
    // Without the marker section there is nothing to correct against.
    let base_section = sections
        .section_by_name(endian, BASE_SECTION)
        .map(|(_, sh)| sh.sh_addr(endian));

    let mut notes = Vec::new();
    for sh in sections.iter() {
        if sections.section_name(endian, sh) != Ok(NOTE_SECTION) || sh.sh_type(endian) != SHT_NOTE {
            continue;
        }
        let mut iter = match sh.notes(endian, elf) {
            Ok(Some(iter)) => iter,
            Ok(None) => continue,
            Err(e) => {
                return Err(UsdtError::BadNote {
                    index: notes.len(),
                    reason: e.to_string(),
                })
            }
        };
        loop {
            let note = match iter.next() {
                Ok(Some(note)) => note,
                Ok(None) => break,
                Err(e) => {
                    return Err(UsdtError::BadNote {
                        index: notes.len(),
                        reason: e.to_string(),
                    })
                }
            };
            // Other owners or types (e.g. older SDT note versions) are not
            // probe descriptors we understand; skip rather than fail.
            if note.name() != NOTE_OWNER || note.n_type(endian) != NOTE_TYPE {
                continue;
            }
            let raw = parse_descriptor(note.desc()).map_err(|reason| UsdtError::BadNote {
                index: notes.len(),
                reason: reason.to_string(),
            })?;
            notes.push(raw);
        }
    }
    if notes.is_empty() {
        return Err(UsdtError::NoProbes);
    }

    let mut probes = Vec::with_capacity(notes.len());
    let mut errors = Vec::new();
    for raw in notes {
        match resolve_probe(raw, base_section, &segments) {
            Ok(probe) => probes.push(probe),
            Err(error) => errors.push(error),
        }
    }
    Ok((probes, errors))
}

/// Checks the file is x86-64 little-endian ELF64, the only kind supported,
/// and says what it is otherwise.
fn elf64_x86_64_header(elf: &[u8]) -> Result<&FileHeader64<Endianness>, UsdtError> {
    const ONLY: &str = "peerlog reads only x86-64 little-endian ELF64 binaries";
    match FileKind::parse(elf) {
        Ok(FileKind::Elf64) => {}
        Ok(FileKind::Elf32) => {
            let machine = object::elf::FileHeader32::<Endianness>::parse(elf)
                .ok()
                .and_then(|h| h.endian().ok().map(|e| h.e_machine(e)))
                .map(machine_name)
                .unwrap_or_else(|| "unknown machine".to_string());
            return Err(UsdtError::Unsupported(format!(
                "32-bit ELF ({machine}); {ONLY}"
            )));
        }
        Ok(other) => {
            return Err(UsdtError::Elf(format!(
                "file is {other:?}, not ELF; {ONLY}"
            )))
        }
        Err(e) => return Err(UsdtError::Elf(e.to_string())),
    }
    let header =
        FileHeader64::<Endianness>::parse(elf).map_err(|e| UsdtError::Elf(e.to_string()))?;
    let endian = header.endian().map_err(|e| UsdtError::Elf(e.to_string()))?;
    if !endian.is_little_endian() {
        return Err(UsdtError::Unsupported(format!("big-endian ELF64; {ONLY}")));
    }
    let machine = header.e_machine(endian);
    if machine != object::elf::EM_X86_64 {
        return Err(UsdtError::Unsupported(format!(
            "ELF64 for {}; {ONLY}",
            machine_name(machine)
        )));
    }
    Ok(header)
}

/// A readable name for `e_machine`, for "unsupported" messages.
fn machine_name(machine: u16) -> String {
    use object::elf::*;
    let name = match machine {
        EM_X86_64 => "x86-64",
        EM_386 => "i386",
        EM_AARCH64 => "aarch64",
        EM_ARM => "arm",
        EM_RISCV => "riscv",
        EM_PPC64 => "ppc64",
        EM_PPC => "ppc",
        EM_S390 => "s390x",
        EM_MIPS => "mips",
        EM_LOONGARCH => "loongarch",
        EM_SPARCV9 => "sparc64",
        _ => return format!("machine {machine}"),
    };
    name.to_string()
}

/// Splits a descriptor: three addresses, then NUL-terminated provider, name, args.
pub(super) fn parse_descriptor(desc: &[u8]) -> Result<RawNote, &'static str> {
    // Three u64 addresses, then at least a provider NUL and a one-byte name.
    if desc.len() < 24 + 2 {
        return Err("descriptor shorter than three addresses and two names");
    }
    let word = |i: usize| u64::from_le_bytes(desc[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let mut strings = desc[24..].splitn(3, |&b| b == 0);
    let provider = strings.next().unwrap_or_default();
    let name = strings.next().ok_or("provider is not NUL-terminated")?;
    if name.is_empty() {
        return Err("empty probe name");
    }
    // What follows the name is the argument string; a probe without
    // arguments has an empty one (or, if truncated, none at all).
    let args = match strings.next() {
        Some(rest) => rest.split(|&b| b == 0).next().unwrap_or_default(),
        None if desc.ends_with(&[0]) => &[][..],
        None => return Err("probe name is not NUL-terminated"),
    };
    if provider.is_empty() {
        return Err("empty provider name");
    }
    Ok(RawNote {
        location: word(0),
        base: word(1),
        semaphore: word(2),
        provider: String::from_utf8_lossy(provider).into_owned(),
        name: String::from_utf8_lossy(name).into_owned(),
        args: String::from_utf8_lossy(args).into_owned(),
    })
}

/// Turns a note into a probe: base correction, file offsets, arguments.
fn resolve_probe(
    raw: RawNote,
    base_section: Option<u64>,
    segments: &[LoadSegment],
) -> Result<UsdtProbe, UsdtError> {
    // The note is not allocated, so tools that move the binary after linking
    // (prelink) do not update it; they do move `.stapsdt.base`, whose
    // link-time address each note recorded. The difference is the shift.
    let mut address = raw.location;
    if let Some(section_addr) = base_section {
        if section_addr != 0 && raw.base != 0 {
            address = address.wrapping_add(section_addr.wrapping_sub(raw.base));
        }
    }

    let probe_err = |reason: String| UsdtError::ProbeAddress {
        provider: raw.provider.clone(),
        name: raw.name.clone(),
        address,
        reason,
    };
    // A uprobe is placed by file offset, for executables and PIEs alike.
    let file_offset = match segments
        .iter()
        .find(|s| s.contains(address) && s.flags & PF_X != 0)
    {
        Some(seg) => seg.file_offset(address),
        None if segments.iter().any(|s| s.contains(address)) => return Err(probe_err(
            "lies in a non-executable PT_LOAD segment; the binary or its notes are inconsistent"
                .to_string(),
        )),
        None => {
            return Err(probe_err(
                "no PT_LOAD segment contains it; the binary or its notes are inconsistent"
                    .to_string(),
            ))
        }
    };

    // The kernel's uprobe reference counter is given as a file offset too,
    // and it only updates writable file mappings.
    let (semaphore, semaphore_file_offset) = if raw.semaphore == 0 {
        (None, None)
    } else {
        let sema = raw.semaphore;
        let sema_err = |reason: &str| UsdtError::SemaphoreAddress {
            provider: raw.provider.clone(),
            name: raw.name.clone(),
            address: sema,
            reason: reason.to_string(),
        };
        match segments
            .iter()
            .find(|s| s.contains(sema) && s.flags & PF_W != 0)
        {
            Some(seg) => (Some(sema), Some(seg.file_offset(sema))),
            None if segments.iter().any(|s| s.contains(sema)) => {
                return Err(sema_err(
                    "lies in a read-only PT_LOAD segment, where the kernel cannot count attached tracers",
                ))
            }
            None => return Err(sema_err("no PT_LOAD segment contains it")),
        }
    };

    let args = parse_args(&raw.args).map_err(|source| UsdtError::ProbeArgs {
        provider: raw.provider.clone(),
        name: raw.name.clone(),
        raw_args: raw.args.clone(),
        source: Box::new(source),
    })?;

    Ok(UsdtProbe {
        provider: raw.provider,
        name: raw.name,
        address,
        file_offset,
        semaphore,
        semaphore_file_offset,
        args,
        raw_args: raw.args,
    })
}
