//! The one event loop of every worker (tcp, unix, http): a mio poll over
//! the listener, the control socket and the worker's own sockets, plus a
//! deadline heap. The loop owns what all workers share — accepting
//! (`accept.rs`), control messages (init, update, drain, ack), the drain
//! deadline, stats reports, giving memory back after a burst, the exit —
//! and hands everything else to the worker's [`Handler`]: its connections.
//! tcp and unix plug in `conns::Conns` (one client, one backend each); the
//! http worker its client connections and backend pool.
//!
//! Tokens: 0 = listener, 1 = control socket; every other token is the
//! handler's. Timer keys: at or above [`LOOP_KEYS`] the loop's; below, the
//! handler's.
//!
//! One meaning of update and drain for every kind (docs/ARCHITECTURE.md,
//! "Update and drain"):
//! - Update: a config for another endpoint (kind, listen address or
//!   consumer differ; the supervisor starts a new worker for those) is
//!   refused with an error ack, as is one the handler refuses; the worker
//!   keeps what it had, provider roots included. An applied one reaches
//!   new connections; open ones keep their routes.
//! - Drain: accept what is queued, close the listener, let the handler
//!   finish its connections, exit when none is left or at the deadline. A
//!   later drain only brings the deadline forward.

use crate::accept::Acceptor;
use crate::prober::{self, Checker};
use crate::stream::Listener;
use crate::worker::{Started, WorkerCtl};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use proto::ctl::{CtlError, Stats, ToWorker, WorkerConfig};
use proto::plan::Endpoint;
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
/// (`pipes::IdleSpares`).
const KEY_PIPES: u64 = u64::MAX - 4;

/// Why `new` is not an update of the running endpoint `old`, if it is
/// not: the supervisor starts a new worker for another kind, listen
/// address or consumer, so such a config is never applied in place. (The
/// key's `consumer_pid` may change: a consumer restarted in the network
/// namespace the listener is in keeps socket and worker.)
pub fn other_endpoint(old: &Endpoint, new: &Endpoint) -> Option<String> {
    if new.kind != old.kind {
        return Some(format!(
            "an update cannot change the endpoint's kind ({} to {})",
            old.kind, new.kind
        ));
    }
    if new.key.listen != old.key.listen {
        return Some(format!(
            "an update cannot change the listen address ({} to {})",
            old.key.listen, new.key.listen
        ));
    }
    if new.consumer != old.consumer {
        return Some(format!(
            "an update cannot change the consumer ({} to {})",
            proto::text::escape(&old.consumer),
            proto::text::escape(&new.consumer)
        ));
    }
    None
}

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
    spare_pipes: crate::pipes::IdleSpares,
    /// Poll rounds so far, wrapping (`Cx::round`).
    round: NonZeroU32,
    /// L4 health checks of the routes' backends (None: `--health-interval 0`).
    health: Option<Checker>,
    handler: H,
}

