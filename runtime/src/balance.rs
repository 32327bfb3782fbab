//! Replicas (BEHAVIOUR §3 `balance`, §4): which backend of a route's pool a new
//! connection (tcp, unix) or a new exchange (http) goes to, and the next
//! one to try when its connect fails.
//!
//! Per worker, so per endpoint: the worker is single-threaded, and the
//! book ([`Book`]: open connections per backend, a round-robin turn per
//! pool) is a thread-local like the provider roots in `backend.rs`.
//!
//! - `round-robin`: the pool's backends in turn.
//! - `least-conn`: the backend with the fewest connections open from this
//!   worker (a [`Lease`] counts one from the pick until the connection
//!   closes; an http exchange holds one while it uses its backend
//!   connection); ties go round-robin, so an idle pool alternates.
//!
//! A route with one backend never gets here: no lease, no lookup, no
//! cost. Which backends may be picked at all is one function,
//! [`usable`]: the place where backends marked down by health checks are
//! left out.

use proto::plan::Route;
use proto::types::{Backend, Policy};
use std::cell::RefCell;
// Keyed by configured backends, as the health table: FNV (Cargo.toml), and
// no second copy of SipHash's code for `Backend` in this crate (-2.4 KiB of
// the executable against std's `HashMap`, issue 19).
use fnv::FnvHashMap as HashMap;
use std::rc::Rc;

/// Whether `b` may be picked now: not marked down by health checks (one
/// filter, used by the first pick, fail-over and a held connection's next
/// attempt alike). When no backend of a pool is usable, the pick ignores
/// this (the dialer then holds, as for a route with one backend down).
fn usable(b: &Backend) -> bool {
    !crate::health::is_down(b)
}

/// The most round-robin turns kept; past it they start over (a turn is
/// only a fairness hint, and pools come and go with updates).
const MAX_TURNS: usize = 1024;

#[derive(Default)]
struct Book {
    /// Connections open from this worker, per backend (absent: none).
    open: HashMap<Backend, u32>,
    /// Where the next round-robin turn starts, per pool.
    turn: HashMap<Box<[Backend]>, usize>,
}

thread_local! {
    // Workers are single-threaded; the book belongs to the process.
    static BOOK: RefCell<Book> = RefCell::new(Book::default());
}

/// Connections open to `b` from this worker (counted by [`Lease`]s).
pub fn open(b: &Backend) -> u32 {
    BOOK.with(|k| k.borrow().open.get(b).copied().unwrap_or(0))
}

/// Pick a backend of `pool` by `policy`: its index.
pub fn pick(pool: &[Backend], policy: Policy) -> usize {
    let n = pool.len();
    if n < 2 {
        return 0;
    }
    BOOK.with(|k| {
        let mut k = k.borrow_mut();
        let start = k.turn.get(pool).copied().unwrap_or(0) % n;
        let ring = (0..n).map(|i| (start + i) % n);
        let any_usable = ring.clone().any(|i| usable(&pool[i]));
        let mut candidates = ring.filter(|&i| !any_usable || usable(&pool[i]));
        let chosen = match policy {
            Policy::RoundRobin => candidates.next(),
            // The first of the least loaded in ring order: ties rotate.
            Policy::LeastConn => {
                candidates.min_by_key(|&i| k.open.get(&pool[i]).copied().unwrap_or(0))
            }
        }
        .unwrap_or(start);
        match k.turn.get_mut(pool) {
            Some(t) => *t = chosen + 1,
            None => {
                if k.turn.len() >= MAX_TURNS {
                    k.turn.clear();
                }
                k.turn.insert(pool.into(), chosen + 1);
            }
        }
        chosen
    })
}

/// One connection counted against one backend of a pool, from the pick
/// until it is dropped (what least-conn compares).
#[derive(Debug)]
pub struct Lease {
    pool: Rc<[Backend]>,
    /// u32, not usize: an idle connection keeps its lease, and 8 bytes
    /// of each count (a pool is a route's few replicas).
    index: u32,
    /// Counted in the book (false only in passing, see [`Choice::attempt`]).
    counted: bool,
}

impl Lease {
    fn new(pool: Rc<[Backend]>, index: usize) -> Lease {
        BOOK.with(|k| {
            let mut k = k.borrow_mut();
            match k.open.get_mut(&pool[index]) {
                Some(n) => *n += 1,
                None => {
                    k.open.insert(pool[index].clone(), 1);
                }
            }
        });
        Lease {
            pool,
            index: narrow(index),
            counted: true,
        }
    }

    fn uncounted(pool: Rc<[Backend]>, index: usize) -> Lease {
        Lease {
            pool,
            index: narrow(index),
            counted: false,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.pool[self.index()]
    }

    fn index(&self) -> usize {
        self.index as usize
    }
}

/// A pool index as a lease keeps it (pools are far smaller than u32).
fn narrow(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let b = &self.pool[self.index()];
        // try_with: a lease dropped while the thread exits finds no book.
        let _ = BOOK.try_with(|k| {
            let mut k = k.borrow_mut();
            if let Some(n) = k.open.get_mut(b) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    k.open.remove(b);
                }
            }
        });
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
    /// Where this pass began.
    first: usize,
    /// Every backend of the pass failed: the next attempt picks anew.
    spent: bool,
    lease: Lease,
}

impl Choice {
    /// Pick a backend of `pool` by `policy`.
    pub fn new(pool: Rc<[Backend]>, policy: Policy) -> Choice {
        let i = pick(&pool, policy);
        Choice::at(pool, policy, i)
    }

