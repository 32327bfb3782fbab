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
//! counted before stays with the supervisor). A connection that lives
//! across updates (tcp, unix) has its reference renewed right after each
//! one instead ([`RouteBook::renew`]): the book remembers where each route
//! of the previous config went, by name, for that.

use proto::ctl::{End, RouteStats, MAX_ROUTE_STATS};

/// Which route a connection counts under: 8 bytes in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRef {
    index: u32,
    generation: u32,
}

impl RouteRef {
    /// No route (a tcp client no sni route matched, a route an update
    /// removed): counted nowhere, its access line says `link=-`.
    pub const NONE: RouteRef = RouteRef {
        index: u32::MAX,
        generation: 0,
    };
}

#[derive(Debug, Default)]
pub struct RouteBook {
    entries: Vec<RouteStats>,
    /// Changed since the last report, per entry.
    dirty: Vec<bool>,
    /// Entries of routes an update removed, with counts not reported yet.
    retired: Vec<RouteStats>,
    generation: u32,
    /// Where each route of the previous generation went (its index now,
    /// `u32::MAX`: gone), for [`RouteBook::renew`].
    moved: Vec<u32>,
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
        // Each old entry with whether it changed and where it was.
        let mut old: Vec<(RouteStats, bool, usize)> = std::mem::take(&mut self.entries)
            .into_iter()
            .zip(std::mem::take(&mut self.dirty))
            .enumerate()
            .map(|(i, (e, d))| (e, d, i))
            .collect();
        self.moved = vec![u32::MAX; old.len()];
        for name in routes {
            let (e, d) = match old.iter().position(|(e, ..)| e.link == name) {
                Some(i) => {
                    let (e, d, was) = old.swap_remove(i);
                    self.moved[was] = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
                    (e, d)
                }
                None => (RouteStats::new(name), false),
            };
            self.entries.push(e);
            self.dirty.push(d);
        }
        self.retired
            .extend(old.into_iter().filter(|(_, d, _)| *d).map(|(e, ..)| e));
        self.generation = self.generation.wrapping_add(1);
    }

    /// `r` as the current config has it: the same route found by name
    /// after the last update, or [`RouteRef::NONE`] when it is gone (or
    /// `r` is older than the last update: a caller renews its references
    /// after every update, as the tcp and unix workers do on the wake-up
    /// that follows one).
    pub fn renew(&self, r: RouteRef) -> RouteRef {
        if r.generation == self.generation || r == RouteRef::NONE {
            return r;
        }
        let moved = (r.generation.wrapping_add(1) == self.generation)
            .then(|| usize::try_from(r.index).ok())
            .flatten()
            .and_then(|i| self.moved.get(i));
        match moved {
            Some(&index) if index != u32::MAX => RouteRef {
                index,
                generation: self.generation,
            },
            _ => RouteRef::NONE,
        }
    }

    /// The name (link) of the route `r` names, if current.
    pub fn name(&self, r: RouteRef) -> Option<&str> {
        if r.generation != self.generation {
            return None;
        }
        let e = self.entries.get(usize::try_from(r.index).ok()?)?;
        Some(&e.link)
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
        // What does not fit waits for the next report (`changed` stays
        // true while some is left), never dropped.
        let first = self.retired.len().min(MAX_ROUTE_STATS);
        let mut out: Vec<RouteStats> = self.retired.drain(..first).collect();
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

    #[test]
    fn a_renewed_reference_follows_its_route_by_name() {
        let mut b = RouteBook::new(["a", "b", "c"].into_iter());
        let (a, bb, c) = (b.route(0), b.route(1), b.route(2));
        assert_eq!(b.name(c), Some("c"));
        b.update(["c", "d", "a"].into_iter());
        // Stale before renewal: no name (the caller renews first).
        assert_eq!(b.name(a), None);
        let (a, bb, c) = (b.renew(a), b.renew(bb), b.renew(c));
        assert_eq!((b.name(a), b.name(c)), (Some("a"), Some("c")));
        assert_eq!(bb, RouteRef::NONE, "b is gone");
        assert_eq!(b.name(bb), None);
        // Renewed, a reference counts under its route with no name asked.
        b.count(a, || unreachable!(), None, End::Complete, (1, 1), 1);
        b.count(bb, || "b", None, End::Complete, (1, 1), 1);
        let r = b.report();
        assert_eq!((r.len(), r[0].link.as_str()), (1, "a"));
        // Two updates without a renewal between: too old to follow.
        b.update(["a"].into_iter());
        b.update(["a"].into_iter());
        assert_eq!(b.renew(c), RouteRef::NONE);
        assert_eq!(b.renew(b.route(0)), b.route(0));
    }

    #[test]
    fn an_unsent_report_goes_in_the_next_whole_and_first() {
        let names: Vec<String> = (0..MAX_ROUTE_STATS + 5).map(|i| format!("r{i}")).collect();
        let mut b = RouteBook::new(names.iter().map(String::as_str));
        for i in 0..names.len() {
            let r = b.route(i);
            b.count(r, || unreachable!(), Some(200), End::Complete, (1, 1), 1);
        }
        let first = b.report();
        assert_eq!(first.len(), MAX_ROUTE_STATS);
        // The send failed: it all comes again, before what is newer; an
        // update then retires the last five routes (counted, unreported).
        b.unsent(first);
        b.update(names[..MAX_ROUTE_STATS].iter().map(String::as_str));
        let r0 = b.route(0);
        b.count(r0, || unreachable!(), Some(200), End::Complete, (1, 1), 1);
        let mut seen = Vec::new();
        while b.changed() {
            let r = b.report();
            assert!(!r.is_empty() && r.len() <= MAX_ROUTE_STATS);
            seen.extend(r);
        }
        // Every route reported; r0's last report is its newest count.
        for n in &names {
            assert!(seen.iter().any(|r| &r.link == n), "{n} lost");
        }
        let last_r0 = seen
            .iter()
            .rev()
            .find(|r| r.link == "r0")
            .map(|r| r.total());
        assert_eq!(last_r0, Some(2));
    }
}
