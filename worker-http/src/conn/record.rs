//! What a request is written down as when it ends (issue 20): its route's
//! counters (`runtime::route_book`, always) and its access line
//! (`--access-log`, README "Access log", http lines). A request keeps its
//! [`Record`] from its head to its end, through its exchange and, after a
//! `101`, its tunnel; every place a request ends calls [`Conn::ended`]
//! once, with the [`Cause`] when it did not end served.
//!
//! The times are the loop's (`Ctx::now`), taken where the request moves
//! on anyway: no clock is read for them. A request refused before any
//! route (a bad or oversized head, a head timeout, no route) has no
//! record of its own: one is made at its end from what its head holds.

use super::{Conn, Phase};
use crate::route::Entry;
use proto::ctl::End;
use proto::types::Backend;
use runtime::access::{AccessLine, MAX_PATH, MAX_VALUE};
use runtime::ledger::Ledger;
use runtime::route_book::RouteRef;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a request did not end served: the access line's `reason=`, and
/// the `end=` (and the route's `end` label) it counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// The request head is malformed (400).
    BadRequest,
    /// The request body's chunked framing is malformed (400).
    BadBody,
    /// No route for the request's host and path (404).
    NoRoute,
    /// The request head exceeds `--max-head-bytes` (431).
    HeadTooLarge,
    /// The request head did not arrive within `--head-timeout` (408).
    HeadTimeout,
    /// The request body stalled for the idle timeout (408).
    BodyTimeout,
    /// No connection to the backend: refused, absent, down, the hold
    /// over (502).
    Unreachable,
    /// The connect did not complete within `--connect-timeout`, or was
    /// still under way at the hold's end (504).
    ConnectTimeout,
    /// No response head within `--response-timeout` (504).
    ResponseTimeout,
    /// The backend closed or reset before or during its response (502
    /// when nothing was sent yet).
    BackendClosed,
    /// The backend's response cannot be relayed: a malformed or too large
    /// head, a `101` not asked for, a malformed chunked body (502 when
    /// nothing was sent yet).
    BadResponse,
    /// The client closed or reset before its response was out.
    ClientGone,
    /// No bytes either way for the idle timeout, once the response had
    /// begun (or in a tunnel).
    IdleTimeout,
    /// A drain's deadline cut it (503 when nothing was sent yet).
    Drained,
}

impl Cause {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Cause::BadRequest => "bad_request",
            Cause::BadBody => "bad_body",
            Cause::NoRoute => "no_route",
            Cause::HeadTooLarge => "head_too_large",
            Cause::HeadTimeout => "head_timeout",
            Cause::BodyTimeout => "body_timeout",
            Cause::Unreachable => "backend_unreachable",
            Cause::ConnectTimeout => "connect_timeout",
            Cause::ResponseTimeout => "response_timeout",
            Cause::BackendClosed => "backend_closed",
            Cause::BadResponse => "bad_response",
            Cause::ClientGone => "client_gone",
            Cause::IdleTimeout => "idle_timeout",
            Cause::Drained => "drained",
        }
    }

    pub(super) fn end(self) -> End {
        match self {
            Cause::BadRequest | Cause::BadBody | Cause::NoRoute | Cause::HeadTooLarge => {
                End::Refused
            }
            Cause::HeadTimeout
            | Cause::BodyTimeout
            | Cause::ConnectTimeout
            | Cause::ResponseTimeout
            | Cause::IdleTimeout => End::Timeout,
            Cause::Unreachable => End::BackendFailed,
            Cause::BackendClosed | Cause::BadResponse => End::BackendReset,
            Cause::ClientGone => End::ClientGone,
            Cause::Drained => End::Drained,
        }
    }
}

/// One request's story so far: what its route's counters and its line
/// say when it ends. Kept in the (boxed) exchange, then its tunnel: an
/// idle connection carries none.
pub(super) struct Record {
    /// The route it counts under; None: refused before any route.
    route: Option<RouteRef>,
    /// The request head's first byte was read then.
    start: Instant,
    /// Bytes from the client: its request head as it sent it, and the
    /// body (after a `101`, the tunnel's bytes too).
    pub(super) bytes_in: u64,
    /// Bytes to the client: response heads as we wrote them, the body, an
    /// answer of ours (after a `101`, the tunnel's bytes too).
    pub(super) bytes_out: u64,
    /// The status of the last response head queued for the client.
    pub(super) status: Option<u16>,
    /// What only the access line shows: kept while the log is on, boxed
    /// so that with the log off (the default) a request costs neither its
    /// room nor its time keeping, only the branch that finds it absent.
    detail: Option<Box<Detail>>,
}

