//! The one event loop of every worker (tcp, unix, http): a mio poll over
//! the listener, the control socket and the worker's own sockets, plus a
//! deadline heap. The loop owns what all workers share — accepting
//! (`accept.rs`), control messages (init, update, drain, ack), the drain
//! deadline, stats reports, giving memory back after a burst, the exit —
//! and hands everything else to the worker's [`Handler`]: its connections.
//! tcp and unix plug in `conns::Conns` (one client, one backend each); the
//! http worker its client connections and backend pool.
//!
//! The loop owns what the handlers change beyond their connections and
//! lends it with every call ([`Cx`]): the backends' side
//! ([`crate::backend::Reach`]: provider roots, health table, hold book,
//! replicas' book) and the data path's [`crate::stock::Stock`] (the relay
//! pipes, sized by `--pipe-size` from Init and every Update, copy
//! buffers, a scratch area, the count of fds in flight). A wake-up for held
//! connections (a backend back up) is a flag in the hold book the loop
//! acts on once a turn; nothing reaches around the loop.
//!
//! Tokens: 0 = listener, 1 = control socket; every other token is the
//! handler's. Timer keys: at or above [`LOOP_KEYS`] the loop's; below, the
//! handler's.
//!
//! One meaning of update and drain for every kind (what a client sees:
//! README, "What a reconfiguration touches"; `tests/control.rs` checks
//! every kind alike):
//! - Update: a config for another endpoint (kind, listen address or
//!   consumer differ; the supervisor starts a new worker for those) is
//!   refused with an error ack, as is one the handler refuses; the worker
//!   keeps what it had, provider roots included. An applied one reaches
//!   new connections; open ones keep their routes.
//! - Drain: accept what is queued, close the listener, let the handler
//!   finish its connections, each at its own end (a tcp or unix relay once
//!   both sides closed, an http connection at its next request boundary),
//!   exit when none is left or at the deadline, where the handler's `cut`
//!   has the last word (http answers `503` to a request that reached no
//!   backend). A later drain only brings the deadline forward.

use crate::accept::Acceptor;
use crate::backend::{Reach, Roots};
use crate::ledger::Ledger;
use crate::prober::{self, Checker};
use crate::stock::Stock;
use crate::stream::Listener;
use crate::worker::{Started, WorkerCtl};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use proto::ctl::{Stats, WorkerConfig};
use proto::timer::Timers;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

mod handler;
pub use handler::{Cx, Handler};

const LISTENER: Token = Token(0);
const CTL: Token = Token(1);
/// The health checker's own epoll fd (`crate::health`): the one token
/// besides 0 and 1 that is the loop's (no handler's token comes near it).
pub const HEALTH: Token = Token(usize::MAX - 1);
/// Timer keys from here up are the loop's own.
pub const LOOP_KEYS: u64 = u64::MAX - 4;
/// Accepting paused (out of fds) until then.
const KEY_ACCEPT: u64 = u64::MAX;
const KEY_DRAIN: u64 = u64::MAX - 1;
/// Wake up to give memory back after a burst (`mem::AfterBurst`).
const KEY_SHRINK: u64 = u64::MAX - 2;
/// The health checker's next check or check timeout.
const KEY_HEALTH: u64 = u64::MAX - 3;
/// Spare relay pipes close once none has been in use for a while
/// (`Pipes::after_turn`, `Pipes::due`).
const KEY_PIPES: u64 = u64::MAX - 4;

/// Start-up, the loop, and the exit status: a worker's whole `main`.
/// `kind` names it in logs (`pvx-worker-<kind>`).
pub fn main<H: Handler>(kind: &str) -> ! {
    let started = match crate::worker::start(kind) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let ep = &started.config.endpoint;
    proto::info!(
        "serving {} endpoint {} for {} with {} route(s)",
        ep.kind,
        ep.key,
        ep.consumer,
        ep.routes.len()
    );
    let worker = match Loop::<H>::new(started) {
        Ok(w) => w,
        Err(e) => {
            proto::error!("cannot start event loop: {e}");
            std::process::exit(1);
        }
    };
    proto::mem::trim_code();
    std::process::exit(worker.run())
}

