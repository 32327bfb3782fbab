//! `GET /metrics`: the status snapshot in the Prometheus text exposition
//! format (version 0.0.4): a `# HELP` and `# TYPE` line per family, then
//! one sample per endpoint labelled with what identifies it.

use crate::status::{EndpointStatus, Snapshot};
use std::fmt::Write;

mod routes;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label values escape `\`, `"` and newlines (the format's only rules).
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn labels(e: &EndpointStatus) -> String {
    labels_of(&e.address, &e.namespace, e.kind, &e.consumer)
}

/// An endpoint's labels: what identifies it (the series of a draining
/// worker carry its endpoint's).
fn labels_of(address: &str, namespace: &str, kind: proto::types::Kind, consumer: &str) -> String {
    format!(
        r#"endpoint="{}",namespace="{}",kind="{}",consumer="{}""#,
        escape(address),
        escape(namespace),
        kind,
        escape(consumer)
    )
}

struct Family<'a> {
    name: &'a str,
    ty: &'a str,
    help: &'a str,
}

fn family<V: std::fmt::Display>(
    out: &mut String,
    f: Family<'_>,
    samples: impl Iterator<Item = (String, V)>,
) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.ty);
    for (labels, v) in samples {
        let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
    }
}

/// Milliseconds as the format's seconds.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn plain(out: &mut String, name: &str, ty: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {ty}");
    let _ = writeln!(out, "{name} {v}");
}

/// Held connections (`--hold-timeout`), per endpoint.
fn hold(out: &mut String, eps: &[EndpointStatus]) {
    let per = |f: fn(&EndpointStatus) -> u64| eps.iter().map(move |e| (labels(e), f(e)));
    family(
        out,
        Family {
            name: "pvx_connections_held",
            ty: "gauge",
            help: "Connections held now, waiting for a backend that cannot be reached (restarting provider).",
        },
        per(|e| e.worker.hold.held),
    );
    family(
        out,
        Family {
            name: "pvx_held_total",
            ty: "counter",
            help: "Connections held because their backend could not be reached.",
        },
        per(|e| e.worker.hold.total),
    );
    family(
        out,
        Family {
            name: "pvx_held_failed_total",
            ty: "counter",
            help: "Held connections whose backend stayed away for --hold-timeout (refused, or 502/504).",
        },
        per(|e| e.worker.hold.failed),
    );
    family(
        out,
        Family {
            name: "pvx_held_over_limit_total",
            ty: "counter",
            help: "Connections not held because --max-held were held already (the error at once).",
        },
        per(|e| e.worker.hold.over_limit),
    );
    let secs = |f: fn(&EndpointStatus) -> u64| eps.iter().map(move |e| (labels(e), seconds(f(e))));
    family(
        out,
        Family {
            name: "pvx_held_wait_seconds_total",
            ty: "counter",
            help: "Time held connections waited for their backend, summed.",
        },
        secs(|e| e.worker.hold.wait_ms_total),
    );
    family(
        out,
        Family {
            name: "pvx_held_wait_seconds_max",
            ty: "gauge",
            help: "The longest a held connection waited for its backend.",
        },
        secs(|e| e.worker.hold.wait_ms_max),
    );
}

/// One backend's value in a family, as the sample shows it.
type BackendValue = fn(&crate::status::BackendStatus) -> String;

/// Health checks (`--health-interval`): one sample per endpoint and backend.
fn health(out: &mut String, eps: &[EndpointStatus]) {
    let rows = || {
        eps.iter().flat_map(|e| {
            let l = labels(e);
            e.backends
                .iter()
                .map(move |b| (format!("{l},backend=\"{}\"", escape(&b.backend)), b))
        })
    };
    let families: [(&str, &str, &str, BackendValue); 4] = [
        (
            "pvx_backend_up",
            "gauge",
            "1 while health checks find the backend up, 0 once marked down (--health-fall failures in a row).",
            |b| u64::from(b.state == "up").to_string(),
        ),
        (
            "pvx_backend_checks_total",
            "counter",
            "Health checks (connects) made to the backend by the endpoint's current worker.",
            |b| b.checks.to_string(),
        ),
        (
            "pvx_backend_failures_total",
            "counter",
            "Failed health checks and failed real connections to the backend (current worker).",
            |b| b.failures.to_string(),
        ),
        (
            "pvx_backend_last_check_timestamp_seconds",
            "gauge",
            "When the backend's last health check ended (Unix time).",
            |b| seconds(b.last_check_unix_ms),
        ),
    ];
    for (name, ty, help, value) in families {
        family(
            out,
            Family { name, ty, help },
            rows().map(|(l, b)| (l, value(b))),
        );
    }
}

pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(1024 + 600 * s.endpoints.len());
    let eps = &s.endpoints;
    let per = |f: fn(&EndpointStatus) -> u64| eps.iter().map(move |e| (labels(e), f(e)));
    family(
        &mut out,
        Family {
            name: "pvx_connections_active",
            ty: "gauge",
            help: "Connections open through the endpoint's worker.",
        },
        per(|e| e.worker.active),
    );
    family(
        &mut out,
        Family {
            name: "pvx_connections_total",
            ty: "counter",
            help: "Connections accepted on the endpoint, over all its workers.",
        },
        per(|e| e.worker.total),
    );
    let _ = writeln!(
        out,
        "# HELP pvx_bytes_total Bytes relayed: in = client to backend, out = backend to client."
    );
    let _ = writeln!(out, "# TYPE pvx_bytes_total counter");
    for e in eps {
        let l = labels(e);
        let _ = writeln!(
            out,
            "pvx_bytes_total{{{l},direction=\"in\"}} {}",
            e.worker.bytes_in
        );
        let _ = writeln!(
            out,
            "pvx_bytes_total{{{l},direction=\"out\"}} {}",
            e.worker.bytes_out
        );
    }
    family(
        &mut out,
        Family {
            name: "pvx_errors_total",
            ty: "counter",
            help: "Connections that ended in an error (backend unreachable, timeout, bad request).",
        },
        per(|e| e.worker.errors),
    );
    family(
        &mut out,
        Family {
            name: "pvx_worker_restarts_total",
            ty: "counter",
            help: "Worker processes of the endpoint that died and were (or will be) replaced.",
        },
        per(|e| e.worker.restarts),
    );
    family(
        &mut out,
        Family {
            name: "pvx_endpoint_retries_total",
            ty: "counter",
            help: "Attempts to make the endpoint's listener again after it failed (port busy, namespace or address missing).",
        },
        per(|e| e.retries),
    );
    family(
        &mut out,
        Family {
            name: "pvx_update_resends_total",
            ty: "counter",
            help: "Updates sent again because the endpoint's worker had not acknowledged them.",
        },
        per(|e| e.worker.update_resends),
    );
    family(
        &mut out,
        Family {
            name: "pvx_worker_up",
            ty: "gauge",
            help: "1 when a worker process serves the endpoint, 0 while backing off or failed.",
        },
        per(|e| u64::from(e.worker.pid.is_some())),
    );
    family(
        &mut out,
        Family {
            name: "pvx_worker_uptime_seconds",
            ty: "gauge",
            help: "Seconds since the endpoint's current worker started.",
        },
        eps.iter()
            .filter_map(|e| Some((labels(e), e.worker.uptime_s?))),
    );
    family(
        &mut out,
        Family {
            name: "pvx_log_lines_dropped_total",
            ty: "counter",
            help: "Log lines syslog did not take (its socket full or gone): the supervisor's own (process=\"supervisor\") and each endpoint's workers'.",
        },
        std::iter::once((
            r#"process="supervisor""#.to_string(),
            s.supervisor.log_dropped,
        ))
        .chain(per(|e| e.worker.log_dropped)),
    );
    hold(&mut out, eps);
    health(&mut out, eps);
    routes::render(&mut out, eps, &s.draining);
    plain(
        &mut out,
        "pvx_endpoints",
        "gauge",
        "Endpoints of the applied graph.",
        eps.len() as u64,
    );
    plain(
        &mut out,
        "pvx_pending_endpoints",
        "gauge",
        "Endpoints of the graph whose listener could not be made yet (tried again on the backoff).",
        eps.iter().filter(|e| e.pending.is_some()).count() as u64,
    );
    plain(
        &mut out,
        "pvx_draining_workers",
        "gauge",
        "Workers of removed endpoints still finishing their connections.",
        s.draining.len() as u64,
    );
    plain(
        &mut out,
        "pvx_refused_links",
        "gauge",
        "Links of the applied graph that were refused.",
        s.refused.len() as u64,
    );
    plain(
        &mut out,
        "pvx_supervisor_uptime_seconds",
        "gauge",
        "Seconds since pv-xconnect started.",
        s.supervisor.uptime_s,
    );
    out
}

#[cfg(test)]
mod tests;
