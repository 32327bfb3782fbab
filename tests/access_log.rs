//! The http worker's access lines and per-route counters end to end
//! (issue 20): the real supervisor and pvx-worker-http with `--access-log`,
//! raw-socket clients (the exact bytes each way, a hang-up mid-body), the
//! test origin server as backend, one of them started only once a request
//! is held for it. Each request must leave exactly one line whose every
//! field says what the test did; the route's counters on `/metrics`
//! (clean for `promtool check metrics`) and in `status --json` must add
//! up to those lines; `off` (the default) writes none, and a syslog that
//! is never read drops lines (counted) instead of holding requests back.

use pvx_tests::access::{access_lines, field, promtool_check, sample, Line};
use pvx_tests::http::backend;
use pvx_tests::http::client::{connect, get, read_resp};
use pvx_tests::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::Duration;

/// An http link as JSON: `prefix` on the endpoint at `port`, to `socket`.
fn http_link(name: &str, port: u16, prefix: &str, socket: &str) -> String {
    format!(
        r#"{{"type":"http","name":"{name}","consumer":"EXTERNAL","consumer_pid":0,"provider":"p-{name}","provider_pid":0,"role":"any","target":"127.0.0.1:{port}{prefix}","socket":"{socket}"}}"#
    )
}

/// The fields of an http line, in their order (README "Access log");
/// `reason` follows when the request did not end served.
const HTTP_KEYS: [&str; 14] = [
    "kind",
    "link",
    "client",
    "method",
    "path",
    "status",
    "in",
    "out",
    "ms",
    "held_ms",
    "connect_ms",
    "wait_ms",
    "backend",
    "end",
];

fn num(l: &Line, key: &str) -> u64 {
    field(l, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key} of {l:?}: {e}"))
}

/// The line of the client whose connection came from local `port`, once
/// written; there must be exactly one.
fn line_of(sup: &Supervisor, port: u16) -> Line {
    let client = format!("127.0.0.1:{port}");
    let line = wait_for(Duration::from_secs(10), "the request's access line", || {
        access_lines(sup)
            .into_iter()
            .find(|l| field(l, "client") == client)
    });
    let n = access_lines(sup)
        .iter()
        .filter(|l| field(l, "client") == client)
        .count();
    assert_eq!(n, 1, "lines for {client}: {:?}", access_lines(sup));
    line
}

/// The fields every line has, in order, and what they must hold whatever
/// the request: a route's backend, the times' order (held time is part of
/// the dial; the dial and the wait part of the whole).
fn check_shape(l: &Line, reason: Option<&str>) {
    let keys: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
    let mut want = HTTP_KEYS.to_vec();
    want.extend(reason.map(|_| "reason"));
    assert_eq!(keys, want, "{l:?}");
    assert_eq!(field(l, "kind"), "http");
    if let Some(r) = reason {
        assert_eq!(field(l, "reason"), r, "{l:?}");
    }
    let (ms, held, connect, wait) = (
        num(l, "ms"),
        num(l, "held_ms"),
        num(l, "connect_ms"),
        num(l, "wait_ms"),
    );
    assert!(held <= connect && connect <= ms && wait <= ms, "{l:?}");
}

/// Send `req` on a new connection to `addr`, then read until the worker
/// closes: (the connection's local port, what came back).
fn send(addr: SocketAddr, req: &[u8]) -> (u16, Vec<u8>) {
    let mut s = connect(addr);
    let port = s.local_addr().expect("local address").port();
    s.write_all(req).expect("send request");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read the answer to its end");
    (port, got)
}

fn status_of(raw: &[u8]) -> u16 {
    split_http(raw).0
}

