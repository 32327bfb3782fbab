//! tcp ingress through the real supervisor and pvx-worker-tcp.

use pvx_tests::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

fn tcp_graph(name: &str, port: u16, backend: &str) -> String {
    graph(&[link(
        "tcp",
        name,
        0,
        &format!("127.0.0.1:{port}"),
        backend,
        0,
    )])
}

fn listen_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn bulk_both_ways_hashes_equal() {
    let backend = echo_server();
    let port = free_port();
    let sup = Supervisor::start(&tcp_graph("bulk", port, &backend.to_string()), &[]);
    sup.worker_pid("pvx-worker-tcp");
    let data = pattern(12 * 1024 * 1024, 7);
    let got = roundtrip(listen_addr(port), &data).expect("roundtrip through worker");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ after the relay");
    // ps shows what the worker serves.
    let (_, argv) = sup.workers().into_iter().next().expect("a worker");
    assert_eq!(
        argv,
        format!("pvx-worker-tcp 127.0.0.1:{port} consumer=EXTERNAL")
    );
    assert!(sup.stop().success());
}

#[test]
fn half_close_reply_after_client_eof_arrives() {
    // The backend reads to EOF, then answers: only a proxy that passes the
    // client's half-close on (and keeps the other direction open) works.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let _ = c.write_all(format!("got {} bytes after your EOF", got.len()).as_bytes());
        }
    });
    let port = free_port();
    let sup = Supervisor::start(&tcp_graph("half", port, &backend.to_string()), &[]);
    sup.worker_pid("pvx-worker-tcp");
    let mut s = TcpStream::connect(listen_addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"12345").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 5 bytes after your EOF");
}

#[test]
fn unreachable_backend_closes_client() {
    let dead = free_port(); // nothing listens there
    let port = free_port();
    let sup = Supervisor::start(&tcp_graph("dead", port, &format!("127.0.0.1:{dead}")), &[]);
    sup.worker_pid("pvx-worker-tcp");
    let mut s = TcpStream::connect(listen_addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    // After the bounded retry the worker closes the client: EOF or reset.
    let r = s.read(&mut buf);
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "expected close, got {r:?}"
    );
    sup.wait_log("unreachable", 1);
}

#[test]
fn ipv6_listener_and_backend() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP ipv6_listener_and_backend: no IPv6 loopback here");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must have IPv6 loopback"
        );
        return;
    }
    let l = TcpListener::bind("[::1]:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut b = [0u8; 4];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&b);
            }
        }
    });
    let port = free_port();
    let g = graph(&[link(
        "tcp",
        "v6",
        0,
        &format!("[::1]:{port}"),
        &backend.to_string(),
        0,
    )]);
    let sup = Supervisor::start(&g, &[]);
    sup.worker_pid("pvx-worker-tcp");
    let mut s = TcpStream::connect(format!("[::1]:{port}")).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
}

#[test]
fn kill_worker_under_load_refuses_nothing() {
    let backend = echo_server();
    let port = free_port();
    let sup = Supervisor::start(&tcp_graph("kill", port, &backend.to_string()), &[]);
    let first = sup.worker_pid("pvx-worker-tcp");
    let addr = listen_addr(port);
    let client = thread::spawn(move || {
        let mut failures = Vec::new();
        for i in 0..300u32 {
            let msg = format!("req-{i}");
            match roundtrip(addr, msg.as_bytes()) {
                Ok(got) if got == msg.as_bytes() => {}
                Ok(got) => failures.push(format!("{i}: got {:?}", String::from_utf8_lossy(&got))),
                Err(e) => failures.push(format!("{i}: {e}")),
            }
        }
        failures
    });
    thread::sleep(Duration::from_millis(50));
    kill9(first);
    let failures = client.join().unwrap();
    let second = sup.worker_pid("pvx-worker-tcp");
    assert_ne!(first, second, "a new worker replaced the killed one");
    // A connection in flight inside the killed worker is lost with it (at
    // most the one or two it held); none may be refused.
    assert!(
        failures.iter().all(|f| !f.contains("refused")),
        "refused: {failures:?}"
    );
    assert!(failures.len() <= 3, "too many failures: {failures:?}");
}

