//! peerlog as a systemd service (issue #15): the unit that the Debian
//! package installs (peerlog-user/debian/peerlog.service) is valid and
//! tightly confined, the capabilities it grants are enough to trace, and
//! peerlog's messages keep their priority in the journal.
//!
//! Tests that need a tool this machine lacks (systemd-analyze, setpriv) or
//! eBPF are reported as ignored with the reason, never as passed.

use std::{
    fs::{self, File},
    io::{BufRead, BufReader},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::Arguments;
use peerlog_tests::*;

/// The unit as the package carries it.
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../peerlog-user/debian/peerlog.service"
);

/// The exposure `systemd-analyze security` may give the unit at most, in
/// its tenths (2.7 when written; its scale ends at 10.0).
const MAX_EXPOSURE: &str = "30";

fn main() {
    let args = Arguments::from_args();
    let no_analyze = missing_tool("systemd-analyze", "systemd");
    let no_setpriv = missing_tool("setpriv", "util-linux");
    let ebpf = ebpf_skip();
    run_suite(
        &args,
        [
            (
                "unit_verifies_and_is_confined",
                unit_verifies_and_is_confined as fn() -> Result<()>,
                &[&no_analyze][..],
            ),
            (
                "unit_capabilities_suffice_to_trace",
                unit_capabilities_suffice_to_trace,
                &[&ebpf, &no_setpriv],
            ),
            (
                "journal_lines_carry_their_priority",
                journal_lines_carry_their_priority,
                &[],
            ),
        ],
    );
}

/// Why a test cannot run without `tool` (from Debian's `package`).
fn missing_tool(tool: &str, package: &str) -> Option<Skip> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()));
    (!found).then(|| {
        Skip::ignore(format!(
            "{tool} is not installed (Debian package {package}; `cargo xtask setup` installs it)"
        ))
    })
}

/// A private directory that the account `nobody` may enter.
fn open_tempdir() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// `systemd-analyze verify` loads the unit as systemd would and reports
/// every unknown or malformed setting; `systemd-analyze security` rates
/// its confinement. The unit's `ExecStart` must name an executable, so the
/// copy checked here runs this build's peerlog (the package's
/// `/usr/bin/peerlog` is checked by CI after `dpkg -i`, man pages too).
fn unit_verifies_and_is_confined() -> Result<()> {
    let unit = fs::read_to_string(UNIT).with_context(|| format!("reading {UNIT}"))?;
    let installed = "ExecStart=/usr/bin/peerlog ";
    ensure!(
        unit.contains(installed),
        "the unit does not run {installed}"
    );
    let dir = open_tempdir()?;
    let copy = dir.path().join("peerlog.service");
    let here = format!("ExecStart={} ", peerlog_bin()?.display());
    fs::write(&copy, unit.replace(installed, &here))?;

    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    ensure!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        verify.status
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(format!("--threshold={MAX_EXPOSURE}"))
        .arg(&copy)
        .output()?;
    let report = String::from_utf8_lossy(&security.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall exposure level)");
    ensure!(
        security.status.success(),
        "the unit's exposure is above {MAX_EXPOSURE} tenths: {overall}\n{report}{}",
        String::from_utf8_lossy(&security.stderr)
    );
    Ok(())
}

/// The value of `key=` in the unit (its one line).
fn unit_setting(unit: &str, key: &str) -> Result<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .with_context(|| format!("the unit has no {key}="))
}

