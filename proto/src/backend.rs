//! Reaching a backend: a non-blocking connect to `IP:PORT` or to a unix
//! socket inside the provider's root, and the short retry while a provider
//! container restarts (connect refused, socket file not there yet).
//!
//! ## Provider roots
//! A unix backend in a container is `/proc/<provider_pid>/root<path>`. The
//! kernel lets a process follow `/proc/<pid>/root` only if it may ptrace
//! `pid`, and a worker that dropped its capabilities may not ptrace a
//! container init that kept them. Rather than keep CAP_SYS_PTRACE in a
//! process that parses untrusted traffic, the supervisor opens each root
//! (O_PATH) and passes the fd along with Init and Update; [`connect`] then
//! goes through `/proc/self/fd/<fd><path>`, which needs no privilege. A
//! side benefit: a provider pid reused by an unrelated process after the
//! provider died can never be reached by mistake.

use crate::balance::{Choice, Lease};
use crate::ctl::Limits;
use crate::graph::Backend;
use crate::hold::{Held, Outcome};
use crate::plan::Route;
use crate::stream::Stream;
use crate::tick::Tick;
use mio::net::{TcpStream, UnixStream};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

thread_local! {
    // Workers are single-threaded; the roots belong to the process.
    static ROOTS: RefCell<Vec<(u32, OwnedFd)>> = const { RefCell::new(Vec::new()) };
}

/// Replace the provider roots (`pids[i]` is reached through `fds[i]`).
/// The previous fds are closed.
pub fn set_roots(pids: &[u32], fds: Vec<OwnedFd>) {
    let roots: Vec<(u32, OwnedFd)> = pids.iter().copied().zip(fds).collect();
    ROOTS.with(|r| *r.borrow_mut() = roots);
}

/// The fds of the provider roots held now (kept across start-up clean-up).
pub fn root_fds() -> Vec<RawFd> {
    ROOTS.with(|r| r.borrow().iter().map(|(_, fd)| fd.as_raw_fd()).collect())
}

/// Split `/proc/<pid>/root/inner` into (pid, `/inner`).
pub fn split_provider_path(path: &Path) -> Option<(u32, &str)> {
    let s = path.to_str()?.strip_prefix("/proc/")?;
    let (pid, rest) = s.split_once('/')?;
    let inner = rest.strip_prefix("root")?;
    if !inner.starts_with('/') {
        return None;
    }
    Some((pid.parse().ok()?, inner))
}

/// Longest `sun_path` the kernel takes, without the terminating NUL.
const SUN_PATH_MAX: usize = 107;

fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    let root = split_provider_path(path).and_then(|(pid, inner)| {
        ROOTS.with(|r| {
            r.borrow()
                .iter()
                .find(|(p, _)| *p == pid)
                .map(|(_, fd)| (fd.as_raw_fd(), inner.to_string()))
        })
    });
    let Some((fd, inner)) = root else {
        return UnixStream::connect(path);
    };
    let via = format!("/proc/self/fd/{fd}{inner}");
    if via.len() <= SUN_PATH_MAX {
        return UnixStream::connect(via);
    }
    // Too long for sun_path: resolve relative to the root as working
    // directory instead (the worker never uses relative paths otherwise).
    nix::unistd::fchdir(fd)
        .map_err(|e| io::Error::other(format!("fchdir to provider root: {e}")))?;
    let r = UnixStream::connect(format!(".{inner}"));
    let _ = nix::unistd::chdir("/");
    r
}

/// Start connecting. A tcp connect is usually still in progress on return
/// (wait for writable, then [`Stream::connect_done`]); a unix connect has
/// already succeeded or failed.
pub fn connect(b: &Backend) -> io::Result<Stream> {
    match b {
        Backend::Tcp(addr) => connect_tcp(*addr).map(Stream::Tcp),
        Backend::Unix(path) => connect_unix(path).map(Stream::Unix),
    }
}

/// A non-blocking tcp connect whose handshake's last ACK waits (with
/// `TCP_QUICKACK` off, Linux delays it up to 200 ms) for the first bytes
/// we send, which carry it: one segment less per connection when the
/// client has spoken first (HAProxy's tcp-smart-connect). Whoever has
/// nothing to send at once says so with `set_quickack(fd, true)`, which
/// sends the ACK then (a server that speaks first does not see the
/// connection before it).
fn connect_tcp(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(family, SockType::Stream, flags, None)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("socket(): {e}")))?;
    let _ = crate::stream::set_quickack(fd.as_fd(), false);
    match nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        // The errno itself (ECONNREFUSED...): `is_retryable` reads it.
        Err(e) => return Err(io::Error::from(e)),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(fd)))
}

/// Errors that mean "the provider is not listening yet": worth a retry.
pub fn is_retryable(e: &io::Error) -> bool {
    use nix::libc::{EAGAIN, ECONNREFUSED, ENOENT};
    matches!(
        e.raw_os_error(),
        Some(ECONNREFUSED) | Some(ENOENT) | Some(EAGAIN)
    )
}

/// A unix listener whose accept queue is full: a non-blocking connect says
/// EAGAIN. The provider is there, and busy: the same as a tcp backend
/// whose full accept queue drops our SYN, which the kernel sends again
/// until the connect times out. So it is treated the same: tried again
/// (every [`busy_delay`]) until the connect timeout, not only within the
/// short retry budget of a refused connect, and a failure (for the health
/// checks too) only when still busy then; a check does the same within its
/// own timeout (`health.rs`), so checks and real connections agree.
pub fn is_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EAGAIN)
}

/// Delay before busy retry number `n` (1-based): 25, 50, 100, then every
/// 200 ms: soon enough to take room as it frees, few enough syscalls.
pub fn busy_delay(n: u32) -> Duration {
    Duration::from_millis((25u64 << n.saturating_sub(1).min(3)).min(200))
}

