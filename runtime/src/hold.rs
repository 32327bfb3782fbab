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
//! ([`client_gone`]), not when its hold ends; one that hung up before its
//! hold began is asked when it would begin, and never admitted
//! ([`crate::backend::Real`] with `hung_up`).
//!
//! ## Fair shares of `--max-held`
//! One dead route must not take every slot from a route whose provider
//! is merely restarting (issue 18, item 5). Held connections are counted
//! per route's backend (a route's first backend: its replicas, and
//! routes naming the same backend, count together; see [`share_key`]),
//! and each may hold at most [`share`] = max(1, `--max-held` / R), R the
//! number of distinct such backends among the worker's routes; the
//! worker's total stays at most `--max-held`. Static, so an integrator
//! can predict it: `--max-held 4` with two routes holds two for each.
//!
//! Workers are single-threaded; the book belongs to the process.

use crate::stream::Stream;
use proto::ctl::Stats;
use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
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
    /// Held now per share key ([`share_key`]), only keys with some held:
    /// a few entries (the routes with a provider away), searched in line.
    per_key: Vec<(u64, u32)>,
}

thread_local! {
    static BOOK: RefCell<Book> = const { RefCell::new(Book {
        held: 0, total: 0, connected: 0, failed: 0, over_limit: 0,
        wait_ms: 0, wait_max_ms: 0, wake: false, per_key: Vec::new(),
    }) };
}

/// The key a held connection is counted under: its route's first
/// backend (FNV-1a of its text; two routes whose keys collide would
/// share one share, which costs fairness between them, nothing else).
pub fn share_key(route_backend: &proto::types::Backend) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = fnv::FnvHasher::default();
    route_backend.hash(&mut h);
    h.finish()
}

/// Each route's share of `max_held` when the worker's routes name
/// `backends` distinct first backends: max(1, max_held / backends).
pub fn share(max_held: usize, backends: usize) -> usize {
    (max_held / backends.max(1)).max(1)
}

/// Set `config.limits.held_share` from its routes: the worker loop does
/// it to every config it takes (Init, Update), so the handlers and their
/// dialers read it with the other limits.
pub fn fit(config: &mut proto::ctl::WorkerConfig) {
    let n = routes_sharing(&config.endpoint.routes);
    config.limits.held_share = share(config.limits.max_held, n);
}

