//! The connect calls: a non-blocking connect to `IP:PORT` or to a unix
//! socket (through its provider's root, [`Roots`]), what their errors
//! mean (retry, busy, absent) and the delays between retries.

use super::roots::Roots;
use crate::stream::Stream;
use mio::net::{TcpStream, UnixStream};
use proto::types::Backend;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

/// Longest `sun_path` the kernel takes, without the terminating NUL.
const SUN_PATH_MAX: usize = 107;

fn connect_unix(path: &Path, roots: &Roots) -> io::Result<UnixStream> {
    let root = roots.through(path);
    let Some((fd, inner)) = root else {
        return UnixStream::connect(path);
    };
    let via = format!("/proc/self/fd/{fd}{inner}");
    if via.len() <= SUN_PATH_MAX {
        return UnixStream::connect(via);
    }
    // Too long for sun_path: resolve relative to the root as working
    // directory instead (the worker never uses relative paths otherwise).
    nix::unistd::fchdir(fd)
        .map_err(|e| io::Error::other(format!("fchdir to provider root: {e}")))?;
    let r = UnixStream::connect(format!(".{inner}"));
    let _ = nix::unistd::chdir("/");
    r
}

/// Start connecting. A tcp connect is usually still in progress on return
/// (wait for writable, then [`Stream::connect_done`]); a unix connect has
/// already succeeded or failed. A unix backend in a provider container
/// is reached through its root in `roots`.
pub fn connect(b: &Backend, roots: &Roots) -> io::Result<Stream> {
    match b {
        Backend::Tcp(addr) => connect_tcp(*addr).map(Stream::Tcp),
        Backend::Unix(path) => connect_unix(path, roots).map(Stream::Unix),
    }
}

/// A non-blocking tcp connect whose handshake's last ACK waits (with
/// `TCP_QUICKACK` off, Linux delays it up to 200 ms) for the first bytes
/// we send, which carry it: one segment less per connection when the
/// client has spoken first (HAProxy's tcp-smart-connect). Whoever has
/// nothing to send at once says so with `set_quickack(fd, true)`, which
/// sends the ACK then (a server that speaks first does not see the
/// connection before it).
fn connect_tcp(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(family, SockType::Stream, flags, None)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("socket(): {e}")))?;
    let _ = crate::stream::set_quickack(fd.as_fd(), false);
    match nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        // The errno itself (ECONNREFUSED...): `is_retryable` reads it.
        Err(e) => return Err(io::Error::from(e)),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(fd)))
}

/// Errors that mean "the provider is not listening yet": worth a retry.
pub fn is_retryable(e: &io::Error) -> bool {
    use nix::libc::{EAGAIN, ECONNREFUSED, ENOENT};
    matches!(
        e.raw_os_error(),
        Some(ECONNREFUSED) | Some(ENOENT) | Some(EAGAIN)
    )
}

/// A unix listener whose accept queue is full: a non-blocking connect says
/// EAGAIN. The provider is there, and busy: the same as a tcp backend
/// whose full accept queue drops our SYN, which the kernel sends again
/// until the connect times out. So it is treated the same: tried again
/// (every [`busy_delay`]) until the connect timeout, not only within the
/// short retry budget of a refused connect, and a failure (for the health
/// checks too) only when still busy then; a check does the same within its
/// own timeout (`health.rs`), so checks and real connections agree.
pub fn is_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EAGAIN)
}

/// Delay before busy retry number `n` (1-based): 25, 50, 100, then every
/// 200 ms: soon enough to take room as it frees, few enough syscalls.
pub fn busy_delay(n: u32) -> Duration {
    Duration::from_millis((25u64 << n.saturating_sub(1).min(3)).min(200))
}

/// Errors that mean "the provider is not there now" (restarting, its
/// address not back yet): a connection is held for these.
pub fn is_absent(e: &io::Error) -> bool {
    use nix::libc::{EHOSTUNREACH, ENETUNREACH};
    is_retryable(e) || matches!(e.raw_os_error(), Some(EHOSTUNREACH) | Some(ENETUNREACH))
}

/// Delay before retry number `attempt` (1-based): 25, 50, 100, 200 ms ...,
/// or None once the delays so far would exceed `budget_ms` in all.
pub fn retry_delay(attempt: u32, budget_ms: u64) -> Option<Duration> {
    let mut spent = 0u64;
    let mut d = 25u64;
    for _ in 1..attempt {
        spent += d;
        d *= 2;
    }
    if attempt == 0 || spent + d > budget_ms {
        return None;
    }
    Some(Duration::from_millis(d))
}
