//! Starting a worker process: fork/exec with fd 3 = its end of a control
//! socketpair, PDEATHSIG so it dies with the supervisor, an argv that `ps`
//! shows as `pvx-worker-tcp 0.0.0.0:8080 consumer=EXTERNAL`, then the Init
//! message with the listening socket attached.
//!
//! A worker is this same executable (BEHAVIOUR §2), exec'd under the worker's
//! name (`pvx-worker-tcp`), which picks the worker's code (the binary
//! target's dispatch on argv[0]). The supervisor opens its own executable
//! once (`O_PATH`, from `/proc/self/exe`) at start and execs every worker
//! through that fd (`/proc/self/fd/N`). A binary replaced on disk by an
//! update therefore does not change what a restarted worker runs behind
//! the supervisor's back: a supervisor runs the workers it started with
//! until it is itself restarted.
//!
//! What a worker inherits: fd 3 only (`dup2`ed here), then its listener and
//! provider roots with Init (and roots with each Update). Every other fd
//! the supervisor opens is close-on-exec (`SOCK_CLOEXEC`,
//! `MSG_CMSG_CLOEXEC`, `EPOLL_CLOEXEC`, std's defaults), and what it
//! inherited from its own parent is made so at start
//! (`privileges::seal_inherited_fds`); the worker closes whatever else it
//! finds (`runtime::worker::close_stray_fds`).

use nix::unistd::Pid;
use proto::ctl::{self, ToWorker, WorkerConfig, WORKER_CTL_FD};
use proto::types::Listen;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The executable the supervisor started as, held open.
pub struct Binary {
    fd: OwnedFd,
}

impl Binary {
    /// Open `/proc/self/exe`: the file this process was exec'd from, even
    /// if it has since been replaced or removed.
    pub fn open_self() -> Result<Binary, String> {
        use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
        let fd = open(
            "/proc/self/exe",
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("open /proc/self/exe: {e}"))?;
        // SAFETY: open just returned this fd; we own it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Above fd 3, which the child's dup2 of the control socket takes.
        let high = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(|e| format!("fcntl(F_DUPFD_CLOEXEC) on /proc/self/exe: {e}"))?;
        // SAFETY: fcntl just returned this new fd; we own it.
        let fd = unsafe { OwnedFd::from_raw_fd(high) };
        proto::debug!("holding our executable as fd {}", fd.as_raw_fd());
        Ok(Binary { fd })
    }

    /// The exec path: `/proc/self/fd/N` of the held fd.
    fn exec_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }
}

pub struct Spawned {
    pub pid: Pid,
    /// Supervisor's end of the control socket (non-blocking, close-on-exec).
    pub ctl: OwnedFd,
}

/// The argv after argv[0]: the listen address and the consumer, escaped
/// (`proto::text`): for `ps`, and because an argument cannot hold a NUL.
/// Workers never read their argv (the configuration comes in init).
pub fn worker_args(config: &WorkerConfig) -> [String; 2] {
    let listen = match &config.endpoint.key.listen {
        Listen::Tcp(a) => a.to_string(),
        Listen::Unix(p) => p.display().to_string(),
    };
    let consumer = proto::text::escape(&config.endpoint.consumer);
    [
        proto::text::escape(&listen).into_owned(),
        format!("consumer={consumer}"),
    ]
}

pub fn spawn(
    bin: &Binary,
    config: &WorkerConfig,
    listener: &OwnedFd,
    seq: u64,
) -> Result<Spawned, String> {
    let name = config.kind().worker_binary();
    let path = bin.exec_path();
    let (ours, theirs) = ctl::socketpair().map_err(|e| format!("socketpair: {e}"))?;
    let their_fd = theirs.as_raw_fd();
    let parent = std::process::id() as i32;
    let mut cmd = Command::new(&path);
    cmd.arg0(name)
        .args(worker_args(config))
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the new fd; when the fd already
            // is 3, clear it by hand.
            if their_fd == WORKER_CTL_FD {
                let fl = nix::libc::fcntl(their_fd, nix::libc::F_GETFD);
                nix::libc::fcntl(their_fd, nix::libc::F_SETFD, fl & !nix::libc::FD_CLOEXEC);
            } else if nix::libc::dup2(their_fd, WORKER_CTL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor may have died before PDEATHSIG was armed.
            if nix::libc::getppid() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("exec {name} ({path}): {e}"))?;
    drop(theirs);
    let pid = Pid::from_raw(child.id() as i32);
    // The child is reaped by the supervisor's SIGCHLD handling, not by std.
    drop(child);
    let init = ToWorker::Init {
        seq,
        config: config.clone(),
    };
    // The listener, then the provider roots (see roots.rs).
    let roots = crate::roots::open_roots(&config.endpoint).inspect_err(|_| {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    })?;
    let mut fds = vec![listener.as_raw_fd()];
    fds.extend(roots.iter().map(|f| f.as_raw_fd()));
    if let Err(e) = ctl::send(ours.as_fd(), &init, &fds) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        return Err(format!("sending init to {name} pid {pid}: {e}"));
    }
    Ok(Spawned { pid, ctl: ours })
}