#[test]
fn repeated_kills_back_off_and_spare_other_endpoints() {
    let backend = echo_server();
    let (p1, p2) = (free_port(), free_port());
    let g = graph(&[
        link(
            "tcp",
            "victim",
            0,
            &format!("127.0.0.1:{p1}"),
            &backend.to_string(),
            0,
        ),
        link(
            "tcp",
            "bystander",
            0,
            &format!("127.0.0.1:{p2}"),
            &backend.to_string(),
            0,
        ),
    ]);
    let sup = Supervisor::start(
        &g,
        &[
            "--retry-delay",
            "50ms",
            "--backoff-factor",
            "2",
            "--max-delay",
            "2s",
        ],
    );
    let bystander = sup.worker_pid(&format!("127.0.0.1:{p2}"));
    let victim_argv = format!("127.0.0.1:{p1}");
    for n in 1..=4 {
        let pid = sup.worker_pid(&victim_argv);
        kill9(pid);
        wait_for(Duration::from_secs(10), "victim replaced", || {
            let now = sup
                .workers()
                .into_iter()
                .find(|(_, a)| a.contains(&victim_argv))
                .map(|(p, _)| p);
            now.filter(|p| *p != pid)
        });
        sup.wait_log("restart #", n);
    }
    let delays: Vec<u64> = sup
        .log_text()
        .lines()
        .filter(|l| l.contains(&victim_argv) && l.contains("restart #"))
        .filter_map(|l| l.split(" in ").nth(1)?.trim_end_matches(" ms").parse().ok())
        .collect();
    assert_eq!(delays.len(), 4, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "restart delay must grow: {delays:?}"
    );
    // The other endpoint never noticed.
    assert_eq!(sup.worker_pid(&format!("127.0.0.1:{p2}")), bystander);
    assert_eq!(
        roundtrip(listen_addr(p2), b"still here").unwrap(),
        b"still here"
    );
    assert!(!is_dead(sup.pid()));
}

#[test]
fn supervisor_sigkill_leaves_no_worker_and_frees_port() {
    let backend = echo_server();
    let port = free_port();
    let mut sup = Supervisor::start(&tcp_graph("orphan", port, &backend.to_string()), &[]);
    let w = sup.worker_pid("pvx-worker-tcp");
    kill9(sup.pid());
    let _ = sup.child.wait();
    wait_for(
        Duration::from_secs(5),
        "worker to die with its supervisor",
        || is_dead(w).then_some(()),
    );
    wait_for(Duration::from_secs(5), "port to be free", || {
        TcpListener::bind(listen_addr(port)).ok()
    });
}

#[test]
fn sigterm_stops_everything_with_status_zero() {
    let backend = echo_server();
    let port = free_port();
    let sup = Supervisor::start(&tcp_graph("term", port, &backend.to_string()), &[]);
    let w = sup.worker_pid("pvx-worker-tcp");
    assert!(sup.stop().success());
    assert!(is_dead(w));
}

#[test]
fn bad_graph_files_change_nothing() {
    let backend = echo_server();
    let port = free_port();
    let good = tcp_graph("keep", port, &backend.to_string());
    let sup = Supervisor::start(&good, &[]);
    let w = sup.worker_pid("pvx-worker-tcp");
    for (bad, says) in [
        ("{not json", "not valid JSON"),
        (r#"{"type":"tcp"}"#, "must be a JSON array"),
    ] {
        let before = sup.log_text().matches(says).count();
        std::fs::write(&sup.graph, bad).unwrap();
        sup.signal("HUP");
        sup.wait_log(says, before + 1);
        assert_eq!(sup.worker_pid("pvx-worker-tcp"), w);
        assert_eq!(roundtrip(listen_addr(port), b"alive").unwrap(), b"alive");
    }
    // Bad links are refused by index and name; the good one keeps running.
    let mixed = format!(
        r#"[{}, {{"type":"tcp","name":"nosock","consumer":"EXTERNAL","target":"127.0.0.1:1"}},
            {{"type":"tcp","name":"badaddr","consumer":"EXTERNAL","target":"127.0.0.1:99999","socket":"127.0.0.1:1"}}]"#,
        link(
            "tcp",
            "keep",
            0,
            &format!("127.0.0.1:{port}"),
            &backend.to_string(),
            0
        )
    );
    sup.reload(&mixed);
    let log = sup.log_text();
    assert!(
        log.contains("refused link #1 'nosock': missing field 'socket'"),
        "{log}"
    );
    assert!(
        log.contains("refused link #2 'badaddr': field 'target'"),
        "{log}"
    );
    assert_eq!(sup.worker_pid("pvx-worker-tcp"), w);
    assert_eq!(roundtrip(listen_addr(port), b"alive").unwrap(), b"alive");
}

