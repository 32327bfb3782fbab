//! [`Reach`]: what reaching backends takes beyond one connection, in one
//! place: the provider roots, the health table, the book of held
//! connections and the replicas' book. The worker loop owns it and lends
//! it (`Cx::reach`) to each call that dials, picks or checks, so a reader
//! follows every change of it from the loop down to where it acts.

use super::roots::Roots;
use crate::balance::{self, Choice};
use crate::{health, hold};
use proto::types::{Backend, Policy};
use std::rc::Rc;

/// The backends' side of a worker (see the module docs).
#[derive(Debug, Default)]
pub struct Reach {
    /// The provider roots unix backends in containers are reached through.
    pub roots: Roots,
    /// Each checked backend, up or down.
    pub health: health::Table,
    /// Connections held while their provider comes back (`--max-held`,
    /// and the wake-up the loop acts on).
    pub held: hold::Book,
    /// Connections open per replica, round-robin turns.
    pub balance: balance::Book,
}

impl Reach {
    pub fn new(roots: Roots) -> Reach {
        Reach {
            roots,
            ..Reach::default()
        }
    }

    /// One outcome for `b` (a check, or a real connection) to the health
    /// table; a backend back up wakes every held connection.
    pub fn observe(&mut self, b: &Backend, outcome: Result<(), String>, check: bool) {
        if self.health.observe(b, outcome, check) {
            self.held.wake_all();
        }
    }

    /// A backend of `pool` for a new connection, by `policy`.
    pub fn choose(&mut self, pool: Rc<[Backend]>, policy: Policy) -> Choice {
        Choice::new(pool, policy, &mut self.balance, &self.health)
    }
}
