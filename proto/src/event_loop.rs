//! The event loop of the byte-relaying workers (pvx-worker-tcp,
//! pvx-worker-unix): one mio poll over the listener, the control socket and
//! every connection's two sockets, plus a deadline heap. The loop only
//! dispatches; what a connection does lives in the worker's `conn.rs`,
//! behind the [`Connection`] trait.
//!
//! Tokens: 0 = listener, 1 = control socket, 2 + 2*slot = a connection's
//! client, 3 + 2*slot = its backend. Timer keys: slot << 32 | generation,
//! and the reserved keys below.

use crate::accept::Acceptor;
use crate::backend::{Dialer, Step};
use crate::ctl::{CtlError, Limits, Stats, ToWorker, WorkerConfig};
use crate::duplex::{Direction, Duplex};
use crate::health::{self, Checker};
use crate::relay::Ready;
use crate::slab::Slab;
use crate::stream::{Listener, Stream};
use crate::timer::Timers;
use crate::worker::Started;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// What the loop must do after driving a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Close both sides. `error`: count it as a failed connection.
    Close {
        error: bool,
    },
    /// A new backend socket exists and must be registered.
    RegisterBackend,
}

/// The two sockets of a proxied connection and what the loop keeps for
/// it; every [`Connection`] has one.
pub struct Sockets {
    pub client: Stream,
    pub client_ready: Ready,
    pub backend: Option<Stream>,
    pub backend_ready: Ready,
    /// Bytes moved since the loop last collected them (up, down).
    pub moved: (u64, u64),
    /// When the connection next needs attention from a timer.
    pub deadline: Option<Instant>,
    /// Earliest timer entry for it in the loop's heap: a new entry is only
    /// needed when the deadline moves before it.
    pub timer_at: Option<Instant>,
}

/// Where a backend connect stands after [`Sockets::dial`].
pub enum Dialing {
    /// Not connected (yet): what the loop must do.
    Next(Next),
    /// Connected: start relaying.
    Connected,
}

impl Sockets {
    pub fn new(client: Stream, now: Instant) -> Sockets {
        Sockets {
            client,
            client_ready: Ready::default(),
            backend: None,
            backend_ready: Ready::default(),
            moved: (0, 0),
            deadline: Some(now),
            timer_at: None,
        }
    }

    /// Drive the backend connect one step (see [`Dialer::step`]).
    pub fn dial(&mut self, dial: &mut Dialer, now: Instant, limits: &Limits) -> Dialing {
        let ready = self.backend_ready.writable;
        Dialing::Next(match dial.step(&mut self.backend, ready, now, limits) {
            Step::Wait => Next::Continue,
            Step::Pending => {
                self.backend_ready.writable = false;
                Next::Continue
            }
            Step::Register => {
                self.backend_ready = Ready::default();
                Next::RegisterBackend
            }
            Step::Connected => {
                if let Some(Stream::Tcp(s)) = &self.backend {
                    let _ = s.set_nodelay(true);
                }
                return Dialing::Connected;
            }
            Step::Failed(why) | Step::TimedOut(why) => {
                crate::warn!("{why}; closing client");
                Next::Close { error: true }
            }
        })
    }
}

impl Sockets {
    /// Relay both ways as far as readiness allows once connected (tcp and
    /// unix alike): count the bytes, note activity in `last_activity`,
    /// close when both directions ended.
    pub fn relay<D: Direction>(
        &mut self,
        relay: &mut Duplex<D>,
        peer: &dyn std::fmt::Display,
        last_activity: &mut Instant,
        now: Instant,
    ) -> Next {
        let Some(b) = self.backend.as_ref() else {
            return Next::Close { error: true };
        };
        let p = relay.pump(
            self.client.as_fd(),
            &mut self.client_ready,
            b.as_fd(),
            &mut self.backend_ready,
            peer,
        );
        if p.active() {
            *last_activity = now;
        }
        self.moved.0 += p.up;
        self.moved.1 += p.down;
        if relay.done() {
            Next::Close { error: false }
        } else {
            Next::Continue
        }
    }
}

