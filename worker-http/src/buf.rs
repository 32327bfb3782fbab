//! Byte buffers for heads and chunked bodies, and the non-blocking
//! read/write loops edge-triggered readiness needs (run until
//! `WouldBlock`, then clear the flag).
//!
//! MEMORY: a connection owns no full-size buffer between events. A read
//! takes a full-size (`max_head_bytes`) buffer from the worker's spare
//! list ([`Spares`], owned by the worker's handler and lent to every call
//! that may take or give back a buffer) — in a busy worker the same one or two, warm in cache, act as the
//! loop's scratch. When the loop is done with the connection for this
//! event, [`Buf::settle`] hands the buffer back: nothing left in it (a
//! whole head parsed, a chunk written out), the buffer goes back as it is;
//! a few bytes left (a partial head, pipelined bytes), they are copied into
//! an allocation of their own size first; over half the buffer in use (a
//! chunk the peer is slow to take, a large partial head), the connection
//! keeps it. So an idle or trickling client costs the bytes it sent, not
//! 16 KiB, and the spare list is bounded ([`SPARES`]): a burst's buffers
//! go back to the allocator, which `proto::mem::give_back_heap` then
//! returns to the system. A buffer's owner that goes away gives its
//! buffer back first ([`Buf::give_back`]): a `Drop` could not reach the
//! list, and a full-size buffer freed would be allocated and zeroed again
//! by the next read.

use nix::sys::socket::sendmsg;
use runtime::stream::Ready;
use runtime::stream::{Stream, MSG_MORE};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};

/// Bytes held for one socket: none (no memory), a full-size buffer while
/// the loop works on the connection, or between events a right-sized copy
/// of what is held (`data.len() < cap`) or a full-size buffer over half
/// in use.
#[derive(Debug)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    cap: usize,
}

/// What one `read_from` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    pub bytes: usize,
    pub eof: bool,
}

impl Buf {
    pub fn new(cap: usize) -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
            end: 0,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Bytes of memory this buffer holds (for tests and accounting).
    pub fn held(&self) -> usize {
        self.data.len()
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Give the memory back when nothing is buffered.
    pub fn release(&mut self, spares: &mut Spares) {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
            self.give_back(spares);
        }
    }

    /// The loop is done with this connection for now: keep no full-size
    /// buffer that is not worth keeping (see the module comment).
    pub fn settle(&mut self, spares: &mut Spares) {
        if self.data.len() != self.cap || self.cap == 0 {
            return;
        }
        if self.is_empty() {
            self.release(spares);
        } else if self.len() <= self.cap / 2 {
            let small = self.bytes().to_vec();
            self.end = small.len();
            self.start = 0;
            spares.give(std::mem::replace(&mut self.data, small));
        }
    }

    /// Let go of the memory, whatever it holds: a full-size buffer goes
    /// back to `spares`. For an owner about to drop the buffer.
    pub fn give_back(&mut self, spares: &mut Spares) {
        let v = std::mem::take(&mut self.data);
        self.start = 0;
        self.end = 0;
        if v.len() == self.cap && self.cap > 0 {
            spares.give(v);
        }
    }

    /// Before a read: a full-size buffer, holding what was held, at its
    /// start.
    fn enlarge(&mut self, spares: &mut Spares) {
        if self.data.len() == self.cap {
            return;
        }
        let mut big = spares.take(self.cap);
        let n = self.len();
        big[..n].copy_from_slice(self.bytes());
        self.data = big;
        self.start = 0;
        self.end = n;
    }

    /// Read until the source would block, reaches EOF, or the buffer is
    /// full (then `ready.readable` stays set: there may be more).
    pub fn read_from(
        &mut self,
        src: &Stream,
        ready: &mut Ready,
        spares: &mut Spares,
    ) -> io::Result<Got> {
        self.read_inner(src, ready, false, spares)
    }

    /// Like [`Buf::read_from`], but a read that returns less than it asked
    /// for counts as having drained the socket, saving the `read` that
    /// would only say EAGAIN (as nginx does with EPOLLRDHUP). Safe under
    /// edge-triggered epoll for a TCP socket: bytes arriving later raise a
    /// new edge. Not when `hup` (a hang-up, an error or urgent data was
    /// reported: a FIN raises no new edge, and a read stops short at an
    /// urgent byte with bytes behind it), and never on a unix socket (a
    /// read stops short after bytes that carried fds): then the socket is
    /// read until EAGAIN or EOF.
    pub fn read_head(
        &mut self,
        src: &Stream,
        ready: &mut Ready,
        hup: bool,
        spares: &mut Spares,
    ) -> io::Result<Got> {
        let trust = !hup && matches!(src, Stream::Tcp(_));
        self.read_inner(src, ready, trust, spares)
    }

