//! One client connection as one type: its state machine from request head
//! to response end, keep-alive, errors and the final close. Each phase
//! holds what only it needs (`Phase`); the child modules are the phases'
//! steps, and only they see the connection's fields: the handler
//! (`conns.rs`) goes through the methods here.
//!
//! LIFECYCLE
//! ```text
//!  accept -> ReadHead --head ok--> Connecting --> Exchange --response done--> ReadHead (keep-alive)
//!               |  (pooled backend) ------------^     |  \--101--> Tunnel --both EOF--> Done
//!               |                                     \--close-after--> Closing --> Done
//!               +--bad head / no route / timeouts--> Closing (canned error, lingering close)
//! ```
//! `drive` runs the machine until no socket can make progress (edge-
//! triggered readiness requires it); the event loop calls it after every
//! event and timer for this connection. One exchange at a time: pipelined
//! requests wait in the client buffer, so answers go out in order.
//!
//! The children, by phase: `read_head.rs` (ReadHead), `exchange.rs` (an
//! exchange's data, how it starts and ends), `dial.rs` (Connecting),
//! `transfer.rs` and `response.rs` (Exchange), `tunnel.rs` (Tunnel),
//! `closing.rs` (Closing, and the 503 at a drain's deadline); `timers.rs`
//! holds the deadlines of every phase and what their passing does;
//! `record.rs` writes a request down when it ends (its route's counters,
//! its access line), called once from wherever it ends.

mod closing;
mod dial;
mod exchange;
mod read_head;
mod record;
mod response;
mod timers;
mod transfer;
mod tunnel;

#[cfg(test)]
mod tests;

pub use closing::Sink;

use crate::buf::{Buf, Out, Spares};
use crate::errors;
use crate::keys::Owners;
use crate::pool::Pool;
use crate::route::Table;
use exchange::Exchange;
use mio::event::Event;
use mio::{Interest, Registry, Token};
use proto::ctl::Stats;
use proto::limits::Limits;
use record::Cause;
use runtime::backend::Dialer;
use runtime::stream::{Ready, Stream};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;
use tunnel::Tunnel;

/// Interest in a client or backend socket: `PRIORITY` too, so urgent data
/// is reported (a read stops short at it with bytes behind, which a
/// trusted short read would take for an empty socket; see `Buf::read_head`).
fn interest() -> Interest {
    Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY
}

/// What a connection needs from the loop and the handler while it runs:
/// all it may change besides itself. Built in one place,
/// `Conns::with_conn`.
pub struct Ctx<'a> {
    pub now: Instant,
    pub routes: &'a Table,
    pub limits: &'a Limits,
    pub pool: &'a mut Pool,
    pub registry: &'a Registry,
    pub stats: &'a mut Stats,
    pub draining: bool,
    /// Who holds which backend socket (see `keys.rs`).
    pub owners: &'a mut Owners,
    /// This connection's slot, recorded as the owner of its backend socket.
    pub slot: usize,
    /// The worker's full-size buffers not in use (`buf.rs`).
    pub spares: &'a mut Spares,
    /// Where a lingering close reads what it discards.
    pub sink: &'a mut Sink,
    /// The backends' side (dialer, replicas), lent by the loop.
    pub reach: &'a mut runtime::backend::Reach,
    /// The relays' pipes and copy buffers, lent by the loop.
    pub stock: &'a mut runtime::stock::Stock,
    /// Where a request that ends is written down (`record.rs`).
    pub ledger: &'a mut runtime::ledger::Ledger,
}

impl Ctx<'_> {
    /// What a body's pump borrows for one call.
    pub fn lent(&mut self) -> crate::body::Lent<'_> {
        crate::body::Lent {
            spares: self.spares,
            stock: self.stock,
        }
    }
}

/// The backend side of a connection.
struct BackendConn {
    stream: Stream,
    ready: Ready,
    /// A hang-up (the backend's FIN: EPOLLRDHUP), an error or urgent data
    /// was reported: a short read no longer proves the socket empty
    /// (`Buf::read_head`), and the connection is not parked.
    hup: bool,
}

