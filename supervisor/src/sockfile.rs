//! A unix link's socket file inside a consumer's mount namespace, made and
//! removed without following any symlink.
//!
//! The supervisor works there as root with CAP_DAC_OVERRIDE and CAP_FOWNER,
//! on a tree the container controls. Path-based calls (`mkdir -p`, unlink,
//! bind, chmod) would follow a symlink the container planted to anywhere
//! its mount namespace reaches. So the path is walked one component at a
//! time with directory fds (`openat(O_PATH|O_NOFOLLOW)`, `mkdirat` for a
//! missing one), a symlink on the way refuses the link, and the socket is
//! handled relative to its directory fd: `statx(AT_SYMLINK_NOFOLLOW)`,
//! `unlinkat`, and `bind`/`connect` to the bare name after `fchdir` (a name
//! without `/` resolves in that directory and nowhere else; bind never
//! follows a symlink at its last component). The mode comes from the umask
//! at bind: no chmod by path afterwards.
//!
//! An existing socket is replaced only when nothing listens on it (stale),
//! or when the process that listens on it is one of ours (the listener of
//! an endpoint we removed, still held by its draining worker): the peer
//! credentials of a probe connection name the pid that called `listen()`.

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::socket::{
    bind, connect, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::stat::{mkdirat, umask, Mode, SFlag};
use nix::unistd::{fchdir, unlinkat, UnlinkatFlags};
use proto::stat::FileInfo;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Directories we create: what `mkdir -p` makes under the usual umask.
const DIR_MODE: u32 = 0o755;
/// The link is the consumer's: any user inside the container may use it.
/// bind(2) gives the socket 0777 minus the umask.
const SOCKET_UMASK: u32 = 0o111;

/// What is at the socket's name.
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A socket nothing listens on (connect refused).
    Stale,
    /// A socket something listens on; the pid that called `listen()`,
    /// when the kernel tells (not for a full backlog or a datagram socket).
    Live(Option<i32>),
}

/// The pid that called `listen()` on `fd` (SO_PEERCRED of a listening
/// socket): what a probe of the socket's file reports as its peer.
pub fn listen_pid(fd: &OwnedFd) -> Option<i32> {
    getsockopt(fd, sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
        .filter(|p| *p > 0)
}

/// Make and listen on the unix socket `path` in the current mount
/// namespace. `ours`: listen pids (see [`listen_pid`]) of sockets we made
/// and may replace although they still answer.
pub fn make(path: &Path, ours: &[i32], backlog: i32) -> Result<OwnedFd, String> {
    let (dirs, name) = split(path)?;
    let dir =
        open_dirs(&dirs, true)?.ok_or_else(|| format!("{}: directory vanished", path.display()))?;
    let shown = path.display();
    match stat_at(&dir, name) {
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(format!("statx {shown}: {e}")),
        Ok(st) if is(&st, SFlag::S_IFSOCK) => match probe(&dir, name, path)? {
            Existing::Nothing => {}
            Existing::Live(Some(pid)) if ours.contains(&pid) => {
                proto::debug!("{shown}: replacing our own earlier socket (listener pid {pid})");
                unlink_at(&dir, name, path)?;
            }
            Existing::Live(_) => {
                return Err(format!(
                    "a live socket at {shown} is in use (it accepts connections) by another service; not replacing it"
                ))
            }
            Existing::Stale => unlink_at(&dir, name, path)?,
        },
        Ok(st) if is(&st, SFlag::S_IFLNK) => {
            return Err(format!(
                "{shown} is a symbolic link; not following or replacing it"
            ))
        }
        Ok(_) => return Err(format!("{shown} exists and is not a socket; not replacing it")),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket for {shown}: {e}"))?;
    let addr = UnixAddr::new(name).map_err(|e| format!("address {shown}: {e}"))?;
    in_dir(&dir, || {
        let old = umask(Mode::from_bits_truncate(SOCKET_UMASK));
        let r = bind(fd.as_raw_fd(), &addr);
        umask(old);
        r
    })
    .map_err(|e| format!("bind {shown}: {e}"))?;
    listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| format!("listen on {shown}: {e}"))?;
    Ok(fd)
}

/// Remove the socket file `path` we made (its listener's pid was
/// `made_by`), in the current mount namespace. Nothing is followed; a
/// socket someone else now listens on, or anything that is not a socket,
/// stays. Ok(false): nothing was removed.
pub fn remove(path: &Path, made_by: Option<i32>) -> Result<bool, String> {
    let (dirs, name) = split(path)?;
    let Some(dir) = open_dirs(&dirs, false)? else {
        return Ok(false);
    };
    match stat_at(&dir, name) {
        Ok(st) if is(&st, SFlag::S_IFSOCK) => {}
        Ok(_) | Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(format!("statx {}: {e}", path.display())),
    }
    match probe(&dir, name, path)? {
        Existing::Stale => {}
        Existing::Live(Some(pid)) if Some(pid) == made_by => {}
        Existing::Nothing | Existing::Live(_) => return Ok(false),
    }
    unlink_at(&dir, name, path)?;
    Ok(true)
}

/// The directory components and the file name of an absolute socket path.
/// `.` components are skipped; `..` is refused (the graph refuses it too,
/// this keeps the walk safe on its own).
fn split(path: &Path) -> Result<(Vec<&OsStr>, &OsStr), String> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let mut parts = Vec::new();
    for c in bytes.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(format!("{} contains '..'", path.display())),
            c => parts.push(OsStr::from_bytes(c)),
        }
    }
    // A path ending in '/' or '.' names a directory, not a socket file.
    let ends_in_name = !bytes.ends_with(b"/") && !bytes.ends_with(b"/.");
    match parts.pop() {
        Some(name) if ends_in_name => Ok((parts, name)),
        _ => Err(format!("{} does not name a socket file", path.display())),
    }
}