/// Errors that mean "the provider is not there now" (restarting, its
/// address not back yet): a connection is held for these.
pub fn is_absent(e: &io::Error) -> bool {
    use nix::libc::{EHOSTUNREACH, ENETUNREACH};
    is_retryable(e) || matches!(e.raw_os_error(), Some(EHOSTUNREACH) | Some(ENETUNREACH))
}

/// Delay before retry number `attempt` (1-based): 25, 50, 100, 200 ms ...,
/// or None once the delays so far would exceed `budget_ms` in all.
pub fn retry_delay(attempt: u32, budget_ms: u64) -> Option<Duration> {
    let mut spent = 0u64;
    let mut d = 25u64;
    for _ in 1..attempt {
        spent += d;
        d *= 2;
    }
    if attempt == 0 || spent + d > budget_ms {
        return None;
    }
    Some(Duration::from_millis(d))
}

/// What a [`Dialer`] does on the network: connect, and tell a connect
/// under way from one done. [`Real`] does it; a fuzz target or a test
/// plays a script instead ([`Dialer::step_on`]).
pub trait Net {
    /// Start connecting to `b` ([`connect`]).
    fn connect(&mut self, b: &Backend) -> io::Result<Stream>;
    /// The socket of an attempt reported: Ok(true) connected, Ok(false)
    /// still under way, Err the attempt failed ([`Stream::connect_done`]).
    fn done(&mut self, s: &Stream) -> io::Result<bool>;
    /// Asked when a hold would begin, and only then: whether the client
    /// the dial is for has gone already, so it is not held at all
    /// ([`Step::Gone`]). No for [`Real`]: a worker asks through
    /// [`Real`] with `hung_up` once its client reported a hang-up.
    fn client_gone(&mut self) -> bool {
        false
    }
}

/// The network itself. `hung_up`: the client the dial is for, when an
/// event said it hung up (FIN, reset or error) before its connection was
/// held, with `tunnel` as [`crate::hold::client_gone`] takes it: if a
/// hold begins, the client is asked first, and one that has gone is let
/// go ([`Step::Gone`]) rather than admitted into the book, where it
/// would keep a route's slot until its first held retry asked (issue 18,
/// item 5). None (a client that reported nothing): no syscall added to
/// the common path. One type for both, so the dialer's code is there
/// once in the executable (a second `Net` type doubled it: +13 KiB).
pub struct Real<'a> {
    pub hung_up: Option<(&'a Stream, bool)>,
}

impl Real<'_> {
    /// For a client that reported nothing.
    pub fn quiet() -> Real<'static> {
        Real { hung_up: None }
    }
}

impl Net for Real<'_> {
    #[inline]
    fn connect(&mut self, b: &Backend) -> io::Result<Stream> {
        connect(b)
    }

    #[inline]
    fn done(&mut self, s: &Stream) -> io::Result<bool> {
        s.connect_done()
    }

    fn client_gone(&mut self) -> bool {
        self.hung_up
            .is_some_and(|(client, tunnel)| crate::hold::client_gone(client, tunnel))
    }
}

/// One connection's way to its backend: connect, and on a refused
/// connect retry with [`retry_delay`] until the retry budget or the
/// connect timeout is spent; then, with `hold_timeout_ms`, hold the
/// connection (`crate::hold`): retry with [`crate::hold::retry_delay`],
/// and at once on [`Dialer::wake`], until the hold timeout.
///
/// ```text
/// poll() ─ due ─> connect ─ Ok ──> Socket(s): register, wait writable, established(s)
///                    └─ Err ──> failed(): retry later (Wait), hold (Wait), or give up (message)
/// ```
#[derive(Debug)]
pub struct Dialer {
    pub target: Backend,
    /// A route with replicas: the backend aimed at (`target`) among them,
    /// the next to try when it fails (`balance.rs`). None: one backend.
    /// Boxed, as `held`: most connections need neither, and every
    /// connection has a dialer while it connects (the memory a burst of
    /// new connections leaves in the heap).
    choice: Option<Box<Choice>>,
    /// Replicas: an attempt still connecting then gives way to the next
    /// replica (see [`Dialer::stalled`]).
    attempt_until: Option<Tick>,
    attempt: u32,
    retry_at: Option<Tick>,
    give_up_at: Tick,
    /// The first attempt: a hold lasts until this + the hold timeout.
    started: Tick,
    /// Set while the connection is held (counted in `crate::hold`).
    held: Option<Box<Held>>,
}

/// What [`Dialer::poll`] asks of its caller.
#[derive(Debug)]
pub enum Dial {
    /// Nothing until [`Dialer::deadline`].
    Wait,
    /// A socket whose connect is under way: register it for writable,
    /// then ask [`Dialer::established`].
    Socket(Stream),
    /// Give up; the text says why (for the log).
    Failed(String),
    /// The client went away before a hold began ([`Net::client_gone`]):
    /// not held; close it.
    Gone,
}

/// What [`Dialer::step`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until the socket reports or [`Dialer::deadline`].
    Wait,
    /// The socket reported but the connect is still under way: clear its
    /// readiness and wait again.
    Pending,
    /// A new socket is in the caller's slot: register it (writable).
    Register,
    /// Connected.
    Connected,
    /// Refused (or failed) beyond the retry budget and the hold: the text
    /// says why.
    Failed(String),
    /// The connect timeout passed.
    TimedOut(String),
    /// The connection would be held, and its client has gone already
    /// ([`Net::client_gone`]): not held, nothing counted; close it.
    Gone,
}

/// What [`Dialer::hold`] decided.
enum Hold {
    Held,
    /// Not held (holding off, the hold over, no room): the error.
    No,
    /// The client has gone: not held, no error owed.
    Gone,
}

impl Dialer {
    pub fn new(target: Backend, now: Instant, limits: &Limits) -> Dialer {
        Dialer {
            target,
            choice: None,
            attempt_until: None,
            attempt: 0,
            retry_at: Some(Tick::from(now)),
            give_up_at: Tick::from(now + Duration::from_millis(limits.connect_timeout_ms)),
            started: Tick::from(now),
            held: None,
        }
    }

