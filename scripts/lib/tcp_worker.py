#!/usr/bin/env python3
"""Run one pvx-worker-tcp without the supervisor (alone.py) under an
optional wrapper (valgrind, strace), with its own loopback echo backend,
give it CONNS connections (100 bytes up, echoed back, both sides closing)
and stop it. Issue 20's figures: what an access line costs.

  tcp_worker.py BIN CONNS ACCESS_LOG [WRAPPER...]

ACCESS_LOG: off, stderr (the worker's stderr goes to a file) or syslog
(PVX_SYSLOG_PATH names the datagram socket, someone must read it).
Prints how many access lines the worker wrote to stderr.
"""
import os
import selectors
import socket
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from alone import Alone  # noqa: E402


def echo_backend():
    """A loopback echo server on a thread; returns its port."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1024)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)

    def serve():
        while True:
            for key, _ in sel.select():
                if key.data is None:
                    try:
                        c, _ = ls.accept()
                    except BlockingIOError:
                        continue
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, 1)
                    continue
                c = key.fileobj
                try:
                    d = c.recv(65536)
                except (BlockingIOError, ConnectionError):
                    continue
                if d:
                    c.sendall(d)
                else:
                    sel.unregister(c)
                    c.close()

    threading.Thread(target=serve, daemon=True).start()
    return ls.getsockname()[1]


def config(listen, backend_port, access_log):
    via = {
        "name": "bench", "consumer": "EXTERNAL", "provider": "p", "provider_pid": 0,
        "role": "any", "backend": {"tcp": f"127.0.0.1:{backend_port}"}, "prefix": "/",
        "strip_prefix": False, "host": None, "sni": None, "proxy_protocol": None,
    }
    return {
        "endpoint": {
            "key": {"consumer_pid": 0, "listen": {"tcp": listen}},
            "kind": "tcp", "consumer": "EXTERNAL", "routes": [{"link": 0, "via": via}],
        },
        "limits": {
            "connect_timeout_ms": 5000, "connect_retry_ms": 400,
            "head_timeout_ms": 30000, "idle_timeout_ms": 600000,
            "tcp_idle_timeout_ms": 0, "half_close_linger_ms": 60000,
            "max_conns": 65536, "max_head_bytes": 16384,
            "response_timeout_ms": 30000, "pipe_size": 65536, "health_interval_ms": 0,
        },
        "log_target": "stderr", "log_level": "warn", "access_log": access_log,
    }


def main():
    binary, conns, access_log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    backend_port = echo_backend()
    errors = tempfile.NamedTemporaryFile("w+", prefix="pvx-tcp-worker.", suffix=".stderr")
    w = Alone(binary, "tcp", lambda listen: config(listen, backend_port, access_log),
              sys.argv[4:], stderr=errors)
    payload = b"x" * 100
    for _ in range(conns):
        s = socket.create_connection(w.addr)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while d := s.recv(65536):
            got += d
        if got != payload:
            raise SystemExit(f"echo differs: {got!r}")
        s.close()
    w.stop()
    errors.seek(0)
    lines = sum(1 for line in errors if "access: kind=tcp" in line)
    print(f"{lines} access line(s) on stderr", file=sys.stderr)


main()
