//! Field lines: how many a head or a trailer section may have, and which
//! names a client may not send through us, in a head or in chunked
//! trailers: the identity fields the worker sets (providers trust
//! them because the connection comes from us, BEHAVIOUR §5), the ones that
//! frame or route a message, and the hop-by-hop ones.
//!
//! Names compare case-insensitively with `_` read as `-`: CGI, PHP, WSGI
//! (and nginx with `underscores_in_headers`) turn both `X-PV-Role` and
//! `X_PV_Role` into `HTTP_X_PV_ROLE`, so a client could otherwise forge one
//! beside ours.

/// Most header lines accepted in one head (HAProxy allows 101), and most
/// we forward: a head leaves room for the lines we add to it, so what the
/// other side gets passes the same limit (Python's http.client, for one,
/// refuses more than 100). A trailer section has the same bound.
pub const MAX_HEADERS: usize = 100;

/// Headers a proxy never forwards (RFC 9110 §7.6.1), besides the ones the
/// `Connection` header names. `Upgrade` is re-added for WebSocket upgrade
/// requests; `HTTP2-Settings` belongs to the `h2c` upgrade, never tunnelled.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "proxy-authorization",
    "http2-settings",
];

/// Fields that say how long a message is or where it goes.
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "host"];

/// Fields that claim who the client is, other than the prefixes below;
/// removed rather than rewritten (`X-Forwarded-For` carries the chain).
const CLAIMS: &[&str] = &["forwarded", "x-real-ip"];

/// `a` and `b` are the same name, case-insensitively and with `_` read
/// as `-`. `b` is lowercase with `-`.
fn same(a: &[u8], b: &str) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.bytes()).all(|(x, y)| {
            let x = x.to_ascii_lowercase();
            x == y || (x == b'_' && y == b'-')
        })
}

fn starts(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && same(&name.as_bytes()[..prefix.len()], prefix)
}

/// One of the identity fields the worker sets or a client's claim about
/// its address: `X-PV-*`, `X-Forwarded-*`, `Forwarded`, `X-Real-IP`, in
/// any case and with `_` for `-`.
pub fn is_identity(name: &str) -> bool {
    starts(name, "x-pv-")
        || starts(name, "x-forwarded-")
        || CLAIMS.iter().any(|c| same(name.as_bytes(), c))
}

/// `Content-Length` or `Transfer-Encoding` spelt with `_` for a `-`
/// (`Content_Length`): a backend that reads `_` as `-` (CGI, PHP, WSGI)
/// would frame the body by it while we frame by the real one, so a
/// request with one is refused (`head::parse_request`), never forwarded.
/// Only names that are not the exact field get here, so a match has a `_`.
pub fn is_framing_alias(name: &str) -> bool {
    same(name.as_bytes(), "content-length") || same(name.as_bytes(), "transfer-encoding")
}

/// A field that must not come from a chunked trailer: identity, framing,
/// `Host` and hop-by-hop fields (RFC 9110 §6.5.1), with `_` for `-`.
pub fn forbidden_in_trailers(name: &str) -> bool {
    is_identity(name)
        || FRAMING
            .iter()
            .chain(HOP_BY_HOP)
            .any(|f| same(name.as_bytes(), f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_with_underscores_as_dashes() {
        for n in [
            "X-PV-Role",
            "X_PV_Role",
            "x-pv_client",
            "X-PV-",
            "x_forwarded_for",
            "X-Forwarded-Port",
            "Forwarded",
            "X_Real_IP",
        ] {
            assert!(is_identity(n), "{n}");
            assert!(forbidden_in_trailers(n), "{n}");
        }
        for n in ["X-PV", "X-PVRole", "Forwarded-For", "X-Real", "X-Ok", "Via"] {
            assert!(!is_identity(n), "{n}");
        }
        for n in [
            "Content_Length",
            "transfer-encoding",
            "HOST",
            "Connection",
            "te",
            "Keep_Alive",
            "Upgrade",
        ] {
            assert!(forbidden_in_trailers(n), "{n}");
        }
        for n in ["X-Checksum", "Server-Timing", "Content-Lengths", "Hosts"] {
            assert!(!forbidden_in_trailers(n), "{n}");
        }
        for n in [
            "Content_Length",
            "content_length",
            "Transfer_Encoding",
            "TRANSFER-ENCODING",
        ] {
            assert!(is_framing_alias(n), "{n}");
        }
        for n in [
            "Content_Lengths",
            "Content_Type",
            "X_Content_Length",
            "Transfer_Encodin",
        ] {
            assert!(!is_framing_alias(n), "{n}");
        }
    }
}
