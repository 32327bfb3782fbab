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
//! A down backend is not dialled (`backend::Dialer` asks [`is_down`]): the
//! connection is held (`crate::hold`) as if the backend had refused, and a
//! check that sees it up again wakes every held connection at once
//! (`hold::wake_all`). While connections are held and a backend is down,
//! it is checked at the hold's retry pace (every 500 ms at most) rather
//! than every interval, so they are released as soon as it is back.
//!
//! The state is kept per backend (a route names a backend; a route with
//! several backends would share the same table). With `--health-interval
//! 0` there is no checker, no socket, no timer and an empty table.
//!
//! The checker owns an epoll instance of its own for its sockets; the
//! worker loop registers that one fd (readable) and a timer, and calls
//! [`Checker::on_ready`] and [`Checker::on_time`]: two small hooks per
//! loop, nothing per connection.

use crate::fnv::FnvMap;
use crate::limits::Limits;
use crate::stream::Stream;
use crate::types::{Backend, BackendHealth, ProxyProtocol};
use mio::{Events, Interest, Poll, Token};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
struct Entry {
    backend: Backend,
    up: bool,
    fails_in_row: u32,
    oks_in_row: u32,
    checks: u64,
    failures: u64,
    last_check_ms: u64,
    last_error: Option<String>,
}

/// The table is one entry per distinct backend of the worker's routes:
/// a few on most devices, but an http worker may route thousands. Every
/// dial asks [`is_down`] and every real connect [`observe`]s, so a
/// backend's entry is found through `index` (FNV, `crate::fnv`) in O(1),
/// not by a scan; `entries` keeps the routes' order for `report`.
#[derive(Debug, Default)]
struct Table {
    entries: Vec<Entry>,
    /// Position of each backend's entry in `entries`.
    index: FnvMap<Backend, usize>,
    fall: u32,
    rise: u32,
    /// Bumped on every change, so a report is built only when needed.
    version: u64,
}

thread_local! {
    // Workers are single-threaded; the table belongs to the process.
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

/// Track exactly `backends` (state kept for those already tracked; a new
/// one starts up). Empty: nothing tracked.
fn track(backends: &[Backend], limits: &Limits) {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        t.version += 1;
        t.fall = limits.health_fall.max(1);
        t.rise = limits.health_rise.max(1);
        let old_index = std::mem::take(&mut t.index);
        let mut old: Vec<Option<Entry>> = std::mem::take(&mut t.entries)
            .into_iter()
            .map(Some)
            .collect();
        let mut index = FnvMap::default();
        index.reserve(backends.len());
        let mut entries = Vec::with_capacity(backends.len());
        for b in backends {
            // A backend named twice is tracked once.
            if index.contains_key(b) {
                continue;
            }
            let kept = old_index.get(b).and_then(|&i| old.get_mut(i)?.take());
            index.insert(b.clone(), entries.len());
            entries.push(match kept {
                Some(e) => e,
                None => Entry {
                    backend: b.clone(),
                    up: true,
                    fails_in_row: 0,
                    oks_in_row: 0,
                    checks: 0,
                    failures: 0,
                    last_check_ms: 0,
                    last_error: None,
                },
            });
        }
        t.entries = entries;
        t.index = index;
    })
}

/// Whether checks marked `b` down (never, when `b` is not checked).
pub fn is_down(b: &Backend) -> bool {
    TABLE.with(|t| {
        let t = t.borrow();
        !t.entries.is_empty() && t.index.get(b).is_some_and(|&i| !t.entries[i].up)
    })
}

/// A failed connect to `b` (a check, or a real connection): one failure,
/// unless it failed on our side, out of fds or memory
/// ([`crate::stream::out_of_resources`]): that says nothing of the
/// backend (a worker out of fds would otherwise mark every backend down,
/// and hold what it could still have served once fds were back).
pub fn observe_failure(b: &Backend, e: &std::io::Error, check: bool) {
    if crate::stream::out_of_resources(e) {
        crate::debug!("backend {b}: connect failed on our side ({e}); not counted");
        return;
    }
    observe(b, Err(format!("connect: {e}")), check);
}

