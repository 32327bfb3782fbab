//! An endpoint's per-route counters across its workers: what its workers
//! reported ([`proto::ctl::RouteStats`], each counting from its start),
//! what the dead ones counted added to the living one's, so a counter
//! never goes back when a worker is restarted.

use proto::ctl::RouteStats;
use proto::plan::Route;

/// The link names of `routes`, sorted: a route's counters are kept when
/// its name is there (a binary search, so pruning stays linear-ish on an
/// endpoint with thousands of routes).
fn names(routes: &[Route]) -> Vec<&str> {
    let mut n: Vec<&str> = routes.iter().map(|r| r.via.name.as_str()).collect();
    n.sort_unstable();
    n
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
        let names = names(routes);
        for r in gone.base.into_iter().chain(gone.now) {
            if names.binary_search(&r.link.as_str()).is_ok() {
                put(&mut self.base, r, true);
            }
        }
    }

    /// Forget routes the graph no longer has (the endpoint's `routes`
    /// now), so the series stay bounded by the graph.
    pub fn keep_only(&mut self, routes: &[Route]) {
        let names = names(routes);
        let has = |r: &RouteStats| names.binary_search(&r.link.as_str()).is_ok();
        self.base.retain(has);
        self.now.retain(has);
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