    fn read_inner(
        &mut self,
        src: &Stream,
        ready: &mut Ready,
        short_drains: bool,
        spares: &mut Spares,
    ) -> io::Result<Got> {
        let mut got = Got::default();
        if !ready.readable || self.is_full() {
            return Ok(got);
        }
        self.enlarge(spares);
        loop {
            if self.end == self.cap && self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.cap || !ready.readable {
                return Ok(got);
            }
            match (&*src).read(&mut self.data[self.end..]) {
                Ok(0) => {
                    got.eof = true;
                    return Ok(got);
                }
                Ok(n) => {
                    let asked = self.cap - self.end;
                    self.end += n;
                    got.bytes += n;
                    if short_drains && n < asked {
                        ready.readable = false;
                        return Ok(got);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    ready.readable = false;
                    return Ok(got);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Write up to `max` buffered bytes to `dst`; returns how many went.
    pub fn write_to(&mut self, dst: &Stream, ready: &mut Ready, max: u64) -> io::Result<usize> {
        let want = (self.len() as u64).min(max) as usize;
        let n = write_nb(dst, ready, &self.data[self.start..self.start + want])?;
        self.consume(n);
        Ok(n)
    }
}

/// Most full-size buffers kept for reuse (16 x 16 KiB = 256 KiB at most):
/// a busy worker then neither mallocs nor zeroes a buffer per request,
/// and after a burst the rest go back to the allocator.
pub const SPARES: usize = 16;

/// The worker's full-size buffers not in use (at most [`SPARES`]): one
/// list per worker, owned by its handler (`conns.rs`), so a read takes a
/// buffer some connection gave back rather than a new one.
#[derive(Debug, Default)]
pub struct Spares(Vec<Vec<u8>>);

impl Spares {
    fn take(&mut self, cap: usize) -> Vec<u8> {
        match self.0.iter().rposition(|v| v.len() == cap) {
            Some(i) => self.0.swap_remove(i),
            None => vec![0; cap],
        }
    }

    fn give(&mut self, v: Vec<u8>) {
        if self.0.len() < SPARES {
            self.0.push(v);
        }
    }

    /// Keep at most `n` spare buffers (after a burst, before the heap is
    /// trimmed).
    pub fn trim(&mut self, n: usize) {
        self.0.truncate(n);
        self.0.shrink_to_fit();
    }
}

/// Write as much of `data` as the socket takes now.
pub fn write_nb(dst: &Stream, ready: &mut Ready, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() && ready.writable {
        match (&*dst).write(&data[done..]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "socket took 0 bytes")),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => ready.writable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Bytes queued for one socket (a rewritten head, a canned response).
#[derive(Debug, Default)]
pub struct Out {
    data: Vec<u8>,
    pos: usize,
}

impl Out {
    pub fn is_empty(&self) -> bool {
        self.pos == self.data.len()
    }

    /// Append bytes to send.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    /// Forget what was queued (used when a request is replayed from the
    /// start after a stale pooled backend).
    pub fn rewind(&mut self) {
        self.pos = 0;
    }

    pub fn clear(&mut self) {
        self.data = Vec::new();
        self.pos = 0;
    }

    /// Bytes queued and not sent yet.
    pub fn pending(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Drop the bytes already sent, keeping the allocation, so a queue
    /// that is appended to again and again (interim heads) holds only
    /// what waits. Not for a request head, which `rewind` may replay.
    pub fn compact(&mut self) {
        if self.pos > 0 {
            self.data.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Send the queued bytes and then up to `extra.len()` bytes of `buf`
    /// (a body's start) in as few `writev` calls as the socket allows.
    /// Returns (queued bytes sent, buffer bytes sent); the buffer bytes are
    /// consumed from `buf`. `last`: these are the connection's last bytes
    /// and our FIN follows as soon as they are taken (`shutdown` or
    /// `close` in the same pass): a TCP socket gets them with `MSG_MORE`,
    /// so the FIN rides on the same segment (one segment less, and the
    /// client's ACK rides on its own FIN).
    pub fn flush_with(
        &mut self,
        dst: &Stream,
        ready: &mut Ready,
        buf: &mut Buf,
        extra: usize,
        last: bool,
    ) -> io::Result<(usize, usize)> {
        let more = last && matches!(dst, Stream::Tcp(_));
        let (mut head, mut body) = (0, 0);
        while ready.writable && (!self.is_empty() || body < extra) {
            let tail = &buf.bytes()[..extra - body];
            let iov = [
                io::IoSlice::new(&self.data[self.pos..]),
                io::IoSlice::new(tail),
            ];
            let sent = if more {
                sendmsg::<()>(dst.as_fd().as_raw_fd(), &iov, &[], MSG_MORE, None)
                    .map_err(io::Error::from)
            } else {
                (&*dst).write_vectored(&iov)
            };
            match sent {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "socket took 0 bytes")),
                Ok(n) => {
                    let h = n.min(self.data.len() - self.pos);
                    self.pos += h;
                    head += h;
                    buf.consume(n - h);
                    body += n - h;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => ready.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((head, body))
    }

    /// Send what the socket takes; memory is kept until `clear`, so a
    /// request head can still be replayed.
    pub fn flush(&mut self, dst: &Stream, ready: &mut Ready) -> io::Result<usize> {
        let n = write_nb(dst, ready, &self.data[self.pos..])?;
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
