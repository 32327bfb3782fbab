//! One proxied unix connection: client <-> provider socket, as a small
//! state machine.
//!
//! ```text
//!   accept ──> Connecting ──(connect ok)──> Relaying ──(both ways done)──> closed
//!                 │  ▲ refused / no socket yet: retry after 25, 50, 100, 200 ms, then
//!                 │  │ held (runtime::hold) until --hold-timeout; an Update (a provider
//!                 │  │ with a new pid) or a health check retries at once, there
//!                 └──┘ timeout / other error / hold spent ──> closed (client just closed)
//! ```
//! In `Relaying`, the connection is a [`Duplex`] of two [`FdRelay`]s:
//! bytes and the fds sent with them (`SCM_RIGHTS`) go through; an end or
//! a failure of one direction is handled by `runtime::duplex` (EOF passed on
//! as half-close, a failed destination ends only its own direction), and
//! the connection ends when both directions have. A connection with one
//! direction ended and no traffic for `half_close_linger_ms` is closed; an
//! open one never idles out (display and bus protocols sit idle for hours).
//! Its access line names the client by the pid and uid the kernel gives
//! (`SO_PEERCRED`, asked only for a line) and counts the fds passed.

use proto::ctl::{End, WorkerConfig};
use proto::limits::Limits;
use proto::plan::Route;
use proto::types::Backend;
use runtime::backend::Dialer;
use runtime::conns::{Connection, Dialing, Ending, Facts, Next, Sockets};
use runtime::duplex::Duplex;
use runtime::event_loop::Cx;
use runtime::fdrelay::FdRelay;
use runtime::route_book::RouteRef;
use runtime::stream::Stream;
use std::time::{Duration, Instant};

pub struct Conn {
    io: Sockets,
    dial: Dialer,
    relaying: bool,
    relay: Duplex<FdRelay>,
}

impl Conn {
    /// `at`: the route's reference (it counts under it).
    fn for_route(
        client: Stream,
        route: &Route,
        at: RouteRef,
        limits: &Limits,
        now: Instant,
    ) -> Conn {
        // fds can only travel on to a unix socket; a tcp provider gets bytes.
        let to_unix = matches!(route.via.backend, Backend::Unix(_));
        Conn {
            io: Sockets::new(client, now, at),
            dial: Dialer::new(route.via.backend.clone(), now, limits),
            relaying: false,
            relay: Duplex::new(FdRelay::new(to_unix), FdRelay::new(true)),
        }
    }

    /// Fds passed through so far (both directions).
    fn fds_passed(&self) -> u64 {
        self.relay.up.fds_passed + self.relay.down.fds_passed
    }

    /// Advance the connection as far as readiness allows.
    fn advance(&mut self, cx: &mut Cx) -> Next {
        let next = if self.relaying {
            self.relay(cx)
        } else {
            self.connect(cx)
        };
        self.io.set_deadline(self.next_deadline(&cx.config.limits));
        next
    }

    fn connect(&mut self, cx: &mut Cx) -> Next {
        // A unix client has no address.
        let limits = &cx.config.limits;
        match self.io.dial(&mut self.dial, cx.reach, cx.now, limits, None) {
            Dialing::Next(next) => next,
            Dialing::Connected => {
                self.relaying = true;
                self.io.touch(cx.now);
                self.relay(cx)
            }
        }
    }

    fn relay(&mut self, cx: &mut Cx) -> Next {
        self.io.relay(&mut self.relay, &self.dial.target, cx)
    }

    /// A timer fired: retry or give up a connect, or end a lingering
    /// half-closed connection.
    fn expire(&mut self, cx: &mut Cx) -> Next {
        if !self.io.due(cx.now) {
            return Next::Continue;
        }
        if !self.relaying {
            return self.advance(cx);
        }
        proto::debug!(
            "closing half-closed connection to {} idle for {} ms",
            self.dial.target,
            cx.config.limits.half_close_linger_ms
        );
        Next::Close(Ending::quiet(End::Timeout, "half_close_linger"))
    }

    fn next_deadline(&self, limits: &Limits) -> Option<Instant> {
        if !self.relaying {
            return Some(self.dial.deadline());
        }
        self.relay
            .lingering()
            .then(|| self.io.last_activity() + Duration::from_millis(limits.half_close_linger_ms))
    }
}

impl Connection for Conn {
    /// A unix endpoint has exactly one route (the plan never groups two).
    fn new(client: Stream, _peer: Option<std::net::SocketAddr>, cx: &mut Cx) -> Option<Conn> {
        let config = cx.config;
        let route = config.endpoint.routes.first()?;
        let at = cx.ledger.routes.route(0);
        Some(Conn::for_route(client, route, at, &config.limits, cx.now))
    }
    fn drive(&mut self, cx: &mut Cx) -> Next {
        self.advance(cx)
    }
    fn on_timer(&mut self, cx: &mut Cx) -> Next {
        self.expire(cx)
    }
    fn sockets(&mut self) -> &mut Sockets {
        &mut self.io
    }
    fn facts(&self) -> Facts<'_> {
        Facts {
            io: &self.io,
            client: None,
            backend: Some(&self.dial.target),
            fds: Some((self.relay.up.fds_passed, self.relay.down.fds_passed)),
        }
    }
    /// Still connecting: the one route's provider as the Update has it
    /// (a restarted provider has a new pid, so a new root), at once.
    fn wake(&mut self, cx: &mut Cx) -> bool {
        if self.relaying {
            return false;
        }
        let now = cx.now;
        if let Some(r) = cx.config.endpoint.routes.first() {
            if r.via.backend != self.dial.target {
                let to_unix = matches!(r.via.backend, Backend::Unix(_));
                self.relay = Duplex::new(FdRelay::new(to_unix), FdRelay::new(true));
            }
            self.dial.retarget(&r.via.backend, now);
        }
        self.dial.wake(now);
        true
    }
    fn refuse_update(_old: &WorkerConfig, new: &WorkerConfig) -> Option<String> {
        (new.endpoint.routes.len() != 1).then(|| {
            format!(
                "a unix endpoint has one route, the update has {}",
                new.endpoint.routes.len()
            )
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Fds still queued are closed with the relays; say how many went through.
        let n = self.fds_passed();
        if n > 0 {
            proto::debug!(
                "connection to {} closed; {n} fd(s) passed",
                self.dial.target
            );
        }
    }
}
