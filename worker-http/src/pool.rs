//! Idle backend connections kept for reuse, so a keep-alive client does
//! not cost a backend connect per request.
//!
//! Idle sockets stay registered with epoll under their own token (see
//! `keys.rs`); parking one only records the pool as its owner.
//!
//! Bounded: at most [`PER_BACKEND`] idle connections per backend (the
//! oldest goes first), each closed after [`IDLE`] by a periodic sweep (one
//! timer for the whole pool, not one per connection). An idle connection stays
//! registered for readability: any event on it means the backend closed it
//! (or sent bytes nobody asked for), and it is closed at once rather than
//! handed to the next request. The race that remains (the backend closes
//! just as a request goes out) is covered by the connection's one retry of
//! a request safe to repeat.
//!
//! No byte of one exchange may reach another client (BEHAVIOUR §5), and
//! readiness flags cannot prove a socket empty (an exact-length splice
//! leaves `readable` set with bytes behind, or clear with bytes arriving):
//! so a connection is handed out only when a non-blocking `MSG_PEEK` finds
//! neither a byte nor EOF on it ([`is_quiet`]). That one probe, at
//! [`Pool::take`], is the check: a connection is parked without one (a
//! probe then would only say earlier what the probe at take says anyway;
//! one that holds bytes or EOF when parked is closed when taken, or by
//! the sweep), so a reused connection costs one probe in all.

use crate::keys::{Owner, Owners};
use fnv::FnvHashMap as FnvMap;
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use proto::types::Backend;
use runtime::slab::Slab;
use runtime::stream::Stream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// As many as nginx's usual `keepalive 64`: enough for a busy client set
/// to find a warm connection instead of paying a connect per request.
pub const PER_BACKEND: usize = 64;
pub const IDLE: Duration = Duration::from_secs(15);

struct Idle {
    stream: Stream,
    backend: Backend,
    since: Instant,
}

#[derive(Default)]
pub struct Pool {
    idle: Slab<Idle>,
    /// Slots per backend, oldest first.
    /// (FNV: the `fnv` crate.)
    by_backend: FnvMap<Backend, Vec<usize>>,
}

/// Nothing to read on `s` and no EOF: `recv(MSG_PEEK | MSG_DONTWAIT)` says
/// EAGAIN. Bytes, EOF or an error (a reset) all mean the connection cannot
/// carry the next request.
pub fn is_quiet(s: &Stream) -> bool {
    let mut probe = [0u8; 1];
    loop {
        match recv(
            s.as_raw_fd(),
            &mut probe,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(Errno::EAGAIN) => return true,
            Err(Errno::EINTR) => continue,
            _ => return false,
        }
    }
}

