//! One direction of a proxied connection (source socket -> destination
//! socket). A direction starts by copying: `recv` into a small user-space
//! buffer, `send` from it. Once it has read more than [`SPLICE_AFTER`]
//! bytes it is a bulk flow and moves on with `splice(2)` through a pipe,
//! so its bytes no longer enter user space (HAProxy's "splice-auto"). A
//! short exchange (a request and its answer) thus makes no pipe at all:
//! a pipe costs `pipe2`, `F_SETPIPE_SZ`, two `close` and twice the
//! `splice` calls, more than the copy it saves on a few hundred bytes.
//!
//! Buffers hold bytes only while they are in flight: a read takes a
//! [`COPY_CHUNK`] buffer from the worker's [`Stock`] (at most
//! [`crate::stock::SPARE_BUFFERS`] kept) and gives it back as soon as its bytes are
//! written, so an idle connection holds none. One chunk at a time: the
//! source is read again only once the chunk went out, which is the
//! backpressure (a slow reader leaves the bytes in the kernel's socket
//! buffers, not in ours).
//!
//! Pipes come from the worker's spares ([`crate::pipes`], lent with the
//! copy buffers in its [`Stock`] to every call that may take or give back
//! one) and go back there empty; a pipe with bytes left is closed. The
//! pipe is the buffer of a spliced direction: when the destination is slow
//! the pipe fills, the source is no longer read, and TCP flow control
//! pushes back on the sender. Its size is `--pipe-size` (64 KiB by
//! default, `Pipes::resize`): 2 pipes × that size is the kernel memory one
//! connection can hold.
//!
//! Where `splice` is refused (`EINVAL`: an fd type without splice support,
//! e.g. an `O_APPEND` file as destination or an eventfd as source), the
//! direction copies for the rest of its life. The same buffer carries a
//! prefix: bytes that must go out before anything read (a PROXY protocol
//! header, bytes read before a tunnel started).
//!
//! A direction's last bytes, when its destination is shut right after
//! ([`Direction::write_last`]), go with `MSG_MORE` (`SPLICE_F_MORE`): the
//! kernel keeps the partial segment and the FIN of the `shutdown` joins it.
//!
//! [`Splice`] is a [`Direction`] of [`crate::duplex::Duplex`]; `pump` moves
//! one direction alone (http bodies with a known length).

use crate::duplex::{transfer, Direction};
use crate::pipes::{Pipe, Pipes};
use crate::stream::{shutdown_write, Ready};
use nix::errno::Errno;
use nix::fcntl::{splice, SpliceFFlags};
use std::io;
#[cfg(test)]
use std::net::Shutdown;
use std::os::fd::BorrowedFd;
#[cfg(test)]
use std::os::fd::{AsFd, OwnedFd};

mod copy;
mod error;

use crate::stock::{Stock, COPY_CHUNK};
use copy::{read_fd, sys, write_fd, Chunk};
use error::failed;
pub use error::SpliceError;

/// A direction that has read more than this splices from then on. Below
/// it a flow costs two syscalls per chunk and no pipe; above it, copying
/// would cost more CPU than the pipe costs syscalls.
pub const SPLICE_AFTER: u64 = 64 * 1024;
/// What happened in one `pump`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Bytes that reached the destination.
    pub bytes: u64,
    /// The source reached EOF during this pump.
    pub eof: bool,
}

/// `Splice::left` of a direction without a limit.
const NO_LIMIT: u64 = u64::MAX;

/// Most bytes a read may take with `room` to hold them and `left` to read.
fn want(room: usize, left: u64) -> usize {
    room.min(usize::try_from(left).unwrap_or(usize::MAX))
}

/// One direction: copy first, then a pipe (see the module docs); the
/// user-space chunk (a prefix, copied bytes) always goes out first.
#[derive(Debug)]
pub struct Splice {
    pipe: Option<Pipe>,
    copy: Option<Box<Chunk>>,
    /// Remaining bytes this direction may read ([`NO_LIMIT`]: until EOF).
    /// Not an `Option`: every connection has two of these, 8 bytes count.
    left: u64,
    /// Bytes read from the source so far, counted up to past [`SPLICE_AFTER`].
    read: u32,
    /// `splice` was refused for these fds: read/write from now on.
    copying: bool,
    /// Known to be bulk: splice from the first byte.
    bulk: bool,
    /// The last read took fewer bytes than it asked for.
    short: bool,
    /// Source reported EOF (or the limit was reached). For `pump`.
    pub src_done: bool,
    /// Destination's write side has been shut down. For `pump`.
    pub dst_shut: bool,
}

