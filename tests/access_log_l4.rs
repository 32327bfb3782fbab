//! Issue 20 for tcp and unix links, through the real supervisor and its
//! workers: each connection that ends leaves exactly one access line
//! (`--access-log stderr`: in the supervisor's stderr, which its workers
//! share), whatever ended it, and is counted under its route; `/metrics`
//! (checked by `promtool`) and `status` show those counts. Off (the
//! default) writes nothing; a syslog that never reads costs lines, never
//! traffic.

use pvx_tests::access::{access_lines, checked_metrics, field, sample, Line};
use pvx_tests::fds::{memfd_with, recv_exact_fds, send_fds};
use pvx_tests::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::time::Duration;

/// A tcp link of the host (consumer EXTERNAL) listening on 127.0.0.1:`port`.
fn tcp_link(name: &str, port: u16, backend: &str) -> String {
    link("tcp", name, 0, &format!("127.0.0.1:{port}"), backend, 0)
}

/// The access lines of `kind` in the supervisor's stderr so far.
fn of_kind(sup: &Supervisor, kind: &str) -> Vec<Line> {
    access_lines(sup)
        .into_iter()
        .filter(|l| l.first().is_some_and(|(k, v)| k == "kind" && v == kind))
        .collect()
}

/// Wait until `n` lines of `kind` are there; returns them.
fn wait_lines(sup: &Supervisor, kind: &str, n: usize) -> Vec<Line> {
    wait_for(
        Duration::from_secs(10),
        &format!("{n} access line(s) of kind {kind}"),
        || {
            let lines = of_kind(sup, kind);
            (lines.len() >= n).then_some(lines)
        },
    )
}

fn keys(l: &Line) -> Vec<&str> {
    l.iter().map(|(k, _)| k.as_str()).collect()
}

/// The line of `link` among `lines` (exactly one).
fn line_of<'a>(lines: &'a [Line], link: &str) -> &'a Line {
    let of: Vec<&Line> = lines.iter().filter(|l| field(l, "link") == link).collect();
    assert_eq!(of.len(), 1, "one line for link {link}: {lines:?}");
    of[0]
}

/// `link`'s series: every `end` but `ended` is 0, `ended` is 1; the bytes
/// each way; one duration in the histogram.
fn one_connection_in_metrics(text: &str, link: &str, ended: &str, bytes: (u64, u64)) {
    for end in proto::ctl::End::ALL.map(proto::ctl::End::as_str) {
        let want = if end == ended { 1.0 } else { 0.0 };
        let got = sample(
            text,
            "pvx_route_ends_total",
            &[("link", link), ("end", end)],
        );
        assert_eq!(got, want, "{link} end={end}");
    }
    let way = |d| {
        sample(
            text,
            "pvx_route_bytes_total",
            &[("link", link), ("direction", d)],
        )
    };
    assert_eq!((way("in"), way("out")), (bytes.0 as f64, bytes.1 as f64));
    let count = sample(text, "pvx_route_duration_seconds_count", &[("link", link)]);
    let inf = sample(
        text,
        "pvx_route_duration_seconds_bucket",
        &[("link", link), ("le", "+Inf")],
    );
    assert_eq!((count, inf), (1.0, 1.0), "{link}: one connection timed");
}

/// The `route_counters` entry of `link` at endpoint `address`, once it
/// has counted `n` connections (the workers report every 500 ms at most).
fn route_counters(sup: &Supervisor, address: &str, link: &str, n: u64) -> serde_json::Value {
    wait_for(
        Duration::from_secs(10),
        &format!("{n} connection(s) of {link} in status"),
        || {
            let ep = sup.endpoint_status(address)?;
            let r = ep["route_counters"]
                .as_array()?
                .iter()
                .find(|r| r["link"] == link)?
                .clone();
            let total: u64 = r["ends"]
                .as_array()?
                .iter()
                .filter_map(|n| n.as_u64())
                .sum();
            (total >= n).then_some(r)
        },
    )
}

