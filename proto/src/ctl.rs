//! Supervisor <-> worker control protocol.
//!
//! Transport: an `AF_UNIX`/`SOCK_SEQPACKET` socketpair, inherited by the
//! worker as fd 3. One datagram = one message = one JSON object (readable in
//! `strace -s 512`), at most [`MAX_MSG`] bytes, with at most [`MAX_FDS`]
//! file descriptors attached by `SCM_RIGHTS`. Every message says how many
//! fds it carries; a count that does not match, a truncated datagram or a
//! truncated control message is an error and every fd that did arrive is
//! closed.
//!
//! A message whose JSON is over [`INLINE_MAX`] bytes (hundreds of routes,
//! a huge link name) travels as a *blob*: its JSON is written to a sealed
//! memfd, and the datagram is only `{"msg":"blob","len":N}` with that memfd
//! attached after the message's own fds. The receiver takes the memfd only
//! when it is sealed against every change (the sender can no longer alter
//! what we validated), holds exactly `len` bytes and `len` is within the
//! message type's cap, then decodes it like an inline message. So no valid
//! configuration is too large for the channel (docs/ARCHITECTURE.md,
//! "Control messages").

use crate::fdpass;
use crate::plan::{Endpoint, Kind};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{self, MsgFlags};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

/// Largest datagram accepted, checked before anything is parsed.
pub const MAX_MSG: usize = 64 * 1024;
/// Message bodies larger than this go in a sealed memfd (a blob). Half a
/// datagram: small enough that a socket buffer holding a few stats
/// reports still takes the datagram.
pub const INLINE_MAX: usize = 32 * 1024;
/// Largest body a blob may carry. A graph is at most 4 MiB (source.rs);
/// its worker configuration is larger (every route repeats fields the
/// link left out), so the planner refuses the links of an endpoint past
/// [`MAX_CONFIG`] and nothing the graph allows reaches this cap.
pub const MAX_BLOB: usize = 16 * 1024 * 1024;
/// Routes of one endpoint may take this much of a blob (its JSON); the
/// rest is room for the limits, log settings and the envelope.
pub const MAX_CONFIG: usize = MAX_BLOB - 64 * 1024;
/// Most fds one message may carry: the kernel's limit per `SCM_RIGHTS`.
pub const MAX_FDS: usize = fdpass::MAX_FDS;
/// Most provider roots one endpoint gets (see `Endpoint::root_pids`): what
/// is left of [`MAX_FDS`] after the listener and a blob's memfd. The
/// planner refuses a link that would bring one more.
pub const MAX_ROOTS: usize = MAX_FDS - 2;
/// The fd number the worker finds its control socket on.
pub const WORKER_CTL_FD: RawFd = 3;
/// The seals a blob must carry: size and content fixed for good.
const BLOB_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE)
    .union(SealFlag::F_SEAL_SEAL);

/// Timeouts and limits a worker runs with (BEHAVIOUR §5 defaults).
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
    /// Size of each relay pipe (`--pipe-size`): a spliced connection holds
    /// at most two, so 2 × this is its kernel memory bound. Defaulted when
    /// absent, as above.
    #[serde(default = "default_pipe_size")]
    pub pipe_size: usize,
    /// How long a connection whose backend cannot be reached (refused,
    /// unreachable, socket missing) is held, retried, before the error
    /// (`--hold-timeout`; 0: not held). Absent: 0, the behaviour of a
    /// sender that knows nothing of holding.
    #[serde(default)]
    pub hold_timeout_ms: u64,
    /// Most connections one worker holds at once (`--max-held`); beyond
    /// it, the error at once.
    #[serde(default = "default_max_held")]
    pub max_held: usize,
    /// L4 health checks (`proto::health`): every backend checked with a
    /// connect this often (`--health-interval`; 0: no checks). Absent: 0.
    #[serde(default)]
    pub health_interval_ms: u64,
    /// A check not connected within this fails (`--health-timeout`).
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// Failures in a row that mark a backend down (`--health-fall`).
    #[serde(default = "default_health_fall")]
    pub health_fall: u32,
    /// Successes in a row that mark it up again (`--health-rise`).
    #[serde(default = "default_health_rise")]
    pub health_rise: u32,
    /// Most connections one route's backend may hold
    /// (`crate::hold::share`): set by the worker from its routes when a
    /// config arrives (`hold::fit`), never sent. 0: not set, `max_held`.
    #[serde(skip)]
    pub held_share: usize,
}

fn default_health_timeout_ms() -> u64 {
    2_000
}

