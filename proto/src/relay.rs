//! The bounded byte relay: moves one direction of a proxied connection
//! (source socket -> destination socket) with `splice(2)` through a pipe,
//! so bytes never enter user space. The pipe is the only buffer (64 KiB,
//! kernel memory, created on first use): when the destination is slow the
//! pipe fills, the source is no longer read, and TCP flow control pushes
//! back on the sender. An idle connection holds no pipe until data flows.
//!
//! Readiness is edge-triggered (mio): the caller keeps a `readable` /
//! `writable` flag per socket, sets it on events, and `pump` clears it when
//! the kernel says EAGAIN. `pump` always runs until no more progress is
//! possible, as edge-triggered readiness requires.

use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use std::io;
#[cfg(test)]
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Pipe capacity asked for, and most bytes moved by one splice call. Larger
/// than the 64 KiB default: fewer syscalls per byte on bulk transfers. It
/// bounds the kernel memory one direction can hold; pages are only
/// allocated while bytes are queued.
const CHUNK: usize = 256 * 1024;

/// Edge-triggered readiness of one socket, as seen by its connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
}

/// What happened in one `pump`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Bytes that reached the destination.
    pub bytes: u64,
    /// The source reached EOF during this pump.
    pub eof: bool,
}

/// One direction of a relay.
#[derive(Debug, Default)]
pub struct Splice {
    pipe: Option<(OwnedFd, OwnedFd)>,
    /// Bytes sitting in the pipe.
    queued: usize,
    /// Source reported EOF (or the limit was reached).
    pub src_done: bool,
    /// Destination's write side has been shut down.
    pub dst_shut: bool,
    /// Remaining bytes this direction may move (None = until EOF).
    limit: Option<u64>,
}

impl Splice {
    pub fn new() -> Splice {
        Splice::default()
    }

    /// Move at most `n` more bytes, then stop as if the source ended
    /// (used for bodies with a known length). Does not shut the destination.
    pub fn set_limit(&mut self, n: Option<u64>) {
        self.limit = n;
        self.src_done = n == Some(0);
    }

    /// Everything read has been written and the source is finished.
    pub fn finished(&self) -> bool {
        self.src_done && self.queued == 0
    }

    pub fn is_idle(&self) -> bool {
        self.queued == 0
    }

    /// Bytes waiting in the pipe for the destination.
    pub fn queued(&self) -> usize {
        self.queued
    }

    fn pipe(&mut self) -> io::Result<(BorrowedFd<'_>, BorrowedFd<'_>)> {
        if self.pipe.is_none() {
            let p = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                .map_err(|e| io::Error::other(format!("pipe2: {e}")))?;
            // Best effort: without it the pipe keeps 64 KiB and we move less per call.
            let _ = nix::fcntl::fcntl(
                p.1.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32),
            );
            self.pipe = Some(p);
        }
        let (r, w) = self
            .pipe
            .as_ref()
            .map(|(r, w)| (r.as_fd(), w.as_fd()))
            .expect("pipe just made");
        Ok((r, w))
    }

    /// Move bytes src -> dst until neither side can make progress.
    /// `shut_on_eof`: shut down dst's write side once the source ended and
    /// the pipe drained (half-close); callers relaying a framed body pass false.
    pub fn pump(
        &mut self,
        src: BorrowedFd<'_>,
        src_ready: &mut Ready,
        dst: BorrowedFd<'_>,
        dst_ready: &mut Ready,
        shut_on_eof: bool,
    ) -> io::Result<Moved> {
        let mut moved = Moved::default();
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            let mut progress = false;
            if !self.src_done && src_ready.readable && self.queued < CHUNK {
                let want = match self.limit {
                    Some(l) => (CHUNK - self.queued).min(l as usize),
                    None => CHUNK - self.queued,
                };
                let (_, pw) = self.pipe()?;
                match splice(src, None, pw, None, want, flags) {
                    Ok(0) => {
                        self.src_done = true;
                        moved.eof = true;
                        progress = true;
                    }
                    Ok(n) => {
                        self.queued += n;
                        if let Some(l) = self.limit.as_mut() {
                            *l -= n as u64;
                            if *l == 0 {
                                self.src_done = true;
                            }
                        }
                        progress = true;
                    }
                    // With bytes queued, EAGAIN may mean the pipe's slots are
                    // full (partial pages), not that the source is empty:
                    // keep `readable` so we come back after draining.
                    Err(Errno::EAGAIN) if self.queued > 0 => {}
                    Err(Errno::EAGAIN) => src_ready.readable = false,
                    Err(e) => return Err(splice_failed(Side::Source, e)),
                }
            }
            if self.queued > 0 && dst_ready.writable {
                let queued = self.queued;
                let (pr, _) = self.pipe()?;
                match splice(pr, None, dst, None, queued, flags) {
                    Ok(n) => {
                        self.queued -= n;
                        moved.bytes += n as u64;
                        progress = n > 0;
                    }
                    Err(Errno::EAGAIN) => dst_ready.writable = false,
                    Err(e) => return Err(splice_failed(Side::Destination, e)),
                }
            }
            if !progress {
                break;
            }
        }
        if shut_on_eof && self.finished() && !self.dst_shut {
            self.dst_shut = true;
            shutdown_write(dst)?;
        }
        Ok(moved)
    }
}

/// Which end of a relayed direction a syscall failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// A failed splice, carried inside the `io::Error` that `pump` returns so
/// callers can tell a reader's fault from a writer's without reading text.
#[derive(Debug)]
pub struct SpliceError {
    pub side: Side,
    pub errno: Errno,
}

impl std::fmt::Display for SpliceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.side {
            Side::Source => write!(f, "splice from source: {}", self.errno),
            Side::Destination => write!(f, "splice to destination: {}", self.errno),
        }
    }
}

impl std::error::Error for SpliceError {}

impl SpliceError {
    /// The side an error from [`Splice::pump`] failed on, if it was a splice.
    pub fn side_of(e: &io::Error) -> Option<Side> {
        e.get_ref()?.downcast_ref::<SpliceError>().map(|s| s.side)
    }
}

fn splice_failed(side: Side, errno: Errno) -> io::Error {
    io::Error::new(io::Error::from(errno).kind(), SpliceError { side, errno })
}

fn sys(what: &str, e: Errno) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// `shutdown(fd, SHUT_WR)`; ENOTCONN (peer already gone) is not an error.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    match nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write) {
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(sys("shutdown(SHUT_WR)", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn moves_bytes_and_half_closes() {
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
            s.pump(a_in.as_fd(), &mut sr, b_in.as_fd(), &mut dr, true)
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
        s.pump(a_in.as_fd(), &mut sr, b_in.as_fd(), &mut dr, false)
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
        let (a_out, a_in) = UnixStream::pair().unwrap();
        let (b_in, b_out) = UnixStream::pair().unwrap();
        a_in.set_nonblocking(true).unwrap();
        b_in.set_nonblocking(true).unwrap();
        (&a_out).write_all(b"data").unwrap();
        drop(b_out); // the destination's peer is gone: EPIPE on write
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
        let e = s
            .pump(a_in.as_fd(), &mut sr, b_in.as_fd(), &mut dr, false)
            .unwrap_err();
        assert_eq!(SpliceError::side_of(&e), Some(Side::Destination));
        assert!(e.to_string().starts_with("splice to destination"), "{e}");
        assert_eq!(SpliceError::side_of(&io::Error::other("x")), None);
    }
}
