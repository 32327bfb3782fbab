//! Listening sockets, made inside the consumer's namespace.
//!
//! A socket keeps the namespace it was created in, so the supervisor only
//! has to be in the consumer's network namespace (tcp) or mount namespace
//! (unix path) for `socket()`/`bind()`. That is done in a short-lived
//! forked child: it `setns()`es, binds, sends the fd back over a
//! SOCK_SEQPACKET pair with SCM_RIGHTS and exits. The supervisor itself
//! never leaves its own namespaces, whatever fails in between; and a mount
//! namespace can only be entered by a single-threaded process, which a
//! fresh child always is. A unix socket's path is walked there without
//! following symlinks (`sockfile.rs`).

use crate::sockfile;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn, SockaddrIn6,
};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use proto::plan::EndpointKey;
use proto::types::Listen;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

const BACKLOG: i32 = 1024;

/// Create the endpoint's listening socket in its namespace. `ours`: the
/// listen pids (`sockfile::listen_pid`) of unix sockets we made that may
/// be replaced although they still answer (see `sockfile.rs`).
pub fn create(key: &EndpointKey, ours: &[i32]) -> Result<OwnedFd, String> {
    if key.consumer_pid == 0 {
        return bind_here(&key.listen, ours);
    }
    let ns = match key.listen {
        Listen::Tcp(_) => ("net", CloneFlags::CLONE_NEWNET),
        Listen::Unix(_) => ("mnt", CloneFlags::CLONE_NEWNS),
    };
    in_namespace(key.consumer_pid, ns, || {
        bind_here(&key.listen, ours).map(Some)
    })?
    .ok_or_else(|| format!("no socket came back for {key}"))
}

/// Inode of the namespace an endpoint's listener is made in: the network
/// namespace of `pid` for tcp, its mount namespace for unix (0: our own).
/// It names the namespace while that exists; a tcp listener keeps its
/// network namespace alive, so while the endpoint runs no other network
/// namespace can take that inode.
pub fn ns_inode(key: &EndpointKey) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let kind = match key.listen {
        Listen::Tcp(_) => "net",
        Listen::Unix(_) => "mnt",
    };
    let path = if key.consumer_pid == 0 {
        format!("/proc/self/ns/{kind}")
    } else {
        format!("/proc/{}/ns/{kind}", key.consumer_pid)
    };
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Remove a unix listener's socket file (endpoint removed), in the
/// consumer's mount namespace. Best effort: the container may be gone.
/// `made_in` is the namespace the socket was made in: if the consumer pid
/// now names another namespace (the pid was reused), nothing is touched.
/// `made_by`: the listen pid of our listener (`sockfile::listen_pid`); a
/// socket someone else listens on now stays, and no symlink is followed.
pub fn remove_unix(key: &EndpointKey, made_in: Option<u64>, made_by: Option<i32>) {
    let Listen::Unix(path) = &key.listen else {
        return;
    };
    if ns_inode(key) != made_in {
        proto::debug!("not removing the socket of {key}: its mount namespace is gone");
        return;
    }
    let unlink = || {
        if !sockfile::remove(path, made_by)? {
            proto::debug!("{key}: no socket of ours to remove");
        }
        Ok(None)
    };
    let r = if key.consumer_pid == 0 {
        unlink().map(|_: Option<OwnedFd>| ())
    } else {
        in_namespace(key.consumer_pid, ("mnt", CloneFlags::CLONE_NEWNS), unlink).map(|_| ())
    };
    if let Err(e) = r {
        proto::debug!("removing socket of {key}: {e}");
    }
}

fn sys(call: &str, what: &dyn std::fmt::Display, e: Errno) -> String {
    format!("{call} {what}: {e}")
}

/// Bind and listen in the current namespaces.
fn bind_here(listen: &Listen, ours: &[i32]) -> Result<OwnedFd, String> {
    match listen {
        Listen::Tcp(addr) => bind_tcp(addr),
        Listen::Unix(path) => sockfile::make(path, ours, BACKLOG),
    }
}

fn bind_tcp(addr: &SocketAddr) -> Result<OwnedFd, String> {
    let fam = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| sys("socket for", addr, e))?;
    // Rebinding after a supervisor restart must not wait for TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true)
        .map_err(|e| sys("setsockopt(SO_REUSEADDR) on", addr, e))?;
    // FREEBIND: an address that is not (yet) on an interface (DHCP, Wi-Fi,
    // a bridge brought up after us) binds now and is served once it
    // appears, instead of failing with EADDRNOTAVAIL.
    let r = match addr {
        SocketAddr::V4(a) => {
            setsockopt(&fd, sockopt::IpFreebind, &true)
                .map_err(|e| sys("setsockopt(IP_FREEBIND) on", addr, e))?;
            bind(fd.as_raw_fd(), &SockaddrIn::from(*a))
        }
        SocketAddr::V6(a) => {
            // [::]:80 and 0.0.0.0:80 are separate endpoints, as in nginx.
            setsockopt(&fd, sockopt::Ipv6V6Only, &true)
                .map_err(|e| sys("setsockopt(IPV6_V6ONLY) on", addr, e))?;
            ipv6_freebind(&fd, addr)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(*a))
        }
    };
    r.map_err(|e| sys("bind", addr, e))?;
    listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| sys("listen on", addr, e))?;
    Ok(fd)
}

