//! One direction of a unix link (source socket -> destination socket) that
//! carries file descriptors as well as bytes: a [`Direction`] of
//! [`crate::duplex::Duplex`].
//!
//! `splice(2)` cannot carry `SCM_RIGHTS`, so this direction uses
//! `recvmsg`/`sendmsg` (through [`crate::fdpass`]) and a user-space buffer
//! of [`CHUNK`] bytes. The buffer exists only while bytes are in flight:
//! it is allocated for a read and freed once the source has nothing more,
//! so an idle connection holds no buffer.
//!
//! One chunk at a time: the source is read only when the previous chunk
//! has been written completely. That is the backpressure (a slow reader
//! stops us reading the writer, whose socket buffer then fills) and it
//! keeps fds in order with their bytes: the fds a `recvmsg` returned are
//! attached to the first `sendmsg` of that same chunk, so the peer receives
//! them with the bytes they came with, never later. Our copy of every fd
//! is closed as soon as `sendmsg` has handed it to the kernel (or when the
//! chunk is dropped); none is kept.

use crate::duplex::Direction;
use crate::fdpass;
use nix::errno::Errno;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Bytes moved by one read, and the buffer's size while in flight.
pub const CHUNK: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct FdRelay {
    /// Empty (no allocation) while idle; CHUNK bytes while in flight.
    buf: Vec<u8>,
    /// Bytes of `buf` holding data, and how many of those were sent.
    len: usize,
    sent: usize,
    /// Fds that arrived with the chunk; they go with its first sendmsg.
    fds: Vec<OwnedFd>,
    /// The destination can take fds (a unix socket, not tcp).
    dst_takes_fds: bool,
    /// Fds passed on so far, and fds dropped (destination cannot take them).
    pub fds_passed: u64,
    pub fds_dropped: u64,
}

fn sys(what: &str, e: Errno) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

impl FdRelay {
    pub fn new(dst_takes_fds: bool) -> FdRelay {
        FdRelay {
            dst_takes_fds,
            ..FdRelay::default()
        }
    }

    /// Bytes (and fds) held for the destination.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.len - self.sent, self.fds.len())
    }

    /// Whether a buffer is allocated (for tests of the idle footprint).
    pub fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }

    fn release(&mut self) {
        self.buf = Vec::new();
        self.len = 0;
        self.sent = 0;
    }
}

impl Direction for FdRelay {
    fn can_read(&self) -> bool {
        self.len == 0
    }

    fn read(&mut self, src: BorrowedFd<'_>) -> io::Result<usize> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; CHUNK];
        }
        let (n, fds) = match fdpass::recv_with_fds(src.as_raw_fd(), &mut self.buf) {
            Ok(r) => (r.bytes, r.fds),
            Err(e) => {
                // Nothing in flight: give the buffer back while idle.
                self.release();
                return Err(match e {
                    fdpass::RecvError::Sys(e) => sys("recvmsg from source", e),
                    // Some fds were lost in the kernel (fdpass closed the
                    // rest): the byte stream and its fds no longer match,
                    // which the peers cannot recover from.
                    e => io::Error::other(format!("from source: {e}")),
                });
            }
        };
        if n == 0 {
            // A stream socket delivers fds only with at least one byte.
            self.release();
            return Ok(0);
        }
        self.len = n;
        self.sent = 0;
        if !fds.is_empty() && !self.dst_takes_fds {
            self.fds_dropped += fds.len() as u64;
            crate::debug!(
                "dropping {} fd(s): the backend is not a unix socket",
                fds.len()
            );
        } else {
            self.fds = fds;
        }
        Ok(n)
    }

    fn held(&self) -> usize {
        self.len - self.sent
    }

    fn write(&mut self, dst: BorrowedFd<'_>) -> io::Result<usize> {
        let iov = [IoSlice::new(&self.buf[self.sent..self.len])];
        let raw: Vec<RawFd> = self.fds.iter().map(|f| f.as_raw_fd()).collect();
        let n = fdpass::send_with_fds(dst.as_raw_fd(), &iov, &raw)
            .map_err(|e| sys("sendmsg to destination", e))?;
        self.sent += n;
        if n > 0 && !self.fds.is_empty() {
            // The kernel holds its own references now; ours go.
            self.fds_passed += self.fds.len() as u64;
            self.fds.clear();
        }
        if self.sent == self.len {
            // Keep the buffer for the next read; it goes on EAGAIN or EOF.
            self.sent = 0;
            self.len = 0;
        }
        Ok(n)
    }

    fn discard(&mut self) {
        self.release();
        self.fds.clear();
    }

    fn drain(&mut self, src: BorrowedFd<'_>) -> io::Result<usize> {
        let mut scratch = [0u8; 4096];
        // Fds that arrive are closed with the Received.
        match fdpass::recv_with_fds(src.as_raw_fd(), &mut scratch) {
            Ok(r) => Ok(r.bytes),
            Err(fdpass::RecvError::Sys(e)) => Err(sys("recvmsg from source", e)),
            Err(e) => Err(io::Error::other(format!("from source: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
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
        let t = transfer(r, a.as_fd(), ar, b.as_fd(), br, true);
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
}
