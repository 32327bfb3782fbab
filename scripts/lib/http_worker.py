#!/usr/bin/env python3
"""Run one pvx-worker-http without the supervisor (fd 3 = its control
socket, an init carrying a listener, as the supervisor sends it), under an
optional wrapper (valgrind, strace), send it REQS requests, and stop it by
closing its control socket (it exits 0, so the wrapper writes its report).

  http_worker.py BIN BACKEND_PORT REQS MODE [WRAPPER...]

MODE: close  - a new connection per request (`Connection: close`)
      keep   - every request on one kept-alive connection
      idle   - REQS clients that each send one request and stay idle
               (keep-alive) until the end; prints the worker's RssAnon
               before and during, in KiB
BIN is the pv-xconnect executable; it runs under the name pvx-worker-http
(a symlink next to it in a scratch directory). PVX_PROF_PATH: the path
requested (default /index.html). PVX_PROF_ACCESS_LOG: the worker's
--access-log (off, the default, stderr or syslog); when on, the worker's
stderr goes to /dev/null (a write per line, as to a file, and no flood).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

PATH = os.environ.get("PVX_PROF_PATH", "/index.html").encode()
ACCESS_LOG = os.environ.get("PVX_PROF_ACCESS_LOG", "off")
REQ_CLOSE = b"GET " + PATH + b" HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
REQ_KEEP = b"GET " + PATH + b" HTTP/1.1\r\nHost: bench\r\n\r\n"


def config(listen, backend_port):
    # A route is its link's position and the link's routing fields (`via`,
    # proto::graph::Via), as the supervisor sends it.
    route = {
        "link": 0,
        "via": {
            "name": "bench", "consumer": "EXTERNAL", "provider": "p",
            "provider_pid": 0, "role": "any",
            "backend": {"tcp": f"127.0.0.1:{backend_port}"}, "prefix": "/",
            "strip_prefix": True, "host": None, "sni": None, "proxy_protocol": None,
        },
    }
    return {
        "endpoint": {
            "key": {"consumer_pid": 0, "listen": {"tcp": listen}},
            "kind": "http", "consumer": "EXTERNAL", "routes": [route],
        },
        "limits": {
            "connect_timeout_ms": 5000, "connect_retry_ms": 400,
            "head_timeout_ms": 30000, "idle_timeout_ms": 600000,
            "tcp_idle_timeout_ms": 0, "half_close_linger_ms": 60000,
            "max_conns": 65536, "max_head_bytes": 16384,
            "response_timeout_ms": 30000, "pipe_size": 65536,
        },
        "log_target": "stderr", "log_level": "warn", "access_log": ACCESS_LOG,
    }


def read_response(s, buf):
    """One response (Content-Length framed) from s; returns the rest."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise SystemExit(f"connection closed before a response head: {buf!r}")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected response: {head!r}")
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    while len(rest) < n:
        d = s.recv(65536)
        if not d:
            raise SystemExit("response body cut short")
        rest += d
    return rest[n:]


def rss_anon(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def main():
    binary, backend_port, reqs, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    wrapper = sys.argv[5:]
    scratch = tempfile.mkdtemp(prefix="pvx-http-worker.")
    name = os.path.join(scratch, "pvx-worker-http")
    os.symlink(os.path.abspath(binary), name)
    lis = socket.socket()
    lis.bind(("127.0.0.1", 0))
    lis.listen(4096)
    listen = "127.0.0.1:%d" % lis.getsockname()[1]
    sup, wrk = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def fd3():
        os.dup2(wrk.fileno(), 3)

    stderr = subprocess.DEVNULL if ACCESS_LOG != "off" else None
    child = subprocess.Popen(wrapper + [name, listen], preexec_fn=fd3, close_fds=False,
                             stdin=subprocess.DEVNULL, stderr=stderr)
    wrk.close()
    msg = json.dumps({"msg": "init", "seq": 1, "config": config(listen, backend_port)}).encode()
    socket.send_fds(sup, [msg], [lis.fileno()])
    lis.close()
    sup.settimeout(60)
    ack = json.loads(sup.recv(65536))
    if ack.get("msg") != "ack" or ack.get("error") is not None:
        raise SystemExit(f"worker refused init: {ack}")
    addr = ("127.0.0.1", int(listen.rsplit(":", 1)[1]))
    if mode == "close":
        for _ in range(reqs):
            s = socket.create_connection(addr)
            s.sendall(REQ_CLOSE)
            read_response(s, b"")
            while s.recv(65536):
                pass
            s.close()
    elif mode == "keep":
        s = socket.create_connection(addr)
        buf = b""
        for _ in range(reqs):
            s.sendall(REQ_KEEP)
            buf = read_response(s, buf)
        s.close()
    elif mode == "idle":
        pid = child.pid
        before = rss_anon(pid)
        held = []
        for _ in range(reqs):
            s = socket.create_connection(addr)
            s.sendall(REQ_KEEP)
            read_response(s, b"")
            held.append(s)
        time.sleep(1)
        during = rss_anon(pid)
        print(f"idle keep-alive: {reqs} clients, RssAnon {before} -> {during} KiB, "
              f"{(during - before) * 1024 / max(reqs, 1):.0f} bytes per client", flush=True)
        fresh = []
        for _ in range(reqs):
            fresh.append(socket.create_connection(addr))
        time.sleep(1)
        after = rss_anon(pid)
        print(f"freshly accepted (nothing sent): {reqs} more clients, RssAnon {during} -> "
              f"{after} KiB, {(after - during) * 1024 / max(reqs, 1):.0f} bytes per client",
              flush=True)
        for s in held + fresh:
            s.close()
    sup.close()
    code = child.wait(timeout=120)
    os.unlink(name)
    os.rmdir(scratch)
    if code != 0:
        raise SystemExit(f"worker exited {code}")


main()
