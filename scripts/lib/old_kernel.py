#!/usr/bin/python3
"""Run a command as if on an older kernel: a seccomp filter answers every
system call that kernel did not have with ENOSYS, and the options and flags
it did not know (of calls it had) with the error it gave for them, then
the command is exec'd. The filter is inherited by every process the
command starts, across fork and exec, and cannot be removed.

    scripts/lib/old_kernel.py [--min 4.9] [--] CMD [ARGS...]   (--min: 3.17 to 6.16)
    scripts/lib/old_kernel.py [--min 4.9] --check    self-check only
    scripts/lib/old_kernel.py [--min 4.9] --list     what the filter answers

Nothing here is guessed: the filter is built from the tables below (each
entry: what, the Linux version that introduced it, what an older kernel
answers), keeping the entries newer than --min. A system call number
above the highest one --min had, that the table does not name, gets
ENOSYS too: a call added after this table was written is newer than
--min all the same (x86-64 numbers only ever grow).

Before the command runs, a self-check calls a few of the filtered things
and a few old ones through ctypes, with and without the filter: a filtered
call must fail as the old kernel would, an old one must still work, or we
exit 3 without running anything (a filter that filters nothing fails).

x86-64 only: the numbers are x86-64's. Needs python3-seccomp (libseccomp's
own binding). Run as root, the filter goes in without no_new_privs, so the
command's processes see the privileges they would without us.
"""

import ctypes
import errno
import os
import signal
import socket
import sys

try:
    import seccomp
except ImportError:
    sys.exit("old_kernel: needs python3-seccomp (scripts/setup.sh --old-kernel)")

# System calls from Linux 3.2 on: (name, x86-64 number, version). Numbers
# below 310 are all older than 3.2 and are never filtered.
SYSCALLS = [
    ("process_vm_readv", 310, (3, 2)),
    ("process_vm_writev", 311, (3, 2)),
    ("kcmp", 312, (3, 5)),
    ("finit_module", 313, (3, 8)),
    ("sched_setattr", 314, (3, 14)),
    ("sched_getattr", 315, (3, 14)),
    ("renameat2", 316, (3, 15)),
    ("seccomp", 317, (3, 17)),
    ("getrandom", 318, (3, 17)),
    ("memfd_create", 319, (3, 17)),
    ("kexec_file_load", 320, (3, 17)),
    ("bpf", 321, (3, 18)),
    ("execveat", 322, (3, 19)),
    ("userfaultfd", 323, (4, 3)),
    ("membarrier", 324, (4, 3)),
    ("mlock2", 325, (4, 4)),
    ("copy_file_range", 326, (4, 5)),
    ("preadv2", 327, (4, 6)),
    ("pwritev2", 328, (4, 6)),
    ("pkey_mprotect", 329, (4, 9)),
    ("pkey_alloc", 330, (4, 9)),
    ("pkey_free", 331, (4, 9)),
    ("statx", 332, (4, 11)),
    ("io_pgetevents", 333, (4, 18)),
    ("rseq", 334, (4, 18)),
    ("uretprobe", 335, (6, 11)),
    # 336..423 are kept for the 32-bit ABIs' 64-bit time calls.
    ("pidfd_send_signal", 424, (5, 1)),
    ("io_uring_setup", 425, (5, 1)),
    ("io_uring_enter", 426, (5, 1)),
    ("io_uring_register", 427, (5, 1)),
    ("open_tree", 428, (5, 2)),
    ("move_mount", 429, (5, 2)),
    ("fsopen", 430, (5, 2)),
    ("fsconfig", 431, (5, 2)),
    ("fsmount", 432, (5, 2)),
    ("fspick", 433, (5, 2)),
    ("pidfd_open", 434, (5, 3)),
    ("clone3", 435, (5, 3)),
    ("close_range", 436, (5, 9)),
    ("openat2", 437, (5, 6)),
    ("pidfd_getfd", 438, (5, 6)),
    ("faccessat2", 439, (5, 8)),
    ("process_madvise", 440, (5, 10)),
    ("epoll_pwait2", 441, (5, 11)),
    ("mount_setattr", 442, (5, 12)),
    ("quotactl_fd", 443, (5, 14)),
    ("landlock_create_ruleset", 444, (5, 13)),
    ("landlock_add_rule", 445, (5, 13)),
    ("landlock_restrict_self", 446, (5, 13)),
    ("memfd_secret", 447, (5, 14)),
    ("process_mrelease", 448, (5, 15)),
    ("futex_waitv", 449, (5, 16)),
    ("set_mempolicy_home_node", 450, (5, 17)),
    ("cachestat", 451, (6, 5)),
    ("fchmodat2", 452, (6, 6)),
    ("map_shadow_stack", 453, (6, 6)),
    ("futex_wake", 454, (6, 7)),
    ("futex_wait", 455, (6, 7)),
    ("futex_requeue", 456, (6, 7)),
    ("statmount", 457, (6, 8)),
    ("listmount", 458, (6, 8)),
    ("lsm_get_self_attr", 459, (6, 8)),
    ("lsm_set_self_attr", 460, (6, 8)),
    ("lsm_list_modules", 461, (6, 8)),
    ("mseal", 462, (6, 10)),
    ("setxattrat", 463, (6, 13)),
    ("getxattrat", 464, (6, 13)),
    ("listxattrat", 465, (6, 13)),
    ("removexattrat", 466, (6, 13)),
    ("open_tree_attr", 467, (6, 15)),
    ("file_getattr", 468, (6, 17)),
    ("file_setattr", 469, (6, 17)),
]
# Unknown numbers up to here get ENOSYS when above --min's highest. The
# kernel itself answers ENOSYS past its own table; x86-64's native calls
# stay below 512 (512.. are the x32 ABI's, refused by libseccomp's arch
# check with their x32 bit).
LAST_NR = 1023

