//! The supervisor's event loop (`pv-xconnect run`): one mio poll over the
//! signal self-pipe and every worker's control socket, plus a deadline heap
//! for restarts and drain deadlines. Signal handlers only set a flag and
//! write a byte (signal-hook); all work happens here, in the loop.
//!
//! This file is the loop alone (tokens, signals, timer keys, the status
//! socket, shutdown); the work is in the stages of the pipeline, a file
//! each:
//!
//! ```text
//! source.rs ──graph──> proto::plan ──endpoints──> daemon/reconcile.rs
//!   (file or pv-ctrl)     (grouping, refusals)       (diff with what runs)
//!                                                      │           │
//!                              daemon/processes.rs <───┘           └───> daemon/control.rs
//!                              (start, reap, restart, drain)             (update, ack, stats)
//! ```

use crate::endpoint::{Draining, Running, State};
use crate::pending::PendingEndpoint;
use crate::policy::RestartPolicy;
use crate::status_server::{self, StatusServer};
use crate::{source, spawn, status};
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use proto::graph::Refusal;
use proto::limits::Limits;
use proto::plan::EndpointKey;
use proto::timer::Timers;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod control;
mod processes;
mod reconcile;

const SIGNALS: Token = Token(0);
const FIRST_WORKER_TOKEN: usize = 16;
/// Timer keys: endpoint ids count up from 1; drain kills carry this bit,
/// answer checks (`check_answer`) that one.
const DRAIN_KILL: u64 = 1 << 62;
const ACK_CHECK: u64 = 1 << 61;
const SHUTDOWN: u64 = u64::MAX;

/// `--drain-timeout`'s default.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

pub struct Options {
    pub source: source::Source,
    pub binary: spawn::Binary,
    pub policy: RestartPolicy,
    pub limits: Limits,
    pub drain: Duration,
    pub log_target: String,
    pub log_level: String,
    /// `--access-log`, passed on to every worker.
    pub access_log: proto::log::AccessLog,
    /// Where to serve `GET /status` and `/metrics`; None: nowhere.
    pub status_socket: Option<PathBuf>,
}

struct Flags {
    chld: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

pub struct Daemon {
    poll: Poll,
    opts: Options,
    endpoints: BTreeMap<EndpointKey, Running>,
    /// Endpoints of the graph whose listener could not be made yet.
    pending: BTreeMap<EndpointKey, PendingEndpoint>,
    draining: Vec<Draining>,
    refused: Vec<Refusal>,
    timers: Timers,
    flags: Flags,
    sig_rx: mio::net::UnixStream,
    next_id: u64,
    next_token: usize,
    seq: u64,
    shutdown_at: Option<Instant>,
    // ops: status socket (status_server.rs), served from this loop.
    status: Option<StatusServer>,
    /// Unix listeners of removed endpoints whose workers may still hold
    /// them while draining: (worker pid, listen pid). Their socket files
    /// are ours to replace (`sockfile.rs`) while that worker drains.
    retired_unix: Vec<(nix::unistd::Pid, i32)>,
    started: Instant,
}

impl Daemon {
    pub fn new(opts: Options) -> Result<Daemon, String> {
        let poll = Poll::new().map_err(|e| format!("epoll_create: {e}"))?;
        let (rx, tx) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        rx.set_nonblocking(true)
            .and_then(|_| tx.set_nonblocking(true))
            .map_err(|e| format!("O_NONBLOCK: {e}"))?;
        let flags = Flags {
            chld: Arc::default(),
            hup: Arc::default(),
            term: Arc::default(),
        };
        use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
        for (sig, flag) in [
            (SIGCHLD, &flags.chld),
            (SIGHUP, &flags.hup),
            (SIGTERM, &flags.term),
            (SIGINT, &flags.term),
        ] {
            // Flag first, then the wake-up byte: the loop sees the flag set.
            signal_hook::flag::register(sig, Arc::clone(flag))
                .map_err(|e| format!("signal {sig}: {e}"))?;
            let tx = tx.try_clone().map_err(|e| format!("dup: {e}"))?;
            signal_hook::low_level::pipe::register(sig, tx)
                .map_err(|e| format!("signal {sig}: {e}"))?;
        }
        let mut sig_rx = mio::net::UnixStream::from_std(rx);
        poll.registry()
            .register(&mut sig_rx, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        // A status socket that cannot be made is reported, not fatal: the
        // device's links matter more than their observability.
        let status = opts.status_socket.as_deref().and_then(|p| {
            StatusServer::bind(p, poll.registry())
                .inspect(|_| proto::info!("status socket {}", p.display()))
                .map_err(|e| proto::error!("{e}; running without a status socket"))
                .ok()
        });
        Ok(Daemon {
            status,
            retired_unix: Vec::new(),
            started: Instant::now(),
            poll,
            opts,
            endpoints: BTreeMap::new(),
            pending: BTreeMap::new(),
            draining: Vec::new(),
            refused: Vec::new(),
            timers: Timers::new(),
            flags,
            sig_rx,
            next_id: 1,
            next_token: FIRST_WORKER_TOKEN,
            seq: 0,
            shutdown_at: None,
        })
    }

    pub fn run(mut self) -> Result<(), String> {
        proto::info!("graph source: {}", self.opts.source.describe());
        self.reload(true);
        let mut events = Events::with_capacity(64);
        let mut idle = proto::mem::IdleTrim::default();
        loop {
            let now = Instant::now();
            let mut wake = self.opts.source.next_wake();
            if let Some(at) = self.status.as_ref().and_then(|s| s.next_deadline()) {
                wake = wake.min(at);
            }
            let wake_in = wake.saturating_duration_since(now);
            let timeout = Some(self.timers.timeout(now).map_or(wake_in, |t| t.min(wake_in)));
            // Drop what this wake-up's work mapped before sleeping (README,
            // "Measured": idle PSS).
            let timeout = idle.before_wait(now, timeout);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(format!("epoll_wait: {e}"));
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => {
                        let mut buf = [0u8; 64];
                        while matches!((&self.sig_rx).read(&mut buf), Ok(n) if n > 0) {}
                    }
                    t if status_server::owns(t) => self.on_status(t),
                    source::TOKEN => {
                        let got = self.opts.source.on_ready(self.poll.registry());
                        self.apply_fetched(got);
                    }
                    Token(t) => self.on_worker_ctl(t),
                }
            }
            if let Some(s) = self.status.as_mut() {
                s.sweep(Instant::now());
            }
            if self.flags.chld.swap(false, Ordering::SeqCst) {
                self.reap();
            }
            if self.flags.term.swap(false, Ordering::SeqCst) && self.shutdown_at.is_none() {
                self.shutdown();
            }
            if self.flags.hup.swap(false, Ordering::SeqCst) && self.shutdown_at.is_none() {
                proto::info!("SIGHUP: re-reading the graph");
                self.reload(true);
            }
            if self.shutdown_at.is_none() {
                let got = self
                    .opts
                    .source
                    .on_time(Instant::now(), self.poll.registry());
                self.apply_fetched(got);
            }
            let now = Instant::now();
            while let Some(k) = self.timers.pop_due(now) {
                self.on_timer(k, now);
            }
            if self.shutdown_at.is_some() && self.endpoints.is_empty() && self.draining.is_empty() {
                proto::info!("all workers stopped; exiting");
                return Ok(());
            }
        }
    }

