//! `cargo xtask test`: the whole suite, twice. First against the twin node
//! (`tests/twin/twin.cpp`), then against a real bitcoind: `BITCOIND` if
//! set, else `../shared/bitcoin-core/bitcoind` beside the repository (where
//! CI puts a release-style build); without either, the second pass is
//! skipped and says why. Each pass runs `cargo test --workspace
//! --no-fail-fast`, so one failing suite does not hide the others, and at
//! the end a summary gives every suite's passed, failed and ignored tests,
//! with the reasons of the ignored ones; any failure fails the command.

use std::{
    collections::BTreeMap,
    env,
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::ExitStatus,
};

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// Where CI keeps the real bitcoind, relative to the repository.
const SHARED_BITCOIND: &str = "../shared/bitcoin-core/bitcoind";

/// One run of `cargo test`: its suites, and how cargo itself ended.
struct Pass {
    title: String,
    suites: Vec<Suite>,
    status: ExitStatus,
}

/// One test binary (or a crate's doc-tests) as cargo reported it.
#[derive(Debug, Default, PartialEq)]
struct Suite {
    /// E.g. `trace (tests/trace.rs)`, `peerlog (unittests src/lib.rs)`.
    name: String,
    /// Counts of its `test result:` line; None if it never printed one
    /// (it crashed, or was killed).
    result: Option<Counts>,
    /// Tests reported `FAILED`.
    failed: Vec<String>,
    /// Tests reported `ignored`, with the reason the suite printed
    /// (`IGNORED <name>: <reason>`) if it did.
    ignored: Vec<(String, Option<String>)>,
}

/// The counts of a `test result:` line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Suite {
    fn failed(&self) -> bool {
        self.result.is_none_or(|c| c.failed > 0)
    }
}

/// Runs both passes and prints the summary; an error if anything failed.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let real_node = real_bitcoind()?;
    let mut passes = vec![cargo_test("twin node", args, None)?];
    let skipped = match real_node {
        Ok(bitcoind) => {
            passes.push(cargo_test(
                &format!("real bitcoind ({})", bitcoind.display()),
                args,
                Some(&bitcoind),
            )?);
            None
        }
        Err(why) => {
            eprintln!("xtask: the real bitcoind pass is SKIPPED: {why}");
            Some(why)
        }
    };

    println!("\nxtask: test summary");
    let mut failures = 0;
    for pass in &passes {
        failures += print_pass(pass);
    }
    if let Some(why) = skipped {
        println!("  real bitcoind: SKIPPED: {why}");
    }
    if failures > 0 {
        bail!("{failures} test suite(s) failed; see the summary above");
    }
    Ok(())
}

/// The real bitcoind of the second pass: `Ok(path)`, or `Err(why not)`.
fn real_bitcoind() -> Result<Result<PathBuf, String>> {
    real_bitcoind_for(env::var_os("BITCOIND"), &workspace_root())
}

/// The real bitcoind for the value of `BITCOIND` and the repository at `root`.
fn real_bitcoind_for(
    bitcoind: Option<std::ffi::OsString>,
    root: &Path,
) -> Result<Result<PathBuf, String>> {
    if let Some(path) = bitcoind.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("BITCOIND={} is not a file", path.display());
        }
        return Ok(Ok(path));
    }
    let shared = root.join(SHARED_BITCOIND);
    if shared.is_file() {
        // Absolute, and without `..`: the tests start it from other directories.
        return Ok(Ok(shared
            .canonicalize()
            .with_context(|| format!("resolving {}", shared.display()))?));
    }
    Ok(Err(format!(
        "BITCOIND is not set and there is no {} ({SHARED_BITCOIND})",
        shared.display()
    )))
}

