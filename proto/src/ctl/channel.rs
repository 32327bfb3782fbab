//! The control socket itself: one `SOCK_SEQPACKET` datagram per message
//! with its fds, a large message as a blob, and the pair the supervisor
//! makes for each worker.

use super::blob::{read_blob, sealed_memfd};
use super::codec::{blob_head, decode, decode_frame, Frame};
use super::error::CtlError;
use super::messages::{FromWorker, Message, ToWorker};
use crate::fdpass;
use crate::limits::{INLINE_MAX, MAX_BLOB, MAX_FDS, MAX_MSG};
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The fd number the worker finds its control socket on.
pub const WORKER_CTL_FD: RawFd = 3;

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
    let head = blob_head(body.len());
    // Our copy of the memfd closes on return; the datagram holds its own
    // reference until the peer receives (or the socket closes).
    send_raw(sock, head.as_bytes(), &all)
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

/// A worker's end of the channel: [`recv`] of a [`ToWorker`], [`send`] of
/// a [`FromWorker`], built here. Generic code is built in the crate that
/// names its types: called with them from the `runtime` crate, these made
/// a second copy of the serde code the supervisor already shares with
/// this crate (+13,968 bytes of the executable when runtime became its own
/// crate, issue 19).
pub fn recv_to_worker(sock: BorrowedFd<'_>) -> Result<(ToWorker, Vec<OwnedFd>), CtlError> {
    recv(sock)
}

/// See [`recv_to_worker`].
pub fn send_from_worker(
    sock: BorrowedFd<'_>,
    msg: &FromWorker,
    fds: &[RawFd],
) -> Result<(), CtlError> {
    send(sock, msg, fds)
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