    /// ops hook: a status socket event; the snapshot is built only when a
    /// complete request asks for it, from what the loop already knows.
    fn on_status(&mut self, t: Token) {
        let Some(srv) = self.status.as_mut() else {
            return;
        };
        let (started, endpoints, pending, draining, refused) = (
            self.started,
            &self.endpoints,
            &self.pending,
            &self.draining,
            &self.refused,
        );
        srv.on_event(self.poll.registry(), t, || {
            status::Snapshot::build(started, endpoints, pending, draining, refused)
        });
    }

    /// Ask the source for the graph (a file answers at once, the control
    /// socket later, through the loop); a source that cannot be read
    /// changes nothing (the source logs why). `force`: apply even an
    /// unchanged graph.
    fn reload(&mut self, force: bool) {
        let got = self.opts.source.request(force, self.poll.registry());
        self.apply_fetched(got);
    }

    fn apply_fetched(&mut self, got: Option<source::Parsed>) {
        if let Some((links, refused)) = got {
            if self.shutdown_at.is_none() {
                self.apply(&links, refused);
            }
        }
    }

    fn shutdown(&mut self) {
        proto::info!("stopping: draining {} endpoint(s)", self.endpoints.len());
        let at = Instant::now() + self.opts.drain + Duration::from_secs(2);
        self.shutdown_at = Some(at);
        self.timers.add(at, SHUTDOWN);
        let keys: Vec<EndpointKey> = self.endpoints.keys().cloned().collect();
        for k in keys {
            self.remove(&k, "shutting down");
        }
        self.pending.clear();
    }

    /// A due timer: its key says whose it is (see `DRAIN_KILL`); an
    /// endpoint id is a pending endpoint's try, a restart on the backoff,
    /// or an update to offer again.
    fn on_timer(&mut self, k: u64, now: Instant) {
        if k == SHUTDOWN {
            for d in &self.draining {
                proto::warn!(
                    "endpoint {}: worker pid {} still busy at the shutdown deadline; killing it",
                    d.key,
                    d.worker.pid
                );
                let _ = kill(d.worker.pid, Signal::SIGKILL);
            }
            self.draining.clear();
            self.endpoints.clear();
            return;
        }
        if k & DRAIN_KILL == 0 && k & ACK_CHECK != 0 {
            self.check_answer(k & !ACK_CHECK, now);
            return;
        }
        if k & DRAIN_KILL != 0 {
            let pid = (k & !DRAIN_KILL) as i32;
            if let Some(d) = self.draining.iter().find(|d| d.worker.pid.as_raw() == pid) {
                proto::warn!(
                    "endpoint {}: worker pid {pid} missed its drain deadline; killing it",
                    d.key
                );
                let _ = kill(d.worker.pid, Signal::SIGKILL);
            }
            return;
        }
        if self.retry_pending(k, now) {
            return;
        }
        let Some((key, r)) = self.endpoints.iter_mut().find(|(_, r)| r.id == k) else {
            return;
        };
        if matches!(r.state, State::Backoff { until, .. } if until <= now) {
            let key = key.clone();
            self.restart_now(&key, k);
        } else if matches!(r.state, State::Failed { retry_at: Some(at) } if at <= now) {
            // The backoff policy's wait is over: a fresh count.
            proto::info!("endpoint {key}: starting over after the backoff policy's wait");
            r.failures = 0;
            let key = key.clone();
            self.restart_now(&key, k);
        } else if r.state == State::Running && !r.in_sync() {
            // An update that could not be sent (push_update).
            let key = key.clone();
            self.push_update(&key);
        }
    }
}
