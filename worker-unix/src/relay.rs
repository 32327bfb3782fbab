//! One direction of a unix link (source socket -> destination socket) that
//! carries file descriptors as well as bytes.
//!
//! `splice(2)` cannot carry `SCM_RIGHTS`, so this relay uses
//! `recvmsg`/`sendmsg` through a user-space buffer of [`CHUNK`] bytes. The
//! buffer exists only while bytes are in flight: it is allocated for a
//! read and freed once it has been written out and the source has nothing
//! more, so an idle connection holds no buffer.
//!
//! One chunk at a time: the source is read only when the previous chunk
//! has been written completely. That is the backpressure (a slow reader
//! stops us reading the writer, whose socket buffer then fills) and it
//! keeps fds in order with their bytes: the fds a `recvmsg` returned are
//! attached to the first `sendmsg` of that same chunk, so the peer receives
//! them with the bytes they came with, never later. Our copy of every fd
//! is closed as soon as `sendmsg` has handed it to the kernel (or when the
//! connection ends without delivering it); none is kept.
//!
//! Readiness is edge-triggered, as in `proto::relay::Splice`: `pump` runs
//! until neither side can make progress and clears the `Ready` flags on
//! EAGAIN.

use nix::errno::Errno;
use proto::fdpass;
use proto::relay::{shutdown_write, Moved, Ready};
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
    /// Source reported EOF.
    pub src_done: bool,
    /// Destination's write side has been shut down.
    pub dst_shut: bool,
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

    /// Everything read has been written and the source is finished.
    pub fn finished(&self) -> bool {
        self.src_done && self.sent == self.len
    }

    /// Bytes (and fds) held for the destination.
    #[cfg(test)]
    pub fn in_flight(&self) -> (usize, usize) {
        (self.len - self.sent, self.fds.len())
    }

    /// Whether a buffer is allocated (for tests of the idle footprint).
    #[cfg(test)]
    pub fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }

    /// Read one chunk. Ok(true): progress (bytes, fds or EOF).
    fn read(&mut self, src: RawFd, src_ready: &mut Ready) -> io::Result<bool> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; CHUNK];
        }
        let (n, fds) = match fdpass::recv_with_fds(src, &mut self.buf) {
            Ok(r) => (r.bytes, r.fds),
            Err(fdpass::RecvError::Sys(Errno::EAGAIN)) => {
                src_ready.readable = false;
                // Nothing in flight: give the buffer back while idle.
                self.buf = Vec::new();
                return Ok(false);
            }
            Err(fdpass::RecvError::Sys(e)) => return Err(sys("recvmsg from source", e)),
            // Some fds were lost in the kernel (fdpass closed the rest): the
            // byte stream and its fds no longer match, which the peers
            // cannot recover from.
            Err(e) => return Err(io::Error::other(format!("from source: {e}"))),
        };
        if n == 0 {
            // A stream socket delivers fds only with at least one byte.
            self.src_done = true;
            self.buf = Vec::new();
            return Ok(true);
        }
        self.len = n;
        self.sent = 0;
        if !fds.is_empty() && !self.dst_takes_fds {
            self.fds_dropped += fds.len() as u64;
            proto::debug!(
                "dropping {} fd(s): the backend is not a unix socket",
                fds.len()
            );
        } else {
            self.fds = fds;
        }
        Ok(true)
    }

    /// Write what is left of the chunk; returns the bytes written.
    fn write(&mut self, dst: RawFd, dst_ready: &mut Ready) -> io::Result<usize> {
        let iov = [IoSlice::new(&self.buf[self.sent..self.len])];
        let raw: Vec<RawFd> = self.fds.iter().map(|f| f.as_raw_fd()).collect();
        let r = fdpass::send_with_fds(dst, &iov, &raw);
        match r {
            Ok(n) => {
                self.sent += n;
                if n > 0 && !self.fds.is_empty() {
                    // The kernel holds its own references now; ours go.
                    self.fds_passed += self.fds.len() as u64;
                    self.fds.clear();
                }
                if self.sent == self.len {
                    self.sent = 0;
                    self.len = 0;
                }
                Ok(n)
            }
            Err(Errno::EAGAIN) => {
                dst_ready.writable = false;
                Ok(0)
            }
            Err(e) => Err(sys("sendmsg to destination", e)),
        }
    }

    /// Move bytes and fds src -> dst until neither side can make progress.
    /// On the source's EOF, once everything is written, the destination's
    /// write side is shut down (half-close).
    pub fn pump(
        &mut self,
        src: BorrowedFd<'_>,
        src_ready: &mut Ready,
        dst: BorrowedFd<'_>,
        dst_ready: &mut Ready,
    ) -> io::Result<Moved> {
        let mut moved = Moved::default();
        loop {
            let mut progress = false;
            if self.len > self.sent && dst_ready.writable {
                let n = self.write(dst.as_raw_fd(), dst_ready)?;
                moved.bytes += n as u64;
                progress |= n > 0;
            }
            if self.len == 0 && !self.src_done && src_ready.readable {
                progress |= self.read(src.as_raw_fd(), src_ready)?;
                moved.eof |= self.src_done;
            }
            if !progress {
                break;
            }
        }
        if self.finished() && !self.dst_shut {
            self.dst_shut = true;
            shutdown_write(dst)?;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

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
        let m = r.pump(a.as_fd(), &mut ar, b.as_fd(), &mut br).unwrap();
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
        let m = r.pump(a.as_fd(), &mut ar, b.as_fd(), &mut br).unwrap();
        assert!(m.eof && r.dst_shut);
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
            r.pump(a.as_fd(), &mut ar, b.as_fd(), &mut br).unwrap();
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
        while !r.dst_shut {
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
            r.pump(a.as_fd(), &mut ar, b.as_fd(), &mut br).unwrap();
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
        r.pump(a.as_fd(), &mut ar, b.as_fd(), &mut br).unwrap();
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
