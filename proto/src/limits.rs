//! Every bound two of our processes must agree on, written once: the
//! limits a worker runs with (each flag's default, the range the relay
//! applies) and what one control message carries (what the planner fits
//! an endpoint into and the control channel enforces). A leaf of the
//! vocabulary, so the planner, the control messages, the command line and
//! the worker runtime read the same figures without importing one another.

use serde::{Deserialize, Serialize};

// What one control message carries (`ctl`).

/// Largest datagram accepted, checked before anything is parsed.
pub const MAX_MSG: usize = 64 * 1024;
/// Message bodies larger than this go in a sealed memfd (a blob). Half a
/// datagram: small enough that a socket buffer holding a few stats
/// reports still takes the datagram.
pub const INLINE_MAX: usize = 32 * 1024;
/// Largest body a blob may carry. A graph is at most 4 MiB (source.rs);
/// its worker configuration is larger (every route repeats fields the
/// link left out), so the planner refuses the links of an endpoint past
/// [`MAX_CONFIG`] and nothing the graph allows reaches this cap.
pub const MAX_BLOB: usize = 16 * 1024 * 1024;
/// Routes of one endpoint may take this much of a blob (its JSON); the
/// rest is room for the limits, log settings and the envelope.
pub const MAX_CONFIG: usize = MAX_BLOB - 64 * 1024;
/// Most fds one message may carry: the kernel's limit per `SCM_RIGHTS`.
pub const MAX_FDS: usize = crate::fdpass::MAX_FDS;
/// Most provider roots one endpoint gets (see `Endpoint::root_pids`): what
/// is left of [`MAX_FDS`] after the listener and a blob's memfd. The
/// planner refuses a link that would bring one more.
pub const MAX_ROOTS: usize = MAX_FDS - 2;

// What a worker runs with.

/// Each flag's default, written once: [`Limits::default`] holds them, and
/// the command line shows them in `--help` and applies them from here
/// (`supervisor/src/cli.rs`). Durations as the flags take them; `Limits`
/// carries milliseconds.
pub mod default {
    use std::time::Duration;

    /// `--connect-timeout`.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `--head-timeout`.
    pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
    /// `--idle-timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `--response-timeout`.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `--tcp-idle-timeout` (0: never).
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::ZERO;
    /// `--max-conns`.
    pub const MAX_CONNS: usize = 4096;
    /// `--pipe-size`: the kernel's own default on 4 KiB pages.
    pub const PIPE_SIZE: usize = 64 * 1024;
    /// `--hold-timeout`.
    pub const HOLD_TIMEOUT: Duration = Duration::from_secs(10);
    /// `--max-held`.
    pub const MAX_HELD: usize = 1024;
    /// `--health-interval`.
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    /// `--health-timeout`.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    /// `--health-fall`.
    pub const HEALTH_FALL: u32 = 2;
    /// `--health-rise`.
    pub const HEALTH_RISE: u32 = 1;
}

/// Largest `--pipe-size` accepted (also bounded by /proc/sys/fs/pipe-max-size).
pub const MAX_PIPE_SIZE: usize = 1024 * 1024;

/// A duration as `Limits` carries it.
const fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

/// Timeouts and limits a worker runs with (BEHAVIOUR §5 defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub connect_timeout_ms: u64,
    /// Total time a connect-refused backend is retried before giving up.
    pub connect_retry_ms: u64,
    pub head_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// tcp: close a connection with no traffic for this long (0 = never).
    pub tcp_idle_timeout_ms: u64,
    /// A half-closed connection with no traffic for this long is closed.
    pub half_close_linger_ms: u64,
    pub max_conns: usize,
    pub max_head_bytes: usize,
    /// http: a backend that has the whole request but sends no response
    /// head for this long gets the client a 504. Defaulted when absent, so
    /// a supervisor that does not know the field still talks to workers.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Size of each relay pipe (`--pipe-size`): a spliced connection holds
    /// at most two, so 2 × this is its kernel memory bound. Defaulted when
    /// absent, as above.
    #[serde(default = "default_pipe_size")]
    pub pipe_size: usize,
    /// How long a connection whose backend cannot be reached (refused,
    /// unreachable, socket missing) is held, retried, before the error
    /// (`--hold-timeout`; 0: not held). Absent: 0, the behaviour of a
    /// sender that knows nothing of holding.
    #[serde(default)]
    pub hold_timeout_ms: u64,
    /// Most connections one worker holds at once (`--max-held`); beyond
    /// it, the error at once.
    #[serde(default = "default_max_held")]
    pub max_held: usize,
    /// L4 health checks (`runtime::health`): every backend checked with a
    /// connect this often (`--health-interval`; 0: no checks). Absent: 0.
    #[serde(default)]
    pub health_interval_ms: u64,
    /// A check not connected within this fails (`--health-timeout`).
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// Failures in a row that mark a backend down (`--health-fall`).
    #[serde(default = "default_health_fall")]
    pub health_fall: u32,
    /// Successes in a row that mark it up again (`--health-rise`).
    #[serde(default = "default_health_rise")]
    pub health_rise: u32,
    /// Most connections one route's backend may hold
    /// (`hold::share`, runtime): set by the worker from its routes when a
    /// config arrives (`hold::fit`), never sent. 0: not set, `max_held`.
    #[serde(skip)]
    pub held_share: usize,
}

// A field absent from a sender that does not know it takes the flag's
// default (`hold_timeout_ms` and `health_interval_ms` take 0 instead: off,
// as such a sender means).

fn default_health_timeout_ms() -> u64 {
    ms(default::HEALTH_TIMEOUT)
}

fn default_health_fall() -> u32 {
    default::HEALTH_FALL
}

fn default_health_rise() -> u32 {
    default::HEALTH_RISE
}

fn default_max_held() -> usize {
    default::MAX_HELD
}

fn default_response_timeout_ms() -> u64 {
    ms(default::RESPONSE_TIMEOUT)
}

fn default_pipe_size() -> usize {
    default::PIPE_SIZE
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout_ms: ms(default::CONNECT_TIMEOUT),
            // No flag: the dialer's own schedule.
            connect_retry_ms: 400,
            head_timeout_ms: ms(default::HEAD_TIMEOUT),
            idle_timeout_ms: ms(default::IDLE_TIMEOUT),
            tcp_idle_timeout_ms: ms(default::TCP_IDLE_TIMEOUT),
            // No flag.
            half_close_linger_ms: 60_000,
            max_conns: default::MAX_CONNS,
            // No flag.
            max_head_bytes: 16 * 1024,
            response_timeout_ms: default_response_timeout_ms(),
            pipe_size: default_pipe_size(),
            hold_timeout_ms: ms(default::HOLD_TIMEOUT),
            max_held: default_max_held(),
            health_interval_ms: ms(default::HEALTH_INTERVAL),
            health_timeout_ms: default_health_timeout_ms(),
            health_fall: default_health_fall(),
            health_rise: default_health_rise(),
            held_share: 0,
        }
    }
}