/// The distinct first backends among `routes` ([`share`]'s count).
pub fn routes_sharing(routes: &[proto::plan::Route]) -> usize {
    let mut keys: Vec<u64> = routes.iter().map(|r| share_key(&r.via.backend)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len()
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

/// Take one more held connection under `key`, unless `max` are held
/// already in all or `share` under `key` ([`share`]): that one is counted
/// as over the limit and gets its error at once.
pub fn admit(max: usize, share: usize, key: u64) -> bool {
    BOOK.with(|b| {
        let mut b = b.borrow_mut();
        let mine = b.per_key.iter().position(|(k, _)| *k == key);
        let n = mine.map_or(0, |i| b.per_key[i].1);
        if b.held >= max as u64 || n as usize >= share {
            b.over_limit += 1;
            return false;
        }
        match mine {
            Some(i) => b.per_key[i].1 += 1,
            None => b.per_key.push((key, 1)),
        }
        b.held += 1;
        b.total += 1;
        true
    })
}

/// A held connection (admitted under `key`) stops waiting after `waited`.
pub fn release(key: u64, waited: Duration, how: Outcome) {
    BOOK.with(|b| {
        let mut b = b.borrow_mut();
        b.held = b.held.saturating_sub(1);
        if let Some(i) = b.per_key.iter().position(|(k, _)| *k == key) {
            b.per_key[i].1 -= 1;
            if b.per_key[i].1 == 0 {
                b.per_key.swap_remove(i);
            }
        }
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

/// Connections held now under `key` ([`share_key`]).
pub fn held_for(key: u64) -> u64 {
    BOOK.with(|b| {
        let b = b.borrow();
        b.per_key
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| u64::from(*n))
    })
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

/// Whether a held client has gone away (its slot comes back), asked when
/// its socket reported a hang-up or an error (nothing is read from a
/// held client, so only the socket's state can tell), and when a hold
/// would begin for a client that reported one before (then it is not
/// held at all: [`crate::backend::Real`] with `hung_up`). Gone: an error or
/// both directions closed (a reset; on a unix socket, the peer's close),
/// and a FIN that ends the client's side before its request could be
/// sent (issue 18, item 5):
/// - `tunnel` (tcp and unix links: bytes both ways): a FIN after bytes
///   is a half-close after the request, which BEHAVIOUR §5 honours: the bytes
///   still go to the backend and the answer back, so it stays held. A
///   TCP client that sent nothing at all is gone: TCP cannot tell its
///   `close()` from `shutdown(SHUT_WR)`, and it has nothing to deliver.
/// - not `tunnel` (http): any FIN while the request waits for a backend.
///   The request never went anywhere, and a client that shuts its side
///   while waiting has given up in every case that matters (a `close()`,
///   which TCP cannot tell from a half-close; a body cut short), as
///   nginx and HAProxy (`abortonclose`) take it too. Half-close stays
///   honoured once an exchange is under way.
pub fn client_gone(client: &Stream, tunnel: bool) -> bool {
    use nix::libc::{POLLERR, POLLHUP, POLLIN, POLLRDHUP};
    let r = revents(client);
    if r & (POLLERR | POLLHUP) != 0 {
        return true;
    }
    if !tunnel {
        return r & POLLRDHUP != 0;
    }
    matches!(client, Stream::Tcp(_)) && r & POLLIN != 0 && bytes_waiting(client) == Some(0)
}

/// Whether a client reset (or failed): an error, or both directions
/// closed, and nothing else. A FIN alone, with or without bytes before
/// it, is not a reset: a client may half-close and still wait for the
/// backend's first words.
pub fn client_reset(client: &Stream) -> bool {
    revents(client) & (nix::libc::POLLERR | nix::libc::POLLHUP) != 0
}

/// The client socket's state now (`poll`, zero timeout): libc's, as
/// nix's PollFlags knows no POLLRDHUP, the FIN alone (POLLIN says bytes
/// or a FIN, not which). 0 when nothing is pending or poll fails.
fn revents(client: &Stream) -> i16 {
    use nix::libc::{poll, pollfd, POLLIN, POLLRDHUP};
    let mut pfd = pollfd {
        fd: client.as_fd().as_raw_fd(),
        events: POLLIN | POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd, alive for the call; a zero timeout.
    if unsafe { poll(&mut pfd, 1, 0) } <= 0 {
        return 0;
    }
    pfd.revents
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
    /// What it is counted under ([`share_key`]), to release it there.
    pub key: u64,
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
        assert!(!client_gone(&ours, false), "nothing happened");
        b.shutdown(Shutdown::Write).unwrap();
        assert!(!client_gone(&ours, true), "half-closed");
        assert!(client_gone(&ours, false), "half-closed, http: gone");
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
        assert!(!client_gone(&ours, true), "a tunnel's half-close is kept");
        assert!(client_gone(&ours, false), "http: a FIN while held is gone");
        // A FIN with no byte sent: gone for a tunnel and for http.
        let (c, ours) = pair();
        drop(c);
        assert!(eventually(|| client_gone(&ours, true)));
        assert!(client_gone(&ours, false));
        // Bytes and no FIN: kept by both.
        let (mut c, ours) = pair();
        c.write_all(b"GET").unwrap();
        assert!(eventually(|| bytes_waiting(&ours) == Some(3)));
        assert!(!client_gone(&ours, true) && !client_gone(&ours, false));
        drop(c);
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
        assert!(admit(2, 2, 7));
        assert!(admit(2, 2, 7));
        assert!(!admit(2, 2, 7));
        wake_all();
        assert!(take_wake());
        assert!(!take_wake());
        release(7, Duration::from_millis(300), Outcome::Connected);
        release(7, Duration::from_millis(100), Outcome::Failed);
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

    /// Each key holds its share at most; a key's slots come back when its
    /// connections are released; the total bound stays.
    #[test]
    fn each_route_holds_its_share() {
        assert_eq!(
            (share(4, 2), share(4, 3), share(1, 2), share(0, 0)),
            (2, 1, 1, 1)
        );
        let (dead, restarting) = (1, 2);
        let sh = share(4, 2);
        assert!(admit(4, sh, dead) && admit(4, sh, dead));
        assert!(!admit(4, sh, dead), "the dead route's share is full");
        assert!(admit(4, sh, restarting), "the other route still holds");
        assert_eq!((held_for(dead), held_for(restarting), held()), (2, 1, 3));
        release(dead, Duration::ZERO, Outcome::Failed);
        assert!(admit(4, sh, dead));
        assert!(admit(4, sh, restarting));
        assert!(!admit(4, 4, 3), "the total bound");
        for k in [dead, dead, restarting, restarting] {
            release(k, Duration::ZERO, Outcome::Closed);
        }
        assert_eq!((held(), held_for(dead), held_for(restarting)), (0, 0, 0));
    }
}
