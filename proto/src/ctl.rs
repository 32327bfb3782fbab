//! Supervisor <-> worker control protocol.
//!
//! Transport: an `AF_UNIX`/`SOCK_SEQPACKET` socketpair, inherited by the
//! worker as fd 3. One datagram = one message = one JSON object (readable in
//! `strace -s 512`), at most [`MAX_MSG`] bytes, with at most [`MAX_FDS`]
//! file descriptors attached by `SCM_RIGHTS`. Every message says how many
//! fds it carries; a count that does not match, a truncated datagram or a
//! truncated control message is an error and every fd that did arrive is
//! closed. See docs/ARCHITECTURE.md for the message table.

use crate::plan::{Endpoint, Kind};
use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Largest control message accepted, checked before anything is parsed.
pub const MAX_MSG: usize = 64 * 1024;
/// Most fds one message may carry: the listener plus provider roots.
pub const MAX_FDS: usize = 32;
/// Most provider roots one endpoint gets (see `Endpoint::root_pids`).
pub const MAX_ROOTS: usize = MAX_FDS - 1;
/// The fd number the worker finds its control socket on.
pub const WORKER_CTL_FD: RawFd = 3;

/// Timeouts and limits a worker runs with (SPEC §5 defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub connect_timeout_ms: u64,
    /// Total time a connect-refused backend is retried before giving up.
    pub connect_retry_ms: u64,
    pub head_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// tcp: close a connection with no traffic for this long (0 = never).
    pub tcp_idle_timeout_ms: u64,
    /// A half-closed connection with no traffic for this long is closed.
    pub half_close_linger_ms: u64,
    pub max_conns: usize,
    pub max_head_bytes: usize,
    /// http: a backend that has the whole request but sends no response
    /// head for this long gets the client a 504. Defaulted when absent, so
    /// a supervisor that does not know the field still talks to workers.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
}

fn default_response_timeout_ms() -> u64 {
    30_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout_ms: 5_000,
            connect_retry_ms: 400,
            head_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            tcp_idle_timeout_ms: 0,
            half_close_linger_ms: 60_000,
            max_conns: 4096,
            max_head_bytes: 16 * 1024,
            response_timeout_ms: default_response_timeout_ms(),
        }
    }
}

/// Everything a worker needs to serve its endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub endpoint: Endpoint,
    pub limits: Limits,
    /// `syslog` or `stderr`.
    pub log_target: String,
    pub log_level: String,
}

impl WorkerConfig {
    pub fn kind(&self) -> Kind {
        self.endpoint.kind
    }
}

/// Supervisor -> worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToWorker {
    /// First message; carries the listening socket (1 fd).
    Init { seq: u64, config: WorkerConfig },
    /// New routes / backends for the running endpoint; open connections stay.
    Update { seq: u64, config: WorkerConfig },
    /// Stop accepting, finish open connections, exit by the deadline.
    Drain { seq: u64, deadline_ms: u64 },
}

impl ToWorker {
    /// Init carries the listening socket; Init and Update both carry one
    /// provider root per `config.endpoint.root_pids()`, in that order. The
    /// count follows from the configuration, so both ends agree on it
    /// without a field of its own.
    pub fn fds(&self) -> usize {
        match self {
            ToWorker::Init { config, .. } => 1 + config.endpoint.root_pids().len(),
            ToWorker::Update { config, .. } => config.endpoint.root_pids().len(),
            ToWorker::Drain { .. } => 0,
        }
    }
}

/// Counters a worker reports; totals since the worker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub active: u64,
    pub total: u64,
    /// Bytes from clients towards backends.
    pub bytes_in: u64,
    /// Bytes from backends towards clients.
    pub bytes_out: u64,
    pub errors: u64,
}

/// Worker -> supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromWorker {
    /// Answer to Init/Update/Drain: `error` is None when applied.
    Ack {
        seq: u64,
        error: Option<String>,
    },
    Stats {
        stats: Stats,
    },
}

impl FromWorker {
    pub fn fds(&self) -> usize {
        0
    }
}

/// A message type that knows how many fds it must arrive with.
pub trait Message: Serialize + for<'de> Deserialize<'de> {
    fn fd_count(&self) -> usize;
}
impl Message for ToWorker {
    fn fd_count(&self) -> usize {
        self.fds()
    }
}
impl Message for FromWorker {
    fn fd_count(&self) -> usize {
        self.fds()
    }
}