/// FREEBIND on an IPv6 socket. `IPV6_FREEBIND` is Linux 4.15; an older
/// kernel does not know it (ENOPROTOOPT), but sets the very same flag
/// for `IP_FREEBIND` at the IPv4 level on an IPv6 socket, which IPv6's
/// bind() honours, and later kernels still do.
fn ipv6_freebind(fd: &OwnedFd, addr: &SocketAddr) -> Result<(), String> {
    use nix::libc::{c_int, c_void, socklen_t};
    let on: c_int = 1;
    // SAFETY: `on` outlives the call and its size is passed with it.
    let r = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::IPPROTO_IPV6,
            nix::libc::IPV6_FREEBIND,
            (&on as *const c_int).cast::<c_void>(),
            std::mem::size_of::<c_int>() as socklen_t,
        )
    };
    match Errno::result(r) {
        Ok(_) => Ok(()),
        Err(Errno::ENOPROTOOPT) => setsockopt(fd, sockopt::IpFreebind, &true).map_err(|e| {
            sys(
                "setsockopt(IP_FREEBIND) (no IPV6_FREEBIND before Linux 4.15) on",
                addr,
                e,
            )
        }),
        Err(e) => Err(sys("setsockopt(IPV6_FREEBIND) on", addr, e)),
    }
}

/// Wait until `fd` is readable, at most `within`. A signal (SIGCHLD of a
/// worker exiting meanwhile) interrupts poll(2); that is not a failure.
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, within: Duration) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut pfd = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut pfd, PollTimeout::from(ms)) {
            Ok(0) => {
                return Err(format!(
                    "namespace helper did not answer in {} s",
                    within.as_secs()
                ))
            }
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll on namespace helper: {e}")),
        }
    }
}

/// Run `f` in a forked child that has joined namespace `ns` of `pid`; the
/// child sends back the fd `f` made (or its error text).
fn in_namespace(
    pid: u32,
    ns: (&str, CloneFlags),
    f: impl FnOnce() -> Result<Option<OwnedFd>, String>,
) -> Result<Option<OwnedFd>, String> {
    let ns_path = format!("/proc/{pid}/ns/{}", ns.0);
    // Open before forking, so a missing namespace is reported plainly.
    let ns_file =
        std::fs::File::open(&ns_path).map_err(|e| format!("cannot open {ns_path}: {e}"))?;
    let (ours, theirs) = proto::ctl::socketpair().map_err(|e| format!("socketpair: {e}"))?;
    // SAFETY: the supervisor is single-threaded (no signal-hook thread, no
    // runtime), so the child may allocate and run ordinary Rust code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(ours);
            let r = setns(ns_file.as_fd(), ns.1)
                .map_err(|e| format!("setns({ns_path}): {e}"))
                .and_then(|_| f());
            let _ = match r {
                Ok(Some(fd)) => proto::ctl::send_raw(theirs.as_fd(), b"ok", &[fd.as_raw_fd()]),
                Ok(None) => proto::ctl::send_raw(theirs.as_fd(), b"ok", &[]),
                Err(e) => proto::ctl::send_raw(theirs.as_fd(), e.as_bytes(), &[]),
            };
            // SAFETY: leave the child without running the parent's atexit/drop logic.
            unsafe { nix::libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            drop(ns_file);
            let got = wait_readable(ours.as_fd(), Duration::from_secs(5)).and_then(|_| {
                proto::ctl::recv_raw(ours.as_fd()).map_err(|e| format!("namespace helper: {e}"))
            });
            if got.is_err() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            // Reaped here, not by the daemon's SIGCHLD handling.
            while waitpid(child, None) == Err(Errno::EINTR) {}
            let (body, mut fds) = got?;
            if body != b"ok" {
                return Err(String::from_utf8_lossy(&body).into_owned());
            }
            Ok(fds.pop())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    /// FREEBIND: an address on no interface (documentation prefixes) binds
    /// now and would be served once it appears.
    #[test]
    fn an_address_on_no_interface_binds() {
        bind_tcp(&"192.0.2.1:0".parse().unwrap()).unwrap();
        if std::path::Path::new("/proc/net/if_inet6").exists() {
            bind_tcp(&"[2001:db8::1]:0".parse().unwrap()).unwrap();
        }
    }

    /// The fallback for kernels before 4.15 (no `IPV6_FREEBIND`): the
    /// IPv4-level option frees an IPv6 bind too, on this kernel as well.
    #[test]
    fn the_ipv4_level_freebind_frees_an_ipv6_bind() {
        if !std::path::Path::new("/proc/net/if_inet6").exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must have IPv6"
            );
            eprintln!("SKIP the_ipv4_level_freebind_frees_an_ipv6_bind: no IPv6 here");
            return;
        }
        let addr: SocketAddrV6 = "[2001:db8::1]:0".parse().unwrap();
        let bare = || {
            socket(
                AddressFamily::Inet6,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
        };
        let fd = bare().unwrap();
        assert_eq!(
            bind(fd.as_raw_fd(), &SockaddrIn6::from(addr)),
            Err(Errno::EADDRNOTAVAIL),
            "without FREEBIND an address on no interface does not bind"
        );
        let fd = bare().unwrap();
        setsockopt(&fd, sockopt::IpFreebind, &true).unwrap();
        bind(fd.as_raw_fd(), &SockaddrIn6::from(addr)).unwrap();
    }
}
