//! A file's type and size, by `statx(2)`: the one stat of pv-xconnect.
//!
//! Not nix's `fstat`/`fstatat`: on armv7-unknown-linux-gnueabihf they are
//! glibc's legacy `struct stat` calls (32-bit `time_t`, `off_t` and
//! `ino_t`), which fail with `EOVERFLOW` when any field does not fit:
//!
//! - any timestamp after 2038-01-19 03:14:07 UTC. A memfd we create, or a
//!   socket file we bind, has the current time: from that day on every
//!   control blob and every unix link socket would be refused;
//! - an inode number above 2^32 (an armhf userland on an arm64 kernel, on
//!   btrfs, or overlayfs with `xino`), or a size above 2 GiB.
//!
//! `struct statx` has 64-bit fields on every architecture. glibc's
//! `statx()` (2.28+) falls back to `fstatat64` itself when the kernel has
//! no `statx` (before 4.11), so this works on every kernel we support.

use nix::errno::Errno;
use nix::libc;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

/// What callers need of a file: its type and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// `st_mode`: type (`S_IFMT` bits) and permissions.
    pub mode: u32,
    pub size: u64,
}

impl FileInfo {
    /// The type bits, comparable with `libc::S_IFSOCK`, `S_IFREG`, ...
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

fn statx(dir: libc::c_int, name: &CStr, flags: libc::c_int) -> Result<FileInfo, Errno> {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `sx` is a live statx the call
    // fills; it keeps neither pointer.
    let r = unsafe {
        libc::statx(
            dir,
            name.as_ptr(),
            flags,
            libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_SIZE,
            &mut sx,
        )
    };
    Errno::result(r)?;
    Ok(FileInfo {
        mode: u32::from(sx.stx_mode),
        size: sx.stx_size,
    })
}

/// `name` in the directory `dir`, not following a symlink at `name`
/// (`AT_SYMLINK_NOFOLLOW`): a symlink is reported as one.
pub fn stat_at_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> Result<FileInfo, Errno> {
    let name = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    statx(dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)
}

/// The open file `fd` (`AT_EMPTY_PATH`).
pub fn fstat(fd: BorrowedFd<'_>) -> Result<FileInfo, Errno> {
    statx(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)
}

/// Tests' helper: set a file's modification time to 2040-01-01, after the
/// last second a 32-bit `time_t` holds. std sets it with glibc's
/// `__futimens64` on 32-bit targets, so this works on armv7 too.
#[cfg(test)]
pub(crate) fn date_after_2038(f: &std::fs::File) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(AFTER_2038);
    f.set_modified(t).expect("futimens to 2040");
}

/// 2040-01-01T00:00:00Z in seconds since the epoch: past `i32::MAX`.
#[cfg(test)]
pub(crate) const AFTER_2038: u64 = 2_208_988_800;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pvx-stat-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    /// A file dated after 2038-01-19 is stat'ed like any other, on 32-bit
    /// targets too (nix's fstat/fstatat said EOVERFLOW there).
    #[test]
    fn a_file_dated_after_2038_is_stated() {
        let d = scratch("y2038");
        let p = d.join("f");
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(5).expect("set_len");
        date_after_2038(&f);
        let mtime = f.metadata().expect("metadata").modified().expect("mtime");
        let secs = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs());
        assert_eq!(secs.ok(), Some(AFTER_2038));
        let info = fstat(f.as_fd()).expect("fstat of a file dated 2040");
        assert_eq!((info.kind(), info.size), (libc::S_IFREG, 5));
        let dir = std::fs::File::open(&d).expect("open dir");
        let info = stat_at_nofollow(dir.as_fd(), OsStr::new("f")).expect("stat_at of it");
        assert_eq!((info.kind(), info.size), (libc::S_IFREG, 5));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn kinds_and_nofollow() {
        let d = scratch("kinds");
        std::os::unix::fs::symlink("nowhere", d.join("l")).expect("symlink");
        let _sock = std::os::unix::net::UnixListener::bind(d.join("s")).expect("bind");
        let dir = std::fs::File::open(&d).expect("open dir");
        let at = |n: &str| stat_at_nofollow(dir.as_fd(), OsStr::new(n)).map(|i| i.kind());
        assert_eq!(
            at("l"),
            Ok(libc::S_IFLNK),
            "a dangling symlink, not followed"
        );
        assert_eq!(at("s"), Ok(libc::S_IFSOCK));
        assert_eq!(at("."), Ok(libc::S_IFDIR));
        assert_eq!(at("missing"), Err(Errno::ENOENT));
        assert_eq!(at("a\0b"), Err(Errno::EINVAL));
        let _ = std::fs::remove_dir_all(&d);
    }
}