U32 = 0xFFFFFFFF
IPPROTO_IP, IPPROTO_IPV6 = 0, 41
IP_FREEBIND, IPV6_FREEBIND = 15, 78
F_ADD_SEALS = 1033
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_CAP_AMBIENT = 23, 24, 47
PR_CAP_AMBIENT_IS_SET, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_LOWER = 1, 2, 3

# Capabilities from 3.16 on (index, name, version). A kernel answers
# EINVAL to PR_CAPBSET_READ/DROP and PR_CAP_AMBIENT of one it does not
# know; its last one is what /proc/sys/kernel/cap_last_cap says.
CAPS = [
    (37, "CAP_AUDIT_READ", (3, 16)),
    (38, "CAP_PERFMON", (5, 8)),
    (39, "CAP_BPF", (5, 8)),
    (40, "CAP_CHECKPOINT_RESTORE", (5, 9)),
]


def a32(i, v):
    """Argument i, a C int or unsigned int, equals v (the upper half of the
    register is not the caller's to fill, and the kernel ignores it)."""
    return seccomp.Arg(i, seccomp.MASKED_EQ, U32, v)


def bit(i, b):
    """Bit(s) b set in argument i."""
    return seccomp.Arg(i, seccomp.MASKED_EQ, b, b)


# Options and flags of calls older than 3.2: (what, version, syscall,
# errno, argument matches (all must hold)). Those pv-xconnect, Rust's std
# or glibc use or try first; and the families they belong to.
OPTIONS = [
    ("setsockopt(IPPROTO_IPV6, IPV6_FREEBIND)", (4, 15), "setsockopt",
     errno.ENOPROTOOPT, [a32(1, IPPROTO_IPV6), a32(2, IPV6_FREEBIND)]),
    ("getsockopt(IPPROTO_IPV6, IPV6_FREEBIND)", (4, 15), "getsockopt",
     errno.ENOPROTOOPT, [a32(1, IPPROTO_IPV6), a32(2, IPV6_FREEBIND)]),
    ("memfd_create(MFD_HUGETLB)", (4, 14), "memfd_create",
     errno.EINVAL, [bit(1, 0x4)]),
    ("memfd_create(MFD_NOEXEC_SEAL)", (6, 3), "memfd_create",
     errno.EINVAL, [bit(1, 0x8)]),
    ("memfd_create(MFD_EXEC)", (6, 3), "memfd_create",
     errno.EINVAL, [bit(1, 0x10)]),
    ("fcntl(F_ADD_SEALS, F_SEAL_FUTURE_WRITE)", (5, 1), "fcntl",
     errno.EINVAL, [a32(1, F_ADD_SEALS), bit(2, 0x10)]),
    ("fcntl(F_ADD_SEALS, F_SEAL_EXEC)", (6, 3), "fcntl",
     errno.EINVAL, [a32(1, F_ADD_SEALS), bit(2, 0x20)]),
    ("fcntl(F_GET_RW_HINT)", (4, 13), "fcntl", errno.EINVAL, [a32(1, 1035)]),
    ("fcntl(F_SET_RW_HINT)", (4, 13), "fcntl", errno.EINVAL, [a32(1, 1036)]),
    ("fcntl(F_GET_FILE_RW_HINT)", (4, 13), "fcntl", errno.EINVAL, [a32(1, 1037)]),
    ("fcntl(F_SET_FILE_RW_HINT)", (4, 13), "fcntl", errno.EINVAL, [a32(1, 1038)]),
    ("fcntl(F_DUPFD_QUERY)", (6, 10), "fcntl", errno.EINVAL, [a32(1, 1027)]),
    ("fcntl(F_CREATED_QUERY)", (6, 12), "fcntl", errno.EINVAL, [a32(1, 1028)]),
    ("getrandom(GRND_INSECURE)", (5, 6), "getrandom",
     errno.EINVAL, [bit(2, 0x4)]),
    ("madvise(MADV_WIPEONFORK)", (4, 14), "madvise", errno.EINVAL, [a32(2, 18)]),
    ("madvise(MADV_KEEPONFORK)", (4, 14), "madvise", errno.EINVAL, [a32(2, 19)]),
    ("madvise(MADV_COLD)", (5, 4), "madvise", errno.EINVAL, [a32(2, 20)]),
    ("madvise(MADV_PAGEOUT)", (5, 4), "madvise", errno.EINVAL, [a32(2, 21)]),
    ("madvise(MADV_POPULATE_READ)", (5, 14), "madvise", errno.EINVAL, [a32(2, 22)]),
    ("madvise(MADV_POPULATE_WRITE)", (5, 14), "madvise", errno.EINVAL, [a32(2, 23)]),
    ("madvise(MADV_DONTNEED_LOCKED)", (5, 18), "madvise", errno.EINVAL, [a32(2, 24)]),
    ("madvise(MADV_COLLAPSE)", (6, 1), "madvise", errno.EINVAL, [a32(2, 25)]),
    ("waitid(P_PIDFD)", (5, 4), "waitid", errno.EINVAL, [a32(0, 3)]),
    ("setns(CLONE_NEWTIME)", (5, 6), "setns", errno.EINVAL, [a32(1, 0x80)]),
    ("unshare(CLONE_NEWTIME)", (5, 6), "unshare", errno.EINVAL, [bit(0, 0x80)]),
    ("prctl(PR_SVE_SET_VL)", (4, 15), "prctl", errno.EINVAL, [a32(0, 50)]),
    ("prctl(PR_SVE_GET_VL)", (4, 15), "prctl", errno.EINVAL, [a32(0, 51)]),
    ("prctl(PR_GET_SPECULATION_CTRL)", (4, 17), "prctl", errno.EINVAL, [a32(0, 52)]),
    ("prctl(PR_SET_SPECULATION_CTRL)", (4, 17), "prctl", errno.EINVAL, [a32(0, 53)]),
    ("prctl(PR_PAC_RESET_KEYS)", (5, 0), "prctl", errno.EINVAL, [a32(0, 54)]),
    ("prctl(PR_SET_TAGGED_ADDR_CTRL)", (5, 4), "prctl", errno.EINVAL, [a32(0, 55)]),
    ("prctl(PR_GET_TAGGED_ADDR_CTRL)", (5, 4), "prctl", errno.EINVAL, [a32(0, 56)]),
    ("prctl(PR_SET_IO_FLUSHER)", (5, 6), "prctl", errno.EINVAL, [a32(0, 57)]),
    ("prctl(PR_GET_IO_FLUSHER)", (5, 6), "prctl", errno.EINVAL, [a32(0, 58)]),
    ("prctl(PR_SET_SYSCALL_USER_DISPATCH)", (5, 11), "prctl", errno.EINVAL, [a32(0, 59)]),
    ("prctl(PR_SCHED_CORE)", (5, 14), "prctl", errno.EINVAL, [a32(0, 62)]),
    ("prctl(PR_SET_VMA)", (5, 17), "prctl", errno.EINVAL, [a32(0, 0x53564D41)]),
    ("prctl(PR_SET_MDWE)", (6, 3), "prctl", errno.EINVAL, [a32(0, 65)]),
    ("prctl(PR_GET_MDWE)", (6, 3), "prctl", errno.EINVAL, [a32(0, 66)]),
    ("prctl(PR_SET_MEMORY_MERGE)", (6, 4), "prctl", errno.EINVAL, [a32(0, 67)]),
    ("prctl(PR_GET_MEMORY_MERGE)", (6, 4), "prctl", errno.EINVAL, [a32(0, 68)]),
]


