//! Replicas (BEHAVIOUR §3 `balance`, §4): which backend of a route's pool a new
//! connection (tcp, unix) or a new exchange (http) goes to, and the next
//! one to try when its connect fails.
//!
//! Per worker, so per endpoint: the worker loop owns the [`Book`] (open
//! connections per backend, a round-robin turn per pool; in
//! `backend::Reach`) and lends it to whoever picks.
//!
//! - `round-robin`: the pool's backends in turn.
//! - `least-conn`: the backend with the fewest connections open from this
//!   worker (a [`Lease`] counts one from the pick until the connection
//!   closes; an http exchange holds one while it uses its backend
//!   connection); ties go round-robin, so an idle pool alternates.
//!
//! A lease is a share of its backend's count (an `Rc` the book keeps one
//! of: [`Rc::strong_count`] less the book's own is the count), so a
//! connection dropped wherever it ends (no book at hand there) stops
//! counting by itself.
//!
//! A route with one backend never gets here: no lease, no lookup, no
//! cost. Which backends may be picked at all is one function,
//! [`usable`]: the place where backends marked down by health checks are
//! left out.

use crate::health;
use proto::plan::Route;
use proto::types::{Backend, Policy};
// Keyed by configured backends, as the health table: FNV (Cargo.toml), and
// no second copy of SipHash's code for `Backend` in this crate (-2.4 KiB of
// the executable against std's `HashMap`, issue 19).
use fnv::{FnvHashMap as HashMap, FnvHashSet as HashSet};
use std::rc::Rc;

/// Whether `b` may be picked now: not marked down by health checks (one
/// filter, used by the first pick, fail-over and a held connection's next
/// attempt alike). When no backend of a pool is usable, the pick ignores
/// this (the dialer then holds, as for a route with one backend down).
fn usable(b: &Backend, health: &health::Table) -> bool {
    !health.is_down(b)
}

/// The most round-robin turns kept; past it they start over (a turn is
/// only a fairness hint, and pools come and go with updates).
const MAX_TURNS: usize = 1024;

/// The worker's picks: the connections open per backend and the turn of
/// each pool.
#[derive(Debug, Default)]
pub struct Book {
    /// The book's share of each backend a lease was taken for: its leases
    /// hold the others ([`Book::open`]).
    open: HashSet<Rc<Backend>>,
    /// Where the next round-robin turn starts, per pool.
    turn: HashMap<Box<[Backend]>, usize>,
}

impl Book {
    /// Connections open to `b` from this worker (counted by [`Lease`]s).
    pub fn open(&self, b: &Backend) -> u32 {
        self.open
            .get(b)
            .map_or(0, |share| (Rc::strong_count(share) - 1) as u32)
    }

    /// Pick a backend of `pool` by `policy`: its index.
    pub fn pick(&mut self, pool: &[Backend], policy: Policy, health: &health::Table) -> usize {
        let n = pool.len();
        if n < 2 {
            return 0;
        }
        let start = self.turn.get(pool).copied().unwrap_or(0) % n;
        let ring = (0..n).map(|i| (start + i) % n);
        let any_usable = ring.clone().any(|i| usable(&pool[i], health));
        let mut candidates = ring.filter(|&i| !any_usable || usable(&pool[i], health));
        let chosen = match policy {
            Policy::RoundRobin => candidates.next(),
            // The first of the least loaded in ring order: ties rotate.
            Policy::LeastConn => candidates.min_by_key(|&i| self.open(&pool[i])),
        }
        .unwrap_or(start);
        match self.turn.get_mut(pool) {
            Some(t) => *t = chosen + 1,
            None => {
                if self.turn.len() >= MAX_TURNS {
                    self.turn.clear();
                }
                self.turn.insert(pool.into(), chosen + 1);
            }
        }
        chosen
    }