/// A proxied connection as the loop sees it.
pub trait Connection: Sized {
    /// A connection for a newly accepted client (None: close it at once).
    fn new(client: Stream, config: &WorkerConfig, now: Instant) -> Option<Self>;
    /// Advance as far as readiness allows.
    fn drive(&mut self, now: Instant, config: &WorkerConfig) -> Next;
    /// Its deadline passed (or an earlier timer entry fired).
    fn on_timer(&mut self, now: Instant, config: &WorkerConfig) -> Next;
    fn sockets(&mut self) -> &mut Sockets;
    /// A backend may be back (an Update, a health check saw it up): a
    /// connection still reaching its backend retargets to its route's
    /// backend in `config` and retries at once (`Dialer::retarget`,
    /// `Dialer::wake`). true: it did, drive it.
    fn wake(&mut self, _now: Instant, _config: &WorkerConfig) -> bool {
        false
    }
    /// Why an Update cannot be applied by this kind of worker, if it cannot.
    fn refuse_update(_old: &WorkerConfig, _new: &WorkerConfig) -> Option<String> {
        None
    }
}

const LISTENER: Token = Token(0);
const CTL: Token = Token(1);
/// The health checker's own epoll fd (`crate::health`).
const HEALTH: Token = Token(usize::MAX - 1);
/// Wake up for the health checker (checks due, timeouts).
const KEY_HEALTH: u64 = u64::MAX - 3;
const KEY_ACCEPT: u64 = u64::MAX;
const KEY_DRAIN: u64 = u64::MAX - 1;
/// Wake up to give memory back after a burst (`mem::AfterBurst`).
const KEY_SHRINK: u64 = u64::MAX - 2;

/// Start-up, the loop, and the exit status: a relaying worker's whole
/// `main`. `kind` names it in logs (`pvx-worker-<kind>`).
pub fn main<C: Connection>(kind: &str) -> ! {
    let started = match crate::worker::start(kind) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    crate::info!(
        "serving {} with {} route(s)",
        started.config.endpoint.key,
        started.config.endpoint.routes.len()
    );
    let worker = match Worker::<C>::new(started) {
        Ok(w) => w,
        Err(e) => {
            crate::error!("cannot start event loop: {e}");
            std::process::exit(1);
        }
    };
    crate::mem::trim_code();
    match worker.run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            crate::error!("{e}");
            std::process::exit(1);
        }
    }
}

pub struct Worker<C> {
    poll: Poll,
    acceptor: Acceptor,
    ctl: crate::worker::WorkerCtl,
    config: WorkerConfig,
    conns: Slab<C>,
    timers: Timers,
    stats: Stats,
    drain_until: Option<Instant>,
    after_burst: crate::mem::AfterBurst,
    /// L4 health checks of the routes' backends (None: `--health-interval 0`).
    health: Option<Checker>,
}

fn key(slot: usize, gen: u32) -> u64 {
    (slot as u64) << 32 | gen as u64
}

impl<C: Connection> Worker<C> {
    pub fn new(s: Started) -> io::Result<Worker<C>> {
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
        let backends = health::backends_of(&s.config.endpoint.routes);
        let health = Checker::new(&s.config.limits, &backends, Instant::now())?;
        if let Some(h) = &health {
            poll.registry()
                .register(&mut SourceFd(&h.fd()), HEALTH, Interest::READABLE)?;
        }
        Ok(Worker {
            poll,
            acceptor,
            ctl: s.ctl,
            config: s.config,
            conns: Slab::new(),
            timers: Timers::new(),
            stats: Stats::default(),
            drain_until: None,
            after_burst: crate::mem::AfterBurst::default(),
            health,
        })
    }

