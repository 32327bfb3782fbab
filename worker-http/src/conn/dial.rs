//! The Connecting phase: reaching a request's backend with runtime's
//! [`Dialer`] (connect, the short retry while a provider restarts, the
//! connect timeout): this file only registers the dialer's socket under
//! the http worker's token scheme and maps its outcome to a status. A
//! pooled connection skips all of this (see `Conn::start_exchange`).

use super::exchange::Exchange;
use super::record::Cause;
use super::{interest, BackendConn, Conn, Ctx, Fail, Phase};
use crate::keys::{self, Owner};
use runtime::backend::{Dialer, Step};
use runtime::stream::Ready;
use std::os::fd::AsRawFd;
use std::rc::Rc;

impl Conn {
    /// Connect (again) to the exchange's backend, with a new dialer (and
    /// so a new connect timeout).
    pub(super) fn start_connect(
        &mut self,
        cx: &mut Ctx,
        mut ex: Box<Exchange>,
    ) -> Result<(), Fail> {
        // Replicas: the dialer takes the exchange's choice to fail over.
        let dial = match ex.choice.take() {
            Some(c) => Dialer::balanced(c, cx.now, cx.limits),
            None => Dialer::new(ex.route.backend.clone(), cx.now, cx.limits),
        };
        ex.rec.dialling(cx.now);
        let next = Phase::Connecting {
            ex,
            dial: Box::new(dial),
            socket: None,
        };
        self.enter(next, cx.spares);
        self.connecting(cx).map(|_| ())
    }

    pub(super) fn connecting(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let Phase::Connecting { ex, dial, socket } = &mut self.phase else {
            return Ok(false);
        };
        // A held request whose client reported a hang-up: if the client
        // has gone (a reset, a close, or a FIN: one that shuts its side
        // while its request waits for a backend has given up, see
        // `runtime::hold::client_gone`), the request ends now and its slot
        // comes back, not at the hold's end.
        if self.c_hup && dial.is_held() && runtime::hold::client_gone(&self.client, false) {
            proto::debug!(
                "client gone while its request was held for {}; closing",
                dial.target
            );
            self.ended(cx.ledger, cx.now, None, Some(Cause::ClientGone));
            self.enter(Phase::Done, cx.spares);
            return Ok(false);
        }
        let (mut stream, kept) = match socket.take() {
            Some(b) => (Some(b.stream), (b.ready, b.hup)),
            None => (None, (Ready::default(), false)),
        };
        let ready = kept.0.writable || kept.0.readable;
        // A hang-up reported before any hold: should one begin, the client
        // is asked first, and not held if gone (no syscall otherwise). One
        // call site either way: the dialer is inlined here once.
        let mut net = runtime::backend::Real {
            hung_up: self.c_hup.then_some((&self.client, false)),
        };
        let step = dial.step_on(&mut net, cx.reach, &mut stream, ready, cx.now, cx.limits);
        // A hold begins or ends inside a step, at its `now`.
        ex.rec.held(dial.is_held(), cx.now);
        // The same socket keeps what the loop recorded for it; a new one,
        // or one still connecting after it reported, starts afresh.
        let (ready, hup) = match step {
            Step::Register => (Ready::default(), false),
            Step::Pending => (Ready::default(), kept.1),
            _ => kept,
        };
        *socket = stream.map(|stream| BackendConn { stream, ready, hup });
        match step {
            Step::Wait | Step::Pending => Ok(false),
            Step::Register => {
                let Some(b) = socket.as_mut() else {
                    return Err(Fail::Abort(
                        Cause::Unreachable,
                        "dialer gave no socket".into(),
                    ));
                };
                let fd = b.stream.as_raw_fd();
                cx.owners.set(fd, Owner::Conn(cx.slot));
                cx.registry
                    .register(&mut b.stream, keys::backend(fd), interest())
                    .map_err(|e| {
                        let why = format!("registering backend socket: {e}");
                        Fail::Status(502, Cause::Unreachable, why)
                    })?;
                Ok(true)
            }
            Step::Connected => {
                ex.rec.dialled(cx.now);
                keep_choice(ex, cx, dial);
                self.connected()
            }
            Step::Failed(why) => Err(Fail::Status(502, Cause::Unreachable, why)),
            Step::TimedOut(why) => Err(Fail::Status(504, Cause::ConnectTimeout, why)),
            Step::Gone => {
                proto::debug!(
                    "client gone before its request was held for {}; closing",
                    dial.target
                );
                self.ended(cx.ledger, cx.now, None, Some(Cause::ClientGone));
                self.enter(Phase::Done, cx.spares);
                Ok(false)
            }
        }
    }

    /// The backend is reached: on to the Exchange phase, with its socket.
    fn connected(&mut self) -> Result<bool, Fail> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Connecting {
                ex,
                socket: Some(backend),
                ..
            } => {
                self.phase = Phase::Exchange { ex, backend };
                Ok(true)
            }
            other => {
                self.phase = other;
                Err(Fail::Abort(
                    Cause::Unreachable,
                    "connected without a socket".into(),
                ))
            }
        }
    }

    /// Still connecting (held, or in the short retry): dial the route's
    /// backend as the table has it now (an Update moved the provider), at
    /// once. true: it was connecting, drive it.
    pub fn wake(&mut self, cx: &mut Ctx) -> bool {
        let Phase::Connecting { ex, dial, .. } = &mut self.phase else {
            return false;
        };
        if let Some(now) = cx.routes.same_route(&ex.route) {
            // The head was written for the old entry; only the backend
            // changes (and with it where the connection is pooled).
            let to = match &now.replicas {
                // Replicas: the same pool keeps its choice; a new pool
                // (a replica added, removed or moved) is a new pick.
                Some(r) if dial.pool().is_some_and(|p| p[..] == r.pool[..]) => None,
                Some(r) => {
                    let c = cx.reach.choose(r.pool.clone(), r.policy);
                    let b = c.backend().clone();
                    dial.rechoose(c, cx.now);
                    Some(b)
                }
                None if now.backend != ex.route.backend => {
                    dial.retarget(&now.backend, cx.now);
                    Some(now.backend.clone())
                }
                None => None,
            };
            if let Some(b) = to.filter(|b| *b != ex.route.backend) {
                let mut e = (*ex.route).clone();
                e.backend = b;
                ex.route = Rc::new(e);
            }
        }
        dial.wake(cx.now);
        true
    }
}

/// Connected through a route with replicas: the exchange keeps the
/// choice (its count) and, after a fail-over, the entry of the replica
/// reached (the connection is pooled under that backend).
fn keep_choice(ex: &mut Exchange, cx: &Ctx, dial: &mut Dialer) {
    let Some(c) = dial.take_choice() else {
        return;
    };
    if ex.route.backend != *c.backend() {
        ex.route = match cx.routes.replica(c.pool(), c.index()) {
            Some(e) => e,
            // An update replaced the table meanwhile: the same route,
            // aimed where the connection went (it is pooled there).
            None => {
                let mut e = (*ex.route).clone();
                e.backend = c.backend().clone();
                Rc::new(e)
            }
        };
    }
    ex.choice = Some(c);
}
