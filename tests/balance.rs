//! Replicas (BEHAVIOUR §3 `balance`, §4, §5; issue 12): links of one route that
//! all carry the same `balance` share its connections, through the real
//! supervisor and workers. A replica that stops is failed over to, with no
//! failed request; it takes load again when it comes back; a replica
//! removed by an update drains. A mixed group is refused, by `check` and
//! by `run`, with the links named.

use pvx_tests::http::client;
use pvx_tests::*;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What a replica backend speaks.
#[derive(Clone, Copy)]
enum Speaks {
    /// Greets each connection with its tag and a newline, then echoes.
    TaggedEcho,
    /// HTTP/1.1 keep-alive: every request gets `200` with its tag as body.
    Http,
}

/// A backend that can be stopped and started again on the same address,
/// as a provider container restarts. Stopping closes its listener (new
/// connects are refused) and every connection it holds (the test stops
/// it between requests, so those are idle: what a provider that exits
/// does to a proxy's pooled connections).
struct Replica {
    tag: String,
    addr: SocketAddr,
    speaks: Speaks,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Replica {
    fn start(tag: &str, speaks: Speaks) -> Replica {
        Replica::listen(tag, speaks, "127.0.0.1:0".parse().unwrap())
    }

    fn listen(tag: &str, speaks: Speaks, addr: SocketAddr) -> Replica {
        let l = TcpListener::bind(addr).expect("bind replica");
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (st, cs, t) = (stop.clone(), conns.clone(), tag.to_string());
        let accept = thread::spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                if let Ok(k) = c.try_clone() {
                    cs.lock().unwrap().push(k);
                }
                let t = t.clone();
                thread::spawn(move || match speaks {
                    Speaks::TaggedEcho => tagged_echo(c, &t),
                    Speaks::Http => http(c, &t),
                });
            }
            // The listener closes here: connects are refused from now on.
        });
        Replica {
            tag: tag.to_string(),
            addr,
            speaks,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            t.join().expect("replica accept thread");
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Start again on the same address.
    fn restart(&mut self) {
        *self = Replica::listen(&self.tag, self.speaks, self.addr);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop();
        }
    }
}

