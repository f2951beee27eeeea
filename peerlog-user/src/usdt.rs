//! A pure-Rust reader for USDT (SystemTap SDT) probes in x86-64 ELF binaries.
//!
//! Bitcoin Core's tracepoints (`TRACEPOINT(net, inbound_message, ...)` in
//! `util/trace.h`) expand to `sys/sdt.h` probes: a `nop` in the code plus an
//! ELF note in the non-allocated section `.note.stapsdt` that says where the
//! `nop` is, where its semaphore is, and where each argument lives at that
//! instruction (`-8@%r13`, `8@-936(%rbp)`, `-4@$5`, ...).
//!
//! This module turns those notes into what a uprobe needs: the file offset to
//! attach at, the file offset of the semaphore (the uprobe reference counter,
//! which the kernel raises so that Bitcoin Core v29+ actually reaches its
//! probes), and, per argument, a [`peerlog_common::UsdtArgSpec`] the eBPF side
//! interprets. The behaviour follows libbpf's `usdt.c`, which is what
//! `bpftrace` and BCC users get, so a binary that works with those works here.
//!
//! Only x86-64 little-endian ELF64 is supported: the argument syntax and the
//! `struct pt_regs` layout are architecture specific, and peerlog's eBPF side
//! knows only x86-64's.

use std::fmt;

use object::elf::{FileHeader64, PF_W, PF_X, PT_LOAD, SHT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{Endian, Endianness, FileKind};
use peerlog_common::{UsdtArgKind, UsdtArgSpec, UsdtSpec, MAX_USDT_ARGS};

/// Section holding one note per probe site.
const NOTE_SECTION: &[u8] = b".note.stapsdt";
/// One-byte marker section whose link-time address every note records, so
/// that a binary relocated after linking (prelink) can be detected.
const BASE_SECTION: &[u8] = b".stapsdt.base";
/// Note owner of SDT probe notes.
const NOTE_OWNER: &[u8] = b"stapsdt";
/// `NT_STAPSDT`: the note type of a version-3 SDT probe descriptor.
const NOTE_TYPE: u32 = 3;

/// One USDT probe site found in `.note.stapsdt`.
///
/// A tracepoint that the compiler inlined or duplicated appears once per
/// copy, with the same provider and name: attach to every one of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtProbe {
    /// Probe provider, Bitcoin Core's "context" (`net`, `mempool`, ...).
    pub provider: String,
    /// Probe name, Bitcoin Core's "event" (`inbound_message`, ...).
    pub name: String,
    /// Probe address after the `.stapsdt.base` correction (virtual address).
    pub address: u64,
    /// File offset of the probe instruction (what a uprobe attaches at).
    pub file_offset: u64,
    /// Semaphore virtual address, None when the note says 0 (Bitcoin Core v23–v28).
    pub semaphore: Option<u64>,
    /// File offset of the semaphore (uprobe reference-counter offset), through
    /// the writable PT_LOAD segment containing it.
    pub semaphore_file_offset: Option<u64>,
    /// The probe's arguments in order, as the note describes them.
    pub args: Vec<UsdtArg>,
    /// The argument string as written in the note, for error messages.
    pub raw_args: String,
}

impl UsdtProbe {
    /// `provider:name`, the way `bpftrace -l` and Bitcoin Core's docs spell a probe.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.provider, self.name)
    }

    /// The argument specification the eBPF side reads for this probe site.
    ///
    /// # Errors
    ///
    /// [`UsdtError::TooManyArgs`] when the probe has more arguments than [`MAX_USDT_ARGS`], the
    /// fixed size of [`UsdtSpec::args`]; silently dropping the tail would
    /// make the eBPF side read garbage for arguments it thinks it has.
    pub fn to_spec(&self) -> Result<UsdtSpec, UsdtError> {
        if self.args.len() > MAX_USDT_ARGS {
            return Err(UsdtError::TooManyArgs {
                provider: self.provider.clone(),
                name: self.name.clone(),
                count: self.args.len(),
                max: MAX_USDT_ARGS,
            });
        }
        let empty = UsdtArgSpec {
            val_off: 0,
            reg_off: 0,
            kind: UsdtArgKind::Constant as u8,
            size: 0,
            signed: 0,
            _pad: [0; 3],
        };
        let mut spec = UsdtSpec {
            args: [empty; MAX_USDT_ARGS],
            arg_count: self.args.len() as u32,
            _pad: 0,
        };
        for (slot, arg) in spec.args.iter_mut().zip(&self.args) {
            *slot = arg.to_spec();
        }
        Ok(spec)
    }
}

/// One probe argument: how many bytes, whether signed, and where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsdtArg {
    /// Size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Whether the value is signed (a negative size in the note, e.g. `-8@...`).
    pub signed: bool,
    /// Where the value is at the probe instruction.
    pub location: UsdtArgLocation,
}

impl UsdtArg {
    /// The form the eBPF side interprets (`kind`, `reg_off`, `val_off`, `size`, `signed`).
    pub fn to_spec(&self) -> UsdtArgSpec {
        let (kind, reg_off, val_off) = match self.location {
            UsdtArgLocation::Constant(value) => (UsdtArgKind::Constant, 0, value),
            UsdtArgLocation::Register(reg) => (UsdtArgKind::Register, reg.pt_regs_offset(), 0),
            UsdtArgLocation::Memory { base, offset } => {
                (UsdtArgKind::RegisterDeref, base.pt_regs_offset(), offset)
            }
        };
        UsdtArgSpec {
            val_off,
            reg_off,
            kind: kind as u8,
            size: self.size,
            signed: u8::from(self.signed),
            _pad: [0; 3],
        }
    }
}

impl fmt::Display for UsdtArg {
    /// Writes the argument back in `sys/sdt.h` syntax (`-8@272(%rbx)`), for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.signed { "-" } else { "" };
        write!(f, "{sign}{}@{}", self.size, self.location)
    }
}

/// Where a USDT argument's value is when the probe fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsdtArgLocation {
    /// `N@$imm`: the compiler knew the value; it is this constant.
    Constant(i64),
    /// `N@%reg`: the value is in a register (the low `size` bytes of it).
    Register(X86Reg),
    /// `N@off(%reg)`: the value is in the target's memory at `reg + offset`.
    Memory {
        /// Register holding the base address.
        base: X86Reg,
        /// Signed byte displacement added to the base register.
        offset: i64,
    },
}

impl fmt::Display for UsdtArgLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Constant(value) => write!(f, "${value}"),
            Self::Register(reg) => write!(f, "%{}", reg.name()),
            Self::Memory { base, offset: 0 } => write!(f, "(%{})", base.name()),
            Self::Memory { base, offset } => write!(f, "{offset}(%{})", base.name()),
        }
    }
}

