//! The worker processes: started (fork+exec with the init message,
//! `spawn.rs`), reaped on SIGCHLD, restarted on the backoff of
//! `policy.rs`, and drained when their endpoint goes.

use super::control::ACK_TIMEOUT;
use super::{Daemon, ACK_CHECK, DRAIN_KILL};
use crate::endpoint::{describe_exit, Draining, Pending, State, WorkerProc};
use crate::policy::jitter;
use crate::spawn;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use proto::ctl::{self, ToWorker, WorkerConfig};
use proto::plan::{Endpoint, EndpointKey};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

impl Daemon {
    /// What a worker is sent with its init and every update: the endpoint
    /// and this run's limits and log settings.
    pub(super) fn config_for(&self, ep: &Endpoint) -> WorkerConfig {
        WorkerConfig {
            endpoint: ep.clone(),
            limits: self.opts.limits.clone(),
            log_target: self.opts.log_target.clone(),
            log_level: self.opts.log_level.clone(),
            access_log: self.opts.access_log,
        }
    }

    /// Start the endpoint's worker now.
    pub(super) fn restart_now(&mut self, key: &EndpointKey, id: u64) {
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
    pub(super) fn schedule(&mut self, key: &EndpointKey, st: State, dead: Option<Pid>) {
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

    /// Tell a worker to stop accepting and finish its connections by the
    /// drain deadline; it is killed if it is still there a second later.
    pub(super) fn drain_worker(&mut self, mut d: Draining) {
        let (key, w) = (&d.key, &mut d.worker);
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
        self.draining.push(d);
    }

    /// Collect every exited child; restart what should run.
    pub(super) fn reap(&mut self) {
        loop {
            let st = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(st) => st,
            };
            let Some(pid) = st.pid() else { continue };
            let how = describe_exit(st);
            if let Some(i) = self.draining.iter().position(|d| d.worker.pid == pid) {
                self.hear_last(self.draining[i].worker.token);
                let d = self.draining.swap_remove(i);
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&d.worker.ctl.as_raw_fd()));
                self.drained(d, &how);
                continue;
            }
            let token = self
                .endpoints
                .values()
                .find_map(|r| r.worker.as_ref().filter(|w| w.pid == pid))
                .map(|w| w.token);
            let Some(token) = token else { continue };
            self.hear_last(token);
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

    /// A draining worker exited. What its endpoint counted per route,
    /// and it up to its last report, goes to the endpoint of the same
    /// series if the graph has it again (so its counters never go back),
    /// for the routes it still has; otherwise it goes with its endpoint.
    fn drained(&mut self, mut d: Draining, how: &str) {
        d.route_counts.worker_gone();
        let counted = d
            .route_counts
            .totals()
            .iter()
            .fold(0u64, |n, r| n.saturating_add(r.total()));
        let again = self.endpoints.get_mut(&d.key).filter(|r| d.same_series(r));
        let whose = match again {
            Some(r) => {
                r.route_counts.add_gone(d.route_counts, &r.ep.routes);
                "kept: the endpoint is back in the graph"
            }
            None => "gone with the endpoint",
        };
        proto::info!(
            "endpoint {}: draining worker pid {} {how}; its routes counted {counted} request(s) or connection(s) in all, {whose}",
            d.key,
            d.worker.pid
        );
    }
}
