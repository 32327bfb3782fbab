#!/usr/bin/env python3
"""Load, kills, reloads and sampling for scripts/soak.sh (stdlib only).

Runs for --seconds against a supervisor started by soak.sh on its graph
(a tcp echo link, an http endpoint with routes /a and /b, a unix echo link;
backends from soak_backend.py):

  well-behaved traffic, every answer checked:
    tcp, unix   1-4 echo round trips of random bytes, then half-close and
                read the last echo to EOF
    get         a keep-alive connection with 2-10 GETs of generated bodies
    pipelined   2-8 GETs sent in one write, answers read in order
    chunked     1-3 chunked uploads per connection; length and sha256 echoed
    websocket   upgrade, 1-10 masked frames echoed, close handshake
  misbehaving clients mixed in:
    slowloris   a head byte per second for 3-40 s (past --head-timeout: 408)
    half-close  a partial head, then SHUT_WR
    rst         SO_LINGER 0 close mid-body (http) or mid-echo (tcp, unix)
    oversized   a 20 KiB head or 150 header lines: must be answered 431
    abrupt      connect and close, or close after half a head
    flood       --flood connections (300) that send one byte each, held
                1-3 s, then closed: every 20-60 s while kills go on, then once
                at each endpoint when they stop
  kills         kill -9 of a random worker every 2-6 s, until the last
                quarter of the run (at most 60 s, at least 15 s) so that the
                workers measured at the end have carried load
  reloads       SIGHUP every 4-10 s; half of them switch the graph between
                variant A and B (B adds route /c and a second tcp endpoint);
                the last one restores A; each is checked in `status`
  samples       every second: RssAnon, fds, pipes of the supervisor and of every
                child process, into --csv

A failed well-behaved request is counted apart, as a casualty of a kill,
only when its connection was opened before a kill of the worker serving its
endpoint returned and failed after that kill began: such a connection may
have been inside the killed worker. A connection opened after the kill waits
in the kernel backlog (the supervisor owns the listener) and must succeed;
its failure is a failure.

A misbehaving client's error is classified the same way, and only in the
report, once every kill is recorded: a kill is recorded when its new worker
shows in `status` (tens of ms later), and a client that notices the death at
once — a slowloris waiting for its 408 reads EOF the moment its worker
dies — has failed by then. A slowloris error that no kill of the http
worker explains is a failure: every slow head must end in 408 (or 200).

After the load stops, resources are sampled each second for up to --settle
seconds until every process is back at its baseline (taken before any
traffic): fds and pipes exactly, anonymous RSS (RssAnon; "RSS" in the
report) at most 2 MiB above. Exit 1 on any failure.
"""

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import sys
import threading
import time

OP_TIMEOUT = 20.0
RSS_SLACK_KB = 2048
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WELL = ("tcp", "unix", "get", "pipelined", "chunked", "websocket")
BAD = ("slowloris", "half-close", "rst", "oversized", "abrupt", "flood")
CLIENTS = {"tcp": 2, "unix": 2, "get": 1, "pipelined": 1, "chunked": 1, "websocket": 1}
THREADS = {"tcp": 2, "unix": 2, "http": 4}  # well-behaved clients per endpoint
now = time.monotonic


class Fail(Exception):
    pass


# ---------------------------------------------------------------- status