/// An x86-64 register a USDT argument can name: the 16 general-purpose
/// registers and the instruction pointer.
///
/// Sub-register names (`%eax`, `%r14d`, `%cl`, `%dil`, ...) map to their full
/// register: the argument's size says how many low bytes are meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum X86Reg {
    /// `%rax` (`%eax`, `%ax`, `%al`).
    Rax,
    /// `%rbx` (`%ebx`, `%bx`, `%bl`).
    Rbx,
    /// `%rcx` (`%ecx`, `%cx`, `%cl`).
    Rcx,
    /// `%rdx` (`%edx`, `%dx`, `%dl`).
    Rdx,
    /// `%rsi` (`%esi`, `%si`, `%sil`).
    Rsi,
    /// `%rdi` (`%edi`, `%di`, `%dil`).
    Rdi,
    /// `%rbp` (`%ebp`, `%bp`, `%bpl`).
    Rbp,
    /// `%rsp` (`%esp`, `%sp`, `%spl`).
    Rsp,
    /// `%r8` (`%r8d`, `%r8w`, `%r8b`).
    R8,
    /// `%r9` (`%r9d`, `%r9w`, `%r9b`).
    R9,
    /// `%r10` (`%r10d`, `%r10w`, `%r10b`).
    R10,
    /// `%r11` (`%r11d`, `%r11w`, `%r11b`).
    R11,
    /// `%r12` (`%r12d`, `%r12w`, `%r12b`).
    R12,
    /// `%r13` (`%r13d`, `%r13w`, `%r13b`).
    R13,
    /// `%r14` (`%r14d`, `%r14w`, `%r14b`).
    R14,
    /// `%r15` (`%r15d`, `%r15w`, `%r15b`).
    R15,
    /// `%rip` (`%eip`); only meaningful as a memory base (`N@off(%rip)`).
    ///
    /// The eBPF side adds the offset to the `rip` the kernel saved when the
    /// uprobe fired. Compilers print rip-relative operands with a symbol
    /// (`sym(%rip)`), which is refused; only a numeric offset is accepted.
    Rip,
}

/// Every register with the names the assembler may print for it, full width
/// first, in the declaration order of [`X86Reg`] ([`X86Reg::name`] indexes it).
const REG_NAMES: [(X86Reg, &[&str]); 17] = [
    (X86Reg::Rax, &["rax", "eax", "ax", "al"]),
    (X86Reg::Rbx, &["rbx", "ebx", "bx", "bl"]),
    (X86Reg::Rcx, &["rcx", "ecx", "cx", "cl"]),
    (X86Reg::Rdx, &["rdx", "edx", "dx", "dl"]),
    (X86Reg::Rsi, &["rsi", "esi", "si", "sil"]),
    (X86Reg::Rdi, &["rdi", "edi", "di", "dil"]),
    (X86Reg::Rbp, &["rbp", "ebp", "bp", "bpl"]),
    (X86Reg::Rsp, &["rsp", "esp", "sp", "spl"]),
    (X86Reg::R8, &["r8", "r8d", "r8w", "r8b"]),
    (X86Reg::R9, &["r9", "r9d", "r9w", "r9b"]),
    (X86Reg::R10, &["r10", "r10d", "r10w", "r10b"]),
    (X86Reg::R11, &["r11", "r11d", "r11w", "r11b"]),
    (X86Reg::R12, &["r12", "r12d", "r12w", "r12b"]),
    (X86Reg::R13, &["r13", "r13d", "r13w", "r13b"]),
    (X86Reg::R14, &["r14", "r14d", "r14w", "r14b"]),
    (X86Reg::R15, &["r15", "r15d", "r15w", "r15b"]),
    (X86Reg::Rip, &["rip", "eip"]),
];

impl X86Reg {
    /// Byte offset of the register in the x86-64 kernel `struct pt_regs`,
    /// which is what a uprobe program's context points at.
    pub fn pt_regs_offset(self) -> u16 {
        match self {
            Self::R15 => 0,
            Self::R14 => 8,
            Self::R13 => 16,
            Self::R12 => 24,
            Self::Rbp => 32,
            Self::Rbx => 40,
            Self::R11 => 48,
            Self::R10 => 56,
            Self::R9 => 64,
            Self::R8 => 72,
            Self::Rax => 80,
            Self::Rcx => 88,
            Self::Rdx => 96,
            Self::Rsi => 104,
            Self::Rdi => 112,
            // orig_ax is at 120.
            Self::Rip => 128,
            // cs 136, flags 144.
            Self::Rsp => 152,
        }
    }

    /// The full-width AT&T name without `%` (`rax`, `r14`, `rip`).
    pub fn name(self) -> &'static str {
        // REG_NAMES is in declaration order, full-width name first.
        REG_NAMES[self as usize].1[0]
    }

    /// The register an AT&T name (without `%`) refers to, any width.
    ///
    /// The legacy high-byte registers (`ah`, `bh`, `ch`, `dh`) are not
    /// accepted: they are bits 8..16 of a register, which the eBPF side's
    /// "low `size` bytes" reading cannot express.
    pub fn from_name(name: &str) -> Option<Self> {
        REG_NAMES
            .iter()
            .find(|(_, names)| names.contains(&name))
            .map(|(reg, _)| *reg)
    }
}

impl fmt::Display for X86Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.name())
    }
}

/// What is wrong with one argument token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgProblem {
    /// The token is empty, or has nothing after `@`.
    Empty,
    /// The size before `@` is not ±1, ±2, ±4 or ±8.
    BadSize(String),
    /// A register name that is not an x86-64 general-purpose register.
    UnknownRegister(String),
    /// `%ah`, `%bh`, `%ch` or `%dh`: the value is not in the low bytes.
    HighByteRegister(String),
    /// `off(%base,%index,scale)`: scaled-index addressing.
    ScaledIndex,
    /// A memory displacement that is a symbol (`foo(%rip)`), not a number.
    SymbolicOffset(String),
    /// A `$` constant that is not a number (e.g. `$foo`).
    BadConstant(String),
    /// None of the `sys/sdt.h` forms.
    Unrecognized,
}

impl fmt::Display for ArgProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty argument"),
            Self::BadSize(size) => write!(
                f,
                "size `{size}` is not 1, 2, 4 or 8 (negative for signed)"
            ),
            Self::UnknownRegister(name) => {
                write!(f, "`%{name}` is not an x86-64 general-purpose register")
            }
            Self::HighByteRegister(name) => write!(
                f,
                "high-byte register `%{name}` is not supported (only the low bytes of a register can be read)"
            ),
            Self::ScaledIndex => write!(
                f,
                "scaled-index memory operand `off(%base,%index,scale)` is not supported by peerlog's eBPF argument reader, like older libbpf"
            ),
            Self::SymbolicOffset(off) => write!(
                f,
                "memory offset `{off}` is a symbol, not a number; peerlog cannot resolve symbolic USDT operands"
            ),
            Self::BadConstant(value) => {
                write!(f, "constant `${value}` is not an integer")
            }
            Self::Unrecognized => write!(
                f,
                "not one of the forms N@%reg, N@off(%reg), N@(%reg), N@$imm"
            ),
        }
    }
}

