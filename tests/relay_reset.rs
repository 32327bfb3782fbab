//! A reset in one direction must not lose the other (issue 8, item 2).
//!
//! The backend writes a response and closes with the client's upload
//! unread: over TCP the kernel then sends RST, over a unix socket the
//! worker's writes get EPIPE and its reads ECONNRESET once the queue is
//! empty. A client that keeps uploading and reads a little later must
//! still get every byte the backend wrote, then EOF — through the tcp
//! worker, the unix worker and an http WebSocket tunnel (the one duplex
//! relay of `runtime::duplex` serves all three).

use pvx_tests::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::{Duration, Instant};

const CLIENTS: usize = 20;
/// What the client uploads (never read by the backend), at most.
const UPLOAD: usize = 8 * 1024 * 1024;

fn ioctl_int(fd: RawFd, req: nix::libc::c_ulong) -> i32 {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD/SIOCOUTQ write one int.
    let r = unsafe { nix::libc::ioctl(fd, req as _, &mut n) };
    if r < 0 {
        -1
    } else {
        n
    }
}

/// Bytes waiting to be read on `fd`.
fn unread(fd: RawFd) -> i32 {
    ioctl_int(fd, nix::libc::FIONREAD)
}

/// Bytes written on `fd` that the peer's kernel has not taken yet
/// (TCP: not acknowledged; unix: not read).
fn outq(fd: RawFd) -> i32 {
    ioctl_int(fd, nix::libc::TIOCOUTQ)
}

/// The misbehaving backend's part on one connection: wait until the
/// upload filled every buffer on its way (what we have unread stops
/// growing: the relay then holds upload bytes it cannot pass on), write
/// `data`, wait until the worker's kernel has it all (`wait_acked`, tcp:
/// so our close loses nothing on our side; direct, every byte arrives),
/// then close with the upload unread.
fn write_then_close_unread<S: Write + AsRawFd>(mut c: S, data: &[u8], wait_acked: bool) {
    let fd = c.as_raw_fd();
    let until = Instant::now() + Duration::from_secs(10);
    let (mut last, mut same) = (0, 0);
    while same < 5 && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
        let n = unread(fd);
        same = if n > 0 && n == last { same + 1 } else { 0 };
        last = n;
    }
    if c.write_all(data).is_err() {
        return;
    }
    while wait_acked && outq(fd) > 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(2));
    }
    assert!(unread(fd) > 0, "the upload must be unread at close");
    drop(c); // unread data: RST (tcp) / ECONNRESET + EPIPE (unix)
}

fn tcp_backend(data: Vec<u8>, upgrade: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let data = data.clone();
            thread::spawn(move || {
                let mut c = c;
                let mut rest = &data[..];
                if upgrade {
                    // Read the request head; answer 101 with the first
                    // bytes of the stream in the same write, so the
                    // worker holds some in user space when the tunnel starts.
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if c.read(&mut b).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
                    out.extend_from_slice(&rest[..1000]);
                    rest = &rest[1000..];
                    if c.write_all(&out).is_err() {
                        return;
                    }
                }
                write_then_close_unread(c, rest, true);
            });
        }
    });
    addr
}

/// The client: keep uploading from a thread, read only after a short
/// delay (so the relay holds the response when the reset comes), then to
/// EOF or error. Returns what it read.
fn client<S: Read + Write + Send + 'static>(mut r: S, mut w: S, shut: fn(&S)) -> Vec<u8> {
    let up = thread::spawn(move || {
        let chunk = vec![b'u'; 16 * 1024];
        let mut sent = 0;
        while sent < UPLOAD {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => return,
            }
        }
        shut(&w);
    });
    thread::sleep(Duration::from_millis(200));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    drop(r);
    let _ = up.join();
    got
}

/// A client with a small receive buffer (as on a device): what it has not
/// read yet stays in the relay, not in its own kernel.
fn small_client(addr: SocketAddr) -> TcpStream {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    setsockopt(&fd, sockopt::RcvBuf, &16384).expect("SO_RCVBUF");
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).expect("connect to the worker");
    TcpStream::from(fd)
}

fn tcp_client(addr: SocketAddr, upgrade_path: Option<&str>) -> Vec<u8> {
    let mut s = small_client(addr);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    if let Some(path) = upgrade_path {
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).expect("101 head"), 1, "EOF in the 101 head");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    }
    let w = s.try_clone().unwrap();
    client(s, w, |w: &TcpStream| {
        let _ = w.shutdown(Shutdown::Write);
    })
}

/// Run the clients at once; each must get all of `data`.
fn all_clients_get_everything(data: &[u8], run: impl Fn() -> Vec<u8> + Send + Sync + Copy) {
    let got: Vec<Vec<u8>> = thread::scope(|sc| {
        let hs: Vec<_> = (0..CLIENTS).map(|_| sc.spawn(run)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let short: Vec<usize> = got
        .iter()
        .filter(|g| g.as_slice() != data)
        .map(|g| g.len())
        .collect();
    assert!(
        short.is_empty(),
        "{} of {CLIENTS} clients lost bytes (got {short:?} of {})",
        short.len(),
        data.len()
    );
}

#[test]
fn tcp_backend_reset_loses_no_byte_of_the_response() {
    let data = pattern(128_000, 81);
    let backend = tcp_backend(data.clone(), false);
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[link(
            "tcp",
            "rst",
            0,
            &format!("127.0.0.1:{port}"),
            &backend.to_string(),
            0,
        )]),
        &[],
    );
    sup.worker_pid("pvx-worker-tcp");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    all_clients_get_everything(&data, || tcp_client(addr, None));
    // The same backend reached directly: the baseline the relay must match.
    all_clients_get_everything(&data, || tcp_client(backend, None));
}

#[test]
fn unix_backend_close_with_unread_upload_loses_no_byte() {
    // Larger than what the worker's socket buffers hold at once, so the
    // relay still has bytes to deliver when its write to the backend fails.
    let data = pattern(1_000_000, 82);
    let dir = TempDir::new("urst");
    let prov = dir.path().join("prov.sock");
    let l = UnixListener::bind(&prov).unwrap();
    let d = data.clone();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let d = d.clone();
            thread::spawn(move || write_then_close_unread(c, &d, false));
        }
    });
    let target = dir.path().join("link.sock");
    let sup = Supervisor::start(
        &graph(&[link(
            "unix",
            "urst",
            0,
            &target.display().to_string(),
            &prov.display().to_string(),
            0,
        )]),
        &[],
    );
    sup.worker_pid("pvx-worker-unix");
    let target = &target;
    all_clients_get_everything(&data, || {
        let s = UnixStream::connect(target).expect("connect to the link");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let w = s.try_clone().unwrap();
        client(s, w, |w: &UnixStream| {
            let _ = w.shutdown(Shutdown::Write);
        })
    });
}

#[test]
fn websocket_tunnel_backend_reset_loses_no_byte() {
    let data = pattern(128_000, 83);
    let backend = tcp_backend(data.clone(), true);
    let port = free_port();
    let link = format!(
        r#"{{"type":"http","name":"wsrst","consumer":"EXTERNAL","consumer_pid":0,"provider":"p","provider_pid":0,"role":"any","target":"127.0.0.1:{port}/ws","socket":"{backend}"}}"#
    );
    let sup = Supervisor::start(&graph(&[link]), &[]);
    sup.worker_pid("pvx-worker-http");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    all_clients_get_everything(&data, || tcp_client(addr, Some("/ws/x")));
}
