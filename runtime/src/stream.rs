//! A connected stream socket of either family, so workers handle tcp and
//! unix clients and backends with one code path.
//!
//! Segments per connection (issue 11): on loopback the sender pays for the
//! receiver's TCP work too, so every segment a short connection causes is
//! CPU of ours. Each of these saves one, and its place says how:
//! - a direction's last bytes and the FIN after them leave as one segment
//!   ([`MSG_MORE`]; `Direction::write_last`, `relay.rs`; the http worker's
//!   `Out::flush_with` for a response after which it closes);
//! - accepted clients delay their ACKs (`TCP_QUICKACK` off on the listener,
//!   [`Listener::from_fd`], inherited by every accepted socket: HAProxy's
//!   tcp-smart-accept), so the ACK of a request rides on its answer;
//! - a tcp backend's handshake ACK waits for our first bytes
//!   (`backend/connect.rs`: HAProxy's tcp-smart-connect), sent at once by
//!   the first relay pass that has nothing for it (`conns/sockets.rs`).
//!
//! `tests/tcp_short.rs` and `tests/http.rs` count them (`TCP_INFO`);
//! `scripts/bench-syscalls.sh` measures them (README, "Measured").

use mio::event::{Event, Source};
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// Edge-triggered readiness of one socket, as seen by its connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
}

impl Ready {
    /// What an event makes ready. A hang-up or an error counts as both:
    /// only the read or the write that returns it (0 bytes, or the error)
    /// tells the connection, and edge-triggered polling will not report
    /// it again, so a side left waiting for an event would wait for ever.
    pub fn of(ev: &Event) -> Ready {
        Ready {
            readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
            writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
        }
    }

    /// Take in an event: readiness stays until an I/O call finds the
    /// socket would block, whatever later events say.
    pub fn add(&mut self, ev: &Event) {
        let now = Ready::of(ev);
        self.readable |= now.readable;
        self.writable |= now.writable;
    }
}

/// Whether an event makes a short read prove nothing: a FIN or an error
/// may be queued behind the data, or the read stopped at urgent data.
pub fn troubled(ev: &Event) -> bool {
    ev.is_read_closed() || ev.is_write_closed() || ev.is_error() || ev.is_priority()
}

#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    /// Whether a non-blocking connect has completed: Ok(true) connected,
    /// Ok(false) still in progress, Err the connect's failure.
    pub fn connect_done(&self) -> io::Result<bool> {
        if let Some(e) = self.take_error()? {
            return Err(e);
        }
        let r = match self {
            Stream::Tcp(s) => s.peer_addr().map(|_| ()),
            Stream::Unix(s) => s.peer_addr().map(|_| ()),
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Unix(_) => None,
        }
    }
}

/// A tcp client's address as `accept4` returned it, kept with its
/// connection from accept to its last log line and its PROXY header. Never
/// asked of the socket later: `getpeername` fails once the client has
/// reset (the PROXY header then said UNKNOWN, and a backend took the
/// proxy's address for the client's), and it would cost a syscall per
/// connection.
///
/// 19 bytes of alignment 1 (a `SocketAddr` takes 32, `Option` of this one
/// 19 too), so it fits in room a connection slot already has (worker-tcp
/// `conn.rs`, the slot size test). An IPv6 address loses its flow info
/// and scope id, which neither the PROXY header nor a log line needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Peer {
    /// IPv4 in the first 4 bytes.
    ip: [u8; 16],
    port: [u8; 2],
    v6: bool,
}

impl From<std::net::SocketAddr> for Peer {
    fn from(a: std::net::SocketAddr) -> Peer {
        let mut ip = [0u8; 16];
        let v6 = match a.ip() {
            std::net::IpAddr::V4(v4) => {
                ip[..4].copy_from_slice(&v4.octets());
                false
            }
            std::net::IpAddr::V6(v6) => {
                ip = v6.octets();
                true
            }
        };
        Peer {
            ip,
            port: a.port().to_be_bytes(),
            v6,
        }
    }
}

