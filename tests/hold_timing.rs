//! Issue 18, item 1: a held dial never wedges its worker. Every held-dial
//! path (the backend marked down by the health checks; the backend absent:
//! its port refusing, its unix socket missing), with the hold shorter and
//! longer than the connect timeout, on tcp, http and unix links: the held
//! client is closed (tcp, unix) or answered `502` (http) when its hold
//! ends, the worker keeps serving (a live route of the same http worker
//! answers, a new client is taken and held, its counters reach the
//! supervisor), it is the same worker throughout (no crash, no restart),
//! and it stays cheap: its CPU time while the holds run out is a small
//! part of the time that passed (the wedge was 100 % of a core).
//!
//! No wall-clock duration is asserted (a loaded machine stretches them);
//! only outcomes, and CPU ticks against the elapsed ticks, with a wide
//! margin.

use pvx_tests::http::backend;
use pvx_tests::http::client::{closed, get, read_resp};
use pvx_tests::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long a client waits for its end before the test calls it wedged:
/// well past any hold here (2 s at most), short enough that a wedged
/// worker fails the test soon.
const PATIENCE: Duration = Duration::from_secs(15);

/// Clock ticks per second of /proc/PID/stat's utime and stime.
fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The command may hold spaces and parentheses: fields count from the
    // last ')'. utime and stime are fields 14 and 15 (the 12th and 13th
    // after it).
    let rest = &stat[stat.rfind(')').expect("stat has the command") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let n = |i: usize| f[i].parse::<u64>().expect("utime/stime");
    n(11) + n(12)
}

/// The hold counters of the endpoint at `address`.
fn hold_of(sup: &Supervisor, address: &str) -> Option<serde_json::Value> {
    Some(sup.endpoint_status(address)?["worker"]["hold"].clone())
}

/// Whether the health checks marked `backend` of the endpoint at
/// `address` down.
fn is_down(sup: &Supervisor, address: &str, backend: &str) -> bool {
    sup.endpoint_status(address)
        .and_then(|e| e["backends"].as_array().cloned())
        .is_some_and(|bs| {
            bs.iter()
                .any(|b| b["backend"] == backend && b["state"] == "down")
        })
}