impl Default for Splice {
    fn default() -> Splice {
        Splice {
            pipe: None,
            copy: None,
            left: NO_LIMIT,
            read: 0,
            copying: false,
            bulk: false,
            short: false,
            src_done: false,
            dst_shut: false,
        }
    }
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
            Some(c) => {
                c.buf.truncate(c.end);
                c.buf.extend_from_slice(&bytes);
                c.end = c.buf.len();
            }
            None => {
                let end = bytes.len();
                self.copy = Some(Box::new(Chunk {
                    buf: bytes,
                    sent: 0,
                    end,
                }))
            }
        }
    }

    /// Move at most `n` more bytes, then stop as if the source ended
    /// (used for bodies with a known length). Does not shut the destination.
    pub fn set_limit(&mut self, n: Option<u64>) {
        self.left = n.unwrap_or(NO_LIMIT);
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

    /// Whether reads go through a pipe now (the flow passed [`SPLICE_AFTER`]).
    pub fn is_splicing(&self) -> bool {
        !self.copying && (self.bulk || u64::from(self.read) > SPLICE_AFTER)
    }

    /// The flow is known to be bulk (e.g. a body longer than
    /// [`SPLICE_AFTER`]): splice from the first byte, no copy phase.
    pub fn splice_now(&mut self) {
        self.bulk = true;
    }

    /// The pipe's read end, if the direction holds one (tests check it).
    pub fn pipe_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.fds().0)
    }

    fn copy_left(&self) -> usize {
        self.copy.as_ref().map_or(0, |c| c.end - c.sent)
    }

    fn in_pipe(&self) -> usize {
        self.pipe.as_ref().map_or(0, Pipe::queued)
    }

    /// The direction's pipe, taken from `pipes` at its first use.
    fn pipe(&mut self, pipes: &mut Pipes) -> io::Result<&mut Pipe> {
        match &mut self.pipe {
            Some(p) => Ok(p),
            none => Ok(none.insert(pipes.take()?)),
        }
    }

    /// Its connection closes with the direction under way: the pipe goes
    /// back to the spares if empty (closed otherwise), as at its end.
    pub fn release(&mut self, stock: &mut Stock) {
        self.give_back_pipe(&mut stock.pipes);
    }

    /// The pipe goes back to `pipes` (a spare if empty).
    fn give_back_pipe(&mut self, pipes: &mut Pipes) {
        if let Some(p) = self.pipe.take() {
            pipes.give_back(p);
        }
    }

    /// Most bytes the next read may take.
    fn want(&self, room: usize) -> usize {
        want(room, self.left)
    }

    fn took(&mut self, n: usize) {
        if self.left != NO_LIMIT {
            self.left = self.left.saturating_sub(n as u64);
        }
        if u64::from(self.read) <= SPLICE_AFTER {
            self.read = self
                .read
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }

    /// splice(2) said EINVAL: these fds cannot be spliced.
    fn fall_back(&mut self, which: &str) {
        if !self.copying {
            proto::debug!("splice {which} refused (EINVAL); copying through a buffer instead");
            self.copying = true;
        }
    }

    fn read_copy(&mut self, src: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        let want = self.want(COPY_CHUNK);
        let mut buf = stock.take_buffer();
        let n = match read_fd(src, &mut buf[..want], "read from source") {
            Ok(n) => n,
            Err(e) => {
                stock.give_buffer(buf);
                return Err(e);
            }
        };
        self.short = n > 0 && n < want;
        if n == 0 {
            stock.give_buffer(buf);
        } else {
            self.copy = Some(Box::new(Chunk {
                buf,
                sent: 0,
                end: n,
            }));
            self.took(n);
        }
        Ok(n)
    }

    /// Copy fallback with bytes still in the pipe: take a chunk of them
    /// into the (empty) buffer, so the order holds.
    fn unpipe(&mut self, stock: &mut Stock) -> io::Result<()> {
        let mut buf = stock.take_buffer();
        let want = self.in_pipe().min(COPY_CHUNK);
        let pipe = self.pipe(&mut stock.pipes)?;
        let (pr, _) = pipe.fds();
        let n = match read_fd(pr, &mut buf[..want], "read from pipe") {
            Ok(n) => n,
            Err(e) => {
                stock.give_buffer(buf);
                return Err(e);
            }
        };
        pipe.drained(n);
        self.copy = Some(Box::new(Chunk {
            buf,
            sent: 0,
            end: n,
        }));
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
        stock: &mut Stock,
    ) -> io::Result<Moved> {
        let read = !self.src_done;
        let t = transfer(self, src, src_ready, dst, dst_ready, read, stock);
        if t.eof || self.left == 0 {
            self.src_done = true;
        }
        if let Some((side, e)) = t.fault {
            return Err(failed(side, e));
        }
        if shut_on_eof && self.finished() && !self.dst_shut {
            self.dst_shut = true;
            shutdown_write(dst)?;
        }
        if self.finished() {
            // Nothing more will pass: the pipe goes back now.
            self.give_back_pipe(&mut stock.pipes);
        }
        Ok(Moved {
            bytes: t.bytes,
            eof: t.eof,
        })
    }

    /// One write of held bytes; `last`: they end the stream and the
    /// destination is shut right after (`Direction::write_last`): `MORE`
    /// keeps a partial TCP segment queued for the FIN to join.
    fn put(&mut self, dst: BorrowedFd<'_>, last: bool, stock: &mut Stock) -> io::Result<usize> {
        if self.copy.is_none() && self.in_pipe() > 0 && !self.copying {
            let mut flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
            if last {
                flags |= SpliceFFlags::SPLICE_F_MORE;
            }
            let pipe = self.pipe(&mut stock.pipes)?;
            let queued = pipe.queued();
            let (pr, _) = pipe.fds();
            match splice(pr, None, dst, None, queued, flags) {
                Ok(n) => {
                    pipe.drained(n);
                    return Ok(n);
                }
                Err(Errno::EINVAL) => self.fall_back("to the destination"),
                Err(e) => return Err(sys("splice to destination", e)),
            }
        }
        if self.copy.is_none() {
            if self.in_pipe() == 0 {
                return Ok(0);
            }
            self.unpipe(stock)?;
        }
        let Some(c) = self.copy.as_mut() else {
            return Ok(0);
        };
        let n = write_fd(dst, &c.buf[c.sent..c.end], last)?;
        c.sent += n;
        if c.sent == c.end {
            // Nothing in flight here: the buffer goes back.
            if let Some(c) = self.copy.take() {
                stock.give_buffer(c.buf);
            }
        }
        Ok(n)
    }
}

