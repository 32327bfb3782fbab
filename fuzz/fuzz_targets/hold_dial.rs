//! The dial and hold state machine (runtime `backend.rs` `Dialer`, the
//! book of `hold.rs`, the health table's down marks, lent as a `Reach`
//! as the worker loop lends them) on a scripted
//! network (`backend::Net`: no real connect), under sequences of clock
//! steps, timer firings, connect outcomes (refused, socket missing,
//! unreachable, denied, under way then connected, failed or never done),
//! health checks marking backends down and up (which wakes held
//! dials), wake-ups, retargets and clients that go away (held, or
//! before a hold began: `Net::client_gone`); limits drawn
//! within their documented ranges (`--connect-timeout` 10ms–24h,
//! `--hold-timeout` 0 or 10ms–24h, `--max-held` 0–1000000 and its share
//! per route).
//!
//! Invariants: a dial that does not end leaves its deadline after now
//! (never a timer re-armed at or before the time it fired: issue 18's
//! wedge); it never lives past the later of its connect and hold
//! deadlines, and a held one never past its hold deadline; the hold
//! book counts exactly the dials held now, within `--max-held` and each
//! route's share; and it is back to zero when every dial is gone.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use proto::limits::Limits;
use proto::types::{Backend, Policy};
use runtime::backend::{Dialer, Net, Reach, Roots, Step};
use runtime::balance::Choice;
use runtime::hold;
use runtime::stream::Stream;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
enum Connect {
    Refused,
    Missing,
    Unreachable,
    /// Not a reason to hold (EACCES).
    Denied,
    /// Under way: a socket to wait on.
    Started,
}

/// The network as the script says (refused when it says nothing).
#[derive(Default)]
struct Script {
    connects: VecDeque<Connect>,
    /// What an attempt under way says when its socket reports.
    dones: VecDeque<io::Result<bool>>,
    /// Whether the client is gone when a hold would begin.
    gone: bool,
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

impl Net for Script {
    fn connect(&mut self, _: &Backend, _: &Roots) -> io::Result<Stream> {
        use nix::libc::*;
        match self.connects.pop_front().unwrap_or(Connect::Refused) {
            Connect::Refused => Err(err(ECONNREFUSED)),
            Connect::Missing => Err(err(ENOENT)),
            Connect::Unreachable => Err(err(EHOSTUNREACH)),
            Connect::Denied => Err(err(EACCES)),
            // Any socket will do: the script, not the socket, says how
            // the attempt goes.
            Connect::Started => mio::net::UnixStream::pair().map(|(a, _)| Stream::Unix(a)),
        }
    }

    fn done(&mut self, _: &Stream) -> io::Result<bool> {
        self.dones.pop_front().unwrap_or(Ok(false))
    }

    fn client_gone(&mut self) -> bool {
        self.gone
    }
}

struct Slot {
    d: Dialer,
    socket: Option<Stream>,
    start: Instant,
}

fn backend(i: usize) -> Backend {
    Backend::Tcp(format!("127.0.0.1:{}", 1001 + i).parse().expect("address"))
}

/// A duration in `lo..=hi` ms: often one of a few telling values, else
/// anywhere in the range.
fn ms(u: &mut Unstructured, lo: u64, hi: u64) -> Result<u64> {
    const TELLING: [u64; 8] = [10, 25, 100, 375, 500, 1_000, 2_000, 10_000];
    if u.arbitrary::<bool>()? {
        Ok(TELLING[u.choose_index(TELLING.len())?].clamp(lo, hi))
    } else {
        u.int_in_range(lo..=hi)
    }
}

const DAY_MS: u64 = 24 * 3600 * 1000;

struct World<'a> {
    now: Instant,
    limits: Limits,
    net: Script,
    /// What the worker loop owns and lends the dialers.
    reach: &'a mut Reach,
    slots: Vec<Option<Slot>>,
    /// The route of each first backend's share key: backends 0, 1, and
    /// the replica pool [2, 0] (counted under 2).
    keys: [u64; 3],
    pool: Rc<[Backend]>,
}

