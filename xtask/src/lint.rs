//! `cargo xtask lint`: rustfmt and clippy over all of peerlog's Rust, the
//! eBPF crate included. `peerlog-ebpf` is built for its own target by
//! Debian's compiler (peerlog-user/build.rs), outside the workspace, so
//! `cargo fmt --all` and `cargo clippy --workspace` never see it; it is
//! linted here with that compiler and the clippy built for it
//! (`rust-web-clippy`). CI runs this verb (.ci/run).

use std::process::Command;

use anyhow::Result;

use crate::{cargo, cargo_command, run_cmd, workspace_root};

/// Debian's compiler, which builds the eBPF crate; `setup`, which runs
/// first, installs it and the clippy below.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// The clippy of `rust-web-clippy`, made for that compiler: rustup's clippy
/// cannot read the `core` Debian precompiled for the BPF target.
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";

/// Checks formatting, then lints, denying every warning; the first failure
/// ends the run.
pub(crate) fn run() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    let ebpf = workspace_root().join("peerlog-ebpf");
    let mut fmt = cargo_command();
    fmt.current_dir(&ebpf).args(["fmt", "--", "--check"]);
    run_cmd(fmt, "cargo fmt --check of peerlog-ebpf")?;

    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // A target directory of its own, so that these artefacts never mix with
    // the eBPF build's.
    let mut clippy = Command::new(DEBIAN_CARGO_CLIPPY);
    clippy
        .current_dir(&ebpf)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .args([
            "clippy",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
        ])
        .arg("--target-dir")
        .arg(workspace_root().join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"]);
    run_cmd(clippy, "clippy of peerlog-ebpf")
}
