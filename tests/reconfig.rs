//! Live reconfiguration (BEHAVIOUR §4) and the control-socket graph source
//! (BEHAVIOUR §3), through the real supervisor and workers.

use pvx_tests::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

fn tcp_link(name: &str, consumer_pid: u32, port: u16, backend: SocketAddr) -> String {
    link(
        "tcp",
        name,
        consumer_pid,
        &format!("127.0.0.1:{port}"),
        &backend.to_string(),
        0,
    )
}

/// Log lines that report a source failure (debug repeats excluded).
fn failures_logged(sup: &Supervisor, what: &str) -> usize {
    sup.log_text()
        .lines()
        .filter(|l| l.contains(what) && l.contains("running configuration left as it was"))
        .count()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A connection to a tagged echo backend: returns the stream and the tag.
fn open_tagged(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).expect("connect through the endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tag = read_line(&mut s).expect("backend greeting");
    (s, tag)
}

fn echo_line(s: &mut TcpStream, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    read_line(s).expect("echoed line")
}

#[test]
fn provider_move_keeps_worker_and_open_connection() {
    let a = tagged_echo_server("A");
    let b = tagged_echo_server("B");
    let port = free_port();
    let sup = Supervisor::start(&graph(&[tcp_link("mv", 0, port, a)]), &[]);
    let w = sup.worker_pid("pvx-worker-tcp");
    let (mut open, tag) = open_tagged(local(port));
    assert_eq!(tag, "A");
    assert_eq!(echo_line(&mut open, "before"), "before");

    let applied = sup.count_log("applied update");
    sup.reload(&graph(&[tcp_link("mv", 0, port, b)]));
    sup.wait_log("applied update", applied + 1);
    assert_eq!(sup.worker_pid("pvx-worker-tcp"), w, "same worker");

    // The connection opened before the move still talks to A, intact.
    assert_eq!(echo_line(&mut open, "after the move"), "after the move");
    let (_new, tag) = open_tagged(local(port));
    assert_eq!(tag, "B", "new connections reach the new provider");
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

/// A client of the endpoint that goes away, in the middle of something:
/// a relay that carried a line (tcp, unix), a request whose body is half
/// sent (http).
enum Busy {
    Tcp(TcpStream),
    Unix(std::os::unix::net::UnixStream),
    Http(TcpStream),
}

impl Busy {
    /// Finish it as its kind finishes: the relay echoes once more and
    /// ends at our half-close; the request is answered, the connection
    /// closed after it (the worker drains).
    fn finish(self, kind: &str) {
        fn relay(mut s: impl Read + Write, shut: impl FnOnce()) {
            s.write_all(b"still here\n").unwrap();
            assert_eq!(read_line(&mut s).unwrap(), "still here");
            shut();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }
        match self {
            Busy::Tcp(s) => {
                let shut = s.try_clone().unwrap();
                relay(s, || shut.shutdown(Shutdown::Write).unwrap())
            }
            Busy::Unix(s) => {
                let shut = s.try_clone().unwrap();
                relay(s, || shut.shutdown(Shutdown::Write).unwrap())
            }
            Busy::Http(mut s) => {
                s.write_all(b"56789").unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).unwrap();
                let text = String::from_utf8_lossy(&all);
                assert!(text.starts_with("HTTP/1.1 200 "), "{kind}: {text}");
                assert!(
                    text.to_ascii_lowercase().contains("connection: close\r\n"),
                    "{kind}: {text}"
                );
            }
        }
    }
}

#[test]
fn removed_endpoint_drains_then_refuses() {
    // The same drain for every kind (runtime/src/event_loop.rs): the
    // worker stops accepting, its busy connection finishes, then it exits
    // 0; the endpoint next to it never notices.
    for kind in ["tcp", "http", "unix"] {
        let dir = TempDir::new(&format!("drain-{kind}"));
        let backend = echo_server();
        let http_backend = pvx_tests::http::backend::tcp("127.0.0.1:0");
        let unix_backend = dir.path().join("b.sock");
        unix_echo_server(&unix_backend);
        let (keep, gone) = (free_port(), free_port());
        let gone_path = dir.path().join("gone.sock");
        let gone_link = match kind {
            "tcp" => tcp_link("gone", 0, gone, backend),
            "http" => link(
                "http",
                "gone",
                0,
                &format!("127.0.0.1:{gone}/api"),
                &http_backend.socket(),
                0,
            ),
            _ => link(
                "unix",
                "gone",
                0,
                &gone_path.display().to_string(),
                &unix_backend.display().to_string(),
                0,
            ),
        };
        let g = graph(&[tcp_link("keep", 0, keep, backend), gone_link]);
        let sup = Supervisor::start(&g, &["--drain-timeout", "60s"]);
        let w_keep = sup.worker_pid(&format!("127.0.0.1:{keep} "));
        let w_gone = match kind {
            "unix" => sup.worker_pid(&format!("{} ", gone_path.display())),
            _ => sup.worker_pid(&format!("127.0.0.1:{gone} ")),
        };
        let t = Some(Duration::from_secs(10));
        let busy = match kind {
            "tcp" => {
                let mut s = TcpStream::connect(local(gone)).unwrap();
                s.set_read_timeout(t).unwrap();
                s.write_all(b"in flight\n").unwrap();
                assert_eq!(read_line(&mut s).unwrap(), "in flight");
                Busy::Tcp(s)
            }
            "http" => {
                let mut s = TcpStream::connect(local(gone)).unwrap();
                s.set_read_timeout(t).unwrap();
                s.write_all(b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
                    .unwrap();
                Busy::Http(s)
            }
            _ => {
                let mut s = std::os::unix::net::UnixStream::connect(&gone_path).unwrap();
                s.set_read_timeout(t).unwrap();
                s.write_all(b"in flight\n").unwrap();
                assert_eq!(read_line(&mut s).unwrap(), "in flight");
                Busy::Unix(s)
            }
        };

        sup.reload(&graph(&[tcp_link("keep", 0, keep, backend)]));
        sup.wait_log("stopped accepting", 1);
        // New connections are refused (a unix socket file is removed too);
        // the busy one goes on.
        let refused = match kind {
            "unix" => std::os::unix::net::UnixStream::connect(&gone_path).map(|_| ()),
            _ => TcpStream::connect(local(gone)).map(|_| ()),
        };
        assert!(
            matches!(&refused, Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound)),
            "{kind}: expected refused, got {refused:?}"
        );
        assert!(
            !is_dead(w_gone),
            "{kind}: the draining worker waits for its connection"
        );
        busy.finish(kind);
        // Its last connection done, the worker exits well before the deadline.
        wait_for(
            Duration::from_secs(10),
            &format!("{kind}: drained worker exit"),
            || is_dead(w_gone).then_some(()),
        );
        sup.wait_log(
            &format!("draining worker pid {w_gone} exited with status 0"),
            1,
        );
        // The other endpoint never noticed.
        assert_eq!(sup.worker_pid(&format!("127.0.0.1:{keep} ")), w_keep);
        assert_eq!(roundtrip(local(keep), b"fine").unwrap(), b"fine");
    }
}

#[test]
fn refused_links_never_touch_running_endpoints() {
    let backend = echo_server();
    let port = free_port();
    let sup = Supervisor::start(&graph(&[tcp_link("web", 0, port, backend)]), &[]);
    let w = sup.worker_pid("pvx-worker-tcp");
    // An http link takes the tcp endpoint's address, and comes first; an
    // unsupported and an invalid link come along.
    let clash = link(
        "http",
        "intruder",
        0,
        &format!("127.0.0.1:{port}/api"),
        &backend.to_string(),
        0,
    );
    let g = format!(
        r#"[{clash},
            {{"type":"dbus","name":"bus","consumer":"c","target":"/x","socket":"/y"}},
            {{"type":"unix","name":"relative","consumer":"c","target":"run/x.sock","socket":"/y.sock"}},
            {}]"#,
        tcp_link("web", 0, port, backend)
    );
    sup.reload(&g);
    let log = sup.log_text();
    assert!(
        log.contains("refused link #0 'intruder': type clash: endpoint 127.0.0.1:"),
        "{log}"
    );
    assert!(
        log.contains("refused link #1 'bus': unsupported link type 'dbus'"),
        "{log}"
    );
    assert!(
        log.contains("refused link #2 'relative': field 'target' must be an absolute path"),
        "{log}"
    );
    assert_eq!(sup.worker_pid("pvx-worker-tcp"), w);
    assert_eq!(roundtrip(local(port), b"untouched").unwrap(), b"untouched");
    assert_eq!(sup.workers().len(), 1);
}

