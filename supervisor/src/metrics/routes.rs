//! Per-route series (`--access-log` aside, what happened to the requests
//! and connections of each route): one sample per endpoint, link and
//! label value, from the counters the workers report
//! (`proto::ctl::RouteStats`). The `link` label is the route's first
//! link's name, from the graph: no label comes from a client.

use super::{escape, labels, labels_of};
use crate::status::{DrainingStatus, EndpointStatus};
use proto::ctl::{End, RouteStats, DURATION_BUCKETS_MS};
use proto::types::Kind;

/// One route's series: its labels, its endpoint's kind, its counters.
type Row = (String, Kind, RouteStats);

/// Every route of every endpoint, with its labels; then those of the
/// draining workers, each added to the row of the same labels if there
/// is one (an endpoint removed and added back while its old worker
/// drains: one series, never two samples of the same labels).
fn rows(eps: &[EndpointStatus], draining: &[DrainingStatus]) -> Vec<Row> {
    let with_link = |l: &str, r: &RouteStats| format!("{l},link=\"{}\"", escape(&r.link));
    let mut rows: Vec<Row> = Vec::new();
    for e in eps {
        let l = labels(e);
        for r in &e.route_counters {
            rows.push((with_link(&l, r), e.kind, r.clone()));
        }
    }
    for d in draining {
        let l = labels_of(&d.address, &d.namespace, d.kind, &d.consumer);
        for r in &d.route_counters {
            let key = with_link(&l, r);
            match rows.iter_mut().find(|row| row.0 == key) {
                Some(row) => row.2 = row.2.then(r),
                None => rows.push((key, d.kind, r.clone())),
            }
        }
    }
    rows
}

fn head(out: &mut String, name: &str, ty: &str, help: &str) {
    for (what, text) in [("HELP", help), ("TYPE", ty)] {
        out.push_str("# ");
        out.push_str(what);
        out.push(' ');
        out.push_str(name);
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
}

/// One sample: `name{labels,extra} value` (`extra` may be empty). Not
/// generic and not inlined: every sample of these families is this call.
#[inline(never)]
fn sample(out: &mut String, name: &str, labels: &str, extra: &str, value: &str) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    if !extra.is_empty() {
        out.push(',');
        out.push_str(extra);
    }
    out.push_str("} ");
    out.push_str(value);
    out.push('\n');
}

pub(super) fn render(out: &mut String, eps: &[EndpointStatus], draining: &[DrainingStatus]) {
    let rows = rows(eps, draining);
    head(
        out,
        "pvx_route_responses_total",
        "counter",
        "http responses sent to clients, by status class (ours too: 502, 504, 408; a request no route took counts under none).",
    );
    let http = rows
        .iter()
        .filter(|(_, kind, _)| matches!(kind, Kind::Http | Kind::Rest));
    for (l, _, r) in http {
        for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(r.status) {
            let extra = format!("class=\"{class}\"");
            sample(out, "pvx_route_responses_total", l, &extra, &n.to_string());
        }
    }
    head(
        out,
        "pvx_route_ends_total",
        "counter",
        "Requests (http) or connections (tcp, unix) of the route, by how they ended.",
    );
    for (l, _, r) in &rows {
        for (end, n) in End::ALL.iter().zip(r.ends) {
            let extra = format!("end=\"{}\"", end.as_str());
            sample(out, "pvx_route_ends_total", l, &extra, &n.to_string());
        }
    }
    head(
        out,
        "pvx_route_bytes_total",
        "counter",
        "Bytes of the route's requests or connections: in = client to backend, out = backend to client.",
    );
    for (l, _, r) in &rows {
        for (dir, n) in [("in", r.bytes_in), ("out", r.bytes_out)] {
            let extra = format!("direction=\"{dir}\"");
            sample(out, "pvx_route_bytes_total", l, &extra, &n.to_string());
        }
    }
    let h = "pvx_route_duration_seconds";
    head(
        out,
        h,
        "histogram",
        "How long the route's requests (http: from the head's first byte to the response's end) or connections (tcp, unix) took.",
    );
    for (l, _, r) in &rows {
        let mut below = 0u64;
        let bounds = DURATION_BUCKETS_MS.iter().map(|&b| super::seconds(b));
        for (bound, n) in bounds.chain(["+Inf".to_string()]).zip(r.duration) {
            below = below.saturating_add(n);
            let extra = format!("le=\"{bound}\"");
            sample(
                out,
                "pvx_route_duration_seconds_bucket",
                l,
                &extra,
                &below.to_string(),
            );
        }
        let sum = super::seconds(r.duration_ms);
        sample(out, "pvx_route_duration_seconds_sum", l, "", &sum);
        let count = r.total().to_string();
        sample(out, "pvx_route_duration_seconds_count", l, "", &count);
    }
}
