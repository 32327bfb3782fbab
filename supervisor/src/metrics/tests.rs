use super::*;
use crate::status::{SupervisorInfo, WorkerStatus};
use proto::types::Kind;

fn ep(address: &str, consumer: &str, pid: Option<i32>) -> EndpointStatus {
    EndpointStatus {
        kind: Kind::Tcp,
        address: address.into(),
        namespace: "host".into(),
        consumer: consumer.into(),
        routes: vec![],
        pending_routes: None,
        pending: None,
        retries: 4,
        route_counters: Vec::new(),
        backends: vec![crate::status::BackendStatus {
            backend: "127.0.0.1:9".into(),
            state: "down",
            checks: 5,
            failures: 3,
            fails_in_row: 2,
            last_check_ms_ago: Some(10),
            last_check_unix_ms: 1_700_000_000_123,
            last_error: None,
        }],
        worker: WorkerStatus {
            binary: "pvx-worker-tcp",
            pid,
            state: "running",
            restarts: 2,
            failures: 0,
            uptime_s: pid.map(|_| 9),
            active: 1,
            total: 7,
            bytes_in: 100,
            bytes_out: 200,
            errors: 3,
            update_resends: 1,
            log_dropped: 6,
            hold: crate::status::HoldStatus {
                held: 1,
                wait_ms_max: 3042,
                ..Default::default()
            },
            backoff_delay_ms: None,
            restart_in_ms: None,
            last_exit: None,
        },
    }
}

#[test]
fn exposition_format() {
    let s = Snapshot {
        supervisor: SupervisorInfo {
            pid: 1,
            version: "0",
            uptime_s: 5,
            log_dropped: 8,
        },
        endpoints: vec![
            ep("127.0.0.1:8080", "EXTERNAL", Some(10)),
            ep("/run/a \"b\".sock", "we\\ird", None),
        ],
        draining: vec![],
        refused: vec![],
    };
    let m = render(&s);
    let l = r#"endpoint="127.0.0.1:8080",namespace="host",kind="tcp",consumer="EXTERNAL""#;
    for want in [
        "# TYPE pvx_connections_active gauge".to_string(),
        "# TYPE pvx_connections_total counter".to_string(),
        format!("pvx_connections_total{{{l}}} 7"),
        format!("pvx_bytes_total{{{l},direction=\"in\"}} 100"),
        format!("pvx_bytes_total{{{l},direction=\"out\"}} 200"),
        format!("pvx_errors_total{{{l}}} 3"),
        format!("pvx_log_lines_dropped_total{{{l}}} 6"),
        r#"pvx_log_lines_dropped_total{process="supervisor"} 8"#.to_string(),
        format!("pvx_worker_restarts_total{{{l}}} 2"),
        format!("pvx_worker_up{{{l}}} 1"),
        "pvx_refused_links 0".to_string(),
        "pvx_pending_endpoints 0".to_string(),
        format!("pvx_endpoint_retries_total{{{l}}} 4"),
        format!("pvx_update_resends_total{{{l}}} 1"),
        format!("pvx_connections_held{{{l}}} 1"),
        format!("pvx_backend_up{{{l},backend=\"127.0.0.1:9\"}} 0"),
        format!("pvx_backend_checks_total{{{l},backend=\"127.0.0.1:9\"}} 5"),
        format!("pvx_backend_failures_total{{{l},backend=\"127.0.0.1:9\"}} 3"),
        format!("pvx_backend_last_check_timestamp_seconds{{{l},backend=\"127.0.0.1:9\"}} 1700000000.123"),
        format!("pvx_held_wait_seconds_max{{{l}}} 3.042"),
        r#"pvx_worker_up{endpoint="/run/a \"b\".sock",namespace="host",kind="tcp",consumer="we\\ird"} 0"#.to_string(),
    ] {
        assert!(m.lines().any(|x| x == want), "missing {want}\n{m}");
    }
    families_are_declared(&m);
}

/// Every sample's family has HELP and TYPE lines (a histogram's samples
/// are its `_bucket`, `_sum` and `_count`).
fn families_are_declared(m: &str) {
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let sample = line.split(['{', ' ']).next().unwrap();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let f = sample.strip_suffix(s)?;
                m.contains(&format!("# TYPE {f} histogram")).then_some(f)
            })
            .unwrap_or(sample);
        assert!(m.contains(&format!("# HELP {name} ")), "{name}");
        assert!(m.contains(&format!("# TYPE {name} ")), "{name}");
    }
}

/// A snapshot of `endpoints` and `draining` workers, nothing else.
fn routes_only(
    endpoints: Vec<EndpointStatus>,
    draining: Vec<crate::status::DrainingStatus>,
) -> Snapshot {
    Snapshot {
        supervisor: SupervisorInfo {
            pid: 1,
            version: "0",
            uptime_s: 5,
            log_dropped: 0,
        },
        endpoints,
        draining,
        refused: vec![],
    }
}

