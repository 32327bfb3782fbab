//! One request/response exchange with a backend, driven from `Conn`:
//! reach the backend (idle pool or connect with bounded retry), send the
//! rewritten head and stream the body, read the response head(s), stream
//! the response body, and hand the backend connection back to the pool.
//! A `101` turns the connection into a byte tunnel.
//!
//! Both directions run at once: a backend may answer before it has read
//! the whole request (then the client connection closes after the answer,
//! as nothing says where the unread body ends).

use crate::body::{BodyError, Pump};
use crate::buf::{Buf, Out};
use crate::conn::{BackendConn, Conn, Ctx, Fail, Phase};
use crate::framing::Framing;
use crate::head::{self, Client, Parsed, Persist, Request, Response};
use crate::keys::{self, Owner};
use mio::Interest;
use proto::graph::Backend;
use proto::relay::{Ready, Splice};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

enum Resp {
    Head,
    Body(Pump),
    Done,
}

pub struct Exchange {
    pub addr: Backend,
    /// Route name, for logs.
    pub route: String,
    pub is_head: bool,
    head: Out,
    req: Pump,
    /// No request body: the head alone can be sent again.
    replayable: bool,
    /// The backend stopped taking the request body.
    req_broken: bool,
    /// The whole request had been sent at this time.
    sent_at: Option<Instant>,
    upgrade: bool,
    client_minor: u8,
    client_keep: bool,
    resp: Resp,
    bbuf: Buf,
    /// Some byte came from the backend.
    resp_bytes: bool,
    /// Some response head was queued for the client.
    sent_to_client: bool,
    reusable: bool,
    persist: Persist,
    /// The backend connection came from the idle pool.
    reused: bool,
    retried: bool,
    tunnel: bool,
}

impl Exchange {
    /// Since when a response head is awaited (the whole request was sent).
    pub fn waiting_since(&self) -> Option<Instant> {
        match self.resp {
            Resp::Head => self.sent_at,
            _ => None,
        }
    }

    pub fn responded(&self) -> bool {
        self.sent_to_client
    }

    /// A pooled connection that failed before answering a request without
    /// body: the backend had likely closed it just before; one more try.
    pub fn can_retry(&self) -> bool {
        self.reused && !self.retried && self.replayable && !self.resp_bytes
    }

    /// Start over on a new backend connection.
    pub fn rewind(&mut self) {
        self.retried = true;
        self.reused = false;
        self.head.rewind();
        self.sent_at = None;
    }

    pub fn request_sent(&self) -> bool {
        self.head.is_empty() && self.req.is_done()
    }

    /// A response head arrived (interim or final).
    fn on_head(&mut self, resp: &Response, cout: &mut Out, closing: bool) -> Result<(), Fail> {
        if resp.status == 101 {
            if !self.upgrade {
                return Err(Fail::Status(
                    502,
                    format!(
                        "101 from {} to a request that did not ask to upgrade",
                        self.addr
                    ),
                ));
            }
            head::write_response(resp, Persist::KeepAlive11, cout.buf());
            self.sent_to_client = true;
            self.tunnel = true;
            self.resp = Resp::Done;
            return Ok(());
        }
        if resp.status < 200 {
            // 100 Continue, 103 Early Hints: an HTTP/1.0 client cannot take them.
            if self.client_minor == 1 {
                head::write_response(resp, Persist::KeepAlive11, cout.buf());
                self.sent_to_client = true;
            }
            return Ok(());
        }
        self.reusable = resp.reusable;
        // The client connection outlives a backend that closes; it cannot
        // outlive a close-delimited body or an unfinished request body.
        let keep = self.client_keep
            && !closing
            && resp.framing != Framing::Close
            && self.request_sent()
            && !self.req_broken;
        self.persist = match (keep, self.client_minor) {
            (false, _) => Persist::Close,
            (true, 0) => Persist::KeepAlive10,
            (true, _) => Persist::KeepAlive11,
        };
        head::write_response(resp, self.persist, cout.buf());
        self.sent_to_client = true;
        self.resp = Resp::Body(Pump::new(resp.framing));
        Ok(())
    }
}

/// The two directions of an upgraded connection.
#[derive(Default)]
pub struct Tunnel {
    up: Splice,
    down: Splice,
}