impl World<'_> {
    /// The latest a dial started at `start` may live: its connect
    /// deadline, or its hold's when that is later.
    fn bound(&self, start: Instant) -> Instant {
        start
            + Duration::from_millis(
                self.limits
                    .connect_timeout_ms
                    .max(self.limits.hold_timeout_ms),
            )
    }

    fn hold_end(&self, start: Instant) -> Instant {
        start + Duration::from_millis(self.limits.hold_timeout_ms)
    }

    /// Step slot `i` as a worker does; drop it when it ends.
    fn step(&mut self, i: usize, ready: bool) {
        let now = self.now;
        let bound_at = self.slots[i].as_ref().map(|s| self.bound(s.start));
        let hold_end = self.slots[i].as_ref().map(|s| self.hold_end(s.start));
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        let held = s.d.is_held();
        let ready = ready && s.socket.is_some();
        let step = s.d.step_on(
            &mut self.net,
            &mut self.reach,
            &mut s.socket,
            ready,
            now,
            &self.limits,
        );
        let ended = matches!(
            step,
            Step::Connected | Step::Failed(_) | Step::TimedOut(_) | Step::Gone
        );
        assert!(
            !matches!(step, Step::Gone) || (self.net.gone && !s.d.is_held()),
            "let go as gone: the script said so, and not held"
        );
        if let Some(b) = bound_at {
            assert!(ended || now < b, "alive past the later deadline: {step:?}");
        }
        if let Some(h) = hold_end {
            assert!(
                ended || !held || now < h,
                "held past the hold deadline: {step:?}"
            );
        }
        if ended {
            self.slots[i] = None;
        } else {
            assert!(
                s.d.deadline() > now,
                "{step:?} left its deadline not after now"
            );
        }
    }

    fn check(&self) {
        let held = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.d.is_held())
            .count() as u64;
        let book = &self.reach.held;
        assert_eq!(book.held(), held, "the book counts the dials held");
        assert!(held <= self.limits.max_held as u64, "over --max-held");
        let share = match self.limits.held_share {
            0 => self.limits.max_held,
            n => n,
        };
        for k in self.keys {
            assert!(book.held_for(k) <= share as u64, "over a route's share");
        }
        for s in self.slots.iter().flatten() {
            // (Due or past due is fine here: the clock may have moved
            // since; `step` checks the deadline it leaves.)
            let dl = s.d.deadline();
            assert!(dl <= self.bound(s.start), "a deadline past the dial's end");
            if s.d.is_held() {
                assert!(
                    dl <= self.hold_end(s.start),
                    "a held deadline past the hold's end"
                );
            }
        }
    }

    /// What the loop does once a turn: a health check saw a backend back
    /// (the hold book's wake-up): every dial still connecting retries now.
    fn wakes(&mut self, forced: bool) {
        if self.reach.held.take_wake() || forced {
            for i in 0..self.slots.len() {
                if let Some(s) = self.slots[i].as_mut() {
                    s.d.wake(self.now);
                    self.step(i, false);
                }
            }
        }
    }
}