fn default_health_fall() -> u32 {
    2
}

fn default_health_rise() -> u32 {
    1
}

fn default_max_held() -> usize {
    1024
}

fn default_response_timeout_ms() -> u64 {
    30_000
}

fn default_pipe_size() -> usize {
    crate::relay::DEFAULT_PIPE_SIZE
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
            pipe_size: default_pipe_size(),
            hold_timeout_ms: 10_000,
            max_held: default_max_held(),
            health_interval_ms: 5_000,
            health_timeout_ms: default_health_timeout_ms(),
            health_fall: default_health_fall(),
            health_rise: default_health_rise(),
            held_share: 0,
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
    /// Log lines syslog did not take (`log::dropped`). Defaults to 0 so
    /// that either side may be older.
    #[serde(default)]
    pub log_dropped: u64,
    /// Connections held now, waiting for their backend (`proto::hold`).
    /// This and the `held_*` counters below default to 0 so that either
    /// side may be older.
    #[serde(default)]
    pub held: u64,
    /// Connections that were held, over the worker's life.
    #[serde(default)]
    pub held_total: u64,
    /// Held connections that reached their backend in the end.
    #[serde(default)]
    pub held_connected: u64,
    /// Held connections that got the error at the hold timeout.
    #[serde(default)]
    pub held_failed: u64,
    /// Connections not held because `max_held` were held already.
    #[serde(default)]
    pub held_over_limit: u64,
    /// Milliseconds held connections waited, summed (ended holds).
    #[serde(default)]
    pub held_wait_ms: u64,
    /// The longest a held connection waited, in milliseconds.
    #[serde(default)]
    pub held_wait_max_ms: u64,
}

/// Worker -> supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromWorker {
    /// Answer to Init/Update/Drain: `error` is None when applied.
    Ack { seq: u64, error: Option<String> },
    Stats {
        stats: Stats,
        /// Each checked backend's state (`proto::health`); absent while
        /// health checks are off, and from an older worker.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        health: Vec<crate::health::BackendHealth>,
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
    /// Largest JSON body of this type a receiver takes (inline or blob).
    const MAX_BODY: usize = MAX_BLOB;
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
    /// Acks and counters are small; a worker cannot make the supervisor
    /// read and parse megabytes.
    const MAX_BODY: usize = 1024 * 1024;
}

#[derive(Debug)]
pub enum CtlError {
    /// The peer closed the socket.
    Eof,
    /// Non-blocking socket has nothing (recv) or no room (send).
    WouldBlock,
    Sys(&'static str, Errno),
    /// A message body (or datagram) of this many bytes is over its cap.
    TooLarge(usize),
    Truncated,
    TooManyFds,
    FdCount {
        expected: usize,
        got: usize,
    },
    Bad(String),
    /// A blob whose memfd is refused (unsealed, not a memfd, wrong size).
    Blob(String),
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Eof => write!(f, "control socket closed"),
            CtlError::WouldBlock => write!(f, "control socket would block"),
            CtlError::Sys(call, e) => write!(f, "{call} on control socket: {e}"),
            CtlError::TooLarge(n) => write!(f, "control message of {n} bytes is over its cap"),
            CtlError::Truncated => write!(f, "control message truncated (MSG_TRUNC/MSG_CTRUNC)"),
            CtlError::TooManyFds => write!(f, "more than {MAX_FDS} fds attached"),
            CtlError::FdCount { expected, got } => {
                write!(f, "message needs {expected} fds, {got} attached")
            }
            CtlError::Bad(e) => write!(f, "malformed control message: {e}"),
            CtlError::Blob(e) => write!(f, "control message blob refused: {e}"),
        }
    }
}

impl std::error::Error for CtlError {}

/// What one datagram says: a whole message, or that the message is in the
/// blob (the last fd attached) of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<M> {
    Message(M),
    Blob { len: usize },
}

/// The datagram of a blob: `{"msg":"blob","len":N}`, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobHead {
    msg: BlobTag,
    len: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum BlobTag {
    Blob,
}

/// Decode one message body (an inline datagram or a blob's contents) that
/// arrived with `fd_count` fds. Pure: no I/O, no fds touched (the fuzz
/// target's entry point, with [`decode_frame`]).
pub fn decode<M: Message>(body: &[u8], fd_count: usize) -> Result<M, CtlError> {
    if body.len() > M::MAX_BODY {
        return Err(CtlError::TooLarge(body.len()));
    }
    if fd_count > MAX_FDS {
        return Err(CtlError::TooManyFds);
    }
    let msg: M = serde_json::from_slice(body).map_err(|e| CtlError::Bad(e.to_string()))?;
    let expected = msg.fd_count();
    if expected != fd_count {
        return Err(CtlError::FdCount {
            expected,
            got: fd_count,
        });
    }
    Ok(msg)
}