pub struct Loop<H> {
    poll: Poll,
    acceptor: Acceptor,
    ctl: WorkerCtl,
    config: WorkerConfig,
    timers: Timers,
    stats: Stats,
    drain_until: Option<Instant>,
    after_burst: proto::mem::AfterBurst,
    /// Poll rounds so far, wrapping (`Cx::round`).
    round: NonZeroU32,
    /// L4 health checks of the routes' backends (None: `--health-interval 0`).
    checker: Option<Checker>,
    /// Lent to the handler (`Cx`): the backends' side.
    reach: Reach,
    /// Lent to the handler: the data path's stock.
    stock: Stock,
    /// Lent to the handler: access lines and per-route counters.
    ledger: Ledger,
    handler: H,
}

/// A [`Cx`] from the loop's fields, leaving `acceptor`, `ctl` and
/// `handler` free to borrow beside it.
macro_rules! cx {
    ($l:expr, $now:expr) => {
        $crate::event_loop::Cx {
            now: $now,
            registry: $l.poll.registry(),
            stats: &mut $l.stats,
            config: &$l.config,
            draining: $l.drain_until.is_some(),
            round: $l.round,
            reach: &mut $l.reach,
            stock: &mut $l.stock,
            ledger: &mut $l.ledger,
            timers: &mut $l.timers,
        }
    };
}

// After `cx!`, which it uses.
mod control;

/// What the loop lends its handler as Init has it (the backends' side,
/// the data path's stock), and the checks that fill the health table: the
/// same for every kind of worker, so compiled once, not per handler.
#[inline(never)]
fn lent(
    config: &WorkerConfig,
    roots: Roots,
    poll: &Poll,
) -> io::Result<(Option<Checker>, Reach, Stock, Ledger)> {
    let mut reach = Reach::new(roots);
    let backends = prober::backends_of(&config.endpoint.routes);
    let limits = &config.limits;
    let checker = Checker::new(limits, &backends, Instant::now(), &mut reach.health)?;
    if let Some(h) = &checker {
        poll.registry()
            .register(&mut SourceFd(&h.fd()), HEALTH, Interest::READABLE)?;
    }
    let mut stock = Stock::default();
    stock.pipes.resize(limits.pipe_size);
    Ok((checker, reach, stock, Ledger::new(config)))
}

impl<H: Handler> Loop<H> {
    pub fn new(mut s: Started) -> io::Result<Loop<H>> {
        crate::hold::fit(&mut s.config);
        let poll = Poll::new()?;
        let listener = Listener::from_fd(s.listener)?;
        let acceptor = Acceptor::new(
            listener,
            poll.registry(),
            LISTENER,
            s.config.limits.max_conns,
        )?;
        poll.registry().register(
            &mut SourceFd(&s.ctl.as_fd().as_raw_fd()),
            CTL,
            Interest::READABLE,
        )?;
        let (checker, reach, stock, ledger) = lent(&s.config, s.roots, &poll)?;
        Ok(Loop {
            poll,
            acceptor,
            ctl: s.ctl,
            handler: H::new(&s.config),
            config: s.config,
            timers: Timers::new(),
            stats: Stats::default(),
            drain_until: None,
            after_burst: proto::mem::AfterBurst::default(),
            round: NonZeroU32::MIN,
            checker,
            reach,
            stock,
            ledger,
        })
    }

