//! The unix worker's event loop: one mio poll over the listener, the
//! control socket and every connection's two sockets, plus a deadline heap.
//! All per-connection logic lives in `conn.rs`; this file only dispatches.
//! It has the shape of pvx-worker-tcp's loop on purpose: same tokens, same
//! timers, same control handling.
//!
//! Tokens: 0 = listener, 1 = control socket, 2 + 2*slot = a connection's
//! client, 3 + 2*slot = its backend. Timer keys: slot << 32 | generation,
//! and the reserved keys below.

use crate::conn::{Conn, Next};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use proto::accept::Acceptor;
use proto::ctl::{CtlError, Stats, ToWorker, WorkerConfig};
use proto::slab::Slab;
use proto::stream::{Listener, Stream};
use proto::timer::Timers;
use proto::worker::Started;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const CTL: Token = Token(1);
const KEY_ACCEPT: u64 = u64::MAX;
const KEY_DRAIN: u64 = u64::MAX - 1;

pub struct Worker {
    poll: Poll,
    acceptor: Acceptor,
    ctl: proto::worker::WorkerCtl,
    config: WorkerConfig,
    conns: Slab<Conn>,
    timers: Timers,
    stats: Stats,
    /// Fds passed through by connections already closed.
    fds_passed: u64,
    drain_until: Option<Instant>,
}

fn key(slot: usize, gen: u32) -> u64 {
    (slot as u64) << 32 | gen as u64
}

impl Worker {
    pub fn new(s: Started) -> io::Result<Worker> {
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
        Ok(Worker {
            poll,
            acceptor,
            ctl: s.ctl,
            config: s.config,
            conns: Slab::new(),
            timers: Timers::new(),
            stats: Stats::default(),
            fds_passed: 0,
            drain_until: None,
        })
    }

    /// Run until the supervisor goes away or a drain completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        let mut stats_wait: Option<Duration> = None;
        loop {
            let now = Instant::now();
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
                    Token(t) => {
                        let slot = (t - 2) / 2;
                        let Some(c) = self.conns.get_mut(slot) else {
                            continue;
                        };
                        let r = if t % 2 == 0 {
                            &mut c.client_ready
                        } else {
                            &mut c.backend_ready
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
            if self.acceptor.should_resume(self.conns.len(), now) {
                self.accept(now, false);
            }
            self.stats.active = self.conns.len() as u64;
            stats_wait = self.ctl.report(now, self.stats);
            if let Some(until) = self.drain_until {
                if self.conns.is_empty() || now >= until {
                    proto::info!(
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
        // A unix endpoint has exactly one route (the plan never groups two).
        let route = config.endpoint.routes.first();
        let take = |client: Stream| {
            if let Some(r) = route {
                let (slot, _) = conns.insert(Conn::new(client, r, &config.limits, now));
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
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut c.client, Token(2 + 2 * slot), interest)
            {
                proto::warn!("register client: {e}");
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
            let next = c.drive(now, &self.config.limits);
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
        self.stats.bytes_in += c.moved.0;
        self.stats.bytes_out += c.moved.1;
        c.moved = (0, 0);
        match next {
            Next::Continue => {
                if let Some(d) = c.deadline {
                    if c.timer_at.is_none_or(|t| d < t) {
                        c.timer_at = Some(d);
                        self.timers.add(d, key(slot, gen));
                    }
                }
                Some(false)
            }
            Next::RegisterBackend => {
                let b = c.backend.as_mut()?;
                if let Err(e) = self.poll.registry().register(
                    b,
                    Token(3 + 2 * slot),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    proto::warn!("register backend: {e}");
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

    fn close(&mut self, slot: usize, error: bool) {
        // Closing the fds (sockets and any fds still in flight) removes
        // them from epoll; no deregister needed.
        if let Some(c) = self.conns.remove(slot) {
            self.fds_passed += c.fds_passed();
            if error {
                self.stats.errors += 1;
            }
        }
    }

    fn on_timer(&mut self, k: u64, now: Instant) {
        match k {
            KEY_ACCEPT => self.accept(now, false),
            KEY_DRAIN => {}
            k => {
                let (slot, gen) = ((k >> 32) as usize, k as u32);
                let Some(c) = self.conns.get_gen(slot, gen) else {
                    return;
                };
                if c.timer_at.is_some_and(|t| t <= now) {
                    c.timer_at = None;
                }
                let next = c.on_timer(now, &self.config.limits);
                if self.after(slot, next) == Some(true) {
                    self.drive(slot, now);
                }
            }
        }
    }

    /// Handle control messages. false: the supervisor is gone, exit.
    fn control(&mut self, now: Instant) -> bool {
        loop {
            match self.ctl.recv() {
                Ok(None) => return true,
                Err(CtlError::Eof) => {
                    proto::info!("supervisor gone (control socket closed); exiting");
                    return false;
                }
                Err(e) => {
                    proto::error!("{e}; exiting");
                    return false;
                }
                Ok(Some(ToWorker::Update { seq, config })) => {
                    let err = if config.endpoint.kind != self.config.endpoint.kind {
                        Some(format!(
                            "update changes kind {} to {}",
                            self.config.endpoint.kind, config.endpoint.kind
                        ))
                    } else if config.endpoint.routes.len() != 1 {
                        Some(format!(
                            "a unix endpoint has one route, the update has {}",
                            config.endpoint.routes.len()
                        ))
                    } else {
                        None
                    };
                    if err.is_none() {
                        proto::info!(
                            "provider now {}; open connections keep theirs",
                            config.endpoint.routes[0].backend
                        );
                        self.config = config;
                    }
                    self.ctl.ack(seq, err);
                }
                Ok(Some(ToWorker::Drain { seq, deadline_ms })) => {
                    self.accept(now, true);
                    let until = now + Duration::from_millis(deadline_ms);
                    self.drain_until = Some(until);
                    self.timers.add(until, KEY_DRAIN);
                    proto::info!(
                        "draining {} connection(s), deadline {deadline_ms} ms; {} fd(s) passed so far",
                        self.conns.len(),
                        self.fds_passed
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