/// Decode one datagram that arrived with `fd_count` fds: a message, or a
/// blob header (then the last fd is the blob and the message's own fds
/// are the others). Pure, like [`decode`].
pub fn decode_frame<M: Message>(datagram: &[u8], fd_count: usize) -> Result<Frame<M>, CtlError> {
    if datagram.len() > MAX_MSG {
        return Err(CtlError::TooLarge(datagram.len()));
    }
    // Tried first: a message is never a blob header (no type has a
    // "blob" variant), and serde stops at the first field that is not
    // the header's, so an ordinary message costs next to nothing here.
    if let Ok(h) = serde_json::from_slice::<BlobHead>(datagram) {
        let BlobTag::Blob = h.msg;
        if fd_count == 0 {
            return Err(CtlError::Blob("blob header without its memfd".into()));
        }
        if fd_count > MAX_FDS {
            return Err(CtlError::TooManyFds);
        }
        let len = usize::try_from(h.len).unwrap_or(usize::MAX);
        if len > M::MAX_BODY {
            return Err(CtlError::TooLarge(len));
        }
        return Ok(Frame::Blob { len });
    }
    decode(datagram, fd_count).map(Frame::Message)
}

/// Send one message with `fds` attached; a body over [`INLINE_MAX`] goes
/// as a blob.
pub fn send<M: Message>(sock: BorrowedFd<'_>, msg: &M, fds: &[RawFd]) -> Result<(), CtlError> {
    let body = serde_json::to_vec(msg).map_err(|e| CtlError::Bad(e.to_string()))?;
    if body.len() <= INLINE_MAX {
        return send_raw(sock, &body, fds);
    }
    send_blob(sock, &body, fds)
}

/// Send `body` in a sealed memfd, attached after `fds`, with a blob
/// header as the datagram.
pub fn send_blob(sock: BorrowedFd<'_>, body: &[u8], fds: &[RawFd]) -> Result<(), CtlError> {
    if body.len() > MAX_BLOB {
        return Err(CtlError::TooLarge(body.len()));
    }
    if fds.len() + 1 > MAX_FDS {
        return Err(CtlError::TooManyFds);
    }
    let blob = sealed_memfd(body)?;
    let mut all = fds.to_vec();
    all.push(blob.as_raw_fd());
    let head = format!(r#"{{"msg":"blob","len":{}}}"#, body.len());
    // Our copy of the memfd closes on return; the datagram holds its own
    // reference until the peer receives (or the socket closes).
    send_raw(sock, head.as_bytes(), &all)
}

/// A memfd holding `body`, sealed against any change (`BLOB_SEALS`).
pub fn sealed_memfd(body: &[u8]) -> Result<OwnedFd, CtlError> {
    let fd = memfd_with_seals()?;
    let mut f = std::fs::File::from(fd);
    f.write_all(body).map_err(|e| {
        CtlError::Sys(
            "write(memfd)",
            Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        )
    })?;
    let fd = OwnedFd::from(f);
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(BLOB_SEALS))
        .map_err(|e| CtlError::Sys("fcntl(F_ADD_SEALS)", e))?;
    Ok(fd)
}

fn memfd_with_seals() -> Result<OwnedFd, CtlError> {
    let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
    // MFD_NOEXEC_SEAL (Linux 6.3): the blob can never be made executable,
    // and a kernel with vm.memfd_noexec=2 refuses memfds without it. An
    // older kernel does not know the flag (EINVAL): then without it.
    let noexec = MemFdCreateFlag::from_bits_retain(nix::libc::MFD_NOEXEC_SEAL);
    match memfd_create(c"pvx-ctl-blob", flags | noexec) {
        Err(Errno::EINVAL) => memfd_create(c"pvx-ctl-blob", flags),
        r => r,
    }
    .map_err(|e| CtlError::Sys("memfd_create", e))
}

