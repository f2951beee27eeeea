//! Finding the file that holds bitcoind's DWARF and symbol table.
//!
//! peerlog reads bitcoind's `CNode` layout from DWARF ([`crate::elf::layout`])
//! and names flamegraph frames from its symbols, and Bitcoin Core's release
//! binaries are stripped: both are then only in the separate debug file of
//! the `*-debug` tarball or a distribution's debug package. So the lookup
//! tries, in order: a debug file named by the user, the binary itself, the
//! GNU build-id path under `/usr/lib/debug/.build-id/`, and the
//! `.gnu_debuglink` name next to the binary, in its `.debug/` directory, and
//! under `/usr/lib/debug/`. A debug file is only used when its build-id
//! matches the binary's.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use bitcoin::hex::DisplayHex;
use object::{Object, ObjectSection};

/// Where bitcoind's debug information is.
#[derive(Debug, Clone, Default)]
pub struct DebugInfo {
    /// The file with a `.debug_info` section: the binary itself or its
    /// debug file; None when none was found.
    pub source: Option<PathBuf>,
    /// Candidate debug files looked at, for the message when none is found.
    pub searched: Vec<PathBuf>,
}

impl DebugInfo {
    /// Why there is no debug information, naming what was looked at.
    pub fn missing_reason(&self) -> String {
        format!(
            "no DWARF: the binary is stripped and no debug file was found (looked at {}); \
             give one with --debug-file",
            if self.searched.is_empty() {
                "nothing: the binary has no build-id or debuglink".to_string()
            } else {
                self.searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }
}

/// A file mapped into memory: executables and debug files are hundreds of
/// megabytes, of which a lookup touches a few pages.
pub struct Mapped(memmap2::Mmap);

impl Mapped {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: mapped read-only; a file changed under peerlog gives parse
        // errors at worst.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        Ok(Self(map))
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn has_dwarf(file: &object::File<'_>) -> bool {
    file.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0)
}

/// Finds the debug information of the executable `exe`. `install_dir` is
/// the binary's directory as seen through `/proc/PID/root`, where
/// `.gnu_debuglink` files are looked for; `debug_file` is the user's
/// `--debug-file`, which must belong to the same build.
pub fn find(
    exe: &Path,
    install_dir: Option<&Path>,
    debug_file: Option<&Path>,
) -> Result<DebugInfo> {
    let mapped = Mapped::open(exe)?;
    let binary = object::File::parse(mapped.bytes())
        .with_context(|| format!("{} is not an ELF file", exe.display()))?;
    let build_id = binary.build_id().ok().flatten().map(<[u8]>::to_vec);
    let mut result = DebugInfo::default();

    if let Some(path) = debug_file {
        let mapped =
            Mapped::open(path).with_context(|| format!("--debug-file {}", path.display()))?;
        let debug = object::File::parse(mapped.bytes())
            .with_context(|| format!("--debug-file {} is not an ELF file", path.display()))?;
        if let (Some(want), Ok(Some(have))) = (&build_id, debug.build_id()) {
            if want.as_slice() != have {
                bail!(
                    "--debug-file {} belongs to another build (build-id {} instead of {})",
                    path.display(),
                    have.to_lower_hex_string(),
                    want.to_lower_hex_string()
                );
            }
        }
        if !has_dwarf(&debug) {
            bail!("--debug-file {} has no DWARF (.debug_info)", path.display());
        }
        result.source = Some(path.to_path_buf());
        return Ok(result);
    }

    if has_dwarf(&binary) {
        result.source = Some(exe.to_path_buf());
        return Ok(result);
    }
    for candidate in candidates(&binary, build_id.as_deref(), install_dir) {
        result.searched.push(candidate.clone());
        let Ok(mapped) = Mapped::open(&candidate) else {
            continue;
        };
        let Ok(debug) = object::File::parse(mapped.bytes()) else {
            continue;
        };
        let matches = match (&build_id, debug.build_id()) {
            (Some(want), Ok(Some(have))) => want.as_slice() == have,
            // Without build-ids, trust the debuglink's name.
            _ => true,
        };
        if matches && has_dwarf(&debug) {
            result.source = Some(candidate);
            break;
        }
    }
    Ok(result)
}

fn candidates(
    binary: &object::File<'_>,
    build_id: Option<&[u8]>,
    install_dir: Option<&Path>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() > 1) {
        let hex = id.to_lower_hex_string();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_debug_file_is_refused() {
        let exe = std::env::current_exe().unwrap();
        // /bin/sh has its own build-id.
        let err = find(&exe, None, Some(Path::new("/bin/sh"))).unwrap_err();
        assert!(err.to_string().contains("another build"), "{err}");
    }

    #[test]
    fn a_binary_with_dwarf_is_its_own_source() {
        // Test binaries are built with debug info.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(find(&exe, None, None).unwrap().source, Some(exe));
    }
}
