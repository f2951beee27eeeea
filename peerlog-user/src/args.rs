//! Clap value parsers shared by the subcommands' arguments.
//!
//! Each subcommand's module declares its own arguments; these parsers sit
//! below all of them so that no subcommand has to import the command line
//! that dispatches to it.

use std::time::Duration;

/// A clap value parser for a number from `min` to `max`, inclusive. Every
/// numeric flag has one, so that an absurd value is a usage error naming
/// the range rather than a panic or an overflow later; `unit` (e.g.
/// `" seconds"`) follows the range in the error.
pub fn number_in<T>(
    min: T,
    max: T,
    unit: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |text: &str| match text.trim().parse::<T>() {
        // NaN is neither >= nor <= anything: refused too.
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("expected a number from {min} to {max}{unit}")),
    }
}

/// A clap value parser for a number of seconds from `min` to `max`.
pub fn seconds_in(
    min: f64,
    max: f64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let number = number_in(min, max, " seconds");
    // Within the range, from_secs_f64 cannot overflow (it panics beyond
    // u64::MAX seconds).
    move |text: &str| number(text).map(Duration::from_secs_f64)
}

/// The longest rotation interval: a year, like `--duration`.
const MAX_ROTATE_SECS: u64 = 365 * 86_400;

/// A clap value parser for a rotation interval: a duration with units
/// (`30s`, `15m`, `1h`, `1d`, `1h 30m`; humantime's forms), a whole number
/// of seconds from 1 second to a year (generation names are to the second).
pub fn rotate_interval(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}: expected a duration such as 30s, 15m, 1h or 1d"))?;
    if duration.subsec_nanos() != 0 || !(1..=MAX_ROTATE_SECS).contains(&duration.as_secs()) {
        return Err("expected a whole number of seconds from 1s to 365d".into());
    }
    Ok(duration)
}

/// A clap value parser for a size cap in bytes: a number with an optional
/// unit, decimal (`500M` = 500 MB = 500,000,000 bytes, `10G`, `1T`) or
/// binary (`512MiB`, `10GiB`), as the bytesize crate reads them; at least
/// 1 KiB.
pub fn byte_size(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("{e}: expected a size such as 500M, 10G or 512MiB"))?;
    if size.as_u64() < 1024 {
        return Err("expected a size of at least 1KiB".into());
    }
    Ok(size.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_intervals_parse_with_units() {
        assert_eq!(byte_size("500M"), Ok(500_000_000));
        assert_eq!(byte_size("10G"), Ok(10_000_000_000));
        assert_eq!(byte_size("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(byte_size("4096"), Ok(4096));
        assert!(byte_size("12").is_err());
        assert!(byte_size("lots").is_err());
        assert_eq!(rotate_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(rotate_interval("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(rotate_interval("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(rotate_interval("1s"), Ok(Duration::from_secs(1)));
        for bad in ["0s", "500ms", "2y", "soon", ""] {
            assert!(rotate_interval(bad).is_err(), "{bad}");
        }
    }
}
