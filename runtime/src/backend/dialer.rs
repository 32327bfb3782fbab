//! [`Dialer`]: one connection's way to its backend, a state machine over
//! the connect calls (`connect.rs`): retries, replicas (`balance.rs`), and
//! the hold while a provider comes back (`hold.rs`).

use super::connect::{busy_delay, connect, is_absent, is_busy, is_retryable, retry_delay};
use crate::balance::Choice;
use crate::hold::{Held, Outcome};
use crate::stream::Stream;
use proto::limits::Limits;
use proto::tick::Tick;
use proto::types::Backend;
use std::io;
use std::time::{Duration, Instant};

mod replicas;

/// What a [`Dialer`] does on the network: connect, and tell a connect
/// under way from one done. [`Real`] does it; a fuzz target or a test
/// plays a script instead ([`Dialer::step_on`]).
pub trait Net {
    /// Start connecting to `b` ([`connect`]).
    fn connect(&mut self, b: &Backend) -> io::Result<Stream>;
    /// The socket of an attempt reported: Ok(true) connected, Ok(false)
    /// still under way, Err the attempt failed ([`Stream::connect_done`]).
    fn done(&mut self, s: &Stream) -> io::Result<bool>;
    /// Asked when a hold would begin, and only then: whether the client
    /// the dial is for has gone already, so it is not held at all
    /// ([`Step::Gone`]). No for [`Real`]: a worker asks through
    /// [`Real`] with `hung_up` once its client reported a hang-up.
    fn client_gone(&mut self) -> bool {
        false
    }
}

/// The network itself. `hung_up`: the client the dial is for, when an
/// event said it hung up (FIN, reset or error) before its connection was
/// held, with `tunnel` as [`crate::hold::client_gone`] takes it: if a
/// hold begins, the client is asked first, and one that has gone is let
/// go ([`Step::Gone`]) rather than admitted into the book, where it
/// would keep a route's slot until its first held retry asked (issue 18,
/// item 5). None (a client that reported nothing): no syscall added to
/// the common path. One type for both, so the dialer's code is there
/// once in the executable (a second `Net` type doubled it: +13 KiB).
pub struct Real<'a> {
    pub hung_up: Option<(&'a Stream, bool)>,
}

impl Real<'_> {
    /// For a client that reported nothing.
    pub fn quiet() -> Real<'static> {
        Real { hung_up: None }
    }
}

impl Net for Real<'_> {
    #[inline]
    fn connect(&mut self, b: &Backend) -> io::Result<Stream> {
        connect(b)
    }

    #[inline]
    fn done(&mut self, s: &Stream) -> io::Result<bool> {
        s.connect_done()
    }

    fn client_gone(&mut self) -> bool {
        self.hung_up
            .is_some_and(|(client, tunnel)| crate::hold::client_gone(client, tunnel))
    }
}

/// One connection's way to its backend: connect, and on a refused
/// connect retry with [`retry_delay`] until the retry budget or the
/// connect timeout is spent; then, with `hold_timeout_ms`, hold the
/// connection (`crate::hold`): retry with [`crate::hold::retry_delay`],
/// and at once on [`Dialer::wake`], until the hold timeout.
///
/// ```text
/// poll() ─ due ─> connect ─ Ok ──> Socket(s): register, wait writable, established(s)
///                    └─ Err ──> failed(): retry later (Wait), hold (Wait), or give up (message)
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
    /// Replicas: an attempt still connecting then gives way to the next
    /// replica (see [`Dialer::stalled`]).
    attempt_until: Option<Tick>,
    attempt: u32,
    retry_at: Option<Tick>,
    give_up_at: Tick,
    /// The first attempt: a hold lasts until this + the hold timeout.
    started: Tick,
    /// Set while the connection is held (counted in `crate::hold`).
    held: Option<Box<Held>>,
}

