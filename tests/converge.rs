//! The supervisor converges on its own (BEHAVIOUR §4): an endpoint whose
//! listener cannot be made now (port still busy, consumer namespace or
//! address not there yet) stays pending and is retried on the backoff with
//! no graph change or SIGHUP; `--backoff-policy` decides what happens after
//! `--max-retries`; an update a worker does not answer is sent again, and a
//! worker that keeps not answering is replaced.

use pvx_tests::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

fn tcp_link(name: &str, consumer_pid: u32, listen: &str, backend: SocketAddr) -> String {
    link("tcp", name, consumer_pid, listen, &backend.to_string(), 0)
}

fn served(addr: SocketAddr) -> bool {
    roundtrip(addr, b"ping").is_ok_and(|b| b == b"ping")
}

fn wait_served(addr: SocketAddr, within: Duration) {
    wait_for(within, &format!("{addr} served"), || {
        served(addr).then_some(())
    });
}

fn status_text(sup: &Supervisor) -> String {
    let out = Command::new(bin_dir().join("pv-xconnect"))
        .args(["status", "--status-socket"])
        .arg(&sup.status_socket)
        .output()
        .expect("pv-xconnect status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of an unlabelled sample, or of the first sample of `name`.
fn metric(sup: &Supervisor, name: &str) -> Option<u64> {
    let (_, body) = sup.http_status("/metrics");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Wait until the endpoint at `addr` reports worker state `state`.
fn wait_state(sup: &Supervisor, addr: &str, state: &str) -> serde_json::Value {
    wait_for(
        Duration::from_secs(20),
        &format!("{addr} in state {state}"),
        || {
            sup.endpoint_status(addr)
                .filter(|e| e["worker"]["state"] == state)
        },
    )
}

#[test]
fn a_port_busy_for_two_seconds_becomes_an_endpoint_without_sighup() {
    let echo = echo_server();
    // Another process (here: the test) still holds the port, as one that
    // is exiting would.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let sup = Supervisor::start(&graph(&[tcp_link("busy", 0, &addr.to_string(), echo)]), &[]);
    let e = wait_state(&sup, &addr.to_string(), "pending");
    let p = &e["pending"];
    assert!(p["reason"].as_str().unwrap().contains("EADDRINUSE"), "{e}");
    assert!(p["next_try_ms"].is_u64(), "{e}");
    assert!(e["worker"]["pid"].is_null(), "{e}");
    assert!(sup.status()["refused"].as_array().unwrap().is_empty());
    let text = status_text(&sup);
    assert!(
        text.contains("pending (")
            && text.contains("  pending: cannot listen:")
            && text.contains("next try in"),
        "{text}"
    );
    assert_eq!(metric(&sup, "pvx_pending_endpoints"), Some(1));

    thread::sleep(Duration::from_secs(2));
    drop(holder);
    wait_served(addr, Duration::from_secs(20));
    // By itself: the graph was applied once, no SIGHUP, no change.
    assert_eq!(sup.count_log("graph applied"), 1);
    let e = sup.endpoint_status(&addr.to_string()).unwrap();
    assert!(e.get("pending").is_none(), "{e}");
    assert!(e["retries"].as_u64().unwrap() >= 1, "{e}");
    assert_eq!(metric(&sup, "pvx_pending_endpoints"), Some(0));
    assert!(metric(&sup, "pvx_endpoint_retries_total").unwrap() >= 1);
}

#[test]
fn a_consumer_whose_namespace_appears_three_seconds_later_gets_its_listener() {
    if !require_root("a_consumer_whose_namespace_appears_three_seconds_later_gets_its_listener") {
        return;
    }
    let echo = echo_server();
    let mut ns = Netns::new("late");
    let (_host, inside) = ns.veth_auto();
    // The graph names the consumer's pid before that process (and so its
    // /proc/<pid>/ns/net) exists.
    let pid = free_pid();
    let port = free_port();
    let listen = format!("{inside}:{port}");
    let sup = Supervisor::start(&graph(&[tcp_link("late", pid, &listen, echo)]), &[]);
    let e = wait_state(&sup, &listen, "pending");
    assert!(
        e["pending"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("/proc/{pid}/ns/net")),
        "{e}"
    );
    thread::sleep(Duration::from_secs(3));
    ns.spawn_as(pid, &["sleep", "3600"]);
    wait_served(listen.parse().unwrap(), Duration::from_secs(20));
    assert_eq!(sup.count_log("graph applied"), 1);
    drop(sup);
}

#[test]
fn an_address_added_to_an_interface_after_start_is_served() {
    if !require_root("an_address_added_to_an_interface_after_start_is_served") {
        return;
    }
    let echo = echo_server();
    let mut ns = Netns::new("fb");
    let (_host, inside) = ns.veth_auto();
    let consumer = ns.holder();
    // The consumer's address is not there yet (DHCP, Wi-Fi, a bridge
    // brought up later).
    ns.del_addr(&inside);
    let port = free_port();
    let listen = format!("{inside}:{port}");
    let sup = Supervisor::start(&graph(&[tcp_link("fb", consumer, &listen, echo)]), &[]);
    // IP_FREEBIND: the listener is made at once, the worker serves it.
    sup.worker_pid("pvx-worker-tcp");
    let e = wait_state(&sup, &listen, "running");
    assert!(e.get("pending").is_none(), "{e}");
    ns.add_addr(&inside);
    wait_served(listen.parse().unwrap(), Duration::from_secs(20));
    assert_eq!(e["retries"], 0, "{e}");
    drop(sup);
}

/// Kill the endpoint's worker until the policy gives up (`max` retries).
fn crash_until_given_up(sup: &Supervisor, addr: &str, max: u32) {
    for _ in 0..=max {
        let w = sup.worker_pid("pvx-worker-tcp");
        kill9(w);
        wait_for(Duration::from_secs(20), "worker gone and counted", || {
            let e = sup.endpoint_status(addr)?;
            (e["worker"]["pid"] != w && is_dead(w)).then_some(())
        });
    }
    wait_state(sup, addr, "failed");
}

#[test]
fn backoff_policy_never_leaves_a_crashing_endpoint_failed() {
    let echo = echo_server();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sup = Supervisor::start(
        &graph(&[tcp_link("never", 0, &addr, echo)]),
        &["--max-retries", "2", "--backoff-policy", "never"],
    );
    crash_until_given_up(&sup, &addr, 2);
    sup.wait_log("giving up until the graph is applied again", 1);
    let e = sup.endpoint_status(&addr).unwrap();
    assert!(e["worker"]["restart_in_ms"].is_null(), "{e}");
    // Well past when a 2 s policy would have started over: still failed.
    thread::sleep(Duration::from_secs(3));
    let e = sup.endpoint_status(&addr).unwrap();
    assert_eq!(e["worker"]["state"], "failed", "{e}");
    // (A namespace helper of a retry may be forked just now; no worker.)
    let w = sup.workers();
    assert!(w.iter().all(|(_, a)| !a.contains("pvx-worker")), "{w:?}");
    // A graph applied again is a new chance.
    sup.reload(&graph(&[tcp_link("never", 0, &addr, echo)]));
    wait_served(addr.parse().unwrap(), Duration::from_secs(20));
}

#[test]
fn backoff_policy_duration_starts_a_crashing_endpoint_over() {
    let echo = echo_server();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sup = Supervisor::start(
        &graph(&[tcp_link("again", 0, &addr, echo)]),
        &["--max-retries", "2", "--backoff-policy", "2s"],
    );
    crash_until_given_up(&sup, &addr, 2);
    let e = sup.endpoint_status(&addr).unwrap();
    assert!(
        e["worker"]["restart_in_ms"].as_u64().unwrap() <= 2000,
        "{e}"
    );
    // No SIGHUP, no graph change: it starts over with a fresh count.
    let e = wait_state(&sup, &addr, "running");
    assert_eq!(e["worker"]["failures"], 0, "{e}");
    wait_served(addr.parse().unwrap(), Duration::from_secs(20));
    assert_eq!(sup.count_log("graph applied"), 1);
}

#[test]
fn backoff_policy_paces_a_listener_that_keeps_failing() {
    let echo = echo_server();
    for policy in ["never", "2s"] {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let sup = Supervisor::start(
            &graph(&[tcp_link("held", 0, &addr.to_string(), echo)]),
            &["--max-retries", "1", "--backoff-policy", policy],
        );
        let e = wait_state(&sup, &addr.to_string(), "failed");
        assert_eq!(e["pending"]["given_up"], true, "{e}");
        drop(holder);
        if policy == "never" {
            assert!(e["pending"]["next_try_ms"].is_null(), "{e}");
            thread::sleep(Duration::from_secs(3));
            assert!(TcpStream::connect(addr).is_err(), "given up, yet listening");
            let e = sup.endpoint_status(&addr.to_string()).unwrap();
            assert_eq!(e["worker"]["state"], "failed", "{e}");
        } else {
            assert!(e["pending"]["next_try_ms"].as_u64().unwrap() <= 2000, "{e}");
            wait_served(addr, Duration::from_secs(20));
        }
    }
}

#[test]
fn an_update_a_stopped_worker_never_answers_is_resent_then_the_worker_replaced() {
    let first = tagged_echo_server("first");
    let second = tagged_echo_server("second");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sup = Supervisor::start(&graph(&[tcp_link("upd", 0, &addr, first)]), &[]);
    wait_state(&sup, &addr, "running");
    let w = sup.worker_pid("pvx-worker-tcp");
    // A wedged worker: alive, its socket open, answering nothing.
    assert!(Command::new("kill")
        .args(["-STOP", &w.to_string()])
        .status()
        .unwrap()
        .success());
    sup.reload(&graph(&[tcp_link("upd", 0, &addr, second)]));
    sup.wait_log("routes sent again", 1);
    wait_for(
        Duration::from_secs(30),
        "the wedged worker replaced",
        || is_dead(w).then_some(()),
    );
    sup.wait_log("did not answer its update", 1);
    let e = wait_state(&sup, &addr, "running");
    assert!(e["worker"]["update_resends"].as_u64().unwrap() >= 1, "{e}");
    // Its successor serves the new configuration.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_line(&mut s).unwrap(), "second");
}
