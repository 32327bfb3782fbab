#!/usr/bin/env python3
"""Client load + worker kills for scripts/kill-workers.sh.

Python rather than bash because the job is concurrent clients across
namespaces, each connection's fate classified and timed; bash + socat
cannot tell a refused connect from a reset one.

Reads the supervisor's `GET /status`, then for every endpoint that has a
running worker runs CLIENTS client threads in a loop (bounded: one
connection at a time per thread, PAUSE between them):
  tcp/unix endpoints: an echo roundtrip (the lab's backends echo): send a
                      payload, half-close, read to EOF, compare;
  http/rest:          GET <prefix>/hello.txt; any answer below 500 is a success.
A thread in a consumer's network namespace enters it (setns, per thread)
before making sockets; a unix endpoint in a consumer's mount namespace is
reached through /proc/<pid>/root<path>.

Then KILLS times: pick a random endpoint with a running worker, pause its
clients until none is in flight (a SIGKILL takes the connections a worker
holds with it; that is expected, and not what this measures), kill -9 the
worker, let the clients go on at once, and time one probe connection made
right after the kill: it sits in the kernel backlog (the supervisor owns
the listener) until the new worker accepts it, so its roundtrip is the
kill -> new-worker-accepting latency.

Every connection counts as ok, refused (connect refused: the listener
vanished) or lost (anything else: reset, short echo, timeout, 5xx).
Exit status 1 if anything was refused or lost, or a restart was not seen.
"""

import argparse
import ctypes
import json
import os
import random
import socket
import statistics
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
PAUSE = 0.005
OP_TIMEOUT = 15.0
_libc = ctypes.CDLL(None, use_errno=True)


def http_unix(path, target):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: pv-xconnect\r\nConnection: close\r\n\r\n".encode())
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    code = head.split(b" ", 2)[1] if b" " in head else b"0"
    if code != b"200":
        raise RuntimeError(f"status socket answered {head[:80]!r}")
    return json.loads(body)


