//! What `GET /status` reports (BEHAVIOUR §6): a snapshot of the supervisor's own
//! bookkeeping, built on request from what it already holds. Counters are
//! the ones workers pushed over their control sockets (at most every
//! 500 ms); building a snapshot never talks to a worker, so a slow or
//! wedged worker cannot stall a status request or the loop.
//!
//! The same snapshot feeds `/metrics` (metrics.rs) and the table of
//! `pv-xconnect status` (status_cli.rs reads the JSON back, loosely).

use crate::endpoint::{same_config, Draining, Running, State};
use crate::pending::PendingEndpoint;
use proto::graph::Refusal;
use proto::plan::{EndpointKey, Route};
use proto::types::{Backend, Kind, Listen};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub supervisor: SupervisorInfo,
    pub endpoints: Vec<EndpointStatus>,
    /// Workers of removed endpoints still finishing their connections.
    pub draining: Vec<DrainingStatus>,
    /// Every link of the last applied graph that was not made real.
    pub refused: Vec<Refusal>,
}

#[derive(Debug, Serialize)]
pub struct SupervisorInfo {
    pub pid: u32,
    pub version: &'static str,
    pub uptime_s: u64,
    /// The supervisor's own log lines syslog did not take.
    pub log_dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub kind: Kind,
    /// `IP:PORT`, or the socket path for unix/rest endpoints.
    pub address: String,
    /// `host`, or `pid:<consumer_pid>` (the namespace of that process).
    pub namespace: String,
    pub consumer: String,
    /// The routes the current worker acknowledged: what it serves now
    /// (none while no worker has acked its init).
    pub routes: Vec<RouteStatus>,
    /// The graph's routes for this endpoint when the worker has not
    /// acknowledged them (yet): starting, backing off, or an update on
    /// its way or refused. Absent when the worker serves the graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_routes: Option<Vec<RouteStatus>>,
    /// Present while the endpoint could not be made (its listener or the
    /// namespace entry failed): why, and when it is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingStatus>,
    /// Attempts to make it again after a failure, over its life.
    pub retries: u64,
    pub worker: WorkerStatus,
    /// Health checks of its backends (`--health-interval`), as its worker
    /// last reported them. Absent while checks are off.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendStatus>,
    /// Per-route counters over all its workers (README, "Metrics"), by
    /// link name; a route that has seen nothing yet is absent.
    pub route_counters: Vec<proto::ctl::RouteStats>,
}

/// One backend's health as the worker checks it.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub backend: String,
    /// `up` or `down`.
    pub state: &'static str,
    pub checks: u64,
    /// Failed checks and failed real connections.
    pub failures: u64,
    pub fails_in_row: u32,
    /// Milliseconds since the last check ended (None: none yet).
    pub last_check_ms_ago: Option<u64>,
    /// When it ended, in milliseconds since the Unix epoch (0: none yet).
    pub last_check_unix_ms: u64,
    pub last_error: Option<String>,
}