/// Why probes could not be read from a binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsdtError {
    /// The bytes are not an ELF file the parser accepts (truncated, corrupt, not ELF).
    Elf(String),
    /// A valid ELF file of a kind peerlog does not trace (32-bit, big-endian,
    /// another architecture).
    Unsupported(String),
    /// The binary has no `.note.stapsdt` section (or it holds no probe notes).
    NoProbes,
    /// A note in `.note.stapsdt` does not have the SDT v3 layout.
    BadNote {
        /// Index of the note within the section (0-based).
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The probe address is in no executable `PT_LOAD` segment, so it has no file offset.
    ProbeAddress {
        /// Probe provider.
        provider: String,
        /// Probe name.
        name: String,
        /// The probe's virtual address (after the `.stapsdt.base` correction).
        address: u64,
        /// Which check failed.
        reason: String,
    },
    /// The semaphore address is in no writable `PT_LOAD` segment.
    SemaphoreAddress {
        /// Probe provider.
        provider: String,
        /// Probe name.
        name: String,
        /// The semaphore's virtual address.
        address: u64,
        /// Which check failed.
        reason: String,
    },
    /// One argument token could not be parsed.
    BadArg {
        /// The token as written (`-8@272(%rbx)`).
        arg: String,
        /// What is wrong with it.
        problem: ArgProblem,
    },
    /// A probe's argument string could not be parsed; wraps [`UsdtError::BadArg`].
    ProbeArgs {
        /// Probe provider.
        provider: String,
        /// Probe name.
        name: String,
        /// The probe's whole argument string.
        raw_args: String,
        /// The failure for the offending argument.
        source: Box<UsdtError>,
    },
    /// The probe has more arguments than the eBPF side's [`UsdtSpec`] holds.
    TooManyArgs {
        /// Probe provider.
        provider: String,
        /// Probe name.
        name: String,
        /// Arguments the probe has.
        count: usize,
        /// Arguments a [`UsdtSpec`] holds ([`MAX_USDT_ARGS`]).
        max: usize,
    },
}

impl fmt::Display for UsdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Elf(msg) => write!(f, "not a readable ELF file: {msg}"),
            Self::Unsupported(msg) => write!(f, "unsupported binary: {msg}"),
            Self::NoProbes => write!(
                f,
                "no .note.stapsdt section: this bitcoind was built without USDT tracepoints \
                 (configure with -DWITH_USDT=ON; Bitcoin Core v23 or newer)"
            ),
            Self::BadNote { index, reason } => {
                write!(f, "malformed USDT note #{index} in .note.stapsdt: {reason}")
            }
            Self::ProbeAddress {
                provider,
                name,
                address,
                reason,
            } => write!(f, "USDT probe {provider}:{name} at {address:#x}: {reason}"),
            Self::SemaphoreAddress {
                provider,
                name,
                address,
                reason,
            } => write!(
                f,
                "semaphore of USDT probe {provider}:{name} at {address:#x}: {reason}"
            ),
            Self::BadArg { arg, problem } => {
                write!(f, "cannot parse USDT argument `{arg}`: {problem}")
            }
            Self::ProbeArgs {
                provider,
                name,
                raw_args,
                source,
            } => write!(
                f,
                "USDT probe {provider}:{name} with arguments `{raw_args}`: {source}"
            ),
            Self::TooManyArgs {
                provider,
                name,
                count,
                max,
            } => write!(
                f,
                "USDT probe {provider}:{name} has {count} arguments; at most {max} are supported"
            ),
        }
    }
}

impl std::error::Error for UsdtError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::ProbeArgs { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// Parses one argument token in `sys/sdt.h` x86-64 syntax.
///
/// Forms: `N@%reg`, `N@off(%reg)`, `N@(%reg)`, `N@$imm`, where N is 1, 2, 4
/// or 8 and negative for signed values. A token without `N@` (the SDT v1
/// notation, e.g. `%rax`) is an unsigned 8-byte value, as in libbpf.
///
/// # Errors
///
/// [`UsdtError::BadArg`] naming the token and what is wrong with it.
pub fn parse_arg(spec: &str) -> Result<UsdtArg, UsdtError> {
    let token = spec.trim();
    let err = |problem| UsdtError::BadArg {
        arg: token.to_string(),
        problem,
    };
    if token.is_empty() {
        return Err(err(ArgProblem::Empty));
    }
    // The size always comes first and is followed by `@`; `@` never occurs
    // in an x86-64 operand, so the first one splits the token.
    let (size, signed, location) = match token.split_once('@') {
        Some((size_str, location)) => {
            let size: i64 = size_str
                .trim()
                .parse()
                .map_err(|_| err(ArgProblem::BadSize(size_str.to_string())))?;
            let abs = size.unsigned_abs();
            if !matches!(abs, 1 | 2 | 4 | 8) {
                return Err(err(ArgProblem::BadSize(size_str.to_string())));
            }
            (abs as u8, size < 0, location.trim())
        }
        None => (8, false, token),
    };
    let location = parse_location(location).map_err(err)?;
    Ok(UsdtArg {
        size,
        signed,
        location,
    })
}

/// Parses a whole space-separated argument string, as found in a note.
///
/// An empty string is a probe without arguments.
///
/// # Errors
///
/// [`UsdtError::BadArg`] for the first token that does not parse.
pub fn parse_args(spec: &str) -> Result<Vec<UsdtArg>, UsdtError> {
    spec.split_ascii_whitespace().map(parse_arg).collect()
}

/// Parses the operand after `N@`.
fn parse_location(operand: &str) -> Result<UsdtArgLocation, ArgProblem> {
    if operand.is_empty() {
        return Err(ArgProblem::Empty);
    }
    if let Some(value) = operand.strip_prefix('$') {
        return parse_int(value)
            .map(UsdtArgLocation::Constant)
            .ok_or_else(|| ArgProblem::BadConstant(value.to_string()));
    }
    if let Some(name) = operand.strip_prefix('%') {
        return parse_register(name).map(UsdtArgLocation::Register);
    }
    // Memory: `off(%base)` or `(%base)`; `off(%base,%index,scale)` is refused.
    let (offset_str, rest) = operand.split_once('(').ok_or(ArgProblem::Unrecognized)?;
    let inner = rest.strip_suffix(')').ok_or(ArgProblem::Unrecognized)?;
    if inner.contains(',') {
        return Err(ArgProblem::ScaledIndex);
    }
    let base = match inner.trim().strip_prefix('%') {
        Some(name) => parse_register(name)?,
        None => return Err(ArgProblem::Unrecognized),
    };
    let offset_str = offset_str.trim();
    let offset = if offset_str.is_empty() {
        0
    } else {
        match parse_int(offset_str) {
            Some(offset) => offset,
            // GCC prints globals as `sym(%rip)` or `sym+8(%rip)`: resolving
            // them would need the symbol table and relocation, which no
            // Bitcoin Core tracepoint needs.
            None if offset_str
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '.') =>
            {
                return Err(ArgProblem::SymbolicOffset(offset_str.to_string()))
            }
            None => return Err(ArgProblem::Unrecognized),
        }
    };
    Ok(UsdtArgLocation::Memory { base, offset })
}

