//! User-facing messages on stderr, in one style, and the exit codes.
//!
//! Every warning and error reads `peerlog: warning: …` or
//! `peerlog: error: …`, whether a module prints it through [`warning!`] or
//! through the `log` crate's `warn!`/`error!`: [`init_logger`] renders
//! those records in the same style. `info` and `debug` records (`-v`,
//! `-vv`) are diagnostics and keep their `[LEVEL module]` prefix.
//!
//! The exit code says which kind of failure stopped peerlog (see
//! [`ExitKind`]); the error's place of origin marks it with one of the
//! marker types below, found again in the error's chain by [`exit_code`].

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

/// Prints a warning on stderr: `peerlog: warning: …`.
#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => {
        $crate::messages::print("warning", format_args!($($arg)*))
    };
}

/// Prints `peerlog: {kind}: {message}` on stderr.
pub fn print(kind: &str, message: fmt::Arguments<'_>) {
    // A closed stderr has nowhere to report to.
    let _ = writeln!(std::io::stderr().lock(), "peerlog: {kind}: {message}");
}

/// Sets up the `log` crate's logger at `level` (RUST_LOG overrides),
/// rendering warnings and errors like [`warning!`] and [`error`].
pub fn init_logger(level: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|buf, record| match record.level() {
            log::Level::Error => writeln!(buf, "peerlog: error: {}", record.args()),
            log::Level::Warn => writeln!(buf, "peerlog: warning: {}", record.args()),
            level => writeln!(buf, "[{level:<5} {}] {}", record.target(), record.args()),
        })
        .init();
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
}
