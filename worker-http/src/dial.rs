//! Reaching a request's backend with proto's [`Dialer`] (connect, the
//! short retry while a provider restarts, the connect timeout): this file
//! only registers the dialer's socket under the http worker's token scheme
//! and maps its outcome to a status. A pooled connection skips all of this
//! (see `Conn::start_exchange`).

use crate::conn::{BackendConn, Conn, Ctx, Fail, Phase};
use crate::keys::{self, Owner};
use mio::Interest;
use proto::backend::{Dialer, Step};
use proto::relay::Ready;
use std::os::fd::AsRawFd;
use std::rc::Rc;

impl Conn {
    /// Connect (again) to the exchange's backend, with a new dialer (and
    /// so a new connect timeout).
    pub(crate) fn start_connect(&mut self, cx: &mut Ctx) -> Result<(), Fail> {
        let Some(addr) = self.ex.as_ref().map(|e| e.route.backend.clone()) else {
            return Err(Fail::Abort("connect without a request".into()));
        };
        self.backend = None;
        self.phase = Phase::Connecting(Dialer::new(addr, cx.now, cx.limits));
        self.connecting(cx).map(|_| ())
    }

    pub(crate) fn connecting(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let Phase::Connecting(dial) = &mut self.phase else {
            return Ok(false);
        };
        let (mut socket, kept) = match self.backend.take() {
            Some(b) => (Some(b.stream), (b.ready, b.hup)),
            None => (None, (Ready::default(), false)),
        };
        let ready = kept.0.writable || kept.0.readable;
        let step = dial.step(&mut socket, ready, cx.now, cx.limits);
        // The same socket keeps what the loop recorded for it; a new one,
        // or one still connecting after it reported, starts afresh.
        let (ready, hup) = match step {
            Step::Register => (Ready::default(), false),
            Step::Pending => (Ready::default(), kept.1),
            _ => kept,
        };
        self.backend = socket.map(|stream| BackendConn { stream, ready, hup });
        match step {
            Step::Wait | Step::Pending => Ok(false),
            Step::Register => {
                let Some(b) = self.backend.as_mut() else {
                    return Err(Fail::Abort("dialer gave no socket".into()));
                };
                let fd = b.stream.as_raw_fd();
                cx.owners.set(fd, Owner::Conn(cx.slot));
                cx.registry
                    .register(
                        &mut b.stream,
                        keys::backend(fd),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| Fail::Status(502, format!("registering backend socket: {e}")))?;
                Ok(true)
            }
            Step::Connected => {
                self.phase = Phase::Exchange;
                Ok(true)
            }
            Step::Failed(why) => Err(Fail::Status(502, why)),
            Step::TimedOut(why) => Err(Fail::Status(504, why)),
        }
    }

    /// Still connecting (held, or in the short retry): dial the route's
    /// backend as the table has it now (an Update moved the provider), at
    /// once. true: it was connecting, drive it.
    pub(crate) fn wake(&mut self, cx: &mut Ctx) -> bool {
        let (Phase::Connecting(dial), Some(ex)) = (&mut self.phase, self.ex.as_mut()) else {
            return false;
        };
        if let Some(now) = cx.routes.same_route(&ex.route) {
            if now.backend != ex.route.backend {
                dial.retarget(&now.backend, cx.now);
                // The head was written for the old entry; only the backend
                // changes (and with it where the connection is pooled).
                let mut e = (*ex.route).clone();
                e.backend = now.backend.clone();
                ex.route = Rc::new(e);
            }
        }
        dial.wake(cx.now);
        true
    }
}
