//! One proxied tcp connection: client <-> backend, as a small state machine.
//!
//! ```text
//!   accept ─(sni routes)─> Sniffing ─(ClientHello names a route)─┐
//!     └──────────────────────────────────────────────────────────┴─> Connecting ──(connect ok)──> Relaying ──(both ways done)──> closed
//!                 │  ▲ refused: retry after 25, 50, 100, 200 ms, then held (runtime::hold)
//!                 │  │ until --hold-timeout; an Update or a health check retries at once
//!                 └──┘ timeout / other error / hold spent ──> closed (client just closed)
//! ```
//! In `Relaying`, the connection is a [`Duplex`] of two [`Splice`]s: EOF
//! (or a reset) from one side is passed on as `shutdown(SHUT_WR)` of the
//! other once what was read is delivered, a failed destination ends only
//! its own direction (`runtime::duplex`), and the connection ends when both
//! directions have. A PROXY protocol header is the up direction's prefix;
//! the client address in it, in log lines and in its access line, is the
//! one `accept4` gave, kept for the connection's life
//! (`runtime::stream::Peer`).

use nix::sys::socket::MsgFlags;
use proto::ctl::End;
use proto::limits::Limits;
use proto::plan::Route;
use proto::types::{Backend, ProxyProtocol};
use runtime::backend::Dialer;
use runtime::conns::{Connection, Dialing, Ending, Facts, Next, Sockets};
use runtime::duplex::Duplex;
use runtime::event_loop::Cx;
use runtime::proxy_header;
use runtime::relay::Splice;
use runtime::route_book::RouteRef;
use runtime::stream::{Peer, Stream, Who};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::sni;

/// Bytes waiting in `s` (`FIONREAD`); `usize::MAX` when it cannot say, so
/// the hello is peeked again rather than never.
fn queued(s: &Stream) -> usize {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { nix::libc::ioctl(s.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    if r < 0 {
        usize::MAX
    } else {
        usize::try_from(n).unwrap_or(0)
    }
}

/// `pattern` is a server name, or `*.domain` matching exactly one label.
fn sni_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(dom) => name
            .strip_suffix(dom)
            .and_then(|l| l.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == name,
    }
}

/// What a connection holds in each phase, in one place: what connecting
/// needs and what relaying needs share the room, so an idle connection
/// pays for neither twice, and connecting allocates nothing (a burst of
/// new connections leaves no freed boxes behind in the heap).
pub enum Phase {
    /// Several routes share the address: peek the TLS ClientHello first.
    Sniffing {
        until: Instant,
        /// The whole record's length (header included) once its 5-byte
        /// header has been peeked, else 0: until the socket holds that
        /// much, an event costs a `FIONREAD`, not a peek of everything
        /// again (a hello sent a byte per segment would be copied ~16 Ki
        /// times over).
        need: u16,
    },
    /// Reaching the backend (with the bounded retry while it restarts).
    Connecting(Connecting),
    Relaying(Relaying),
}

/// What a connection needs only until its backend is reached.
pub struct Connecting {
    /// The backend aimed at is `dial.target`.
    dial: Dialer,
    /// The chosen route's sni (its identity among the endpoint's routes),
    /// to find it again after an Update.
    sni: Option<String>,
    proxy_protocol: Option<ProxyProtocol>,
}

/// A connected connection.
pub struct Relaying {
    relay: Duplex<Splice>,
    /// The backend reached, for log lines (a copy, not text: no
    /// allocation per connection for a tcp backend).
    target: Backend,
}

/// The backend in log lines, "-" before a route is chosen.
struct Shown<'a>(Option<&'a Backend>);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(b) => b.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// One slot of the worker's slab per open connection: small, since an idle
/// one keeps it (see the size test in `conn/tests.rs`; README "Measured").
pub struct Conn {
    io: Sockets,
    pub phase: Phase,
    /// From `accept4`: what the PROXY header, log lines and the access
    /// line name, never asked of the socket (a client that has reset has
    /// no peer any more). 19 bytes of alignment 1.
    client: Option<Peer>,
}

impl Conn {
    /// With one route without sni the backend is known at once; otherwise
    /// the ClientHello picks it.
    fn for_routes(client: Stream, peer: Option<Peer>, cx: &mut Cx) -> Conn {
        let config = cx.config;
        let mut c = Conn {
            io: Sockets::new(client, cx.now, RouteRef::NONE),
            phase: Phase::Sniffing {
                until: cx.now + Duration::from_millis(config.limits.head_timeout_ms),
                need: 0,
            },
            client: peer,
        };
        if let [r] = &config.endpoint.routes[..] {
            if r.via.sni.is_none() {
                c.route_to(0, r, cx);
            }
        }
        c
    }

