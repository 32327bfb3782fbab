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

/// One route's counters. Shown as they are by `status --json`; on the
/// control channel they travel as a [`RouteWire`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteStats {
    /// The route's first link's name.
    pub link: String,
    /// http: responses sent by status class, 1xx to 5xx (a request
    /// answered by us, 404 or 502, counts too). Zero for tcp and unix.
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

/// How many numbers a [`RouteStats`] is on the wire.
const NUMBERS: usize = 5 + 7 + 2 + 12 + 1;

/// A [`RouteStats`] on the control channel: `{"link": NAME, "n": "N N
/// ..."}`, its numbers as one line of text in field order. Stats messages
/// are an internally tagged enum, which serde buffers through its
/// `Content` type, and there each array length and each element type
/// builds a deserializer of its own (+7.8 KiB of the executable for the
/// counters' arrays); a string costs nothing more, and stays readable in
/// `strace -s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteWire {
    pub link: String,
    pub n: String,
}

impl From<&RouteStats> for RouteWire {
    fn from(r: &RouteStats) -> RouteWire {
        use std::fmt::Write;
        let mut n = String::with_capacity(NUMBERS * 4);
        for (i, v) in r.numbers().enumerate() {
            let _ = write!(n, "{}{v}", if i == 0 { "" } else { " " });
        }
        RouteWire {
            link: r.link.clone(),
            n,
        }
    }
}

impl TryFrom<RouteWire> for RouteStats {
    type Error = String;

    fn try_from(w: RouteWire) -> Result<RouteStats, String> {
        let mut v = [0u64; NUMBERS];
        let mut words = w.n.split(' ');
        for slot in v.iter_mut() {
            *slot = words.next().and_then(|x| x.parse().ok()).ok_or_else(|| {
                format!(
                    "route {:?}: counters {:?} are not {NUMBERS} numbers",
                    w.link, w.n
                )
            })?;
        }
        if words.next().is_some() {
            return Err(format!("route {:?}: more than {NUMBERS} counters", w.link));
        }
        let mut r = RouteStats::new(&w.link);
        let (status, rest) = v.split_at(5);
        let (ends, rest) = rest.split_at(7);
        r.status.copy_from_slice(status);
        r.ends.copy_from_slice(ends);
        r.bytes_in = rest[0];
        r.bytes_out = rest[1];
        r.duration.copy_from_slice(&rest[2..14]);
        r.duration_ms = rest[14];
        Ok(r)
    }
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

    /// Every number, in field order (the wire's).
    fn numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.status
            .iter()
            .chain(&self.ends)
            .chain([&self.bytes_in, &self.bytes_out])
            .chain(&self.duration)
            .chain([&self.duration_ms])
            .copied()
    }

    /// Requests or connections counted.
    pub fn total(&self) -> u64 {
        self.ends.iter().fold(0, |a, &n| a.saturating_add(n))
    }

    /// The counts of a later worker of the same endpoint (a restarted one,
    /// counting from 0 again) added on. Destructured, so a new counter is
    /// added here or does not compile. Saturating: the numbers come from a
    /// worker, the process that reads clients' bytes, and a wrong one
    /// must not stop the supervisor.
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
            status: std::array::from_fn(|i| status[i].saturating_add(later.status[i])),
            ends: std::array::from_fn(|i| ends[i].saturating_add(later.ends[i])),
            bytes_in: bytes_in.saturating_add(later.bytes_in),
            bytes_out: bytes_out.saturating_add(later.bytes_out),
            duration: std::array::from_fn(|i| duration[i].saturating_add(later.duration[i])),
            duration_ms: duration_ms.saturating_add(later.duration_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_travel_as_one_line_of_numbers() {
        let mut r = RouteStats::new("a \"b\"");
        r.count(Some(201), End::Complete, 7);
        r.count(None, End::ClientGone, 20_000);
        (r.bytes_in, r.bytes_out) = (10, u64::MAX);
        let json = serde_json::to_string(&RouteWire::from(&r)).unwrap();
        let want = r#""n":"0 1 0 0 0 1 1 0 0 0 0 0 10 18446744073709551615 0 1 0"#;
        assert!(json.contains(want), "{json}");
        let back = |j: &str| RouteStats::try_from(serde_json::from_str::<RouteWire>(j).unwrap());
        assert_eq!(back(&json).unwrap(), r);
        for bad in [r#"{"link":"x","n":"1 2"}"#, r#"{"link":"x","n":"-1"}"#] {
            let e = back(bad).unwrap_err();
            assert!(e.contains("route \"x\""), "{e}");
        }
        let long = format!(r#"{{"link":"x","n":"{}"}}"#, ["0"; NUMBERS + 1].join(" "));
        assert!(back(&long).is_err());
        // status --json shows the fields themselves.
        let shown = serde_json::to_value(&r).unwrap();
        assert_eq!(shown["ends"][1], 1);
        assert_eq!(shown["bytes_in"], 10);
    }
}
