//! A busy unix backend (issue 18, a suspicion): a provider's socket whose
//! listen queue is full answers a non-blocking connect with EAGAIN. Health
//! checks took that for up, real connections for a failure after ~375 ms
//! of retries (then held, or closed), so the two disagreed. Now both treat
//! it as a tcp backend's full accept queue: busy, tried again until the
//! timeout (the check's, the connect's), a failure only when still busy
//! then.

use pvx_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread;
use std::time::Duration;

/// A unix listener (backlog 0) whose queue the test filled with
/// connections nobody accepts: every further non-blocking connect gets
/// EAGAIN, as a provider's socket does when it stops accepting under load.
struct Busy {
    listener: UnixListener,
    queued: Vec<OwnedFd>,
}

impl Busy {
    fn new(path: &Path) -> Busy {
        use nix::sys::socket::{
            bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
        };
        let l = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let addr = UnixAddr::new(path).expect("unix address");
        bind(l.as_raw_fd(), &addr).expect("bind");
        listen(&l, Backlog::new(0).expect("backlog")).expect("listen");
        let mut queued = Vec::new();
        loop {
            let s = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .expect("socket");
            match connect(s.as_raw_fd(), &addr) {
                Ok(()) => queued.push(s),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => panic!("filling the listen queue: {e}"),
            }
            assert!(queued.len() < 64, "the listen queue never filled");
        }
        Busy {
            listener: UnixListener::from(l),
            queued,
        }
    }

    /// Room again: the provider accepts (an echo server from now on); the
    /// queued connections, closed by us first, end at once.
    fn serve(self) {
        drop(self.queued);
        let l = self.listener;
        thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
}

fn tcp_to_unix(port: u16, socket: &Path) -> String {
    graph(&[link(
        "tcp",
        "busy",
        0,
        &format!("127.0.0.1:{port}"),
        &socket.display().to_string(),
        0,
    )])
}

/// The health checks of a backend that stays busy mark it down (as those
/// of a tcp backend whose accept queue stays full do, at their timeout),
/// with the reason; once it accepts again it is up and serves. On the old
/// code the checks took EAGAIN for up: it was never marked down by them,
/// while each real connection counted a failure.
#[test]
fn checks_count_a_unix_backend_busy_for_their_whole_timeout_as_a_failure() {
    let dir = TempDir::new("busy-check");
    let sock = dir.path().join("b.sock");
    let busy = Busy::new(&sock);
    let port = free_port();
    let sup = Supervisor::start(
        &tcp_to_unix(port, &sock),
        &[
            "--health-interval",
            "100ms",
            "--health-timeout",
            "300ms",
            "--health-fall",
            "2",
        ],
    );
    sup.worker_pid("pvx-worker-tcp");
    let listen = format!("127.0.0.1:{port}");
    let state = |want: &'static str| {
        wait_for(Duration::from_secs(20), &format!("backend {want}"), || {
            let e = sup.endpoint_status(&listen)?;
            let b = e["backends"].get(0)?.clone();
            (b["state"] == want).then_some(b)
        })
    };
    let down = state("down");
    let why = down["last_error"].as_str().unwrap_or("");
    assert!(why.contains("listen queue full"), "{down}");
    busy.serve();
    state("up");
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the link");
    c.set_read_timeout(Some(Duration::from_secs(20))).ok();
    c.write_all(b"ping\n").expect("request");
    assert_eq!(read_line(&mut c).expect("the echo"), "ping");
    assert!(sup.stop().success());
}

/// A real connection to a busy unix backend waits for room until its
/// connect timeout, like a SYN to a full tcp accept queue (the kernel
/// retransmits it), instead of failing after the ~375 ms of retries a
/// refused connect gets: once the provider accepts again, the client is
/// served. No hold and no checks: the dialer's own rule.
#[test]
fn a_real_connection_waits_for_room_at_a_busy_unix_backend() {
    let dir = TempDir::new("busy-conn");
    let sock = dir.path().join("b.sock");
    let busy = Busy::new(&sock);
    let port = free_port();
    let sup = Supervisor::start(
        &tcp_to_unix(port, &sock),
        &[
            "--health-interval",
            "0",
            "--hold-timeout",
            "0",
            "--connect-timeout",
            "60s",
        ],
    );
    sup.worker_pid("pvx-worker-tcp");
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the link");
    c.write_all(b"ping\n").expect("request");
    c.set_read_timeout(Some(Duration::from_millis(50))).ok();
    // The worker has met the full queue: it says so (debug) and waits, or
    // (the old code) it has given up and closed the client.
    wait_for(
        Duration::from_secs(20),
        "the worker to meet the full queue",
        || {
            let closed = matches!(c.peek(&mut [0u8; 1]), Ok(0))
                || matches!(c.peek(&mut [0u8; 1]), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut);
            (closed || sup.count_log("busy (listen queue full)") > 0).then_some(())
        },
    );
    busy.serve();
    c.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let got = read_line(&mut c).unwrap_or_default();
    assert_eq!(got, "ping", "the client was not served once there was room");
    assert!(sup.stop().success());
}
