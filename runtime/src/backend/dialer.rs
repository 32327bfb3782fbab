//! [`Dialer`]: one connection's way to its backend, a state machine over
//! the connect calls (`connect.rs`): retries, replicas (`balance.rs`,
//! `dialer/replicas.rs`), and the hold while a provider comes back
//! (`hold.rs`, `dialer/holding.rs`). What it changes beyond its own
//! connection (the health table, the hold book, the replicas' book) and
//! the provider roots it connects through come lent as a [`Reach`]; what
//! it does on the network goes through [`Net`] (`dialer/net.rs`).

use super::connect::{busy_delay, is_absent, is_busy, is_retryable, retry_delay};
use super::reach::Reach;
use crate::balance::Choice;
use crate::hold::Held;
use crate::stream::Stream;
use proto::limits::Limits;
use proto::tick::Tick;
use proto::types::Backend;
use std::io;
use std::time::{Duration, Instant};

mod holding;
mod net;
mod replicas;

pub use net::{Net, Real};

/// One connection's way to its backend: connect, and on a refused
/// connect retry with [`retry_delay`] until the retry budget or the
/// connect timeout is spent; then, with `hold_timeout_ms`, hold the
/// connection (`crate::hold`): retry with [`crate::hold::retry_delay`],
/// and at once on [`Dialer::wake`], until the hold timeout.
///
/// ```text
///           wake, retarget: due now
///               ┌──┐
///               v  │
/// new ──> Due(at) ─┴──(at: connect)──> UnderWay ──(writable: connected)──> Connected
///           ^   │ refused, absent          │ failed, or stalled past
///           │   │                          │ its replica's share
///           └───┴── a retry later, the ────┘
///                   next replica now, or
///                   held (the hold's pace)
/// expired; retries spent and not held; client gone ──> Over: Failed / TimedOut / Gone
/// ```
#[derive(Debug)]
pub struct Dialer {
    pub target: Backend,
    /// A route with replicas: the backend aimed at (`target`) among them,
    /// the next to try when it fails (`balance.rs`). None: one backend.
    /// Boxed, as `held`: most connections need neither, and every
    /// connection has a dialer while it connects (the memory a burst of
    /// new connections leaves in the heap).
    choice: Option<Box<Choice>>,
    /// Where the dial stands.
    attempt: Attempt,
    /// Attempts that failed so far.
    failures: u32,
    give_up_at: Tick,
    /// The first attempt: a hold lasts until this + the hold timeout.
    started: Tick,
    /// Set while the connection is held (its ticket in the hold book).
    held: Option<Box<Held>>,
}

/// Where a [`Dialer`] stands between two calls: 16 bytes, as the two
/// times it replaced.
#[derive(Debug, Clone, Copy)]
enum Attempt {
    /// The next attempt is due then (now, after a wake-up).
    Due(Tick),
    /// An attempt is under way: its socket is the caller's. With
    /// replicas it gives way to the next one at `gives_way` (see
    /// [`Dialer::stalled`]).
    UnderWay { gives_way: Option<Tick> },
    /// The dial ended without a connection: nothing more is tried.
    Over,
}

/// What one call into a [`Dialer`] works with, handed down its steps as
/// one: the network, the backends' side the loop lends, the time and the
/// limits.
struct Call<'a> {
    net: &'a mut dyn Net,
    reach: &'a mut Reach,
    now: Instant,
    limits: &'a Limits,
}

/// What [`Dialer::hold`] decided.
enum Hold {
    Held,
    /// Not held (holding off, the hold over, no room): the error.
    No,
    /// The client has gone: not held, no error owed.
    Gone,
}

/// What [`Dialer::poll`] asks of its caller.
#[derive(Debug)]
pub enum Dial {
    /// Nothing until [`Dialer::deadline`].
    Wait,
    /// A socket whose connect is under way: register it for writable,
    /// then step on.
    Socket(Stream),
    /// Give up; the text says why (for the log).
    Failed(String),
    /// The client went away before a hold began ([`Net::client_gone`]):
    /// not held; close it.
    Gone,
}

/// What [`Dialer::step`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until the socket reports or [`Dialer::deadline`].
    Wait,
    /// The socket reported but the connect is still under way: clear its
    /// readiness and wait again.
    Pending,
    /// A new socket is in the caller's slot: register it (writable).
    Register,
    /// Connected.
    Connected,
    /// Refused (or failed) beyond the retry budget and the hold: the text
    /// says why.
    Failed(String),
    /// The connect timeout passed.
    TimedOut(String),
    /// The connection would be held, and its client has gone already
    /// ([`Net::client_gone`]): not held, nothing counted; close it.
    Gone,
}

impl Dialer {
    pub fn new(target: Backend, now: Instant, limits: &Limits) -> Dialer {
        Dialer {
            target,
            choice: None,
            attempt: Attempt::Due(Tick::from(now)),
            failures: 0,
            give_up_at: Tick::from(now + Duration::from_millis(limits.connect_timeout_ms)),
            started: Tick::from(now),
            held: None,
        }
    }

