//! A worker's relay pipes and the spare ones it keeps (HAProxy's pipe
//! pool): [`Pipes`], owned by the worker loop and lent to the relays
//! (in its `stock::Stock`). A spliced direction takes a pipe with
//! [`Pipes::take`] and gives it back with [`Pipes::give_back`] when its
//! flow ends. Only an empty pipe goes back to the spares; one with bytes
//! left (a direction cut short) is closed, so no byte of one connection can
//! ever come out of another's pipe. A pipe dropped instead (its connection
//! closed where no pool is at hand) is closed too.
//!
//! Pipes are `--pipe-size` bytes (`Limits::pipe_size`, set from Init and
//! every Update: [`Pipes::resize`]).
//!
//! Bounds: at most [`SPARES`] spare pipes, and none once no pipe has been
//! in use for [`LINGER`]: the loop asks [`Pipes::after_turn`] and
//! [`Pipes::due`], so a worker whose bulk flows have ended holds no pipe,
//! its fds come back to their baseline and its kernel memory to nothing.
//! The spares pay where bulk flows follow each other or overlap
//! (keep-alive responses one after another on a connection, or on
//! several): each one that would have made a pipe (`pipe2` and
//! `F_SETPIPE_SZ`) and closed it (two `close`) reuses one instead. They
//! outlive the moment no pipe is in use on purpose: a worker relaying one
//! large response after another has none in use between two of them.
//!
//! Each pipe out holds a share of its pool (an `Rc`): the pool counts the
//! pipes in use ([`Rc::strong_count`]) without being told of a drop.

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use proto::limits::{default, MAX_PIPE_SIZE};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Most spare pipes a worker keeps.
pub const SPARES: usize = 32;
/// How long spares outlive the last pipe in use.
pub const LINGER: Duration = Duration::from_secs(1);

/// The two ends of a spare pipe, and its size as asked for.
#[derive(Debug)]
struct Ends {
    r: OwnedFd,
    w: OwnedFd,
    size: u32,
}

/// A pipe one direction holds, and the bytes it holds.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// At most `limits::MAX_PIPE_SIZE`; small, as every connection has two.
    size: u32,
    /// Bytes sitting in the pipe: every byte in or out goes through the
    /// direction that holds it, which counts them here.
    queued: u32,
    /// Counts it in use in its pool until dropped ([`Pipes::in_use`]).
    _in_use: Rc<()>,
}

impl Pipe {
    /// Bytes in the pipe.
    pub fn queued(&self) -> usize {
        self.queued as usize
    }

    /// Bytes the pipe was asked to hold (`--pipe-size` when it was made).
    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// `n` bytes went in (at most the pipe's size, so they fit).
    pub fn filled(&mut self, n: usize) {
        self.queued = self
            .queued
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// `n` bytes came out.
    pub fn drained(&mut self, n: usize) {
        self.queued = self
            .queued
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// (read end, write end).
    pub fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.r.as_fd(), self.w.as_fd())
    }
}

/// A worker's pipes: their size, the spares, and the watch that closes
/// the spares once idle.
#[derive(Debug)]
pub struct Pipes {
    /// Size of the pipes made from now on.
    size: u32,
    spare: Vec<Ends>,
    /// The pool's share: every pipe out holds another.
    in_use: Rc<()>,
    /// Pipes taken so far (wrapping): tells whether any was taken since
    /// the watch was armed.
    taken: u64,
    /// Armed at this reading of `taken`, to close the spares then.
    armed: Option<(u64, Instant)>,
}

impl Default for Pipes {
    fn default() -> Pipes {
        Pipes {
            size: default::PIPE_SIZE as u32,
            spare: Vec::new(),
            in_use: Rc::new(()),
            taken: 0,
            armed: None,
        }
    }
}

impl Pipes {
    /// Pipes of `bytes` from now on (`Limits::pipe_size`, at Init and on
    /// every Update); the kernel rounds it up to a power of two pages.
    /// Spares of another size are closed.
    pub fn resize(&mut self, bytes: usize) {
        let size = u32::try_from(bytes.clamp(1, MAX_PIPE_SIZE)).unwrap_or(u32::MAX);
        if size != self.size {
            self.size = size;
            self.close_spares();
        }
    }

    /// A pipe of the current size: a spare one if there is one, else a
    /// new one (`O_NONBLOCK | O_CLOEXEC`).
    pub fn take(&mut self) -> io::Result<Pipe> {
        let ends = match self.spare.pop() {
            Some(e) => e,
            None => {
                let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                    .map_err(|e| sys("pipe2", e))?;
                // Always set: the default is 16 pages, 1 MiB on 64 KiB-page
                // kernels. Best effort: without it we move less per call.
                let _ = fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(self.size as i32));
                Ends {
                    r,
                    w,
                    size: self.size,
                }
            }
        };
        self.taken = self.taken.wrapping_add(1);
        Ok(Pipe {
            r: ends.r,
            w: ends.w,
            size: ends.size,
            queued: 0,
            _in_use: self.in_use.clone(),
        })
    }

    /// A direction is done with `p`: a spare if empty and of the current
    /// size (and there is room), else closed.
    pub fn give_back(&mut self, p: Pipe) {
        if p.queued == 0 && p.size == self.size && self.spare.len() < SPARES {
            self.spare.push(Ends {
                r: p.r,
                w: p.w,
                size: p.size,
            });
        }
        // Otherwise `p` is dropped here: both fds closed.
    }

    /// Pipes held by directions now.
    pub fn in_use(&self) -> usize {
        Rc::strong_count(&self.in_use) - 1
    }

    /// Spare pipes kept now.
    pub fn spares(&self) -> usize {
        self.spare.len()
    }

    /// Close every spare pipe.
    pub fn close_spares(&mut self) {
        self.spare.clear();
        self.spare.shrink_to_fit();
    }

    /// After each loop turn: when to wake to close the spares, if a wake
    /// is newly needed (spares kept, none in use, no wake pending).
    pub fn after_turn(&mut self, now: Instant) -> Option<Instant> {
        if self.armed.is_some() || self.in_use() > 0 || self.spares() == 0 {
            return None;
        }
        let at = now + LINGER;
        self.armed = Some((self.taken, at));
        Some(at)
    }

    /// The wake is due: close the spares if no pipe was taken since it
    /// was armed and none is in use (otherwise the next idle turn arms it
    /// again).
    pub fn due(&mut self, now: Instant) {
        let Some((taken, at)) = self.armed else {
            return;
        };
        if now < at {
            return;
        }
        self.armed = None;
        if taken == self.taken && self.in_use() == 0 {
            self.close_spares();
        }
    }
}