/// Open the directory chain of `path` from `/`, one component at a time,
/// refusing symlinks. `create`: make missing directories (else None).
fn open_dirs(dirs: &[&OsStr], create: bool) -> Result<Option<OwnedFd>, String> {
    let mut dir = open_nofollow(None, OsStr::new("/")).map_err(|e| format!("open /: {e}"))?;
    let mut shown = std::path::PathBuf::from("/");
    for comp in dirs {
        shown.push(comp);
        let next = match open_nofollow(Some(&dir), comp) {
            Err(Errno::ENOENT) if create => {
                // Exactly DIR_MODE, whatever umask we were started with.
                let old = umask(Mode::empty());
                let made = mkdirat(
                    Some(dir.as_raw_fd()),
                    *comp,
                    Mode::from_bits_truncate(DIR_MODE),
                );
                umask(old);
                match made {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("mkdir {}: {e}", shown.display())),
                }
                // Opened again with O_NOFOLLOW: whatever now has the name
                // must still be a directory.
                open_nofollow(Some(&dir), comp)
            }
            Err(Errno::ENOENT) => return Ok(None),
            r => r,
        };
        dir = match next {
            Ok(d) => d,
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                let what = match stat_at(&dir, comp) {
                    Ok(st) if is(&st, SFlag::S_IFLNK) => {
                        "is a symbolic link; symlinks are not followed inside the consumer"
                    }
                    _ => "is not a directory",
                };
                return Err(format!("'{}' {what}", shown.display()));
            }
            Err(e) => return Err(format!("open {}: {e}", shown.display())),
        };
    }
    Ok(Some(dir))
}

