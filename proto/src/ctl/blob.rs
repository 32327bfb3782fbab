//! The sealed memfd a message too large for one datagram travels in: made
//! sealed against every change by the sender, taken by the receiver only
//! so sealed and of the announced size.

use super::error::CtlError;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// The seals a blob must carry: size and content fixed for good.
pub(super) const BLOB_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE)
    .union(SealFlag::F_SEAL_SEAL);

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
