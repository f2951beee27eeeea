//! A USDT probe and its arguments: the operand syntax of `sys/sdt.h`
//! (`-8@%r13`, `8@-936(%rbp)`, `-4@$5`), the registers it names, and
//! what can be wrong with it.

use std::fmt;

use peerlog_common::{UsdtArgKind, UsdtArgSpec, UsdtSpec, MAX_USDT_ARGS};

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
pub(super) const REG_NAMES: [(X86Reg, &[&str]); 17] = [
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
