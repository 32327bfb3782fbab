//! Worker start-up and its side of the control channel, shared by every
//! worker binary: take fd 3 from the supervisor, receive the listener,
//! provider roots and configuration, shed what the worker must not hold
//! (stray fds, capabilities), then report counters and answer control
//! messages. What start-up receives goes to the loop ([`Started`]), which
//! owns it from then on.

use crate::backend::{Reach, Roots};
use crate::route_book::RouteBook;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use proto::ctl::{
    self, CtlError, FromWorker, RouteWire, Stats, ToWorker, WorkerConfig, WORKER_CTL_FD,
};
use proto::log::{self, Level};
use proto::types::Backend;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub struct Started {
    pub ctl: WorkerCtl,
    pub listener: OwnedFd,
    /// The provider roots that came with Init.
    pub roots: Roots,
    pub config: WorkerConfig,
}

/// Whether `fd` is open and a SOCK_SEQPACKET socket.
fn is_seqpacket(fd: std::os::fd::RawFd) -> bool {
    use nix::libc;
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one c_int into `ty`, whose size `len` gives;
    // an fd that is not open or not a socket fails (EBADF, ENOTSOCK).
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && ty == libc::SOCK_SEQPACKET
}

/// Worker start-up. On failure the reason is returned for the caller to
/// print before exiting non-zero.
pub fn start(kind: &str) -> Result<Started, String> {
    let ident = format!("pvx-worker-{kind}");
    // The supervisor execs us through an fd (/proc/self/fd/N), which names
    // the process "N" for `ps -e`, `top` and `pidof`; give it its name back.
    if let Ok(name) = std::ffi::CString::new(ident.as_str()) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    // fd 3 must be the SEQPACKET socket the supervisor gave us: anything
    // else means we were run by hand (a symlink, `exec -a`).
    if !is_seqpacket(WORKER_CTL_FD) {
        return Err(format!(
            "{ident}: started by pv-xconnect only (no control socket on fd {WORKER_CTL_FD})"
        ));
    }
    // SAFETY: fd 3 was inherited for us alone; from here on we own it.
    let ctl = unsafe { OwnedFd::from_raw_fd(WORKER_CTL_FD) };
    fcntl(ctl.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("fcntl(F_SETFD) on fd 3: {e}"))?;

    let ready = {
        let mut pfd = [PollFd::new(ctl.as_fd(), PollFlags::POLLIN)];
        poll(&mut pfd, PollTimeout::from(10_000u16))
            .map_err(|e| format!("poll on control socket: {e}"))?
    };
    if ready == 0 {
        return Err(format!(
            "{ident}: no configuration from the supervisor within 10 s"
        ));
    }
    let (msg, mut fds) = ctl::recv_to_worker(ctl.as_fd()).map_err(|e| format!("{ident}: {e}"))?;
    let (seq, config) = match msg {
        ToWorker::Init { seq, config } => (seq, config),
        other => {
            return Err(format!(
                "{ident}: first control message must be init, got {other:?}"
            ))
        }
    };
    if fds.is_empty() {
        return Err(format!("{ident}: init without listener"));
    }
    // The listener first, then one provider root per root_pids() entry.
    let listener = fds.remove(0);
    let roots = Roots::new(&config.endpoint.root_pids(), fds);

    log::init(
        &ident,
        &config.log_target,
        Level::parse(&config.log_level).unwrap_or(Level::Info),
    );
    log::init_access(config.access_log);
    // Every line this worker writes names its endpoint.
    log::set_context(Some(format!("endpoint {}", config.endpoint.key)));
    let ctl = WorkerCtl::new(ctl);

    let setup = (|| -> Result<(), String> {
        raise_nofile();
        // The syslog socket was opened above, on purpose: keep it too; and
        // the provider roots that came with init.
        let mut keep = vec![ctl.fd.as_raw_fd(), listener.as_raw_fd()];
        keep.extend(log::raw_fds());
        keep.extend(roots.fds());
        close_stray_fds(&keep)?;
        proto::privs::keep_only(&kept_caps(&config)).map(|_| ())
    })();
    ctl.ack(seq, setup.as_ref().err().cloned());
    setup?;
    Ok(Started {
        ctl,
        listener,
        roots,
        config,
    })
}

