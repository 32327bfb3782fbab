//! Endpoints of the graph that could not be made yet: their listener (or
//! the namespace entry before it) failed. They stay in the desired state
//! with the reason and are tried again on the restart backoff
//! (`policy.rs`), so the supervisor converges by itself: a port still held
//! by a process that is exiting, a consumer whose namespace or address is
//! not there yet, a live socket of another service that may go away. Only
//! links the graph itself makes invalid (validation, plan refusals) are
//! refused for good.

use crate::policy::{Next, RestartPolicy};
use proto::plan::Endpoint;
use std::time::Instant;

pub struct PendingEndpoint {
    /// Timer key; the endpoint keeps it once made.
    pub id: u64,
    /// What the graph asks for.
    pub ep: Endpoint,
    /// Why the last attempt failed.
    pub reason: String,
    /// Consecutive failed attempts (the backoff exponent).
    pub failures: u32,
    /// Attempts after the first (metrics: `pvx_endpoint_retries_total`).
    pub retries: u64,
    /// When it is tried again; None: given up for good
    /// (`--backoff-policy never`) until the graph is applied again.
    pub next_try: Option<Instant>,
    /// `--max-retries` are spent: `next_try` (if any) starts a fresh count.
    pub given_up: bool,
}

impl PendingEndpoint {
    /// The record after a failed attempt to make `ep`; `prev` holds the
    /// earlier failures of the same endpoint, if any.
    pub fn failed(
        id: u64,
        ep: Endpoint,
        reason: String,
        prev: Option<&PendingEndpoint>,
        policy: &RestartPolicy,
        now: Instant,
        jitter: f64,
    ) -> PendingEndpoint {
        let failures = prev.map_or(0, |p| if p.given_up { 0 } else { p.failures }) + 1;
        let (next_try, given_up) = match policy.after_failure(failures, jitter) {
            Next::Retry(d) => (Some(now + d), false),
            Next::GiveUp { again_in } => (again_in.map(|d| now + d), true),
        };
        PendingEndpoint {
            id,
            ep,
            reason,
            failures,
            retries: prev.map_or(0, |p| p.retries + 1),
            next_try,
            given_up,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        self.next_try.is_some_and(|t| t <= now)
    }

    /// A log line for what comes next.
    pub fn plan(&self, now: Instant) -> String {
        match (self.next_try, self.given_up) {
            (Some(t), false) => format!(
                "try #{} in {} ms",
                self.failures + 1,
                t.saturating_duration_since(now).as_millis()
            ),
            (Some(t), true) => format!(
                "{} attempts failed; giving up, starting over in {} s (--backoff-policy)",
                self.failures,
                t.saturating_duration_since(now).as_secs()
            ),
            (None, _) => format!(
                "{} attempts failed; giving up until the graph is applied again (--backoff-policy never)",
                self.failures
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BackoffPolicy;
    use std::time::Duration;

    fn ep() -> Endpoint {
        proto::plan::from_graph(
            r#"[{"type":"tcp","name":"t","consumer":"E","target":"127.0.0.1:81","socket":"127.0.0.1:1"}]"#,
        )
        .unwrap()
        .endpoints
        .remove(0)
    }

    #[test]
    fn backs_off_gives_up_and_starts_over_as_the_policy_says() {
        let mut policy = RestartPolicy {
            max_retries: 2,
            backoff_policy: BackoffPolicy::Never,
            ..Default::default()
        };
        let now = Instant::now();
        let fail = |prev: Option<&PendingEndpoint>, p: &RestartPolicy| {
            PendingEndpoint::failed(7, ep(), "EADDRINUSE".into(), prev, p, now, 0.0)
        };
        let a = fail(None, &policy);
        assert_eq!((a.failures, a.retries, a.given_up), (1, 0, false));
        assert_eq!(a.next_try, Some(now + Duration::from_millis(20)));
        let b = fail(Some(&a), &policy);
        assert_eq!(b.next_try, Some(now + Duration::from_millis(40)));
        let c = fail(Some(&b), &policy);
        assert!(c.given_up && c.next_try.is_none() && !c.due(now + Duration::from_secs(3600)));
        assert_eq!(c.retries, 2);
        policy.backoff_policy = BackoffPolicy::After(Duration::from_secs(2));
        let c = fail(Some(&b), &policy);
        assert!(c.given_up);
        assert_eq!(c.next_try, Some(now + Duration::from_secs(2)));
        // The try after the wait starts a fresh count.
        let d = fail(Some(&c), &policy);
        assert_eq!((d.failures, d.retries, d.given_up), (1, 3, false));
    }
}
