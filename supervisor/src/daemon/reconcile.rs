//! The reconcile (BEHAVIOUR §4): the plan of a new graph against the running
//! endpoints, touching only what changed ([`Daemon::apply`] has the
//! flow). Endpoints that could not be made are tried again on the
//! backoff (`pending.rs` keeps their record).

use super::Daemon;
use crate::endpoint::{same_config, Draining, Running, State};
use crate::listener;
use crate::pending::PendingEndpoint;
use crate::policy::jitter;
use proto::graph::{Link, Refusal};
use proto::plan::{self, Endpoint, EndpointKey};
use proto::types::Listen;
use std::collections::BTreeMap;
use std::time::Instant;

impl Daemon {
    /// Reconcile the running endpoints with the graph, touching only what
    /// changed (BEHAVIOUR §4):
    ///
    /// - same endpoint, other routes or providers: Update to the live worker
    ///   (also when unchanged but the worker has not acked the last one);
    /// - endpoint gone: its worker drains, its listener closes;
    /// - new endpoint: listener made in the consumer's namespace, worker started;
    /// - same address, other kind or consumer: the worker is replaced on the
    ///   same listening socket;
    /// - new consumer pid: a new endpoint in the new namespace, unless the
    ///   new pid lives in the very network namespace the tcp listener is in
    ///   (a container sharing the host network), where it is the same socket;
    /// - a worker given up (`--max-retries`): restarted with a fresh count;
    /// - a pending endpoint: tried now; one no longer in the graph is dropped.
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
            r.route_counts.keep_only(&ep.routes);
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

    /// `retries`: attempts it took before (carried into its counters).
    pub(super) fn start(&mut self, ep: Endpoint, id: u64, retries: u64) -> Result<(), String> {
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
    pub(super) fn replace(&mut self, key: &EndpointKey, ep: Endpoint) {
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
            self.drain_worker(Draining::of(w, key, &mut old));
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
    pub(super) fn rekey_same_netns(&mut self, wanted: &BTreeMap<EndpointKey, Endpoint>) {
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

    /// Stop an endpoint: its worker drains, its listener closes now.
    pub(super) fn remove(&mut self, key: &EndpointKey, why: &str) {
        let Some(mut r) = self.endpoints.remove(key) else {
            return;
        };
        proto::info!("endpoint {key}: removing ({why})");
        let made_by = match key.listen {
            Listen::Unix(_) => crate::sockfile::listen_pid(&r.listener),
            Listen::Tcp(_) => None,
        };
        if let Some(w) = r.worker.take() {
            if let Some(p) = made_by {
                self.retired_unix.push((w.pid, p));
            }
            self.drain_worker(Draining::of(w, key, &mut r));
        }
        // Our copy of the listener goes now; the worker closes its own as
        // it starts draining. A unix socket file goes too, so new clients
        // are refused at once rather than queued for nobody.
        drop(r.listener);
        listener::remove_unix(key, r.ns_inode, made_by);
    }

    /// Make the endpoint (listener, then worker); on failure it is kept
    /// pending with its reason and tried again on the backoff. True when
    /// it was made.
    pub(super) fn try_make(&mut self, ep: Endpoint) -> bool {
        let key = ep.key.clone();
        let prev = self.pending.remove(&key);
        let id = prev.as_ref().map_or_else(
            || {
                self.next_id += 1;
                self.next_id - 1
            },
            |p| p.id,
        );
        let retries = prev.as_ref().map_or(0, |p| p.retries + 1);
        let Err(reason) = self.start(ep.clone(), id, retries) else {
            if prev.is_some() {
                proto::info!("endpoint {key}: made after {retries} retries");
            }
            return true;
        };
        let now = Instant::now();
        let p = PendingEndpoint::failed(
            id,
            ep,
            reason,
            prev.as_ref(),
            &self.opts.policy,
            now,
            jitter(),
        );
        // Logged when it starts failing, when the reason changes and when
        // it is given up; the tries in between go to debug (a device whose
        // address comes late must not fill its log).
        let msg = format!("endpoint {key}: {}; {}", p.reason, p.plan(now));
        if p.given_up {
            proto::error!("{msg}");
        } else if prev.is_some_and(|q| q.reason == p.reason && !q.given_up) {
            proto::debug!("{msg}");
        } else {
            proto::warn!("{msg}");
        }
        if let Some(t) = p.next_try {
            self.timers.add(t, id);
        }
        self.pending.insert(key, p);
        false
    }

    /// A timer of a pending endpoint (`k` = its id): try it if due. False
    /// when `k` is no pending endpoint's.
    pub(super) fn retry_pending(&mut self, k: u64, now: Instant) -> bool {
        let Some((key, p)) = self.pending.iter().find(|(_, p)| p.id == k) else {
            return false;
        };
        // Never two of one key: a running endpoint wins (see apply).
        if self.endpoints.contains_key(key) {
            let key = key.clone();
            self.pending.remove(&key);
        } else if p.due(now) {
            let ep = p.ep.clone();
            proto::debug!("endpoint {key}: trying again");
            self.try_make(ep);
        }
        true
    }
}