    /// Connect now if an attempt is due. Returns [`Dial::Wait`] only with
    /// the next look in the future ([`Dialer::deadline`] after `now`): a
    /// failed attempt that leaves a retry due now (the next replica) is
    /// made here, at once, rather than left to a timer already due.
    pub fn poll(&mut self, reach: &mut Reach, now: Instant, limits: &Limits) -> Dial {
        let net = &mut Real::quiet();
        self.poll_on(&mut Call {
            net,
            reach,
            now,
            limits,
        })
    }

    fn poll_on(&mut self, c: &mut Call) -> Dial {
        loop {
            if self.expired(c.now) {
                let why = format!(
                    "backend {}: connect timed out after {} attempt(s)",
                    self.target, self.failures
                );
                return Dial::Failed(self.end_hold(c.reach, c.now, why));
            }
            if !self.retry_due(c.now) {
                return Dial::Wait;
            }
            // Nothing is due until this attempt says what comes next.
            self.attempt = Attempt::Over;
            // Replicas: a new pick after a spent pass, or away from one down.
            self.aim(c.reach);
            if c.reach.health.is_down(&self.target) {
                return self.down(c);
            }
            let e = match c.net.connect(&self.target, &c.reach.roots) {
                Ok(s) => {
                    self.attempt_started(c.now, c.limits);
                    return Dial::Socket(s);
                }
                Err(e) => e,
            };
            match self.failed_on(c, &e) {
                // The next replica, due now: dial it in this call (one
                // pass over the pool at most: `fail_over` ends a pass).
                Dial::Wait if self.retry_due(c.now) => continue,
                d => return d,
            }
        }
    }

    /// Whether an attempt is due at `now`.
    fn retry_due(&self, now: Instant) -> bool {
        matches!(self.attempt, Attempt::Due(at) if at <= Tick::from(now))
    }

    /// An attempt failed with `e`: schedule a retry (Wait), hold, or give up.
    fn failed_on(&mut self, c: &mut Call, e: &io::Error) -> Dial {
        let now = c.now;
        if self.fail_over(c.reach, now, e) {
            return Dial::Wait;
        }
        self.failures += 1;
        if self.held.is_some() {
            if is_absent(e) && self.retry_held(now) {
                return Dial::Wait;
            }
        } else {
            if is_busy(e) {
                if self.failures == 1 {
                    proto::debug!(
                        "backend {} busy (listen queue full): trying again until the connect timeout",
                        self.target
                    );
                }
                // At the connect timeout, `step` ends it as a connect that
                // timed out: one failure for the health checks then.
                let at = Tick::from(now + busy_delay(self.failures));
                self.attempt = Attempt::Due(at.min(self.give_up_at));
                return Dial::Wait;
            }
            if is_retryable(e) {
                if let Some(d) = retry_delay(self.failures, c.limits.connect_retry_ms) {
                    if Tick::from(now + d) < self.give_up_at {
                        self.attempt = Attempt::Due(Tick::from(now + d));
                        return Dial::Wait;
                    }
                }
            }
            // The connection as a whole failed to connect: one failure for
            // the health checks (not one per retry).
            c.reach.health.observe_failure(&self.target, e, false);
            if is_absent(e) {
                match self.hold(c) {
                    Hold::Held => return Dial::Wait,
                    Hold::Gone => return Dial::Gone,
                    Hold::No => {}
                }
            }
        }
        let why = format!(
            "backend {} unreachable: {e} (after {} attempt(s))",
            self.target, self.failures
        );
        Dial::Failed(self.end_hold(c.reach, now, why))
    }

    /// A backend may be back (route update, health check): retry now
    /// unless an attempt is in flight.
    pub fn wake(&mut self, now: Instant) {
        if let Attempt::Due(_) = self.attempt {
            self.attempt = Attempt::Due(Tick::from(now));
        }
    }

    /// The route now names `to` (an update moved the provider): later
    /// attempts go there, the next one at once.
    pub fn retarget(&mut self, to: &Backend, now: Instant) {
        // One backend now: no replicas to choose among any more.
        self.choice = None;
        self.no_giving_way();
        if &self.target != to {
            proto::debug!("backend {} moved to {to}: dialling there", self.target);
            self.target = to.clone();
            self.wake(now);
        }
    }

    /// The connect timeout has passed (also for a connect still in progress).
    pub fn expired(&self, now: Instant) -> bool {
        Tick::from(now) >= self.give_up_at
    }

    /// Drive the connect one step. `socket` is the attempt in flight (None:
    /// none); `ready` says its socket reported writable (or an error) since
    /// the last step. A new socket is put in `socket` ([`Step::Register`]);
    /// a failed one is taken out (closing it also takes it out of epoll).
    ///
    /// A step that does not end the dial ([`Step::Wait`], [`Step::Pending`],
    /// [`Step::Register`]) leaves [`Dialer::deadline`] after `now`: the
    /// caller's timer is never armed at a time already due.
    pub fn step(
        &mut self,
        reach: &mut Reach,
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
        limits: &Limits,
    ) -> Step {
        self.step_on(&mut Real::quiet(), reach, socket, ready, now, limits)
    }

