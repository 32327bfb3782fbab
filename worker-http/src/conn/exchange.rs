//! One request/response exchange with a backend: what it holds from the
//! request head to the response's end ([`Exchange`]), how it starts
//! (reach the backend: the idle pool, for requests safe to repeat, or a
//! connect, `dial.rs`) and how it ends (hand the backend connection back
//! to the pool, then the next request or the close). Moving its bytes is
//! `transfer.rs`; its response heads, `response.rs`; after a `101` the
//! connection is a tunnel (`tunnel.rs`).
//!
//! Only a request safe to repeat ([`replayable`]) goes on a pooled
//! connection, and only such a request is ever sent a second time (once,
//! after its connection closed without a response byte); any other gets a
//! new connection and is never sent twice. Stricter than HAProxy's
//! `http-reuse safe` (which keeps only a client's first request off reused
//! connections): a non-idempotent request never meets a stale connection,
//! at the price of one connect to a local backend.

use super::record::{Cause, Record};
use super::{BackendConn, Conn, Ctx, Fail, Phase};
use crate::body::Pump;
use crate::buf::{Buf, Out};
use crate::framing::Framing;
use crate::head::{self, Client, Persist, Request};
use crate::keys::Owner;
use crate::route::Entry;
use runtime::stream::Ready;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

/// Where the response stands.
pub(super) enum Resp {
    Head,
    Body(Pump),
    Done,
}

pub(super) struct Exchange {
    /// The route (shared with the table: no copy per request); the
    /// connection keeps it even when an update replaces the table.
    pub(super) route: Rc<Entry>,
    pub(super) is_head: bool,
    pub(super) head: Out,
    pub(super) req: Pump,
    /// Safe to send again on another connection: an idempotent method
    /// (RFC 9110 §9.2.2) and no body, so the head alone is the request.
    pub(super) replayable: bool,
    /// The backend stopped taking the request body.
    pub(super) req_broken: bool,
    /// The whole request had been sent at this time.
    pub(super) sent_at: Option<Instant>,
    pub(super) upgrade: bool,
    pub(super) client_minor: u8,
    pub(super) client_keep: bool,
    pub(super) resp: Resp,
    /// Backend bytes: response heads, then what follows them.
    pub(super) bbuf: Buf,
    /// Some byte came from the backend.
    pub(super) resp_bytes: bool,
    /// Some response head was queued for the client.
    pub(super) sent_to_client: bool,
    pub(super) reusable: bool,
    pub(super) persist: Persist,
    /// The backend connection came from the idle pool.
    reused: bool,
    /// A route with replicas: the one chosen, counted while the exchange
    /// lasts (least-conn); the dialer borrows it to fail over (`dial.rs`).
    pub(super) choice: Option<runtime::balance::Choice>,
    retried: bool,
    /// A `101` was relayed: the connection becomes a tunnel.
    pub(super) tunnel: bool,
    /// Bytes last moved either way then (the idle timeout's start).
    pub(super) last_active: Instant,
    /// What the request is written down with when it ends.
    pub(super) rec: Record,
}

impl Exchange {
    /// Since when a response head is awaited (the whole request was sent).
    pub(super) fn waiting_since(&self) -> Option<Instant> {
        match self.resp {
            Resp::Head => self.sent_at,
            _ => None,
        }
    }

    pub(super) fn responded(&self) -> bool {
        self.sent_to_client
    }

    /// A pooled connection that failed before answering a request safe to
    /// repeat: the backend had likely closed it just before; one more try.
    /// `holding` (`--hold-timeout` on): a new connection too, since a
    /// provider going down resets the requests it had accepted; the retry
    /// is then held until it is back.
    pub(super) fn can_retry(&self, holding: bool) -> bool {
        (self.reused || holding) && !self.retried && self.replayable && !self.resp_bytes
    }

    /// Start over on a new backend connection (at `now`: the wait for the
    /// failed one's answer ends).
    pub(super) fn rewind(&mut self, now: Instant) {
        self.retried = true;
        self.reused = false;
        self.head.rewind();
        self.rec.waited(self.sent_at, now, false);
        self.sent_at = None;
    }

    pub(super) fn request_sent(&self) -> bool {
        self.head.is_empty() && self.req.is_done()
    }
}

impl Conn {
    /// `since`: the request head's first byte came then.
    pub(super) fn start_exchange(
        &mut self,
        cx: &mut Ctx,
        mut req: Request,
        since: Instant,
    ) -> Result<(), Fail> {
        let Some(route) = cx.routes.lookup(req.host.as_deref(), req.path()) else {
            return Err(Fail::Status(
                404,
                Cause::NoRoute,
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
        let is_head = req.method == "HEAD";
        let replayable = replayable(&req);
        // The line's method and target: the parsed head's own, moved.
        let what = cx.ledger.line.on().then(|| {
            (
                std::mem::take(&mut req.method),
                std::mem::take(&mut req.target),
            )
        });
        let r = Some(cx.ledger.routes.route(route.index));
        let rec = Record::new(r, since, req.len, what);
        let mut ex = Box::new(Exchange {
            route,
            is_head,
            head: head_out,
            req: Pump::new(req.framing),
            replayable,
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
            last_active: cx.now,
            rec,
        });
        // A request that must not run twice never goes on a reused
        // connection: were that one stale, the request could neither be
        // repeated nor told apart from one the backend ran and dropped.
        let pooled = if ex.replayable {
            cx.pool.take(&ex.route.backend)
        } else {
            None
        };
        if let Some(s) = pooled {
            // Registered since its connect, under its own token: only the
            // owner changes. The pool found it empty: the response raises a
            // new edge, no read before then (it would say EAGAIN).
            cx.owners.set(s.as_raw_fd(), Owner::Conn(cx.slot));
            ex.reused = true;
            let backend = BackendConn {
                stream: s,
                ready: Ready {
                    readable: false,
                    writable: true,
                },
                hup: false,
            };
            self.phase = Phase::Exchange { ex, backend };
            return Ok(());
        }
        self.start_connect(cx, ex)
    }

    /// The response is out: park the backend connection if it is clean,
    /// then wait for the next request or close.
    pub(super) fn finish(&mut self, cx: &mut Ctx) {
        self.ended(cx.ledger, cx.now, None, None);
        let Some((mut ex, b)) = self.take_exchanging() else {
            return;
        };
        // A backend whose FIN was already reported is not parked: the
        // pool would never hear of it again. The response must have ended
        // exactly at the bytes read (nothing left in the buffer); the pool
        // makes sure the socket itself holds nothing more.
        let clean = ex.reusable
            && !b.hup
            && ex.request_sent()
            && !ex.req_broken
            && ex.bbuf.is_empty()
            && !ex.req.in_flight();
        if clean {
            cx.pool.put(cx.owners, cx.now, &ex.route.backend, b.stream);
        } else {
            drop(b); // closes it
        }
        if ex.persist == Persist::Close || self.wants_close(cx) {
            // A client that asked to close sends nothing more (RFC 9112
            // §9.6): with its whole request read and its socket drained,
            // a plain close cannot reset the response away, so the
            // lingering close (shutdown, wait for its FIN) is skipped.
            let asked = !ex.client_keep && ex.request_sent() && !ex.req_broken;
            if !(asked && self.cbuf.is_empty() && !self.cr.readable) {
                self.phase = Phase::closing(cx.now);
            }
        } else {
            self.next_request(cx);
        }
        ex.bbuf.give_back(cx.spares);
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