/// The contents of a received blob: `len` bytes from a memfd sealed with
/// `BLOB_SEALS`. The memfd is closed whatever happens.
pub fn read_blob(blob: OwnedFd, len: usize) -> Result<Vec<u8>, CtlError> {
    let seals = fcntl(blob.as_raw_fd(), FcntlArg::F_GET_SEALS)
        .map_err(|e| CtlError::Blob(format!("not a memfd (F_GET_SEALS: {e})")))?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(BLOB_SEALS) {
        return Err(CtlError::Blob(format!(
            "memfd not sealed against changes (seals {seals:?})"
        )));
    }
    let st = crate::stat::fstat(blob.as_fd()).map_err(|e| CtlError::Sys("statx(blob)", e))?;
    if st.kind() != nix::libc::S_IFREG {
        return Err(CtlError::Blob("not a regular file".into()));
    }
    if st.size != len as u64 {
        return Err(CtlError::Blob(format!(
            "memfd holds {} bytes, its header says {len}",
            st.size
        )));
    }
    let f = std::fs::File::from(blob);
    let mut body = vec![0u8; len];
    f.read_exact_at(&mut body, 0)
        .map_err(|e| CtlError::Blob(format!("reading the memfd: {e}")))?;
    Ok(body)
}

/// Send raw bytes as one datagram (also used by tests to send garbage).
pub fn send_raw(sock: BorrowedFd<'_>, body: &[u8], fds: &[RawFd]) -> Result<(), CtlError> {
    if body.len() > MAX_MSG {
        return Err(CtlError::TooLarge(body.len()));
    }
    match fdpass::send_with_fds(sock.as_raw_fd(), &[IoSlice::new(body)], fds) {
        Ok(_) => Ok(()),
        Err(Errno::EAGAIN) => Err(CtlError::WouldBlock),
        Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => Err(CtlError::Eof),
        Err(e) => Err(CtlError::Sys("sendmsg", e)),
    }
}

