//! Memory of pvx-worker-http (run directly, no supervisor) under clients
//! that connect and say almost nothing: what an idle client costs, and
//! that a burst of them is given back to the system once they leave
//! (issue 8, item 7). Also the head paths that memory design touches:
//! heads trickled in pieces, pipelined requests split across reads.

use proto::limits::Limits;
use pvx_tests::http::backend;
use pvx_tests::http::client::{connect, get, read_resp};
use pvx_tests::http::direct::{config, Worker};
use pvx_tests::{proc_status, wait_for};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const CLIENTS: usize = 3000;

fn one_route(b: &backend::Backend) -> Worker {
    let route = format!(r#","socket":"{}""#, b.socket());
    Worker::start(config(&[("/api", &route)], Limits::default()))
}

/// A `kB` field of /proc/PID/status, in KiB.
fn kib(pid: u32, field: &str) -> u64 {
    let v = proc_status(pid, field).unwrap_or_else(|| panic!("{field} of pid {pid}"));
    v.trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a kB figure")
}

/// Server-side sockets on `port` that are established, and how many of
/// them still have unread bytes (from /proc/net/tcp: the worker read every
/// byte once none has).
fn server_sockets(port: u16) -> (usize, usize) {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let want = format!(":{port:04X}");
    let (mut open, mut unread) = (0, 0);
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || !f[1].ends_with(&want) || f[3] != "01" {
            continue;
        }
        open += 1;
        let rx = f[4].split(':').nth(1).unwrap_or("0");
        if u64::from_str_radix(rx, 16).unwrap_or(1) > 0 {
            unread += 1;
        }
    }
    (open, unread)
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    // rlim_t is 32 bits on armv7.
    let need: nix::sys::resource::rlim_t = (CLIENTS * 2 + 256).try_into().expect("fits rlim_t");
    assert!(hard >= need, "RLIMIT_NOFILE hard limit {hard} < {need}");
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

fn served(w: &Worker, path: &str) {
    let mut s = connect(w.addr);
    s.write_all(&get(path)).unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
}

/// RSS figures (KiB) around a burst of `CLIENTS` connections that each
/// send `sent` and then wait.
struct Burst {
    rest: u64,
    rest_anon: u64,
    during: u64,
    during_anon: u64,
    after: u64,
}

fn burst(w: &Worker, sent: &[u8]) -> Burst {
    burst_of(w, sent, false)
}

/// [`burst`]; `answered`: each client reads its response (`sent` is a
/// whole request) and then idles on its kept-alive connection.
fn burst_of(w: &Worker, sent: &[u8], answered: bool) -> Burst {
    raise_nofile();
    let pid = w.child.id();
    // Resting: after a few requests, so what serving leaves is counted.
    for i in 0..20 {
        served(w, &format!("/api/warm{i}"));
    }
    let rest = kib(pid, "VmRSS");
    let rest_anon = kib(pid, "RssAnon");
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(w.addr).expect("connect");
        s.write_all(sent).expect("send");
        if answered {
            let r = read_resp(&mut s, &mut Vec::new(), false).expect("a response");
            assert_eq!(r.status, 200, "{}", r.head);
        }
        clients.push(s);
    }
    wait_for(
        Duration::from_secs(60),
        "the worker to read every byte",
        || {
            let (open, unread) = server_sockets(w.addr.port());
            (open >= CLIENTS && unread == 0).then_some(())
        },
    );
    let during = kib(pid, "VmRSS");
    let during_anon = kib(pid, "RssAnon");
    drop(clients);
    // Given back: within 2 MiB of resting RSS, well within 30 s.
    let after = wait_for(Duration::from_secs(30), "RSS back near rest", || {
        let now = kib(pid, "VmRSS");
        (now <= rest + 2048).then_some(now)
    });
    let b = Burst {
        rest,
        rest_anon,
        during,
        during_anon,
        after,
    };
    eprintln!(
        "worker RSS with {CLIENTS} clients that sent {} byte(s): resting {} KiB (anon {}), \
         during {} KiB (anon {}), after {} KiB; {} bytes of heap per client",
        sent.len(),
        b.rest,
        b.rest_anon,
        b.during,
        b.during_anon,
        b.after,
        b.per_client()
    );
    served(w, "/api/after");
    b
}

