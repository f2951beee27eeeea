//! Argument specs, notes of hand-built ELF files, and real binaries when
//! the machine has them.

use super::notes::*;
use object::elf::FileHeader64;
use object::read::elf::{FileHeader, SectionHeader};
use object::Endianness;
use peerlog_common::{UsdtArgKind, MAX_USDT_ARGS};

use super::probe::*;
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
    let cases: Vec<(&str, &str, Vec<UsdtArg>)> = vec![
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
            vec![
                reg(8, false, Rbx),
                reg(4, true, Rax),
                mem(8, true, R15, 112),
            ],
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
