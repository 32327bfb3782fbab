//! Deadlines for a single-threaded loop: a min-heap of (when, key). Entries
//! are never removed; a key carries a generation so the owner can tell a
//! stale entry from a live one when it fires.
//!
//! An entry is 16 bytes (a [`Tick`] and the key): every open connection
//! has one or two (its connect deadline, then its idle or linger one).

use crate::tick::Tick;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Tick, u64)>>,
}

impl Timers {
    pub fn new() -> Timers {
        Timers::default()
    }

    pub fn add(&mut self, at: Instant, key: u64) {
        self.heap.push(Reverse((Tick::from(at), key)));
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

    #[test]
    fn an_entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Reverse<(Tick, u64)>>(), 16);
    }
}
