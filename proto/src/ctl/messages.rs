//! The messages between the supervisor and a worker, and what each says:
//! the configuration a worker serves, the counters it reports. The shapes
//! only; how they travel is the rest of `ctl`.

use crate::ctl::route_stats::RouteWire;
use crate::limits::{Limits, MAX_BLOB};
use crate::plan::Endpoint;
use crate::types::{BackendHealth, Kind};
use serde::{Deserialize, Serialize};

/// Everything a worker needs to serve its endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub endpoint: Endpoint,
    pub limits: Limits,
    /// `syslog` or `stderr`.
    pub log_target: String,
    pub log_level: String,
    /// `--access-log`: where the worker writes a line per request or
    /// connection. Off when absent.
    #[serde(default)]
    pub access_log: crate::log::AccessLog,
}

impl WorkerConfig {
    pub fn kind(&self) -> Kind {
        self.endpoint.kind
    }
}

/// Supervisor -> worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToWorker {
    /// First message; carries the listening socket (1 fd).
    Init { seq: u64, config: WorkerConfig },
    /// New routes / backends for the running endpoint; open connections stay.
    Update { seq: u64, config: WorkerConfig },
    /// Stop accepting, finish open connections, exit by the deadline.
    Drain { seq: u64, deadline_ms: u64 },
}

impl ToWorker {
    /// Init carries the listening socket; Init and Update both carry one
    /// provider root per `config.endpoint.root_pids()`, in that order. The
    /// count follows from the configuration, so both ends agree on it
    /// without a field of its own.
    pub fn fds(&self) -> usize {
        match self {
            ToWorker::Init { config, .. } => 1 + config.endpoint.root_pids().len(),
            ToWorker::Update { config, .. } => config.endpoint.root_pids().len(),
            ToWorker::Drain { .. } => 0,
        }
    }
}

/// Counters a worker reports; totals since the worker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub active: u64,
    pub total: u64,
    /// Bytes from clients towards backends.
    pub bytes_in: u64,
    /// Bytes from backends towards clients.
    pub bytes_out: u64,
    pub errors: u64,
    /// Log lines syslog did not take (`log::dropped`). Defaults to 0 so
    /// that either side may be older.
    #[serde(default)]
    pub log_dropped: u64,
    /// Connections held now, waiting for their backend (`runtime::hold`).
    /// This and the `held_*` counters below default to 0 so that either
    /// side may be older.
    #[serde(default)]
    pub held: u64,
    /// Connections that were held, over the worker's life.
    #[serde(default)]
    pub held_total: u64,
    /// Held connections that reached their backend in the end.
    #[serde(default)]
    pub held_connected: u64,
    /// Held connections that got the error at the hold timeout.
    #[serde(default)]
    pub held_failed: u64,
    /// Connections not held because `max_held` were held already.
    #[serde(default)]
    pub held_over_limit: u64,
    /// Milliseconds held connections waited, summed (ended holds).
    #[serde(default)]
    pub held_wait_ms: u64,
    /// The longest a held connection waited, in milliseconds.
    #[serde(default)]
    pub held_wait_max_ms: u64,
}

impl Stats {
    /// The counts of a worker that came after `self`'s (a restarted one,
    /// counting from 0 again) added on: totals add up, the gauges
    /// (`active`, `held`) are `later`'s, the longest wait is the longer.
    /// Destructured, so a new counter is added here or does not compile.
    /// Saturating, as `RouteStats::then`: a worker's numbers must not
    /// stop the supervisor.
    pub fn then(self, later: Stats) -> Stats {
        let Stats {
            active: _,
            total,
            bytes_in,
            bytes_out,
            errors,
            log_dropped,
            held: _,
            held_total,
            held_connected,
            held_failed,
            held_over_limit,
            held_wait_ms,
            held_wait_max_ms,
        } = self;
        Stats {
            active: later.active,
            total: total.saturating_add(later.total),
            bytes_in: bytes_in.saturating_add(later.bytes_in),
            bytes_out: bytes_out.saturating_add(later.bytes_out),
            errors: errors.saturating_add(later.errors),
            log_dropped: log_dropped.saturating_add(later.log_dropped),
            held: later.held,
            held_total: held_total.saturating_add(later.held_total),
            held_connected: held_connected.saturating_add(later.held_connected),
            held_failed: held_failed.saturating_add(later.held_failed),
            held_over_limit: held_over_limit.saturating_add(later.held_over_limit),
            held_wait_ms: held_wait_ms.saturating_add(later.held_wait_ms),
            held_wait_max_ms: held_wait_max_ms.max(later.held_wait_max_ms),
        }
    }

    /// What outlives the worker that counted it: the totals, with the
    /// gauges (connections open or held now) at 0.
    pub fn totals(self) -> Stats {
        Stats {
            active: 0,
            held: 0,
            ..self
        }
    }
}

/// Most routes in one stats report: a few hundred bytes of JSON each, so
/// a report stays far below `FromWorker::MAX_BODY` however many routes
/// changed.
pub const MAX_ROUTE_STATS: usize = 1000;

/// Worker -> supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromWorker {
    /// Answer to Init/Update/Drain: `error` is None when applied.
    Ack { seq: u64, error: Option<String> },
    Stats {
        stats: Stats,
        /// Each checked backend's state (`runtime::health`); absent while
        /// health checks are off, and from an older worker.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        health: Vec<BackendHealth>,
        /// The routes whose counters changed since the last report, each
        /// whole (counted since the worker started), at most
        /// [`MAX_ROUTE_STATS`]: the rest go in the next report.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        routes: Vec<RouteWire>,
    },
}

impl FromWorker {
    pub fn fds(&self) -> usize {
        0
    }
}

/// A message type that knows how many fds it must arrive with.
pub trait Message: Serialize + for<'de> Deserialize<'de> {
    fn fd_count(&self) -> usize;
    /// Largest JSON body of this type a receiver takes (inline or blob).
    const MAX_BODY: usize = MAX_BLOB;
}
impl Message for ToWorker {
    fn fd_count(&self) -> usize {
        self.fds()
    }
}
impl Message for FromWorker {
    fn fd_count(&self) -> usize {
        self.fds()
    }
    /// Acks and counters are small; a worker cannot make the supervisor
    /// read and parse megabytes.
    const MAX_BODY: usize = 1024 * 1024;
}
