//! One request/response exchange with a backend, driven from `Conn`:
//! reach the backend (the idle pool, for requests safe to repeat, or a
//! connect with bounded retry), send the rewritten head and stream the
//! body, read the response head(s), stream the response body, and hand
//! the backend connection back to the pool.
//! A `101` turns the connection into a byte tunnel (`tunnel.rs`); a new
//! backend connection is made in `dial.rs`.
//!
//! Both directions run at once: a backend may answer before it has read
//! the whole request (then the client connection closes after the answer,
//! as nothing says where the unread body ends).

use crate::body::{BodyError, Pump};
use crate::buf::{Buf, Out};
use crate::conn::{BackendConn, Conn, Ctx, Fail, Phase};
use crate::framing::Framing;
use crate::head::{self, Client, Parsed, Persist, Request, Response};
use crate::keys::Owner;
use crate::route::Entry;
use runtime::stream::Ready;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

enum Resp {
    Head,
    Body(Pump),
    Done,
}

pub struct Exchange {
    /// The route (shared with the table: no copy per request); the
    /// connection keeps it even when an update replaces the table.
    pub route: Rc<Entry>,
    pub is_head: bool,
    head: Out,
    req: Pump,
    /// Safe to send again on another connection: an idempotent method
    /// (RFC 9110 §9.2.2) and no body, so the head alone is the request.
    replayable: bool,
    /// The backend stopped taking the request body.
    req_broken: bool,
    /// The whole request had been sent at this time.
    sent_at: Option<Instant>,
    upgrade: bool,
    client_minor: u8,
    client_keep: bool,
    resp: Resp,
    /// Backend bytes: response heads, then what follows them.
    pub(crate) bbuf: Buf,
    /// Some byte came from the backend.
    resp_bytes: bool,
    /// Some response head was queued for the client.
    sent_to_client: bool,
    reusable: bool,
    persist: Persist,
    /// The backend connection came from the idle pool.
    reused: bool,
    /// A route with replicas: the one chosen, counted while the exchange
    /// lasts (least-conn); the dialer borrows it to fail over (`dial.rs`).
    pub(crate) choice: Option<runtime::balance::Choice>,
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

