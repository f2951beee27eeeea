use std::os::unix::fs::symlink;

use super::*;
use crate::messages::{ExitKind, UsageError};

fn write_pid(dir: &Path, text: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(PID_FILE);
    fs::write(&path, text).unwrap();
    path
}

fn datadir(dir: &Path, chain: Option<Chain>) -> Locator {
    Locator::Datadir {
        dir: dir.to_path_buf(),
        chain,
    }
}

#[test]
fn the_pid_file_is_found_in_the_datadir_or_its_chain_directory() {
    let me = std::process::id() as i32;
    let me_now = Process::running(me).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // Nothing yet: not running, waiting names the mainnet pid file.
    assert_eq!(pid_file_in(dir, None).unwrap(), dir.join(PID_FILE));
    assert!(
        matches!(datadir(dir, None).find().unwrap(), Found::NotRunning(why) if why.contains("does not exist"))
    );

    // One chain directory has it.
    let regtest = write_pid(&dir.join("regtest"), &format!("{me}\n"));
    assert_eq!(pid_file_in(dir, None).unwrap(), regtest);
    assert_eq!(datadir(dir, None).find().unwrap(), Found::Process(me_now));

    // Several: an error listing them, until --chain picks one.
    let main = write_pid(dir, &me.to_string());
    let e = datadir(dir, None).find().unwrap_err();
    let text = e.to_string();
    assert!(e.is::<UsageError>(), "{text}");
    assert_eq!(ExitKind::of(&e), ExitKind::Usage);
    for wanted in [
        main.display().to_string(),
        regtest.display().to_string(),
        "--chain main|regtest".into(),
    ] {
        assert!(text.contains(&wanted), "{text} lacks {wanted}");
    }
    assert_eq!(pid_file_in(dir, Some(Chain::Regtest)).unwrap(), regtest);
    assert_eq!(pid_file_in(dir, Some(Chain::Main)).unwrap(), main);
    assert_eq!(
        datadir(dir, Some(Chain::Regtest)).find().unwrap(),
        Found::Process(me_now)
    );
    // A chosen chain without a pid file is waited for, not replaced by another.
    assert!(matches!(
        datadir(dir, Some(Chain::Signet)).find().unwrap(),
        Found::NotRunning(_)
    ));
}

#[test]
fn a_stale_pid_file_is_not_a_running_process() {
    let tmp = tempfile::tempdir().unwrap();
    // A child that exited and was reaped: its pid names nobody (unless
    // reused at once, which the start time would tell apart).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id() as i32;
    child.wait().unwrap();
    let path = write_pid(tmp.path(), &dead.to_string());
    match Locator::PidFile(path.clone()).find().unwrap() {
        Found::NotRunning(why) => {
            assert!(
                why.contains("stale") && why.contains(&dead.to_string()),
                "{why}"
            )
        }
        Found::Process(p) => assert_ne!(p.pid, dead, "a reused pid is another process"),
    }
    // An empty file is one bitcoind is about to write.
    fs::write(&path, "").unwrap();
    assert_eq!(read_pid_file(&path).unwrap(), None);
}

#[test]
fn a_pid_file_that_holds_no_pid_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["abc", "-5", "0", "12 34", "99999999999"] {
        let path = write_pid(tmp.path(), bad);
        let e = Locator::PidFile(path.clone()).find().unwrap_err();
        assert_eq!(ExitKind::of(&e), ExitKind::Target, "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("not a process id"),
            "{bad}: {text}"
        );
    }
}

#[test]
fn a_missing_datadir_is_a_usage_error() {
    let e = datadir(Path::new("/nonexistent/peerlog-datadir"), None)
        .check()
        .unwrap_err();
    assert_eq!(ExitKind::of(&e), ExitKind::Usage);
    assert!(e.to_string().contains("no such directory"), "{e}");
}

#[test]
fn process_identity_includes_its_start_time() {
    let me = Process::running(std::process::id() as i32).unwrap();
    assert!(me.start > 0);
    assert_eq!(Process::running(me.pid), Some(me));
}

