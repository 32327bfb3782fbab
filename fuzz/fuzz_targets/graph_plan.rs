//! Graph JSON through the planner (`proto::graph::parse`, `proto::plan`).
//!
//! Invariants: no panic; every element of the array is either a link of
//! exactly one endpoint or refused, once; endpoints have distinct keys, at
//! least one route, and only routes of their own kind and consumer; two
//! http routes of one endpoint never share prefix and host, two tcp routes
//! never share an sni (links of one route are its replicas, each planned
//! once, each backend once in the pool); a worker's configuration survives the control
//! message's JSON round trip, with an fd count within what one message
//! carries; `build_preferring` keeps the same partition with any holder.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::ctl::{ToWorker, WorkerConfig};
use proto::limits::{Limits, MAX_FDS};
use proto::plan::{self, Plan};
use proto::types::{Backend, Kind};
use std::collections::BTreeSet;

fn check(plan: &Plan, n_items: usize) {
    let mut seen = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for ep in &plan.endpoints {
        assert!(
            keys.insert(ep.key.clone()),
            "two endpoints with key {}",
            ep.key
        );
        assert!(!ep.routes.is_empty(), "endpoint {} without routes", ep.key);
        for (i, r) in ep.routes.iter().enumerate() {
            assert!(seen.insert(r.link), "link #{} planned twice", r.link);
            assert_eq!(r.via.consumer, ep.consumer);
            if ep.kind == Kind::Tcp || ep.kind == Kind::Http {
                assert!(matches!(ep.key.listen, proto::types::Listen::Tcp(_)));
            }
            for o in &ep.routes[..i] {
                match ep.kind {
                    Kind::Http => assert!(
                        !(o.via.prefix == r.via.prefix && o.via.host == r.via.host),
                        "links #{} and #{} share prefix and host",
                        o.link,
                        r.link
                    ),
                    Kind::Tcp => assert!(
                        r.via.sni.is_some() && o.via.sni.is_some() && o.via.sni != r.via.sni
                    ),
                    Kind::Unix | Kind::Rest => {}
                }
            }
            if let (Backend::Unix(p), 0) = (&r.via.backend, r.via.provider_pid) {
                assert!(p.is_absolute(), "relative unix backend {}", p.display());
            }
            // Replicas: links of the route, each planned once, a pool only
            // with a policy, no backend twice in a pool.
            assert!(r.replicas.is_empty() || r.via.balance.is_some());
            let mut pool = BTreeSet::new();
            for b in r.backends() {
                assert!(pool.insert(b.to_string()), "backend {b} twice in a pool");
            }
            for x in &r.replicas {
                assert!(seen.insert(x.link), "link #{} planned twice", x.link);
            }
        }
        let config = WorkerConfig {
            endpoint: ep.clone(),
            limits: Limits::default(),
            log_target: "stderr".into(),
            log_level: "info".into(),
        };
        let msg = ToWorker::Init { seq: 1, config };
        assert!(msg.fds() <= MAX_FDS);
        let text = serde_json::to_vec(&msg).expect("a config serializes");
        let back: ToWorker = serde_json::from_slice(&text).expect("a config reads back");
        assert_eq!(back, msg, "config changed in the JSON round trip");
    }
    for r in &plan.refused {
        assert!(
            seen.insert(r.index),
            "link #{} both planned and refused",
            r.index
        );
    }
    assert_eq!(seen.len(), n_items, "an element of the graph went missing");
    assert!(seen.iter().all(|i| *i < n_items));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((links, refused)) = proto::graph::parse(text) else {
        return;
    };
    let n_items = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(a)) => a.len(),
        other => panic!("graph::parse accepted a non-array: {other:?}"),
    };
    assert_eq!(links.len() + refused.len(), n_items);
    let plan = plan::build(&links, refused.clone());
    check(&plan, n_items);
    // A holder that claims every other key for a tcp endpoint of "held".
    let preferred = plan::build_preferring(&links, refused, |k| {
        (k.consumer_pid % 2 == 1).then(|| (Kind::Tcp, "held".to_string()))
    });
    check(&preferred, n_items);
});
