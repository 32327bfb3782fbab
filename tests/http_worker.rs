//! pvx-worker-http run directly (no supervisor), against real backends on
//! loopback: the state machine's edges that need short timeouts or exact
//! bytes, and the control messages (Update, Drain) sent by hand. The
//! end-to-end suite through pv-xconnect is tests/http.rs.

use proto::ctl::ToWorker;
use proto::limits::Limits;
use pvx_tests::http::backend;
use pvx_tests::http::client::{closed, connect, exchange, get, read_resp};
use pvx_tests::http::direct::{config, Worker};
use pvx_tests::http::fnv as hash;
use pvx_tests::pattern;
use std::io::Write;
use std::time::Duration;

fn sock(b: &backend::Backend) -> String {
    format!(r#","socket":"{}""#, b.socket())
}

fn one_route(b: &backend::Backend, limits: Limits) -> Worker {
    Worker::start(config(&[("/api", &sock(b))], limits))
}

#[test]
fn routes_strips_and_adds_identity() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let (r, _) = exchange(
        w.addr,
        b"GET /api/items?q=1 HTTP/1.1\r\nHost: dev\r\nX-PV-Role: admin\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head);
    let t = r.text();
    assert!(t.starts_with("GET /items?q=1\n"), "{t}");
    assert!(t.contains("x-pv-role: any\n"), "{t}");
    assert!(!t.contains("x-pv-role: admin"), "{t}");
    assert!(t.contains("x-pv-client: EXTERNAL\n"), "{t}");
    assert!(t.contains("x-forwarded-for: 6.6.6.6, 127.0.0.1\n"), "{t}");
    assert!(t.contains("x-forwarded-proto: http\n"), "{t}");
    assert!(t.contains("x-forwarded-host: dev\n"), "{t}");
    let (r, _) = exchange(w.addr, &get("/apix"));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
}

#[test]
fn keep_alive_reuses_one_backend_connection_and_pipelines_in_order() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    for i in 0..3 {
        s.write_all(&get(&format!("/api/n{i}"))).unwrap();
        let r = read_resp(&mut s, &mut buf, false).expect("response");
        assert!(
            r.text().starts_with(&format!("GET /n{i}\n")),
            "{}",
            r.text()
        );
    }
    assert_eq!(b.conns(), 1, "three requests, one backend connection");
    // Pipelined: all at once, answered in order.
    let mut all = Vec::new();
    for i in 0..5 {
        all.extend_from_slice(&get(&format!("/api/p{i}")));
    }
    all.extend_from_slice(b"POST /api/p5 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    all.extend_from_slice(b"HEAD /api/p6 HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(&all).unwrap();
    for i in 0..7 {
        let r = read_resp(&mut s, &mut buf, i == 6).expect("pipelined response");
        assert_eq!(r.status, 200);
        if i < 6 {
            let want = format!("{} /p{i}\n", if i == 5 { "POST" } else { "GET" });
            assert!(r.text().starts_with(&want), "{i}: {}", r.text());
        } else {
            assert!(r.body.is_empty());
        }
    }
}

#[test]
fn chunked_201_and_bodyless_responses_pass_through() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    s.write_all(&get("/api/created")).unwrap();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-custom").as_deref(), Some("yes"));
    assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(r.text(), "firstsecondthird");
    s.write_all(&get("/api/nocontent")).unwrap();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    assert_eq!(r.status, 204);
    s.write_all(b"POST /api/up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    assert!(
        r.text()
            .contains(&format!("body-len: 5\nbody-hash: {:016x}", hash(b"abcde"))),
        "{}",
        r.text()
    );
    // A close-delimited response ends the client connection too.
    s.write_all(&get("/api/close")).unwrap();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    assert_eq!(r.text(), "until-close");
}

#[test]
fn large_bodies_both_ways() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let n = 5 << 20;
    let body = pattern(n, 7);
    let mut s = connect(w.addr);
    let head = format!("POST /api/upload HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\n\r\n");
    let mut writer = s.try_clone().unwrap();
    let body2 = body.clone();
    let t = std::thread::spawn(move || {
        writer.write_all(head.as_bytes()).unwrap();
        writer.write_all(&body2).unwrap();
    });
    let mut buf = Vec::new();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    t.join().unwrap();
    assert!(
        r.text()
            .contains(&format!("body-len: {n}\nbody-hash: {:016x}", hash(&body))),
        "{}",
        r.text()
    );
    s.write_all(&get(&format!("/api/big/{n}"))).unwrap();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    assert_eq!(r.body.len(), n);
    assert_eq!(hash(&r.body), hash(&body));
}

