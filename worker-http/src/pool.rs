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
//! No byte of one exchange may reach another client (SPEC §5), and
//! readiness flags cannot prove a socket empty (an exact-length splice
//! leaves `readable` set with bytes behind, or clear with bytes arriving):
//! so a connection is handed out only when a non-blocking `MSG_PEEK` finds
//! neither a byte nor EOF on it ([`is_quiet`]). It is parked unprobed when
//! its last read found it drained (bytes that arrive later raise a new
//! edge, which `on_event` sees), probed first otherwise.

use crate::keys::{Owner, Owners};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use proto::fnv::FnvMap;
use proto::graph::Backend;
use proto::slab::Slab;
use proto::stream::Stream;
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
    /// (FNV: `proto::fnv`.)
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
    /// read ended; it is closed instead if the socket holds anything more.
    /// `drained`: the last read of it found it empty (EAGAIN, or a short
    /// read), so bytes that came since raise an event, which closes it
    /// while parked, and [`Pool::take`] looks again anyway: no probe now.
    /// Otherwise (an exact-length splice stopped at the body's end) it is
    /// probed. Returns whether it was parked.
    pub fn put(
        &mut self,
        owners: &mut Owners,
        now: Instant,
        b: &Backend,
        s: Stream,
        drained: bool,
    ) -> bool {
        if !drained && !is_quiet(&s) {
            return false;
        }
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
        true
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
    pub fn on_event(&mut self, slot: usize, fd: RawFd) {
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
            assert!(pool.put(&mut owners, Instant::now(), &b, Stream::Unix(a), false));
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
        pool.on_event(slot, fd + 1000);
        assert_eq!(pool.len(), PER_BACKEND - 1, "event for another fd: ignored");
        pool.on_event(slot, fd);
        assert_eq!(pool.len(), PER_BACKEND - 2);
        let live = pool.by_backend[&b][0];
        let fd = fd_of(&mut pool, live);
        pool.on_event(live, fd);
        assert_eq!(pool.len(), PER_BACKEND - 2, "still open: kept");
        let now = Instant::now();
        assert!(pool.sweep(now).is_some_and(|t| t > now));
        assert_eq!(pool.len(), PER_BACKEND - 2, "not idle long enough: kept");
        assert_eq!(pool.sweep(now + IDLE + IDLE), None);
        assert_eq!(pool.len(), 0, "idle too long: closed");
        for _ in 0..2 {
            let (a, p) = UnixStream::pair().unwrap();
            assert!(pool.put(&mut owners, Instant::now(), &b, Stream::Unix(a), false));
            peers.push(p);
        }
        pool.retain(|x| x != &b);
        assert_eq!(pool.len(), 0);
        assert!(pool.take(&b).is_none());
    }

    #[test]
    fn only_quiet_sockets_are_parked_or_handed_out() {
        use std::io::Write;
        let mut owners = Owners::default();
        let mut pool = Pool::default();
        let b: Backend = Backend::Unix("/x".into());
        let (a, mut p) = UnixStream::pair().unwrap();
        p.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        assert!(!pool.put(&mut owners, Instant::now(), &b, Stream::Unix(a), false));
        let (a, p) = UnixStream::pair().unwrap();
        drop(p);
        assert!(
            !pool.put(&mut owners, Instant::now(), &b, Stream::Unix(a), false),
            "EOF"
        );
        assert_eq!(pool.len(), 0);
        // Bytes that arrive while parked, before their event is handled:
        // take skips that one and hands out the older, quiet one.
        let (quiet, _q) = UnixStream::pair().unwrap();
        let quiet_fd = quiet.as_raw_fd();
        assert!(pool.put(&mut owners, Instant::now(), &b, Stream::Unix(quiet), false));
        let (a, mut p) = UnixStream::pair().unwrap();
        assert!(pool.put(&mut owners, Instant::now(), &b, Stream::Unix(a), false));
        p.write_all(b"POISON").unwrap();
        let got = pool.take(&b).map(|s| s.as_raw_fd());
        assert_eq!(got, Some(quiet_fd));
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn a_drained_connection_is_parked_unprobed_and_probed_when_taken() {
        use std::io::Write;
        let mut owners = Owners::default();
        let mut pool = Pool::default();
        let b: Backend = Backend::Unix("/x".into());
        // Bytes that came after the last read (their event not handled
        // yet): parked, since the caller saw the socket drained, but never
        // handed out.
        let (a, mut p) = UnixStream::pair().unwrap();
        p.write_all(b"POISON").unwrap();
        assert!(pool.put(&mut owners, Instant::now(), &b, Stream::Unix(a), true));
        let (c, _q) = UnixStream::pair().unwrap();
        let (d, e) = UnixStream::pair().unwrap();
        drop(e);
        assert!(pool.put(&mut owners, Instant::now(), &b, Stream::Unix(c), true));
        assert!(pool.put(&mut owners, Instant::now(), &b, Stream::Unix(d), true));
        assert_eq!(pool.len(), 3);
        // Newest first: the one at EOF is skipped, then the quiet one.
        assert!(pool.take(&b).is_some());
        assert_eq!(pool.len(), 1);
        assert!(pool.take(&b).is_none(), "the one holding bytes is closed");
        assert_eq!(pool.len(), 0);
    }
}