    /// Run until the supervisor goes away or a drain completes; returns the
    /// process's exit status.
    pub fn run(mut self) -> i32 {
        let mut events = Events::with_capacity(256);
        let mut stats_wait: Option<Duration> = None;
        // An idle worker still wakes (health checks, stats, updates) and
        // maps code back each time; dropped again once quiet (README,
        // "Measured": idle PSS). Never while it serves.
        let mut idle = proto::mem::IdleTrim::default();
        let mut seen_total = self.stats.total;
        loop {
            let now = Instant::now();
            if let Some(at) = self.checker.as_mut().and_then(|h| h.arm()) {
                self.timers.add(at, KEY_HEALTH);
            }
            let timeout = match (self.timers.timeout(now), stats_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let quiet = self.handler.active() == 0 && self.stats.total == seen_total;
            seen_total = self.stats.total;
            let timeout = if quiet {
                idle.before_wait(now, timeout)
            } else {
                idle.busy();
                timeout
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                proto::error!("epoll_wait: {e}");
                return 1;
            }
            let now = Instant::now();
            self.round = self.round.checked_add(1).unwrap_or(NonZeroU32::MIN);
            // New clients are taken after the whole batch, never in its
            // middle: a client token is a slot's, a connection closed
            // earlier in the batch frees its slot, and the rest of the
            // batch may still hold that old connection's events (its FIN):
            // given to a client accepted meanwhile, they would mark it hung
            // up, and its relay would take a short read for its last (an
            // upload cut, seen in the ARM smoke's kill checks).
            let mut clients_waiting = false;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => clients_waiting = true,
                    CTL => {
                        if let Some(code) = self.control(now) {
                            return code;
                        }
                    }
                    HEALTH => {
                        if let Some(h) = self.checker.as_mut() {
                            h.on_ready(&mut self.reach);
                        }
                    }
                    t => self.handler.event(&mut cx!(self, now), t, ev),
                }
            }
            if clients_waiting {
                self.accept(now, false);
            }
            // One pass over what is due at `now`: what the handlers arm
            // meanwhile is never due in it (`Timers::begin_pass`), so the
            // pass ends however they re-arm. Accepting (its pause over)
            // waits for the pass's end like the listener's events do.
            self.timers.begin_pass(now);
            let mut accept_due = false;
            while let Some(k) = self.timers.pop_due(now) {
                match k {
                    KEY_ACCEPT => accept_due = true,
                    KEY_DRAIN | KEY_SHRINK => {}
                    KEY_PIPES => self.stock.pipes.due(now),
                    KEY_HEALTH => {
                        if let Some(h) = self.checker.as_mut() {
                            h.on_time(now, &mut self.reach);
                        }
                    }
                    k => self.handler.timer(&mut cx!(self, now), k),
                }
            }
            self.timers.end_pass();
            if accept_due {
                self.accept(now, false);
            }
            // A backend came back up (a check, a real connection): every
            // held connection retries now.
            if self.reach.held.take_wake() {
                self.handler.wake(&mut cx!(self, now));
            }
            self.handler.turn(&mut cx!(self, now));
            let active = self.handler.active();
            if self.acceptor.should_resume(active, now) {
                self.accept(now, false);
            }
            self.stats.active = self.handler.active() as u64;
            stats_wait = self
                .ctl
                .report(now, self.stats, &mut self.reach, &mut self.ledger.routes);
            self.after_burst(now);
            if let Some(at) = self.stock.pipes.after_turn(now) {
                self.timers.add(at, KEY_PIPES);
            }
            if let Some(until) = self.drain_until {
                let left = self.handler.active();
                if left == 0 || now >= until {
                    if left > 0 {
                        self.handler.cut(&mut cx!(self, now));
                    }
                    self.stats.active = self.handler.active() as u64;
                    self.ctl
                        .report_last(now, self.stats, &mut self.reach, &mut self.ledger.routes);
                    proto::info!("drained ({left} connection(s) cut at the deadline); exiting");
                    return 0;
                }
            }
        }
    }

    /// Accept a burst of clients; `closing`: the last burst before a drain
    /// closes the worker's listener.
    fn accept(&mut self, now: Instant, closing: bool) {
        let mut cx = cx!(self, now);
        let handler = &mut self.handler;
        let active = handler.active();
        let take = |client, peer| {
            cx.stats.total += 1;
            handler.accept(&mut cx, client, peer);
            handler.active()
        };
        if closing {
            self.acceptor.close(self.poll.registry(), active, take);
        } else {
            self.acceptor.burst(now, active, take);
        }
        if let Some(until) = self.acceptor.paused_until {
            self.timers.add(until, KEY_ACCEPT);
        }
    }

    /// After a burst: the handler's slots, stale timer entries and the
    /// heap's free memory go back (see `mem::AfterBurst`).
    fn after_burst(&mut self, now: Instant) {
        let live = self.handler.active();
        if let Some(at) = self.after_burst.observe(now, live) {
            self.timers.add(at, KEY_SHRINK);
        }
        if self.after_burst.due(now, live) {
            // Reading /proc/self/statm is only worth it for the debug line.
            let log = ::log::log_enabled!(::log::Level::Debug);
            let before = if log { proto::mem::resident_kib() } else { 0 };
            self.handler.shrink();
            let h = &self.handler;
            self.timers.shrink(|k| k >= LOOP_KEYS || h.timer_live(k));
            proto::mem::give_back_heap();
            if log {
                proto::debug!(
                    "burst over ({live} connection(s) left): resident {before} KiB -> {} KiB",
                    proto::mem::resident_kib()
                );
            }
        }
    }
}
