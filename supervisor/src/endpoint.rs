//! One running endpoint as the supervisor tracks it: its plan entry, the
//! supervisor's own copy of the listener, and its current worker process;
//! and a worker whose endpoint went, finishing its connections.

use crate::policy::{Next, RestartPolicy};
use nix::unistd::Pid;
use proto::ctl::Stats;
use proto::plan::{Endpoint, EndpointKey};
use proto::types::Kind;
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
    /// The restart policy gave up (max retries); `retry_at`: when the
    /// backoff policy starts over with a fresh count (None: never, until
    /// the graph is applied again).
    Failed {
        retry_at: Option<Instant>,
    },
}

/// A control message sent to a worker and not yet acknowledged.
pub struct Pending {
    pub seq: u64,
    /// `init`, `update` or `drain`, for logs.
    pub what: &'static str,
    /// The configuration an init or update carries: it becomes the
    /// endpoint's `applied` configuration only when the worker acks it.
    pub config: Option<Endpoint>,
}

/// A worker process and its control socket.
pub struct WorkerProc {
    pub pid: Pid,
    pub ctl: OwnedFd,
    pub token: usize,
    pub started: Instant,
    pub pending: Vec<Pending>,
    /// Since when the worker owes an answer to a configuration (init or
    /// update sent, or an update its socket would not take): None while
    /// it owes none.
    pub awaiting_since: Option<Instant>,
    /// Answer periods (`ACK_TIMEOUT` each) it let pass in a row.
    pub unanswered: u32,
}

impl WorkerProc {
    pub fn new(pid: Pid, ctl: OwnedFd, token: usize, now: Instant, init: Pending) -> WorkerProc {
        WorkerProc {
            pid,
            ctl,
            token,
            started: now,
            pending: vec![init],
            awaiting_since: Some(now),
            unanswered: 0,
        }
    }

    /// An init or update is still on its way.
    pub fn config_pending(&self) -> bool {
        self.pending.iter().any(|p| p.config.is_some())
    }

    /// A configuration was sent (or offered to a full socket): the answer
    /// clock runs from the first one not answered.
    pub fn owe_answer(&mut self, now: Instant) {
        self.awaiting_since.get_or_insert(now);
    }

    /// The worker answered a configuration: it is alive and reading.
    pub fn answered(&mut self, now: Instant) {
        self.unanswered = 0;
        self.awaiting_since = self.config_pending().then_some(now);
    }

    /// It has owed an answer for `within` or longer.
    pub fn overdue(&self, now: Instant, within: Duration) -> bool {
        self.awaiting_since.is_some_and(|t| now >= t + within)
    }
}

pub struct Running {
    /// Timer key and identity for this endpoint's life.
    pub id: u64,
    /// Desired configuration (the last one sent).
    pub ep: Endpoint,
    /// The configuration the current worker has acknowledged (None until
    /// it acks its init, and after it exits).
    pub applied: Option<Endpoint>,
    /// Inode of the namespace the listener was made in (network for tcp,
    /// mount for unix; `listener::ns_inode`). A tcp listener keeps its
    /// network namespace alive, so that inode stays unique.
    pub ns_inode: Option<u64>,
    pub listener: OwnedFd,
    pub worker: Option<WorkerProc>,
    pub state: State,
    /// Consecutive failures (backoff exponent); reset after stable uptime.
    pub failures: u32,
    /// Restarts over the endpoint's life.
    pub restarts: u64,
    /// Attempts to make its listener again, before it was made (`pending.rs`).
    pub retries: u64,
    /// Updates sent again to a worker that had not acknowledged them.
    pub resends: u64,
    /// Counters of the current worker plus those of its predecessors.
    pub stats: Stats,
    pub stats_base: Stats,
    /// The current worker's health checks, one entry per backend (empty
    /// while checks are off or no worker runs).
    pub health: Vec<proto::types::BackendHealth>,
    /// Per-route counters, over all its workers.
    pub route_counts: crate::route_counts::RouteCounts,
    pub last_exit: Option<String>,
}

/// Equal as a worker sees it: address, namespace, kind, consumer and
/// routes (graph positions aside).
pub fn same_config(a: &Endpoint, b: &Endpoint) -> bool {
    a.key == b.key && a.kind == b.kind && a.consumer == b.consumer && a.same_routes(b)
}

impl Running {
    pub fn new(id: u64, ep: Endpoint, listener: OwnedFd, ns_inode: Option<u64>) -> Running {
        Running {
            id,
            ep,
            applied: None,
            ns_inode,
            listener,
            worker: None,
            state: State::Running,
            failures: 0,
            restarts: 0,
            retries: 0,
            resends: 0,
            stats: Stats::default(),
            stats_base: Stats::default(),
            health: Vec::new(),
            route_counts: Default::default(),
            last_exit: None,
        }
    }

    /// The running worker has what the graph asks for (or is being sent it).
    pub fn in_sync(&self) -> bool {
        match &self.worker {
            None => true,
            Some(w) => {
                w.config_pending()
                    || self
                        .applied
                        .as_ref()
                        .is_some_and(|a| same_config(a, &self.ep))
            }
        }
    }

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
        self.applied = None;
        // Connections of the dead worker are gone; keep totals.
        self.stats_base = self.stats.totals();
        self.stats = self.stats_base;
        self.health.clear();
        self.route_counts.worker_gone();
        self.state = match policy.after_failure(self.failures, jitter) {
            Next::Retry(delay) => State::Backoff {
                until: now + delay,
                delay,
            },
            Next::GiveUp { again_in } => State::Failed {
                retry_at: again_in.map(|d| now + d),
            },
        };
        self.state
    }

    /// Fold a worker's report (its own totals) into the endpoint's.
    pub fn set_stats(&mut self, s: Stats) {
        self.stats = self.stats_base.then(s);
    }
}

/// A worker whose endpoint was removed or replaced, finishing its
/// connections by `--drain-timeout`. It takes the endpoint's labels and
/// per-route counters along: what it counts while it drains, up to its
/// last report as it exits, is still added (README, "Per-route metrics").
pub struct Draining {
    pub worker: WorkerProc,
    pub key: EndpointKey,
    pub kind: Kind,
    pub consumer: String,
    pub route_counts: crate::route_counts::RouteCounts,
}

impl Draining {
    /// `w`, the worker of `r` (taken out of it), starts draining.
    pub fn of(w: WorkerProc, key: &EndpointKey, r: &mut Running) -> Draining {
        Draining {
            worker: w,
            key: key.clone(),
            kind: r.ep.kind,
            consumer: r.ep.consumer.clone(),
            route_counts: std::mem::take(&mut r.route_counts),
        }
    }

    /// The same series as `r`'s on `/metrics` (same endpoint, kind and
    /// consumer): an endpoint removed and added back while this drains.
    pub fn same_series(&self, r: &Running) -> bool {
        self.key == r.ep.key && self.kind == r.ep.kind && self.consumer == r.ep.consumer
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