#[test]
fn the_datadir_of_a_command_line() {
    let args = |a: &[&str]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        datadir_from_cmdline(&args(&["bitcoind", "-regtest", "-datadir=/d"])),
        Some("/d".into())
    );
    assert_eq!(
        datadir_from_cmdline(&args(&["bitcoin-node", "--datadir=/a", "-datadir=/b"])),
        Some("/b".into())
    );
    assert_eq!(
        datadir_from_cmdline(&args(&["-datadir=/x"])),
        None,
        "argv[0]"
    );
    assert_eq!(datadir_from_cmdline(&args(&["bitcoind", "-daemon"])), None);
}

#[test]
fn choosing_among_candidates() {
    let c = |pid: i32| Candidate {
        pid,
        exe: format!("/opt/bitcoin-{pid}/bitcoin-node").into(),
        datadir: (pid == 2).then(|| "/data/two".into()),
    };
    assert_eq!(choose(vec![c(1)]).unwrap(), c(1));
    let e = choose(vec![]).unwrap_err();
    assert_eq!(ExitKind::of(&e), ExitKind::Target);
    assert!(e.to_string().contains("--pid, --datadir"), "{e}");
    let e = choose(vec![c(1), c(2)]).unwrap_err();
    assert_eq!(ExitKind::of(&e), ExitKind::Usage);
    let text = e.to_string();
    for wanted in [
        "pid 1 (/opt/bitcoin-1/bitcoin-node)",
        "pid 2 (/opt/bitcoin-2/bitcoin-node, -datadir=/data/two)",
        "--pid PID or --datadir DIR",
    ] {
        assert!(text.contains(wanted), "{text} lacks {wanted}");
    }
}

/// Why an executable with a `net:inbound_message` probe cannot be built here.
fn sdt_missing() -> Option<&'static str> {
    let sdt = [
        "/usr/include/x86_64-linux-gnu/sys/sdt.h",
        "/usr/include/sys/sdt.h",
    ];
    if !sdt.iter().any(|p| Path::new(p).exists()) {
        return Some("sys/sdt.h not found (install systemtap-sdt-dev)");
    }
    None
}

/// Candidates are told by their probes, not their names, each executable is
/// read once, and processes that cannot be examined are skipped.
#[test]
fn candidates_are_found_by_their_probes() {
    if let Some(why) = sdt_missing() {
        eprintln!("skipping candidates_are_found_by_their_probes: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("node.c");
    fs::write(
        &src,
        "#include <sys/sdt.h>\nint main(void) { DTRACE_PROBE(net, inbound_message); return 0; }\n",
    )
    .unwrap();
    let node = tmp.path().join("bitcoin-node");
    let out = std::process::Command::new("gcc")
        .arg(&src)
        .arg("-o")
        .arg(&node)
        .output()
        .expect("gcc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A /proc of our own making: the scan only reads exe and cmdline.
    let proc = tmp.path().join("proc");
    let process = |pid: i32, exe: Option<&Path>, cmdline: &str| {
        let dir = proc.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        if let Some(exe) = exe {
            symlink(exe, dir.join("exe")).unwrap();
        }
        fs::write(dir.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
    };
    let not_a_node = std::env::current_exe().unwrap();
    process(10, Some(&node), "bitcoin-node -datadir=/d1 ");
    process(11, Some(&not_a_node), "bitcoind ");
    process(12, None, "");
    process(13, Some(&node), "bitcoin-node ");
    fs::create_dir_all(proc.join("self")).unwrap();

    let found = candidates(&proc, 13);
    assert_eq!(
        found,
        vec![Candidate {
            pid: 10,
            exe: node.clone(),
            datadir: Some("/d1".into())
        }],
        "by probes, not by name; peerlog itself is left out"
    );
    assert_eq!(choose(found).unwrap().pid, 10);
    let both = candidates(&proc, 1);
    assert_eq!(both.iter().map(|c| c.pid).collect::<Vec<_>>(), [10, 13]);
    let e = choose(both).unwrap_err().to_string();
    assert!(e.contains("pid 10") && e.contains("pid 13"), "{e}");
}
