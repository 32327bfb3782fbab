//! One direction of a proxied connection (source socket -> destination
//! socket) with `splice(2)` through a pipe, so bytes never enter user
//! space. The pipe is the buffer: when the destination is slow the pipe
//! fills, the source is no longer read, and TCP flow control pushes back
//! on the sender. It is made on first data (an idle connection holds
//! none) and sized by [`set_pipe_size`] (`--pipe-size`, 64 KiB by
//! default): 2 pipes × that size is the kernel memory one connection can
//! hold.
//!
//! Where `splice` is refused (`EINVAL`: an fd type without splice support,
//! e.g. an `O_APPEND` file as destination or an eventfd as source), the
//! direction falls back to `read`/`write` through a small user-space
//! buffer ([`COPY_CHUNK`], allocated only while bytes are in flight) for
//! the rest of its life. The same buffer carries a prefix: bytes that must
//! go out before what the pipe holds (a PROXY protocol header, bytes read
//! before a tunnel started).
//!
//! [`Splice`] is a [`Direction`] of [`crate::duplex::Duplex`]; `pump` moves
//! one direction alone (http bodies with a known length).

use crate::duplex::{transfer, Direction};
use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use std::io;
#[cfg(test)]
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Default pipe size: the kernel's own default on 4 KiB pages.
pub const DEFAULT_PIPE_SIZE: usize = 64 * 1024;
/// Largest `--pipe-size` accepted (also bounded by /proc/sys/fs/pipe-max-size).
pub const MAX_PIPE_SIZE: usize = 1024 * 1024;
/// The read/write fallback's buffer, and the most one `read` takes.
pub const COPY_CHUNK: usize = 16 * 1024;

static PIPE_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_PIPE_SIZE);

/// Size of the pipes made from now on (a worker sets it once at start from
/// its `Limits`). The kernel rounds it up to a power of two pages.
pub fn set_pipe_size(bytes: usize) {
    PIPE_SIZE.store(bytes.clamp(1, MAX_PIPE_SIZE), Ordering::Relaxed);
}

pub fn pipe_size() -> usize {
    PIPE_SIZE.load(Ordering::Relaxed)
}

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

/// User-space bytes waiting for the destination: `buf[sent..]`.
#[derive(Debug)]
struct Chunk {
    buf: Vec<u8>,
    sent: usize,
}

/// One direction: a pipe (made on first use), and a small buffer for a
/// prefix or the copy fallback, whose bytes always go out first.
#[derive(Debug, Default)]
pub struct Splice {
    pipe: Option<(OwnedFd, OwnedFd)>,
    /// Bytes sitting in the pipe.
    queued: usize,
    copy: Option<Box<Chunk>>,
    /// Remaining bytes this direction may read (None = until EOF).
    limit: Option<u64>,
    /// `splice` was refused for these fds: read/write from now on.
    copying: bool,
    /// Source reported EOF (or the limit was reached). For `pump`.
    pub src_done: bool,
    /// Destination's write side has been shut down. For `pump`.
    pub dst_shut: bool,
}

fn sys(what: &str, e: Errno) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

impl Splice {
    pub fn new() -> Splice {
        Splice::default()
    }

    /// Bytes that go to the destination before anything read from the
    /// source (a PROXY header, bytes read before a tunnel started).
    pub fn prefix(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match self.copy.as_mut() {
            Some(c) => c.buf.extend_from_slice(&bytes),
            None => {
                self.copy = Some(Box::new(Chunk {
                    buf: bytes,
                    sent: 0,
                }))
            }
        }
    }

    /// Move at most `n` more bytes, then stop as if the source ended
    /// (used for bodies with a known length). Does not shut the destination.
    pub fn set_limit(&mut self, n: Option<u64>) {
        self.limit = n;
        self.src_done = n == Some(0);
    }

    /// Everything read has been written and the source is finished.
    pub fn finished(&self) -> bool {
        self.src_done && self.held() == 0
    }

    pub fn is_idle(&self) -> bool {
        self.held() == 0
    }

    /// Bytes waiting for the destination.
    pub fn queued(&self) -> usize {
        self.held()
    }

    /// Whether splice was refused and the direction copies instead.
    pub fn is_copying(&self) -> bool {
        self.copying
    }

