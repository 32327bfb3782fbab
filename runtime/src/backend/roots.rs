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

use std::cell::RefCell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

thread_local! {
    // Workers are single-threaded; the roots belong to the process.
    static ROOTS: RefCell<Vec<(u32, OwnedFd)>> = const { RefCell::new(Vec::new()) };
}

/// Replace the provider roots (`pids[i]` is reached through `fds[i]`).
/// The previous fds are closed.
pub fn set_roots(pids: &[u32], fds: Vec<OwnedFd>) {
    let roots: Vec<(u32, OwnedFd)> = pids.iter().copied().zip(fds).collect();
    ROOTS.with(|r| *r.borrow_mut() = roots);
}

/// The fds of the provider roots held now (kept across start-up clean-up).
pub fn root_fds() -> Vec<RawFd> {
    ROOTS.with(|r| r.borrow().iter().map(|(_, fd)| fd.as_raw_fd()).collect())
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

/// The root `path` lies in, if it is a provider path whose root is held:
/// that root's fd and the path inside it.
pub(super) fn through_root(path: &Path) -> Option<(RawFd, String)> {
    split_provider_path(path).and_then(|(pid, inner)| {
        ROOTS.with(|r| {
            r.borrow()
                .iter()
                .find(|(p, _)| *p == pid)
                .map(|(_, fd)| (fd.as_raw_fd(), inner.to_string()))
        })
    })
}
