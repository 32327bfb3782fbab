#!/usr/bin/env python3
"""Rounds, flag draws, flaky backends, probes and invariants for
scripts/chaos.sh (stdlib only). The traffic, kills, reloads and sampling
are scripts/lib/soak_load.py's (class Soak, subclassed here as Round).

A run of --minutes is split into rounds of about ROUND_S seconds. Each round
draws a flag set (draw_flags) and a schedule from random.Random(seed:round),
writes its graphs, starts a fresh supervisor with those flags, runs the
load, checks the invariants, prints its summary and stops the supervisor
(SIGTERM: it must exit 0). The soak's backends (soak_backend.py, started by
chaos.sh) serve the well-behaved routes; two flaky backends live in this
process and change state on the round's schedule:

  up         answers (http: 200 "flaky"; tcp: echo)
  gone       listener closed: connections are refused
  stall      accepts and reads, never answers
  blackhole  a listener whose accept queue is full: connects time out
  1xx        (http) streams "103 Early Hints" heads for up to FLOOD_S seconds
             or FLOOD_BYTES, then 200

Graph A (B adds route /c and a second tcp endpoint, as the soak's):
  tcp   T  -> tcp echo            well-behaved echo, soak misbehavers, kills
  http  H  /a, /b -> http 1, 2    well-behaved requests, misbehavers, kills
           /f -> flaky http       probes
  unix  U  -> unix echo           well-behaved echo, misbehavers, kills
  tcp   TF -> flaky tcp           probes
  tcp   TI -> tcp echo            never used: always idle
  http  HI /f -> flaky http       never used: idle, its health checks run
  http  HF /dead -> refused port  held-fair: flooded with GET, held until
           /r -> restarting http  the hold ends; /r's provider goes away
                                  for outages shorter than the hold

Invariants, checked each second (the round stops at the first violation):
  idle-cpu      a worker whose endpoint had no client connection open for
                the last CPU_WINDOW + CPU_MARGIN seconds used < 2 % CPU
                (utime + stime over CPU_WINDOW, same pid throughout)
  deadline      each probe connection ends within the bound its flags and
                the flaky backend's states during it give (probe_bound)
  memory        no worker's RssAnon rises more than PEAK_RSS_MB over its
                baseline during the round
  well-behaved  every well-behaved request succeeds unless a kill of its
                endpoint's worker explains it (soak_load's rule)
  held-fair     with --max-held 1, 2 or 4 and a hold an outage fits in
                (held_fair_plan), while /dead is flooded by 4 clients per
                slot: of the GET /r sent into an outage of its provider,
                as many as /r's free share (held_share: max(1, --max-held
                / 2 routes), less ours unanswered; ours are its only
                clients) are held and served 200 once the provider is
                back (held_fair_owed: which ones is not promised, so each
                outage is judged as a whole); also the fresh one sent
                after the route's share of held GET /r half-closed (their
                slots come back). Not asserted with --max-held 1 (the
                shares do not fit).
                `status --json` has one held count per worker
                (.worker.hold), reported, not judged.
and at the end of each round:
  baseline      after the load stops and the flaky backends are back up,
                every process returns to its baseline within --settle
                seconds: fds within FD_SLACK (health checks in flight),
                pipes exactly, RssAnon within RSS_SLACK_MB
  clean stop    the supervisor exits 0 on SIGTERM
"""

import argparse
import json
import math
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soak_load as sl  # noqa: E402

now = time.monotonic
# PVX_CHAOS_LOG_LEVEL set: the round's log, stamped lines written under TRACE_LOCK.
TRACE = [None]
TRACE_LOCK = threading.Lock()


def trace(msg):
    """A line in the round's log, stamped as the worker's (with PVX_CHAOS_LOG_LEVEL)."""
    if TRACE[0] is not None:
        with TRACE_LOCK:
            TRACE[0].write(f"{now():.3f} chaos: {msg}\n")


HZ = os.sysconf("SC_CLK_TCK")
ROUND_S = 100  # a round's length, about
CPU_WINDOW = 3.0
CPU_MARGIN = 2.0
CPU_LIMIT = 0.02
PEAK_RSS_MB = 32
RSS_SLACK_MB = 4
FD_SLACK = 2
SLACK_S = 2.0
SLACK_FRAC = 0.2
FLOOD_S = 3.0
FLOOD_BYTES = 64 << 20
# Knobs of PVX_CHAOS_SKIP (comma-separated), each leaving out one thing.
SKIPS = {
    "hold-short": "never draw --hold-timeout below --connect-timeout",
    "1xx": "no 1xx floods from the flaky http backend",
    "max-held-1": "never draw --max-held 1",
    "blackhole": "no blackhole state (connects that time out)",
    "stall": "no stall state",
    "gone": "no gone state",
    "kills": "no worker kills",
    "reloads": "no reloads",
    "health": "never turn health checks on",
    "proxy-rst": "no client resets on the proxy_protocol link",
    "held-fair": "no held-fair phase (a dead route flooding holds beside a restarting one)",
}
# held-fair: the endpoint's two routes (/dead, /r), the --max-held values it
# runs with, the shortest outage (a request sent 0.05 s into it is held
# after ~375 ms of retries), the outage a half-close window needs (requests
# half-closed at 0.6 s, a fresh one at 0.9 s, held from ~1.3 s), and
# flooding clients per --max-held slot.
HF_ROUTES = 2
HF_HELD = (1, 2, 4)
HF_MIN_OUTAGE_S = 0.6
HF_HALFCLOSE_S = 1.6
HF_FLOOD_PER_SLOT = 4


# ---------------------------------------------------------------- draws


def log_uniform(rnd, lo, hi):
    return math.exp(rnd.uniform(math.log(lo), math.log(hi)))


def draw_flags(rnd, skip=()):
    """One flag set: {flag: value in ms (durations) or a count}, and the
    hold mode. Ranges are sub-ranges of the documented ones (README "Flags
    and defaults") that well-behaved loopback traffic can live with: see
    the comments."""
    f = {}
    # --connect-timeout 10ms-24h: 50 ms to 10 s (10 ms on a loaded 2-core
    # machine would fail loopback connects to healthy backends).
    f["connect-timeout"] = round(log_uniform(rnd, 50, 10_000))
    modes = ["short", "long", "zero"]
    if "hold-short" in skip:
        modes.remove("short")
    mode = rnd.choice(modes)
    if mode == "short":  # hold < connect: issue 18 item 1
        f["hold-timeout"] = max(10, round(f["connect-timeout"] * rnd.uniform(0.1, 0.8)))
    elif mode == "long":
        f["hold-timeout"] = min(20_000, round(f["connect-timeout"] * rnd.uniform(1.2, 4)))
        f["hold-timeout"] = max(f["hold-timeout"], f["connect-timeout"] + 1)
    else:
        f["hold-timeout"] = 0
    held = [1, 2, 4, 1024]
    if "max-held-1" in skip:
        held.remove(1)
    f["max-held"] = rnd.choice(held)
    # --pipe-size a page-1 MiB: a page, the default, 1 MiB, or any size
    # (the kernel rounds up to a power of two pages).
    f["pipe-size"] = rnd.choice((4096, 65536, 1 << 20, rnd.randint(4096, 1 << 20)))
    # --health-interval 0 or 100ms-24h: off, or 100 ms to 5 s.
    if "health" in skip or rnd.random() < 0.4:
        f["health-interval"] = 0
    else:
        f["health-interval"] = round(log_uniform(rnd, 100, 5000))
    f["health-timeout"] = round(log_uniform(rnd, 20, 2000))  # 10ms-24h
    f["health-fall"] = rnd.randint(1, 3)  # 1-1000
    f["health-rise"] = rnd.randint(1, 3)  # 1-1000
    # http timeouts (10ms-24h): long enough for a Python client on a busy
    # machine between requests; short enough that probes see them end.
    f["head-timeout"] = round(log_uniform(rnd, 2000, 30_000))
    f["idle-timeout"] = round(log_uniform(rnd, 5000, 60_000))
    f["response-timeout"] = round(log_uniform(rnd, 3000, 30_000))
    # --tcp-idle-timeout 0 or 10ms-24h: off, or 2 s to 20 s.
    f["tcp-idle-timeout"] = 0 if rnd.random() < 0.4 else round(log_uniform(rnd, 2000, 20_000))
    f["drain-timeout"] = rnd.choice((0, 1000, 10_000))  # 0-24h
    # --max-conns 1-1000000: above the soak's flood of 300 connections.
    f["max-conns"] = rnd.choice((600, 4096, 100_000))
    # Restarts: every kill is a first crash (--reset-window 0s), so only
    # --retry-delay (10ms-24h) matters; up to 200 ms.
    f["retry-delay"] = rnd.choice((10, 20, 200))
    f["backoff-factor"] = rnd.randint(1, 4)
    return f, mode


