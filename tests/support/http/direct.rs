//! Run `pvx-worker-http` without the supervisor (see [`crate::direct`]),
//! on a loopback listener of its own.

use proto::ctl::WorkerConfig;
use proto::limits::Limits;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;

pub struct Worker {
    pub w: crate::direct::Worker,
    pub addr: SocketAddr,
}

impl std::ops::Deref for Worker {
    type Target = crate::direct::Worker;
    fn deref(&self) -> &Self::Target {
        &self.w
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.w
    }
}

/// A graph of http links, all on one endpoint; `links` are JSON objects
/// without `type`, `consumer` and `target` address (added here).
pub fn config(links: &[(&str, &str)], limits: Limits) -> WorkerConfig {
    let items: Vec<String> = links
        .iter()
        .enumerate()
        .map(|(i, (prefix, extra))| {
            format!(
                r#"{{"type":"http","name":"r{i}","consumer":"EXTERNAL","role":"any","target":"127.0.0.1:1{prefix}"{extra}}}"#
            )
        })
        .collect();
    let plan = proto::plan::from_graph(&format!("[{}]", items.join(","))).expect("test graph");
    assert!(plan.refused.is_empty(), "{:?}", plan.refused);
    WorkerConfig {
        endpoint: plan.endpoints.into_iter().next().expect("one endpoint"),
        limits,
        log_target: "stderr".into(),
        log_level: std::env::var("PVX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        access_log: Default::default(),
    }
}

impl Worker {
    pub fn start(cfg: WorkerConfig) -> Worker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let w = crate::direct::Worker::start(
            "pvx-worker-http",
            &addr.to_string(),
            cfg,
            listener.as_fd(),
        );
        Worker { w, addr }
    }
}