/// The uid and gid of the account `nobody`.
fn nobody() -> Result<(u32, u32)> {
    let name = c"nobody";
    // SAFETY: a NUL-terminated name; the entry is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    ensure!(!pw.is_null(), "no account named nobody");
    // SAFETY: non-null, as returned by getpwnam.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// The unit runs peerlog under an account of its own (DynamicUser) with
/// only the ambient capabilities it names. Here peerlog runs the same
/// way, as `nobody` with exactly those capabilities, no others even in
/// its bounding set, and no new privileges: it must attach to a node of
/// another account (root), capture a message, start sampling its stacks
/// for a flamegraph and serve its control socket.
fn unit_capabilities_suffice_to_trace() -> Result<()> {
    let unit = fs::read_to_string(UNIT).with_context(|| format!("reading {UNIT}"))?;
    let ambient = unit_setting(&unit, "AmbientCapabilities")?;
    ensure!(
        ambient == unit_setting(&unit, "CapabilityBoundingSet")?,
        "the unit's bounding set and ambient capabilities differ"
    );
    // setpriv's names: CAP_SYS_ADMIN is +sys_admin.
    let caps = ambient
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .map(|c| format!("+{}", c.to_lowercase()))
                .with_context(|| format!("capability {c:?}"))
        })
        .collect::<Result<Vec<_>>>()?
        .join(",");
    let (uid, gid) = nobody()?;

    // The binary and the writable directory where `nobody` reaches them,
    // whatever the checkout's permissions.
    let dir = open_tempdir()?;
    let bin = dir.path().join("peerlog");
    fs::copy(peerlog_bin()?, &bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let state = dir.path().join("state");
    fs::create_dir(&state)?;
    std::os::unix::fs::chown(&state, Some(uid), Some(gid))?;
    let capture = state.join("capture");

    let node = Node::start()?;
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg("--no-new-privs")
        .arg(&bin)
        .args(["trace", "--pid", &node.pid().to_string(), "--capture"])
        .arg(&capture)
        .arg("--flamegraph")
        .arg(state.join("flame"))
        .arg("--rpc-socket")
        .arg(state.join("ctl.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting peerlog under setpriv")?;
    let (tx, rx) = mpsc::channel();
    let pipe = child.stderr.take().context("no stderr")?;
    let reader = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.contains("attached") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let attached = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let traced = attached
        .then(|| -> Result<_> {
            let mut peer = connect(&node)?;
            sync(&mut peer, 7)?;
            let status = Command::new(&bin)
                .args(["ctl", "--socket"])
                .arg(state.join("ctl.sock"))
                .arg("getstatus")
                .stdout(Stdio::null())
                .status()?;
            ensure!(status.success(), "peerlog ctl getstatus failed ({status})");
            Ok(peer.local_addr())
        })
        .transpose();
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    let stderr = reader.join().unwrap_or_default();
    if !attached {
        bail!("peerlog did not attach with {ambient} ({status}):\n{stderr}");
    }
    let local = traced.with_context(|| format!("peerlog's stderr:\n{stderr}"))?;
    ensure!(status.success(), "peerlog exited {status}:\n{stderr}");

    let files = read_capture(&capture)?;
    let ours = capture_of(&files, local.context("no traffic")?);
    let pings = ours
        .iter()
        .flat_map(|f| &f.records)
        .filter(|r| r.msg_type == "ping")
        .count();
    ensure!(pings > 0, "no ping of ours in the capture:\n{stderr}");
    // The node is idle, so there may be no sample to draw; what needs the
    // capabilities is opening the sampling events on every CPU.
    ensure!(
        stderr.contains("sampling every thread"),
        "the CPU sampling did not start:\n{stderr}"
    );
    node.stop()?;
    Ok(())
}

/// Runs `peerlog ARGS` with stderr into a file and, if `journal`, with
/// `JOURNAL_STREAM` naming that file (as systemd names the journal's
/// stream) or, if `Some(false)`, naming another file. Returns stderr.
fn stderr_of(dir: &Path, args: &[&Path], journal: Option<bool>) -> Result<String> {
    let path: PathBuf = dir.join("stderr");
    let file = File::create(&path)?;
    let meta = file.metadata()?;
    let mut cmd = Command::new(peerlog_bin()?);
    cmd.args(args).stdout(Stdio::null()).stderr(file);
    match journal {
        Some(same) => {
            let ino = if same { meta.ino() } else { meta.ino() + 1 };
            cmd.env("JOURNAL_STREAM", format!("{}:{ino}", meta.dev()))
        }
        None => cmd.env_remove("JOURNAL_STREAM"),
    };
    cmd.status()?;
    Ok(fs::read_to_string(&path)?)
}

/// When stderr is the journal's stream, every line of a warning or error
/// starts with its syslog priority; anywhere else the lines are as always.
fn journal_lines_carry_their_priority() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A capture whose only file ends inside its first record: a warning.
    let peer = dir.path().join("cut/127.0.0.1_18444");
    fs::create_dir_all(&peer)?;
    fs::write(peer.join("msgs_recv.dat"), [0u8; 10])?;
    let cut = dir.path().join("cut");
    let missing = dir.path().join("missing");
    let show = Path::new("show");

    let warned = stderr_of(dir.path(), &[show, &cut], Some(true))?;
    ensure!(
        warned.starts_with("<4>peerlog: warning: ") && warned.lines().all(|l| l.starts_with("<4>")),
        "a warning to the journal: {warned:?}"
    );
    let failed = stderr_of(dir.path(), &[show, &missing], Some(true))?;
    ensure!(
        failed.starts_with("<3>peerlog: error: ") && failed.lines().all(|l| l.starts_with("<3>")),
        "an error to the journal: {failed:?}"
    );
    for journal in [None, Some(false)] {
        let plain = stderr_of(dir.path(), &[show, &missing], journal)?;
        ensure!(
            plain.starts_with("peerlog: error: "),
            "an error to a file ({journal:?}): {plain:?}"
        );
    }
    Ok(())
}