#[derive(Debug)]
pub enum CtlError {
    /// The peer closed the socket.
    Eof,
    /// Non-blocking socket has nothing (recv) or no room (send).
    WouldBlock,
    Sys(&'static str, Errno),
    TooLarge(usize),
    Truncated,
    TooManyFds,
    FdCount {
        expected: usize,
        got: usize,
    },
    Bad(String),
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Eof => write!(f, "control socket closed"),
            CtlError::WouldBlock => write!(f, "control socket would block"),
            CtlError::Sys(call, e) => write!(f, "{call} on control socket: {e}"),
            CtlError::TooLarge(n) => write!(f, "control message of {n} bytes exceeds {MAX_MSG}"),
            CtlError::Truncated => write!(f, "control message truncated (MSG_TRUNC/MSG_CTRUNC)"),
            CtlError::TooManyFds => write!(f, "more than {MAX_FDS} fds attached"),
            CtlError::FdCount { expected, got } => {
                write!(f, "message needs {expected} fds, {got} attached")
            }
            CtlError::Bad(e) => write!(f, "malformed control message: {e}"),
        }
    }
}

impl std::error::Error for CtlError {}

/// Send one message with `fds` attached.
pub fn send<M: Message>(sock: BorrowedFd<'_>, msg: &M, fds: &[RawFd]) -> Result<(), CtlError> {
    let body = serde_json::to_vec(msg).map_err(|e| CtlError::Bad(e.to_string()))?;
    send_raw(sock, &body, fds)
}

/// Send raw bytes as one datagram (also used by tests to send garbage).
pub fn send_raw(sock: BorrowedFd<'_>, body: &[u8], fds: &[RawFd]) -> Result<(), CtlError> {
    if body.len() > MAX_MSG {
        return Err(CtlError::TooLarge(body.len()));
    }
    let iov = [IoSlice::new(body)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    match socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    ) {
        Ok(_) => Ok(()),
        Err(Errno::EAGAIN) => Err(CtlError::WouldBlock),
        Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => Err(CtlError::Eof),
        Err(e) => Err(CtlError::Sys("sendmsg", e)),
    }
}

/// Receive one message. Fds arrive close-on-exec; on any error every fd that
/// arrived is closed (they are owned, and dropped).
pub fn recv<M: Message>(sock: BorrowedFd<'_>) -> Result<(M, Vec<OwnedFd>), CtlError> {
    let (body, fds) = recv_raw(sock)?;
    let msg = decode(&body, fds.len())?;
    Ok((msg, fds))
}

/// Interpret one received datagram that arrived with `fds` fds: the pure
/// half of [`recv`] (no socket), also what the fuzz target drives.
pub fn decode<M: Message>(body: &[u8], fds: usize) -> Result<M, CtlError> {
    let msg: M = serde_json::from_slice(body).map_err(|e| CtlError::Bad(e.to_string()))?;
    let expected = msg.fd_count();
    if expected != fds {
        return Err(CtlError::FdCount { expected, got: fds });
    }
    Ok(msg)
}

/// Receive one datagram and its fds without interpreting it.
pub fn recv_raw(sock: BorrowedFd<'_>) -> Result<(Vec<u8>, Vec<OwnedFd>), CtlError> {
    // Peek at the datagram's real length (MSG_TRUNC) and allocate just
    // that, one byte more than the cap at most: a fixed 64 KiB buffer
    // would stay resident (stack) or cached (heap) in an otherwise tiny
    // process, and an oversized datagram still shows as truncated.
    let len = match socket::recv(
        sock.as_raw_fd(),
        &mut [0u8; 1],
        MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => n,
        Err(Errno::EAGAIN) => return Err(CtlError::WouldBlock),
        Err(Errno::ECONNRESET) => return Err(CtlError::Eof),
        Err(e) => return Err(CtlError::Sys("recv(MSG_PEEK)", e)),
    };
    let mut buf = vec![0u8; len.min(MAX_MSG) + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        );
        let r = match r {
            Ok(r) => r,
            Err(Errno::EAGAIN) => return Err(CtlError::WouldBlock),
            Err(Errno::ECONNRESET) => return Err(CtlError::Eof),
            Err(e) => return Err(CtlError::Sys("recvmsg", e)),
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = r.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these fds for us; we are their only owner.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        (r.bytes, r.flags, fds)
    };
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || n > MAX_MSG {
        return Err(if n > MAX_MSG {
            CtlError::TooLarge(n)
        } else {
            CtlError::Truncated
        });
    }
    if n == 0 && fds.is_empty() {
        // recvmsg returns 0 both for an empty datagram and for EOF; only a
        // hang-up means the peer is gone.
        let mut pfd = [nix::poll::PollFd::new(sock, nix::poll::PollFlags::POLLIN)];
        let hup = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).is_ok_and(|_| {
            pfd[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
        });
        return Err(if hup {
            CtlError::Eof
        } else {
            CtlError::Bad("empty control message".into())
        });
    }
    if fds.len() > MAX_FDS {
        return Err(CtlError::TooManyFds);
    }
    Ok((buf[..n].to_vec(), fds))
}

