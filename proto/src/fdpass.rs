//! The one `SCM_RIGHTS` send and receive of pv-xconnect. The control
//! channel (`ctl.rs`: listeners, provider roots, namespace helpers) and the
//! unix relay (fds a client passes to its provider) both go through here,
//! so the fd hygiene lives in one place:
//!
//! - fds arrive close-on-exec (`MSG_CMSG_CLOEXEC`) and as `OwnedFd`, so an
//!   error path can never leak one;
//! - room for the kernel's maximum per message (`SCM_MAX_FD`, 253), so
//!   `MSG_CTRUNC` can only mean a real fault (the receiver's fd limit, an
//!   LSM), never "our buffer was small";
//! - with `MSG_CTRUNC` the fds that did arrive are closed and the message
//!   is refused: the bytes and their fds no longer match (systemd #15457).

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self, ControlMessage, MsgFlags};
use std::io::IoSlice;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The kernel's limit of fds in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// What one `recvmsg` brought.
#[derive(Debug)]
pub struct Received {
    /// Bytes placed in the buffer (0 = EOF on a stream, or an empty datagram).
    pub bytes: usize,
    /// The datagram was longer than the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// Every fd that arrived, owned: dropping them closes them.
    pub fds: Vec<OwnedFd>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// `recvmsg` failed (`EAGAIN` included; callers decide what it means).
    Sys(Errno),
    /// `MSG_CTRUNC`: the kernel could not hand over every fd. The `closed`
    /// ones that did arrive have been closed.
    ControlTruncated { closed: usize },
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Sys(e) => write!(f, "recvmsg: {e}"),
            RecvError::ControlTruncated { closed } => write!(
                f,
                "recvmsg: control data truncated (MSG_CTRUNC); closed the {closed} fd(s) that arrived"
            ),
        }
    }
}

impl std::error::Error for RecvError {}

/// One non-blocking `recvmsg` into `buf`, with room for [`MAX_FDS`] fds.
/// `EINTR` is retried here; `EAGAIN` is returned as `Sys(EAGAIN)`.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> Result<Received, RecvError> {
    recv_with_room::<MAX_FDS>(sock, buf)
}

