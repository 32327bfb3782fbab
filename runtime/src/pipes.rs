//! A worker's relay pipes and the spare ones it keeps (HAProxy's pipe
//! pool): a spliced direction takes a pipe with [`Pipe::take`] and gives
//! it back when it drops it. Only an empty pipe goes back to the spares;
//! one with bytes left (a direction cut short) is closed, so no byte of
//! one connection can ever come out of another's pipe.
//!
//! Bounds: at most [`SPARES`] spare pipes, and none once no pipe has been
//! in use for [`LINGER`]: the loop calls [`close_idle_spares`] then, so a
//! worker whose bulk flows have ended holds no pipe, its fds come back to
//! their baseline and its kernel memory to nothing. The spares pay where
//! bulk flows follow each other or overlap (keep-alive responses one after
//! another on a connection, or on several): each one that would have made
//! a pipe (`pipe2` and `F_SETPIPE_SZ`) and closed it (two `close`) reuses
//! one instead. They outlive the moment no pipe is in use on purpose: a
//! worker relaying one large response after another has none in use
//! between two of them.

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Most spare pipes a worker keeps.
pub const SPARES: usize = 32;
/// How long spares outlive the last pipe in use.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The two ends of a pipe, and its size as asked for.
#[derive(Debug)]
struct Ends {
    r: OwnedFd,
    w: OwnedFd,
    /// At most `limits::MAX_PIPE_SIZE`; small, as every connection has two.
    size: u32,
}

thread_local! {
    // Workers are single-threaded: the spares belong to the process.
    static SPARE: RefCell<Vec<Ends>> = const { RefCell::new(Vec::new()) };
    static IN_USE: Cell<usize> = const { Cell::new(0) };
    /// Pipes taken so far (wrapping): tells the loop whether any was
    /// taken since it last looked.
    static TAKEN: Cell<u64> = const { Cell::new(0) };
}

/// A pipe one direction holds, and the bytes it holds.
#[derive(Debug)]
pub struct Pipe {
    ends: Option<Ends>,
    /// Bytes sitting in the pipe: every byte in or out goes through the
    /// direction that holds it, which counts them here.
    queued: u32,
}

impl Pipe {
    /// A pipe of `size` bytes: a spare one if there is one of that size,
    /// else a new one (`O_NONBLOCK | O_CLOEXEC`).
    pub fn take(size: usize) -> io::Result<Pipe> {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let spare = SPARE.with(|s| {
            let mut s = s.borrow_mut();
            // A spare of another size (the size changed since) is closed.
            while let Some(e) = s.pop() {
                if e.size == size {
                    return Some(e);
                }
            }
            None
        });
        let ends = match spare {
            Some(e) => e,
            None => {
                let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                    .map_err(|e| sys("pipe2", e))?;
                // Always set: the default is 16 pages, 1 MiB on 64 KiB-page
                // kernels. Best effort: without it we move less per call.
                let _ = fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size as i32));
                Ends { r, w, size }
            }
        };
        IN_USE.with(|n| n.set(n.get() + 1));
        TAKEN.with(|n| n.set(n.get().wrapping_add(1)));
        Ok(Pipe {
            ends: Some(ends),
            queued: 0,
        })
    }

    /// Bytes in the pipe.
    pub fn queued(&self) -> usize {
        self.queued as usize
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
    pub fn fds(&self) -> io::Result<(BorrowedFd<'_>, BorrowedFd<'_>)> {
        self.ends
            .as_ref()
            .map(|e| (e.r.as_fd(), e.w.as_fd()))
            .ok_or_else(|| io::Error::other("pipe already given back"))
    }

    /// Pipes held by directions now (this thread).
    pub fn in_use() -> usize {
        IN_USE.with(Cell::get)
    }

    /// Spare pipes kept now (this thread).
    pub fn spares() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    /// Pipes taken so far (wrapping; compare two readings for equality).
    pub fn taken() -> u64 {
        TAKEN.with(Cell::get)
    }
}

/// Close every spare pipe (the loop calls it once none has been in use
/// for [`LINGER`]).
pub fn close_idle_spares() {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.shrink_to_fit();
    });
}

/// The loop's watch over the spares: once no pipe is in use and none has
/// been taken for [`LINGER`], the spares are closed.
#[derive(Debug, Default)]
pub struct IdleSpares {
    /// Armed at this reading of [`Pipe::taken`], to fire then.
    armed: Option<(u64, std::time::Instant)>,
}

impl IdleSpares {
    /// After each turn: when to wake to close the spares, if a wake is
    /// newly needed (spares kept, none in use, no wake pending).
    pub fn after_turn(&mut self, now: std::time::Instant) -> Option<std::time::Instant> {
        if self.armed.is_some() || Pipe::in_use() > 0 || Pipe::spares() == 0 {
            return None;
        }
        let at = now + LINGER;
        self.armed = Some((Pipe::taken(), at));
        Some(at)
    }