    /// Connect now if an attempt is due. Returns [`Dial::Wait`] only with
    /// the next look in the future ([`Dialer::deadline`] after `now`): a
    /// failed attempt that leaves a retry due now (the next replica) is
    /// made here, at once, rather than left to a timer already due.
    pub fn poll(&mut self, now: Instant, limits: &Limits) -> Dial {
        self.poll_on(&mut Real::quiet(), now, limits)
    }

    fn poll_on(&mut self, net: &mut dyn Net, now: Instant, limits: &Limits) -> Dial {
        loop {
            if self.expired(now) {
                return Dial::Failed(self.end_hold(
                    now,
                    format!(
                        "backend {}: connect timed out after {} attempt(s)",
                        self.target, self.attempt
                    ),
                ));
            }
            if !self.retry_due(now) {
                return Dial::Wait;
            }
            self.retry_at = None;
            // Replicas: a new pick after a spent pass, or away from one down.
            self.aim();
            if crate::health::is_down(&self.target) {
                return self.down(net, now, limits);
            }
            let e = match net.connect(&self.target) {
                Ok(s) => {
                    self.attempt_started(now, limits);
                    return Dial::Socket(s);
                }
                Err(e) => e,
            };
            match self.failed_on(net, now, limits, &e) {
                // The next replica, due now: dial it in this call (one
                // pass over the pool at most: `fail_over` ends a pass).
                Dial::Wait if self.retry_due(now) => continue,
                d => return d,
            }
        }
    }

