//! The checks against real sockets: a backend going down and up, a busy
//! unix backend, checks off.

use super::*;

fn limits() -> Limits {
    Limits {
        health_interval_ms: 1_000,
        health_timeout_ms: 500,
        health_fall: 2,
        health_rise: 1,
        ..Limits::default()
    }
}
/// A listening socket with backlog 0 whose queue is filled: further
/// SYNs are dropped (the fds are kept alive with it).
fn stalled_listener() -> (Vec<std::os::fd::OwnedFd>, std::net::SocketAddr) {
    use nix::sys::socket::*;
    let l = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(l.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&l, Backlog::new(0).unwrap()).unwrap();
    let a: SockaddrIn = getsockname(l.as_raw_fd()).unwrap();
    let addr: std::net::SocketAddr = std::net::SocketAddrV4::from(a).into();
    let mut keep = vec![l];
    // Fill the accept queue (and the SYN queue) with connections
    // nobody accepts.
    for _ in 0..4 {
        let s = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let _ = connect(s.as_raw_fd(), &a);
        keep.push(s);
    }
    std::thread::sleep(Duration::from_millis(50));
    (keep, addr)
}

/// A unix listener whose queue is full (EAGAIN): busy, not down at
/// once; tried again within the check's timeout, a failure if still
/// busy at its end, up again once there is room.
#[test]
fn a_busy_unix_backend_fails_a_check_only_when_busy_for_its_timeout() {
    let mut reach = Reach::default();
    use nix::sys::socket::*;
    let path = std::env::temp_dir().join(format!("pvx-busy-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let addr = UnixAddr::new(&path).unwrap();
    bind(l.as_raw_fd(), &addr).unwrap();
    listen(&l, Backlog::new(0).unwrap()).unwrap();
    let mut queued = Vec::new();
    loop {
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        match connect(s.as_raw_fd(), &addr) {
            Ok(()) => queued.push(s),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("connect: {e}"),
        }
    }
    let b = Backend::Unix(path.clone());
    let lim = limits();
    let now = Instant::now();
    let mut c = Checker::new(&lim, &[Checked::from(b.clone())], now, &mut reach.health)
        .unwrap()
        .unwrap();
    c.on_time(now, &mut reach);
    assert_eq!(
        reach.health.report()[0].checks,
        0,
        "busy: tried again, not counted"
    );
    assert_eq!(c.next_wake(), Some(now + BUSY_RETRY));
    c.on_time(now + Duration::from_millis(250), &mut reach);
    assert_eq!(
        reach.health.report()[0].checks,
        0,
        "still within the timeout"
    );
    c.on_time(now + Duration::from_millis(500), &mut reach);
    let r = reach.health.report();
    assert_eq!((r[0].checks, r[0].failures), (1, 1), "{r:?}");
    assert!(r[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("listen queue full")));
    // Room again (the queue taken): the next check connects.
    drop(queued);
    let ours = std::os::unix::net::UnixListener::from(l);
    ours.set_nonblocking(true).unwrap();
    while ours.accept().is_ok() {}
    c.on_time(now + Duration::from_millis(1_500), &mut reach);
    let r = reach.health.report();
    assert_eq!((r[0].checks, r[0].fails_in_row), (2, 0), "{r:?}");
    let _ = std::fs::remove_file(&path);
}

/// A real listener, then none: the checker sees it up, then down after
/// `fall` checks, with its own epoll and no loop around it.
#[test]
fn checker_sees_a_backend_go_down() {
    let mut reach = Reach::default();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = Backend::Tcp(l.local_addr().unwrap());
    let lim = limits();
    let mut now = Instant::now();
    let mut c = Checker::new(&lim, &[Checked::from(b.clone())], now, &mut reach.health)
        .unwrap()
        .unwrap();
    assert_eq!(c.next_wake(), Some(now));
    let run = |c: &mut Checker, reach: &mut Reach, now: Instant| {
        c.on_time(now, reach);
        for _ in 0..200 {
            c.on_ready(reach);
            if c.probes[0].inflight.is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    run(&mut c, &mut reach, now);
    assert_eq!(reach.health.report()[0].checks, 1);
    assert!(reach.health.report()[0].up);
    drop(l);
    for _ in 0..2 {
        now += Duration::from_millis(1_000);
        run(&mut c, &mut reach, now);
    }
    let r = reach.health.report();
    assert_eq!(r[0].checks, 3);
    assert!(!r[0].up, "{r:?}");
    assert!(reach.health.is_down(&b));

    // A peer that stalls: a listener whose accept queue is full drops
    // the SYN, so the connect never completes; the check fails at its
    // timeout, not before.
    let stall = stalled_listener();
    let b = Backend::Tcp(stall.1);
    let mut c = Checker::new(&lim, &[Checked::from(b.clone())], now, &mut reach.health)
        .unwrap()
        .unwrap();
    c.on_time(now, &mut reach);
    c.on_ready(&mut reach);
    assert_eq!(reach.health.report()[0].checks, 0, "still connecting");
    c.on_time(now + Duration::from_millis(500), &mut reach);
    let r = reach.health.report();
    assert_eq!((r[0].checks, r[0].failures), (1, 1), "{r:?}");
    assert!(r[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("within 500 ms"));
    drop(stall);
    // Off: nothing at all.
    let off = Limits {
        health_interval_ms: 0,
        ..lim
    };
    assert!(
        Checker::new(&off, &[Checked::from(b)], now, &mut reach.health)
            .unwrap()
            .is_none()
    );
    assert!(reach.health.report().is_empty());
}
