//! The hold: the dialer's part of `hold.rs` (a child of `dialer.rs`, so it
//! reads the [`Dialer`]'s fields, which stay private there). A connection
//! whose backend is absent (refused, its socket missing, unreachable) or
//! marked down is held, retried at the hold's pace, until the hold
//! timeout, within the worker's `--max-held` and its route's share.

use super::super::reach::Reach;
use super::{Attempt, Call, Dial, Dialer, Hold};
use crate::hold::{self, Held, Outcome};
use proto::tick::Tick;
use std::time::{Duration, Instant};

impl Dialer {
    /// Whether the connection is held now.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Held: the next retry at the hold's pace, never past the hold's
    /// deadline. false: not held, or the hold is over.
    pub(super) fn retry_held(&mut self, now: Instant) -> bool {
        let Some(h) = self.held.as_mut() else {
            return false;
        };
        if now >= h.until {
            return false;
        }
        h.tries += 1;
        let at = (now + hold::retry_delay(h.tries)).min(h.until);
        self.attempt = Attempt::Due(Tick::from(at));
        true
    }

    /// Health checks say the backend is down: not dialled; held (waiting
    /// for a check to see it up, which wakes it) or the error at once.
    pub(super) fn down(&mut self, c: &mut Call) -> Dial {
        if self.held.is_some() {
            if self.retry_held(c.now) {
                return Dial::Wait;
            }
            // The hold is over (the connection's deadline is the hold's,
            // `hold`; this only guards a caller that skipped `expired`):
            // never a retry at a deadline already past.
        } else {
            match self.hold(c) {
                Hold::Held => return Dial::Wait,
                Hold::Gone => return Dial::Gone,
                Hold::No => {}
            }
        }
        let why = format!("backend {} is down (health checks)", self.target);
        Dial::Failed(self.end_hold(c.reach, c.now, why))
    }

    /// Start holding, if holding is on, the worker has room and the
    /// client is still there (asked of `net` only now: a client gone
    /// before its hold began never takes a slot).
    pub(super) fn hold(&mut self, c: &mut Call) -> Hold {
        let (now, limits, reach) = (c.now, c.limits, &mut *c.reach);
        if limits.hold_timeout_ms == 0 {
            return Hold::No;
        }
        let until = self.started.instant() + Duration::from_millis(limits.hold_timeout_ms);
        if now >= until {
            return Hold::No;
        }
        if c.net.client_gone() {
            proto::debug!(
                "backend {} unreachable and the client gone already: not holding",
                self.target
            );
            return Hold::Gone;
        }
        // Counted under the route's first backend (its share of
        // --max-held, `crate::hold`): a replica route's pool starts with it.
        let route_backend = self
            .choice
            .as_ref()
            .and_then(|c| c.pool().first())
            .unwrap_or(&self.target);
        let key = hold::share_key(route_backend);
        let share = match limits.held_share {
            0 => limits.max_held,
            n => n,
        };
        let Some(ticket) = reach.held.admit(limits.max_held, share, key, now) else {
            proto::info!(
                "backend {} unreachable and {} connection(s) held already ({} for its route; --max-held {}, {share} per route): not holding",
                self.target,
                reach.held.held(),
                reach.held.held_for(key),
                limits.max_held
            );
            return Hold::No;
        };
        proto::debug!(
            "backend {} unreachable: holding the connection for up to {} ms",
            self.target,
            until.saturating_duration_since(now).as_millis()
        );
        self.held = Some(Box::new(Held {
            until,
            tries: 1,
            ticket,
        }));
        // A held connection ends at the hold's deadline, whatever the
        // connect timeout (shorter or longer): the hold is the promise
        // made to the client, and the connect timeout bounds an attempt
        // that is not held. Every retry is armed before it (`min(until)`)
        // and `expired` ends the connection at it, so no retry is ever
        // armed at a time already past (issue 18: with the connect
        // deadline later than the hold's, a dial for a down backend
        // re-armed at the passed hold deadline for ever).
        self.give_up_at = Tick::from(until);
        let at = (now + hold::retry_delay(1)).min(until);
        self.attempt = Attempt::Due(Tick::from(at));
        Hold::Held
    }

    /// The hold (if any) ends in failure; `why` gains how long it waited.
    pub(super) fn end_hold(&mut self, reach: &mut Reach, now: Instant, why: String) -> String {
        match self.held.take() {
            Some(h) => {
                let waited = reach.held.release(h.ticket, now, Outcome::Failed);
                format!("{why}; held {} ms", waited.as_millis())
            }
            None => why,
        }
    }

    /// The hold (if any) ends with the backend reached.
    pub(super) fn end_hold_connected(&mut self, reach: &mut Reach, now: Instant) {
        if let Some(h) = self.held.take() {
            let waited = reach.held.release(h.ticket, now, Outcome::Connected);
            proto::debug!(
                "backend {} reached after holding {} ms",
                self.target,
                waited.as_millis()
            );
        }
    }
}