fn sys(what: &str, e: Errno) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// (device, inode) of a pipe: the same pipe, whatever its fd number.
    fn id(p: &Pipe) -> (u64, u64) {
        let st = nix::sys::stat::fstat(p.fds().0.as_raw_fd()).unwrap();
        // st_ino is 32 bits on armv7 (glibc without _FILE_OFFSET_BITS=64).
        (st.st_dev, st.st_ino as u64)
    }

    fn fill(p: &mut Pipe, bytes: &[u8]) {
        let n = nix::unistd::write(p.fds().1, bytes).unwrap();
        p.filled(n);
    }

    #[test]
    fn empty_pipes_are_reused_and_one_with_bytes_left_never_is() {
        let mut pipes = Pipes::default();
        let keep = pipes.take().unwrap();
        let a = pipes.take().unwrap();
        let a_id = id(&a);
        pipes.give_back(a);
        assert_eq!(pipes.spares(), 1, "an empty pipe goes back");
        let b = pipes.take().unwrap();
        assert_eq!(id(&b), a_id, "and is taken again");
        assert_eq!(pipes.spares(), 0);

        let mut c = pipes.take().unwrap();
        let c_id = id(&c);
        fill(&mut c, b"left over");
        pipes.give_back(c);
        assert_eq!(pipes.spares(), 0, "a pipe with bytes left is closed");
        let d = pipes.take().unwrap();
        assert_ne!(id(&d), c_id);
        let mut buf = [0u8; 16];
        assert_eq!(
            nix::unistd::read(d.fds().0.as_raw_fd(), &mut buf),
            Err(Errno::EAGAIN),
            "a pipe handed out is empty"
        );
        pipes.give_back(b);
        pipes.give_back(d);
        assert_eq!(pipes.spares(), 2);
        assert_eq!(pipes.in_use(), 1);
        drop(keep);
        assert_eq!(pipes.in_use(), 0, "a pipe dropped is in use no more");
        assert_eq!(pipes.spares(), 2, "and is closed, not kept");
        pipes.close_spares();
        assert_eq!((pipes.in_use(), pipes.spares()), (0, 0));
    }

    #[test]
    fn spares_outlive_the_last_pipe_in_use_until_the_linger() {
        // One large response after another: none in use between two of
        // them, and the second must not make a pipe of its own.
        let mut pipes = Pipes::default();
        let a = pipes.take().unwrap();
        let a_id = id(&a);
        pipes.give_back(a);
        assert_eq!((pipes.in_use(), pipes.spares()), (0, 1));
        let b = pipes.take().unwrap();
        assert_eq!(id(&b), a_id, "the spare is taken again");
        pipes.give_back(b);
        // The loop's watch: armed once, closes nothing while a pipe was
        // taken since, closes the spares after a quiet linger.
        let t0 = Instant::now();
        let at = pipes
            .after_turn(t0)
            .expect("armed: spares kept, none in use");
        assert_eq!(at, t0 + LINGER);
        assert_eq!(pipes.after_turn(t0), None, "armed once");
        let p = pipes.take().unwrap();
        pipes.give_back(p);
        pipes.due(at);
        assert_eq!(pipes.spares(), 1, "taken since: kept");
        let at = pipes.after_turn(at).expect("armed again");
        pipes.due(at - LINGER / 2);
        assert_eq!(pipes.spares(), 1, "not due yet");
        let held = pipes.take().unwrap();
        assert_eq!(pipes.after_turn(at), None, "a pipe in use: not armed");
        pipes.give_back(held);
        // `armed` still holds the earlier reading; a take happened since.
        pipes.due(at);
        assert_eq!(pipes.spares(), 1);
        let at = pipes.after_turn(at).expect("armed");
        pipes.due(at);
        assert_eq!(pipes.spares(), 0, "a quiet linger: closed");
        assert_eq!(pipes.after_turn(at), None, "nothing to close: not armed");
    }

    #[test]
    fn the_spares_are_bounded_and_keep_their_size() {
        let mut pipes = Pipes::default();
        let keep = pipes.take().unwrap();
        let many: Vec<Pipe> = (0..SPARES + 8).map(|_| pipes.take().unwrap()).collect();
        for p in many {
            pipes.give_back(p);
        }
        assert_eq!(pipes.spares(), SPARES);
        // Another size: the spares go, a pipe of that size is made, and
        // one of the old size given back is closed.
        pipes.resize(131072);
        assert_eq!(pipes.spares(), 0);
        let big = pipes.take().unwrap();
        let size = fcntl(big.fds().1.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
        assert_eq!((size, big.size()), (131072, 131072));
        pipes.give_back(keep);
        assert_eq!(pipes.spares(), 0, "of the old size: closed");
        pipes.give_back(big);
        assert_eq!(pipes.spares(), 1);
    }
}
