//! Builds the twin node (`twin/twin.cpp`), the stand-in for bitcoind that
//! the integration tests trace, and hands its paths to the test crate:
//!
//! - `PEERLOG_TWIN`: the program as built (`-O2 -g`, symbols and DWARF inside);
//! - `PEERLOG_TWIN_STRIPPED`: the same program after `strip -s`, carrying only a
//!   `.gnu_debuglink` to the debug file, like a Bitcoin Core release binary;
//! - `PEERLOG_TWIN_DEBUG`: that separate debug file (`twin.debug`, next to it);
//! - `PEERLOG_TWIN_NO_SEMAPHORES`: the twin with probes but no semaphores, as
//!   Bitcoin Core v23-v28 built them.
//!
//! g++ is run directly rather than through the `cc` crate: this is a program
//! to execute, not a static library to link into Rust.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SETUP_HINT: &str = "run `cargo xtask setup` (or `apt-get install g++ systemtap-sdt-dev`)";

/// The flags the brief fixes: the probes and symbols must look like a release
/// bitcoind (optimised, frame pointers omitted, DWARF kept).
const CXXFLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-g",
    "-fomit-frame-pointer",
    "-pthread",
    "-Wall",
    "-Wextra",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let twin_dir = manifest_dir.join("twin");
    let source = twin_dir.join("twin.cpp");

    println!("cargo:rerun-if-changed=build.rs");
    // A directory makes Cargo watch every file under it (headers included).
    println!("cargo:rerun-if-changed={}", twin_dir.display());
    println!("cargo:rerun-if-env-changed=PEERLOG_TWIN_CXX");

    let cxx = env::var("PEERLOG_TWIN_CXX").unwrap_or_else(|_| "g++".to_string());
    check_toolchain(&cxx);

    let twin = out_dir.join("twin");
    let stripped = out_dir.join("twin-stripped");
    let debug = out_dir.join("twin.debug");

    // Everything is built under temporary names and renamed into place at the
    // end: a twin left running by an earlier test keeps its (unlinked) file
    // and does not make the build fail with "Text file busy".
    let tmp = |name: &str| out_dir.join(format!("{name}.tmp"));

    let mut compile = Command::new(&cxx);
    compile
        .args(CXXFLAGS)
        .arg(&source)
        .arg("-o")
        .arg(tmp("twin"));
    let output = run(&mut compile, "compiling the twin node");
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo:warning=twin.cpp: {line}");
    }

    // The split that Bitcoin Core's release process does: the debug file,
    // then a stripped copy that points at it by name (and by build-id).
    run(
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(tmp("twin"))
            .arg(tmp("twin.debug")),
        "extracting the twin's debug info",
    );
    fs::copy(tmp("twin"), tmp("twin-stripped")).expect("copying the twin");
    run(
        Command::new("strip").arg("-s").arg(tmp("twin-stripped")),
        "stripping the twin",
    );
    // The debuglink records the file name given here, so it is run in
    // OUT_DIR with the final name; the CRC is over the same bytes.
    fs::rename(tmp("twin.debug"), &debug).expect("renaming twin.debug");
    run(
        Command::new("objcopy")
            .current_dir(&out_dir)
            .arg("--add-gnu-debuglink=twin.debug")
            .arg(tmp("twin-stripped").file_name().unwrap()),
        "adding the debug link",
    );
    fs::rename(tmp("twin-stripped"), &stripped).expect("renaming twin-stripped");
    fs::rename(tmp("twin"), &twin).expect("renaming twin");

    // The same twin as bitcoind v23-v28 had it: probes without semaphores.
    let no_semaphores = out_dir.join("twin-nosem");
    run(
        Command::new(&cxx)
            .args(CXXFLAGS)
            .arg("-DTWIN_NO_SEMAPHORES")
            .arg(&source)
            .arg("-o")
            .arg(tmp("twin-nosem")),
        "compiling the twin node without semaphores",
    );
    fs::rename(tmp("twin-nosem"), &no_semaphores).expect("renaming twin-nosem");
    println!(
        "cargo:rustc-env=PEERLOG_TWIN_NO_SEMAPHORES={}",
        no_semaphores.display()
    );

    println!("cargo:rustc-env=PEERLOG_TWIN={}", twin.display());
    println!(
        "cargo:rustc-env=PEERLOG_TWIN_STRIPPED={}",
        stripped.display()
    );
    println!("cargo:rustc-env=PEERLOG_TWIN_DEBUG={}", debug.display());
}

/// Fails early, with the fix, when the compiler or the SystemTap header is
/// missing, instead of leaving the reader to decode a compiler error.
fn check_toolchain(cxx: &str) {
    let version = Command::new(cxx)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(version, Ok(s) if s.success()) {
        panic!("the twin node needs a C++20 compiler, but `{cxx}` could not be run: {SETUP_HINT}");
    }

    let mut probe = Command::new(cxx)
        .args(["-std=c++20", "-fsyntax-only", "-x", "c++", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running `{cxx}`: {e}; {SETUP_HINT}"));
    probe
        .stdin
        .take()
        .unwrap()
        .write_all(b"#include <sys/sdt.h>\nint main() { STAP_PROBE(peerlog, check); }\n")
        .expect("writing to the compiler");
    let out = probe.wait_with_output().expect("waiting for the compiler");
    if !out.status.success() {
        panic!(
            "the twin node needs <sys/sdt.h> (SystemTap SDT headers), which `{cxx}` cannot find: {SETUP_HINT}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    for tool in ["objcopy", "strip"] {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(ok, Ok(s) if s.success()) {
            panic!("the twin node's build needs `{tool}` (binutils): {SETUP_HINT}");
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    let shown = describe(cmd);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run `{shown}`: {e}; {SETUP_HINT}"));
    if !output.status.success() {
        panic!(
            "{what} failed ({}): `{shown}`\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(
        cmd.get_args()
            .map(|a: &OsStr| Path::new(a).display().to_string()),
    );
    parts.join(" ")
}