/// One run: `hold` and `connect` are the flags' values; `health`: the
/// dead backends are marked down by checks first (else no checks: every
/// dial meets the refusal or the missing socket itself).
fn held_dials_end_and_the_worker_serves(hold: &str, connect: &str, health: bool) {
    let (tcp_port, http_port, dead_port) = (free_port(), free_port(), free_port());
    let live = backend::tcp("127.0.0.1:0");
    let dir = TempDir::new("hold-timing");
    let missing = dir.path().join("missing.sock");
    let front = dir.path().join("front.sock");
    let dead = format!("127.0.0.1:{dead_port}");
    let http_route = |name: &str, prefix: &str, socket: &str| {
        link(
            "http",
            name,
            0,
            &format!("127.0.0.1:{http_port}{prefix}"),
            socket,
            0,
        )
    };
    let g = graph(&[
        link(
            "tcp",
            "timing-tcp",
            0,
            &format!("127.0.0.1:{tcp_port}"),
            &dead,
            0,
        ),
        http_route("timing-dead", "/dead", &dead),
        http_route("timing-missing", "/missing", &missing.display().to_string()),
        http_route("timing-live", "/live", &live.socket()),
        link(
            "unix",
            "timing-unix",
            0,
            &front.display().to_string(),
            &missing.display().to_string(),
            0,
        ),
    ]);
    let interval = if health { "100ms" } else { "0" };
    let sup = Supervisor::start(
        &g,
        &[
            "--hold-timeout",
            hold,
            "--connect-timeout",
            connect,
            "--health-interval",
            interval,
            "--health-timeout",
            "100ms",
        ],
    );
    let tcp = format!("127.0.0.1:{tcp_port}");
    let http = format!("127.0.0.1:{http_port}");
    let unix = front.display().to_string();
    let pids = [
        sup.worker_pid("pvx-worker-tcp"),
        sup.worker_pid("pvx-worker-http"),
        sup.worker_pid("pvx-worker-unix"),
    ];
    for p in pids {
        wait_worker_started(p);
    }
    if health {
        let missing_b = format!("unix:{}", missing.display());
        for (address, b) in [
            (&tcp, &dead),
            (&http, &dead),
            (&http, &missing_b),
            (&unix, &missing_b),
        ] {
            wait_for(
                Duration::from_secs(15),
                &format!("{b} down at {address}"),
                || is_down(&sup, address, b).then_some(()),
            );
        }
    }
    let cpu0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let t0 = Instant::now();

    // One held client on every path at once: each sends a byte (tcp,
    // unix) or its request (http), then waits for its end.
    let mut tcp_client = TcpStream::connect(("127.0.0.1", tcp_port)).expect("tcp connect");
    tcp_client.write_all(b"x").expect("tcp send");
    let mut unix_client = UnixStream::connect(&front).expect("unix connect");
    unix_client.write_all(b"x").expect("unix send");
    let http_addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    let http_client = |path: &'static str| {
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(http_addr).expect("http connect");
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s.write_all(&get(path)).expect("http send");
            read_resp(&mut s, &mut Vec::new(), false).map(|r| r.status)
        })
    };
    let (to_dead, to_missing) = (http_client("/dead"), http_client("/missing"));

    assert!(
        closed(&mut tcp_client, PATIENCE),
        "tcp: the held client was not closed at its hold's end"
    );
    unix_client.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    let unix_end = std::io::Read::read_to_end(&mut unix_client, &mut rest);
    let unix_closed = match &unix_end {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        unix_closed && rest.is_empty(),
        "unix: the held client was not closed at its hold's end: {unix_end:?}, {rest:?}"
    );
    for (what, h) in [("/dead", to_dead), ("/missing", to_missing)] {
        let status = h.join().expect("http client thread");
        assert_eq!(status, Some(502), "http {what}: the held request's answer");
    }

    // The workers serve on: the http worker's live route answers, and a
    // new tcp client is taken and held (its counters reach the status).
    let (r, _) = pvx_tests::http::client::exchange(http_addr, &get("/live"));
    assert_eq!(r.status, 200, "http /live after the holds: {}", r.head);
    let again = TcpStream::connect(("127.0.0.1", tcp_port)).expect("tcp connect again");
    wait_for(
        Duration::from_secs(10),
        "the second tcp client held",
        || (hold_of(&sup, &tcp)?["held"].as_u64()? == 1).then_some(()),
    );
    drop(again);
    for (address, failed) in [(&tcp, 1), (&http, 2), (&unix, 1)] {
        wait_for(
            Duration::from_secs(10),
            &format!("{address}: holds counted"),
            || {
                let h = hold_of(&sup, address)?;
                (h["held"].as_u64()? == 0 && h["failed"].as_u64()? >= failed).then_some(())
            },
        );
    }
    // Same workers throughout: none crashed (a debug build's assertion)
    // nor was restarted.
    for (p, name) in pids.iter().zip(["tcp", "http", "unix"]) {
        assert_eq!(
            sup.worker_pid(&format!("pvx-worker-{name}")),
            *p,
            "{name} worker restarted"
        );
        assert!(!is_dead(*p), "{name} worker gone");
    }
    // CPU: a small part of the time that passed (the wedge spun a whole
    // core from the hold's end on). Generous: half, plus a second.
    let elapsed = t0.elapsed().as_millis() as u64 * ticks_per_sec() / 1000;
    for ((p, c0), name) in pids.iter().zip(&cpu0).zip(["tcp", "http", "unix"]) {
        let used = cpu_ticks(*p) - c0;
        assert!(
            used < elapsed / 2 + ticks_per_sec(),
            "{name} worker used {used} CPU ticks in {elapsed} ticks (hold {hold}, connect {connect}, health {health})"
        );
    }
}

#[test]
fn down_backend_hold_shorter_than_connect() {
    held_dials_end_and_the_worker_serves("1s", "10s", true);
}

#[test]
fn down_backend_hold_longer_than_connect() {
    held_dials_end_and_the_worker_serves("2s", "500ms", true);
}

#[test]
fn absent_backend_hold_shorter_than_connect() {
    held_dials_end_and_the_worker_serves("1s", "10s", false);
}

#[test]
fn absent_backend_hold_longer_than_connect() {
    held_dials_end_and_the_worker_serves("2s", "500ms", false);
}
