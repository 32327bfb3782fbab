//! Slow request heads (slowloris) on pvx-worker-http run directly: every
//! one ends in `408` whatever the worker does meanwhile — a burst of other
//! connections and the give-back after it (slots, timer entries, heap),
//! slots reused while the timer entries of their last occupants are still
//! in the heap, an update of the routes — and a head still in progress
//! when a drain's deadline cuts the worker gets `503`, not a silent close.
//! (The soak's slowloris clients drip a byte a second for up to 40 s; here
//! the head timeout is shortened so the same happens in seconds.)

use proto::ctl::ToWorker;
use proto::limits::Limits;
use pvx_tests::http::backend;
use pvx_tests::http::client::{connect, read_resp};
use pvx_tests::http::direct::{config, Worker};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn sock(b: &backend::Backend) -> String {
    format!(r#","socket":"{}""#, b.socket())
}

const HEAD_START: &[u8] = b"GET /api/slow HTTP/1.1\r\nHost: t\r\nX-Slow: ";

/// A client that sent the start of a head.
fn slow(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(HEAD_START).unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

/// Drip a byte of the header value into every client every 100 ms until
/// each has a whole response head or was closed; the status each got
/// (None: closed with no answer).
fn drip_until_answered(mut clients: Vec<TcpStream>, within: Duration) -> Vec<Option<u16>> {
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); clients.len()];
    let mut out: Vec<Option<Option<u16>>> = vec![None; clients.len()];
    let end = Instant::now() + within;
    while out.iter().any(Option::is_none) && Instant::now() < end {
        for (i, s) in clients.iter_mut().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let mut b = [0u8; 512];
            loop {
                match s.read(&mut b) {
                    Ok(0) => {
                        out[i] = Some(None);
                        break;
                    }
                    Ok(n) => got[i].extend_from_slice(&b[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        out[i] = Some(None);
                        break;
                    }
                }
            }
            let g = &got[i];
            if let Some(end) = g.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&g[..end]);
                out[i] = Some(head.split(' ').nth(1).and_then(|c| c.parse().ok()));
            } else if out[i].is_none() {
                // The worker may have answered and shut its side already:
                // a write error is not the outcome, the read is.
                let _ = s.write(b"z");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out.into_iter()
        .map(|o| o.expect("every slow client answered or closed in time"))
        .collect()
}

#[test]
fn slow_heads_get_408_through_a_burst_its_give_back_slot_reuse_and_an_update() {
    let b = backend::tcp("127.0.0.1:0");
    let limits = Limits {
        head_timeout_ms: 2500,
        ..Limits::default()
    };
    let mut w = Worker::start(config(&[("/api", &sock(&b))], limits.clone()));
    // A burst of 300 one-byte connections takes slots 0..299 (each with a
    // timer entry); the first slow heads come after them.
    let burst: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = connect(w.addr);
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    let mut clients: Vec<TcpStream> = (0..20).map(|_| slow(w.addr)).collect();
    // Let the worker take every one before the burst ends.
    let mut probe = connect(w.addr);
    probe
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_resp(&mut probe, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );
    drop(probe);
    drop(burst);
    // Slots the burst freed are reused at once, while the burst's timer
    // entries for them are still in the heap.
    clients.extend((0..20).map(|_| slow(w.addr)));
    // An update mid-head: open connections keep reading their heads.
    let cfg = config(&[("/api", &sock(&b)), ("/v2", &sock(&b))], limits);
    assert_eq!(w.send(|seq| ToWorker::Update { seq, config: cfg }), None);
    // Past the give-back (1 s after the burst fell): slots at the end are
    // dropped, stale timer entries too; more heads take slots again.
    std::thread::sleep(Duration::from_millis(1500));
    clients.extend((0..20).map(|_| slow(w.addr)));
    let got = drip_until_answered(clients, Duration::from_secs(30));
    assert!(got.iter().all(|s| *s == Some(408)), "{got:?}");
    // The worker still serves, and holds only what it must.
    let mut s = connect(w.addr);
    s.write_all(b"GET /v2/y HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut Vec::new(), false).unwrap().status,
        200
    );
}

#[test]
fn a_head_in_progress_when_a_drain_ends_gets_503() {
    let b = backend::tcp("127.0.0.1:0");
    let mut w = Worker::start(config(&[("/api", &sock(&b))], Limits::default()));
    // One head completes during the drain: served, then closed.
    let mut done = connect(w.addr);
    done.write_all(HEAD_START).unwrap();
    // One never completes (the head timeout, 30 s, is after the deadline).
    let mut cut = connect(w.addr);
    cut.write_all(HEAD_START).unwrap();
    // One idle connection that never sent a byte: closed at once, no answer.
    let mut idle = connect(w.addr);
    let mut probe = connect(w.addr);
    probe
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_resp(&mut probe, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        w.send(|seq| ToWorker::Drain {
            seq,
            deadline_ms: 1000
        }),
        None
    );
    done.write_all(b"1\r\n\r\n").unwrap();
    let r = read_resp(&mut done, &mut Vec::new(), false).expect("served during the drain");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
    let r = read_resp(&mut cut, &mut Vec::new(), false)
        .expect("an answer to the head the drain's deadline cut");
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let status = w.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A request held for a backend that is away (`--hold-timeout`) when a
/// drain's deadline passes never reached a backend either: it gets `503`
/// too, not a silent close.
#[test]
fn a_request_held_when_a_drain_ends_gets_503() {
    // A port nobody listens on: the request is held (hold 10 s > deadline).
    let dead = pvx_tests::free_port();
    let limits = Limits {
        health_interval_ms: 0,
        ..Limits::default()
    };
    let backend = format!(r#","socket":"127.0.0.1:{dead}""#);
    let mut w = Worker::start(config(&[("/api", &backend)], limits));
    let mut held = connect(w.addr);
    held.write_all(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    pvx_tests::wait_for(Duration::from_secs(5), "the request held", || {
        (w.stats().held >= 1).then_some(())
    });
    assert_eq!(
        w.send(|seq| ToWorker::Drain {
            seq,
            deadline_ms: 300
        }),
        None
    );
    let r = read_resp(&mut held, &mut Vec::new(), false)
        .expect("an answer to the request the drain's deadline cut");
    assert_eq!(r.status, 503, "{}", r.head);
    let status = w.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
