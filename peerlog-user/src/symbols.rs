//! Finding bitcoind's functions for the per-peer CPU uprobes.
//!
//! `PeerManagerImpl::ProcessMessages` and friends are local symbols (the
//! class lives in an anonymous namespace), and Bitcoin Core's release
//! binaries are stripped: their symbols are then only in the separate debug
//! file of the `*-debug` tarball or a distribution's debug package. So the
//! lookup tries, in order: a debug file named by the user, the binary's own
//! `.symtab`, the GNU build-id path under `/usr/lib/debug/.build-id/`, and the
//! `.gnu_debuglink` name next to the binary, in its `.debug/` directory, and
//! under `/usr/lib/debug/`. A debug file is only used when its build-id
//! matches the binary's.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SegmentFlags};
use peerlog_common::TracedFunction;

const PF_X: u32 = 1;

/// Where each traced function is, as a file offset of the binary.
#[derive(Debug, Clone, Default)]
pub struct FunctionSymbols {
    /// The file the symbols came from, if any had them.
    pub source: Option<PathBuf>,
    /// The functions found, with their file offsets in the binary.
    pub found: Vec<(TracedFunction, u64)>,
    /// The functions no symbol table had.
    pub missing: Vec<TracedFunction>,
    /// Candidate debug files looked at, for the message when nothing is found.
    pub searched: Vec<PathBuf>,
}

/// Resolves the traced functions of `binary` (its bytes in `data`).
/// `install_dir` is the binary's directory as seen through `/proc/PID/root`,
/// where `.gnu_debuglink` files are looked for; `debug_file` is the user's
/// `--debug-file`.
pub fn resolve(
    data: &[u8],
    install_dir: Option<&Path>,
    debug_file: Option<&Path>,
) -> Result<FunctionSymbols> {
    let binary = object::File::parse(data).context("parsing the binary for symbols")?;
    let build_id = binary.build_id().ok().flatten().map(<[u8]>::to_vec);
    let mut result = FunctionSymbols::default();

    if let Some(path) = debug_file {
        let bytes =
            fs::read(path).with_context(|| format!("reading --debug-file {}", path.display()))?;
        let debug = object::File::parse(&*bytes)
            .with_context(|| format!("--debug-file {} is not an ELF file", path.display()))?;
        if let (Some(want), Ok(Some(have))) = (&build_id, debug.build_id()) {
            if want.as_slice() != have {
                bail!(
                    "--debug-file {} belongs to another build (build-id {} instead of {})",
                    path.display(),
                    hex(have),
                    hex(want)
                );
            }
        }
        fill(&mut result, &binary, &debug, path);
        return Ok(result);
    }

    fill(&mut result, &binary, &binary, Path::new("its own .symtab"));
    if result.missing.is_empty() {
        return Ok(result);
    }
    for candidate in candidates(&binary, build_id.as_deref(), install_dir) {
        result.searched.push(candidate.clone());
        let Ok(bytes) = fs::read(&candidate) else {
            continue;
        };
        let Ok(debug) = object::File::parse(&*bytes) else {
            continue;
        };
        let matches = match (&build_id, debug.build_id()) {
            (Some(want), Ok(Some(have))) => want.as_slice() == have,
            // Without build-ids, trust the debuglink's name (its CRC is over
            // the whole file; a mismatch then shows as missing symbols).
            _ => true,
        };
        if matches {
            let mut from_debug = FunctionSymbols {
                searched: result.searched.clone(),
                ..Default::default()
            };
            fill(&mut from_debug, &binary, &debug, &candidate);
            if from_debug.found.len() > result.found.len() {
                result = from_debug;
            }
            if result.missing.is_empty() {
                break;
            }
        }
    }
    Ok(result)
}

/// Looks every traced function up in `symbols`, translating addresses with
/// `binary`'s program headers (a debug file keeps the addresses, not the
/// file layout).
fn fill(
    result: &mut FunctionSymbols,
    binary: &object::File<'_>,
    symbols: &object::File<'_>,
    source: &Path,
) {
    result.found.clear();
    result.missing.clear();
    for function in TracedFunction::ALL {
        let address = symbols
            .symbols()
            .find(|s| s.name() == Ok(function.symbol()) && s.address() != 0)
            .map(|s| s.address());
        match address.and_then(|a| file_offset(binary, a)) {
            Some(offset) => result.found.push((function, offset)),
            None => result.missing.push(function),
        }
    }
    if !result.found.is_empty() {
        result.source = Some(source.to_path_buf());
    }
}

/// The file offset of a code address, through the executable `PT_LOAD`
/// segment containing it.
fn file_offset(binary: &object::File<'_>, address: u64) -> Option<u64> {
    binary.segments().find_map(|seg| {
        let executable =
            matches!(seg.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0);
        let (offset, _) = seg.file_range();
        (executable && address >= seg.address() && address < seg.address() + seg.size())
            .then(|| address - seg.address() + offset)
    })
}

fn candidates(
    binary: &object::File<'_>,
    build_id: Option<&[u8]>,
    install_dir: Option<&Path>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() > 1) {
        let hex = hex(id);
        out.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        )));
    }
    if let Some(name) = debuglink(binary) {
        if let Some(dir) = install_dir {
            out.push(dir.join(&name));
            out.push(dir.join(".debug").join(&name));
            let relative = dir.strip_prefix("/").unwrap_or(dir);
            out.push(Path::new("/usr/lib/debug").join(relative).join(&name));
        }
        out.push(Path::new("/usr/lib/debug").join(&name));
    }
    out
}

fn debuglink(binary: &object::File<'_>) -> Option<String> {
    let data = binary.section_by_name(".gnu_debuglink")?.data().ok()?;
    let end = data.iter().position(|&b| b == 0)?;
    String::from_utf8(data[..end].to_vec()).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_without_the_functions_reports_them_missing() {
        let exe = fs::read("/proc/self/exe").unwrap();
        let found = resolve(&exe, None, None).unwrap();
        assert_eq!(found.missing.len(), TracedFunction::ALL.len());
        assert!(found.source.is_none());
    }

    #[test]
    fn a_wrong_debug_file_is_refused() {
        let exe = fs::read("/proc/self/exe").unwrap();
        // /bin/sh has its own build-id.
        let err = resolve(&exe, None, Some(Path::new("/bin/sh"))).unwrap_err();
        assert!(err.to_string().contains("another build"), "{err}");
    }
}