#[test]
fn check_names_refused_links_and_exits_1() {
    let dir = TempDir::new("check");
    let f = dir.path().join("g.json");
    std::fs::write(
        &f,
        r#"[{"type":"tcp","name":"ok","consumer":"EXTERNAL","target":"0.0.0.0:8080","socket":"10.0.0.2:80"},
            {"type":"unix","name":"rel","consumer":"c","target":"run/x.sock","socket":"/y.sock"}]"#,
    )
    .unwrap();
    let out = std::process::Command::new(bin_dir().join("pv-xconnect"))
        .arg("check")
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("endpoint tcp 0.0.0.0:8080 (host) consumer=EXTERNAL worker=pvx-worker-tcp"),
        "{text}"
    );
    assert!(
        text.contains("refused link #1 'rel': field 'target' must be an absolute path"),
        "{text}"
    );
    std::fs::write(&f, "[]").unwrap();
    let out = std::process::Command::new(bin_dir().join("pv-xconnect"))
        .arg("check")
        .arg(&f)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&f, "nope").unwrap();
    let out = std::process::Command::new(bin_dir().join("pv-xconnect"))
        .arg("check")
        .arg(&f)
        .output()
        .unwrap();
    // Not a graph at all: 2, apart from a graph with a refused link (1).
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

