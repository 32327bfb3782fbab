//! One client connection: its state machine from request head to response
//! end, keep-alive, errors and the final close. The exchange with the
//! backend (request out, response back, upgrade tunnel) is in
//! `exchange.rs`.
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
//! event and timer for this connection.

use crate::buf::{Buf, Out};
use crate::errors;
use crate::exchange::Exchange;
use crate::head::{self, Parsed};
use crate::keys::Owners;
use crate::pool::Pool;
use crate::route::Table;
use crate::tunnel::Tunnel;
use mio::{Interest, Registry, Token};
use proto::ctl::Stats;
use proto::limits::Limits;
use runtime::backend::Dialer;
use runtime::stream::Ready;
use runtime::stream::Stream;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown};
use std::time::{Duration, Instant};

/// How long a closing connection may take to flush its last response and
/// drain what the client still sends (lingering close).
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes discarded during a lingering close.
const LINGER_BYTES: usize = 1 << 20;

thread_local! {
    /// Where a lingering close reads what it discards: one per worker, so
    /// no closing step zeroes a buffer of its own.
    static SINK: std::cell::RefCell<[u8; 4096]> = const { std::cell::RefCell::new([0; 4096]) };
}

/// Interest in a client or backend socket: `PRIORITY` too, so urgent data
/// is reported (a read stops short at it with bytes behind, which a
/// trusted short read would take for an empty socket; see `Buf::read_head`).
pub fn interest() -> Interest {
    Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY
}

/// What a connection needs from the loop while it runs.
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
    /// The backends' side (dialer, replicas), lent by the loop.
    pub reach: &'a mut runtime::backend::Reach,
    /// The relays' pipes and copy buffers, lent by the loop.
    pub stock: &'a mut runtime::stock::Stock,
}

/// The backend side of a connection.
pub struct BackendConn {
    pub stream: Stream,
    pub ready: Ready,
    /// A hang-up (the backend's FIN: EPOLLRDHUP), an error or urgent data
    /// was reported: a short read no longer proves the socket empty
    /// (`Buf::read_head`), and the connection is not parked.
    pub hup: bool,
}

pub enum Phase {
    ReadHead,
    /// Boxed: the dialer (hold, replicas) is 192 bytes, and an idle
    /// connection would carry it too.
    Connecting(Box<Dialer>),
    Exchange,
    Tunnel(Box<Tunnel>),
    Closing {
        since: Instant,
        shut: bool,
        discarded: usize,
    },
    Done,
}

/// How a step failed, and so what the client gets.
#[derive(Debug)]
pub enum Fail {
    /// Answer with this status, unless a response already started; close.
    Status(u16, String),
    /// The backend failed before any response byte: retry once if the
    /// connection was a pooled one and the request can be replayed, else 502.
    Backend(String),
    /// Close now; the client gets what it got so far.
    Abort(String),
}

pub struct Conn {
    pub(crate) client: Stream,
    pub(crate) cr: Ready,
    /// A hang-up (the client's FIN: EPOLLRDHUP), an error or urgent data
    /// was reported: a short read no longer proves the socket empty
    /// (`Buf::read_head`).
    pub(crate) c_hup: bool,
    pub(crate) ip: Option<IpAddr>,
    /// Client bytes: the request head being read, then what follows it.
    pub(crate) cbuf: Buf,
    /// Bytes queued for the client: response heads, a canned error.
    pub(crate) cout: Out,
    pub(crate) backend: Option<BackendConn>,
    pub(crate) phase: Phase,
    pub(crate) ex: Option<Box<Exchange>>,
    /// No request has been read on this connection yet.
    pub(crate) first: bool,
    /// Waiting for a request since then.
    pub(crate) wait_since: Instant,
    /// The current request head's first byte arrived then.
    pub(crate) head_since: Option<Instant>,
    pub(crate) last_active: Instant,
    /// Close after the current exchange (drain).
    pub(crate) closing: bool,
    /// When this connection's live timer entry fires.
    pub(crate) armed: Option<Instant>,
}

impl Conn {
    /// `peer`: the client's address as `accept4` returned it.
    pub fn new(
        client: Stream,
        peer: Option<std::net::SocketAddr>,
        now: Instant,
        max_head: usize,
    ) -> Conn {
        let ip = peer.map(|a| a.ip());
        Conn {
            client,
            // Try reading at once: the request often arrived before accept.
            cr: Ready {
                readable: true,
                writable: true,
            },
            c_hup: false,
            ip,
            cbuf: Buf::new(max_head),
            cout: Out::default(),
            backend: None,
            phase: Phase::ReadHead,
            ex: None,
            first: true,
            wait_since: now,
            head_since: None,
            last_active: now,
            closing: false,
            armed: None,
        }
    }

