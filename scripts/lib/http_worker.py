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
requested (default /index.html).
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from alone import Alone  # noqa: E402

PATH = os.environ.get("PVX_PROF_PATH", "/index.html").encode()
REQ_CLOSE = b"GET " + PATH + b" HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
REQ_KEEP = b"GET " + PATH + b" HTTP/1.1\r\nHost: bench\r\n\r\n"


def config(listen, backend_port):
    via = {
        "name": "bench", "consumer": "EXTERNAL", "provider": "p",
        "provider_pid": 0, "role": "any",
        "backend": {"tcp": f"127.0.0.1:{backend_port}"}, "prefix": "/",
        "strip_prefix": True, "host": None, "sni": None, "proxy_protocol": None,
    }
    route = {"link": 0, "via": via}
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
        "log_target": "stderr", "log_level": "warn",
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
    w = Alone(binary, "http", lambda listen: config(listen, backend_port), wrapper)
    addr = w.addr
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
        pid = w.pid
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
    w.stop()


main()
