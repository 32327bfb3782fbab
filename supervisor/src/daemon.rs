//! The supervisor's event loop (`pv-xconnect run`): one mio poll over the
//! signal self-pipe and every worker's control socket, plus a deadline heap
//! for restarts and drain deadlines. Signal handlers only set a flag and
//! write a byte (signal-hook); all work happens here, in the loop.

use crate::endpoint::{describe_exit, same_config, Pending, Running, State, WorkerProc};
use crate::pending::PendingEndpoint;
use crate::policy::{jitter, RestartPolicy};
use crate::status_server::{self, StatusServer};
use crate::{listener, source, spawn, status};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use proto::ctl::{self, CtlError, FromWorker, Limits, ToWorker, WorkerConfig};
use proto::graph::{Link, Listen, Refusal};
use proto::plan::{self, Endpoint, EndpointKey};
use proto::timer::Timers;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod converge;

const SIGNALS: Token = Token(0);
const FIRST_WORKER_TOKEN: usize = 16;
/// Timer keys: endpoint ids count up from 1; drain kills carry this bit,
/// answer checks (`check_answer`) that one.
const DRAIN_KILL: u64 = 1 << 62;
const ACK_CHECK: u64 = 1 << 61;
const SHUTDOWN: u64 = u64::MAX;
/// An update the worker's socket did not take is offered again after this.
const UPDATE_RETRY: Duration = Duration::from_secs(1);
/// A configuration not acknowledged within this is sent again (an update;
/// an init cannot be); a worker that lets `MAX_UNANSWERED` such periods
/// pass in a row is replaced.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_UNANSWERED: u32 = 3;

pub struct Options {
    pub source: source::Source,
    pub binary: spawn::Binary,
    pub policy: RestartPolicy,
    pub limits: Limits,
    pub drain: Duration,
    pub log_target: String,
    pub log_level: String,
    /// Where to serve `GET /status` and `/metrics`; None: nowhere.
    pub status_socket: Option<PathBuf>,
}

struct Flags {
    chld: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

struct Draining {
    worker: WorkerProc,
    key: EndpointKey,
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
            status::Snapshot::build(
                started,
                endpoints,
                pending,
                draining.iter().map(|d| (&d.key, d.worker.pid)),
                refused,
            )
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

