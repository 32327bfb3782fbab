//! Run `pvx-worker-http` without the supervisor: hand it a control
//! socket on fd 3 and an Init carrying a listener and any limits, the way
//! the supervisor does. For what the supervisor's command line does not
//! expose (short timeouts, tiny caps) and for fast, root-free tests.

use proto::ctl::{self, FromWorker, Limits, ToWorker, WorkerConfig};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct Worker {
    pub child: Child,
    pub ctl: OwnedFd,
    pub addr: SocketAddr,
    seq: u64,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    }
}

fn recv_blocking(fd: &OwnedFd, within: Duration) -> FromWorker {
    let end = Instant::now() + within;
    loop {
        match ctl::recv::<FromWorker>(fd.as_fd()) {
            Ok((m, _)) => return m,
            Err(ctl::CtlError::WouldBlock) if Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("no answer from worker: {e}"),
        }
    }
}

impl Worker {
    pub fn start(cfg: WorkerConfig) -> Worker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let (sup, wrk) = ctl::socketpair().expect("socketpair");
        let wfd = wrk.as_raw_fd();
        let mut cmd = crate::worker_command("pvx-worker-http");
        cmd.arg(addr.to_string()).stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = nix::unistd::dup2(wfd, 3)?;
                nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn pvx-worker-http");
        drop(wrk);
        let init = ToWorker::Init {
            seq: 1,
            config: cfg,
        };
        ctl::send(sup.as_fd(), &init, &[listener.as_raw_fd()]).expect("send init");
        drop(listener);
        match recv_blocking(&sup, Duration::from_secs(10)) {
            FromWorker::Ack {
                seq: 1,
                error: None,
            } => {}
            other => panic!("worker did not accept init: {other:?}"),
        }
        Worker {
            child,
            ctl: sup,
            addr,
            seq: 1,
        }
    }

    /// Send a control message and wait for its ack (stats are skipped).
    pub fn send(&mut self, m: impl FnOnce(u64) -> ToWorker) -> Option<String> {
        self.seq += 1;
        let seq = self.seq;
        ctl::send(self.ctl.as_fd(), &m(seq), &[]).expect("send");
        loop {
            match recv_blocking(&self.ctl, Duration::from_secs(10)) {
                FromWorker::Ack { seq: s, error } if s == seq => return error,
                _ => {}
            }
        }
    }

    /// Latest stats the worker reported (waits for one).
    pub fn stats(&self) -> proto::ctl::Stats {
        let mut last = None;
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            match ctl::recv::<FromWorker>(self.ctl.as_fd()) {
                Ok((FromWorker::Stats { stats, .. }, _)) => last = Some(stats),
                Ok(_) => {}
                Err(ctl::CtlError::WouldBlock) if last.is_some() => break,
                Err(ctl::CtlError::WouldBlock) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("{e}"),
            }
        }
        last.expect("a stats report")
    }
}
