//! The backend's tests: roots, connect calls and their delays, the dialer.

use super::*;
use crate::balance::Choice;
use crate::stream::Stream;
use proto::limits::Limits;
use proto::types::Backend;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn busy_retries_back_off_to_200_ms() {
    let d: Vec<u64> = (1..7).map(|n| busy_delay(n).as_millis() as u64).collect();
    assert_eq!(d, vec![25, 50, 100, 200, 200, 200]);
    assert!(is_busy(&io::Error::from_raw_os_error(nix::libc::EAGAIN)));
    assert!(!is_busy(&io::Error::from_raw_os_error(
        nix::libc::ECONNREFUSED
    )));
}

#[test]
fn retry_is_bounded() {
    let ds: Vec<u64> = (1..10)
        .map_while(|a| retry_delay(a, 400))
        .map(|d| d.as_millis() as u64)
        .collect();
    assert_eq!(ds, vec![25, 50, 100, 200]);
    assert_eq!(retry_delay(1, 0), None);
}

#[test]
fn provider_paths_split() {
    assert_eq!(
        split_provider_path(Path::new("/proc/42/root/run/x.sock")),
        Some((42, "/run/x.sock"))
    );
    assert_eq!(split_provider_path(Path::new("/run/x.sock")), None);
    assert_eq!(split_provider_path(Path::new("/proc/42/rootx/y")), None);
    assert_eq!(split_provider_path(Path::new("/proc/self/root/y")), None);
}