    /// Route `r`, the config's route `index`, is the connection's: it
    /// counts under it, and dials its backend.
    fn route_to(&mut self, index: usize, r: &Route, cx: &mut Cx) {
        self.io.route = cx.ledger.routes.route(index);
        // One backend, or one of the route's replicas by its policy.
        self.phase = Phase::Connecting(Connecting {
            dial: Dialer::for_route(r, cx.reach, cx.now, &cx.config.limits),
            sni: r.via.sni.clone(),
            proxy_protocol: r.via.proxy_protocol,
        });
    }

    /// The backend chosen (aimed at, or reached), for log lines.
    fn target(&self) -> Shown<'_> {
        Shown(match &self.phase {
            Phase::Sniffing { .. } => None,
            Phase::Connecting(c) => Some(&c.dial.target),
            Phase::Relaying(r) => Some(&r.target),
        })
    }

    /// Still connecting: dial the route's backend as the configuration
    /// has it now, at once.
    fn wake(&mut self, cx: &mut Cx) -> bool {
        let Phase::Connecting(c) = &mut self.phase else {
            return false;
        };
        let routes = &cx.config.endpoint.routes;
        if let Some(r) = routes.iter().find(|r| r.via.sni == c.sni) {
            // One backend moved, or the route's replicas changed.
            c.dial.retarget_route(r, cx.reach, cx.now);
            c.proxy_protocol = r.via.proxy_protocol;
        }
        c.dial.wake(cx.now);
        true
    }

    /// Peek at the ClientHello and pick the route whose sni it names.
    fn sniff(&mut self, cx: &mut Cx) -> Next {
        if !self.io.client_ready.readable {
            return Next::Continue;
        }
        let Phase::Sniffing { need, .. } = &mut self.phase else {
            return Next::Continue;
        };
        if *need > 0 && queued(&self.io.client) < usize::from(*need) {
            // Not the whole record yet: nothing to peek for.
            self.io.client_ready.readable = false;
            return Next::Continue;
        }
        let name = match self.peek_hello(cx.stock.scratch(sni::MAX_HELLO)) {
            Ok(name) => name,
            Err(next) => return next,
        };
        let config = cx.config;
        let routes = &config.endpoint.routes;
        match routes
            .iter()
            .position(|r| r.via.sni.as_deref().is_some_and(|s| sni_matches(s, &name)))
        {
            Some(i) => {
                self.route_to(i, &routes[i], cx);
                self.drive_connect(cx)
            }
            None => {
                proto::info!(
                    "no tcp route for TLS server name '{name}'; closing client{}",
                    Who(self.client)
                );
                Next::Close(Ending::failed(End::Refused, "no_sni_route"))
            }
        }
    }

    /// Peek at what the client sent into `buf` (the stock's scratch): the
    /// server name of a whole ClientHello, or what to do meanwhile.
    fn peek_hello(&mut self, buf: &mut [u8]) -> Result<String, Next> {
        let gone = Next::Close(Ending::quiet(End::ClientGone, "closed_before_hello"));
        let n = match nix::sys::socket::recv(self.io.client.as_raw_fd(), buf, MsgFlags::MSG_PEEK) {
            Ok(0) => return Err(gone),
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => {
                self.io.client_ready.readable = false;
                return Err(Next::Continue);
            }
            Err(e) => {
                proto::debug!("recv(MSG_PEEK) from client{}: {e}", Who(self.client));
                return Err(gone);
            }
        };
        match sni::parse(&buf[..n]) {
            sni::Sni::NeedMore if n < buf.len() => {
                // Everything available was peeked; wait for the next edge.
                self.io.client_ready.readable = false;
                if let Phase::Sniffing { need, .. } = &mut self.phase {
                    // MAX_HELLO fits in u16; a longer record is NotTls.
                    *need = sni::record_len(&buf[..n])
                        .and_then(|l| u16::try_from(l).ok())
                        .unwrap_or(0);
                }
                Err(Next::Continue)
            }
            sni::Sni::Found(Some(name)) => Ok(name),
            _ => {
                proto::info!(
                    "client{} did not open with a TLS ClientHello naming a server; closing",
                    Who(self.client)
                );
                Err(Next::Close(Ending::failed(End::Refused, "not_tls")))
            }
        }
    }

    /// Advance the connection as far as readiness allows.
    fn advance(&mut self, cx: &mut Cx) -> Next {
        let next = match self.phase {
            Phase::Sniffing { .. } => self.sniff(cx),
            Phase::Connecting(_) => self.drive_connect(cx),
            Phase::Relaying(_) => self.relay(cx),
        };
        self.io.set_deadline(self.next_deadline(&cx.config.limits));
        next
    }

    fn drive_connect(&mut self, cx: &mut Cx) -> Next {
        let Phase::Connecting(c) = &mut self.phase else {
            return Next::Continue;
        };
        let limits = &cx.config.limits;
        match self
            .io
            .dial(&mut c.dial, cx.reach, cx.now, limits, self.client)
        {
            Dialing::Next(next) => next,
            Dialing::Connected => {
                let mut relay = Duplex::<Splice>::default();
                if let Some(v) = c.proxy_protocol {
                    // Goes out before any client byte. The address the
                    // client connected to is still the socket's after a
                    // reset (getsockname; getpeername is what fails).
                    relay.up.prefix(proxy_header::build(
                        v,
                        self.client.map(|p| p.addr()),
                        self.io.client.local_addr(),
                    ));
                }
                // The backend reached (a replica may have failed over).
                let target = c.dial.target.clone();
                self.phase = Phase::Relaying(Relaying { relay, target });
                self.io.touch(cx.now);
                self.relay(cx)
            }
        }
    }

    fn relay(&mut self, cx: &mut Cx) -> Next {
        let Phase::Relaying(r) = &mut self.phase else {
            return Next::Continue;
        };
        let peer = Shown(Some(&r.target));
        self.io.relay(&mut r.relay, &peer, cx)
    }

    /// A timer fired: retry a connect, or time the connection out.
    fn expire(&mut self, cx: &mut Cx) -> Next {
        if !self.io.due(cx.now) {
            return Next::Continue;
        }
        match &self.phase {
            Phase::Sniffing { .. } => {
                proto::info!(
                    "no TLS ClientHello within {} ms; closing client{}",
                    cx.config.limits.head_timeout_ms,
                    Who(self.client)
                );
                Next::Close(Ending::failed(End::Timeout, "hello_timeout"))
            }
            Phase::Connecting(_) => self.advance(cx),
            Phase::Relaying(r) => {
                proto::debug!("closing idle connection to {}", self.target());
                // Half-closed and quiet past the linger, or idle past
                // --tcp-idle-timeout.
                let why = if r.relay.lingering() {
                    "half_close_linger"
                } else {
                    "idle_timeout"
                };
                Next::Close(Ending::quiet(End::Timeout, why))
            }
        }
    }

    fn next_deadline(&self, limits: &Limits) -> Option<Instant> {
        match &self.phase {
            Phase::Sniffing { until, .. } => Some(*until),
            Phase::Connecting(c) => Some(c.dial.deadline()),
            Phase::Relaying(r) => {
                let idle_ms = match (r.relay.lingering(), limits.tcp_idle_timeout_ms) {
                    (true, 0) => limits.half_close_linger_ms,
                    (true, t) => t.min(limits.half_close_linger_ms),
                    (false, 0) => return None,
                    (false, t) => t,
                };
                Some(self.io.last_activity() + Duration::from_millis(idle_ms))
            }
        }
    }
}

impl Connection for Conn {
    fn sockets(&mut self) -> &mut Sockets {
        &mut self.io
    }
    fn facts(&self) -> Facts<'_> {
        Facts {
            io: &self.io,
            client: self.client,
            backend: self.target().0,
            fds: None,
        }
    }
    fn new(client: Stream, peer: Option<std::net::SocketAddr>, cx: &mut Cx) -> Option<Conn> {
        Some(Conn::for_routes(client, peer.map(Peer::from), cx))
    }
    fn drive(&mut self, cx: &mut Cx) -> Next {
        self.advance(cx)
    }
    fn on_timer(&mut self, cx: &mut Cx) -> Next {
        self.expire(cx)
    }
    fn wake(&mut self, cx: &mut Cx) -> bool {
        Conn::wake(self, cx)
    }
    /// A relay cut short (idle, a drain's deadline) gives its pipes back:
    /// an empty one is a spare for the next bulk flow.
    fn close(&mut self, cx: &mut Cx) {
        if let Phase::Relaying(r) = &mut self.phase {
            r.relay.up.release(cx.stock);
            r.relay.down.release(cx.stock);
        }
    }
}

#[cfg(test)]
mod tests;