/// What only a request's access line shows: its method and target, the
/// times it spent held, dialling and waiting.
#[derive(Default)]
struct Detail {
    /// The method and target as the client sent them (the query kept):
    /// moved out of the parsed head, which had them anyway.
    method: String,
    target: String,
    /// A dial is under way since then.
    dial_since: Option<Instant>,
    /// Time spent dialling (held time included), all dials summed.
    connect: Duration,
    /// The dial is held since then.
    held_since: Option<Instant>,
    held: Duration,
    /// Time from the whole request sent to the response's first byte.
    wait: Duration,
    /// The response's first byte came: `wait` is final.
    waited: bool,
}

impl Record {
    /// A request whose head began at `start`, `head` bytes long, routed
    /// to `route` (None: refused before any route); `what`: its method and
    /// target, when the line is on.
    pub(super) fn new(
        route: Option<RouteRef>,
        start: Instant,
        head: usize,
        what: Option<(String, String)>,
    ) -> Record {
        Record {
            route,
            start,
            bytes_in: head as u64,
            bytes_out: 0,
            status: None,
            detail: what.map(|(method, target)| {
                Box::new(Detail {
                    method,
                    target,
                    ..Detail::default()
                })
            }),
        }
    }

    /// A dial begins (the first, or one after a retry).
    pub(super) fn dialling(&mut self, now: Instant) {
        if let Some(d) = self.detail.as_deref_mut() {
            d.dial_since.get_or_insert(now);
        }
    }

    /// The dial reached its backend, or ended without.
    pub(super) fn dialled(&mut self, now: Instant) {
        if let Some(d) = self.detail.as_deref_mut() {
            d.dialled(now);
        }
    }

    /// After a dial's step: whether it is held now (a hold begins or ends
    /// inside the step, at the step's `now`).
    pub(super) fn held(&mut self, held: bool, now: Instant) {
        if let Some(d) = self.detail.as_deref_mut() {
            d.held(held, now);
        }
    }

    /// The wait for a response since `sent_at` ends at `now`: the
    /// response's first byte (`first`), or the attempt or the request is
    /// over.
    pub(super) fn waited(&mut self, sent_at: Option<Instant>, now: Instant, first: bool) {
        if let Some(d) = self.detail.as_deref_mut().filter(|d| !d.waited) {
            d.waited(sent_at, now, first);
        }
    }
}

/// The time keeping, not inlined: each is called from a few of the
/// connection's steps, and a call costs less than its copies (the http
/// worker is built for speed, opt-level 3).
impl Detail {
    #[inline(never)]
    fn dialled(&mut self, now: Instant) {
        if let Some(t) = self.dial_since.take() {
            self.connect += now.saturating_duration_since(t);
        }
    }

    #[inline(never)]
    fn held(&mut self, held: bool, now: Instant) {
        match (held, self.held_since) {
            (true, None) => self.held_since = Some(now),
            (false, Some(t)) => {
                self.held += now.saturating_duration_since(t);
                self.held_since = None;
            }
            _ => {}
        }
    }

    #[inline(never)]
    fn waited(&mut self, sent_at: Option<Instant>, now: Instant, first: bool) {
        if self.waited {
            return;
        }
        if let Some(s) = sent_at {
            self.wait += now.saturating_duration_since(s);
        }
        self.waited = first;
    }

    /// The request ends at `now`: what was still running stops.
    fn close(&mut self, sent_at: Option<Instant>, now: Instant) {
        self.held(false, now);
        self.dialled(now);
        self.waited(sent_at, now, true);
    }
}

/// A request's method and target from the start of its head as the
/// client sent it (a refused request's: no parsed head is kept). Only
/// what the line shows is looked at.
fn request_line(head: &[u8]) -> (String, String) {
    let line = &head[..head.len().min(MAX_PATH + MAX_VALUE + 2)];
    let line = line
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let mut word = || String::from_utf8_lossy(words.next().unwrap_or(&[])).into_owned();
    let method = word();
    (method, word())
}