def caps_options(minimum):
    """PR_CAPBSET_READ/DROP and PR_CAP_AMBIENT of every capability newer
    than `minimum`: EINVAL, as for a number the kernel does not know."""
    out = []
    for index, name, version in CAPS:
        if version <= minimum:
            continue
        for op, label in ((PR_CAPBSET_READ, "PR_CAPBSET_READ"),
                          (PR_CAPBSET_DROP, "PR_CAPBSET_DROP")):
            out.append((f"prctl({label}, {name})", version, "prctl", errno.EINVAL,
                        [a32(0, op), seccomp.Arg(1, seccomp.EQ, index)]))
        for sub in (PR_CAP_AMBIENT_IS_SET, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_LOWER):
            out.append((f"prctl(PR_CAP_AMBIENT, {sub}, {name})", version, "prctl",
                        errno.EINVAL, [a32(0, PR_CAP_AMBIENT), seccomp.Arg(1, seccomp.EQ, sub),
                                       seccomp.Arg(2, seccomp.EQ, index)]))
    return out


def vstr(v):
    return ".".join(map(str, v))


def parse_version(s):
    try:
        v = tuple(int(p) for p in s.split("."))
    except ValueError:
        v = ()
    if len(v) != 2:
        sys.exit(f"old_kernel: --min wants MAJOR.MINOR, got {s!r}")
    # Below 3.17 the probes that must still work (getrandom, a sealed
    # memfd) would not, and pv-xconnect would not either (its memfds).
    if v < (3, 17):
        sys.exit("old_kernel: --min must be 3.17 or later (memfd_create, getrandom)")
    newest = max(e[2] for e in SYSCALLS)
    if v >= newest:
        sys.exit(f"old_kernel: nothing in the table is newer than {vstr(v)} "
                 f"(newest: {vstr(newest)}); the filter would filter nothing")
    return v


