//! A response head from the backend: parsed with httparse, its framing
//! and reuse decided, and the head the client gets written: the status
//! line and end-to-end fields as they came, then our own `Connection`.

use super::{connection_tokens, eq_any, header, Parsed, END_TO_END};
use crate::fields::MAX_HEADERS;
use crate::framing::{parse_content_length, te_is_chunked, Framing};
use std::mem::MaybeUninit;

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
// Out of line: one call per response head costs nothing measurable
// (`scripts/prof-http.sh`), while inlined into the connection's step it
// took its helpers along and 1.6 KB more of the executable (issue 19).
#[inline(never)]
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