impl Tunnel {
    pub fn half_closed(&self) -> bool {
        self.up.dst_shut != self.down.dst_shut
    }
}

const RW: Ready = Ready {
    readable: true,
    writable: true,
};

impl Conn {
    pub(crate) fn start_exchange(&mut self, cx: &mut Ctx, req: Request) -> Result<(), Fail> {
        let Some(route) = cx.routes.lookup(req.host.as_deref(), &req.path) else {
            return Err(Fail::Status(
                404,
                format!(
                    "no route for host {:?} path {}",
                    req.host.as_deref().unwrap_or(""),
                    req.path
                ),
            ));
        };
        let mut head_out = Out::default();
        head::write_request(&req, route, Client { ip: self.ip }, head_out.buf());
        self.cbuf.consume(req.len);
        let addr = route.backend.clone();
        self.ex = Some(Box::new(Exchange {
            addr: addr.clone(),
            route: route.name.clone(),
            is_head: req.method == "HEAD",
            head: head_out,
            req: Pump::new(req.framing),
            replayable: req.framing == Framing::None,
            req_broken: false,
            sent_at: None,
            upgrade: req.upgrade.is_some(),
            client_minor: req.minor,
            client_keep: req.keep_alive,
            resp: Resp::Head,
            bbuf: Buf::new(cx.limits.max_head_bytes),
            resp_bytes: false,
            sent_to_client: false,
            reusable: false,
            persist: Persist::Close,
            reused: false,
            retried: false,
            tunnel: false,
        }));
        self.last_active = cx.now;
        if let Some(s) = cx.pool.take(&addr) {
            // Registered since its connect, under its own token: only the
            // owner changes.
            cx.owners.set(s.as_raw_fd(), Owner::Conn(cx.slot));
            self.backend = Some(BackendConn {
                stream: s,
                ready: RW,
            });
            if let Some(ex) = self.ex.as_mut() {
                ex.reused = true;
            }
            self.phase = Phase::Exchange;
            return Ok(());
        }
        self.start_connect(cx, 0, cx.now)
    }

    /// Connect (again) to the exchange's backend; `since` is when the
    /// first attempt started, for the connect timeout.
    pub(crate) fn start_connect(
        &mut self,
        cx: &mut Ctx,
        attempt: u32,
        since: Instant,
    ) -> Result<(), Fail> {
        let Some(addr) = self.ex.as_ref().map(|e| e.addr.clone()) else {
            return Err(Fail::Abort("connect without a request".into()));
        };
        self.backend = None;
        match proto::backend::connect(&addr) {
            Ok(mut s) => {
                let fd = s.as_raw_fd();
                cx.owners.set(fd, Owner::Conn(cx.slot));
                cx.registry
                    .register(
                        &mut s,
                        keys::backend(fd),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| Fail::Status(502, format!("registering backend socket: {e}")))?;
                self.backend = Some(BackendConn {
                    stream: s,
                    ready: Ready::default(),
                });
                self.phase = Phase::Connecting {
                    since,
                    attempt,
                    retry_at: None,
                };
                Ok(())
            }
            Err(e) => self.retry_later(cx, attempt, since, &addr, e),
        }
    }

    /// A refused connect while a provider restarts is retried, a few
    /// hundred milliseconds in all (SPEC §5); anything else is a 502.
    fn retry_later(
        &mut self,
        cx: &Ctx,
        attempt: u32,
        since: Instant,
        addr: &Backend,
        e: std::io::Error,
    ) -> Result<(), Fail> {
        self.backend = None;
        if proto::backend::is_retryable(&e) {
            if let Some(d) = proto::backend::retry_delay(attempt + 1, cx.limits.connect_retry_ms) {
                self.phase = Phase::Connecting {
                    since,
                    attempt: attempt + 1,
                    retry_at: Some(cx.now + d),
                };
                return Ok(());
            }
        }
        Err(Fail::Status(502, format!("connect to {addr}: {e}")))
    }