/// A register name without the `%`.
fn parse_register(name: &str) -> Result<X86Reg, ArgProblem> {
    let name = name.trim();
    if matches!(name, "ah" | "bh" | "ch" | "dh") {
        return Err(ArgProblem::HighByteRegister(name.to_string()));
    }
    X86Reg::from_name(name).ok_or_else(|| ArgProblem::UnknownRegister(name.to_string()))
}

/// A decimal or `0x` hexadecimal integer with an optional sign.
///
/// Values above `i64::MAX` but within `u64` (an unsigned 64-bit constant)
/// keep their bit pattern, which is what an 8-byte argument means.
fn parse_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    // `from_str_radix` would accept a second sign; only digits may follow.
    let (radix, digits) = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => (16, hex),
        None => (10, digits),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        Some(magnitude as i64)
    }
}

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
struct RawNote {
    location: u64,
    base: u64,
    semaphore: u64,
    provider: String,
    name: String,
    args: String,
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
fn parse_descriptor(desc: &[u8]) -> Result<RawNote, &'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use X86Reg::*;

    fn reg(size: u8, signed: bool, r: X86Reg) -> UsdtArg {
        UsdtArg {
            size,
            signed,
            location: UsdtArgLocation::Register(r),
        }
    }

    fn mem(size: u8, signed: bool, base: X86Reg, offset: i64) -> UsdtArg {
        UsdtArg {
            size,
            signed,
            location: UsdtArgLocation::Memory { base, offset },
        }
    }

    fn imm(size: u8, signed: bool, value: i64) -> UsdtArg {
        UsdtArg {
            size,
            signed,
            location: UsdtArgLocation::Constant(value),
        }
    }

    /// Every argument string of the reference bitcoind (pre-v30, GCC 12 -O2),
    /// from shared/reference/bitcoind-usdt-notes.txt, with its expected parse.
    #[test]
    fn bitcoind_reference_argument_strings() {
        let cases: Vec<(&str, &str, Vec<UsdtArg>)> =
            vec![
            (
                "net:closed_connection / net:evicted_inbound_connection",
                "-8@%r13 8@%r14 8@%r15 4@%eax -8@272(%rbx)",
                vec![
                    reg(8, true, R13),
                    reg(8, false, R14),
                    reg(8, false, R15),
                    reg(4, false, Rax),
                    mem(8, true, Rbx, 272),
                ],
            ),
            (
                "net:outbound_connection",
                "-8@%r12 8@%r13 8@%r14 4@%ebp 8@%rax",
                vec![
                    reg(8, true, R12),
                    reg(8, false, R13),
                    reg(8, false, R14),
                    reg(4, false, Rbp),
                    reg(8, false, Rax),
                ],
            ),
            (
                "net:inbound_connection",
                "-8@%rbx 8@%r12 8@%r13 4@%r14d 8@%rax",
                vec![
                    reg(8, true, Rbx),
                    reg(8, false, R12),
                    reg(8, false, R13),
                    reg(4, false, R14),
                    reg(8, false, Rax),
                ],
            ),
            (
                "net:outbound_message",
                "-8@8(%rsp) 8@%r15 8@%rdi 8@24(%rbp) 8@%rax 8@%rdx",
                vec![
                    mem(8, true, Rsp, 8),
                    reg(8, false, R15),
                    reg(8, false, Rdi),
                    mem(8, false, Rbp, 24),
                    reg(8, false, Rax),
                    reg(8, false, Rdx),
                ],
            ),
            (
                "net:misbehaving_connection",
                "-8@(%rbx) 8@(%rax)",
                vec![mem(8, true, Rbx, 0), mem(8, false, Rax, 0)],
            ),
            (
                "net:inbound_message",
                "-8@-936(%rbp) 8@-896(%rbp) 8@-640(%rbp) 8@-336(%rbp) 8@%rax 8@%rdx",
                vec![
                    mem(8, true, Rbp, -936),
                    mem(8, false, Rbp, -896),
                    mem(8, false, Rbp, -640),
                    mem(8, false, Rbp, -336),
                    reg(8, false, Rax),
                    reg(8, false, Rdx),
                ],
            ),
            (
                "mempool:removed",
                "8@%rbx 8@%r15 -4@%eax -8@112(%rbp) 8@136(%rbp)",
                vec![
                    reg(8, false, Rbx),
                    reg(8, false, R15),
                    reg(4, true, Rax),
                    mem(8, true, Rbp, 112),
                    mem(8, false, Rbp, 136),
                ],
            ),
            (
                "mempool:added",
                "8@%rbx -4@%eax -8@112(%r15)",
                vec![reg(8, false, Rbx), reg(4, true, Rax), mem(8, true, R15, 112)],
            ),
            (
                "mempool:replaced",
                "8@%r13 -4@%eax -8@112(%rbx) 8@136(%rbx) 8@%rdx -4@-808(%rbp) -8@-816(%rbp) 1@%cl",
                vec![
                    reg(8, false, R13),
                    reg(4, true, Rax),
                    mem(8, true, Rbx, 112),
                    mem(8, false, Rbx, 136),
                    reg(8, false, Rdx),
                    mem(4, true, Rbp, -808),
                    mem(8, true, Rbp, -816),
                    reg(1, false, Rcx),
                ],
            ),
            (
                "utxocache:flush",
                "-8@%rdx 4@%eax 8@-2240(%rbp) 8@-2304(%rbp) 1@-2248(%rbp)",
                vec![
                    reg(8, true, Rdx),
                    reg(4, false, Rax),
                    mem(8, false, Rbp, -2240),
                    mem(8, false, Rbp, -2304),
                    mem(1, false, Rbp, -2248),
                ],
            ),
            (
                "mempool:rejected",
                "8@%rbx 8@%rdi",
                vec![reg(8, false, Rbx), reg(8, false, Rdi)],
            ),
            (
                "validation:block_connected",
                "8@-1416(%rbp) -4@24(%rcx) 8@%rax -4@-1356(%rbp) -8@-1320(%rbp) -8@%r13",
                vec![
                    mem(8, false, Rbp, -1416),
                    mem(4, true, Rcx, 24),
                    reg(8, false, Rax),
                    mem(4, true, Rbp, -1356),
                    mem(8, true, Rbp, -1320),
                    reg(8, true, R13),
                ],
            ),
            (
                "utxocache:uncache",
                "8@%rbp 4@32(%rbp) 4@%eax -8@72(%rsi) 1@%dl",
                vec![
                    reg(8, false, Rbp),
                    mem(4, false, Rbp, 32),
                    reg(4, false, Rax),
                    mem(8, true, Rsi, 72),
                    reg(1, false, Rdx),
                ],
            ),
            (
                "utxocache:add",
                "8@%r12 4@32(%r12) 4@%eax -8@72(%r15) 1@%dl",
                vec![
                    reg(8, false, R12),
                    mem(4, false, R12, 32),
                    reg(4, false, Rax),
                    mem(8, true, R15, 72),
                    reg(1, false, Rdx),
                ],
            ),
            (
                "utxocache:spent",
                "8@%r13 4@32(%r13) 4@%eax -8@72(%rbx) 1@%dl",
                vec![
                    reg(8, false, R13),
                    mem(4, false, R13, 32),
                    reg(4, false, Rax),
                    mem(8, true, Rbx, 72),
                    reg(1, false, Rdx),
                ],
            ),
        ];
        for (probe, spec, expected) in cases {
            let parsed = parse_args(spec).unwrap_or_else(|e| panic!("{probe}: {e}"));
            assert_eq!(parsed, expected, "{probe}: `{spec}`");
            // Display writes the canonical spelling back.
            let rendered: Vec<String> = parsed.iter().map(|a| a.to_string()).collect();
            assert_eq!(
                parse_args(&rendered.join(" ")).unwrap(),
                expected,
                "{probe}"
            );
        }
    }

