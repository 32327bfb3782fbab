//! Short tcp flows (issue 11): they are copied through a small buffer, and
//! a read that returns less than asked ends the reading without an EAGAIN
//! read, so every end a peer sends together with its last bytes (a FIN
//! right behind the data, urgent data) must still be seen.

use pvx_tests::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

fn start(name: &str, backend: SocketAddr) -> (Supervisor, SocketAddr) {
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[link(
            "tcp",
            name,
            0,
            &format!("127.0.0.1:{port}"),
            &backend.to_string(),
            0,
        )]),
        &[],
    );
    wait_worker_started(sup.worker_pid("pvx-worker-tcp"));
    (sup, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A backend that writes `answer` and closes at once, without reading:
/// its data and its FIN arrive together.
fn say_and_close(answer: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(answer);
            let _ = c.shutdown(Shutdown::Write);
            // Keep the socket until the client is done with it, so our
            // close is no reset of an unread request.
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
    });
    a
}

#[test]
fn data_and_fin_sent_together_arrive_both_ways() {
    // Client side: 100 bytes and the FIN right behind them; the echo
    // backend answers and half-closes when it sees the EOF.
    let (sup, a) = start("fin-up", echo_server());
    let hs: Vec<_> = (0..8u64)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..40 {
                    let data = pattern(100, t * 100 + i);
                    let got = roundtrip(a, &data).expect("roundtrip");
                    assert!(got == data, "echo intact, then EOF");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    drop(sup);

    // Backend side: the answer and the FIN together, the client still open.
    let (sup, a) = start("fin-down", say_and_close(b"answer and goodbye"));
    for _ in 0..200 {
        let mut c = TcpStream::connect(a).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"request").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .expect("the backend's end reaches the client");
        assert_eq!(got, b"answer and goodbye");
    }
    drop(sup);
}

#[test]
fn urgent_data_does_not_stall_the_bytes_behind_it() {
    // A read stops short at an urgent byte, with bytes left behind it;
    // the event that announced the urgent byte must make us read on.
    let (sup, a) = start("urgent", echo_server());
    for _ in 0..20 {
        let mut c = TcpStream::connect(a).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        urgent_round(&mut c);
    }
    drop(sup);
}

/// "abc", an urgent "!", "defg"; the echo of the stream must come back
/// whole without more traffic (the urgent byte is out of band).
fn urgent_round(c: &mut TcpStream) {
    c.write_all(b"abc").unwrap();
    // SAFETY: send(2) of one byte from a valid buffer on our socket.
    let r = unsafe { nix::libc::send(c.as_raw_fd(), b"!".as_ptr().cast(), 1, nix::libc::MSG_OOB) };
    assert_eq!(r, 1);
    c.write_all(b"defg").unwrap();
    let mut got = [0u8; 7];
    c.read_exact(&mut got)
        .expect("the bytes after the urgent one arrive without more traffic");
    assert_eq!(&got, b"abcdefg");
}

#[test]
fn urgent_data_does_not_stall_a_spliced_flow() {
    // splice(2) stops at an urgent byte and says EAGAIN from then on:
    // a direction that sees urgent data goes on by copying.
    let (sup, a) = start("urgent-bulk", echo_server());
    let mut c = TcpStream::connect(a).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let bulk = pattern(256 * 1024, 5);
    let writer = {
        let mut w = c.try_clone().unwrap();
        let bulk = bulk.clone();
        thread::spawn(move || w.write_all(&bulk).unwrap())
    };
    let mut back = vec![0u8; bulk.len()];
    c.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == bulk, "bulk echo intact (spliced both ways)");
    for _ in 0..3 {
        urgent_round(&mut c);
    }
    drop(sup);
}

/// `data`, then our FIN, in one segment (`MSG_MORE` holds the data until
/// the FIN joins it).
fn send_with_fin(s: &TcpStream, data: &[u8]) {
    // SAFETY: send(2) from a valid buffer on our socket.
    let r = unsafe {
        nix::libc::send(
            s.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            nix::libc::MSG_MORE,
        )
    };
    assert_eq!(r, data.len() as isize);
    s.shutdown(Shutdown::Write).unwrap();
}

