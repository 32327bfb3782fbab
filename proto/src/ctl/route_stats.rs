//! Per-route counters: what a worker counts for each of its routes (the
//! route's first link names it), reported to the supervisor with its
//! stats and shown per route by `/metrics` and `status --json`.
//!
//! The labels come from the graph only (endpoint, link name), never from
//! a client, so the number of series is bounded by the graph. A worker
//! counts from its start; the supervisor adds a restarted worker's counts
//! to what its predecessors counted ([`RouteStats::then`]).

use serde::{Deserialize, Serialize};

/// How a request (http) or a connection (tcp, unix) ended: the access
/// log's `end=` and the metrics' `end` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum End {
    /// Served to its end (the response, or both directions closed).
    Complete,
    /// The client went away first (closed, reset, or stopped mid-body).
    ClientGone,
    /// The backend reset, closed early, or sent what we cannot relay.
    BackendReset,
    /// No backend could be reached (refused, absent, the hold over).
    BackendFailed,
    /// A timeout of ours ended it (head, response, idle, connect).
    Timeout,
    /// A drain's deadline cut it.
    Drained,
    /// Refused before any backend: no route, a bad request.
    Refused,
}

impl End {
    pub const ALL: [End; 7] = [
        End::Complete,
        End::ClientGone,
        End::BackendReset,
        End::BackendFailed,
        End::Timeout,
        End::Drained,
        End::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::ClientGone => "client_gone",
            End::BackendReset => "backend_reset",
            End::BackendFailed => "backend_failed",
            End::Timeout => "timeout",
            End::Drained => "drained",
            End::Refused => "refused",
        }
    }
}

/// Upper bounds, in milliseconds, of the duration histogram's buckets
/// (Prometheus's default buckets, 5 ms to 10 s); one more bucket counts
/// what took longer.
pub const DURATION_BUCKETS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// One route's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    /// The route's first link's name.
    pub link: String,
    /// http: responses sent by status class, 1xx to 5xx (a request
    /// answered by us, 404 or 502, counts too). Empty for tcp and unix.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status: [u64; 5],
    /// Requests (http) or connections (tcp, unix) by how they ended, in
    /// [`End::ALL`]'s order.
    pub ends: [u64; 7],
    /// Bytes from clients towards the backend, and back.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// How long each took, per bucket of [`DURATION_BUCKETS_MS`] (not
    /// cumulative), the last one beyond them.
    pub duration: [u64; 12],
    /// Their durations summed, in milliseconds.
    pub duration_ms: u64,
}

fn is_zero(a: &[u64; 5]) -> bool {
    a.iter().all(|&n| n == 0)
}

impl RouteStats {
    pub fn new(link: &str) -> RouteStats {
        RouteStats {
            link: link.to_string(),
            ..RouteStats::default()
        }
    }

    /// Count one request or connection that ended: `status` the http
    /// status sent (None: tcp, unix, or none sent), `end` how,
    /// `duration_ms` how long from its start.
    pub fn count(&mut self, status: Option<u16>, end: End, duration_ms: u64) {
        if let Some(class @ 1..=5) = status.map(|s| s / 100) {
            self.status[usize::from(class - 1)] += 1;
        }
        self.ends[end as usize] += 1;
        let bucket = DURATION_BUCKETS_MS
            .iter()
            .position(|&b| duration_ms <= b)
            .unwrap_or(DURATION_BUCKETS_MS.len());
        self.duration[bucket] += 1;
        self.duration_ms = self.duration_ms.saturating_add(duration_ms);
    }

    /// Requests or connections counted.
    pub fn total(&self) -> u64 {
        self.ends.iter().sum()
    }

    /// The counts of a later worker of the same endpoint (a restarted one,
    /// counting from 0 again) added on. Destructured, so a new counter is
    /// added here or does not compile.
    pub fn then(&self, later: &RouteStats) -> RouteStats {
        let RouteStats {
            link,
            status,
            ends,
            bytes_in,
            bytes_out,
            duration,
            duration_ms,
        } = self;
        RouteStats {
            link: link.clone(),
            status: std::array::from_fn(|i| status[i] + later.status[i]),
            ends: std::array::from_fn(|i| ends[i] + later.ends[i]),
            bytes_in: bytes_in + later.bytes_in,
            bytes_out: bytes_out + later.bytes_out,
            duration: std::array::from_fn(|i| duration[i] + later.duration[i]),
            duration_ms: duration_ms.saturating_add(later.duration_ms),
        }
    }
}
