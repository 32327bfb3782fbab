//! The connections of the byte-relaying workers (pvx-worker-tcp,
//! pvx-worker-unix), as they plug into the one worker loop
//! (`event_loop.rs`): [`Conns`] is their [`Handler`]. What one connection
//! does lives in the worker's `conn.rs`, behind the [`Connection`] trait;
//! [`Sockets`] holds its two sockets, their readiness flags and its timer
//! state.
//!
//! Tokens: 2 + 2*slot = a connection's client, 3 + 2*slot = its backend
//! (0 and 1 are the loop's). Timer keys: slot << 32 | generation.

use crate::backend::{Dialer, Step};
use crate::duplex::{Direction, Duplex, Flow, ShortRead};
use crate::event_loop::{Cx, Handler};
use crate::slab::Slab;
use crate::stream::{Peer, Ready, Stream, Who};
use mio::event::Event;
use mio::{Interest, Token};
use proto::ctl::WorkerConfig;
use proto::limits::Limits;
use proto::tick::Tick;
use std::num::NonZeroU32;
use std::os::fd::AsFd;
use std::time::Instant;

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
/// it; every [`Connection`] has one. Kept small: thousands of idle
/// connections each hold one (times are 8-byte [`Tick`]s).
pub struct Sockets {
    pub client: Stream,
    pub client_ready: Ready,
    pub backend: Option<Stream>,
    pub backend_ready: Ready,
    /// An event reported a hang-up, an error or urgent data on the
    /// (client, backend) socket: a short read no longer proves it empty
    /// (`Duplex::short_reads`), nor a writable backend connected.
    pub troubled: [bool; 2],
    /// The backend's handshake ACK waits for our first bytes to carry it
    /// (`backend::connect`); the first relay pass sends it if it has none.
    ack_owed: bool,
    /// An event reported the peer's FIN (or a reset) on the (client,
    /// backend) socket: nothing arrives after what is queued, so a short
    /// read proves the end (`ShortRead::End`).
    pub hung_up: [bool; 2],
    /// Urgent data was reported on (client, backend) (`Duplex::urgent_data`).
    pub urgent: [bool; 2],
    /// The poll round in which the backend socket was registered, until
    /// its first event: events of that round were gathered before it
    /// existed (an fd closed in the round had its token), so they are not
    /// about it.
    backend_round: Option<NonZeroU32>,
    /// Bytes moved since the loop last collected them (up, down).
    pub moved: (u64, u64),
    /// When the connection next needs attention from a timer
    /// ([`Sockets::set_deadline`]).
    deadline: Option<Tick>,
    /// Earliest timer entry for it in the loop's heap: a new entry is only
    /// needed when the deadline moves before it.
    timer_at: Option<Tick>,
    /// When bytes last moved (or the relay began): the idle and linger
    /// timeouts count from it.
    last_activity: Tick,
    /// A route with replicas: this connection counted against its backend
    /// until it closes (least-conn, `balance.rs`).
    pub lease: Option<crate::balance::Lease>,
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
            troubled: [false; 2],
            ack_owed: false,
            hung_up: [false; 2],
            urgent: [false; 2],
            backend_round: None,
            moved: (0, 0),
            deadline: Some(Tick::from(now)),
            timer_at: None,
            last_activity: Tick::from(now),
            lease: None,
        }
    }

    /// When the connection next needs a timer (None: never).
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        self.deadline = at.map(Tick::from);
    }

    /// Whether the deadline has come (a timer may fire for an older one).
    pub fn due(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= Tick::from(now))
    }

    pub fn last_activity(&self) -> Instant {
        self.last_activity.instant()
    }

    /// Count idle time from `now` (the relay begins).
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = Tick::from(now);
    }

    /// Record an event on the client or (`backend`) the backend socket,
    /// gathered in poll round `round`.
    pub fn on_event(&mut self, backend: bool, ev: &Event, round: NonZeroU32) {
        if backend {
            if self.backend_round == Some(round) {
                return;
            }
            self.backend_round = None;
        }
        let r = if backend {
            &mut self.backend_ready
        } else {
            &mut self.client_ready
        };
        r.add(ev);
        if crate::stream::troubled(ev) {
            self.troubled[usize::from(backend)] = true;
        }
        if ev.is_priority() {
            self.urgent[usize::from(backend)] = true;
        }
        if ev.is_read_closed() {
            self.hung_up[usize::from(backend)] = true;
        }
    }

    /// Drive the backend connect one step (see [`Dialer::step`]).
    /// `client`: its address from `accept4`, for log lines (None: a unix
    /// client).
    pub fn dial(
        &mut self,
        dial: &mut Dialer,
        now: Instant,
        limits: &Limits,
        client: Option<Peer>,
    ) -> Dialing {
        // A held client reported a hang-up, an error or a FIN: if it has
        // gone, its slot and fd are freed now, not at the hold's end.
        if self.troubled[0] && dial.is_held() && crate::hold::client_gone(&self.client, true) {
            proto::debug!(
                "client{} gone while held for backend {}; closing",
                Who(client),
                dial.target
            );
            return Dialing::Next(Next::Close { error: false });
        }
        let ready = self.backend_ready.writable;
        // Writable with no error or hang-up reported: the connect has
        // succeeded, and SO_ERROR (with getpeername) would only say so.
        let known = ready && self.backend.is_some() && !self.troubled[1];
        let step = if known {
            dial.connected(now)
        } else {
            // A hang-up reported before any hold: should one begin, the
            // client is asked first, and not held if gone. One call site
            // either way: the dialer is inlined here once.
            let mut net = crate::backend::Real {
                hung_up: self.troubled[0].then_some((&self.client, true)),
            };
            dial.step_on(&mut net, &mut self.backend, ready, now, limits)
        };
        Dialing::Next(match step {
            Step::Wait => Next::Continue,
            Step::Pending => {
                self.backend_ready.writable = false;
                Next::Continue
            }
            Step::Register => {
                self.backend_ready = Ready::default();
                self.troubled[1] = false;
                self.hung_up[1] = false;
                self.urgent[1] = false;
                Next::RegisterBackend
            }
            Step::Connected => {
                self.lease = dial.take_lease();
                // A tcp client whose reset was reported before its backend
                // connected is gone: nothing of it is forwarded (its bytes
                // go with it), and the backend connection closes unused.
                // Asked only when an event said so (no syscall on the
                // common path). A FIN alone is a half-close, honoured as
                // everywhere (`hold::client_reset`). A unix client has no
                // reset: its close after writing is its normal end (a
                // message sent, then gone), so its bytes still go.
                if self.troubled[0]
                    && matches!(self.client, Stream::Tcp(_))
                    && crate::hold::client_reset(&self.client)
                {
                    proto::debug!(
                        "client{} gone before backend {} connected; closing without forwarding",
                        Who(client),
                        dial.target
                    );
                    return Dialing::Next(Next::Close { error: false });
                }
                if let Some(Stream::Tcp(s)) = &self.backend {
                    let _ = s.set_nodelay(true);
                    self.ack_owed = true;
                }
                return Dialing::Connected;
            }
            Step::Failed(why) | Step::TimedOut(why) => {
                proto::warn!("{why}; closing client{}", Who(client));
                Next::Close { error: true }
            }
            Step::Gone => {
                proto::debug!(
                    "client{} gone before backend {} was reached; closing, not holding",
                    Who(client),
                    dial.target
                );
                Next::Close { error: false }
            }
        })
    }
}