def plan(minimum):
    """(ENOSYS syscalls [(name, nr, version)], unknown numbers, options)."""
    known = {nr for _, nr, _ in SYSCALLS}
    highest = max(nr for _, nr, v in SYSCALLS if v <= minimum)
    newer = [s for s in SYSCALLS if s[2] > minimum]
    unknown = [nr for nr in range(highest + 1, LAST_NR + 1) if nr not in known]
    options = [o for o in OPTIONS + caps_options(minimum) if o[1] > minimum]
    return newer, unknown, options, highest


def check_table():
    """Our numbers against libseccomp's own table, where it has the name."""
    for name, nr, _ in SYSCALLS:
        try:
            theirs = seccomp.resolve_syscall(seccomp.Arch.X86_64, name)
        except ValueError:
            continue
        # Negative: a name newer than this libseccomp.
        if theirs >= 0 and theirs != nr:
            sys.exit(f"old_kernel: table says {name} is {nr}, libseccomp says {theirs}")


def build(minimum):
    newer, unknown, options, _ = plan(minimum)
    f = seccomp.SyscallFilter(seccomp.ALLOW)
    # A binary search on the number instead of a chain of ~700 compares
    # run by every system call.
    f.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    if os.geteuid() == 0:
        # Root may load a filter without no_new_privs; then the command
        # (and pv-xconnect, which sets it itself) runs as it would without us.
        f.set_attr(seccomp.Attr.CTL_NNP, 0)
    for _, nr, _ in newer:
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), nr)
    for nr in unknown:
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), nr)
    for _, _, call, err, args in options:
        f.add_rule(seccomp.ERRNO(err), call, *args)
    return f