#[test]
fn proxy_protocol_v1_header_reaches_backend() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        if let Some(mut c) = l.incoming().flatten().next() {
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let _ = tx.send(got);
        }
    });
    let port = free_port();
    let g = format!(
        r#"[{{"type":"tcp","name":"pp","consumer":"EXTERNAL","target":"127.0.0.1:{port}","socket":"{backend}","proxy_protocol":"v1"}}]"#
    );
    // The backend takes one connection: no health check may be it.
    let sup = Supervisor::start(&g, &["--health-interval", "0"]);
    sup.worker_pid("pvx-worker-tcp");
    let mut s = TcpStream::connect(listen_addr(port)).unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(b"payload").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\npayload",
        local.port()
    );
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// A minimal TLS ClientHello naming `name` (enough for sni routing).
fn client_hello(name: &str) -> Vec<u8> {
    let mut sni = vec![0u8];
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name.as_bytes());
    let mut ext = (sni.len() as u16).to_be_bytes().to_vec();
    ext.extend(sni);
    let mut exts = vec![0, 0];
    exts.extend((ext.len() as u16).to_be_bytes());
    exts.extend(ext);
    let mut body = vec![3, 3];
    body.extend([0u8; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![1, 0];
    hs.extend((body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

/// A backend that answers every connection with its own name, after
/// reading the first bytes (the ClientHello must reach it intact).
fn named_backend(name: &'static str, hello_len: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut b = vec![0u8; hello_len];
            if c.read_exact(&mut b).is_ok() && b[0] == 0x16 {
                let _ = c.write_all(name.as_bytes());
            }
        }
    });
    a
}

#[test]
fn sni_routes_tls_connections_on_a_shared_port() {
    let hello_a = client_hello("a.example");
    let hello_b = client_hello("x.wild.example");
    let a = named_backend("backend-a", hello_a.len());
    let b = named_backend("backend-b", hello_b.len());
    let port = free_port();
    let g = format!(
        r#"[{{"type":"tcp","name":"a","consumer":"EXTERNAL","target":"127.0.0.1:{port}","socket":"{a}","sni":"a.example"}},
            {{"type":"tcp","name":"b","consumer":"EXTERNAL","target":"127.0.0.1:{port}","socket":"{b}","sni":"*.wild.example"}}]"#
    );
    let sup = Supervisor::start(&g, &[]);
    sup.worker_pid("pvx-worker-tcp");
    for (hello, want) in [(&hello_a, "backend-a"), (&hello_b, "backend-b")] {
        let mut s = TcpStream::connect(listen_addr(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Split the hello: routing must wait for the whole record.
        s.write_all(&hello[..7]).unwrap();
        thread::sleep(Duration::from_millis(20));
        s.write_all(&hello[7..]).unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        assert_eq!(got, want);
    }
    // No route for the name, or not TLS at all: closed without a backend.
    for bytes in [
        client_hello("other.example"),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    ] {
        let mut s = TcpStream::connect(listen_addr(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        assert!(
            r.is_err() || got.is_empty(),
            "unrouted connection got {got:?}"
        );
    }
}

#[test]
fn out_of_fds_pauses_accepting_and_recovers() {
    let backend = echo_server();
    let port = free_port();
    // fds are counted: no health-check socket may come and go.
    let sup = Supervisor::start(
        &tcp_graph("emfile", port, &backend.to_string()),
        &["--health-interval", "0"],
    );
    let w = sup.worker_pid("pvx-worker-tcp");
    wait_worker_started(w);
    let fds = std::fs::read_dir(format!("/proc/{w}/fd")).unwrap().count();
    // Room for a handful of connections only (each holds client, backend
    // and two pipe fds while relaying).
    let limit = fds + 8;
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={w}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(st.success());
    let held: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(listen_addr(port)).unwrap();
            s.write_all(b"x").unwrap();
            s
        })
        .collect();
    sup.wait_log("pausing accepts", 1);
    drop(held);
    // Once fds are free again the worker accepts by itself.
    let got = wait_for(Duration::from_secs(10), "accepting again", || {
        roundtrip(listen_addr(port), b"back")
            .ok()
            .filter(|g| g == b"back")
    });
    assert_eq!(got, b"back");
    assert_eq!(
        sup.worker_pid("pvx-worker-tcp"),
        w,
        "the worker recovered without a restart"
    );
}

/// Resident anonymous memory (heap, stacks, buffers): what data held in the
/// worker would grow. Code pages faulted in from the executable (which the
/// workers share with the supervisor, a large file in a debug build) are
/// not the worker holding bytes.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
fn slow_reader_keeps_worker_memory_flat() {
    // A backend that pushes 64 MiB as fast as it can.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            thread::spawn(move || {
                let chunk = vec![7u8; 1 << 20];
                for _ in 0..64 {
                    if c.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let port = free_port();
    let sup = Supervisor::start(&tcp_graph("slow", port, &backend.to_string()), &[]);
    let w = sup.worker_pid("pvx-worker-tcp");
    wait_worker_started(w);
    let mut s = TcpStream::connect(listen_addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    // The baseline once the relay has run (its code paged in, its pipes
    // made): what start-up and first use map is not growth.
    for _ in 0..5 {
        total += s.read(&mut buf).unwrap();
        thread::sleep(Duration::from_millis(10));
    }
    let before = rss_kib(w);
    // Read a trickle; the rest must wait in bounded buffers, not in the worker.
    for _ in 0..50 {
        total += s.read(&mut buf).unwrap();
        thread::sleep(Duration::from_millis(10));
    }
    let during = rss_kib(w);
    assert!(total > 0);
    assert!(
        during <= before + 512,
        "worker RSS grew from {before} KiB to {during} KiB behind a slow reader"
    );
    // Then everything still arrives.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(total + rest.len(), 64 << 20);
}

#[test]
fn restarted_worker_runs_the_binary_the_supervisor_started_with() {
    // Workers are exec'd through an fd the supervisor holds on its own
    // executable: an update that replaces the file on disk does not change
    // what a restart runs.
    let dir = TempDir::new("bins");
    let exe = dir.path().join("pv-xconnect");
    std::fs::copy(bin_dir().join("pv-xconnect"), &exe).unwrap();
    let backend = echo_server();
    let port = free_port();
    let sup = Supervisor::start_from(&exe, &tcp_graph("swap", port, &backend.to_string()), &[]);
    let first = sup.worker_pid("pvx-worker-tcp");
    // Replace the file (new inode, as a package update does) with a broken one.
    let tmp = dir.path().join("pv-xconnect.new");
    std::fs::write(&tmp, "#!/bin/sh\nexit 7\n").unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    kill9(first);
    let second = wait_for(Duration::from_secs(10), "replacement worker", || {
        sup.workers()
            .into_iter()
            .find(|(p, a)| *p != first && a.contains("pvx-worker-tcp"))
            .map(|(p, _)| p)
    });
    assert_eq!(
        roundtrip(listen_addr(port), b"same binary").unwrap(),
        b"same binary"
    );
    let comm = std::fs::read_to_string(format!("/proc/{second}/comm")).unwrap();
    assert_eq!(
        comm.trim(),
        "pvx-worker-tcp",
        "ps and pidof see the worker's name"
    );
}

/// A ClientHello naming `name`, padded (extension 21) to a record of
/// `record` bytes in all.
fn padded_client_hello(name: &str, record: usize) -> Vec<u8> {
    let plain = client_hello(name);
    // Padding extension: type, length, zeros; it and the body lengths grow.
    let pad = record - plain.len() - 4;
    let mut exts = plain[5 + 4 + 2 + 32 + 7 + 2..].to_vec();
    exts.extend([0, 21]);
    exts.extend((pad as u16).to_be_bytes());
    exts.extend(std::iter::repeat_n(0u8, pad));
    let mut body = plain[5 + 4..5 + 4 + 2 + 32 + 7].to_vec();
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![1, 0];
    hs.extend((body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    assert_eq!(rec.len(), record);
    rec
}

/// CPU time of `pid` so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
    // Fields 14 and 15 of stat(5); `f` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// `clients` connections each send `hello` (one byte per segment when
/// `dribble`), then read the backend's answer; the worker's CPU ticks.
fn sniff_cost(w: u32, port: u16, hello: &[u8], clients: usize, dribble: bool) -> u64 {
    let before = cpu_ticks(w);
    let hs: Vec<_> = (0..clients)
        .map(|_| {
            let hello = hello.to_vec();
            thread::spawn(move || {
                let mut s = TcpStream::connect(listen_addr(port)).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                if dribble {
                    // Paced, so that the worker sees (nearly) every byte
                    // on its own instead of a burst of them.
                    for b in hello.chunks(1) {
                        s.write_all(b).unwrap();
                        thread::sleep(Duration::from_micros(50));
                    }
                } else {
                    s.write_all(&hello).unwrap();
                }
                let mut got = String::new();
                let _ = s.read_to_string(&mut got);
                got
            })
        })
        .collect();
    for h in hs {
        assert_eq!(h.join().unwrap(), "backend-a");
    }
    cpu_ticks(w) - before
}

#[test]
fn sni_hello_dribbled_a_byte_per_segment_costs_the_worker_little() {
    let hello = padded_client_hello("a.example", 16 * 1024);
    let a = named_backend("backend-a", hello.len());
    let b = named_backend("backend-b", 1);
    let port = free_port();
    let g = format!(
        r#"[{{"type":"tcp","name":"a","consumer":"EXTERNAL","target":"127.0.0.1:{port}","socket":"{a}","sni":"a.example"}},
            {{"type":"tcp","name":"b","consumer":"EXTERNAL","target":"127.0.0.1:{port}","socket":"{b}","sni":"b.example"}}]"#
    );
    let sup = Supervisor::start(&g, &["--health-interval", "0"]);
    let w = sup.worker_pid("pvx-worker-tcp");
    wait_worker_started(w);
    const CLIENTS: usize = 4;
    let at_once = sniff_cost(w, port, &hello, CLIENTS, false);
    let dribbled = sniff_cost(w, port, &hello, CLIENTS, true);
    let hz = 100; // USER_HZ on Linux
    eprintln!(
        "{CLIENTS} ClientHellos of {} bytes: worker CPU {} ms sent at once, {} ms one byte \
         per segment",
        hello.len(),
        at_once * 1000 / hz,
        dribbled * 1000 / hz
    );
    // One event per byte is the client's doing, and costs a syscall or two
    // each; copying and zeroing the whole hello again per byte (~16 KiB x
    // 16 Ki bytes x 4 clients, gigabytes) is ours.
    assert!(
        dribbled * 1000 / hz <= 1000,
        "the worker spent {} ms of CPU sniffing {CLIENTS} dribbled hellos",
        dribbled * 1000 / hz
    );
}

#[test]
fn sni_hello_that_never_completes_is_closed_at_the_head_timeout() {
    let port = free_port();
    let a = named_backend("backend-a", 1);
    let g = format!(
        r#"[{{"type":"tcp","name":"a","consumer":"EXTERNAL","target":"127.0.0.1:{port}","socket":"{a}","sni":"a.example"}}]"#
    );
    let sup = Supervisor::start(&g, &["--health-interval", "0", "--head-timeout", "1s"]);
    sup.worker_pid("pvx-worker-tcp");
    let hello = padded_client_hello("a.example", 16 * 1024);
    let mut s = TcpStream::connect(listen_addr(port)).unwrap();
    s.set_nodelay(true).unwrap();
    // A byte every 100 ms keeps arriving: the deadline is the whole
    // hello's, from accept, not one between bytes.
    let mut closed = false;
    for b in hello.chunks(1).take(300) {
        if s.write_all(b).is_err() {
            closed = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
        let mut x = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let r = s.read(&mut x);
        s.set_nonblocking(false).unwrap();
        if matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a hello dribbled for 30 s was still being waited for"
    );
    sup.wait_log("no TLS ClientHello within 1000 ms", 1);
}