    /// The pipe's read end, if one was made (tests check its size).
    pub fn pipe_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|(r, _)| r.as_fd())
    }

    fn copy_left(&self) -> usize {
        self.copy.as_ref().map_or(0, |c| c.buf.len() - c.sent)
    }

    fn pipe(&mut self) -> io::Result<(BorrowedFd<'_>, BorrowedFd<'_>)> {
        if self.pipe.is_none() {
            let p = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                .map_err(|e| sys("pipe2", e))?;
            // Always set: the default is 16 pages, 1 MiB on 64 KiB-page
            // kernels. Best effort: without it we move less per call.
            let _ = nix::fcntl::fcntl(
                p.1.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETPIPE_SZ(pipe_size() as i32),
            );
            self.pipe = Some(p);
        }
        let (r, w) = self
            .pipe
            .as_ref()
            .map(|(r, w)| (r.as_fd(), w.as_fd()))
            .ok_or_else(|| io::Error::other("pipe just made is gone"))?;
        Ok((r, w))
    }

    /// Most bytes the next read may take.
    fn want(&self, room: usize) -> usize {
        match self.limit {
            Some(l) => room.min(usize::try_from(l).unwrap_or(usize::MAX)),
            None => room,
        }
    }

    fn took(&mut self, n: usize) {
        if let Some(l) = self.limit.as_mut() {
            *l = l.saturating_sub(n as u64);
        }
    }

    /// splice(2) said EINVAL: these fds cannot be spliced.
    fn fall_back(&mut self, which: &str) {
        if !self.copying {
            crate::debug!("splice {which} refused (EINVAL); copying through a buffer instead");
            self.copying = true;
        }
    }

    fn read_copy(&mut self, src: BorrowedFd<'_>) -> io::Result<usize> {
        let mut buf = vec![0u8; self.want(COPY_CHUNK)];
        let n = loop {
            match nix::unistd::read(src.as_raw_fd(), &mut buf) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(sys("read from source", e)),
                Ok(n) => break n,
            }
        };
        if n > 0 {
            buf.truncate(n);
            self.copy = Some(Box::new(Chunk { buf, sent: 0 }));
            self.took(n);
        }
        Ok(n)
    }

    /// Copy fallback with bytes still in the pipe: take a chunk of them
    /// into the (empty) buffer, so the order holds.
    fn unpipe(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; self.queued.min(COPY_CHUNK)];
        let (pr, _) = self.pipe()?;
        let n = loop {
            match nix::unistd::read(pr.as_raw_fd(), &mut buf) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(sys("read from pipe", e)),
                Ok(n) => break n,
            }
        };
        buf.truncate(n);
        self.queued -= n;
        self.copy = Some(Box::new(Chunk { buf, sent: 0 }));
        Ok(())
    }

    /// Move bytes src -> dst until neither side can make progress.
    /// `shut_on_eof`: shut down dst's write side once the source ended and
    /// everything was written (half-close); callers relaying a framed body
    /// pass false. Errors carry a [`SpliceError`] naming the failed side.
    pub fn pump(
        &mut self,
        src: BorrowedFd<'_>,
        src_ready: &mut Ready,
        dst: BorrowedFd<'_>,
        dst_ready: &mut Ready,
        shut_on_eof: bool,
    ) -> io::Result<Moved> {
        let read = !self.src_done;
        let t = transfer(self, src, src_ready, dst, dst_ready, read);
        if t.eof || self.limit == Some(0) {
            self.src_done = true;
        }
        if let Some((side, e)) = t.fault {
            return Err(failed(side, e));
        }
        if shut_on_eof && self.finished() && !self.dst_shut {
            self.dst_shut = true;
            shutdown_write(dst)?;
        }
        Ok(Moved {
            bytes: t.bytes,
            eof: t.eof,
        })
    }
}

impl Direction for Splice {
    fn can_read(&self) -> bool {
        if self.limit == Some(0) {
            return false;
        }
        if self.copying {
            // One chunk at a time, after whatever the pipe still holds.
            return self.held() == 0;
        }
        self.queued < pipe_size()
    }

    fn read(&mut self, src: BorrowedFd<'_>) -> io::Result<usize> {
        if self.copying {
            return self.read_copy(src);
        }
        let want = self.want(pipe_size() - self.queued);
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let (_, pw) = self.pipe()?;
        match splice(src, None, pw, None, want, flags) {
            Ok(n) => {
                self.queued += n;
                self.took(n);
                Ok(n)
            }
            Err(Errno::EINVAL) => {
                self.fall_back("from the source");
                if self.held() > 0 {
                    // Read again once what is held has gone out.
                    return Err(io::Error::from(io::ErrorKind::WouldBlock));
                }
                self.read_copy(src)
            }
            Err(e) => Err(sys("splice from source", e)),
        }
    }

    fn held(&self) -> usize {
        self.copy_left() + self.queued
    }