#[test]
fn framing_attacks_are_refused_before_the_backend() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let attacks: [&[u8]; 5] = [
        b"POST /api/a HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /api/a HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        b"POST /api/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST /api/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /api/a HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
    ];
    for a in attacks {
        let (r, mut s) = exchange(w.addr, a);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(a));
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        assert!(
            closed(&mut s, Duration::from_secs(5)),
            "connection closed after 400"
        );
    }
    assert!(b.heads().is_empty(), "backend saw {:?}", b.heads());
    let (r, _) = exchange(w.addr, b"GARBAGE\r\n\r\n");
    assert_eq!(r.status, 400);
    let mut big = b"GET /api/ HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend_from_slice(b"\r\n\r\n");
    let (r, _) = exchange(w.addr, &big);
    assert_eq!(r.status, 431);
}

#[test]
fn timeouts_give_408_504_and_unreachable_502() {
    let b = backend::tcp("127.0.0.1:0");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let limits = Limits {
        head_timeout_ms: 300,
        response_timeout_ms: 300,
        idle_timeout_ms: 300,
        // Not held: the 502 at once (tests/hold.rs holds).
        hold_timeout_ms: 0,
        ..Limits::default()
    };
    let w = Worker::start(config(
        &[
            ("/api", &sock(&b)),
            ("/dead", &format!(r#","socket":"{dead_addr}""#)),
        ],
        limits,
    ));
    let mut s = connect(w.addr);
    s.write_all(b"GET /api/ HTTP/1.1\r\nHo").unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 408);
    let (r, _) = exchange(w.addr, &get("/api/silent"));
    assert_eq!(r.status, 504);
    let (r, _) = exchange(w.addr, &get("/dead/x"));
    assert_eq!(r.status, 502);
    // An idle keep-alive connection is closed without a word.
    let mut s = connect(w.addr);
    s.write_all(&get("/api/")).unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_resp(&mut s, &mut buf, false).unwrap().status, 200);
    assert!(closed(&mut s, Duration::from_secs(10)));
    assert!(buf.is_empty());
}

#[test]
fn upgrade_becomes_a_tunnel_both_ways() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let mut s = connect(w.addr);
    s.write_all(
        b"GET /api/upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    assert_eq!(r.status, 101);
    let heads = b.heads();
    assert!(
        heads[0].contains("Connection: upgrade\r\nUpgrade: websocket\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[0].contains("X-Forwarded-For: 127.0.0.1\r\n"),
        "{}",
        heads[0]
    );
    s.write_all(b"hello tunnel").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = buf;
    std::io::Read::read_to_end(&mut s, &mut rest).unwrap();
    assert_eq!(rest, b"HELLO TUNNELBYE");
}

#[test]
fn update_replaces_routes_and_drain_exits() {
    let b1 = backend::tcp("127.0.0.1:0");
    let b2 = backend::tcp("127.0.0.1:0");
    let mut w = one_route(&b1, Limits::default());
    let (r, _) = exchange(w.addr, &get("/api/x"));
    assert_eq!(r.status, 200);
    let cfg = config(&[("/v2", &sock(&b2))], Limits::default());
    assert_eq!(w.send(|seq| ToWorker::Update { seq, config: cfg }), None);
    let (r, _) = exchange(w.addr, &get("/api/x"));
    assert_eq!(r.status, 404);
    let (r, _) = exchange(w.addr, &get("/v2/y"));
    assert!(r.text().starts_with("GET /y\n"));
    let stats = w.stats();
    assert!(stats.total >= 3 && stats.errors >= 1, "{stats:?}");
    // An exchange in flight during a drain still completes.
    let mut s = connect(w.addr);
    s.write_all(&get("/v2/slow/300")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        w.send(|seq| ToWorker::Drain {
            seq,
            deadline_ms: 5000
        }),
        None
    );
    let r = read_resp(&mut s, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let status = w.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn stale_pooled_connection_is_retried_on_a_fresh_one() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    s.write_all(&get("/api/drop-next")).unwrap();
    assert_eq!(read_resp(&mut s, &mut buf, false).unwrap().status, 200);
    // The pooled connection swallows this request and closes: the worker
    // must send it again on a new connection, not answer 502.
    s.write_all(&get("/api/after")).unwrap();
    let r = read_resp(&mut s, &mut buf, false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("GET /after\n"), "{}", r.text());
    let heads = b.heads();
    assert!(
        heads.iter().any(|h| h.starts_with("DROPPED GET /after ")),
        "{heads:?}"
    );
    assert_eq!(b.conns(), 2);
}

#[test]
fn connection_cap_defers_accepting() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(
        &b,
        Limits {
            max_conns: 2,
            ..Limits::default()
        },
    );
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut s = connect(w.addr);
            s.write_all(&get("/api/hold")).unwrap();
            assert_eq!(
                read_resp(&mut s, &mut Vec::new(), false).unwrap().status,
                200
            );
            s
        })
        .collect();
    // A third client waits in the kernel backlog (not refused, not served).
    let mut third = connect(w.addr);
    third.write_all(&get("/api/third")).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut one = [0u8; 1];
    assert!(
        std::io::Read::read(&mut third, &mut one).is_err(),
        "served beyond the cap"
    );
    // Below 90 % of the cap, accepting resumes and the waiting request is served.
    held.clear();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = read_resp(&mut third, &mut Vec::new(), false).unwrap();
    assert!(r.text().starts_with("GET /third\n"));
}