/// Count one outcome for `b`: a check (`check`) or a real connection.
pub fn observe(b: &Backend, outcome: Result<(), String>, check: bool) {
    let back_up = TABLE.with(|t| {
        let mut t = t.borrow_mut();
        if t.entries.is_empty() {
            return false;
        }
        let (fall, rise) = (t.fall, t.rise);
        let Some(&i) = t.index.get(b) else {
            return false;
        };
        let e = &mut t.entries[i];
        // What `report` shows changes with a check, a failure, the end of
        // a run of failures or a state change; a real connection to a
        // backend that is up changes none of it, and must not make every stats report carry the table.
        let mut changed = check;
        let mut back_up = false;
        if check {
            e.checks += 1;
            e.last_check_ms = unix_ms();
        }
        match outcome {
            Ok(()) => {
                changed |= e.fails_in_row != 0;
                e.fails_in_row = 0;
                e.oks_in_row = e.oks_in_row.saturating_add(1);
                if !e.up && e.oks_in_row >= rise {
                    e.up = true;
                    crate::info!("backend {b} is up (health check)");
                    back_up = true;
                    changed = true;
                }
            }
            Err(why) => {
                changed = true;
                e.failures += 1;
                e.oks_in_row = 0;
                e.fails_in_row = e.fails_in_row.saturating_add(1);
                if e.up && e.fails_in_row >= fall {
                    e.up = false;
                    crate::warn!(
                        "backend {b} is down after {} failure(s) in a row: {why}",
                        e.fails_in_row
                    );
                }
                e.last_error = Some(why);
            }
        }
        if changed {
            t.version += 1;
        }
        back_up
    });
    if back_up {
        crate::hold::wake_all();
    }
}

/// Changes with every change of the table (see `WorkerCtl::report`).
pub fn version() -> u64 {
    TABLE.with(|t| t.borrow().version)
}

/// Most backends a `stats` report describes: a few hundred KiB of JSON,
/// well within what the supervisor takes from a worker (1 MiB). Checks
/// and the down state apply to every backend; only the report stops here.
pub const MAX_REPORTED: usize = 1024;

