//! The copy half of a direction: the user-space chunk and the
//! `read`/`write` calls (also those of a pipe's fallback); its buffers
//! come from the worker's [`crate::stock::Stock`].

use nix::errno::Errno;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// User-space bytes waiting for the destination: `buf[sent..end]`.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) buf: Vec<u8>,
    pub(super) sent: usize,
    pub(super) end: usize,
}

pub(super) fn sys(what: &str, e: Errno) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// One `write(2)`, retried on EINTR; `more`: `send(MSG_MORE)` (a
/// non-socket destination falls back to `write`).
pub(super) fn write_fd(fd: BorrowedFd<'_>, buf: &[u8], more: bool) -> io::Result<usize> {
    use nix::sys::socket::send;
    let mut more = more;
    loop {
        let r = if more {
            send(fd.as_raw_fd(), buf, crate::stream::MSG_MORE)
        } else {
            nix::unistd::write(fd, buf)
        };
        match r {
            Err(Errno::EINTR) => continue,
            Err(Errno::ENOTSOCK) if more => more = false,
            Err(e) => return Err(sys("write to destination", e)),
            Ok(n) => return Ok(n),
        }
    }
}

/// One `read(2)`, retried on EINTR.
pub(super) fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8], what: &str) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(sys(what, e)),
            Ok(n) => return Ok(n),
        }
    }
}
