//! An endpoint's per-route counters across its workers: what its workers
//! reported ([`proto::ctl::RouteStats`], each counting from its start),
//! what the dead ones counted added to the living one's, so a counter
//! never goes back when a worker is restarted.

use proto::ctl::RouteStats;
use std::collections::BTreeMap;

/// Keyed by the route's first link's name (the `link` label).
#[derive(Debug, Default)]
pub struct RouteCounts {
    /// What the endpoint's earlier workers counted.
    base: BTreeMap<String, RouteStats>,
    /// The current worker's last report of each route.
    now: BTreeMap<String, RouteStats>,
}

impl RouteCounts {
    /// A worker's report: each entry replaces that route's last one.
    pub fn report(&mut self, routes: Vec<RouteStats>) {
        for r in routes {
            self.now.insert(r.link.clone(), r);
        }
    }

    /// The current worker is gone: what it counted stays.
    pub fn worker_gone(&mut self) {
        for (link, r) in std::mem::take(&mut self.now) {
            let sum = match self.base.get(&link) {
                Some(b) => b.then(&r),
                None => r,
            };
            self.base.insert(link, sum);
        }
    }

    /// Forget routes the graph no longer has (`links`: the endpoint's
    /// route names now), so the series stay bounded by the graph.
    pub fn keep_only<'a>(&mut self, links: impl Iterator<Item = &'a str>) {
        let keep: std::collections::BTreeSet<&str> = links.collect();
        self.base.retain(|l, _| keep.contains(l.as_str()));
        self.now.retain(|l, _| keep.contains(l.as_str()));
    }

    /// Every route's counters over all workers, by link name.
    pub fn totals(&self) -> Vec<RouteStats> {
        let mut all = self.base.clone();
        for (link, r) in &self.now {
            let sum = match all.get(link) {
                Some(b) => b.then(r),
                None => r.clone(),
            };
            all.insert(link.clone(), sum);
        }
        all.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ctl::End;

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
        c.keep_only(["b"].into_iter());
        assert_eq!(c.totals().len(), 1);
    }
}