#[test]
fn tcp_connections_each_leave_one_line_and_their_counts() {
    let backend = echo_server();
    let dead = free_port(); // nothing listens there
    let (ok_port, down_port) = (free_port(), free_port());
    let g = graph(&[
        tcp_link("tcpok", ok_port, &backend.to_string()),
        tcp_link("tcpdown", down_port, &format!("127.0.0.1:{dead}")),
    ]);
    // Not held: the dead backend fails after the connect retries.
    let sup = Supervisor::start(&g, &["--access-log", "stderr", "--hold-timeout", "0"]);
    sup.worker_pid(&format!("127.0.0.1:{ok_port}"));
    sup.worker_pid(&format!("127.0.0.1:{down_port}"));

    // 1000 bytes up, echoed back, both sides closing normally.
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], ok_port))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ok_client = s.local_addr().unwrap();
    let data = pattern(1000, 20);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert!(back == data, "echoed");
    drop(s);

    // The backend never answers: the client is closed.
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], down_port))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let down_client = s.local_addr().unwrap();
    let r = s.read(&mut [0u8; 16]);
    assert!(matches!(r, Ok(0)) || r.is_err(), "closed, got {r:?}");

    let lines = wait_lines(&sup, "tcp", 2);
    let ok = line_of(&lines, "tcpok");
    assert_eq!(
        keys(ok),
        ["kind", "link", "client", "backend", "in", "out", "ms", "end"]
    );
    assert_eq!(field(ok, "client"), ok_client.to_string());
    assert_eq!(field(ok, "backend"), backend.to_string());
    assert_eq!((field(ok, "in"), field(ok, "out")), ("1000", "1000"));
    assert!(field(ok, "ms").parse::<u64>().is_ok(), "{ok:?}");
    assert_eq!(field(ok, "end"), "complete");

    let down = line_of(&lines, "tcpdown");
    assert_eq!(
        keys(down),
        ["kind", "link", "client", "backend", "in", "out", "ms", "end", "reason"]
    );
    assert_eq!(field(down, "client"), down_client.to_string());
    assert_eq!(field(down, "backend"), format!("127.0.0.1:{dead}"));
    assert_eq!((field(down, "in"), field(down, "out")), ("0", "0"));
    assert_eq!(field(down, "end"), "backend_failed");
    assert_eq!(field(down, "reason"), "unreachable");

    // status, then /metrics: the same counts.
    let r = route_counters(&sup, &format!("127.0.0.1:{ok_port}"), "tcpok", 1);
    assert_eq!(r["ends"], serde_json::json!([1, 0, 0, 0, 0, 0, 0]), "{r}");
    assert_eq!(
        (r["bytes_in"].as_u64(), r["bytes_out"].as_u64()),
        (Some(1000), Some(1000))
    );
    let r = route_counters(&sup, &format!("127.0.0.1:{down_port}"), "tcpdown", 1);
    assert_eq!(r["ends"], serde_json::json!([0, 0, 0, 1, 0, 0, 0]), "{r}");
    let text = checked_metrics(&sup);
    one_connection_in_metrics(&text, "tcpok", "complete", (1000, 1000));
    one_connection_in_metrics(&text, "tcpdown", "backend_failed", (0, 0));
    // Everything was counted, and nothing more was written.
    assert_eq!(of_kind(&sup, "tcp").len(), 2);
}

#[test]
fn a_unix_connection_passing_fds_names_its_client_by_pid_and_uid() {
    if !require_root("a_unix_connection_passing_fds_names_its_client_by_pid_and_uid") {
        return;
    }
    let dir = TempDir::new("ualog");
    let prov = dir.path().join("prov.sock");
    let l = UnixListener::bind(&prov).unwrap();
    // The provider takes the client's fd with its bytes, answers with one
    // of its own, and closes at the client's EOF.
    let provider = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (bytes, fds) = recv_exact_fds(&c, 3);
        assert_eq!((bytes.as_slice(), fds.len()), (&b"up\n"[..], 1));
        let m = memfd_with(b"from the provider");
        send_fds(&c, b"ok\n", &[m.as_raw_fd()]);
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    });
    // The client lives in a container: the link's socket is planted in
    // its own mount namespace.
    let cdir = std::env::temp_dir().join(unique("ualog-cons"));
    let consumer = MountNsProc::start(&cdir, "exec sleep 3600");
    let target = cdir.join("app.sock");
    let g = graph(&[link(
        "unix",
        "ufd",
        consumer.pid(),
        &target.display().to_string(),
        &prov.display().to_string(),
        0,
    )]);
    let sup = Supervisor::start(&g, &["--access-log", "stderr", "--health-interval", "0"]);
    sup.worker_pid("pvx-worker-unix");
    let seen = consumer.host_path(&target.display().to_string());

    let c = UnixStream::connect(&seen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let m = memfd_with(b"from the client");
    send_fds(&c, b"up\n", &[m.as_raw_fd()]);
    let (bytes, fds) = recv_exact_fds(&c, 3);
    assert_eq!((bytes.as_slice(), fds.len()), (&b"ok\n"[..], 1));
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    (&c).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    provider.join().expect("provider");
    drop(c);

    let lines = wait_lines(&sup, "unix", 1);
    let l = line_of(&lines, "ufd");
    assert_eq!(
        keys(l),
        ["kind", "link", "client", "backend", "in", "out", "ms", "fds_in", "fds_out", "end"]
    );
    let uid = nix::unistd::getuid();
    assert_eq!(
        field(l, "client"),
        format!("pid:{},uid:{uid}", std::process::id())
    );
    assert_eq!(field(l, "backend"), format!("unix:{}", prov.display()));
    assert_eq!((field(l, "in"), field(l, "out")), ("3", "3"));
    assert_eq!((field(l, "fds_in"), field(l, "fds_out")), ("1", "1"));
    assert_eq!(field(l, "end"), "complete");

    let address = target.display().to_string();
    let r = route_counters(&sup, &address, "ufd", 1);
    assert_eq!(r["ends"], serde_json::json!([1, 0, 0, 0, 0, 0, 0]), "{r}");
    assert_eq!(
        (r["bytes_in"].as_u64(), r["bytes_out"].as_u64()),
        (Some(3), Some(3))
    );
    let text = checked_metrics(&sup);
    one_connection_in_metrics(&text, "ufd", "complete", (3, 3));
    assert_eq!(of_kind(&sup, "unix").len(), 1);
}

