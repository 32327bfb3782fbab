//! pvx-worker-http against backends and clients that lie (BEHAVIOUR §5, issue
//! 8): no byte of one exchange reaches another client, no identity header
//! is forged around the head (trailers, underscores, upgrades), and a
//! request that is not safe to repeat never runs twice.

use proto::limits::Limits;
use pvx_tests::http::backend;
use pvx_tests::http::client::{closed, connect, exchange, get, read_resp};
use pvx_tests::http::direct::{config, Worker};
use pvx_tests::http::scripted::{self, Scripted};
use pvx_tests::wait_for;
use std::io::Write;
use std::time::Duration;

fn route_to(socket: &str) -> Worker {
    Worker::start(config(
        &[("/api", &format!(r#","socket":"{socket}""#))],
        Limits::default(),
    ))
}

/// The target the backend saw, as the first line of the body it answers.
fn tagged(target: &str, len: usize) -> Vec<u8> {
    let mut body = format!("for {target}\n").into_bytes();
    body.resize(len, b'.');
    body
}

#[test]
fn extra_bytes_after_a_response_never_reach_the_next_client() {
    // Every answer carries, in the same write, a whole second response
    // nobody asked for.
    let b = scripted::start(|r| {
        let len = 20_000 + (r.target.len() * 997 + r.nth * 1_013) % 20_000;
        let mut out = scripted::ok(&tagged(&r.target, len));
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
        Some(out)
    });
    let w = route_to(&b.socket());
    let check = |r: &pvx_tests::http::client::Resp, want: &str| {
        assert_eq!(r.status, 200, "{}", r.head);
        let text = r.text();
        assert!(!text.contains("POISON"), "{want}: got {text:.80}");
        assert!(
            text.starts_with(&format!("for {want}\n")),
            "{want}: got {text:.80}"
        );
        assert!(text.len() >= 20_000, "{want}: {} bytes", text.len());
    };
    for i in 0..20 {
        let (r, _s) = exchange(w.addr, &get(&format!("/api/fresh{i}")));
        check(&r, &format!("/fresh{i}"));
    }
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    for i in 0..20 {
        s.write_all(&get(&format!("/api/kept{i}"))).unwrap();
        let r = read_resp(&mut s, &mut buf, false).expect("a response");
        check(&r, &format!("/kept{i}"));
    }
}

/// The same with chunked answers whose long chunks go by splice: the
/// splice stops at each chunk's end, the parser reads the rest, and the
/// second response after the last chunk never reaches anyone.
#[test]
fn extra_bytes_after_a_chunked_response_never_reach_the_next_client() {
    let b = scripted::start(|r| {
        let len = 20_000 + (r.target.len() * 997 + r.nth * 1_013) % 60_000;
        let body = tagged(&r.target, len);
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for c in body.chunks(17_000 + r.nth % 3 * 10_000) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
        Some(out)
    });
    let w = route_to(&b.socket());
    let check = |r: &pvx_tests::http::client::Resp, want: &str| {
        assert_eq!(r.status, 200, "{}", r.head);
        let text = r.text();
        assert!(!text.contains("POISON"), "{want}: got {text:.80}");
        assert!(
            text.starts_with(&format!("for {want}\n")),
            "{want}: got {text:.80}"
        );
        assert!(text.len() >= 20_000, "{want}: {} bytes", text.len());
    };
    for i in 0..10 {
        let (r, _s) = exchange(w.addr, &get(&format!("/api/fresh{i}")));
        check(&r, &format!("/fresh{i}"));
    }
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    for i in 0..10 {
        s.write_all(&get(&format!("/api/kept{i}"))).unwrap();
        let r = read_resp(&mut s, &mut buf, false).expect("a response");
        check(&r, &format!("/kept{i}"));
    }
}

/// Answers the first request of each backend connection; reads the second
/// one and closes without a word (what a backend's idle timeout does).
fn drops_second() -> Scripted {
    scripted::start(|r| (r.nth == 0).then(|| scripted::ok(format!("ok {}", r.target).as_bytes())))
}

#[test]
fn a_request_not_safe_to_repeat_is_never_sent_twice() {
    let b = drops_second();
    let w = route_to(&b.socket());
    let unsafe_requests: [&[u8]; 5] = [
        b"POST /api/post-empty HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        b"POST /api/post-nolen HTTP/1.1\r\nHost: t\r\n\r\n",
        b"PATCH /api/patch-empty HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        b"POST /api/post-body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        b"PUT /api/put-body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    ];
    for raw in unsafe_requests {
        // A GET first, so a backend connection is parked in the pool.
        let mut s = connect(w.addr);
        let mut buf = Vec::new();
        s.write_all(&get("/api/warm")).unwrap();
        assert_eq!(read_resp(&mut s, &mut buf, false).unwrap().status, 200);
        s.write_all(raw).unwrap();
        let r = read_resp(&mut s, &mut buf, false).expect("a response");
        let line = String::from_utf8_lossy(raw.split(|b| *b == b'\r').next().unwrap()).to_string();
        // Not on the pooled connection: on a fresh one, answered.
        assert_eq!(r.status, 200, "{line}: {}", r.head);
        let target = line.split(' ').nth(1).unwrap().trim_start_matches("/api");
        let seen = b.reqs().iter().filter(|q| q.target == target).count();
        assert_eq!(seen, 1, "{line} reached the backend {seen} times");
    }
    // A GET on a stale pooled connection is still retried, once.
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    s.write_all(&get("/api/warm2")).unwrap();
    assert_eq!(read_resp(&mut s, &mut buf, false).unwrap().status, 200);
    s.write_all(&get("/api/again")).unwrap();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok /again"));
}

/// A chunked POST with these trailer lines (each ending in CRLF).
fn chunked_with_trailers(trailers: &str) -> Vec<u8> {
    format!(
        "POST /api/up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n{trailers}\r\n"
    )
    .into_bytes()
}

#[test]
fn trailers_are_filtered_and_malformed_ones_refused() {
    let b = scripted::start(|_| Some(scripted::ok(b"ok")));
    let w = route_to(&b.socket());
    let forged = "X-PV-Role: admin\r\nX_PV_Role: admin\r\nx-pv-client: me\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nConnection: close\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Ok: yes\r\nX-Sum: 1234\r\n";
    let (r, _s) = exchange(w.addr, &chunked_with_trailers(forged));
    assert_eq!(r.status, 200, "{}", r.head);
    let reqs = b.reqs();
    let body = String::from_utf8_lossy(&reqs[0].body).to_string();
    assert_eq!(body, "5\r\nhello\r\n0\r\nX-Ok: yes\r\nX-Sum: 1234\r\n\r\n");
    // No trailers at all still ends the body.
    let (r, _s) = exchange(w.addr, &chunked_with_trailers(""));
    assert_eq!(r.status, 200);

    let big = "X-Big: ".to_string() + &"a".repeat(20_000) + "\r\n";
    for bad in [
        "no colon here\r\n",
        "Bad Name: x\r\n",
        "X-A: 1\r\n folded: y\r\n",
        ": empty name\r\n",
        big.as_str(),
    ] {
        let before = b.ended();
        let mut s = connect(w.addr);
        s.write_all(&chunked_with_trailers(bad)).unwrap();
        let r = read_resp(&mut s, &mut Vec::new(), false).expect("a response");
        assert_eq!(r.status, 400, "{bad:.40}: {}", r.head);
        assert!(closed(&mut s, Duration::from_secs(10)), "{bad:.40}");
        // The backend connection ended without the trailer reaching it.
        wait_for(Duration::from_secs(10), "backend connection end", || {
            (b.ended() > before).then_some(())
        });
        for i in 0..b.conns() {
            let raw = String::from_utf8_lossy(&b.raw(i)).to_string();
            assert!(
                !raw.contains(&bad[..6]),
                "{bad:.40} reached the backend: {raw:.200}"
            );
        }
    }
}

#[test]
fn client_headers_that_look_like_ours_are_removed() {
    let b = backend::tcp("127.0.0.1:0");
    let w = route_to(&b.socket());
    let (r, _s) = exchange(
        w.addr,
        b"GET /api/x HTTP/1.1\r\nHost: h\r\nX_PV_Role: admin\r\nx_pv_client: me\r\nX-PV_Role: admin\r\nx_forwarded_for: 6.6.6.6\r\nX_Forwarded_Host: evil\r\nX-Forwarded-Port: 6\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nforwarded: by=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX_Real_Ip: 6.6.6.6\r\nX-Kept_Header: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let t = r.text();
    for gone in [
        "admin",
        "x_pv",
        "x-pv-client: me",
        "6.6.6.6",
        "evil",
        "x-forwarded-port",
        "https",
        "forwarded: ",
        "x-real-ip",
        "x_real_ip",
    ] {
        assert!(!t.contains(gone), "{gone} reached the backend:\n{t}");
    }
    assert!(t.contains("x-pv-role: any\n"), "{t}");
    assert!(t.contains("x-forwarded-for: 127.0.0.1\n"), "{t}");
    assert!(t.contains("x-forwarded-host: h\n"), "{t}");
    assert!(t.contains("x-kept_header: yes\n"), "{t}");
}

#[test]
fn only_websocket_upgrades_become_tunnels() {
    // The test backend answers 101 to /upgrade whenever it sees Upgrade.
    let b = backend::tcp("127.0.0.1:0");
    let w = route_to(&b.socket());
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    s.write_all(b"GET /api/upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n").unwrap();
    let r = read_resp(&mut s, &mut buf, false).expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
    let t = r.text();
    assert!(
        !t.contains("upgrade:") && !t.contains("http2-settings"),
        "{t}"
    );
    // The connection is still HTTP: the next request carries our identity.
    s.write_all(b"GET /api/next HTTP/1.1\r\nHost: t\r\nX-PV-Role: admin\r\n\r\n")
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
    let t = r.text();
    assert!(t.starts_with("GET /next\n"), "{t}");
    assert!(
        t.contains("x-pv-role: any\n") && !t.contains("admin"),
        "{t}"
    );

    // A list with websocket in it upgrades; only websocket goes on.
    let mut s = connect(w.addr);
    s.write_all(b"GET /api/upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: h2c, WebSocket\r\n\r\n").unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).expect("a response");
    assert_eq!(r.status, 101, "{}", r.head);
    let last = b.heads().pop().unwrap();
    assert!(last.contains("\r\nUpgrade: WebSocket\r\n"), "{last}");
    assert!(!last.contains("h2c"), "{last}");
}

#[test]
fn a_101_nobody_asked_for_is_a_502_not_a_tunnel() {
    let b = scripted::start(|_| {
        Some(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec(),
        )
    });
    let w = route_to(&b.socket());
    let mut s = connect(w.addr);
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        .unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).expect("a response");
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(closed(&mut s, Duration::from_secs(10)));
    let head = &b.reqs()[0].head;
    assert!(!head.to_ascii_lowercase().contains("upgrade"), "{head}");
}

/// `Content_Length` / `Transfer_Encoding` (issue 18): a backend that
/// reads `_` as `-` (CGI, PHP, WSGI: both spellings are
/// `HTTP_CONTENT_LENGTH`) would frame the body by the underscore one while
/// we frame by the real one, and the bytes after our end would be a second
/// request we never saw. Such a request gets 400 and no byte of it reaches
/// the backend; other names with `_` are forwarded as before.
#[test]
fn framing_fields_spelt_with_underscores_never_reach_the_backend() {
    let b = scripted::start(|_| Some(scripted::ok(b"ok")));
    let w = route_to(&b.socket());
    let smuggled = "GET /api/admin HTTP/1.1\r\nHost: h\r\n\r\n";
    for raw in [
        format!(
            "POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent_Length: {}\r\n\r\nhello{smuggled}",
            5 + smuggled.len()
        ),
        format!("POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("GET /api/x HTTP/1.1\r\nHost: h\r\ncontent_length: {}\r\n\r\n{smuggled}", smuggled.len()),
    ] {
        let (r, mut s) = exchange(w.addr, raw.as_bytes());
        assert_eq!(r.status, 400, "{raw:?}: {}", r.head);
        assert!(closed(&mut s, Duration::from_secs(10)), "{raw:?}: kept open");
    }
    assert!(b.reqs().is_empty(), "the backend got {:?}", b.reqs());
    let (r, _s) = exchange(
        w.addr,
        b"GET /api/y HTTP/1.1\r\nHost: h\r\nX_Trace_Id: 7\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head);
    let reqs = b.reqs();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(
        reqs[0].head.contains("\r\nX_Trace_Id: 7\r\n"),
        "{}",
        reqs[0].head
    );
}
