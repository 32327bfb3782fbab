//! The worker loop's deadline heap (proto `timer.rs`) against a plain
//! model (a Vec of entries), under sequences of adds, clock steps, passes
//! over the due entries (with handlers that re-arm, also at deadlines
//! already past), `timeout` and `shrink`.
//!
//! Invariants: a pass pops only entries due at its `now`, earliest first,
//! each once, and every entry that was due when the pass began; an entry
//! added during a pass is never popped in it (it goes after `now`: issue
//! 18's wedge); `timeout` is the wait until the earliest entry; `shrink`
//! keeps exactly the live ones; nothing is lost (all pop at the end).

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use proto::tick::Tick;
use proto::timer::{Timers, AFTER_PASS};
use std::time::{Duration, Instant};

struct Model {
    /// (when, key) of every entry in the heap; keys are unique.
    entries: Vec<(Tick, u64)>,
    next_key: u64,
}

impl Model {
    fn earliest(&self) -> Option<Tick> {
        self.entries.iter().map(|e| e.0).min()
    }

    fn take(&mut self, key: u64) -> (Tick, u64) {
        let i = self
            .entries
            .iter()
            .position(|e| e.1 == key)
            .unwrap_or_else(|| panic!("popped key {key} not in the heap (twice, or never added)"));
        self.entries.swap_remove(i)
    }
}

/// A time around `now`: up to 2 s before or 10 s after, at ms grain
/// plus a few ns (equal times are the interesting ones).
fn when(u: &mut Unstructured, now: Instant) -> Result<Instant> {
    let ms = u.int_in_range(0..=12_000u64)?;
    let ns = u.int_in_range(0..=3u64)?;
    Ok(now - Duration::from_secs(2) + Duration::from_millis(ms) + Duration::from_nanos(ns))
}

fn run(u: &mut Unstructured) -> Result<()> {
    let base = Instant::now();
    let mut now = base + Duration::from_secs(5);
    let mut t = Timers::new();
    let mut m = Model {
        entries: Vec::new(),
        next_key: 0,
    };
    let mut ops = 0;
    while !u.is_empty() && ops < 500 {
        ops += 1;
        match u.int_in_range(0..=5u8)? {
            0 => {
                let at = when(u, now)?;
                let k = m.next_key;
                m.next_key += 1;
                t.add(at, k);
                m.entries.push((Tick::from(at), k));
            }
            1 => {
                let step = u.int_in_range(0..=3_000u64)?;
                now +=
                    Duration::from_millis(step) + Duration::from_nanos(u.int_in_range(0..=1u64)?);
            }
            2 => {
                // A pass over what is due at `now`; some handlers re-arm.
                let due_before: Vec<u64> = m
                    .entries
                    .iter()
                    .filter(|e| e.0 <= Tick::from(now))
                    .map(|e| e.1)
                    .collect();
                let mut added: Vec<u64> = Vec::new();
                let mut popped: Vec<u64> = Vec::new();
                let mut last: Option<Tick> = None;
                t.begin_pass(now);
                while let Some(k) = t.pop_due(now) {
                    assert!(
                        !added.contains(&k),
                        "popped an entry added in the same pass"
                    );
                    let (at, _) = m.take(k);
                    assert!(at <= Tick::from(now), "popped before its time");
                    assert!(last.is_none_or(|l| l <= at), "popped out of order");
                    // What was added in the pass lies after `now`, so
                    // nothing left may come before what was popped.
                    assert!(
                        m.entries.iter().all(|e| e.0 >= at),
                        "an earlier entry was left in the heap"
                    );
                    last = Some(at);
                    popped.push(k);
                    assert!(
                        popped.len() <= due_before.len(),
                        "more pops than entries due"
                    );
                    if u.arbitrary::<bool>()? {
                        // Re-arm: anywhere around now, the past included.
                        let at = when(u, now)?;
                        let k = m.next_key;
                        m.next_key += 1;
                        t.add(at, k);
                        let expect = if Tick::from(at) <= Tick::from(now) {
                            Tick::from(now + AFTER_PASS)
                        } else {
                            Tick::from(at)
                        };
                        m.entries.push((expect, k));
                        added.push(k);
                    }
                }
                t.end_pass();
                popped.sort_unstable();
                let mut want = due_before;
                want.sort_unstable();
                assert_eq!(
                    popped, want,
                    "a pass pops exactly what was due when it began"
                );
                assert!(
                    m.entries.iter().all(|e| e.0 > Tick::from(now)),
                    "something due is left after the pass"
                );
            }
            3 => {
                let want = m
                    .earliest()
                    .map(|e| e.instant().saturating_duration_since(now));
                assert_eq!(t.timeout(now), want, "timeout");
            }
            4 => {
                let mask: u64 = u.arbitrary()?;
                let live = |k: u64| mask >> (k % 64) & 1 == 1;
                t.shrink(live);
                m.entries.retain(|e| live(e.1));
                assert_eq!(t.len(), m.entries.len(), "shrink");
            }
            _ => {
                assert_eq!(t.len(), m.entries.len(), "len");
                assert_eq!(t.is_empty(), m.entries.is_empty());
            }
        }
    }
    // Nothing lost: far in the future, everything pops, earliest first.
    let end = now + Duration::from_secs(3600);
    let mut last = None;
    while let Some(k) = t.pop_due(end) {
        let (at, _) = m.take(k);
        assert!(last.is_none_or(|l| l <= at), "final pops out of order");
        last = Some(at);
    }
    assert!(m.entries.is_empty(), "entries lost: {:?}", m.entries.len());
    assert!(t.is_empty());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
