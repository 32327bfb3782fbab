//! The health table: each checked backend's state, up or down, in one
//! place per worker. The dialer asks it ([`Table::is_down`]) and tells it
//! what real connections met ([`Table::observe`]); balancing leaves down
//! backends out; the prober (`prober.rs`, the checks themselves) fills it;
//! the worker reports it ([`Table::report`]). `--health-fall` failures in a
//! row mark a backend down, `--health-rise` successes in a row mark it up
//! again, and a backend coming back up wakes every held connection at once:
//! `observe` says so, and `backend::Reach` asks the hold book for the
//! wake-up.
//!
//! The state is kept per backend (a route names a backend; a route with
//! several backends would share the same table). With `--health-interval
//! 0` the table is empty and every backend counts as up. The worker loop
//! owns the table (in `backend::Reach`) and lends it with each call.

use fnv::FnvHashMap as FnvMap;
use proto::limits::Limits;
use proto::types::{Backend, BackendHealth};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
struct Entry {
    backend: Backend,
    up: bool,
    fails_in_row: u32,
    oks_in_row: u32,
    checks: u64,
    failures: u64,
    last_check_ms: u64,
    last_error: Option<String>,
}

/// The table is one entry per distinct backend of the worker's routes:
/// a few on most devices, but an http worker may route thousands. Every
/// dial asks [`Table::is_down`] and every real connect
/// [`Table::observe`]s, so a
/// backend's entry is found through `index` (FNV, the `fnv` crate) in O(1),
/// not by a scan; `entries` keeps the routes' order for `report`.
#[derive(Debug, Default)]
pub struct Table {
    entries: Vec<Entry>,
    /// Position of each backend's entry in `entries`.
    index: FnvMap<Backend, usize>,
    fall: u32,
    rise: u32,
    /// Bumped on every change, so a report is built only when needed.
    version: u64,
}

impl Table {
    /// Track exactly `backends` (state kept for those already tracked; a
    /// new one starts up). Empty: nothing tracked. The checker's; public
    /// for the tests and fuzz targets that mark backends down without
    /// sockets.
    pub fn track(&mut self, backends: &[Backend], limits: &Limits) {
        self.version += 1;
        self.fall = limits.health_fall.max(1);
        self.rise = limits.health_rise.max(1);
        let old_index = std::mem::take(&mut self.index);
        let mut old: Vec<Option<Entry>> = std::mem::take(&mut self.entries)
            .into_iter()
            .map(Some)
            .collect();
        let mut index = FnvMap::default();
        index.reserve(backends.len());
        let mut entries = Vec::with_capacity(backends.len());
        for b in backends {
            // A backend named twice is tracked once.
            if index.contains_key(b) {
                continue;
            }
            let kept = old_index.get(b).and_then(|&i| old.get_mut(i)?.take());
            index.insert(b.clone(), entries.len());
            entries.push(match kept {
                Some(e) => e,
                None => Entry {
                    backend: b.clone(),
                    up: true,
                    fails_in_row: 0,
                    oks_in_row: 0,
                    checks: 0,
                    failures: 0,
                    last_check_ms: 0,
                    last_error: None,
                },
            });
        }
        self.entries = entries;
        self.index = index;
    }

    /// Whether checks marked `b` down (never, when `b` is not checked).
    pub fn is_down(&self, b: &Backend) -> bool {
        !self.entries.is_empty() && self.index.get(b).is_some_and(|&i| !self.entries[i].up)
    }

    /// A failed connect to `b` (a check, or a real connection): one
    /// failure, unless it failed on our side, out of fds or memory
    /// ([`crate::stream::out_of_resources`]): that says nothing of the
    /// backend (a worker out of fds would otherwise mark every backend
    /// down, and hold what it could still have served once fds were
    /// back). Never brings a backend up: nothing to wake.
    pub fn observe_failure(&mut self, b: &Backend, e: &std::io::Error, check: bool) {
        if crate::stream::out_of_resources(e) {
            proto::debug!("backend {b}: connect failed on our side ({e}); not counted");
            return;
        }
        // A failure never brings a backend up: nothing to wake.
        let _ = self.observe(b, Err(format!("connect: {e}")), check);
    }

    /// Count one outcome for `b`: a check (`check`) or a real connection.
    /// true: `b` has just come back up, so held connections should retry
    /// now (the caller asks the hold book for it).
    #[must_use = "a backend back up wakes held connections"]
    pub fn observe(&mut self, b: &Backend, outcome: Result<(), String>, check: bool) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let (fall, rise) = (self.fall, self.rise);
        let Some(&i) = self.index.get(b) else {
            return false;
        };
        let e = &mut self.entries[i];
        // What `report` shows changes with a check, a failure, the end of
        // a run of failures or a state change; a real connection to a
        // backend that is up changes none of it, and must not make every
        // stats report carry the table.
        let mut changed = check;
        let mut back_up = false;
        if check {
            e.checks += 1;
            e.last_check_ms = unix_ms();
        }
        match outcome {
            Ok(()) => {
                changed |= e.fails_in_row != 0;
                e.fails_in_row = 0;
                e.oks_in_row = e.oks_in_row.saturating_add(1);
                if !e.up && e.oks_in_row >= rise {
                    e.up = true;
                    proto::info!("backend {b} is up (health check)");
                    back_up = true;
                    changed = true;
                }
            }
            Err(why) => {
                changed = true;
                e.failures += 1;
                e.oks_in_row = 0;
                e.fails_in_row = e.fails_in_row.saturating_add(1);
                if e.up && e.fails_in_row >= fall {
                    e.up = false;
                    proto::warn!(
                        "backend {b} is down after {} failure(s) in a row: {why}",
                        e.fails_in_row
                    );
                }
                e.last_error = Some(why);
            }
        }
        if changed {
            self.version += 1;
        }
        back_up
    }

    /// Changes with every change of the table (see `WorkerCtl::report`).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The state of every checked backend (the first [`MAX_REPORTED`]),
    /// for `stats`.
    pub fn report(&self) -> Vec<BackendHealth> {
        self.entries
            .iter()
            .take(MAX_REPORTED)
            .map(|e| BackendHealth {
                backend: e.backend.to_string(),
                up: e.up,
                checks: e.checks,
                failures: e.failures,
                fails_in_row: e.fails_in_row,
                last_check_ms: e.last_check_ms,
                last_error: e.last_error.clone(),
            })
            .collect()
    }
}