def enter_netns(pid):
    """Move the calling thread into the network namespace of `pid`."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns(/proc/{pid}/ns/net): {os.strerror(e)}")
    finally:
        os.close(fd)


class Target:
    def __init__(self, ep):
        self.kind = ep["kind"]
        self.address = ep["address"]
        self.namespace = ep["namespace"]
        self.ns_pid = int(self.namespace.split(":")[1]) if self.namespace.startswith("pid:") else 0
        routes = ep.get("routes") or [{}]
        prefix = routes[0].get("prefix") or ""
        self.path = prefix.rstrip("/") + "/hello.txt"
        self.gate = threading.Condition()
        self.paused = False
        self.inflight = 0
        self.name = f"{self.kind} {self.address}" + (
            f" [{self.namespace}]" if self.ns_pid else ""
        )

    def key(self):
        return (self.address, self.namespace)

    def enter(self):
        if self.ns_pid and self.kind != "unix":
            enter_netns(self.ns_pid)

    def connect(self):
        if self.kind == "unix":
            path = self.address
            if self.ns_pid:
                path = f"/proc/{self.ns_pid}/root{path}"
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(OP_TIMEOUT)
            s.connect(path)
            return s
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(OP_TIMEOUT)
        s.connect((host, int(port)))
        return s

    def once(self, rnd):
        """One connection. Returns None on success, else (category, detail)."""
        try:
            s = self.connect()
        except (ConnectionRefusedError, FileNotFoundError) as e:
            return ("refused", f"connect: {e}")
        except OSError as e:
            return ("lost", f"connect: {e}")
        try:
            if self.kind in ("http", "rest"):
                s.sendall(
                    f"GET {self.path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n".encode()
                )
                data = read_all(s)
                line = data.split(b"\r\n", 1)[0]
                parts = line.split(b" ")
                if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) >= 500:
                    return ("lost", f"http answer {line[:60]!r}")
                return None
            payload = rnd.randbytes(rnd.randint(1, 48 * 1024))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = read_all(s)
            if got != payload:
                return ("lost", f"echo of {len(payload)} bytes came back as {len(got)}")
            return None
        except OSError as e:
            return ("lost", f"{type(e).__name__}: {e}")
        finally:
            s.close()


def read_all(s):
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


class Load:
    def __init__(self, targets, clients):
        self.targets = targets
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []  # (category, target name, detail)
        self.threads = [
            threading.Thread(target=self.client, args=(t, i), daemon=True)
            for t in targets
            for i in range(clients)
        ]

    def client(self, t, i):
        rnd = random.Random(hash((t.address, i)))
        try:
            t.enter()
        except OSError as e:
            with self.lock:
                self.failures.append(("lost", t.name, str(e)))
            return
        while not self.stop.is_set():
            with t.gate:
                while t.paused and not self.stop.is_set():
                    t.gate.wait()
                t.inflight += 1
            r = t.once(rnd)
            with t.gate:
                t.inflight -= 1
                t.gate.notify_all()
            with self.lock:
                if r is None:
                    self.ok += 1
                else:
                    self.failures.append((r[0], t.name, r[1]))
            time.sleep(PAUSE)

    def start(self):
        for th in self.threads:
            th.start()

    def finish(self):
        self.stop.set()
        for t in self.targets:
            with t.gate:
                t.gate.notify_all()
        for th in self.threads:
            th.join(OP_TIMEOUT + 5)


def probe(t, out):
    """One timed connection right after a kill, in its own thread (and namespace)."""
    try:
        t.enter()
        out["result"] = t.once(random.Random(0))
    except OSError as e:
        out["result"] = ("lost", str(e))
    out["end"] = time.monotonic()


def worker_of(status, key):
    for ep in status["endpoints"]:
        if (ep["address"], ep["namespace"]) == key:
            return ep["worker"]
    return None


def is_our_worker(pid, sup_pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
    except OSError:
        return False
    return int(rest[1]) == sup_pid and argv0.startswith(b"pvx-worker-")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--status-socket", required=True)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.3, help="seconds between kills")
    ap.add_argument("--clients", type=int, default=2, help="client threads per endpoint")
    a = ap.parse_args()

    st = http_unix(a.status_socket, "/status")
    sup_pid = st["supervisor"]["pid"]
    targets, skipped = [], []
    for ep in st["endpoints"]:
        w = ep["worker"]
        if w.get("state") in ("running", "starting") and w.get("pid"):
            targets.append(Target(ep))
        else:
            skipped.append(f"{ep['kind']} {ep['address']} ({w.get('state')}: {w.get('last_exit')})")
    for s in skipped:
        print(f"  skipped, no running worker: {s}")
    if not targets:
        print("kill-workers: no endpoint has a running worker", file=sys.stderr)
        return 1
    restarts_before = sum(ep["worker"]["restarts"] for ep in st["endpoints"])
    print(
        f"kill-workers: {a.kills} kill(s) across {len(targets)} endpoint(s), "
        f"{a.clients} client(s) each, supervisor pid {sup_pid}"
    )

    load = Load(targets, a.clients)
    load.start()
    time.sleep(0.5)
    latencies, problems = [], []
    order = []
    for n in range(a.kills):
        # Random, but spread evenly: every endpoint once per round.
        if not order:
            order = random.sample(targets, len(targets))
        t = order.pop()
        w = worker_of(http_unix(a.status_socket, "/status"), t.key())
        old = w and w.get("pid")
        if not old or not is_our_worker(old, sup_pid):
            problems.append(f"kill {n + 1}: {t.name} has no live worker to kill ({w})")
            continue
        with t.gate:
            t.paused = True
            t.gate.wait_for(lambda: t.inflight == 0, timeout=OP_TIMEOUT)
        t0 = time.monotonic()
        os.kill(old, 9)
        with t.gate:
            t.paused = False
            t.gate.notify_all()
        out = {}
        pth = threading.Thread(target=probe, args=(t, out), daemon=True)
        pth.start()
        pth.join(OP_TIMEOUT + 5)
        if out.get("result") is None and "end" in out:
            latencies.append((out["end"] - t0) * 1000)
        else:
            problems.append(f"kill {n + 1}: probe through {t.name}: {out.get('result')}")
        # The supervisor's view: a new pid for this endpoint.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            w = worker_of(http_unix(a.status_socket, "/status"), t.key())
            if w and w.get("pid") and w["pid"] != old:
                break
            time.sleep(0.02)
        else:
            problems.append(f"kill {n + 1}: {t.name}: no new worker after 30 s")
        print(f"  kill {n + 1}: {t.name}: pid {old} -> {w and w.get('pid')}")
        time.sleep(a.interval)
    time.sleep(0.5)
    load.finish()

    st = http_unix(a.status_socket, "/status")
    restarts_after = sum(ep["worker"]["restarts"] for ep in st["endpoints"])
    seen = restarts_after - restarts_before
    refused = [f for f in load.failures if f[0] == "refused"]
    lost = [f for f in load.failures if f[0] == "lost"]
    total = load.ok + len(load.failures)
    print(f"kills: {a.kills}")
    print(f"connections: {total} ({load.ok} ok, {len(refused)} refused, {len(lost)} lost)")
    if latencies:
        print(
            f"kill -> new worker accepting: median {statistics.median(latencies):.1f} ms, "
            f"max {max(latencies):.1f} ms (n={len(latencies)})"
        )
    print(f"restarts in status: {seen} (total {restarts_after})")
    for cat, name, detail in (refused + lost)[:20]:
        print(f"  {cat}: {name}: {detail}")
    for p in problems:
        print(f"  problem: {p}")
    killed = a.kills - sum(1 for p in problems if "no live worker" in p)
    if seen < killed:
        problems.append(f"status counted {seen} restart(s) for {killed} kill(s)")
        print(f"  problem: {problems[-1]}")
    ok = not refused and not lost and not problems and load.ok > 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
