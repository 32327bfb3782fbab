//! tcp links across namespaces: a consumer with its own network namespace,
//! a provider whose unix socket lives in a private mount namespace, and an
//! IPAM-like provider behind a veth pair. Root only.

use pvx_tests::*;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[test]
fn consumer_netns_listener_answers_inside_not_on_host() {
    if !require_root("consumer_netns_listener_answers_inside_not_on_host") {
        return;
    }
    let backend = echo_server();
    let mut ns = Netns::new("c");
    let consumer = ns.holder();
    let port = free_port();
    let g = graph(&[link(
        "tcp",
        "inns",
        consumer,
        &format!("127.0.0.1:{port}"),
        &backend.to_string(),
        0,
    )]);
    let sup = Supervisor::start(&g, &[]);
    let w = sup.worker_pid("pvx-worker-tcp");
    // The worker itself runs in the host namespace; only its listener is inside.
    let out = ns.run(
        &["socat", "-t", "5", "-", &format!("TCP:127.0.0.1:{port}")],
        b"ping from inside\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ping from inside\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    );
    assert!(host.is_err(), "the listener must not exist on the host");
    let net = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(net(w), net(std::process::id()));
    drop(sup);
}

#[test]
fn unix_backend_inside_provider_mount_namespace() {
    if !require_root("unix_backend_inside_provider_mount_namespace") {
        return;
    }
    let dir = std::env::temp_dir().join(unique("prov"));
    let inner = format!("{}/echo.sock", dir.display());
    let prov = MountNsProc::start(
        &dir,
        &format!("exec socat UNIX-LISTEN:{inner},fork EXEC:cat"),
    );
    let seen = prov.host_path(&inner);
    wait_for(Duration::from_secs(5), "provider socket", || {
        seen.exists().then_some(())
    });
    assert!(
        !std::path::Path::new(&inner).exists(),
        "the provider's socket must be private to its namespace"
    );
    let port = free_port();
    let g = graph(&[link(
        "tcp",
        "unixprov",
        0,
        &format!("127.0.0.1:{port}"),
        &inner,
        prov.pid(),
    )]);
    let sup = Supervisor::start(&g, &[]);
    sup.worker_pid("pvx-worker-tcp");
    let data = pattern(256 * 1024, 3);
    let got = roundtrip(SocketAddr::from(([127, 0, 0, 1], port)), &data).unwrap();
    assert!(
        got == data,
        "echo through /proc/<pid>/root differs ({} vs {} bytes)",
        got.len(),
        data.len()
    );
}

#[test]
fn ipam_provider_behind_veth() {
    if !require_root("ipam_provider_behind_veth") {
        return;
    }
    let mut ns = Netns::new("p");
    let (_host_ip, ns_ip) = ns.veth_auto();
    let bport = 7000;
    ns.spawn(&[
        "socat",
        &format!("TCP-LISTEN:{bport},bind={ns_ip},fork,reuseaddr"),
        "EXEC:cat",
    ]);
    let backend = format!("{ns_ip}:{bport}");
    wait_for(Duration::from_secs(5), "backend in netns", || {
        TcpStream::connect_timeout(&backend.parse().unwrap(), Duration::from_millis(200)).ok()
    });
    let port = free_port();
    let g = graph(&[link(
        "tcp",
        "ipam",
        0,
        &format!("127.0.0.1:{port}"),
        &backend,
        4242,
    )]);
    let sup = Supervisor::start(&g, &[]);
    sup.worker_pid("pvx-worker-tcp");
    let data = pattern(1024 * 1024, 5);
    let got = roundtrip(SocketAddr::from(([127, 0, 0, 1], port)), &data).unwrap();
    assert!(
        got == data,
        "echo across the veth differs ({} vs {} bytes)",
        got.len(),
        data.len()
    );
}