/// Most backends a `stats` report describes: a few hundred KiB of JSON,
/// well within what the supervisor takes from a worker (1 MiB). Checks
/// and the down state apply to every backend; only the report stops here.
pub const MAX_REPORTED: usize = 1024;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            health_interval_ms: 1_000,
            health_timeout_ms: 500,
            health_fall: 2,
            health_rise: 1,
            ..Limits::default()
        }
    }
    #[test]
    fn our_own_fd_or_memory_shortage_is_no_failure_of_the_backend() {
        let mut t = Table::default();
        let b = Backend::Tcp("127.0.0.1:11".parse().unwrap());
        t.track(std::slice::from_ref(&b), &limits());
        for errno in [
            nix::libc::EMFILE,
            nix::libc::ENFILE,
            nix::libc::ENOBUFS,
            nix::libc::ENOMEM,
        ] {
            let e = std::io::Error::from_raw_os_error(errno);
            t.observe_failure(&b, &e, true);
            t.observe_failure(&b, &e, false);
        }
        assert!(
            !t.is_down(&b),
            "out of fds or memory says nothing of the backend"
        );
        let refused = std::io::Error::from_raw_os_error(nix::libc::ECONNREFUSED);
        t.observe_failure(&b, &refused, true);
        t.observe_failure(&b, &refused, false);
        assert!(t.is_down(&b), "a refusal does");
    }

    #[test]
    fn fall_and_rise() {
        let b = Backend::Tcp("127.0.0.1:9".parse().unwrap());
        let other = Backend::Tcp("127.0.0.1:10".parse().unwrap());
        let mut t = Table::default();
        t.track(std::slice::from_ref(&b), &limits());
        assert!(!t.is_down(&b));
        assert!(!t.observe(&b, Err("refused".into()), true));
        assert!(!t.is_down(&b), "one failure is not down (fall 2)");
        assert!(!t.observe(&b, Err("refused".into()), false));
        assert!(t.is_down(&b), "a real connection counts too");
        assert!(!t.is_down(&other), "untracked backends are never down");
        assert!(t.observe(&b, Ok(()), true), "back up: held ones wake");
        assert!(!t.is_down(&b), "rise 1");
        let r = t.report();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].checks, r[0].failures, r[0].fails_in_row), (2, 2, 0));
        assert!(r[0].up && r[0].last_check_ms > 0);
        assert_eq!(r[0].last_error.as_deref(), Some("refused"));
        t.track(&[], &limits());
        assert!(t.report().is_empty());
    }

    /// Thousands of backends (an http worker with many routes): each is
    /// found for its own state, and a new set of backends keeps the state
    /// of those it keeps, in its own order, a new one up.
    #[test]
    fn a_large_table_keeps_each_backend_state_across_changes() {
        let lim = limits();
        let bs: Vec<Backend> = (0..5000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x7f00_0000 + i);
                Backend::Tcp(std::net::SocketAddr::from((ip, 1000 + (i % 7) as u16)))
            })
            .collect();
        let mut t = Table::default();
        t.track(&bs, &lim);
        for b in bs.iter().step_by(3) {
            let _ = t.observe(b, Err("refused".into()), true);
            let _ = t.observe(b, Err("refused".into()), false);
        }
        for (i, b) in bs.iter().enumerate() {
            assert_eq!(t.is_down(b), i.is_multiple_of(3), "{b}");
        }
        // Every other one, the other way round, and a new one named twice.
        let fresh = Backend::Unix("/run/pvx-fresh.sock".into());
        let mut again: Vec<Backend> = bs.iter().rev().step_by(2).cloned().collect();
        again.push(fresh.clone());
        again.push(fresh.clone());
        t.track(&again, &lim);
        let r = t.report();
        assert_eq!(r.len(), MAX_REPORTED);
        for (e, b) in r.iter().zip(&again) {
            assert_eq!(e.backend, b.to_string());
        }
        for (i, b) in bs.iter().enumerate() {
            let kept = (bs.len() - 1 - i).is_multiple_of(2);
            assert_eq!(t.is_down(b), kept && i.is_multiple_of(3), "{b}");
        }
        assert!(!t.is_down(&fresh), "a new backend starts up");
        let _ = t.observe(&fresh, Err("refused".into()), false);
        let _ = t.observe(&fresh, Err("refused".into()), false);
        assert!(t.is_down(&fresh), "tracked once: both failures counted");
        assert_eq!(t.entries.len(), again.len() - 1);
        t.track(&[], &lim);
        assert!(!t.is_down(&bs[0]));
    }
}
