//! Each ranged flag's range, written once: its value parser (`values.rs`)
//! refuses what lies outside it, and `--help` and the refusal show it,
//! from the same constant, so the help cannot promise what the parser
//! refuses.

use crate::policy::{MAX_BACKOFF_FACTOR, MIN_BACKOFF_FACTOR};
use std::fmt;
use std::time::Duration;

pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);
/// The shortest delay or timeout we take. A shorter restart delay is a
/// crash loop (`--retry-delay 0` with `--max-delay 0` restarted a dying
/// worker with no pause at all); a shorter timeout fails every request.
pub(super) const FLOOR: Duration = Duration::from_millis(10);

/// The values a flag takes: `min..=max`, and 0 besides when `zero` says
/// what 0 means.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span<T> {
    pub min: T,
    pub max: T,
    pub zero: Option<&'static str>,
}

const fn span<T>(min: T, max: T) -> Span<T> {
    Span {
        min,
        max,
        zero: None,
    }
}

const fn or_zero<T>(zero: &'static str, min: T, max: T) -> Span<T> {
    Span {
        min,
        max,
        zero: Some(zero),
    }
}

/// `--poll-interval`.
pub(super) const POLL: Span<Duration> = span(Duration::from_millis(100), DAY);
/// Delays and timeouts with no use for 0: `--retry-delay`, `--max-delay`,
/// `--backoff-policy`'s duration, `--connect-timeout`, `--head-timeout`,
/// `--idle-timeout`, `--response-timeout`, `--health-timeout`.
pub(super) const DELAY: Span<Duration> = span(FLOOR, DAY);
/// `--reset-window`, `--drain-timeout`: 0 is the shortest, not an off.
pub(super) const WINDOW: Span<Duration> = span(Duration::ZERO, DAY);
/// `--tcp-idle-timeout`, `--hold-timeout`.
pub(super) const TIMEOUT_OR_NEVER: Span<Duration> = or_zero("never", FLOOR, DAY);
/// `--health-interval`.
pub(super) const HEALTH_INTERVAL: Span<Duration> =
    or_zero("no checks", Duration::from_millis(100), DAY);
/// `--backoff-factor`: whole bounds of a fractional value, checked as
/// `f64`.
pub(super) const FACTOR: Span<u64> = span(MIN_BACKOFF_FACTOR as u64, MAX_BACKOFF_FACTOR as u64);
/// `--max-retries`, `--max-held`.
pub(super) const COUNT: Span<u64> = span(0, 1_000_000);
/// `--max-conns`.
pub(super) const CONNS: Span<u64> = span(1, 1_000_000);
/// `--health-fall`, `--health-rise`.
pub(super) const HEALTH_COUNT: Span<u64> = span(1, 1000);

/// What a range is made of: durations and whole numbers.
pub(super) trait Bound: Copy + PartialOrd {
    fn show(self) -> String;
    fn is_zero(self) -> bool;
}

impl Bound for Duration {
    fn show(self) -> String {
        show(self)
    }
    fn is_zero(self) -> bool {
        Duration::is_zero(&self)
    }
}

impl Bound for u64 {
    fn show(self) -> String {
        self.to_string()
    }
    fn is_zero(self) -> bool {
        self == 0
    }
}

impl<T: Bound> Span<T> {
    pub(super) fn contains(&self, v: T) -> bool {
        (self.zero.is_some() && v.is_zero()) || (self.min <= v && v <= self.max)
    }

    /// The range as help and errors show it, with `note` after what 0
    /// means (a help that says more of it than an error need).
    pub(super) fn noted(&self, note: &str) -> String {
        let (min, max) = (self.min.show(), self.max.show());
        match self.zero {
            Some(z) => format!("0 ({z}{note}) or {min} to {max}"),
            None => format!("{min} to {max}"),
        }
    }
}

/// `10ms to 24h`, `0 (never) or 10ms to 24h`.
impl<T: Bound> fmt::Display for Span<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.noted(""))
    }
}

/// A duration as the user would write it: `10ms`, `1.5s`, `5m`, `24h`.
pub fn show(d: Duration) -> String {
    let (s, ns) = (d.as_secs(), d.subsec_nanos());
    if d.is_zero() {
        "0".into()
    } else if ns == 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if ns == 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else if ns % 1_000_000 == 0 && s == 0 {
        format!("{}ms", ns / 1_000_000)
    } else if d >= Duration::from_secs(1) || ns % 1_000_000 == 0 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{d:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_durations() {
        assert_eq!(show(FLOOR), "10ms");
        assert_eq!(show(DAY), "24h");
        assert_eq!(show(Duration::from_secs(300)), "5m");
        assert_eq!(show(Duration::from_millis(1500)), "1.5s");
        assert_eq!(show(Duration::from_secs(2)), "2s");
        assert_eq!(show(Duration::ZERO), "0");
        assert_eq!(show(Duration::from_micros(500)), "500µs");
    }

    #[test]
    fn spans_show_what_zero_means() {
        assert_eq!(DELAY.to_string(), "10ms to 24h");
        assert_eq!(TIMEOUT_OR_NEVER.to_string(), "0 (never) or 10ms to 24h");
        assert_eq!(
            TIMEOUT_OR_NEVER.noted(": soon"),
            "0 (never: soon) or 10ms to 24h"
        );
        assert_eq!(COUNT.to_string(), "0 to 1000000");
        assert!(TIMEOUT_OR_NEVER.contains(Duration::ZERO));
        assert!(!TIMEOUT_OR_NEVER.contains(FLOOR / 2));
        assert!(WINDOW.contains(Duration::ZERO) && !DELAY.contains(Duration::ZERO));
    }
}
