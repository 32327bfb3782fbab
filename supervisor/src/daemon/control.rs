//! Control messages to and from the workers (`proto::ctl`): updates sent
//! one at a time per worker, acks and stats read back, and the watch on
//! answers that resends an update and replaces a worker that stays silent.

use super::{Daemon, ACK_CHECK};
use crate::endpoint::{same_config, Pending, State};
use mio::unix::SourceFd;
use nix::sys::signal::{kill, Signal};
use proto::ctl::{self, CtlError, FromWorker, ToWorker};
use proto::plan::EndpointKey;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// A stats report's endpoint counters and backends' health.
type Report = (proto::ctl::Stats, Vec<proto::types::BackendHealth>);
/// The per-route counters of the reports read in one go: each report
/// names the routes that changed since the one before, so all of them
/// count, not only the last.
type Routes = Vec<proto::ctl::RouteStats>;

/// What one read of a worker's control socket brought.
struct Heard {
    /// The last stats report's.
    stats: Option<Report>,
    routes: Routes,
    /// The configuration the worker acknowledged last, if any; and the
    /// last one it answered, applied or refused.
    applied: Option<proto::plan::Endpoint>,
    answered: Option<proto::plan::Endpoint>,
}

/// An update the worker's socket did not take is offered again after this.
const UPDATE_RETRY: Duration = Duration::from_secs(1);
/// A configuration not acknowledged within this is sent again (an update;
/// an init cannot be); a worker that lets `MAX_UNANSWERED` such periods
/// pass in a row is replaced.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_UNANSWERED: u32 = 3;

impl Daemon {
    /// Offer the graph's configuration to the endpoint's live worker.
    pub(super) fn push_update(&mut self, key: &EndpointKey) {
        self.send_update(key, false);
    }

    /// Send the graph's configuration as an update. `again`: the worker has
    /// not answered the one(s) on their way; send the newest once more.
    pub(super) fn send_update(&mut self, key: &EndpointKey, again: bool) {
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

    /// A worker's control socket is readable: its answers and reports.
    pub(super) fn on_worker_ctl(&mut self, token: usize) {
        let Some((key, heard)) = self.hear(token) else {
            return;
        };
        let Heard {
            stats,
            routes,
            applied,
            answered,
        } = heard;
        self.count(&key, token, stats, routes);
        if let Some(r) = self.endpoints.get_mut(&key) {
            if r.worker.as_ref().is_some_and(|w| w.token == token) {
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

    /// A worker exited: the reports it sent before are still in its
    /// socket when the SIGCHLD comes first (a drained worker's last one is
    /// sent right before it exits); they count. Its answers no longer
    /// matter.
    pub(super) fn hear_last(&mut self, token: usize) {
        if let Some((key, heard)) = self.hear(token) {
            self.count(&key, token, heard.stats, heard.routes);
        }
    }

    /// Add a report to the endpoint of the worker `token`, or to the
    /// draining worker it is.
    fn count(&mut self, key: &EndpointKey, token: usize, stats: Option<Report>, routes: Routes) {
        if let Some(r) = self.endpoints.get_mut(key) {
            if r.worker.as_ref().is_some_and(|w| w.token == token) {
                if let Some((s, health)) = stats {
                    r.set_stats(s);
                    r.health = health;
                }
                r.route_counts.report(routes);
                return;
            }
        }
        // Its endpoint went: only the per-route counters travel with a
        // draining worker (its endpoint's other series went with it).
        if let Some(d) = self.draining.iter_mut().find(|d| d.worker.token == token) {
            d.route_counts.report(routes);
        }
    }

    /// Read what the worker `token` sent: its endpoint's key and the
    /// messages, in order. None: no such worker.
    fn hear(&mut self, token: usize) -> Option<(EndpointKey, Heard)> {
        let (key, w) = match self
            .endpoints
            .iter_mut()
            .find(|(_, r)| r.worker.as_ref().is_some_and(|w| w.token == token))
        {
            Some((k, r)) => (k.clone(), r.worker.as_mut()?),
            None => {
                let d = self.draining.iter_mut().find(|d| d.worker.token == token)?;
                (d.key.clone(), &mut d.worker)
            }
        };
        let mut heard = Heard {
            stats: None,
            routes: Vec::new(),
            applied: None,
            answered: None,
        };
        loop {
            match ctl::recv::<FromWorker>(w.ctl.as_fd()) {
                Ok((
                    FromWorker::Stats {
                        stats: s,
                        health,
                        routes: r,
                    },
                    _,
                )) => {
                    heard.stats = Some((s, health));
                    for wire in r {
                        match proto::ctl::RouteStats::try_from(wire) {
                            Ok(c) => heard.routes.push(c),
                            Err(e) => proto::warn!(
                                "endpoint {key}: worker pid {}: counters ignored: {e}",
                                w.pid
                            ),
                        }
                    }
                }
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
                        heard.answered.clone_from(&p.config);
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
                            heard.applied = p.config.or(heard.applied);
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
        Some((key, heard))
    }

    /// An answer check (`ACK_CHECK`): a worker that owes an answer for
    /// `ACK_TIMEOUT` gets its update again; one that lets
    /// `MAX_UNANSWERED` periods pass in a row is killed, and restarted on
    /// the backoff like any worker that died (its successor gets the
    /// graph's configuration with its init).
    pub(super) fn check_answer(&mut self, id: u64, now: Instant) {
        let Some((key, r)) = self.endpoints.iter_mut().find(|(_, r)| r.id == id) else {
            return;
        };
        let Some(w) = r.worker.as_mut() else { return };
        if !w.overdue(now, ACK_TIMEOUT) {
            return;
        }
        w.unanswered += 1;
        let key = key.clone();
        let what = if w.pending.iter().any(|p| p.what == "init") {
            "init"
        } else {
            "update"
        };
        if w.unanswered >= MAX_UNANSWERED {
            proto::error!(
                "endpoint {key}: worker pid {} did not answer its {what} in {} s; replacing it",
                w.pid,
                (ACK_TIMEOUT * w.unanswered).as_secs()
            );
            w.awaiting_since = None;
            let _ = kill(w.pid, Signal::SIGKILL);
            return;
        }
        proto::warn!(
            "endpoint {key}: worker pid {} has not answered its {what} in {} s",
            w.pid,
            (ACK_TIMEOUT * w.unanswered).as_secs()
        );
        w.awaiting_since = Some(now);
        self.timers.add(now + ACK_TIMEOUT, ACK_CHECK | id);
        // An init cannot be sent twice (it carries the listener and comes
        // first); an update can: the newest configuration, a new seq.
        if what == "update" {
            self.send_update(&key, true);
        }
    }
}
