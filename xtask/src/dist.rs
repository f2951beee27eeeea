//! `cargo xtask dist`: what an operator installs on a node, which has no
//! LLVM, no bpf-linker and no Rust. Built once on a build machine: the
//! release `peerlog` (its eBPF object is embedded at build time, see
//! peerlog-user/build.rs) in a Debian package, with the systemd unit, its
//! options file, the man pages and the shell completions.
//!
//! The package is checked right after it is built, every time: a package
//! is only as good as what is in it, and checking it here costs seconds,
//! where a test of its own would build the release binary a second time.
//! CI runs `cargo xtask dist`, then installs the package with `dpkg -i`
//! and runs the installed `peerlog` (.ci/run).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{cargo, run_cmd, workspace_root};

/// The cargo-deb release the package is made with.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Paths every package must hold (as `dpkg-deb -c` lists them).
const REQUIRED: &[&str] = &[
    "./usr/bin/peerlog",
    "./usr/lib/systemd/system/peerlog.service",
    "./etc/default/peerlog",
    "./usr/share/man/man1/peerlog.1.gz",
    "./usr/share/man/man1/peerlog-trace.1.gz",
    "./usr/share/bash-completion/completions/peerlog",
    "./usr/share/zsh/vendor-completions/_peerlog",
    "./usr/share/fish/vendor_completions.d/peerlog.fish",
];

/// Builds the package into target/dist/, checks it and prints its path.
pub(crate) fn run() -> Result<()> {
    ensure_cargo_deb()?;
    // The binary without the test-only `test-fixtures` feature, and the
    // program that writes the man pages and completions, in one build.
    cargo(&[
        "build",
        "--release",
        "-p",
        "peerlog",
        "--bin",
        "peerlog",
        "--example",
        "dist_assets",
    ])?;
    let root = workspace_root();
    let dist = root.join("target/dist");
    let mut assets = Command::new(root.join("target/release/examples/dist_assets"));
    // Where peerlog-user/Cargo.toml's [package.metadata.deb] takes them.
    assets.arg(root.join("target/release/dist-assets"));
    run_cmd(assets, "writing the man pages and completions")?;

    // Only the package built now is left in target/dist.
    for old in debs_in(&dist)? {
        fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    let mut deb = crate::cargo_command();
    deb.args(["deb", "-p", "peerlog", "--no-build", "--strip", "--output"])
        .arg(&dist)
        .current_dir(&root);
    run_cmd(deb, "cargo deb")?;
    let package = match debs_in(&dist)?.as_slice() {
        [one] => one.clone(),
        other => bail!(
            "cargo deb left {} packages in {}",
            other.len(),
            dist.display()
        ),
    };
    check(&package).with_context(|| format!("checking {}", package.display()))?;
    println!("xtask: built and checked {}", package.display());
    Ok(())
}

/// The `.deb` files in `dir`.
fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut debs = Vec::new();
    if dir.exists() {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "deb") {
                debs.push(path);
            }
        }
    }
    Ok(debs)
}

fn ensure_cargo_deb() -> Result<()> {
    let installed = crate::cargo_command()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION)
        });
    if installed {
        eprintln!("xtask: cargo-deb {CARGO_DEB_VERSION} present");
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (a few minutes)");
    let mut c = crate::cargo_command();
    c.args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]);
    run_cmd(c, "cargo install cargo-deb")
}

/// Checks what the package holds, that its binary runs, and that its
/// `Depends` names the packages of the libraries the binary links (or
/// packages that depend on them), and no others.
fn check(package: &Path) -> Result<()> {
    let listing = output(Command::new("dpkg-deb").arg("-c").arg(package))?;
    let paths = listed_paths(&listing);
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|p| !paths.contains(*p))
        .collect();
    ensure!(
        missing.is_empty(),
        "the package lacks {}",
        missing.join(", ")
    );
    let conffiles = output(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(package)
            .arg("conffiles"),
    )?;
    ensure!(
        conffiles.lines().any(|l| l.trim() == "/etc/default/peerlog"),
        "/etc/default/peerlog is not a conffile (an upgrade would overwrite the operator's options)"
    );

    let unpacked = tempdir(&workspace_root().join("target/dist"))?;
    let result = check_unpacked(package, &unpacked);
    fs::remove_dir_all(&unpacked).with_context(|| format!("removing {}", unpacked.display()))?;
    result
}