def status(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(b"GET /status HTTP/1.1\r\nHost: pv-xconnect\r\nConnection: close\r\n\r\n")
        out = read_to_eof(s)
    finally:
        s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise RuntimeError(f"status socket answered {head[:80]!r}")
    if b"chunked" in head.lower():
        body = dechunk(body)
    return json.loads(body)


def dechunk(b):
    out = b""
    while True:
        line, _, b = b.partition(b"\r\n")
        n = int(line.split(b";")[0], 16)
        if n == 0:
            return out
        out += b[:n]
        b = b[n + 2 :]


def read_to_eof(s):
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


# ---------------------------------------------------------------- sockets


class Conn:
    """A client socket with a read buffer (for heads, bodies and frames)."""

    def __init__(self, ep):
        self.t0 = now()
        if ep.kind == "unix":
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(OP_TIMEOUT)
            self.s.connect(ep.address)
        else:
            host, _, port = ep.address.rpartition(":")
            self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.s.settimeout(OP_TIMEOUT)
            self.s.connect((host, int(port)))
        self.buf = b""

    def send(self, b):
        self.s.sendall(b)

    def fill(self):
        b = self.s.recv(65536)
        if not b:
            raise Fail(f"eof after {len(self.buf)} buffered bytes")
        self.buf += b

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise Fail("line over 64 KiB")
            self.fill()
        out, _, self.buf = self.buf.partition(b"\r\n")
        return out

    def eof(self):
        """Reads to EOF; what came before it."""
        out = self.buf
        self.buf = b""
        while True:
            b = self.s.recv(65536)
            if not b:
                return out
            out += b

    def response(self):
        """One HTTP response: (code, headers, body)."""
        status_line = self.line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise Fail(f"bad status line {status_line[:60]!r}")
        code = int(parts[1])
        h = {}
        while True:
            ln = self.line()
            if not ln:
                break
            k, _, v = ln.partition(b":")
            h[k.strip().lower().decode()] = v.strip().decode()
        if code in (101, 204, 304) or 100 <= code < 200:
            return code, h, b""
        if "chunked" in h.get("transfer-encoding", "").lower():
            body = b""
            while True:
                n = int(self.line().split(b";")[0], 16)
                if n == 0:
                    while self.line():
                        pass
                    return code, h, body
                body += self.exact(n)
                self.exact(2)
        if "content-length" in h:
            return code, h, self.exact(int(h["content-length"]))
        return code, h, self.eof()

    def rst(self):
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.s.close()

    def close(self):
        self.s.close()


def data_body(n, ident):
    unit = (ident + "\n").encode()
    return (unit * (n // len(unit) + 1))[:n]


def xor(data, mask):
    n = len(data)
    if not n:
        return data
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def ws_frame(op, data, mask):
    n = len(data)
    if n < 126:
        head = bytes([0x80 | op, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | op, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | op, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + xor(data, mask)


def ws_read(c):
    b0, b1 = c.exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(c.exact(2), "big")
    elif n == 127:
        n = int.from_bytes(c.exact(8), "big")
    if b1 & 0x80:
        raise Fail("server frame is masked")
    return b0 & 0x0F, c.exact(n)


# ---------------------------------------------------------------- endpoints


class Endpoint:
    def __init__(self, name, kind, address):
        self.name, self.kind, self.address = name, kind, address


# ---------------------------------------------------------------- the run


class Soak:
    # How far above its baseline a process may settle: RSS (kB), and fds
    # (0 here; chaos allows the health checks' sockets in flight).
    rss_slack_kb = RSS_SLACK_KB
    fd_slack = 0

    def __init__(self, a):
        self.a = a
        self.rnd = random.Random(a.seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = {k: 0 for k in WELL}
        self.failures = []  # (kind, endpoint name, t_conn, t_fail, detail)
        self.bad = {k: 0 for k in BAD}
        # (kind, outcome, err): err is None, or (exception, endpoint names,
        # t_conn, t_fail) and outcome a template for its "{why}".
        self.bad_results = []
        self.bad_failures = []  # (kind, endpoint name, t_conn, t_fail, detail)
        self.kills = []  # (endpoint name, t_before, t_after, t_back, old, new)
        self.reloads = 0
        self.switches = 0
        self.problems = []
        self.tcp = Endpoint("tcp", "tcp", a.tcp)
        self.http = Endpoint("http", "http", a.http)
        self.unix = Endpoint("unix", "unix", a.unix)
        self.by_addr = {e.address: e for e in (self.tcp, self.http, self.unix)}
        self.csv = open(a.csv, "w")
        self.csv.write("t_s,role,pid,rss_kb,fds,pipes\n")
        self.t_start = now()
        self.latest = {}  # role -> (pid, rss, fds, pipes)

    # ---- bookkeeping

    def done(self, kind, n=1):
        with self.lock:
            self.ok[kind] += n

    def failed(self, kind, ep, t_conn, detail):
        with self.lock:
            self.failures.append((kind, ep.name, t_conn, now(), detail))

    def bad_done(self, kind, outcome, err=None):
        """A misbehaving client ended with `outcome`; with `err` (from
        `error`), `outcome` is a template whose "{why}" the report fills in."""
        with self.lock:
            self.bad[kind] += 1
            self.bad_results.append((kind, outcome, err))

    def error(self, e, ep_name, t_conn):
        """A misbehaving client's error on endpoint `ep_name` (None: any)."""
        names = (ep_name,) if ep_name else ("tcp", "http", "unix")
        return (e, names, t_conn, now())

    def classify_bad(self):
        """({"kind: outcome": count}, [(t, duration, kind, detail)] of the
        errors no kill explains). Only once every kill is recorded: see the
        module's docstring."""
        outcomes, odd = {}, []
        with self.lock:
            results = list(self.bad_results)
        for kind, outcome, err in results:
            if err is not None:
                e, names, t_conn, t = err
                why = type(e).__name__
                if any(self.killed(n, t_conn, t) for n in names):
                    why += " (a worker was killed meanwhile)"
                else:
                    odd.append((t - self.t_start, t - t_conn, kind, f"{type(e).__name__}: {e}"))
                outcome = outcome.format(why=why)
            key = f"{kind}: {outcome}"
            outcomes[key] = outcomes.get(key, 0) + 1
        return outcomes, odd

    def killed(self, ep_name, t_conn, t_fail):
        return self.kill_of(ep_name, t_conn, t_fail) is not None

    def kill_of(self, ep_name, t_conn, t_fail):
        """The index of the first kill that may explain a failure, or None."""
        for i, (name, t_before, t_after, *_) in enumerate(self.kills):
            if name == ep_name and t_conn < t_after and t_fail >= t_before:
                return i
        return None

    def conn(self, ep):
        """Every client connection is made here (chaos.py tracks them)."""
        return Conn(ep)

    # ---- well-behaved clients

    def run_well(self, kind, seed):
        rnd = random.Random(seed)
        op = {
            "tcp": lambda: self.echo(self.tcp, rnd),
            "unix": lambda: self.echo(self.unix, rnd),
            "get": lambda: self.get(rnd),
            "pipelined": lambda: self.pipelined(rnd),
            "chunked": lambda: self.chunked(rnd),
            "websocket": lambda: self.websocket(rnd),
        }[kind]
        ep = {"tcp": self.tcp, "unix": self.unix}.get(kind, self.http)
        while not self.stop.is_set():
            t_conn = now()
            try:
                op()
            except (OSError, Fail, ValueError) as e:
                self.failed(kind, ep, t_conn, f"{type(e).__name__}: {e}")
            time.sleep(rnd.uniform(0.005, 0.03))

    def echo(self, ep, rnd):
        kind = ep.kind
        c = self.conn(ep)
        try:
            for _ in range(rnd.randint(1, 4)):
                p = rnd.randbytes(rnd.randint(1, 32 * 1024))
                c.send(p)
                got = c.exact(len(p))
                if got != p:
                    raise Fail(f"echo of {len(p)} bytes differs")
                self.done(kind)
            p = rnd.randbytes(rnd.randint(1, 32 * 1024))
            c.send(p)
            c.s.shutdown(socket.SHUT_WR)
            got = c.eof()
            if got != p:
                raise Fail(f"last echo of {len(p)} bytes came back as {len(got)}")
            self.done(kind)
        finally:
            c.close()

    def check_data(self, code, body, n, ident):
        if code != 200:
            raise Fail(f"GET answered {code}: {body[:80]!r}")
        if body != data_body(n, ident):
            raise Fail(f"GET body of {len(body)} bytes (wanted {n}) differs")

    def get(self, rnd):
        c = self.conn(self.http)
        try:
            k = rnd.randint(2, 10)
            for i in range(k):
                route = rnd.choice("ab")
                n = rnd.choice((0, 10, 1000, rnd.randint(1, 200_000)))
                ident = f"g{rnd.getrandbits(32):x}"
                last = i == k - 1 and rnd.random() < 0.5
                c.send(
                    f"GET /{route}/data?n={n}&id={ident} HTTP/1.1\r\nHost: soak\r\n"
                    f"{'Connection: close' if last else 'X-Soak: 1'}\r\n\r\n".encode()
                )
                code, _, body = c.response()
                self.check_data(code, body, n, ident)
                self.done("get")
            if last and c.eof():
                raise Fail("bytes after a Connection: close answer")
        finally:
            c.close()

    def pipelined(self, rnd):
        c = self.conn(self.http)
        try:
            reqs = []
            for _ in range(rnd.randint(2, 8)):
                reqs.append((rnd.choice("ab"), rnd.randint(0, 20_000), f"p{rnd.getrandbits(32):x}"))
            c.send(
                b"".join(
                    f"GET /{r}/data?n={n}&id={i} HTTP/1.1\r\nHost: soak\r\n\r\n".encode()
                    for r, n, i in reqs
                )
            )
            for _, n, ident in reqs:
                code, _, body = c.response()
                self.check_data(code, body, n, ident)
                self.done("pipelined")
        finally:
            c.close()

    def chunked(self, rnd):
        c = self.conn(self.http)
        try:
            for _ in range(rnd.randint(1, 3)):
                body = rnd.randbytes(rnd.randint(0, 256 * 1024))
                c.send(
                    f"POST /{rnd.choice('ab')}/upload HTTP/1.1\r\nHost: soak\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n".encode()
                )
                i = 0
                while i < len(body):
                    n = rnd.randint(1, 40_000)
                    part = body[i : i + n]
                    c.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    i += n
                c.send(b"0\r\n\r\n")
                code, _, got = c.response()
                want = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
                if code != 200 or got != want:
                    raise Fail(f"upload of {len(body)} answered {code} {got[:90]!r}")
                self.done("chunked")
        finally:
            c.close()

    def websocket(self, rnd):
        c = self.conn(self.http)
        try:
            key = base64.b64encode(rnd.randbytes(16)).decode()
            c.send(
                f"GET /{rnd.choice('ab')}/ws HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            code, h, _ = c.response()
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if code != 101 or h.get("sec-websocket-accept") != accept:
                raise Fail(f"upgrade answered {code} accept={h.get('sec-websocket-accept')}")
            for _ in range(rnd.randint(1, 10)):
                op = rnd.choice((1, 2))
                if op == 1:
                    data = rnd.choice(("hello", "x" * rnd.randint(0, 9000))).encode()
                else:
                    data = rnd.randbytes(rnd.randint(0, 70_000))
                c.send(ws_frame(op, data, rnd.randbytes(4)))
                rop, got = ws_read(c)
                if rop != op or got != data:
                    raise Fail(f"frame of {len(data)} echoed as op {rop}, {len(got)} bytes")
                self.done("websocket")
            c.send(ws_frame(8, b"\x03\xe8", rnd.randbytes(4)))
            rop, _ = ws_read(c)
            if rop != 8:
                raise Fail(f"close answered with op {rop}")
            if c.eof():
                raise Fail("bytes after the close frame")
        finally:
            c.close()

    # ---- misbehaving clients

    def run_slowloris(self, seed):
        rnd = random.Random(seed)
        while not self.stop.is_set():
            t_conn = now()
            try:
                self.slowloris(rnd)
            except (OSError, Fail) as e:
                self.bad_done("slowloris", "{why}", self.error(e, "http", t_conn))
            self.stop.wait(rnd.uniform(0.1, 2))

    def slowloris(self, rnd):
        c = self.conn(self.http)
        try:
            c.send(b"GET /a/data?n=5&id=slow HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
            secs = rnd.randint(3, 40)
            # Past --head-timeout (30 s from the first byte) the worker
            # answers 408; stop dripping before that so the answer is read,
            # not lost to a reset caused by bytes it will never read.
            for _ in range(min(secs, 28)):
                if self.stop.wait(1):
                    break
                c.send(b"z")
            if secs > 30 and not self.stop.is_set():
                code, _, _ = c.response()
                self.bad_done("slowloris", str(code))
            else:
                c.send(b"\r\n\r\n")
                code, _, _ = c.response()
                self.bad_done("slowloris", str(code))
        finally:
            c.close()

    def run_flood(self, seed, until):
        """Bursts of --flood connections that each send one byte (of a head,
        for http), held 1-3 s, then closed: every 20-60 s at a random
        endpoint while kills go on, then once at each endpoint when they
        stop, so that the workers measured at the end have taken one."""
        rnd = random.Random(seed)
        while not self.stop.wait(min(rnd.uniform(20, 60), max(0, until - now()))) and now() < until:
            self.flood(rnd, rnd.choice((self.http, self.http, self.tcp, self.unix)))
        for ep in (self.http, self.tcp, self.unix):
            if self.stop.is_set():
                break
            self.flood(rnd, ep)

    def flood(self, rnd, ep):
        conns, t0 = [], now()
        try:
            for _ in range(self.a.flood):
                c = self.conn(ep)
                conns.append(c)
                c.send(b"G")
            self.stop.wait(rnd.uniform(1, 3))
            outcome = f"{ep.kind} {len(conns)} connections"
            err = None
        except (OSError, Fail) as e:
            outcome = f"{ep.kind} {{why}} after {len(conns)}"
            err = self.error(e, ep.name, t0)
        finally:
            for c in conns:
                c.close()
        self.bad_done("flood", outcome, err)

    def run_bad(self, seed):
        rnd = random.Random(seed)
        acts = (self.half_close, self.rst, self.oversized, self.abrupt)
        while not self.stop.is_set():
            act = rnd.choice(acts)
            t_conn = now()
            try:
                act(rnd, t_conn)
            except (OSError, Fail) as e:
                self.bad_done(act.__name__.replace("_", "-"), "{why}", self.error(e, None, t_conn))
            self.stop.wait(rnd.uniform(0.05, 0.4))

    def half_close(self, rnd, t_conn):
        ep = rnd.choice((self.http, self.http, self.tcp, self.unix))
        c = self.conn(ep)
        try:
            if ep.kind == "http":
                c.send(b"GET /b/data?n=100&id=half HTTP/1.1\r\nHost: so")
            else:
                c.send(rnd.randbytes(rnd.randint(1, 5000)))
            c.s.shutdown(socket.SHUT_WR)
            got = c.eof()
            self.bad_done("half-close", f"{ep.kind} closed after {'bytes' if got else 'nothing'}")
        finally:
            c.close()

    def rst(self, rnd, t_conn):
        ep = rnd.choice((self.http, self.http, self.tcp, self.unix))
        c = self.conn(ep)
        if ep.kind == "http":
            n = rnd.randint(10_000, 500_000)
            c.send(
                f"POST /{rnd.choice('ab')}/upload HTTP/1.1\r\nHost: soak\r\n"
                f"Content-Length: {n}\r\n\r\n".encode()
            )
            c.send(rnd.randbytes(rnd.randint(0, n // 2)))
        else:
            c.send(rnd.randbytes(rnd.randint(1, 100_000)))
        time.sleep(rnd.uniform(0, 0.05))
        c.rst()
        self.bad_done("rst", ep.kind)

    def oversized(self, rnd, t_conn):
        c = self.conn(self.http)
        try:
            if rnd.random() < 0.5:
                head = "GET /a/data?n=1&id=big HTTP/1.1\r\nHost: soak\r\nX-Big: " + "b" * 20_000 + "\r\n\r\n"
            else:
                head = "GET /a/data?n=1&id=many HTTP/1.1\r\nHost: soak\r\n" + "".join(
                    f"X-H{i}: v\r\n" for i in range(150)
                ) + "\r\n"
            try:
                c.send(head.encode())
                code, _, _ = c.response()
            except (OSError, Fail) as e:
                with self.lock:
                    self.bad_failures.append(("oversized", "http", t_conn, now(), f"{type(e).__name__}: {e}"))
                self.bad_done("oversized", type(e).__name__)
                return
            if code != 431:
                with self.lock:
                    self.bad_failures.append(("oversized", "http", t_conn, now(), f"answered {code}"))
            self.bad_done("oversized", str(code))
        finally:
            c.close()

    def abrupt(self, rnd, t_conn):
        ep = rnd.choice((self.http, self.tcp, self.unix))
        c = self.conn(ep)
        if rnd.random() < 0.5 and ep.kind == "http":
            c.send(b"POST /a/upload HTTP/1.1\r\nHost: soak\r\nContent-Le")
        elif rnd.random() < 0.5:
            c.send(rnd.randbytes(100))
        c.close()
        self.bad_done("abrupt", ep.kind)

    # ---- kills and reloads

    def workers(self):
        st = status(self.a.status_socket)
        return {ep["address"]: ep for ep in st["endpoints"]}, st

    def run_kills(self, until):
        rnd = random.Random(self.a.seed + 1)
        while not self.stop.wait(rnd.uniform(2, 6)) and now() < until:
            ep = rnd.choice((self.tcp, self.http, self.unix))
            try:
                eps, _ = self.workers()
            except (OSError, RuntimeError, ValueError) as e:
                self.problems.append(f"status before a kill: {e}")
                continue
            w = eps.get(ep.address, {}).get("worker", {})
            old = w.get("pid")
            if w.get("state") != "running" or not old or not self.is_our_worker(old):
                continue
            t_before = now()
            os.kill(old, signal.SIGKILL)
            t_after = now()
            new, deadline = None, now() + 30
            while now() < deadline:
                try:
                    w = self.workers()[0].get(ep.address, {}).get("worker", {})
                except (OSError, RuntimeError, ValueError):
                    w = {}
                if w.get("pid") and w["pid"] != old and w.get("state") == "running":
                    new = w["pid"]
                    break
                time.sleep(0.02)
            if new is None:
                self.problems.append(f"kill of {ep.name} worker {old}: no new worker within 30 s")
            with self.lock:
                self.kills.append((ep.name, t_before, t_after, now(), old, new))

    def is_our_worker(self, pid):
        """`status` named pid; still a child of our supervisor (not reused)?"""
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        return ppid == self.a.sup_pid

    def use_graph(self, variant):
        src = self.a.graph_a if variant == "A" else self.a.graph_b
        tmp = self.a.graph + ".tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, self.a.graph)

    def run_reloads(self, until):
        rnd = random.Random(self.a.seed + 2)
        variant = "A"
        while not self.stop.wait(rnd.uniform(4, 10)) and now() < until:
            if rnd.random() < 0.5:
                variant = "B" if variant == "A" else "A"
                self.use_graph(variant)
                self.switches += 1
            self.reload(variant)
        if variant != "A":
            self.use_graph("A")
            self.switches += 1
            self.reload("A")

    def want(self, variant):
        """(endpoints, routes of the http endpoint) that `status` shows once
        graph `variant` is applied."""
        return (3, 2) if variant == "A" else (4, 3)

    def reload(self, variant):
        os.kill(self.a.sup_pid, signal.SIGHUP)
        self.reloads += 1
        want_eps, want_routes = self.want(variant)
        deadline = now() + 15
        while now() < deadline:
            try:
                eps, _ = self.workers()
                routes = len(eps.get(self.http.address, {}).get("routes") or [])
                if len(eps) == want_eps and routes == want_routes:
                    return
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.1)
        self.problems.append(f"reload to graph {variant}: status did not show it within 15 s")

    # ---- samples

    def sample(self):
        # The supervisor first: its end of the status connection made just
        # below may not be closed yet when it is counted.
        t = now() - self.t_start
        sup = proc_sample(self.a.sup_pid)
        try:
            st = status(self.a.status_socket)
        except (OSError, RuntimeError, ValueError) as e:
            self.problems.append(f"status while sampling: {e}")
            return {}
        roles = {"supervisor": self.a.sup_pid}
        for ep in st["endpoints"]:
            pid = ep["worker"].get("pid")
            if pid:
                roles[f"{ep['kind']} {ep['address']}"] = pid
        listed = set(roles.values())
        for pid in children(self.a.sup_pid):
            if pid not in listed:
                roles[f"other child {pid}"] = pid
        out = {}
        for role, pid in roles.items():
            r = sup if role == "supervisor" else proc_sample(pid)
            if r is None:
                continue
            out[role] = (pid,) + r
            self.csv.write(f"{t:.1f},{role},{pid},{r[0]},{r[1]},{r[2]}\n")
        self.csv.flush()
        self.latest = out
        return out

    def run_sampler(self):
        while not self.stop.wait(1):
            self.sample()

    # ---- main

    def run(self):
        a = self.a
        base = {}
        for _ in range(3):
            base = self.sample()
            time.sleep(1)
        if len([r for r in base if not r.startswith("other")]) != 4:
            print(f"soak: expected the supervisor and 3 workers at rest, found {sorted(base)}")
            return 1
        self.base = base
        end = now() + a.seconds
        calm = max(15, min(60, a.seconds / 4))
        until = end - calm
        threads = [threading.Thread(target=self.run_sampler, daemon=True)]
        seeds = iter(range(a.seed * 100, a.seed * 100 + 100))
        for kind, n in CLIENTS.items():
            threads += [threading.Thread(target=self.run_well, args=(kind, next(seeds)), daemon=True) for _ in range(n)]
        threads += [threading.Thread(target=self.run_slowloris, args=(next(seeds),), daemon=True) for _ in range(2)]
        threads.append(threading.Thread(target=self.run_bad, args=(next(seeds),), daemon=True))
        if a.flood:
            threads.append(threading.Thread(target=self.run_flood, args=(next(seeds), until), daemon=True))
        control = [
            threading.Thread(target=self.run_kills, args=(until,), daemon=True),
            threading.Thread(target=self.run_reloads, args=(until,), daemon=True),
        ]
        print(
            f"soak: {a.seconds / 60:g} min; kills and reloads for the first {(until - end + a.seconds) / 60:.1f} min; "
            f"samples in {a.csv}",
            flush=True,
        )
        for th in threads + control:
            th.start()
        last_report = now()
        while now() < end:
            time.sleep(1)
            if now() - last_report >= 60:
                last_report = now()
                with self.lock:
                    print(
                        f"  {(now() - self.t_start) / 60:4.1f} min: ok {sum(self.ok.values())}, "
                        f"failed {len(self.failures)} (incl. with killed workers), misbehaving {sum(self.bad.values())}, "
                        f"kills {len(self.kills)}, reloads {self.reloads}",
                        flush=True,
                    )
        for th in control:
            th.join(60)  # a kill or reload in progress finishes
        self.stop.set()
        for th in threads:
            th.join(OP_TIMEOUT + 5)
        t_stop = now()

        cur, bad = self.settle(t_stop + a.settle)
        settled = now() - t_stop
        return self.report(cur, bad, settled)

    def resource_problems(self, cur):
        out = []
        for role, (pid, rss, fds, pipes) in self.base.items():
            if role not in cur:
                out.append(f"{role}: gone")
                continue
            _, rss2, fds2, pipes2 = cur[role]
            if fds2 > fds + self.fd_slack or fds2 < fds:
                out.append(f"{role}: {fds2} fds (baseline {fds})")
            if pipes2 != pipes:
                out.append(f"{role}: {pipes2} pipes (baseline {pipes})")
            if rss2 > rss + self.rss_slack_kb:
                out.append(f"{role}: RSS {rss2} kB (baseline {rss} kB)")
        for role in cur:
            if role not in self.base:
                out.append(f"{role}: still there")
        return out

    def settle(self, deadline):
        """Sample each second until every process is back at its baseline
        or `deadline` passes: (the last sample, what is still off)."""
        while True:
            cur = self.sample()
            bad = self.resource_problems(cur)
            if not bad or now() >= deadline:
                return cur, bad
            time.sleep(1)

    def report(self, cur, res_bad, settled):
        a = self.a
        try:
            st = status(a.status_socket)
            restarts = sum(ep["worker"]["restarts"] for ep in st["endpoints"])
        except (OSError, RuntimeError, ValueError) as e:
            restarts = None
            self.problems.append(f"final status: {e}")
        real, casualties = [], []
        for f in self.failures:
            (casualties if self.killed(f[1], f[2], f[3]) else real).append(f)
        bad_real = [f for f in self.bad_failures if not self.killed(f[1], f[2], f[3])]
        fails_by = {k: 0 for k in WELL}
        cas_by = {k: 0 for k in WELL}
        for f in real:
            fails_by[f[0]] += 1
        for f in casualties:
            cas_by[f[0]] += 1
        recover = sorted((k[3] - k[1]) * 1000 for k in self.kills if k[5])
        print()
        print(f"minutes: {a.seconds / 60:g}")
        print("well-behaved requests (ok / failed / lost with a killed worker):")
        for k in WELL:
            print(f"  {k:10} {self.ok[k]:8} / {fails_by[k]} / {cas_by[k]}")
        print(f"  {'total':10} {sum(self.ok.values()):8} / {len(real)} / {len(casualties)}")
        # Each client thread has one connection at a time, so one kill can
        # take at most as many well-behaved connections as the endpoint has
        # threads; more would mean the attribution hides real failures.
        per_kill = {}
        for f in casualties:
            i = self.kill_of(f[1], f[2], f[3])
            per_kill[i] = per_kill.get(i, 0) + 1
        for i, n in per_kill.items():
            name = self.kills[i][0]
            if n > THREADS[name]:
                self.problems.append(f"kill {i + 1} ({name}) took {n} requests; its endpoint has {THREADS[name]} clients")
        if casualties:
            print(
                f"  lost with a killed worker: {len(casualties)} in {len(per_kill)} of {len(self.kills)} kills, "
                f"at most {max(per_kill.values())} in one (clients per endpoint: "
                + ", ".join(f"{k} {v}" for k, v in THREADS.items()) + ")"
            )
        print(f"misbehaving clients: {sum(self.bad.values())} ({', '.join(f'{k} {v}' for k, v in self.bad.items())})")
        bad_outcomes, bad_odd = self.classify_bad()
        for k in sorted(bad_outcomes):
            print(f"    {k}: {bad_outcomes[k]}")
        for t, d, kind, detail in bad_odd[:10]:
            print(f"    ({kind} at {t:.1f} s, after {d:.1f} s, no kill explains it: {detail})")
            if kind == "slowloris":
                self.problems.append(f"slowloris at {t:.1f} s got no answer and no kill explains it: {detail}")
        print(
            f"kills: {len(self.kills)}"
            + (f" (kill -> new worker in status: median {recover[len(recover) // 2]:.0f} ms, max {recover[-1]:.0f} ms)" if recover else "")
        )
        print(f"reloads: {self.reloads} (SIGHUP; {self.switches} switched the graph A <-> B)")
        if restarts is not None:
            print(f"restarts in status: {restarts}")
            if restarts != len(self.kills):
                self.problems.append(f"status counts {restarts} restarts for {len(self.kills)} kills")
        print(f"resources after load stopped + {settled:.0f} s (baseline -> end):")
        for role in sorted(self.base):
            pid, rss, fds, pipes = self.base[role]
            if role in cur:
                pid2, rss2, fds2, pipes2 = cur[role]
                print(
                    f"  {role:28} pid {pid}->{pid2}  RSS {rss / 1024:.1f}->{rss2 / 1024:.1f} MiB  "
                    f"fds {fds}->{fds2}  pipes {pipes}->{pipes2}"
                )
            else:
                print(f"  {role:28} pid {pid}->gone")
        peak = {}
        with open(a.csv) as f:
            next(f)
            for line in f:
                _, role, _, rss, fds, pipes = line.rstrip("\n").rsplit(",", 5)
                p = peak.setdefault(role.split(" child ")[0], [0, 0, 0])
                p[0], p[1], p[2] = max(p[0], int(rss)), max(p[1], int(fds)), max(p[2], int(pipes))
        print("peaks during the run: " + "; ".join(
            f"{r} RSS {v[0] / 1024:.1f} MiB fds {v[1]} pipes {v[2]}" for r, v in sorted(peak.items())
        ))
        for f in real[:20]:
            print(f"  FAILED {f[0]} ({f[1]}) at {f[3] - self.t_start:.1f} s: {f[4]}")
        for f in casualties[:5]:
            print(f"  (with a killed worker) {f[0]} at {f[3] - self.t_start:.1f} s: {f[4]}")
        for f in bad_real[:20]:
            print(f"  FAILED expectation {f[0]} at {f[3] - self.t_start:.1f} s: {f[4]}")
        for r in res_bad:
            print(f"  NOT BACK: {r}")
        for p in self.problems[:20]:
            print(f"  problem: {p}")
        missing = [k for k in WELL if self.ok[k] == 0]
        if missing:
            print(f"  problem: no successful request of kind {', '.join(missing)}")
        ok = not real and not bad_real and not res_bad and not self.problems and not missing
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


def children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def proc_sample(pid):
    """(RSS kB, fds, pipes) of pid, or None if it is gone. RSS here is the
    anonymous part (RssAnon: heap, stacks, written data), what a leak
    grows: file pages (code, read-only data) are dropped by an idle process
    and mapped again under load (proto/src/mem.rs), and are not memory it
    holds."""
    try:
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    rss = int(line.split()[1])
        fds = pipes = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            fds += 1
            if target.startswith("pipe:"):
                pipes += 1
        return rss, fds, pipes
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--status-socket", required=True)
    ap.add_argument("--sup-pid", type=int, required=True)
    ap.add_argument("--graph", required=True, help="the file the supervisor reads")
    ap.add_argument("--graph-a", required=True)
    ap.add_argument("--graph-b", required=True)
    ap.add_argument("--tcp", required=True, help="HOST:PORT of the tcp link")
    ap.add_argument("--http", required=True, help="HOST:PORT of the http endpoint")
    ap.add_argument("--unix", required=True, help="path of the unix link")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--settle", type=float, default=45)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--flood", type=int, default=300, help="connections per burst (0: none)")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    a = ap.parse_args()
    print(f"soak: seed {a.seed}")
    return Soak(a).run()


if __name__ == "__main__":
    sys.exit(main())
