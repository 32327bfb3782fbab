//! File descriptors in tests: passing them over unix sockets (SCM_RIGHTS)
//! and counting what a process holds.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Send `data` with `fds` attached, in one sendmsg.
pub fn send_fds(s: &UnixStream, data: &[u8], fds: &[RawFd]) {
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let n = sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(data)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .expect("sendmsg with fds");
    assert_eq!(n, data.len(), "short sendmsg");
}

/// Receive up to `max` bytes and the fds that came with them (blocking,
/// honouring the socket's read timeout). An empty result is EOF.
pub fn recv_fds(s: &UnixStream, max: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut buf = vec![0u8; max];
    let mut cmsg = nix::cmsg_space!([RawFd; 16]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg with fds");
        assert!(
            !r.flags.contains(MsgFlags::MSG_CTRUNC),
            "control data truncated"
        );
        let mut fds = Vec::new();
        for c in r.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (r.bytes, fds)
    };
    buf.truncate(n);
    (buf, fds)
}

/// Receive exactly `want` bytes, collecting every fd that arrives on the way.
pub fn recv_exact_fds(s: &UnixStream, want: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    let (mut data, mut fds) = (Vec::new(), Vec::new());
    while data.len() < want {
        let (d, f) = recv_fds(s, want - data.len());
        assert!(!d.is_empty(), "EOF after {} of {want} bytes", data.len());
        data.extend(d);
        fds.extend(f);
    }
    (data, fds)
}

/// A memfd holding `content`, its offset back at 0.
pub fn memfd_with(content: &[u8]) -> OwnedFd {
    let fd =
        nix::sys::memfd::memfd_create(c"pvx-test", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .expect("memfd_create");
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, content).expect("write memfd");
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).expect("seek memfd");
    OwnedFd::from(f)
}

/// Everything readable from `fd` from its start (memfd, file).
pub fn read_all_from_start(fd: OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(fd);
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).expect("seek");
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v).expect("read");
    v
}

/// Number of open fds of `pid` (entries of /proc/<pid>/fd).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The targets of `pid`'s fds, for a readable assertion message.
pub fn fd_list(pid: u32) -> Vec<String> {
    let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = d
        .flatten()
        .map(|e| {
            let t = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{} -> {t}", e.file_name().to_string_lossy())
        })
        .collect();
    v.sort();
    v
}

/// `pid`'s fd count once it holds still: two samples 50 ms apart agree and
/// no fd is a file under /proc (an idle worker reads /proc/self/smaps and
/// maps while it trims its memory; counted then, a baseline is one too
/// high and never comes back).
pub fn settled_fd_count(pid: u32) -> usize {
    crate::wait_for(
        std::time::Duration::from_secs(10),
        "the worker's fds to settle",
        || {
            let before = fd_list(pid);
            std::thread::sleep(std::time::Duration::from_millis(50));
            let after = fd_list(pid);
            (before == after && !after.iter().any(|f| f.contains(" -> /proc/")))
                .then_some(after.len())
        },
    )
}
