//! The supervisor's own capabilities: it keeps what creating listeners in
//! other containers and starting workers needs, and drops the rest from
//! every set (bounding included, so nothing it execs can get more back).
//!
//! Kept ([`KEEP`]), in bounding, permitted and effective alike (`CapEff =
//! CapPrm = CapBnd = 0x2c050a`; inheritable and ambient empty,
//! `no_new_privs` set; `tests/ops.rs` reads them from `/proc/<pid>/status`):
//! - `CAP_SYS_ADMIN` and `CAP_SYS_CHROOT`: `setns()` into a consumer's
//!   network or mount namespace, in the forked helper of `listener.rs`;
//! - `CAP_SYS_PTRACE`: opening `/proc/<pid>/ns/*` and `/proc/<pid>/root`
//!   (the provider roots, `roots.rs`) of a container process with more
//!   capabilities than ours is a ptrace-mode access. Workers no longer
//!   need it: they get the roots as fds;
//! - `CAP_NET_BIND_SERVICE`: listeners below port 1024 (http on :80);
//! - `CAP_DAC_OVERRIDE`: the consumer's socket directory and file,
//!   whoever owns the path; a worker reaching a provider's socket keeps it
//!   after exec (`runtime::worker::kept_caps`);
//! - `CAP_FOWNER`: replacing a stale socket another user left in a sticky
//!   directory (`/tmp`);
//! - `CAP_SETPCAP`: each worker shrinks its own bounding set after exec.
//!
//! Not kept: `CAP_KILL` (workers run as our uid: signalling them needs
//! none), `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_SYS_RESOURCE` (workers raise
//! `RLIMIT_NOFILE` only up to the hard limit), and everything else.

use caps::Capability;

/// What the supervisor keeps, and why.
pub const KEEP: [(Capability, &str); 7] = [
    (
        Capability::CAP_SYS_ADMIN,
        "setns() into a consumer's network or mount namespace",
    ),
    (
        Capability::CAP_SYS_CHROOT,
        "setns() into a mount namespace also needs it",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "open /proc/<pid>/ns/* and the provider roots /proc/<pid>/root of containers with more caps than ours (workers get the roots as fds)",
    ),
    (
        Capability::CAP_NET_BIND_SERVICE,
        "listen on ports below 1024 (http on :80)",
    ),
    (
        Capability::CAP_DAC_OVERRIDE,
        "create the consumer's socket directory and file whoever owns it; workers reaching a provider's socket inherit it",
    ),
    (
        Capability::CAP_FOWNER,
        "replace a stale socket another user left in a sticky directory (/tmp)",
    ),
    (
        Capability::CAP_SETPCAP,
        "workers shrink their bounding set after exec; without it they could not",
    ),
];

/// Keep only [`KEEP`] (see [`proto::privs::keep_only`]).
///
/// Workers are exec'd by uid 0, so they start with (bounding ∩ file caps
/// of root) = our bounding set, then drop to their own few; no_new_privs
/// here cannot make them gain more than that, and our permitted set equals
/// that bounding set, so exec grants nothing NNP would have to refuse.
/// Returns a description of what was kept, for the start-up log line.
pub fn drop_unneeded() -> Result<String, String> {
    let keep: Vec<Capability> = KEEP.iter().map(|(c, _)| *c).collect();
    let now = proto::privs::keep_only(&keep)?;
    let mut names: Vec<String> = now.iter().map(|c| c.to_string()).collect();
    names.sort();
    Ok(if names.is_empty() {
        "none (not started as root: namespaces and ports < 1024 will fail)".into()
    } else {
        names.join(",")
    })
}

/// Mark every fd above stdio that we inherited close-on-exec. Whatever the
/// parent (an init, a shell) leaked to us then never reaches a worker, not
/// even for the moment between exec and the worker's own
/// `close_stray_fds`. They are not closed: the parent may have meant
/// something by them, and the supervisor's own fds are already
/// close-on-exec.
pub fn seal_inherited_fds() -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("reading /proc/self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // EBADF: the read_dir fd itself, closed by now.
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
        }
    }
    Ok(())
}
