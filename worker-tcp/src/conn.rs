//! One proxied tcp connection: client <-> backend, as a small state machine.
//!
//! ```text
//!   accept ─(sni routes)─> Sniffing ─(ClientHello names a route)─┐
//!     └──────────────────────────────────────────────────────────┴─> Connecting ──(connect ok)──> Relaying ──(both ways done)──> closed
//!                 │  ▲ refused: retry after 25, 50, 100, 200 ms
//!                 └──┘ timeout / other error / retries spent ──> closed (client just closed)
//! ```
//! In `Relaying`, each direction is a [`Splice`]: EOF from one side is
//! passed on as `shutdown(SHUT_WR)` of the other (half-close), and the
//! connection ends only when both directions are finished.

use nix::sys::socket::MsgFlags;
use proto::backend;
use proto::ctl::Limits;
use proto::graph::{Backend, ProxyProtocol};
use proto::plan::Route;
use proto::relay::{Ready, Splice};
use proto::stream::Stream;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use crate::{proxy_header, sni};

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

pub enum Phase {
    /// Several routes share the address: peek the TLS ClientHello first.
    Sniffing {
        until: Instant,
    },
    /// `backend` is None while waiting to retry a refused connect.
    Connecting {
        attempt: u32,
        retry_at: Option<Instant>,
        give_up_at: Instant,
    },
    Relaying,
}

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

pub struct Conn {
    pub client: Stream,
    pub client_ready: Ready,
    pub backend: Option<Stream>,
    pub backend_ready: Ready,
    pub phase: Phase,
    target: Backend,
    proxy_protocol: Option<ProxyProtocol>,
    up: Splice,
    down: Splice,
    /// PROXY protocol header still to be written to the backend.
    preamble: Vec<u8>,
    last_activity: Instant,
    /// Bytes moved since the loop last collected them (up, down).
    pub moved: (u64, u64),
    /// When the connection next needs attention from a timer.
    pub deadline: Option<Instant>,
    /// Earliest timer entry for this connection in the loop's heap. A new
    /// entry is only needed when the deadline moves before it.
    pub timer_at: Option<Instant>,
}

impl Conn {
    /// With one route without sni the backend is known at once; otherwise
    /// the ClientHello picks it.
    pub fn new(client: Stream, routes: &[Route], limits: &Limits, now: Instant) -> Conn {
        let mut c = Conn {
            client,
            client_ready: Ready::default(),
            backend: None,
            backend_ready: Ready::default(),
            phase: Phase::Sniffing {
                until: now + Duration::from_millis(limits.head_timeout_ms),
            },
            target: Backend::Tcp(([0, 0, 0, 0], 0).into()),
            proxy_protocol: None,
            up: Splice::new(),
            down: Splice::new(),
            preamble: Vec::new(),
            last_activity: now,
            moved: (0, 0),
            deadline: Some(now),
            timer_at: None,
        };
        if let [r] = routes {
            if r.sni.is_none() {
                c.route_to(r, now, limits);
            }
        }
        c
    }

    fn route_to(&mut self, r: &Route, now: Instant, limits: &Limits) {
        self.target = r.backend.clone();
        self.proxy_protocol = r.proxy_protocol;
        self.phase = Phase::Connecting {
            attempt: 0,
            retry_at: Some(now),
            give_up_at: now + Duration::from_millis(limits.connect_timeout_ms),
        };
    }

    /// Peek at the ClientHello and pick the route whose sni it names.
    fn sniff(&mut self, now: Instant, limits: &Limits, routes: &[Route]) -> Next {
        if !self.client_ready.readable {
            return Next::Continue;
        }
        let mut buf = [0u8; sni::MAX_HELLO];
        let n = match nix::sys::socket::recv(self.client.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK)
        {
            Ok(0) => return Next::Close { error: false },
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => {
                self.client_ready.readable = false;
                return Next::Continue;
            }
            Err(e) => {
                proto::debug!("recv(MSG_PEEK) from client: {e}");
                return Next::Close { error: false };
            }
        };
        match sni::parse(&buf[..n]) {
            sni::Sni::NeedMore if n < buf.len() => {
                // Everything available was peeked; wait for the next edge.
                self.client_ready.readable = false;
                Next::Continue
            }
            sni::Sni::Found(Some(name)) => match routes
                .iter()
                .find(|r| r.sni.as_deref().is_some_and(|s| sni_matches(s, &name)))
            {
                Some(r) => {
                    self.route_to(r, now, limits);
                    self.drive_connect(now, limits)
                }
                None => {
                    proto::info!("no tcp route for TLS server name '{name}'; closing client");
                    Next::Close { error: true }
                }
            },
            _ => {
                proto::info!("client did not open with a TLS ClientHello naming a server; closing");
                Next::Close { error: true }
            }
        }
    }

    /// Start (or retry) the backend connect when it is due.
    fn start_connect(&mut self, now: Instant, limits: &Limits) -> Next {
        if let Some(v) = self.proxy_protocol {
            if self.preamble.is_empty() {
                self.preamble =
                    proxy_header::build(v, self.client.peer_ip(), self.client.local_addr());
            }
        }
        let Phase::Connecting {
            attempt,
            retry_at,
            give_up_at,
        } = &mut self.phase
        else {
            return Next::Continue;
        };
        match *retry_at {
            Some(at) if at <= now => {}
            _ => return Next::Continue,
        }
        *retry_at = None;
        match backend::connect(&self.target) {
            Ok(s) => {
                self.backend = Some(s);
                self.backend_ready = Ready::default();
                Next::RegisterBackend
            }
            Err(e) => {
                *attempt += 1;
                retry_or_fail(
                    attempt,
                    retry_at,
                    *give_up_at,
                    now,
                    limits,
                    &self.target,
                    &e,
                )
            }
        }
    }

