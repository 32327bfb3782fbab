//! One direction's moves, from a source socket to a destination socket:
//! the [`Direction`] trait (how bytes get across: a splice, an fd relay)
//! and [`transfer`], which runs one until neither side can make progress.
//! What a transfer's end or failure means for the connection is the
//! duplex's (`duplex.rs`).

use crate::stock::Stock;
use crate::stream::Ready;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Which end of a relayed direction a syscall failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// One direction's way of moving bytes from a source to a destination.
/// Calls are single non-blocking syscalls (or a few); `EAGAIN` comes back
/// as `ErrorKind::WouldBlock`. Errors carry their syscall and side.
///
/// What a direction takes and gives back beyond its own state (pipes, copy
/// buffers, the count of fds held) is the worker's [`Stock`], lent with
/// each call.
pub trait Direction {
    /// A read may be tried now (there is room to hold what it brings).
    fn can_read(&self) -> bool;
    /// Called once at the start of every transfer: a direction that stopped
    /// reading for a reason only the destination can lift (fds it has not
    /// read, [`crate::fdrelay::FdRelay`]) checks it here.
    fn resume(&mut self, _dst: BorrowedFd<'_>) {}
    /// One read from `src` into what the direction holds; Ok(0) = EOF.
    fn read(&mut self, src: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize>;
    /// The last read took fewer bytes than it asked for: a TCP source had
    /// nothing more queued (see [`super::Duplex::short_reads`]).
    fn read_was_short(&self) -> bool {
        false
    }
    /// Bytes read and not yet written.
    fn held(&self) -> usize;
    /// One write of held bytes to `dst`; returns how many it took.
    fn write(&mut self, dst: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize>;
    /// [`Direction::write`] of the source's last bytes, when `dst` is shut
    /// (or closed) as soon as they are all taken: a TCP destination may
    /// hold back a partial segment (`MSG_MORE`) so that the FIN rides on
    /// it, one segment instead of two (the peer's ACK of the data then
    /// also rides on its own FIN or answer).
    fn write_last(&mut self, dst: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        self.write(dst, stock)
    }
    /// Drop (and free, or give back to `stock`) everything held: its
    /// destination cannot take it, or it is all delivered.
    fn discard(&mut self, stock: &mut Stock);
    /// The source reported urgent (TCP out-of-band) data. `splice(2)`
    /// stops at an urgent byte and says EAGAIN from then on; `read(2)`
    /// steps over it.
    fn urgent_seen(&mut self) {}
    /// Read from `src` and throw it away; Ok(0) = EOF.
    fn drain(&mut self, src: BorrowedFd<'_>) -> io::Result<usize> {
        let mut scratch = [0u8; 16 * 1024];
        loop {
            match nix::unistd::read(src.as_raw_fd(), &mut scratch) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }
}

/// What one [`transfer`] did.
#[derive(Debug, Default)]
pub struct Transfer {
    /// Bytes that reached the destination.
    pub bytes: u64,
    /// The source reported EOF.
    pub eof: bool,
    /// The syscall that failed, and on which side; the transfer stopped there.
    pub fault: Option<(Side, io::Error)>,
}

pub(super) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Move src -> dst until neither side can make progress (`read`: the
/// source may still be read). Stops at the first error, leaving what is
/// held in place for the caller to decide about.
pub fn transfer<D: Direction + ?Sized>(
    d: &mut D,
    src: BorrowedFd<'_>,
    sr: &mut Ready,
    dst: BorrowedFd<'_>,
    dr: &mut Ready,
    read: bool,
    stock: &mut Stock,
) -> Transfer {
    let (from, to) = ((src, sr, ShortRead::Unknown), (dst, dr));
    transfer_with(d, from, to, read, false, stock)
}

/// [`transfer`]; `short`: what a short read proves about the source;
/// `shuts`: once the source has ended, `dst` is shut (or closed) as soon
/// as the held bytes are written, so the last write may keep its tail
/// for the FIN ([`Direction::write_last`]).
pub(super) fn transfer_with<D: Direction + ?Sized>(
    d: &mut D,
    (src, sr, short): (BorrowedFd<'_>, &mut Ready, ShortRead),
    (dst, dr): (BorrowedFd<'_>, &mut Ready),
    mut read: bool,
    shuts: bool,
    stock: &mut Stock,
) -> Transfer {
    let mut t = Transfer::default();
    if read {
        d.resume(dst);
    }
    loop {
        let mut progress = false;
        if read && sr.readable && d.can_read() {
            match d.read(src, stock) {
                Ok(0) => {
                    t.eof = true;
                    read = false;
                    progress = true;
                }
                Ok(_) => {
                    progress = true;
                    if d.read_was_short() {
                        match short {
                            ShortRead::Unknown => {}
                            ShortRead::Empty => sr.readable = false,
                            // The read that would say 0 is known: skip
                            // it, and write what was read as the last.
                            ShortRead::End => {
                                t.eof = true;
                                read = false;
                            }
                        }
                    }
                }
                // With bytes held, EAGAIN may mean "no room" (a pipe's
                // slots full of partial pages), not "nothing there": keep
                // `readable` and come back once the bytes are written.
                Err(e) if would_block(&e) => sr.readable = d.held() > 0,
                Err(e) => {
                    t.fault = Some((Side::Source, e));
                    return t;
                }
            }
        }
        if d.held() > 0 && dr.writable {
            let w = if shuts && !read {
                d.write_last(dst, stock)
            } else {
                d.write(dst, stock)
            };
            match w {
                Ok(n) => {
                    t.bytes += n as u64;
                    progress |= n > 0;
                }
                Err(e) if would_block(&e) => dr.writable = false,
                Err(e) => {
                    t.fault = Some((Side::Destination, e));
                    return t;
                }
            }
        }
        if !progress {
            return t;
        }
    }
}

/// What a read from a source that returns fewer bytes than it asked for
/// proves (see [`super::Duplex::short_reads`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ShortRead {
    /// Nothing: read again until EAGAIN or EOF.
    #[default]
    Unknown,
    /// The source is empty now (`readable` is cleared without the read
    /// that would say EAGAIN).
    Empty,
    /// The source's end follows (the read that would return 0 is skipped).
    End,
}
