#!/usr/bin/python3
"""Summarise strace logs of pv-xconnect processes (scripts/syscalls.sh).

    scripts/lib/syscalls.py DIR

DIR holds one `strace -f` log per process tree started from the
executable (trace.<pid>, the pid the tests started). In each, the lines
the tracing wrapper wrote before it exec'd the real executable are left
out. Prints the distinct system calls with their counts, the options and
flags of the calls whose arguments decide the kernel version they need,
and every call that failed with an error a kernel gives for what it does
not know (ENOSYS, EINVAL, ENOPROTOOPT, E2BIG), with what the process did
next: how our fallbacks showed.
"""

import collections
import glob
import os
import re
import sys

LINE = re.compile(r"^(\d+)\s+(.*)$")
CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|0x[0-9a-f]+|\?)(?:\s+(E[A-Z0-9]+))?")
# Calls whose flags or options matter for the kernel version: the
# arguments (by position) to show.
SHOW = {
    "setsockopt": (1, 2), "getsockopt": (1, 2), "prctl": (0, 1), "fcntl": (1, 2),
    "memfd_create": (1,), "getrandom": (2,), "setns": (1,), "socket": (0, 1),
    "socketpair": (0, 1), "accept4": (3,), "pipe2": (1,), "epoll_create1": (0,),
    "splice": (5,), "openat": (2,), "madvise": (2,), "clone": (0, 1),
    "wait4": (2,), "sendmsg": (2,), "sendto": (3,), "recvmsg": (2,), "recvfrom": (3,),
    "shutdown": (1,), "mmap": (2, 3), "newfstatat": (3,), "statx": (2, 3),
}
TELLING = {"ENOSYS", "EINVAL", "ENOPROTOOPT", "E2BIG", "EOPNOTSUPP"}


def split_args(s):
    """Top-level comma split of an strace argument list."""
    out, depth, cur, quote = [], 0, "", False
    i = 0
    while i < len(s):
        c = s[i]
        if quote:
            cur += c
            if c == "\\" and i + 1 < len(s):
                cur += s[i + 1]
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote, cur = True, cur + c
        elif c in "([{":
            depth, cur = depth + 1, cur + c
        elif c in ")]}":
            depth, cur = depth - 1, cur + c
        elif c == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    if cur.strip():
        out.append(cur.strip())
    return out


def calls(path):
    """(pid, name, args, ret, errno) of every call in one log, the
    wrapper's own calls before its exec left out."""
    root = int(path.rsplit(".", 1)[1])
    pending = {}
    started = False
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, rest = int(m.group(1)), m.group(2)
            if rest.startswith("<... "):
                head = pending.pop(pid, None)
                if head is None:
                    continue
                rest = head + rest.split("resumed>", 1)[1]
            elif rest.endswith("<unfinished ...>"):
                pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
                # execve does not come back to the wrapper's image.
                if rest.startswith("execve(") and pid == root:
                    started = True
                continue
            if rest.startswith("---") or rest.startswith("+++"):
                continue
            if pid == root and not started:
                if rest.startswith("execve(") and "= 0" in rest:
                    started = True
                else:
                    continue
            c = CALL.match(rest)
            if c:
                yield pid, c.group(1), c.group(2), c.group(3), c.group(4)


def main(d):
    counts = collections.Counter()
    flags = collections.defaultdict(collections.Counter)
    failed = collections.Counter()
    execs = collections.Counter()
    logs = sorted(glob.glob(os.path.join(d, "trace.*")))
    for path in logs:
        for _pid, name, args, _ret, err in calls(path):
            counts[name] += 1
            a = split_args(args)
            if name == "execve" and a:
                execs[a[0]] += 1
            if name in SHOW:
                shown = ", ".join(a[i] for i in SHOW[name] if i < len(a))
                # Numbers that vary per call (sizes, fds) say nothing here.
                shown = re.sub(r"\b\d{3,}\b", "N", shown)
                flags[name][shown] += 1
            if err in TELLING:
                key = f"{name}({', '.join(a[i] for i in SHOW.get(name, ()) if i < len(a))})"
                failed[f"{re.sub(r'0x[0-9a-f]{6,}', 'ADDR', key)} = {err}"] += 1
    print(f"{len(logs)} process trees started from the executable; "
          f"{sum(counts.values())} system calls, {len(counts)} distinct")
    print("executed: " + ", ".join(f"{k} x{n}" for k, n in sorted(execs.items())))
    print("\n== distinct system calls (count)")
    for name, n in sorted(counts.items()):
        print(f"  {name:24} {n}")
    print("\n== options and flags")
    for name in sorted(flags):
        for shown, n in sorted(flags[name].items(), key=lambda kv: -kv[1]):
            print(f"  {name}({shown})  x{n}")
    print("\n== calls answered as a kernel answers for what it does not know")
    for k, n in sorted(failed.items()):
        print(f"  {k}  x{n}")
    if not failed:
        print("  none")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
