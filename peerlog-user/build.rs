//! Builds the eBPF programs (crate `peerlog-ebpf`) so that the `peerlog`
//! binary can embed the object with `include_bytes!`.
//!
//! The eBPF crate needs a compiler that can target `bpfel-unknown-none`.
//! Two routes are tried, in this order (see shared/reference/toolchain.md):
//! 1. Debian's `rustc` (package `rustc-web`) at `/usr/bin/rustc` together with
//!    the precompiled BPF `core` of `libstd-rust-web-dev-bpf`;
//! 2. a rustup nightly with the `rust-src` component, with `-Z build-std=core`.
//!
//! `PEERLOG_BPF_RUSTC` names another compiler of the first kind. Either way
//! `bpf-linker` must be on PATH. `cargo xtask setup` installs all of it.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const SETUP_HINT: &str = "run `cargo xtask setup` (as root) to install Debian's rustc-web, \
libstd-rust-web-dev-bpf, llvm-22-dev and bpf-linker";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("../peerlog-ebpf");
    let common_dir = manifest_dir.join("../peerlog-common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=PEERLOG_BPF_RUSTC");

    // <target>/<profile>/build/<pkg>-<hash>/out → <target>
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|p| p.join("bpf"))
        .unwrap_or_else(|| out_dir.join("bpf"));

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The outer build's settings are for the host; none of them applies to
    // the BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(&ebpf_dir).args([
        "build",
        "--release",
        "--locked",
        "--target",
        "bpfel-unknown-none",
        "--target-dir",
    ]);
    cmd.arg(&target_dir);

    match bpf_compiler() {
        Some(Compiler::Debian(rustc)) => {
            cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
        }
        Some(Compiler::Nightly) => {
            cmd.env("RUSTUP_TOOLCHAIN", "nightly")
                .args(["-Z", "build-std=core"]);
        }
        None => fail(&format!(
            "no compiler for the eBPF target bpfel-unknown-none: neither /usr/bin/rustc \
             with /usr/lib/rustlib/bpfel-unknown-none nor a rustup nightly with rust-src; {SETUP_HINT}"
        )),
    }
    if which("bpf-linker").is_none() {
        fail(&format!("bpf-linker is not on PATH; {SETUP_HINT}"));
    }

    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo for the eBPF build: {e}")));
    if !status.success() {
        fail(&format!(
            "building peerlog-ebpf failed ({status}); see the errors above. If a tool is missing, {SETUP_HINT}"
        ));
    }
    let object = target_dir.join("bpfel-unknown-none/release/peerlog");
    if !object.is_file() {
        fail(&format!(
            "the eBPF build did not produce {}",
            object.display()
        ));
    }
    println!("cargo:rustc-env=PEERLOG_EBPF_OBJECT={}", object.display());
}

enum Compiler {
    Debian(PathBuf),
    Nightly,
}

fn bpf_compiler() -> Option<Compiler> {
    if let Some(rustc) = env::var_os("PEERLOG_BPF_RUSTC") {
        return Some(Compiler::Debian(rustc.into()));
    }
    let debian = Path::new("/usr/bin/rustc");
    if debian.is_file() && Path::new("/usr/lib/rustlib/bpfel-unknown-none").is_dir() {
        return Some(Compiler::Debian(debian.into()));
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    sysroot
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
        .then_some(Compiler::Nightly)
}

fn which(tool: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
