//! The worker's single-threaded mio loop: accept clients, read control
//! messages, dispatch socket events to connections, fire deadlines, report
//! counters, drain and exit.
//!
//! Edge-triggered throughout: an event only sets a readiness flag; the
//! connection then runs until its sockets would block (`Conn::drive`).
//! Each connection keeps at most one live timer entry (`Conn::armed`); an
//! entry that fires early (the deadline moved later) just re-arms.

use crate::conn::{Conn, Ctx};
use crate::keys::{self, Owner, Owners, Timer, Tok};
use crate::pool::Pool;
use crate::route::Table;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use proto::accept::Acceptor;
use proto::ctl::{CtlError, Limits, Stats, ToWorker, WorkerConfig};
use proto::health::Checker;
use proto::mem::AfterBurst;
use proto::relay::Ready;
use proto::slab::Slab;
use proto::stream::{Listener, Stream};
use proto::timer::Timers;
use proto::worker::{Started, WorkerCtl};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

pub struct Worker {
    poll: Poll,
    ctl: WorkerCtl,
    acceptor: Acceptor,
    conns: Slab<Conn>,
    pool: Pool,
    timers: Timers,
    routes: Table,
    limits: Limits,
    stats: Stats,
    /// Set once draining: exit by then.
    drain_deadline: Option<Instant>,
    /// A loop timer for a pending stats report is in the heap.
    stats_timer: bool,
    /// Holder of each backend socket, by fd.
    owners: Owners,
    /// When the idle pool is next swept.
    pool_sweep: Option<Instant>,
    /// When a burst of connections has ended, to give its memory back.
    after_burst: AfterBurst,
    /// health hook: L4 checks of the routes' backends (`proto::health`).
    health: Option<Checker>,
}

impl Worker {
    pub fn new(started: Started) -> io::Result<Worker> {
        let Started {
            ctl,
            listener,
            config,
        } = started;
        let poll = Poll::new()?;
        let listener = Listener::from_fd(listener)?;
        let limits = config.limits.clone();
        let acceptor = Acceptor::new(listener, poll.registry(), keys::LISTENER, limits.max_conns)?;
        poll.registry().register(
            &mut SourceFd(&ctl.as_fd().as_raw_fd()),
            keys::CTL,
            Interest::READABLE,
        )?;
        // health hook: the checker's epoll fd, registered once.
        let backends = proto::health::backends_of(&config.endpoint.routes);
        let health = Checker::new(&limits, &backends, Instant::now())?;
        if let Some(h) = &health {
            poll.registry()
                .register(&mut SourceFd(&h.fd()), keys::HEALTH, Interest::READABLE)?;
        }
        let w = Worker {
            poll,
            ctl,
            acceptor,
            conns: Slab::new(),
            pool: Pool::default(),
            timers: Timers::new(),
            routes: Table::new(&config.endpoint.routes),
            limits,
            stats: Stats::default(),
            drain_deadline: None,
            stats_timer: false,
            pool_sweep: None,
            owners: Owners::default(),
            after_burst: AfterBurst::default(),
            health,
        };
        w.log_routes(&config);
        Ok(w)
    }

    fn log_routes(&self, c: &WorkerConfig) {
        for r in &c.endpoint.routes {
            let host = r
                .host
                .as_deref()
                .map(|h| format!(" host {h}"))
                .unwrap_or_default();
            proto::info!(
                "route '{}': {}{host}{} -> {}",
                r.name,
                r.prefix,
                if r.strip_prefix { " (stripped)" } else { "" },
                r.backend
            );
        }
    }

