use super::*;
use proto::graph::Backend;

fn req(raw: &str) -> Result<Request, Reject> {
    match parse_request(raw.as_bytes())? {
        Parsed::Complete(r) => Ok(r),
        Parsed::Partial => panic!("partial: {raw:?}"),
    }
}

fn status(raw: &str) -> u16 {
    req(raw).expect_err("must be refused").status
}

fn route(prefix: &str, strip: bool) -> Entry {
    Entry {
        name: "api".into(),
        prefix: prefix.into(),
        host: None,
        strip_prefix: strip,
        backend: Backend::Tcp("127.0.0.1:1".parse().unwrap()),
        role: "admin".into(),
        consumer: "EXTERNAL".into(),
    }
}

fn rewritten(raw: &str, r: &Entry, ip: Option<&str>) -> String {
    let rq = req(raw).unwrap();
    let mut out = Vec::new();
    let client = Client {
        ip: ip.map(|s| s.parse().unwrap()),
    };
    write_request(&rq, r, client, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn partial_and_complete() {
    assert!(matches!(
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n"),
        Ok(Parsed::Partial)
    ));
    let r = req("GET /x?y=1 HTTP/1.1\r\nHost: A.example:80\r\n\r\nNEXT").unwrap();
    assert_eq!(r.len, 43);
    assert_eq!(r.path, "/x");
    assert_eq!(r.target, "/x?y=1");
    assert_eq!(r.host.as_deref(), Some("a.example"));
    assert_eq!(r.framing, Framing::None);
    assert!(r.keep_alive);
    assert_eq!(r.upgrade, None);
}

#[test]
fn malformed_heads_are_400() {
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n"),
        400
    );
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n"),
        400
    );
    assert_eq!(status("GET / HTTP/9.9\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    assert_eq!(status("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

#[test]
fn too_many_headers_is_431() {
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..MAX_HEADERS {
        raw.push_str(&format!("X-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    assert_eq!(status(&raw), 431);
}

#[test]
fn ambiguous_framing_is_400() {
    assert_eq!(
        status(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
}

#[test]
fn request_framing() {
    let r = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n")
        .unwrap();
    assert_eq!(r.framing, Framing::Length(7));
    let r = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(r.framing, Framing::None);
    let r = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    assert_eq!(r.framing, Framing::Chunked);
}

#[test]
fn persistence() {
    assert!(!req("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    assert!(
        req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .keep_alive
    );
    assert!(
        !req("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .keep_alive
    );
    assert!(
        req("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .keep_alive
    );
}

#[test]
fn upgrade_needs_connection_token_and_http11() {
    let r = req("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    assert_eq!(r.upgrade.as_deref(), Some("websocket"));
    let r = req("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap();
    assert_eq!(r.upgrade, None);
    let r = req("GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
    assert_eq!(r.upgrade, None);
}

#[test]
fn rewrite_strips_prefix_drops_hop_by_hop_and_client_identity() {
    let out = rewritten(
        "POST /api/v1/items?x=1 HTTP/1.1\r\nHost: dev.local:8080\r\nConnection: keep-alive, X-Secret\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Secret: s\r\nX-PV-Role: admin\r\nx-pv-client: me\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Forwarded-For: 10.0.0.1\r\n\
         Content-Length: 3\r\nX-Custom: kept\r\n\r\n",
        &route("/api/v1", true),
        Some("127.0.0.1"),
    );
    assert_eq!(
        out,
        "POST /items?x=1 HTTP/1.1\r\nHost: dev.local:8080\r\nContent-Length: 3\r\nX-Custom: kept\r\n\
         X-PV-Role: admin\r\nX-PV-Client: EXTERNAL\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n\
         X-Forwarded-Proto: http\r\nX-Forwarded-Host: dev.local:8080\r\n\r\n"
    );
}

#[test]
fn rewrite_keeps_path_without_strip_and_joins_forwarded_for() {
    let out = rewritten(
        "GET /api/x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n",
        &route("/api", false),
        Some("fd00:213::2"),
    );
    assert!(out.starts_with("GET /api/x HTTP/1.1\r\n"), "{out}");
    assert!(
        out.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, fd00:213::2\r\n"),
        "{out}"
    );
}

#[test]
fn connection_cannot_hide_framing_headers() {
    let out = rewritten(
        "POST / HTTP/1.1\r\nHost: h\r\nConnection: content-length, host\r\nContent-Length: 2\r\n\r\n",
        &route("/", true),
        None,
    );
    assert!(out.contains("Content-Length: 2\r\n"), "{out}");
    assert!(out.contains("Host: h\r\n"), "{out}");
}

#[test]
fn unix_client_gets_no_forwarded_for() {
    let out = rewritten(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        &route("/", true),
        None,
    );
    assert!(!out.contains("X-Forwarded-For"), "{out}");
    assert!(out.contains("X-PV-Client: EXTERNAL\r\n"), "{out}");
}

#[test]
fn rewrite_http10_and_upgrade() {
    let out = rewritten(
        "GET /a HTTP/1.0\r\n\r\n",
        &route("/a", true),
        Some("127.0.0.1"),
    );
    assert!(
        out.starts_with("GET / HTTP/1.0\r\nConnection: keep-alive\r\n"),
        "{out}"
    );
    assert!(!out.contains("X-Forwarded-Host"), "{out}");
    let out = rewritten(
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
        &route("/", true),
        Some("127.0.0.1"),
    );
    assert!(
        out.contains("Sec-WebSocket-Key: k\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"),
        "{out}"
    );
}

#[test]
fn absolute_form_becomes_origin_form() {
    let r = req("GET http://Dev.Local:81/api/x?q HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
    assert_eq!(r.target, "/api/x?q");
    assert_eq!(r.host.as_deref(), Some("dev.local"));
    let out = rewritten(
        "GET http://h?q HTTP/1.1\r\nHost: other\r\n\r\n",
        &route("/", true),
        None,
    );
    assert!(out.starts_with("GET /?q HTTP/1.1\r\nHost: h\r\n"), "{out}");
    assert!(!out.contains("other"), "{out}");
    let r = req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(r.path, "*");
}

fn resp(raw: &str, head: bool) -> Response {
    match parse_response(raw.as_bytes(), head).unwrap() {
        Parsed::Complete(r) => r,
        Parsed::Partial => panic!("partial"),
    }
}

#[test]
fn response_framing() {
    let f = |raw: &str| resp(raw, false).framing;
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        Framing::Length(5)
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Framing::Chunked
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
        Framing::Close
    );
    assert_eq!(
        f("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Framing::Close
    );
    assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
    assert_eq!(
        f("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        Framing::None
    );
    assert_eq!(
        f("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        Framing::None
    );
    assert_eq!(f("HTTP/1.1 100 Continue\r\n\r\n"), Framing::None);
    assert_eq!(
        resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).framing,
        Framing::None
    );
    assert!(parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        false
    )
    .is_err());
    assert!(parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        false
    )
    .is_err());
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
    assert!(parse_response(b"HTTZ/1.1 200 OK\r\n\r\n", false).is_err());
    assert!(matches!(
        parse_response(b"HTTP/1.1 200 OK\r\n", false),
        Ok(Parsed::Partial)
    ));
}

#[test]
fn response_reuse() {
    assert!(resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false).reusable);
    assert!(
        !resp(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false
        )
        .reusable
    );
    assert!(!resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).reusable);
    assert!(
        resp(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false
        )
        .reusable
    );
    assert!(!resp("HTTP/1.1 200 OK\r\n\r\n", false).reusable);
}

#[test]
fn response_rewrite_passes_status_and_headers() {
    let r = resp(
        "HTTP/1.1 201 Made It\r\nX-Custom: v  \r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nContent-Length: 2\r\n\r\nhi",
        false,
    );
    assert_eq!(r.status, 201);
    let mut out = Vec::new();
    write_response(&r, Persist::Close, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 201 Made It\r\nX-Custom: v\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    write_response(&r, Persist::KeepAlive10, &mut out);
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("Connection: keep-alive\r\n\r\n"));
    let r = resp(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        false,
    );
    let mut out = Vec::new();
    write_response(&r, Persist::Close, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    );
}