impl Burst {
    fn per_client(&self) -> u64 {
        self.during_anon.saturating_sub(self.rest_anon) * 1024 / CLIENTS as u64
    }
}

#[test]
fn a_burst_of_one_byte_clients_costs_little_and_is_given_back() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b);
    let m = burst(&w, b"G");
    // The issue 11 target is 0.5 KiB; the bound leaves room for allocator
    // rounding on other builds.
    assert!(
        m.per_client() <= 1024,
        "an idle client holding one byte costs {} bytes of heap",
        m.per_client()
    );
}

/// Clients idle on a kept-alive connection after a whole exchange (the
/// dashboard's and health probe's case) hold no buffer either: the
/// exchange's buffers went back to the spare list when it ended.
#[test]
fn a_burst_of_idle_keep_alive_clients_costs_little() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b);
    let m = burst_of(&w, &get("/api/idle"), true);
    // The issue 11 target is 0.5 KiB, as for a fresh client above.
    assert!(
        m.per_client() <= 1024,
        "an idle keep-alive client costs {} bytes of heap",
        m.per_client()
    );
}

/// Clients that each hold over half a head buffer (9,000 bytes of a head
/// that never ends) keep a full buffer each while they stay; after they
/// leave, the buffers are not kept as spares and the heap is trimmed.
#[test]
fn a_burst_of_large_partial_heads_is_given_back() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b);
    let head = format!("GET /api/x HTTP/1.1\r\nX-Pad: {}", "v".repeat(9000 - 28));
    assert_eq!(head.len(), 9000);
    let m = burst(&w, head.as_bytes());
    assert!(
        m.during_anon > m.rest_anon + (CLIENTS as u64 * 9),
        "the bytes were held while the clients stayed"
    );
}

/// A head in one-byte pieces, slowly, then one that crosses the small
/// copy a connection keeps between reads (several KiB in 100-byte pieces).
#[test]
fn heads_trickled_in_pieces_are_served() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b);
    let mut s = connect(w.addr);
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    for byte in get("/api/trickle") {
        s.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = read_resp(&mut s, &mut buf, false).expect("response to a trickled head");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text().starts_with("GET /trickle\n"), "{}", r.text());

    let big = "v".repeat(9000);
    let head = format!("GET /api/big HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\nX-End: 1\r\n\r\n");
    for piece in head.as_bytes().chunks(100) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = read_resp(&mut s, &mut buf, false).expect("response to a large trickled head");
    assert_eq!(r.status, 200, "{}", r.head);
    let t = r.text();
    assert!(t.contains(&format!("x-big: {big}\n")), "x-big lost");
    assert!(t.contains("x-end: 1\n"), "{t}");
    // The same connection goes on (keep-alive after pieces).
    s.write_all(&get("/api/next")).unwrap();
    let r = read_resp(&mut s, &mut buf, false).expect("next response");
    assert!(r.text().starts_with("GET /next\n"), "{}", r.text());
}

/// Pipelined requests whose boundaries fall in the middle of reads: the
/// bytes after one head wait in the connection between events.
#[test]
fn pipelined_requests_split_across_reads_answer_in_order() {
    let b = backend::tcp("127.0.0.1:0");
    let w = one_route(&b);
    let mut s = connect(w.addr);
    s.set_nodelay(true).unwrap();
    let mut all = Vec::new();
    for i in 0..40 {
        all.extend_from_slice(&get(&format!("/api/p{i}")));
        if i % 7 == 3 {
            all.extend_from_slice(
                b"POST /api/body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
            );
        }
    }
    // Pieces of 37 bytes: every boundary lands mid-head somewhere.
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for piece in all.chunks(37) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut buf = Vec::new();
    for i in 0..40 {
        let r = read_resp(&mut s, &mut buf, false).expect("pipelined response");
        assert!(
            r.text().starts_with(&format!("GET /p{i}\n")),
            "{i}: {}",
            r.text()
        );
        if i % 7 == 3 {
            let r = read_resp(&mut s, &mut buf, false).expect("pipelined POST response");
            assert!(r.text().starts_with("POST /body\n"), "{}", r.text());
            assert!(r.text().contains("body-len: 5\n"), "{}", r.text());
        }
    }
    writer.join().unwrap();
}

