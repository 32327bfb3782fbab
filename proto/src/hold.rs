//! Holding connections while a provider comes back.
//!
//! A provider restarts (auto-recovery, an update, a lease coming back):
//! for a few seconds its port refuses, its unix socket is missing, its
//! address is unreachable. Rather than refuse the client (tcp, unix) or
//! answer 502 (http), the worker keeps the client connection and the
//! `backend::Dialer` keeps trying, for up to `--hold-timeout`.
//! This module is the worker's book of held connections: the bound
//! (`--max-held`), the counters reported in `stats`, and the wake-up
//! asked for when a backend may be back (a route update, a health check
//! that saw it up), which the event loops act on by retrying every held
//! connection at once.
//!
//! A held connection costs what an idle one does: its client socket, its
//! slot and a timer entry; nothing is read from the client meanwhile (its
//! bytes wait in the kernel, under TCP flow control), no pipe, no buffer.
//! A held client that hangs up is let go when its socket says so
//! ([`client_gone`]), not when its hold ends.
//!
//! Workers are single-threaded; the book belongs to the process.

use crate::ctl::Stats;
use crate::stream::Stream;
use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Copy)]
struct Book {
    held: u64,
    total: u64,
    connected: u64,
    failed: u64,
    over_limit: u64,
    wait_ms: u64,
    wait_max_ms: u64,
    /// Held connections should be retried now (see [`wake_all`]).
    wake: bool,
}

thread_local! {
    static BOOK: RefCell<Book> = const { RefCell::new(Book {
        held: 0, total: 0, connected: 0, failed: 0, over_limit: 0,
        wait_ms: 0, wait_max_ms: 0, wake: false,
    }) };
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend was reached.
    Connected,
    /// The hold timeout passed: the client got the error.
    Failed,
    /// The connection ended otherwise (client gone, drain deadline).
    Closed,
}

/// Take one more held connection, unless `max` are held already (that one
/// is counted as over the limit and gets its error at once).
pub fn admit(max: usize) -> bool {
    BOOK.with(|b| {
        let mut b = b.borrow_mut();
        if b.held >= max as u64 {
            b.over_limit += 1;
            return false;
        }
        b.held += 1;
        b.total += 1;
        true
    })
}

/// A held connection stops waiting after `waited`.
pub fn release(waited: Duration, how: Outcome) {
    BOOK.with(|b| {
        let mut b = b.borrow_mut();
        b.held = b.held.saturating_sub(1);
        match how {
            Outcome::Connected => b.connected += 1,
            Outcome::Failed => b.failed += 1,
            Outcome::Closed => {}
        }
        let ms = waited.as_millis().min(u64::MAX as u128) as u64;
        b.wait_ms = b.wait_ms.saturating_add(ms);
        b.wait_max_ms = b.wait_max_ms.max(ms);
    })
}

/// Connections held now.
pub fn held() -> u64 {
    BOOK.with(|b| b.borrow().held)
}

/// Ask the loop to retry every held connection now: a backend may be back.
/// Only recorded while something is held.
pub fn wake_all() {
    BOOK.with(|b| {
        let mut b = b.borrow_mut();
        if b.held > 0 {
            b.wake = true;
        }
    })
}

/// Whether a wake-up was asked for since the last call (the loop then
/// calls `Dialer::wake` on its held connections).
pub fn take_wake() -> bool {
    BOOK.with(|b| std::mem::take(&mut b.borrow_mut().wake))
}

/// Copy the counters into a stats report.
pub fn fill(s: &mut Stats) {
    BOOK.with(|b| {
        let b = b.borrow();
        s.held = b.held;
        s.held_total = b.total;
        s.held_connected = b.connected;
        s.held_failed = b.failed;
        s.held_over_limit = b.over_limit;
        s.held_wait_ms = b.wait_ms;
        s.held_wait_max_ms = b.wait_max_ms;
    })
}

/// Delay before held retry number `n` (1-based): 100, 200, 400 ms, then
/// every 500 ms. Short, because a provider that is back should be used at
/// once; a health check or a route update wakes held connections sooner.
pub fn retry_delay(n: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << n.saturating_sub(1).min(8));
    Duration::from_millis(ms.min(500))
}