/// The state of every checked backend (the first [`MAX_REPORTED`]), for
/// `stats`.
pub fn report() -> Vec<BackendHealth> {
    TABLE.with(|t| {
        t.borrow()
            .entries
            .iter()
            .take(MAX_REPORTED)
            .map(|e| BackendHealth {
                backend: e.backend.to_string(),
                up: e.up,
                checks: e.checks,
                failures: e.failures,
                fails_in_row: e.fails_in_row,
                last_check_ms: e.last_check_ms,
                last_error: e.last_error.clone(),
            })
            .collect()
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
pub fn backends_of(routes: &[crate::plan::Route]) -> Vec<Checked> {
    let mut v: Vec<Checked> = Vec::new();
    let mut seen: FnvMap<&Backend, usize> = FnvMap::default();
    // Every replica of a route is checked on its own (replicas agree on
    // `proxy_protocol`, `plan.rs`).
    for r in routes {
        for b in r.backends() {
            match seen.get(b) {
                Some(&i) => {
                    let c: &mut Checked = &mut v[i];
                    c.proxy = c.proxy.or(r.proxy_protocol);
                }
                None => {
                    seen.insert(b, v.len());
                    v.push(Checked {
                        backend: b.clone(),
                        proxy: r.proxy_protocol,
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
        Ok(n) => crate::debug!(
            "health check of {backend}: PROXY header cut short ({n} of {} bytes)",
            h.len()
        ),
        Err(e) => crate::debug!("health check of {backend}: sending the PROXY header: {e}"),
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
    pub fn new(limits: &Limits, backends: &[Checked], now: Instant) -> io::Result<Option<Checker>> {
        if limits.health_interval_ms == 0 {
            track(&[], limits);
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
        c.set_backends(backends, limits, now);
        Ok(Some(c))
    }

    /// The routes changed: check exactly `backends` from now on (a new one
    /// at once). Checks under way are dropped (their tokens are indices).
    pub fn set_backends(&mut self, backends: &[Checked], limits: &Limits, now: Instant) {
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
        track(&tracked, limits);
        self.armed = None;
    }

    /// The fd the loop registers (readable: a check has an answer).
    pub fn fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// Its fd was readable: collect what the checks under way found.
    pub fn on_ready(&mut self) {
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
                observe(&p.backend, outcome, true);
            }
        }
    }

    /// Start the checks that are due, fail those past their timeout.
    pub fn on_time(&mut self, now: Instant) {
        if self.armed.is_some_and(|a| a <= now) {
            self.armed = None;
        }
        for i in 0..self.probes.len() {
            let p = &mut self.probes[i];
            if let Some((_, until)) = &p.inflight {
                if *until <= now {
                    p.inflight = None;
                    let why = format!("not connected within {} ms", self.timeout.as_millis());
                    observe(&p.backend.clone(), Err(why), true);
                }
                continue;
            }
            if p.next <= now {
                self.start(i, now);
            }
        }
    }

    fn start(&mut self, i: usize, now: Instant) {
        let held = crate::hold::held() > 0;
        let p = &mut self.probes[i];
        // Held connections wait for a down backend: look again soon.
        let pace = if held && is_down(&p.backend) {
            self.interval.min(Duration::from_millis(500))
        } else {
            self.interval
        };
        p.next = now + pace;
        let outcome = match crate::backend::connect(&p.backend) {
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
        let b = p.backend.clone();
        match outcome {
            Ok(()) => observe(&b, Ok(()), true),
            Err(e) => observe_failure(&b, &e, true),
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
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            health_interval_ms: 1_000,
            health_timeout_ms: 500,
            health_fall: 2,
            health_rise: 1,
            ..Limits::default()
        }
    }

    #[test]
    fn our_own_fd_or_memory_shortage_is_no_failure_of_the_backend() {
        let b = Backend::Tcp("127.0.0.1:11".parse().unwrap());
        track(std::slice::from_ref(&b), &limits());
        for errno in [
            nix::libc::EMFILE,
            nix::libc::ENFILE,
            nix::libc::ENOBUFS,
            nix::libc::ENOMEM,
        ] {
            let e = std::io::Error::from_raw_os_error(errno);
            observe_failure(&b, &e, true);
            observe_failure(&b, &e, false);
        }
        assert!(
            !is_down(&b),
            "out of fds or memory says nothing of the backend"
        );
        let refused = std::io::Error::from_raw_os_error(nix::libc::ECONNREFUSED);
        observe_failure(&b, &refused, true);
        observe_failure(&b, &refused, false);
        assert!(is_down(&b), "a refusal does");
    }

    #[test]
    fn fall_and_rise() {
        let b = Backend::Tcp("127.0.0.1:9".parse().unwrap());
        let other = Backend::Tcp("127.0.0.1:10".parse().unwrap());
        track(std::slice::from_ref(&b), &limits());
        assert!(!is_down(&b));
        observe(&b, Err("refused".into()), true);
        assert!(!is_down(&b), "one failure is not down (fall 2)");
        observe(&b, Err("refused".into()), false);
        assert!(is_down(&b), "a real connection counts too");
        assert!(!is_down(&other), "untracked backends are never down");
        observe(&b, Ok(()), true);
        assert!(!is_down(&b), "rise 1");
        let r = report();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].checks, r[0].failures, r[0].fails_in_row), (2, 2, 0));
        assert!(r[0].up && r[0].last_check_ms > 0);
        assert_eq!(r[0].last_error.as_deref(), Some("refused"));
        track(&[], &limits());
        assert!(report().is_empty());
    }

    /// Thousands of backends (an http worker with many routes): each is
    /// found for its own state, and a new set of backends keeps the state
    /// of those it keeps, in its own order, a new one up.
    #[test]
    fn a_large_table_keeps_each_backend_state_across_changes() {
        let lim = limits();
        let bs: Vec<Backend> = (0..5000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x7f00_0000 + i);
                Backend::Tcp(std::net::SocketAddr::from((ip, 1000 + (i % 7) as u16)))
            })
            .collect();
        track(&bs, &lim);
        for b in bs.iter().step_by(3) {
            observe(b, Err("refused".into()), true);
            observe(b, Err("refused".into()), false);
        }
        for (i, b) in bs.iter().enumerate() {
            assert_eq!(is_down(b), i.is_multiple_of(3), "{b}");
        }
        // Every other one, the other way round, and a new one named twice.
        let fresh = Backend::Unix("/run/pvx-fresh.sock".into());
        let mut again: Vec<Backend> = bs.iter().rev().step_by(2).cloned().collect();
        again.push(fresh.clone());
        again.push(fresh.clone());
        track(&again, &lim);
        let r = report();
        assert_eq!(r.len(), MAX_REPORTED);
        for (e, b) in r.iter().zip(&again) {
            assert_eq!(e.backend, b.to_string());
        }
        for (i, b) in bs.iter().enumerate() {
            let kept = (bs.len() - 1 - i).is_multiple_of(2);
            assert_eq!(is_down(b), kept && i.is_multiple_of(3), "{b}");
        }
        assert!(!is_down(&fresh), "a new backend starts up");
        observe(&fresh, Err("refused".into()), false);
        observe(&fresh, Err("refused".into()), false);
        assert!(is_down(&fresh), "tracked once: both failures counted");
        let all = TABLE.with(|t| t.borrow().entries.len());
        assert_eq!(all, again.len() - 1);
        track(&[], &lim);
        assert!(!is_down(&bs[0]));
    }

    /// A listening socket with backlog 0 whose queue is filled: further
    /// SYNs are dropped (the fds are kept alive with it).
    fn stalled_listener() -> (Vec<std::os::fd::OwnedFd>, std::net::SocketAddr) {
        use nix::sys::socket::*;
        let l = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(l.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        listen(&l, Backlog::new(0).unwrap()).unwrap();
        let a: SockaddrIn = getsockname(l.as_raw_fd()).unwrap();
        let addr: std::net::SocketAddr = std::net::SocketAddrV4::from(a).into();
        let mut keep = vec![l];
        // Fill the accept queue (and the SYN queue) with connections
        // nobody accepts.
        for _ in 0..4 {
            let s = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .unwrap();
            let _ = connect(s.as_raw_fd(), &a);
            keep.push(s);
        }
        std::thread::sleep(Duration::from_millis(50));
        (keep, addr)
    }

    /// A unix listener whose queue is full (EAGAIN): busy, not down at
    /// once; tried again within the check's timeout, a failure if still
    /// busy at its end, up again once there is room.
    #[test]
    fn a_busy_unix_backend_fails_a_check_only_when_busy_for_its_timeout() {
        use nix::sys::socket::*;
        let path = std::env::temp_dir().join(format!("pvx-busy-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let addr = UnixAddr::new(&path).unwrap();
        bind(l.as_raw_fd(), &addr).unwrap();
        listen(&l, Backlog::new(0).unwrap()).unwrap();
        let mut queued = Vec::new();
        loop {
            let s = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .unwrap();
            match connect(s.as_raw_fd(), &addr) {
                Ok(()) => queued.push(s),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => panic!("connect: {e}"),
            }
        }
        let b = Backend::Unix(path.clone());
        let lim = limits();
        let now = Instant::now();
        let mut c = Checker::new(&lim, &[Checked::from(b.clone())], now)
            .unwrap()
            .unwrap();
        c.on_time(now);
        assert_eq!(report()[0].checks, 0, "busy: tried again, not counted");
        assert_eq!(c.next_wake(), Some(now + BUSY_RETRY));
        c.on_time(now + Duration::from_millis(250));
        assert_eq!(report()[0].checks, 0, "still within the timeout");
        c.on_time(now + Duration::from_millis(500));
        let r = report();
        assert_eq!((r[0].checks, r[0].failures), (1, 1), "{r:?}");
        assert!(r[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("listen queue full")));
        // Room again (the queue taken): the next check connects.
        drop(queued);
        let ours = std::os::unix::net::UnixListener::from(l);
        ours.set_nonblocking(true).unwrap();
        while ours.accept().is_ok() {}
        c.on_time(now + Duration::from_millis(1_500));
        let r = report();
        assert_eq!((r[0].checks, r[0].fails_in_row), (2, 0), "{r:?}");
        track(&[], &lim);
        let _ = std::fs::remove_file(&path);
    }

    /// A real listener, then none: the checker sees it up, then down after
    /// `fall` checks, with its own epoll and no loop around it.
    #[test]
    fn checker_sees_a_backend_go_down() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = Backend::Tcp(l.local_addr().unwrap());
        let lim = limits();
        let mut now = Instant::now();
        let mut c = Checker::new(&lim, &[Checked::from(b.clone())], now)
            .unwrap()
            .unwrap();
        assert_eq!(c.next_wake(), Some(now));
        let run = |c: &mut Checker, now: Instant| {
            c.on_time(now);
            for _ in 0..200 {
                c.on_ready();
                if c.probes[0].inflight.is_none() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        run(&mut c, now);
        assert_eq!(report()[0].checks, 1);
        assert!(report()[0].up);
        drop(l);
        for _ in 0..2 {
            now += Duration::from_millis(1_000);
            run(&mut c, now);
        }
        let r = report();
        assert_eq!(r[0].checks, 3);
        assert!(!r[0].up, "{r:?}");
        assert!(is_down(&b));
        track(&[], &lim);

        // A peer that stalls: a listener whose accept queue is full drops
        // the SYN, so the connect never completes; the check fails at its
        // timeout, not before.
        let stall = stalled_listener();
        let b = Backend::Tcp(stall.1);
        let mut c = Checker::new(&lim, &[Checked::from(b.clone())], now)
            .unwrap()
            .unwrap();
        c.on_time(now);
        c.on_ready();
        assert_eq!(report()[0].checks, 0, "still connecting");
        c.on_time(now + Duration::from_millis(500));
        let r = report();
        assert_eq!((r[0].checks, r[0].failures), (1, 1), "{r:?}");
        assert!(r[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("within 500 ms"));
        track(&[], &lim);
        drop(stall);
        // Off: nothing at all.
        let off = Limits {
            health_interval_ms: 0,
            ..lim
        };
        assert!(Checker::new(&off, &[Checked::from(b)], now)
            .unwrap()
            .is_none());
        assert!(report().is_empty());
    }
}
