//! One running endpoint as the supervisor tracks it: its plan entry, the
//! supervisor's own copy of the listener, and its current worker process.

use crate::policy::RestartPolicy;
use nix::unistd::Pid;
use proto::ctl::Stats;
use proto::plan::Endpoint;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// Worker died; a new one starts at `until`.
    Backoff {
        until: Instant,
        delay: Duration,
    },
    /// The restart policy gave up (max retries).
    Failed,
}

/// A worker process and its control socket.
pub struct WorkerProc {
    pub pid: Pid,
    pub ctl: OwnedFd,
    pub token: usize,
    pub started: Instant,
    /// Control messages sent and not yet acknowledged: (seq, what).
    pub pending: Vec<(u64, &'static str)>,
}

pub struct Running {
    /// Timer key and identity for this endpoint's life.
    pub id: u64,
    /// Desired configuration (the last one sent).
    pub ep: Endpoint,
    pub listener: OwnedFd,
    pub worker: Option<WorkerProc>,
    pub state: State,
    /// Consecutive failures (backoff exponent); reset after stable uptime.
    pub failures: u32,
    /// Restarts over the endpoint's life.
    pub restarts: u64,
    /// Counters of the current worker plus those of its predecessors.
    pub stats: Stats,
    pub stats_base: Stats,
    pub last_exit: Option<String>,
}

impl Running {
    /// The worker exited: decide when (and whether) the next one starts.
    pub fn on_exit(&mut self, policy: &RestartPolicy, now: Instant, jitter: f64) -> State {
        let uptime = self
            .worker
            .as_ref()
            .map_or(Duration::ZERO, |w| now - w.started);
        if uptime >= policy.reset_window {
            self.failures = 0;
        }
        self.failures += 1;
        self.worker = None;
        // Connections of the dead worker are gone; keep totals.
        self.stats_base = Stats {
            active: 0,
            ..self.stats
        };
        self.stats = self.stats_base;
        self.state = match policy.delay(self.failures, jitter) {
            Some(delay) => State::Backoff {
                until: now + delay,
                delay,
            },
            None => State::Failed,
        };
        self.state
    }

    /// Fold a worker's report (its own totals) into the endpoint's.
    pub fn set_stats(&mut self, s: Stats) {
        let b = self.stats_base;
        self.stats = Stats {
            active: s.active,
            total: b.total + s.total,
            bytes_in: b.bytes_in + s.bytes_in,
            bytes_out: b.bytes_out + s.bytes_out,
            errors: b.errors + s.errors,
        };
    }
}

/// Human-readable exit status for logs.
pub fn describe_exit(st: nix::sys::wait::WaitStatus) -> String {
    use nix::sys::wait::WaitStatus::*;
    match st {
        Exited(_, code) => format!("exited with status {code}"),
        Signaled(_, sig, core) => format!(
            "killed by {sig:?}{}",
            if core { " (core dumped)" } else { "" }
        ),
        other => format!("{other:?}"),
    }
}