#[test]
fn control_socket_changes_apply_and_its_outage_changes_nothing() {
    let dir = TempDir::new("ctl");
    let sock = dir.path().join("pv-ctrl");
    let backend = echo_server();
    let (p1, p2) = (free_port(), free_port());
    let g1 = graph(&[tcp_link("one", 0, p1, backend)]);
    let mut ctrl = FakeCtrl::start(&sock, &g1);
    let sup = Supervisor::start_ctrl(&sock, &["--poll-interval", "100ms"]);
    let w1 = sup.worker_pid(&format!("127.0.0.1:{p1} "));
    assert_eq!(roundtrip(local(p1), b"one").unwrap(), b"one");

    // A polled graph that does not change is not re-applied.
    let hits = ctrl.hits();
    wait_for(Duration::from_secs(10), "a few polls", || {
        (ctrl.hits() >= hits + 3).then_some(())
    });
    assert_eq!(sup.count_log("graph applied"), 1);

    // A change is picked up by the next poll.
    ctrl.set_graph(&graph(&[
        tcp_link("one", 0, p1, backend),
        tcp_link("two", 0, p2, backend),
    ]));
    sup.wait_log("graph applied", 2);
    sup.worker_pid(&format!("127.0.0.1:{p2} "));
    assert_eq!(roundtrip(local(p2), b"two").unwrap(), b"two");
    assert_eq!(sup.worker_pid(&format!("127.0.0.1:{p1} ")), w1);

    // A failing answer: logged once however many polls see it.
    ctrl.set_status(500);
    let hits = ctrl.hits();
    wait_for(Duration::from_secs(10), "polls answered 500", || {
        (ctrl.hits() >= hits + 3).then_some(())
    });
    assert_eq!(
        failures_logged(&sup, "answered 500"),
        1,
        "{}",
        sup.log_text()
    );
    ctrl.set_status(200);
    sup.wait_log("is readable again", 1);

    // Pantavisor gone: nothing changes, and that is said once.
    ctrl.stop();
    sup.wait_log("(still)", sup.count_log("(still)") + 3);
    assert_eq!(failures_logged(&sup, "connect: "), 1, "{}", sup.log_text());
    assert_eq!(sup.count_log("graph applied"), 2);
    assert_eq!(roundtrip(local(p1), b"alive").unwrap(), b"alive");
    assert_eq!(roundtrip(local(p2), b"alive").unwrap(), b"alive");

    // Back, with link two removed: applied, and the recovery is logged.
    let ctrl = FakeCtrl::start(&sock, &g1);
    sup.wait_log("is readable again", 2);
    sup.wait_log("graph applied", 3);
    assert_eq!(sup.worker_pid(&format!("127.0.0.1:{p1} ")), w1);
    wait_for(Duration::from_secs(10), "endpoint two gone", || {
        TcpStream::connect(local(p2)).is_err().then_some(())
    });
    // SIGHUP asks at once, and applies even an unchanged graph.
    let hits = ctrl.hits();
    sup.signal("HUP");
    sup.wait_log("graph applied", 4);
    assert!(ctrl.hits() > hits);
}