    /// The wake is due: close the spares if no pipe was taken since it
    /// was armed and none is in use (otherwise the next idle turn arms it
    /// again).
    pub fn due(&mut self, now: std::time::Instant) {
        let Some((taken, at)) = self.armed else {
            return;
        };
        if now < at {
            return;
        }
        self.armed = None;
        if taken == Pipe::taken() && Pipe::in_use() == 0 {
            close_idle_spares();
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let Some(ends) = self.ends.take() else {
            return;
        };
        IN_USE.with(|n| n.set(n.get().saturating_sub(1)));
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if self.queued == 0 && s.len() < SPARES {
                s.push(ends);
            }
            // Otherwise `ends` is dropped here: both fds closed.
        });
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
        let st = nix::sys::stat::fstat(p.fds().unwrap().0.as_raw_fd()).unwrap();
        // st_ino is 32 bits on armv7 (glibc without _FILE_OFFSET_BITS=64).
        (st.st_dev, st.st_ino as u64)
    }

    fn fill(p: &mut Pipe, bytes: &[u8]) {
        let n = nix::unistd::write(p.fds().unwrap().1, bytes).unwrap();
        p.filled(n);
    }

    #[test]
    fn empty_pipes_are_reused_and_one_with_bytes_left_never_is() {
        // Each test runs on a thread of its own: its pool starts empty.
        let keep = Pipe::take(65536).unwrap(); // keeps the pool alive
        let a = Pipe::take(65536).unwrap();
        let a_id = id(&a);
        drop(a);
        assert_eq!(Pipe::spares(), 1, "an empty pipe goes back");
        let b = Pipe::take(65536).unwrap();
        assert_eq!(id(&b), a_id, "and is taken again");
        assert_eq!(Pipe::spares(), 0);

        let mut c = Pipe::take(65536).unwrap();
        let c_id = id(&c);
        fill(&mut c, b"left over");
        drop(c);
        assert_eq!(Pipe::spares(), 0, "a pipe with bytes left is closed");
        let d = Pipe::take(65536).unwrap();
        assert_ne!(id(&d), c_id);
        let mut buf = [0u8; 16];
        assert_eq!(
            nix::unistd::read(d.fds().unwrap().0.as_raw_fd(), &mut buf),
            Err(Errno::EAGAIN),
            "a pipe handed out is empty"
        );
        drop((b, d));
        assert_eq!(Pipe::spares(), 2);
        assert_eq!(Pipe::in_use(), 1);
        drop(keep);
        close_idle_spares();
        assert_eq!((Pipe::in_use(), Pipe::spares()), (0, 0));
    }

    #[test]
    fn spares_outlive_the_last_pipe_in_use_until_the_linger() {
        // One large response after another: none in use between two of
        // them, and the second must not make a pipe of its own.
        let a = Pipe::take(65536).unwrap();
        let a_id = id(&a);
        drop(a);
        assert_eq!((Pipe::in_use(), Pipe::spares()), (0, 1));
        let b = Pipe::take(65536).unwrap();
        assert_eq!(id(&b), a_id, "the spare is taken again");
        drop(b);
        // The loop's watch: armed once, closes nothing while a pipe was
        // taken since, closes the spares after a quiet linger.
        let t0 = std::time::Instant::now();
        let mut w = IdleSpares::default();
        let at = w.after_turn(t0).expect("armed: spares kept, none in use");
        assert_eq!(at, t0 + LINGER);
        assert_eq!(w.after_turn(t0), None, "armed once");
        drop(Pipe::take(65536).unwrap());
        w.due(at);
        assert_eq!(Pipe::spares(), 1, "taken since: kept");
        let at = w.after_turn(at).expect("armed again");
        w.due(at - LINGER / 2);
        assert_eq!(Pipe::spares(), 1, "not due yet");
        let held = Pipe::take(65536).unwrap();
        assert_eq!(w.after_turn(at), None, "a pipe in use: not armed");
        drop(held);
        // `armed` still holds the earlier reading; a take happened since.
        w.due(at);
        assert_eq!(Pipe::spares(), 1);
        let at = w.after_turn(at).expect("armed");
        w.due(at);
        assert_eq!(Pipe::spares(), 0, "a quiet linger: closed");
        assert_eq!(w.after_turn(at), None, "nothing to close: not armed");
    }

    #[test]
    fn the_spares_are_bounded_and_keep_their_size() {
        let keep = Pipe::take(65536).unwrap();
        let many: Vec<Pipe> = (0..SPARES + 8)
            .map(|_| Pipe::take(65536).unwrap())
            .collect();
        drop(many);
        assert_eq!(Pipe::spares(), SPARES);
        // A spare of another size is not handed out.
        let big = Pipe::take(131072).unwrap();
        let size = fcntl(big.fds().unwrap().1.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
        assert_eq!(size, 131072);
        drop((big, keep));
        close_idle_spares();
        assert_eq!(Pipe::spares(), 0);
    }
}