/// `cargo test --workspace --no-fail-fast ARGS`, its output shown as it
/// comes and read for the summary; `bitcoind` is the pass's `BITCOIND`.
fn cargo_test(title: &str, args: &[String], bitcoind: Option<&Path>) -> Result<Pass> {
    eprintln!("xtask: === tests against the {title} ===");
    let mut cmd = crate::cargo_command();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(args)
        .current_dir(workspace_root());
    match bitcoind {
        Some(path) => cmd.env("BITCOIND", path),
        None => cmd.env_remove("BITCOIND"),
    };
    // One pipe for both streams keeps cargo's `Running` lines (stderr) in
    // order with the test binaries' results (stdout).
    let (reader, writer) = io::pipe().context("creating a pipe")?;
    cmd.stdout(writer.try_clone().context("duplicating a pipe")?)
        .stderr(writer);
    let mut child = cmd.spawn().context("cannot run cargo test")?;
    // The pipe's write ends must live in the child only, or it never ends.
    drop(cmd);
    let mut parser = Parser::default();
    let mut out = io::stdout();
    for line in BufReader::new(reader).split(b'\n') {
        let line = line.context("reading cargo test's output")?;
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        parser.line(&String::from_utf8_lossy(&line));
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok(Pass {
        title: title.to_string(),
        suites: parser.suites,
        status,
    })
}

/// Reads cargo test's output line by line into suites.
#[derive(Default)]
struct Parser {
    suites: Vec<Suite>,
    /// Reasons printed before the tests ran, by test name.
    reasons: BTreeMap<String, String>,
    /// The names under libtest's last `failures:` heading, which lists the
    /// failed tests again just before the result: a test's own output can
    /// split its `test NAME ... FAILED` line.
    failures: Option<Vec<String>>,
}

impl Parser {
    fn line(&mut self, line: &str) {
        let trimmed = line.trim();
        if trimmed == "failures:" {
            self.failures = Some(Vec::new());
            return;
        }
        if let Some(failures) = &mut self.failures {
            if line.starts_with("    ") && !trimmed.contains(' ') && !trimmed.is_empty() {
                failures.push(trimmed.to_string());
                return;
            }
        }
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            // `Running tests/trace.rs (target/debug/deps/trace-0123abcd)`
            let (what, binary) = match rest.rsplit_once(" (") {
                Some((what, path)) => (what, path.trim_end_matches(')')),
                None => (rest, ""),
            };
            let stem = Path::new(binary)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = match stem.rsplit_once('-') {
                Some((name, _hash)) => name.to_string(),
                None => stem,
            };
            self.start(format!("{name} ({what})"));
        } else if let Some(krate) = trimmed.strip_prefix("Doc-tests ") {
            self.start(format!("{krate} (doc-tests)"));
        } else if let Some(rest) = trimmed.strip_prefix("IGNORED ") {
            if let Some((name, reason)) = rest.split_once(": ") {
                self.reasons.insert(name.to_string(), reason.to_string());
            }
        } else if let Some(counts) = trimmed.strip_prefix("test result: ") {
            let failures = self.failures.take();
            if let Some(suite) = self.suites.last_mut() {
                suite.result = Some(parse_counts(counts));
                for name in failures.into_iter().flatten() {
                    if !suite.failed.contains(&name) {
                        suite.failed.push(name);
                    }
                }
            }
        } else if let Some(rest) = trimmed.strip_prefix("test ") {
            let Some((name, outcome)) = rest.split_once(" ... ") else {
                return;
            };
            let name = name.trim().to_string();
            let Some(suite) = self.suites.last_mut() else {
                return;
            };
            if outcome.starts_with("FAILED") {
                suite.failed.push(name);
            } else if outcome.starts_with("ignored") {
                // libtest's own `ignored, <reason>` (from `#[ignore = ...]`).
                let reason = outcome
                    .strip_prefix("ignored, ")
                    .map(str::to_string)
                    .or_else(|| self.reasons.get(&name).cloned());
                suite.ignored.push((name, reason));
            }
        }
    }

    fn start(&mut self, name: String) {
        self.reasons.clear();
        self.failures = None;
        self.suites.push(Suite {
            name,
            ..Suite::default()
        });
    }
}

/// `ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
fn parse_counts(text: &str) -> Counts {
    let mut counts = Counts::default();
    for part in text.split(['.', ';']) {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => {}
        }
    }
    counts
}