/// Where the connection is, with what only that phase needs. An idle
/// connection is in `ReadHead`: the other phases' data is boxed (an
/// exchange, a dialer, a tunnel) or small, so it costs no room there.
enum Phase {
    ReadHead {
        /// Waiting for a request since then.
        since: Instant,
        /// The current request head's first byte arrived then.
        head_since: Option<Instant>,
        /// No request has been read on this connection yet.
        first: bool,
    },
    /// Reaching the request's backend. Boxed: the dialer (hold, replicas)
    /// is 192 bytes, and an idle connection would carry it too.
    Connecting {
        ex: Box<Exchange>,
        dial: Box<Dialer>,
        /// The socket being connected, once the dialer made one.
        socket: Option<BackendConn>,
    },
    /// With the backend: the request going out, the response coming back.
    Exchange {
        ex: Box<Exchange>,
        backend: BackendConn,
    },
    /// After a `101`: bytes both ways.
    Tunnel(Box<Tunnel>),
    /// The lingering close, from `since`: our side shut once the last
    /// bytes are out, what the client still sends discarded.
    Closing {
        since: Instant,
        shut: bool,
        discarded: usize,
    },
    Done,
}

/// How a step failed, and so what the client gets; the [`Cause`] is what
/// the request is written down with.
#[derive(Debug)]
enum Fail {
    /// Answer with this status, unless a response already started; close.
    Status(u16, Cause, String),
    /// The backend failed before any response byte: retry once if the
    /// connection was a pooled one and the request can be replayed, else 502.
    Backend(String),
    /// Close now; the client gets what it got so far.
    Abort(Cause, String),
}

pub struct Conn {
    client: Stream,
    cr: Ready,
    /// A hang-up (the client's FIN: EPOLLRDHUP), an error or urgent data
    /// was reported: a short read no longer proves the socket empty
    /// (`Buf::read_head`).
    c_hup: bool,
    /// Close after the current exchange (drain).
    closing: bool,
    ip: Option<IpAddr>,
    /// The client's port (access lines; in the slot's padding).
    port: u16,
    /// Client bytes: the request head being read, then what follows it.
    cbuf: Buf,
    /// Bytes queued for the client: response heads, a canned error.
    cout: Out,
    phase: Phase,
    /// When this connection's live timer entry fires.
    armed: Option<Instant>,
}

impl Conn {
    /// `peer`: the client's address as `accept4` returned it.
    pub fn new(
        client: Stream,
        peer: Option<std::net::SocketAddr>,
        now: Instant,
        max_head: usize,
    ) -> Conn {
        Conn {
            client,
            // Try reading at once: the request often arrived before accept.
            cr: Ready {
                readable: true,
                writable: true,
            },
            c_hup: false,
            closing: false,
            ip: peer.map(|a| a.ip()),
            port: peer.map_or(0, |a| a.port()),
            cbuf: Buf::new(max_head),
            cout: Out::default(),
            phase: Phase::ReadHead {
                since: now,
                head_since: None,
                first: true,
            },
            armed: None,
        }
    }

    pub fn register(&mut self, reg: &Registry, token: Token) -> io::Result<()> {
        reg.register(&mut self.client, token, interest())
    }

    /// The loop reported readiness on the client socket. `hup`: whatever
    /// makes a short read prove nothing (a FIN or error queued behind the
    /// data, urgent data).
    pub fn client_ready(&mut self, ev: &Event, hup: bool) {
        self.cr.add(ev);
        self.c_hup |= hup;
    }

    /// The loop reported readiness on backend socket `fd`, which this
    /// connection owns (`keys.rs`): noted if it is still this connection's
    /// backend.
    pub fn backend_ready(&mut self, fd: RawFd, ev: &Event, hup: bool) {
        if let Some(b) = self.backend_mut().filter(|b| b.stream.as_raw_fd() == fd) {
            b.ready.add(ev);
            b.hup |= hup;
        }
    }

    fn backend_mut(&mut self) -> Option<&mut BackendConn> {
        match &mut self.phase {
            Phase::Connecting { socket, .. } => socket.as_mut(),
            Phase::Exchange { backend, .. } => Some(backend),
            Phase::Tunnel(t) => Some(&mut t.backend),
            _ => None,
        }
    }

    /// The exchange in progress, reaching its backend or with it.
    fn exchange(&self) -> Option<&Exchange> {
        match &self.phase {
            Phase::Connecting { ex, .. } | Phase::Exchange { ex, .. } => Some(ex),
            _ => None,
        }
    }

    /// Stop after the current exchange; an idle connection closes now.
    pub fn drain(&mut self) {
        self.closing = true;
    }

    fn wants_close(&self, cx: &Ctx) -> bool {
        self.closing || cx.draining
    }

    /// Run until nothing can progress. Returns false once finished.
    pub fn drive(&mut self, cx: &mut Ctx) -> bool {
        // Bounded: every step either progresses or stops; this only guards
        // against a logic error turning into a busy loop.
        for _ in 0..10_000 {
            let progressed = match self.step(cx) {
                Ok(p) => p,
                Err(f) => {
                    self.fail(cx, f);
                    true
                }
            };
            if matches!(self.phase, Phase::Done) {
                return false;
            }
            if !progressed {
                return true;
            }
        }
        proto::error!("connection made no headway in 10000 steps; closing it");
        false
    }

