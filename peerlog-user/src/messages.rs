//! User-facing messages on stderr, in one style, and the exit codes.
//!
//! Every warning and error reads `peerlog: warning: …` or
//! `peerlog: error: …`, whether a module prints it through [`warning!`] or
//! through the `log` crate's `warn!`/`error!`: [`init_logger`] renders
//! those records in the same style. `info` and `debug` records (`-v`,
//! `-vv`) are diagnostics and keep their `[LEVEL module]` prefix.
//!
//! Under systemd, when stderr is the journal ([`stderr_is_journal`]), each
//! line also starts with its syslog priority (`<3>` error, `<4>` warning,
//! `<6>` info, `<7>` debug), which journald strips and keeps as the
//! entry's priority, so `journalctl -p warning` finds peerlog's warnings;
//! lines without one (the summary) are journald's default, info.
//!
//! The exit code says which kind of failure stopped peerlog (see
//! [`ExitKind`]); the error's place of origin marks it with one of the
//! marker types below, found again in the error's chain by [`exit_code`].

use std::fmt;
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::process::ExitCode;
use std::sync::OnceLock;

/// Prints a warning on stderr: `peerlog: warning: …`.
#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => {
        $crate::messages::print("warning", format_args!($($arg)*))
    };
}

/// Prints `peerlog: {kind}: {message}` on stderr (`kind` is `warning` or
/// `error`, which also give the journal priority).
pub fn print(kind: &str, message: fmt::Arguments<'_>) {
    let level = if kind == "error" {
        log::Level::Error
    } else {
        log::Level::Warn
    };
    let text = render(
        level,
        &format!("peerlog: {kind}: {message}"),
        stderr_is_journal(),
    );
    // A closed stderr has nowhere to report to.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Sets up the `log` crate's logger at `level` (RUST_LOG overrides),
/// rendering warnings and errors like [`warning!`] and [`error`].
pub fn init_logger(level: &str) {
    let journal = stderr_is_journal();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(move |buf, record| {
            let line = match record.level() {
                log::Level::Error => format!("peerlog: error: {}", record.args()),
                log::Level::Warn => format!("peerlog: warning: {}", record.args()),
                level => format!("[{level:<5} {}] {}", record.target(), record.args()),
            };
            buf.write_all(render(record.level(), &line, journal).as_bytes())
        })
        // The journal shows escape sequences as they are.
        .write_style(if journal {
            env_logger::WriteStyle::Never
        } else {
            env_logger::WriteStyle::Auto
        })
        .init();
}

/// `message` as lines for stderr: each line prefixed with the syslog
/// priority of `level` when `journal`, since journald reads a priority per
/// line (a message with causes on several lines keeps its priority).
fn render(level: log::Level, message: &str, journal: bool) -> String {
    if !journal {
        return format!("{message}\n");
    }
    // syslog(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG.
    let priority = match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    };
    message
        .split('\n')
        .map(|line| format!("<{priority}>{line}\n"))
        .collect()
}

/// Whether stderr is connected to the journal: systemd sets
/// `JOURNAL_STREAM=<device>:<inode>` for a service whose output goes to
/// journald, and stderr is still that stream only if its device and inode
/// match (a shell started from the service may have redirected it).
/// Decided once.
pub fn stderr_is_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some(stderr) = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| std::fs::File::from(fd).metadata().ok())
        else {
            return false;
        };
        journal_stream_is(stream.to_str(), stderr.dev(), stderr.ino())
    })
}

/// Whether the value of `JOURNAL_STREAM` names the file `dev`:`ino`.
fn journal_stream_is(value: Option<&str>, dev: u64, ino: u64) -> bool {
    value
        .and_then(|v| v.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// Prints the error that stopped peerlog, with its causes, and returns the
/// exit code its kind earns.
pub fn error(e: &anyhow::Error) -> ExitCode {
    print("error", format_args!("{e:#}"));
    ExitCode::from(ExitKind::of(e).code())
}

/// Why peerlog stopped, told by the exit code ([`ExitKind::code`],
/// documented in the README, "Messages and exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Any other failure (1).
    Failure,
    /// The command line is wrong (2, clap's own code for its errors too).
    Usage,
    /// The target cannot be traced (3): no such process, or not a bitcoind
    /// with the tracepoints peerlog needs.
    Target,
    /// Missing privileges (4): capabilities, or permission denied.
    Privilege,
    /// A file, directory or socket could not be read or written (5).
    Io,
}

impl ExitKind {
    /// The exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Failure => 1,
            Self::Usage => 2,
            Self::Target => 3,
            Self::Privilege => 4,
            Self::Io => 5,
        }
    }

    /// The kind of `e`: the first marker (or capture error) in its chain,
    /// else an I/O error's
    /// (permission denied is a privilege failure), else [`ExitKind::Failure`].
    pub fn of(e: &anyhow::Error) -> Self {
        for cause in e.chain() {
            if cause.is::<UsageError>() {
                return Self::Usage;
            }
            if cause.is::<TargetError>() {
                return Self::Target;
            }
            if cause.is::<PrivilegeError>() {
                return Self::Privilege;
            }
            // The capture writer names its I/O errors itself, without a
            // source, so that they are not said twice.
            if cause.is::<crate::formats::capture::CaptureError>() {
                return Self::Io;
            }
        }
        match e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
            Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => Self::Privilege,
            Some(_) => Self::Io,
            None => Self::Failure,
        }
    }
}

/// Declares a marker error: its message as given, its kind for the exit code.
macro_rules! marker {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
}

marker!(
    /// A command line that parses but does not make sense ([`ExitKind::Usage`]).
    UsageError
);
marker!(
    /// A target that cannot be traced ([`ExitKind::Target`]).
    TargetError
);
marker!(
    /// Missing privileges ([`ExitKind::Privilege`]).
    PrivilegeError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_in_the_chain() {
        let target = anyhow::Error::new(TargetError("no process".into())).context("tracing");
        assert_eq!(ExitKind::of(&target), ExitKind::Target);
        assert_eq!(format!("{target:#}"), "tracing: no process");
        let denied = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(ExitKind::of(&denied), ExitKind::Privilege);
        let missing = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("cannot read x");
        assert_eq!(ExitKind::of(&missing), ExitKind::Io);
        assert_eq!(ExitKind::of(&anyhow::anyhow!("odd")), ExitKind::Failure);
    }

    #[test]
    fn journal_lines_carry_their_priority() {
        let warning = "peerlog: warning: disk almost full";
        assert_eq!(
            render(log::Level::Warn, warning, false),
            format!("{warning}\n")
        );
        assert_eq!(
            render(log::Level::Warn, warning, true),
            format!("<4>{warning}\n")
        );
        assert_eq!(
            render(log::Level::Error, "peerlog: error: a\n  b", true),
            "<3>peerlog: error: a\n<3>  b\n"
        );
        assert_eq!(
            render(log::Level::Info, "[INFO ] x", true),
            "<6>[INFO ] x\n"
        );
        assert_eq!(render(log::Level::Debug, "d", true), "<7>d\n");
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(journal_stream_is(Some("64769:123456"), 64769, 123456));
        assert!(!journal_stream_is(Some("64769:123457"), 64769, 123456));
        assert!(!journal_stream_is(Some("64769"), 64769, 123456));
        assert!(!journal_stream_is(Some("x:y"), 64769, 123456));
        assert!(!journal_stream_is(None, 64769, 123456));
    }
}
