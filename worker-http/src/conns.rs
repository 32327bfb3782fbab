//! The http worker's connections as they plug into runtime's worker loop
//! (`runtime::event_loop`): [`Conns`] is its `Handler`. It holds the client
//! connections (`conn/`), the idle backend pool (`pool.rs`), the owner of
//! each backend socket (`keys.rs`) and the route table, and maps events and
//! timers onto them.
//!
//! Edge-triggered throughout: an event only sets a readiness flag; the
//! connection then runs until its sockets would block (`Conn::drive`).
//! Each connection keeps at most one live timer entry (`Conn::rearm`); an
//! entry that fires early (the deadline moved later) just re-arms.
//!
//! What the worker's connections share is owned here and lent to each
//! connection through its `Ctx` (built in one place, `with_conn`): the
//! pool, the route table, the owners of backend sockets, the spare
//! buffers (`buf.rs`) and the sink a lingering close reads into.

use crate::buf::Spares;
use crate::conn::{Conn, Ctx, Sink};
use crate::keys::{self, Owner, Owners, Timer, Tok};
use crate::pool::Pool;
use crate::route::Table;
use mio::event::Event;
use mio::Token;
use proto::ctl::WorkerConfig;
use runtime::event_loop::{Cx, Handler};
use runtime::slab::Slab;
use runtime::stream::{Ready, Stream};
use std::time::Instant;

pub struct Conns {
    conns: Slab<Conn>,
    pool: Pool,
    routes: Table,
    /// Holder of each backend socket, by fd.
    owners: Owners,
    /// When the idle pool is next swept.
    pool_sweep: Option<Instant>,
    spares: Spares,
    sink: Sink,
}

fn log_routes(c: &WorkerConfig) {
    for r in &c.endpoint.routes {
        let v = &r.via;
        let host = v
            .host
            .as_deref()
            .map(|h| format!(" host {h}"))
            .unwrap_or_default();
        proto::info!(
            "route '{}': {}{host}{} -> {}",
            v.name,
            v.prefix,
            if v.strip_prefix { " (stripped)" } else { "" },
            r.pool_text()
        );
    }
}

impl Handler for Conns {
    fn new(config: &WorkerConfig) -> Conns {
        log_routes(config);
        Conns {
            conns: Slab::new(),
            pool: Pool::default(),
            routes: Table::new(&config.endpoint.routes),
            owners: Owners::default(),
            pool_sweep: None,
            spares: Spares::default(),
            sink: Sink::default(),
        }
    }

    /// Take a new client: register it and arm its first deadline. It is
    /// driven by its first event (registering a socket with bytes waiting
    /// raises one).
    fn accept(&mut self, cx: &mut Cx, s: Stream, peer: Option<std::net::SocketAddr>) {
        let config: &WorkerConfig = cx.config;
        let limits = &config.limits;
        let (slot, gen) = self
            .conns
            .insert(Conn::new(s, peer, cx.now, limits.max_head_bytes));
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        match c.register(cx.registry, keys::client(slot)) {
            Ok(()) => {
                if let Some(d) = c.rearm(limits) {
                    cx.wake(d, keys::timer(Timer::Conn { slot, gen }));
                }
            }
            Err(e) => {
                proto::warn!("registering client socket: {e}");
                self.conns.remove(slot);
            }
        }
    }

    fn event(&mut self, cx: &mut Cx, token: Token, ev: &Event) {
        let hup = runtime::stream::troubled(ev);
        match keys::decode(token) {
            Tok::Client(slot) => self.with_conn(cx, slot, |c, cx| {
                c.client_ready(ev, hup);
                c.drive(cx)
            }),
            Tok::Backend(fd) => match self.owners.get(fd) {
                Owner::Conn(slot) => self.with_conn(cx, slot, |c, cx| {
                    c.backend_ready(fd, ev, hup);
                    c.drive(cx)
                }),
                // A writable-only event on a parked connection (its last
                // request's bytes acknowledged) needs no probe.
                Owner::Pool(slot) => {
                    let probe = Ready::of(ev).readable || ev.is_write_closed();
                    self.pool.on_event(slot, fd, probe)
                }
                Owner::Nobody => {}
            },
        }
    }

    fn timer(&mut self, cx: &mut Cx, k: u64) {
        match keys::decode_timer(k) {
            Timer::Conn { slot, gen } => {
                if self.conns.get_gen(slot, gen).is_none() {
                    return;
                }
                self.with_conn(cx, slot, Conn::on_timer);
            }
            // Acted on in `turn`.
            Timer::Sweep => {}
        }
    }