    pub(crate) fn connecting(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let Phase::Connecting {
            since,
            attempt,
            retry_at,
        } = self.phase
        else {
            return Ok(false);
        };
        if let Some(at) = retry_at {
            if cx.now < at {
                return Ok(false);
            }
            self.start_connect(cx, attempt, since)?;
            return Ok(true);
        }
        let Some(b) = self.backend.as_mut() else {
            return Err(Fail::Abort("connecting without a socket".into()));
        };
        if !b.ready.writable && !b.ready.readable {
            return Ok(false);
        }
        match b.stream.connect_done() {
            Ok(true) => {
                self.phase = Phase::Exchange;
                Ok(true)
            }
            Ok(false) => {
                b.ready = Ready::default();
                Ok(false)
            }
            Err(e) => {
                let addr = self.ex.as_ref().map(|x| x.addr.clone());
                match addr {
                    Some(a) => self.retry_later(cx, attempt, since, &a, e)?,
                    None => return Err(Fail::Abort(format!("connect: {e}"))),
                }
                Ok(true)
            }
        }
    }

    pub(crate) fn exchange(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let (Some(ex), Some(b)) = (self.ex.as_deref_mut(), self.backend.as_mut()) else {
            return Err(Fail::Abort("exchange without a backend".into()));
        };
        let mut progress = false;
        if !ex.head.is_empty() {
            // The head and the body bytes already read leave together.
            let extra = ex
                .req
                .buffered(&self.cbuf)
                .map_err(|e| Fail::Status(400, format!("request {e}")))?;
            let (h, n) = ex
                .head
                .flush_with(&b.stream, &mut b.ready, &mut self.cbuf, extra)
                .map_err(|e| Fail::Backend(format!("sending request to {}: {e}", ex.addr)))?;
            ex.req.advance(n);
            if n > 0 {
                ex.replayable = false;
            }
            cx.stats.bytes_in += (h + n) as u64;
            progress |= h + n > 0;
        }
        if ex.head.is_empty() && !ex.req.is_done() && !ex.req_broken {
            match ex.req.pump(
                &self.client,
                &mut self.cr,
                &mut self.cbuf,
                &b.stream,
                &mut b.ready,
            ) {
                Ok(n) => {
                    cx.stats.bytes_in += n;
                    progress |= n > 0;
                }
                Err(BodyError::Dst(e)) => {
                    // Perhaps the backend answered early and closed: read on.
                    proto::debug!("{} stopped taking the request body: {e}", ex.addr);
                    ex.req_broken = true;
                    progress = true;
                }
                Err(e @ BodyError::Src(_)) => return Err(Fail::Abort(format!("request {e}"))),
                Err(e @ BodyError::Framing(_)) => {
                    return Err(Fail::Status(400, format!("request {e}")))
                }
            }
        }
        if ex.sent_at.is_none() && ex.request_sent() {
            ex.sent_at = Some(cx.now);
        }
        progress |= read_response_head(ex, b, &mut self.cout, self.closing || cx.draining)?;
        if !self.cout.is_empty() {
            // The response head and the body bytes already read leave together.
            let (extra, pump) = match &mut ex.resp {
                Resp::Body(p) => (
                    p.buffered(&ex.bbuf)
                        .map_err(|e| Fail::Abort(format!("response from {}: {e}", ex.addr)))?,
                    Some(p),
                ),
                _ => (0, None),
            };
            let (h, n) = self
                .cout
                .flush_with(&self.client, &mut self.cr, &mut ex.bbuf, extra)
                .map_err(|e| Fail::Abort(format!("writing response: {e}")))?;
            if let Some(p) = pump {
                p.advance(n);
            }
            cx.stats.bytes_out += (h + n) as u64;
            progress |= h + n > 0;
        }
        if self.cout.is_empty() {
            if let Resp::Body(p) = &mut ex.resp {
                let n = p
                    .pump(
                        &b.stream,
                        &mut b.ready,
                        &mut ex.bbuf,
                        &self.client,
                        &mut self.cr,
                    )
                    .map_err(|e| Fail::Abort(format!("response from {}: {e}", ex.addr)))?;
                cx.stats.bytes_out += n;
                progress |= n > 0;
                if p.is_done() {
                    ex.resp = Resp::Done;
                    progress = true;
                }
            }
        }
        if progress {
            self.last_active = cx.now;
        }
        if self.cout.is_empty() {
            if ex.tunnel {
                self.phase = Phase::Tunnel(Box::default());
                return Ok(true);
            }
            if matches!(ex.resp, Resp::Done) {
                self.finish(cx);
                return Ok(true);
            }
        }
        Ok(progress)
    }