/// Prints one pass of the summary; returns how many of its suites failed
/// (cargo failing without a failed suite, e.g. a build error, counts one).
fn print_pass(pass: &Pass) -> usize {
    println!("  {}:", pass.title);
    let width = pass.suites.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut failed = 0;
    for suite in &pass.suites {
        match suite.result {
            Some(c) => println!(
                "    {:width$}  {:>4} passed  {:>3} failed  {:>3} ignored{}",
                suite.name,
                c.passed,
                c.failed,
                c.ignored,
                if c.failed > 0 { "  FAILED" } else { "" }
            ),
            None => println!(
                "    {:width$}  FAILED: no test result (the test binary crashed or was killed)",
                suite.name
            ),
        }
        for name in &suite.failed {
            println!("      failed:  {name}");
        }
        for (name, reason) in &suite.ignored {
            match reason {
                Some(reason) => println!("      ignored: {name}: {reason}"),
                None => println!("      ignored: {name}"),
            }
        }
        failed += usize::from(suite.failed());
    }
    if !pass.status.success() && failed == 0 {
        println!(
            "    cargo test failed ({}) outside any test suite (a build error?)",
            pass.status
        );
        failed += 1;
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_bitcoind_from_env_or_beside_the_repository() {
        let tmp = env::temp_dir().join(format!("xtask-test-{}", std::process::id()));
        let root = tmp.join("repo");
        std::fs::create_dir_all(&root).unwrap();
        // Neither: skipped, saying where it looked.
        let why = real_bitcoind_for(None, &root).unwrap().unwrap_err();
        assert!(why.contains("../shared/bitcoin-core/bitcoind"), "{why}");
        assert!(real_bitcoind_for(Some("".into()), &root).unwrap().is_err());
        // A BITCOIND that is not there is an error, not a skip.
        assert!(real_bitcoind_for(Some(tmp.join("nothing").into()), &root).is_err());
        // Beside the repository, resolved.
        let shared = tmp.join("shared/bitcoin-core");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("bitcoind"), b"").unwrap();
        let found = real_bitcoind_for(None, &root).unwrap().unwrap();
        assert_eq!(found, shared.join("bitcoind").canonicalize().unwrap());
        // BITCOIND wins.
        let own = tmp.join("own-bitcoind");
        std::fs::write(&own, b"").unwrap();
        assert_eq!(
            real_bitcoind_for(Some(own.clone().into()), &root)
                .unwrap()
                .unwrap(),
            own
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn suites_counts_failures_and_reasons() {
        let mut p = Parser::default();
        for line in [
            "   Compiling peerlog v0.1.0",
            "     Running unittests src/lib.rs (target/debug/deps/peerlog-0123abcd)",
            "running 2 tests",
            "test a::b ... ok",
            "test a::c ... ignored, needs a disk",
            "test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "     Running tests/trace.rs (target/debug/deps/trace-89ef)",
            "IGNORED capture_matches: needs a real bitcoind: set BITCOIND",
            "test capture_matches    ... ignored",
            "test ring_overflow      ... FAILED",
            "test stripped           ... it printed this: 10 samples",
            "FAILED",
            "",
            "failures:",
            "",
            "---- stripped ----",
            "no names:",
            "    [bitcoind]",
            "",
            "failures:",
            "    ring_overflow",
            "    stripped",
            "",
            "test result: FAILED. 10 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 68.00s",
            "     Running tests/stats.rs (target/debug/deps/stats-77)",
            "running 5 tests",
            "   Doc-tests peerlog",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            p.line(line);
        }
        let names: Vec<&str> = p.suites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "peerlog (unittests src/lib.rs)",
                "trace (tests/trace.rs)",
                "stats (tests/stats.rs)",
                "peerlog (doc-tests)"
            ]
        );
        let [lib, trace, stats, doc] = &p.suites[..] else {
            unreachable!()
        };
        assert_eq!(
            lib.ignored,
            [("a::c".to_string(), Some("needs a disk".to_string()))]
        );
        assert!(!lib.failed());
        assert_eq!(
            trace.result,
            Some(Counts {
                passed: 10,
                failed: 2,
                ignored: 1
            })
        );
        assert_eq!(trace.failed, ["ring_overflow", "stripped"]);
        assert_eq!(
            trace.ignored,
            [(
                "capture_matches".to_string(),
                Some("needs a real bitcoind: set BITCOIND".to_string())
            )]
        );
        assert!(trace.failed());
        // A suite that never reported a result failed.
        assert!(stats.result.is_none() && stats.failed());
        assert!(!doc.failed());
    }
}