impl Pool {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.idle.len()
    }

    /// The most recently parked connection to `b` (the least likely to have
    /// been closed by the backend's own idle timeout) that is still quiet:
    /// one that got a byte or EOF since it was parked, whose event is not
    /// handled yet, is closed instead of handed out.
    pub fn take(&mut self, b: &Backend) -> Option<Stream> {
        // An emptied list stays (no allocation per take and put); `retain`
        // drops the lists of backends no route uses any more.
        loop {
            let slot = self.by_backend.get_mut(b)?.pop()?;
            if let Some(i) = self.idle.remove(slot) {
                if is_quiet(&i.stream) {
                    return Some(i.stream);
                }
            }
        }
    }

    /// Park a connection whose last response ended exactly where the bytes
    /// read ended. Not probed: bytes or EOF on it now (an exact-length
    /// splice stops at the body's end without looking further) are found
    /// by the probe of [`Pool::take`], bytes that come later by their event
    /// (`on_event`) or that probe.
    pub fn put(&mut self, owners: &mut Owners, now: Instant, b: &Backend, s: Stream) {
        let slots = match self.by_backend.get_mut(b) {
            Some(slots) => slots,
            None => self.by_backend.entry(b.clone()).or_default(),
        };
        if slots.len() >= PER_BACKEND {
            let oldest = slots.remove(0);
            self.idle.remove(oldest);
        }
        let fd = s.as_raw_fd();
        let (slot, _) = self.idle.insert(Idle {
            stream: s,
            backend: b.clone(),
            since: now,
        });
        owners.set(fd, Owner::Pool(slot));
        slots.push(slot);
    }

    fn forget(&mut self, slot: usize) {
        if let Some(i) = self.idle.remove(slot) {
            if let Some(slots) = self.by_backend.get_mut(&i.backend) {
                slots.retain(|s| *s != slot);
                if slots.is_empty() {
                    self.by_backend.remove(&i.backend);
                }
            }
        }
    }

    /// An event on an idle connection: closed by the backend, or bytes
    /// nobody asked for. Either way it cannot carry the next request.
    /// `readable`: the event reported input, a hang-up or an error. One
    /// that did not (the send buffer freed as the last request's bytes
    /// were acknowledged: the socket is registered edge-triggered for
    /// both) says nothing about input and costs no probe.
    pub fn on_event(&mut self, slot: usize, fd: RawFd, readable: bool) {
        if !readable {
            return;
        }
        let Some(i) = self
            .idle
            .get_mut(slot)
            .filter(|i| i.stream.as_raw_fd() == fd)
        else {
            return;
        };
        if !is_quiet(&i.stream) {
            self.forget(slot);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }

    /// Close connections idle for [`IDLE`]; returns when the next one is
    /// due, if any is left.
    pub fn sweep(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for slots in self.by_backend.values() {
            for slot in slots {
                if let Some(i) = self.idle.get_mut(*slot) {
                    let due = i.since + IDLE;
                    if due <= now {
                        expired.push(*slot);
                    } else {
                        next = Some(next.map_or(due, |n| n.min(due)));
                    }
                }
            }
        }
        for slot in expired {
            self.forget(slot);
        }
        next
    }

    /// Close idle connections to backends no route uses any more (after a
    /// route update, so a provider that moved is not reached at its old
    /// address).
    pub fn retain(&mut self, keep: impl Fn(&Backend) -> bool) {
        let gone: Vec<Backend> = self
            .by_backend
            .keys()
            .filter(|b| !keep(b))
            .cloned()
            .collect();
        for b in gone {
            for slot in self.by_backend.remove(&b).unwrap_or_default() {
                self.idle.remove(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::UnixStream;

    fn fd_of(pool: &mut Pool, slot: usize) -> RawFd {
        pool.idle
            .get_mut(slot)
            .map(|i| i.stream.as_raw_fd())
            .unwrap()
    }

    #[test]
    fn take_put_bound_retain_and_close_detection() {
        let mut owners = Owners::default();
        let mut pool = Pool::default();
        let b: Backend = Backend::Unix("/x".into());
        let mut peers = Vec::new();
        for _ in 0..PER_BACKEND + 2 {
            let (a, p) = UnixStream::pair().unwrap();
            pool.put(&mut owners, Instant::now(), &b, Stream::Unix(a));
            peers.push(p);
        }
        assert_eq!(pool.len(), PER_BACKEND);
        assert!(pool.take(&b).is_some());
        assert_eq!(pool.len(), PER_BACKEND - 1);
        // The newest went first; the two oldest were evicted. Closing the
        // peer of a parked connection makes the probe drop it.
        let slot = pool.by_backend[&b][0];
        let fd = fd_of(&mut pool, slot);
        assert_eq!(owners.get(fd), Owner::Pool(slot));
        drop(peers.remove(2));
        pool.on_event(slot, fd + 1000, true);
        assert_eq!(pool.len(), PER_BACKEND - 1, "event for another fd: ignored");
        pool.on_event(slot, fd, false);
        assert_eq!(
            pool.len(),
            PER_BACKEND - 1,
            "a writable-only event: not probed, kept"
        );
        pool.on_event(slot, fd, true);
        assert_eq!(pool.len(), PER_BACKEND - 2);
        let live = pool.by_backend[&b][0];
        let fd = fd_of(&mut pool, live);
        pool.on_event(live, fd, true);
        assert_eq!(pool.len(), PER_BACKEND - 2, "still open: kept");
        let now = Instant::now();
        assert!(pool.sweep(now).is_some_and(|t| t > now));
        assert_eq!(pool.len(), PER_BACKEND - 2, "not idle long enough: kept");
        assert_eq!(pool.sweep(now + IDLE + IDLE), None);
        assert_eq!(pool.len(), 0, "idle too long: closed");
        for _ in 0..2 {
            let (a, p) = UnixStream::pair().unwrap();
            pool.put(&mut owners, Instant::now(), &b, Stream::Unix(a));
            peers.push(p);
        }
        pool.retain(|x| x != &b);
        assert_eq!(pool.len(), 0);
        assert!(pool.take(&b).is_none());
    }

    #[test]
    fn only_quiet_sockets_are_handed_out_and_parking_does_not_probe() {
        use std::io::Write;
        let mut owners = Owners::default();
        let mut pool = Pool::default();
        let b: Backend = Backend::Unix("/x".into());
        // Parked in turn: a quiet one, one at EOF, one holding bytes (that
        // came after its response, their event not handled yet), and one
        // holding bytes already when parked (an exact-length splice
        // stopped before them). Parking probes none of them.
        let (quiet, _q) = UnixStream::pair().unwrap();
        let quiet_fd = quiet.as_raw_fd();
        pool.put(&mut owners, Instant::now(), &b, Stream::Unix(quiet));
        let (eof, e) = UnixStream::pair().unwrap();
        drop(e);
        pool.put(&mut owners, Instant::now(), &b, Stream::Unix(eof));
        let (late, mut p) = UnixStream::pair().unwrap();
        pool.put(&mut owners, Instant::now(), &b, Stream::Unix(late));
        p.write_all(b"POISON").unwrap();
        let (early, mut p2) = UnixStream::pair().unwrap();
        p2.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        pool.put(&mut owners, Instant::now(), &b, Stream::Unix(early));
        assert_eq!(pool.len(), 4, "parked without a probe");
        // Newest first: the two holding bytes and the one at EOF are
        // closed by the probe at take, the quiet one is handed out.
        let got = pool.take(&b).map(|s| s.as_raw_fd());
        assert_eq!(got, Some(quiet_fd));
        assert_eq!(pool.len(), 0);
        assert!(pool.take(&b).is_none());
    }
}
