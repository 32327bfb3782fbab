//! Provider roots for workers (see `runtime::backend`): an O_PATH fd of
//! `/proc/<pid>/root` for every provider container an endpoint reaches a
//! unix socket in, opened here with the supervisor's privileges and passed
//! with Init and Update, so workers need no CAP_SYS_PTRACE.

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use proto::plan::Endpoint;
use std::os::fd::{FromRawFd, OwnedFd};

/// One fd per `ep.root_pids()`, in that order. A provider that is gone
/// gets `/dev/null` in its place (connects through it fail with ENOTDIR),
/// because the count must match what the worker expects.
pub fn open_roots(ep: &Endpoint) -> Result<Vec<OwnedFd>, String> {
    let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    // The planner refused every link past limits::MAX_ROOTS providers, so
    // this is every provider the endpoint's unix backends live in.
    let pids = ep.root_pids();
    pids.into_iter()
        .map(|pid| {
            let path = format!("/proc/{pid}/root");
            let fd = match open(path.as_str(), flags | OFlag::O_DIRECTORY, Mode::empty()) {
                Ok(fd) => fd,
                Err(e) => {
                    proto::warn!(
                        "endpoint {}: provider root {path}: {e}; its unix backends are unreachable",
                        ep.key
                    );
                    open("/dev/null", flags, Mode::empty())
                        .map_err(|e| format!("open /dev/null: {e}"))?
                }
            };
            // SAFETY: open just returned this fd; nobody else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}
