//! The value parsers of the command line: each flag's value is checked
//! against the range its help states, by a function that cannot panic,
//! and refused with a message that names that range.

use crate::policy::{parse_duration, BackoffPolicy};
use std::time::Duration;

pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);
/// The shortest delay or timeout we take. A shorter restart delay is a
/// crash loop (`--retry-delay 0` with `--max-delay 0` restarted a dying
/// worker with no pause at all); a shorter timeout fails every request.
pub(super) const FLOOR: Duration = Duration::from_millis(10);

/// Relay pipe sizes (`--pipe-size`): the bounds the relay applies.
pub use proto::limits::MAX_PIPE_SIZE;
/// `--pipe-size`'s default, the workers' own.
pub const DEFAULT_PIPE_SIZE: usize = proto::limits::default::PIPE_SIZE;

/// A flag's default as clap takes it (`&'static str`), from the figure
/// that holds it (`proto::limits::default`, `RestartPolicy`), so what
/// `--help` shows and clap applies is that figure, never a copy of it.
/// The text is made when the command line is built (once per process;
/// a few bytes each) and kept: one plain function, where a `OnceLock` per
/// flag cost 7 KiB of the executable.
pub(super) fn shown(text: String) -> &'static str {
    text.leak()
}

/// `--backoff-policy`'s value as the user writes it.
pub(super) fn show_backoff(p: BackoffPolicy) -> String {
    match p {
        BackoffPolicy::Never => "never".into(),
        BackoffPolicy::After(d) => show(d),
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

fn range_text(min: Duration, max: Duration, zero: Option<&str>) -> String {
    match zero {
        Some(z) => format!("0 ({z}) or {} to {}", show(min), show(max)),
        None => format!("{} to {}", show(min), show(max)),
    }
}

/// A value parser for a duration in `min..=max`; with `zero`, 0 is also
/// taken and means what `zero` says.
pub(super) fn duration_in(
    min: Duration,
    max: Duration,
    zero: Option<&'static str>,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |v| {
        let range = range_text(min, max, zero);
        let d = parse_duration(v).map_err(|e| format!("{e} (the range is {range})"))?;
        if (zero.is_some() && d.is_zero()) || (min..=max).contains(&d) {
            Ok(d)
        } else {
            Err(format!("out of range: {} (the range is {range})", show(d)))
        }
    }
}

pub(super) fn backoff_factor(v: &str) -> Result<f64, String> {
    let f: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("'{v}' is not a number (the range is 1 to 100)"))?;
    // NaN fails both comparisons, so it is refused here too.
    if (1.0..=100.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("out of range: {v} (the range is 1 to 100)"))
    }
}

/// `never`, or a duration of 10ms to 24h.
pub(super) fn backoff_policy(v: &str) -> Result<BackoffPolicy, String> {
    if v.trim() == "never" {
        return Ok(BackoffPolicy::Never);
    }
    let range = range_text(FLOOR, DAY, None);
    let d = parse_duration(v).map_err(|e| format!("{e} (give `never` or {range})"))?;
    if (FLOOR..=DAY).contains(&d) {
        Ok(BackoffPolicy::After(d))
    } else {
        Err(format!(
            "out of range: {} (give `never` or {range})",
            show(d)
        ))
    }
}

/// A value parser for a whole number in `min..=max` (`unit` follows the
/// range in messages).
pub(super) fn count<T>(
    min: u64,
    max: u64,
    unit: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    move |v| {
        let s = v.trim();
        let range = format!("the range is {min} to {max}{unit}");
        let n: u64 = match s.parse() {
            Ok(n) => n,
            Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(format!("'{v}' is out of range ({range})"))
            }
            Err(_) => return Err(format!("'{v}' is not a whole number ({range})")),
        };
        if !(min..=max).contains(&n) {
            return Err(format!("{n} is out of range ({range})"));
        }
        T::try_from(n).map_err(|_| format!("{n} is out of range ({range})"))
    }
}