/// Segments a client receives up to and with EOF from `a`, whose far end
/// sends its answer and its FIN in one segment.
fn segments_to_client(a: SocketAddr) -> u32 {
    let mut c = TcpStream::connect(a).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("answer, then EOF");
    assert_eq!(got, b"answer and goodbye");
    segs_in(&c)
}

#[test]
fn a_last_answer_and_its_fin_reach_the_client_in_one_segment() {
    // The backend's answer and FIN arrive together; passed on as data
    // and then a separate FIN they would cost the client (and the loopback
    // both sides share) a segment more, and its ACK of the data another.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            send_with_fin(&c, b"answer and goodbye");
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
    });
    let direct = segments_to_client(backend);
    let (sup, a) = start("fin-rides", backend);
    for _ in 0..5 {
        let proxied = segments_to_client(a);
        assert!(
            proxied <= direct,
            "through the link the client got {proxied} segments, directly {direct}"
        );
    }
    drop(sup);
}

#[test]
fn a_client_half_close_reaches_the_backend_with_its_last_bytes() {
    // The other direction: the client's last bytes and its FIN, one
    // segment, stay one segment towards the backend.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let n = segs_in(&c);
            let _ = c.write_all(&got);
            let _ = tx.send(n);
        }
    });
    let exchange = |a: SocketAddr| {
        let mut c = TcpStream::connect(a).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        send_with_fin(&c, b"question");
        let mut back = Vec::new();
        c.read_to_end(&mut back).expect("echo, then EOF");
        assert_eq!(back, b"question");
        rx.recv_timeout(Duration::from_secs(10)).unwrap()
    };
    let direct = exchange(backend);
    let (sup, a) = start("fin-rides-up", backend);
    for _ in 0..5 {
        let proxied = exchange(a);
        assert!(
            proxied <= direct,
            "through the link the backend got {proxied} segments, directly {direct}"
        );
    }
    drop(sup);
}

/// Segments the backend's end of a connection has received once it has
/// read the first line (up to "\r\n") from it.
fn segments_with_first_line(c: &mut TcpStream) -> u32 {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(c.read(&mut b).unwrap(), 1, "a whole line");
        line.push(b[0]);
    }
    segs_in(c)
}

#[test]
fn the_backend_handshake_ack_rides_on_our_first_bytes() {
    // A PROXY header is ready the moment the backend connect succeeds: the
    // handshake's last ACK goes out with it, not as a segment of its own.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let mut d = TcpStream::connect(backend).unwrap();
    d.write_all(b"PROXY UNKNOWN\r\n").unwrap();
    let direct = segments_with_first_line(&mut l.accept().unwrap().0);
    let port = free_port();
    let g = format!(
        r#"[{{"type":"tcp","name":"ack-rides","consumer":"EXTERNAL","target":"127.0.0.1:{port}","socket":"{backend}","proxy_protocol":"v1"}}]"#
    );
    // No health checks: every connection the backend sees is a client's.
    let sup = Supervisor::start(&g, &["--health-interval", "0"]);
    wait_worker_started(sup.worker_pid("pvx-worker-tcp"));
    // Linux sends a held-back handshake ACK alone after 200 ms: a worker
    // kept off the CPU that long (a loaded machine) loses the saving for
    // that connection, so one connection of five must show it.
    let mut seen = Vec::new();
    for _ in 0..5 {
        // A silent client: only the header goes to the backend.
        let c = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        let mut b = l.accept().unwrap().0;
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        seen.push(segments_with_first_line(&mut b));
        drop(c);
    }
    assert!(
        seen.iter().any(|&n| n < direct),
        "the backend got {seen:?} segments with the header, {direct} from a client that ACKs at once"
    );
    drop(sup);
}

#[test]
fn a_backend_that_speaks_first_greets_a_silent_client() {
    // Nothing from the client carries the backend's handshake ACK: it
    // goes out alone, and the backend (which sees the connection only
    // then) says hello.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"220 hello\r\n");
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
    });
    let (sup, a) = start("speaks-first", backend);
    for _ in 0..5 {
        let mut c = TcpStream::connect(a).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; 11];
        c.read_exact(&mut got).expect("the greeting");
        assert_eq!(&got, b"220 hello\r\n");
    }
    drop(sup);
}
