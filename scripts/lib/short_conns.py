#!/usr/bin/env python3
"""Short connections for scripts/bench-syscalls.sh: a 100-byte request,
a 100-byte answer, then close (HTTP/1.1 with `Connection: close`, so a
proxy that reads HTTP would see it whole; the tcp links do not care).

  short_conns.py backend PORT          serve: read the request head, answer
                                       100 bytes, close
  short_conns.py client PORT N CONC    N connections, CONC at a time; exits 1
                                       unless every answer was 100 bytes
"""
import asyncio
import socket
import sys
import threading

ANSWER_BODY = 100 - len(
    b"HTTP/1.1 200 OK\r\nContent-Length: 00\r\nConnection: close\r\n\r\n")
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
          % ANSWER_BODY) + b"x" * ANSWER_BODY
HEAD = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nX-Pad: "
REQUEST = HEAD + b"p" * (100 - len(HEAD) - 4) + b"\r\n\r\n"
assert len(ANSWER) == 100 and len(REQUEST) == 100


async def serve(port):
    async def one(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    srv = await asyncio.start_server(one, "127.0.0.1", port, backlog=4096)
    async with srv:
        await srv.serve_forever()


def client(port, n, conc):
    lock = threading.Lock()
    left = [n]
    bad = [0]

    def run():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(REQUEST)
                got = b""
                while True:
                    more = s.recv(4096)
                    if not more:
                        break
                    got += more
                s.close()
                ok = got == ANSWER
            except OSError:
                ok = False
            if not ok:
                with lock:
                    bad[0] += 1

    ts = [threading.Thread(target=run) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if bad[0]:
        print(f"short_conns: {bad[0]} of {n} connections without the whole answer",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