/// Use the hard limit: connections are bounded by `max_conns`, not by a
/// default of 1024 fds that a busy endpoint reaches with ~200 spliced
/// connections (client, backend, two pipes).
fn raise_nofile() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Close every fd but stdio and `keep`: a worker holds only what it was
/// given on purpose, whatever its parent leaked.
pub fn close_stray_fds(keep: &[RawFd]) -> Result<(), String> {
    let dir =
        std::fs::read_dir("/proc/self/fd").map_err(|e| format!("reading /proc/self/fd: {e}"))?;
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect();
    for fd in fds {
        // The read_dir fd itself is gone by now; EBADF for it is expected.
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// Capabilities a worker keeps. Only a worker that may reach a unix
/// backend keeps one: CAP_DAC_OVERRIDE, because the provider's socket may
/// belong to another user. Routes change live (`Update`) and dropped
/// capabilities cannot come back, so http, rest and unix workers keep it
/// whatever their backends are now. Reaching into a provider container
/// needs no CAP_SYS_PTRACE: the supervisor passes the provider's root as
/// an fd (see `backend`, "Provider roots"). A tcp worker with tcp
/// backends keeps nothing.
pub fn kept_caps(c: &WorkerConfig) -> Vec<caps::Capability> {
    use caps::Capability;
    use proto::types::Kind;
    let mut keep = Vec::new();
    let unix_backend = c
        .endpoint
        .routes
        .iter()
        .flat_map(|r| r.backends())
        .any(|b| matches!(b, Backend::Unix(_)));
    if unix_backend || matches!(c.kind(), Kind::Http | Kind::Rest | Kind::Unix) {
        keep.push(Capability::CAP_DAC_OVERRIDE);
    }
    keep
}

/// The worker's end of the control socket.
pub struct WorkerCtl {
    pub fd: OwnedFd,
    last_stats: Option<Instant>,
    sent: Stats,
    /// The health table's version in the last report sent.
    sent_health: u64,
}

/// At most one stats report per this interval; none while nothing changes.
pub const STATS_INTERVAL: Duration = Duration::from_millis(500);

impl WorkerCtl {
    pub fn new(fd: OwnedFd) -> WorkerCtl {
        WorkerCtl {
            fd,
            last_stats: None,
            sent: Stats::default(),
            sent_health: 0,
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn ack(&self, seq: u64, error: Option<String>) {
        if let Err(e) = ctl::send_from_worker(self.fd.as_fd(), &FromWorker::Ack { seq, error }, &[])
        {
            proto::warn!("ack {seq}: {e}");
        }
    }

    /// Next control message and its fds (an Update brings the provider
    /// roots of its routes, installed only if the update is applied).
    /// `Ok(None)`: nothing more now. `Err(Eof)`: the supervisor is gone
    /// and the worker must exit. A malformed message is logged and
    /// skipped; it never ends the worker.
    pub fn recv(&self) -> Result<Option<(ToWorker, Vec<OwnedFd>)>, CtlError> {
        loop {
            match ctl::recv_to_worker(self.fd.as_fd()) {
                Ok(m) => return Ok(Some(m)),
                Err(CtlError::WouldBlock) => return Ok(None),
                Err(CtlError::Eof) => return Err(CtlError::Eof),
                Err(e @ CtlError::Sys(..)) => return Err(e),
                Err(e) => proto::warn!("ignoring control message: {e}"),
            }
        }
    }

    /// The report a worker sends as it exits (its drain is over): whatever
    /// changed since the last one, at once, whatever the interval. What its
    /// last connections counted (those cut at the deadline too) would be
    /// lost otherwise. A socket that will not take it loses it.
    pub fn report_last(
        &mut self,
        now: Instant,
        stats: Stats,
        reach: &mut Reach,
        routes: &mut RouteBook,
    ) {
        self.last_stats = None;
        self.report(now, stats, reach, routes);
    }

    /// Send `stats`, with the hold counters and the health table of
    /// `reach` and the routes' counters that changed, if anything changed
    /// and the interval has passed. Returns how long until a report may be
    /// sent, when one is still pending.
    pub fn report(
        &mut self,
        now: Instant,
        mut stats: Stats,
        reach: &mut Reach,
        routes: &mut RouteBook,
    ) -> Option<Duration> {
        stats.log_dropped = log::dropped();
        reach.held.fill(now, &mut stats);
        let health = reach.health.version();
        if stats == self.sent && health == self.sent_health && !routes.changed() {
            return None;
        }
        if let Some(last) = self.last_stats {
            let due = last + STATS_INTERVAL;
            if now < due {
                return Some(due - now);
            }
        }
        let counted = routes.report();
        let msg = FromWorker::Stats {
            stats,
            health: reach.health.report(),
            routes: counted.iter().map(RouteWire::from).collect(),
        };
        match ctl::send_from_worker(self.fd.as_fd(), &msg, &[]) {
            Ok(()) => {
                self.sent = stats;
                self.sent_health = health;
                self.last_stats = Some(now);
                None
            }
            Err(_) => {
                routes.unsent(counted);
                Some(STATS_INTERVAL)
            }
        }
    }
}
