//! The accepting side of a worker: accept in bursts until the kernel says
//! EAGAIN (edge-triggered), stop at the connection cap and resume at 90 %,
//! and pause briefly on EMFILE/ENFILE instead of spinning on `accept()`.

use crate::stream::{Listener, Stream};
use mio::{Interest, Registry, Token};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long accepting pauses when the process or system is out of fds.
pub const EMFILE_PAUSE: Duration = Duration::from_millis(250);

pub struct Acceptor {
    /// None once draining: the worker's copy of the listener is closed.
    listener: Option<Listener>,
    /// Accepting is paused until then (out of fds).
    pub paused_until: Option<Instant>,
    /// The last burst stopped at the cap; resume when below 90 %.
    at_cap: bool,
    max: usize,
}

impl Acceptor {
    pub fn new(
        mut listener: Listener,
        registry: &Registry,
        token: Token,
        max: usize,
    ) -> io::Result<Acceptor> {
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            paused_until: None,
            at_cap: false,
            max: max.max(1),
        })
    }

    pub fn is_open(&self) -> bool {
        self.listener.is_some()
    }

    /// Whether a burst is worth trying now that `active` connections are
    /// open (after a close, or when a pause has run out).
    pub fn should_resume(&self, active: usize, now: Instant) -> bool {
        let paused = self.paused_until.is_some_and(|t| now < t);
        let cap_ok = !self.at_cap || active * 10 < self.max * 9;
        self.listener.is_some() && !paused && cap_ok && (self.at_cap || self.paused_until.is_some())
    }

    /// Accept until EAGAIN or the cap. `take` receives each new client with
    /// its address as `accept4` returned it (None for unix clients), so
    /// nobody asks `getpeername`, and returns the number of open
    /// connections after taking it.
    pub fn burst(
        &mut self,
        now: Instant,
        mut active: usize,
        mut take: impl FnMut(Stream, Option<SocketAddr>) -> usize,
    ) {
        let Some(l) = self.listener.as_ref() else {
            return;
        };
        if self.paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.paused_until = None;
        self.at_cap = false;
        loop {
            if active >= self.max {
                self.at_cap = true;
                return;
            }
            match l.accept_from() {
                Ok((s, peer)) => active = take(s, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if crate::stream::out_of_resources(&e) {
                        proto::warn!(
                            "accept: {e}; pausing accepts for {} ms",
                            EMFILE_PAUSE.as_millis()
                        );
                        self.paused_until = Some(now + EMFILE_PAUSE);
                        return;
                    }
                    // ECONNABORTED and the like concern one client only.
                    proto::debug!("accept: {e}");
                }
            }
        }
    }

    /// Drain: take what is already in the backlog, then close our copy.
    pub fn close(
        &mut self,
        registry: &Registry,
        active: usize,
        take: impl FnMut(Stream, Option<SocketAddr>) -> usize,
    ) {
        self.max = usize::MAX;
        self.paused_until = None;
        self.burst(Instant::now(), active, take);
        if let Some(mut l) = self.listener.take() {
            let _ = registry.deregister(&mut l);
        }
    }
}