fn backends(r: &Running) -> Vec<BackendStatus> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    r.health
        .iter()
        .map(|h| BackendStatus {
            backend: h.backend.clone(),
            state: if h.up { "up" } else { "down" },
            checks: h.checks,
            failures: h.failures,
            fails_in_row: h.fails_in_row,
            last_check_ms_ago: (h.last_check_ms > 0).then(|| now.saturating_sub(h.last_check_ms)),
            last_check_unix_ms: h.last_check_ms,
            last_error: h.last_error.clone(),
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct PendingStatus {
    pub reason: String,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// Milliseconds until the next try; null when given up for good
    /// (`--backoff-policy never`) until the graph is applied again.
    pub next_try_ms: Option<u64>,
    /// `--max-retries` were spent (`next_try_ms` then starts a fresh count).
    pub given_up: bool,
}

#[derive(Debug, Serialize)]
pub struct RouteStatus {
    /// The link's index in the graph array.
    pub link: usize,
    pub name: String,
    pub provider: String,
    pub role: String,
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// The link's `balance` policy, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    /// With `balance`: the route's pool, every replica (this link first)
    /// with its backend.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica of a route's pool.
#[derive(Debug, Serialize)]
pub struct ReplicaStatus {
    pub link: usize,
    pub name: String,
    pub provider: String,
    pub backend: String,
}

fn backend_text(b: &Backend) -> String {
    match b {
        Backend::Tcp(a) => a.to_string(),
        Backend::Unix(p) => format!("unix:{}", p.display()),
    }
}

#[derive(Debug, Serialize)]
pub struct WorkerStatus {
    pub binary: &'static str,
    /// None while no worker process exists (backing off, failed).
    pub pid: Option<i32>,
    /// `starting` (init not yet acknowledged), `running`, `backoff`,
    /// `failed` (given up: `restart_in_ms` says when the backoff policy
    /// starts over, if ever), or `pending` (no listener yet; see the
    /// endpoint's `pending`).
    pub state: &'static str,
    /// Workers that died over the endpoint's life.
    pub restarts: u64,
    /// Consecutive failures (the backoff exponent).
    pub failures: u32,
    pub uptime_s: Option<u64>,
    /// Counters over the endpoint's life (all its workers).
    pub active: u64,
    pub total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
    /// Updates sent again because the worker had not acknowledged them.
    pub update_resends: u64,
    /// Log lines the endpoint's workers could not hand to syslog.
    pub log_dropped: u64,
    /// Connections held while their backend could not be reached.
    pub hold: HoldStatus,
    /// When backing off: the delay chosen, and what is left of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_in_ms: Option<u64>,
    pub last_exit: Option<String>,
}

/// Held connections (`--hold-timeout`): now, and over the endpoint's life.
#[derive(Debug, Serialize, Default)]
pub struct HoldStatus {
    /// Held now, waiting for their backend.
    pub held: u64,
    /// Ever held.
    pub total: u64,
    /// Held, then reached their backend.
    pub connected: u64,
    /// Held until the hold timeout, then given the error.
    pub failed: u64,
    /// Not held because `--max-held` were held already.
    pub over_limit: u64,
    /// Milliseconds waited by held connections, summed; and the longest.
    pub wait_ms_total: u64,
    pub wait_ms_max: u64,
}

impl HoldStatus {
    fn of(s: &proto::ctl::Stats) -> HoldStatus {
        HoldStatus {
            held: s.held,
            total: s.held_total,
            connected: s.held_connected,
            failed: s.held_failed,
            over_limit: s.held_over_limit,
            wait_ms_total: s.held_wait_ms,
            wait_ms_max: s.held_wait_max_ms,
        }
    }
}

/// A worker whose endpoint was removed or replaced, finishing its
/// connections; `/metrics` shows its per-route counters under its
/// endpoint's labels until it exits (summed with the endpoint's own when
/// the graph has the same one again).
#[derive(Debug, Serialize)]
pub struct DrainingStatus {
    pub address: String,
    pub namespace: String,
    pub kind: Kind,
    pub consumer: String,
    pub pid: i32,
    /// Its endpoint's per-route counters, as in `EndpointStatus`, with
    /// what it counted while draining.
    pub route_counters: Vec<proto::ctl::RouteStats>,
}

pub fn address(l: &Listen) -> String {
    match l {
        Listen::Tcp(a) => a.to_string(),
        Listen::Unix(p) => p.display().to_string(),
    }
}

pub fn namespace(key: &EndpointKey) -> String {
    match key.consumer_pid {
        0 => "host".to_string(),
        pid => format!("pid:{pid}"),
    }
}

/// A route as status (and `check --json`) shows it.
pub fn route(kind: Kind, r: &Route) -> RouteStatus {
    let http = matches!(kind, Kind::Http);
    let v = &r.via;
    RouteStatus {
        link: r.link,
        name: v.name.clone(),
        provider: v.provider.clone(),
        role: v.role.clone(),
        backend: backend_text(&v.backend),
        prefix: http.then(|| v.prefix.clone()),
        strip_prefix: http.then_some(v.strip_prefix),
        host: v.host.clone(),
        sni: v.sni.clone(),
        proxy_protocol: v
            .proxy_protocol
            .map(|p| format!("{p:?}").to_ascii_lowercase()),
        balance: v.balance.map(|p| p.as_str().to_string()),
        replicas: match v.balance {
            None => Vec::new(),
            Some(_) => std::iter::once(ReplicaStatus {
                link: r.link,
                name: v.name.clone(),
                provider: v.provider.clone(),
                backend: backend_text(&v.backend),
            })
            .chain(r.replicas.iter().map(|x| ReplicaStatus {
                link: x.link,
                name: x.name.clone(),
                provider: x.provider.clone(),
                backend: backend_text(&x.backend),
            }))
            .collect(),
        },
    }
}

fn worker(r: &Running, now: Instant) -> WorkerStatus {
    let w = r.worker.as_ref();
    let (state, backoff_delay_ms, restart_in_ms) = match r.state {
        State::Backoff { until, delay } => (
            "backoff",
            Some(delay.as_millis() as u64),
            Some(until.saturating_duration_since(now).as_millis() as u64),
        ),
        State::Failed { retry_at } => (
            "failed",
            None,
            retry_at.map(|t| t.saturating_duration_since(now).as_millis() as u64),
        ),
        State::Running if w.is_some_and(|w| w.pending.iter().any(|p| p.what == "init")) => {
            ("starting", None, None)
        }
        State::Running => ("running", None, None),
    };
    WorkerStatus {
        binary: r.ep.kind.worker_binary(),
        pid: w.map(|w| w.pid.as_raw()),
        state,
        restarts: r.restarts,
        failures: r.failures,
        uptime_s: w.map(|w| now.saturating_duration_since(w.started).as_secs()),
        active: r.stats.active,
        total: r.stats.total,
        bytes_in: r.stats.bytes_in,
        bytes_out: r.stats.bytes_out,
        errors: r.stats.errors,
        update_resends: r.resends,
        log_dropped: r.stats.log_dropped,
        hold: HoldStatus::of(&r.stats),
        backoff_delay_ms,
        restart_in_ms,
        last_exit: r.last_exit.clone(),
    }
}

/// An endpoint whose listener could not be made: nothing served, the
/// graph's routes pending, no worker.
fn pending(key: &EndpointKey, p: &PendingEndpoint, now: Instant) -> EndpointStatus {
    let next_try_ms = p
        .next_try
        .map(|t| t.saturating_duration_since(now).as_millis() as u64);
    EndpointStatus {
        kind: p.ep.kind,
        address: address(&key.listen),
        namespace: namespace(key),
        consumer: p.ep.consumer.clone(),
        routes: Vec::new(),
        pending_routes: Some(p.ep.routes.iter().map(|x| route(p.ep.kind, x)).collect()),
        pending: Some(PendingStatus {
            reason: p.reason.clone(),
            attempts: p.failures,
            next_try_ms,
            given_up: p.given_up,
        }),
        retries: p.retries,
        backends: Vec::new(),
        route_counters: Vec::new(),
        worker: WorkerStatus {
            binary: p.ep.kind.worker_binary(),
            pid: None,
            state: if p.given_up { "failed" } else { "pending" },
            restarts: 0,
            failures: p.failures,
            uptime_s: None,
            active: 0,
            total: 0,
            bytes_in: 0,
            bytes_out: 0,
            errors: 0,
            update_resends: 0,
            log_dropped: 0,
            hold: HoldStatus::default(),
            backoff_delay_ms: None,
            restart_in_ms: next_try_ms,
            last_exit: None,
        },
    }
}

impl Snapshot {
    pub fn build(
        started: Instant,
        endpoints: &BTreeMap<EndpointKey, Running>,
        pending_eps: &BTreeMap<EndpointKey, PendingEndpoint>,
        draining: &[Draining],
        refused: &[Refusal],
    ) -> Snapshot {
        let now = Instant::now();
        let mut all: Vec<(&EndpointKey, EndpointStatus)> = endpoints
            .iter()
            .map(|(key, r)| {
                let st = EndpointStatus {
                    kind: r.ep.kind,
                    address: address(&key.listen),
                    namespace: namespace(key),
                    consumer: r.ep.consumer.clone(),
                    routes: r.applied.as_ref().map_or_else(Vec::new, |a| {
                        a.routes.iter().map(|x| route(a.kind, x)).collect()
                    }),
                    pending_routes: (!r.applied.as_ref().is_some_and(|a| same_config(a, &r.ep)))
                        .then(|| r.ep.routes.iter().map(|x| route(r.ep.kind, x)).collect()),
                    pending: None,
                    retries: r.retries,
                    worker: worker(r, now),
                    backends: backends(r),
                    route_counters: r.route_counts.totals(),
                };
                (key, st)
            })
            .chain(pending_eps.iter().map(|(k, p)| (k, pending(k, p, now))))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        Snapshot {
            supervisor: SupervisorInfo {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION"),
                uptime_s: now.saturating_duration_since(started).as_secs(),
                log_dropped: proto::log::dropped(),
            },
            endpoints: all.into_iter().map(|(_, e)| e).collect(),
            draining: draining
                .iter()
                .map(|d| DrainingStatus {
                    address: address(&d.key.listen),
                    namespace: namespace(&d.key),
                    kind: d.kind,
                    consumer: d.consumer.clone(),
                    pid: d.worker.pid.as_raw(),
                    route_counters: d.route_counts.totals(),
                })
                .collect(),
            refused: refused.to_vec(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail;
        // an empty object is still valid JSON if it somehow did.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_else(|_| b"{}".to_vec());
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests;
