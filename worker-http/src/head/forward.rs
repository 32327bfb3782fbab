//! The request head its backend gets: the target rewritten for the
//! route, hop-by-hop and client identity fields gone, our identity fields
//! added (`X-PV-*`, `X-Forwarded-*`).

use super::header;
use super::request::{at, Request};
use crate::route::{rewrite_target, Entry};
use std::borrow::Cow;
use std::net::IpAddr;

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
pub(super) fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
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