/// Whether a held client has gone away, asked when its socket reported a
/// hang-up or an error (nothing is read from a held client, so only the
/// socket's state can tell). Gone: an error or both directions closed (a
/// reset; on a unix socket, the peer's close). A FIN alone is a
/// half-close, which BEHAVIOUR §5 honours: the client's bytes still go to the
/// backend and the answer back, so it stays held; except, for a byte
/// `tunnel` (the tcp worker), a TCP client that sent nothing at all: TCP
/// cannot tell its `close()` from `shutdown(SHUT_WR)`, and such a client
/// has nothing for the backend, so it is taken as gone. An http client
/// has sent its request head before it is held: a FIN after it is a
/// half-close after the request (some clients do it), never gone.
pub fn client_gone(client: &Stream, tunnel: bool) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // POLLIN only: nix knows no POLLRDHUP (a revents holding it would not
    // convert), and readable with no byte waiting says the same: a FIN.
    let mut pfd = [PollFd::new(client.as_fd(), PollFlags::POLLIN)];
    if !matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0) {
        return false;
    }
    let r = pfd[0].revents().unwrap_or(PollFlags::empty());
    if r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
        return true;
    }
    tunnel
        && matches!(client, Stream::Tcp(_))
        && r.contains(PollFlags::POLLIN)
        && bytes_waiting(client) == Some(0)
}

/// Bytes received on `s` and not read yet (`FIONREAD`).
fn bytes_waiting(s: &Stream) -> Option<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which lives
    // for the call.
    let r = unsafe { nix::libc::ioctl(s.as_fd().as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    (r == 0).then_some(n.max(0) as usize)
}

/// A held connection's record, kept by its dialer.
#[derive(Debug)]
pub struct Held {
    pub since: Instant,
    pub until: Instant,
    /// Retries made while held.
    pub tries: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback delivers at once; this only rides out a slow machine.
    fn eventually(f: impl Fn() -> bool) -> bool {
        (0..200).any(|_| {
            let done = f();
            if !done {
                std::thread::sleep(Duration::from_millis(10));
            }
            done
        })
    }

    /// What the kernel tells of a held client that closed, half-closed
    /// or reset, on unix and tcp sockets.
    #[test]
    fn a_client_gone_is_told_from_a_half_closed_one() {
        use std::io::Write;
        use std::net::Shutdown;
        // unix: a half-close is kept, a close is gone (both kinds alike).
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ours = Stream::Unix(mio::net::UnixStream::from_std(a));
        assert!(!client_gone(&ours, true), "nothing happened");
        b.shutdown(Shutdown::Write).unwrap();
        assert!(!client_gone(&ours, true), "half-closed");
        drop(b);
        assert!(client_gone(&ours, true) && client_gone(&ours, false));

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pair = || {
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let s = l.accept().unwrap().0;
            (c, Stream::Tcp(mio::net::TcpStream::from_std(s)))
        };
        // tcp: bytes, then a FIN: a half-close after a request, kept.
        let (mut c, ours) = pair();
        c.write_all(b"request").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert!(eventually(|| bytes_waiting(&ours) == Some(7)));
        assert!(!client_gone(&ours, true) && !client_gone(&ours, false));
        // A FIN with no byte sent: gone for a tunnel, kept for http.
        let (c, ours) = pair();
        drop(c);
        assert!(eventually(|| client_gone(&ours, true)));
        assert!(!client_gone(&ours, false));
        // A reset: gone.
        let (c, ours) = pair();
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::Linger, &linger).unwrap();
        drop(c);
        assert!(eventually(|| client_gone(&ours, false)));
    }

    #[test]
    fn bounded_and_counted() {
        let mut s = Stats::default();
        assert!(admit(2));
        assert!(admit(2));
        assert!(!admit(2));
        wake_all();
        assert!(take_wake());
        assert!(!take_wake());
        release(Duration::from_millis(300), Outcome::Connected);
        release(Duration::from_millis(100), Outcome::Failed);
        fill(&mut s);
        assert_eq!(
            (s.held, s.held_total, s.held_connected, s.held_failed),
            (0, 2, 1, 1)
        );
        assert_eq!(
            (s.held_over_limit, s.held_wait_ms, s.held_wait_max_ms),
            (1, 400, 300)
        );
        // Nothing held: no wake-up is recorded.
        wake_all();
        assert!(!take_wake());
        let d: Vec<u64> = (1..6).map(|n| retry_delay(n).as_millis() as u64).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
    }
}