#[test]
fn consumer_restart_gets_a_listener_in_the_new_netns() {
    if !require_root("consumer_restart_gets_a_listener_in_the_new_netns") {
        return;
    }
    let backend = echo_server();
    let port = free_port();
    let mut old_ns = Netns::new("old");
    let mut new_ns = Netns::new("new");
    let old_pid = old_ns.holder();
    let new_pid = new_ns.holder();
    let client = |ns: &Netns, msg: &str| {
        let out = ns.run(
            &["socat", "-t", "5", "-", &format!("TCP:127.0.0.1:{port}")],
            msg.as_bytes(),
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };

    let sup = Supervisor::start(&graph(&[tcp_link("svc", old_pid, port, backend)]), &[]);
    let w_old = sup.worker_pid("pvx-worker-tcp");
    assert_eq!(client(&old_ns, "in old").as_deref(), Some("in old"));
    // The listener is in the consumer's namespace, not on the host.
    assert!(TcpStream::connect(local(port)).is_err());

    sup.reload(&graph(&[tcp_link("svc", new_pid, port, backend)]));
    let w_new = sup.worker_pid(&format!("consumer=c{new_pid}"));
    assert_ne!(w_new, w_old, "the worker is replaced");
    assert_eq!(client(&new_ns, "in new").as_deref(), Some("in new"));
    wait_for(Duration::from_secs(10), "old worker gone", || {
        is_dead(w_old).then_some(())
    });
    assert_eq!(
        client(&old_ns, "nobody"),
        None,
        "old namespace has no listener"
    );
}

#[test]
fn consumer_restart_in_the_same_netns_keeps_socket_and_worker() {
    if !require_root("consumer_restart_in_the_same_netns_keeps_socket_and_worker") {
        return;
    }
    // Two "container inits" on the host network, like containers that
    // share it: the second replaces the first.
    let mut first = std::process::Command::new("sleep")
        .arg("3600")
        .spawn()
        .unwrap();
    let mut second = std::process::Command::new("sleep")
        .arg("3600")
        .spawn()
        .unwrap();
    let backend = tagged_echo_server("E");
    let port = free_port();
    let sup = Supervisor::start(&graph(&[tcp_link("svc", first.id(), port, backend)]), &[]);
    let w = sup.worker_pid("pvx-worker-tcp");
    let (mut open, _) = open_tagged(local(port));
    let g = graph(&[link(
        "tcp",
        "svc",
        second.id(),
        &format!("127.0.0.1:{port}"),
        &backend.to_string(),
        0,
    )
    .replace(&format!("c{}", second.id()), &format!("c{}", first.id()))]);
    let applied = sup.count_log("applied update");
    sup.reload(&g);
    sup.wait_log("applied update", applied + 1);
    assert_eq!(sup.worker_pid("pvx-worker-tcp"), w);
    assert_eq!(echo_line(&mut open, "uncut"), "uncut");
    let (_, tag) = open_tagged(local(port));
    assert_eq!(tag, "E");
    let _ = first.kill();
    let _ = first.wait();
    let _ = second.kill();
    let _ = second.wait();
}

// ------------------------------------------------------------------ http

mod http {
    use super::*;
    use pvx_tests::http::backend;
    use pvx_tests::http::client::{connect, read_resp};

    fn http_link(name: &str, port: u16, prefix: &str, socket: &str) -> String {
        link(
            "http",
            name,
            0,
            &format!("127.0.0.1:{port}{prefix}"),
            socket,
            0,
        )
    }

    /// FNV-1a over a stream, chunk by chunk (same as `pvx_tests::http::fnv`).
    fn fnv_more(mut h: u64, data: &[u8]) -> u64 {
        for b in data {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    }
    const FNV_START: u64 = 0xcbf29ce484222325;

    /// GET with a raw socket: (status, body).
    fn get(port: u16, path: &str) -> (u16, String) {
        let mut s = connect(local(port));
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let r = read_resp(&mut s, &mut Vec::new(), false).expect("a response");
        (r.status, r.text())
    }

    #[test]
    fn routes_added_and_removed_under_sighup_cut_nothing() {
        let b1 = backend::tcp("127.0.0.1:0");
        let b2 = backend::tcp("127.0.0.1:0");
        let port = free_port();
        let (one, keep, two) = (
            http_link("one", port, "/one", &b1.socket()),
            http_link("keep", port, "/keep", &b1.socket()),
            http_link("two", port, "/two", &b2.socket()),
        );
        let sup = Supervisor::start(&graph(&[one.clone(), keep.clone()]), &[]);
        let w = sup.worker_pid("pvx-worker-http");

        // A long streaming response, read only in part before the changes:
        // the rest waits in the backend, the worker and the kernel.
        let n: usize = 48 * 1024 * 1024;
        let mut stream = connect(local(port));
        stream
            .write_all(format!("GET /one/big/{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let k = stream.read(&mut chunk).unwrap();
            assert!(k > 0, "EOF before the response head");
            buf.extend_from_slice(&chunk[..k]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut hash = fnv_more(FNV_START, &buf[head_end..]);
        let mut got = buf.len() - head_end;
        while got < 1024 * 1024 {
            let k = stream.read(&mut chunk).unwrap();
            assert!(k > 0, "EOF after {got} bytes");
            hash = fnv_more(hash, &chunk[..k]);
            got += k;
        }

        // An idle keep-alive connection.
        let mut idle = connect(local(port));
        let mut ibuf = Vec::new();
        idle.write_all(b"GET /keep/a HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_resp(&mut idle, &mut ibuf, false).unwrap().status, 200);

        // Route added, then the streaming response's own route removed.
        let applied = sup.count_log("applied update");
        sup.reload(&graph(&[one.clone(), keep.clone(), two.clone()]));
        sup.wait_log("applied update", applied + 1);
        assert_eq!(get(port, "/two/x").0, 200, "added route live");
        sup.reload(&graph(&[keep.clone(), two.clone()]));
        sup.wait_log("applied update", applied + 2);
        assert_eq!(get(port, "/one/x").0, 404, "removed route gone");
        let (code, body) = get(port, "/two/y");
        assert_eq!(code, 200);
        assert!(body.starts_with("GET /y\n"), "{body}");
        assert_eq!(sup.worker_pid("pvx-worker-http"), w, "same worker");

        // The stream completes intact.
        while got < n {
            let k = stream.read(&mut chunk).unwrap();
            assert!(k > 0, "stream cut after {got} of {n} bytes");
            let take = k.min(n - got);
            hash = fnv_more(hash, &chunk[..take]);
            got += take;
        }
        assert_eq!(
            hash,
            pvx_tests::http::fnv(&pattern(n, 7)),
            "stream bytes differ"
        );
        // The idle keep-alive connection still serves.
        idle.write_all(b"GET /keep/b HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_resp(&mut idle, &mut ibuf, false).expect("idle connection alive");
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("GET /b\n"), "{}", r.text());
        assert_eq!(sup.worker_pid("pvx-worker-http"), w);
    }

    #[test]
    fn kind_change_replaces_the_worker_on_the_same_socket() {
        let echo = echo_server();
        let web = backend::tcp("127.0.0.1:0");
        let port = free_port();
        let sup = Supervisor::start(&graph(&[tcp_link("svc", 0, port, echo)]), &[]);
        let w_tcp = sup.worker_pid("pvx-worker-tcp");
        let mut open = TcpStream::connect(local(port)).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(echo_line(&mut open, "tcp"), "tcp");

        sup.reload(&graph(&[http_link("svc", port, "/api", &web.socket())]));
        let w_http = sup.worker_pid("pvx-worker-http");
        assert!(
            !sup.log_text().contains("cannot listen"),
            "{}",
            sup.log_text()
        );
        let (code, body) = get(port, "/api/z");
        assert_eq!(code, 200);
        assert!(body.starts_with("GET /z\n"), "{body}");
        // The tcp connection finishes on the old worker, which then exits.
        assert_eq!(echo_line(&mut open, "still tcp"), "still tcp");
        drop(open);
        wait_for(Duration::from_secs(10), "old tcp worker gone", || {
            is_dead(w_tcp).then_some(())
        });
        assert_eq!(sup.worker_pid("pvx-worker-http"), w_http);
    }
}

#[test]
fn a_stalled_control_socket_delays_neither_restarts_nor_status() {
    let dir = TempDir::new("stall");
    let sock = dir.path().join("pv-ctrl");
    let backend = echo_server();
    let port = free_port();
    let ctrl = FakeCtrl::start(&sock, &graph(&[tcp_link("st", 0, port, backend)]));
    let sup = Supervisor::start_ctrl(&sock, &["--poll-interval", "100ms"]);
    let needle = format!("127.0.0.1:{port} ");
    let mut worker = sup.worker_pid(&needle);
    assert_eq!(roundtrip(local(port), b"before").unwrap(), b"before");

    // From now on Pantavisor takes each request and never answers: the
    // supervisor gives up on a request only after its 2 s deadline. Every
    // check below must be done while the request taken last is still
    // open, i.e. while the supervisor is waiting for that answer. A loop
    // that blocked on the request could do none of it before closing it.
    // A machine too loaded to restart a worker within that deadline gets
    // another try.
    ctrl.set_stall(true);
    let mut done_in_flight = false;
    for _ in 0..3 {
        let n = ctrl.stalled();
        wait_for(
            Duration::from_secs(10),
            "a request taken and stalled",
            || (ctrl.stalled() > n).then_some(()),
        );
        let in_flight = ctrl.stalled() - 1;

        kill9(worker);
        let new = wait_for(Duration::from_secs(10), "a new worker", || {
            sup.workers()
                .into_iter()
                .find(|(p, a)| *p != worker && a.contains(&needle))
                .map(|(p, _)| p)
        });
        worker = new;
        assert_eq!(roundtrip(local(port), b"after").unwrap(), b"after");
        let out = std::process::Command::new(bin_dir().join("pv-xconnect"))
            .args(["status", "--status-socket"])
            .arg(&sup.status_socket)
            .output()
            .expect("run pv-xconnect status");
        assert!(
            out.status.success(),
            "status while pv-ctrl stalls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if ctrl.stalled_is_open(in_flight) {
            done_in_flight = true;
            break;
        }
    }
    assert!(
        done_in_flight,
        "the restart and the status answer waited for the stalled graph request\n{}",
        sup.log_text()
    );
    // The stall is an outage like any other: said once, nothing changed.
    sup.wait_log("no answer within", 1);
    assert_eq!(sup.count_log("graph applied"), 1);
    assert_eq!(roundtrip(local(port), b"still").unwrap(), b"still");
}
