//! Names for the code addresses of walked stacks: demangled C++ functions,
//! with the functions DWARF says were inlined at each address.
//!
//! Each address is looked up twice, with blazesym. The function comes from
//! the ELF symbol table: its mangled names demangle to fully qualified names
//! (`(anonymous namespace)::PeerManagerImpl::ProcessMessages`), which DWARF
//! does not give for methods of classes in anonymous namespaces, nor for
//! lambdas. The inlined functions come from DWARF, and so does the function
//! where the symbol table has none. For a stripped binary (a Bitcoin Core
//! release) blazesym finds the DWARF of the separate debug file the way gdb
//! does: by GNU build-id under `<dir>/.build-id/xx/rest.debug` and by
//! `.gnu_debuglink` name in the binary's own directory, in its `.debug/`
//! directory, and under `/usr/lib/debug/<binary's dir>/`; the executable's
//! symbol table is then the one of that debug file. A debug file named with
//! `--debug-file` is used for the executable as it is.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    rc::Rc,
};

use anyhow::{bail, Result};
use bitcoin::hex::DisplayHex;
use blazesym::symbolize::{source::Elf, source::Source, Input, Sym, Symbolized, Symbolizer};

use super::unwind::{module_at, LoadedModule};

/// Frame name for an address outside every module.
pub const UNKNOWN_FRAME: &str = "[unknown]";

/// FlameGraph's annotation of an inlined frame (`flamegraph.pl` and inferno
/// understand it).
pub const INLINED_SUFFIX: &str = "_[i]";

/// The directories searched for debug files besides the binary's own, as gdb
/// and Debian's debug packages have them.
const SYSTEM_DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

/// Names code addresses, caching every answer.
pub struct Symbols {
    symbolizer: Symbolizer,
    /// Where debug files are looked for; grows with the modules' directories.
    debug_dirs: Vec<PathBuf>,
    /// The executable's `--debug-file`.
    debug_file: Option<PathBuf>,
    /// The file with the executable's symbol table, when it is not the
    /// executable (stripped): its debug file.
    executable_symtab: Option<PathBuf>,
    /// Frame names by address in the process, outermost function first.
    names: HashMap<u64, Rc<[String]>>,
}

fn build(debug_dirs: &[PathBuf]) -> Symbolizer {
    Symbolizer::builder()
        .enable_demangling(true)
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .set_debug_dirs(Some(debug_dirs))
        .build()
}

/// Checks that `debug_file` was built from the same source as `binary`,
/// comparing GNU build-ids when both have one.
pub fn check_debug_file(binary: &Path, debug_file: &Path) -> Result<()> {
    let read = |p: &Path| blazesym::helper::read_elf_build_id(p).ok().flatten();
    if let (Some(want), Some(have)) = (read(binary), read(debug_file)) {
        if want != have {
            bail!(
                "--debug-file {} belongs to another build of {} (build-id {} instead of {})",
                debug_file.display(),
                binary.display(),
                have.to_lower_hex_string(),
                want.to_lower_hex_string()
            );
        }
    }
    Ok(())
}

/// The file with the symbols and DWARF of an executable: the executable
/// itself, or for a stripped one its debug file, found by the same rules as
/// the `CNode` layout (build-id, debug link in `install_dir`). None when no
/// file with DWARF is found.
pub(crate) fn symtab_file(
    exe: &Path,
    install_dir: Option<&Path>,
    debug_file: Option<&Path>,
) -> Option<PathBuf> {
    crate::elf::debuginfo::find(exe, install_dir, debug_file)
        .ok()?
        .source
}

