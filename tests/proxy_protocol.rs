//! The PROXY protocol on tcp links (issue 18, items 2 and 6): the client
//! address a backend is told is the one `accept4` returned, never the
//! protocol's "unknown" form because the client left early; a client gone
//! before its backend connected is not forwarded at all; and health checks
//! of such a backend open with a well-formed header (v2 LOCAL, v1
//! `PROXY UNKNOWN`), as a backend that requires one (nginx `listen ...
//! proxy_protocol`) expects of every connection.

use pvx_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A backend that records what each connection sent, until its EOF (or
/// reset: what was read before stays), in accept order of completion.
struct Recorder {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections accepted so far (their readers may still run).
    accepted: Arc<Mutex<usize>>,
    addr: Addr,
}

#[derive(Clone)]
enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The marker the test sends itself, straight to the backend: accepted
/// after every connection queued before it (the accept queue is FIFO).
const MARK: &[u8] = b"MARK\n";

fn read_all(mut c: impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    // A reset after the bytes still leaves them in `got`.
    let _ = c.read_to_end(&mut got);
    got
}

impl Recorder {
    fn tcp() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = Addr::Tcp(l.local_addr().expect("backend address"));
        Recorder::serve(addr, move || {
            let (c, _) = l.accept().ok()?;
            c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
            Some(Box::new(c) as Box<dyn Read + Send>)
        })
    }

    fn unix(path: &Path) -> Recorder {
        let l = UnixListener::bind(path).expect("bind unix backend");
        Recorder::serve(Addr::Unix(path.to_path_buf()), move || {
            let (c, _) = l.accept().ok()?;
            c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
            Some(Box::new(c) as Box<dyn Read + Send>)
        })
    }

    fn serve(
        addr: Addr,
        mut accept: impl FnMut() -> Option<Box<dyn Read + Send>> + Send + 'static,
    ) -> Recorder {
        let got = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0usize));
        let (g, a) = (got.clone(), accepted.clone());
        thread::spawn(move || {
            while let Some(c) = accept() {
                *a.lock().unwrap() += 1;
                let g = g.clone();
                thread::spawn(move || {
                    let bytes = read_all(c);
                    g.lock().unwrap().push(bytes);
                });
            }
        });
        Recorder {
            got,
            accepted,
            addr,
        }
    }

    fn socket(&self) -> String {
        match &self.addr {
            Addr::Tcp(a) => a.to_string(),
            Addr::Unix(p) => p.display().to_string(),
        }
    }

    /// Every connection made to the backend so far, once each has ended.
    fn settle(&self) -> Vec<Vec<u8>> {
        match &self.addr {
            Addr::Tcp(a) => {
                let mut s = TcpStream::connect(a).expect("marker connection");
                s.write_all(MARK).expect("marker");
            }
            Addr::Unix(p) => {
                let mut s = std::os::unix::net::UnixStream::connect(p).expect("marker connection");
                s.write_all(MARK).expect("marker");
            }
        }
        wait_for(
            Duration::from_secs(30),
            "every backend connection read",
            || {
                let got = self.got.lock().unwrap();
                let n = *self.accepted.lock().unwrap();
                (got.iter().any(|g| g == MARK) && got.len() == n).then(|| got.clone())
            },
        )
        .into_iter()
        .filter(|g| g != MARK)
        .collect()
    }
}

fn tcp_pp_graph(port: u16, socket: &str, v: &str) -> String {
    format!(
        r#"[{{"type":"tcp","name":"pp","consumer":"EXTERNAL","target":"127.0.0.1:{port}","socket":"{socket}","proxy_protocol":"{v}"}}]"#
    )
}

/// A parsed PROXY header: Some(source port) for a TCP4 one, None for the
/// "unknown" forms (v1 UNKNOWN, v2 LOCAL or UNSPEC); and its length.
fn header(v: &str, got: &[u8]) -> (Option<u16>, usize) {
    match v {
        "v1" => {
            let end = got
                .windows(2)
                .position(|w| w == b"\r\n")
                .unwrap_or_else(|| panic!("no v1 header in {:?}", String::from_utf8_lossy(got)));
            let line = std::str::from_utf8(&got[..end]).expect("a text header");
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["PROXY", "UNKNOWN", ..] => (None, end + 2),
                ["PROXY", "TCP4", "127.0.0.1", "127.0.0.1", sport, _] => {
                    (Some(sport.parse().expect("source port")), end + 2)
                }
                _ => panic!("not a v1 header: {line:?}"),
            }
        }
        _ => {
            assert!(got.len() >= 16, "short v2 header: {got:?}");
            assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
            let len = 16 + usize::from(u16::from_be_bytes([got[14], got[15]]));
            match (got[12], got[13]) {
                (0x21, 0x11) => {
                    assert_eq!(&got[16..24], &[127, 0, 0, 1, 127, 0, 0, 1]);
                    (Some(u16::from_be_bytes([got[24], got[25]])), len)
                }
                (0x20, _) | (0x21, 0x00) => (None, len),
                other => panic!("unexpected v2 command/family {other:?}"),
            }
        }
    }
}