/// Plays the script; `reach` is the worker's, kept by the caller to check
/// once every dial is gone.
fn run(u: &mut Unstructured, reach: &mut Reach) -> Result<()> {
    let hold_timeout_ms = if u.arbitrary::<bool>()? {
        0
    } else {
        ms(u, 10, DAY_MS)?
    };
    let max_held = if u.arbitrary::<bool>()? {
        u.int_in_range(0..=4usize)?
    } else {
        1_000_000
    };
    let limits = Limits {
        connect_timeout_ms: ms(u, 10, DAY_MS)?,
        hold_timeout_ms,
        max_held,
        // As `hold::fit` sets it for three routes, or unset.
        held_share: if u.arbitrary::<bool>()? {
            hold::share(max_held, 3)
        } else {
            0
        },
        health_fall: u.int_in_range(1..=3)?,
        health_rise: u.int_in_range(1..=3)?,
        ..Limits::default()
    };
    let backends: Vec<Backend> = (0..3).map(backend).collect();
    reach.health.track(&backends, &limits);
    let pool: Rc<[Backend]> = vec![backends[2].clone(), backends[0].clone()].into();
    let mut w = World {
        now: Instant::now(),
        keys: [0, 1, 2].map(|i| hold::share_key(&backends[i])),
        limits,
        net: Script::default(),
        reach,
        slots: (0..4).map(|_| None).collect(),
        pool,
    };
    let mut ops = 0;
    while !u.is_empty() && ops < 400 {
        ops += 1;
        let n = w.slots.len();
        match u.int_in_range(0..=9u8)? {
            0 => {
                let Some(i) = w.slots.iter().position(|s| s.is_none()) else {
                    continue;
                };
                let d = match u.int_in_range(0..=2u8)? {
                    0 => Dialer::new(backends[0].clone(), w.now, &w.limits),
                    1 => Dialer::new(backends[1].clone(), w.now, &w.limits),
                    _ => {
                        let i = u.int_in_range(0..=1)?;
                        let c =
                            Choice::at(w.pool.clone(), Policy::RoundRobin, i, &mut w.reach.balance);
                        Dialer::balanced(c, w.now, &w.limits)
                    }
                };
                w.slots[i] = Some(Slot {
                    d,
                    socket: None,
                    start: w.now,
                });
                w.step(i, false);
            }
            1 => {
                let i = u.choose_index(n)?;
                let ready = u.arbitrary()?;
                w.step(i, ready);
            }
            2 => w.now += Duration::from_millis(ms(u, 0, 3_000)?),
            3 => {
                // The timer: the clock jumps to the earliest deadline (or
                // a little past it) and every dial due is stepped.
                let Some(next) = w.slots.iter().flatten().map(|s| s.d.deadline()).min() else {
                    continue;
                };
                let late = Duration::from_millis(u.int_in_range(0..=2u64)?);
                w.now = w.now.max(next + late);
                for i in 0..n {
                    if w.slots[i].as_ref().is_some_and(|s| s.d.deadline() <= w.now) {
                        w.step(i, false);
                    }
                }
            }
            4 => {
                let b = &backends[u.choose_index(3)?];
                let ok = u.arbitrary::<bool>()?;
                let outcome = if ok { Ok(()) } else { Err("check".to_string()) };
                w.reach.observe(b, outcome, true);
                w.wakes(false);
            }
            5 => w.wakes(true),
            6 => {
                let i = u.choose_index(n)?;
                let to = &backends[u.choose_index(3)?];
                let now = w.now;
                if let Some(s) = w.slots[i].as_mut() {
                    s.d.retarget(to, now);
                    w.step(i, false);
                }
            }
            7 => {
                let i = u.choose_index(n)?;
                w.slots[i] = None;
            }
            8 => {
                let c = match u.int_in_range(0..=5u8)? {
                    0 => Connect::Refused,
                    1 => Connect::Missing,
                    2 => Connect::Unreachable,
                    3 => Connect::Denied,
                    4 => Connect::Started,
                    _ => {
                        // Clients from now on gone (or back) when a hold
                        // would begin: never admitted then.
                        w.net.gone = !w.net.gone;
                        continue;
                    }
                };
                if w.net.connects.len() < 64 {
                    w.net.connects.push_back(c);
                }
            }
            _ => {
                use nix::libc::*;
                let d = match u.int_in_range(0..=4u8)? {
                    0 => Ok(true),
                    1 => Ok(false),
                    2 => Err(err(ECONNREFUSED)),
                    3 => Err(err(ETIMEDOUT)),
                    _ => Err(err(EHOSTUNREACH)),
                };
                if w.net.dones.len() < 64 {
                    w.net.dones.push_back(d);
                }
            }
        }
        w.check();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut reach = Reach::default();
    let _ = run(&mut Unstructured::new(data), &mut reach);
    // Every dial is gone: nothing is held any more, whatever happened.
    let book = &reach.held;
    assert_eq!(book.held(), 0, "the hold book did not return to zero");
});