impl Direction for Splice {
    fn can_read(&self) -> bool {
        if self.left == 0 {
            return false;
        }
        if !self.is_splicing() {
            // One chunk at a time, after whatever the pipe still holds.
            return self.held() == 0;
        }
        self.pipe.as_ref().is_none_or(|p| p.queued() < p.size())
    }

    fn read(&mut self, src: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        if !self.is_splicing() {
            return self.read_copy(src, stock);
        }
        self.short = false;
        let left = self.left;
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let pipe = self.pipe(&mut stock.pipes)?;
        let want = want(pipe.size() - pipe.queued(), left);
        let (_, pw) = pipe.fds();
        match splice(src, None, pw, None, want, flags) {
            Ok(n) => {
                pipe.filled(n);
                self.took(n);
                Ok(n)
            }
            Err(Errno::EINVAL) => {
                self.fall_back("from the source");
                if self.held() > 0 {
                    // Read again once what is held has gone out.
                    return Err(io::Error::from(io::ErrorKind::WouldBlock));
                }
                self.read_copy(src, stock)
            }
            Err(e) => Err(sys("splice from source", e)),
        }
    }

    fn read_was_short(&self) -> bool {
        self.short
    }

    fn held(&self) -> usize {
        self.copy_left() + self.in_pipe()
    }

    fn write(&mut self, dst: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        self.put(dst, false, stock)
    }

    fn write_last(&mut self, dst: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        self.put(dst, true, stock)
    }

    fn urgent_seen(&mut self) {
        if !self.copying {
            proto::debug!("urgent data from the source; copying instead of splicing from now on");
            // What the pipe holds still goes out first (`unpipe`).
            self.copying = true;
        }
    }

    fn discard(&mut self, stock: &mut Stock) {
        // A pipe with bytes left is closed, never reused.
        self.give_back_pipe(&mut stock.pipes);
        if let Some(c) = self.copy.take() {
            stock.give_buffer(c.buf);
        }
    }
}

#[cfg(test)]
mod tests;
