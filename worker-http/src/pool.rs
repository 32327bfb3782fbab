//! Idle backend connections kept for reuse, so a keep-alive client does
//! not cost a backend connect per request.
//!
//! Bounded: at most [`PER_BACKEND`] idle connections per backend (the
//! oldest goes first), each closed after [`IDLE`]. An idle connection stays
//! registered for readability: any event on it means the backend closed it
//! (or sent bytes nobody asked for), and it is closed at once rather than
//! handed to the next request. The race that remains (the backend closes
//! just as a request goes out) is covered by the connection's one retry.

use crate::keys::{self, Timer};
use crate::slab::Slab;
use mio::{Interest, Registry};
use proto::graph::Backend;
use proto::stream::Stream;
use proto::timer::Timers;
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

pub const PER_BACKEND: usize = 8;
pub const IDLE: Duration = Duration::from_secs(15);

struct Idle {
    stream: Stream,
    backend: Backend,
}

#[derive(Default)]
pub struct Pool {
    idle: Slab<Idle>,
    /// Slots per backend, oldest first.
    by_backend: HashMap<Backend, Vec<usize>>,
}

impl Pool {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.idle.len()
    }

    /// The most recently parked connection to `b` (the least likely to have
    /// been closed by the backend's own idle timeout).
    pub fn take(&mut self, b: &Backend) -> Option<Stream> {
        let slots = self.by_backend.get_mut(b)?;
        let slot = slots.pop();
        if slots.is_empty() {
            self.by_backend.remove(b);
        }
        self.idle.remove(slot?).map(|i| i.stream)
    }

    /// Park a connection whose last response ended cleanly.
    pub fn put(
        &mut self,
        reg: &Registry,
        timers: &mut Timers,
        now: Instant,
        b: Backend,
        s: Stream,
    ) {
        let slots = self.by_backend.entry(b.clone()).or_default();
        if slots.len() >= PER_BACKEND {
            let oldest = slots.remove(0);
            self.idle.remove(oldest);
        }
        let (slot, gen) = self.idle.insert(Idle {
            stream: s,
            backend: b,
        });
        let parked = match self.idle.get_mut(slot) {
            Some(i) => reg.reregister(&mut i.stream, keys::pool(slot), Interest::READABLE),
            None => return,
        };
        match parked {
            Ok(()) => {
                slots.push(slot);
                timers.add(now + IDLE, keys::timer(Timer::Pool { slot, gen }));
            }
            Err(e) => {
                proto::debug!("not pooling backend connection: {e}");
                self.idle.remove(slot);
            }
        }
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
    pub fn on_event(&mut self, slot: usize) {
        let Some(i) = self.idle.get_mut(slot) else {
            return;
        };
        let mut probe = [0u8; 1];
        match (&i.stream).read(&mut probe) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => self.forget(slot),
        }
    }

    /// The idle time of the connection in `slot` ran out.
    pub fn expire(&mut self, slot: usize, gen: u32) {
        if self.idle.get_gen(slot, gen).is_some() {
            self.forget(slot);
        }
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
    use mio::Poll;

    #[test]
    fn take_put_bound_retain_and_close_detection() {
        let poll = Poll::new().unwrap();
        let reg = poll.registry();
        let mut timers = Timers::new();
        let mut pool = Pool::default();
        let b: Backend = Backend::Unix("/x".into());
        let mut peers = Vec::new();
        for _ in 0..PER_BACKEND + 2 {
            let (mut a, p) = UnixStream::pair().unwrap();
            reg.register(&mut a, mio::Token(99), Interest::READABLE)
                .unwrap();
            pool.put(reg, &mut timers, Instant::now(), b.clone(), Stream::Unix(a));
            peers.push(p);
        }
        assert_eq!(pool.len(), PER_BACKEND);
        assert!(pool.take(&b).is_some());
        assert_eq!(pool.len(), PER_BACKEND - 1);
        // The newest went first; the two oldest were evicted. Closing the
        // peer of a parked connection makes the probe drop it.
        let slot = pool.by_backend[&b][0];
        drop(peers.remove(2));
        pool.on_event(slot);
        assert_eq!(pool.len(), PER_BACKEND - 2);
        let live = pool.by_backend[&b][0];
        pool.on_event(live);
        assert_eq!(pool.len(), PER_BACKEND - 2, "still open: kept");
        pool.expire(live, 12345);
        assert_eq!(pool.len(), PER_BACKEND - 2, "stale generation: kept");
        pool.retain(|x| x != &b);
        assert_eq!(pool.len(), 0);
        assert!(pool.take(&b).is_none());
    }
}