impl Peer {
    pub fn addr(&self) -> std::net::SocketAddr {
        let port = u16::from_be_bytes(self.port);
        if self.v6 {
            std::net::SocketAddr::from((self.ip, port))
        } else {
            let [a, b, c, d, ..] = self.ip;
            std::net::SocketAddr::from(([a, b, c, d], port))
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr().fmt(f)
    }
}

/// " from <address>" for a log line about a client, "" when it has none
/// (a unix client).
pub struct Who(pub Option<Peer>);

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, " from {p}"),
            None => Ok(()),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            Stream::Unix(s) => (&*s).write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
        }
    }
}

/// A listening socket of either family, as handed over by the supervisor.
#[derive(Debug)]
pub enum Listener {
    /// `nodelay`: `TCP_NODELAY` is set on the listener, and Linux gives
    /// each accepted socket the listener's options, so clients need no
    /// `setsockopt` of their own.
    Tcp {
        l: mio::net::TcpListener,
        nodelay: bool,
    },
    Unix(mio::net::UnixListener),
}

impl Listener {
    /// Wrap a listening fd; the family is read back with getsockname.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Listener> {
        use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
        let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(io::Error::from)?;
        let l = match addr.family() {
            Some(AddressFamily::Unix) => {
                let s = std::os::unix::net::UnixListener::from(fd);
                s.set_nonblocking(true)?;
                Listener::Unix(mio::net::UnixListener::from_std(s))
            }
            _ => {
                // Once here rather than once per client.
                let nodelay =
                    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::TcpNoDelay, &true)
                        .is_ok();
                // Accepted sockets inherit it too: the ACK of a client's
                // first bytes waits for our answer to carry it (HAProxy's
                // tcp-smart-accept), one segment less per connection. A
                // client that waits for that ACK before sending more (Nagle,
                // write-write-read) waits for the delayed-ACK timer once,
                // as it would after any Linux server's first quick reply.
                let _ = set_quickack(fd.as_fd(), false);
                let s = std::net::TcpListener::from(fd);
                s.set_nonblocking(true)?;
                Listener::Tcp {
                    l: mio::net::TcpListener::from_std(s),
                    nodelay,
                }
            }
        };
        Ok(l)
    }

    /// accept4(SOCK_NONBLOCK|SOCK_CLOEXEC), with the client's address as
    /// accept4 returned it (no `getpeername` later; None for unix peers).
    /// tcp clients get TCP_NODELAY (from the listener), as a proxy must
    /// not add Nagle delay to what it forwards.
    pub fn accept_from(&self) -> io::Result<(Stream, Option<std::net::SocketAddr>)> {
        match self {
            Listener::Tcp { l, nodelay } => {
                let (s, peer) = l.accept()?;
                if !nodelay {
                    let _ = s.set_nodelay(true);
                }
                Ok((Stream::Tcp(s), Some(peer)))
            }
            Listener::Unix(l) => Ok((Stream::Unix(l.accept()?.0), None)),
        }
    }

    /// [`Listener::accept_from`] without the address.
    pub fn accept(&self) -> io::Result<Stream> {
        self.accept_from().map(|(s, _)| s)
    }
}

impl Source for Listener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp { l, .. } => l.register(r, t, i),
            Listener::Unix(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp { l, .. } => l.reregister(r, t, i),
            Listener::Unix(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp { l, .. } => l.deregister(r),
            Listener::Unix(s) => s.deregister(r),
        }
    }
}

/// `send`/`sendmsg` flag for a connection's last bytes when our FIN
/// follows at once: the kernel holds a partial segment so the FIN rides
/// on it. nix names no `MSG_MORE`; the bit is the kernel's.
pub const MSG_MORE: nix::sys::socket::MsgFlags =
    nix::sys::socket::MsgFlags::from_bits_retain(nix::libc::MSG_MORE);