    pub fn register(&mut self, reg: &Registry, token: Token) -> io::Result<()> {
        reg.register(&mut self.client, token, interest())
    }

    /// Stop after the current exchange; an idle connection closes now.
    pub fn drain(&mut self) {
        self.closing = true;
    }

    /// The worker exits now (a drain's deadline): a request head in
    /// progress, or a request still reaching its backend (held while a
    /// provider is away), gets `503`, written once without waiting: none
    /// of it reached a backend. Whether it did.
    pub fn cut(&mut self) -> bool {
        let waiting = match self.phase {
            Phase::ReadHead => !self.cbuf.is_empty(),
            Phase::Connecting(_) => true,
            _ => false,
        };
        if !waiting {
            return false;
        }
        let head_only = self.cbuf.bytes().starts_with(b"HEAD ");
        let _ = (&self.client).write(&errors::response(503, head_only));
        let _ = self.client.shutdown(Shutdown::Write);
        // Input left unread turns the close into a reset, which can
        // destroy the answer before the client reads it.
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match (&self.client).read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        true
    }

    pub fn wants_close(&self, cx: &Ctx) -> bool {
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
            Phase::ReadHead => self.read_head(cx),
            Phase::Connecting(_) => self.connecting(cx),
            Phase::Exchange => self.exchange(cx),
            Phase::Tunnel(_) => self.tunnel(cx),
            Phase::Closing { .. } => Ok(self.closing_step()),
            Phase::Done => Ok(false),
        }
    }

    fn read_head(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        if !self.cbuf.is_empty() {
            self.head_since.get_or_insert(cx.now);
            match head::parse_request(self.cbuf.bytes()) {
                Err(r) => return Err(Fail::Status(r.status, r.why.to_string())),
                Ok(Parsed::Complete(req)) => {
                    self.first = false;
                    self.head_since = None;
                    self.start_exchange(cx, req)?;
                    return Ok(true);
                }
                Ok(Parsed::Partial) if self.cbuf.is_full() => {
                    return Err(Fail::Status(
                        431,
                        format!("request head over {} bytes", cx.limits.max_head_bytes),
                    ))
                }
                Ok(Parsed::Partial) => {}
            }
        } else if self.wants_close(cx) && !(self.first && self.cr.readable) {
            // Between requests: nothing is lost by closing now. (A client
            // taken from the backlog while draining is read once first.)
            self.phase = Phase::Done;
            return Ok(false);
        }
        if !self.cr.readable {
            return Ok(false);
        }
        let got = self
            .cbuf
            .read_head(&self.client, &mut self.cr, self.c_hup)
            .map_err(|e| Fail::Abort(format!("reading request head: {e}")))?;
        if got.bytes > 0 {
            return Ok(true);
        }
        if got.eof {
            if !self.cbuf.is_empty() {
                return Err(Fail::Abort(
                    "client closed in the middle of a request head".into(),
                ));
            }
            self.phase = Phase::Done;
        } else if self.cbuf.is_empty() && self.wants_close(cx) {
            self.phase = Phase::Done;
        }
        Ok(false)
    }

    /// The connection's next deadline, if any.
    pub fn deadline(&self, l: &Limits) -> Option<Instant> {
        let ms = Duration::from_millis;
        match &self.phase {
            Phase::ReadHead => Some(match self.head_since {
                Some(t) => t + ms(l.head_timeout_ms),
                // A new connection gets the head timeout for its first
                // request; a kept-alive one the (longer) idle timeout.
                None if self.first => self.wait_since + ms(l.head_timeout_ms),
                None => self.wait_since + ms(l.idle_timeout_ms),
            }),
            Phase::Connecting(dial) => Some(dial.deadline()),
            Phase::Exchange => self.ex.as_ref().map(|ex| match ex.waiting_since() {
                Some(sent) => sent + ms(l.response_timeout_ms),
                None => self.last_active + ms(l.idle_timeout_ms),
            }),
            Phase::Tunnel(t) => {
                let idle = (l.tcp_idle_timeout_ms > 0)
                    .then(|| self.last_active + ms(l.tcp_idle_timeout_ms));
                let linger = t
                    .half_closed()
                    .then(|| self.last_active + ms(l.half_close_linger_ms));
                idle.into_iter().chain(linger).min()
            }
            Phase::Closing { since, .. } => Some(*since + LINGER),
            Phase::Done => None,
        }
    }

    /// A timer fired: act on whatever deadline has passed, then run.
    pub fn on_timer(&mut self, cx: &mut Ctx) -> bool {
        let due = self.deadline(cx.limits).is_some_and(|d| d <= cx.now);
        if due {
            let fail = match &self.phase {
                Phase::ReadHead if self.head_since.is_some() => Some(Fail::Status(
                    408,
                    "request head not complete in time".into(),
                )),
                Phase::ReadHead => {
                    self.phase = Phase::Done;
                    None
                }
                // A retry is due, or the timeout passed: the dialer knows.
                Phase::Connecting(_) => None,
                Phase::Exchange => match self.ex.as_ref() {
                    // The request body stalled (the client stopped sending).
                    Some(ex) if !ex.responded() && !ex.request_sent() => Some(Fail::Status(
                        408,
                        "request body stalled for the idle timeout".into(),
                    )),
                    Some(ex) if !ex.responded() => {
                        Some(Fail::Status(504, "backend did not answer in time".into()))
                    }
                    _ => Some(Fail::Abort(
                        "no traffic on the exchange for the idle timeout".into(),
                    )),
                },
                Phase::Tunnel(_) | Phase::Closing { .. } | Phase::Done => {
                    self.phase = Phase::Done;
                    None
                }
            };
            if let Some(f) = fail {
                self.fail(cx, f);
            }
        }
        if matches!(self.phase, Phase::Done) {
            return false;
        }
        self.drive(cx)
    }

    pub fn fail(&mut self, cx: &mut Ctx, f: Fail) {
        match f {
            Fail::Backend(why) => {
                let holding = cx.limits.hold_timeout_ms > 0;
                if self.ex.as_ref().is_some_and(|ex| ex.can_retry(holding)) {
                    proto::debug!(
                        "backend connection failed before answering ({why}); retrying on a new one"
                    );
                    self.backend = None;
                    if let Some(ex) = self.ex.as_mut() {
                        ex.rewind();
                    }
                    if let Err(f) = self.start_connect(cx) {
                        self.fail(cx, f);
                    }
                    return;
                }
                self.fail(cx, Fail::Status(502, why));
            }
            Fail::Status(status, why) => {
                cx.stats.errors += 1;
                let route = self
                    .ex
                    .as_ref()
                    .map(|e| e.route.name.as_str())
                    .unwrap_or("-");
                if status >= 500 {
                    proto::info!("{status} for {} (route {route}): {why}", self.peer());
                } else {
                    proto::debug!("{status} for {}: {why}", self.peer());
                }
                self.backend = None;
                if self.ex.as_ref().is_some_and(|ex| ex.responded()) {
                    // Part of a response is out: an error page cannot follow.
                    self.phase = Phase::Done;
                    return;
                }
                // A HEAD refused before its exchange began (404) is still
                // at the front of the client buffer.
                let head_only = match self.ex.as_ref() {
                    Some(ex) => ex.is_head,
                    None => self.cbuf.bytes().starts_with(b"HEAD "),
                };
                self.ex = None;
                self.cout.clear();
                self.cout
                    .buf()
                    .extend_from_slice(&errors::response(status, head_only));
                self.phase = Phase::Closing {
                    since: cx.now,
                    shut: false,
                    discarded: 0,
                };
            }
            Fail::Abort(why) => {
                cx.stats.errors += 1;
                proto::debug!("closing connection from {}: {why}", self.peer());
                self.phase = Phase::Done;
            }
        }
    }

    fn peer(&self) -> String {
        self.ip
            .map_or_else(|| "unix client".to_string(), |i| i.to_string())
    }

    /// Flush the last bytes, shut our side, then read and drop what the
    /// client still sends until it closes: closing with unread input would
    /// send a reset that can destroy the response before the client reads it.
    fn closing_step(&mut self) -> bool {
        let Phase::Closing {
            shut, discarded, ..
        } = &mut self.phase
        else {
            return false;
        };
        if !self.cout.is_empty() {
            match self.cout.flush(&self.client, &mut self.cr) {
                Ok(n) if !self.cout.is_empty() => return n > 0,
                Ok(_) => {}
                Err(_) => {
                    self.phase = Phase::Done;
                    return false;
                }
            }
        }
        if !*shut {
            *shut = true;
            let _ = self.client.shutdown(Shutdown::Write);
        }
        while self.cr.readable {
            match SINK.with_borrow_mut(|sink| (&self.client).read(sink)) {
                Ok(n) if n > 0 && *discarded + n <= LINGER_BYTES => *discarded += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.cr.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => {
                    self.phase = Phase::Done;
                    return false;
                }
            }
        }
        false
    }

    /// The loop is done with this connection until its next event or
    /// timer: give back the full-size buffers it does not need to keep
    /// (`Buf::settle`), so an idle or trickling client holds only its bytes.
    pub fn settle(&mut self) {
        self.cbuf.settle();
        if let Some(ex) = self.ex.as_mut() {
            ex.bbuf.settle();
        }
    }

    /// Back to waiting for the next request on a kept-alive connection.
    pub fn next_request(&mut self, now: Instant) {
        self.phase = Phase::ReadHead;
        self.wait_since = now;
        self.cbuf.release();
        self.cout.clear();
    }
}
