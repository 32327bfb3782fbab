//! Network and mount namespaces made by a test, removed by the same test.

use crate::{unique, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip netns add` with loopback up; processes started inside are killed
/// and the namespace (and its veth) deleted on drop.
pub struct Netns {
    pub name: String,
    procs: Vec<Child>,
    /// Processes started with a chosen pid (`spawn_as`): killed and
    /// reaped on drop like `procs`.
    raw: Vec<u32>,
    veth_host: Option<String>,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            procs: Vec::new(),
            raw: Vec::new(),
            veth_host: None,
        };
        // Nothing is sent before the namespace is confirmed to exist.
        assert!(
            Path::new(&format!("/run/netns/{}", ns.name)).exists(),
            "netns {} missing",
            ns.name
        );
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec_ok(&self, cmd: &[&str]) {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(cmd);
        ip(&a);
    }

    /// Start a long-running process inside; returns its pid.
    pub fn spawn(&mut self, cmd: &[&str]) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        let pid = child.id();
        self.procs.push(child);
        // `ip netns exec` execs the command: the pid is the command's.
        let me = format!("net:[{}]", self.inode());
        wait_for(Duration::from_secs(5), "process inside netns", || {
            let l = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
            (l.to_string_lossy() == me).then_some(())
        });
        pid
    }

    /// A process that only holds the namespace (a container's init).
    pub fn holder(&mut self) -> u32 {
        self.spawn(&["sleep", "3600"])
    }

    /// Start `cmd` inside as process `pid` ([`start_as`]), so a graph can
    /// name a consumer pid before that process and its namespace exist.
    /// `pid` should come from `free_pid`.
    pub fn spawn_as(&mut self, pid: u32, cmd: &[&str]) {
        use nix::libc;
        use std::ffi::CString;
        // Everything the child needs is made before the clone: after it,
        // the child of a multi-threaded process may only exec.
        let exe = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("ip(8)");
        let exe = CString::new(exe).expect("path");
        let args: Vec<CString> = ["ip", "netns", "exec", &self.name]
            .iter()
            .chain(cmd)
            .map(|a| CString::new(*a).expect("argument without NUL"))
            .collect();
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: argv is NULL-terminated and outlives the call, its
        // strings and exe too.
        unsafe { start_as(pid, &exe, &argv) }
            .unwrap_or_else(|e| panic!("starting {cmd:?} as pid {pid}: {e}"));
        self.raw.push(pid);
        let me = format!("net:[{}]", self.inode());
        wait_for(Duration::from_secs(5), "process inside netns", || {
            let l = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
            (l.to_string_lossy() == me).then_some(())
        });
    }

    /// The veth end inside (made by `veth`/`veth_auto`).
    fn ns_if(&self) -> String {
        format!("{}n", &self.name[..self.name.len().min(13)])
    }

    /// Remove `addr/30` from the veth end inside.
    pub fn del_addr(&self, addr: &str) {
        self.exec_ok(&[
            "ip",
            "addr",
            "del",
            &format!("{addr}/30"),
            "dev",
            &self.ns_if(),
        ]);
    }

    /// Put `addr/30` on the veth end inside.
    pub fn add_addr(&self, addr: &str) {
        self.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            &self.ns_if(),
        ]);
    }

    fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .map(|m| m.ino())
            .unwrap_or(0)
    }

    /// Run a command inside and return its stdout (must succeed).
    pub fn run(&self, cmd: &[&str], stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec");
        if let Some(mut i) = c.stdin.take() {
            let _ = i.write_all(stdin);
        }
        c.wait_with_output().expect("wait")
    }

    /// A veth pair on a free /30 of 169.254.213.0/24; returns (host ip,
    /// namespace ip). The /30 is chosen from this process's pid and
    /// checked against addresses already on the host, so parallel test
    /// runs do not collide.
    pub fn veth_auto(&mut self) -> (String, String) {
        let used = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "addr"])
                .output()
                .expect("ip addr")
                .stdout,
        )
        .into_owned();
        let start = (std::process::id() as usize * 7 + self.name.len()) % 64;
        for i in 0..64 {
            let k = (start + i) % 64;
            let (h, n) = (
                format!("169.254.213.{}", 4 * k + 1),
                format!("169.254.213.{}", 4 * k + 2),
            );
            if used.contains(&format!("{h}/")) || used.contains(&format!("{n}/")) {
                continue;
            }
            self.veth(&format!("{h}/30"), &format!("{n}/30"));
            return (h, n);
        }
        panic!("no free /30 in 169.254.213.0/24");
    }

    /// A veth pair: host side `host_addr/30`, inside `ns_addr/30`.
    pub fn veth(&mut self, host_addr: &str, ns_addr: &str) {
        let h = format!("{}h", &self.name[..self.name.len().min(13)]);
        let n = format!("{}n", &self.name[..self.name.len().min(13)]);
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &n]);
        self.veth_host = Some(h.clone());
        ip(&["link", "set", &n, "netns", &self.name]);
        ip(&["addr", "add", host_addr, "dev", &h]);
        ip(&["link", "set", &h, "up"]);
        self.exec_ok(&["ip", "addr", "add", ns_addr, "dev", &n]);
        self.exec_ok(&["ip", "link", "set", &n, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &pid in &self.raw {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(h) = &self.veth_host {
            let _ = Command::new("ip").args(["link", "del", h]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process in its own private mount namespace with a tmpfs at `dir`
/// (a path that exists on the host too): whatever it creates there is
/// visible only through `/proc/<pid>/root<dir>`.
pub struct MountNsProc {
    pub child: Child,
    pub dir: PathBuf,
}

impl MountNsProc {
    /// `script` runs under `sh -c` after the tmpfs is mounted; it should
    /// end by exec'ing a long-running server (or `sleep`).
    pub fn start(dir: &Path, script: &str) -> MountNsProc {
        std::fs::create_dir_all(dir).expect("mkdir");
        let full = format!("mount -t tmpfs pvxtest {} && {script}", dir.display());
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &full])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        let p = MountNsProc {
            child,
            dir: dir.to_path_buf(),
        };
        // Wait until the tmpfs is mounted inside.
        let me = std::fs::read_link("/proc/self/ns/mnt").expect("own mnt ns");
        let pid = p.pid();
        wait_for(Duration::from_secs(5), "private mount namespace", || {
            let l = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
            (l != me).then_some(())
        });
        // The namespace exists before `mount` ran in it: wait until its
        // `dir` is the tmpfs (another device than the host's `dir`).
        use std::os::unix::fs::MetadataExt;
        let host_dev = std::fs::metadata(dir).expect("stat dir").dev();
        let inner = p.host_path(&dir.display().to_string());
        wait_for(
            Duration::from_secs(5),
            "tmpfs mounted in the namespace",
            || {
                let m = std::fs::metadata(&inner).ok()?;
                (m.dev() != host_dev).then_some(())
            },
        );
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of `inner` (absolute, inside the namespace) seen from the host.
    pub fn host_path(&self, inner: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inner}", self.pid()))
    }
}

impl Drop for MountNsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fork and exec `exe` with `argv` as process `pid`, which must be free:
/// `clone3` with `set_tid` (Linux 5.5). Before it (`clone3` unknown,
/// ENOSYS, or 5.3 and 5.4 without `set_tid`, E2BIG) the way
/// checkpoint/restore tools did it: set `ns_last_pid` to the pid before
/// and fork. A process forked in between by someone else (the tools of a
/// parallel test) takes the pid instead: ours is killed, and we try again
/// once that one is gone.
///
/// # Safety
/// `argv` is NULL-terminated; it, its strings and `exe` outlive the call.
/// The child of this (multi-threaded) process only calls execv and _exit.
unsafe fn start_as(
    pid: u32,
    exe: &std::ffi::CStr,
    argv: &[*const nix::libc::c_char],
) -> Result<(), String> {
    use nix::libc;
    let exec = || -> ! {
        libc::execv(exe.as_ptr(), argv.as_ptr());
        libc::_exit(127)
    };
    let tid = [pid as libc::pid_t];
    // struct clone_args (linux/sched.h), up to `set_tid_size`.
    let mut ca = [0u64; 11];
    ca[4] = libc::SIGCHLD as u64; // exit_signal
    ca[8] = tid.as_ptr() as u64; // set_tid
    ca[9] = 1; // set_tid_size
    let r = libc::syscall(
        libc::SYS_clone3,
        ca.as_mut_ptr(),
        std::mem::size_of_val(&ca),
    );
    if r == 0 {
        exec();
    }
    if r == pid as libc::c_long {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG)) {
        return Err(format!("clone3 with set_tid: {e}"));
    }
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .map_err(|e| format!("writing /proc/sys/kernel/ns_last_pid: {e}"))?;
        let r = libc::fork();
        if r == 0 {
            exec();
        }
        if r < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if r as u32 == pid {
            return Ok(());
        }
        libc::kill(r, libc::SIGKILL);
        libc::waitpid(r, std::ptr::null_mut(), 0);
        while Path::new(&format!("/proc/{pid}")).exists() {
            if std::time::Instant::now() > until {
                return Err(format!("pid {pid} held by another process for 10 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A pid no process has and none will get soon: free, and below the last
/// pid handed out (pids are handed out upwards and wrap only at
/// `pid_max`), so it stays free until a test claims it with `spawn_as`.
pub fn free_pid() -> u32 {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("ns_last_pid");
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("pid_max");
    let below = (301..last.saturating_sub(1000)).rev();
    let above = (last + 20_000).min(max - 1)..max;
    below
        .chain(above)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}