/// `openat(O_PATH|O_DIRECTORY|O_NOFOLLOW)`: a symlink fails (ENOTDIR).
fn open_nofollow(dir: Option<&OwnedFd>, name: &OsStr) -> Result<OwnedFd, Errno> {
    let fd = openat(
        dir.map(|d| d.as_raw_fd()),
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> Result<FileInfo, Errno> {
    proto::stat::stat_at_nofollow(dir.as_fd(), name)
}

fn is(st: &FileInfo, kind: SFlag) -> bool {
    st.kind() == kind.bits()
}

fn unlink_at(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<(), String> {
    match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("unlink {}: {e}", path.display())),
    }
}

/// Connect to the socket `name` in `dir` (`path`, for messages) without
/// blocking, with each socket type until one fits (EPROTOTYPE: another
/// type). A live peer sees one connection that closes at once.
fn probe(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<Existing, String> {
    let shown = path.display();
    let addr = UnixAddr::new(name).map_err(|e| format!("address {shown}: {e}"))?;
    for ty in [SockType::Stream, SockType::SeqPacket, SockType::Datagram] {
        let s = socket(
            AddressFamily::Unix,
            ty,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| format!("socket for probing {shown}: {e}"))?;
        match in_dir(dir, || connect(s.as_raw_fd(), &addr)) {
            Ok(()) => return Ok(Existing::Live(listen_pid(&s))),
            // A full backlog: something listens but does not keep up.
            Err(Errno::EAGAIN) => return Ok(Existing::Live(None)),
            Err(Errno::ECONNREFUSED) => return Ok(Existing::Stale),
            Err(Errno::ENOENT) => return Ok(Existing::Nothing),
            Err(Errno::EPROTOTYPE) => continue,
            Err(e) => return Err(format!("probing socket {shown}: connect: {e}")),
        }
    }
    Err(format!("probing socket {shown}: no socket type fits"))
}

/// Run `f` with `dir` as the working directory, then go back. The
/// supervisor is single-threaded, so nothing else sees the change.
fn in_dir<T>(dir: &OwnedFd, f: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
    let back = open_nofollow(None, OsStr::new("."))?;
    fchdir(dir.as_raw_fd())?;
    let r = f();
    let _ = fchdir(back.as_raw_fd());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixListener;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pvx-sockfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn split_names_dirs_and_file() {
        let (d, n) = split(Path::new("/run//./app/x.sock")).unwrap();
        assert_eq!(d, [OsStr::new("run"), OsStr::new("app")]);
        assert_eq!(n, "x.sock");
        assert!(split(Path::new("/run/..")).is_err());
        assert!(split(Path::new("/run/")).is_err());
        assert!(split(Path::new("/run/.")).is_err());
        assert!(split(Path::new("/")).is_err());
        assert!(split(Path::new("run/x")).is_err());
    }

    #[test]
    fn makes_chain_mode_and_refuses_symlinks() {
        let d = scratch("chain");
        let p = d.join("a/b/x.sock");
        let fd = make(&p, &[], 8).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o666);
        assert_eq!(
            std::fs::metadata(d.join("a/b"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        // Live and ours (this process listened): replaced.
        let me = std::process::id() as i32;
        assert_eq!(listen_pid(&fd), Some(me));
        let fd2 = make(&p, &[me], 8).unwrap();
        drop(fd);
        // Live and not ours: refused.
        let e = make(&p, &[], 8).unwrap_err();
        assert!(e.contains("is in use"), "{e}");
        // Stale: replaced.
        drop(fd2);
        let fd3 = make(&p, &[], 8).unwrap();
        // Removal: only ours or stale.
        assert!(!remove(&p, Some(me + 1)).unwrap());
        assert!(remove(&p, listen_pid(&fd3)).unwrap());
        assert!(std::fs::symlink_metadata(&p).is_err());
        // A symlinked directory is refused, naming it.
        let elsewhere = d.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, d.join("l")).unwrap();
        let e = make(&d.join("l/sub/x.sock"), &[], 8).unwrap_err();
        assert!(
            e.contains(&format!("'{}' is a symbolic link", d.join("l").display())),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // A symlink as the socket itself is not replaced.
        std::os::unix::fs::symlink(&p, d.join("s.sock")).unwrap();
        let e = make(&d.join("s.sock"), &[], 8).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        // A stale datagram socket is recognised as stale.
        let dg = d.join("dg.sock");
        drop(std::os::unix::net::UnixDatagram::bind(&dg).unwrap());
        drop(make(&dg, &[], 8).unwrap());
        // A live one is in use.
        let dg2 = d.join("dg2.sock");
        let _keep = std::os::unix::net::UnixDatagram::bind(&dg2).unwrap();
        assert!(make(&dg2, &[], 8).unwrap_err().contains("in use"));
        drop(UnixListener::bind(d.join("unused.sock")).unwrap());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// What is at the socket's name is recognised whatever its dates: on
    /// armhf, glibc's 32-bit fstatat said EOVERFLOW for a file modified
    /// after 2038-01-19, which refused every link whose path existed.
    #[test]
    fn a_file_dated_after_2038_is_recognised() {
        let d = scratch("y2038");
        let p = d.join("x.sock");
        let f = std::fs::File::create(&p).unwrap();
        // 2040-01-01T00:00:00Z, past i32::MAX seconds.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_208_988_800);
        f.set_modified(t).unwrap();
        let e = make(&p, &[], 8).unwrap_err();
        assert!(e.contains("exists and is not a socket"), "{e}");
        assert_eq!(remove(&p, None), Ok(false));
        let _ = std::fs::remove_dir_all(&d);
    }
}
