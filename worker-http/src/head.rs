//! Request and response heads: parse with httparse, decide framing and
//! persistence, and write the head that goes on the wire.
//!
//! Pure functions over byte slices, so they are unit-tested here and easy
//! to fuzz. Requests are validated strictly (BEHAVIOUR §5): anything a backend
//! could frame differently from us is refused before it is forwarded.

use crate::fields::{is_framing_alias, is_identity, HOP_BY_HOP};
use crate::framing::{parse_content_length, te_is_chunked, Framing};
use crate::route::{normalise_host, rewrite_target, Entry};
use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::net::IpAddr;

/// Most header lines accepted in one head (HAProxy allows 101), and most
/// we forward: a head leaves room for the lines we add to it, so what the
/// other side gets passes the same limit (Python's http.client, for one,
/// refuses more than 100).
pub const MAX_HEADERS: usize = 100;

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
    headers: Vec<(Span, Span)>,
    /// X-Forwarded-For values the client sent, in order.
    forwarded_for: Vec<Span>,
    /// The Host header value, for X-Forwarded-Host.
    host_hdr: Option<Span>,
    /// The authority of an absolute-form target (it replaces Host).
    authority: Option<String>,
}

impl Request {
    /// The target's path, without the query, for routing.
    pub fn path(&self) -> &str {
        &self.target[..self.path_end]
    }
}

/// A byte range of a head: (start, end).
type Span = (usize, usize);

fn span(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + part.len())
}

fn at(buf: &[u8], s: Span) -> &[u8] {
    &buf[s.0..s.1]
}

fn eq_any(name: &str, list: &[&str]) -> bool {
    list.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// Outcome of looking for a head in the bytes received so far.
#[derive(Debug)]
pub enum Parsed<T> {
    Complete(T),
    /// Need more bytes.
    Partial,
}

/// Headers a client may not make disappear by naming them in `Connection`.
const END_TO_END: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
];

/// The tokens of a head's `Connection` lines, in place in the head: no
/// copy and, for the usual one to four tokens, no allocation. Compared
/// case-insensitively.
struct Tokens<'h> {
    few: [&'h [u8]; 4],
    n: usize,
    rest: Vec<&'h [u8]>,
}

impl<'h> Tokens<'h> {
    fn iter(&self) -> impl Iterator<Item = &'h [u8]> + '_ {
        self.few[..self.n].iter().chain(&self.rest).copied()
    }

    fn has(&self, token: &str) -> bool {
        self.iter()
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }
}

fn connection_tokens<'h>(headers: &[httparse::Header<'h>]) -> Tokens<'h> {
    let mut t = Tokens {
        few: [&[]; 4],
        n: 0,
        rest: Vec::new(),
    };
    let values = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty());
    for v in values {
        match t.few.get_mut(t.n) {
            Some(slot) => {
                *slot = v;
                t.n += 1;
            }
            None => t.rest.push(v),
        }
    }
    t
}

/// Parse a request head at the start of `buf`. `Err` carries the status to
/// answer with (400, 431).
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

/// Who is asking, for the identity headers.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// None for unix-socket clients.
    pub ip: Option<IpAddr>,
}