    /// Advance the connection as far as readiness allows.
    pub fn drive(&mut self, now: Instant, limits: &Limits, routes: &[Route]) -> Next {
        let next = match self.phase {
            Phase::Sniffing { .. } => self.sniff(now, limits, routes),
            Phase::Connecting { .. } => self.drive_connect(now, limits),
            Phase::Relaying => self.relay(now),
        };
        self.deadline = self.next_deadline(limits);
        next
    }

    fn drive_connect(&mut self, now: Instant, limits: &Limits) -> Next {
        if self.backend.is_none() {
            return self.start_connect(now, limits);
        }
        let Some(b) = self.backend.as_ref() else {
            return Next::Continue;
        };
        if !self.backend_ready.writable {
            return Next::Continue;
        }
        match b.connect_done() {
            Ok(false) => {
                self.backend_ready.writable = false;
                Next::Continue
            }
            Ok(true) => {
                if let Stream::Tcp(s) = b {
                    let _ = s.set_nodelay(true);
                }
                self.phase = Phase::Relaying;
                self.last_activity = now;
                self.relay(now)
            }
            Err(e) => {
                self.backend = None;
                let Phase::Connecting {
                    attempt,
                    retry_at,
                    give_up_at,
                } = &mut self.phase
                else {
                    return Next::Close { error: true };
                };
                *attempt += 1;
                retry_or_fail(
                    attempt,
                    retry_at,
                    *give_up_at,
                    now,
                    limits,
                    &self.target,
                    &e,
                )
            }
        }
    }

    fn relay(&mut self, now: Instant) -> Next {
        let Some(b) = self.backend.as_ref() else {
            return Next::Close { error: true };
        };
        if !self.preamble.is_empty() {
            if !self.backend_ready.writable {
                return Next::Continue;
            }
            match (&*b).write(&self.preamble) {
                Ok(n) => {
                    self.preamble.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backend_ready.writable = false
                }
                Err(e) => {
                    proto::debug!("write PROXY header to {}: {e}", self.target);
                    return Next::Close { error: true };
                }
            }
            if !self.preamble.is_empty() {
                return Next::Continue;
            }
        }
        let (c, bfd) = (self.client.as_fd(), b.as_fd());
        let up = self.up.pump(
            c,
            &mut self.client_ready,
            bfd,
            &mut self.backend_ready,
            true,
        );
        let down = self.down.pump(
            bfd,
            &mut self.backend_ready,
            c,
            &mut self.client_ready,
            true,
        );
        match (up, down) {
            (Ok(u), Ok(d)) => {
                if u.bytes + d.bytes > 0 || u.eof || d.eof {
                    self.last_activity = now;
                }
                self.moved.0 += u.bytes;
                self.moved.1 += d.bytes;
                if self.up.dst_shut && self.down.dst_shut {
                    Next::Close { error: false }
                } else {
                    Next::Continue
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                // A reset from either peer ends the connection; not a proxy fault.
                proto::debug!("relay with {}: {e}", self.target);
                Next::Close { error: false }
            }
        }
    }

    /// A timer fired: retry a connect, or time the connection out.
    pub fn on_timer(&mut self, now: Instant, limits: &Limits, routes: &[Route]) -> Next {
        match self.deadline {
            Some(d) if d <= now => {}
            _ => return Next::Continue,
        }
        match &self.phase {
            Phase::Sniffing { .. } => {
                proto::info!(
                    "no TLS ClientHello within {} ms; closing client",
                    limits.head_timeout_ms
                );
                Next::Close { error: true }
            }
            Phase::Connecting { give_up_at, .. } if *give_up_at <= now => {
                proto::warn!(
                    "backend {}: connect timed out after {} ms",
                    self.target,
                    limits.connect_timeout_ms
                );
                Next::Close { error: true }
            }
            Phase::Connecting { .. } => self.drive(now, limits, routes),
            Phase::Relaying => {
                proto::debug!("closing idle connection to {}", self.target);
                Next::Close { error: false }
            }
        }
    }

    fn next_deadline(&self, limits: &Limits) -> Option<Instant> {
        match &self.phase {
            Phase::Sniffing { until } => Some(*until),
            Phase::Connecting {
                retry_at,
                give_up_at,
                ..
            } => Some(retry_at.map_or(*give_up_at, |r| r.min(*give_up_at))),
            Phase::Relaying => {
                let half_closed = self.up.dst_shut != self.down.dst_shut;
                let idle_ms = match (half_closed, limits.tcp_idle_timeout_ms) {
                    (true, 0) => limits.half_close_linger_ms,
                    (true, t) => t.min(limits.half_close_linger_ms),
                    (false, 0) => return None,
                    (false, t) => t,
                };
                Some(self.last_activity + Duration::from_millis(idle_ms))
            }
        }
    }
}

fn retry_or_fail(
    attempt: &mut u32,
    retry_at: &mut Option<Instant>,
    give_up_at: Instant,
    now: Instant,
    limits: &Limits,
    target: &Backend,
    e: &io::Error,
) -> Next {
    if backend::is_retryable(e) {
        if let Some(d) = backend::retry_delay(*attempt, limits.connect_retry_ms) {
            if now + d < give_up_at {
                *retry_at = Some(now + d);
                return Next::Continue;
            }
        }
    }
    proto::warn!(
        "backend {target} unreachable: {e} (after {} attempt(s)); closing client",
        attempt
    );
    Next::Close { error: true }
}