/// What [`Dialer::poll`] asks of its caller.
#[derive(Debug)]
pub enum Dial {
    /// Nothing until [`Dialer::deadline`].
    Wait,
    /// A socket whose connect is under way: register it for writable,
    /// then ask [`Dialer::established`].
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

/// What [`Dialer::hold`] decided.
enum Hold {
    Held,
    /// Not held (holding off, the hold over, no room): the error.
    No,
    /// The client has gone: not held, no error owed.
    Gone,
}

impl Dialer {
    pub fn new(target: Backend, now: Instant, limits: &Limits) -> Dialer {
        Dialer {
            target,
            choice: None,
            attempt_until: None,
            attempt: 0,
            retry_at: Some(Tick::from(now)),
            give_up_at: Tick::from(now + Duration::from_millis(limits.connect_timeout_ms)),
            started: Tick::from(now),
            held: None,
        }
    }

    /// Connect now if an attempt is due. Returns [`Dial::Wait`] only with
    /// the next look in the future ([`Dialer::deadline`] after `now`): a
    /// failed attempt that leaves a retry due now (the next replica) is
    /// made here, at once, rather than left to a timer already due.
    pub fn poll(&mut self, now: Instant, limits: &Limits) -> Dial {
        self.poll_on(&mut Real::quiet(), now, limits)
    }

    fn poll_on(&mut self, net: &mut dyn Net, now: Instant, limits: &Limits) -> Dial {
        loop {
            if self.expired(now) {
                return Dial::Failed(self.end_hold(
                    now,
                    format!(
                        "backend {}: connect timed out after {} attempt(s)",
                        self.target, self.attempt
                    ),
                ));
            }
            if !self.retry_due(now) {
                return Dial::Wait;
            }
            self.retry_at = None;
            // Replicas: a new pick after a spent pass, or away from one down.
            self.aim();
            if crate::health::is_down(&self.target) {
                return self.down(net, now, limits);
            }
            let e = match net.connect(&self.target) {
                Ok(s) => {
                    self.attempt_started(now, limits);
                    return Dial::Socket(s);
                }
                Err(e) => e,
            };
            match self.failed_on(net, now, limits, &e) {
                // The next replica, due now: dial it in this call (one
                // pass over the pool at most: `fail_over` ends a pass).
                Dial::Wait if self.retry_due(now) => continue,
                d => return d,
            }
        }
    }

    /// Whether an attempt is due at `now`.
    fn retry_due(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| at <= Tick::from(now))
    }

    /// Health checks say the backend is down: not dialled; held (waiting
    /// for a check to see it up, which wakes it) or the error at once.
    fn down(&mut self, net: &mut dyn Net, now: Instant, limits: &Limits) -> Dial {
        if let Some(h) = self.held.as_mut() {
            if now >= h.until {
                // The hold is over (the connection's deadline is the hold's,
                // `hold`; this only guards a caller that skipped `expired`):
                // never a retry at a deadline already past.
                let why = format!("backend {} is down (health checks)", self.target);
                return Dial::Failed(self.end_hold(now, why));
            }
            h.tries += 1;
            self.retry_at = Some(Tick::from(
                (now + crate::hold::retry_delay(h.tries)).min(h.until),
            ));
            return Dial::Wait;
        }
        match self.hold(net, now, limits) {
            Hold::Held => return Dial::Wait,
            Hold::Gone => return Dial::Gone,
            Hold::No => {}
        }
        let why = format!("backend {} is down (health checks)", self.target);
        Dial::Failed(self.end_hold(now, why))
    }

    /// The socket from [`Dial::Socket`] became writable. Ok(true): connected.
    /// Ok(false): still in progress. Err: the attempt failed; call `failed`.
    pub fn established(&self, s: &Stream) -> io::Result<bool> {
        s.connect_done()
    }

    /// An attempt failed with `e`: schedule a retry (Wait), hold, or give up.
    pub fn failed(&mut self, now: Instant, limits: &Limits, e: &io::Error) -> Dial {
        self.failed_on(&mut Real::quiet(), now, limits, e)
    }