/// Write the head the backend gets: target rewritten for the route,
/// hop-by-hop and client `X-PV-*` headers gone, identity headers added.
/// `head`: the bytes [`parse_request`] parsed (its spans point there).
pub fn write_request(req: &Request, head: &[u8], route: &Entry, client: Client, out: &mut Vec<u8>) {
    let target = if req.target == "*" {
        Cow::Borrowed("*")
    } else {
        rewrite_target(&req.target, &route.prefix, route.strip_prefix)
    };
    // One allocation for the whole head: the client's head plus room for
    // the identity headers.
    out.reserve(head.len().min(req.len) + 256);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    // A 1.0 client's request stays 1.0, so the backend never answers with
    // a chunked body that client cannot read.
    out.extend_from_slice(if req.minor == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    if let Some(a) = &req.authority {
        header(out, b"Host", a.as_bytes());
    }
    for (name, value) in &req.headers {
        header(out, at(head, *name), at(head, *value));
    }
    match (&req.upgrade, req.minor) {
        (Some(u), _) => {
            header(out, b"Connection", b"upgrade");
            header(out, b"Upgrade", u.as_bytes());
        }
        // Backend connections are reused: ask a 1.0 backend to keep it.
        (None, 0) => header(out, b"Connection", b"keep-alive"),
        (None, _) => {}
    }
    header(out, b"X-PV-Role", route.role.as_bytes());
    header(out, b"X-PV-Client", route.consumer.as_bytes());
    // A unix client has no address: the client's own claims are dropped
    // and nothing is added, so the last hop is never forged.
    if let Some(ip) = client.ip {
        out.extend_from_slice(b"X-Forwarded-For: ");
        for v in &req.forwarded_for {
            out.extend_from_slice(at(head, *v));
            out.extend_from_slice(b", ");
        }
        write_ip(out, ip);
        out.extend_from_slice(b"\r\n");
    }
    header(out, b"X-Forwarded-Proto", b"http");
    match (&req.authority, req.host_hdr) {
        (Some(a), _) => header(out, b"X-Forwarded-Host", a.as_bytes()),
        (None, Some(h)) => header(out, b"X-Forwarded-Host", at(head, h)),
        (None, None) => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// An address as `Display` writes it; IPv4 without the formatting
/// machinery (it runs once per forwarded request).
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if o >= 10 {
                    out.push(b'0' + o / 10 % 10);
                }
                out.push(b'0' + o % 10);
            }
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let _ = write!(out, "{ip}");
        }
    }
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A response head from the backend, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend allows reusing its connection after this response.
    pub reusable: bool,
}

/// Parse a response head at the start of `buf`. `head_request`: the
/// request was HEAD (no body follows whatever the headers say).
///
/// When complete, the head the client gets is appended to `out`: the
/// status line byte for byte and every end-to-end header, without the
/// final CRLF; [`end_response`] adds our connection management and ends
/// it. (A 101's head keeps its `Connection: upgrade`: that is the point.)
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<Parsed<Response>, &'static str> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response header lines"),
        Err(_) => return Err("malformed response head"),
    };
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    let headers = &*resp.headers;
    let mut cl: Option<u64> = None;
    let mut te = false;
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value).ok_or("invalid Content-Length in response")?;
            if cl.is_some_and(|c| c != v) {
                return Err("differing Content-Length values in response");
            }
            cl = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
        }
    }
    let bodyless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodyless {
        Framing::None
    } else if te && cl.is_some() {
        return Err("response has both Content-Length and Transfer-Encoding");
    } else if te {
        let tes = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value);
        // RFC 9112 §6.3: chunked not last, or in HTTP/1.0: read until close.
        if minor == 1 && te_is_chunked(tes) {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match cl {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let conn = connection_tokens(headers);
    let reusable = framing != Framing::Close
        && if minor == 0 {
            conn.has("keep-alive")
        } else {
            !conn.has("close")
        };
    // httparse skips empty lines before the status line; so do we.
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(0);
    let line_end = buf[start..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(len, |i| start + i + 1);
    let forwarded = |h: &httparse::Header<'_>| {
        let hop = eq_any(h.name, &["connection", "keep-alive", "proxy-connection"])
            || (conn.has(h.name) && !eq_any(h.name, END_TO_END));
        status == 101 || !hop
    };
    // One allocation for the head the client gets.
    let mark = out.len();
    out.reserve(len + 64);
    out.extend_from_slice(&buf[start..line_end]);
    let mut lines = 0;
    for h in headers.iter().filter(|h| forwarded(h)) {
        header(out, h.name.as_bytes(), h.value);
        lines += 1;
    }
    // Room for our own Connection line on a final response.
    if lines + usize::from(status >= 200) > MAX_HEADERS {
        out.truncate(mark);
        return Err("too many response header lines");
    }
    Ok(Parsed::Complete(Response {
        len,
        status,
        framing,
        reusable,
    }))
}

/// How the client connection continues after a final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Close after this response: say `Connection: close`.
    Close,
    /// Keep open; an HTTP/1.0 client must be told `keep-alive`.
    KeepAlive10,
    /// Keep open, HTTP/1.1 default: nothing to add.
    KeepAlive11,
}

/// End the response head [`parse_response`] started in `out`: our own
/// `Connection` header on a final response, then the blank line.
pub fn end_response(status: u16, persist: Persist, out: &mut Vec<u8>) {
    if status >= 200 {
        match persist {
            Persist::Close => header(out, b"Connection", b"close"),
            Persist::KeepAlive10 => header(out, b"Connection", b"keep-alive"),
            Persist::KeepAlive11 => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