impl Sockets {
    /// What a short read from the client (0) or backend (1) socket proves
    /// (`Duplex::short_reads`).
    fn short_read(&self, i: usize, tcp: bool) -> ShortRead {
        if !tcp || self.urgent[i] {
            ShortRead::Unknown
        } else if self.hung_up[i] {
            ShortRead::End
        } else if self.troubled[i] {
            ShortRead::Unknown
        } else {
            ShortRead::Empty
        }
    }

    /// Relay both ways as far as readiness allows once connected (tcp and
    /// unix alike): count the bytes, note activity ([`Sockets::touch`]),
    /// close when both directions ended.
    pub fn relay<D: Direction>(
        &mut self,
        relay: &mut Duplex<D>,
        peer: &dyn std::fmt::Display,
        now: Instant,
    ) -> Next {
        let Some(b) = self.backend.as_ref() else {
            return Next::Close { error: true };
        };
        relay.short_reads(
            self.short_read(0, matches!(self.client, Stream::Tcp(_))),
            self.short_read(1, matches!(b, Stream::Tcp(_))),
        );
        relay.urgent_data(self.urgent[0], self.urgent[1]);
        let p = relay.pump(
            self.client.as_fd(),
            &mut self.client_ready,
            b.as_fd(),
            &mut self.backend_ready,
            peer,
        );
        if std::mem::take(&mut self.ack_owed) && p.up == 0 && relay.flows().0 == Flow::Open {
            // Nothing went to the backend (a server that speaks first, a
            // client that has not yet): the ACK now, or the backend would
            // not see the connection before Linux's 200 ms timer.
            let _ = crate::stream::set_quickack(b.as_fd(), true);
        }
        if p.active() {
            self.touch(now);
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
    /// `peer`: its address as `accept4` returned it (None for a unix
    /// client), the one its PROXY header and log lines name.
    fn new(
        client: Stream,
        peer: Option<std::net::SocketAddr>,
        config: &WorkerConfig,
        now: Instant,
    ) -> Option<Self>;
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
        let Some(c) = C::new(client, peer, cx.config, cx.now) else {
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
            self.close(cx, slot, true);
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
        let next = c.on_timer(cx.now, cx.config);
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

    fn wake(&mut self, cx: &mut Cx) {
        let woken: Vec<usize> = self
            .conns
            .iter_mut()
            .filter_map(|(slot, c)| c.wake(cx.now, cx.config).then_some(slot))
            .collect();
        for slot in woken {
            self.drive(cx, slot);
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
            let next = c.drive(cx.now, cx.config);
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
        let (up, down) = std::mem::take(&mut io.moved);
        cx.stats.bytes_in += up;
        cx.stats.bytes_out += down;
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
                    self.close(cx, slot, true);
                    return Some(false);
                }
                Some(true)
            }
            Next::Close { error } => {
                self.close(cx, slot, error);
                Some(false)
            }
        }
    }

    fn close(&mut self, cx: &mut Cx, slot: usize, error: bool) {
        // Closing the fds removes them from epoll; no deregister needed.
        if self.conns.remove(slot).is_some() {
            cx.stats.errors += u64::from(error);
            proto::debug!(
                "connection closed{} ({} open)",
                if error { " on an error" } else { "" },
                self.conns.len()
            );
        }
    }
}
