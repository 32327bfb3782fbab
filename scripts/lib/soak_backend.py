#!/usr/bin/env python3
"""Backends for scripts/soak.sh, in one process (stdlib only):

  --tcp PORT    tcp echo on 127.0.0.1 (echoes until EOF, then closes)
  --unix PATH   the same echo on a unix socket
  --http PORT   HTTP/1.1 with keep-alive (repeatable: one server per port):
                  GET  /data?n=N&id=X  200, N bytes: X, "\\n", repeated, cut at N
                  POST /upload         Content-Length or chunked body;
                                       200 "LEN SHA256HEX"
                  GET  /ws + Upgrade: websocket
                                       101, then echoes every frame (text,
                                       binary, ping as pong) until a close
                  else                 404

Prints "ready" on stdout once every listener is bound. Errors from peers
that reset or vanish (the soak sends such peers on purpose) end that
connection quietly.
"""

import argparse
import base64
import hashlib
import os
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def data_body(n, ident):
    unit = (ident + "\n").encode()
    return (unit * (n // len(unit) + 1))[:n]


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                s.sendall(b)
        except OSError:
            pass


class Quiet:
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def handle_error(self, request, client_address):
        pass


class TcpEcho(Quiet, socketserver.ThreadingTCPServer):
    pass


class UnixEcho(Quiet, socketserver.ThreadingUnixStreamServer):
    pass


class Http(Quiet, ThreadingHTTPServer):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body, ctype="application/octet-stream"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urlsplit(self.path)
        if u.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if u.path == "/data":
            q = parse_qs(u.query)
            n = int(q.get("n", ["0"])[0])
            return self.reply(200, data_body(n, q.get("id", ["x"])[0]))
        self.reply(404, b"no such thing\n", "text/plain")

    def do_POST(self):
        if urlsplit(self.path).path != "/upload":
            self.read_body()
            return self.reply(404, b"no such thing\n", "text/plain")
        n, digest = self.read_body()
        self.reply(200, f"{n} {digest}".encode(), "text/plain")

    def read_body(self):
        h = hashlib.sha256()
        n = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ConnectionError("eof in chunk size")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                left = size
                while left:
                    b = self.rfile.read(min(left, 65536))
                    if not b:
                        raise ConnectionError("eof in chunk")
                    h.update(b)
                    n += len(b)
                    left -= len(b)
                self.rfile.readline(16)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                b = self.rfile.read(min(left, 65536))
                if not b:
                    raise ConnectionError("eof in body")
                h.update(b)
                n += len(b)
                left -= len(b)
        return n, h.hexdigest()

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        r, w = self.rfile, self.wfile
        while True:
            hdr = r.read(2)
            if len(hdr) < 2:
                break
            op = hdr[0] & 0x0F
            ln = hdr[1] & 0x7F
            if ln == 126:
                ln = int.from_bytes(r.read(2), "big")
            elif ln == 127:
                ln = int.from_bytes(r.read(8), "big")
            mask = r.read(4) if hdr[1] & 0x80 else b"\0\0\0\0"
            data = r.read(ln)
            if len(data) < ln:
                break
            data = xor(data, mask)
            if op == 9:
                op = 10
            w.write(frame(op, data))
            w.flush()
            if op == 8:
                break
        self.close_connection = True


def xor(data, mask):
    n = len(data)
    if not n:
        return data
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def frame(op, data, mask=None):
    head = bytes([0x80 | op])
    m = 0x80 if mask else 0
    n = len(data)
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask:
        data = xor(data, mask)
        head += mask
    return head + data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tcp", type=int)
    ap.add_argument("--unix")
    ap.add_argument("--http", type=int, action="append", default=[])
    a = ap.parse_args()
    servers = []
    if a.tcp:
        servers.append(TcpEcho(("127.0.0.1", a.tcp), Echo))
    if a.unix:
        if os.path.exists(a.unix):
            os.unlink(a.unix)
        servers.append(UnixEcho(a.unix, Echo))
        os.chmod(a.unix, 0o666)
    for p in a.http:
        servers.append(Http(("127.0.0.1", p), Handler))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
