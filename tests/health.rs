//! L4 health checks (issue 12): a worker checks each backend of its
//! routes with a connect; a backend that goes away is marked down (status,
//! metrics), connections for it are held, and the check that sees it back
//! releases them. With `--health-interval 0` no check is ever made.

use pvx_tests::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// An echo backend on a fixed port that can be stopped (its listener
/// closed: connects refused) and started again; it counts the
/// connections it accepted.
struct Backend {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    fn start(port: u16, accepts: Arc<AtomicUsize>) -> Backend {
        // A restarted backend binds its port again: a connection of another
        // test may hold it as its ephemeral source port for a moment.
        let l = wait_for(
            Duration::from_secs(10),
            "the backend's port to be free",
            || TcpListener::bind(("127.0.0.1", port)).ok(),
        );
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, acc) = (stop.clone(), accepts.clone());
        let thread = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = c.shutdown(Shutdown::Write);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tcp_graph(port: u16, backend_port: u16) -> String {
    graph(&[link(
        "tcp",
        "checked",
        0,
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{backend_port}"),
        0,
    )])
}

/// `pv-xconnect status --json`, parsed.
fn status_cli(sup: &Supervisor, json: bool) -> String {
    let mut args = vec!["status".to_string()];
    if json {
        args.push("--json".into());
    }
    args.push("--status-socket".into());
    args.push(sup.status_socket.display().to_string());
    let out = std::process::Command::new(bin_dir().join("pv-xconnect"))
        .args(&args)
        .output()
        .expect("pv-xconnect status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn backend_state(sup: &Supervisor, address: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(&status_cli(sup, true)).ok()?;
    v["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == address)?["backends"]
        .get(0)
        .cloned()
}

fn wait_state(sup: &Supervisor, address: &str, state: &str) -> Value {
    wait_for(Duration::from_secs(15), &format!("backend {state}"), || {
        backend_state(sup, address).filter(|b| b["state"] == state)
    })
}

fn metric(sup: &Supervisor, name: &str, address: &str) -> Option<String> {
    let (_, m) = sup.http_status("/metrics");
    m.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(address))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
}

#[test]
fn a_health_check_sees_a_backend_go_down_and_up_and_releases_held_clients() {
    let backend_port = free_port();
    let port = free_port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let mut backend = Backend::start(backend_port, accepts.clone());
    let sup = Supervisor::start(
        &tcp_graph(port, backend_port),
        &["--health-interval", "200ms", "--health-timeout", "500ms"],
    );
    sup.worker_pid("pvx-worker-tcp");
    let address = format!("127.0.0.1:{port}");
    let b = wait_state(&sup, &address, "up");
    assert_eq!(b["backend"], format!("127.0.0.1:{backend_port}"));
    wait_for(Duration::from_secs(10), "checks counted", || {
        (backend_state(&sup, &address)?["checks"].as_u64()? >= 2).then_some(())
    });
    assert!(accepts.load(Ordering::SeqCst) >= 2, "checks connect");

    backend.stop();
    let b = wait_state(&sup, &address, "down");
    assert!(b["failures"].as_u64().unwrap() >= 2, "{b}");
    assert!(b["last_error"].as_str().unwrap().contains("refused"), "{b}");
    assert!(b["last_check_ms_ago"].is_u64(), "{b}");
    wait_for(Duration::from_secs(5), "pvx_backend_up 0", || {
        (metric(&sup, "pvx_backend_up", &address)? == "0").then_some(())
    });
    let text = status_cli(&sup, false);
    assert!(
        text.contains(&format!("backend 127.0.0.1:{backend_port}: down")),
        "{text}"
    );

    // The only backend of the route is down: a client is held (not
    // refused), and released by the check that sees the backend back.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = thread::spawn(move || roundtrip(addr, b"held while down"));
    wait_for(Duration::from_secs(10), "a held connection", || {
        let e = sup.endpoint_status(&address)?;
        (e["worker"]["hold"]["held"].as_u64()? >= 1).then_some(())
    });
    let _backend = Backend::start(backend_port, accepts.clone());
    let got = client.join().unwrap().expect("held client served");
    assert_eq!(got, b"held while down");
    wait_state(&sup, &address, "up");
    wait_for(Duration::from_secs(5), "pvx_backend_up 1", || {
        (metric(&sup, "pvx_backend_up", &address)? == "1").then_some(())
    });
    assert!(metric(&sup, "pvx_backend_checks_total", &address).is_some());
    assert!(metric(&sup, "pvx_backend_failures_total", &address).is_some());
}

#[test]
fn no_check_traffic_when_health_checks_are_off() {
    let backend_port = free_port();
    let port = free_port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let _backend = Backend::start(backend_port, accepts.clone());
    let sup = Supervisor::start(&tcp_graph(port, backend_port), &["--health-interval", "0"]);
    let pid = sup.worker_pid("pvx-worker-tcp");
    wait_worker_started(pid);
    // Ten intervals of the fastest checks there are.
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        0,
        "a check reached the backend"
    );
    let e = sup.endpoint_status(&format!("127.0.0.1:{port}")).unwrap();
    assert!(e.get("backends").is_none(), "{e}");
    // A real connection is the only one the backend sees.
    let got = roundtrip(SocketAddr::from(([127, 0, 0, 1], port)), b"x").unwrap();
    assert_eq!(got, b"x");
    assert_eq!(accepts.load(Ordering::SeqCst), 1);
    // The worker holds no fd beyond its baseline (no checker epoll).
    let epolls = fds(pid)
        .iter()
        .filter(|(_, t)| t.contains("eventpoll"))
        .count();
    assert_eq!(epolls, 1, "{:?}", fds(pid));
    drop(TcpStream::connect(("127.0.0.1", port)));
}

/// The http worker and the unix worker check theirs too (a unix backend
/// with a unix connect).
#[test]
fn http_and_unix_workers_check_their_backends() {
    let backend_port = free_port();
    let http_port = free_port();
    let mut backend = Backend::start(backend_port, Arc::new(AtomicUsize::new(0)));
    let dir = TempDir::new("health-unix");
    let provider = dir.path().join("provider.sock");
    let listen = dir.path().join("front.sock");
    let l = std::os::unix::net::UnixListener::bind(&provider).unwrap();
    let g = graph(&[
        link(
            "http",
            "checked-http",
            0,
            &format!("127.0.0.1:{http_port}/"),
            &format!("127.0.0.1:{backend_port}"),
            0,
        ),
        link(
            "unix",
            "checked-unix",
            0,
            &listen.display().to_string(),
            &provider.display().to_string(),
            0,
        ),
    ]);
    let sup = Supervisor::start(
        &g,
        &["--health-interval", "200ms", "--health-timeout", "500ms"],
    );
    let http = format!("127.0.0.1:{http_port}");
    let unix = listen.display().to_string();
    wait_state(&sup, &http, "up");
    let b = wait_state(&sup, &unix, "up");
    assert_eq!(b["backend"], format!("unix:{}", provider.display()));
    backend.stop();
    drop(l);
    std::fs::remove_file(&provider).unwrap();
    wait_state(&sup, &http, "down");
    let b = wait_state(&sup, &unix, "down");
    assert!(
        b["last_error"].as_str().unwrap().contains("No such file"),
        "{b}"
    );
}

/// A backend on loopback that answers connects until [`Stalling::stall`],
/// then never again: its listener (backlog 0) stops accepting and its
/// accept queue is filled, so the kernel drops every further SYN, as a
/// black-holed address would. Connects to it neither succeed nor fail;
/// they time out.
struct Stalling {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// Keeps the listener and the connections that fill its queue.
    _keep: Vec<std::os::fd::OwnedFd>,
}

impl Stalling {
    fn start() -> Stalling {
        use nix::sys::socket::*;
        use std::os::fd::AsRawFd;
        let l = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        bind(l.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
        listen(&l, Backlog::new(0).expect("backlog")).expect("listen");
        let a: SockaddrIn = getsockname(l.as_raw_fd()).expect("getsockname");
        let addr = SocketAddr::V4(std::net::SocketAddrV4::from(a));
        let listener = TcpListener::from(l.try_clone().expect("dup listener"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    // A check, or a probe: nothing to say.
                    Ok((c, _)) => drop(c),
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Stalling {
            addr,
            stop,
            thread: Some(thread),
            _keep: vec![l],
        }
    }

    /// From now on no connect to it completes.
    fn stall(&mut self) {
        use nix::sys::socket::*;
        use std::os::fd::AsRawFd;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("accept thread");
        }
        let SocketAddr::V4(v4) = self.addr else {
            unreachable!()
        };
        let to = SockaddrIn::from(v4);
        // Fill the queue until a connect stays in progress: that one's SYN
        // was dropped, and so will every later one be.
        for _ in 0..16 {
            let s = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .expect("socket");
            let _ = connect(s.as_raw_fd(), &to);
            let mut pfd = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&s),
                nix::poll::PollFlags::POLLOUT,
            )];
            let ready =
                nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(300u16)).unwrap_or(0);
            self._keep.push(s);
            if ready == 0 {
                return;
            }
        }
        panic!("the stalled listener still completes connects");
    }
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A real connection whose connect times out counts as a failure of its
/// backend, as a refused one does: after `--health-fall` of them the
/// backend is down, in tcp and in http (504s), with no check seeing it
/// (one check only, at start, while it still answered).
#[test]
fn real_connects_that_time_out_mark_a_backend_down() {
    let mut backend = Stalling::start();
    let (tcp_port, http_port) = (free_port(), free_port());
    let g = graph(&[
        link(
            "tcp",
            "timed-tcp",
            0,
            &format!("127.0.0.1:{tcp_port}"),
            &backend.addr.to_string(),
            0,
        ),
        link(
            "http",
            "timed-http",
            0,
            &format!("127.0.0.1:{http_port}/"),
            &backend.addr.to_string(),
            0,
        ),
    ]);
    let sup = Supervisor::start(
        &g,
        &[
            "--health-interval",
            "24h",
            "--health-fall",
            "2",
            "--connect-timeout",
            "300ms",
            "--hold-timeout",
            "0",
        ],
    );
    let (tcp, http) = (
        format!("127.0.0.1:{tcp_port}"),
        format!("127.0.0.1:{http_port}"),
    );
    for a in [&tcp, &http] {
        wait_for(Duration::from_secs(10), "the first check", || {
            let b = backend_state(&sup, a)?;
            (b["checks"].as_u64()? == 1 && b["state"] == "up").then_some(())
        });
    }
    backend.stall();

    for i in 0..2 {
        let mut c = TcpStream::connect(("127.0.0.1", tcp_port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        // Closed by the worker at the connect timeout.
        let _ = c.read_to_end(&mut buf);
        assert!(buf.is_empty(), "tcp client {i} got {buf:?}");
        let (r, _) = pvx_tests::http::client::exchange(
            SocketAddr::from(([127, 0, 0, 1], http_port)),
            &pvx_tests::http::client::get("/x"),
        );
        assert_eq!(r.status, 504, "http request {i}: {}", r.head);
    }
    for a in [&tcp, &http] {
        let b = wait_state(&sup, a, "down");
        assert_eq!(b["checks"].as_u64(), Some(1), "no check saw it: {b}");
        assert_eq!(b["failures"].as_u64(), Some(2), "{b}");
        assert!(
            b["last_error"].as_str().unwrap().contains("within 300 ms"),
            "{b}"
        );
    }
}

/// The state of `backend` among the backends of the endpoint at `address`.
fn replica_state(sup: &Supervisor, address: &str, backend: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(&status_cli(sup, true)).ok()?;
    v["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == address)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["backend"] == backend)
        .cloned()
}

/// Replicas: one whose connects time out is marked down by the real
/// connections that tried it, and every client is served by the one that
/// is up.
#[test]
fn a_replica_whose_connects_time_out_goes_down_and_clients_go_to_the_other() {
    let mut stalled = Stalling::start();
    let live = tagged_echo_server("live");
    let port = free_port();
    let replica = |name: &str, backend: String| {
        let l = link("tcp", name, 0, &format!("127.0.0.1:{port}"), &backend, 0);
        format!(r#"{},"balance":"round-robin"}}"#, &l[..l.len() - 1])
    };
    let g = graph(&[
        replica("rep-stalled", stalled.addr.to_string()),
        replica("rep-live", live.to_string()),
    ]);
    let sup = Supervisor::start(
        &g,
        &[
            "--health-interval",
            "24h",
            "--health-fall",
            "2",
            "--connect-timeout",
            "1s",
            "--hold-timeout",
            "0",
        ],
    );
    let address = format!("127.0.0.1:{port}");
    let (s, l) = (stalled.addr.to_string(), live.to_string());
    for b in [&s, &l] {
        wait_for(Duration::from_secs(10), "the first check", || {
            let st = replica_state(&sup, &address, b)?;
            (st["checks"].as_u64()? == 1 && st["state"] == "up").then_some(())
        });
    }
    stalled.stall();
    for i in 0..6 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let tag = read_line(&mut c).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(tag, "live", "client {i}");
        c.write_all(b"ping\n").unwrap();
        assert_eq!(read_line(&mut c).unwrap(), "ping", "client {i}");
    }
    let st = wait_for(Duration::from_secs(10), "the stalled replica down", || {
        replica_state(&sup, &address, &s).filter(|b| b["state"] == "down")
    });
    assert_eq!(st["checks"].as_u64(), Some(1), "no check saw it: {st}");
    let up = replica_state(&sup, &address, &l).unwrap();
    assert_eq!(
        (&up["state"], up["failures"].as_u64()),
        (&Value::from("up"), Some(0)),
        "{up}"
    );
    // Down: not dialled any more, every client goes to the live replica.
    for i in 0..4 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(read_line(&mut c).unwrap(), "live", "client {i} after");
    }
    let after = replica_state(&sup, &address, &s).unwrap();
    assert_eq!(after["failures"], st["failures"], "{after}");
}
