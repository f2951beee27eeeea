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
