//! The status snapshot: what `status --json` shows of running, pending
//! and draining endpoints.

use super::*;
use crate::endpoint::{Pending, WorkerProc};
use nix::unistd::Pid;
use proto::ctl::Stats;
use std::time::Duration;

fn init() -> Pending {
    Pending {
        seq: 1,
        what: "init",
        config: None,
    }
}

pub fn running(graph: &str) -> BTreeMap<EndpointKey, Running> {
    let plan = proto::plan::from_graph(graph).unwrap();
    plan.endpoints
        .into_iter()
        .enumerate()
        .map(|(i, ep)| {
            let (a, _b) = proto::ctl::socketpair().unwrap();
            let r = Running::new(i as u64 + 1, ep.clone(), a, None);
            (ep.key, r)
        })
        .collect()
}

#[test]
fn snapshot_reports_workers_backoff_and_refusals() {
    let mut eps = running(
        r#"[{"type":"tcp","name":"t","consumer":"EXTERNAL","target":"127.0.0.1:81","socket":"127.0.0.1:1","sni":"a.example"},
            {"type":"http","name":"h","consumer":"app","consumer_pid":42,"target":"0.0.0.0:80/api","socket":"/run/x.sock","provider_pid":7}]"#,
    );
    let now = Instant::now();
    let mut it = eps.values_mut();
    let tcp = it.next().unwrap();
    tcp.applied = Some(tcp.ep.clone());
    let (ctl, _peer) = proto::ctl::socketpair().unwrap();
    let mut w = WorkerProc::new(Pid::from_raw(1234), ctl, 16, now, init());
    w.pending.clear();
    tcp.worker = Some(w);
    tcp.set_stats(Stats {
        active: 2,
        total: 5,
        bytes_in: 10,
        bytes_out: 20,
        errors: 1,
        log_dropped: 4,
        held: 2,
        held_total: 9,
        held_wait_max_ms: 3100,
        ..Stats::default()
    });
    let http = it.next().unwrap();
    http.restarts = 3;
    http.last_exit = Some("killed by SIGKILL".into());
    http.state = State::Backoff {
        until: now + Duration::from_secs(5),
        delay: Duration::from_secs(8),
    };
    let refused = vec![Refusal {
        index: 2,
        name: "bad".into(),
        reason: "missing field 'socket'".into(),
    }];
    let s = Snapshot::build(now, &eps, &BTreeMap::new(), &[], &refused);
    let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
    let e = &v["endpoints"];
    assert_eq!(e[0]["kind"], "tcp");
    assert_eq!(e[0]["address"], "127.0.0.1:81");
    assert_eq!(e[0]["namespace"], "host");
    assert_eq!(e[0]["routes"][0]["sni"], "a.example");
    assert!(e[0]["routes"][0].get("prefix").is_none());
    assert_eq!(e[0]["worker"]["pid"], 1234);
    assert_eq!(e[0]["worker"]["state"], "running");
    assert_eq!(e[0]["worker"]["total"], 5);
    assert_eq!(e[0]["worker"]["bytes_out"], 20);
    assert_eq!(e[0]["worker"]["log_dropped"], 4);
    assert_eq!(e[0]["worker"]["hold"]["held"], 2);
    assert_eq!(e[0]["worker"]["hold"]["total"], 9);
    assert_eq!(e[0]["worker"]["hold"]["wait_ms_max"], 3100);
    assert!(v["supervisor"]["log_dropped"].is_u64());
    assert_eq!(e[1]["kind"], "http");
    assert_eq!(e[1]["namespace"], "pid:42");
    assert!(e[0].get("pending_routes").is_none(), "{}", e[0]);
    // Backing off: nothing served, the graph's routes pending.
    assert_eq!(e[1]["routes"], serde_json::json!([]));
    let pending = &e[1]["pending_routes"];
    assert_eq!(pending[0]["prefix"], "/api");
    assert_eq!(pending[0]["backend"], "unix:/proc/7/root/run/x.sock");
    assert_eq!(e[1]["worker"]["state"], "backoff");
    assert_eq!(e[1]["worker"]["pid"], serde_json::Value::Null);
    assert_eq!(e[1]["worker"]["backoff_delay_ms"], 8000);
    assert!(e[1]["worker"]["restart_in_ms"].as_u64().unwrap() <= 5000);
    assert_eq!(e[1]["worker"]["last_exit"], "killed by SIGKILL");
    assert_eq!(v["refused"][0]["index"], 2);
    assert_eq!(v["refused"][0]["reason"], "missing field 'socket'");
}