    /// Whether an attempt is due at `now`.
    fn retry_due(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| at <= Tick::from(now))
    }

    /// Health checks say the backend is down: not dialled; held (waiting
    /// for a check to see it up, which wakes it) or the error at once.
    fn down(&mut self, net: &mut dyn Net, now: Instant, limits: &Limits) -> Dial {
        if let Some(h) = self.held.as_mut() {
            if now >= h.until {
                // The hold is over (the connection's deadline is the hold's,
                // `hold`; this only guards a caller that skipped `expired`):
                // never a retry at a deadline already past.
                let why = format!("backend {} is down (health checks)", self.target);
                return Dial::Failed(self.end_hold(now, why));
            }
            h.tries += 1;
            self.retry_at = Some(Tick::from(
                (now + crate::hold::retry_delay(h.tries)).min(h.until),
            ));
            return Dial::Wait;
        }
        match self.hold(net, now, limits) {
            Hold::Held => return Dial::Wait,
            Hold::Gone => return Dial::Gone,
            Hold::No => {}
        }
        let why = format!("backend {} is down (health checks)", self.target);
        Dial::Failed(self.end_hold(now, why))
    }

    /// The socket from [`Dial::Socket`] became writable. Ok(true): connected.
    /// Ok(false): still in progress. Err: the attempt failed; call `failed`.
    pub fn established(&self, s: &Stream) -> io::Result<bool> {
        s.connect_done()
    }

    /// An attempt failed with `e`: schedule a retry (Wait), hold, or give up.
    pub fn failed(&mut self, now: Instant, limits: &Limits, e: &io::Error) -> Dial {
        self.failed_on(&mut Real::quiet(), now, limits, e)
    }

    fn failed_on(
        &mut self,
        net: &mut dyn Net,
        now: Instant,
        limits: &Limits,
        e: &io::Error,
    ) -> Dial {
        if self.fail_over(now, e) {
            return Dial::Wait;
        }
        self.attempt += 1;
        if let Some(h) = self.held.as_mut() {
            if is_absent(e) && now < h.until {
                h.tries += 1;
                self.retry_at = Some(Tick::from(
                    (now + crate::hold::retry_delay(h.tries)).min(h.until),
                ));
                return Dial::Wait;
            }
        } else {
            if is_busy(e) {
                if self.attempt == 1 {
                    crate::debug!(
                        "backend {} busy (listen queue full): trying again until the connect timeout",
                        self.target
                    );
                }
                // At the connect timeout, `step` ends it as a connect that
                // timed out: one failure for the health checks then.
                let at = Tick::from(now + busy_delay(self.attempt));
                self.retry_at = Some(at.min(self.give_up_at));
                return Dial::Wait;
            }
            if is_retryable(e) {
                if let Some(d) = retry_delay(self.attempt, limits.connect_retry_ms) {
                    if Tick::from(now + d) < self.give_up_at {
                        self.retry_at = Some(Tick::from(now + d));
                        return Dial::Wait;
                    }
                }
            }
            // The connection as a whole failed to connect: one failure for
            // the health checks (not one per retry).
            crate::health::observe_failure(&self.target, e, false);
            if is_absent(e) {
                match self.hold(net, now, limits) {
                    Hold::Held => return Dial::Wait,
                    Hold::Gone => return Dial::Gone,
                    Hold::No => {}
                }
            }
        }
        let why = format!(
            "backend {} unreachable: {e} (after {} attempt(s))",
            self.target, self.attempt
        );
        Dial::Failed(self.end_hold(now, why))
    }

    /// Start holding, if holding is on, the worker has room and the
    /// client is still there (asked of `net` only now: a client gone
    /// before its hold began never takes a slot).
    fn hold(&mut self, net: &mut dyn Net, now: Instant, limits: &Limits) -> Hold {
        if limits.hold_timeout_ms == 0 {
            return Hold::No;
        }
        let until = self.started.instant() + Duration::from_millis(limits.hold_timeout_ms);
        if now >= until {
            return Hold::No;
        }
        if net.client_gone() {
            crate::debug!(
                "backend {} unreachable and the client gone already: not holding",
                self.target
            );
            return Hold::Gone;
        }
        // Counted under the route's first backend (its share of
        // --max-held, `crate::hold`): a replica route's pool starts with it.
        let route_backend = self
            .choice
            .as_ref()
            .and_then(|c| c.pool().first())
            .unwrap_or(&self.target);
        let key = crate::hold::share_key(route_backend);
        let share = match limits.held_share {
            0 => limits.max_held,
            n => n,
        };
        if !crate::hold::admit(limits.max_held, share, key) {
            crate::info!(
                "backend {} unreachable and {} connection(s) held already ({} for its route; --max-held {}, {share} per route): not holding",
                self.target,
                crate::hold::held(),
                crate::hold::held_for(key),
                limits.max_held
            );
            return Hold::No;
        }
        crate::debug!(
            "backend {} unreachable: holding the connection for up to {} ms",
            self.target,
            until.saturating_duration_since(now).as_millis()
        );
        self.held = Some(Box::new(Held {
            since: now,
            until,
            tries: 1,
            key,
        }));
        // A held connection ends at the hold's deadline, whatever the
        // connect timeout (shorter or longer): the hold is the promise
        // made to the client, and the connect timeout bounds an attempt
        // that is not held. Every retry is armed before it (`min(until)`)
        // and `expired` ends the connection at it, so no retry is ever
        // armed at a time already past (issue 18: with the connect
        // deadline later than the hold's, a dial for a down backend
        // re-armed at the passed hold deadline for ever).
        self.give_up_at = Tick::from(until);
        self.retry_at = Some(Tick::from((now + crate::hold::retry_delay(1)).min(until)));
        Hold::Held
    }

    /// The hold (if any) ends in failure; `why` gains how long it waited.
    fn end_hold(&mut self, now: Instant, why: String) -> String {
        match self.held.take() {
            Some(h) => {
                let waited = now.saturating_duration_since(h.since);
                crate::hold::release(h.key, waited, Outcome::Failed);
                format!("{why}; held {} ms", waited.as_millis())
            }
            None => why,
        }
    }

    /// Whether the connection is held now.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// A backend may be back (route update, health check): retry now
    /// unless an attempt is in flight.
    pub fn wake(&mut self, now: Instant) {
        if self.retry_at.is_some() {
            self.retry_at = Some(Tick::from(now));
        }
    }

    /// The route now names `to` (an update moved the provider): later
    /// attempts go there, the next one at once.
    pub fn retarget(&mut self, to: &Backend, now: Instant) {
        // One backend now: no replicas to choose among any more.
        self.choice = None;
        self.attempt_until = None;
        if &self.target != to {
            crate::debug!("backend {} moved to {to}: dialling there", self.target);
            self.target = to.clone();
            self.wake(now);
        }
    }

    /// The connect timeout has passed (also for a connect still in progress).
    pub fn expired(&self, now: Instant) -> bool {
        Tick::from(now) >= self.give_up_at
    }

    /// Drive the connect one step. `socket` is the attempt in flight (None:
    /// none); `ready` says its socket reported writable (or an error) since
    /// the last step. A new socket is put in `socket` ([`Step::Register`]);
    /// a failed one is taken out (closing it also takes it out of epoll).
    ///
    /// A step that does not end the dial ([`Step::Wait`], [`Step::Pending`],
    /// [`Step::Register`]) leaves [`Dialer::deadline`] after `now`: the
    /// caller's timer is never armed at a time already due.
    pub fn step(
        &mut self,
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
        limits: &Limits,
    ) -> Step {
        self.step_on(&mut Real::quiet(), socket, ready, now, limits)
    }

    /// [`Dialer::step`] on `net`'s connects (the fuzz target's script;
    /// [`Real`] otherwise). A `dyn Net`: the dialer is compiled once, in
    /// proto, whoever calls it (generic, worker-http's opt-level 3 built
    /// a second copy: +8 KiB of executable); one indirect call per
    /// connect costs nothing beside the syscall.
    pub fn step_on(
        &mut self,
        net: &mut dyn Net,
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
        limits: &Limits,
    ) -> Step {
        let step = self.step_once(net, socket, ready, now, limits);
        debug_assert!(
            matches!(
                step,
                Step::Connected | Step::Failed(_) | Step::TimedOut(_) | Step::Gone
            ) || self.deadline() > now,
            "dialer for {} left {step:?} with its deadline {:?} not after now",
            self.target,
            now.saturating_duration_since(self.deadline())
        );
        step
    }

    fn step_once(
        &mut self,
        net: &mut dyn Net,
        socket: &mut Option<Stream>,
        ready: bool,
        now: Instant,
        limits: &Limits,
    ) -> Step {
        // A stalled replica gave way: the next one is due now, dialled
        // below.
        self.stalled(socket, ready, now);
        let in_flight = socket.as_ref().filter(|_| ready);
        let Some(s) = in_flight else {
            if self.expired(now) {
                return self.give_up(socket.is_some(), now, limits);
            }
            if socket.is_some() {
                return Step::Wait;
            }
            return match self.poll_on(net, now, limits) {
                Dial::Wait => Step::Wait,
                Dial::Socket(s) => {
                    *socket = Some(s);
                    Step::Register
                }
                Dial::Failed(why) => Step::Failed(why),
                Dial::Gone => Step::Gone,
            };
        };
        match net.done(s) {
            // Still under way at the deadline: given up now, not left to
            // a timer already due.
            Ok(false) if self.expired(now) => self.give_up(true, now, limits),
            Ok(false) => Step::Pending,
            Ok(true) => self.connected(now),
            Err(e) => {
                *socket = None;
                match self.failed_on(net, now, limits, &e) {
                    Dial::Failed(why) => Step::Failed(why),
                    Dial::Gone => Step::Gone,
                    // The next replica, due now: dialled at once.
                    Dial::Wait if self.retry_due(now) => match self.poll_on(net, now, limits) {
                        Dial::Wait => Step::Wait,
                        Dial::Socket(s) => {
                            *socket = Some(s);
                            Step::Register
                        }
                        Dial::Failed(why) => Step::Failed(why),
                        Dial::Gone => Step::Gone,
                    },
                    _ => Step::Wait,
                }
            }
        }
    }

    /// The connection's deadline passed (`expired`): the connect timeout,
    /// or for a held one the hold's; `under_way`: an attempt was still
    /// connecting.
    fn give_up(&mut self, under_way: bool, now: Instant, limits: &Limits) -> Step {
        if !under_way && self.held.is_some() {
            // Held to the end with no attempt under way: the
            // backend stayed away (502), no connect timed out.
            let why = format!(
                "backend {} still unreachable at the hold timeout ({} ms, {} attempt(s))",
                self.target, limits.hold_timeout_ms, self.attempt
            );
            return Step::Failed(self.end_hold(now, why));
        }
        if self.held.is_none() {
            // A backend that never answers the SYN (its host gone,
            // its address black-holed, its accept queue full) is as
            // dead as one that refuses: one failure for the health
            // checks. A held connection counted its failure when
            // the hold began.
            let why = format!("not connected within {} ms", limits.connect_timeout_ms);
            crate::health::observe(&self.target, Err(why), false);
        }
        let why = if self.held.is_some() {
            format!(
                "backend {}: connect under way at the hold timeout ({} ms)",
                self.target, limits.hold_timeout_ms
            )
        } else {
            format!(
                "backend {}: connect timed out after {} ms",
                self.target, limits.connect_timeout_ms
            )
        };
        Step::TimedOut(self.end_hold(now, why))
    }

    /// The attempt in flight has connected (found by [`Dialer::step`], or
    /// known by the caller from a clean writable event): the health table
    /// and the hold book learn it.
    pub fn connected(&mut self, now: Instant) -> Step {
        crate::health::observe(&self.target, Ok(()), false);
        if let Some(h) = self.held.take() {
            let waited = now.saturating_duration_since(h.since);
            crate::debug!(
                "backend {} reached after holding {} ms",
                self.target,
                waited.as_millis()
            );
            crate::hold::release(h.key, waited, Outcome::Connected);
        }
        Step::Connected
    }

    /// When the dialer next needs a look: the retry, or the give-up time.
    pub fn deadline(&self) -> Instant {
        let d = self
            .retry_at
            .map_or(self.give_up_at, |r| r.min(self.give_up_at));
        self.attempt_until.map_or(d, |a| a.min(d)).instant()
    }
}