/// `setsockopt(TCP_QUICKACK)`. Off: the socket is put in Linux's
/// "interactive" mode, where an ACK waits (up to the delayed-ACK timer,
/// 40 ms at least) for data or a FIN to ride on; on: leave it, and send an
/// ACK that is due now. Linux leaves the mode by itself when that timer
/// fires or more than a segment's worth arrives. (nix has no name for it.)
pub fn set_quickack(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let v: nix::libc::c_int = on.into();
    // SAFETY: TCP_QUICKACK reads one int from a pointer valid for its size.
    let r = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_QUICKACK,
            std::ptr::from_ref(&v).cast(),
            std::mem::size_of_val(&v) as nix::libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::other(format!(
            "setsockopt(TCP_QUICKACK, {on}): {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// `shutdown(fd, SHUT_WR)`; ENOTCONN (peer already gone) is not an error.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    match nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("shutdown(SHUT_WR): {e}"),
        )),
    }
}

/// The error is about this process, not the peer: out of fds (ours or the
/// system's) or kernel memory. The accept loop pauses on it; the health
/// checks do not count it against a backend.
pub fn out_of_resources(e: &io::Error) -> bool {
    use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn accepted_clients_have_nodelay_from_the_listener_and_their_address() {
        let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_l.local_addr().unwrap();
        let l = Listener::from_fd(OwnedFd::from(std_l)).unwrap();
        assert!(matches!(l, Listener::Tcp { nodelay: true, .. }));
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, peer) = loop {
            match l.accept_from() {
                Ok(a) => break a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert_eq!(peer, Some(c.local_addr().unwrap()));
        let Stream::Tcp(s) = s else {
            panic!("a tcp client")
        };
        // What the relay relies on to skip a setsockopt per client.
        assert!(
            s.nodelay().unwrap(),
            "TCP_NODELAY inherited from the listener"
        );
    }

    #[test]
    fn a_peer_keeps_what_the_proxy_header_and_logs_need_in_19_bytes() {
        for a in [
            "1.2.3.4:5",
            "[2001:db8::7]:65535",
            "[::ffff:10.0.0.1]:80",
            "0.0.0.0:0",
        ] {
            let a: std::net::SocketAddr = a.parse().unwrap();
            let p = Peer::from(a);
            assert_eq!(p.addr(), a);
            assert_eq!(p.to_string(), a.to_string());
        }
        // A v4-mapped client of a dual-stack listener stays IPv6 (its
        // listener's address, the PROXY header's other half, is too).
        let m = Peer::from(
            "[::ffff:10.0.0.1]:80"
                .parse::<std::net::SocketAddr>()
                .unwrap(),
        );
        assert!(m.addr().is_ipv6());
        assert_eq!(std::mem::size_of::<Option<Peer>>(), 19);
        assert_eq!(std::mem::align_of::<Peer>(), 1);
        assert_eq!(Who(None).to_string(), "");
        assert_eq!(Who(Some(m)).to_string(), " from [::ffff:10.0.0.1]:80");
    }

    #[test]
    fn accepted_clients_start_in_interactive_mode() {
        // Their first ACK waits for our answer to ride on: one segment
        // less per connection than Linux's quick ACKs of a new connection.
        let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_l.local_addr().unwrap();
        let l = Listener::from_fd(OwnedFd::from(std_l)).unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let s = loop {
            match l.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        let mut v: nix::libc::c_int = -1;
        let mut len = std::mem::size_of_val(&v) as nix::libc::socklen_t;
        // SAFETY: TCP_QUICKACK writes one int.
        let r = unsafe {
            nix::libc::getsockopt(
                s.as_raw_fd(),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_QUICKACK,
                std::ptr::from_mut(&mut v).cast(),
                &mut len,
            )
        };
        assert_eq!((r, v), (0, 0), "quick ACKs off, from the listener");
    }
}
