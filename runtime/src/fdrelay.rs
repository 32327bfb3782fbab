//! One direction of a unix link (source socket -> destination socket) that
//! carries file descriptors as well as bytes: a [`Direction`] of
//! [`crate::duplex::Duplex`].
//!
//! `splice(2)` cannot carry `SCM_RIGHTS`, so this direction uses
//! `recvmsg`/`sendmsg` (through [`proto::fdpass`]) and a user-space buffer
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
//!
//! Fds are back-pressured on their own, since they cost no socket buffer:
//! a stream `sendmsg` of one byte with 253 fds takes ~1 KiB of the send
//! buffer, so a destination that never reads could otherwise be handed
//! tens of thousands of fds, each an open file pinned in the kernel (and
//! counted against our uid's in-flight limit, which every other link of
//! this worker shares). Two bounds:
//! - per direction, [`MAX_UNREAD_FDS`]: once that many fds were passed
//!   and the destination has not been seen to read everything we sent it
//!   (`SIOCOUTQ`, asked only in that state), the source is not read; it
//!   is read again once the destination has. At most one message more
//!   (`recvmsg` cannot take part of its fds) is then in flight.
//! - per worker, [`held_budget`]: a destination that cannot take the
//!   chunk we hold for it leaves its fds in our fd table. When the fds so
//!   held by all connections (counted in the worker's [`Stock`], lent to
//!   every pump) pass a quarter of the worker's fd limit, the
//!   direction that cannot deliver is failed (its fds closed, its source
//!   drained), so stalled peers can never exhaust the fds that other
//!   connections need for their sockets.

use crate::duplex::Direction;
use crate::stock::Stock;
use nix::errno::Errno;
use proto::fdpass;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;

/// Bytes moved by one read, and the buffer's size while in flight.
pub const CHUNK: usize = 16 * 1024;

/// Fds passed to a destination that has not read everything we sent it,
/// at which the source is no longer read. Display and bus protocols pass
/// a few fds at a time (Wayland at most 28 per message) to peers that read
/// them at once, so this is reached only by a peer that stops reading.
pub const MAX_UNREAD_FDS: usize = 64;

/// `SIOCOUTQ` below this means nothing of ours is queued at the peer: a
/// unix socket's send queue counts each queued message's whole buffer
/// (several hundred bytes even for one byte, on 32-bit too), and the
/// kernel wakes us for the last one freed while its final 1 is still
/// counted.
const EMPTY_OUTQ: i32 = 128;

/// An fd a relay holds, counted in its worker's [`Stock::fds_held`]
/// until dropped.
#[derive(Debug)]
struct HeldFd {
    fd: OwnedFd,
    _counted: Rc<()>,
}

/// The most fds all relays of this process may hold for destinations that
/// cannot take them: a quarter of the fd limit, the rest being for
/// sockets. Asked of the kernel only when a destination is full while we
/// hold fds for it (rare, and the limit may have been changed by prlimit).
pub fn held_budget() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    // rlim_t (u64, or u32 on 32-bit arm) -> usize: the limit is below
    // 2^31 on any kernel (fs.nr_open), so saturating is only a formality.
    usize::try_from(soft / 4).unwrap_or(usize::MAX)
}

#[derive(Debug, Default)]
pub struct FdRelay {
    /// Empty (no allocation) while idle; CHUNK bytes while in flight.
    buf: Vec<u8>,
    /// Bytes of `buf` holding data, and how many of those were sent.
    len: usize,
    sent: usize,
    /// Fds that arrived with the chunk; they go with its first sendmsg.
    fds: Vec<HeldFd>,
    /// Fds passed since the destination was last seen to have read all we
    /// sent it; at [`MAX_UNREAD_FDS`] the source is not read.
    unread_fds: usize,
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

    /// Fds passed that the destination may not have read yet (as far as
    /// this relay knows: reset only when it checks, see [`MAX_UNREAD_FDS`]).
    pub fn unread_fds(&self) -> usize {
        self.unread_fds
    }

    fn hold_fds(&mut self, fds: Vec<OwnedFd>, stock: &Stock) {
        self.fds.clear();
        self.fds.extend(fds.into_iter().map(|fd| HeldFd {
            fd,
            _counted: stock.count_fd(),
        }));
    }

    /// Close (or forget, once sent) the fds held.
    fn drop_fds(&mut self) {
        self.fds.clear();
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
        self.len == 0 && self.unread_fds < MAX_UNREAD_FDS
    }

    /// Reading stopped at [`MAX_UNREAD_FDS`]: one `SIOCOUTQ` per pass
    /// while stopped (never otherwise) tells whether the destination has
    /// read everything. Its reads free our queued messages, which wakes us
    /// with a writable event, so the check runs again when it can succeed.
    fn resume(&mut self, dst: BorrowedFd<'_>) {
        if self.unread_fds >= MAX_UNREAD_FDS && self.len == 0 && outq(dst) < EMPTY_OUTQ {
            self.unread_fds = 0;
        }
    }

    fn read(&mut self, src: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
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
            proto::debug!(
                "dropping {} fd(s): the backend is not a unix socket",
                fds.len()
            );
        } else if !fds.is_empty() {
            self.hold_fds(fds, stock);
        }
        Ok(n)
    }

    fn held(&self) -> usize {
        self.len - self.sent
    }

    fn write(&mut self, dst: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        let iov = [IoSlice::new(&self.buf[self.sent..self.len])];
        let raw: Vec<RawFd> = self.fds.iter().map(|f| f.fd.as_raw_fd()).collect();
        let n = match fdpass::send_with_fds(dst.as_raw_fd(), &iov, &raw) {
            Ok(n) => n,
            Err(Errno::EAGAIN) if !raw.is_empty() && stock.fds_held() > held_budget() => {
                // Only here, where a destination leaves fds in our table,
                // can stalled peers add up to the whole fd limit.
                return Err(io::Error::other(format!(
                    "sendmsg to destination: it takes nothing while the worker holds {} fd(s) \
                     for such destinations (at most {}, a quarter of its fd limit); closing \
                     the {} held for it",
                    stock.fds_held(),
                    held_budget(),
                    raw.len()
                )));
            }
            Err(e) => return Err(sys("sendmsg to destination", e)),
        };
        self.sent += n;
        if n > 0 && !self.fds.is_empty() {
            // The kernel holds its own references now; ours go.
            self.fds_passed += self.fds.len() as u64;
            self.unread_fds = self.unread_fds.saturating_add(self.fds.len());
            self.drop_fds();
        }
        if self.sent == self.len {
            // Keep the buffer for the next read; it goes on EAGAIN or EOF.
            self.sent = 0;
            self.len = 0;
        }
        Ok(n)
    }

    fn discard(&mut self, _: &mut Stock) {
        self.release();
        self.drop_fds();
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

/// Bytes we sent on `fd` that its peer has not read (`SIOCOUTQ`); a
/// failed ioctl counts as "not read", so reading stays stopped rather than
/// trusting what could not be checked.
fn outq(fd: BorrowedFd<'_>) -> i32 {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        i32::MAX
    } else {
        n
    }
}

#[cfg(test)]
mod tests;
