//! The loop's control messages (Init refused once running, Update, Drain)
//! and what they change: one meaning of update and drain for every kind
//! (see `event_loop.rs`).

use super::{Handler, Loop, KEY_DRAIN};
use crate::prober;
use proto::ctl::{CtlError, ToWorker, WorkerConfig};
use proto::plan::Endpoint;
use std::time::{Duration, Instant};

/// Why `new` is not an update of the running endpoint `old`, if it is
/// not: the supervisor starts a new worker for another kind, listen
/// address or consumer, so such a config is never applied in place. (The
/// key's `consumer_pid` may change: a consumer restarted in the network
/// namespace the listener is in keeps socket and worker.)
fn other_endpoint(old: &Endpoint, new: &Endpoint) -> Option<String> {
    if new.kind != old.kind {
        return Some(format!(
            "an update cannot change the endpoint's kind ({} to {})",
            old.kind, new.kind
        ));
    }
    if new.key.listen != old.key.listen {
        return Some(format!(
            "an update cannot change the listen address ({} to {})",
            old.key.listen, new.key.listen
        ));
    }
    if new.consumer != old.consumer {
        return Some(format!(
            "an update cannot change the consumer ({} to {})",
            proto::text::escape(&old.consumer),
            proto::text::escape(&new.consumer)
        ));
    }
    None
}

impl<H: Handler> Loop<H> {
    /// Handle control messages. Some(status): exit with it.
    pub(super) fn control(&mut self, now: Instant) -> Option<i32> {
        loop {
            match self.ctl.recv() {
                Ok(None) => return None,
                Err(CtlError::Eof) => {
                    proto::info!("supervisor gone (control socket closed); exiting");
                    return Some(0);
                }
                Err(e) => {
                    proto::error!("control socket: {e}; exiting");
                    return Some(1);
                }
                Ok(Some((ToWorker::Update { seq, config }, roots))) => {
                    let err = self.update(now, config, roots);
                    if let Some(why) = &err {
                        proto::warn!("update refused: {why}; keeping the running config");
                    }
                    self.ctl.ack(seq, err);
                }
                Ok(Some((ToWorker::Drain { seq, deadline_ms }, _))) => {
                    self.drain(now, Duration::from_millis(deadline_ms));
                    self.ctl.ack(seq, None);
                }
                Ok(Some((ToWorker::Init { seq, .. }, _))) => {
                    self.ctl.ack(seq, Some("already initialised".into()))
                }
            }
        }
    }

    /// Apply an update, or say why not (then nothing changed).
    fn update(
        &mut self,
        now: Instant,
        mut config: WorkerConfig,
        roots: Vec<std::os::fd::OwnedFd>,
    ) -> Option<String> {
        crate::hold::fit(&mut config);
        if let Some(why) = other_endpoint(&self.config.endpoint, &config.endpoint) {
            return Some(why);
        }
        if let Err(why) = self.handler.update(&mut cx!(self, now), &config) {
            return Some(why);
        }
        self.reach.roots.set(&config.endpoint.root_pids(), roots);
        self.stock.pipes.resize(config.limits.pipe_size);
        proto::info!(
            "routes updated: {} route(s); open connections keep theirs",
            config.endpoint.routes.len()
        );
        if let Some(h) = self.checker.as_mut() {
            let backends = prober::backends_of(&config.endpoint.routes);
            h.set_backends(&backends, &config.limits, now, &mut self.reach.health);
        }
        self.config = config;
        // Held connections go to their route's backend now.
        self.handler.wake(&mut cx!(self, now));
        None
    }

    /// Accept what is queued, close the listener, let connections finish;
    /// `run` exits when none is left or at the deadline. A later drain only
    /// brings the deadline forward.
    pub(super) fn drain(&mut self, now: Instant, within: Duration) {
        let until = now + within;
        if let Some(was) = self.drain_until {
            if until < was {
                self.drain_until = Some(until);
                self.timers.add(until, KEY_DRAIN);
            }
            return;
        }
        self.drain_until = Some(until);
        self.timers.add(until, KEY_DRAIN);
        self.accept(now, true);
        proto::info!(
            "draining {} connection(s), deadline {} ms",
            self.handler.active(),
            within.as_millis()
        );
        self.handler.drain(&mut cx!(self, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::plan::EndpointKey;
    use proto::types::{Kind, Listen};

    #[test]
    fn an_update_is_for_the_same_endpoint_only() {
        let old = Endpoint {
            key: EndpointKey {
                consumer_pid: 7,
                listen: Listen::Tcp("127.0.0.1:80".parse().unwrap()),
            },
            kind: Kind::Http,
            consumer: "app".into(),
            routes: Vec::new(),
        };
        let mut same = old.clone();
        same.key.consumer_pid = 8;
        assert_eq!(other_endpoint(&old, &same), None, "consumer restarted");
        let mut e = old.clone();
        e.kind = Kind::Rest;
        assert!(other_endpoint(&old, &e).is_some_and(|w| w.contains("kind (http to rest)")));
        let mut e = old.clone();
        e.key.listen = Listen::Tcp("127.0.0.1:81".parse().unwrap());
        assert!(other_endpoint(&old, &e).is_some_and(|w| w.contains("listen address")));
        let mut e = old.clone();
        e.consumer = "other\n".into();
        assert!(other_endpoint(&old, &e).is_some_and(|w| w.contains("consumer (app to other\\n)")));
    }
}
