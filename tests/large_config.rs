//! Configurations larger than one control datagram (issue 8, item 5): an
//! endpoint with hundreds of routes, a link with a huge name and a live
//! update that grows past 64 KiB all reach the worker (the body travels in
//! a sealed memfd, `proto::ctl`), and `status` shows routes only once the
//! worker has acknowledged them.

use pvx_tests::http::backend;
use pvx_tests::http::client::exchange;
use pvx_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

/// An http link routing `/r<i>` on `port` to `socket`; the padded role
/// makes each route ~250 bytes of worker configuration.
fn route(i: usize, port: u16, socket: &str) -> String {
    format!(
        r#"{{"type":"http","name":"route-{i}","consumer":"EXTERNAL","consumer_pid":0,"provider":"provider-{i}","provider_pid":0,"role":"{}","target":"127.0.0.1:{port}/r{i}","socket":"{socket}"}}"#,
        "r".repeat(120)
    )
}

fn routes(n: usize, port: u16, socket: &str) -> Vec<String> {
    (0..n).map(|i| route(i, port, socket)).collect()
}

/// `GET /r<i>/x` through the proxy; the backend echoes the stripped path.
fn answers(port: u16, i: usize) -> bool {
    let (r, _s) = exchange(
        SocketAddr::from(([127, 0, 0, 1], port)),
        format!("GET /r{i}/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    r.status == 200
}

fn route_count(sup: &Supervisor, port: u16) -> Option<usize> {
    let e = sup.endpoint_status(&format!("127.0.0.1:{port}"))?;
    e["routes"].as_array().map(|a| a.len())
}

#[test]
fn http_endpoint_with_400_routes_answers_on_every_route() {
    let b = backend::tcp("127.0.0.1:0");
    let port = free_port();
    let g = graph(&routes(400, port, &b.socket()));
    assert!(g.len() > 100_000, "config under test is {} bytes", g.len());
    let sup = Supervisor::start(&g, &[]);
    let pid = sup.worker_pid("pvx-worker-http");
    wait_for(Duration::from_secs(10), "init acked", || {
        let e = sup.endpoint_status(&format!("127.0.0.1:{port}"))?;
        (e["worker"]["state"] == "running").then_some(())
    });
    for i in [0, 1, 199, 200, 398, 399] {
        assert!(answers(port, i), "route /r{i} did not answer");
    }
    assert_eq!(route_count(&sup, port), Some(400));
    assert_eq!(sup.status()["refused"].as_array().map(|a| a.len()), Some(0));
    assert_eq!(sup.worker_pid("pvx-worker-http"), pid, "never respawned");
    assert_eq!(sup.count_log("restart #"), 0, "{}", sup.log_text());
}

#[test]
fn a_link_with_a_70_kb_name_is_served() {
    let backend = echo_server();
    let port = free_port();
    let name = "n".repeat(70_000);
    let g = graph(&[link(
        "tcp",
        &name,
        0,
        &format!("127.0.0.1:{port}"),
        &backend.to_string(),
        0,
    )]);
    let sup = Supervisor::start(&g, &[]);
    let pid = sup.worker_pid("pvx-worker-tcp");
    let got = wait_for(Duration::from_secs(10), "echo through the link", || {
        roundtrip(SocketAddr::from(([127, 0, 0, 1], port)), b"big name").ok()
    });
    assert_eq!(got, b"big name");
    let e = wait_for(Duration::from_secs(10), "worker running", || {
        let e = sup.endpoint_status(&format!("127.0.0.1:{port}"))?;
        (e["worker"]["state"] == "running").then_some(e)
    });
    assert_eq!(e["routes"][0]["name"].as_str().map(str::len), Some(70_000));
    assert_eq!(sup.worker_pid("pvx-worker-tcp"), pid, "never respawned");
}

#[test]
fn live_update_from_10_to_400_routes_reaches_the_worker() {
    let b = backend::tcp("127.0.0.1:0");
    let port = free_port();
    let sup = Supervisor::start(&graph(&routes(10, port, &b.socket())), &[]);
    let pid = sup.worker_pid("pvx-worker-http");
    assert!(answers(port, 9));
    wait_for(Duration::from_secs(10), "10 routes applied", || {
        (route_count(&sup, port)? == 10).then_some(())
    });
    sup.reload(&graph(&routes(400, port, &b.socket())));
    sup.wait_log("applied update", 1);
    for i in [0, 10, 200, 399] {
        assert!(
            answers(port, i),
            "route /r{i} did not answer after the update"
        );
    }
    assert_eq!(route_count(&sup, port), Some(400));
    assert_eq!(sup.worker_pid("pvx-worker-http"), pid, "same worker");
}

#[test]
fn a_graph_of_almost_4_mib_from_the_control_socket_reaches_the_worker() {
    let dir = TempDir::new("ctl4m");
    let sock = dir.path().join("pv-ctrl");
    let b = backend::tcp("127.0.0.1:0");
    let port = free_port();
    // 400 routes of ~10 kB each: just under the 4 MiB a graph may have;
    // the worker configuration (every route repeats the consumer, the
    // defaults) is larger still.
    let links: Vec<String> = (0..400)
        .map(|i| {
            format!(
                r#"{{"type":"http","name":"big-{i}","consumer":"EXTERNAL","role":"{}","target":"127.0.0.1:{port}/r{i}","socket":"{}"}}"#,
                "x".repeat(10_300),
                b.socket()
            )
        })
        .collect();
    let g = graph(&links);
    assert!(
        g.len() > 4_100_000 && g.len() <= 4 * 1024 * 1024,
        "{} bytes",
        g.len()
    );
    let _ctrl = FakeCtrl::start(&sock, &g);
    let sup = Supervisor::start_ctrl(&sock, &[]);
    let pid = sup.worker_pid("pvx-worker-http");
    wait_for(Duration::from_secs(20), "init acked", || {
        (route_count(&sup, port)? == 400).then_some(())
    });
    for i in [0, 200, 399] {
        assert!(answers(port, i), "route /r{i} did not answer");
    }
    assert_eq!(sup.worker_pid("pvx-worker-http"), pid, "never respawned");
}

#[test]
fn a_stalled_worker_gets_one_configuration_at_a_time_then_the_newest() {
    let b = backend::tcp("127.0.0.1:0");
    let port = free_port();
    let sup = Supervisor::start(&graph(&routes(10, port, &b.socket())), &[]);
    let pid = sup.worker_pid("pvx-worker-http");
    wait_for(Duration::from_secs(10), "10 routes applied", || {
        (route_count(&sup, port)? == 10).then_some(())
    });
    // A stopped worker reads nothing: every update sent now would wait in
    // its socket, each with its own blob. Only the first goes; the others
    // are folded into the newest, sent once the first is acknowledged.
    let stop = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    stop("-STOP");
    for n in [200, 300, 400] {
        sup.reload(&graph(&routes(n, port, &b.socket())));
    }
    let pushed = sup.count_log("routes pushed");
    stop("-CONT");
    assert_eq!(pushed, 1, "{}", sup.log_text());
    wait_for(Duration::from_secs(10), "400 routes applied", || {
        (route_count(&sup, port)? == 400).then_some(())
    });
    assert!(answers(port, 399));
    assert_eq!(sup.count_log("routes pushed"), 2, "{}", sup.log_text());
    assert_eq!(sup.worker_pid("pvx-worker-http"), pid, "same worker");
}