/// Replicas: the dialer's part of `balance.rs`.
impl Dialer {
    /// A dialer for `r`: its one backend, or a backend of its pool picked
    /// by its `balance` policy.
    pub fn for_route(r: &Route, now: Instant, limits: &Limits) -> Dialer {
        match Choice::for_route(r) {
            Some(c) => Dialer::balanced(c, now, limits),
            None => Dialer::new(r.backend.clone(), now, limits),
        }
    }

    /// A dialer for a choice already made among replicas.
    pub fn balanced(choice: Choice, now: Instant, limits: &Limits) -> Dialer {
        let mut d = Dialer::new(choice.backend().clone(), now, limits);
        d.choice = Some(Box::new(choice));
        d
    }

    /// Before an attempt: after a pass over every replica failed, a new
    /// pick.
    fn aim(&mut self) {
        if let Some(b) = self.choice.as_mut().and_then(|c| c.attempt()) {
            self.target = b.clone();
        }
    }

    /// A connect to a replica is under way: it has its share of the
    /// connect timeout (the timeout over the pool's size), so a replica
    /// whose connects hang (its address black-holed, its accept queue
    /// full) costs a connection part of the timeout, not all of it.
    fn attempt_started(&mut self, now: Instant, limits: &Limits) {
        let Some(n) = self.choice.as_ref().map(|c| c.pool().len()) else {
            return;
        };
        let share = limits.connect_timeout_ms / n.max(1) as u64;
        self.attempt_until = Some(Tick::from(now + Duration::from_millis(share)));
    }

    /// The attempt in `socket` has not connected within its share: give
    /// way to the next replica (true; the socket is dropped and the next
    /// attempt is due now), or, with none left this pass, let it run to
    /// the connect timeout.
    fn stalled(&mut self, socket: &mut Option<Stream>, ready: bool, now: Instant) -> bool {
        match self.attempt_until {
            Some(t) if Tick::from(now) >= t => self.attempt_until = None,
            _ => return false,
        }
        if ready || socket.is_none() {
            return false;
        }
        let e = io::Error::from_raw_os_error(nix::libc::ETIMEDOUT);
        if !self.fail_over(now, &e) {
            return false;
        }
        *socket = None;
        true
    }

    /// The connect to `target` failed: the next replica this pass has not
    /// tried, at once. false: none left (or no replicas), go on as for
    /// one backend.
    fn fail_over(&mut self, now: Instant, e: &io::Error) -> bool {
        let Some(next) = self.choice.as_mut().and_then(|c| c.fail_over()) else {
            return false;
        };
        // One failure of that replica for the health checks; one that is
        // busy is only passed over, as a check counts it only when busy
        // for its whole timeout (`is_busy`).
        if !is_busy(e) {
            crate::health::observe_failure(&self.target, e, false);
        }
        crate::debug!(
            "backend {} failed ({e}); trying replica {next}",
            self.target
        );
        self.target = next.clone();
        self.retry_at = Some(Tick::from(now));
        true
    }

    /// An update while connecting (hold): the route as the configuration
    /// has it now. With replicas the dialer keeps its choice while the
    /// route's pool is the same and takes a new one when it changed (a
    /// replica added, removed or moved); a route with one backend is
    /// [`Dialer::retarget`].
    pub fn retarget_route(&mut self, r: &Route, now: Instant) {
        match crate::balance::pool_of(r) {
            Some((pool, policy)) => {
                if self
                    .choice
                    .as_ref()
                    .is_some_and(|c| c.pool()[..] == pool[..])
                {
                    return;
                }
                self.rechoose(Choice::new(pool, policy), now);
            }
            None => self.retarget(&r.backend, now),
        }
    }