impl Conn {
    /// The request in progress ends at `now`: its route's counters and,
    /// when on, its access line. `answered`: an answer of ours (its status
    /// and length) was queued for it now; `cause`: why it did not end
    /// served (None: it did). Nothing when no request is in progress.
    /// Compiled once: it is called from every place a request ends.
    #[inline(never)]
    pub(super) fn ended(
        &mut self,
        ledger: &mut Ledger,
        now: Instant,
        answered: Option<(u16, usize)>,
        cause: Option<Cause>,
    ) {
        let mut refused;
        let (rec, route, sent_at) = match &mut self.phase {
            Phase::Connecting { ex, .. } | Phase::Exchange { ex, .. } => {
                (&mut ex.rec, Some(&*ex.route), ex.sent_at)
            }
            Phase::Tunnel(t) => (&mut t.rec, Some(&*t.route), None),
            // A head begun and refused (or cut) before any route.
            Phase::ReadHead { head_since, .. } if !self.cbuf.is_empty() => {
                let head = self.cbuf.bytes();
                let what = ledger.line.on().then(|| request_line(head));
                let start = head_since.unwrap_or(now);
                refused = Record::new(None, start, head.len(), what);
                (&mut refused, None, None)
            }
            _ => return,
        };
        if let Some((status, len)) = answered {
            rec.status = Some(status);
            rec.bytes_out += len as u64;
        }
        if let Some(d) = rec.detail.as_deref_mut() {
            d.close(sent_at, now);
        }
        let end = cause.map_or(End::Complete, Cause::end);
        let ms = millis(now.saturating_duration_since(rec.start));
        if let (Some(r), Some(e)) = (rec.route, route) {
            let bytes = (rec.bytes_in, rec.bytes_out);
            ledger
                .routes
                .count(r, || e.name.as_str(), rec.status, end, bytes, ms);
        }
        if !ledger.line.on() {
            return;
        }
        let client = self.ip.map(|ip| SocketAddr::new(ip, self.port));
        write_line(ledger, rec, route, client, ms, end, cause);
    }
}

/// The fields of an http access line, in their order (README "Access
/// log", http lines); `reason` only for a request that did not end
/// served. One string, not an array of them: an array of `&str` costs a
/// relocation and 16 bytes of writable data per key in the executable.
const KEYS: &str =
    "link client method path status in out ms held_ms connect_ms wait_ms backend end reason";

/// A field's value on an access line.
enum Value<'a> {
    /// Text, cut at [`MAX_VALUE`] bytes; empty shows as `-`.
    Text(&'a str),
    /// The path, cut at [`MAX_PATH`] bytes.
    Path(&'a str),
    Num(u64),
    /// A client's or a backend's address.
    Addr(&'a SocketAddr),
    /// Another backend (a unix socket's path), printed.
    Shown(&'a dyn std::fmt::Display),
}

/// The access line of a request that ended. The values are a table, so
/// each kind is written in one place ([`put`]): the line's code is
/// compiled once, small.
#[inline(never)]
fn write_line(
    ledger: &mut Ledger,
    rec: &Record,
    route: Option<&Entry>,
    client: Option<SocketAddr>,
    ms: u64,
    end: End,
    cause: Option<Cause>,
) {
    use Value::{Addr, Num, Path, Shown, Text};
    let none = || Text("");
    let client = client.as_ref();
    // Kept from the request's start while the log is on (it always is
    // by now: the log is set when the worker starts).
    let absent = Detail::default();
    let d = rec.detail.as_deref().unwrap_or(&absent);
    let values: [Value; 14] = [
        Text(route.map_or("", |e| e.name.as_str())),
        client.map_or_else(none, Addr),
        Text(&d.method),
        Path(&d.target),
        rec.status.map_or_else(none, |s| Num(u64::from(s))),
        Num(rec.bytes_in),
        Num(rec.bytes_out),
        Num(ms),
        Num(millis(d.held)),
        Num(millis(d.connect)),
        Num(millis(d.wait)),
        route.map_or_else(none, |e| match &e.backend {
            Backend::Tcp(a) => Addr(a),
            b => Shown(b),
        }),
        Text(end.as_str()),
        Text(cause.map_or("", Cause::as_str)),
    ];
    let n = values.len() - usize::from(cause.is_none());
    put(ledger.line.start("http"), &values[..n]);
}

/// Write `values` under their [`KEYS`] on the line, then the line out. A
/// loop over a slice: not unrolled (as over the array), not inlined
/// into its caller.
#[inline(never)]
fn put(l: &mut AccessLine, values: &[Value]) {
    let mut rest = KEYS;
    for v in values {
        // The next key (`str::split` would cost 1 KiB of executable).
        let n = rest.bytes().position(|b| b == b' ').unwrap_or(rest.len());
        let (key, tail) = rest.split_at(n);
        rest = tail.get(1..).unwrap_or("");
        match *v {
            Value::Text(t) => l.text(key, t, MAX_VALUE),
            Value::Path(t) => l.text(key, t, MAX_PATH),
            Value::Num(n) => l.num(key, n),
            Value::Addr(a) => l.addr(key, a),
            Value::Shown(d) => l.shown(key, d),
        };
    }
    l.write();
}

/// Whole milliseconds (a request longer than u64 ms is not one we see).
#[inline(never)]
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
