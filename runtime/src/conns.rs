//! The connections of the byte-relaying workers (pvx-worker-tcp,
//! pvx-worker-unix), as they plug into the one worker loop
//! (`event_loop.rs`): [`Conns`] is their [`Handler`]. What one connection
//! does lives in the worker's `conn.rs`, behind the [`Connection`] trait;
//! [`Sockets`] (`conns/sockets.rs`) holds its two sockets, their readiness
//! flags and its timer state. A connection gets the loop's [`Cx`] with
//! every call: the backends, pipes and buffers it may use arrive there.
//!
//! A connection ends in one place, [`Conns`]' `close`, whatever ended it
//! (both sides done, a failure, a timeout, the drain's deadline): there
//! its route's counters and its access line are written (`conns/ended.rs`),
//! from what [`Sockets`] keeps and the [`Facts`] only the connection knows.
//!
//! Tokens: 2 + 2*slot = a connection's client, 3 + 2*slot = its backend
//! (0 and 1 are the loop's). Timer keys: slot << 32 | generation.
//!
//! Both sockets are registered once, edge-triggered, for read, write and
//! priority; their readiness flags live in `Sockets` and are cleared on
//! EAGAIN (or a short read that proves the socket empty), so no event
//! costs an `epoll_ctl`: a short connection makes two `ADD`s in all.

use crate::event_loop::{Cx, Handler};
use crate::slab::Slab;
use crate::stream::Stream;
use mio::event::Event;
use mio::{Interest, Token};
use proto::ctl::{End, WorkerConfig};
use proto::tick::Tick;

mod ended;
mod sockets;
pub use ended::Facts;
pub use sockets::{Dialing, Ending, Next, Sockets};

/// A proxied connection as the loop sees it. Each call gets the loop's
/// [`Cx`]: the time, the running configuration, and what dialling and
/// relaying may change.
pub trait Connection: Sized {
    /// A connection for a newly accepted client (None: close it at once).
    /// `peer`: its address as `accept4` returned it (None for a unix
    /// client), the one its PROXY header and log lines name.
    fn new(client: Stream, peer: Option<std::net::SocketAddr>, cx: &mut Cx) -> Option<Self>;
    /// Advance as far as readiness allows.
    fn drive(&mut self, cx: &mut Cx) -> Next;
    /// Its deadline passed (or an earlier timer entry fired).
    fn on_timer(&mut self, cx: &mut Cx) -> Next;
    fn sockets(&mut self) -> &mut Sockets;
    /// What its access line names that only it knows (read as it closes).
    fn facts(&self) -> Facts<'_>;
    /// A backend may be back (an Update, a health check saw it up): a
    /// connection still reaching its backend retargets to its route's
    /// backend in `cx.config` and retries at once (`Dialer::retarget`,
    /// `Dialer::wake`). true: it did, drive it.
    fn wake(&mut self, _cx: &mut Cx) -> bool {
        false
    }
    /// It is about to close: give back what the loop lent it and it still
    /// holds (a relay's pipes), as if its flows had ended.
    fn close(&mut self, _cx: &mut Cx) {}
    /// Why an Update cannot be applied by this kind of worker, if it cannot.
    fn refuse_update(_old: &WorkerConfig, _new: &WorkerConfig) -> Option<String> {
        None
    }
}

/// Every open connection of a tcp or unix worker: the [`Handler`] their
/// `main` gives the loop (`event_loop::main::<Conns<Conn>>`).
pub struct Conns<C> {
    conns: Slab<C>,
}

/// Interest in a connection's sockets: `PRIORITY` too, so urgent data is
/// reported (it stops a read short; see `Duplex::short_reads`).
fn conn_interest() -> Interest {
    Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY
}

fn key(slot: usize, gen: u32) -> u64 {
    (slot as u64) << 32 | gen as u64
}

impl<C: Connection> Handler for Conns<C> {
    fn new(_config: &WorkerConfig) -> Self {
        Conns { conns: Slab::new() }
    }

    /// The connection keeps `peer` as far as it needs it (tcp: its PROXY
    /// header and log lines; unix clients have none).
    fn accept(&mut self, cx: &mut Cx, client: Stream, peer: Option<std::net::SocketAddr>) {
        let Some(c) = C::new(client, peer, cx) else {
            return;
        };
        let (slot, _) = self.conns.insert(c);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if let Err(e) = cx.registry.register(
            &mut c.sockets().client,
            Token(2 + 2 * slot),
            conn_interest(),
        ) {
            proto::warn!("register client: {e}");
            self.close(cx, slot, Ending::failed(End::Refused, "register_failed"));
            return;
        }
        self.drive(cx, slot);
    }

