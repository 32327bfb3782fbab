//! The value parsers of the command line: each checks a flag's value
//! against its range (`ranges.rs`) by a function that cannot panic, and
//! refuses it with a message that names that range.

use super::ranges::{show, Span, FACTOR};
use crate::policy::{parse_duration, BackoffPolicy};
use proto::limits::{default, MAX_PIPE_SIZE};
use std::time::Duration;

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

/// A value parser for a duration in `span`.
pub(super) fn duration_in(
    span: Span<Duration>,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |v| {
        let d = parse_duration(v).map_err(|e| format!("{e} (the range is {span})"))?;
        if span.contains(d) {
            Ok(d)
        } else {
            Err(format!("out of range: {} (the range is {span})", show(d)))
        }
    }
}

pub(super) fn backoff_factor(v: &str) -> Result<f64, String> {
    let f: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("'{v}' is not a number (the range is {FACTOR})"))?;
    // NaN fails both comparisons, so it is refused here too.
    if (FACTOR.min as f64..=FACTOR.max as f64).contains(&f) {
        Ok(f)
    } else {
        Err(format!("out of range: {v} (the range is {FACTOR})"))
    }
}

/// `never`, or a duration in `span`.
pub(super) fn backoff_policy(
    span: Span<Duration>,
) -> impl Fn(&str) -> Result<BackoffPolicy, String> + Clone + Send + Sync + 'static {
    move |v| {
        if v.trim() == "never" {
            return Ok(BackoffPolicy::Never);
        }
        let d = parse_duration(v).map_err(|e| format!("{e} (give `never` or {span})"))?;
        if span.contains(d) {
            Ok(BackoffPolicy::After(d))
        } else {
            Err(format!(
                "out of range: {} (give `never` or {span})",
                show(d)
            ))
        }
    }
}

/// A value parser for a whole number in `span` (`unit` follows the range
/// in messages).
pub(super) fn count<T>(
    span: Span<u64>,
    unit: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    move |v| {
        let s = v.trim();
        let range = format!("the range is {span}{unit}");
        let n: u64 = match s.parse() {
            Ok(n) => n,
            Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(format!("'{v}' is out of range ({range})"))
            }
            Err(_) => return Err(format!("'{v}' is not a whole number ({range})")),
        };
        if !span.contains(n) {
            return Err(format!("{n} is out of range ({range})"));
        }
        T::try_from(n).map_err(|_| format!("{n} is out of range ({range})"))
    }
}

/// `--pipe-size`'s range: a page to [`MAX_PIPE_SIZE`], and no more than an
/// unprivileged process may ask for (`/proc/sys/fs/pipe-max-size`;
/// workers run without CAP_SYS_RESOURCE), but never below the default, so
/// that a host with a small pipe-max-size still starts with no flag given.
/// Known only at run time: `--help` says it in words (cli.rs), a refusal
/// in bytes.
pub(super) fn pipe_sizes() -> Span<u64> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    let max = MAX_PIPE_SIZE as u64;
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(max, |m| m.min(max))
        .max(default::PIPE_SIZE as u64);
    Span {
        min: page,
        max,
        zero: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::ranges::{COUNT, DELAY};
    use super::super::tests::{err, run};
    use super::*;

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
        let backoff_policy = backoff_policy(DELAY);
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
        let c = count::<u32>(COUNT, "");
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
        let Span { min: page, max, .. } = pipe_sizes();
        assert_eq!(run(&format!("--pipe-size {page}")).pipe_size as u64, page);
        let e = err(&format!("--pipe-size {}", page - 1));
        assert!(e.contains("--pipe-size") && e.contains(" bytes"), "{e}");
        let e = err(&format!("--pipe-size {}", MAX_PIPE_SIZE + 1));
        assert!(e.contains("--pipe-size"), "{e}");
        assert!(max >= default::PIPE_SIZE as u64 && max <= MAX_PIPE_SIZE as u64);
    }
}
