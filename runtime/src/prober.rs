//! L4 health checks, run by each worker for the backends of its own
//! routes: a TCP connect (or a unix connect) every `--health-interval`,
//! failed when refused, unreachable or not connected within
//! `--health-timeout`. A check closes its connection at once; on a link
//! with `proxy_protocol` it first sends the header of a connection of our
//! own (v2 LOCAL, v1 `PROXY UNKNOWN`), so a backend that requires one
//! (nginx `listen ... proxy_protocol`) sees a well-formed connection, not
//! a broken header, every interval. `--health-fall` failures in a row mark a backend
//! down, `--health-rise` successes in a row mark it up again; a real
//! connection the dialer gave up on (refused, unreachable, or its connect
//! timed out) counts as a failure, one it made as a success.
//!
//! A down backend is not dialled (`backend::Dialer` asks the health table):
//! the connection is held (`crate::hold`) as if the backend had refused,
//! and a check that sees it up again wakes every held connection at once
//! (`Reach::observe`). While connections are held and a backend is down,
//! it is checked at the hold's retry pace (every 500 ms at most) rather
//! than every interval, so they are released as soon as it is back.
//!
//! The state the checks find is the health table's (`crate::health`),
//! which the loop lends with each call ([`Reach`], with the provider roots
//! checks connect through and the hold book they wake). With
//! `--health-interval 0` there is no checker, no socket, no timer and an
//! empty table.
//!
//! The checker owns an epoll instance of its own for its sockets; the
//! worker loop registers that one fd (readable) and a timer, and calls
//! [`Checker::on_ready`] and [`Checker::on_time`]: two small hooks per
//! loop, nothing per connection.

use crate::backend::Reach;
use crate::health;
use crate::stream::Stream;
use fnv::FnvHashMap as FnvMap;
use mio::{Events, Interest, Poll, Token};
use proto::limits::Limits;
use proto::types::{Backend, ProxyProtocol};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// A backend to check, and what its checks send before they close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub backend: Backend,
    /// The routes to it speak the PROXY protocol: every connection the
    /// backend gets from us opens with a header, a check's too.
    pub proxy: Option<ProxyProtocol>,
}

impl From<Backend> for Checked {
    fn from(backend: Backend) -> Checked {
        Checked {
            backend,
            proxy: None,
        }
    }
}

/// The distinct backends of `routes`, in order. A backend that several
/// routes name is sent the header of the first of them that has
/// `proxy_protocol` (routes that disagree on one backend cannot all be
/// right for it; a missing header is what such a backend logs as broken).
pub fn backends_of(routes: &[proto::plan::Route]) -> Vec<Checked> {
    let mut v: Vec<Checked> = Vec::new();
    let mut seen: FnvMap<&Backend, usize> = FnvMap::default();
    // Every replica of a route is checked on its own (replicas agree on
    // `proxy_protocol`, `plan.rs`).
    for r in routes {
        for b in r.backends() {
            match seen.get(b) {
                Some(&i) => {
                    let c: &mut Checked = &mut v[i];
                    c.proxy = c.proxy.or(r.via.proxy_protocol);
                }
                None => {
                    seen.insert(b, v.len());
                    v.push(Checked {
                        backend: b.clone(),
                        proxy: r.via.proxy_protocol,
                    });
                }
            }
        }
    }
    v
}

/// A check's connection has connected: say what the link promises (the
/// PROXY header, with `proxy`), then it is closed by the caller. The check
/// is an L4 one, so only the connect counts: a header that cannot be sent
/// (the backend reset at once) is logged, not counted.
fn speak(s: &Stream, backend: &Backend, proxy: Option<ProxyProtocol>) {
    let Some(v) = proxy else {
        return;
    };
    use std::io::Write;
    let h = crate::proxy_header::local(v);
    // A new connection's send buffer takes 16 bytes whole.
    match (&*s).write(&h) {
        Ok(n) if n == h.len() => {}
        Ok(n) => proto::debug!(
            "health check of {backend}: PROXY header cut short ({n} of {} bytes)",
            h.len()
        ),
        Err(e) => proto::debug!("health check of {backend}: sending the PROXY header: {e}"),
    }
}

struct Probe {
    backend: Backend,
    proxy: Option<ProxyProtocol>,
    /// When the next check starts.
    next: Instant,
    /// A check under way: its socket and deadline.
    inflight: Option<(Stream, Instant)>,
    /// A unix connect of this check found the listen queue full then: it
    /// is tried again every [`BUSY_RETRY`] until the check's timeout
    /// (`backend::is_busy`).
    busy_since: Option<Instant>,
}

/// How soon a check that found a unix backend busy tries again.
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// The checks of one worker.
pub struct Checker {
    poll: Poll,
    events: Events,
    interval: Duration,
    timeout: Duration,
    probes: Vec<Probe>,
    /// The loop has a timer entry for this time.
    armed: Option<Instant>,
}