    fn failed_on(
        &mut self,
        net: &mut dyn Net,
        now: Instant,
        limits: &Limits,
        e: &io::Error,
    ) -> Dial {
        if self.fail_over(now, e) {
            return Dial::Wait;
        }
        self.attempt += 1;
        if let Some(h) = self.held.as_mut() {
            if is_absent(e) && now < h.until {
                h.tries += 1;
                self.retry_at = Some(Tick::from(
                    (now + crate::hold::retry_delay(h.tries)).min(h.until),
                ));
                return Dial::Wait;
            }
        } else {
            if is_busy(e) {
                if self.attempt == 1 {
                    proto::debug!(
                        "backend {} busy (listen queue full): trying again until the connect timeout",
                        self.target
                    );
                }
                // At the connect timeout, `step` ends it as a connect that
                // timed out: one failure for the health checks then.
                let at = Tick::from(now + busy_delay(self.attempt));
                self.retry_at = Some(at.min(self.give_up_at));
                return Dial::Wait;
            }
            if is_retryable(e) {
                if let Some(d) = retry_delay(self.attempt, limits.connect_retry_ms) {
                    if Tick::from(now + d) < self.give_up_at {
                        self.retry_at = Some(Tick::from(now + d));
                        return Dial::Wait;
                    }
                }
            }
            // The connection as a whole failed to connect: one failure for
            // the health checks (not one per retry).
            crate::health::observe_failure(&self.target, e, false);
            if is_absent(e) {
                match self.hold(net, now, limits) {
                    Hold::Held => return Dial::Wait,
                    Hold::Gone => return Dial::Gone,
                    Hold::No => {}
                }
            }
        }
        let why = format!(
            "backend {} unreachable: {e} (after {} attempt(s))",
            self.target, self.attempt
        );
        Dial::Failed(self.end_hold(now, why))
    }

