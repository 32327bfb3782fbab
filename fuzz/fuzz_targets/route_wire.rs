//! Per-route counters as a worker sends them (`proto::ctl::RouteWire`,
//! read by the supervisor with `RouteStats::try_from`) and shown on
//! `/metrics`. A worker reads clients' bytes: the supervisor takes what
//! it sends as untrusted. Input: the link name, a 0xff byte, the numbers'
//! text.
//!
//! Invariants: no panic (no overflow, whatever the numbers: sums
//! saturate); what is accepted writes back the same and reads back equal;
//! summed with itself it never goes down; `/metrics` with it keeps one
//! sample per line whatever the link name holds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::ctl::{RouteStats, RouteWire};
use proto::types::Kind;
use supervisor::status::{DrainingStatus, Snapshot, SupervisorInfo};

fuzz_target!(|data: &[u8]| {
    let (link, n) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let wire = RouteWire {
        link: String::from_utf8_lossy(link).into_owned(),
        n: String::from_utf8_lossy(n).into_owned(),
    };
    let Ok(r) = RouteStats::try_from(wire.clone()) else {
        return;
    };
    let again = RouteWire::from(&r);
    assert_eq!(RouteStats::try_from(again).as_ref(), Ok(&r));
    let twice = r.then(&r);
    assert!(twice.total() >= r.total());
    assert!(twice.bytes_in >= r.bytes_in && twice.duration_ms >= r.duration_ms);
    let kind = if data.len() % 2 == 0 {
        Kind::Http
    } else {
        Kind::Tcp
    };
    let draining = |pid| DrainingStatus {
        address: "127.0.0.1:80".into(),
        namespace: "host".into(),
        kind,
        consumer: "EXTERNAL".into(),
        pid,
        route_counters: vec![r.clone(), twice.clone()],
    };
    let s = Snapshot {
        supervisor: SupervisorInfo {
            pid: 1,
            version: "fuzz",
            uptime_s: 0,
            log_dropped: 0,
        },
        endpoints: vec![],
        draining: vec![draining(1), draining(2)],
        refused: vec![],
    };
    let text = supervisor::metrics::render(&s);
    for line in text.lines() {
        assert!(
            line.starts_with("# ") || line.starts_with("pvx_"),
            "{line:?}"
        );
    }
});
