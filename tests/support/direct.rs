//! Run a worker without the supervisor: hand it a control socket on fd 3
//! and an Init carrying a listener and any config, the way the supervisor
//! does; then send it control messages by hand and read its answers. For
//! what the supervisor never sends (an update for another endpoint, a
//! second drain), what its command line does not expose (short timeouts,
//! tiny caps), and for fast, root-free tests.

use proto::ctl::{self, FromWorker, ToWorker, WorkerConfig};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct Worker {
    pub child: Child,
    pub ctl: OwnedFd,
    seq: u64,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    /// Start worker `name` (`pvx-worker-tcp`...) serving `listener` with
    /// `cfg`; `arg` is its argv[1] (for `ps`). Waits for the Init's ack.
    pub fn start(name: &str, arg: &str, cfg: WorkerConfig, listener: BorrowedFd) -> Worker {
        let (sup, wrk) = ctl::socketpair().expect("socketpair");
        let wfd = wrk.as_raw_fd();
        let mut cmd = crate::worker_command(name);
        cmd.arg(arg).stdin(Stdio::null());
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
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        drop(wrk);
        let init = ToWorker::Init {
            seq: 1,
            config: cfg,
        };
        ctl::send(sup.as_fd(), &init, &[listener.as_raw_fd()]).expect("send init");
        match recv_blocking(&sup, Duration::from_secs(10)) {
            FromWorker::Ack {
                seq: 1,
                error: None,
            } => {}
            other => panic!("{name} did not accept init: {other:?}"),
        }
        Worker {
            child,
            ctl: sup,
            seq: 1,
        }
    }

    /// Send a control message with `fds`; returns its seq.
    pub fn post_with(&mut self, m: impl FnOnce(u64) -> ToWorker, fds: &[RawFd]) -> u64 {
        self.seq += 1;
        ctl::send(self.ctl.as_fd(), &m(self.seq), fds).expect("send");
        self.seq
    }

    /// Send a control message; returns its seq.
    pub fn post(&mut self, m: impl FnOnce(u64) -> ToWorker) -> u64 {
        self.post_with(m, &[])
    }

    /// Wait for the ack of `seq` (stats are skipped): its error.
    pub fn ack(&mut self, seq: u64) -> Option<String> {
        loop {
            match recv_blocking(&self.ctl, Duration::from_secs(10)) {
                FromWorker::Ack { seq: s, error } if s == seq => return error,
                _ => {}
            }
        }
    }

    /// Send a control message with `fds` and wait for its ack.
    pub fn send_with(&mut self, m: impl FnOnce(u64) -> ToWorker, fds: &[RawFd]) -> Option<String> {
        let seq = self.post_with(m, fds);
        self.ack(seq)
    }

    /// Send a control message and wait for its ack (stats are skipped).
    pub fn send(&mut self, m: impl FnOnce(u64) -> ToWorker) -> Option<String> {
        self.send_with(m, &[])
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