fn check_unpacked(package: &Path, dir: &Path) -> Result<()> {
    run_cmd(
        {
            let mut c = Command::new("dpkg-deb");
            c.arg("-x").arg(package).arg(dir);
            c
        },
        "dpkg-deb -x",
    )?;
    let binary = dir.join("usr/bin/peerlog");
    let version = output(Command::new(&binary).arg("--version"))?;
    let expected = format!("peerlog {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        version.trim() == expected,
        "the packaged peerlog says {version:?}, not {expected:?}"
    );

    let mut linked = BTreeSet::new();
    for library in linked_libraries(&output(Command::new("ldd").arg(&binary))?) {
        let owner = output(Command::new("dpkg").arg("-S").arg(&library))
            .with_context(|| format!("which package holds {library}"))?;
        linked.insert(owning_package(&owner).context("dpkg -S said nothing")?);
    }
    let control = output(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(package)
            .arg("Depends"),
    )?;
    let depends = depends_names(&control);
    // cargo-deb leaves out libgcc-s1 (Rust's unwinder), which libc6
    // depends on: a library is named directly or through what is named.
    let mut covered = depends.clone();
    for named in &depends {
        let theirs = output(Command::new("dpkg-query").args(["-W", "-f=${Depends}", named]))?;
        covered.extend(depends_names(&theirs));
    }
    let unnamed: Vec<&String> = linked.difference(&covered).collect();
    let unlinked: Vec<&String> = depends.difference(&linked).collect();
    ensure!(
        unnamed.is_empty() && unlinked.is_empty(),
        "Depends is {:?}, but the binary links libraries of {linked:?}: not named \
         {unnamed:?}, not linked {unlinked:?}",
        control.trim(),
    );
    Ok(())
}

/// A fresh directory under `parent` for the unpacked package.
fn tempdir(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!("check-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs `cmd` and returns its stdout; an error with its stderr if it fails.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The paths of `dpkg-deb -c`'s listing (tar's verbose lines: mode,
/// owner, size, date, time, path; a symlink adds ` -> target`).
fn listed_paths(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(str::to_string)
        .collect()
}

/// The shared libraries of `ldd`'s output, by the path the loader found
/// (the vDSO has none, the loader's own line is its path).
fn linked_libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once(" => ") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// The package of `dpkg -S`'s answer `libc6:amd64: /path`, without the
/// architecture.
fn owning_package(answer: &str) -> Option<String> {
    let (package, _) = answer.lines().next()?.split_once(": ")?;
    Some(package.split(':').next()?.to_string())
}

/// The package names of a `Depends` field, without versions (every
/// alternative of `a | b` counts).
fn depends_names(field: &str) -> BTreeSet<String> {
    field
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_gives_paths() {
        let listing = "\
drwxr-xr-x 0/0               0 2026-12-02 02:00 ./usr/bin/
-rwxr-xr-x 0/0         8123456 2026-12-02 02:00 ./usr/bin/peerlog
lrwxrwxrwx 0/0               0 2026-12-02 02:00 ./usr/bin/x -> peerlog
";
        let paths = listed_paths(listing);
        assert!(paths.contains("./usr/bin/peerlog"));
        assert!(paths.contains("./usr/bin/x"));
        assert_eq!(paths.len(), 3);
    }

    #[test]
    fn ldd_gives_library_paths() {
        let ldd = "\
\tlinux-vdso.so.1 (0x00007ffc3b5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e1c9a0000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1c7bf000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1ca0d000)
";
        assert_eq!(
            linked_libraries(ldd),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn owners_and_depends_are_package_names() {
        assert_eq!(
            owning_package("libgcc-s1:amd64: /lib/x86_64-linux-gnu/libgcc_s.so.1\n").as_deref(),
            Some("libgcc-s1")
        );
        assert_eq!(
            depends_names("libc6 (>= 2.34), libgcc-s1 (>= 4.2) | libgcc1\n"),
            BTreeSet::from(["libc6".into(), "libgcc-s1".into(), "libgcc1".into()])
        );
    }
}
