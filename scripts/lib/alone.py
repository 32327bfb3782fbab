"""One pv-xconnect worker run without the supervisor, as the supervisor
starts it: the executable under its worker name (a symlink in a scratch
directory), fd 3 its control socket (SOCK_SEQPACKET), an init carrying
its configuration and a loopback listener. The profiling drivers
(http_worker.py, tcp_worker.py) run theirs this way, under a wrapper
(valgrind, strace) when they want one, and stop it by closing its
control socket: it exits 0, so the wrapper writes its report.
"""
import json
import os
import socket
import subprocess
import tempfile


class Alone:
    """`config(listen)`: the worker's configuration for its listen address
    (`127.0.0.1:PORT`). `addr`: where its clients connect; `pid`."""

    def __init__(self, binary, kind, config, wrapper, stderr=None):
        self.scratch = tempfile.mkdtemp(prefix=f"pvx-{kind}-worker.")
        self.name = os.path.join(self.scratch, f"pvx-worker-{kind}")
        os.symlink(os.path.abspath(binary), self.name)
        lis = socket.socket()
        lis.bind(("127.0.0.1", 0))
        lis.listen(4096)
        port = lis.getsockname()[1]
        listen = f"127.0.0.1:{port}"
        self.sup, wrk = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def fd3():
            os.dup2(wrk.fileno(), 3)

        self.child = subprocess.Popen(wrapper + [self.name, listen], preexec_fn=fd3,
                                      close_fds=False, stdin=subprocess.DEVNULL, stderr=stderr)
        wrk.close()
        msg = json.dumps({"msg": "init", "seq": 1, "config": config(listen)}).encode()
        socket.send_fds(self.sup, [msg], [lis.fileno()])
        lis.close()
        self.sup.settimeout(60)
        raw = self.sup.recv(65536)
        ack = json.loads(raw) if raw else {}
        if ack.get("msg") != "ack" or ack.get("error") is not None:
            raise SystemExit(f"worker refused init (or exited): {raw!r}")
        self.addr = ("127.0.0.1", port)
        self.pid = self.child.pid

    def stop(self):
        """EOF on its control socket; waits for its exit (0, or an error)."""
        self.sup.close()
        code = self.child.wait(timeout=600)
        os.unlink(self.name)
        os.rmdir(self.scratch)
        if code != 0:
            raise SystemExit(f"worker exited {code}")
