//! An endpoint's per-route counters across its workers: what its workers
//! reported ([`proto::ctl::RouteStats`], each counting from its start),
//! what the dead ones counted added to the living one's, so a counter
//! never goes back when a worker is restarted.

use proto::ctl::RouteStats;
use proto::plan::Route;

/// Whether `routes` has one named `link`. A scan: pruning is
/// O(counted routes × routes), a few ms at a graph apply for a thousand
/// of each; a sorted copy of the names to search cost the executable
/// 5.4 KiB (a sort instantiated for it), more than it saves a device.
fn has(routes: &[Route], link: &str) -> bool {
    routes.iter().any(|r| r.via.name == link)
}

/// Each sorted by link name (the `link` label), one entry per route:
/// found by binary search. (Vectors rather than maps: the supervisor is
/// built for size, and a map of a new value type builds its own code.)
#[derive(Debug, Default)]
pub struct RouteCounts {
    /// What the endpoint's earlier workers counted.
    base: Vec<RouteStats>,
    /// The current worker's last report of each route.
    now: Vec<RouteStats>,
}

/// Put `r` in `into` (sorted by link): replace the entry of its route, or
/// add to it (`add`: the sum of both).
fn put(into: &mut Vec<RouteStats>, r: RouteStats, add: bool) {
    match into.binary_search_by(|e| e.link.as_str().cmp(&r.link)) {
        Ok(i) if add => into[i] = into[i].then(&r),
        Ok(i) => into[i] = r,
        Err(i) => into.insert(i, r),
    }
}

impl RouteCounts {
    /// A worker's report: each entry replaces that route's last one.
    pub fn report(&mut self, routes: Vec<RouteStats>) {
        for r in routes {
            put(&mut self.now, r, false);
        }
    }

    /// The current worker is gone: what it counted stays.
    pub fn worker_gone(&mut self) {
        for r in std::mem::take(&mut self.now) {
            put(&mut self.base, r, true);
        }
    }

    /// Add what an earlier set of workers counted (`gone`, after its
    /// `worker_gone`): a drained worker of the same series. Only for the
    /// endpoint's `routes`, so the series stay bounded by the graph.
    pub fn add_gone(&mut self, gone: RouteCounts, routes: &[Route]) {
        for r in gone.base.into_iter().chain(gone.now) {
            if has(routes, &r.link) {
                put(&mut self.base, r, true);
            }
        }
    }

    /// Forget routes the graph no longer has (the endpoint's `routes`
    /// now), so the series stay bounded by the graph.
    pub fn keep_only(&mut self, routes: &[Route]) {
        self.base.retain(|r| has(routes, &r.link));
        self.now.retain(|r| has(routes, &r.link));
    }

    /// Every route's counters over all workers, by link name.
    pub fn totals(&self) -> Vec<RouteStats> {
        let mut all = self.base.clone();
        for r in &self.now {
            put(&mut all, r.clone(), true);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ctl::End;

    /// One http endpoint's routes, named `names` (a path prefix each).
    fn routes(names: &[&str]) -> Vec<Route> {
        let links: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    r#"{{"type":"http","name":"{n}","consumer":"EXTERNAL","role":"r","target":"0.0.0.0:80/{n}/","socket":"127.0.0.1:1"}}"#
                )
            })
            .collect();
        let plan = proto::plan::from_graph(&format!("[{}]", links.join(","))).unwrap();
        assert!(plan.refused.is_empty(), "{:?}", plan.refused);
        plan.endpoints[0].routes.clone()
    }

    fn counted(link: &str, n: u64) -> RouteStats {
        let mut r = RouteStats::new(link);
        for _ in 0..n {
            r.count(Some(200), End::Complete, 3);
        }
        r.bytes_in = n * 10;
        r
    }

    #[test]
    fn a_restarted_worker_adds_to_what_its_predecessors_counted() {
        let mut c = RouteCounts::default();
        c.report(vec![counted("a", 1)]);
        c.report(vec![counted("a", 2), counted("b", 1)]);
        c.worker_gone();
        c.report(vec![counted("a", 3)]);
        let t = c.totals();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].link.as_str(), t[0].total(), t[0].bytes_in),
            ("a", 5, 50)
        );
        assert_eq!(t[0].status[1], 5);
        assert_eq!((t[1].link.as_str(), t[1].total()), ("b", 1));
        c.keep_only(&routes(&["b"]));
        assert_eq!(c.totals().len(), 1);
    }

    #[test]
    fn a_drained_workers_counts_join_the_endpoint_back_in_the_graph_for_its_routes() {
        let mut drained = RouteCounts::default();
        drained.report(vec![counted("a", 2), counted("gone", 4)]);
        drained.worker_gone();
        drained.report(vec![counted("a", 3)]);
        drained.worker_gone();
        let mut back = RouteCounts::default();
        back.report(vec![counted("a", 1)]);
        back.add_gone(drained, &routes(&["a", "other"]));
        let t = back.totals();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!((t[0].link.as_str(), t[0].total()), ("a", 6));
        // Its own worker's next report still replaces only its own part.
        back.report(vec![counted("a", 2)]);
        assert_eq!(back.totals()[0].total(), 7);
    }
}