/// `pv-xconnect status --json`, as a user runs it.
fn status_json(sup: &Supervisor) -> Value {
    let out = Command::new(bin_dir().join("pv-xconnect"))
        .args(["status", "--json", "--status-socket"])
        .arg(&sup.status_socket)
        .output()
        .expect("run pv-xconnect status");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// The route counters of `link` at the endpoint `address`, as `status
/// --json` shows them.
fn route_counters(status: &Value, address: &str, link: &str) -> Option<Value> {
    status["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == address)?["route_counters"]
        .as_array()?
        .iter()
        .find(|r| r["link"] == link)
        .cloned()
}

fn sum(v: &Value) -> u64 {
    v.as_array()
        .map_or(0, |a| a.iter().filter_map(Value::as_u64).sum())
}

/// `ends` in `proto::ctl::End::ALL`'s order, as the lines and labels say them.
fn ends() -> [&'static str; 7] {
    proto::ctl::End::ALL.map(proto::ctl::End::as_str)
}

/// What the lines of one route add up to, and what its counters must say
/// (in `status --json` and on `/metrics`).
fn check_counters(status: &Value, metrics: &str, address: &str, link: &str, lines: &[&Line]) {
    let r = route_counters(status, address, link)
        .unwrap_or_else(|| panic!("no counters for {link} in {status}"));
    let total = |f: &dyn Fn(&Line) -> u64| lines.iter().map(|l| f(l)).sum::<u64>();
    let bytes_in = total(&|l| num(l, "in"));
    let bytes_out = total(&|l| num(l, "out"));
    let ms = total(&|l| num(l, "ms"));
    let n = lines.len() as u64;
    assert_eq!(r["bytes_in"], bytes_in, "{r}");
    assert_eq!(r["bytes_out"], bytes_out, "{r}");
    assert_eq!(r["duration_ms"], ms, "{r}");
    assert_eq!(sum(&r["duration"]), n, "{r}");
    for (i, end) in ends().iter().enumerate() {
        let want = lines.iter().filter(|l| field(l, "end") == *end).count() as u64;
        assert_eq!(r["ends"][i], want, "{end} of {r}");
    }
    for class in 1..=5u64 {
        let want = lines
            .iter()
            .filter(|l| field(l, "status").parse::<u64>().ok().map(|s| s / 100) == Some(class))
            .count() as u64;
        let shown = r["status"]
            .get(class as usize - 1)
            .map_or(0, |v| v.as_u64().expect("a status count"));
        assert_eq!(shown, want, "{class}xx of {r}");
    }
    // The same on /metrics.
    let at = [("endpoint", address), ("link", link)];
    for class in 1..=5u64 {
        let c = format!("{class}xx");
        let want = r["status"]
            .get(class as usize - 1)
            .map_or(0, |v| v.as_u64().unwrap_or(0));
        let got = sample(
            metrics,
            "pvx_route_responses_total",
            &[at[0], at[1], ("class", &c)],
        );
        assert_eq!(got, want as f64, "{class}xx");
    }
    for (i, end) in ends().iter().enumerate() {
        let got = sample(
            metrics,
            "pvx_route_ends_total",
            &[at[0], at[1], ("end", end)],
        );
        assert_eq!(Some(got as u64), r["ends"][i].as_u64(), "{end}");
    }
    let dir = |d| {
        sample(
            metrics,
            "pvx_route_bytes_total",
            &[at[0], at[1], ("direction", d)],
        ) as u64
    };
    assert_eq!((dir("in"), dir("out")), (bytes_in, bytes_out));
    let count = sample(metrics, "pvx_route_duration_seconds_count", &at);
    assert_eq!(count, n as f64);
    let inf = sample(
        metrics,
        "pvx_route_duration_seconds_bucket",
        &[at[0], at[1], ("le", "+Inf")],
    );
    assert_eq!(inf, n as f64);
    let secs = sample(metrics, "pvx_route_duration_seconds_sum", &at);
    assert_eq!((secs * 1000.0).round() as u64, ms);
}

/// One endpoint with one route, `api` (prefix `/api`), to a test origin
/// server; `flags` for the supervisor. Returns what the test talks to.
struct OneRoute {
    api: backend::Backend,
    sup: Supervisor,
    /// The endpoint's address, as `status` names it.
    address: String,
    to: SocketAddr,
}

fn one_route(flags: &[&str]) -> OneRoute {
    let api = backend::tcp("127.0.0.1:0");
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[http_link("api", port, "/api", &api.socket())]),
        flags,
    );
    sup.worker_pid("pvx-worker-http");
    OneRoute {
        api,
        sup,
        address: format!("127.0.0.1:{port}"),
        to: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// A 201 with a query and a byte the line escapes, a 404 without a route,
/// a client that hangs up in the middle of its body, an upgrade, a request
/// held until its backend comes up: one line each, every field as the
/// test made it, and the routes' counters the sum of their lines.
#[test]
fn each_http_request_writes_one_line_and_counts_under_its_route() {
    let api = backend::tcp("127.0.0.1:0");
    let late_port = free_port();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let late_backend = format!("127.0.0.1:{late_port}");
    let sup = Supervisor::start(
        &graph(&[
            http_link("api", port, "/api", &api.socket()),
            http_link("late", port, "/late", &late_backend),
        ]),
        // No health checks: the held request is retried at the hold's pace,
        // not left until a check sees its backend up.
        &[
            "--access-log",
            "stderr",
            "--hold-timeout",
            "30s",
            "--health-interval",
            "0",
        ],
    );
    sup.worker_pid("pvx-worker-http");
    let to = SocketAddr::from(([127, 0, 0, 1], port));

    // 201, its path with a query and a backslash (escaped on the line).
    let req = b"GET /api/created?q=a\\b&r=%20 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (p201, got) = send(to, req);
    assert_eq!(status_of(&got), 201, "{}", String::from_utf8_lossy(&got));
    let l = line_of(&sup, p201);
    check_shape(&l, None);
    assert_eq!(field(&l, "link"), "api");
    assert_eq!(field(&l, "method"), "GET");
    assert_eq!(field(&l, "path"), r"/api/created?q=a\\b&r=%20");
    assert_eq!(field(&l, "status"), "201");
    assert_eq!(num(&l, "in"), req.len() as u64);
    assert_eq!(num(&l, "out"), got.len() as u64);
    assert_eq!(num(&l, "held_ms"), 0);
    assert_eq!(field(&l, "backend"), api.socket());
    assert_eq!(field(&l, "end"), "complete");

    // 404: no route, so no link, no backend, and the reason.
    let req = b"GET /nowhere?a=b HTTP/1.1\r\nHost: t\r\n\r\n";
    let (p404, got) = send(to, req);
    assert_eq!(status_of(&got), 404);
    let l = line_of(&sup, p404);
    check_shape(&l, Some("no_route"));
    assert_eq!(field(&l, "link"), "-");
    assert_eq!(field(&l, "method"), "GET");
    assert_eq!(field(&l, "path"), "/nowhere?a=b");
    assert_eq!(field(&l, "status"), "404");
    assert_eq!(num(&l, "in"), req.len() as u64);
    assert_eq!(num(&l, "out"), got.len() as u64);
    assert_eq!(field(&l, "backend"), "-");
    assert_eq!(field(&l, "end"), "refused");

    // The client hangs up in the middle of its body, once the backend has
    // the head (and the 100 body bytes sent with it).
    let head = "POST /api/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n";
    let mut c = connect(to);
    let pgone = c.local_addr().unwrap().port();
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&[b'x'; 100]).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the backend to get the head",
        || {
            api.heads()
                .iter()
                .any(|h| h.starts_with("POST /upload "))
                .then_some(())
        },
    );
    drop(c);
    let l = line_of(&sup, pgone);
    check_shape(&l, Some("client_gone"));
    assert_eq!(field(&l, "link"), "api");
    assert_eq!(field(&l, "method"), "POST");
    assert_eq!(field(&l, "path"), "/api/upload");
    assert_eq!(field(&l, "status"), "-");
    assert_eq!(num(&l, "in"), head.len() as u64 + 100);
    assert_eq!(num(&l, "out"), 0);
    assert_eq!(field(&l, "end"), "client_gone");

    // An upgrade: its line comes when its tunnel ends, with the tunnel's
    // bytes.
    let head =
        "GET /api/upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let mut c = connect(to);
    let pup = c.local_addr().unwrap().port();
    c.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut c, &mut buf, false).expect("the 101");
    assert_eq!(r.status, 101);
    c.write_all(b"frame").unwrap();
    let mut echoed = [0u8; 5];
    c.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"FRAME");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"BYE");
    let l = line_of(&sup, pup);
    check_shape(&l, None);
    assert_eq!(field(&l, "link"), "api");
    assert_eq!(field(&l, "path"), "/api/upgrade");
    assert_eq!(field(&l, "status"), "101");
    assert_eq!(num(&l, "in"), (head.len() + 5) as u64);
    assert_eq!(num(&l, "out"), (r.head.len() + 5 + 3) as u64);
    assert_eq!(field(&l, "end"), "complete");

    // Held until its backend comes up, then served.
    let req = b"GET /late/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let held = thread::spawn(move || send(to, req));
    wait_for(Duration::from_secs(10), "the request held", || {
        let e = sup.endpoint_status(&address)?;
        (e["worker"]["hold"]["held"].as_u64()? >= 1).then_some(())
    });
    let late = backend::tcp(&late_backend);
    let (pheld, got) = held.join().expect("held client");
    assert_eq!(status_of(&got), 200, "{}", String::from_utf8_lossy(&got));
    let l = line_of(&sup, pheld);
    check_shape(&l, None);
    assert_eq!(field(&l, "link"), "late");
    assert_eq!(field(&l, "path"), "/late/x");
    assert_eq!(field(&l, "status"), "200");
    assert_eq!(num(&l, "in"), req.len() as u64);
    assert_eq!(num(&l, "out"), got.len() as u64);
    // Held from before the status showed it until after the backend was
    // started: some time, all of it inside the dial.
    assert!(num(&l, "held_ms") > 0, "{l:?}");
    assert_eq!(field(&l, "backend"), late.socket());
    assert_eq!(field(&l, "end"), "complete");

    // The counters: one route's lines add up to its counters; the 404
    // counts under no route. They arrive with the worker's next report.
    let lines = access_lines(&sup);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let of =
        |link: &str| -> Vec<&Line> { lines.iter().filter(|l| field(l, "link") == link).collect() };
    let status = wait_for(Duration::from_secs(10), "the counters reported", || {
        let s = status_json(&sup);
        let n = |link| route_counters(&s, &address, link).map_or(0, |r| sum(&r["ends"]));
        (n("api") == 3 && n("late") == 1).then_some(s)
    });
    let (_, metrics) = sup.http_status("/metrics");
    promtool_check(&metrics);
    check_counters(&status, &metrics, &address, "api", &of("api"));
    check_counters(&status, &metrics, &address, "late", &of("late"));
    let routes = status["endpoints"][0]["route_counters"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(routes, 2, "{status}");
}