    /// Start holding, if holding is on, the worker has room and the
    /// client is still there (asked of `net` only now: a client gone
    /// before its hold began never takes a slot).
    fn hold(&mut self, net: &mut dyn Net, now: Instant, limits: &Limits) -> Hold {
        if limits.hold_timeout_ms == 0 {
            return Hold::No;
        }
        let until = self.started.instant() + Duration::from_millis(limits.hold_timeout_ms);
        if now >= until {
            return Hold::No;
        }
        if net.client_gone() {
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
        let key = crate::hold::share_key(route_backend);
        let share = match limits.held_share {
            0 => limits.max_held,
            n => n,
        };
        if !crate::hold::admit(limits.max_held, share, key) {
            proto::info!(
                "backend {} unreachable and {} connection(s) held already ({} for its route; --max-held {}, {share} per route): not holding",
                self.target,
                crate::hold::held(),
                crate::hold::held_for(key),
                limits.max_held
            );
            return Hold::No;
        }
        proto::debug!(
            "backend {} unreachable: holding the connection for up to {} ms",
            self.target,
            until.saturating_duration_since(now).as_millis()
        );
        self.held = Some(Box::new(Held {
            since: now,
            until,
            tries: 1,
            key,
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
        self.retry_at = Some(Tick::from((now + crate::hold::retry_delay(1)).min(until)));
        Hold::Held
    }

    /// The hold (if any) ends in failure; `why` gains how long it waited.
    fn end_hold(&mut self, now: Instant, why: String) -> String {
        match self.held.take() {
            Some(h) => {
                let waited = now.saturating_duration_since(h.since);
                crate::hold::release(h.key, waited, Outcome::Failed);
                format!("{why}; held {} ms", waited.as_millis())
            }
            None => why,
        }
    }

    /// Whether the connection is held now.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// A backend may be back (route update, health check): retry now
    /// unless an attempt is in flight.
    pub fn wake(&mut self, now: Instant) {
        if self.retry_at.is_some() {
            self.retry_at = Some(Tick::from(now));
        }
    }

    /// The route now names `to` (an update moved the provider): later
    /// attempts go there, the next one at once.
    pub fn retarget(&mut self, to: &Backend, now: Instant) {
        // One backend now: no replicas to choose among any more.
        self.choice = None;
        self.attempt_until = None;
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
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
        limits: &Limits,
    ) -> Step {
        self.step_on(&mut Real::quiet(), socket, ready, now, limits)
    }

    /// [`Dialer::step`] on `net`'s connects (the fuzz target's script;
    /// [`Real`] otherwise). A `dyn Net`: the dialer is compiled once, in
    /// proto, whoever calls it (generic, worker-http's opt-level 3 built
    /// a second copy: +8 KiB of executable); one indirect call per
    /// connect costs nothing beside the syscall.
    pub fn step_on(
        &mut self,
        net: &mut dyn Net,
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
        limits: &Limits,
    ) -> Step {
        let step = self.step_once(net, socket, ready, now, limits);
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

    fn step_once(
        &mut self,
        net: &mut dyn Net,
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
        limits: &Limits,
    ) -> Step {
        // A stalled replica gave way: the next one is due now, dialled
        // below.
        self.stalled(socket, ready, now);
        let in_flight = socket.as_ref().filter(|_| ready);
        let Some(s) = in_flight else {
            if self.expired(now) {
                return self.give_up(socket.is_some(), now, limits);
            }
            if socket.is_some() {
                return Step::Wait;
            }
            return match self.poll_on(net, now, limits) {
                Dial::Wait => Step::Wait,
                Dial::Socket(s) => {
                    *socket = Some(s);
                    Step::Register
                }
                Dial::Failed(why) => Step::Failed(why),
                Dial::Gone => Step::Gone,
            };
        };
        match net.done(s) {
            // Still under way at the deadline: given up now, not left to
            // a timer already due.
            Ok(false) if self.expired(now) => self.give_up(true, now, limits),
            Ok(false) => Step::Pending,
            Ok(true) => self.connected(now),
            Err(e) => {
                *socket = None;
                match self.failed_on(net, now, limits, &e) {
                    Dial::Failed(why) => Step::Failed(why),
                    Dial::Gone => Step::Gone,
                    // The next replica, due now: dialled at once.
                    Dial::Wait if self.retry_due(now) => match self.poll_on(net, now, limits) {
                        Dial::Wait => Step::Wait,
                        Dial::Socket(s) => {
                            *socket = Some(s);
                            Step::Register
                        }
                        Dial::Failed(why) => Step::Failed(why),
                        Dial::Gone => Step::Gone,
                    },
                    _ => Step::Wait,
                }
            }
        }
    }

    /// The connection's deadline passed (`expired`): the connect timeout,
    /// or for a held one the hold's; `under_way`: an attempt was still
    /// connecting.
    fn give_up(&mut self, under_way: bool, now: Instant, limits: &Limits) -> Step {
        if !under_way && self.held.is_some() {
            // Held to the end with no attempt under way: the
            // backend stayed away (502), no connect timed out.
            let why = format!(
                "backend {} still unreachable at the hold timeout ({} ms, {} attempt(s))",
                self.target, limits.hold_timeout_ms, self.attempt
            );
            return Step::Failed(self.end_hold(now, why));
        }
        if self.held.is_none() {
            // A backend that never answers the SYN (its host gone,
            // its address black-holed, its accept queue full) is as
            // dead as one that refuses: one failure for the health
            // checks. A held connection counted its failure when
            // the hold began.
            let why = format!("not connected within {} ms", limits.connect_timeout_ms);
            crate::health::observe(&self.target, Err(why), false);
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
        Step::TimedOut(self.end_hold(now, why))
    }

    /// The attempt in flight has connected (found by [`Dialer::step`], or
    /// known by the caller from a clean writable event): the health table
    /// and the hold book learn it.
    pub fn connected(&mut self, now: Instant) -> Step {
        crate::health::observe(&self.target, Ok(()), false);
        if let Some(h) = self.held.take() {
            let waited = now.saturating_duration_since(h.since);
            proto::debug!(
                "backend {} reached after holding {} ms",
                self.target,
                waited.as_millis()
            );
            crate::hold::release(h.key, waited, Outcome::Connected);
        }
        Step::Connected
    }

    /// When the dialer next needs a look: the retry, or the give-up time.
    pub fn deadline(&self) -> Instant {
        let d = self
            .retry_at
            .map_or(self.give_up_at, |r| r.min(self.give_up_at));
        self.attempt_until.map_or(d, |a| a.min(d)).instant()
    }
}

impl Drop for Dialer {
    /// A connection that ends while held (client gone, drain) leaves the book.
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            crate::hold::release(h.key, h.since.elapsed(), Outcome::Closed);
        }
    }
}