/// A body in chunks of sizes 1 .. ~20,000 bytes, as sent.
fn chunked_body(total: usize) -> Vec<u8> {
    let plain = pvx_tests::pattern(total, 11);
    let (mut wire, mut at, mut n) = (Vec::new(), 0, 1usize);
    while at < plain.len() {
        let len = n.min(plain.len() - at);
        wire.extend_from_slice(format!("{len:x}\r\n").as_bytes());
        wire.extend_from_slice(&plain[at..at + len]);
        wire.extend_from_slice(b"\r\n");
        at += len;
        n = (n * 7 + 13) % 20_011 + 1;
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

/// A slow reader: stop for a moment at the start and every ~2 MiB.
fn pause_now_and_then(read: usize) {
    static LAST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let step = read >> 21;
    if LAST.swap(step, std::sync::atomic::Ordering::Relaxed) != step {
        std::thread::sleep(Duration::from_millis(150));
    }
}

fn small_rcvbuf(s: &impl std::os::fd::AsFd) {
    use nix::sys::socket::{setsockopt, sockopt::RcvBuf};
    setsockopt(s, RcvBuf, &65536).expect("SO_RCVBUF");
}

/// Read one request head from a raw socket, byte by byte.
fn raw_head(s: &mut TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("request head"), 1, "head cut short");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Chunked bodies copied to a peer slower than their source: the bytes a
/// connection keeps between events (a right-sized copy, or the whole
/// buffer) must come out whole and in order, both ways.
#[test]
fn chunked_bodies_to_slow_peers_arrive_whole() {
    use std::io::Read;
    let wire = chunked_body(10 << 20);
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Fixed receive buffers (no autotuning up to 32 MiB) and bodies over
    // the sender's 4 MiB socket buffer, read with pauses: the kernel cannot
    // absorb them, so the worker holds bytes back between events.
    small_rcvbuf(&backend);
    let route = format!(r#","socket":"{}""#, backend.local_addr().unwrap());
    // The origin accepts one connection: no health check may be it.
    let limits = Limits {
        health_interval_ms: 0,
        ..Limits::default()
    };
    let w = Worker::start(config(&[("/api", &route)], limits));
    let wire2 = wire.clone();
    let origin = std::thread::spawn(move || {
        // Upload: read slowly, then check what arrived.
        let (mut s, _) = backend.accept().unwrap();
        let head = raw_head(&mut s);
        assert!(head.contains("chunked"), "{head}");
        let mut got = Vec::new();
        let mut piece = vec![0u8; 1 << 16];
        while !got.ends_with(b"0\r\n\r\n") || got.len() < wire2.len() {
            pause_now_and_then(got.len());
            let n = s.read(&mut piece).unwrap();
            assert!(n > 0, "request body cut short at {}", got.len());
            got.extend_from_slice(&piece[..n]);
        }
        assert!(got == wire2, "chunked upload altered ({} bytes)", got.len());
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        // Download: the whole chunked response at once, to a slow reader.
        let head = raw_head(&mut s);
        assert!(head.starts_with("GET /down "), "{head}");
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        s.write_all(&wire2).unwrap();
    });
    let mut c = connect(w.addr);
    small_rcvbuf(&c);
    c.write_all(b"POST /api/up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    c.write_all(&wire).unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut c, &mut buf, false).expect("upload answered");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    c.write_all(&get("/api/down")).unwrap();
    // Read slowly: the worker keeps what the client does not take yet.
    let mut raw = std::mem::take(&mut buf);
    let mut piece = vec![0u8; 1 << 16];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = c.read(&mut piece).unwrap();
        assert!(n > 0);
        raw.extend_from_slice(&piece[..n]);
    };
    let mut body = raw.split_off(head_end);
    while !body.ends_with(b"0\r\n\r\n") || body.len() < wire.len() {
        pause_now_and_then(body.len());
        let n = c.read(&mut piece).unwrap();
        assert!(n > 0, "response cut short at {}", body.len());
        body.extend_from_slice(&piece[..n]);
    }
    assert!(
        body == wire,
        "chunked response altered ({} bytes)",
        body.len()
    );
    origin.join().unwrap();
}
