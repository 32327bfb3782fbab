//! One proxied unix connection: client <-> provider socket, as a small
//! state machine.
//!
//! ```text
//!   accept ──> Connecting ──(connect ok)──> Relaying ──(both ways done)──> closed
//!                 │  ▲ refused / no socket yet: retry after 25, 50, 100, 200 ms
//!                 └──┘ timeout / other error / retries spent ──> closed (client just closed)
//! ```
//! In `Relaying`, each direction is an [`FdRelay`]: bytes and the fds sent
//! with them (`SCM_RIGHTS`) go through; EOF from one side is passed on as
//! `shutdown(SHUT_WR)` of the other (half-close), and the connection ends
//! only when both directions are finished. A half-closed connection with
//! no traffic for `half_close_linger_ms` is closed; an open one never idles
//! out (display and bus protocols sit idle for hours).

use crate::relay::FdRelay;
use proto::backend::Dialer;
use proto::ctl::{Limits, WorkerConfig};
use proto::event_loop::{Connection, Dialing, Next, Sockets};
use proto::graph::Backend;
use proto::plan::Route;
use proto::stream::Stream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

pub struct Conn {
    io: Sockets,
    dial: Dialer,
    relaying: bool,
    up: FdRelay,
    down: FdRelay,
    last_activity: Instant,
}

impl Conn {
    fn for_route(client: Stream, route: &Route, limits: &Limits, now: Instant) -> Conn {
        // fds can only travel on to a unix socket; a tcp provider gets bytes.
        let to_unix = matches!(route.backend, Backend::Unix(_));
        Conn {
            io: Sockets::new(client, now),
            dial: Dialer::new(route.backend.clone(), now, limits),
            relaying: false,
            up: FdRelay::new(to_unix),
            down: FdRelay::new(true),
            last_activity: now,
        }
    }

    /// Fds passed through so far (both directions).
    fn fds_passed(&self) -> u64 {
        self.up.fds_passed + self.down.fds_passed
    }

    /// Advance the connection as far as readiness allows.
    fn advance(&mut self, now: Instant, limits: &Limits) -> Next {
        let next = if self.relaying {
            self.relay(now)
        } else {
            self.connect(now, limits)
        };
        self.io.deadline = self.next_deadline(limits);
        next
    }

    fn connect(&mut self, now: Instant, limits: &Limits) -> Next {
        match self.io.dial(&mut self.dial, now, limits) {
            Dialing::Next(next) => next,
            Dialing::Connected => {
                self.relaying = true;
                self.last_activity = now;
                self.relay(now)
            }
        }
    }

    fn relay(&mut self, now: Instant) -> Next {
        let Some(b) = self.io.backend.as_ref() else {
            return Next::Close { error: true };
        };
        let (c, bfd) = (self.io.client.as_fd(), b.as_fd());
        let up = self.up.pump(
            c,
            &mut self.io.client_ready,
            bfd,
            &mut self.io.backend_ready,
        );
        let down = self.down.pump(
            bfd,
            &mut self.io.backend_ready,
            c,
            &mut self.io.client_ready,
        );
        match (up, down) {
            (Ok(u), Ok(d)) => {
                if u.bytes + d.bytes > 0 || u.eof || d.eof {
                    self.last_activity = now;
                }
                self.io.moved.0 += u.bytes;
                self.io.moved.1 += d.bytes;
                if self.up.dst_shut && self.down.dst_shut {
                    Next::Close { error: false }
                } else {
                    Next::Continue
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                // A peer that went away ends the connection; not a proxy fault.
                proto::debug!("relay with {}: {e}", self.dial.target);
                Next::Close { error: false }
            }
        }
    }

    /// A timer fired: retry or give up a connect, or end a lingering
    /// half-closed connection.
    fn expire(&mut self, now: Instant, limits: &Limits) -> Next {
        match self.io.deadline {
            Some(d) if d <= now => {}
            _ => return Next::Continue,
        }
        if !self.relaying {
            return self.advance(now, limits);
        }
        proto::debug!(
            "closing half-closed connection to {} idle for {} ms",
            self.dial.target,
            limits.half_close_linger_ms
        );
        Next::Close { error: false }
    }

    fn next_deadline(&self, limits: &Limits) -> Option<Instant> {
        if !self.relaying {
            return Some(self.dial.deadline());
        }
        let half_closed = self.up.dst_shut != self.down.dst_shut;
        half_closed.then(|| self.last_activity + Duration::from_millis(limits.half_close_linger_ms))
    }
}

impl Connection for Conn {
    /// A unix endpoint has exactly one route (the plan never groups two).
    fn new(client: Stream, config: &WorkerConfig, now: Instant) -> Option<Conn> {
        let route = config.endpoint.routes.first()?;
        Some(Conn::for_route(client, route, &config.limits, now))
    }
    fn drive(&mut self, now: Instant, config: &WorkerConfig) -> Next {
        self.advance(now, &config.limits)
    }
    fn on_timer(&mut self, now: Instant, config: &WorkerConfig) -> Next {
        self.expire(now, &config.limits)
    }
    fn sockets(&mut self) -> &mut Sockets {
        &mut self.io
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
