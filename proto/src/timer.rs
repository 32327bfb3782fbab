//! Deadlines for a single-threaded loop: a min-heap of (when, key). Entries
//! are never removed; a key carries a generation so the owner can tell a
//! stale entry from a live one when it fires.
//!
//! An entry is 16 bytes (a [`Tick`] and the key): every open connection
//! has one or two (its connect deadline, then its idle or linger one).
//!
//! Time never runs backwards in a pass over the due entries: the loop pops
//! them with one fixed `now`, so an entry added during the pass at or
//! before that `now` would be popped again in the same pass, and a handler
//! that re-arms at a deadline already past would never let the loop go
//! (issue 18: a held dial re-armed at its passed hold deadline, 100 % CPU
//! with no syscall). Between [`Timers::begin_pass`] and
//! [`Timers::end_pass`] such an entry is moved to just after the pass's
//! `now` ([`AFTER_PASS`]): each pass pops only entries that were there
//! before it, and a handler that keeps re-arming costs a wake-up per
//! millisecond, not the worker.

use crate::tick::Tick;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How far after a pass's `now` an entry added during the pass at or
/// before it is put: the poll's resolution (mio rounds a timeout up to
/// whole milliseconds), so the next pass is a poll away, never this one.
pub const AFTER_PASS: Duration = Duration::from_millis(1);

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Tick, u64)>>,
    /// The `now` of the pass over due entries under way, if one is.
    pass: Option<Tick>,
}

impl Timers {
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Call `key` back at `at`; during a pass, never at or before the
    /// pass's `now` (see the module's notes).
    pub fn add(&mut self, at: Instant, key: u64) {
        let mut at = Tick::from(at);
        if let Some(now) = self.pass {
            if at <= now {
                at = Tick::from(now.instant() + AFTER_PASS);
            }
        }
        self.heap.push(Reverse((at, key)));
    }

    /// A pass over the entries due at `now` begins: until
    /// [`Timers::end_pass`], entries added at or before `now` go after it.
    pub fn begin_pass(&mut self, now: Instant) {
        self.pass = Some(Tick::from(now));
    }

    pub fn end_pass(&mut self) {
        self.pass = None;
    }

    /// Whether an entry at `at` would be due in the pass under way (a
    /// handler re-arming a deadline already past: see `Cx::wake`).
    pub fn due_in_pass(&self, at: Instant) -> bool {
        self.pass.is_some_and(|now| Tick::from(at) <= now)
    }

    /// How long `poll` may sleep: until the earliest deadline, or for ever.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _))| at.instant().saturating_duration_since(now))
    }

    /// Pop one entry that is due.
    pub fn pop_due(&mut self, now: Instant) -> Option<u64> {
        let now = Tick::from(now);
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }

    /// Drop the entries `live` says are stale and give back the room a
    /// burst took (entries otherwise stay until they fire).
    pub fn shrink(&mut self, live: impl Fn(u64) -> bool) {
        self.heap.retain(|Reverse((_, k))| live(*k));
        self.heap.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order_only_when_due() {
        let mut t = Timers::new();
        let now = Instant::now();
        t.add(now + Duration::from_millis(20), 2);
        t.add(now + Duration::from_millis(10), 1);
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.timeout(now), Some(Duration::from_millis(10)));
        let later = now + Duration::from_millis(30);
        assert_eq!(t.pop_due(later), Some(1));
        assert_eq!(t.pop_due(later), Some(2));
        assert_eq!(t.pop_due(later), None);
    }

    /// An entry added during a pass at or before its `now` is not popped
    /// in that pass (the wedge of issue 18), but in the next one.
    #[test]
    fn a_pass_never_pops_what_it_added_at_or_before_now() {
        let mut t = Timers::new();
        let now = Instant::now();
        t.add(now, 1);
        t.begin_pass(now);
        assert!(t.due_in_pass(now) && !t.due_in_pass(now + AFTER_PASS));
        let mut popped = Vec::new();
        while let Some(k) = t.pop_due(now) {
            popped.push(k);
            if popped.len() > 3 {
                break;
            }
            // A handler that re-arms at the deadline that just passed.
            t.add(now, k);
        }
        t.end_pass();
        assert_eq!(popped, vec![1]);
        assert_eq!(t.timeout(now), Some(AFTER_PASS));
        assert_eq!(t.pop_due(now + AFTER_PASS), Some(1));
        // Outside a pass a deadline already past is due at once.
        t.add(now, 2);
        assert_eq!(t.pop_due(now), Some(2));
    }

    #[test]
    fn an_entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Reverse<(Tick, u64)>>(), 16);
    }
}