    fn active(&self) -> usize {
        self.conns.len()
    }

    /// New routes for new requests; a request in flight keeps its route.
    /// Parked connections to backends no route uses any more close.
    fn update(&mut self, _cx: &mut Cx, new: &WorkerConfig) -> Result<(), String> {
        self.routes = Table::new(&new.endpoint.routes);
        let routes = &self.routes;
        self.pool.retain(|b| routes.uses(b));
        log_routes(new);
        Ok(())
    }

    /// Idle connections close now, busy ones after their exchange.
    fn drain(&mut self, cx: &mut Cx) {
        let slots: Vec<usize> = self.conns.iter_mut().map(|(i, _)| i).collect();
        for slot in slots {
            self.with_conn(cx, slot, |c, cx| {
                c.drain();
                c.drive(cx)
            });
        }
    }

    /// Every request still reaching its backend retries now, at the
    /// route's backend as the table has it (`runtime::hold`).
    fn wake(&mut self, cx: &mut Cx) {
        let slots: Vec<usize> = self.conns.iter_mut().map(|(i, _)| i).collect();
        for slot in slots {
            self.with_conn(cx, slot, |c, cx| !c.wake(cx) || c.drive(cx));
        }
    }

    /// The drain's deadline: a client still sending a request head gets
    /// `503` (none of its request reached a backend, and the endpoint is
    /// going away); a silent close would look like a lost connection.
    fn cut(&mut self, cx: &mut Cx) {
        let mut n = 0;
        for (_, c) in self.conns.iter_mut() {
            n += usize::from(c.cut(&mut self.sink, cx.ledger, cx.now));
        }
        if n > 0 {
            proto::info!("{n} request(s) in progress (head unfinished or backend not reached) at the drain deadline answered 503");
        }
    }

    /// The pool's sweep: one timer for all parked connections.
    fn turn(&mut self, cx: &mut Cx) {
        let now = cx.now;
        match self.pool_sweep {
            Some(t) if t <= now => {
                self.pool_sweep = self.pool.sweep(now);
                if let Some(t) = self.pool_sweep {
                    cx.wake(t, keys::timer(Timer::Sweep));
                }
            }
            None if !self.pool.is_empty() => {
                let t = now + crate::pool::IDLE;
                self.pool_sweep = Some(t);
                cx.wake(t, keys::timer(Timer::Sweep));
            }
            _ => {}
        }
    }

    /// What a burst made the worker grow: slots and spare buffers.
    fn shrink(&mut self) {
        self.conns.shrink();
        self.spares.trim(2);
    }

    fn timer_live(&self, k: u64) -> bool {
        match keys::decode_timer(k) {
            Timer::Conn { slot, gen } => self.conns.is_live(slot, gen),
            Timer::Sweep => true,
        }
    }
}

impl Conns {
    /// Run `f` on the connection in `slot`, then remove it if it finished or
    /// re-arm its deadline.
    fn with_conn(&mut self, cx: &mut Cx, slot: usize, f: impl FnOnce(&mut Conn, &mut Ctx) -> bool) {
        let gen = self.conns.generation(slot);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let config: &WorkerConfig = cx.config;
        let limits = &config.limits;
        let mut ctx = Ctx {
            now: cx.now,
            routes: &self.routes,
            limits,
            pool: &mut self.pool,
            registry: cx.registry,
            stats: &mut *cx.stats,
            draining: cx.draining,
            owners: &mut self.owners,
            slot,
            spares: &mut self.spares,
            sink: &mut self.sink,
            reach: &mut *cx.reach,
            stock: &mut *cx.stock,
            ledger: &mut *cx.ledger,
        };
        if f(conn, &mut ctx) {
            conn.settle(ctx.spares);
            if let Some(d) = conn.rearm(limits) {
                cx.wake(d, keys::timer(Timer::Conn { slot, gen }));
            }
        } else {
            self.end(slot);
        }
    }

    /// The connection in `slot` finished: its buffers go back to the
    /// spares, then it goes (one copy of its drop for every `with_conn`).
    fn end(&mut self, slot: usize) {
        if let Some(mut c) = self.conns.remove(slot) {
            c.give_back(&mut self.spares);
        }
    }
}
