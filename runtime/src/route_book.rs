//! The worker's per-route counters ([`proto::ctl::RouteStats`]): one
//! entry per route of its config, in the config's order, counted when a
//! request or connection ends and reported with the stats, only the
//! entries that changed since the last report (at most
//! [`MAX_ROUTE_STATS`] a report; the rest wait for the next).
//!
//! A connection names its route by its position in the config it was
//! started under and the book's generation then ([`RouteRef`]): an update
//! bumps the generation, and a connection from before it is counted under
//! its route's name, found again (or not counted, its route gone: what it
//! counted before stays with the supervisor).

use proto::ctl::{End, RouteStats, MAX_ROUTE_STATS};

/// Which route a connection counts under: 8 bytes in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRef {
    index: u32,
    generation: u32,
}

#[derive(Debug, Default)]
pub struct RouteBook {
    entries: Vec<RouteStats>,
    /// Changed since the last report, per entry.
    dirty: Vec<bool>,
    /// Entries of routes an update removed, with counts not reported yet.
    retired: Vec<RouteStats>,
    generation: u32,
}

impl RouteBook {
    /// `routes`: the names of the config's routes, in its order.
    pub fn new<'a>(routes: impl Iterator<Item = &'a str>) -> RouteBook {
        let mut b = RouteBook::default();
        b.update(routes);
        b
    }

    /// The routes of an applied update: entries kept by name, new routes
    /// start at 0, removed ones are reported once more if they changed.
    pub fn update<'a>(&mut self, routes: impl Iterator<Item = &'a str>) {
        let mut old: Vec<(RouteStats, bool)> = std::mem::take(&mut self.entries)
            .into_iter()
            .zip(std::mem::take(&mut self.dirty))
            .collect();
        for name in routes {
            let kept = old.iter().position(|(e, _)| e.link == name);
            let (e, d) = match kept {
                Some(i) => old.swap_remove(i),
                None => (RouteStats::new(name), false),
            };
            self.entries.push(e);
            self.dirty.push(d);
        }
        self.retired
            .extend(old.into_iter().filter(|(_, d)| *d).map(|(e, _)| e));
        self.generation = self.generation.wrapping_add(1);
    }

    /// The reference of route `index` of the current config.
    pub fn route(&self, index: usize) -> RouteRef {
        RouteRef {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            generation: self.generation,
        }
    }

    /// The entry a connection counts under; None when its route is gone.
    /// `name`: its route's name, asked only after an update.
    pub fn entry<'a>(
        &mut self,
        r: RouteRef,
        name: impl FnOnce() -> &'a str,
    ) -> Option<&mut RouteStats> {
        let i = if r.generation == self.generation {
            usize::try_from(r.index).ok()?
        } else {
            let name = name();
            self.entries.iter().position(|e| e.link == name)?
        };
        let e = self.entries.get_mut(i)?;
        self.dirty[i] = true;
        Some(e)
    }

    /// Count one request or connection that ended under `r`.
    pub fn count<'a>(
        &mut self,
        r: RouteRef,
        name: impl FnOnce() -> &'a str,
        status: Option<u16>,
        end: End,
        bytes: (u64, u64),
        duration_ms: u64,
    ) {
        if let Some(e) = self.entry(r, name) {
            e.count(status, end, duration_ms);
            e.bytes_in += bytes.0;
            e.bytes_out += bytes.1;
        }
    }

    /// Whether a report has something to say.
    pub fn changed(&self) -> bool {
        !self.retired.is_empty() || self.dirty.iter().any(|&d| d)
    }

    /// A report that could not be sent: what it carried goes in the next
    /// one, before anything counted since (which is newer).
    pub fn unsent(&mut self, report: Vec<RouteStats>) {
        let mut r = report;
        r.append(&mut self.retired);
        self.retired = r;
    }

    /// What the next report carries: the changed entries, whole, at most
    /// [`MAX_ROUTE_STATS`]; those are no longer changed.
    pub fn report(&mut self) -> Vec<RouteStats> {
        let mut out: Vec<RouteStats> = self.retired.drain(..).collect();
        out.truncate(MAX_ROUTE_STATS);
        for (e, d) in self.entries.iter().zip(self.dirty.iter_mut()) {
            if out.len() >= MAX_ROUTE_STATS {
                break;
            }
            if std::mem::take(d) {
                out.push(e.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_their_route_across_an_update() {
        let mut b = RouteBook::new(["a", "b"].into_iter());
        let a = b.route(0);
        let bb = b.route(1);
        b.count(a, || "a", Some(200), End::Complete, (1, 2), 3);
        assert!(b.changed());
        let r = b.report();
        assert_eq!((r.len(), r[0].link.as_str(), r[0].total()), (1, "a", 1));
        assert!(!b.changed());
        // b goes away, c comes: a connection of b's counts nowhere, one
        // of a's from before the update still counts under a.
        b.update(["c", "a"].into_iter());
        b.count(bb, || "b", None, End::Complete, (0, 0), 1);
        b.count(a, || "a", Some(502), End::BackendFailed, (0, 0), 1);
        let r = b.report();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].link.as_str(), r[0].total(), r[0].status[4]),
            ("a", 2, 1)
        );
        let c = b.route(0);
        b.count(c, || "c", None, End::Timeout, (5, 5), 9);
        assert_eq!(b.report()[0].link, "c");
    }
}