    /// Run until the supervisor goes away or a drain completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        let mut stats_wait: Option<Duration> = None;
        loop {
            let now = Instant::now();
            if let Some(h) = self.health.as_mut() {
                if let Some(at) = h.arm() {
                    self.timers.add(at, KEY_HEALTH);
                }
            }
            let timeout = match (self.timers.timeout(now), stats_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io::Error::new(e.kind(), format!("epoll_wait: {e}")));
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now, false),
                    CTL => {
                        if !self.control(now) {
                            return Ok(());
                        }
                    }
                    HEALTH => {
                        if let Some(h) = self.health.as_mut() {
                            h.on_ready();
                        }
                    }
                    Token(t) => {
                        let slot = (t - 2) / 2;
                        let Some(c) = self.conns.get_mut(slot) else {
                            continue;
                        };
                        let io = c.sockets();
                        let r = if t % 2 == 1 {
                            &mut io.backend_ready
                        } else {
                            &mut io.client_ready
                        };
                        r.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        r.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
                        self.drive(slot, now);
                    }
                }
            }
            while let Some(k) = self.timers.pop_due(now) {
                self.on_timer(k, now);
            }
            if crate::hold::take_wake() {
                self.wake_connecting(now);
            }
            if self.acceptor.should_resume(self.conns.len(), now) {
                self.accept(now, false);
            }
            self.stats.active = self.conns.len() as u64;
            stats_wait = self.ctl.report(now, self.stats);
            self.after_burst(now);
            if let Some(until) = self.drain_until {
                if self.conns.is_empty() || now >= until {
                    crate::info!(
                        "drained ({} connection(s) cut at the deadline); exiting",
                        self.conns.len()
                    );
                    return Ok(());
                }
            }
        }
    }

    /// Accept a burst of clients; `closing`: the last burst before a drain
    /// closes the worker's listener.
    fn accept(&mut self, now: Instant, closing: bool) {
        let Worker {
            acceptor,
            conns,
            poll,
            config,
            ..
        } = self;
        let mut fresh = Vec::new();
        let active = conns.len();
        let take = |client| {
            if let Some(c) = C::new(client, config, now) {
                let (slot, _) = conns.insert(c);
                fresh.push(slot);
            }
            conns.len()
        };
        if closing {
            acceptor.close(poll.registry(), active, take);
        } else {
            acceptor.burst(now, active, take);
        }
        if let Some(until) = acceptor.paused_until {
            self.timers.add(until, KEY_ACCEPT);
        }
        for slot in fresh {
            self.stats.total += 1;
            let Some(c) = self.conns.get_mut(slot) else {
                continue;
            };
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.poll.registry().register(
                &mut c.sockets().client,
                Token(2 + 2 * slot),
                interest,
            ) {
                crate::warn!("register client: {e}");
                self.close(slot, true);
                continue;
            }
            self.drive(slot, now);
        }
    }

    fn drive(&mut self, slot: usize, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(slot) else {
                return;
            };
            let next = c.drive(now, &self.config);
            match self.after(slot, next) {
                Some(true) => continue,
                _ => return,
            }
        }
    }

    /// Apply what a connection asked for. Some(true): drive it again.
    fn after(&mut self, slot: usize, next: Next) -> Option<bool> {
        let gen = self.conns.generation(slot);
        let c = self.conns.get_mut(slot)?;
        let io = c.sockets();
        let (up, down) = std::mem::take(&mut io.moved);
        self.stats.bytes_in += up;
        self.stats.bytes_out += down;
        match next {
            Next::Continue => {
                if let Some(d) = io.deadline {
                    if io.timer_at.is_none_or(|t| d < t) {
                        io.timer_at = Some(d);
                        self.timers.add(d, key(slot, gen));
                    }
                }
                Some(false)
            }
            Next::RegisterBackend => {
                let b = io.backend.as_mut()?;
                if let Err(e) = self.poll.registry().register(
                    b,
                    Token(3 + 2 * slot),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    crate::warn!("register backend: {e}");
                    self.close(slot, true);
                    return Some(false);
                }
                Some(true)
            }
            Next::Close { error } => {
                self.close(slot, error);
                Some(false)
            }
        }
    }

    /// After a burst: connection slots, stale timer entries and the
    /// heap's free memory go back (see `mem::AfterBurst`).
    fn after_burst(&mut self, now: Instant) {
        let live = self.conns.len();
        if let Some(at) = self.after_burst.observe(now, live) {
            self.timers.add(at, KEY_SHRINK);
        }
        if self.after_burst.due(now, live) {
            self.conns.shrink();
            let conns = &self.conns;
            self.timers
                .shrink(|k| k >= KEY_HEALTH || conns.is_live((k >> 32) as usize, k as u32));
            crate::mem::give_back_heap();
        }
    }

    fn close(&mut self, slot: usize, error: bool) {
        // Closing the fds removes them from epoll; no deregister needed.
        if self.conns.remove(slot).is_some() {
            self.stats.errors += u64::from(error);
            crate::debug!(
                "connection closed{} ({} open)",
                if error { " on an error" } else { "" },
                self.conns.len()
            );
        }
    }

    fn on_timer(&mut self, k: u64, now: Instant) {
        match k {
            KEY_ACCEPT => self.accept(now, false),
            KEY_DRAIN | KEY_SHRINK => {}
            KEY_HEALTH => {
                if let Some(h) = self.health.as_mut() {
                    h.on_time(now);
                }
            }
            k => {
                let (slot, gen) = ((k >> 32) as usize, k as u32);
                let Some(c) = self.conns.get_gen(slot, gen) else {
                    return;
                };
                let io = c.sockets();
                if io.timer_at.is_some_and(|t| t <= now) {
                    io.timer_at = None;
                }
                let next = c.on_timer(now, &self.config);
                if self.after(slot, next) == Some(true) {
                    self.drive(slot, now);
                }
            }
        }
    }

    /// Every connection still reaching its backend retries now (see
    /// [`Connection::wake`] and `crate::hold`).
    fn wake_connecting(&mut self, now: Instant) {
        let config = &self.config;
        let woken: Vec<usize> = self
            .conns
            .iter_mut()
            .filter_map(|(slot, c)| c.wake(now, config).then_some(slot))
            .collect();
        for slot in woken {
            self.drive(slot, now);
        }
    }

    /// Handle control messages. false: the supervisor is gone, exit.
    fn control(&mut self, now: Instant) -> bool {
        loop {
            match self.ctl.recv() {
                Ok(None) => return true,
                Err(CtlError::Eof) => {
                    crate::info!("supervisor gone (control socket closed); exiting");
                    return false;
                }
                Err(e) => {
                    crate::error!("{e}; exiting");
                    return false;
                }
                Ok(Some(ToWorker::Update { seq, config })) => {
                    let err = if config.endpoint.kind != self.config.endpoint.kind {
                        Some(format!(
                            "update changes kind {} to {}",
                            self.config.endpoint.kind, config.endpoint.kind
                        ))
                    } else {
                        C::refuse_update(&self.config, &config)
                    };
                    if err.is_none() {
                        crate::info!(
                            "routes updated: {} route(s); open connections keep their backend",
                            config.endpoint.routes.len()
                        );
                        if let Some(h) = self.health.as_mut() {
                            let backends = health::backends_of(&config.endpoint.routes);
                            h.set_backends(&backends, &config.limits, now);
                        }
                        self.config = config;
                        // Held connections go to the route's backend now.
                        self.wake_connecting(now);
                    }
                    self.ctl.ack(seq, err);
                }
                Ok(Some(ToWorker::Drain { seq, deadline_ms })) => {
                    self.accept(now, true);
                    let until = now + Duration::from_millis(deadline_ms);
                    self.drain_until = Some(until);
                    self.timers.add(until, KEY_DRAIN);
                    crate::info!(
                        "draining {} connection(s), deadline {deadline_ms} ms",
                        self.conns.len()
                    );
                    self.ctl.ack(seq, None);
                }
                Ok(Some(ToWorker::Init { seq, .. })) => {
                    self.ctl.ack(seq, Some("already initialised".into()))
                }
            }
        }
    }
}