fn recv_with_room<const ROOM: usize>(sock: RawFd, buf: &mut [u8]) -> Result<Received, RecvError> {
    // Raw recvmsg rather than nix's: nix refuses to walk the control
    // messages once MSG_CTRUNC is set, and then the fds the kernel did
    // install could not be found to close (the leak this module exists to
    // prevent). The kernel writes only whole headers, within
    // msg_controllen, so CMSG_FIRSTHDR/CMSG_NXTHDR stay in bounds.
    let space = socket::cmsg_space::<[RawFd; ROOM]>();
    // u64 words: the control buffer must be aligned for cmsghdr.
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut mhdr: libc::msghdr = unsafe { std::mem::zeroed() };
    mhdr.msg_iov = &mut iov;
    mhdr.msg_iovlen = 1;
    mhdr.msg_control = cbuf.as_mut_ptr().cast();
    mhdr.msg_controllen = space as _;
    let bytes = loop {
        // SAFETY: mhdr points at live buffers of the lengths it states.
        let n =
            unsafe { libc::recvmsg(sock, &mut mhdr, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
        if n >= 0 {
            break n as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(RecvError::Sys(e)),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the headers the kernel wrote, bounded by msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&mhdr) };
    while !c.is_null() {
        // SAFETY: c is a header inside cbuf (CMSG_FIRSTHDR/NXTHDR checked).
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: the data of this header follows it inside cbuf.
            let data = unsafe { libc::CMSG_DATA(c) };
            let head = data as usize - c as usize;
            let n = (h.cmsg_len as usize).saturating_sub(head) / std::mem::size_of::<RawFd>();
            for i in 0..n {
                // SAFETY: i < n fds lie within cmsg_len; the kernel just
                // installed each in our table and nothing else knows it.
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above; returns null past msg_controllen.
        c = unsafe { libc::CMSG_NXTHDR(&mhdr, c) };
    }
    if mhdr.msg_flags & libc::MSG_CTRUNC != 0 {
        let closed = fds.len();
        drop(fds);
        return Err(RecvError::ControlTruncated { closed });
    }
    Ok(Received {
        bytes,
        truncated: mhdr.msg_flags & libc::MSG_TRUNC != 0,
        fds,
    })
}

/// One non-blocking `sendmsg` of `iov` with `fds` attached (none: no
/// control message at all). `EINTR` is retried; `EPIPE` comes back as an
/// error, never as SIGPIPE. Returns the bytes the kernel took; the fds go
/// with the first byte, so a caller that sends the rest later must not
/// send the fds again.
pub fn send_with_fds(sock: RawFd, iov: &[IoSlice<'_>], fds: &[RawFd]) -> Result<usize, Errno> {
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match socket::sendmsg::<()>(
            sock,
            iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;

    /// Our fds that are the memfd named `name`: a leak count that tests
    /// running in parallel threads (opening and closing fds) cannot skew.
    fn fds_named(name: &str) -> usize {
        let want = format!("/memfd:{name} (deleted)");
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_str() == Some(want.as_str()))
                .count()
        })
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    fn memfds(n: usize) -> Vec<OwnedFd> {
        named_memfds(n, c"fdpass-test")
    }

    fn named_memfds(n: usize, name: &std::ffi::CStr) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| {
                nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
                    .expect("memfd")
            })
            .collect()
    }

    #[test]
    fn fds_arrive_owned_and_cloexec() {
        let (a, b) = pair();
        let sent = memfds(3);
        let raw: Vec<RawFd> = sent.iter().map(|f| f.as_raw_fd()).collect();
        assert_eq!(
            send_with_fds(a.as_raw_fd(), &[IoSlice::new(b"hi")], &raw),
            Ok(2)
        );
        let mut buf = [0u8; 8];
        let r = recv_with_fds(b.as_raw_fd(), &mut buf).expect("recv");
        assert_eq!((r.bytes, r.truncated, r.fds.len()), (2, false, 3));
        for fd in &r.fds {
            let flags =
                nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
            assert_ne!(
                flags & libc_fd_cloexec(),
                0,
                "fd {} not close-on-exec",
                fd.as_raw_fd()
            );
        }
    }

    fn libc_fd_cloexec() -> i32 {
        nix::fcntl::FdFlag::FD_CLOEXEC.bits()
    }

    #[test]
    fn the_kernel_maximum_fits() {
        let (a, b) = pair();
        let sent = memfds(MAX_FDS);
        let raw: Vec<RawFd> = sent.iter().map(|f| f.as_raw_fd()).collect();
        send_with_fds(a.as_raw_fd(), &[IoSlice::new(b"x")], &raw).expect("send 253");
        let mut buf = [0u8; 8];
        let r = recv_with_fds(b.as_raw_fd(), &mut buf).expect("recv 253");
        assert_eq!(r.fds.len(), MAX_FDS);
    }

    #[test]
    fn ctrunc_closes_every_fd_that_arrived_and_refuses() {
        let (a, b) = pair();
        let sent = named_memfds(8, c"fdpass-ctrunc");
        let raw: Vec<RawFd> = sent.iter().map(|f| f.as_raw_fd()).collect();
        send_with_fds(a.as_raw_fd(), &[IoSlice::new(b"x")], &raw).expect("send");
        drop(sent);
        // In flight only: none of them in our fd table.
        assert_eq!(fds_named("fdpass-ctrunc"), 0);
        let mut buf = [0u8; 8];
        // Room for 4 of the 8: the kernel installs 4 and sets MSG_CTRUNC.
        let r = recv_with_room::<4>(b.as_raw_fd(), &mut buf);
        if let Ok(got) = &r {
            let why = "qemu-user receives into a host control buffer twice the guest's, so \
                       the kernel installs all 8 fds and sets no MSG_CTRUNC; qemu copies the 4 \
                       that fit and leaves 4 open that the guest never sees. Checked instead: \
                       no more fds than room for, each owned";
            if crate::emulated(
                "fdpass::ctrunc_closes_every_fd_that_arrived_and_refuses",
                why,
            ) {
                assert!(got.fds.len() <= 4, "{} fds in room for 4", got.fds.len());
                return;
            }
        }
        assert_eq!(r.err(), Some(RecvError::ControlTruncated { closed: 4 }));
        assert_eq!(
            fds_named("fdpass-ctrunc"),
            0,
            "the fds that arrived were not closed"
        );
    }

    #[test]
    fn eagain_is_reported_not_hidden() {
        let (_a, b) = pair();
        let mut buf = [0u8; 8];
        assert_eq!(
            recv_with_fds(b.as_raw_fd(), &mut buf).err(),
            Some(RecvError::Sys(Errno::EAGAIN))
        );
    }
}
