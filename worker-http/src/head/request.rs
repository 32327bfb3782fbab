//! A request head: parsed with httparse and checked strictly (BEHAVIOUR
//! §5: anything a backend could frame differently from us is refused),
//! its framing and persistence decided, and what is forwarded of it kept
//! as spans into the head's bytes for `forward.rs`.

use super::{connection_tokens, eq_any, Parsed, END_TO_END};
use crate::fields::{is_framing_alias, is_identity, HOP_BY_HOP, MAX_HEADERS};
use crate::framing::{parse_content_length, te_is_chunked, Framing};
use crate::route::normalise_host;
use std::mem::MaybeUninit;

/// Lines [`write_request`] adds at most: Host (absolute-form), Connection,
/// Upgrade, X-PV-Role, X-PV-Client, X-Forwarded-For, -Proto, -Host.
const ADDED_TO_REQUEST: usize = 8;

/// Why a request head is refused; `status` is what the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub why: &'static str,
}

fn reject(status: u16, why: &'static str) -> Reject {
    Reject { status, why }
}

/// A request head, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Bytes the head takes in the buffer.
    pub len: usize,
    pub method: String,
    /// The request-target as sent (origin-form after absolute-form is
    /// reduced), including the query.
    pub target: String,
    /// Where the target's path ends (its query starts): see [`Request::path`].
    path_end: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub host: Option<String>,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// The `websocket` token of `Upgrade` when the client asks to switch to
    /// WebSocket (the only upgrade tunnelled).
    pub upgrade: Option<String>,
    /// Header lines to forward as they are: (name, value) spans into the
    /// head's bytes (no copy per header; the head stays in the client
    /// buffer until [`write_request`] has run).
    pub(super) headers: Vec<(Span, Span)>,
    /// X-Forwarded-For values the client sent, in order.
    pub(super) forwarded_for: Vec<Span>,
    /// The Host header value, for X-Forwarded-Host.
    pub(super) host_hdr: Option<Span>,
    /// The authority of an absolute-form target (it replaces Host).
    pub(super) authority: Option<String>,
}

impl Request {
    /// The target's path, without the query, for routing.
    pub fn path(&self) -> &str {
        &self.target[..self.path_end]
    }
}

/// A byte range of a head: (start, end).
pub(super) type Span = (usize, usize);

fn span(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + part.len())
}

pub(super) fn at(buf: &[u8], s: Span) -> &[u8] {
    &buf[s.0..s.1]
}

