//! The hold book and what the kernel tells of a held client.

use super::*;

/// Loopback delivers at once; this only rides out a slow machine.
fn eventually(f: impl Fn() -> bool) -> bool {
    (0..200).any(|_| {
        let done = f();
        if !done {
            std::thread::sleep(Duration::from_millis(10));
        }
        done
    })
}

/// What the kernel tells of a held client that closed, half-closed
/// or reset, on unix and tcp sockets.
#[test]
fn a_client_gone_is_told_from_a_half_closed_one() {
    use std::io::Write;
    use std::net::Shutdown;
    // unix: a half-close is kept, a close is gone (both kinds alike).
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let ours = Stream::Unix(mio::net::UnixStream::from_std(a));
    assert!(!client_gone(&ours, true), "nothing happened");
    assert!(!client_gone(&ours, false), "nothing happened");
    b.shutdown(Shutdown::Write).unwrap();
    assert!(!client_gone(&ours, true), "half-closed");
    assert!(client_gone(&ours, false), "half-closed, http: gone");
    drop(b);
    assert!(client_gone(&ours, true) && client_gone(&ours, false));

    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pair = || {
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        (c, Stream::Tcp(mio::net::TcpStream::from_std(s)))
    };
    // tcp: bytes, then a FIN: a half-close after a request, kept.
    let (mut c, ours) = pair();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert!(eventually(|| bytes_waiting(&ours) == Some(7)));
    assert!(!client_gone(&ours, true), "a tunnel's half-close is kept");
    assert!(client_gone(&ours, false), "http: a FIN while held is gone");
    // A FIN with no byte sent: gone for a tunnel and for http.
    let (c, ours) = pair();
    drop(c);
    assert!(eventually(|| client_gone(&ours, true)));
    assert!(client_gone(&ours, false));
    // Bytes and no FIN: kept by both.
    let (mut c, ours) = pair();
    c.write_all(b"GET").unwrap();
    assert!(eventually(|| bytes_waiting(&ours) == Some(3)));
    assert!(!client_gone(&ours, true) && !client_gone(&ours, false));
    drop(c);
    // A reset: gone.
    let (c, ours) = pair();
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::Linger, &linger).unwrap();
    drop(c);
    assert!(eventually(|| client_gone(&ours, false)));
}

#[test]
fn bounded_and_counted() {
    let mut b = Book::default();
    let mut s = Stats::default();
    let t0 = Instant::now();
    let one = b.admit(2, 2, 7, t0).unwrap();
    let two = b.admit(2, 2, 7, t0).unwrap();
    assert!(b.admit(2, 2, 7, t0).is_none());
    b.wake_all();
    assert!(b.take_wake());
    assert!(!b.take_wake());
    let w = b.release(one, t0 + Duration::from_millis(300), Outcome::Connected);
    assert_eq!(w, Duration::from_millis(300));
    b.release(two, t0 + Duration::from_millis(100), Outcome::Failed);
    b.fill(t0, &mut s);
    assert_eq!(
        (s.held, s.held_total, s.held_connected, s.held_failed),
        (0, 2, 1, 1)
    );
    assert_eq!(
        (s.held_over_limit, s.held_wait_ms, s.held_wait_max_ms),
        (1, 400, 300)
    );
    // Nothing held: no wake-up is recorded.
    b.wake_all();
    assert!(!b.take_wake());
    let d: Vec<u64> = (1..6).map(|n| retry_delay(n).as_millis() as u64).collect();
    assert_eq!(d, vec![100, 200, 400, 500, 500]);
}

/// A connection dropped while held (no book at hand) leaves the count
/// at once and is counted as closed, its wait with it, when the book
/// next settles.
#[test]
fn a_ticket_dropped_counts_as_closed() {
    let mut b = Book::default();
    let t0 = Instant::now();
    let t = b.admit(1, 1, 3, t0).unwrap();
    assert_eq!((b.held(), b.held_for(3)), (1, 1));
    drop(t);
    assert_eq!((b.held(), b.held_for(3)), (0, 0));
    assert!(b.admit(1, 1, 3, t0).is_some(), "its slot is free again");
    let mut s = Stats::default();
    b.fill(t0 + Duration::from_millis(50), &mut s);
    assert_eq!(
        (s.held, s.held_total, s.held_connected, s.held_failed),
        (0, 2, 0, 0)
    );
    assert_eq!(
        s.held_wait_ms, 50,
        "the one dropped after its admission waited 50 ms"
    );
}

/// Each key holds its share at most; a key's slots come back when its
/// connections are released; the total bound stays.
#[test]
fn each_route_holds_its_share() {
    assert_eq!(
        (share(4, 2), share(4, 3), share(1, 2), share(0, 0)),
        (2, 1, 1, 1)
    );
    let (dead, restarting) = (1, 2);
    let sh = share(4, 2);
    let mut b = Book::default();
    let now = Instant::now();
    let mut held = vec![b.admit(4, sh, dead, now), b.admit(4, sh, dead, now)];
    assert!(held.iter().all(Option::is_some));
    assert!(
        b.admit(4, sh, dead, now).is_none(),
        "the dead route's share is full"
    );
    held.push(b.admit(4, sh, restarting, now));
    assert!(held[2].is_some(), "the other route still holds");
    assert_eq!(
        (b.held_for(dead), b.held_for(restarting), b.held()),
        (2, 1, 3)
    );
    let first = held.remove(0).unwrap();
    b.release(first, now, Outcome::Failed);
    held.push(b.admit(4, sh, dead, now));
    held.push(b.admit(4, sh, restarting, now));
    assert!(held.iter().all(Option::is_some));
    assert!(b.admit(4, 4, 3, now).is_none(), "the total bound");
    drop(held);
    assert_eq!(
        (b.held(), b.held_for(dead), b.held_for(restarting)),
        (0, 0, 0)
    );
}