    /// Run until the supervisor goes away or a drain completes; returns the
    /// process exit code.
    pub fn run(mut self) -> i32 {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            // health hook: a timer for the next check or check timeout.
            if let Some(t) = self.health.as_mut().and_then(|h| h.arm()) {
                self.timers.add(t, keys::timer(Timer::Loop));
            }
            let timeout = self.timers.timeout(now);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                proto::error!("poll: {e}");
                return 1;
            }
            let now = Instant::now();
            for ev in events.iter() {
                match keys::decode(ev.token()) {
                    Tok::Listener => self.accept(now),
                    Tok::Health => {
                        if let Some(h) = self.health.as_mut() {
                            h.on_ready();
                        }
                    }
                    Tok::Ctl => {
                        if let Some(code) = self.control(now) {
                            return code;
                        }
                    }
                    Tok::Client(slot) => {
                        let (r, w) = readiness(ev);
                        let hup = ev.is_read_closed();
                        self.with_conn(slot, now, |c, cx| {
                            set(&mut c.cr, r, w);
                            c.c_hup |= hup;
                            c.drive(cx)
                        });
                    }
                    Tok::Backend(fd) => match self.owners.get(fd) {
                        Owner::Conn(slot) => {
                            let (r, w) = readiness(ev);
                            let hup = ev.is_read_closed();
                            self.with_conn(slot, now, |c, cx| {
                                if let Some(b) =
                                    c.backend.as_mut().filter(|b| b.stream.as_raw_fd() == fd)
                                {
                                    set(&mut b.ready, r, w);
                                    b.hup |= hup;
                                }
                                c.drive(cx)
                            });
                        }
                        Owner::Pool(slot) => self.pool.on_event(slot, fd),
                        Owner::Nobody => {}
                    },
                }
            }
            self.fire_timers(now);
            // hold hook (proto::hold): a backend may be back.
            if proto::hold::take_wake() {
                self.wake_connecting(now);
            }
            if let Some(code) = self.housekeeping(now) {
                return code;
            }
        }
    }

    /// Run `f` on the connection in `slot`, then remove it if it finished or
    /// re-arm its deadline.
    fn with_conn(
        &mut self,
        slot: usize,
        now: Instant,
        f: impl FnOnce(&mut Conn, &mut Ctx) -> bool,
    ) {
        let gen = self.conns.generation(slot);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut cx = Ctx {
            now,
            routes: &self.routes,
            limits: &self.limits,
            pool: &mut self.pool,
            registry: self.poll.registry(),
            stats: &mut self.stats,
            draining: self.drain_deadline.is_some(),
            owners: &mut self.owners,
            slot,
        };
        if f(conn, &mut cx) {
            conn.settle();
            if let Some(d) = conn.deadline(&self.limits) {
                if conn.armed.is_none_or(|a| d < a) {
                    conn.armed = Some(d);
                    self.timers.add(d, keys::timer(Timer::Conn { slot, gen }));
                }
            }
        } else {
            self.conns.remove(slot);
            self.resume_accepting(now);
        }
    }

    /// The acceptor, the poll, the number of connections, and what adopts
    /// an accepted client (returning the new number): the worker split so
    /// that the acceptor can call back into the rest of it.
    fn adopter(
        &mut self,
        now: Instant,
    ) -> (
        &mut Acceptor,
        &Poll,
        usize,
        impl FnMut(Stream) -> usize + '_,
    ) {
        let Worker {
            acceptor,
            conns,
            poll,
            timers,
            limits,
            stats,
            ..
        } = self;
        let poll: &Poll = poll;
        let active = conns.len();
        let take = move |s| {
            adopt(conns, poll, timers, limits, stats, s, now);
            conns.len()
        };
        (acceptor, poll, active, take)
    }

    fn accept(&mut self, now: Instant) {
        let (acceptor, _, active, take) = self.adopter(now);
        acceptor.burst(now, active, take);
        if let Some(t) = self.acceptor.paused_until {
            self.timers.add(t, keys::timer(Timer::Loop));
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        if self.acceptor.should_resume(self.conns.len(), now) {
            self.accept(now);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(k) = self.timers.pop_due(now) {
            match keys::decode_timer(k) {
                Timer::Conn { slot, gen } => {
                    if self.conns.get_gen(slot, gen).is_none() {
                        continue;
                    }
                    self.with_conn(slot, now, |c, cx| {
                        if c.armed.is_some_and(|a| a <= now) {
                            c.armed = None;
                        }
                        c.on_timer(cx)
                    });
                }
                Timer::Loop => {
                    self.stats_timer = false;
                    self.resume_accepting(now);
                    if let Some(h) = self.health.as_mut() {
                        h.on_time(now);
                    }
                }
            }
        }
    }

    /// Control messages. Returns an exit code when the worker must stop.
    fn control(&mut self, now: Instant) -> Option<i32> {
        loop {
            match self.ctl.recv() {
                Ok(None) => return None,
                Ok(Some(ToWorker::Update { seq, config })) => {
                    self.routes = Table::new(&config.endpoint.routes);
                    if let Some(h) = self.health.as_mut() {
                        let backends = proto::health::backends_of(&config.endpoint.routes);
                        h.set_backends(&backends, &config.limits, now);
                    }
                    self.limits = config.limits.clone();
                    let routes = &self.routes;
                    self.pool.retain(|b| routes.uses(b));
                    proto::info!("routes updated: {} route(s)", self.routes.len());
                    self.log_routes(&config);
                    self.ctl.ack(seq, None);
                    // hold hook: held requests go to the route's backend now.
                    self.wake_connecting(now);
                }
                Ok(Some(ToWorker::Drain { seq, deadline_ms })) => {
                    self.drain(now, Duration::from_millis(deadline_ms));
                    self.ctl.ack(seq, None);
                }
                Ok(Some(ToWorker::Init { seq, .. })) => {
                    self.ctl.ack(seq, Some("already initialised".into()));
                }
                Err(CtlError::Eof) => {
                    proto::info!("supervisor gone; exiting");
                    return Some(0);
                }
                Err(e) => {
                    proto::error!("control socket: {e}; exiting");
                    return Some(1);
                }
            }
        }
    }

    /// hold hook (proto::hold): every connection still reaching its
    /// backend retries now, at the route's backend as the table has it.
    fn wake_connecting(&mut self, now: Instant) {
        let slots: Vec<usize> = self.conns.iter_mut().map(|(i, _)| i).collect();
        for slot in slots {
            self.with_conn(slot, now, |c, cx| !c.wake(cx) || c.drive(cx));
        }
    }

    /// Stop accepting (our copy of the listener closes), let open
    /// exchanges finish, close idle connections now.
    fn drain(&mut self, now: Instant, within: Duration) {
        if self.drain_deadline.is_some() {
            return;
        }
        let deadline = now + within;
        self.drain_deadline = Some(deadline);
        proto::info!(
            "draining {} connection(s), at most {} ms",
            self.conns.len(),
            within.as_millis()
        );
        let (acceptor, poll, active, take) = self.adopter(now);
        // What is already in the backlog is served; then our copy closes.
        acceptor.close(poll.registry(), active, take);
        self.timers.add(deadline, keys::timer(Timer::Loop));
        let slots: Vec<usize> = self.conns.iter_mut().map(|(i, _)| i).collect();
        for slot in slots {
            self.with_conn(slot, now, |c, cx| {
                c.drain();
                c.drive(cx)
            });
        }
    }

    /// Counters, and the exit conditions of a drain. Returns an exit code.
    fn housekeeping(&mut self, now: Instant) -> Option<i32> {
        self.stats.active = self.conns.len() as u64;
        if let Some(d) = self.ctl.report(now, self.stats) {
            if !self.stats_timer {
                self.stats_timer = true;
                self.timers.add(now + d, keys::timer(Timer::Loop));
            }
        }
        match self.pool_sweep {
            Some(t) if t <= now => {
                self.pool_sweep = self.pool.sweep(now);
                if let Some(t) = self.pool_sweep {
                    self.timers.add(t, keys::timer(Timer::Loop));
                }
            }
            None if !self.pool.is_empty() => {
                let t = now + crate::pool::IDLE;
                self.pool_sweep = Some(t);
                self.timers.add(t, keys::timer(Timer::Loop));
            }
            _ => {}
        }
        let live = self.conns.len();
        if let Some(t) = self.after_burst.observe(now, live) {
            self.timers.add(t, keys::timer(Timer::Loop));
        }
        if self.after_burst.due(now, live) {
            self.give_back_memory();
        }
        let deadline = self.drain_deadline?;
        if self.conns.is_empty() {
            proto::info!("drained; exiting");
            return Some(0);
        }
        if now >= deadline {
            proto::info!(
                "drain deadline reached; closing {} connection(s) and exiting",
                self.conns.len()
            );
            return Some(0);
        }
        None
    }
}

impl Worker {
    /// After a burst: what the burst's connections made the worker grow
    /// (slots, timer entries, spare buffers) shrinks, and the allocator
    /// returns the free memory to the system.
    fn give_back_memory(&mut self) {
        let before = proto::mem::resident_kib();
        self.conns.shrink();
        let conns = &self.conns;
        self.timers.shrink(|k| match keys::decode_timer(k) {
            Timer::Conn { slot, gen } => conns.is_live(slot, gen),
            Timer::Loop => true,
        });
        crate::buf::trim_spares(2);
        proto::mem::give_back_heap();
        proto::debug!(
            "burst over ({} connection(s) left): resident {} KiB -> {} KiB",
            self.conns.len(),
            before,
            proto::mem::resident_kib()
        );
    }
}

/// Take a new client: register it and arm its first deadline.
fn adopt(
    conns: &mut Slab<Conn>,
    poll: &Poll,
    timers: &mut Timers,
    limits: &Limits,
    stats: &mut Stats,
    s: Stream,
    now: Instant,
) {
    let (slot, gen) = conns.insert(Conn::new(s, now, limits.max_head_bytes));
    stats.total += 1;
    let Some(c) = conns.get_mut(slot) else { return };
    match c.register(poll.registry(), keys::client(slot)) {
        Ok(()) => {
            if let Some(d) = c.deadline(limits) {
                c.armed = Some(d);
                timers.add(d, keys::timer(Timer::Conn { slot, gen }));
            }
        }
        Err(e) => {
            proto::warn!("registering client socket: {e}");
            conns.remove(slot);
        }
    }
}

fn readiness(ev: &mio::event::Event) -> (bool, bool) {
    (
        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
        ev.is_writable() || ev.is_write_closed() || ev.is_error(),
    )
}

fn set(r: &mut Ready, readable: bool, writable: bool) {
    r.readable |= readable;
    r.writable |= writable;
}