    /// A choice already made: backend `index` of `pool`.
    pub fn at(pool: Rc<[Backend]>, policy: Policy, index: usize) -> Choice {
        let index = index.min(pool.len().saturating_sub(1));
        Choice {
            policy,
            first: index,
            spent: false,
            lease: Lease::new(pool, index),
        }
    }

    /// A route's choice, or None when it has one backend.
    pub fn for_route(r: &Route) -> Option<Choice> {
        pool_of(r).map(|(pool, policy)| Choice::new(pool, policy))
    }

    pub fn backend(&self) -> &Backend {
        self.lease.backend()
    }

    pub fn index(&self) -> usize {
        self.lease.index()
    }

    pub fn pool(&self) -> &Rc<[Backend]> {
        &self.lease.pool
    }

    fn aim(&mut self, i: usize) {
        if i != self.lease.index() {
            let pool = self.lease.pool.clone();
            self.lease = Lease::new(pool, i);
        }
    }

    /// The backend aimed at failed to connect: the next usable one this
    /// pass has not tried, or None when the pass is over (the caller then
    /// fails or retries as for one backend; its next attempt starts a new
    /// pass, see [`Choice::attempt`]).
    pub fn fail_over(&mut self) -> Option<&Backend> {
        let n = self.lease.pool.len();
        let mut i = self.lease.index();
        loop {
            i = (i + 1) % n;
            if i == self.first {
                self.spent = true;
                return None;
            }
            if usable(&self.lease.pool[i]) {
                self.aim(i);
                return Some(self.backend());
            }
        }
    }

    /// Before an attempt: after a spent pass, or when the backend aimed at
    /// is no longer [`usable`] (a later attempt of a held connection), pick
    /// anew (Some: the new backend aimed at, which may be the same one).
    pub fn attempt(&mut self) -> Option<&Backend> {
        if !self.spent && usable(self.backend()) {
            return None;
        }
        self.spent = false;
        // Let go first: this connection's own count must not weigh on
        // the pick.
        let pool = self.lease.pool.clone();
        let index = self.lease.index();
        drop(std::mem::replace(
            &mut self.lease,
            Lease::uncounted(pool.clone(), index),
        ));
        let i = pick(&pool, self.policy);
        self.first = i;
        self.lease = Lease::new(pool, i);
        Some(self.backend())
    }

    /// The lease alone, for a connection that is through (it counts until
    /// the connection closes).
    pub fn into_lease(self) -> Lease {
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
        let p = pool(&[1001, 1002, 1003]);
        let got: Vec<usize> = (0..7).map(|_| pick(&p, Policy::RoundRobin)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
        // Another pool has its own turn.
        let q = pool(&[1001, 1002]);
        assert_eq!(pick(&q, Policy::RoundRobin), 0);
        assert_eq!(pick(&p, Policy::RoundRobin), 1);
    }

    #[test]
    fn least_conn_goes_to_the_fewest_open_and_ties_rotate() {
        let p = pool(&[2001, 2002, 2003]);
        // Idle pool: ties, so in turn.
        let a = Choice::new(p.clone(), Policy::LeastConn);
        let b = Choice::new(p.clone(), Policy::LeastConn);
        let c = Choice::new(p.clone(), Policy::LeastConn);
        assert_eq!([a.index(), b.index(), c.index()], [0, 1, 2]);
        assert_eq!(open(&p[0]), 1);
        // One closes: the next goes there, whatever the turn.
        drop(b);
        assert_eq!(open(&p[1]), 0);
        let d = Choice::new(p.clone(), Policy::LeastConn);
        assert_eq!(d.index(), 1);
        // A lease outlives its choice.
        let la = a.into_lease();
        assert_eq!(open(&p[0]), 1);
        drop(la);
        assert_eq!(open(&p[0]), 0);
        let e = Choice::new(p.clone(), Policy::LeastConn);
        assert_eq!(e.index(), 0);
        drop((c, d, e));
        assert!((0..3).all(|i| open(&p[i]) == 0));
        // Round-robin does not look at the load.
        let x = Choice::new(p.clone(), Policy::RoundRobin);
        let y = Choice::new(p.clone(), Policy::RoundRobin);
        drop(y);
        let z = Choice::new(p.clone(), Policy::RoundRobin);
        assert_ne!(z.index(), 1, "round-robin moved on");
        drop((x, z));
    }

    #[test]
    fn fail_over_makes_one_pass_then_picks_anew() {
        let p = pool(&[3001, 3002, 3003]);
        let mut c = Choice::at(p.clone(), Policy::RoundRobin, 1);
        assert_eq!(open(&p[1]), 1);
        assert_eq!(c.attempt(), None, "nothing failed yet");
        assert_eq!(c.fail_over(), Some(&p[2]));
        assert_eq!((open(&p[1]), open(&p[2])), (0, 1), "the lease moved");
        assert_eq!(c.fail_over(), Some(&p[0]));
        assert_eq!(c.fail_over(), None, "back where the pass began");
        // The next attempt starts a new pass from a new pick.
        let b = c.attempt().cloned();
        assert!(b.is_some());
        assert_eq!(c.attempt(), None);
        let start = c.index();
        let mut seen = vec![start];
        while let Some(b) = c.fail_over().cloned() {
            seen.push(p.iter().position(|x| *x == b).unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "each once per pass");
        drop(c);
        assert!((0..3).all(|i| open(&p[i]) == 0));
    }
}