#[test]
fn slow_reader_does_not_grow_worker_memory() {
    slow_reader_of("big", pattern(64 << 20, 7));
}

/// The same with a chunked body of 1 MiB chunks, whose data goes by
/// splice: memory stays flat, and the chunks arrive exactly as sent.
#[test]
fn slow_reader_of_a_chunked_body_does_not_grow_worker_memory() {
    slow_reader_of("bigchunked", backend::big_chunked(64 << 20));
}

/// GET /api/<path>/64MiB, read 1 MiB of it, stall, then check the worker
/// did not buffer the rest and that the body is `want`.
fn slow_reader_of(path: &str, want: Vec<u8>) {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let before = rss(w.child.id());
    let mut s = connect(w.addr);
    let n = 64 << 20;
    s.write_all(&get(&format!("/api/{path}/{n}"))).unwrap();
    // Read a little, then stall: the backend must be throttled, not buffered.
    let mut first = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut s, &mut first).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let during = rss(w.child.id());
    assert!(
        during < before + 8 * 1024,
        "worker RSS grew from {before} kB to {during} kB"
    );
    // And the whole body still arrives intact.
    let head_end = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut body = first.split_off(head_end);
    let have = body.len();
    body.resize(want.len(), 0);
    std::io::Read::read_exact(&mut s, &mut body[have..]).unwrap();
    assert_eq!(hash(&body), hash(&want));
}

/// A client that asked for `Connection: close` sends nothing after its
/// request (RFC 9112 §9.6), so once that request was read whole and
/// nothing else came, the worker closes right after the response: no
/// lingering close (no `shutdown`, no wait for the client's FIN, two
/// syscalls and a wake-up per connection). The socket is gone from the
/// worker by the time the client reads EOF, though the client keeps its
/// side open. A client that did not ask to close still gets the lingering
/// close, which keeps its socket until the client closes.
#[test]
fn a_client_that_asked_to_close_is_closed_without_lingering() {
    use pvx_tests::fds::fd_count;
    use pvx_tests::wait_for;
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    let pid = w.child.id();
    // One exchange first, so the backend connection is parked and the
    // count below does not change with it.
    let (r, s) = exchange(w.addr, &get("/api/warm"));
    assert_eq!(r.status, 200);
    drop(s);
    let base = wait_for(Duration::from_secs(10), "the warm client closed", || {
        let n = fd_count(pid);
        let (r, s) = exchange(w.addr, &get("/api/probe"));
        assert_eq!(r.status, 200);
        drop(s);
        std::thread::sleep(Duration::from_millis(50));
        (fd_count(pid) == n).then_some(n)
    });
    for close in [
        &b"GET /api/c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        &b"GET /api/c10 HTTP/1.0\r\n\r\n"[..],
    ] {
        let (r, mut s) = exchange(w.addr, close);
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        assert!(
            closed(&mut s, Duration::from_secs(10)),
            "EOF after the response"
        );
        assert_eq!(
            fd_count(pid),
            base,
            "{}: the worker still holds the client's socket",
            String::from_utf8_lossy(close).lines().next().unwrap_or("")
        );
        drop(s);
    }
}