DURATIONS = {
    "connect-timeout", "hold-timeout", "health-interval", "health-timeout", "head-timeout",
    "idle-timeout", "response-timeout", "tcp-idle-timeout", "drain-timeout", "retry-delay",
}


def flag_args(f):
    out = ["--reset-window", "0s"]
    for k, v in f.items():
        out += [f"--{k}", (f"{v}ms" if v else "0") if k in DURATIONS else str(v)]
    return out


def flag_text(f, mode):
    rel = {"short": "hold < connect", "long": "hold > connect", "zero": "no hold"}[mode]
    return " ".join(flag_args(f)) + f"  ({rel}, health checks {'on' if f['health-interval'] else 'off'})"


def schedule(rnd, kind, seconds, skip=()):
    """[(offset s, state)] of a flaky backend for the first `seconds` of a
    round; up after that."""
    states = ["up", "up", "gone", "stall", "blackhole"] + (["1xx", "1xx"] if kind == "http" else [])
    states = [s for s in states if s not in skip]
    out, t = [(0.0, "up")], rnd.uniform(2, 6)
    while t < seconds:
        out.append((round(t, 2), rnd.choice(states)))
        t += rnd.uniform(2, 10)
    out.append((round(seconds, 2), "up"))
    return out


def held_share(max_held, routes=HF_ROUTES):
    """The held connections a route may count on with `routes` routes
    holding: max(1, max_held / routes) (issue 18, "Holding is fair")."""
    return max(1, max_held // max(1, routes))


def held_fair_asserted(max_held, routes=HF_ROUTES):
    """Whether the rule promises the restarting route a slot while the dead
    one holds its share: only when the shares fit in --max-held (with
    --max-held 1 the dead route's one slot is the whole worker's)."""
    return held_share(max_held, routes) * routes <= max_held


def held_fair_owed(k, share, before=0):
    """How many of `k` GET /r sent together into one outage, with `before`
    of ours unanswered at its start, the rule promises held and served:
    the route's free share, min(k, share - before). Which ones is not
    promised, so a window is judged as a whole, not each request by its
    place in the sending order: a request is held when its short retries
    end, or at once when the health checks have marked the provider down
    meanwhile, so a request sent later can take the route's last slot
    while an earlier one is still retrying (seed 30: the 0.25 s request
    held at once when the checks said down, the 0.15 s one refused at the
    end of its retries, the route's 2 slots full)."""
    return max(0, min(k, share - before))


def held_fair_margin(f):
    """Seconds an outage must end before the hold does for a held request
    to be served: a retry (every 500 ms at most) and, with health checks,
    --health-rise checks 500 ms apart (a down backend is not dialled) plus
    one check's connect."""
    m = 0.5
    if f["health-interval"]:
        m += f["health-rise"] * 0.5 + 0.1
    return m


def held_fair_plan(rnd, f, skip=()):
    """The held-fair phase's outage windows of the restarting route's
    provider, ([(up s before it, outage s, kind, requests)], ""), kind
    "requests" (that many GET /r, 0.1 s apart, from 0.05 s into the
    outage) or "half-close" (`requests` GET /r that half-close at 0.6 s,
    then one fresh GET /r at 0.9 s); or (None, why) when the round's flags
    leave nothing to measure. Each outage is at least HF_MIN_OUTAGE_S and
    ends held_fair_margin before the hold does."""
    if "held-fair" in skip:
        return None, "skipped"
    if f["max-held"] not in HF_HELD:
        return None, f"--max-held {f['max-held']}: a flood cannot fill it"
    d_max = min(3.0, f["hold-timeout"] / 1000 - held_fair_margin(f))
    if d_max < HF_MIN_OUTAGE_S:
        return None, f"--hold-timeout {f['hold-timeout']}ms: no outage of {HF_MIN_OUTAGE_S} s fits in it"
    share = held_share(f["max-held"])
    out = []
    for i in range(rnd.randint(4, 6)):
        up = round(rnd.uniform(1.0, 2.5), 2)
        d = round(rnd.uniform(max(HF_MIN_OUTAGE_S, d_max * 0.6), d_max), 2)
        hc = rnd.random() < 0.3
        if d >= HF_HALFCLOSE_S and (hc or i == 1):
            out.append((up, d, "half-close", share))
        else:
            out.append((up, d, "requests", rnd.randint(1, share + 1)))
    return out, ""


# ---------------------------------------------------------------- bounds


def slack(b):
    return SLACK_S + SLACK_FRAC * b


def probe_bound(kind, f, segments):
    """Seconds a probe connection may last, from its start, given the flags
    `f` (ms) and the flaky backend's state `segments` during it (one entry
    per state it was in, in order). None: no bound (a stalled tcp backend
    with --tcp-idle-timeout 0 keeps a connection for ever, by design).

    A connection may dial once per state (a backend going away cuts an
    exchange, and an http GET cut before its answer is sent once more):
    each dial waits at most the hold (or ~375 ms of retries without one)
    plus a connect that started just before it ended. A stall adds the
    response timeout (http) or the tcp idle timeout; a 1xx flood adds its
    length."""
    s = {k: v / 1000 for k, v in f.items() if k in DURATIONS}
    dial = max(s["hold-timeout"], 0.4) + s["connect-timeout"] + 0.5
    b = len(segments) * dial + 1.0
    for st in segments:
        if st == "stall":
            if kind == "flaky-tcp":
                if not s["tcp-idle-timeout"]:
                    return None
                b += s["tcp-idle-timeout"]
            else:
                b += s["response-timeout"]
        elif st == "1xx":
            b += FLOOD_S + 2
    b += s["retry-delay"]  # a worker just killed: its successor accepts
    return b + slack(b)


def fixed_bound(kind, f):
    """Seconds from its reference point (connect; for idle-keepalive and
    tcp-idle the end of the last answer) a probe on a healthy backend may
    last: the timeout that must end it, plus slack."""
    s = {k: v / 1000 for k, v in f.items() if k in DURATIONS}
    b = {
        "slow-head": s["head-timeout"],
        "idle-new": s["head-timeout"],
        "idle-keepalive": s["idle-timeout"],
        "tcp-idle": s["tcp-idle-timeout"],
    }[kind] + s["retry-delay"]
    return b + slack(b)


# ---------------------------------------------------------------- flaky backends


class Flaky:
    """A backend on 127.0.0.1:port whose state the round sets (see the
    module's docstring)."""

    def __init__(self, kind):
        self.kind = kind
        self.port = int(sl_port())
        self.lock = threading.Lock()
        self.state = None
        self.history = []  # (t, state)
        self.lsock = None
        self.fillers = []
        self.conns = set()
        self.served = {}
        self.set("up")

    def set(self, state):
        with self.lock:
            if state == self.state:
                return
            self.state = state
            self.history.append((now(), state))
            self._teardown()
            if state in ("up", "stall", "1xx"):
                self.lsock = self._listener(256)
                threading.Thread(target=self._accept, args=(self.lsock,), daemon=True).start()
            elif state == "blackhole":
                self.lsock = self._listener(0)
                for _ in range(3):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", self.port))
                    self.fillers.append(s)

    def _listener(self, backlog):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):
            try:
                s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.1)
        s.listen(backlog)
        return s

    def _teardown(self):
        if self.lsock is not None:
            try:
                self.lsock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.lsock.close()
            self.lsock = None
        for s in self.fillers:
            s.close()
        for s in self.conns:  # their threads close them
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.fillers = []
        self.conns.clear()

    def close(self):
        with self.lock:
            self.state = "closed"
            self._teardown()

    def segments(self, t0, t1):
        """The states it was in during [t0, t1], in order."""
        with self.lock:
            h = list(self.history)
        out = []
        for i, (t, st) in enumerate(h):
            t_next = h[i + 1][0] if i + 1 < len(h) else math.inf
            if t_next > t0 and t <= t1:
                out.append(st)
        return out or ["up"]

    def _accept(self, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            with self.lock:
                if ls is not self.lsock:
                    c.close()
                    return
                self.conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(FLOOD_S + 30)
        try:
            if self.kind == "tcp":
                self._serve_tcp(c)
            else:
                self._serve_http(c)
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns.discard(c)
            c.close()

    def _count(self, what):
        with self.lock:
            self.served[what] = self.served.get(what, 0) + 1

    def _serve_tcp(self, c):
        while True:
            b = c.recv(65536)
            if not b:
                return
            if self.state == "up":
                c.sendall(b)
                self._count("echo")

    def _serve_http(self, c):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                b = c.recv(65536)
                if not b:
                    return
                buf += b
                if len(buf) > 65536:
                    return
            _, _, buf = buf.partition(b"\r\n\r\n")
            st = self.state
            if st == "up":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nflaky\n")
                self._count("200")
            elif st == "1xx":
                self._count("1xx flood")
                unit = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
                block = unit * (65536 // len(unit))
                sent, t_end = 0, now() + FLOOD_S
                while sent < FLOOD_BYTES and now() < t_end and self.state == "1xx":
                    c.sendall(block)
                    sent += len(block)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nflood\n")
                return
            else:  # stall: read, never answer, until torn down
                while c.recv(65536):
                    pass
                return


V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_source(head):
    """(the source address a PROXY v1 or v2 header names or None, the
    header's length, or None while incomplete). 'local' and 'unknown' for
    headers that name no client."""
    if head.startswith(V2_SIG[: len(head)]) and len(head) < 16:
        return None, None
    if head.startswith(V2_SIG):
        n = 16 + int.from_bytes(head[14:16], "big")
        if len(head) < n:
            return None, None
        if head[12] & 0x0F == 0:
            return "local", n
        if head[13] == 0x11:
            return socket.inet_ntoa(head[16:20]), n
        if head[13] == 0x21:
            return socket.inet_ntop(socket.AF_INET6, head[16:32]), n
        return "unknown", n
    i = head.find(b"\r\n")
    if i < 0:
        return (None, None) if len(head) < 108 else ("garbage", len(head))
    parts = head[:i].split(b" ")
    if len(parts) >= 3 and parts[0] == b"PROXY" and parts[1] in (b"TCP4", b"TCP6"):
        return parts[2].decode(), i + 2
    return "unknown", i + 2


class ProxyEcho:
    """A tcp echo behind a link with proxy_protocol v1 or v2: each
    connection that carries data must come with a header naming its client
    (127.0.0.1), also when the client reset (issue 18 item 2). A connection
    with no data (a health check) is only counted."""

    def __init__(self):
        self.port = int(sl_port())
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", self.port))
        self.ls.listen(256)
        self.lock = threading.Lock()
        self.seen = {}  # source -> connections with data
        self.empty = 0  # connections without data (checks)
        self.bad = []  # (t, source, first bytes)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(60)
        buf, src, n = b"", None, None
        try:
            while src is None:
                b = c.recv(65536)
                if not b:
                    break
                buf += b
                src, n = proxy_source(buf)
            rest = buf[n:] if n else b""
            while not rest:
                b = c.recv(65536) if src else b""
                if not b:
                    break
                rest = b
            with self.lock:
                if not rest:
                    self.empty += 1
                else:
                    self.seen[src] = self.seen.get(src, 0) + 1
                    if src != "127.0.0.1":
                        self.bad.append((now(), src, (buf[:n] if n else buf[:60]) + rest[:8] + b"..."))
            while rest:
                c.sendall(rest)
                rest = c.recv(65536)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        try:
            self.ls.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ls.close()


def sl_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---------------------------------------------------------------- a round


class Violation(Exception):
    pass


class TrackedConn(sl.Conn):
    """soak_load.Conn that counts itself open on its endpoint while the
    round's gate lets it in (idle phases keep it out)."""

    def __init__(self, rnd_round, ep):
        self.r, self.addr, self.ended = rnd_round, ep.address, False
        rnd_round.opened(ep)
        try:
            super().__init__(ep)
        except BaseException:
            self.end()
            raise

    def end(self):
        if not self.ended:
            self.ended = True
            self.r.closed(self.addr)

    def close(self):
        super().close()
        self.end()

    def rst(self):
        super().rst()
        self.end()

    def __del__(self):
        if not self.ended:
            self.end()


class Probe:
    def __init__(self, kind, addr, t0, flaky=None):
        self.kind, self.addr, self.t0, self.flaky = kind, addr, t0, flaky
        self.t_ref = t0  # the bound counts from here
        self.t_end = None
        self.outcome = ""
        self.reported = False

    def bound(self, r, t):
        if self.flaky:
            return probe_bound(self.kind, r.flags, self.flaky.segments(self.t0, t))
        return fixed_bound(self.kind, r.flags)

    def over(self, r, t):
        """Seconds past its bound at t (> 0: a violation), or None."""
        b = self.bound(r, t)
        if b is None:
            return None
        return (t - self.t_ref) - b


class Round(sl.Soak):
    # Health checks may have a socket in flight when the round settles.
    rss_slack_kb = RSS_SLACK_MB * 1024
    fd_slack = FD_SLACK

    def __init__(self, a, flags, mode, fl_http, fl_tcp, addrs, skip, pxy, fl_fair):
        super().__init__(a)
        # held-fair: an http endpoint of its own (its worker's --max-held
        # is shared by these two routes only), /dead -> a port bound and
        # never listening (refused for good), /r -> fl_fair, which goes
        # away for outages shorter than the hold.
        self.hf_ep = sl.Endpoint("held-fair", "http", addrs["fair"])
        self.fl_fair = fl_fair
        self.hf_plan, self.hf_why = held_fair_plan(random.Random(f"{a.seed}:held-fair"), flags, skip)
        self.hf_share = held_share(flags["max-held"])
        self.hf_out = 0  # GET /r sent and not answered (not counting half-closed ones)
        self.hf = {"dead": {}, "windows": 0, "requests": {}, "owed": 0, "served": 0, "fresh": {}, "half-closed": {},
                   "held max": 0, "over_limit": 0, "flooders": 0}
        self.pxy = pxy
        self.pxy_ep = sl.Endpoint("proxy", "tcp", addrs["proxy"])
        self.pxy_judged = 0
        self.flags, self.mode, self.skip = flags, mode, skip
        self.fl_http, self.fl_tcp = fl_http, fl_tcp
        self.ftcp = sl.Endpoint("flaky-tcp", "tcp", addrs["flaky_tcp"])
        self.idle_addrs = (addrs["idle_tcp"], addrs["idle_http"])
        self.gate = threading.Condition()
        self.paused = set()
        self.open = {}  # address -> connections open
        self.last = {}  # address -> when the last one closed
        self.probes = []
        self.violations = []
        self.cpu_hist = {}  # role -> [(t, pid, ticks)]
        self.idle_cpu = {}  # role -> max share measured while idle
        self.peak = {}  # role -> [rss, fds]
        self.judged = 0
        self.proxy_counts = {"echoed": 0, "reset": 0, "wrong echo": 0, "error": 0}
        self.want_shape = addrs["want"]

    # ---- connections: gated, counted

    def conn(self, ep):
        with self.gate:
            while ep.address in self.paused and not self.stop.is_set():
                self.gate.wait(0.2)
        return TrackedConn(self, ep)

    def opened(self, ep):
        with self.lock:
            self.open[ep.address] = self.open.get(ep.address, 0) + 1

    def closed(self, addr):
        with self.lock:
            self.open[addr] -= 1
            self.last[addr] = now()

    def quiet_since(self, addr):
        with self.lock:
            if self.open.get(addr, 0) > 0:
                return now()
            return self.last.get(addr, self.t_start)

    def want(self, variant):
        return self.want_shape[variant]

    # ---- violations

    def cpu_of(self, addr):
        """' (its worker, pid P: N % CPU over the last S s)', or ''."""
        for role, h in self.cpu_hist.items():
            if role.split(" ", 1)[1] == addr and len(h) >= 2 and h[0][1] == h[-1][1]:
                share = (h[-1][2] - h[0][2]) / HZ / max(0.5, h[-1][0] - h[0][0])
                return f" (its worker, pid {h[-1][1]}: {share * 100:.0f} % CPU over the last {h[-1][0] - h[0][0]:.0f} s)"
        return ""

    def violate(self, invariant, who, detail):
        with self.lock:
            self.violations.append((now() - self.t_start, invariant, who, detail))
        self.stop.set()

    # ---- probes

    def run_probes(self, seed, until):
        rnd = random.Random(seed)
        kinds = ["flaky-http", "flaky-http", "flaky-tcp", "flaky-tcp", "slow-head", "idle-new", "idle-keepalive", "proxy"]
        if self.flags["tcp-idle-timeout"]:
            kinds.append("tcp-idle")
        while not self.stop.is_set() and now() < until:
            kind = rnd.choice(kinds)
            if kind in ("slow-head", "idle-new", "idle-keepalive", "tcp-idle"):
                if now() + fixed_bound(kind, self.flags) + 3 > until:
                    self.stop.wait(0.5)
                    continue
            try:
                getattr(self, "probe_" + kind.replace("-", "_"))(rnd)
            except (OSError, sl.Fail, ValueError):
                pass
            self.stop.wait(rnd.uniform(0.1, 1.0))

    def start_probe(self, kind, ep, flaky=None):
        c = self.conn(ep)
        p = Probe(kind, ep.address, c.t0, flaky)
        with self.lock:
            self.probes.append(p)
        return c, p

    def finish(self, c, p, outcome):
        c.close()
        p.t_end = now()
        p.outcome = outcome
        over = p.over(self, p.t_end)
        if over is not None and over > 0 and not p.reported:
            self.violate("deadline", f"{p.kind} probe on {p.addr}", self.probe_text(p, p.t_end) + self.cpu_of(p.addr))

    def probe_text(self, p, t):
        segs = p.flaky.segments(p.t0, t) if p.flaky else []
        return (
            f"connection open {t - p.t_ref:.1f} s, bound {p.bound(self, t):.1f} s"
            + (f" (backend states {'>'.join(segs)})" if segs else "")
            + (f", outcome {p.outcome}" if p.outcome else "")
        )

    def wait_for(self, c, p, deadline_extra=5):
        """Waits until the connection is readable or its bound (+ extra)
        passed; True when readable."""
        while True:
            b = p.bound(self, now())
            left = (p.t_ref + (b if b is not None else 60)) + deadline_extra - now()
            if left <= 0 or self.stop.is_set() and b is None:
                return False
            r, _, _ = select.select([c.s], [], [], min(left, 0.5))
            if r:
                return True
            if self.stop.is_set() and now() > self.load_end + 5:
                return False

    def read_final(self, c, p):
        """Reads an answer whose 1xx heads may be many MiB, to its end;
        the final status code."""
        tail, code = b"", None
        while True:
            if not self.wait_for(c, p):
                return "no answer"
            b = c.s.recv(1 << 20)
            if not b:
                return f"eof ({code})" if code else "eof"
            tail = (tail + b)[-200:] if code is None else tail + b
            if code is None:
                i = tail.rfind(b"HTTP/1.1 ")
                while i >= 0 and tail[i + 9 : i + 10] == b"1":
                    i = tail.rfind(b"HTTP/1.1 ", 0, i)
                if i >= 0 and tail[i + 9 : i + 12].isdigit() and tail[i + 9 : i + 10] != b"1":
                    code = tail[i + 9 : i + 12].decode()
                    tail = tail[i:]
            if code and b"\r\n\r\n" in tail:
                head, _, body = tail.partition(b"\r\n\r\n")
                n = 0
                for ln in head.split(b"\r\n"):
                    if ln.lower().startswith(b"content-length:"):
                        n = int(ln.split(b":")[1])
                if len(body) >= n:
                    return code

    def probe_flaky_http(self, rnd):
        c, p = self.start_probe("flaky-http", self.http, self.fl_http)
        try:
            c.send(f"GET /f/x?id={rnd.getrandbits(32):x} HTTP/1.1\r\nHost: chaos\r\n\r\n".encode())
            out = self.read_final(c, p)
        except OSError as e:
            out = type(e).__name__
        self.finish(c, p, out)

    def probe_flaky_tcp(self, rnd):
        c, p = self.start_probe("flaky-tcp", self.ftcp, self.fl_tcp)
        want = rnd.randint(1, 2000)
        got, out = 0, None
        try:
            c.send(rnd.randbytes(want))
            while got < want:
                if not self.wait_for(c, p):
                    out = "no end"
                    break
                b = c.s.recv(65536)
                if not b:
                    out = f"eof after {got}"
                    break
                got += len(b)
            out = out or "echoed"
        except OSError as e:
            out = type(e).__name__
        self.finish(c, p, out)

    def probe_slow_head(self, rnd):
        c, p = self.start_probe("slow-head", self.http)
        try:
            c.send(b"GET /a/data?n=5&id=slow HTTP/1.1\r\nHost: chaos\r\nX-Slow: ")
            out = "no answer"
            while now() < p.t_ref + p.bound(self, now()) + 5:
                r, _, _ = select.select([c.s], [], [], rnd.uniform(0.3, 1.0))
                if r:
                    code, _, _ = c.response()
                    out = str(code)
                    break
                c.send(b"z")
        except (OSError, sl.Fail) as e:
            out = f"{type(e).__name__} ({e})"
        self.finish(c, p, out)

    def probe_idle_new(self, rnd):
        c, p = self.start_probe("idle-new", self.http)
        try:
            out = "closed" if self.wait_for(c, p) and not c.s.recv(65536) else "open"
        except OSError as e:
            out = type(e).__name__
        self.finish(c, p, out)

    def probe_idle_keepalive(self, rnd):
        c, p = self.start_probe("idle-keepalive", self.http)
        try:
            c.send(b"GET /b/data?n=10&id=keep HTTP/1.1\r\nHost: chaos\r\n\r\n")
            code, _, _ = c.response()
            p.t_ref = now()
            out = f"{code}, then " + ("closed" if self.wait_for(c, p) and not c.s.recv(65536) else "open")
        except (OSError, sl.Fail) as e:
            out = type(e).__name__
        self.finish(c, p, out)

    def probe_proxy(self, rnd):
        """Through the proxy_protocol link: an echo, or bytes then a reset
        (SO_LINGER 0) at once or a moment later."""
        for _ in range(rnd.randint(1, 20)):
            c = self.conn(self.pxy_ep)
            data = rnd.randbytes(rnd.randint(1, 300))
            try:
                c.send(data)
                if "proxy-rst" not in self.skip and rnd.random() < 0.8:
                    if rnd.random() < 0.5:
                        time.sleep(rnd.uniform(0, 0.01))
                    c.rst()
                    self.proxy_counts["reset"] += 1
                    continue
                got = c.exact(len(data))
                self.proxy_counts["echoed" if got == data else "wrong echo"] += 1
            except (OSError, sl.Fail):
                self.proxy_counts["error"] += 1
            c.close()

    def probe_tcp_idle(self, rnd):
        c, p = self.start_probe("tcp-idle", self.tcp)
        try:
            c.send(b"0123456789")
            c.exact(10)
            p.t_ref = now()
            out = "closed" if self.wait_for(c, p) and not c.s.recv(65536) else "open"
        except (OSError, sl.Fail) as e:
            out = type(e).__name__
        self.finish(c, p, out)

    # ---- held-fair: a dead route flooding holds beside a restarting one

    def hf_status(self):
        """The held-fair worker's hold counters from `status --json`
        (.endpoints[].worker.hold: per worker, not per route), or {}."""
        try:
            eps, _ = self.workers()
        except (OSError, RuntimeError, ValueError):
            return {}
        return eps.get(self.hf_ep.address, {}).get("worker", {}).get("hold", {}) or {}

    def hf_count(self, what, key):
        with self.lock:
            self.hf[what][key] = self.hf[what].get(key, 0) + 1

    def hf_get(self, c, path):
        c.send(f"GET {path} HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n".encode())

    def hf_flood(self, rnd, stop_at):
        """One client of the dead route: GET /dead again and again, each
        answered 502 when its hold ends (or at once over the limit)."""
        bound = probe_bound("held-fair", self.flags, ["gone"])
        while now() < stop_at and not self.stop.is_set():
            t0 = now()
            try:
                c = self.conn(self.hf_ep)
            except OSError as e:
                self.hf_count("dead", type(e).__name__)
                self.stop.wait(0.2)
                continue
            try:
                c.s.settimeout(bound)
                self.hf_get(c, f"/dead/x?id={rnd.getrandbits(32):x}")
                out = str(c.response()[0])
            except socket.timeout:
                out = "no answer"
            except (OSError, sl.Fail) as e:
                out = type(e).__name__
            c.close()
            self.hf_count("dead", out)
            if now() - t0 > bound:
                self.violate("deadline", f"held-fair GET /dead on {self.hf_ep.address}",
                             f"connection open {now() - t0:.1f} s, bound {bound:.1f} s (backend refused for good), outcome {out}")
            if now() - t0 < 0.3:
                self.stop.wait(rnd.uniform(0.1, 0.3))

    def hf_request(self, t_out, d, what, t_send, got=None):
        """One GET /r at t_send, during the outage [t_out, t_out + d) of its
        provider. `got`: a window's list, its outcome appended there and
        the window judged as a whole (hf_judge); None (the fresh request
        after half-closes, the only one of ours then): judged by the rule
        when it was sent within the route's share (held for /r before it:
        self.hf_out, ours are its only clients)."""
        self.stop.wait(max(0, t_send - now()))
        if self.stop.is_set():
            return
        with self.lock:
            before = self.hf_out
            self.hf_out += 1
        c, p = self.start_probe("held-fair", self.hf_ep, self.fl_fair)
        trace(f"hf {what} GET /r sent {t_send - t_out:.2f} s into the outage, {before} before it")
        try:
            self.hf_get(c, "/r/x")
            out = self.read_final(c, p)
        except OSError as e:
            out = type(e).__name__
        with self.lock:
            self.hf_out -= 1
        trace(f"hf {what} GET /r sent {t_send - t_out:.2f} s into the outage: {out}")
        waited = now() - p.t0
        self.finish(c, p, out)
        if got is not None:
            with self.lock:
                got.append((t_send - t_out, out, waited))
            self.hf_count("requests", out)
            return
        within = before < self.hf_share
        self.hf_count(what, out)
        if within and out != "200" and held_fair_asserted(self.flags["max-held"]) and not self.stop.is_set():
            hs = self.hf_status()
            with self.lock:
                dead = dict(self.hf["dead"])
            self.violate(
                "held-fair", f"http {self.hf_ep.address} route /r",
                f"GET /r sent {t_send - t_out:.2f} s into a {d:.2f} s outage of its provider (shorter than --hold-timeout "
                f"{self.flags['hold-timeout']}ms), with {before} held for /r before it (its share of --max-held "
                f"{self.flags['max-held']}: {self.hf_share})"
                + (" after the route's half-closed clients should have given their slots back" if what == "fresh" else "")
                + f": {out} after {waited:.2f} s, not held until the provider was back; the worker holds "
                f"{hs.get('held', '?')} (over_limit {hs.get('over_limit', '?')}) while /dead is flooded "
                f"({self.hf['flooders']} clients, answers so far {dead})")

    def hf_judge(self, t_out, d, k, before, got):
        """A window of `k` GET /r (outcomes `got`, one per request that
        ended): at least held_fair_owed of them held and served (200)."""
        owed = held_fair_owed(k, self.hf_share, before)
        with self.lock:
            outs = sorted(got)
            self.hf["owed"] += owed
            self.hf["served"] += min(owed, sum(o == "200" for _, o, _ in outs))
        served = sum(o == "200" for _, o, _ in outs)
        trace(f"hf window: {served} of {k} served, {owed} owed")
        if served >= owed or not held_fair_asserted(self.flags["max-held"]) or self.stop.is_set():
            return
        hs = self.hf_status()
        with self.lock:
            dead = dict(self.hf["dead"])
        each = ", ".join(f"{o} after {w:.2f} s (sent at {t:.2f} s)" for t, o, w in outs)
        self.violate(
            "held-fair", f"http {self.hf_ep.address} route /r",
            f"{k} GET /r sent into a {d:.2f} s outage of its provider (shorter than --hold-timeout "
            f"{self.flags['hold-timeout']}ms), with {before} held for /r before them (its share of --max-held "
            f"{self.flags['max-held']}: {self.hf_share}): {served} held and served, {owed} owed ({each}"
            + (f"; {k - len(outs)} without an outcome" if len(outs) < k else "")
            + f"); the worker holds {hs.get('held', '?')} (over_limit {hs.get('over_limit', '?')}) while /dead is "
            f"flooded ({self.hf['flooders']} clients, answers so far {dead})")

    def hf_halfclose(self, t_out, n):
        """n GET /r that half-close (shutdown(SHUT_WR)) 0.6 s into the
        outage, while held: their slots must come back (issue 18, item 5)."""
        self.stop.wait(max(0, t_out + 0.05 - now()))
        cs = []
        for _ in range(n):
            try:
                c = self.conn(self.hf_ep)
                self.hf_get(c, "/r/x")
                cs.append(c)
            except OSError as e:
                self.hf_count("half-closed", type(e).__name__)
        with self.lock:
            self.hf_out += len(cs)
        trace(f"hf {len(cs)} GET /r to half-close sent")
        self.stop.wait(max(0, t_out + 0.6 - now()))
        trace(f"hf {len(cs)} GET /r half-closed")
        for c in cs:
            try:
                c.s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        with self.lock:
            self.hf_out -= len(cs)
        return cs

    def hf_reap(self, cs, until):
        """What the half-closed clients got (EOF: let go; 200: kept held),
        then closes them."""
        for c in cs:
            c.s.settimeout(max(0.1, until - now()))
            try:
                out = "eof" if not c.s.recv(65536) else "answered"
            except socket.timeout:
                out = "open"
            except OSError as e:
                out = type(e).__name__
            c.close()
            trace(f"hf half-closed GET /r: {out}")
            self.hf_count("half-closed", out)

    def hf_monitor(self, stop_at):
        base = self.hf_status().get("over_limit", 0)
        while now() < stop_at and not self.stop.wait(1):
            hs = self.hf_status()
            with self.lock:
                self.hf["held max"] = max(self.hf["held max"], hs.get("held", 0))
                self.hf["over_limit"] = max(self.hf["over_limit"], hs.get("over_limit", base) - base)

    def run_held_fair(self, seed, until):
        """The phase: /dead flooded by HF_FLOOD_PER_SLOT clients per
        --max-held slot for its whole length; the provider of /r goes away
        for each planned outage (shorter than the hold), GET /r sent into
        it; as many of them as /r's free share (held_fair_owed) must be
        held and served (200) once the provider is back."""
        rnd = random.Random(seed)
        hold = self.flags["hold-timeout"] / 1000
        if self.stop.wait(rnd.uniform(3, 6)):
            return
        need = sum(up + d + 1 for up, d, _, _ in self.hf_plan)
        flood_end = min(until - hold - 2, now() + 1.5 + need)
        n = HF_FLOOD_PER_SLOT * self.flags["max-held"]
        self.hf["flooders"] = n
        ths = [threading.Thread(target=self.hf_flood, args=(random.Random(seed + 1 + i), flood_end), daemon=True) for i in range(n)]
        ths.append(threading.Thread(target=self.hf_monitor, args=(flood_end,), daemon=True))
        for th in ths:
            th.start()
        self.stop.wait(1.5)  # the flood fills the slots (held after ~375 ms of retries)
        for up, d, kind, k in self.hf_plan:
            if self.stop.wait(up) or now() + d + 1 > flood_end:
                break
            t_out = now()
            self.fl_fair.set("gone")
            trace(f"hf outage of {d:.2f} s ({kind}, {k}) of port {self.fl_fair.port}")
            self.hf["windows"] += 1
            reqs, cs = [], []
            if kind == "half-close":
                reqs.append(threading.Thread(target=self.hf_request, args=(t_out, d, "fresh", t_out + 0.9), daemon=True))
                reqs[0].start()
                cs = self.hf_halfclose(t_out, k)
            else:
                with self.lock:
                    before = self.hf_out
                got = []
                reqs = [threading.Thread(target=self.hf_request, args=(t_out, d, kind, t_out + 0.05 + 0.1 * i, got),
                                         daemon=True) for i in range(k)]
                for th in reqs:
                    th.start()
            self.stop.wait(max(0, t_out + d - now()))
            self.fl_fair.set("up")
            trace("hf outage over")
            for th in reqs:
                th.join(hold + 5)
            if kind != "half-close":
                self.hf_judge(t_out, d, k, before, got)
            self.hf_reap(cs, now() + 1)
        self.fl_fair.set("up")
        for th in ths:
            th.join(hold + self.flags["connect-timeout"] / 1000 + 10)

    # ---- the schedule's actors

    def run_flaky(self, fl, plan):
        t0 = self.t_load
        for off, st in plan:
            if self.stop.wait(max(0, t0 + off - now())):
                break
            fl.set(st)
        fl.set("up")

    def run_idle_phases(self, seed, until):
        """Every 5-12 s, one endpoint gets no new connection for
        CPU_WINDOW + CPU_MARGIN + 3 s: its worker must idle."""
        rnd = random.Random(seed)
        eps = (self.tcp, self.http, self.unix, self.ftcp)
        while not self.stop.wait(rnd.uniform(5, 12)) and now() < until:
            ep = rnd.choice(eps)
            with self.gate:
                self.paused.add(ep.address)
            self.stop.wait(CPU_WINDOW + CPU_MARGIN + 3)
            with self.gate:
                self.paused.discard(ep.address)
                self.gate.notify_all()
            self.idle_phases += 1

    # ---- checks

    def check(self):
        t = now()
        cur = self.latest
        for role, (pid, rss, fds, pipes) in cur.items():
            if role == "supervisor" or role.startswith("other"):
                continue
            addr = role.split(" ", 1)[1]
            base = self.base.get(role)
            pk = self.peak.setdefault(role, [0, 0])
            pk[0], pk[1] = max(pk[0], rss), max(pk[1], fds)
            if base and rss - base[1] > PEAK_RSS_MB * 1024:
                self.violate("memory", f"{role} pid {pid}",
                             f"RssAnon {rss / 1024:.1f} MiB, {PEAK_RSS_MB} MiB over its baseline {base[1] / 1024:.1f} MiB")
            ticks = cpu_ticks(pid)
            if ticks is None:
                continue
            h = self.cpu_hist.setdefault(role, [])
            h.append((t, pid, ticks))
            while h and h[0][0] < t - CPU_WINDOW - 1.5:
                h.pop(0)
            old = [e for e in h if e[0] <= t - CPU_WINDOW + 0.2]
            if not old or old[-1][1] != pid or self.quiet_since(addr) > t - CPU_WINDOW - CPU_MARGIN:
                continue
            t1, _, k1 = old[-1]
            share = (ticks - k1) / HZ / (t - t1)
            self.idle_cpu[role] = max(self.idle_cpu.get(role, 0), share)
            if share >= CPU_LIMIT:
                self.violate("idle-cpu", f"{role} pid {pid}",
                             f"{share * 100:.0f} % CPU over {t - t1:.1f} s with no client connection for "
                             f"{t - self.quiet_since(addr):.1f} s")
        with self.pxy.lock:
            bad = self.pxy.bad[self.pxy_judged:]
            self.pxy_judged += len(bad)
        for t_bad, src, first in bad[:1]:
            self.violate("proxy-header", f"tcp {self.pxy_ep.address} (proxy_protocol {self.proxy_version})",
                         f"the backend got a client's bytes under a header naming {src!r}, not 127.0.0.1: {first!r}")
        with self.lock:
            probes = [p for p in self.probes if p.t_end is None and not p.reported]
            fails = self.failures[self.judged:]
        for p in probes:
            over = p.over(self, t)
            if over is not None and over > 0:
                self.violate("deadline", f"{p.kind} probe on {p.addr}", self.probe_text(p, t) + ", still open" + self.cpu_of(p.addr))
                p.reported = True
        # A well-behaved failure no kill explains (kills are recorded
        # tens of ms after they happen: judge failures 5 s old).
        for f in fails:
            if f[3] > t - 5:
                break
            self.judged += 1
            if not self.killed(f[1], f[2], f[3]):
                self.violate("well-behaved", f"{f[1]} worker", f"{f[0]} request failed at {f[3] - self.t_start:.1f} s: {f[4]}")

    def run_sampler(self):
        while not self.stop.wait(1):
            self.sample()
            self.check()

    # ---- main

    def run(self):
        a = self.a
        self.idle_phases = 0
        self.base = {}
        for _ in range(3):
            self.base = self.sample()
            time.sleep(1)
        self.t_load = now()
        self.load_end = self.t_load + a.seconds
        calm = max(10, a.seconds / 4)
        until = self.load_end - calm
        rs = a.seed * 100
        threads = [threading.Thread(target=self.run_sampler, daemon=True)]
        for i, (kind, n) in enumerate(sl.CLIENTS.items()):
            threads += [threading.Thread(target=self.run_well, args=(kind, rs + 10 * i + j), daemon=True) for j in range(n)]
        threads.append(threading.Thread(target=self.run_bad, args=(rs + 70,), daemon=True))
        if a.flood:
            threads.append(threading.Thread(target=self.run_flood, args=(rs + 71, until), daemon=True))
        threads += [threading.Thread(target=self.run_probes, args=(rs + 80 + i, self.load_end), daemon=True) for i in range(3)]
        rnd = random.Random(a.seed)
        plans = {
            self.fl_http: schedule(rnd, "http", until - self.t_load, self.skip),
            self.fl_tcp: schedule(rnd, "tcp", until - self.t_load, self.skip),
        }
        control = [threading.Thread(target=self.run_flaky, args=(fl, plan), daemon=True) for fl, plan in plans.items()]
        control.append(threading.Thread(target=self.run_idle_phases, args=(rs + 90, until), daemon=True))
        if "kills" not in self.skip:
            control.append(threading.Thread(target=self.run_kills, args=(until,), daemon=True))
        if "reloads" not in self.skip:
            control.append(threading.Thread(target=self.run_reloads, args=(until,), daemon=True))
        if self.hf_plan:
            control.append(threading.Thread(target=self.run_held_fair, args=(rs + 95, until), daemon=True))
        self.plans = plans
        for th in threads + control:
            th.start()
        while now() < self.load_end and not self.stop.is_set():
            time.sleep(0.5)
        for th in control:
            th.join(60)
        self.stop.set()
        with self.gate:
            self.gate.notify_all()
        for th in threads:
            th.join(sl.OP_TIMEOUT + 5)
        for fl in plans:
            fl.set("up")
        # Quiet: no client at all, so every worker is measured idle once.
        t_q = now() + CPU_WINDOW + CPU_MARGIN + 1.5
        while now() < t_q and not self.violations:
            time.sleep(1)
            self.sample()
            self.check()
        t_stop = now()
        cur, bad = {}, []
        if not self.violations:
            cur, bad = self.settle(t_stop + a.settle)
            for b in bad:
                self.violate("baseline", b.split(":")[0], b.split(": ", 1)[1] + f" {now() - t_stop:.0f} s after the load stopped")
        self.cur = cur
        return self.report_round(now() - t_stop)

    def report_round(self, settled):
        real = [f for f in self.failures if not self.killed(f[1], f[2], f[3])]
        cas = len(self.failures) - len(real)
        bad_real = [f for f in self.bad_failures if not self.killed(f[1], f[2], f[3])]
        for f in bad_real[:3]:
            self.violate("well-behaved", f"{f[1]} worker", f"{f[0]}: {f[4]}")
        if not self.violations:
            for f in real[:3]:
                self.violate("well-behaved", f"{f[1]} worker", f"{f[0]} at {f[3] - self.t_start:.1f} s: {f[4]}")
        print(f"  requests: {sum(self.ok.values())} ok ("
              + ", ".join(f"{k} {v}" for k, v in self.ok.items())
              + f"), {len(real)} failed, {cas} lost with a killed worker; misbehaving {sum(self.bad.values())}")
        kinds = {}
        for p in self.probes:
            if p.t_end is None:
                continue
            k = kinds.setdefault(p.kind, [0, 0.0, {}])
            k[0] += 1
            b = p.bound(self, p.t_end)
            if b:
                k[1] = max(k[1], (p.t_end - p.t_ref) / b)
            o = p.outcome.split(" (")[0]
            name = {self.http.address: "http", self.tcp.address: "tcp"}.get(p.addr)
            if name and self.killed(name, p.t0, p.t_end):
                o += " [worker killed]"
            k[2][o] = k[2].get(o, 0) + 1
        print("  probes: " + "; ".join(
            f"{k} {v[0]} (max {v[1] * 100:.0f} % of bound; " + ", ".join(f"{o} {n}" for o, n in sorted(v[2].items())) + ")"
            for k, v in sorted(kinds.items())))
        print("  flaky backends: " + "; ".join(
            f"{fl.kind} " + ">".join(st for _, st in plan[:-1]) + f" (served {fl.served})" for fl, plan in self.plans.items()))
        print(f"  proxy_protocol {self.proxy_version}: clients {self.proxy_counts}; backend saw sources {self.pxy.seen}, "
              f"{self.pxy.empty} connections without data (health checks)")
        if self.hf_plan:
            h = self.hf
            print(f"  held-fair: --max-held {self.flags['max-held']} (a route's share {self.hf_share}"
                  + ("" if held_fair_asserted(self.flags["max-held"]) else ", not asserted: the shares do not fit")
                  + f"), /dead flooded by {h['flooders']} clients ({h['dead']}); {h['windows']} outage(s) of /r's provider: "
                  f"GET /r {h['requests']} ({h['served']} of the {h['owed']} their share promised held and served); "
                  f"half-closed {h['half-closed']}, "
                  f"then fresh {h['fresh']}; worker held at most {h['held max']}, {h['over_limit']} over the limit")
        else:
            print(f"  held-fair: not run ({self.hf_why})")
        print(f"  kills {len(self.kills)}, reloads {self.reloads} ({self.switches} switched the graph), idle phases {self.idle_phases}")
        for role in sorted(self.peak):
            base = self.base.get(role)
            pk = self.peak[role]
            end = getattr(self, "cur", {}).get(role)
            cpu = self.idle_cpu.get(role)
            print(f"    {role:28} RSS {base[1] / 1024 if base else 0:.1f} -> peak {pk[0] / 1024:.1f}"
                  + (f" -> {end[1] / 1024:.1f}" if end else "") + " MiB; "
                  f"fds {base[2] if base else '?'} -> peak {pk[1]}" + (f" -> {end[2]}" if end else "")
                  + (f"; idle CPU max {cpu * 100:.1f} %" if cpu is not None else "; idle CPU not measured"))
        print(f"  settled in {settled:.0f} s")
        return not self.violations


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------- the run


def link(typ, name, target, socket_):
    return {"type": typ, "name": name, "consumer": "EXTERNAL", "consumer_pid": 0, "provider": "chaos",
            "provider_pid": 0, "role": "any", "target": target, "socket": socket_}


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def wait_up(bin_, st, n, sup):
    for _ in range(150):
        try:
            s = sl.status(st)
            if len(s["endpoints"]) == n and all(e["worker"].get("state") == "running" for e in s["endpoints"]):
                return True
        except (OSError, RuntimeError, ValueError):
            pass
        if sup.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def stop_supervisor(sup):
    """SIGTERM, wait; True if it exited 0. Kills it (and its workers) when
    it does not stop within 20 s."""
    kids = sl.children(sup.pid)
    sup.send_signal(signal.SIGTERM)
    try:
        rc = sup.wait(20)
    except subprocess.TimeoutExpired:
        rc = None
        sup.kill()
        sup.wait()
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except OSError:
            pass
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="the pv-xconnect executable")
    ap.add_argument("--work", required=True, help="scratch directory")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--be-tcp", required=True)
    ap.add_argument("--be-unix", required=True)
    ap.add_argument("--be-http", required=True, nargs=2)
    ap.add_argument("--skip", default="")
    ap.add_argument("--keep-going", action="store_true")
    ap.add_argument("--settle", type=float, default=30)
    ap.add_argument("--flood", type=int, default=300)
    a = ap.parse_args()
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    unknown = skip - set(SKIPS)
    if unknown:
        print(f"chaos: unknown PVX_CHAOS_SKIP item(s) {sorted(unknown)}; known: {sorted(SKIPS)}", file=sys.stderr)
        return 2
    total = a.minutes * 60
    rounds = max(1, round(total / ROUND_S))
    per = total / rounds
    print(f"chaos: seed {a.seed}; {rounds} round(s) of {per:.0f} s" + (f"; skipping {','.join(sorted(skip))}" if skip else ""), flush=True)
    failed = []
    rerun = f"PVX_CHAOS_SEED={a.seed}" + (f" PVX_CHAOS_SKIP={a.skip}" if skip else "") + f" scripts/chaos.sh {a.minutes:g}"
    for r in range(1, rounds + 1):
        rnd = random.Random(f"{a.seed}:{r}")
        flags, mode = draw_flags(rnd, skip)
        rseed = rnd.randrange(1, 10**6)
        ok, text = one_round(a, r, rseed, flags, mode, per, skip)
        if not ok:
            failed.append(r)
            for v in text:
                print(f"chaos: FAIL round {r}: invariant {v[1]}: {v[2]}: {v[3]} (at {v[0]:.1f} s)")
            print(f"chaos: FAIL round {r} flags: {flag_text(flags, mode)}")
            print(f"chaos: FAIL seed {a.seed}: rerun with {rerun}", flush=True)
            if not a.keep_going:
                break
    if failed:
        print(f"chaos: FAIL (rounds {', '.join(map(str, failed))}; seed {a.seed})")
        return 1
    print(f"chaos: PASS ({rounds} round(s), seed {a.seed})")
    return 0


def one_round(a, r, rseed, flags, mode, per, skip):
    w = os.path.join(a.work, f"round{r}")
    os.makedirs(w)
    ports = {k: sl_port() for k in ("tcp", "http", "tcp2", "ftcp", "itcp", "ihttp", "proxy", "fair")}
    fl_http, fl_tcp, pxy, fl_fair = Flaky("http"), Flaky("tcp"), ProxyEcho(), Flaky("http")
    # held-fair's dead provider: a port bound and never listening (refused
    # for good, and no one else can take it during the round).
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    pv = random.Random(rseed).choice(("v1", "v2"))
    lo = "127.0.0.1"
    addrs = {"fair": f"{lo}:{ports['fair']}", "proxy": f"{lo}:{ports['proxy']}", "flaky_tcp": f"{lo}:{ports['ftcp']}", "idle_tcp": f"{lo}:{ports['itcp']}", "idle_http": f"{lo}:{ports['ihttp']}"}
    unix = os.path.join(w, "link.sock")
    ga = [
        link("tcp", "echo", f"{lo}:{ports['tcp']}", f"{lo}:{a.be_tcp}"),
        link("http", "web-a", f"{lo}:{ports['http']}/a", f"{lo}:{a.be_http[0]}"),
        link("http", "web-b", f"{lo}:{ports['http']}/b", f"{lo}:{a.be_http[1]}"),
        link("http", "web-f", f"{lo}:{ports['http']}/f", f"{lo}:{fl_http.port}"),
        link("unix", "sock", unix, a.be_unix),
        link("tcp", "flaky", addrs["flaky_tcp"], f"{lo}:{fl_tcp.port}"),
        link("tcp", "idle", addrs["idle_tcp"], f"{lo}:{a.be_tcp}"),
        link("http", "idle-f", f"{addrs['idle_http']}/f", f"{lo}:{fl_http.port}"),
        dict(link("tcp", "proxy", addrs["proxy"], f"{lo}:{pxy.port}"), proxy_protocol=pv),
        link("http", "fair-dead", f"{addrs['fair']}/dead", f"{lo}:{dead.getsockname()[1]}"),
        link("http", "fair-r", f"{addrs['fair']}/r", f"{lo}:{fl_fair.port}"),
    ]
    gb = ga + [
        link("http", "web-c", f"{lo}:{ports['http']}/c", f"{lo}:{a.be_http[1]}"),
        link("tcp", "echo-2", f"{lo}:{ports['tcp2']}", f"{lo}:{a.be_tcp}"),
    ]
    addrs["want"] = {"A": (8, 3), "B": (9, 4)}
    g, gA, gB = (os.path.join(w, n) for n in ("graph.json", "graph-a.json", "graph-b.json"))
    write_json(gA, ga)
    write_json(gB, gb)
    write_json(g, ga)
    st = os.path.join(w, "status.sock")
    print(f"\nround {r}: {per:.0f} s, seed {rseed}; proxy_protocol {pv}; flags: {flag_text(flags, mode)}", flush=True)
    log = open(os.path.join(w, "pv-xconnect.log"), "w")
    # PVX_CHAOS_LOG_LEVEL=debug: the supervisor's and workers' log level
    # (round*/pv-xconnect.log, with PVX_CHAOS_KEEP=1), to correlate a failure.
    lvl = os.environ.get("PVX_CHAOS_LOG_LEVEL")
    sup = subprocess.Popen([a.bin, "run", "--graph", g, "--status-socket", st, "--log-target", "stderr"]
                           + (["--log-level", lvl] if lvl else []) + flag_args(flags),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if lvl else log)
    if lvl:
        # Each line stamped with the driver's clock (now()), as trace()'s.
        TRACE[0] = log

        def stamp(src=sup.stderr):
            for line in iter(src.readline, b""):
                with TRACE_LOCK:
                    log.write(f"{now():.3f} {line.decode(errors='replace')}")
        threading.Thread(target=stamp, daemon=True).start()
    rd = None
    try:
        if not wait_up(a.bin, st, 8, sup):
            log.flush()
            with open(log.name) as f:
                tail = f.read()[-3000:]
            return False, [(0, "setup", "supervisor", f"8 running workers did not show in status; its log:\n{tail}")]
        ns = argparse.Namespace(
            seed=rseed, status_socket=st, sup_pid=sup.pid, graph=g, graph_a=gA, graph_b=gB,
            tcp=f"{lo}:{ports['tcp']}", http=f"{lo}:{ports['http']}", unix=unix,
            seconds=max(20, per - 12), settle=a.settle, csv=os.path.join(w, "samples.csv"), flood=a.flood)
        rd = Round(ns, flags, mode, fl_http, fl_tcp, addrs, skip, pxy, fl_fair)
        rd.proxy_version = pv
        ok = rd.run()
        rc = stop_supervisor(sup)
        sup = None
        if rc != 0:
            rd.violations.append((now() - rd.t_start, "clean stop", "supervisor", f"exit status {rc} on SIGTERM"))
            ok = False
        if not ok:
            os.system(f"grep -v ': info: ' {log.name} | tail -n 15 | sed 's/^/    log: /'")
            if any(v[1] == "held-fair" for v in rd.violations):
                # What the worker counted when it refused /r a hold (info lines).
                os.system(f"grep 'backend {lo}:{fl_fair.port} unreachable and .*not holding' {log.name} | tail -n 3"
                          " | sed 's/^/    log: /'")
        print(f"round {r}: {'PASS' if ok else 'FAIL'}", flush=True)
        return ok, rd.violations
    finally:
        if sup is not None:
            stop_supervisor(sup)
        fl_http.close()
        fl_tcp.close()
        fl_fair.close()
        dead.close()
        pxy.close()
        if rd is not None:
            rd.csv.close()
        with TRACE_LOCK:
            TRACE[0] = None
        log.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
