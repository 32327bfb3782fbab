//! Per-route series (`--access-log` aside, what happened to the requests
//! and connections of each route): one sample per endpoint, link and
//! label value, from the counters the workers report
//! (`proto::ctl::RouteStats`). The `link` label is the route's first
//! link's name, from the graph: no label comes from a client.

use super::{escape, labels};
use crate::status::EndpointStatus;
use proto::ctl::{End, RouteStats, DURATION_BUCKETS_MS};
use proto::types::Kind;
use std::fmt::Write;

/// Every route of every endpoint, with its labels.
fn rows<'a>(
    eps: impl Iterator<Item = &'a EndpointStatus>,
) -> impl Iterator<Item = (String, &'a RouteStats)> {
    eps.flat_map(|e| {
        let l = labels(e);
        e.route_counters
            .iter()
            .map(move |r| (format!("{l},link=\"{}\"", escape(&r.link)), r))
    })
}

fn head(out: &mut String, name: &str, ty: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {ty}");
}

pub(super) fn render(out: &mut String, eps: &[EndpointStatus]) {
    head(
        out,
        "pvx_route_responses_total",
        "counter",
        "http responses sent to clients, by status class (ours too: 404 without a route, 502, 504).",
    );
    for (l, r) in rows(
        eps.iter()
            .filter(|e| matches!(e.kind, Kind::Http | Kind::Rest)),
    ) {
        for (i, n) in r.status.iter().enumerate() {
            let _ = writeln!(
                out,
                "pvx_route_responses_total{{{l},class=\"{}xx\"}} {n}",
                i + 1
            );
        }
    }
    head(
        out,
        "pvx_route_ends_total",
        "counter",
        "Requests (http) or connections (tcp, unix) of the route, by how they ended.",
    );
    for (l, r) in rows(eps.iter()) {
        for (end, n) in End::ALL.iter().zip(r.ends) {
            let _ = writeln!(
                out,
                "pvx_route_ends_total{{{l},end=\"{}\"}} {n}",
                end.as_str()
            );
        }
    }
    head(
        out,
        "pvx_route_bytes_total",
        "counter",
        "Bytes of the route's requests or connections: in = client to backend, out = backend to client.",
    );
    for (l, r) in rows(eps.iter()) {
        let _ = writeln!(
            out,
            "pvx_route_bytes_total{{{l},direction=\"in\"}} {}",
            r.bytes_in
        );
        let _ = writeln!(
            out,
            "pvx_route_bytes_total{{{l},direction=\"out\"}} {}",
            r.bytes_out
        );
    }
    head(
        out,
        "pvx_route_duration_seconds",
        "histogram",
        "How long the route's requests (http: from the head's first byte to the response's end) or connections (tcp, unix) took.",
    );
    for (l, r) in rows(eps.iter()) {
        let mut below = 0u64;
        for (bound, n) in DURATION_BUCKETS_MS.iter().zip(r.duration) {
            below += n;
            let _ = writeln!(
                out,
                "pvx_route_duration_seconds_bucket{{{l},le=\"{}\"}} {below}",
                super::seconds(*bound)
            );
        }
        let _ = writeln!(
            out,
            "pvx_route_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            r.total()
        );
        let _ = writeln!(
            out,
            "pvx_route_duration_seconds_sum{{{l}}} {}",
            super::seconds(r.duration_ms)
        );
        let _ = writeln!(out, "pvx_route_duration_seconds_count{{{l}}} {}", r.total());
    }
}
