use super::*;
use crate::duplex::{transfer, Transfer};
use crate::stream::{shutdown_write, Ready};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

/// One direction alone: transfer, then pass the source's EOF on.
fn pump(
    r: &mut FdRelay,
    a: &UnixStream,
    ar: &mut Ready,
    b: &UnixStream,
    br: &mut Ready,
) -> Transfer {
    let t = transfer(
        r,
        a.as_fd(),
        ar,
        b.as_fd(),
        br,
        true,
        &mut crate::stock::Stock::default(),
    );
    assert!(t.fault.is_none(), "{:?}", t.fault);
    if t.eof {
        shutdown_write(b.as_fd()).unwrap();
    }
    t
}

fn ready() -> Ready {
    Ready {
        readable: true,
        writable: true,
    }
}

/// Send `data` with `fds` attached in one sendmsg.
fn send_with(s: &UnixStream, data: &[u8], fds: &[RawFd]) {
    let n = fdpass::send_with_fds(s.as_raw_fd(), &[IoSlice::new(data)], fds).unwrap();
    assert_eq!(n, data.len());
}

/// Receive up to `max` bytes (already waiting) and the fds that came with them.
fn recv_with(s: &UnixStream, max: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut buf = vec![0u8; max];
    let r = fdpass::recv_with_fds(s.as_raw_fd(), &mut buf).unwrap();
    buf.truncate(r.bytes);
    (buf, r.fds)
}

#[test]
fn passes_fds_with_their_bytes_and_keeps_none() {
    let (peer_a, a) = UnixStream::pair().unwrap();
    let (b, peer_b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let mut r = FdRelay::new(true);
    let (mut ar, mut br) = (ready(), ready());

    // A pipe's write end travels; the far side writes into it.
    let (pr, pw) = nix::unistd::pipe().unwrap();
    send_with(&peer_a, b"take this pipe", &[pw.as_raw_fd()]);
    drop(pw);
    let m = pump(&mut r, &a, &mut ar, &b, &mut br);
    assert_eq!(m.bytes, 14);
    assert_eq!(r.fds_passed, 1);
    assert!(!r.holds_buffer(), "idle relay keeps no buffer");
    assert_eq!(r.in_flight(), (0, 0), "relay keeps no fd once sent");
    let (bytes, fds) = recv_with(&peer_b, 64);
    assert_eq!(bytes, b"take this pipe");
    assert_eq!(fds.len(), 1);
    nix::unistd::write(&fds[0], b"through").unwrap();
    drop(fds);
    // Non-blocking: were any copy of the write end left open anywhere,
    // this would be EAGAIN instead of the data and then EOF.
    nix::fcntl::fcntl(
        pr.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut got = String::new();
    std::fs::File::from(pr).read_to_string(&mut got).unwrap();
    assert_eq!(got, "through");

    // Half-close passes on.
    peer_a.shutdown(std::net::Shutdown::Write).unwrap();
    ar.readable = true;
    let m = pump(&mut r, &a, &mut ar, &b, &mut br);
    assert!(m.eof);
    let mut rest = Vec::new();
    (&peer_b).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn slow_reader_stops_reads_and_memory_stays_bounded() {
    let (mut peer_a, a) = UnixStream::pair().unwrap();
    let (b, mut peer_b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    peer_a.set_nonblocking(true).unwrap();
    let mut r = FdRelay::new(true);
    let (mut ar, mut br) = (ready(), ready());
    // Fill everything: peer_b never reads.
    let data = vec![7u8; 4 * 1024 * 1024];
    let mut written = 0;
    for _ in 0..64 {
        if let Ok(n) = peer_a.write(&data[written..]) {
            written += n;
        }
        ar.readable = true;
        br.writable = true;
        pump(&mut r, &a, &mut ar, &b, &mut br);
    }
    assert!(written < data.len(), "the writer was pushed back");
    assert!(r.in_flight().0 <= CHUNK);
    // Now read everything; the rest flows.
    let h = std::thread::spawn(move || {
        let mut all = Vec::new();
        peer_b.read_to_end(&mut all).unwrap();
        all.len()
    });
    let total = written;
    let mut rest = written;
    let mut closed = false;
    let mut shut = false;
    while !shut {
        if rest < data.len() {
            if let Ok(n) = peer_a.write(&data[rest..]) {
                rest += n;
            }
        } else if !closed {
            peer_a.shutdown(std::net::Shutdown::Write).unwrap();
            closed = true;
        }
        ar.readable = true;
        br.writable = true;
        shut = pump(&mut r, &a, &mut ar, &b, &mut br).eof;
    }
    assert!(total > 0);
    assert_eq!(h.join().unwrap(), data.len());
}

#[test]
fn fds_to_a_non_unix_destination_are_closed() {
    let (peer_a, a) = UnixStream::pair().unwrap();
    let (b, peer_b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut r = FdRelay::new(false);
    let (mut ar, mut br) = (ready(), ready());
    let (pr, pw) = nix::unistd::pipe().unwrap();
    send_with(&peer_a, b"x", &[pw.as_raw_fd()]);
    drop(pw);
    pump(&mut r, &a, &mut ar, &b, &mut br);
    assert_eq!((r.fds_passed, r.fds_dropped), (0, 1));
    let (bytes, fds) = recv_with(&peer_b, 8);
    assert_eq!((bytes.as_slice(), fds.len()), (&b"x"[..], 0));
    // Every write end is closed: the pipe reads EOF, not EAGAIN.
    nix::fcntl::fcntl(
        pr.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut s = String::new();
    std::fs::File::from(pr).read_to_string(&mut s).unwrap();
    assert!(s.is_empty());
}