impl Checker {
    /// None with `--health-interval 0`: no checks, nothing allocated.
    /// `table` tracks the backends checked (none without checks).
    pub fn new(
        limits: &Limits,
        backends: &[Checked],
        now: Instant,
        table: &mut health::Table,
    ) -> io::Result<Option<Checker>> {
        if limits.health_interval_ms == 0 {
            table.track(&[], limits);
            return Ok(None);
        }
        let mut c = Checker {
            poll: Poll::new()?,
            events: Events::with_capacity(16),
            interval: Duration::from_millis(limits.health_interval_ms),
            timeout: Duration::from_millis(limits.health_timeout_ms.max(1)),
            probes: Vec::new(),
            armed: None,
        };
        c.set_backends(backends, limits, now, table);
        Ok(Some(c))
    }

    /// The routes changed: check exactly `backends` from now on (a new one
    /// at once). Checks under way are dropped (their tokens are indices).
    pub fn set_backends(
        &mut self,
        backends: &[Checked],
        limits: &Limits,
        now: Instant,
        table: &mut health::Table,
    ) {
        let old: FnvMap<Backend, Instant> = std::mem::take(&mut self.probes)
            .into_iter()
            .map(|p| (p.backend, p.next))
            .collect();
        self.probes = backends
            .iter()
            .map(|c| {
                let next = old.get(&c.backend).copied().unwrap_or(now);
                Probe {
                    backend: c.backend.clone(),
                    proxy: c.proxy,
                    next: next.min(now + self.interval),
                    inflight: None,
                    busy_since: None,
                }
            })
            .collect();
        let tracked: Vec<Backend> = backends.iter().map(|c| c.backend.clone()).collect();
        table.track(&tracked, limits);
        self.armed = None;
    }

    /// The fd the loop registers (readable: a check has an answer).
    pub fn fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// Its fd was readable: collect what the checks under way found.
    pub fn on_ready(&mut self, reach: &mut Reach) {
        loop {
            if self
                .poll
                .poll(&mut self.events, Some(Duration::ZERO))
                .is_err()
            {
                return;
            }
            if self.events.is_empty() {
                return;
            }
            let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for i in ready {
                let Some(p) = self.probes.get_mut(i) else {
                    continue;
                };
                let outcome = match &p.inflight {
                    Some((s, _)) => match s.connect_done() {
                        Ok(true) => {
                            speak(s, &p.backend, p.proxy);
                            Ok(())
                        }
                        Ok(false) => continue,
                        Err(e) => Err(format!("connect: {e}")),
                    },
                    None => continue,
                };
                p.inflight = None;
                reach.observe(&p.backend, outcome, true);
            }
        }
    }

    /// Start the checks that are due, fail those past their timeout.
    pub fn on_time(&mut self, now: Instant, reach: &mut Reach) {
        if self.armed.is_some_and(|a| a <= now) {
            self.armed = None;
        }
        for i in 0..self.probes.len() {
            let p = &mut self.probes[i];
            if let Some((_, until)) = &p.inflight {
                if *until <= now {
                    p.inflight = None;
                    let why = format!("not connected within {} ms", self.timeout.as_millis());
                    reach.observe(&p.backend, Err(why), true);
                }
                continue;
            }
            if p.next <= now {
                self.start(i, now, reach);
            }
        }
    }

    fn start(&mut self, i: usize, now: Instant, reach: &mut Reach) {
        let held = reach.held.held() > 0;
        let p = &mut self.probes[i];
        // Held connections wait for a down backend: look again soon.
        let pace = if held && reach.health.is_down(&p.backend) {
            self.interval.min(Duration::from_millis(500))
        } else {
            self.interval
        };
        p.next = now + pace;
        let outcome = match crate::backend::connect(&p.backend, &reach.roots) {
            Ok(mut s) => match s.connect_done() {
                Ok(true) => {
                    speak(&s, &p.backend, p.proxy);
                    Ok(())
                }
                Ok(false) => {
                    match self
                        .poll
                        .registry()
                        .register(&mut s, Token(i), Interest::WRITABLE)
                    {
                        Ok(()) => {
                            p.inflight = Some((s, now + self.timeout));
                            return;
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
            // A unix listener whose queue is full is there, and busy: tried
            // again shortly until the check's timeout, as a real
            // connection is until its connect timeout; busy all along, it
            // fails, as a tcp connect to a full accept queue does at its
            // timeout (`backend::is_busy`).
            Err(e) if crate::backend::is_busy(&e) => {
                let since = *p.busy_since.get_or_insert(now);
                let until = since + self.timeout;
                if now < until {
                    p.next = (now + BUSY_RETRY).min(until);
                    return;
                }
                Err(io::Error::other(format!(
                    "listen queue full (busy) for {} ms",
                    self.timeout.as_millis()
                )))
            }
            Err(e) => Err(e),
        };
        p.busy_since = None;
        match outcome {
            Ok(()) => reach.observe(&p.backend, Ok(()), true),
            Err(e) => reach.health.observe_failure(&p.backend, &e, true),
        }
    }

    /// When the checker next needs [`Checker::on_time`].
    pub fn next_wake(&self) -> Option<Instant> {
        self.probes
            .iter()
            .map(|p| p.inflight.as_ref().map_or(p.next, |(_, until)| *until))
            .min()
    }

    /// A time the loop should add a timer entry for (None: the entry it
    /// has comes first, or nothing is due).
    pub fn arm(&mut self) -> Option<Instant> {
        let t = self.next_wake()?;
        if self.armed.is_some_and(|a| a <= t) {
            return None;
        }
        self.armed = Some(t);
        Some(t)
    }
}

#[cfg(test)]
mod tests;