#[test]
fn off_by_default_counts_but_writes_no_line() {
    let backend = echo_server();
    let port = free_port();
    let g = graph(&[tcp_link("quiet", port, &backend.to_string())]);
    let sup = Supervisor::start(&g, &[]);
    sup.worker_pid("pvx-worker-tcp");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(roundtrip(addr, b"not logged").unwrap(), b"not logged");
    // Ended and counted: a line would have been written by then.
    let r = route_counters(&sup, &format!("127.0.0.1:{port}"), "quiet", 1);
    assert_eq!(r["ends"], serde_json::json!([1, 0, 0, 0, 0, 0, 0]), "{r}");
    assert_eq!(sup.count_log("access: "), 0, "{}", sup.log_text());
}

#[test]
fn a_client_that_resets_mid_stream_is_written_as_gone() {
    let backend = echo_server();
    let port = free_port();
    let g = graph(&[tcp_link("rst", port, &backend.to_string())]);
    let sup = Supervisor::start(&g, &["--access-log", "stderr"]);
    sup.worker_pid("pvx-worker-tcp");
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    close_with_reset(s);
    let lines = wait_lines(&sup, "tcp", 1);
    let l = line_of(&lines, "rst");
    assert_eq!((field(l, "in"), field(l, "out")), ("5", "5"));
    assert_eq!(
        (field(l, "end"), field(l, "reason")),
        ("client_gone", "reset")
    );
    let r = route_counters(&sup, &format!("127.0.0.1:{port}"), "rst", 1);
    assert_eq!(r["ends"], serde_json::json!([0, 1, 0, 0, 0, 0, 0]), "{r}");
}

/// One echo through `port`, both sides closing normally.
fn echo_once(port: u16) {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"ping");
}

/// A connection through `port`, echoed once and left open.
fn open_connection(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    s
}

/// A connection still open at the drain deadline is cut and written as
/// drained. It is counted after the worker's last regular report: only
/// the report it sends as it exits carries it, and the supervisor reads
/// that before it reaps the worker (its log line sums the routes' counts
/// it then holds).
#[test]
fn a_connection_cut_at_the_drain_deadline_is_written_and_counted_as_drained() {
    let backend = echo_server();
    let (port, other) = (free_port(), free_port());
    let keep = tcp_link("stays", other, &backend.to_string());
    let g = graph(&[tcp_link("leaves", port, &backend.to_string()), keep.clone()]);
    let sup = Supervisor::start(&g, &["--access-log", "stderr", "--drain-timeout", "300ms"]);
    let address = format!("127.0.0.1:{port}");
    let pid = sup.worker_pid(&address);
    echo_once(port);
    route_counters(&sup, &address, "leaves", 1);
    let mut s = open_connection(port);
    // The link goes: its worker drains, and at the deadline cuts the
    // connection still open.
    sup.reload(&graph(&[keep]));
    let lines = wait_lines(&sup, "tcp", 2);
    let l = &lines[1];
    assert_eq!(field(l, "link"), "leaves");
    assert_eq!((field(l, "in"), field(l, "out")), ("1", "1"));
    assert_eq!(field(l, "end"), "drained");
    assert_eq!(field(l, "reason"), "drain_deadline");
    let r = s.read(&mut [0u8; 1]);
    assert!(matches!(r, Ok(0)) || r.is_err(), "cut, got {r:?}");
    sup.wait_log(
        &format!(
            "draining worker pid {pid} exited with status 0; its routes counted 2 request(s) or connection(s) in all, gone with the endpoint"
        ),
        1,
    );
}

