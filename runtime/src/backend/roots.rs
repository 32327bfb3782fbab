//! The provider roots: the fd table a worker reaches unix backends in
//! provider containers through.
//!
//! A unix backend in a container is `/proc/<provider_pid>/root<path>`. The
//! kernel lets a process follow `/proc/<pid>/root` only if it may ptrace
//! `pid`, and a worker that dropped its capabilities may not ptrace a
//! container init that kept them. Rather than keep CAP_SYS_PTRACE in a
//! process that parses untrusted traffic, the supervisor opens each root
//! (O_PATH) and passes the fd along with Init and Update; [`super::connect`] then
//! goes through `/proc/self/fd/<fd><path>`, which needs no privilege. A
//! side benefit: a provider pid reused by an unrelated process after the
//! provider died can never be reached by mistake.
//!
//! The worker loop owns its [`Roots`] (in `backend::Reach`): taken from
//! Init, replaced by an applied Update, lent to every connect.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// The provider roots held now: `(pid, root fd)`.
#[derive(Debug, Default)]
pub struct Roots(Vec<(u32, OwnedFd)>);

impl Roots {
    /// `pids[i]` is reached through `fds[i]`.
    pub fn new(pids: &[u32], fds: Vec<OwnedFd>) -> Roots {
        Roots(pids.iter().copied().zip(fds).collect())
    }

    /// Replace the roots (an applied Update); the previous fds are closed.
    pub fn set(&mut self, pids: &[u32], fds: Vec<OwnedFd>) {
        *self = Roots::new(pids, fds);
    }

    /// The fds of the roots (kept across start-up clean-up).
    pub fn fds(&self) -> Vec<RawFd> {
        self.0.iter().map(|(_, fd)| fd.as_raw_fd()).collect()
    }

    /// The root `path` lies in, if it is a provider path whose root is
    /// held: that root's fd and the path inside it.
    pub(super) fn through(&self, path: &Path) -> Option<(RawFd, String)> {
        let (pid, inner) = split_provider_path(path)?;
        self.0
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, fd)| (fd.as_raw_fd(), inner.to_string()))
    }
}

/// Split `/proc/<pid>/root/inner` into (pid, `/inner`).
pub fn split_provider_path(path: &Path) -> Option<(u32, &str)> {
    let s = path.to_str()?.strip_prefix("/proc/")?;
    let (pid, rest) = s.split_once('/')?;
    let inner = rest.strip_prefix("root")?;
    if !inner.starts_with('/') {
        return None;
    }
    Some((pid.parse().ok()?, inner))
}