/// A close-on-exec SEQPACKET pair: (supervisor end, worker end).
pub fn socketpair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC | socket::SockFlag::SOCK_NONBLOCK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn roundtrip_with_fd() {
        let (a, b) = socketpair().unwrap();
        let (p, _q) = nix::unistd::pipe().unwrap();
        let cfg = WorkerConfig {
            endpoint: crate::plan::from_graph(
                r#"[{"type":"tcp","name":"a","consumer":"E","target":"127.0.0.1:9","socket":"127.0.0.1:1"}]"#,
            )
            .unwrap()
            .endpoints
            .remove(0),
            limits: Limits::default(),
            log_target: "stderr".into(),
            log_level: "info".into(),
        };
        let m = ToWorker::Init {
            seq: 1,
            config: cfg,
        };
        send(a.as_fd(), &m, &[p.as_raw_fd()]).unwrap();
        let (got, fds): (ToWorker, _) = recv(b.as_fd()).unwrap();
        assert_eq!(got, m);
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn wrong_fd_count_and_garbage_are_errors_not_panics() {
        let (a, b) = socketpair().unwrap();
        send(
            a.as_fd(),
            &ToWorker::Drain {
                seq: 1,
                deadline_ms: 5,
            },
            &[],
        )
        .unwrap();
        let (p, _q) = nix::unistd::pipe().unwrap();
        // Drain must carry no fd.
        send_raw(
            a.as_fd(),
            br#"{"msg":"drain","seq":2,"deadline_ms":1}"#,
            &[p.as_raw_fd()],
        )
        .unwrap();
        send_raw(a.as_fd(), b"\x00\xffnot json", &[]).unwrap();
        send_raw(a.as_fd(), br#"{"msg":"init","seq":3}"#, &[]).unwrap();
        assert!(recv::<ToWorker>(b.as_fd()).is_ok());
        assert!(matches!(
            recv::<ToWorker>(b.as_fd()),
            Err(CtlError::FdCount {
                expected: 0,
                got: 1
            })
        ));
        assert!(matches!(recv::<ToWorker>(b.as_fd()), Err(CtlError::Bad(_))));
        assert!(matches!(recv::<ToWorker>(b.as_fd()), Err(CtlError::Bad(_))));
        assert!(matches!(
            recv::<ToWorker>(b.as_fd()),
            Err(CtlError::WouldBlock)
        ));
        assert!(matches!(
            send_raw(a.as_fd(), &vec![b'x'; MAX_MSG + 1], &[]),
            Err(CtlError::TooLarge(_))
        ));
        drop(a);
        assert!(matches!(recv::<ToWorker>(b.as_fd()), Err(CtlError::Eof)));
    }

    #[test]
    fn decode_checks_the_fd_count_without_a_socket() {
        let drain = br#"{"msg":"drain","seq":2,"deadline_ms":1}"#;
        assert!(matches!(
            decode::<ToWorker>(drain, 0),
            Ok(ToWorker::Drain { seq: 2, .. })
        ));
        assert!(matches!(
            decode::<ToWorker>(drain, 1),
            Err(CtlError::FdCount {
                expected: 0,
                got: 1
            })
        ));
        assert!(matches!(
            decode::<FromWorker>(b"\xff", 0),
            Err(CtlError::Bad(_))
        ));
    }

    #[test]
    fn too_many_fds_are_closed() {
        let (a, b) = socketpair().unwrap();
        let pipes: Vec<_> = (0..3).map(|_| nix::unistd::pipe().unwrap()).collect();
        let raw: Vec<RawFd> = pipes
            .iter()
            .flat_map(|(r, w)| [r.as_raw_fd(), w.as_raw_fd()])
            .collect();
        send_raw(a.as_fd(), b"{}", &raw).unwrap();
        assert!(recv::<ToWorker>(b.as_fd()).is_err());
    }
}