pub(super) fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096)
}

/// The largest `--pipe-size`: 1 MiB, and no more than an unprivileged
/// process may ask for (`/proc/sys/fs/pipe-max-size`; workers run without
/// CAP_SYS_RESOURCE), but never below the default, so that a host with a
/// small pipe-max-size still starts with no flag given.
pub(super) fn pipe_max() -> u64 {
    let max = MAX_PIPE_SIZE as u64;
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(max, |m| m.min(max))
        .max(DEFAULT_PIPE_SIZE as u64)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{err, run};
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_factor_range() {
        assert_eq!(backoff_factor("1.5"), Ok(1.5));
        assert_eq!(backoff_factor("100"), Ok(100.0));
        for bad in ["0.5", "101", "NaN", "inf", "-2", "x", ""] {
            let e = backoff_factor(bad).unwrap_err();
            assert!(e.contains("1 to 100"), "{bad}: {e}");
        }
        assert!(err("--backoff-factor 1e308").contains("--backoff-factor"));
    }

    #[test]
    fn backoff_policy_values() {
        assert_eq!(backoff_policy("never"), Ok(BackoffPolicy::Never));
        assert_eq!(
            backoff_policy("2s"),
            Ok(BackoffPolicy::After(Duration::from_secs(2)))
        );
        assert_eq!(
            backoff_policy("5m"),
            Ok(crate::policy::DEFAULT_BACKOFF_POLICY)
        );
        assert!(backoff_policy("0").unwrap_err().contains("never"));
        assert!(backoff_policy("25h").unwrap_err().contains("10ms to 24h"));
        assert!(backoff_policy("reboot").unwrap_err().contains("never"));
        assert!(backoff_policy("99999999999999999999").is_err());
        assert_eq!(
            run("--backoff-policy never").backoff_policy,
            BackoffPolicy::Never
        );
    }

    #[test]
    fn counts_have_ranges_and_never_overflow() {
        let c = count::<u32>(0, 1_000_000, "");
        assert_eq!(c("0"), Ok(0));
        assert_eq!(c("1000000"), Ok(1_000_000));
        assert!(c("1000001").unwrap_err().contains("0 to 1000000"));
        assert!(c("99999999999999999999")
            .unwrap_err()
            .contains("out of range"));
        assert!(c("-1").unwrap_err().contains("not a whole number"));
        assert!(c("1.5").unwrap_err().contains("not a whole number"));
        let e = err("--max-conns 0");
        assert!(
            e.contains("--max-conns") && e.contains("1 to 1000000"),
            "{e}"
        );
        let e = err("--max-retries 99999999999999999999");
        assert!(
            e.contains("--max-retries") && e.contains("out of range"),
            "{e}"
        );
    }

    #[test]
    fn pipe_size_range() {
        let page = page_size();
        assert_eq!(run(&format!("--pipe-size {page}")).pipe_size as u64, page);
        let e = err(&format!("--pipe-size {}", page - 1));
        assert!(e.contains("--pipe-size") && e.contains(" bytes"), "{e}");
        let e = err(&format!("--pipe-size {}", MAX_PIPE_SIZE + 1));
        assert!(e.contains("--pipe-size"), "{e}");
        assert!(pipe_max() >= DEFAULT_PIPE_SIZE as u64 && pipe_max() <= MAX_PIPE_SIZE as u64);
    }

    #[test]
    fn show_durations() {
        assert_eq!(show(FLOOR), "10ms");
        assert_eq!(show(DAY), "24h");
        assert_eq!(show(Duration::from_secs(300)), "5m");
        assert_eq!(show(Duration::from_millis(1500)), "1.5s");
        assert_eq!(show(Duration::from_secs(2)), "2s");
        assert_eq!(show(Duration::ZERO), "0");
        assert_eq!(show(MS / 2), "500µs");
    }
}