    /// Count one more connection open to `b`, until the lease is dropped.
    fn lease(&mut self, b: &Backend) -> Lease {
        if let Some(share) = self.open.get(b) {
            return Lease(share.clone());
        }
        if self.open.len() == self.open.capacity() {
            // Before the set grows: backends no lease counts any more go.
            self.open.retain(|share| Rc::strong_count(share) > 1);
        }
        let share = Rc::new(b.clone());
        self.open.insert(share.clone());
        Lease(share)
    }
}

/// One connection counted against one backend, from the pick until it is
/// dropped (what least-conn compares). One pointer: an idle tcp
/// connection keeps its lease.
#[derive(Debug)]
pub struct Lease(Rc<Backend>);

impl Lease {
    pub fn backend(&self) -> &Backend {
        &self.0
    }
}

/// The pool of a route with replicas: its backends (the route's own
/// first, then its replicas', in graph order) and the policy. None for a
/// route with one backend.
pub fn pool_of(r: &Route) -> Option<(Rc<[Backend]>, Policy)> {
    let policy = r.via.balance?;
    if r.replicas.is_empty() {
        return None;
    }
    Some((r.backends().cloned().collect(), policy))
}

/// One connection's way through a pool: the backend it aims at (leased),
/// and, when that one's connect fails, the next one round the ring, once
/// round ("one pass over the replicas"); then a new pass starts with a
/// new pick.
#[derive(Debug)]
pub struct Choice {
    policy: Policy,
    pool: Rc<[Backend]>,
    /// The backend aimed at.
    index: usize,
    /// Where this pass began.
    first: usize,
    /// Every backend of the pass failed: the next attempt picks anew.
    spent: bool,
    /// Counts this connection against `pool[index]` (None only in passing,
    /// see [`Choice::attempt`]).
    lease: Option<Lease>,
}

impl Choice {
    /// Pick a backend of `pool` by `policy`.
    pub fn new(
        pool: Rc<[Backend]>,
        policy: Policy,
        book: &mut Book,
        health: &health::Table,
    ) -> Choice {
        let i = book.pick(&pool, policy, health);
        Choice::at(pool, policy, i, book)
    }