    #[test]
    fn single_argument_forms() {
        assert_eq!(parse_arg("-4@$5").unwrap(), imm(4, true, 5));
        assert_eq!(parse_arg("8@$-1").unwrap(), imm(8, false, -1));
        assert_eq!(parse_arg("-4@$-5").unwrap(), imm(4, true, -5));
        assert_eq!(parse_arg("8@$0x10").unwrap(), imm(8, false, 16));
        assert_eq!(
            parse_arg("8@$18446744073709551615").unwrap(),
            imm(8, false, -1),
            "an unsigned 64-bit constant keeps its bit pattern"
        );
        assert_eq!(parse_arg("4@%r14d").unwrap(), reg(4, false, R14));
        assert_eq!(parse_arg("1@%cl").unwrap(), reg(1, false, Rcx));
        assert_eq!(parse_arg("2@%r14w").unwrap(), reg(2, false, R14));
        assert_eq!(parse_arg("1@%r14b").unwrap(), reg(1, false, R14));
        assert_eq!(parse_arg("1@%dil").unwrap(), reg(1, false, Rdi));
        assert_eq!(parse_arg("1@%sil").unwrap(), reg(1, false, Rsi));
        assert_eq!(parse_arg("1@%bpl").unwrap(), reg(1, false, Rbp));
        assert_eq!(parse_arg("1@%spl").unwrap(), reg(1, false, Rsp));
        assert_eq!(parse_arg("2@%ax").unwrap(), reg(2, false, Rax));
        assert_eq!(parse_arg("1@%al").unwrap(), reg(1, false, Rax));
        assert_eq!(parse_arg("-8@%r9").unwrap(), reg(8, true, R9));
        assert_eq!(parse_arg("8@(%rsp)").unwrap(), mem(8, false, Rsp, 0));
        assert_eq!(parse_arg("8@0(%rsp)").unwrap(), mem(8, false, Rsp, 0));
        assert_eq!(parse_arg("-8@-936(%rbp)").unwrap(), mem(8, true, Rbp, -936));
        assert_eq!(parse_arg("8@-0x10(%rbp)").unwrap(), mem(8, false, Rbp, -16));
        assert_eq!(parse_arg("8@1234(%rip)").unwrap(), mem(8, false, Rip, 1234));
        // SDT v1 notes had no size: unsigned 8 bytes, as libbpf reads them.
        assert_eq!(parse_arg("%rax").unwrap(), reg(8, false, Rax));
        assert_eq!(parse_arg("16(%rbx)").unwrap(), mem(8, false, Rbx, 16));
        // Surrounding whitespace is not part of the token.
        assert_eq!(parse_arg("  -4@%eax ").unwrap(), reg(4, true, Rax));
        assert_eq!(parse_args("").unwrap(), vec![]);
        assert_eq!(parse_args("   ").unwrap(), vec![]);
    }

