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
use std::io::{ErrorKind, Write};
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

// ---- Issue 18, item 3: what a peer can make the worker buffer. ----
//
// Every byte buffered on behalf of a peer is bounded and back-pressured:
// a backend that streams interim (1xx) heads or an endless trailer
// section, and a client that streams a body while its request is held,
// each leave the worker's RSS within a few MiB. RSS is sampled while the
// flood runs; a run that passes `RSS_GIVE_UP` stops the flood at once,
// so the old, unbounded code fails without taking the machine's memory.

/// Growth of the worker's RSS the floods below may cause: its buffers
/// (a head buffer per side, the queue of heads for the client) are tens
/// of KiB; the rest is allocator and stack slack.
const FLOOD_BOUND_KIB: u64 = 8 * 1024;
/// A flood stops here, bound or not, and the test fails.
const RSS_GIVE_UP_KIB: u64 = 128 * 1024;

/// One interim head, as a provider streaming Early Hints would send it.
const EARLY_HINTS: &[u8] =
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n";

/// A backend that answers its one connection with `prefix`, then `unit`
/// over and over until told to stop (or a write fails: the worker closed),
/// then `tail`. Writes time out so a worker that stops reading stalls it
/// without blocking it: `stalls` counts the timed-out writes.
struct Flood {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Flood {
    fn start(prefix: &[u8], unit: &[u8], tail: &[u8]) -> Flood {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stalls = Arc::new(AtomicU64::new(0));
        let (st, sl) = (stop.clone(), stalls.clone());
        let (prefix, unit, tail) = (prefix.to_vec(), unit.repeat(64), tail.to_vec());
        let thread = std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return 0 };
            raw_head(&mut s);
            s.set_write_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut sent = 0u64;
            if s.write_all(&prefix).is_err() {
                return sent;
            }
            // Where in `unit` the next write starts: a write may take part.
            let mut at = 0;
            while !st.load(Ordering::SeqCst) {
                match s.write(&unit[at..]) {
                    Ok(n) => {
                        sent += n as u64;
                        at = (at + n) % unit.len();
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        sl.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return sent,
                }
            }
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(&unit[at..]).and_then(|_| s.write_all(&tail));
            sent
        });
        Flood {
            addr,
            stop,
            stalls,
            thread: Some(thread),
        }
    }

    /// The flood ended by itself: a write failed (the worker closed).
    fn cut(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    fn stalls(&self) -> u64 {
        self.stalls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stop flooding (the tail follows); the bytes the flood wrote.
    fn end(&mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A worker with one flooding route (`/api`) and one well-behaved one
/// (`/ok`), health checks off (the flood backend takes one connection).
fn flood_worker(flood: &Flood, ok: &backend::Backend, limits: Limits) -> Worker {
    let a = format!(r#","socket":"{}""#, flood.addr);
    let b = format!(r#","socket":"{}""#, ok.socket());
    Worker::start(config(
        &[("/api", &a), ("/ok", &b)],
        Limits {
            health_interval_ms: 0,
            ..limits
        },
    ))
}

/// The worker's RSS after a few ordinary requests (what serving leaves).
fn resting_rss(w: &Worker) -> u64 {
    for i in 0..5 {
        served(w, &format!("/ok/warm{i}"));
    }
    kib(w.child.id(), "VmRSS")
}

/// Sample the worker's RSS every 20 ms while `busy` says so; the peak.
/// Past `RSS_GIVE_UP_KIB` over `rest` the flood is stopped and the test
/// fails there.
fn peak_rss_while(
    w: &Worker,
    rest: u64,
    flood: Option<&Flood>,
    mut busy: impl FnMut() -> bool,
) -> u64 {
    let mut peak = rest;
    while busy() {
        let now = kib(w.child.id(), "VmRSS");
        peak = peak.max(now);
        if now > rest + RSS_GIVE_UP_KIB {
            if let Some(f) = flood {
                f.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            panic!("worker RSS grew from {rest} KiB to {now} KiB under the flood; stopped it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

/// A provider streams `103 Early Hints` as fast as it can for a few
/// seconds, then its final response; the client reads everything. Every
/// interim head reaches the client, then the final response, and the
/// worker's RSS stays flat: it stops reading the backend while the heads
/// queued for the client are over a bound, and drops them once sent.
#[test]
fn interim_heads_streamed_to_a_reading_client_keep_the_worker_flat() {
    use std::io::Read;
    let ok = backend::tcp("127.0.0.1:0");
    let mut flood = Flood::start(
        b"",
        EARLY_HINTS,
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
    );
    let w = flood_worker(&flood, &ok, Limits::default());
    let rest = resting_rss(&w);
    let mut c = connect(w.addr);
    c.write_all(&get("/api/hints")).unwrap();
    let reader = std::thread::spawn(move || {
        // Everything, keeping only the count and the last bytes.
        let (mut total, mut tail) = (0u64, Vec::new());
        let mut piece = vec![0u8; 1 << 16];
        while !tail.ends_with(b"\r\n\r\ndone") {
            match c.read(&mut piece) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n as u64;
                    tail.extend_from_slice(&piece[..n]);
                    let cut = tail.len().saturating_sub(4096);
                    tail.drain(..cut);
                }
            }
        }
        (total, tail)
    });
    let flooding_until = std::time::Instant::now() + Duration::from_secs(3);
    let peak = peak_rss_while(&w, rest, Some(&flood), || {
        std::time::Instant::now() < flooding_until
    });
    let sent = flood.end();
    let (got, tail) = reader.join().unwrap();
    eprintln!(
        "103 flood to a reading client: backend sent {sent} bytes, client got {got}; \
         worker RSS resting {rest} KiB, peak {peak} KiB"
    );
    assert!(
        peak <= rest + FLOOD_BOUND_KIB,
        "worker RSS grew from {rest} KiB to {peak} KiB"
    );
    let text = String::from_utf8_lossy(&tail);
    assert!(
        text.ends_with("\r\n\r\ndone") && text.contains("HTTP/1.1 200 OK\r\n"),
        "the final response did not follow the interim heads: {text:.200}"
    );
    assert!(
        got > sent / 2 && text.contains("HTTP/1.1 103 Early Hints\r\n"),
        "the interim heads were not passed on ({got} of {sent} bytes)"
    );
    served(&w, "/ok/after");
}

/// The same flood to a client that sends its request and never reads:
/// the worker stops reading the backend (whose writes then stall) and its
/// RSS stays flat however long the flood lasts.
#[test]
fn interim_heads_streamed_to_a_client_that_does_not_read_are_back_pressured() {
    let ok = backend::tcp("127.0.0.1:0");
    let mut flood = Flood::start(b"", EARLY_HINTS, b"");
    let w = flood_worker(&flood, &ok, Limits::default());
    let rest = resting_rss(&w);
    let mut c = connect(w.addr);
    c.write_all(&get("/api/hints")).unwrap();
    // Until the backend has been held back for a while (a second's worth
    // of timed-out writes), sampling all along.
    let peak = peak_rss_while(&w, rest, Some(&flood), || {
        flood.stalls() < 20 && !flood.cut()
    });
    let peak = peak.max(kib(w.child.id(), "VmRSS"));
    let cut = flood.cut();
    let sent = flood.end();
    eprintln!(
        "103 flood to a client that does not read: backend sent {sent} bytes before it \
         stalled; worker RSS resting {rest} KiB, peak {peak} KiB"
    );
    assert!(
        peak <= rest + FLOOD_BOUND_KIB,
        "worker RSS grew from {rest} KiB to {peak} KiB"
    );
    assert!(
        !cut,
        "the worker closed the flooding backend instead of holding it back"
    );
    drop(c);
    served(&w, "/ok/after");
}

/// A response whose trailer section never ends, and a request whose
/// trailer section never ends: each is cut off at the trailer limit
/// (16 KiB, as a head) with the worker's RSS flat, and the worker goes on
/// serving.
#[test]
fn endless_trailer_sections_are_cut_off_with_the_worker_flat() {
    let ok = backend::tcp("127.0.0.1:0");
    let mut flood = Flood::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n",
        b"X-Trailer: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        b"",
    );
    let w = flood_worker(&flood, &ok, Limits::default());
    let rest = resting_rss(&w);
    // The response: the client reads what comes; the connection is closed
    // once the trailers pass the limit (the response had started).
    let mut c = connect(w.addr);
    c.write_all(&get("/api/trailers")).unwrap();
    let reader = std::thread::spawn(move || closed_after_reading(&mut c));
    let peak = peak_rss_while(&w, rest, Some(&flood), || !reader.is_finished());
    assert!(reader.join().unwrap(), "the response was not cut off");
    let sent = flood.end();
    // The request: the body's one chunk, then trailer lines without end;
    // the client gets 400 (or the close) and its writes stop.
    let mut c = connect(w.addr);
    c.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    c.write_all(
        b"POST /ok/up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n",
    )
    .unwrap();
    let line = [b"X-Trailer: ".as_slice(), &[b'a'; 100], b"\r\n"].concat();
    let mut wrote = 0usize;
    let peak2 = peak_rss_while(&w, rest, None, || {
        match c.write(&line) {
            Ok(n) => wrote += n,
            Err(_) => return false,
        }
        // Far past any limit without an answer: the bound failed.
        wrote < 64 << 20
    });
    let answer = closed_after_reading(&mut c);
    eprintln!(
        "trailer floods: backend sent {sent} bytes, client {wrote}; worker RSS resting \
         {rest} KiB, peak {} KiB",
        peak.max(peak2)
    );
    assert!(
        wrote < 64 << 20,
        "the worker took {wrote} bytes of trailers"
    );
    assert!(answer, "the request was not refused");
    assert!(
        peak.max(peak2) <= rest + FLOOD_BOUND_KIB,
        "worker RSS grew from {rest} KiB to {} KiB",
        peak.max(peak2)
    );
    served(&w, "/ok/after");
}

/// Read until the peer closes (EOF or reset): whether it did.
fn closed_after_reading(c: &mut TcpStream) -> bool {
    use std::io::Read;
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut piece = vec![0u8; 1 << 16];
    loop {
        match c.read(&mut piece) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A request held while its provider is away (`--hold-timeout`), whose
/// client streams its body meanwhile: the worker holds the bytes read
/// with the head (at most one head buffer) and reads no more until the
/// backend is there, so the client's writes stall and RSS stays flat.
#[test]
fn a_held_request_streaming_its_body_is_back_pressured() {
    let ok = backend::tcp("127.0.0.1:0");
    // A port nobody listens on: the dial is refused and the request held.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let route = format!(r#","socket":"{gone_addr}""#);
    let b = format!(r#","socket":"{}""#, ok.socket());
    let w = Worker::start(config(
        &[("/api", &route), ("/ok", &b)],
        Limits {
            health_interval_ms: 0,
            hold_timeout_ms: 60_000,
            ..Limits::default()
        },
    ));
    let rest = resting_rss(&w);
    let mut c = connect(w.addr);
    c.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    c.write_all(b"POST /api/up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n")
        .unwrap();
    let piece = vec![b'x'; 1 << 16];
    let (mut wrote, mut stalls) = (0usize, 0);
    let peak = peak_rss_while(&w, rest, None, || {
        match c.write(&piece) {
            Ok(n) => wrote += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                stalls += 1
            }
            Err(e) => panic!("the held client's write failed: {e}"),
        }
        stalls < 20 && wrote < 256 << 20
    });
    eprintln!(
        "held request streaming its body: client wrote {wrote} bytes before it stalled; \
         worker RSS resting {rest} KiB, peak {peak} KiB"
    );
    assert!(
        wrote < 256 << 20,
        "the worker took {wrote} bytes while holding"
    );
    assert!(
        peak <= rest + FLOOD_BOUND_KIB,
        "worker RSS grew from {rest} KiB to {peak} KiB"
    );
    drop(c);
    served(&w, "/ok/after");
}