    /// The response is out: park the backend connection if it is clean,
    /// then wait for the next request or close.
    fn finish(&mut self, cx: &mut Ctx) {
        let Some(ex) = self.ex.take() else { return };
        if let Some(b) = self.backend.take() {
            if ex.reusable
                && ex.request_sent()
                && !ex.req_broken
                && ex.bbuf.is_empty()
                && !ex.req.in_flight()
            {
                cx.pool.put(cx.owners, cx.now, ex.addr.clone(), b.stream);
            }
        }
        if ex.persist == Persist::Close || self.wants_close(cx) {
            self.phase = Phase::Closing {
                since: cx.now,
                shut: false,
                discarded: 0,
            };
        } else {
            self.next_request(cx.now);
        }
    }

    /// After a 101: bytes either side already read go first, then both
    /// directions are spliced; EOF on one side shuts the other's write side.
    pub(crate) fn tunnel(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let (Phase::Tunnel(t), Some(ex), Some(b)) = (
            &mut self.phase,
            self.ex.as_deref_mut(),
            self.backend.as_mut(),
        ) else {
            return Err(Fail::Abort("tunnel without both sides".into()));
        };
        let down = if !ex.bbuf.is_empty() {
            ex.bbuf
                .write_to(&self.client, &mut self.cr, u64::MAX)
                .map(|n| n as u64)
        } else {
            ex.bbuf.release();
            t.down
                .pump(
                    b.stream.as_fd(),
                    &mut b.ready,
                    self.client.as_fd(),
                    &mut self.cr,
                    true,
                )
                .map(|m| m.bytes)
        };
        let up = if !self.cbuf.is_empty() {
            self.cbuf
                .write_to(&b.stream, &mut b.ready, u64::MAX)
                .map(|n| n as u64)
        } else {
            self.cbuf.release();
            t.up.pump(
                self.client.as_fd(),
                &mut self.cr,
                b.stream.as_fd(),
                &mut b.ready,
                true,
            )
            .map(|m| m.bytes)
        };
        let (d, u) = match (down, up) {
            (Ok(d), Ok(u)) => (d, u),
            (Err(e), _) | (_, Err(e)) => {
                proto::debug!("tunnel to {} ended: {e}", ex.addr);
                self.phase = Phase::Done;
                return Ok(false);
            }
        };
        cx.stats.bytes_out += d;
        cx.stats.bytes_in += u;
        if t.up.dst_shut && t.down.dst_shut {
            self.phase = Phase::Done;
            return Ok(false);
        }
        if d + u > 0 {
            self.last_active = cx.now;
        }
        Ok(d + u > 0)
    }
}

/// Read and parse response heads until the final one (or a 101) is in.
fn read_response_head(
    ex: &mut Exchange,
    b: &mut BackendConn,
    cout: &mut Out,
    closing: bool,
) -> Result<bool, Fail> {
    let mut progress = false;
    while matches!(ex.resp, Resp::Head) {
        if !ex.bbuf.is_empty() {
            match head::parse_response(ex.bbuf.bytes(), ex.is_head) {
                Err(why) => return Err(Fail::Status(502, format!("{why} from {}", ex.addr))),
                Ok(Parsed::Complete(resp)) => {
                    ex.bbuf.consume(resp.len);
                    ex.on_head(&resp, cout, closing)?;
                    progress = true;
                    continue;
                }
                Ok(Parsed::Partial) if ex.bbuf.is_full() => {
                    return Err(Fail::Status(
                        502,
                        format!("response head from {} too large", ex.addr),
                    ))
                }
                Ok(Parsed::Partial) => {}
            }
        }
        if !b.ready.readable {
            break;
        }
        let got = ex
            .bbuf
            .read_from(&b.stream, &mut b.ready)
            .map_err(|e| Fail::Backend(format!("reading response from {}: {e}", ex.addr)))?;
        if got.bytes > 0 {
            ex.resp_bytes = true;
            progress = true;
            continue;
        }
        if got.eof {
            return Err(Fail::Backend(format!(
                "{} closed the connection without a response",
                ex.addr
            )));
        }
        break;
    }
    Ok(progress)
}
