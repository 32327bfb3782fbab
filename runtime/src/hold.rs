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
//! The worker loop owns the [`Book`] (in `backend::Reach`) and lends it
//! to the dialers; a dialer that holds keeps a [`Ticket`] in its
//! [`Held`] record. A connection may end while held wherever its owner
//! drops it (its client gone, the drain's deadline), with no book at
//! hand: the book sees the ticket gone ([`Rc::strong_count`]) and counts
//! that hold as closed the next time it is asked.

use crate::stream::Stream;
use proto::ctl::Stats;
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The worker's held connections and their counters (`stats`).
#[derive(Debug, Default)]
pub struct Book {
    total: u64,
    connected: u64,
    failed: u64,
    over_limit: u64,
    wait_ms: u64,
    wait_max_ms: u64,
    /// Held connections should be retried now (see [`Book::wake_all`]).
    wake: bool,
    /// The connections held (or whose ticket was dropped since the book
    /// last settled): at most `--max-held`, searched in line.
    held: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    /// What it is counted under ([`share_key`]).
    key: u64,
    since: Instant,
    /// The book's end of the connection's [`Ticket`].
    ticket: Rc<()>,
}

impl Entry {
    /// Its dialer still holds its ticket.
    fn live(&self) -> bool {
        Rc::strong_count(&self.ticket) > 1
    }
}

/// A held connection's place in the [`Book`], kept by its dialer until
/// [`Book::release`]; dropped instead, the hold counts as
/// [`Outcome::Closed`].
#[derive(Debug)]
pub struct Ticket(Rc<()>);

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
    /// The connection ended otherwise (client gone, drain deadline): its
    /// ticket was dropped.
    Closed,
}

impl Book {
    /// Take one more held connection under `key` at `now`, unless `max`
    /// are held already in all or `share` under `key` ([`share`]): that
    /// one is counted as over the limit and gets its error at once.
    pub fn admit(&mut self, max: usize, share: usize, key: u64, now: Instant) -> Option<Ticket> {
        self.settle(now);
        let mine = self.held.iter().filter(|e| e.key == key).count();
        if self.held.len() >= max || mine >= share {
            self.over_limit += 1;
            return None;
        }
        let ticket = Rc::new(());
        self.held.push(Entry {
            key,
            since: now,
            ticket: ticket.clone(),
        });
        self.total += 1;
        Some(Ticket(ticket))
    }

    /// A held connection stops waiting at `now`: how long it waited.
    pub fn release(&mut self, t: Ticket, now: Instant, how: Outcome) -> Duration {
        match self.held.iter().position(|e| Rc::ptr_eq(&e.ticket, &t.0)) {
            Some(i) => {
                let e = self.held.swap_remove(i);
                self.count(now.saturating_duration_since(e.since), how)
            }
            None => Duration::ZERO,
        }
    }

    fn count(&mut self, waited: Duration, how: Outcome) -> Duration {
        match how {
            Outcome::Connected => self.connected += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Closed => {}
        }
        let ms = waited.as_millis().min(u64::MAX as u128) as u64;
        self.wait_ms = self.wait_ms.saturating_add(ms);
        self.wait_max_ms = self.wait_max_ms.max(ms);
        waited
    }

    /// Count the holds whose ticket was dropped (their connection ended
    /// while held) as closed at `now`.
    fn settle(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].live() {
                i += 1;
                continue;
            }
            let e = self.held.swap_remove(i);
            self.count(now.saturating_duration_since(e.since), Outcome::Closed);
        }
    }

    /// Connections held now.
    pub fn held(&self) -> u64 {
        self.held.iter().filter(|e| e.live()).count() as u64
    }

    /// Connections held now under `key` ([`share_key`]).
    pub fn held_for(&self, key: u64) -> u64 {
        self.held
            .iter()
            .filter(|e| e.key == key && e.live())
            .count() as u64
    }

    /// Ask the loop to retry every held connection now: a backend may be
    /// back. Only recorded while something is held.
    pub fn wake_all(&mut self) {
        if self.held() > 0 {
            self.wake = true;
        }
    }

    /// Whether a wake-up was asked for since the last call (the loop then
    /// calls `Dialer::wake` on its held connections).
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// Copy the counters into a stats report at `now`.
    pub fn fill(&mut self, now: Instant, s: &mut Stats) {
        self.settle(now);
        s.held = self.held.len() as u64;
        s.held_total = self.total;
        s.held_connected = self.connected;
        s.held_failed = self.failed;
        s.held_over_limit = self.over_limit;
        s.held_wait_ms = self.wait_ms;
        s.held_wait_max_ms = self.wait_max_ms;
    }
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
    pub until: Instant,
    /// Retries made while held.
    pub tries: u32,
    /// Its place in the book, to release it there.
    pub ticket: Ticket,
}

#[cfg(test)]
mod tests;