    fn step(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        match self.phase {
            Phase::ReadHead { .. } => self.read_head(cx),
            Phase::Connecting { .. } => self.connecting(cx),
            Phase::Exchange { .. } => self.transfer(cx),
            Phase::Tunnel(_) => Ok(self.tunnel(cx)),
            Phase::Closing { .. } => Ok(self.closing_step(cx.sink)),
            Phase::Done => Ok(false),
        }
    }

    /// Move on to `next`. What the phase left behind goes with it: its
    /// backend socket closes and its exchange's buffer goes back to the
    /// spares (a dropped buffer would be allocated and zeroed again).
    fn enter(&mut self, next: Phase, spares: &mut Spares) {
        if let Phase::Connecting { ex, .. } | Phase::Exchange { ex, .. } = &mut self.phase {
            ex.bbuf.give_back(spares);
        }
        self.phase = next;
    }

    fn fail(&mut self, cx: &mut Ctx, f: Fail) {
        match f {
            Fail::Backend(why) => {
                let holding = cx.limits.hold_timeout_ms > 0;
                if self.exchange().is_some_and(|ex| ex.can_retry(holding)) {
                    proto::debug!(
                        "backend connection failed before answering ({why}); retrying on a new one"
                    );
                    if let Some(mut ex) = self.take_exchange() {
                        ex.rewind(cx.now);
                        if let Err(f) = self.start_connect(cx, ex) {
                            self.fail(cx, f);
                        }
                    }
                    return;
                }
                self.fail(cx, Fail::Status(502, Cause::BackendClosed, why));
            }
            Fail::Status(status, cause, why) => {
                cx.stats.errors += 1;
                let ex = self.exchange();
                let route = ex.map_or("-", |e| e.route.name.as_str());
                if status >= 500 {
                    proto::info!("{status} for {} (route {route}): {why}", self.peer());
                } else {
                    proto::debug!("{status} for {}: {why}", self.peer());
                }
                // Part of a response is out: an error page cannot follow.
                let responded =
                    ex.is_some_and(|ex| ex.responded()) || matches!(self.phase, Phase::Tunnel(_));
                if responded {
                    self.ended(cx.ledger, cx.now, None, Some(cause));
                    self.enter(Phase::Done, cx.spares);
                    return;
                }
                // A HEAD refused before its exchange began (404) is still
                // at the front of the client buffer.
                let head_only = match ex {
                    Some(ex) => ex.is_head,
                    None => self.cbuf.bytes().starts_with(b"HEAD "),
                };
                self.cout.clear();
                let answer = errors::response(status, head_only);
                self.cout.buf().extend_from_slice(&answer);
                let answered = Some((status, answer.len()));
                self.ended(cx.ledger, cx.now, answered, Some(cause));
                self.enter(Phase::closing(cx.now), cx.spares);
            }
            Fail::Abort(cause, why) => {
                cx.stats.errors += 1;
                proto::debug!("closing connection from {}: {why}", self.peer());
                self.ended(cx.ledger, cx.now, None, Some(cause));
                self.enter(Phase::Done, cx.spares);
            }
        }
    }

    /// The exchange in progress, taken out of its phase (which ends: its
    /// backend socket, if any, closes).
    fn take_exchange(&mut self) -> Option<Box<Exchange>> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Connecting { ex, .. } | Phase::Exchange { ex, .. } => Some(ex),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// The Exchange phase's exchange and backend connection, taken out to
    /// move on (the phase is `Done` until the caller sets the next one).
    fn take_exchanging(&mut self) -> Option<(Box<Exchange>, BackendConn)> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Exchange { ex, backend } => Some((ex, backend)),
            other => {
                self.phase = other;
                None
            }
        }
    }

    fn peer(&self) -> String {
        self.ip
            .map_or_else(|| "unix client".to_string(), |i| i.to_string())
    }

    /// The loop is done with this connection until its next event or
    /// timer: give back the full-size buffers it does not need to keep
    /// (`Buf::settle`), so an idle or trickling client holds only its bytes.
    pub fn settle(&mut self, spares: &mut Spares) {
        self.cbuf.settle(spares);
        if let Phase::Connecting { ex, .. } | Phase::Exchange { ex, .. } = &mut self.phase {
            ex.bbuf.settle(spares);
        }
    }

    /// The connection is finished and about to be dropped: its buffers go
    /// back to the spares.
    pub fn give_back(&mut self, spares: &mut Spares) {
        self.cbuf.give_back(spares);
        self.enter(Phase::Done, spares);
    }
}