fn tagged_echo(mut c: TcpStream, tag: &str) {
    if c.write_all(format!("{tag}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 || c.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = c.shutdown(Shutdown::Write);
}

/// Heads only (GETs): answer each with the tag, keep the connection.
fn http(c: TcpStream, tag: &str) {
    let Ok(mut w) = c.try_clone() else { return };
    let mut r = BufReader::new(c);
    let mut line = String::new();
    loop {
        let mut blank = false;
        let mut seen = false;
        while !blank {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            blank = line == "\r\n" && seen;
            seen = true;
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{tag}",
            tag.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn tcp_link(name: &str, port: u16, backend: SocketAddr, extra: &str) -> String {
    let l = link(
        "tcp",
        name,
        0,
        &format!("127.0.0.1:{port}"),
        &backend.to_string(),
        0,
    );
    format!("{}{extra}}}", &l[..l.len() - 1])
}

fn http_link(name: &str, port: u16, prefix: &str, backend: SocketAddr, extra: &str) -> String {
    let l = link(
        "http",
        name,
        0,
        &format!("127.0.0.1:{port}{prefix}"),
        &backend.to_string(),
        0,
    );
    format!("{}{extra}}}", &l[..l.len() - 1])
}

const LC: &str = r#","balance":"least-conn""#;
const RR: &str = r#","balance":"round-robin""#;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One tcp connection through the endpoint: which replica greeted it, and
/// a line echoed intact (so the relay worked end to end).
fn tcp_once(port: u16, i: usize) -> Result<String, String> {
    let mut s = TcpStream::connect(local(port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tag = read_line(&mut s).map_err(|e| format!("greeting: {e}"))?;
    s.write_all(format!("line {i}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let back = read_line(&mut s).map_err(|e| format!("echo: {e}"))?;
    if back != format!("line {i}") {
        return Err(format!("echoed {back:?}"));
    }
    Ok(tag)
}

/// `n` connections one after the other: how many each replica got. Any
/// failed connection fails the test, naming it.
fn tcp_load(port: u16, n: usize) -> HashMap<String, usize> {
    let mut got = HashMap::new();
    for i in 0..n {
        let tag = tcp_once(port, i).unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        *got.entry(tag).or_default() += 1;
    }
    got
}

/// `n` GETs on one keep-alive client connection: how many each replica
/// answered. Anything but a 200 fails the test.
fn http_load(port: u16, path: &str, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let mut s = client::connect(local(port));
    let mut buf = Vec::new();
    let mut got = HashMap::new();
    let mut order = Vec::new();
    for i in 0..n {
        s.write_all(&client::get(path)).expect("send request");
        let r = client::read_resp(&mut s, &mut buf, false)
            .unwrap_or_else(|| panic!("request {i}: no response"));
        assert_eq!(r.status, 200, "request {i}: {}{}", r.head, r.text());
        *got.entry(r.text()).or_default() += 1;
        order.push(r.text());
    }
    (got, order)
}

fn count(got: &HashMap<String, usize>, tag: &str) -> usize {
    got.get(tag).copied().unwrap_or(0)
}

/// BEHAVIOUR §5: two replicas under least-conn share the load; one stops and
/// no connection fails (the dialer moves to the other), the other takes
/// all; it comes back and takes load again. `status` shows the pool.
#[test]
fn tcp_replicas_share_fail_over_and_come_back() {
    let mut a = Replica::start("A", Speaks::TaggedEcho);
    let b = Replica::start("B", Speaks::TaggedEcho);
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[
            tcp_link("web-a", port, a.addr, LC),
            tcp_link("web-b", port, b.addr, LC),
        ]),
        &[],
    );
    assert!(
        !sup.log_text().contains("refused link"),
        "{}",
        sup.log_text()
    );
    // Served once the worker acknowledged its routes.
    let ep = wait_for(Duration::from_secs(10), "routes served", || {
        sup.endpoint_status(&format!("127.0.0.1:{port}"))
            .filter(|e| e["routes"].as_array().is_some_and(|r| !r.is_empty()))
    });
    let route = &ep["routes"][0];
    assert_eq!(route["balance"], "least-conn", "{ep}");
    let pool: Vec<(&str, String)> = route["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["backend"].to_string()))
        .collect();
    assert_eq!(
        pool,
        [
            ("web-a", format!("\"{}\"", a.addr)),
            ("web-b", format!("\"{}\"", b.addr))
        ]
    );

    // The status table lists the pool under the route.
    let out = Command::new(bin_dir().join("pv-xconnect"))
        .args(["status", "--status-socket"])
        .arg(&sup.status_socket)
        .output()
        .expect("run pv-xconnect status");
    let table = String::from_utf8_lossy(&out.stdout);
    for want in [
        format!(
            "  link #0 'web-a' -> {} (least-conn of 2 replicas)\n",
            a.addr
        ),
        format!("    replica link #0 'web-a' -> {}\n", a.addr),
        format!("    replica link #1 'web-b' -> {}\n", b.addr),
    ] {
        assert!(table.contains(&want), "{want:?} not in:\n{table}");
    }

    let got = tcp_load(port, 20);
    assert!(count(&got, "A") > 0 && count(&got, "B") > 0, "{got:?}");

    a.stop();
    let got = tcp_load(port, 20);
    assert_eq!(count(&got, "B"), 20, "{got:?}");

    a.restart();
    // Back: it takes load again (at once, or once a health check saw it
    // up), and no connection fails meanwhile.
    let mut i = 0;
    wait_for(Duration::from_secs(15), "A takes load again", || {
        i += 1;
        let tag = tcp_once(port, i).unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        (tag == "A").then_some(())
    });
    assert!(
        sup.log_text().contains("trying replica"),
        "the worker logged its fail-over"
    );
    drop(sup);
}

/// The same for http: each exchange picks its replica (a keep-alive
/// client's requests are spread too), pooled connections are kept per
/// replica; a stopped replica's requests go to the other without an
/// error; round-robin alternates exactly.
#[test]
fn http_replicas_share_fail_over_and_come_back() {
    let mut a = Replica::start("A", Speaks::Http);
    let b = Replica::start("B", Speaks::Http);
    let c = Replica::start("C", Speaks::Http);
    let d = Replica::start("D", Speaks::Http);
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[
            http_link("api-a", port, "/api", a.addr, LC),
            http_link("api-b", port, "/api", b.addr, LC),
            http_link("rr-c", port, "/rr", c.addr, RR),
            http_link("rr-d", port, "/rr", d.addr, RR),
        ]),
        &[],
    );
    assert!(
        !sup.log_text().contains("refused link"),
        "{}",
        sup.log_text()
    );

    let (got, _) = http_load(port, "/api/x", 20);
    assert!(count(&got, "A") > 0 && count(&got, "B") > 0, "{got:?}");

    let (_, order) = http_load(port, "/rr/x", 8);
    let first = order[0].clone();
    let second = if first == "C" { "D" } else { "C" };
    for (i, tag) in order.iter().enumerate() {
        let want = if i % 2 == 0 { first.as_str() } else { second };
        assert_eq!(tag, want, "round-robin alternates: {order:?}");
    }

    a.stop();
    let (got, _) = http_load(port, "/api/x", 20);
    assert_eq!(count(&got, "B"), 20, "{got:?}");

    a.restart();
    wait_for(Duration::from_secs(15), "A takes load again", || {
        let (got, _) = http_load(port, "/api/x", 4);
        (count(&got, "A") > 0).then_some(())
    });
    drop(sup);
}

/// A listener whose accept queue is full: the kernel drops further SYNs,
/// so a connect to it hangs (a replica that stalls). Returns it with the
/// connections that fill it (kept open).
fn stalled_listener() -> (std::os::fd::OwnedFd, SocketAddr, Vec<TcpStream>) {
    use nix::sys::socket::{
        bind, getsockname, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .expect("bind");
    listen(&fd, Backlog::new(0).unwrap()).expect("listen");
    let a: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).expect("getsockname");
    let addr = SocketAddr::from((a.ip(), a.port()));
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fill.push(s);
        }
    }
    // Confirmed full: a connect now gets no answer.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "the accept queue should be full"
    );
    (fd, addr, fill)
}

/// A replica whose connects hang gives way to the next one after its share
/// of the connect timeout (here 2 s over 2 replicas): no connection fails.
#[test]
fn a_stalled_replica_gives_way_to_the_next() {
    let (_stalled, s_addr, _fill) = stalled_listener();
    let b = Replica::start("B", Speaks::TaggedEcho);
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[
            tcp_link("s-a", port, s_addr, RR),
            tcp_link("s-b", port, b.addr, RR),
        ]),
        &["--connect-timeout", "2s"],
    );
    let got = tcp_load(port, 4);
    assert_eq!(count(&got, "B"), 4, "{got:?}");
    assert!(
        sup.log_text().contains("Connection timed out"),
        "the stalled attempt gave way: {}",
        sup.log_text()
    );
    drop(sup);
}

/// least-conn looks at the connections open from the worker; round-robin
/// does not: with one long connection on one replica, least-conn sends
/// the next to the other replica, round-robin takes its turn.
#[test]
fn least_conn_counts_open_connections_round_robin_takes_turns() {
    for (policy, extra) in [("least-conn", LC), ("round-robin", RR)] {
        let a = Replica::start("A", Speaks::TaggedEcho);
        let b = Replica::start("B", Speaks::TaggedEcho);
        let port = free_port();
        let sup = Supervisor::start(
            &graph(&[
                tcp_link("x-a", port, a.addr, extra),
                tcp_link("x-b", port, b.addr, extra),
            ]),
            &[],
        );
        let open = |i: usize| {
            let mut s = TcpStream::connect(local(port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let tag = read_line(&mut s).unwrap_or_else(|e| panic!("{policy} conn {i}: {e}"));
            (s, tag)
        };
        // The first two go to A and B (an idle pool: in turn).
        let (long, first) = open(1);
        let (short, second) = open(2);
        assert_ne!(first, second, "{policy}");
        drop(short);
        // The worker closed it (its debug line; status counters lag).
        sup.wait_log("connection closed (1 open)", 1);
        // The long one still holds `first`; the next turn is `first` too.
        let (_third, third) = open(3);
        match policy {
            "least-conn" => assert_eq!(third, second, "least-conn: the idle replica"),
            _ => assert_eq!(third, first, "round-robin: the next turn"),
        }
        drop(long);
        drop(sup);
    }
}

/// A replica removed by an update gets no new connections; its open
/// connection is not cut (BEHAVIOUR §4: open connections keep their backend).
#[test]
fn a_removed_replica_drains() {
    let a = Replica::start("A", Speaks::TaggedEcho);
    let b = Replica::start("B", Speaks::TaggedEcho);
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[
            tcp_link("d-a", port, a.addr, RR),
            tcp_link("d-b", port, b.addr, RR),
        ]),
        &[],
    );
    let w = sup.worker_pid("pvx-worker-tcp");
    // Two connections, one on each replica; keep them.
    let mut open: HashMap<String, TcpStream> = HashMap::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(local(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let tag = read_line(&mut s).unwrap();
        open.insert(tag, s);
    }
    let mut on_a = open.remove("A").expect("a connection on A");
    assert!(open.contains_key("B"), "and one on B");

    let applied = sup.count_log("applied update");
    sup.reload(&graph(&[tcp_link("d-b", port, b.addr, RR)]));
    sup.wait_log("applied update", applied + 1);
    assert_eq!(sup.worker_pid("pvx-worker-tcp"), w, "same worker");

    let got = tcp_load(port, 6);
    assert_eq!(
        count(&got, "B"),
        6,
        "no new connection to the removed one: {got:?}"
    );
    on_a.write_all(b"still here\n").unwrap();
    assert_eq!(read_line(&mut on_a).unwrap(), "still here");
    on_a.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    on_a.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(sup);
}

fn check(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin_dir().join("pv-xconnect"))
        .arg("check")
        .arg(file)
        .output()
        .expect("run pv-xconnect check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn check_json(file: &std::path::Path) -> serde_json::Value {
    let out = Command::new(bin_dir().join("pv-xconnect"))
        .args(["check", "--json"])
        .arg(file)
        .output()
        .expect("run pv-xconnect check --json");
    serde_json::from_slice(&out.stdout).expect("check --json prints JSON")
}

/// `check` prints the pool, in text and JSON.
#[test]
fn check_prints_the_pool() {
    let dir = TempDir::new("bal-chk");
    let f = dir.path().join("g.json");
    let g = json!([
        {"type":"http","name":"ui-1","consumer":"EXTERNAL","provider":"ui","target":"0.0.0.0:80/",
         "socket":"10.0.3.2:80","balance":"least-conn"},
        {"type":"http","name":"ui-2","consumer":"EXTERNAL","provider":"ui2","provider_pid":42,
         "target":"0.0.0.0:80/","socket":"/run/ui.sock","balance":"least-conn"},
        {"type":"tcp","name":"db","consumer":"EXTERNAL","target":"0.0.0.0:5432",
         "socket":"10.0.3.5:5432","balance":"round-robin"}
    ]);
    std::fs::write(&f, g.to_string()).unwrap();
    let (code, out) = check(&f);
    assert_eq!(code, Some(0), "{out}");
    for want in [
        "  link #0 'ui-1' role=any -> 10.0.3.2:80 prefix=/ strip_prefix=true balance=least-conn\n    replica link #1 'ui-2' provider=ui2 -> unix:/proc/42/root/run/ui.sock\n",
        "  link #2 'db' role=any -> 10.0.3.5:5432 balance=round-robin\n",
        "2 endpoint(s), 0 link(s) refused, 0 skipped",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let j = check_json(&f);
    let http = j["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "http")
        .unwrap();
    assert_eq!(http["routes"].as_array().unwrap().len(), 1);
    let r = &http["routes"][0];
    assert_eq!(r["balance"], "least-conn");
    assert_eq!(
        r["replicas"],
        json!([
            {"link":0,"name":"ui-1","provider":"ui","backend":"10.0.3.2:80"},
            {"link":1,"name":"ui-2","provider":"ui2","backend":"unix:/proc/42/root/run/ui.sock"}
        ])
    );
}

/// A mixed group (one link without `balance`, or another policy) is
/// refused with the links named, by `check` (exit 1) and by `run` (the
/// refusal in status, the route served by the links that agree); so is
/// `balance` on a unix link.
#[test]
fn a_mixed_group_is_refused_with_the_reason() {
    let dir = TempDir::new("bal-mix");
    let f = dir.path().join("g.json");
    let a = Replica::start("A", Speaks::TaggedEcho);
    let b = Replica::start("B", Speaks::TaggedEcho);
    let c = Replica::start("C", Speaks::TaggedEcho);
    let port = free_port();
    let mut links = vec![
        tcp_link("m-a", port, a.addr, LC),
        tcp_link("m-b", port, b.addr, LC),
        tcp_link("m-c", port, c.addr, ""),
        tcp_link("m-d", port, c.addr, RR),
    ];
    std::fs::write(&f, graph(&links)).unwrap();
    let (code, out) = check(&f);
    assert_eq!(code, Some(1), "{out}");
    let mixed = format!(
        "mixed replicas: link #0 'm-a' routes the address on 127.0.0.1:{port} (host) with \"balance\": \"least-conn\", this link has"
    );
    for want in [
        format!("refused link #2 'm-c': {mixed} no 'balance'; replicas need the same 'balance' on every link of the route"),
        format!("refused link #3 'm-d': {mixed} \"balance\": \"round-robin\"; replicas need"),
    ] {
        assert!(out.contains(&want), "{want:?} not in:\n{out}");
    }

    // balance on a unix link would change something: refused.
    links.push(
        json!({"type":"unix","name":"u","consumer":"c","target":"/run/pvx-bal-u.sock",
               "socket":"/run/pvx-bal-p.sock","balance":"least-conn"})
        .to_string(),
    );
    std::fs::write(&f, graph(&links)).unwrap();
    let (code, out) = check(&f);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "refused link #4 'u': field 'balance' applies to tcp and http links, not unix"
        ),
        "{out}"
    );
    links.pop();

    // run: the same refusals, and the replicas that agree serve.
    let sup = Supervisor::start(&graph(&links), &[]);
    let st = sup.status();
    let refused: Vec<(u64, String)> = st["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0].0, 2);
    assert!(refused[0].1.starts_with(&mixed), "{refused:?}");
    assert_eq!(refused[1].0, 3);
    let got = tcp_load(port, 10);
    assert_eq!(count(&got, "A") + count(&got, "B"), 10, "{got:?}");
    assert_eq!(count(&got, "C"), 0, "{got:?}");
    drop(sup);
}

/// The state of `backend` among the endpoint's checked backends.
fn health_state(sup: &Supervisor, port: u16, backend: SocketAddr) -> Option<String> {
    let e = sup.endpoint_status(&format!("127.0.0.1:{port}"))?;
    e["backends"]
        .as_array()?
        .iter()
        .find(|b| b["backend"] == backend.to_string())
        .and_then(|b| b["state"].as_str().map(str::to_string))
}

fn wait_health(sup: &Supervisor, port: u16, backend: SocketAddr, state: &str) {
    wait_for(
        Duration::from_secs(15),
        &format!("{backend} {state}"),
        || (health_state(sup, port, backend)? == state).then_some(()),
    );
}

/// Every replica is health-checked on its own; one seen down is not
/// dialled (its connections go to the others without a failed attempt);
/// with every replica down a client is held, and the first replica back
/// serves it.
#[test]
fn replicas_are_health_checked_and_held_together() {
    let mut a = Replica::start("A", Speaks::TaggedEcho);
    let mut b = Replica::start("B", Speaks::TaggedEcho);
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[
            tcp_link("h-a", port, a.addr, LC),
            tcp_link("h-b", port, b.addr, LC),
        ]),
        &["--health-interval", "200ms", "--health-timeout", "500ms"],
    );
    wait_health(&sup, port, a.addr, "up");
    wait_health(&sup, port, b.addr, "up");

    a.stop();
    wait_health(&sup, port, a.addr, "down");
    let attempts = sup.count_log("trying replica");
    let got = tcp_load(port, 10);
    assert_eq!(count(&got, "B"), 10, "{got:?}");
    assert_eq!(
        sup.count_log("trying replica"),
        attempts,
        "a replica seen down is not dialled"
    );

    b.stop();
    wait_health(&sup, port, b.addr, "down");
    let client = thread::spawn(move || tcp_once(port, 0));
    wait_for(Duration::from_secs(10), "a held connection", || {
        let e = sup.endpoint_status(&format!("127.0.0.1:{port}"))?;
        (e["worker"]["hold"]["held"].as_u64()? >= 1).then_some(())
    });
    a.restart();
    let tag = client.join().unwrap().expect("the held client is served");
    assert_eq!(tag, "A");
    drop(sup);
}

/// A connection held while every replica is away follows an update that
/// changes the pool (a replica added): it is served by the new one at
/// once, tcp and http alike.
#[test]
fn a_held_connection_follows_a_new_pool() {
    for speaks in [Speaks::TaggedEcho, Speaks::Http] {
        let mut a = Replica::start("A", speaks);
        let mut b = Replica::start("B", speaks);
        a.stop();
        b.stop();
        let c = Replica::start("C", speaks);
        let port = free_port();
        let link = |name: &str, addr: SocketAddr| match speaks {
            Speaks::TaggedEcho => tcp_link(name, port, addr, LC),
            Speaks::Http => http_link(name, port, "/", addr, LC),
        };
        let sup = Supervisor::start(&graph(&[link("p-a", a.addr), link("p-b", b.addr)]), &[]);
        let client = thread::spawn(move || match speaks {
            Speaks::TaggedEcho => tcp_once(port, 0).expect("held tcp client served"),
            Speaks::Http => {
                let (got, _) = http_load(port, "/x", 1);
                got.into_keys().next().unwrap()
            }
        });
        wait_for(Duration::from_secs(10), "a held connection", || {
            let e = sup.endpoint_status(&format!("127.0.0.1:{port}"))?;
            (e["worker"]["hold"]["held"].as_u64()? >= 1).then_some(())
        });
        let applied = sup.count_log("applied update");
        sup.reload(&graph(&[
            link("p-a", a.addr),
            link("p-b", b.addr),
            link("p-c", c.addr),
        ]));
        sup.wait_log("applied update", applied + 1);
        assert_eq!(client.join().unwrap(), "C");
        drop(sup);
    }
}
