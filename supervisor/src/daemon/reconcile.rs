//! Converging without help (SPEC §4): endpoints that could not be made
//! are tried again on the backoff (`pending.rs` keeps their record).

use super::Daemon;
use crate::pending::PendingEndpoint;
use crate::policy::jitter;
use proto::plan::Endpoint;
use std::time::Instant;

impl Daemon {
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
