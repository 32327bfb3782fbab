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