/// A link removed while a connection is open and added back while its old
/// worker drains: `/metrics` shows the draining worker's series meanwhile,
/// then one series for the endpoint (never two samples of the same
/// labels), and what the old worker counted up to its exit stays in it.
#[test]
fn an_endpoint_back_in_the_graph_keeps_what_its_draining_worker_counted() {
    let backend = echo_server();
    let (port, other) = (free_port(), free_port());
    let keep = tcp_link("stays", other, &backend.to_string());
    let g = graph(&[tcp_link("back", port, &backend.to_string()), keep.clone()]);
    // A long deadline: the client, not the clock, ends the drain.
    let sup = Supervisor::start(&g, &["--drain-timeout", "60s"]);
    let address = format!("127.0.0.1:{port}");
    let old = sup.worker_pid(&address);
    echo_once(port);
    route_counters(&sup, &address, "back", 1);
    let mut open = open_connection(port);

    sup.reload(&graph(&[keep]));
    sup.wait_log("stopped accepting, finishing its connections", 1);
    let text = checked_metrics(&sup);
    let ends = |text: &str, end: &str| {
        sample(
            text,
            "pvx_route_ends_total",
            &[
                ("endpoint", address.as_str()),
                ("link", "back"),
                ("end", end),
            ],
        )
    };
    assert_eq!(ends(&text, "complete"), 1.0, "the draining worker's series");
    let d = &sup.status()["draining"][0];
    assert_eq!(
        (d["pid"].as_u64(), d["consumer"].as_str()),
        (Some(old as u64), Some("EXTERNAL")),
        "{d}"
    );

    sup.reload(&g);
    let new = wait_for(Duration::from_secs(10), "the endpoint's new worker", || {
        sup.workers()
            .into_iter()
            .find(|(p, a)| *p != old && a.contains(&address))
            .map(|(p, _)| p)
    });
    assert_ne!(new, old);
    echo_once(port);
    route_counters(&sup, &address, "back", 1);
    // Both workers' counts, one sample.
    let text = checked_metrics(&sup);
    assert_eq!(ends(&text, "complete"), 2.0);

    // The old worker's last connection ends; it exits, and its count stays.
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    sup.wait_log(
        &format!("draining worker pid {old} exited with status 0; its routes counted 2 request(s) or connection(s) in all, kept"),
        1,
    );
    let text = checked_metrics(&sup);
    assert_eq!(ends(&text, "complete"), 3.0);
    assert!(sup.status()["draining"]
        .as_array()
        .is_some_and(|d| d.is_empty()));
    let r = route_counters(&sup, &address, "back", 3);
    assert_eq!(r["ends"], serde_json::json!([3, 0, 0, 0, 0, 0, 0]), "{r}");
}

#[test]
fn a_syslog_that_never_reads_costs_lines_not_traffic() {
    let dir = TempDir::new("alsys");
    // A syslog that takes nothing: its queue fills after a few lines.
    let syslog_path = dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    let backend = echo_server();
    let port = free_port();
    let g = graph(&[tcp_link("busy", port, &backend.to_string())]);
    // Its own lines still go to stderr (the helper's `--log-target`).
    let sup = Supervisor::start_env(
        &g,
        &["--access-log", "syslog"],
        &[("PVX_SYSLOG_PATH", &syslog_path)],
    );
    sup.worker_pid("pvx-worker-tcp");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    const N: u64 = 200;
    for i in 0..N {
        let msg = format!("connection {i}\n");
        assert_eq!(
            roundtrip(addr, msg.as_bytes()).unwrap(),
            msg.as_bytes(),
            "connection {i}"
        );
    }
    // Every connection has its line: in the syslog's queue, or dropped
    // and counted; none went to stderr.
    let address = format!("127.0.0.1:{port}");
    route_counters(&sup, &address, "busy", N);
    syslog.set_nonblocking(true).unwrap();
    let mut queued = 0u64;
    let mut buf = [0u8; 2048];
    while let Ok(n) = syslog.recv(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.contains("access: kind=tcp link=busy "), "{text}");
        queued += 1;
    }
    let dropped = wait_for(Duration::from_secs(10), "dropped lines reported", || {
        let ep = sup.endpoint_status(&address)?;
        let d = ep["worker"]["log_dropped"].as_u64()?;
        (queued + d >= N).then_some(d)
    });
    assert!(dropped > 0, "the queue never filled ({queued} queued)");
    assert_eq!(queued + dropped, N, "one line per connection");
    let text = checked_metrics(&sup);
    let metric = sample(
        &text,
        "pvx_log_lines_dropped_total",
        &[("endpoint", &address)],
    );
    assert_eq!(metric, dropped as f64);
    assert_eq!(sup.count_log("access: "), 0);
}