    #[test]
    fn every_register_name_maps_to_its_register() {
        for (r, names) in REG_NAMES {
            for name in names {
                assert_eq!(X86Reg::from_name(name), Some(r), "{name}");
            }
            assert_eq!(r.name(), names[0]);
            assert_eq!(r.to_string(), format!("%{}", names[0]));
        }
        // struct pt_regs offsets are all distinct, 8-aligned, and in bounds.
        let mut offsets: Vec<u16> = REG_NAMES.iter().map(|(r, _)| r.pt_regs_offset()).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), 17);
        assert!(offsets.iter().all(|o| o % 8 == 0 && *o <= 160));
        assert_eq!(Rax.pt_regs_offset(), 80);
        assert_eq!(R15.pt_regs_offset(), 0);
        assert_eq!(Rip.pt_regs_offset(), 128);
        assert_eq!(Rsp.pt_regs_offset(), 152);
        assert_eq!(Rdi.pt_regs_offset(), 112);
    }

    fn problem(spec: &str) -> ArgProblem {
        match parse_arg(spec) {
            Err(UsdtError::BadArg { problem, .. }) => problem,
            other => panic!("`{spec}`: expected BadArg, got {other:?}"),
        }
    }

    #[test]
    fn argument_errors() {
        assert_eq!(problem("8@%foo"), ArgProblem::UnknownRegister("foo".into()));
        assert_eq!(
            problem("8@%xmm0"),
            ArgProblem::UnknownRegister("xmm0".into())
        );
        assert_eq!(
            problem("4@(%eflags)"),
            ArgProblem::UnknownRegister("eflags".into())
        );
        assert_eq!(problem("1@%ah"), ArgProblem::HighByteRegister("ah".into()));
        assert_eq!(problem("8@-96(%rbp,%rax,8)"), ArgProblem::ScaledIndex);
        assert_eq!(problem("8@(%rbp,%rax)"), ArgProblem::ScaledIndex);
        assert_eq!(problem("3@%eax"), ArgProblem::BadSize("3".into()));
        assert_eq!(problem("16@%rax"), ArgProblem::BadSize("16".into()));
        assert_eq!(problem("0@%rax"), ArgProblem::BadSize("0".into()));
        assert_eq!(problem("x@%rax"), ArgProblem::BadSize("x".into()));
        assert_eq!(problem("8@$foo"), ArgProblem::BadConstant("foo".into()));
        assert_eq!(problem("8@$--1"), ArgProblem::BadConstant("--1".into()));
        assert_eq!(
            problem("8@foo(%rip)"),
            ArgProblem::SymbolicOffset("foo".into())
        );
        assert_eq!(
            problem("8@foo+8(%rip)"),
            ArgProblem::SymbolicOffset("foo+8".into())
        );
        assert_eq!(problem("8@"), ArgProblem::Empty);
        assert_eq!(problem(""), ArgProblem::Empty);
        assert_eq!(problem("garbage"), ArgProblem::Unrecognized);
        assert_eq!(problem("8@rax"), ArgProblem::Unrecognized);
        assert_eq!(problem("8@(%rax"), ArgProblem::Unrecognized);
        assert_eq!(problem("8@12(rax)"), ArgProblem::Unrecognized);

        // The message names the offending token and the form.
        let msg = parse_arg("8@-96(%rbp,%rax,8)").unwrap_err().to_string();
        assert!(
            msg.contains("-96(%rbp,%rax,8)") && msg.contains("scaled-index"),
            "{msg}"
        );
        let msg = parse_args("8@%rax 8@%bogus").unwrap_err().to_string();
        assert!(msg.contains("%bogus"), "{msg}");
    }

    #[test]
    fn arg_to_spec() {
        let spec = parse_arg("-8@-936(%rbp)").unwrap().to_spec();
        assert_eq!(spec.kind, UsdtArgKind::RegisterDeref as u8);
        assert_eq!(
            (spec.reg_off, spec.val_off, spec.size, spec.signed),
            (32, -936, 8, 1)
        );
        let spec = parse_arg("1@%cl").unwrap().to_spec();
        assert_eq!(spec.kind, UsdtArgKind::Register as u8);
        assert_eq!(
            (spec.reg_off, spec.val_off, spec.size, spec.signed),
            (88, 0, 1, 0)
        );
        let spec = parse_arg("-4@$-5").unwrap().to_spec();
        assert_eq!(spec.kind, UsdtArgKind::Constant as u8);
        assert_eq!(
            (spec.reg_off, spec.val_off, spec.size, spec.signed),
            (0, -5, 4, 1)
        );
        assert_eq!(spec._pad, [0; 3]);
    }

    fn probe_with_args(args: &str) -> UsdtProbe {
        UsdtProbe {
            provider: "net".into(),
            name: "inbound_message".into(),
            address: 0x1000,
            file_offset: 0x1000,
            semaphore: None,
            semaphore_file_offset: None,
            args: parse_args(args).unwrap(),
            raw_args: args.into(),
        }
    }

    #[test]
    fn probe_to_spec() {
        let probe =
            probe_with_args("-8@-936(%rbp) 8@-896(%rbp) 8@-640(%rbp) 8@-336(%rbp) 8@%rax 8@%rdx");
        let spec = probe.to_spec().unwrap();
        assert_eq!(spec.arg_count, 6);
        assert_eq!(spec._pad, 0);
        for (i, arg) in probe.args.iter().enumerate() {
            assert_eq!(spec.args[i], arg.to_spec());
        }
        assert!(spec.args[6..].iter().all(|a| a.size == 0));
        assert_eq!(spec.args[4].reg_off, 80);

        let max = ["8@%rax"; MAX_USDT_ARGS].join(" ");
        assert_eq!(
            probe_with_args(&max).to_spec().unwrap().arg_count as usize,
            MAX_USDT_ARGS
        );
        let too_many = ["8@%rax"; MAX_USDT_ARGS + 1].join(" ");
        let err = probe_with_args(&too_many).to_spec().unwrap_err();
        assert!(matches!(err, UsdtError::TooManyArgs { count, .. } if count == MAX_USDT_ARGS + 1));
        assert!(err.to_string().contains("net:inbound_message"), "{err}");
    }

    #[test]
    fn descriptor_layout() {
        let mut desc = Vec::new();
        desc.extend_from_slice(&0x1234u64.to_le_bytes());
        desc.extend_from_slice(&0x2000u64.to_le_bytes());
        desc.extend_from_slice(&0u64.to_le_bytes());
        desc.extend_from_slice(b"net\0inbound_message\08@%rax 8@%rdx\0");
        let raw = parse_descriptor(&desc).unwrap();
        assert_eq!((raw.location, raw.base, raw.semaphore), (0x1234, 0x2000, 0));
        assert_eq!(
            (raw.provider.as_str(), raw.name.as_str()),
            ("net", "inbound_message")
        );
        assert_eq!(raw.args, "8@%rax 8@%rdx");

        // A probe without arguments: empty string, or nothing at all after the name.
        let base = desc[..24].to_vec();
        let raw = parse_descriptor(&[base.clone(), b"p\0n\0\0".to_vec()].concat()).unwrap();
        assert_eq!(raw.args, "");
        let raw = parse_descriptor(&[base.clone(), b"p\0n\0".to_vec()].concat()).unwrap();
        assert_eq!(raw.args, "");

        assert!(parse_descriptor(&desc[..20]).is_err());
        assert!(parse_descriptor(&[base.clone(), b"p\0\0\0".to_vec()].concat()).is_err());
        assert!(parse_descriptor(&[base.clone(), b"provider".to_vec()].concat()).is_err());
        assert!(parse_descriptor(&[base, b"p\0name".to_vec()].concat()).is_err());
    }

    #[test]
    fn rejects_non_x86_64_elf() {
        // A bare ELF32 header (i386, no sections).
        let mut elf32 = vec![0u8; 52];
        elf32[..4].copy_from_slice(b"\x7fELF");
        elf32[4] = 1; // ELFCLASS32
        elf32[5] = 1; // little-endian
        elf32[6] = 1; // EV_CURRENT
        elf32[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf32[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
        elf32[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf32[40..42].copy_from_slice(&52u16.to_le_bytes()); // e_ehsize
        let err = read_probes(&elf32).unwrap_err();
        assert!(matches!(err, UsdtError::Unsupported(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("32-bit") && msg.contains("x86-64"), "{msg}");

        // A bare ELF64 header for aarch64.
        let mut elf64 = vec![0u8; 64];
        elf64[..4].copy_from_slice(b"\x7fELF");
        elf64[4] = 2; // ELFCLASS64
        elf64[5] = 1;
        elf64[6] = 1;
        elf64[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        elf64[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        elf64[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf64[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        let err = read_probes(&elf64).unwrap_err();
        assert!(matches!(err, UsdtError::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains("aarch64"), "{err}");

        // The same header for x86-64 parses, and has no probes.
        elf64[18..20].copy_from_slice(&62u16.to_le_bytes());
        assert_eq!(read_probes(&elf64).unwrap_err(), UsdtError::NoProbes);

        assert!(matches!(
            read_probes(b"not an elf file at all"),
            Err(UsdtError::Elf(_))
        ));
        assert!(matches!(read_probes(b""), Err(UsdtError::Elf(_))));
    }

    #[test]
    fn no_probes_message_is_actionable() {
        let msg = UsdtError::NoProbes.to_string();
        assert!(
            msg.contains(".note.stapsdt") && msg.contains("-DWITH_USDT=ON"),
            "{msg}"
        );
    }

    // ---- Real binaries built with gcc and sys/sdt.h ----

    /// Probes with a semaphore, the way Bitcoin Core's util/trace.h does it
    /// (v29+): `_SDT_HAS_SEMAPHORES` before sdt.h, the counter in `.probes`.
    const SEMA_C: &str = r#"
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
unsigned short peerlog_test_with_sema_semaphore __attribute__((section(".probes")));
__attribute__((noinline)) void fire_sema(long a, int b, const char *c) {
    if (peerlog_test_with_sema_semaphore) STAP_PROBE3(peerlog_test, with_sema, a, b, c);
}
"#;

    /// Probes without semaphores (Bitcoin Core v23–v28). A separate file:
    /// `_SDT_HAS_SEMAPHORES` applies to a whole translation unit.
    const PLAIN_C: &str = r#"
#include <sys/sdt.h>
void fire_sema(long a, int b, const char *c);
__attribute__((noinline)) void fire_plain(long a, unsigned char b) { STAP_PROBE2(peerlog_test, plain, a, b); }
__attribute__((noinline)) void fire_const(void) { STAP_PROBE2(peerlog_test, constants, 5, -1); }
__attribute__((noinline)) void fire_noargs(void) { STAP_PROBE(peerlog_test, noargs); }
int main(int argc, char **argv) {
    fire_sema(argc, argc + 1, argv[0]);
    fire_plain(argc, (unsigned char)argc);
    fire_const();
    fire_noargs();
    return 0;
}
"#;

    const NO_PROBES_C: &str = "int main(void) { return 0; }\n";

    /// Why the real-ELF tests cannot run here, if they cannot.
    fn toolchain_missing() -> Option<String> {
        let sdt = [
            "/usr/include/x86_64-linux-gnu/sys/sdt.h",
            "/usr/include/sys/sdt.h",
        ];
        if !sdt.iter().any(|p| std::path::Path::new(p).exists()) {
            return Some("sys/sdt.h not found (install systemtap-sdt-dev)".into());
        }
        for tool in ["gcc", "readelf"] {
            match std::process::Command::new(tool).arg("--version").output() {
                Ok(out) if out.status.success() => {}
                _ => return Some(format!("`{tool}` is not runnable")),
            }
        }
        None
    }

    /// Compiles `sources` with `gcc -O2 <flags>` and returns the binary's path and bytes.
    fn compile(
        dir: &std::path::Path,
        out: &str,
        flags: &[&str],
        sources: &[(&str, &str)],
    ) -> (std::path::PathBuf, Vec<u8>) {
        let mut cmd = std::process::Command::new("gcc");
        cmd.arg("-O2").args(flags);
        for (name, text) in sources {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            cmd.arg(path);
        }
        let exe = dir.join(out);
        let output = cmd.arg("-o").arg(&exe).output().unwrap();
        assert!(
            output.status.success(),
            "gcc {flags:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let bytes = std::fs::read(&exe).unwrap();
        (exe, bytes)
    }

    fn readelf(args: &[&str], file: &std::path::Path) -> String {
        let out = std::process::Command::new("readelf")
            .args(args)
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "readelf {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    fn hex(s: &str) -> u64 {
        u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
            .unwrap_or_else(|e| panic!("`{s}`: {e}"))
    }

    /// A probe as `readelf -n` prints it.
    #[derive(Debug)]
    struct ReadelfNote {
        provider: String,
        name: String,
        location: u64,
        semaphore: u64,
        args: String,
    }

    fn readelf_notes(file: &std::path::Path) -> Vec<ReadelfNote> {
        let text = readelf(&["-n"], file);
        let mut notes = Vec::new();
        let mut provider = String::new();
        let mut name = String::new();
        let mut location = 0;
        let mut semaphore = 0;
        for line in text.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("Provider: ") {
                provider = v.to_string();
            } else if let Some(v) = line.strip_prefix("Name: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("Location: ") {
                // "0x..., Base: 0x..., Semaphore: 0x..."
                let fields: Vec<&str> = v.split(", ").collect();
                location = hex(fields[0]);
                semaphore = hex(fields[2].trim_start_matches("Semaphore: "));
            } else if let Some(v) = line.strip_prefix("Arguments:") {
                notes.push(ReadelfNote {
                    provider: provider.clone(),
                    name: name.clone(),
                    location,
                    semaphore,
                    args: v.trim().to_string(),
                });
            }
        }
        notes
    }

    /// `(vaddr, memsz, offset, flags)` of each LOAD line of `readelf -lW`.
    fn readelf_loads(file: &std::path::Path) -> Vec<(u64, u64, u64, String)> {
        readelf(&["-lW"], file)
            .lines()
            .filter(|l| l.trim_start().starts_with("LOAD "))
            .map(|l| {
                // LOAD Offset VirtAddr PhysAddr FileSiz MemSiz Flg(may be "R E") Align
                let t: Vec<&str> = l.split_whitespace().collect();
                let flags = t[6..t.len() - 1].concat();
                (hex(t[2]), hex(t[5]), hex(t[1]), flags)
            })
            .collect()
    }

    /// The file offset of `addr` through the LOAD segment with `flag` that contains it.
    fn expected_offset(loads: &[(u64, u64, u64, String)], addr: u64, flag: char) -> u64 {
        let (vaddr, _, offset, _) = loads
            .iter()
            .find(|(v, m, _, f)| addr >= *v && addr < v + m && f.contains(flag))
            .unwrap_or_else(|| panic!("readelf shows no {flag} LOAD segment for {addr:#x}"));
        addr - vaddr + offset
    }

    /// Byte range of the `.note.stapsdt` section, for patching notes in place.
    fn note_section_range(elf: &[u8]) -> std::ops::Range<usize> {
        let header = FileHeader64::<Endianness>::parse(elf).unwrap();
        let endian = header.endian().unwrap();
        let sections = header.sections(endian, elf).unwrap();
        let (_, sh) = sections.section_by_name(endian, NOTE_SECTION).unwrap();
        let start = sh.sh_offset(endian) as usize;
        start..start + sh.sh_size(endian) as usize
    }

    /// File offsets of each stapsdt note's descriptor (where its three addresses are).
    fn descriptor_offsets(elf: &[u8]) -> Vec<usize> {
        let range = note_section_range(elf);
        let mut at = range.start;
        let mut out = Vec::new();
        let align4 = |n: usize| (n + 3) & !3;
        while at + 12 <= range.end {
            let word =
                |i: usize| u32::from_le_bytes(elf[at + i..at + i + 4].try_into().unwrap()) as usize;
            let (namesz, descsz) = (word(0), word(4));
            let desc = at + 12 + align4(namesz);
            out.push(desc);
            at = desc + align4(descsz);
        }
        out
    }

    fn patch_u64(elf: &mut [u8], at: usize, f: impl FnOnce(u64) -> u64) {
        let old = u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
        elf[at..at + 8].copy_from_slice(&f(old).to_le_bytes());
    }

    #[test]
    fn real_elf_probes_or_skip() {
        if let Some(why) = toolchain_missing() {
            eprintln!("skipping real_elf_probes_or_skip: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sources = [("sema.c", SEMA_C), ("plain.c", PLAIN_C)];
        for (out, flags, e_type) in [
            ("pie", &["-fPIE", "-pie"][..], object::elf::ET_DYN),
            ("nopie", &["-fno-pie", "-no-pie"][..], object::elf::ET_EXEC),
        ] {
            let (exe, elf) = compile(dir.path(), out, flags, &sources);
            let header = FileHeader64::<Endianness>::parse(&*elf).unwrap();
            assert_eq!(header.e_type(header.endian().unwrap()), e_type, "{out}");

            let probes = read_probes(&elf).unwrap_or_else(|e| panic!("{out}: {e}"));
            let notes = readelf_notes(&exe);
            let loads = readelf_loads(&exe);
            assert_eq!(probes.len(), 4, "{out}: {probes:#?}");
            assert_eq!(notes.len(), probes.len(), "{out}: {notes:#?}");

            for (probe, note) in probes.iter().zip(&notes) {
                let what = format!("{out} {}", probe.full_name());
                assert_eq!(probe.provider, note.provider, "{what}");
                assert_eq!(probe.name, note.name, "{what}");
                assert_eq!(probe.raw_args, note.args, "{what}");
                assert_eq!(
                    probe.address, note.location,
                    "{what}: no prelink shift expected"
                );
                assert_eq!(
                    probe.file_offset,
                    expected_offset(&loads, note.location, 'E'),
                    "{what}"
                );
                // sdt.h puts a `nop` at the probe site.
                assert_eq!(
                    elf[probe.file_offset as usize], 0x90,
                    "{what}: no nop at file offset"
                );
                if note.semaphore == 0 {
                    assert_eq!(
                        (probe.semaphore, probe.semaphore_file_offset),
                        (None, None),
                        "{what}"
                    );
                } else {
                    assert_eq!(probe.semaphore, Some(note.semaphore), "{what}");
                    assert_eq!(
                        probe.semaphore_file_offset,
                        Some(expected_offset(&loads, note.semaphore, 'W')),
                        "{what}"
                    );
                }
                probe.to_spec().unwrap();
            }

            let by_name = |name: &str| probes.iter().find(|p| p.name == name).unwrap();
            let sema = by_name("with_sema");
            assert_eq!(sema.provider, "peerlog_test");
            assert_eq!(sema.args.len(), 3, "{out}: {}", sema.raw_args);
            let sema_off = sema
                .semaphore_file_offset
                .expect("with_sema has a semaphore") as usize;
            assert_eq!(
                &elf[sema_off..sema_off + 2],
                &[0, 0],
                "{out}: semaphore starts at 0"
            );
            // The semaphore is the symbol Bitcoin Core's naming produces.
            let symbols = readelf(&["-sW"], &exe);
            let sym = symbols
                .lines()
                .find(|l| l.ends_with(" peerlog_test_with_sema_semaphore"))
                .expect("semaphore symbol");
            assert_eq!(
                Some(hex(sym.split_whitespace().nth(1).unwrap())),
                sema.semaphore
            );

            assert_eq!(by_name("plain").args.len(), 2);
            assert_eq!(by_name("plain").semaphore, None);
            assert_eq!(
                by_name("constants").args,
                vec![imm(4, true, 5), imm(4, true, -1)]
            );
            assert_eq!(by_name("noargs").args, vec![]);
            assert_eq!(by_name("noargs").raw_args, "");
        }
    }

    #[test]
    fn real_elf_corrections_and_errors_or_skip() {
        if let Some(why) = toolchain_missing() {
            eprintln!("skipping real_elf_corrections_and_errors_or_skip: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sources = [("sema.c", SEMA_C), ("plain.c", PLAIN_C)];
        let (_, elf) = compile(dir.path(), "pie", &["-fPIE", "-pie"], &sources);
        let original = read_probes(&elf).unwrap();
        let descs = descriptor_offsets(&elf);
        assert_eq!(descs.len(), original.len());

        // Prelink moved the binary down by 0x10 after linking: the notes
        // recorded a `.stapsdt.base` 0x10 above where it now is. Emulate by
        // raising each note's base: probes shift, semaphores do not.
        let mut shifted = elf.clone();
        for &d in &descs {
            patch_u64(&mut shifted, d + 8, |base| base + 0x10);
        }
        let moved = read_probes(&shifted).unwrap();
        for (a, b) in original.iter().zip(&moved) {
            assert_eq!(b.address, a.address - 0x10, "{}", a.full_name());
            assert_eq!(b.file_offset, a.file_offset - 0x10, "{}", a.full_name());
            assert_eq!(b.semaphore, a.semaphore);
            assert_eq!(b.semaphore_file_offset, a.semaphore_file_offset);
        }
        // A note base of 0 means "no correction".
        let mut zero_base = elf.clone();
        for &d in &descs {
            patch_u64(&mut zero_base, d + 8, |_| 0);
        }
        assert_eq!(read_probes(&zero_base).unwrap(), original);

        // A probe outside every segment: strict read fails naming it, the
        // lenient one keeps the rest.
        let mut stray = elf.clone();
        patch_u64(&mut stray, descs[1], |_| 0x7fff_0000_0000);
        let err = read_probes(&stray).unwrap_err();
        assert!(matches!(err, UsdtError::ProbeAddress { .. }), "{err:?}");
        assert!(err.to_string().contains(&original[1].full_name()), "{err}");
        let (good, bad) = read_probes_lenient(&stray).unwrap();
        assert_eq!(good.len(), original.len() - 1);
        assert_eq!(bad.len(), 1);

        // A semaphore in the read-only text segment.
        let mut ro_sema = elf.clone();
        let text_addr = original[0].address;
        patch_u64(&mut ro_sema, descs[0] + 16, |_| text_addr);
        let err = read_probes(&ro_sema).unwrap_err();
        assert!(matches!(err, UsdtError::SemaphoreAddress { .. }), "{err:?}");

        // An unparseable argument string names the probe and the token.
        let mut bad_args = elf.clone();
        let range = note_section_range(&bad_args);
        let notes = &mut bad_args[range];
        let at = notes.windows(4).position(|w| w == b"%rdi").unwrap();
        notes[at..at + 4].copy_from_slice(b"%zzz");
        let err = read_probes(&bad_args).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, UsdtError::ProbeArgs { .. }), "{err:?}");
        assert!(
            msg.contains("peerlog_test:") && msg.contains("%zzz"),
            "{msg}"
        );
        assert!(std::error::Error::source(&err).is_some());

        // The ELF header says aarch64: refused by name.
        let mut arm = elf.clone();
        arm[18..20].copy_from_slice(&object::elf::EM_AARCH64.to_le_bytes());
        let err = read_probes(&arm).unwrap_err();
        assert!(err.to_string().contains("aarch64"), "{err}");

        // A binary built without any probe.
        let (_, none) = compile(dir.path(), "none", &[], &[("none.c", NO_PROBES_C)]);
        assert_eq!(read_probes(&none).unwrap_err(), UsdtError::NoProbes);
    }
}