/// `n` clients each connect, send a request and reset. What reaches the
/// backend is, per connection, nothing at all (the client was gone before
/// the backend connected) or a header naming that client's own address,
/// followed by its request or nothing; never the "unknown" form.
fn resetting_clients_keep_their_address(v: &str, backend: Recorder, n: usize) {
    let port = free_port();
    // No checks: every backend connection is a client's.
    let sup = Supervisor::start(
        &tcp_pp_graph(port, &backend.socket(), v),
        &["--health-interval", "0"],
    );
    sup.worker_pid("pvx-worker-tcp");
    let mut ports = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the link");
        ports.push(s.local_addr().expect("client address").port());
        s.write_all(format!("request {i}\n").as_bytes())
            .expect("request");
        close_with_reset(s);
    }
    let listen = format!("127.0.0.1:{port}");
    wait_for(
        Duration::from_secs(30),
        "every client connection closed",
        || {
            let e = sup.endpoint_status(&listen)?;
            (e["worker"]["active"] == 0 && e["worker"]["total"].as_u64()? >= n as u64).then_some(())
        },
    );
    let got = backend.settle();
    let (mut forwarded, mut dropped) = (0, 0);
    for g in &got {
        if g.is_empty() {
            dropped += 1;
            continue;
        }
        let (sport, len) = header(v, g);
        let Some(sport) = sport else {
            panic!(
                "{v}: a client reached the backend without its address: {:?}",
                String::from_utf8_lossy(g)
            );
        };
        let rest = &g[len..];
        if rest.is_empty() {
            assert!(ports.contains(&sport), "{v}: no client had port {sport}");
            continue;
        }
        let text = String::from_utf8_lossy(rest);
        let i: usize = text
            .strip_prefix("request ")
            .and_then(|t| t.strip_suffix('\n'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{v}: not one request: {text:?}"));
        assert_eq!(
            ports[i], sport,
            "{v}: request {i} under another client's address"
        );
        forwarded += 1;
    }
    eprintln!(
        "{v}: {} backend connection(s): {forwarded} forwarded with their address, {dropped} closed unused",
        got.len()
    );
    assert!(sup.stop().success());
}

#[test]
fn v1_clients_that_reset_are_named_by_their_accept_address_or_not_forwarded() {
    resetting_clients_keep_their_address("v1", Recorder::tcp(), 200);
}

#[test]
fn v2_clients_that_reset_are_named_by_their_accept_address_or_not_forwarded() {
    resetting_clients_keep_their_address("v2", Recorder::tcp(), 50);
}

/// A unix backend connects at once, before the client's reset is seen:
/// the request goes, under the address accept4 gave.
#[test]
fn clients_that_reset_keep_their_address_to_a_unix_backend() {
    let dir = TempDir::new("pp-unix");
    let backend = Recorder::unix(&dir.path().join("b.sock"));
    resetting_clients_keep_their_address("v1", backend, 100);
}

/// A link with `proxy_protocol` and health checks on, and no client: every
/// connection the backend gets is a check, and each is exactly the header
/// of a connection of the proxy's own (v2 LOCAL, v1 `PROXY UNKNOWN`), then
/// its end: what a backend that requires a header takes as well-formed.
fn checks_open_with_a_local_header(v: &str, backend: Recorder) {
    let port = free_port();
    let sup = Supervisor::start(
        &tcp_pp_graph(port, &backend.socket(), v),
        &["--health-interval", "100ms"],
    );
    sup.worker_pid("pvx-worker-tcp");
    wait_for(Duration::from_secs(20), "three health checks", || {
        (backend.got.lock().unwrap().len() >= 3).then_some(())
    });
    assert!(sup.stop().success());
    let want: &[u8] = match v {
        "v1" => b"PROXY UNKNOWN\r\n",
        _ => b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    };
    let got = backend.settle();
    assert!(got.len() >= 3, "{v}: {} check(s)", got.len());
    for g in &got {
        assert_eq!(
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(want),
            "{v}: a check's connection"
        );
        // The parser of the other tests agrees: the "unknown" form.
        assert_eq!(header(v, g), (None, want.len()));
    }
}

#[test]
fn v1_health_checks_send_proxy_unknown_first() {
    checks_open_with_a_local_header("v1", Recorder::tcp());
}

#[test]
fn v2_health_checks_send_the_local_command_first() {
    checks_open_with_a_local_header("v2", Recorder::tcp());
}

/// A unix backend's connect completes at once (the check's other path).
#[test]
fn health_checks_of_a_unix_backend_send_the_header_too() {
    let dir = TempDir::new("pp-check-unix");
    checks_open_with_a_local_header("v2", Recorder::unix(&dir.path().join("b.sock")));
    let dir = TempDir::new("pp-check-unix1");
    checks_open_with_a_local_header("v1", Recorder::unix(&dir.path().join("b.sock")));
}