#[test]
fn connects_through_a_root_fd() {
    // A "provider root" that is just a directory here: the path given is
    // a /proc/<pid>/root path of a pid that does not exist, so only the
    // root fd can make it work.
    let dir = std::env::temp_dir().join(format!("pvx-root-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let sock = dir.join("run/b.sock");
    let _ = std::fs::remove_file(&sock);
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd: OwnedFd = std::fs::File::open(&dir).unwrap().into();
    let pid = 999_999_999u32;
    let mut roots = Roots::new(&[pid], vec![fd]);
    assert_eq!(roots.fds().len(), 1);
    let b = Backend::Unix(proto::graph::provider_path(pid, "/run/b.sock"));
    let s = connect(&b, &roots).expect("connect through root fd");
    assert!(s.connect_done().unwrap());
    drop(l);

    // An inner path too long for sun_path behind /proc/self/fd/N.
    let long = "d".repeat(90);
    std::fs::create_dir_all(dir.join(&long)).unwrap();
    let sub: OwnedFd = std::fs::File::open(dir.join(&long)).unwrap().into();
    let l =
        std::os::unix::net::UnixListener::bind(format!("/proc/self/fd/{}/b.sock", sub.as_raw_fd()))
            .unwrap();
    let b = Backend::Unix(proto::graph::provider_path(pid, &format!("/{long}/b.sock")));
    let s = connect(&b, &roots).expect("connect through root fd, long path");
    assert!(s.connect_done().unwrap());
    drop(l);
    roots.set(&[], Vec::new());
    assert!(roots.fds().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dialer_retries_refused_then_gives_up() {
    let mut r = Reach::default();
    let limits = Limits {
        hold_timeout_ms: 0,
        ..Limits::default()
    };
    let now = Instant::now();
    let mut d = Dialer::new(
        Backend::Unix("/nonexistent/pvx-dial.sock".into()),
        now,
        &limits,
    );
    assert!(matches!(d.poll(&mut r, now, &limits), Dial::Wait));
    assert_eq!(d.deadline(), now + Duration::from_millis(25));
    let mut t;
    let mut waits = 0;
    loop {
        t = d.deadline();
        match d.poll(&mut r, t, &limits) {
            Dial::Wait => waits += 1,
            Dial::Failed(m) => {
                assert!(m.contains("unreachable"), "{m}");
                break;
            }
            Dial::Socket(_) => panic!("nothing listens there"),
            Dial::Gone => panic!("no client is asked on the real network"),
        }
    }
    assert_eq!(waits, 3);
    assert!(t < now + Duration::from_millis(limits.connect_retry_ms));
}

#[test]
fn step_registers_connects_and_times_out() {
    let mut r = Reach::default();
    let limits = Limits::default();
    let now = Instant::now();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut d = Dialer::new(Backend::Tcp(l.local_addr().unwrap()), now, &limits);
    let mut socket = None;
    assert_eq!(
        d.step(&mut r, &mut socket, false, now, &limits),
        Step::Register
    );
    assert!(socket.is_some());
    let mut step = Step::Pending;
    for _ in 0..1000 {
        step = d.step(&mut r, &mut socket, true, now, &limits);
        if step != Step::Pending {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(step, Step::Connected);
    // A socket that never reports is given up at the connect timeout.
    let late = now + Duration::from_millis(limits.connect_timeout_ms);
    assert!(matches!(
        d.step(&mut r, &mut socket, false, late, &limits),
        Step::TimedOut(_)
    ));
}

/// One replica refuses: the next is dialled at once, and a pass over
/// every replica fails as one backend would (retried, then given up).
#[test]
fn a_failed_replica_fails_over_to_the_next() {
    let mut r = Reach::default();
    let limits = Limits {
        hold_timeout_ms: 0,
        ..Limits::default()
    };
    let now = Instant::now();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = Backend::Tcp(dead.local_addr().unwrap());
    drop(dead);
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let live_addr = Backend::Tcp(live.local_addr().unwrap());
    let pool: std::rc::Rc<[Backend]> = vec![dead_addr.clone(), live_addr.clone()].into();
    let choice = Choice::at(
        pool.clone(),
        proto::types::Policy::RoundRobin,
        0,
        &mut r.balance,
    );
    let mut d = Dialer::balanced(choice, now, &limits);
    assert_eq!(d.target, dead_addr);
    let mut socket = None;
    let mut step = d.step(&mut r, &mut socket, false, now, &limits);
    for _ in 0..1000 {
        match step {
            Step::Connected | Step::Failed(_) | Step::TimedOut(_) => break,
            Step::Pending => std::thread::sleep(Duration::from_millis(1)),
            _ => {}
        }
        let ready = socket.is_some();
        step = d.step(&mut r, &mut socket, ready, now, &limits);
    }
    assert_eq!(step, Step::Connected);
    assert_eq!(d.target, live_addr);
    let lease = d.take_lease().expect("a lease");
    assert_eq!(lease.backend(), &live_addr);
    assert_eq!(r.balance.open(&live_addr), 1);
    assert_eq!(r.balance.open(&dead_addr), 0);
    drop(lease);
    drop(live);

    // Nobody listens: the whole pool fails like one backend.
    let choice = Choice::at(pool, proto::types::Policy::LeastConn, 0, &mut r.balance);
    let mut d = Dialer::balanced(choice, now, &limits);
    let mut socket = None;
    let mut t = now;
    let end = loop {
        let ready = socket.is_some();
        match d.step(&mut r, &mut socket, ready, t, &limits) {
            Step::Wait => t = d.deadline(),
            Step::Register | Step::Pending => std::thread::sleep(Duration::from_millis(1)),
            other => break other,
        }
    };
    assert!(
        matches!(&end, Step::Failed(m) if m.contains("unreachable")),
        "{end:?}"
    );
    assert!(t < now + Duration::from_millis(limits.connect_timeout_ms));
}

/// A replica whose connects hang (a full accept queue drops SYNs)
/// gives way to the next after its share of the connect timeout.
#[test]
fn a_stalled_replica_gives_way_after_its_share() {
    let mut r = Reach::default();
    let limits = Limits {
        connect_timeout_ms: 2_000,
        ..Limits::default()
    };
    let now = Instant::now();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pool: std::rc::Rc<[Backend]> = vec![
        Backend::Tcp("127.0.0.1:9".parse().unwrap()),
        Backend::Tcp(live.local_addr().unwrap()),
    ]
    .into();
    let choice = Choice::at(
        pool.clone(),
        proto::types::Policy::RoundRobin,
        0,
        &mut r.balance,
    );
    let mut d = Dialer::balanced(choice, now, &limits);
    let mut socket = None;
    // Pretend the first connect is under way and never reports.
    assert_eq!(
        d.step(&mut r, &mut socket, false, now, &limits),
        Step::Register
    );
    socket = Some(crate::stream::Stream::Tcp(
        mio::net::TcpStream::connect(live.local_addr().unwrap()).unwrap(),
    ));
    let share = now + Duration::from_millis(1_000);
    assert_eq!(d.deadline(), share);
    // The stalled attempt is dropped and the next replica dialled in
    // the same step (not left to a timer already due).
    assert_eq!(
        d.step(&mut r, &mut socket, false, share, &limits),
        Step::Register
    );
    assert!(socket.is_some());
    assert_eq!(d.target, pool[1]);
    assert!(d.deadline() > share);
    // The last replica of the pass has no one to give way to: it runs
    // to the connect timeout.
    let later = now + Duration::from_millis(1_999);
    assert_eq!(
        d.step(&mut r, &mut socket, false, later, &limits),
        Step::Wait
    );
    assert!(socket.is_some());
    assert!(matches!(
        d.step(
            &mut r,
            &mut socket,
            false,
            now + Duration::from_millis(2_000),
            &limits
        ),
        Step::TimedOut(_)
    ));
}

/// Refused past the short retry: held, retried, woken when told the
/// backend may be back, and connected once it listens; a hold that
/// runs out fails (502), not a timeout (504).
#[test]
fn a_held_connect_waits_for_the_backend() {
    let mut r = Reach::default();
    let limits = Limits {
        hold_timeout_ms: 2_000,
        ..Limits::default()
    };
    let dir = std::env::temp_dir().join(format!("pvx-hold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("b.sock");
    let _ = std::fs::remove_file(&path);
    let now = Instant::now();
    let mut d = Dialer::new(Backend::Unix(path.clone()), now, &limits);
    let mut socket = None;
    let mut t = now;
    while !d.is_held() {
        assert_eq!(d.step(&mut r, &mut socket, false, t, &limits), Step::Wait);
        t = d.deadline();
    }
    assert!(t < now + Duration::from_millis(500));
    assert_eq!(r.held.held(), 1);
    // The provider is back; a wake-up retries at once, not at the
    // next scheduled retry.
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    d.wake(t);
    assert_eq!(d.deadline(), t);
    assert_eq!(
        d.step(&mut r, &mut socket, false, t, &limits),
        Step::Register
    );
    assert_eq!(
        d.step(&mut r, &mut socket, true, t, &limits),
        Step::Connected
    );
    assert_eq!(r.held.held(), 0);
    drop(l);
    drop(socket.take());

    // Nobody comes back: the error at the hold timeout, as a failure.
    let _ = std::fs::remove_file(&path);
    let mut d = Dialer::new(Backend::Unix(path.clone()), now, &limits);
    let mut t = now;
    let end = loop {
        match d.step(&mut r, &mut socket, false, t, &limits) {
            Step::Wait => t = d.deadline(),
            other => break other,
        }
    };
    assert!(
        matches!(&end, Step::Failed(m) if m.contains("held")),
        "{end:?}"
    );
    assert_eq!(t, now + Duration::from_millis(2_000));
    assert_eq!(r.held.held(), 0);

    // Not held with --hold-timeout 0, nor beyond --max-held.
    for limits in [
        Limits {
            hold_timeout_ms: 0,
            ..limits.clone()
        },
        Limits {
            max_held: 0,
            ..limits.clone()
        },
    ] {
        let mut d = Dialer::new(Backend::Unix(path.clone()), now, &limits);
        let mut t = now;
        let end = loop {
            match d.step(&mut r, &mut socket, false, t, &limits) {
                Step::Wait => t = d.deadline(),
                other => break other,
            }
        };
        assert!(matches!(end, Step::Failed(_)), "{end:?}");
        assert!(t < now + Duration::from_millis(500));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A network where every connect is refused (ECONNREFUSED) or the
/// socket file is missing (ENOENT).
struct Absent(i32);

impl Net for Absent {
    fn connect(&mut self, _: &Backend, _: &Roots) -> io::Result<Stream> {
        Err(io::Error::from_raw_os_error(self.0))
    }
    fn done(&mut self, _: &Stream) -> io::Result<bool> {
        Err(io::Error::from_raw_os_error(self.0))
    }
}

/// Issue 18's wedge: every held-dial path (backend down by the health
/// checks; refused; socket missing) with the hold shorter and longer
/// than the connect timeout. Each step that waits leaves its deadline
/// after now, and the dial ends at the hold's deadline, before or
/// after the connect timeout alike.
#[test]
fn a_held_dial_ends_at_its_hold_deadline_whatever_the_connect_timeout() {
    let mut r = Reach::default();
    let b = Backend::Tcp("127.0.0.1:9".parse().unwrap());
    for (hold, connect) in [(1_000, 10_000), (2_000, 500), (1_000, 1_000)] {
        let limits = Limits {
            hold_timeout_ms: hold,
            connect_timeout_ms: connect,
            ..Limits::default()
        };
        for path in ["down", "refused", "missing"] {
            r.health.track(std::slice::from_ref(&b), &limits);
            if path == "down" {
                for _ in 0..limits.health_fall {
                    r.observe(&b, Err("test".into()), true);
                }
                assert!(r.health.is_down(&b));
            }
            let errno = if path == "missing" {
                nix::libc::ENOENT
            } else {
                nix::libc::ECONNREFUSED
            };
            let now = Instant::now();
            let mut d = Dialer::new(b.clone(), now, &limits);
            let mut socket = None;
            let mut t = now;
            let mut steps = 0;
            let end = loop {
                steps += 1;
                assert!(steps < 1_000, "{path} {hold}/{connect}: no end");
                match d.step_on(&mut Absent(errno), &mut r, &mut socket, false, t, &limits) {
                    Step::Wait => {
                        assert!(
                            d.deadline() > t,
                            "{path} {hold}/{connect}: re-armed at {t:?}"
                        );
                        t = d.deadline();
                    }
                    other => break other,
                }
            };
            let what = format!("{path} hold {hold} connect {connect}: {end:?}");
            assert!(matches!(end, Step::Failed(_)), "{what}");
            assert_eq!(t, now + Duration::from_millis(hold), "{what}");
            assert_eq!(r.held.held(), 0, "{what}");
        }
    }
}

/// [`Absent`], for a client that hung up before its hold: asked how
/// often it was asked whether it has gone.
struct AbsentGone(i32, u32);

impl Net for AbsentGone {
    fn connect(&mut self, b: &Backend, roots: &Roots) -> io::Result<Stream> {
        Absent(self.0).connect(b, roots)
    }
    fn done(&mut self, s: &Stream) -> io::Result<bool> {
        Absent(self.0).done(s)
    }
    fn client_gone(&mut self) -> bool {
        self.1 += 1;
        true
    }
}

/// Issue 18, item 5: a client gone before its hold began (down by the
/// health checks; refused; socket missing) is asked once, when the
/// hold would begin, not during the short retry, and never admitted:
/// the book neither holds nor counts it.
#[test]
fn a_client_gone_before_its_hold_is_never_admitted() {
    let mut r = Reach::default();
    let b = Backend::Tcp("127.0.0.1:9".parse().unwrap());
    let limits = Limits {
        hold_timeout_ms: 10_000,
        ..Limits::default()
    };
    for path in ["down", "refused", "missing"] {
        r.health.track(std::slice::from_ref(&b), &limits);
        if path == "down" {
            for _ in 0..limits.health_fall {
                r.observe(&b, Err("test".into()), true);
            }
        }
        let errno = if path == "missing" {
            nix::libc::ENOENT
        } else {
            nix::libc::ECONNREFUSED
        };
        let mut stats = proto::ctl::Stats::default();
        r.held.fill(Instant::now(), &mut stats);
        let total = stats.held_total;
        let now = Instant::now();
        let mut d = Dialer::new(b.clone(), now, &limits);
        let mut net = AbsentGone(errno, 0);
        let (mut socket, mut t, mut steps) = (None, now, 0);
        let end = loop {
            steps += 1;
            assert!(steps < 100, "{path}: no end");
            match d.step_on(&mut net, &mut r, &mut socket, false, t, &limits) {
                Step::Wait => {
                    assert_eq!(net.1, 0, "{path}: asked before the hold");
                    t = d.deadline();
                }
                other => break other,
            }
        };
        assert_eq!((end, net.1), (Step::Gone, 1), "{path}");
        assert!(!d.is_held(), "{path}");
        r.held.fill(Instant::now(), &mut stats);
        assert_eq!((stats.held, stats.held_total), (0, total), "{path}");
    }
}

#[test]
fn unix_connect_to_missing_socket_is_retryable() {
    let b = Backend::Unix("/nonexistent/pvx-test.sock".into());
    let e = connect(&b, &Roots::default()).unwrap_err();
    assert!(is_retryable(&e));
}