/// A request head whose bytes arrive around a TCP urgent byte, all in one
/// segment: `read(2)` stops short at the urgent mark with the rest of the
/// head queued behind it, and that rest raises no new edge. The worker
/// must not take that short read as "drained" (the event carried
/// EPOLLPRI): the request is answered, not left to the head timeout. The
/// same from a backend: a response head cut by an urgent byte.
#[test]
fn a_head_cut_short_by_urgent_data_is_still_read_whole() {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(
        &b,
        Limits {
            head_timeout_ms: 60_000,
            ..Limits::default()
        },
    );
    let mut s = connect(w.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Corked: "GET /api/u HT" + urgent "!" + the rest leave as one
    // segment, so no read of the worker falls between them.
    cork(&s, true);
    send(s.as_raw_fd(), b"GET /api/u HT!", MsgFlags::MSG_OOB).unwrap();
    s.write_all(b"TP/1.1\r\nHost: t\r\n\r\n").unwrap();
    cork(&s, false);
    let mut buf = Vec::new();
    let r = read_resp(&mut s, &mut buf, false).expect("answered, not stalled");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text().starts_with("GET /u\n"), "{}", r.text());
    // The connection goes on as before.
    s.write_all(&get("/api/v")).unwrap();
    let r = read_resp(&mut s, &mut buf, false).expect("next response");
    assert!(r.text().starts_with("GET /v\n"), "{}", r.text());

    // A backend whose response head is cut the same way.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = l.local_addr().unwrap();
    let backend = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        // Health checks connect and close: the request comes on another.
        let mut c = loop {
            let (mut c, _) = l.accept().unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                match std::io::Read::read(&mut c, &mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if head.ends_with(b"\r\n\r\n") {
                break c;
            }
        };
        cork(&c, true);
        send(
            c.as_raw_fd(),
            b"HTTP/1.1 200 OK\r\nCont!",
            MsgFlags::MSG_OOB,
        )
        .unwrap();
        c.write_all(b"ent-Length: 2\r\n\r\nok").unwrap();
        cork(&c, false);
        // Held open until the client has its answer.
        let _ = std::io::Read::read(&mut c, &mut byte);
    });
    let w = Worker::start(config(
        &[("/", &format!(r#","socket":"{at}""#))],
        Limits::default(),
    ));
    let mut s = connect(w.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&get("/x")).unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut s, &mut buf, false).expect("response head read whole");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"ok"[..]),
        "{}",
        r.head
    );
    drop((s, w));
    backend.join().unwrap();
}

/// TCP_CORK on or off: what is written meanwhile leaves as one segment.
fn cork(s: &std::net::TcpStream, on: bool) {
    use std::os::fd::AsRawFd;
    let v: nix::libc::c_int = on.into();
    // SAFETY: TCP_CORK takes one int, passed by pointer and length.
    let r = unsafe {
        nix::libc::setsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_CORK,
            (&v as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "TCP_CORK");
}

/// The tunnel trusts a short read on TCP (no read that says EAGAIN) only
/// while no hang-up or urgent data was reported: bytes and the FIN in one
/// segment, and bytes around an urgent byte in one segment, all arrive
/// (each would raise no later edge for what a short read left behind).
#[test]
fn a_tunnel_reads_past_a_fin_or_urgent_byte_in_the_same_segment() {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b, Limits::default());
    for urgent in [false, true] {
        let mut s = connect(w.addr);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /api/upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let r = read_resp(&mut s, &mut buf, false).unwrap();
        assert_eq!(r.status, 101);
        cork(&s, true);
        if urgent {
            send(s.as_raw_fd(), b"hello !", MsgFlags::MSG_OOB).unwrap();
        } else {
            s.write_all(b"hello ").unwrap();
        }
        s.write_all(b"tunnel").unwrap();
        // The FIN joins the corked bytes: one segment.
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = buf;
        std::io::Read::read_to_end(&mut s, &mut rest).expect("tunnel not stalled");
        assert_eq!(rest, b"HELLO TUNNELBYE", "urgent {urgent}");
    }
}