#[test]
fn routes_are_shown_as_served_only_once_the_worker_acked_them() {
    let one = r#"[{"type":"http","name":"a","consumer":"E","target":"127.0.0.1:80/a","socket":"127.0.0.1:1"}]"#;
    let two = r#"[{"type":"http","name":"a","consumer":"E","target":"127.0.0.1:80/a","socket":"127.0.0.1:1"},
                  {"type":"http","name":"b","consumer":"E","target":"127.0.0.1:80/b","socket":"127.0.0.1:1"}]"#;
    let mut eps = running(one);
    let r = eps.values_mut().next().unwrap();
    let (ctl, _peer) = proto::ctl::socketpair().unwrap();
    let mut w = WorkerProc::new(Pid::from_raw(1234), ctl, 16, Instant::now(), init());
    w.pending.clear();
    r.worker = Some(w);
    // The worker acked the one-route table; the graph now has two and
    // the update has not been acked (or could not be sent).
    r.applied = Some(r.ep.clone());
    r.ep = proto::plan::from_graph(two).unwrap().endpoints.remove(0);
    let s = Snapshot::build(Instant::now(), &eps, &BTreeMap::new(), &[], &[]);
    let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
    let e = &v["endpoints"][0];
    assert_eq!(e["routes"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["pending_routes"].as_array().unwrap().len(), 2, "{e}");
    // Acked: served, nothing pending.
    let r = eps.values_mut().next().unwrap();
    r.applied = Some(r.ep.clone());
    let s = Snapshot::build(Instant::now(), &eps, &BTreeMap::new(), &[], &[]);
    let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
    let e = &v["endpoints"][0];
    assert_eq!(e["routes"].as_array().unwrap().len(), 2, "{e}");
    assert!(e.get("pending_routes").is_none(), "{e}");
}

#[test]
fn a_pending_endpoint_shows_its_reason_and_next_try_in_key_order() {
    use crate::pending::PendingEndpoint;
    use crate::policy::{BackoffPolicy, RestartPolicy};
    let g = r#"[{"type":"tcp","name":"a","consumer":"E","target":"127.0.0.1:81","socket":"127.0.0.1:1"},
                {"type":"tcp","name":"b","consumer":"E","target":"127.0.0.1:82","socket":"127.0.0.1:1"}]"#;
    let mut eps = running(g);
    let (key, r) = eps.pop_first().unwrap();
    let now = Instant::now();
    let mut policy = RestartPolicy::default();
    let p = PendingEndpoint::failed(
        9,
        r.ep,
        "cannot listen: bind: EADDRINUSE".into(),
        None,
        &policy,
        now,
        0.0,
    );
    let mut pend = BTreeMap::new();
    pend.insert(key.clone(), p);
    let v: serde_json::Value =
        serde_json::from_slice(&Snapshot::build(now, &eps, &pend, &[], &[]).to_json()).unwrap();
    let e = &v["endpoints"];
    // 127.0.0.1:81 sorts before :82, pending or not.
    assert_eq!(e[0]["address"], "127.0.0.1:81", "{v}");
    assert_eq!(e[0]["worker"]["state"], "pending");
    assert_eq!(e[0]["pending"]["reason"], "cannot listen: bind: EADDRINUSE");
    assert!(e[0]["pending"]["next_try_ms"].as_u64().unwrap() <= 20);
    assert_eq!(e[0]["pending_routes"][0]["name"], "a");
    assert_eq!(e[0]["routes"], serde_json::json!([]));
    assert!(e[1].get("pending").is_none(), "{v}");
    // Given up for good: failed, no next try.
    policy.max_retries = 1;
    policy.backoff_policy = BackoffPolicy::Never;
    let first = pend.remove(&key).unwrap();
    let p = PendingEndpoint::failed(
        9,
        first.ep.clone(),
        "x".into(),
        Some(&first),
        &policy,
        now,
        0.0,
    );
    pend.insert(key, p);
    let v: serde_json::Value =
        serde_json::from_slice(&Snapshot::build(now, &eps, &pend, &[], &[]).to_json()).unwrap();
    let e = &v["endpoints"][0];
    assert_eq!(e["worker"]["state"], "failed");
    assert_eq!(e["pending"]["given_up"], true);
    assert_eq!(e["pending"]["next_try_ms"], serde_json::Value::Null);
    assert_eq!(e["retries"], 1);
}