    /// A choice already made: backend `index` of `pool`.
    pub fn at(pool: Rc<[Backend]>, policy: Policy, index: usize, book: &mut Book) -> Choice {
        let index = index.min(pool.len().saturating_sub(1));
        let lease = Some(book.lease(&pool[index]));
        Choice {
            policy,
            pool,
            index,
            first: index,
            spent: false,
            lease,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.pool[self.index]
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn pool(&self) -> &Rc<[Backend]> {
        &self.pool
    }

    fn aim(&mut self, i: usize, book: &mut Book) {
        if i != self.index || self.lease.is_none() {
            // Let go first: the lease moves to the new backend.
            self.lease = None;
            self.index = i;
            self.lease = Some(book.lease(&self.pool[i]));
        }
    }

    /// The backend aimed at failed to connect: the next usable one this
    /// pass has not tried, or None when the pass is over (the caller then
    /// fails or retries as for one backend; its next attempt starts a new
    /// pass, see [`Choice::attempt`]).
    pub fn fail_over(&mut self, book: &mut Book, health: &health::Table) -> Option<&Backend> {
        let n = self.pool.len();
        let mut i = self.index;
        loop {
            i = (i + 1) % n;
            if i == self.first {
                self.spent = true;
                return None;
            }
            if usable(&self.pool[i], health) {
                self.aim(i, book);
                return Some(self.backend());
            }
        }
    }

    /// Before an attempt: after a spent pass, or when the backend aimed at
    /// is no longer [`usable`] (a later attempt of a held connection), pick
    /// anew (Some: the new backend aimed at, which may be the same one).
    pub fn attempt(&mut self, book: &mut Book, health: &health::Table) -> Option<&Backend> {
        if !self.spent && usable(self.backend(), health) {
            return None;
        }
        self.spent = false;
        // Let go first: this connection's own count must not weigh on
        // the pick.
        self.lease = None;
        let i = book.pick(&self.pool, self.policy, health);
        self.first = i;
        self.aim(i, book);
        Some(self.backend())
    }

    /// The lease alone, for a connection that is through (it counts until
    /// the connection closes).
    pub fn into_lease(self) -> Option<Lease> {
        self.lease
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ports: &[u16]) -> Rc<[Backend]> {
        ports
            .iter()
            .map(|p| Backend::Tcp(format!("127.0.0.1:{p}").parse().unwrap()))
            .collect()
    }

    #[test]
    fn round_robin_takes_turns() {
        let (mut k, h) = (Book::default(), health::Table::default());
        let p = pool(&[1001, 1002, 1003]);
        let got: Vec<usize> = (0..7).map(|_| k.pick(&p, Policy::RoundRobin, &h)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
        // Another pool has its own turn.
        let q = pool(&[1001, 1002]);
        assert_eq!(k.pick(&q, Policy::RoundRobin, &h), 0);
        assert_eq!(k.pick(&p, Policy::RoundRobin, &h), 1);
    }

    #[test]
    fn least_conn_goes_to_the_fewest_open_and_ties_rotate() {
        let (mut k, h) = (Book::default(), health::Table::default());
        let p = pool(&[2001, 2002, 2003]);
        // Idle pool: ties, so in turn.
        let a = Choice::new(p.clone(), Policy::LeastConn, &mut k, &h);
        let b = Choice::new(p.clone(), Policy::LeastConn, &mut k, &h);
        let c = Choice::new(p.clone(), Policy::LeastConn, &mut k, &h);
        assert_eq!([a.index(), b.index(), c.index()], [0, 1, 2]);
        assert_eq!(k.open(&p[0]), 1);
        // One closes: the next goes there, whatever the turn.
        drop(b);
        assert_eq!(k.open(&p[1]), 0);
        let d = Choice::new(p.clone(), Policy::LeastConn, &mut k, &h);
        assert_eq!(d.index(), 1);
        // A lease outlives its choice.
        let la = a.into_lease().expect("leased");
        assert_eq!(k.open(&p[0]), 1);
        drop(la);
        assert_eq!(k.open(&p[0]), 0);
        let e = Choice::new(p.clone(), Policy::LeastConn, &mut k, &h);
        assert_eq!(e.index(), 0);
        drop((c, d, e));
        assert!((0..3).all(|i| k.open(&p[i]) == 0));
        // Round-robin does not look at the load.
        let x = Choice::new(p.clone(), Policy::RoundRobin, &mut k, &h);
        let y = Choice::new(p.clone(), Policy::RoundRobin, &mut k, &h);
        drop(y);
        let z = Choice::new(p.clone(), Policy::RoundRobin, &mut k, &h);
        assert_ne!(z.index(), 1, "round-robin moved on");
        drop((x, z));
    }

    #[test]
    fn fail_over_makes_one_pass_then_picks_anew() {
        let (mut k, h) = (Book::default(), health::Table::default());
        let p = pool(&[3001, 3002, 3003]);
        let mut c = Choice::at(p.clone(), Policy::RoundRobin, 1, &mut k);
        assert_eq!(k.open(&p[1]), 1);
        assert_eq!(c.attempt(&mut k, &h), None, "nothing failed yet");
        assert_eq!(c.fail_over(&mut k, &h), Some(&p[2]));
        assert_eq!((k.open(&p[1]), k.open(&p[2])), (0, 1), "the lease moved");
        assert_eq!(c.fail_over(&mut k, &h), Some(&p[0]));
        assert_eq!(c.fail_over(&mut k, &h), None, "back where the pass began");
        // The next attempt starts a new pass from a new pick.
        let b = c.attempt(&mut k, &h).cloned();
        assert!(b.is_some());
        assert_eq!(c.attempt(&mut k, &h), None);
        let start = c.index();
        let mut seen = vec![start];
        while let Some(b) = c.fail_over(&mut k, &h).cloned() {
            seen.push(p.iter().position(|x| *x == b).unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "each once per pass");
        drop(c);
        assert!((0..3).all(|i| k.open(&p[i]) == 0));
    }
}