    /// Reconcile the running endpoints with the graph, touching only what
    /// changed (SPEC §4; docs/ARCHITECTURE.md has the flow):
    ///
    /// - same endpoint, other routes or providers: Update to the live worker;
    /// - endpoint gone: its worker drains, its listener closes;
    /// - new endpoint: listener made in the consumer's namespace, worker started;
    /// - same address, other kind or consumer: the worker is replaced on the
    ///   same listening socket;
    /// - new consumer pid: a new endpoint in the new namespace, unless the
    ///   new pid lives in the very network namespace the tcp listener is in
    ///   (a container sharing the host network), where it is the same socket.
    pub fn apply(&mut self, links: &[Link], refused: Vec<Refusal>) {
        let plan = plan::build_preferring(links, refused, |k| {
            self.endpoints
                .get(k)
                .map(|r| (r.ep.kind, r.ep.consumer.clone()))
        });
        let mut wanted: BTreeMap<EndpointKey, Endpoint> = plan
            .endpoints
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        let (mut added, mut removed, mut updated) = (0, 0, 0);
        self.rekey_same_netns(&wanted);
        let gone: Vec<EndpointKey> = self
            .endpoints
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key, "no longer in the graph");
            removed += 1;
        }
        let running = &self.endpoints;
        self.pending.retain(|k, _| {
            // Running under this key already: a consumer restarted in the
            // netns our socket is in took its key over (rekey_same_netns).
            if running.contains_key(k) {
                return false;
            }
            let keep = wanted.contains_key(k);
            if !keep {
                proto::info!("endpoint {k}: no longer in the graph; no more tries");
            }
            keep
        });
        let mut refused = plan.refused;
        for (key, ep) in std::mem::take(&mut wanted) {
            let Some(r) = self.endpoints.get_mut(&key) else {
                // New, or pending: a new graph is a try now (a given-up
                // one with a fresh count); a failure stays pending.
                if self.try_make(ep) {
                    added += 1;
                }
                continue;
            };
            if r.ep.kind != ep.kind || r.ep.consumer != ep.consumer {
                self.replace(&key, ep);
                updated += 1;
                continue;
            }
            let changed = !same_config(&r.ep, &ep);
            r.ep = ep;
            if matches!(r.state, State::Failed { .. }) {
                // Re-applying the graph gives a given-up endpoint a new chance.
                r.failures = 0;
                let id = r.id;
                self.restart_now(&key, id);
            } else if changed || !r.in_sync() {
                // Not in sync although unchanged: the worker refused the
                // last update; offer it again.
                updated += 1;
                self.push_update(&key);
            }
        }
        refused.sort_by_key(|r| r.index);
        for r in &refused {
            proto::warn!("refused {r}");
        }
        self.refused = refused;
        let pending = match self.pending.len() {
            0 => String::new(),
            n => format!(", {n} pending (tried again on the backoff)"),
        };
        proto::info!(
            "graph applied: {} endpoint(s) ({added} added, {removed} removed, {updated} updated), {} link(s) refused{pending}",
            self.endpoints.len(),
            self.refused.len()
        );
    }

    fn config_for(&self, ep: &Endpoint) -> WorkerConfig {
        WorkerConfig {
            endpoint: ep.clone(),
            limits: self.opts.limits.clone(),
            log_target: self.opts.log_target.clone(),
            log_level: self.opts.log_level.clone(),
        }
    }

    /// `retries`: attempts it took before (carried into its counters).
    fn start(&mut self, ep: Endpoint, id: u64, retries: u64) -> Result<(), String> {
        let key = ep.key.clone();
        let ns_inode = listener::ns_inode(&key);
        let draining = &self.draining;
        self.retired_unix
            .retain(|(w, _)| draining.iter().any(|d| d.worker.pid == *w));
        let ours: Vec<i32> = self.retired_unix.iter().map(|(_, p)| *p).collect();
        let fd = listener::create(&key, &ours).map_err(|e| format!("cannot listen: {e}"))?;
        let mut r = Running::new(id, ep, fd, ns_inode);
        r.retries = retries;
        self.endpoints.insert(key.clone(), r);
        self.restart_now(&key, id);
        Ok(())
    }

    /// Same address and namespace, another kind or consumer: a new worker
    /// on the same listening socket (no bind race with the old worker, no
    /// window without a listener); the old worker drains.
    fn replace(&mut self, key: &EndpointKey, ep: Endpoint) {
        let Some(mut old) = self.endpoints.remove(key) else {
            return;
        };
        proto::info!(
            "endpoint {key}: {} for '{}' becomes {} for '{}'; new worker, same listening socket",
            old.ep.kind,
            old.ep.consumer,
            ep.kind,
            ep.consumer
        );
        if let Some(w) = old.worker.take() {
            self.drain_worker(key, w);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.endpoints.insert(
            key.clone(),
            Running::new(id, ep, old.listener, old.ns_inode),
        );
        self.restart_now(key, id);
    }

    /// A consumer that restarted (new pid) in the network namespace one of
    /// our tcp listeners already lives in, e.g. a container on the host
    /// network: keep socket and worker, and move the endpoint to its new
    /// key (the update that follows tells the worker). Re-creating it would
    /// race the old worker for the address.
    fn rekey_same_netns(&mut self, wanted: &BTreeMap<EndpointKey, Endpoint>) {
        for key in wanted.keys() {
            if self.endpoints.contains_key(key) || !matches!(key.listen, Listen::Tcp(_)) {
                continue;
            }
            let Some(ns) = listener::ns_inode(key) else {
                continue;
            };
            // Kind or consumer may differ too: the loop in `apply` then
            // replaces the worker, still on this socket.
            let old = self.endpoints.iter().find(|(k, r)| {
                k.listen == key.listen && !wanted.contains_key(*k) && r.ns_inode == Some(ns)
            });
            let Some(old_key) = old.map(|(k, _)| k.clone()) else {
                continue;
            };
            if let Some(r) = self.endpoints.remove(&old_key) {
                proto::info!(
                    "endpoint {old_key}: consumer now pid {} in the same network namespace; keeping socket and worker as {key}",
                    key.consumer_pid
                );
                self.endpoints.insert(key.clone(), r);
            }
        }
    }

    /// Start the endpoint's worker now.
    fn restart_now(&mut self, key: &EndpointKey, id: u64) {
        let Some(r) = self.endpoints.get(key) else {
            return;
        };
        if r.id != id || r.worker.is_some() {
            return;
        }
        let config = self.config_for(&r.ep);
        self.seq += 1;
        let seq = self.seq;
        let spawned = spawn::spawn(&self.opts.binary, &config, &r.listener, seq);
        let now = Instant::now();
        let token = self.next_token;
        let Some(r) = self.endpoints.get_mut(key) else {
            return;
        };
        match spawned {
            Ok(s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut SourceFd(&s.ctl.as_raw_fd()),
                    Token(token),
                    Interest::READABLE,
                ) {
                    proto::error!("endpoint {key}: epoll_ctl for worker pid {}: {e}", s.pid);
                }
                self.next_token += 1;
                proto::info!(
                    "endpoint {key}: {} pid {} started",
                    config.kind().worker_binary(),
                    s.pid
                );
                let init = Pending {
                    seq,
                    what: "init",
                    config: Some(config.endpoint),
                };
                r.worker = Some(WorkerProc::new(s.pid, s.ctl, token, now, init));
                r.state = State::Running;
                self.timers.add(now + ACK_TIMEOUT, ACK_CHECK | id);
            }
            Err(e) => {
                proto::error!("endpoint {key}: {e}");
                r.last_exit = Some(e);
                let st = r.on_exit(&self.opts.policy, now, jitter());
                self.schedule(key, st, None);
            }
        }
    }

    /// `dead`: the worker that exited (None: none could be started).
    fn schedule(&mut self, key: &EndpointKey, st: State, dead: Option<Pid>) {
        let Some(r) = self.endpoints.get(key) else {
            return;
        };
        match st {
            State::Backoff { until, delay } => {
                let of = dead.map_or("(worker did not start)".into(), |p| format!("of worker pid {p}"));
                proto::info!(
                    "endpoint {key}: restart #{} {of} in {} ms",
                    r.failures,
                    delay.as_millis()
                );
                self.timers.add(until, r.id);
            }
            State::Failed { retry_at: None } => proto::error!(
                "endpoint {key}: worker failed {} times in a row; giving up until the graph is applied again (--backoff-policy never)",
                r.failures
            ),
            State::Failed { retry_at: Some(at) } => {
                proto::error!(
                    "endpoint {key}: worker failed {} times in a row; giving up, starting over in {} s (--backoff-policy)",
                    r.failures,
                    at.saturating_duration_since(Instant::now()).as_secs()
                );
                self.timers.add(at, r.id);
            }
            State::Running => {}
        }
    }

    fn push_update(&mut self, key: &EndpointKey) {
        self.send_update(key, false);
    }

    /// Send the graph's configuration as an update. `again`: the worker has
    /// not answered the one(s) on their way; send the newest once more.
    fn send_update(&mut self, key: &EndpointKey, again: bool) {
        let Some(r) = self.endpoints.get(key) else {
            return;
        };
        let config = self.config_for(&r.ep);
        self.seq += 1;
        let seq = self.seq;
        let Some(r) = self.endpoints.get_mut(key) else {
            return;
        };
        // A worker not running gets the new routes with its next Init.
        let Some(w) = r.worker.as_mut() else { return };
        if w.config_pending() && !again {
            // One configuration in flight per worker: the newest goes when
            // the worker acks this one (on_worker_ctl), so a stalled worker
            // never piles up configurations (and their blobs) in its socket.
            proto::debug!(
                "endpoint {key}: worker pid {} has not acked its last configuration; the new one follows its ack",
                w.pid
            );
            return;
        }
        let (id, pid) = (r.id, w.pid);
        // An update that cannot go now is offered again shortly (on_timer);
        // meanwhile status lists its routes as pending, not served.
        let now = Instant::now();
        let retry = now + UPDATE_RETRY;
        let roots = match crate::roots::open_roots(&config.endpoint) {
            Ok(r) => r,
            Err(e) => {
                proto::error!("endpoint {key}: update to worker pid {pid}: {e}; retrying");
                self.timers.add(retry, id);
                return;
            }
        };
        let fds: Vec<_> = roots.iter().map(|f| f.as_raw_fd()).collect();
        let ep = config.endpoint.clone();
        // Sent or not, the worker owes an answer: a socket it does not
        // read counts against it as much as a message it does not answer.
        if !w.overdue(now, Duration::ZERO) {
            self.timers.add(now + ACK_TIMEOUT, ACK_CHECK | id);
        }
        w.owe_answer(now);
        match ctl::send(w.ctl.as_fd(), &ToWorker::Update { seq, config }, &fds) {
            Ok(()) => {
                w.pending.push(Pending {
                    seq,
                    what: "update",
                    config: Some(ep),
                });
                if again {
                    r.resends += 1;
                }
                proto::info!(
                    "endpoint {key}: routes {} to worker pid {}",
                    if again { "sent again" } else { "pushed" },
                    w.pid
                );
            }
            Err(e) => {
                proto::warn!("endpoint {key}: update to worker pid {pid}: {e}; retrying");
                self.timers.add(retry, id);
            }
        }
    }

    /// Stop an endpoint: its worker drains, its listener closes now.
    fn remove(&mut self, key: &EndpointKey, why: &str) {
        let Some(r) = self.endpoints.remove(key) else {
            return;
        };
        proto::info!("endpoint {key}: removing ({why})");
        let made_by = match key.listen {
            Listen::Unix(_) => crate::sockfile::listen_pid(&r.listener),
            Listen::Tcp(_) => None,
        };
        if let Some(w) = r.worker {
            if let Some(p) = made_by {
                self.retired_unix.push((w.pid, p));
            }
            self.drain_worker(key, w);
        }
        // Our copy of the listener goes now; the worker closes its own as
        // it starts draining. A unix socket file goes too, so new clients
        // are refused at once rather than queued for nobody.
        drop(r.listener);
        listener::remove_unix(key, r.ns_inode, made_by);
    }

    /// Tell a worker to stop accepting and finish its connections by the
    /// drain deadline; it is killed if it is still there a second later.
    fn drain_worker(&mut self, key: &EndpointKey, mut w: WorkerProc) {
        self.seq += 1;
        let seq = self.seq;
        let deadline_ms = self.opts.drain.as_millis() as u64;
        match ctl::send(w.ctl.as_fd(), &ToWorker::Drain { seq, deadline_ms }, &[]) {
            Ok(()) => {
                w.pending.push(Pending {
                    seq,
                    what: "drain",
                    config: None,
                });
                proto::info!(
                    "endpoint {key}: worker pid {} draining (deadline {deadline_ms} ms)",
                    w.pid
                )
            }
            Err(e) => {
                proto::warn!(
                    "endpoint {key}: drain to worker pid {}: {e}; killing it",
                    w.pid
                );
                let _ = kill(w.pid, Signal::SIGKILL);
            }
        }
        self.timers.add(
            Instant::now() + self.opts.drain + Duration::from_secs(1),
            DRAIN_KILL | w.pid.as_raw() as u64,
        );
        self.draining.push(Draining {
            worker: w,
            key: key.clone(),
        });
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

    /// Collect every exited child; restart what should run.
    fn reap(&mut self) {
        loop {
            let st = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(st) => st,
            };
            let Some(pid) = st.pid() else { continue };
            let how = describe_exit(st);
            if let Some(i) = self.draining.iter().position(|d| d.worker.pid == pid) {
                let d = self.draining.swap_remove(i);
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&d.worker.ctl.as_raw_fd()));
                proto::info!("endpoint {}: draining worker pid {pid} {how}", d.key);
                continue;
            }
            let Some((key, r)) = self
                .endpoints
                .iter_mut()
                .find(|(_, r)| r.worker.as_ref().is_some_and(|w| w.pid == pid))
            else {
                continue;
            };
            let key = key.clone();
            if let Some(w) = &r.worker {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&w.ctl.as_raw_fd()));
            }
            proto::warn!("endpoint {key}: worker pid {pid} {how}");
            r.last_exit = Some(how);
            r.restarts += 1;
            let st = r.on_exit(&self.opts.policy, Instant::now(), jitter());
            self.schedule(&key, st, Some(pid));
        }
    }

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

    fn on_worker_ctl(&mut self, token: usize) {
        let (key, w) = match self
            .endpoints
            .iter_mut()
            .find(|(_, r)| r.worker.as_ref().is_some_and(|w| w.token == token))
        {
            Some((k, r)) => (k.clone(), r.worker.as_mut()),
            None => match self.draining.iter_mut().find(|d| d.worker.token == token) {
                Some(d) => (d.key.clone(), Some(&mut d.worker)),
                None => return,
            },
        };
        let Some(w) = w else { return };
        let mut stats = None;
        // The configuration the worker acknowledged last, if any; and the
        // last one it answered, applied or refused.
        let mut applied = None;
        let mut answered = None;
        loop {
            match ctl::recv::<FromWorker>(w.ctl.as_fd()) {
                Ok((FromWorker::Stats { stats: s }, _)) => stats = Some(s),
                Ok((FromWorker::Ack { seq, error }, _)) => {
                    let Some(i) = w.pending.iter().position(|p| p.seq == seq) else {
                        proto::debug!(
                            "endpoint {key}: worker pid {} acked unknown seq {seq}",
                            w.pid
                        );
                        continue;
                    };
                    let p = w.pending.remove(i);
                    if p.config.is_some() {
                        answered.clone_from(&p.config);
                        w.answered(Instant::now());
                    }
                    match error {
                        Some(e) => proto::error!(
                            "endpoint {key}: worker pid {} refused {}: {e}; it keeps its previous configuration",
                            w.pid,
                            p.what
                        ),
                        None if p.what == "drain" => proto::info!(
                            "endpoint {key}: worker pid {} stopped accepting, finishing its connections",
                            w.pid
                        ),
                        None => {
                            proto::info!("endpoint {key}: worker pid {} applied {}", w.pid, p.what);
                            applied = p.config.or(applied);
                        }
                    }
                }
                Err(CtlError::WouldBlock) => break,
                Err(CtlError::Eof) => {
                    // Its exit comes by SIGCHLD; stop listening to it now.
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&w.ctl.as_raw_fd()));
                    break;
                }
                Err(e) => proto::warn!("endpoint {key}: worker pid {}: {e}", w.pid),
            }
        }
        if let Some(r) = self.endpoints.get_mut(&key) {
            if r.worker.as_ref().is_some_and(|w| w.token == token) {
                if let Some(s) = stats {
                    r.set_stats(s);
                }
                if applied.is_some() {
                    r.applied = applied;
                }
                // The graph moved on while that configuration was on its
                // way (push_update waited): send the newest now. One the
                // worker refused as it is waits for the next apply.
                let newer = answered.is_some_and(|a| !same_config(&a, &r.ep));
                if newer && r.state == State::Running && !r.in_sync() {
                    self.push_update(&key);
                }
            }
        }
    }
}