/// Off by default: the same requests write no line, and the routes'
/// counters count them all the same.
#[test]
fn no_line_without_the_flag() {
    // `_api`, not `..`: the backend stops when dropped.
    let OneRoute {
        api: _api,
        sup,
        address,
        to,
    } = one_route(&[]);
    let (_, got) = send(
        to,
        b"GET /api/created HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&got), 201);
    let (_, got) = send(to, b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status_of(&got), 404);
    // Counted when it ended, where a line would have been written.
    wait_for(Duration::from_secs(10), "the request counted", || {
        let r = route_counters(&status_json(&sup), &address, "api")?;
        (sum(&r["ends"]) == 1).then_some(())
    });
    assert!(!sup.log_text().contains("access: "), "{}", sup.log_text());
}

/// A syslog that never reads: its socket fills, lines are dropped and
/// counted, and every request is still served (the line never waits).
#[test]
fn a_syslog_never_read_drops_lines_and_holds_no_request() {
    let dir = TempDir::new("syslog");
    let path = dir.path().join("log");
    // Bound and never read. Only this test sends to syslog (the others
    // log to stderr), so the variable the workers inherit misleads none.
    let _never_read =
        std::os::unix::net::UnixDatagram::bind(&path).expect("bind the syslog socket");
    std::env::set_var("PVX_SYSLOG_PATH", &path);
    // `_api`, not `..`: the backend stops when dropped.
    let OneRoute {
        api: _api,
        sup,
        address,
        to,
    } = one_route(&["--access-log", "syslog"]);
    let mut c = connect(to);
    let mut buf = Vec::new();
    let n = 2000;
    for i in 0..n {
        c.write_all(&get(&format!("/api/echo/{i}"))).unwrap();
        let r = read_resp(&mut c, &mut buf, false).expect("a response");
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
    }
    drop(c);
    let w = wait_for(Duration::from_secs(10), "the requests counted", || {
        let s = status_json(&sup);
        let r = route_counters(&s, &address, "api")?;
        (sum(&r["ends"]) == n).then_some(s)
    });
    let e = w["endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["address"] == address))
        .expect("the endpoint in status");
    let dropped = e["worker"]["log_dropped"].as_u64().expect("log_dropped");
    assert!(dropped > 0, "no line dropped of {n}: {e}");
    assert!(!sup.log_text().contains("access: "), "lines went to stderr");
}

/// Requests refused before any route: each has its line, with no link,
/// what could be read of its method and path, our answer and the reason;
/// no route counts them.
#[test]
fn requests_refused_before_a_route_are_logged_with_the_reason() {
    let OneRoute {
        api,
        sup,
        address,
        to,
    } = one_route(&["--access-log", "stderr", "--head-timeout", "300ms"]);
    let refused = |req: &[u8], status: u16, method: &str, path: &str, reason: &str| {
        let (p, got) = send(to, req);
        assert_eq!(status_of(&got), status, "{}", String::from_utf8_lossy(&got));
        let l = line_of(&sup, p);
        check_shape(&l, Some(reason));
        assert_eq!(field(&l, "link"), "-");
        assert_eq!(field(&l, "method"), method);
        assert_eq!(field(&l, "path"), path);
        assert_eq!(field(&l, "status"), status.to_string());
        assert_eq!(num(&l, "out"), got.len() as u64);
        assert_eq!(field(&l, "backend"), "-");
        l
    };
    // 400: a header name with a space.
    let req = b"GET /api/x?y HTTP/1.1\r\nHost: t\r\nBad Header: 1\r\n\r\n";
    let l = refused(req, 400, "GET", "/api/x?y", "bad_request");
    assert_eq!(num(&l, "in"), req.len() as u64);
    assert_eq!(field(&l, "end"), "refused");
    // 408: the head never ends.
    let req = b"GET /api/slow HTTP/1.1\r\nHost: t\r\n";
    let l = refused(req, 408, "GET", "/api/slow", "head_timeout");
    assert_eq!(num(&l, "in"), req.len() as u64);
    assert_eq!(field(&l, "end"), "timeout");
    // 431: a head past the limit (16 KiB); what was read of it counts.
    let mut req = b"GET /api/big HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    req.resize(20_000, b'a');
    let l = refused(&req, 431, "GET", "/api/big", "head_too_large");
    assert!(num(&l, "in") <= req.len() as u64, "{l:?}");
    assert_eq!(field(&l, "end"), "refused");
    assert_eq!(access_lines(&sup).len(), 3);
    assert!(api.heads().is_empty());
    // One request routed after them: once it is counted, the route has
    // counted it alone (a report carries all counted before it).
    let (_, got) = send(
        to,
        b"GET /api/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&got), 200);
    let r = wait_for(
        Duration::from_secs(10),
        "the routed request counted",
        || route_counters(&status_json(&sup), &address, "api").filter(|r| sum(&r["ends"]) > 0),
    );
    assert_eq!(
        (sum(&r["ends"]), r["ends"][0].as_u64()),
        (1, Some(1)),
        "{r}"
    );
    assert_eq!(sum(&r["status"]), 1, "{r}");
}
