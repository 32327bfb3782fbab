//! Starting a worker process: fork/exec with fd 3 = its end of a control
//! socketpair, PDEATHSIG so it dies with the supervisor, an argv that `ps`
//! shows as `pvx-worker-tcp 0.0.0.0:8080 consumer=EXTERNAL`, then the Init
//! message with the listening socket attached.
//!
//! Each worker binary is opened once (`O_PATH`) the first time it is
//! needed, and every later worker of that kind is exec'd through that fd
//! (`/proc/self/fd/N`). A binary replaced on disk by an update therefore
//! does not change what a restarted worker runs behind the supervisor's
//! back: a supervisor runs the workers it started with until it is itself
//! restarted.

use nix::unistd::Pid;
use proto::ctl::{self, ToWorker, WorkerConfig, WORKER_CTL_FD};
use proto::graph::Listen;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The worker binaries, held open from first use.
pub struct Binaries {
    dir: PathBuf,
    open: HashMap<&'static str, OwnedFd>,
}

impl Binaries {
    pub fn new(dir: PathBuf) -> Binaries {
        Binaries {
            dir,
            open: HashMap::new(),
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The exec path of worker `name`: `/proc/self/fd/N` of its held fd.
    fn exec_path(&mut self, name: &'static str) -> Result<String, String> {
        if !self.open.contains_key(name) {
            use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
            let path = self.dir.join(name);
            let fd = open(
                &path,
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| format!("open {}: {e}", path.display()))?;
            // SAFETY: open just returned this fd; we own it.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            // Above fd 3, which the child's dup2 of the control socket takes.
            let high = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10))
                .map_err(|e| format!("fcntl(F_DUPFD_CLOEXEC) on {}: {e}", path.display()))?;
            // SAFETY: fcntl just returned this new fd; we own it.
            let high = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) };
            proto::debug!("holding {} as fd {}", path.display(), high.as_raw_fd());
            self.open.insert(name, high);
        }
        let fd = self
            .open
            .get(name)
            .map(|f| f.as_raw_fd())
            .ok_or("worker binary not held")?;
        Ok(format!("/proc/self/fd/{fd}"))
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
    bins: &mut Binaries,
    config: &WorkerConfig,
    listener: &OwnedFd,
    seq: u64,
) -> Result<Spawned, String> {
    let name = config.kind().worker_binary();
    let path = bins.exec_path(name)?;
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
        .map_err(|e| format!("exec {} ({path}): {e}", bins.dir().join(name).display()))?;
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