/// The frame names a trace of a process running `binary` gives its code at
/// `addresses` (file addresses, as in `readelf` and the symbol tables), with
/// the same rules for finding a stripped binary's debug file next to it or
/// as `debug_file` (`--debug-file`). For each address: its function, then
/// the functions inlined into it there. This is how tests compare the names
/// of a stripped binary with those of the unstripped one, address by
/// address, without a process and its samples.
pub fn executable_frame_names(
    binary: &Path,
    debug_file: Option<&Path>,
    addresses: &[u64],
) -> Result<Vec<Vec<String>>> {
    if let Some(debug) = debug_file {
        check_debug_file(binary, debug)?;
    }
    let module = LoadedModule {
        name: binary.file_name().map_or_else(
            || binary.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        path: binary.to_path_buf(),
        readable: Some(binary.to_path_buf()),
        // The file's own addresses: no load bias.
        avma: 0..u64::MAX,
        bias: 0,
        is_executable: true,
    };
    let mut symbols = Symbols::new(debug_file, symtab_file(binary, binary.parent(), debug_file));
    symbols.learn_module_dirs(std::slice::from_ref(&module));
    Ok(symbols
        .symbolize_in(&module, addresses)
        .into_iter()
        .map(|names| names.to_vec())
        .collect())
}

impl Symbols {
    /// A symbolizer; `debug_file` names the executable's debug file (the
    /// user's `--debug-file`), `executable_symtab` the file that holds the
    /// executable's symbol table if it does not.
    pub fn new(debug_file: Option<&Path>, executable_symtab: Option<PathBuf>) -> Self {
        let debug_dirs: Vec<PathBuf> = SYSTEM_DEBUG_DIRS.iter().map(PathBuf::from).collect();
        Self {
            symbolizer: build(&debug_dirs),
            debug_dirs,
            debug_file: debug_file.map(Path::to_path_buf),
            executable_symtab,
            names: HashMap::new(),
        }
    }

    /// Adds the `.debug/` directory of every module to the debug file
    /// search (blazesym itself looks in the module's directory and under
    /// the system debug directories).
    pub fn learn_module_dirs(&mut self, modules: &[LoadedModule]) {
        let mut added = false;
        for module in modules {
            let Some(dir) = module.readable.as_deref().and_then(Path::parent) else {
                continue;
            };
            let debug_dir = dir.join(".debug");
            if debug_dir.is_dir() && !self.debug_dirs.contains(&debug_dir) {
                self.debug_dirs.push(debug_dir);
                added = true;
            }
        }
        if added {
            self.symbolizer = build(&self.debug_dirs);
        }
    }

    /// The frames of a walked stack, outermost first, each address giving its
    /// function and then the functions inlined into it at that address.
    pub fn stack_names(&mut self, frames: &[u64], modules: &[LoadedModule]) -> Vec<Rc<[String]>> {
        let missing: Vec<u64> = frames
            .iter()
            .copied()
            .filter(|a| !self.names.contains_key(a))
            .collect();
        // One call per module: blazesym parses each file once and answers
        // a batch of addresses at a time.
        let mut by_module: Vec<(&LoadedModule, Vec<u64>)> = Vec::new();
        for address in missing {
            match module_at(modules, address) {
                Some(module) => match by_module.iter_mut().find(|(m, _)| m.avma == module.avma) {
                    Some((_, addrs)) => addrs.push(address),
                    None => by_module.push((module, vec![address])),
                },
                None => {
                    self.names
                        .insert(address, Rc::from(vec![UNKNOWN_FRAME.to_string()]));
                }
            }
        }
        for (module, addrs) in by_module {
            let names = self.symbolize_in(module, &addrs);
            for (address, name) in addrs.into_iter().zip(names) {
                self.names.insert(address, name);
            }
        }
        frames.iter().rev().map(|a| self.names[a].clone()).collect()
    }

    fn symbolize_in(&self, module: &LoadedModule, addrs: &[u64]) -> Vec<Rc<[String]>> {
        let unnamed = || Rc::from(vec![format!("[{}]", module.name)]);
        // The vDSO has no file to read symbols from; its functions are few
        // and well known (clock_gettime, gettimeofday).
        let Some(readable) = &module.readable else {
            return addrs.iter().map(|_| unnamed()).collect();
        };
        let (dwarf_path, symtab_path) = if module.is_executable {
            (
                self.debug_file.as_ref().unwrap_or(readable),
                self.executable_symtab.as_ref().unwrap_or(readable),
            )
        } else {
            (readable, readable)
        };
        let offsets: Vec<u64> = addrs.iter().map(|&a| module.file_address(a)).collect();
        let lookup = |path: &Path, debug_syms: bool| {
            let source = Source::Elf(Elf {
                debug_syms,
                ..Elf::new(path)
            });
            self.symbolizer
                .symbolize(&source, Input::VirtOffset(&offsets))
                .map_err(|e| log::debug!("symbolizing in {}: {e}", path.display()))
                .ok()
        };
        let symtab = lookup(symtab_path, false);
        let dwarf = lookup(dwarf_path, true);
        (0..addrs.len())
            .map(|i| {
                let (from_symtab, from_dwarf) = (found(&symtab, i), found(&dwarf, i));
                let Some(function) = from_symtab.or(from_dwarf) else {
                    return unnamed();
                };
                let mut names = vec![frame_name(&function.name)];
                if let Some(dwarf) = from_dwarf {
                    names.extend(
                        dwarf
                            .inlined
                            .iter()
                            .map(|f| format!("{}{INLINED_SUFFIX}", frame_name(&f.name))),
                    );
                }
                Rc::from(names)
            })
            .collect()
    }
}

/// The symbol found for the `i`-th address of a lookup, if any.
fn found<'a, 's>(results: &'a Option<Vec<Symbolized<'s>>>, i: usize) -> Option<&'a Sym<'s>> {
    match results.as_ref()?.get(i)? {
        Symbolized::Sym(sym) => Some(sym),
        Symbolized::Unknown(_) => None,
    }
}

/// A demangled C++ name as a flamegraph frame: without its parameter list
/// and qualifiers (as FlameGraph's collapse scripts do, so the overloads and
/// `.cold` parts of a function are one frame), and without `;`, which
/// separates frames in the collapsed-stack format.
pub fn frame_name(demangled: &str) -> String {
    let mut name = demangled.trim();
    if let Some(i) = name.find(" [clone ") {
        name = &name[..i];
    }
    loop {
        let trimmed = name
            .trim_end_matches(" const")
            .trim_end_matches(" volatile")
            .trim_end_matches(" &&")
            .trim_end_matches(" &")
            .trim_end();
        if trimmed.len() == name.len() {
            break;
        }
        name = trimmed;
    }
    if name.ends_with(')') {
        // Cut at the parenthesis that opens the last, balanced group.
        let mut depth = 0usize;
        for (i, c) in name.char_indices().rev() {
            match c {
                ')' => depth += 1,
                '(' => {
                    depth -= 1;
                    if depth == 0 {
                        // `operator()` keeps its own parentheses.
                        if i > 0 && !name[..i].ends_with("operator") {
                            name = &name[..i];
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    // A C function symbolized from .symtab may carry a GCC suffix.
    let name = name.strip_suffix(".cold").unwrap_or(name);
    name.replace(';', ":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names_drop_parameters_and_clones() {
        assert_eq!(
            frame_name("(anonymous namespace)::PeerManagerImpl::ProcessMessages(CNode*, std::atomic<bool>&)"),
            "(anonymous namespace)::PeerManagerImpl::ProcessMessages"
        );
        assert_eq!(
            frame_name(
                "(anonymous namespace)::PeerManagerImpl::SendMessages(CNode*) [clone .cold]"
            ),
            "(anonymous namespace)::PeerManagerImpl::SendMessages"
        );
        assert_eq!(
            frame_name("CConnman::SocketSendData(CNode&) const"),
            "CConnman::SocketSendData"
        );
        assert_eq!(
            frame_name("std::function<void ()>::operator()() const"),
            "std::function<void ()>::operator()"
        );
        assert_eq!(
            frame_name("CConnman::Start(NetEventsInterface&, std::string&)::{lambda()#1}::operator()() const"),
            "CConnman::Start(NetEventsInterface&, std::string&)::{lambda()#1}::operator()"
        );
        assert_eq!(frame_name("TwinBurnCpu(unsigned int)"), "TwinBurnCpu");
        // DWARF names come without parameters.
        assert_eq!(frame_name("operator()"), "operator()");
        assert_eq!(frame_name("Foo::operator()(int) const"), "Foo::operator()");
        assert_eq!(frame_name("clone3"), "clone3");
        assert_eq!(frame_name("start_thread"), "start_thread");
        assert_eq!(frame_name("foo.cold"), "foo");
        assert_eq!(frame_name("a;b"), "a:b");
    }
}
