//! Splice and copy over real sockets and pipes: half-close, limits, the
//! switch to splicing, errors that say their side.

use super::*;
use crate::duplex::Side;
use crate::stock::Stock;
use proto::limits::default;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

#[test]
fn moves_bytes_and_half_closes() {
    let mut st = Stock::default();
    let (mut a_out, a_in) = UnixStream::pair().unwrap();
    let (b_in, mut b_out) = UnixStream::pair().unwrap();
    a_in.set_nonblocking(true).unwrap();
    b_in.set_nonblocking(true).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let mut got = Vec::new();
    let mut s = Splice::new();
    let (mut sr, mut dr) = (
        Ready {
            readable: true,
            writable: true,
        },
        Ready {
            readable: true,
            writable: true,
        },
    );
    let mut sent = 0;
    b_out.set_nonblocking(true).unwrap();
    while !s.dst_shut {
        if sent < data.len() {
            a_out.set_nonblocking(true).unwrap();
            if let Ok(n) = a_out.write(&data[sent..]) {
                sent += n;
            }
            if sent == data.len() {
                a_out.shutdown(Shutdown::Write).unwrap();
            }
        }
        sr.readable = true;
        dr.writable = true;
        s.pump(a_in.as_fd(), &mut sr, b_in.as_fd(), &mut dr, true, &mut st)
            .unwrap();
        let mut buf = [0u8; 65536];
        while let Ok(n) = b_out.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    b_out.set_nonblocking(false).unwrap();
    b_out.read_to_end(&mut got).unwrap();
    assert_eq!(got, data);
}

#[test]
fn limit_stops_at_length() {
    let mut st = Stock::default();
    let (mut a_out, a_in) = UnixStream::pair().unwrap();
    let (b_in, mut b_out) = UnixStream::pair().unwrap();
    a_in.set_nonblocking(true).unwrap();
    a_out.write_all(b"helloEXTRA").unwrap();
    let mut s = Splice::new();
    s.set_limit(Some(5));
    let (mut sr, mut dr) = (
        Ready {
            readable: true,
            writable: true,
        },
        Ready {
            readable: true,
            writable: true,
        },
    );
    s.pump(a_in.as_fd(), &mut sr, b_in.as_fd(), &mut dr, false, &mut st)
        .unwrap();
    assert!(s.finished());
    drop(b_in);
    let mut got = Vec::new();
    b_out.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    let mut rest = [0u8; 5];
    (&a_in).read_exact(&mut rest).unwrap();
    assert_eq!(&rest, b"EXTRA");
}

#[test]
fn errors_say_which_side_failed() {
    let mut st = Stock::default();
    let (a_out, a_in) = UnixStream::pair().unwrap();
    let (b_in, b_out) = UnixStream::pair().unwrap();
    a_in.set_nonblocking(true).unwrap();
    b_in.set_nonblocking(true).unwrap();
    (&a_out).write_all(b"data").unwrap();
    drop(b_out); // the destination's peer is gone: EPIPE on write
    let mut s = Splice::new();
    s.splice_now();
    let (mut sr, mut dr) = (
        Ready {
            readable: true,
            writable: true,
        },
        Ready {
            readable: true,
            writable: true,
        },
    );
    let e = s
        .pump(a_in.as_fd(), &mut sr, b_in.as_fd(), &mut dr, false, &mut st)
        .unwrap_err();
    assert_eq!(SpliceError::side_of(&e), Some(Side::Destination));
    assert!(e.to_string().starts_with("splice to destination"), "{e}");
    assert_eq!(SpliceError::side_of(&io::Error::other("x")), None);
    // The same through the copy path of a short flow.
    (&a_out).write_all(b"data").unwrap();
    let mut s = Splice::new();
    let e = s
        .pump(
            a_in.as_fd(),
            &mut ready(),
            b_in.as_fd(),
            &mut ready(),
            false,
            &mut st,
        )
        .unwrap_err();
    assert_eq!(SpliceError::side_of(&e), Some(Side::Destination));
    assert!(e.to_string().starts_with("write to destination"), "{e}");
}

fn ready() -> Ready {
    Ready {
        readable: true,
        writable: true,
    }
}

#[test]
fn eventfd_source_is_refused_by_splice_and_copied() {
    let mut st = Stock::default();
    // An eventfd has no splice_read: splice(2) says EINVAL (checked on
    // Linux 6.18), a read gives its 8-byte counter.
    // SAFETY: eventfd returns a new fd we own, or -1.
    let raw = unsafe { nix::libc::eventfd(5, nix::libc::EFD_NONBLOCK | nix::libc::EFD_CLOEXEC) };
    assert!(raw >= 0);
    let efd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let (b_in, mut b_out) = UnixStream::pair().unwrap();
    b_in.set_nonblocking(true).unwrap();
    let mut s = Splice::new();
    s.splice_now();
    let (mut sr, mut dr) = (ready(), ready());
    let m = s
        .pump(efd.as_fd(), &mut sr, b_in.as_fd(), &mut dr, false, &mut st)
        .unwrap();
    assert!(s.is_copying(), "fell back to read/write");
    assert_eq!(m.bytes, 8);
    assert!(!sr.readable, "the counter is spent: EAGAIN");
    let mut got = [0u8; 8];
    b_out.read_exact(&mut got).unwrap();
    assert_eq!(u64::from_ne_bytes(got), 5);
    assert!(s.is_idle());
}

#[test]
fn append_only_destination_is_refused_by_splice_and_written() {
    let mut st = Stock::default();
    // splice(2) into an O_APPEND file says EINVAL; the bytes already in
    // the pipe and the prefix must still arrive, in order.
    let path = std::env::temp_dir().join(format!("pvx-append-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    drop(file);
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let (mut a_out, a_in) = UnixStream::pair().unwrap();
    a_in.set_nonblocking(true).unwrap();
    a_out.write_all(b"hello, ").unwrap();
    let mut s = Splice::new();
    s.splice_now();
    s.prefix(b"HDR:".to_vec());
    let (mut sr, mut dr) = (ready(), ready());
    s.pump(a_in.as_fd(), &mut sr, file.as_fd(), &mut dr, false, &mut st)
        .unwrap();
    assert!(s.is_copying());
    a_out.write_all(b"world").unwrap();
    a_out.shutdown(Shutdown::Write).unwrap();
    sr.readable = true;
    let m = s
        .pump(a_in.as_fd(), &mut sr, file.as_fd(), &mut dr, false, &mut st)
        .unwrap();
    assert!(m.eof && s.finished());
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(text, "HDR:hello, world");
}

#[test]
fn pipes_take_the_configured_size() {
    let mut st = Stock::default();
    let size_of = |s: &Splice| {
        nix::fcntl::fcntl(
            s.pipe_fd().expect("pipe made").as_raw_fd(),
            nix::fcntl::FcntlArg::F_GETPIPE_SZ,
        )
        .unwrap() as usize
    };
    let moved = |s: &mut Splice, st: &mut Stock| {
        let (mut a_out, a_in) = UnixStream::pair().unwrap();
        let (b_in, _b_out) = UnixStream::pair().unwrap();
        a_in.set_nonblocking(true).unwrap();
        b_in.set_nonblocking(true).unwrap();
        a_out.write_all(b"x").unwrap();
        s.pump(
            a_in.as_fd(),
            &mut ready(),
            b_in.as_fd(),
            &mut ready(),
            false,
            st,
        )
        .unwrap();
    };
    let mut s = Splice::new();
    s.splice_now();
    assert!(s.pipe_fd().is_none(), "no pipe before data");
    moved(&mut s, &mut st);
    assert_eq!(size_of(&s), default::PIPE_SIZE);
    st.pipes.resize(128 * 1024);
    let mut t = Splice::new();
    t.splice_now();
    moved(&mut t, &mut st);
    assert_eq!(size_of(&t), 128 * 1024);
}

#[test]
fn limits_without_pipe_size_parse_to_the_default() {
    // A configuration from a supervisor that predates `--pipe-size`.
    let mut v = serde_json::to_value(proto::limits::Limits::default()).unwrap();
    v.as_object_mut().unwrap().remove("pipe_size");
    let l: proto::limits::Limits = serde_json::from_value(v).unwrap();
    assert_eq!(l.pipe_size, default::PIPE_SIZE);
}
