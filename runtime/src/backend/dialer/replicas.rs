//! Replicas: the dialer's part of `balance.rs` (a child of `dialer.rs`,
//! so it reads the [`Dialer`]'s fields, which stay private there).

use super::super::connect::is_busy;
use super::super::reach::Reach;
use super::{Attempt, Dialer};
use crate::balance::{Choice, Lease};
use crate::stream::Stream;
use proto::limits::Limits;
use proto::plan::Route;
use proto::tick::Tick;
use proto::types::Backend;
use std::io;
use std::time::{Duration, Instant};

/// Replicas: the dialer's part of `balance.rs`.
impl Dialer {
    /// A dialer for `r`: its one backend, or a backend of its pool picked
    /// by its `balance` policy.
    pub fn for_route(r: &Route, reach: &mut Reach, now: Instant, limits: &Limits) -> Dialer {
        match crate::balance::pool_of(r) {
            Some((pool, policy)) => Dialer::balanced(reach.choose(pool, policy), now, limits),
            None => Dialer::new(r.via.backend.clone(), now, limits),
        }
    }

    /// A dialer for a choice already made among replicas.
    pub fn balanced(choice: Choice, now: Instant, limits: &Limits) -> Dialer {
        let mut d = Dialer::new(choice.backend().clone(), now, limits);
        d.choice = Some(Box::new(choice));
        d
    }

    /// Before an attempt: after a pass over every replica failed, a new
    /// pick.
    pub(super) fn aim(&mut self, reach: &mut Reach) {
        let pick = self.choice.as_mut();
        if let Some(b) = pick.and_then(|c| c.attempt(&mut reach.balance, &reach.health)) {
            self.target = b.clone();
        }
    }

    /// A connect to a replica is under way: it has its share of the
    /// connect timeout (the timeout over the pool's size), so a replica
    /// whose connects hang (its address black-holed, its accept queue
    /// full) costs a connection part of the timeout, not all of it.
    pub(super) fn attempt_started(&mut self, now: Instant, limits: &Limits) {
        let gives_way = self.choice.as_ref().map(|c| {
            let share = limits.connect_timeout_ms / c.pool().len().max(1) as u64;
            Tick::from(now + Duration::from_millis(share))
        });
        self.attempt = Attempt::UnderWay { gives_way };
    }

    /// The attempt under way (if any) runs to the connect timeout: no
    /// replica to give way to any more.
    pub(super) fn no_giving_way(&mut self) {
        if let Attempt::UnderWay { .. } = self.attempt {
            self.attempt = Attempt::UnderWay { gives_way: None };
        }
    }

    /// The attempt in `socket` has not connected within its share: give
    /// way to the next replica (true; the socket is dropped and the next
    /// attempt is due now), or, with none left this pass, let it run to
    /// the connect timeout.
    pub(super) fn stalled(
        &mut self,
        reach: &mut Reach,
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
    ) -> bool {
        match self.attempt {
            Attempt::UnderWay { gives_way: Some(t) } if Tick::from(now) >= t => {
                self.no_giving_way()
            }
            _ => return false,
        }
        if ready || socket.is_none() {
            return false;
        }
        let e = io::Error::from_raw_os_error(nix::libc::ETIMEDOUT);
        if !self.fail_over(reach, now, &e) {
            return false;
        }
        *socket = None;
        true
    }

    /// The connect to `target` failed: the next replica this pass has not
    /// tried, at once. false: none left (or no replicas), go on as for
    /// one backend.
    pub(super) fn fail_over(&mut self, reach: &mut Reach, now: Instant, e: &io::Error) -> bool {
        let choice = self.choice.as_mut();
        let Some(next) = choice.and_then(|c| c.fail_over(&mut reach.balance, &reach.health)) else {
            return false;
        };
        // One failure of that replica for the health checks; one that is
        // busy is only passed over, as a check counts it only when busy
        // for its whole timeout (`is_busy`).
        if !is_busy(e) {
            reach.health.observe_failure(&self.target, e, false);
        }
        proto::debug!(
            "backend {} failed ({e}); trying replica {next}",
            self.target
        );
        self.target = next.clone();
        self.attempt = Attempt::Due(Tick::from(now));
        true
    }

    /// An update while connecting (hold): the route as the configuration
    /// has it now. With replicas the dialer keeps its choice while the
    /// route's pool is the same and takes a new one when it changed (a
    /// replica added, removed or moved); a route with one backend is
    /// [`Dialer::retarget`].
    pub fn retarget_route(&mut self, r: &Route, reach: &mut Reach, now: Instant) {
        match crate::balance::pool_of(r) {
            Some((pool, policy)) => {
                if self
                    .choice
                    .as_ref()
                    .is_some_and(|c| c.pool()[..] == pool[..])
                {
                    return;
                }
                self.rechoose(reach.choose(pool, policy), now);
            }
            None => self.retarget(&r.via.backend, now),
        }
    }

    /// Aim at a new choice among replicas (an update changed the pool), at
    /// once.
    pub fn rechoose(&mut self, c: Choice, now: Instant) {
        proto::debug!("replicas changed: dialling {} now", c.backend());
        self.target = c.backend().clone();
        self.choice = Some(Box::new(c));
        self.no_giving_way();
        self.wake(now);
    }

    /// The pool of the replicas this dialer chooses among, if any.
    pub fn pool(&self) -> Option<&std::rc::Rc<[Backend]>> {
        self.choice.as_ref().map(|c| c.pool())
    }

    /// The choice among replicas, once connected (http keeps it with its
    /// exchange).
    pub fn take_choice(&mut self) -> Option<Choice> {
        self.choice.take().map(|c| *c)
    }

    /// What counts this connection against its replica (least-conn), to
    /// keep until the connection closes.
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.choice.take().and_then(|c| c.into_lease())
    }
}