    /// A pooled connection that failed before answering a request safe to
    /// repeat: the backend had likely closed it just before; one more try.
    /// `holding` (`--hold-timeout` on): a new connection too, since a
    /// provider going down resets the requests it had accepted; the retry
    /// is then held until it is back.
    pub fn can_retry(&self, holding: bool) -> bool {
        (self.reused || holding) && !self.retried && self.replayable && !self.resp_bytes
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

    /// A response head arrived (interim or final); its start is already
    /// queued for the client. Returns how to end it, or None to drop it.
    fn on_head(&mut self, resp: &Response, closing: bool) -> Result<Option<Persist>, Fail> {
        if resp.status == 101 {
            if !self.upgrade {
                return Err(Fail::Status(
                    502,
                    format!(
                        "101 from {} to a request that did not ask to upgrade",
                        self.route.backend
                    ),
                ));
            }
            self.sent_to_client = true;
            self.tunnel = true;
            self.resp = Resp::Done;
            return Ok(Some(Persist::KeepAlive11));
        }
        if resp.status < 200 {
            // 100 Continue, 103 Early Hints: an HTTP/1.0 client cannot take them.
            if self.client_minor == 1 {
                self.sent_to_client = true;
                return Ok(Some(Persist::KeepAlive11));
            }
            return Ok(None);
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
        self.sent_to_client = true;
        self.resp = Resp::Body(Pump::new(resp.framing));
        Ok(Some(self.persist))
    }
}

impl Conn {
    pub(crate) fn start_exchange(&mut self, cx: &mut Ctx, req: Request) -> Result<(), Fail> {
        let Some(route) = cx.routes.lookup(req.host.as_deref(), req.path()) else {
            return Err(Fail::Status(
                404,
                format!(
                    "no route for host {:?} path {}",
                    req.host.as_deref().unwrap_or(""),
                    req.path()
                ),
            ));
        };
        let mut head_out = Out::default();
        head::write_request(
            &req,
            self.cbuf.bytes(),
            route,
            Client { ip: self.ip },
            head_out.buf(),
        );
        self.cbuf.consume(req.len);
        // One replica's entry when the route has replicas.
        let (route, choice) = crate::route::Table::pick(route, cx.reach);
        let route = &route;
        let addr = route.backend.clone();
        self.ex = Some(Box::new(Exchange {
            route: route.clone(),
            is_head: req.method == "HEAD",
            head: head_out,
            req: Pump::new(req.framing),
            replayable: replayable(&req),
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
            choice,
            retried: false,
            tunnel: false,
        }));
        self.last_active = cx.now;
        // A request that must not run twice never goes on a reused
        // connection: were that one stale, the request could neither be
        // repeated nor told apart from one the backend ran and dropped.
        let pooled = match self.ex.as_ref() {
            Some(ex) if ex.replayable => cx.pool.take(&addr),
            _ => None,
        };
        if let Some(s) = pooled {
            // Registered since its connect, under its own token: only the
            // owner changes. The pool found it empty: the response raises a
            // new edge, no read before then (it would say EAGAIN).
            cx.owners.set(s.as_raw_fd(), Owner::Conn(cx.slot));
            self.backend = Some(BackendConn {
                stream: s,
                ready: Ready {
                    readable: false,
                    writable: true,
                },
                hup: false,
            });
            if let Some(ex) = self.ex.as_mut() {
                ex.reused = true;
            }
            self.phase = Phase::Exchange;
            return Ok(());
        }
        self.start_connect(cx)
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
                .flush_with(&b.stream, &mut b.ready, &mut self.cbuf, extra, false)
                .map_err(|e| {
                    Fail::Backend(format!("sending request to {}: {e}", ex.route.backend))
                })?;
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
                cx.stock,
            ) {
                Ok(n) => {
                    cx.stats.bytes_in += n;
                    progress |= n > 0;
                }
                Err(BodyError::Dst(e)) => {
                    // Perhaps the backend answered early and closed: read on.
                    proto::debug!("{} stopped taking the request body: {e}", ex.route.backend);
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
        // Interim heads are relayed like a body: on while the client takes
        // them as fast as they come, and the backend is left unread while
        // the client is slow (`read_response_head` stops at INTERIM_QUEUE).
        loop {
            progress |= read_response_head(ex, b, &mut self.cout, self.closing || cx.draining)?;
            let queued = !self.cout.is_empty();
            if queued {
                // The response head and the body bytes already read leave together.
                let (extra, pump) = match &mut ex.resp {
                    Resp::Body(p) => (
                        p.buffered(&ex.bbuf).map_err(|e| {
                            Fail::Abort(format!("response from {}: {e}", ex.route.backend))
                        })?,
                        Some(p),
                    ),
                    _ => (0, None),
                };
                // The whole rest of a response after which we close: our FIN
                // may ride on it (`finish` shuts or closes in this same pass).
                let last = ex.persist == Persist::Close
                    && !ex.tunnel
                    && pump
                        .as_ref()
                        .is_some_and(|p| !p.is_done() && p.ends_after(extra));
                let (h, n) = self
                    .cout
                    .flush_with(&self.client, &mut self.cr, &mut ex.bbuf, extra, last)
                    .map_err(|e| Fail::Abort(format!("writing response: {e}")))?;
                if let Some(p) = pump {
                    p.advance(n);
                }
                cx.stats.bytes_out += (h + n) as u64;
                progress |= h + n > 0;
            }
            if !(queued && self.cout.is_empty() && matches!(ex.resp, Resp::Head)) {
                break;
            }
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
                        cx.stock,
                    )
                    .map_err(|e| Fail::Abort(format!("response from {}: {e}", ex.route.backend)))?;
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
            // A backend whose FIN was already reported is not parked: the
            // pool would never hear of it again. The response must have
            // ended exactly at the bytes read (nothing left in the buffer);
            // the pool makes sure the socket itself holds nothing more.
            if ex.reusable
                && !b.hup
                && ex.request_sent()
                && !ex.req_broken
                && ex.bbuf.is_empty()
                && !ex.req.in_flight()
            {
                cx.pool.put(cx.owners, cx.now, &ex.route.backend, b.stream);
            }
        }
        if ex.persist == Persist::Close || self.wants_close(cx) {
            // A client that asked to close sends nothing more (RFC 9112
            // §9.6): with its whole request read and its socket drained,
            // a plain close cannot reset the response away, so the
            // lingering close (shutdown, wait for its FIN) is skipped.
            let asked = !ex.client_keep && ex.request_sent() && !ex.req_broken;
            if asked && self.cbuf.is_empty() && !self.cr.readable {
                self.phase = Phase::Done;
                return;
            }
            self.phase = Phase::Closing {
                since: cx.now,
                shut: false,
                discarded: 0,
            };
        } else {
            self.next_request(cx.now);
        }
    }
}

/// Whether a request may be sent a second time after a reused backend
/// connection closed without answering: idempotent methods (RFC 9110
/// §9.2.2; names are case-sensitive) without a body. A POST or PATCH,
/// even with `Content-Length: 0`, is not: the backend may have run it.
pub fn replayable(req: &Request) -> bool {
    req.framing == Framing::None
        && matches!(
            req.method.as_str(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
}

/// Interim (1xx) heads queued for the client, in bytes, past which no
/// further head is parsed and the backend is not read until the client
/// took them: the queue holds at most this plus one head (which is at most
/// `max_head_bytes` as read, and about as much as written), however many
/// interim responses a backend sends. No count is capped, as HAProxy caps
/// none: the response timeout, which interim heads do not reset, ends a
/// backend that never sends its final head. 4 KiB: several Early Hints,
/// or a 100 Continue and the final head, still leave in one write.
const INTERIM_QUEUE: usize = 4096;

/// Read and parse response heads until the final one (or a 101) is in,
/// or [`INTERIM_QUEUE`] bytes of interim heads wait for the client.
fn read_response_head(
    ex: &mut Exchange,
    b: &mut BackendConn,
    cout: &mut Out,
    closing: bool,
) -> Result<bool, Fail> {
    let mut progress = false;
    while matches!(ex.resp, Resp::Head) {
        // Back-pressure: heads for a client that is not taking them wait
        // in the backend's socket, not here (a provider may stream 1xx
        // heads without end: one queue's worth is all they cost).
        if cout.pending() >= INTERIM_QUEUE {
            break;
        }
        if !ex.bbuf.is_empty() {
            // Heads already sent go; the allocation stays for the next.
            cout.compact();
            let mark = cout.buf().len();
            match head::parse_response(ex.bbuf.bytes(), ex.is_head, cout.buf()) {
                Err(why) => {
                    return Err(Fail::Status(
                        502,
                        format!("{why} from {}", ex.route.backend),
                    ))
                }
                Ok(Parsed::Complete(resp)) => {
                    ex.bbuf.consume(resp.len);
                    match ex.on_head(&resp, closing)? {
                        Some(persist) => head::end_response(resp.status, persist, cout.buf()),
                        // Not for this client: take back what parse_response wrote.
                        None => cout.buf().truncate(mark),
                    }
                    progress = true;
                    continue;
                }
                Ok(Parsed::Partial) if ex.bbuf.is_full() => {
                    return Err(Fail::Status(
                        502,
                        format!("response head from {} too large", ex.route.backend),
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
            .read_head(&b.stream, &mut b.ready, b.hup)
            .map_err(|e| {
                Fail::Backend(format!("reading response from {}: {e}", ex.route.backend))
            })?;
        if got.bytes > 0 {
            ex.resp_bytes = true;
            progress = true;
            continue;
        }
        if got.eof {
            return Err(Fail::Backend(format!(
                "{} closed the connection without a response",
                ex.route.backend
            )));
        }
        break;
    }
    Ok(progress)
}