# The self-check, through libc's syscall() so nothing in between falls back.
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def sys_(nr, *args):
    """errno of syscall nr (0 on success; a returned fd is closed)."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r < 0:
        return ctypes.get_errno()
    if nr in (319, 434):  # memfd_create, pidfd_open: an fd came back
        os.close(r)
    return 0


# What the probes point the kernel at: module-level, so they outlive every
# call (statx and getrandom write into BUF).
BUF = ctypes.create_string_buffer(256)
NAME = ctypes.create_string_buffer(b"old-kernel-probe")
ROOT = ctypes.create_string_buffer(b"/")
ONE = ctypes.c_int(1)


def probes(minimum):
    """(what, function returning an errno or 0, errno expected under the
    filter: 0 = still works). Only those --min makes meaningful."""
    addr = ctypes.addressof(BUF)
    nm = ctypes.addressof(NAME)
    one_p = ctypes.addressof(ONE)
    root = ctypes.addressof(ROOT)

    def sockopt(level, opt):
        def run():
            try:
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            except OSError as e:
                return e.errno
            with s:
                return sys_(54, s.fileno(), level, opt, one_p, 4)  # setsockopt
        return run

    def seal(seals):
        def run():
            fd = libc.syscall(ctypes.c_long(319), ctypes.c_long(nm), ctypes.c_long(3))
            if fd < 0:
                return ctypes.get_errno()
            try:
                return sys_(72, fd, F_ADD_SEALS, seals)  # fcntl
            finally:
                os.close(fd)
        return run

    ps = [
        ("getpid", lambda: sys_(39), 0),
        ("getrandom(0)", lambda: sys_(318, addr, 16, 0), 0),
        ("memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING)", lambda: sys_(319, nm, 3), 0),
        ("fcntl(F_ADD_SEALS, SHRINK|GROW|WRITE|SEAL)", seal(0xF), 0),
        ("prctl(PR_CAPBSET_READ, CAP_AUDIT_READ)",
         lambda: sys_(157, PR_CAPBSET_READ, 37), 0),
        ("setsockopt(IPPROTO_IP, IP_FREEBIND) on IPv6", sockopt(IPPROTO_IP, IP_FREEBIND), 0),
    ]
    newer = [
        ("statx", (4, 11), lambda: sys_(332, -100, root, 0, 0xFFF, addr), errno.ENOSYS),
        ("close_range", (5, 9), lambda: sys_(436, 1 << 20, (1 << 20) + 1, 0), errno.ENOSYS),
        ("clone3", (5, 3), lambda: sys_(435, 0, 0), errno.ENOSYS),
        ("pidfd_open", (5, 3), lambda: sys_(434, os.getpid(), 0), errno.ENOSYS),
        ("setsockopt(IPPROTO_IPV6, IPV6_FREEBIND)", (4, 15),
         sockopt(IPPROTO_IPV6, IPV6_FREEBIND), errno.ENOPROTOOPT),
        ("memfd_create(MFD_NOEXEC_SEAL)", (6, 3), lambda: sys_(319, nm, 0xB), errno.EINVAL),
        ("fcntl(F_ADD_SEALS, F_SEAL_FUTURE_WRITE)", (5, 1), seal(0x10), errno.EINVAL),
        ("getrandom(GRND_INSECURE)", (5, 6), lambda: sys_(318, addr, 16, 0x4), errno.EINVAL),
        ("prctl(PR_CAPBSET_READ, CAP_PERFMON)", (5, 8),
         lambda: sys_(157, PR_CAPBSET_READ, 38), errno.EINVAL),
        # The table's newest, on no file (EBADF where the kernel has it).
        ("file_getattr", (6, 17), lambda: sys_(468, -1, 0, 0, 0, 0), errno.ENOSYS),
    ]
    return ps + [(w, f, e) for w, v, f, e in newer if v > minimum]


def self_check(minimum, f):
    ps = probes(minimum)
    before = [fn() for _, fn, _ in ps]
    f.load()
    bad = []
    for (what, fn, want), was in zip(ps, before):
        got = fn()
        if got != want:
            bad.append(f"{what}: {errno.errorcode.get(got, got) if got else 'ok'} under the "
                       f"filter, want {errno.errorcode.get(want, want) if want else 'ok'}")
        elif want and was == want:
            # The kernel we run on already lacks it: true, but not our doing.
            print(f"old_kernel: note: {what} fails without the filter too", file=sys.stderr)
    if bad:
        for b in bad:
            print(f"old_kernel: self-check FAILED: {b}", file=sys.stderr)
        sys.exit(3)
    return len(ps)


def describe(minimum):
    newer, unknown, options, highest = plan(minimum)
    print(f"Linux {vstr(minimum)}: highest x86-64 system call {highest}")
    print(f"ENOSYS, {len(newer)} system calls newer than {vstr(minimum)}:")
    for name, nr, v in newer:
        print(f"  {nr:4}  {name:26} {vstr(v)}")
    print(f"ENOSYS, {len(unknown)} numbers above {highest} the table does not name "
          f"({unknown[0]}..{unknown[-1]})")
    print(f"{len(options)} options and flags newer than {vstr(minimum)}:")
    for what, v, _, err, _ in options:
        print(f"  {what:50} {vstr(v):6} {errno.errorcode[err]}")


def main(argv):
    # Python ignores SIGPIPE and SIGXFSZ, and exec keeps ignored signals
    # ignored: the command gets the defaults it would get from a shell.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    minimum = (4, 9)
    mode = "run"
    while argv and argv[0].startswith("-"):
        a = argv.pop(0)
        if a == "--":
            break
        if a == "--min" and argv:
            minimum = parse_version(argv.pop(0))
        elif a == "--check":
            mode = "check"
        elif a == "--list":
            mode = "list"
        else:
            sys.exit(__doc__)
    # system_arch() is unsigned, Arch.X86_64 signed: the same 32 bits.
    if seccomp.system_arch() & U32 != seccomp.Arch.X86_64 & U32:
        sys.exit("old_kernel: the table holds x86-64 system call numbers; run on x86-64")
    check_table()
    if mode == "list":
        describe(minimum)
        return
    if mode == "run" and not argv:
        sys.exit(__doc__)
    newer, unknown, options, _ = plan(minimum)
    f = build(minimum)
    n = self_check(minimum, f)
    print(f"old_kernel: Linux {vstr(minimum)} filter: ENOSYS for {len(newer)} newer system "
          f"calls and {len(unknown)} unknown numbers, errors for {len(options)} newer "
          f"options and flags; self-check passed ({n} probes)", file=sys.stderr)
    if mode == "check":
        return
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        sys.exit(f"old_kernel: exec {argv[0]}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
