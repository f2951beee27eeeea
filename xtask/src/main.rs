//! `cargo xtask`: set-up, build, test, demo, bench, lint and packaging for
//! peerlog.
//!
//! Every command first makes sure the machine has what the build needs
//! (`setup`), so a fresh machine goes from clone to result in one command.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod dist;
mod lint;
mod test;

/// Debian packages the build and the tests need: Debian's rustc with its
/// precompiled BPF `core` (the eBPF build), LLVM 22 (for bpf-linker), the
/// SystemTap SDT header and g++ (the twin node), binutils (objcopy/strip for
/// the stripped twin), bpftrace (the reference `cargo xtask bench` compares
/// peerlog with).
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    // Clippy for that rustc: `cargo xtask lint` lints the eBPF crate with it.
    "rust-web-clippy",
    "llvm-22-dev",
    "systemtap-sdt-dev",
    "g++",
    "binutils",
    "bpftrace",
    "tshark", // the toolbox tests check `convert --to pcapng` with Wireshark's dissector
    // `cargo xtask dist`: dpkg-shlibdeps (the package's Depends, by
    // cargo-deb) and systemd-analyze (the unit's test and CI's check).
    "dpkg-dev",
    "systemd",
    // The runtime libraries of Bitcoin Core's bitcoind, which `cargo xtask
    // test` runs the suite against a second time.
    "libevent-core-2.1-7",
    "libevent-extra-2.1-7",
    "libevent-pthreads-2.1-7",
];

/// The bpf-linker release that links with LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The `cargo` arguments that build what the demo and the bench run:
/// peerlog, and the tests crate's binaries (the demo, the load generator)
/// with the twin node its build script makes.
const BUILD_RELEASE_BINS: &[&str] = &[
    "build",
    "--release",
    "-p",
    "peerlog",
    "-p",
    "peerlog-tests",
    "--bins",
];

#[derive(Parser)]
#[command(about = "peerlog's set-up, build, test, demo and bench driver")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building peerlog needs (Debian packages, bpf-linker); idempotent.
    Setup,
    /// Set up, then build peerlog (release) and the twin node.
    Build,
    /// Set up, then run every test (unit and integration; integration tests
    /// load eBPF and need root) against the twin node, then again against a
    /// real bitcoind (BITCOIND, else ../shared/bitcoin-core/bitcoind; skipped
    /// without either), and print a summary of every suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then trace the twin node (or BITCOIND=/path/to/bitcoind)
    /// while a P2P peer talks to it, and show the capture.
    Demo,
    /// Set up, build, then measure what tracing costs the twin node (or
    /// BITCOIND=/path/to/bitcoind) under P2P load (untraced, the empty-probe
    /// floor, peerlog --no-accounting / defaults / capturing / with stats,
    /// bpftrace); prints a table, saves target/bench/results.json (or
    /// results-bitcoind.json) and the node's section of docs/benchmarks.md.
    Bench {
        /// A seconds-long run of every scenario and configuration, for CI:
        /// checks the harness, means nothing about performance, writes
        /// target/bench/smoke.json only.
        #[arg(long)]
        smoke: bool,
    },
    /// Set up, then check formatting and run clippy (warnings denied) over
    /// the workspace and the eBPF crate, which is built outside it.
    Lint,
    /// Set up, then build what an operator installs on a node (no LLVM or
    /// bpf-linker needed there): a Debian package in target/dist/ with the
    /// release peerlog, its systemd unit, man pages and shell completions;
    /// checks what the package holds.
    Dist,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            cargo(&["build", "--release", "--workspace", "--bins"])
        }
        Cmd::Test { args } => {
            setup()?;
            test::run(&args)
        }
        Cmd::Demo => {
            setup()?;
            cargo(BUILD_RELEASE_BINS)?;
            let demo = workspace_root().join("target/release/peerlog-demo");
            run_cmd(Command::new(&demo), "the demo")
        }
        Cmd::Bench { smoke } => {
            setup()?;
            bench::run(smoke)
        }
        Cmd::Lint => {
            setup()?;
            lint::run()
        }
        Cmd::Dist => {
            setup()?;
            dist::run()
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cargo that runs this xtask (`CARGO`), else the one on the PATH.
fn cargo_command() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = cargo_command();
    cmd.args(args).current_dir(workspace_root());
    run_cmd(cmd, &format!("cargo {}", args.join(" ")))
}

fn run_cmd(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn setup() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !debian_package_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "xtask: Debian packages present: {}",
            DEBIAN_PACKAGES.join(" ")
        );
    } else {
        if !is_root() {
            bail!(
                "missing Debian packages {}; run `sudo apt-get install -y {}` or run this as root",
                missing.join(" "),
                missing.join(" ")
            );
        }
        eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
        run_cmd(
            {
                let mut c = Command::new("apt-get");
                c.args(["update", "-q"]);
                c
            },
            "apt-get update",
        )?;
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(c, "apt-get install")?;
    }

    if bpf_linker_ok() {
        eprintln!("xtask: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        eprintln!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)"
        );
        let mut c = cargo_command();
        c.args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        run_cmd(c, "cargo install bpf-linker")?;
    }
    Ok(())
}

fn debian_package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