    fn event(&mut self, cx: &mut Cx, token: Token, ev: &Event) {
        let t = token.0;
        let slot = (t - 2) / 2;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.sockets().on_event(t % 2 == 1, ev, cx.round);
        self.drive(cx, slot);
    }

    fn timer(&mut self, cx: &mut Cx, k: u64) {
        let (slot, gen) = ((k >> 32) as usize, k as u32);
        let Some(c) = self.conns.get_gen(slot, gen) else {
            return;
        };
        let io = c.sockets();
        if io.timer_at.is_some_and(|t| t <= Tick::from(cx.now)) {
            io.timer_at = None;
        }
        let next = c.on_timer(cx);
        if self.after(cx, slot, next) == Some(true) {
            self.drive(cx, slot);
        }
    }

    fn active(&self) -> usize {
        self.conns.len()
    }

    fn update(&mut self, cx: &mut Cx, new: &WorkerConfig) -> Result<(), String> {
        match C::refuse_update(cx.config, new) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Also after every applied update: each connection's route is
    /// renewed first (found again by name, `RouteBook::renew`), so a
    /// connection counts under its route however long it lives.
    fn wake(&mut self, cx: &mut Cx) {
        let woken: Vec<usize> = self
            .conns
            .iter_mut()
            .filter_map(|(slot, c)| {
                let io = c.sockets();
                io.route = cx.ledger.routes.renew(io.route);
                c.wake(cx).then_some(slot)
            })
            .collect();
        for slot in woken {
            self.drive(cx, slot);
        }
    }

    /// The drain's deadline: every connection still open ends now, each
    /// written down as drained (the worker exits next).
    fn cut(&mut self, cx: &mut Cx) {
        // Every slot: a vacant one is no connection, `close` passes it.
        for slot in 0..self.conns.slots() {
            self.close(cx, slot, Ending::quiet(End::Drained, "drain_deadline"));
        }
    }

    fn shrink(&mut self) {
        self.conns.shrink();
    }

    fn timer_live(&self, k: u64) -> bool {
        self.conns.is_live((k >> 32) as usize, k as u32)
    }
}

impl<C: Connection> Conns<C> {
    fn drive(&mut self, cx: &mut Cx, slot: usize) {
        loop {
            let Some(c) = self.conns.get_mut(slot) else {
                return;
            };
            let next = c.drive(cx);
            match self.after(cx, slot, next) {
                Some(true) => continue,
                _ => return,
            }
        }
    }

    /// Apply what a connection asked for. Some(true): drive it again.
    fn after(&mut self, cx: &mut Cx, slot: usize, next: Next) -> Option<bool> {
        let gen = self.conns.generation(slot);
        let c = self.conns.get_mut(slot)?;
        let io = c.sockets();
        match next {
            Next::Continue => {
                if let Some(d) = io.deadline {
                    if io.timer_at.is_none_or(|t| d < t) {
                        io.timer_at = Some(d);
                        cx.wake(d.instant(), key(slot, gen));
                    }
                }
                Some(false)
            }
            Next::RegisterBackend => {
                io.backend_round = Some(cx.round);
                let b = io.backend.as_mut()?;
                if let Err(e) = cx
                    .registry
                    .register(b, Token(3 + 2 * slot), conn_interest())
                {
                    proto::warn!("register backend: {e}");
                    let ending = Ending::failed(End::BackendFailed, "register_failed");
                    self.close(cx, slot, ending);
                    return Some(false);
                }
                Some(true)
            }
            Next::Close(ending) => {
                self.close(cx, slot, ending);
                Some(false)
            }
        }
    }

    /// The one place a connection ends: its pipes go back, its route's
    /// counters and its access line are written, its sockets close. Not
    /// inlined into its callers (the drain's cut among them).
    #[inline(never)]
    fn close(&mut self, cx: &mut Cx, slot: usize, ending: Ending) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.close(cx);
        ended::write_down(cx, &c.facts(), ending);
        // Closing the fds removes them from epoll; no deregister needed.
        if self.conns.remove(slot).is_some() {
            cx.stats.errors += u64::from(ending.error);
            proto::debug!(
                "connection closed{} ({} open)",
                if ending.error { " on an error" } else { "" },
                self.conns.len()
            );
        }
    }
}