    /// [`Dialer::step`] on `net`'s connects (the fuzz target's script;
    /// [`Real`] otherwise). A `dyn Net`: the dialer is compiled once, in
    /// runtime, whoever calls it (generic, worker-http's opt-level 3 built
    /// a second copy: +8 KiB of executable); one indirect call per
    /// connect costs nothing beside the syscall.
    pub fn step_on(
        &mut self,
        net: &mut dyn Net,
        reach: &mut Reach,
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
        limits: &Limits,
    ) -> Step {
        let c = &mut Call {
            net,
            reach,
            now,
            limits,
        };
        let step = self.step_once(c, socket, ready);
        debug_assert!(
            matches!(
                step,
                Step::Connected | Step::Failed(_) | Step::TimedOut(_) | Step::Gone
            ) || self.deadline() > now,
            "dialer for {} left {step:?} with its deadline {:?} not after now",
            self.target,
            now.saturating_duration_since(self.deadline())
        );
        step
    }

    fn step_once(&mut self, c: &mut Call, socket: &mut Option<Stream>, ready: bool) -> Step {
        // A stalled replica gave way: the next one is due now, dialled
        // below.
        self.stalled(c.reach, socket, ready, c.now);
        let in_flight = socket.as_ref().filter(|_| ready);
        let Some(s) = in_flight else {
            if self.expired(c.now) {
                return self.give_up(c, socket.is_some());
            }
            if socket.is_some() {
                return Step::Wait;
            }
            return self.dial(c, socket);
        };
        match c.net.done(s) {
            // Still under way at the deadline: given up now, not left to
            // a timer already due.
            Ok(false) if self.expired(c.now) => self.give_up(c, true),
            Ok(false) => Step::Pending,
            Ok(true) => self.connected(c.reach, c.now),
            Err(e) => {
                *socket = None;
                match self.failed_on(c, &e) {
                    Dial::Failed(why) => Step::Failed(why),
                    Dial::Gone => Step::Gone,
                    // The next replica, due now: dialled at once.
                    Dial::Wait if self.retry_due(c.now) => self.dial(c, socket),
                    _ => Step::Wait,
                }
            }
        }
    }

    /// [`Dialer::poll_on`] as a step: a new socket goes into `socket`.
    fn dial(&mut self, c: &mut Call, socket: &mut Option<Stream>) -> Step {
        match self.poll_on(c) {
            Dial::Wait => Step::Wait,
            Dial::Socket(s) => {
                *socket = Some(s);
                Step::Register
            }
            Dial::Failed(why) => Step::Failed(why),
            Dial::Gone => Step::Gone,
        }
    }

    /// The connection's deadline passed (`expired`): the connect timeout,
    /// or for a held one the hold's; `under_way`: an attempt was still
    /// connecting.
    fn give_up(&mut self, c: &mut Call, under_way: bool) -> Step {
        let (now, limits) = (c.now, c.limits);
        self.attempt = Attempt::Over;
        if !under_way && self.held.is_some() {
            // Held to the end with no attempt under way: the
            // backend stayed away (502), no connect timed out.
            let why = format!(
                "backend {} still unreachable at the hold timeout ({} ms, {} attempt(s))",
                self.target, limits.hold_timeout_ms, self.failures
            );
            return Step::Failed(self.end_hold(c.reach, now, why));
        }
        if self.held.is_none() {
            // A backend that never answers the SYN (its host gone,
            // its address black-holed, its accept queue full) is as
            // dead as one that refuses: one failure for the health
            // checks. A held connection counted its failure when
            // the hold began.
            let why = format!("not connected within {} ms", limits.connect_timeout_ms);
            c.reach.observe(&self.target, Err(why), false);
        }
        let why = if self.held.is_some() {
            format!(
                "backend {}: connect under way at the hold timeout ({} ms)",
                self.target, limits.hold_timeout_ms
            )
        } else {
            format!(
                "backend {}: connect timed out after {} ms",
                self.target, limits.connect_timeout_ms
            )
        };
        Step::TimedOut(self.end_hold(c.reach, now, why))
    }

    /// The attempt in flight has connected (found by [`Dialer::step`], or
    /// known by the caller from a clean writable event): the health table
    /// and the hold book learn it.
    pub fn connected(&mut self, reach: &mut Reach, now: Instant) -> Step {
        reach.observe(&self.target, Ok(()), false);
        self.end_hold_connected(reach, now);
        Step::Connected
    }

    /// When the dialer next needs a look: the retry, or the give-up time.
    pub fn deadline(&self) -> Instant {
        match self.attempt {
            Attempt::Due(at) => at.min(self.give_up_at),
            Attempt::UnderWay {
                gives_way: Some(at),
            } => at.min(self.give_up_at),
            Attempt::UnderWay { gives_way: None } | Attempt::Over => self.give_up_at,
        }
        .instant()
    }
}