/// Receive one message (inline or blob). Fds arrive close-on-exec; on any
/// error every fd that arrived is closed (they are owned, and dropped).
pub fn recv<M: Message>(sock: BorrowedFd<'_>) -> Result<(M, Vec<OwnedFd>), CtlError> {
    let (datagram, mut fds) = recv_raw(sock)?;
    match decode_frame::<M>(&datagram, fds.len())? {
        Frame::Message(m) => Ok((m, fds)),
        Frame::Blob { len } => {
            let blob = fds
                .pop()
                .ok_or_else(|| CtlError::Blob("blob header without its memfd".into()))?;
            let body = read_blob(blob, len)?;
            let m = decode::<M>(&body, fds.len())?;
            Ok((m, fds))
        }
    }
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
    let r = match fdpass::recv_with_fds(sock.as_raw_fd(), &mut buf) {
        Ok(r) => r,
        Err(fdpass::RecvError::Sys(Errno::EAGAIN)) => return Err(CtlError::WouldBlock),
        Err(fdpass::RecvError::Sys(Errno::ECONNRESET)) => return Err(CtlError::Eof),
        Err(fdpass::RecvError::Sys(e)) => return Err(CtlError::Sys("recvmsg", e)),
        Err(fdpass::RecvError::ControlTruncated { .. }) => return Err(CtlError::Truncated),
    };
    let (n, fds) = (r.bytes, r.fds);
    if r.truncated || n > MAX_MSG {
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

    /// A worker and a supervisor of different ages still understand each
    /// other: the hold and health fields default to "off" and to 0.
    #[test]
    fn hold_and_health_fields_default_when_absent() {
        let mut v = serde_json::to_value(Limits::default()).unwrap();
        for k in [
            "hold_timeout_ms",
            "max_held",
            "health_interval_ms",
            "health_timeout_ms",
            "health_fall",
            "health_rise",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        let l: Limits = serde_json::from_value(v).unwrap();
        assert_eq!((l.hold_timeout_ms, l.health_interval_ms), (0, 0));
        assert_eq!((l.max_held, l.health_fall, l.health_rise), (1024, 2, 1));
        let old = r#"{"msg":"stats","stats":{"active":1,"total":2,"bytes_in":3,"bytes_out":4,"errors":0}}"#;
        match serde_json::from_str::<FromWorker>(old).unwrap() {
            FromWorker::Stats { stats, health } => {
                assert_eq!((stats.total, stats.held, stats.held_total), (2, 0, 0));
                assert!(health.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // Without checks, a report carries no health field at all.
        let msg = FromWorker::Stats {
            stats: Stats::default(),
            health: Vec::new(),
        };
        assert!(!serde_json::to_string(&msg).unwrap().contains("health"));
    }
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

    fn config_with_routes(n: usize, name_len: usize) -> WorkerConfig {
        let links: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"type":"http","name":"{i}-{}","consumer":"E","target":"127.0.0.1:80/r{i}","socket":"127.0.0.1:1"}}"#,
                    "n".repeat(name_len)
                )
            })
            .collect();
        WorkerConfig {
            endpoint: crate::plan::from_graph(&format!("[{}]", links.join(",")))
                .unwrap()
                .endpoints
                .remove(0),
            limits: Limits::default(),
            log_target: "stderr".into(),
            log_level: "info".into(),
        }
    }

    /// How many of our fds are the memfd named `name`: a leak check that
    /// other tests running in parallel threads cannot disturb.
    fn fds_named(name: &str) -> usize {
        let want = format!("/memfd:{name} (deleted)");
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.to_str() == Some(want.as_str()))
            .count()
    }

    fn memfd_named(name: &str, body: &[u8], seals: SealFlag) -> OwnedFd {
        let cname = std::ffi::CString::new(name).unwrap();
        let fd = memfd_create(
            &cname,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(body).unwrap();
        let fd = OwnedFd::from(f);
        if !seals.is_empty() {
            fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
        }
        fd
    }

    #[test]
    fn a_large_init_travels_as_a_sealed_blob_with_its_fds() {
        let (a, b) = socketpair().unwrap();
        let (p, _q) = nix::unistd::pipe().unwrap();
        let config = config_with_routes(400, 200);
        let m = ToWorker::Init { seq: 7, config };
        let body = serde_json::to_vec(&m).unwrap();
        assert!(body.len() > MAX_MSG, "{} bytes", body.len());
        send(a.as_fd(), &m, &[p.as_raw_fd()]).unwrap();
        // On the wire: a short header and one more fd than the message's.
        let (head, fds) = recv_raw(b.as_fd()).unwrap();
        assert_eq!(
            String::from_utf8(head.clone()).unwrap(),
            format!(r#"{{"msg":"blob","len":{}}}"#, body.len())
        );
        assert_eq!(fds.len(), 2);
        drop((head, fds));
        send(a.as_fd(), &m, &[p.as_raw_fd()]).unwrap();
        let (got, fds): (ToWorker, _) = recv(b.as_fd()).unwrap();
        assert_eq!(got, m);
        assert_eq!(fds.len(), 1, "the blob's memfd is not handed out");
        assert_eq!(
            nix::sys::stat::fstat(fds[0].as_raw_fd()).unwrap().st_mode & nix::libc::S_IFMT,
            nix::libc::S_IFIFO,
            "the listener slot holds the pipe, not the blob"
        );
        assert_eq!(fds_named("pvx-ctl-blob"), 0, "no blob memfd left open");
    }

    #[test]
    fn small_messages_stay_inline() {
        let (a, b) = socketpair().unwrap();
        let m = ToWorker::Drain {
            seq: 1,
            deadline_ms: 5,
        };
        send(a.as_fd(), &m, &[]).unwrap();
        let (head, fds) = recv_raw(b.as_fd()).unwrap();
        assert_eq!(head, serde_json::to_vec(&m).unwrap());
        assert!(fds.is_empty());
    }

    /// Send `head` with `blob` (after `extra`), expect `recv` to refuse it
    /// with an error matching `is`, and no copy of the blob left in this
    /// process but the sender's.
    fn refused(head: &str, name: &str, blob: OwnedFd, is: fn(&CtlError) -> bool) {
        let (a, b) = socketpair().unwrap();
        // A message fd before the blob (as an init's listener would be).
        let (p, q) = nix::unistd::pipe().unwrap();
        let pipe = std::fs::read_link(format!("/proc/self/fd/{}", p.as_raw_fd())).unwrap();
        let pipes = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| *l == pipe)
                .count()
        };
        send_raw(
            a.as_fd(),
            head.as_bytes(),
            &[p.as_raw_fd(), blob.as_raw_fd()],
        )
        .unwrap();
        assert_eq!((fds_named(name), pipes()), (1, 2));
        let r = recv::<ToWorker>(b.as_fd());
        match r {
            Err(ref e) if is(e) => {}
            other => panic!("{head}: unexpected {other:?}"),
        }
        assert_eq!(fds_named(name), 1, "{head}: the received memfd leaked");
        assert_eq!(pipes(), 2, "{head}: the message's other fd leaked");
        drop((blob, p, q));
        assert_eq!(fds_named(name), 0);
    }

    fn drain_json() -> Vec<u8> {
        br#"{"msg":"drain","seq":1,"deadline_ms":5}"#.to_vec()
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let body = drain_json();
        let head = format!(r#"{{"msg":"blob","len":{}}}"#, body.len());
        refused(
            &head,
            "unsealed",
            memfd_named("unsealed", &body, SealFlag::empty()),
            |e| matches!(e, CtlError::Blob(m) if m.contains("not sealed")),
        );
        // Sealed for size but still writable: the sender could rewrite it.
        refused(
            &head,
            "writable",
            memfd_named(
                "writable",
                &body,
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
            |e| matches!(e, CtlError::Blob(m) if m.contains("not sealed")),
        );
    }

    #[test]
    fn a_size_mismatch_is_refused() {
        let body = drain_json();
        for len in [body.len() - 1, body.len() + 1, 0] {
            refused(
                &format!(r#"{{"msg":"blob","len":{len}}}"#),
                "mismatch",
                memfd_named("mismatch", &body, BLOB_SEALS),
                |e| matches!(e, CtlError::Blob(m) if m.contains("header says")),
            );
        }
    }

    /// After 2038-01-19 a fresh memfd's timestamps no longer fit a 32-bit
    /// time_t: a blob must still be read (an armhf worker used to refuse
    /// it with EOVERFLOW from glibc's fstat, and so every large config).
    #[test]
    fn a_blob_dated_after_2038_is_read() {
        let body = drain_json();
        let f = std::fs::File::from(sealed_memfd(&body).unwrap());
        crate::stat::date_after_2038(&f);
        let got = read_blob(OwnedFd::from(f), body.len()).expect("a blob dated 2040");
        assert_eq!(got, body);
    }

    #[test]
    fn an_oversized_blob_is_refused_before_reading() {
        // The header alone decides: nothing of 17 MiB is allocated.
        refused(
            &format!(r#"{{"msg":"blob","len":{}}}"#, MAX_BLOB + 1),
            "oversized",
            memfd_named("oversized", b"{}", BLOB_SEALS),
            |e| matches!(e, CtlError::TooLarge(n) if *n == MAX_BLOB + 1),
        );
        refused(
            r#"{"msg":"blob","len":18446744073709551615}"#,
            "oversized",
            memfd_named("oversized", b"{}", BLOB_SEALS),
            |e| matches!(e, CtlError::TooLarge(_)),
        );
        assert!(matches!(
            send_blob(
                socketpair().unwrap().0.as_fd(),
                &vec![b' '; MAX_BLOB + 1],
                &[]
            ),
            Err(CtlError::TooLarge(_))
        ));
    }

    #[test]
    fn a_blob_that_is_not_a_memfd_or_lies_inside_is_refused() {
        let (a, b) = socketpair().unwrap();
        let (p, _q) = nix::unistd::pipe().unwrap();
        send_raw(a.as_fd(), br#"{"msg":"blob","len":2}"#, &[p.as_raw_fd()]).unwrap();
        assert!(matches!(
            recv::<ToWorker>(b.as_fd()),
            Err(CtlError::Blob(m)) if m.contains("not a memfd")
        ));
        // Sealed and sized right, but its message needs an fd it lacks,
        // or is itself another blob header.
        for body in [
            br#"{"msg":"update","seq":1,"config":null}"#.to_vec(),
            br#"{"msg":"blob","len":2}"#.to_vec(),
        ] {
            let head = format!(r#"{{"msg":"blob","len":{}}}"#, body.len());
            refused(
                &head,
                "inner",
                memfd_named("inner", &body, BLOB_SEALS),
                |e| matches!(e, CtlError::Bad(_)),
            );
        }
        // A header without any fd, or with extra fields.
        assert!(matches!(
            decode_frame::<ToWorker>(br#"{"msg":"blob","len":2}"#, 0),
            Err(CtlError::Blob(_))
        ));
        assert!(matches!(
            decode_frame::<ToWorker>(br#"{"msg":"blob","len":2,"x":1}"#, 1),
            Err(CtlError::Bad(_))
        ));
    }

    #[test]
    fn worker_messages_have_a_smaller_cap() {
        assert!(matches!(
            decode_frame::<FromWorker>(
                format!(r#"{{"msg":"blob","len":{}}}"#, 2 * 1024 * 1024).as_bytes(),
                1
            ),
            Err(CtlError::TooLarge(_))
        ));
        assert_eq!(
            decode_frame::<ToWorker>(
                format!(r#"{{"msg":"blob","len":{}}}"#, 2 * 1024 * 1024).as_bytes(),
                1
            )
            .unwrap(),
            Frame::Blob {
                len: 2 * 1024 * 1024
            }
        );
    }
}
