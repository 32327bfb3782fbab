//! Worker restart policy, after Pantavisor's container auto-recovery:
//! `retry_delay * backoff_factor^(n-1)`, capped at `max_delay`, with up to
//! 10 % jitter so several crashing workers do not restart in lock-step;
//! the count starts over once a worker stayed up for `reset_window`;
//! `max_retries` consecutive failures (0 = unlimited) and it is given up,
//! then `backoff_policy` says whether it stays failed or starts over.
//!
//! The same policy paces every retry of an endpoint: a worker that died,
//! a worker that could not be started, and a listener (or namespace entry)
//! that could not be made (`pending.rs`).

use std::time::Duration;

/// Pantavisor's `backoff_policy`: what happens after `max_retries`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackoffPolicy {
    /// Stay failed until the graph is applied again.
    Never,
    /// Wait this long, then start over with a fresh retry count.
    After(std::time::Duration),
}

/// `--backoff-factor`'s default. Whole, so the command line shows it
/// without linking float formatting (8 KiB of the executable).
pub const DEFAULT_BACKOFF_FACTOR: u32 = 2;
/// The factors taken (`--backoff-factor`, [`RestartPolicy::validate`]),
/// whole for the same reason.
pub const MIN_BACKOFF_FACTOR: u32 = 1;
pub const MAX_BACKOFF_FACTOR: u32 = 100;
/// The default `backoff_policy`: a device nobody watches must come back
/// by itself, so a given-up endpoint starts over after five minutes
/// (Pantavisor's own default, `reboot`, is not ours to take). It matters
/// only when `max_retries` is set: 0 retries for ever.
pub const DEFAULT_BACKOFF_POLICY: BackoffPolicy = BackoffPolicy::After(Duration::from_secs(300));

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub retry_delay: Duration,
    pub backoff_factor: f64,
    pub max_delay: Duration,
    pub reset_window: Duration,
    pub max_retries: u32,
    pub backoff_policy: BackoffPolicy,
}

/// What follows a failure: try again after a delay, or give up (for good,
/// or until `again_in` has passed, then with a fresh count).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Retry(Duration),
    GiveUp { again_in: Option<Duration> },
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            retry_delay: Duration::from_millis(20),
            backoff_factor: f64::from(DEFAULT_BACKOFF_FACTOR),
            max_delay: Duration::from_secs(30),
            reset_window: Duration::from_secs(60),
            max_retries: 0,
            backoff_policy: DEFAULT_BACKOFF_POLICY,
        }
    }
}

impl RestartPolicy {
    pub fn validate(&self) -> Result<(), String> {
        let (min, max) = (MIN_BACKOFF_FACTOR, MAX_BACKOFF_FACTOR);
        if !(self.backoff_factor >= f64::from(min) && self.backoff_factor <= f64::from(max)) {
            return Err(format!(
                "backoff factor must be between {min} and {max}, got {}",
                self.backoff_factor
            ));
        }
        if self.max_delay < self.retry_delay {
            return Err(format!(
                "max delay ({:?}) must not be below retry delay ({:?})",
                self.max_delay, self.retry_delay
            ));
        }
        Ok(())
    }

    /// Delay before restart number `n` (1-based count of consecutive
    /// failures), or None when the policy gives up. `jitter` in [0, 1).
    pub fn delay(&self, n: u32, jitter: f64) -> Option<Duration> {
        if self.max_retries > 0 && n > self.max_retries {
            return None;
        }
        let base = self.retry_delay.as_secs_f64()
            * self.backoff_factor.powi(n.saturating_sub(1).min(64) as i32);
        let capped = base.min(self.max_delay.as_secs_f64());
        let with_jitter =
            (capped * (1.0 + 0.1 * jitter.clamp(0.0, 1.0))).min(self.max_delay.as_secs_f64());
        Some(Duration::from_secs_f64(with_jitter))
    }

    /// After failure number `n` (1-based, consecutive): the next delay, or
    /// what `backoff_policy` says once `max_retries` are spent.
    pub fn after_failure(&self, n: u32, jitter: f64) -> Next {
        match self.delay(n, jitter) {
            Some(d) => Next::Retry(d),
            None => Next::GiveUp {
                again_in: match self.backoff_policy {
                    BackoffPolicy::Never => None,
                    BackoffPolicy::After(d) => Some(d),
                },
            },
        }
    }
}

/// Parse `250ms`, `5s`, `1.5s`, `2m`, `1h` or a bare number of seconds.
/// Never panics: a value too large for a `Duration` is an error (ranges
/// are the caller's, see cli.rs).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let not_a_duration = || format!("'{s}' is not a duration (e.g. 250ms, 5s, 1.5s, 2m, 1h)");
    let v: f64 = num.trim().parse().map_err(|_| not_a_duration())?;
    if !v.is_finite() || v < 0.0 {
        return Err(not_a_duration());
    }
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("'{s}': the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is too long a duration"))
}

/// Cheap jitter without a random-number crate: the clock's nanoseconds.
pub fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (n % 1000) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let p = RestartPolicy {
            max_delay: Duration::from_millis(100),
            ..Default::default()
        };
        let d: Vec<u128> = (1..=5)
            .map(|n| p.delay(n, 0.0).unwrap().as_millis())
            .collect();
        assert_eq!(d, vec![20, 40, 80, 100, 100]);
        assert!(p.delay(1, 0.99).unwrap() <= Duration::from_millis(22));
    }

    #[test]
    fn gives_up_after_max_retries() {
        let p = RestartPolicy {
            max_retries: 2,
            ..Default::default()
        };
        assert!(p.delay(2, 0.0).is_some());
        assert!(p.delay(3, 0.0).is_none());
    }

    #[test]
    fn durations_and_validation() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("nan").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_duration("1e400").is_err());
        // Used to abort the supervisor (Duration::from_secs_f64 panics).
        assert!(parse_duration("99999999999999999999")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("99999999999999999999m").is_err());
        let bad = RestartPolicy {
            backoff_factor: 0.5,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn backoff_policy_decides_after_the_last_retry() {
        let mut p = RestartPolicy {
            max_retries: 1,
            backoff_policy: BackoffPolicy::Never,
            ..Default::default()
        };
        assert_eq!(
            p.after_failure(1, 0.0),
            Next::Retry(Duration::from_millis(20))
        );
        assert_eq!(p.after_failure(2, 0.0), Next::GiveUp { again_in: None });
        p.backoff_policy = BackoffPolicy::After(Duration::from_secs(2));
        assert_eq!(
            p.after_failure(2, 0.0),
            Next::GiveUp {
                again_in: Some(Duration::from_secs(2))
            }
        );
        // Unlimited retries never reach the policy.
        p.max_retries = 0;
        assert!(matches!(p.after_failure(1000, 0.0), Next::Retry(_)));
    }
}