    /// Aim at a new choice among replicas (an update changed the pool), at
    /// once.
    pub fn rechoose(&mut self, c: Choice, now: Instant) {
        crate::debug!("replicas changed: dialling {} now", c.backend());
        self.target = c.backend().clone();
        self.choice = Some(Box::new(c));
        self.attempt_until = None;
        self.wake(now);
    }

    /// The pool of the replicas this dialer chooses among, if any.
    pub fn pool(&self) -> Option<&std::rc::Rc<[Backend]>> {
        self.choice.as_ref().map(|c| c.pool())
    }

    /// The choice among replicas, once connected (http keeps it with its
    /// exchange).
    pub fn take_choice(&mut self) -> Option<Choice> {
        self.choice.take().map(|c| *c)
    }

    /// What counts this connection against its replica (least-conn), to
    /// keep until the connection closes.
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.choice.take().map(|c| c.into_lease())
    }
}

impl Drop for Dialer {
    /// A connection that ends while held (client gone, drain) leaves the book.
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            crate::hold::release(h.key, h.since.elapsed(), Outcome::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_retries_back_off_to_200_ms() {
        let d: Vec<u64> = (1..7).map(|n| busy_delay(n).as_millis() as u64).collect();
        assert_eq!(d, vec![25, 50, 100, 200, 200, 200]);
        assert!(is_busy(&io::Error::from_raw_os_error(nix::libc::EAGAIN)));
        assert!(!is_busy(&io::Error::from_raw_os_error(
            nix::libc::ECONNREFUSED
        )));
    }

    #[test]
    fn retry_is_bounded() {
        let ds: Vec<u64> = (1..10)
            .map_while(|a| retry_delay(a, 400))
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(ds, vec![25, 50, 100, 200]);
        assert_eq!(retry_delay(1, 0), None);
    }

    #[test]
    fn provider_paths_split() {
        assert_eq!(
            split_provider_path(Path::new("/proc/42/root/run/x.sock")),
            Some((42, "/run/x.sock"))
        );
        assert_eq!(split_provider_path(Path::new("/run/x.sock")), None);
        assert_eq!(split_provider_path(Path::new("/proc/42/rootx/y")), None);
        assert_eq!(split_provider_path(Path::new("/proc/self/root/y")), None);
    }

    #[test]
    fn connects_through_a_root_fd() {
        // A "provider root" that is just a directory here: the path given is
        // a /proc/<pid>/root path of a pid that does not exist, so only the
        // root fd can make it work.
        let dir = std::env::temp_dir().join(format!("pvx-root-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let sock = dir.join("run/b.sock");
        let _ = std::fs::remove_file(&sock);
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let fd: OwnedFd = std::fs::File::open(&dir).unwrap().into();
        let pid = 999_999_999u32;
        set_roots(&[pid], vec![fd]);
        assert_eq!(root_fds().len(), 1);
        let b = Backend::Unix(crate::graph::provider_path(pid, "/run/b.sock"));
        let s = connect(&b).expect("connect through root fd");
        assert!(s.connect_done().unwrap());
        drop(l);

        // An inner path too long for sun_path behind /proc/self/fd/N.
        let long = "d".repeat(90);
        std::fs::create_dir_all(dir.join(&long)).unwrap();
        let sub: OwnedFd = std::fs::File::open(dir.join(&long)).unwrap().into();
        let l = std::os::unix::net::UnixListener::bind(format!(
            "/proc/self/fd/{}/b.sock",
            sub.as_raw_fd()
        ))
        .unwrap();
        let b = Backend::Unix(crate::graph::provider_path(pid, &format!("/{long}/b.sock")));
        let s = connect(&b).expect("connect through root fd, long path");
        assert!(s.connect_done().unwrap());
        drop(l);
        set_roots(&[], Vec::new());
        assert!(root_fds().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dialer_retries_refused_then_gives_up() {
        let limits = Limits {
            hold_timeout_ms: 0,
            ..Limits::default()
        };
        let now = Instant::now();
        let mut d = Dialer::new(
            Backend::Unix("/nonexistent/pvx-dial.sock".into()),
            now,
            &limits,
        );
        assert!(matches!(d.poll(now, &limits), Dial::Wait));
        assert_eq!(d.deadline(), now + Duration::from_millis(25));
        let mut t;
        let mut waits = 0;
        loop {
            t = d.deadline();
            match d.poll(t, &limits) {
                Dial::Wait => waits += 1,
                Dial::Failed(m) => {
                    assert!(m.contains("unreachable"), "{m}");
                    break;
                }
                Dial::Socket(_) => panic!("nothing listens there"),
                Dial::Gone => panic!("no client is asked on the real network"),
            }
        }
        assert_eq!(waits, 3);
        assert!(t < now + Duration::from_millis(limits.connect_retry_ms));
    }

    #[test]
    fn step_registers_connects_and_times_out() {
        let limits = Limits::default();
        let now = Instant::now();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut d = Dialer::new(Backend::Tcp(l.local_addr().unwrap()), now, &limits);
        let mut socket = None;
        assert_eq!(d.step(&mut socket, false, now, &limits), Step::Register);
        assert!(socket.is_some());
        let mut step = Step::Pending;
        for _ in 0..1000 {
            step = d.step(&mut socket, true, now, &limits);
            if step != Step::Pending {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(step, Step::Connected);
        // A socket that never reports is given up at the connect timeout.
        let late = now + Duration::from_millis(limits.connect_timeout_ms);
        assert!(matches!(
            d.step(&mut socket, false, late, &limits),
            Step::TimedOut(_)
        ));
    }

    /// One replica refuses: the next is dialled at once, and a pass over
    /// every replica fails as one backend would (retried, then given up).
    #[test]
    fn a_failed_replica_fails_over_to_the_next() {
        let limits = Limits {
            hold_timeout_ms: 0,
            ..Limits::default()
        };
        let now = Instant::now();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = Backend::Tcp(dead.local_addr().unwrap());
        drop(dead);
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live_addr = Backend::Tcp(live.local_addr().unwrap());
        let pool: std::rc::Rc<[Backend]> = vec![dead_addr.clone(), live_addr.clone()].into();
        let choice = Choice::at(pool.clone(), crate::balance::Policy::RoundRobin, 0);
        let mut d = Dialer::balanced(choice, now, &limits);
        assert_eq!(d.target, dead_addr);
        let mut socket = None;
        let mut step = d.step(&mut socket, false, now, &limits);
        for _ in 0..1000 {
            match step {
                Step::Connected | Step::Failed(_) | Step::TimedOut(_) => break,
                Step::Pending => std::thread::sleep(Duration::from_millis(1)),
                _ => {}
            }
            let ready = socket.is_some();
            step = d.step(&mut socket, ready, now, &limits);
        }
        assert_eq!(step, Step::Connected);
        assert_eq!(d.target, live_addr);
        let lease = d.take_lease().expect("a lease");
        assert_eq!(lease.backend(), &live_addr);
        assert_eq!(crate::balance::open(&live_addr), 1);
        assert_eq!(crate::balance::open(&dead_addr), 0);
        drop(lease);
        drop(live);

        // Nobody listens: the whole pool fails like one backend.
        let choice = Choice::at(pool, crate::balance::Policy::LeastConn, 0);
        let mut d = Dialer::balanced(choice, now, &limits);
        let mut socket = None;
        let mut t = now;
        let end = loop {
            let ready = socket.is_some();
            match d.step(&mut socket, ready, t, &limits) {
                Step::Wait => t = d.deadline(),
                Step::Register | Step::Pending => std::thread::sleep(Duration::from_millis(1)),
                other => break other,
            }
        };
        assert!(
            matches!(&end, Step::Failed(m) if m.contains("unreachable")),
            "{end:?}"
        );
        assert!(t < now + Duration::from_millis(limits.connect_timeout_ms));
    }

    /// A replica whose connects hang (a full accept queue drops SYNs)
    /// gives way to the next after its share of the connect timeout.
    #[test]
    fn a_stalled_replica_gives_way_after_its_share() {
        let limits = Limits {
            connect_timeout_ms: 2_000,
            ..Limits::default()
        };
        let now = Instant::now();
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pool: std::rc::Rc<[Backend]> = vec![
            Backend::Tcp("127.0.0.1:9".parse().unwrap()),
            Backend::Tcp(live.local_addr().unwrap()),
        ]
        .into();
        let choice = Choice::at(pool.clone(), crate::balance::Policy::RoundRobin, 0);
        let mut d = Dialer::balanced(choice, now, &limits);
        let mut socket = None;
        // Pretend the first connect is under way and never reports.
        assert_eq!(d.step(&mut socket, false, now, &limits), Step::Register);
        socket = Some(crate::stream::Stream::Tcp(
            mio::net::TcpStream::connect(live.local_addr().unwrap()).unwrap(),
        ));
        let share = now + Duration::from_millis(1_000);
        assert_eq!(d.deadline(), share);
        // The stalled attempt is dropped and the next replica dialled in
        // the same step (not left to a timer already due).
        assert_eq!(d.step(&mut socket, false, share, &limits), Step::Register);
        assert!(socket.is_some());
        assert_eq!(d.target, pool[1]);
        assert!(d.deadline() > share);
        // The last replica of the pass has no one to give way to: it runs
        // to the connect timeout.
        let later = now + Duration::from_millis(1_999);
        assert_eq!(d.step(&mut socket, false, later, &limits), Step::Wait);
        assert!(socket.is_some());
        assert!(matches!(
            d.step(
                &mut socket,
                false,
                now + Duration::from_millis(2_000),
                &limits
            ),
            Step::TimedOut(_)
        ));
    }

    /// Refused past the short retry: held, retried, woken when told the
    /// backend may be back, and connected once it listens; a hold that
    /// runs out fails (502), not a timeout (504).
    #[test]
    fn a_held_connect_waits_for_the_backend() {
        let limits = Limits {
            hold_timeout_ms: 2_000,
            ..Limits::default()
        };
        let dir = std::env::temp_dir().join(format!("pvx-hold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.sock");
        let _ = std::fs::remove_file(&path);
        let now = Instant::now();
        let mut d = Dialer::new(Backend::Unix(path.clone()), now, &limits);
        let mut socket = None;
        let mut t = now;
        while !d.is_held() {
            assert_eq!(d.step(&mut socket, false, t, &limits), Step::Wait);
            t = d.deadline();
        }
        assert!(t < now + Duration::from_millis(500));
        assert_eq!(crate::hold::held(), 1);
        // The provider is back; a wake-up retries at once, not at the
        // next scheduled retry.
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        d.wake(t);
        assert_eq!(d.deadline(), t);
        assert_eq!(d.step(&mut socket, false, t, &limits), Step::Register);
        assert_eq!(d.step(&mut socket, true, t, &limits), Step::Connected);
        assert_eq!(crate::hold::held(), 0);
        drop(l);
        drop(socket.take());

        // Nobody comes back: the error at the hold timeout, as a failure.
        let _ = std::fs::remove_file(&path);
        let mut d = Dialer::new(Backend::Unix(path.clone()), now, &limits);
        let mut t = now;
        let end = loop {
            match d.step(&mut socket, false, t, &limits) {
                Step::Wait => t = d.deadline(),
                other => break other,
            }
        };
        assert!(
            matches!(&end, Step::Failed(m) if m.contains("held")),
            "{end:?}"
        );
        assert_eq!(t, now + Duration::from_millis(2_000));
        assert_eq!(crate::hold::held(), 0);

        // Not held with --hold-timeout 0, nor beyond --max-held.
        for limits in [
            Limits {
                hold_timeout_ms: 0,
                ..limits.clone()
            },
            Limits {
                max_held: 0,
                ..limits.clone()
            },
        ] {
            let mut d = Dialer::new(Backend::Unix(path.clone()), now, &limits);
            let mut t = now;
            let end = loop {
                match d.step(&mut socket, false, t, &limits) {
                    Step::Wait => t = d.deadline(),
                    other => break other,
                }
            };
            assert!(matches!(end, Step::Failed(_)), "{end:?}");
            assert!(t < now + Duration::from_millis(500));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A network where every connect is refused (ECONNREFUSED) or the
    /// socket file is missing (ENOENT).
    struct Absent(i32);

    impl Net for Absent {
        fn connect(&mut self, _: &Backend) -> io::Result<Stream> {
            Err(io::Error::from_raw_os_error(self.0))
        }
        fn done(&mut self, _: &Stream) -> io::Result<bool> {
            Err(io::Error::from_raw_os_error(self.0))
        }
    }

    /// Issue 18's wedge: every held-dial path (backend down by the health
    /// checks; refused; socket missing) with the hold shorter and longer
    /// than the connect timeout. Each step that waits leaves its deadline
    /// after now, and the dial ends at the hold's deadline, before or
    /// after the connect timeout alike.
    #[test]
    fn a_held_dial_ends_at_its_hold_deadline_whatever_the_connect_timeout() {
        let b = Backend::Tcp("127.0.0.1:9".parse().unwrap());
        for (hold, connect) in [(1_000, 10_000), (2_000, 500), (1_000, 1_000)] {
            let limits = Limits {
                hold_timeout_ms: hold,
                connect_timeout_ms: connect,
                ..Limits::default()
            };
            for path in ["down", "refused", "missing"] {
                crate::health::track(std::slice::from_ref(&b), &limits);
                if path == "down" {
                    for _ in 0..limits.health_fall {
                        crate::health::observe(&b, Err("test".into()), true);
                    }
                    assert!(crate::health::is_down(&b));
                }
                let errno = if path == "missing" {
                    nix::libc::ENOENT
                } else {
                    nix::libc::ECONNREFUSED
                };
                let now = Instant::now();
                let mut d = Dialer::new(b.clone(), now, &limits);
                let mut socket = None;
                let mut t = now;
                let mut steps = 0;
                let end = loop {
                    steps += 1;
                    assert!(steps < 1_000, "{path} {hold}/{connect}: no end");
                    match d.step_on(&mut Absent(errno), &mut socket, false, t, &limits) {
                        Step::Wait => {
                            assert!(
                                d.deadline() > t,
                                "{path} {hold}/{connect}: re-armed at {t:?}"
                            );
                            t = d.deadline();
                        }
                        other => break other,
                    }
                };
                let what = format!("{path} hold {hold} connect {connect}: {end:?}");
                assert!(matches!(end, Step::Failed(_)), "{what}");
                assert_eq!(t, now + Duration::from_millis(hold), "{what}");
                assert_eq!(crate::hold::held(), 0, "{what}");
            }
        }
        crate::health::track(&[], &Limits::default());
    }

    /// [`Absent`], for a client that hung up before its hold: asked how
    /// often it was asked whether it has gone.
    struct AbsentGone(i32, u32);

    impl Net for AbsentGone {
        fn connect(&mut self, b: &Backend) -> io::Result<Stream> {
            Absent(self.0).connect(b)
        }
        fn done(&mut self, s: &Stream) -> io::Result<bool> {
            Absent(self.0).done(s)
        }
        fn client_gone(&mut self) -> bool {
            self.1 += 1;
            true
        }
    }

    /// Issue 18, item 5: a client gone before its hold began (down by the
    /// health checks; refused; socket missing) is asked once, when the
    /// hold would begin, not during the short retry, and never admitted:
    /// the book neither holds nor counts it.
    #[test]
    fn a_client_gone_before_its_hold_is_never_admitted() {
        let b = Backend::Tcp("127.0.0.1:9".parse().unwrap());
        let limits = Limits {
            hold_timeout_ms: 10_000,
            ..Limits::default()
        };
        for path in ["down", "refused", "missing"] {
            crate::health::track(std::slice::from_ref(&b), &limits);
            if path == "down" {
                for _ in 0..limits.health_fall {
                    crate::health::observe(&b, Err("test".into()), true);
                }
            }
            let errno = if path == "missing" {
                nix::libc::ENOENT
            } else {
                nix::libc::ECONNREFUSED
            };
            let mut stats = crate::ctl::Stats::default();
            crate::hold::fill(&mut stats);
            let total = stats.held_total;
            let now = Instant::now();
            let mut d = Dialer::new(b.clone(), now, &limits);
            let mut net = AbsentGone(errno, 0);
            let (mut socket, mut t, mut steps) = (None, now, 0);
            let end = loop {
                steps += 1;
                assert!(steps < 100, "{path}: no end");
                match d.step_on(&mut net, &mut socket, false, t, &limits) {
                    Step::Wait => {
                        assert_eq!(net.1, 0, "{path}: asked before the hold");
                        t = d.deadline();
                    }
                    other => break other,
                }
            };
            assert_eq!((end, net.1), (Step::Gone, 1), "{path}");
            assert!(!d.is_held(), "{path}");
            crate::hold::fill(&mut stats);
            assert_eq!((stats.held, stats.held_total), (0, total), "{path}");
        }
        crate::health::track(&[], &Limits::default());
    }

    #[test]
    fn unix_connect_to_missing_socket_is_retryable() {
        let e = connect(&Backend::Unix("/nonexistent/pvx-test.sock".into())).unwrap_err();
        assert!(is_retryable(&e));
    }
}