    fn write(&mut self, dst: BorrowedFd<'_>) -> io::Result<usize> {
        if self.copy.is_none() && self.queued > 0 && !self.copying {
            let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
            let queued = self.queued;
            let (pr, _) = self.pipe()?;
            match splice(pr, None, dst, None, queued, flags) {
                Ok(n) => {
                    self.queued -= n;
                    return Ok(n);
                }
                Err(Errno::EINVAL) => self.fall_back("to the destination"),
                Err(e) => return Err(sys("splice to destination", e)),
            }
        }
        if self.copy.is_none() {
            if self.queued == 0 {
                return Ok(0);
            }
            self.unpipe()?;
        }
        let Some(c) = self.copy.as_mut() else {
            return Ok(0);
        };
        let n = loop {
            match nix::unistd::write(dst, &c.buf[c.sent..]) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(sys("write to destination", e)),
                Ok(n) => break n,
            }
        };
        c.sent += n;
        if c.sent == c.buf.len() {
            // Nothing in flight here: give the buffer back.
            self.copy = None;
        }
        Ok(n)
    }

    fn discard(&mut self) {
        self.pipe = None;
        self.queued = 0;
        self.copy = None;
    }
}

/// Which end of a relayed direction a syscall failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// A failed syscall of a direction, carried inside the `io::Error` that
/// `pump` returns so callers can tell a reader's fault from a writer's
/// without reading text.
#[derive(Debug)]
pub struct SpliceError {
    pub side: Side,
    pub error: io::Error,
}

impl std::fmt::Display for SpliceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The error names its syscall ("splice to destination: EPIPE").
        write!(f, "{}", self.error)
    }
}

impl std::error::Error for SpliceError {}

impl SpliceError {
    /// The side an error from [`Splice::pump`] failed on, if it was a splice.
    pub fn side_of(e: &io::Error) -> Option<Side> {
        e.get_ref()?.downcast_ref::<SpliceError>().map(|s| s.side)
    }
}

fn failed(side: Side, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), SpliceError { side, error })
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

    fn ready() -> Ready {
        Ready {
            readable: true,
            writable: true,
        }
    }

    #[test]
    fn eventfd_source_is_refused_by_splice_and_copied() {
        // An eventfd has no splice_read: splice(2) says EINVAL (checked on
        // Linux 6.18), a read gives its 8-byte counter.
        // SAFETY: eventfd returns a new fd we own, or -1.
        let raw =
            unsafe { nix::libc::eventfd(5, nix::libc::EFD_NONBLOCK | nix::libc::EFD_CLOEXEC) };
        assert!(raw >= 0);
        let efd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let (b_in, mut b_out) = UnixStream::pair().unwrap();
        b_in.set_nonblocking(true).unwrap();
        let mut s = Splice::new();
        let (mut sr, mut dr) = (ready(), ready());
        let m = s
            .pump(efd.as_fd(), &mut sr, b_in.as_fd(), &mut dr, false)
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
        s.prefix(b"HDR:".to_vec());
        let (mut sr, mut dr) = (ready(), ready());
        s.pump(a_in.as_fd(), &mut sr, file.as_fd(), &mut dr, false)
            .unwrap();
        assert!(s.is_copying());
        a_out.write_all(b"world").unwrap();
        a_out.shutdown(Shutdown::Write).unwrap();
        sr.readable = true;
        let m = s
            .pump(a_in.as_fd(), &mut sr, file.as_fd(), &mut dr, false)
            .unwrap();
        assert!(m.eof && s.finished());
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, "HDR:hello, world");
    }

    #[test]
    fn pipes_take_the_configured_size() {
        let size_of = |s: &Splice| {
            nix::fcntl::fcntl(
                s.pipe_fd().expect("pipe made").as_raw_fd(),
                nix::fcntl::FcntlArg::F_GETPIPE_SZ,
            )
            .unwrap() as usize
        };
        let moved = |s: &mut Splice| {
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
            )
            .unwrap();
        };
        let mut s = Splice::new();
        assert!(s.pipe_fd().is_none(), "no pipe before data");
        moved(&mut s);
        assert_eq!(size_of(&s), DEFAULT_PIPE_SIZE);
        set_pipe_size(128 * 1024);
        let mut t = Splice::new();
        moved(&mut t);
        set_pipe_size(DEFAULT_PIPE_SIZE);
        assert_eq!(size_of(&t), 128 * 1024);
    }

    #[test]
    fn limits_without_pipe_size_parse_to_the_default() {
        // A configuration from a supervisor that predates `--pipe-size`.
        let mut v = serde_json::to_value(crate::ctl::Limits::default()).unwrap();
        v.as_object_mut().unwrap().remove("pipe_size");
        let l: crate::ctl::Limits = serde_json::from_value(v).unwrap();
        assert_eq!(l.pipe_size, DEFAULT_PIPE_SIZE);
    }
}