#[test]
fn route_series_count_what_the_workers_reported() {
    use proto::ctl::{End, RouteStats};
    let mut e = ep("0.0.0.0:80", "EXTERNAL", Some(3));
    e.kind = Kind::Http;
    let mut api = RouteStats::new("api \"v1\"");
    api.count(Some(201), End::Complete, 3);
    api.count(Some(404), End::Refused, 0);
    api.count(Some(502), End::BackendFailed, 7000);
    api.count(None, End::ClientGone, 12);
    (api.bytes_in, api.bytes_out) = (300, 4000);
    e.route_counters = vec![api];
    let m = render(&routes_only(vec![e], vec![]));
    let l = r#"endpoint="0.0.0.0:80",namespace="host",kind="http",consumer="EXTERNAL",link="api \"v1\"""#;
    for want in [
        format!("pvx_route_responses_total{{{l},class=\"2xx\"}} 1"),
        format!("pvx_route_responses_total{{{l},class=\"4xx\"}} 1"),
        format!("pvx_route_responses_total{{{l},class=\"5xx\"}} 1"),
        format!("pvx_route_responses_total{{{l},class=\"1xx\"}} 0"),
        format!("pvx_route_ends_total{{{l},end=\"complete\"}} 1"),
        format!("pvx_route_ends_total{{{l},end=\"client_gone\"}} 1"),
        format!("pvx_route_ends_total{{{l},end=\"refused\"}} 1"),
        format!("pvx_route_ends_total{{{l},end=\"drained\"}} 0"),
        format!("pvx_route_bytes_total{{{l},direction=\"in\"}} 300"),
        format!("pvx_route_bytes_total{{{l},direction=\"out\"}} 4000"),
        format!("pvx_route_duration_seconds_bucket{{{l},le=\"0.005\"}} 2"),
        format!("pvx_route_duration_seconds_bucket{{{l},le=\"0.025\"}} 3"),
        format!("pvx_route_duration_seconds_bucket{{{l},le=\"5.000\"}} 3"),
        format!("pvx_route_duration_seconds_bucket{{{l},le=\"10.000\"}} 4"),
        format!("pvx_route_duration_seconds_bucket{{{l},le=\"+Inf\"}} 4"),
        format!("pvx_route_duration_seconds_sum{{{l}}} 7.015"),
        format!("pvx_route_duration_seconds_count{{{l}}} 4"),
    ] {
        assert!(m.lines().any(|x| x == want), "missing {want}\n{m}");
    }
    families_are_declared(&m);
}

/// A draining worker's route counters: summed into the endpoint of the
/// same labels (removed and added back while it drains), their own series
/// otherwise; never two samples of one label set.
#[test]
fn a_draining_workers_routes_are_one_series_with_the_endpoint_of_its_labels() {
    use crate::status::DrainingStatus;
    use proto::ctl::{End, RouteStats};
    let counted = |link: &str, n: u64| {
        let mut r = RouteStats::new(link);
        for _ in 0..n {
            r.count(None, End::Complete, 3);
        }
        r
    };
    let mut e = ep("127.0.0.1:80", "EXTERNAL", Some(3));
    e.route_counters = vec![counted("a", 2)];
    let drain = |address: &str, consumer: &str, n: u64| DrainingStatus {
        address: address.into(),
        namespace: "host".into(),
        kind: Kind::Tcp,
        consumer: consumer.into(),
        pid: 9,
        route_counters: vec![counted("a", n)],
    };
    let draining = vec![
        drain("127.0.0.1:80", "EXTERNAL", 5),
        drain("127.0.0.1:80", "other", 7),
        drain("127.0.0.1:81", "EXTERNAL", 11),
        drain("127.0.0.1:81", "EXTERNAL", 13),
    ];
    let m = render(&routes_only(vec![e], draining));
    let complete = |address: &str, consumer: &str| {
        let l = format!(
            r#"endpoint="{address}",namespace="host",kind="tcp",consumer="{consumer}",link="a",end="complete""#
        );
        let found: Vec<&str> = m
            .lines()
            .filter_map(|x| x.strip_prefix(&format!("pvx_route_ends_total{{{l}}} ")))
            .collect();
        assert_eq!(found.len(), 1, "one sample of {l}\n{m}");
        found[0].to_string()
    };
    assert_eq!(complete("127.0.0.1:80", "EXTERNAL"), "7");
    assert_eq!(complete("127.0.0.1:80", "other"), "7");
    assert_eq!(complete("127.0.0.1:81", "EXTERNAL"), "24");
    families_are_declared(&m);
}