/// Parse a request head at the start of `buf`. `Err` carries the status to
/// answer with (400, 431).
// Out of line, as `parse_response` is: inlined into the connection's
// step loop (`Conn::drive`), the `Request` it returns was kept as some
// twenty loose values carried from one pass of the loop to the next and
// copied between stack slots on each, some 150 instructions a kept-alive
// request (`scripts/prof-http.sh`, issue 20); returned through memory, it
// costs a call.
#[inline(never)]
pub fn parse_request(buf: &[u8]) -> Result<Parsed<Request>, Reject> {
    // Uninitialised slots: no 3 KiB memset per parse attempt.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431, "too many header lines")),
        Err(_) => return Err(reject(400, "malformed request head")),
    };
    let method = req.method.unwrap_or_default().to_string();
    let minor = req.version.unwrap_or(1);
    let raw_target = req.path.unwrap_or_default();
    let headers = &*req.headers;
    let (target, authority) = origin_form(&method, raw_target)?;
    let path_end = target.find('?').unwrap_or(target.len());

    let mut cl: Option<u64> = None;
    let mut te_seen = false;
    let mut host_raw: Option<&[u8]> = None;
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value).ok_or(reject(400, "invalid Content-Length"))?;
            if cl.is_some_and(|c| c != v) {
                return Err(reject(400, "differing Content-Length values"));
            }
            cl = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_seen = true;
        } else if h.name.eq_ignore_ascii_case("host") {
            if host_raw.is_some() {
                return Err(reject(400, "more than one Host header"));
            }
            host_raw = Some(h.value);
        } else if is_framing_alias(h.name) {
            // Neither dropped nor forwarded: a client that sends one means
            // to smuggle, and a backend that folds `_` to `-` would frame
            // the body by it (nginx drops every name with `_`; we refuse
            // only these, so other `_` names still reach their backend).
            return Err(reject(
                400,
                "Content-Length or Transfer-Encoding spelt with '_'",
            ));
        }
    }
    let framing = match (te_seen, cl) {
        (true, Some(_)) => return Err(reject(400, "both Content-Length and Transfer-Encoding")),
        (true, None) if minor == 0 => return Err(reject(400, "Transfer-Encoding in HTTP/1.0")),
        (true, None) => {
            let tes = headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                .map(|h| h.value);
            if !te_is_chunked(tes) {
                return Err(reject(400, "Transfer-Encoding not ending in chunked"));
            }
            Framing::Chunked
        }
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    if minor == 1 && host_raw.is_none() && authority.is_none() {
        return Err(reject(400, "HTTP/1.1 request without Host"));
    }
    let host_text = match (&authority, host_raw) {
        // RFC 9112 §3.2.2: an absolute-form target overrides Host.
        (Some(a), _) => Some(a.as_str()),
        (None, Some(h)) => {
            Some(std::str::from_utf8(h).map_err(|_| reject(400, "Host is not text"))?)
        }
        (None, None) => None,
    };
    let host = host_text.and_then(normalise_host);

    let conn = connection_tokens(headers);
    let keep_alive = if minor == 0 {
        conn.has("keep-alive")
    } else {
        !conn.has("close")
    };
    // Only a WebSocket upgrade is tunnelled: after any other (h2c above
    // all) the backend would read requests we never see, with the
    // client's own identity headers. Its other tokens are dropped.
    let upgrade = if minor == 1 && conn.has("upgrade") {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .flat_map(|h| h.value.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .find(|t| t.eq_ignore_ascii_case(b"websocket"))
            .and_then(|t| std::str::from_utf8(t).ok())
            .map(str::to_string)
    } else {
        None
    };

    let mut forwarded_for = Vec::new();
    let mut kept = Vec::with_capacity(headers.len());
    let mut seen_cl = false;
    for h in headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for.push(span(buf, h.value.trim_ascii()));
            continue;
        }
        let dropped = eq_any(name, HOP_BY_HOP)
            || is_identity(name)
            || (authority.is_some() && name.eq_ignore_ascii_case("host"))
            || (conn.has(name) && !eq_any(name, END_TO_END));
        // Identical duplicate Content-Lengths are forwarded as one.
        let dup_cl =
            name.eq_ignore_ascii_case("content-length") && std::mem::replace(&mut seen_cl, true);
        if !dropped && !dup_cl {
            kept.push((span(buf, name.as_bytes()), span(buf, h.value)));
        }
    }
    if kept.len() + ADDED_TO_REQUEST > MAX_HEADERS {
        return Err(reject(431, "too many header lines"));
    }
    let host_hdr = host_raw.map(|h| span(buf, h));
    Ok(Parsed::Complete(Request {
        len,
        method,
        target,
        path_end,
        minor,
        host,
        framing,
        keep_alive,
        upgrade,
        headers: kept,
        forwarded_for,
        host_hdr,
        authority,
    }))
}

/// Reduce the request-target to origin-form. Returns the target and, for
/// absolute-form, its authority.
fn origin_form(method: &str, t: &str) -> Result<(String, Option<String>), Reject> {
    if t.starts_with('/') {
        return Ok((t.to_string(), None));
    }
    if t == "*" && method == "OPTIONS" {
        return Ok(("*".to_string(), None));
    }
    let lower = t.to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &t[7..]
    } else if lower.starts_with("https://") {
        &t[8..]
    } else {
        return Err(reject(400, "request-target is not a path"));
    };
    let (auth, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if auth.is_empty() || auth.contains('@') {
        return Err(reject(400, "bad authority in request-target"));
    }
    Ok((path, Some(auth.to_string())))
}