/// A [`Cx`] from the loop's fields, leaving `acceptor`, `ctl` and
/// `handler` free to borrow beside it.
macro_rules! cx {
    ($l:expr, $now:expr) => {
        Cx {
            now: $now,
            registry: $l.poll.registry(),
            stats: &mut $l.stats,
            config: &$l.config,
            draining: $l.drain_until.is_some(),
            round: $l.round,
            timers: &mut $l.timers,
        }
    };
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
        let backends = prober::backends_of(&s.config.endpoint.routes);
        let health = Checker::new(&s.config.limits, &backends, Instant::now())?;
        if let Some(h) = &health {
            poll.registry()
                .register(&mut SourceFd(&h.fd()), HEALTH, Interest::READABLE)?;
        }
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
            spare_pipes: crate::pipes::IdleSpares::default(),
            round: NonZeroU32::MIN,
            health,
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
            if let Some(at) = self.health.as_mut().and_then(|h| h.arm()) {
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
                        if let Some(h) = self.health.as_mut() {
                            h.on_ready();
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
                    KEY_PIPES => self.spare_pipes.due(now),
                    KEY_HEALTH => {
                        if let Some(h) = self.health.as_mut() {
                            h.on_time(now);
                        }
                    }
                    k => self.handler.timer(&mut cx!(self, now), k),
                }
            }
            self.timers.end_pass();
            if accept_due {
                self.accept(now, false);
            }
            if crate::hold::take_wake() {
                self.handler.wake(&mut cx!(self, now));
            }
            self.handler.turn(&mut cx!(self, now));
            let active = self.handler.active();
            if self.acceptor.should_resume(active, now) {
                self.accept(now, false);
            }
            self.stats.active = self.handler.active() as u64;
            stats_wait = self.ctl.report(now, self.stats);
            self.after_burst(now);
            if let Some(at) = self.spare_pipes.after_turn(now) {
                self.timers.add(at, KEY_PIPES);
            }
            if let Some(until) = self.drain_until {
                let left = self.handler.active();
                if left == 0 || now >= until {
                    if left > 0 {
                        self.handler.cut(&mut cx!(self, now));
                    }
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

    /// Handle control messages. Some(status): exit with it.
    fn control(&mut self, now: Instant) -> Option<i32> {
        loop {
            match self.ctl.recv() {
                Ok(None) => return None,
                Err(CtlError::Eof) => {
                    proto::info!("supervisor gone (control socket closed); exiting");
                    return Some(0);
                }
                Err(e) => {
                    proto::error!("control socket: {e}; exiting");
                    return Some(1);
                }
                Ok(Some((ToWorker::Update { seq, config }, roots))) => {
                    let err = self.update(now, config, roots);
                    if let Some(why) = &err {
                        proto::warn!("update refused: {why}; keeping the running config");
                    }
                    self.ctl.ack(seq, err);
                }
                Ok(Some((ToWorker::Drain { seq, deadline_ms }, _))) => {
                    self.drain(now, Duration::from_millis(deadline_ms));
                    self.ctl.ack(seq, None);
                }
                Ok(Some((ToWorker::Init { seq, .. }, _))) => {
                    self.ctl.ack(seq, Some("already initialised".into()))
                }
            }
        }
    }

    /// Apply an update, or say why not (then nothing changed).
    fn update(
        &mut self,
        now: Instant,
        mut config: WorkerConfig,
        roots: Vec<std::os::fd::OwnedFd>,
    ) -> Option<String> {
        crate::hold::fit(&mut config);
        if let Some(why) = other_endpoint(&self.config.endpoint, &config.endpoint) {
            return Some(why);
        }
        if let Err(why) = self.handler.update(&mut cx!(self, now), &config) {
            return Some(why);
        }
        crate::backend::set_roots(&config.endpoint.root_pids(), roots);
        proto::info!(
            "routes updated: {} route(s); open connections keep theirs",
            config.endpoint.routes.len()
        );
        if let Some(h) = self.health.as_mut() {
            let backends = prober::backends_of(&config.endpoint.routes);
            h.set_backends(&backends, &config.limits, now);
        }
        self.config = config;
        // Held connections go to their route's backend now.
        self.handler.wake(&mut cx!(self, now));
        None
    }

    /// Accept what is queued, close the listener, let connections finish;
    /// `run` exits when none is left or at the deadline. A later drain only
    /// brings the deadline forward.
    fn drain(&mut self, now: Instant, within: Duration) {
        let until = now + within;
        if let Some(was) = self.drain_until {
            if until < was {
                self.drain_until = Some(until);
                self.timers.add(until, KEY_DRAIN);
            }
            return;
        }
        self.drain_until = Some(until);
        self.timers.add(until, KEY_DRAIN);
        self.accept(now, true);
        proto::info!(
            "draining {} connection(s), deadline {} ms",
            self.handler.active(),
            within.as_millis()
        );
        self.handler.drain(&mut cx!(self, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::plan::EndpointKey;
    use proto::types::{Kind, Listen};

    #[test]
    fn an_update_is_for_the_same_endpoint_only() {
        let old = Endpoint {
            key: EndpointKey {
                consumer_pid: 7,
                listen: Listen::Tcp("127.0.0.1:80".parse().unwrap()),
            },
            kind: Kind::Http,
            consumer: "app".into(),
            routes: Vec::new(),
        };
        let mut same = old.clone();
        same.key.consumer_pid = 8;
        assert_eq!(other_endpoint(&old, &same), None, "consumer restarted");
        let mut e = old.clone();
        e.kind = Kind::Rest;
        assert!(other_endpoint(&old, &e).is_some_and(|w| w.contains("kind (http to rest)")));
        let mut e = old.clone();
        e.key.listen = Listen::Tcp("127.0.0.1:81".parse().unwrap());
        assert!(other_endpoint(&old, &e).is_some_and(|w| w.contains("listen address")));
        let mut e = old.clone();
        e.consumer = "other\n".into();
        assert!(other_endpoint(&old, &e).is_some_and(|w| w.contains("consumer (app to other\\n)")));
    }
}
